//! Servers: a listener whose every accepted connection gets a transport and a protocol.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{self as unix, UnixListener, UnixStream};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::stream::ByteStream;
use super::transport::{end_server_connections, open, Protocol, ServerLink, Setup};
use crate::{Interest, Key, RegisterError, Registry, TimerKey};

/// A listening socket a [server](serve) accepts from.
pub trait Listener: AsFd + 'static {
    /// What it accepts.
    type Stream: ByteStream;
    /// The peer's address, as `accept` gives it.
    type Addr;
    /// Whether [`accept`](Listener::accept) hands out streams in non-blocking mode already
    /// (`accept4` with `SOCK_NONBLOCK`), which saves the server a syscall per connection. When
    /// `false` (the default), the server puts each stream in non-blocking mode itself.
    const ACCEPTS_NONBLOCKING: bool = false;

    /// Accepts one pending connection.
    ///
    /// # Errors
    ///
    /// The OS's: `WouldBlock` when none is pending, `EMFILE` and friends when out of
    /// descriptors.
    fn accept(&self) -> io::Result<(Self::Stream, Self::Addr)>;

    /// Sets up an accepted stream before its transport starts (`TCP_NODELAY`, say).
    ///
    /// # Errors
    ///
    /// The OS's; the connection is then dropped.
    fn configure(stream: &Self::Stream, options: &ServerOptions) -> io::Result<()> {
        let _ = (stream, options);
        Ok(())
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    type Addr = SocketAddr;
    const ACCEPTS_NONBLOCKING: bool = cfg!(not(target_vendor = "apple"));

    /// Accepts with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` where the OS has it.
    #[cfg(not(target_vendor = "apple"))]
    fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        use rustix::net::{acceptfrom_with, SocketFlags};
        let (fd, peer) = acceptfrom_with(self, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
        let peer = peer
            .and_then(|addr| SocketAddr::try_from(addr).ok())
            .ok_or_else(|| io::Error::other("accept gave no IP address for a TCP peer"))?;
        Ok((TcpStream::from(fd), peer))
    }

    #[cfg(target_vendor = "apple")]
    fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self)
    }

    fn configure(stream: &TcpStream, options: &ServerOptions) -> io::Result<()> {
        if options.nodelay {
            stream.set_nodelay(true)?;
        }
        Ok(())
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Addr = unix::SocketAddr;

    fn accept(&self) -> io::Result<(UnixStream, unix::SocketAddr)> {
        UnixListener::accept(self)
    }
}

/// How a [server](serve) accepts and keeps its connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The most connections one wake-up accepts, so that a flood of new connections cannot
    /// starve established ones. Default 64.
    pub accept_batch: usize,
    /// The most connections open at once. At the cap the server stops accepting until one of
    /// its connections ends, then accepts the longest-waiting client at once; it never accepts a
    /// connection only to close it.
    ///
    /// What a client over the cap sees: its connect succeeds (the kernel completes it and
    /// queues it in the listener's backlog, [`ListenOptions::backlog`](super::ListenOptions)),
    /// and what it sends is buffered, but nothing answers until a place frees. The server gives
    /// it no error and no deadline: a client that must not wait long needs a timeout of its
    /// own. Once the backlog is full too, new connection attempts go unanswered (a TCP client
    /// retries its SYN, and its connect eventually times out). Default: no cap.
    pub max_connections: Option<usize>,
    /// Closes a connection through which no byte has moved for this long (it is checked every
    /// `idle_timeout`, so the close comes between one and two timeouts after the last byte);
    /// `lost` gets `TimedOut`. Default: none.
    pub idle_timeout: Option<Duration>,
    /// When accepting fails for want of descriptors (`EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`), the server stops accepting and tries again as soon as a connection on the
    /// same loop ends (of any server, a client's, a pipe's), or after this long at the latest
    /// (a descriptor freed any other way, or on another thread, is noticed then). Meanwhile clients wait in the
    /// backlog, as over the [cap](ServerOptions::max_connections). Default 100 ms.
    pub retry_after: Duration,
    /// `TCP_NODELAY` on accepted TCP connections. Default on.
    pub nodelay: bool,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            accept_batch: 64,
            max_connections: None,
            idle_timeout: None,
            retry_after: Duration::from_millis(100),
            nodelay: true,
        }
    }
}

