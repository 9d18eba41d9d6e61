//! An echo server built on `selreactor::net`, on a selector thread of its own, with counters
//! the tests read through its `Handle`: the library's transport and server under the loads the
//! echo tests put on them.
//!
//! Include it with `#[path = "util/echo_server.rs"] mod echo_server;`.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use selreactor::net::{
    serve, tcp_listener, ConnId, ListenOptions, Protocol, Server, ServerOptions, Transport,
};
use selreactor::{Handle, Registry, Selector};
use socket2::SockRef;

/// How long a test waits for the server to start, answer, or reach a state.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The server's knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The write buffer's high-water mark: above it the server stops reading the connection.
    pub high_water: usize,
    /// Where it reads again.
    pub low_water: usize,
    /// The most one read takes (the transport's shared buffer): the bound on how far a buffer
    /// can pass `high_water`.
    pub read_chunk: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            read_chunk: 64 * 1024,
        }
    }
}

/// The server's counters, as plain values that can cross threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections ended, for whatever reason.
    pub closed: u64,
    /// Bytes read from peers.
    pub bytes_received: u64,
    /// Bytes the peers have been sent: received, less what is still buffered (for connections
    /// that ended with an error, what was buffered after their last write).
    pub bytes_echoed: u64,
    /// The most echo any one connection has had buffered.
    pub peak_pending: usize,
    /// Echo buffered right now, over all connections.
    pub pending_now: usize,
    /// Times a connection passed the high-water mark and stopped being read.
    pub read_pauses: u64,
    /// Times a write left something buffered (the socket was full).
    pub short_writes: u64,
    /// Connections that ended with an error (reset, broken pipe, ...).
    pub connection_errors: u64,
    /// Of those, the `EPIPE` ones.
    pub broken_pipes: u64,
    /// Callbacks the loop ran, not counting the tests' own queries.
    pub callbacks: u64,
    /// Times accepting paused for want of descriptors.
    pub accept_pauses: u64,
}

/// What the loop keeps, in its state.
#[derive(Default)]
struct Books {
    totals: Totals,
    /// The connections still open.
    live: BTreeSet<ConnId<TcpStream>>,
    stop: bool,
}

struct Echo {
    received: u64,
    /// The buffer's size after the last write: what an error may have cut off.
    last_pending: usize,
    config: Config,
}

impl Protocol for Echo {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        tx.set_write_limits(self.config.high_water, self.config.low_water);
        let id = tx.id();
        books(tx.registry()).live.insert(id);
        Ok(())
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.received += data.len() as u64;
        tx.write(data)?;
        let pending = tx.write_buffer_size();
        self.last_pending = pending;
        let totals = &mut books(tx.registry()).totals;
        totals.bytes_received += data.len() as u64;
        totals.peak_pending = totals.peak_pending.max(pending);
        if pending > 0 {
            totals.short_writes += 1;
        }
        Ok(())
    }

    fn pause_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        books(tx.registry()).totals.read_pauses += 1;
        tx.pause_reading();
    }

    fn resume_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.resume_reading();
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, reason: Option<io::Error>) {
        let id = tx.id();
        tx.registry().state::<ClosedBytes>().unwrap().0 += self.received;
        let books = books(tx.registry());
        books.live.remove(&id);
        let totals = &mut books.totals;
        totals.closed += 1;
        match reason {
            None => totals.bytes_echoed += self.received,
            Some(e) => {
                // Sent, as far as this protocol saw: exact when its last write went through.
                totals.bytes_echoed += self.received - self.last_pending as u64;
                totals.connection_errors += 1;
                if e.kind() == io::ErrorKind::BrokenPipe {
                    totals.broken_pipes += 1;
                }
            }
        }
    }
}

fn books(reg: &mut Registry) -> &mut Books {
    reg.state::<Books>().expect("the server thread inserts it")
}

/// The counters as they stand, with the live connections' share.
fn totals(reg: &mut Registry, server: Server<TcpListener>) -> Totals {
    let live: Vec<_> = books(reg).live.iter().copied().collect();
    let mut totals = books(reg).totals;
    for id in live {
        if let Ok(tx) = id.transport(reg) {
            totals.pending_now += tx.write_buffer_size();
        }
    }
    // Live connections have sent what they received, less what is still buffered.
    let received_live = totals.bytes_received - received_closed(reg);
    totals.bytes_echoed += received_live - totals.pending_now as u64;
    if let Some(stats) = server.stats(reg) {
        totals.accepted = stats.accepted;
        totals.accept_pauses = stats.out_of_descriptors;
    }
    totals
}

