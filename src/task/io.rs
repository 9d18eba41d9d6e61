//! `Async<T>`: an owned source registered once, with readiness futures and `AsyncRead`/`AsyncWrite`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::handle::{Handle, Shared};
use crate::interest::{Event, Interest};
use crate::key::Key;
use crate::registry::Registry;
use crate::task::context::{outside_loop_error, try_with_registry};

/// An I/O source registered with the running selector, for tasks.
///
/// It owns the source (a socket, a pipe, anything with a descriptor), puts it in non-blocking
/// mode, and registers it once. Operations try the source first and wait only when it says
/// `WouldBlock`; waiting arms the interest it needs, and the registration then stays armed
/// while tasks keep waiting, so a steady exchange costs no `epoll_ctl` per event. Readiness is
/// cached: a `WouldBlock`, a short read or a short write clears it, and the next event sets it
/// again (the selector is level-triggered, so nothing that arrives in between is missed).
///
/// Every operation is cancel-safe: the syscall runs only inside the poll that returns its
/// result, so a future dropped before it resolves (by a `timeout`, say) has consumed nothing.
///
/// Every task waiting on it is woken by the event it waits for, not only the last one. It gives
/// out only `&T`, so nothing can close or swap the descriptor behind the poller's back.
/// Dropping it deletes the source from the poller, then closes it. (Dropped outside the loop,
/// in `main` after `block_on` say, the removal is queued for the loop's next iteration.)
///
/// Streams ([`TcpStream`](std::net::TcpStream), [`UnixStream`](std::os::unix::net::UnixStream),
/// and pipes and child stdio as [`PipeReader`](crate::net::PipeReader) and
/// [`PipeWriter`](crate::net::PipeWriter), e.g. `Async::new(PipeReader::new(stdout)?)`)
/// implement [`futures_io::AsyncRead`] and [`futures_io::AsyncWrite`], so futures-lite's and
/// futures' extension traits work on them; listeners, UDP sockets and connect are in the
/// methods below.
///
/// # Examples
///
/// ```
/// use selreactor::task::{self, Async};
/// use std::io::Write;
/// use std::os::unix::net::UnixStream;
///
/// task::block_on(async {
///     let (ours, mut theirs) = UnixStream::pair()?;
///     let ours = Async::new(ours)?;
///     theirs.write_all(b"ping")?;
///     let mut buf = [0; 4];
///     let n = ours.read_with(|s| std::io::Read::read(&mut &*s, &mut buf)).await?;
///     assert_eq!(&buf[..n], b"ping");
///     Ok::<(), std::io::Error>(())
/// })??;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Async<T: AsFd> {
    source: Rc<Source<T>>,
    key: Key<Rc<Source<T>>>,
}

/// What the selector owns (one reference) and what the task side uses (the other).
struct Source<T> {
    io: T,
    state: IoState,
}

impl<T: AsFd> AsFd for Source<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// The readiness cache and the waiters of one source.
struct IoState {
    /// What the source is believed ready for; cleared by `WouldBlock` and short transfers.
    ready: Cell<Interest>,
    /// The registration's interest as this side last set it.
    armed: Cell<Interest>,
    readers: RefCell<Vec<Waker>>,
    writers: RefCell<Vec<Waker>>,
    /// To queue the removal when the wrapper is dropped outside the loop.
    shared: Arc<Shared>,
}

impl IoState {
    fn waiters(&self, direction: Interest) -> &RefCell<Vec<Waker>> {
        if direction == Interest::READ {
            &self.readers
        } else {
            &self.writers
        }
    }

    fn clear(&self, direction: Interest) {
        self.ready.set(self.ready.get().remove(direction));
    }

    /// The registration's callback: note the readiness, wake every waiter of each ready
    /// direction, and stop watching a direction nobody waits for (level-triggered, it would
    /// otherwise wake the loop on every iteration).
    fn on_event(&self, reg: &mut Registry, event: Event<Rc<Source<impl AsFd>>>) {
        let readiness = event.readiness();
        let mut armed = self.armed.get();
        for (direction, is_ready) in [
            (Interest::READ, readiness.is_readable()),
            (Interest::WRITE, readiness.is_writable()),
        ] {
            if is_ready {
                self.ready.set(self.ready.get().add(direction));
                if !wake_all(self.waiters(direction)) {
                    armed = armed.remove(direction);
                }
            }
        }
        if armed != self.armed.get() {
            self.armed.set(armed);
            // Applied when this callback returns; an OS error there removes the registration,
            // and the next wait reports `NotFound`.
            let _ = reg.modify(event.key(), armed);
        }
    }
}

