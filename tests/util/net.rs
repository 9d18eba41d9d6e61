//! Helpers for the network layer's tests: a protocol that records what it hears into the
//! loop's state, a server fixture on 127.0.0.1:0, and a loop driver with a deadline.
//!
//! Include it with `#[path = "util/net.rs"] mod net_util;`.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::net::{
    serve, tcp_listener, ConnId, ListenOptions, Protocol, Server, ServerOptions, Transport,
};
use selreactor::Selector;

/// Long enough for any loaded machine; a broken transport fails the test instead of hanging it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What a [`Recorder`] heard, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    Made,
    Data(Vec<u8>),
    Eof,
    /// With the buffer's size when it came.
    Pause(usize),
    Resume(usize),
    Lost(Option<io::ErrorKind>),
}

/// Every recorder's log, by connection, in the loop's state.
#[derive(Default, Debug)]
pub struct Log(pub Vec<(ConnId<TcpStream>, Heard)>);

impl Log {
    pub fn of(&self, id: ConnId<TcpStream>) -> Vec<Heard> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, h)| h.clone())
            .collect()
    }

    pub fn lost(&self) -> usize {
        self.0
            .iter()
            .filter(|(_, h)| matches!(h, Heard::Lost(_)))
            .count()
    }
}

/// What a recorder does after logging an event.
pub type Script = Box<dyn FnMut(&mut Transport<'_, TcpStream>, &Heard) -> io::Result<()>>;

/// A protocol that logs what it hears into [`Log`], then runs its script; `eof` returns
/// `keep_open`. Counts its drops, so a test can check it is dropped exactly once.
pub struct Recorder {
    pub script: Script,
    pub keep_open: bool,
    pub drops: Rc<Cell<u32>>,
    /// A copy of what this one heard, readable after the selector is gone.
    pub mirror: Rc<RefCell<Vec<Heard>>>,
}

impl Recorder {
    pub fn new(
        script: impl FnMut(&mut Transport<'_, TcpStream>, &Heard) -> io::Result<()> + 'static,
    ) -> Recorder {
        Recorder {
            script: Box::new(script),
            keep_open: false,
            drops: Rc::default(),
            mirror: Rc::default(),
        }
    }

    fn hear(&mut self, tx: &mut Transport<'_, TcpStream>, heard: Heard) -> io::Result<()> {
        let id = tx.id();
        self.mirror.borrow_mut().push(heard.clone());
        tx.registry()
            .state::<Log>()
            .expect("the test inserts a Log")
            .0
            .push((id, heard.clone()));
        (self.script)(tx, &heard)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
    }
}

impl Protocol for Recorder {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        self.hear(tx, Heard::Made)
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.hear(tx, Heard::Data(data.to_vec()))
    }

    fn eof(&mut self, tx: &mut Transport<'_, TcpStream>) -> bool {
        let _ = self.hear(tx, Heard::Eof);
        self.keep_open
    }

    fn pause_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        let size = tx.write_buffer_size();
        let _ = self.hear(tx, Heard::Pause(size));
    }

    fn resume_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        let size = tx.write_buffer_size();
        let _ = self.hear(tx, Heard::Resume(size));
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, reason: Option<io::Error>) {
        let _ = self.hear(tx, Heard::Lost(reason.map(|e| e.kind())));
    }
}

/// A selector with a [`Log`] and a server on 127.0.0.1:0 whose connections get the protocols
/// `make` returns.
pub fn server<P: Protocol>(
    options: ServerOptions,
    make: impl FnMut() -> P + 'static,
) -> io::Result<(Selector, SocketAddr, Server<std::net::TcpListener>)> {
    let mut sel = Selector::new()?;
    sel.insert_state(Log::default());
    let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
    let addr = listener.local_addr()?;
    let mut make = make;
    let server = serve(&mut sel, listener, options, move |_, _| make())?;
    Ok((sel, addr, server))
}

/// Runs the loop until `done` says so; fails after [`DEADLINE`].
pub fn run_until(
    sel: &mut Selector,
    what: &str,
    mut done: impl FnMut(&mut Selector) -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !done(sel)? {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waited {DEADLINE:?} for {what}"),
            ));
        }
        sel.run_once(Some(Duration::from_millis(10)))?;
    }
    Ok(())
}

/// Runs the loop until a callback panics; returns the panic. Fails after [`DEADLINE`].
pub fn run_until_panic(sel: &mut Selector) -> io::Result<Box<dyn std::any::Any + Send>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sel.run_once(Some(Duration::from_millis(50)))
        }));
        match turn {
            Err(panic) => return Ok(panic),
            Ok(result) => drop(result?),
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waited {DEADLINE:?} for a panic"),
            ));
        }
    }
}

/// Runs the loop for `period`, whatever happens.
pub fn run_for(sel: &mut Selector, period: Duration) -> io::Result<()> {
    let end = Instant::now() + period;
    while Instant::now() < end {
        sel.run_once(Some(Duration::from_millis(10)))?;
    }
    Ok(())
}

/// The log of the only connection, once it has one.
pub fn only_log(sel: &mut Selector) -> Vec<Heard> {
    let log = sel.state::<Log>().unwrap();
    let Some((id, _)) = log.0.first() else {
        return Vec::new();
    };
    log.of(*id)
}

/// The only connection's id.
pub fn only_id(sel: &mut Selector) -> ConnId<TcpStream> {
    sel.state::<Log>().unwrap().0[0].0
}

/// A client whose reads do not block (drained by [`drain`] while the loop runs).
pub fn client(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// What the stream holds now, appended to `into`; `Ok(true)` at end of stream.
pub fn drain(mut stream: &TcpStream, into: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Closes `stream` with a reset rather than a FIN.
pub fn reset(stream: TcpStream) -> io::Result<()> {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// A counter pattern: byte `i` of a stream is `(i % 251) as u8`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}