/// Bytes received by connections that have ended (kept apart from the live ones' bytes).
fn received_closed(reg: &mut Registry) -> u64 {
    reg.state::<ClosedBytes>().map_or(0, |c| c.0)
}

/// Bytes received by connections that ended, cleanly or not.
#[derive(Default)]
struct ClosedBytes(u64);

/// The counters, handed to [`EchoServer::query`]'s closure.
#[derive(Debug)]
pub struct Stats(Totals);

impl Stats {
    /// The counters as they stood when the query ran.
    pub fn totals(&self) -> Totals {
        self.0
    }
}

pub struct EchoServer {
    pub addr: SocketAddr,
    pub handle: Handle,
    /// The server selector's epoll descriptor, for reading its `fdinfo`.
    pub epoll: RawFd,
    thread: Option<JoinHandle<io::Result<Totals>>>,
}

/// Counts what the queries themselves run, so that `callbacks` counts only the server's own.
struct Queries(u64);

impl EchoServer {
    /// Starts a server on `127.0.0.1:0` with `config`; `socket_buffers` sets the listener's
    /// SO_RCVBUF and SO_SNDBUF, which accepted connections inherit (small ones force partial
    /// writes).
    pub fn start(config: Config, socket_buffers: Option<usize>) -> io::Result<EchoServer> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn(move || -> io::Result<Totals> {
            let setup = || -> io::Result<_> {
                let listener =
                    tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
                if let Some(size) = socket_buffers {
                    let socket = SockRef::from(&listener);
                    socket.set_recv_buffer_size(size)?;
                    socket.set_send_buffer_size(size)?;
                }
                let addr = listener.local_addr()?;
                let mut sel = Selector::new()?;
                sel.insert_state(Books::default());
                sel.insert_state(ClosedBytes::default());
                sel.insert_state(Queries(0));
                let server = serve(&mut sel, listener, ServerOptions::default(), move |_, _| {
                    Echo {
                        received: 0,
                        last_pending: 0,
                        config: config.clone(),
                    }
                })?;
                sel.insert_state(server);
                Ok((sel, server, addr))
            };
            let (mut sel, server, addr) = match setup() {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(Totals::default());
                }
            };
            let _ = ready_tx.send(Ok((addr, sel.handle(), sel.as_raw_fd())));
            let mut callbacks = 0;
            while !books(&mut sel).stop {
                callbacks += sel.run_once(None)? as u64;
                let queries = sel.state::<Queries>().unwrap().0;
                books(&mut sel).totals.callbacks = callbacks - queries;
            }
            Ok(totals(&mut sel, server))
        });
        let (addr, handle, epoll) = ready_rx
            .recv_timeout(SETTLE)
            .map_err(|_| io::Error::other("the server thread did not start"))??;
        Ok(EchoServer {
            addr,
            handle,
            epoll,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the server's thread, between callbacks, with its registry and counters.
    pub fn query<R, F>(&self, f: F) -> io::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Registry, &Stats) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.handle.call_soon(move |reg| {
            reg.state::<Queries>().unwrap().0 += 1;
            let server = *reg.state::<Server<TcpListener>>().unwrap();
            let stats = Stats(totals(reg, server));
            let _ = tx.send(f(reg, &stats));
        })?;
        rx.recv_timeout(SETTLE)
            .map_err(|_| io::Error::other("the server did not answer"))
    }

    /// The server's counters, read on its own thread.
    pub fn totals(&self) -> io::Result<Totals> {
        self.query(|_, stats| stats.totals())
    }

    /// Polls the counters until `done` holds; fails after `SETTLE`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Totals) -> bool) -> io::Result<Totals> {
        poll_until(what, || self.totals(), done)
    }

    /// Stops the loop and returns the final counters.
    pub fn stop(mut self) -> io::Result<Totals> {
        self.handle.call_soon(|reg| books(reg).stop = true)?;
        let thread = self.thread.take().expect("stopped once");
        thread
            .join()
            .map_err(|_| io::Error::other("the server thread panicked"))?
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // A test that failed early still stops its server rather than leaving it running.
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.call_soon(|reg| books(reg).stop = true);
            let _ = thread.join();
        }
    }
}

/// Samples until `done` holds; fails after `SETTLE`, showing the last sample.
pub fn poll_until<S: Debug>(
    what: &str,
    mut sample: impl FnMut() -> io::Result<S>,
    done: impl Fn(&S) -> bool,
) -> io::Result<S> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let sampled = sample()?;
        if done(&sampled) {
            return Ok(sampled);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "timed out waiting for {what}; server at {sampled:?}"
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}