fn includes(set: Interest, direction: Interest) -> bool {
    set.add(direction) == set
}

/// Wakes and forgets every waker in `waiters`; returns whether there were any.
fn wake_all(waiters: &RefCell<Vec<Waker>>) -> bool {
    let mut woken = std::mem::take(&mut *waiters.borrow_mut());
    if woken.is_empty() {
        return false;
    }
    woken.drain(..).for_each(Waker::wake);
    // Keep the allocation for the next waiters, unless some arrived meanwhile.
    let mut current = waiters.borrow_mut();
    if current.is_empty() {
        *current = woken;
    }
    true
}

impl<T: AsFd + 'static> Async<T> {
    /// Puts `io` in non-blocking mode and registers it with the selector running the current
    /// task.
    ///
    /// `O_NONBLOCK` belongs to the open file description, which every duplicate of the
    /// descriptor shares, another process's included, and it stays set when the `Async` is
    /// dropped (as in tokio and async-io). For a descriptor shared with others, an inherited
    /// terminal or the process's own stdin, wrap a [`PipeReader`](crate::net::PipeReader) or
    /// [`PipeWriter`](crate::net::PipeWriter) instead: they put the blocking mode back when
    /// dropped.
    ///
    /// # Errors
    ///
    /// The OS's error setting non-blocking mode or registering (`EPERM` for a regular file,
    /// which epoll cannot watch), or [`Other`](io::ErrorKind::Other) outside a task or
    /// `block_on` future.
    pub fn new(io: T) -> io::Result<Async<T>> {
        set_nonblocking(io.as_fd())?;
        Async::register(io, Interest::READ, Interest::BOTH)
    }

    /// Registers a non-blocking `io` for `armed`, believed ready for `ready`.
    pub(crate) fn register(io: T, armed: Interest, ready: Interest) -> io::Result<Async<T>> {
        try_with_registry(|reg| {
            let source = Rc::new(Source {
                io,
                state: IoState {
                    ready: Cell::new(ready),
                    armed: Cell::new(armed),
                    readers: RefCell::new(Vec::new()),
                    writers: RefCell::new(Vec::new()),
                    shared: Arc::clone(&reg.shared),
                },
            });
            let key = reg.register(Rc::clone(&source), armed, |reg, source, event| {
                source.state.on_event(reg, event);
                Ok(())
            })?;
            Ok(Async { source, key })
        })
        .unwrap_or_else(|| Err(outside_loop_error()))
    }

    /// The source.
    pub fn get_ref(&self) -> &T {
        &self.source.io
    }

    /// Resolves once the source is readable, at once if no operation has hit `WouldBlock` since
    /// it last was. Like every readiness, it may be spurious: the next read can still say
    /// `WouldBlock`.
    ///
    /// # Errors
    ///
    /// The OS's error arming the registration, or `Other` outside the loop.
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_ready(Interest::READ, cx)).await
    }

    /// Resolves once the source is writable (see [`readable`](Async::readable)).
    ///
    /// # Errors
    ///
    /// As for [`readable`](Async::readable).
    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_ready(Interest::WRITE, cx)).await
    }

    /// Runs `op` until it does not fail with `WouldBlock`, waiting for readability in between:
    /// the building block of every read-side operation (`recv_from`, `accept`, ...).
    /// `Interrupted` is retried.
    ///
    /// # Errors
    ///
    /// `op`'s error, or as for [`readable`](Async::readable).
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_with(Interest::READ, cx, &mut op)).await
    }

    /// As [`read_with`](Async::read_with), for the write side.
    ///
    /// # Errors
    ///
    /// As for [`read_with`](Async::read_with).
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_with(Interest::WRITE, cx, &mut op)).await
    }

    /// Forgets that the source is ready for `direction`: the next wait for it waits for an
    /// event.
    pub(crate) fn clear_ready(&self, direction: Interest) {
        self.source.state.clear(direction);
    }

    fn poll_ready(&self, direction: Interest, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = &self.source.state;
        if includes(state.ready.get(), direction) {
            return Poll::Ready(Ok(()));
        }
        {
            let mut waiters = state.waiters(direction).borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
        }
        let armed = state.armed.get();
        if !includes(armed, direction) {
            let wanted = armed.add(direction);
            match try_with_registry(|reg| reg.modify(self.key, wanted)) {
                Some(Ok(())) => state.armed.set(wanted),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Err(outside_loop_error())),
            }
        }
        Poll::Pending
    }

    fn poll_with<R>(
        &self,
        direction: Interest,
        cx: &mut Context<'_>,
        op: &mut impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            match self.poll_ready(direction, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match op(&self.source.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.source.state.clear(direction)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return Poll::Ready(result),
            }
        }
    }

    /// A read into `buf` for the `AsyncRead` impls: a short read clears the readiness, so the
    /// next read waits for the selector instead of paying for a `WouldBlock`.
    fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        read: impl Fn(&T, &mut [u8]) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        let n = match self.poll_with(Interest::READ, cx, &mut |io| read(io, buf)) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if n > 0 && n < len {
            self.source.state.clear(Interest::READ);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_from(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        write: impl Fn(&T, &[u8]) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let n = match self.poll_with(Interest::WRITE, cx, &mut |io| write(io, buf)) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if n < buf.len() {
            self.source.state.clear(Interest::WRITE);
        }
        Poll::Ready(Ok(n))
    }
}