impl ServerOptions {
    /// With a cap on open connections.
    pub fn max_connections(mut self, max: usize) -> ServerOptions {
        self.max_connections = Some(max);
        self
    }

    /// With an idle timeout per connection.
    pub fn idle_timeout(mut self, timeout: Duration) -> ServerOptions {
        self.idle_timeout = Some(timeout);
        self
    }

    /// With another fallback delay for retrying after running out of descriptors.
    pub fn retry_after(mut self, delay: Duration) -> ServerOptions {
        self.retry_after = delay;
        self
    }

    /// With another accept batch (at least 1).
    pub fn accept_batch(mut self, batch: usize) -> ServerOptions {
        self.accept_batch = batch.max(1);
        self
    }
}

/// A server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections open now.
    pub open: usize,
    /// Times accepting paused for want of descriptors.
    pub out_of_descriptors: u64,
    /// Times accepting paused at the connection cap.
    pub at_capacity: u64,
}

/// A `Copy` name for a server started by [`serve`]: close it, read its counters.
pub struct Server<L: Listener> {
    key: Key<Listening<L>>,
    id: u64,
}

impl<L: Listener> Clone for Server<L> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: Listener> Copy for Server<L> {}

impl<L: Listener> fmt::Debug for Server<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Server({}, {:?})", self.id, self.key.token())
    }
}

impl<L: Listener> Server<L> {
    /// Stops accepting and closes the listening socket (the address can be bound again at
    /// once); open connections go on.
    ///
    /// # Errors
    ///
    /// `NotFound` if the server is already closed.
    pub fn close(self, reg: &mut Registry) -> io::Result<()> {
        if let Some(listening) = reg.get(self.key) {
            let state = Rc::clone(&listening.state);
            state.shut(reg);
        }
        // From inside the factory the listener is out with its callback, which notices.
        reg.remove(self.key).map_err(|_| closed())
    }

    /// Stops accepting, as [`close`](Server::close) does, and ends every open connection of
    /// this server at once: each protocol's `lost` gets `ConnectionAborted`, from a deferred
    /// call. Works after `close` too.
    pub fn close_with_connections(self, reg: &mut Registry) {
        let _ = self.close(reg);
        end_server_connections(reg, self.id, "the server was closed");
    }

    /// The listener, for its address; `None` once the server is closed (or while its own
    /// callback runs: inside the protocol factory).
    pub fn listener(self, reg: &Registry) -> Option<&L> {
        reg.get(self.key).map(|l| &l.listener)
    }

    /// The counters; `None` once the server is closed.
    pub fn stats(self, reg: &Registry) -> Option<ServerStats> {
        reg.get(self.key).map(|l| l.state.stats.get())
    }

