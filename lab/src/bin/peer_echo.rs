//! The echo benchmark's peer servers: the same echo as the crate's `examples/echo.rs`, written
//! the way each library is meant to be used, plus a raw level-triggered epoll floor.
//!
//! ```text
//! cargo run --release -p selreactor-lab --bin peer_echo -- <epoll|selreactor|polling|mio|tokio|smol|calloop> [ADDR]
//! ```
//!
//! `ADDR` defaults to 127.0.0.1:8008. Each server accepts any number of connections and echoes
//! whatever arrives. When a write is partial, the rest is kept and the connection stops reading
//! until it is flushed (so a client that never reads cannot grow the server's memory). A read of
//! 0 or an error closes the connection. Nothing is logged per connection. Stop it with Ctrl-C.
//! `lab/scripts/echo-bench.sh` and `lab/scripts/cost-per-rtt.sh` run these against
//! `echo_load`; BENCHMARKS.md has the results.
//!
//! - `epoll`: the floor: one `epoll_wait`, then per ready connection one read and one write.
//! - `selreactor`: the floor's exact I/O (the same `echo_step`) as selreactor callbacks, to
//!   separate the reactor's own cost from the policy of `examples/echo.rs` (which reads until
//!   `WouldBlock`, up to four reads per callback).
//! - `polling`: the same loop on `polling::Poller` in level mode (what selreactor builds on).
//! - `mio`: edge-triggered, as mio requires: each event drains the socket to `WouldBlock`.
//! - `tokio`: a current-thread runtime, one task per connection with `read` and `write_all`.
//! - `smol`: smol's stack, async-io's `Async<TcpStream>` on async-executor's `LocalExecutor`,
//!   one task per connection with `read` and `write_all` (as `tokio`).
//! - `calloop`: a level-triggered `Generic` source per connection inside a small custom
//!   `EventSource` that re-registers itself to wait for writability.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Read size for every server: it holds a whole 4 KiB message, and several 64 B ones.
const BUF_SIZE: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: peer_echo <epoll|selreactor|polling|mio|tokio|smol|calloop> [ADDR]";
    let which = args.next().ok_or_else(|| invalid(usage))?;
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8008".to_string())
        .parse()
        .map_err(|_| invalid("ADDR must be IP:PORT"))?;
    match which.as_str() {
        "epoll" => epoll_floor::serve(addr),
        "polling" => raw_polling::serve(addr),
        "mio" => mio_edge::serve(addr),
        "tokio" => tokio_current_thread::serve(addr),
        "smol" => smol_local::serve(addr),
        "calloop" => calloop_level::serve(addr),
        "selreactor" => selreactor_step::serve(addr),
        _ => Err(invalid(usage)),
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

/// What a level-triggered connection waits for next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Next {
    Read,
    Write,
    Close,
}

