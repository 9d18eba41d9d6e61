//! An echo server: the `selectors` example from the seed notes, done right.
//!
//! ```text
//! cargo run --release --example echo                     # listens on 127.0.0.1:8008
//! cargo run --release --example echo -- 127.0.0.1:9000   # or anywhere else
//! cargo run --release --example echo -- --quiet          # no per-connection logs
//! ```
//!
//! Poke it with `nc 127.0.0.1 8008` (type lines; Ctrl-D half-closes, and the server closes
//! once it has echoed everything), or `head -c 100M /dev/zero | nc -N 127.0.0.1 8008 | wc -c`.
//! Ctrl-C or `kill -TERM` stops it and prints what it served.
//!
//! What the seed's ten lines leave out, and how this one does it:
//!
//! - **Accepting fairly.** The listener's callback accepts until `WouldBlock`, but at most
//!   [`Config::accept_batch`] connections per call: the loop is level-triggered, so the rest
//!   wait one iteration while already-accepted connections get their turn.
//! - **Partial writes.** `write` may take less than it is given. What it leaves goes to a
//!   per-connection buffer, and the connection asks for `WRITE` only while that buffer holds
//!   something (a writable socket is writable almost always, so keeping `WRITE` on would spin).
//! - **Back-pressure.** A peer that sends but does not read would make that buffer grow without
//!   bound. At [`Config::high_water`] bytes pending the server stops reading from it (interest
//!   `WRITE` only), and resumes below [`Config::low_water`]. Each read is at most
//!   [`Config::read_chunk`] bytes and happens only below the high mark, so a buffer never
//!   exceeds `high_water + read_chunk`.
//! - **Half-close.** A read of 0 means the peer will send nothing more, not that it stopped
//!   reading: the server flushes what it owes, then closes.
//! - **Errors stay local.** A reset, a broken pipe or any other error on a connection closes that
//!   connection only. Writes go through std's `TcpStream`, which passes `MSG_NOSIGNAL` on Linux,
//!   so writing to a reset peer cannot raise `SIGPIPE`.
//! - **Running out of descriptors.** `accept` failing with `EMFILE`/`ENFILE` leaves the pending
//!   connection in the backlog, so the listener stays readable and a level-triggered loop would
//!   spin on it. Instead the listener is paused (`Interest::NONE` takes it out of the poller)
//!   and put back by a timer [`Config::accept_backoff`] later: existing connections are served
//!   meanwhile, retries cost a few wake-ups a second, and accepting resumes by itself once
//!   descriptors are free. Pending clients wait in the backlog rather than being accepted and
//!   dropped. The first pause of a streak is logged, and the recovery.
//! - **Stopping.** SIGINT and SIGTERM arrive as loop callbacks ([`Registry::on_signals`]) that
//!   stop the loop; `main` then prints the totals.
//!
//! `serve` does the work and `main` only parses arguments, so the tests run the same server
//! (`tests/echo.rs` includes this file).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use selreactor::{Interest, Key, Registry, Selector};
use signal_hook::consts::{SIGINT, SIGTERM};
use socket2::{Domain, Protocol, Socket, Type};

/// Where the server listens when no address is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8008";

/// The server's knobs; [`Config::default`] is what `main` uses.
#[derive(Clone, Debug)]
pub struct Config {
    /// No per-connection log lines (pauses and fatal errors are still reported).
    pub quiet: bool,
    /// Pending echo, in bytes, at which the server stops reading from a connection.
    pub high_water: usize,
    /// Pending echo below which it reads again.
    pub low_water: usize,
    /// The most one `read` may take: the bound on how far a buffer can pass `high_water`.
    pub read_chunk: usize,
    /// The most reads one callback makes before letting other connections run.
    pub reads_per_call: usize,
    /// The most connections one listener callback accepts.
    pub accept_batch: usize,
    /// How long the listener stays paused after `accept` ran out of descriptors.
    pub accept_backoff: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            quiet: false,
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            read_chunk: 64 * 1024,
            reads_per_call: 4,
            accept_batch: 64,
            accept_backoff: Duration::from_millis(100),
        }
    }
}