    /// Whether the server accepts (it is open, not at its cap and not out of descriptors).
    pub fn is_accepting(self, reg: &Registry) -> bool {
        reg.interest(self.key)
            .is_some_and(|interest| !interest.is_none())
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the server is closed")
}

/// The server's source: the listener, with what its connections share with it.
struct Listening<L: Listener> {
    listener: L,
    state: Rc<ServerState<L>>,
}

impl<L: Listener> AsFd for Listening<L> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

struct ServerState<L: Listener> {
    id: u64,
    options: ServerOptions,
    key: Cell<Option<Key<Listening<L>>>>,
    stats: Cell<ServerStats>,
    /// `accept` ran out of descriptors, and no server connection on this loop has ended since.
    starved: Cell<bool>,
    /// The fallback retry after running out of descriptors.
    retry: Cell<Option<TimerKey>>,
    closed: Cell<bool>,
    /// What the listener's registration waits for now.
    armed: Cell<Interest>,
}

impl<L: Listener> ServerState<L> {
    fn update(&self, change: impl FnOnce(&mut ServerStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }

    fn at_capacity(&self) -> bool {
        self.options
            .max_connections
            .is_some_and(|max| self.stats.get().open >= max)
    }

    fn accept_some<F, P>(
        self: &Rc<Self>,
        reg: &mut Registry,
        listener: &L,
        factory: &mut F,
    ) -> io::Result<()>
    where
        F: FnMut(&mut Registry, &L::Addr) -> P,
        P: Protocol<L::Stream>,
    {
        for _ in 0..self.options.accept_batch.max(1) {
            let removed = self.key.get().is_some_and(|key| !reg.contains(key));
            if self.closed.get() || removed || self.at_capacity() {
                break;
            }
            match listener.accept() {
                Ok((stream, addr)) => {
                    if L::configure(&stream, &self.options).is_err() {
                        continue; // the peer is likely gone already: drop it
                    }
                    self.update(|s| s.accepted += 1);
                    let protocol = factory(reg, &addr);
                    // Counted before it opens: its `made` may end it at once.
                    self.update(|s| s.open += 1);
                    let setup = Setup {
                        server: Some(Rc::clone(self) as Rc<dyn ServerLink>),
                        connecting: None,
                        idle_timeout: self.options.idle_timeout,
                        made_now: true,
                        nonblocking: L::ACCEPTS_NONBLOCKING,
                        _stream: PhantomData,
                    };
                    if open(reg, stream, Box::new(protocol), setup).is_err() {
                        self.update(|s| s.open -= 1);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient(&e) => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    self.starve(reg);
                    break;
                }
                Err(e) => {
                    // The listener itself is broken: the selector removes it and reports.
                    self.shut(reg);
                    return Err(e);
                }
            }
        }
        if self.at_capacity() {
            self.update(|s| s.at_capacity += 1);
        }
        self.rearm(reg);
        Ok(())
    }

    /// Out of descriptors: stop accepting until one is free.
    fn starve(self: &Rc<Self>, reg: &mut Registry) {
        self.update(|s| s.out_of_descriptors += 1);
        self.starved.set(true);
        let server: Weak<Self> = Rc::downgrade(self);
        Starving::add(reg, server);
        if self.retry.get().is_none() {
            let state = Rc::clone(self);
            let timer = reg.call_later(self.options.retry_after, move |reg| {
                state.retry.set(None);
                state.starved.set(false);
                state.rearm(reg);
            });
            self.retry.set(Some(timer));
        }
    }

    fn rearm(&self, reg: &mut Registry) {
        if self.closed.get() {
            return;
        }
        let want = if self.starved.get() || self.at_capacity() {
            Interest::NONE
        } else {
            Interest::READ
        };
        if want == self.armed.get() {
            return;
        }
        self.armed.set(want);
        if let Some(key) = self.key.get() {
            let _ = reg.modify(key, want);
        }
    }

    /// The server is closing: no more accepting, no retry timer.
    fn shut(&self, reg: &mut Registry) {
        self.closed.set(true);
        if let Some(timer) = self.retry.take() {
            let _ = reg.cancel(timer);
        }
    }
}

impl<L: Listener> ServerLink for ServerState<L> {
    fn id(&self) -> u64 {
        self.id
    }

    fn connection_ended(&self, reg: &mut Registry) {
        self.update(|s| s.open -= 1);
        self.rearm(reg);
        descriptor_freed(reg);
    }
}

impl<L: Listener> Starved for ServerState<L> {
    fn fed(&self, reg: &mut Registry) {
        if self.starved.replace(false) {
            // Accept now rather than at the fallback timer.
            if let Some(timer) = self.retry.take() {
                let _ = reg.cancel(timer);
            }
            self.rearm(reg);
        }
    }
}

/// A server waiting for a free descriptor.
trait Starved {
    /// One may be free now: try accepting again.
    fn fed(&self, reg: &mut Registry);
}

/// The loop's servers that ran out of descriptors since a server connection last ended (at
/// most one entry per server), kept in the registry's state.
#[derive(Default)]
struct Starving(Vec<Weak<dyn Starved>>);

impl Starving {
    fn add(reg: &mut Registry, server: Weak<dyn Starved>) {
        if reg.state::<Starving>().is_none() {
            reg.insert_state(Starving::default());
        }
        let starving = &mut reg.state::<Starving>().expect("inserted above").0;
        if !starving.iter().any(|s| s.ptr_eq(&server)) {
            starving.push(server);
        }
    }

    /// A descriptor was freed: every starving server tries again.
    fn feed(reg: &mut Registry) {
        let Some(starving) = reg.state::<Starving>() else {
            return;
        };
        for server in std::mem::take(&mut starving.0) {
            if let Some(server) = server.upgrade() {
                server.fed(reg);
            }
        }
    }
}

/// A connection of this loop ended, and with it a descriptor: the limit is the process's, so
/// whichever server (or client, or pipe) it was of, any server on the loop out of descriptors
/// may accept into it.
pub(crate) fn descriptor_freed(reg: &mut Registry) {
    Starving::feed(reg);
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::ECONNRESET))
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves `listener` (asyncio's `create_server`): every connection it accepts gets a transport
/// and the protocol `factory` makes for it (the factory gets the peer's address), until the
/// server is [closed](Server::close).
///
/// The listener should come from [`tcp_listener`](super::tcp_listener) or
/// [`unix_listener`](super::unix_listener) (or be otherwise non-blocking). See
/// [`ServerOptions`] for batching, the connection cap, idle timeouts, and how the server rides
/// out running out of descriptors (`EMFILE`): it pauses accepting, and resumes as soon as a
/// connection on the loop closes. A failing connection never stops the server.
///
/// # Errors
///
/// Registering the listener can fail (`EMFILE`, `AlreadyExists`); it comes back with the error.
///
/// # Examples
///
/// ```
/// use selreactor::net::{serve, tcp_listener, ListenOptions, Protocol, ServerOptions, Transport};
/// use selreactor::Selector;
/// use std::io::{self, Read, Write};
/// use std::net::TcpStream;
///
/// struct Shout;
///
/// impl Protocol for Shout {
///     fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
///         tx.write(&data.to_ascii_uppercase())
///     }
/// }
///
/// let mut sel = Selector::new()?;
/// let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
/// let addr = listener.local_addr()?;
/// let server = serve(&mut sel, listener, ServerOptions::default(), |_, _| Shout)?;
///
/// let mut client = TcpStream::connect(addr)?;
/// client.write_all(b"hello")?;
/// client.shutdown(std::net::Shutdown::Write)?;
/// while server.stats(&sel).unwrap().accepted == 0 || server.stats(&sel).unwrap().open > 0 {
///     sel.run_once(None)?;
/// }
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "HELLO");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve<L, P, F>(
    reg: &mut Registry,
    listener: L,
    options: ServerOptions,
    mut factory: F,
) -> Result<Server<L>, RegisterError<L>>
where
    L: Listener,
    P: Protocol<L::Stream>,
    F: FnMut(&mut Registry, &L::Addr) -> P + 'static,
{
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let state = Rc::new(ServerState {
        id,
        options,
        key: Cell::new(None),
        stats: Cell::new(ServerStats::default()),
        starved: Cell::new(false),
        retry: Cell::new(None),
        closed: Cell::new(false),
        armed: Cell::new(Interest::READ),
    });
    let listening = Listening {
        listener,
        state: Rc::clone(&state),
    };
    let registered = reg.register(listening, Interest::READ, move |reg, listening, _| {
        let state = Rc::clone(&listening.state);
        state.accept_some(reg, &listening.listener, &mut factory)
    });
    let key = match registered {
        Ok(key) => key,
        Err(e) => {
            return Err(RegisterError {
                source: e.source.listener,
                error: e.error,
            })
        }
    };
    state.key.set(Some(key));
    Ok(Server { key, id })
}