/// One level-triggered step, shared by the floor, polling and calloop servers so that they do
/// identical I/O: flush what is pending, or else read once and echo it. Reading once (not to
/// `WouldBlock`) is what level triggering allows: anything left makes the next wait return.
fn echo_step(stream: &TcpStream, pending: &mut Vec<u8>, buf: &mut [u8]) -> Next {
    let mut stream = stream;
    if !pending.is_empty() {
        return match stream.write(pending) {
            Ok(n) => {
                pending.drain(..n);
                if pending.is_empty() {
                    Next::Read
                } else {
                    Next::Write
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Write,
            Err(_) => Next::Close,
        };
    }
    let n = match stream.read(buf) {
        Ok(0) => return Next::Close,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Read,
        Err(_) => return Next::Close,
    };
    match stream.write(&buf[..n]) {
        Ok(written) if written == n => Next::Read,
        Ok(written) => {
            pending.extend_from_slice(&buf[written..n]);
            Next::Write
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pending.extend_from_slice(&buf[..n]);
            Next::Write
        }
        Err(_) => Next::Close,
    }
}

fn accept_nonblocking(listener: &TcpListener) -> io::Result<Option<TcpStream>> {
    match listener.accept() {
        Ok((stream, _)) => {
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            Ok(Some(stream))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        // A connection that died in the backlog (or a transient EMFILE) is not the server's end.
        Err(_) => Ok(None),
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

mod epoll_floor {
    use super::*;
    use selreactor_lab::epoll::{is_readable, is_writable, token, Epoll};

    struct Conn {
        stream: TcpStream,
        pending: Vec<u8>,
    }

    const LISTENER: u64 = u64::MAX;

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let listener = bind(addr)?;
        let poll = Epoll::new()?;
        poll.add(&listener, LISTENER, true, false)?;
        let mut conns: slab::Slab<Conn> = slab::Slab::new();
        let mut events = Vec::with_capacity(1024);
        let mut buf = vec![0; BUF_SIZE];
        loop {
            poll.wait(&mut events, None)?;
            for event in &events {
                let token = token(event);
                if token == LISTENER {
                    // Level-triggered: one accept per wake-up; more wake it again.
                    if let Some(stream) = accept_nonblocking(&listener)? {
                        let slot = conns.vacant_entry();
                        poll.add(&stream, slot.key() as u64, true, false)?;
                        slot.insert(Conn {
                            stream,
                            pending: Vec::new(),
                        });
                    }
                    continue;
                }
                let index = token as usize;
                let Some(conn) = conns.get_mut(index) else {
                    continue;
                };
                if !is_readable(event) && !is_writable(event) {
                    continue;
                }
                let was_writing = !conn.pending.is_empty();
                match echo_step(&conn.stream, &mut conn.pending, &mut buf) {
                    Next::Close => {
                        let conn = conns.remove(index);
                        poll.delete(&conn.stream)?;
                    }
                    Next::Write if !was_writing => poll.modify(&conn.stream, token, false, true)?,
                    Next::Read if was_writing => poll.modify(&conn.stream, token, true, false)?,
                    _ => {}
                }
            }
        }
    }
}

mod selreactor_step {
    use super::*;
    use selreactor::{Interest, Selector};
    use std::cell::RefCell;
    use std::rc::Rc;

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let mut sel = Selector::new()?;
        let buf = Rc::new(RefCell::new(vec![0; BUF_SIZE]));
        sel.register(bind(addr)?, Interest::READ, move |reg, listener, _| {
            let Some(stream) = accept_nonblocking(listener)? else {
                return Ok(());
            };
            let buf = Rc::clone(&buf);
            let mut pending = Vec::new();
            reg.register(stream, Interest::READ, move |reg, stream, event| {
                // Like the floor: touch the registration only when what it waits for changes.
                let was_writing = !pending.is_empty();
                match echo_step(stream, &mut pending, &mut buf.borrow_mut()) {
                    Next::Close => reg.remove(event.key()),
                    Next::Write if !was_writing => reg.modify(event.key(), Interest::WRITE),
                    Next::Read if was_writing => reg.modify(event.key(), Interest::READ),
                    _ => Ok(()),
                }
            })?;
            Ok(())
        })?;
        sel.run()
    }
}

mod raw_polling {
    use super::*;
    use polling::{Event, Events, PollMode, Poller};

    struct Conn {
        stream: TcpStream,
        pending: Vec<u8>,
    }

    const LISTENER: usize = usize::MAX - 1;

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let listener = bind(addr)?;
        let poller = Poller::new()?;
        // SAFETY: the listener lives until `serve` returns, and the poller is declared after it,
        // so it is dropped first; a registered source is never closed while still in the poller.
        unsafe { poller.add_with_mode(&listener, Event::readable(LISTENER), PollMode::Level)? };
        let mut conns: slab::Slab<Conn> = slab::Slab::new();
        let mut events = Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap());
        let mut buf = vec![0; BUF_SIZE];
        loop {
            events.clear();
            poller.wait(&mut events, None)?;
            for event in events.iter() {
                if event.key == LISTENER {
                    if let Some(stream) = accept_nonblocking(&listener)? {
                        let slot = conns.vacant_entry();
                        let key = slot.key();
                        // SAFETY: the stream is deleted from the poller before it is dropped
                        // (see `Next::Close` below); at exit the poller is dropped first.
                        unsafe {
                            poller.add_with_mode(&stream, Event::readable(key), PollMode::Level)?
                        };
                        slot.insert(Conn {
                            stream,
                            pending: Vec::new(),
                        });
                    }
                    continue;
                }
                let Some(conn) = conns.get_mut(event.key) else {
                    continue;
                };
                let was_writing = !conn.pending.is_empty();
                match echo_step(&conn.stream, &mut conn.pending, &mut buf) {
                    Next::Close => {
                        let conn = conns.remove(event.key);
                        poller.delete(&conn.stream)?;
                    }
                    Next::Write if !was_writing => poller.modify_with_mode(
                        &conn.stream,
                        Event::writable(event.key),
                        PollMode::Level,
                    )?,
                    Next::Read if was_writing => poller.modify_with_mode(
                        &conn.stream,
                        Event::readable(event.key),
                        PollMode::Level,
                    )?,
                    _ => {}
                }
            }
        }
    }
}

mod mio_edge {
    use super::*;
    use mio::net::{TcpListener, TcpStream};
    use mio::{Events, Interest, Poll, Token};

    struct Conn {
        stream: TcpStream,
        pending: Vec<u8>,
    }

    const LISTENER: Token = Token(usize::MAX - 1);

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let mut listener = TcpListener::bind(addr)?;
        let mut poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut conns: slab::Slab<Conn> = slab::Slab::new();
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0; BUF_SIZE];
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                if event.token() == LISTENER {
                    // Edge-triggered: accept until the backlog is empty.
                    loop {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                stream.set_nodelay(true)?;
                                let slot = conns.vacant_entry();
                                poll.registry().register(
                                    &mut stream,
                                    Token(slot.key()),
                                    Interest::READABLE,
                                )?;
                                slot.insert(Conn {
                                    stream,
                                    pending: Vec::new(),
                                });
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => break,
                        }
                    }
                    continue;
                }
                let index = event.token().0;
                let Some(conn) = conns.get_mut(index) else {
                    continue;
                };
                let was_writing = !conn.pending.is_empty();
                match drain(conn, &mut buf) {
                    Next::Close => {
                        let mut conn = conns.remove(index);
                        poll.registry().deregister(&mut conn.stream)?;
                    }
                    Next::Write if !was_writing => poll.registry().reregister(
                        &mut conn.stream,
                        event.token(),
                        Interest::WRITABLE,
                    )?,
                    Next::Read if was_writing => poll.registry().reregister(
                        &mut conn.stream,
                        event.token(),
                        Interest::READABLE,
                    )?,
                    _ => {}
                }
            }
        }
    }

    /// Edge-triggered: keep going until the socket says `WouldBlock`, or no edge will come.
    fn drain(conn: &mut Conn, buf: &mut [u8]) -> Next {
        while !conn.pending.is_empty() {
            match conn.stream.write(&conn.pending) {
                Ok(n) => drop(conn.pending.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Write,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        // Flushed: data that arrived while writing raised no edge we will see, so read now.
        loop {
            let n = match conn.stream.read(buf) {
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            };
            match conn.stream.write(&buf[..n]) {
                Ok(written) if written == n => {}
                Ok(written) => {
                    conn.pending.extend_from_slice(&buf[written..n]);
                    return Next::Write;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.pending.extend_from_slice(&buf[..n]);
                    return Next::Write;
                }
                Err(_) => return Next::Close,
            }
        }
    }
}

mod tokio_current_thread {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true)?;
                tokio::spawn(async move {
                    let mut buf = vec![0; BUF_SIZE];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
    }
}

mod smol_local {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let executor = async_executor::LocalExecutor::new();
        futures_lite::future::block_on(executor.run(async {
            let listener = async_io::Async::<TcpListener>::bind(addr)?;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.get_ref().set_nodelay(true)?;
                executor
                    .spawn(async move {
                        let mut buf = vec![0; BUF_SIZE];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    })
                    .detach();
            }
        }))
    }
}