/// The server's counters, as plain values that can cross threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed, for whatever reason.
    pub closed: u64,
    /// Bytes read from peers.
    pub bytes_received: u64,
    /// Bytes written back to peers.
    pub bytes_echoed: u64,
    /// The most echo any one connection has had pending.
    pub peak_pending: usize,
    /// Echo pending right now, over all connections.
    pub pending_now: usize,
    /// Times a connection reached the high-water mark and stopped being read.
    pub read_pauses: u64,
    /// Times a write took less than it was offered (the socket buffer was full).
    pub short_writes: u64,
    /// Connections closed because a read or write failed (reset, broken pipe, ...).
    pub connection_errors: u64,
    /// Of those, the ones where the failure was a write.
    pub write_errors: u64,
    /// Of those, the `EPIPE` ones: the writes that raise `SIGPIPE` unless they pass
    /// `MSG_NOSIGNAL`.
    pub broken_pipes: u64,
    /// Times a connection's callback ran.
    pub connection_dispatches: u64,
    /// Times the listener's callback ran.
    pub listener_dispatches: u64,
    /// Times the listener was paused for want of descriptors.
    pub accept_pauses: u64,
}

/// Counters the server keeps as it runs, shared with whoever called [`serve`].
#[derive(Debug, Default)]
pub struct Stats(RefCell<Totals>);

impl Stats {
    /// The counters as they stand.
    pub fn totals(&self) -> Totals {
        *self.0.borrow()
    }

    fn update(&self, change: impl FnOnce(&mut Totals)) {
        change(&mut self.0.borrow_mut());
    }
}

/// Binds a listener the way a server should: `SO_REUSEADDR` (a restart does not wait out
/// `TIME_WAIT`), a real backlog, non-blocking.
///
/// # Errors
///
/// The OS's: `AddrInUse`, `AddrNotAvailable`, `PermissionDenied` for a privileged port.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves echo on `listener` (which must be non-blocking) from the loop `reg` belongs to,
/// until that loop stops or is dropped. Returns the counters, updated as it runs.
///
/// # Errors
///
/// Registering the listener can fail (`EMFILE`, `ENOMEM`, or `AlreadyExists` if it is already
/// registered).
pub fn serve(reg: &mut Registry, listener: TcpListener, config: Config) -> io::Result<Rc<Stats>> {
    assert!(
        config.low_water < config.high_water && config.read_chunk > 0,
        "low_water must be below high_water, and read_chunk positive"
    );
    let stats = Rc::new(Stats::default());
    let server = Rc::new(Server {
        scratch: RefCell::new(vec![0; config.read_chunk]),
        stats: Rc::clone(&stats),
        config,
        out_of_descriptors: Cell::new(false),
    });
    reg.register(listener, Interest::READ, move |reg, listener, event| {
        server.accept_some(reg, listener, event.key())
    })?;
    Ok(stats)
}

/// What every callback of one server shares.
struct Server {
    config: Config,
    stats: Rc<Stats>,
    /// One read buffer for all connections: callbacks run one at a time.
    scratch: RefCell<Vec<u8>>,
    /// Whether the last accept failed for want of descriptors (to log once per streak).
    out_of_descriptors: Cell<bool>,
}