/// Sets `O_NONBLOCK` (socket2's call is a plain `fcntl`, valid for any descriptor).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    socket2::SockRef::from(&fd).set_nonblocking(true)
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        let key = self.key;
        if try_with_registry(|reg| reg.remove(key)).is_none() {
            // Not on the loop: let it remove the registration (and so close the source) on its
            // next iteration. Once the selector is gone, it has deleted the source already.
            // `remove` ignores the source type, and an untyped key keeps the closure 'static.
            let untyped: Key<()> = Key::new(key.token, key.owner);
            let _ = Handle::new(Arc::clone(&self.source.state.shared)).call_soon(move |reg| {
                let _ = reg.remove(untyped);
            });
        }
    }
}

impl<T: AsFd> AsFd for Async<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.source.io.as_fd()
    }
}

impl<T: AsFd> AsRawFd for Async<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl<T: AsFd + fmt::Debug> fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Async")
            .field("io", &self.source.io)
            .field("ready", &self.source.state.ready.get())
            .field("armed", &self.source.state.armed.get())
            .finish()
    }
}

impl<T> futures_io::AsyncRead for Async<T>
where
    T: AsFd + 'static,
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_into(cx, buf, |mut io, buf| io.read(buf))
    }
}

impl<T> futures_io::AsyncRead for &Async<T>
where
    T: AsFd + 'static,
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_into(cx, buf, |mut io, buf| io.read(buf))
    }
}

/// How a stream's write side is closed: `shutdown(Write)` for sockets (the peer reads end of
/// stream, and the read side stays open); nothing for a pipe, whose write end closes when the
/// wrapper is dropped.
pub trait CloseWrite {
    /// Ends the write side, if the type can do so while staying open.
    ///
    /// # Errors
    ///
    /// The OS's error.
    fn close_write(&self) -> io::Result<()>;
}

impl CloseWrite for std::net::TcpStream {
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl CloseWrite for std::os::unix::net::UnixStream {
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl CloseWrite for std::fs::File {
    fn close_write(&self) -> io::Result<()> {
        Ok(())
    }
}

impl CloseWrite for crate::net::PipeWriter {
    fn close_write(&self) -> io::Result<()> {
        Ok(())
    }
}

fn poll_write_impl<T>(this: &Async<T>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>
where
    T: AsFd + 'static,
    for<'a> &'a T: Write,
{
    this.poll_write_from(cx, buf, |mut io, buf| io.write(buf))
}

impl<T> futures_io::AsyncWrite for Async<T>
where
    T: AsFd + CloseWrite + 'static,
    for<'a> &'a T: Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_impl(&self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.source.io.close_write())
    }
}

impl<T> futures_io::AsyncWrite for &Async<T>
where
    T: AsFd + CloseWrite + 'static,
    for<'a> &'a T: Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_impl(&self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.source.io.close_write())
    }
}