mod calloop_level {
    use super::*;
    use calloop::generic::Generic;
    use calloop::{
        EventLoop, EventSource, Interest, Mode, Poll, PostAction, Readiness, Token, TokenFactory,
    };
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A connection: a level-triggered `Generic` plus the bytes it still owes its peer. The
    /// wrapper exists because a `Generic`'s callback cannot change the source's own interest;
    /// here the step's outcome does, followed by `PostAction::Reregister`.
    struct Conn {
        io: Generic<TcpStream>,
        pending: Vec<u8>,
        buf: Rc<RefCell<Vec<u8>>>,
    }

    impl EventSource for Conn {
        type Event = ();
        type Metadata = ();
        type Ret = ();
        type Error = io::Error;

        fn process_events<F>(
            &mut self,
            readiness: Readiness,
            token: Token,
            _callback: F,
        ) -> io::Result<PostAction>
        where
            F: FnMut((), &mut ()),
        {
            let pending = &mut self.pending;
            let mut buf = self.buf.borrow_mut();
            let mut next = None;
            self.io.process_events(readiness, token, |_, stream| {
                next = Some(echo_step(stream, pending, &mut buf));
                Ok(PostAction::Continue)
            })?;
            let wanted = match next {
                None => return Ok(PostAction::Continue),
                Some(Next::Close) => return Ok(PostAction::Remove),
                Some(Next::Read) => Interest::READ,
                Some(Next::Write) => Interest::WRITE,
            };
            let current = self.io.interest;
            if (wanted.readable, wanted.writable) == (current.readable, current.writable) {
                Ok(PostAction::Continue)
            } else {
                self.io.interest = wanted;
                Ok(PostAction::Reregister)
            }
        }

        fn register(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> calloop::Result<()> {
            self.io.register(poll, factory)
        }

        fn reregister(
            &mut self,
            poll: &mut Poll,
            factory: &mut TokenFactory,
        ) -> calloop::Result<()> {
            self.io.reregister(poll, factory)
        }

        fn unregister(&mut self, poll: &mut Poll) -> calloop::Result<()> {
            self.io.unregister(poll)
        }
    }

    pub(super) fn serve(addr: SocketAddr) -> io::Result<()> {
        let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().map_err(io::Error::other)?;
        let handle = event_loop.handle();
        let conns = handle.clone();
        let buf = Rc::new(RefCell::new(vec![0; BUF_SIZE]));
        let listener = Generic::new(bind(addr)?, Interest::READ, Mode::Level);
        handle
            .insert_source(listener, move |_, listener, _| {
                if let Some(stream) = accept_nonblocking(listener)? {
                    let conn = Conn {
                        io: Generic::new(stream, Interest::READ, Mode::Level),
                        pending: Vec::new(),
                        buf: Rc::clone(&buf),
                    };
                    conns
                        .insert_source(conn, |_, _, _| {})
                        .map_err(|e| io::Error::other(e.error))?;
                }
                Ok(PostAction::Continue)
            })
            .map_err(|e| io::Error::other(e.error))?;
        event_loop
            .run(None, &mut (), |_| {})
            .map_err(io::Error::other)
    }
}