impl Server {
    fn accept_some(
        self: &Rc<Self>,
        reg: &mut Registry,
        listener: &TcpListener,
        key: Key<TcpListener>,
    ) -> io::Result<()> {
        self.stats.update(|t| t.listener_dispatches += 1);
        for _ in 0..self.config.accept_batch {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.out_of_descriptors.replace(false) {
                        eprintln!("echo: descriptors available again, accepting");
                    }
                    self.stats.update(|t| t.accepted += 1);
                    if let Err(e) = self.start_connection(reg, stream, peer) {
                        self.stats.update(|t| t.closed += 1);
                        eprintln!("echo: dropping connection from {peer}: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The peer gave up while queued, or a signal interrupted us: try the next one.
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    self.pause_accepting(reg, key, &e);
                    return Ok(());
                }
                // Anything else is the listener's own failure: the loop removes it and reports.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn pause_accepting(&self, reg: &mut Registry, key: Key<TcpListener>, error: &io::Error) {
        self.stats.update(|t| t.accept_pauses += 1);
        if !self.out_of_descriptors.replace(true) {
            eprintln!(
                "echo: accept: {error}; pausing the listener, retrying every {:?}",
                self.config.accept_backoff
            );
        }
        // The listener callback's own modify cannot fail for a live key; if the listener is gone
        // by the time the timer fires, there is nothing left to resume.
        let _ = reg.modify(key, Interest::NONE);
        reg.call_later(self.config.accept_backoff, move |reg| {
            let _ = reg.modify(key, Interest::READ);
        });
    }

    fn start_connection(
        self: &Rc<Self>,
        reg: &mut Registry,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            peer,
            pending: Vec::new(),
            sent: 0,
            reading: true,
            peer_done: false,
            echoed: 0,
        };
        let server = Rc::clone(self);
        reg.register(stream, Interest::READ, move |reg, stream, event| {
            server.stats.update(|t| t.connection_dispatches += 1);
            match conn.serve(&server, stream, event.is_readable(), event.is_writable()) {
                Ok(Some(interest)) => return reg.modify(event.key(), interest),
                Ok(None) => {}
                Err(e) => {
                    server.stats.update(|t| t.connection_errors += 1);
                    if !server.config.quiet {
                        eprintln!("echo: {}: {e}", conn.peer);
                    }
                }
            }
            server.finish(&conn);
            reg.remove(event.key())
        })?;
        if !self.config.quiet {
            println!("echo: {peer} connected");
        }
        Ok(())
    }

    /// Books a connection's end; the caller closes it.
    fn finish(&self, conn: &Connection) {
        let stats = &self.stats;
        stats.update(|t| {
            t.closed += 1;
            t.pending_now -= conn.unsent();
        });
        if !self.config.quiet {
            println!("echo: {} closed after {} bytes", conn.peer, conn.echoed);
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || e.kind() == io::ErrorKind::ConnectionAborted
        || e.raw_os_error() == Some(libc::EPROTO)
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One connection's state, owned by its callback.
struct Connection {
    peer: SocketAddr,
    /// Echo not yet written: `pending[sent..]`.
    pending: Vec<u8>,
    sent: usize,
    /// Whether READ is wanted: false past the high-water mark (until the low one) and after
    /// end of stream.
    reading: bool,
    /// The peer sent end of stream: close once `pending` is flushed.
    peer_done: bool,
    echoed: u64,
}

impl Connection {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Reads what it may, writes what it can. Returns the interest to wait for next, or `None`
    /// when the connection is finished and should be closed.
    fn serve(
        &mut self,
        server: &Server,
        mut stream: &TcpStream,
        readable: bool,
        writable: bool,
    ) -> io::Result<Option<Interest>> {
        let config = &server.config;
        let stats = &server.stats;
        if readable && self.reading {
            let mut scratch = server.scratch.borrow_mut();
            for _ in 0..config.reads_per_call {
                if self.unsent() >= config.high_water {
                    break;
                }
                let n = match stream.read(&mut scratch[..config.read_chunk]) {
                    Ok(0) => {
                        self.peer_done = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                stats.update(|t| t.bytes_received += n as u64);
                let data = &scratch[..n];
                // Nothing queued: write straight from the read buffer, and copy only the rest.
                let written = if self.unsent() == 0 {
                    write_some(stats, stream, data)?
                } else {
                    0
                };
                self.echoed += written as u64;
                if written < n {
                    self.pending.extend_from_slice(&data[written..]);
                    let unsent = self.unsent();
                    stats.update(|t| {
                        t.pending_now += n - written;
                        t.peak_pending = t.peak_pending.max(unsent);
                    });
                }
                // A short read drained the socket: another read would only find `WouldBlock`,
                // a wasted syscall per round trip. If more arrives, the loop reports it again.
                if n < config.read_chunk {
                    break;
                }
            }
        }
        if (writable || self.peer_done) && self.unsent() > 0 {
            self.flush(server, stream)?;
        }

        if self.peer_done && self.unsent() == 0 {
            return Ok(None);
        }
        if self.peer_done {
            self.reading = false;
        } else if self.reading && self.unsent() >= config.high_water {
            self.reading = false;
            stats.update(|t| t.read_pauses += 1);
        } else if !self.reading && self.unsent() < config.low_water {
            self.reading = true;
        }
        let mut interest = Interest::NONE;
        if self.reading {
            interest |= Interest::READ;
        }
        if self.unsent() > 0 {
            interest |= Interest::WRITE;
        }
        Ok(Some(interest))
    }

    /// Writes as much of the pending echo as the socket takes.
    fn flush(&mut self, server: &Server, stream: &TcpStream) -> io::Result<()> {
        let written = write_some(&server.stats, stream, &self.pending[self.sent..])?;
        self.echoed += written as u64;
        self.sent += written;
        server.stats.update(|t| t.pending_now -= written);
        if self.sent == self.pending.len() {
            self.pending.clear();
            self.sent = 0;
            // A peer that once fell behind should not pin a buffer's worth of memory forever.
            if self.pending.capacity() > 2 * server.config.read_chunk {
                self.pending = Vec::new();
            }
        } else if self.sent >= self.pending.len() / 2 {
            // Move the unsent tail to the front so the buffer does not creep.
            self.pending.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// Writes `data` until done or the socket is full; returns how much went out.
fn write_some(stats: &Stats, mut stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stats.update(|t| t.short_writes += 1);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                stats.update(|t| t.write_errors += 1);
                if e.kind() == io::ErrorKind::BrokenPipe {
                    stats.update(|t| t.broken_pipes += 1);
                }
                return Err(e);
            }
        }
    }
    stats.update(|t| t.bytes_echoed += written as u64);
    Ok(written)
}

fn main() -> ExitCode {
    let mut quiet = false;
    let mut addr = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quiet" | "-q" => quiet = true,
            "--help" | "-h" => {
                println!("usage: echo [--quiet] [ADDRESS]   (default {DEFAULT_ADDR})");
                return ExitCode::SUCCESS;
            }
            _ if addr.is_none() && !arg.starts_with('-') => addr = Some(arg),
            _ => {
                eprintln!("echo: unexpected argument {arg:?}; usage: echo [--quiet] [ADDRESS]");
                return ExitCode::from(2);
            }
        }
    }
    let addr = addr.as_deref().unwrap_or(DEFAULT_ADDR);
    match run(addr, quiet) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything `main` does once the arguments are parsed; errors come back as one line.
fn run(addr: &str, quiet: bool) -> Result<(), String> {
    let addr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("{addr:?} is not an address (try 127.0.0.1:8008)"))?;
    let listener = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // The address it got: with port 0 the system picks one.
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut sel = Selector::new().map_err(|e| format!("cannot create the selector: {e}"))?;
    let config = Config {
        quiet,
        ..Config::default()
    };
    let stats = serve(&mut sel, listener, config).map_err(|e| format!("cannot serve: {e}"))?;
    sel.on_signals(&[SIGINT, SIGTERM], |reg, signal| {
        let name = if signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        eprintln!("echo: {name}, stopping");
        reg.stop();
        Ok(())
    })
    .map_err(|e| format!("cannot watch signals: {e}"))?;
    println!("echo: listening on {addr}");
    sel.run().map_err(|e| format!("the loop failed: {e}"))?;
    let totals = stats.totals();
    println!(
        "echo: served {} connections, echoed {} bytes",
        totals.accepted, totals.bytes_echoed
    );
    Ok(())
}
