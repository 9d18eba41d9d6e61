//! Load generator for the echo benchmark: N connections, S-byte messages, D in flight on each,
//! every echoed byte checked.
//!
//! ```text
//! cargo run --release -p selreactor-lab --bin echo_load -- [ADDR] [--conns N] [--size S] [--depth D]
//!     [--secs T] [--warmup W] [--rtts COUNT] [--warmup-rtts COUNT] [--sync]
//! ```
//!
//! Start an echo server first (`cargo run --release --example echo -- --quiet`, or one of
//! `peer_echo`'s); ADDR defaults to 127.0.0.1:8008. `lab/scripts/echo-bench.sh` and
//! `lab/scripts/cost-per-rtt.sh` drive it.
//!
//! - **Timed** (default): `--warmup` seconds unrecorded, then `--secs` recorded.
//! - **Counted** (`--rtts COUNT`): exactly COUNT messages are sent over all connections and all
//!   their echoes awaited, after `--warmup-rtts` unrecorded ones. With `--sync` it prints
//!   `READY` once warmed up and waits for a line on stdin before the counted phase, then prints
//!   its result and waits for another line before closing, so a script can read the server's
//!   counters around exactly COUNT round trips, with no connection setup or teardown inside.
//! - **Think time** (`--think-us T`): after each batch of echoes, pause T µs before sending the
//!   replacements. Under valgrind the server runs ~50× slower than the client, so the client's
//!   next message would already be waiting when the server finishes a write, and a server that
//!   reads until `WouldBlock` would skip waits it makes natively. A pause longer than the
//!   server's per-message time restores the native order of events (`lab/scripts/cost-per-rtt.sh`).
//!
//! A round trip is one message echoed back in full; its latency runs from the moment the
//! message was handed to `write` to the moment its last byte was read. Each connection's stream
//! is a pseudo-random pattern (period 65,521, a prime, so no message size lines up with it):
//! a lost, duplicated, reordered or corrupted byte fails the run. The result is one
//! `key=value` line on stdout and a human summary on stderr.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::epoll::Event;
use selreactor_lab::epoll::{is_readable, is_writable, token, Epoll};

/// The pattern's period: prime, so it never lines up with a message or buffer size.
const PERIOD: usize = 65_521;
/// Largest single read; at most `PERIOD`, so one read compares against one window.
const READ_SIZE: usize = 32 * 1024;
/// A run that sees no echo for this long has a dead or stuck server.
const STALL: Duration = Duration::from_secs(10);

struct Options {
    addr: SocketAddr,
    conns: usize,
    size: usize,
    depth: usize,
    secs: f64,
    warmup: f64,
    rtts: Option<u64>,
    warmup_rtts: u64,
    sync: bool,
    think: Duration,
}

fn parse() -> io::Result<Options> {
    let mut options = Options {
        addr: "127.0.0.1:8008".parse().unwrap(),
        conns: 1,
        size: 64,
        depth: 1,
        secs: 3.0,
        warmup: 0.5,
        rtts: None,
        warmup_rtts: 0,
        sync: false,
        think: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| bad(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--conns" => options.conns = value()?.parse().map_err(|_| bad("--conns"))?,
            "--size" => options.size = value()?.parse().map_err(|_| bad("--size"))?,
            "--depth" => options.depth = value()?.parse().map_err(|_| bad("--depth"))?,
            "--secs" => options.secs = value()?.parse().map_err(|_| bad("--secs"))?,
            "--warmup" => options.warmup = value()?.parse().map_err(|_| bad("--warmup"))?,
            "--rtts" => options.rtts = Some(value()?.parse().map_err(|_| bad("--rtts"))?),
            "--warmup-rtts" => {
                options.warmup_rtts = value()?.parse().map_err(|_| bad("--warmup-rtts"))?
            }
            "--sync" => options.sync = true,
            "--think-us" => {
                let micros = value()?.parse().map_err(|_| bad("--think-us"))?;
                options.think = Duration::from_micros(micros)
            }
            _ if !arg.starts_with('-') => {
                options.addr = arg.parse().map_err(|_| bad("ADDR must be IP:PORT"))?
            }
            _ => return Err(bad(&format!("unknown option {arg}"))),
        }
    }
    if options.conns == 0 || options.size == 0 || options.depth == 0 {
        return Err(bad("--conns, --size and --depth must be positive"));
    }
    if !options.addr.ip().is_loopback() {
        return Err(bad("this benchmark only talks to loopback addresses"));
    }
    Ok(options)
}

/// The byte at `position` of connection `conn`'s stream lives at `pattern[offset(conn, position)]`.
struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    fn new() -> Pattern {
        // xorshift: cheap, and no short cycles within the period.
        let mut state: u32 = 0x9e37_79b9;
        let window: Vec<u8> = (0..PERIOD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        // Doubled, so that any window of up to PERIOD bytes is contiguous.
        let bytes = [window.as_slice(), window.as_slice()].concat();
        Pattern { bytes }
    }

    fn window(&self, conn: usize, position: u64, len: usize) -> &[u8] {
        debug_assert!(len <= PERIOD);
        let start = ((position + conn as u64 * 7919) % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes generated so far (the stream position of the next message).
    sent: u64,
    /// Bytes read back and verified.
    received: u64,
    /// Generated but not yet accepted by `write`: `out[written..]`.
    out: Vec<u8>,
    written: usize,
    /// When each message still in flight was handed to `write`, oldest first.
    in_flight: VecDeque<Instant>,
    want_write: bool,
}

/// Counts and latencies for the recorded phase.
#[derive(Default)]
struct Record {
    rtts: u64,
    /// When the timed phase stopped sending (the end of the measured window).
    stopped: Option<Instant>,
    latencies_ns: Vec<u32>,
}

struct Load<'a> {
    options: &'a Options,
    pattern: Pattern,
    poll: Epoll,
    conns: Vec<Conn>,
    events: Vec<Event>,
    buf: Vec<u8>,
    /// Messages that may still be sent in this phase (`u64::MAX` in timed mode until the end).
    budget: u64,
    /// Connections whose echoes completed in this batch, awaiting the think time.
    thinking: Vec<usize>,
    recording: bool,
    record: Record,
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    // The server may still be starting (under valgrind, for seconds): retry refusals a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e),
        }
    }
}

impl<'a> Load<'a> {
    fn new(options: &'a Options) -> io::Result<Load<'a>> {
        let poll = Epoll::new()?;
        let mut conns = Vec::with_capacity(options.conns);
        for index in 0..options.conns {
            let stream = connect(options.addr)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            poll.add(&stream, index as u64, true, false)?;
            conns.push(Conn {
                stream,
                sent: 0,
                received: 0,
                out: Vec::new(),
                written: 0,
                in_flight: VecDeque::new(),
                want_write: false,
            });
        }
        Ok(Load {
            options,
            pattern: Pattern::new(),
            poll,
            events: Vec::with_capacity(options.conns.max(1)),
            conns,
            buf: vec![0; READ_SIZE],
            budget: 0,
            thinking: Vec::new(),
            recording: false,
            record: Record::default(),
        })
    }

    fn in_flight(&self) -> usize {
        self.conns.iter().map(|c| c.in_flight.len()).sum()
    }

    /// Tops every connection up to `depth` messages in flight, as far as the budget allows.
    fn fill(&mut self) -> io::Result<()> {
        for index in 0..self.conns.len() {
            self.top_up(index)?;
        }
        Ok(())
    }

    fn top_up(&mut self, index: usize) -> io::Result<()> {
        let size = self.options.size;
        let conn = &mut self.conns[index];
        let mut added = false;
        while conn.in_flight.len() < self.options.depth && self.budget > 0 {
            self.budget -= 1;
            let mut left = size;
            while left > 0 {
                let chunk = left.min(PERIOD);
                let position = conn.sent + (size - left) as u64;
                conn.out
                    .extend_from_slice(self.pattern.window(index, position, chunk));
                left -= chunk;
            }
            conn.sent += size as u64;
            conn.in_flight.push_back(Instant::now());
            added = true;
        }
        if added {
            self.flush(index)?;
        }
        Ok(())
    }

    fn flush(&mut self, index: usize) -> io::Result<()> {
        let conn = &mut self.conns[index];
        while conn.written < conn.out.len() {
            match (&conn.stream).write(&conn.out[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if conn.written == conn.out.len() {
            conn.out.clear();
            conn.written = 0;
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.want_write {
            conn.want_write = want_write;
            self.poll
                .modify(&conn.stream, index as u64, true, want_write)?;
        }
        Ok(())
    }

    fn receive(&mut self, index: usize, now: Instant) -> io::Result<()> {
        let conn = &mut self.conns[index];
        let n = match (&conn.stream).read(&mut self.buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("server closed connection {index}"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        if n as u64 > conn.sent - conn.received {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("connection {index}: more bytes echoed than sent"),
            ));
        }
        if self.buf[..n] != *self.pattern.window(index, conn.received, n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "connection {index}: echo differs from what was sent near byte {}",
                    conn.received
                ),
            ));
        }
        let size = self.options.size as u64;
        let before = conn.received / size;
        conn.received += n as u64;
        for _ in before..conn.received / size {
            let started = conn
                .in_flight
                .pop_front()
                .expect("a completed message was in flight");
            if self.recording {
                self.record.rtts += 1;
                let ns = now.duration_since(started).as_nanos().min(u32::MAX as u128);
                self.record.latencies_ns.push(ns as u32);
            }
        }
        if self.options.think.is_zero() {
            self.top_up(index)
        } else {
            self.thinking.push(index);
            Ok(())
        }
    }

    /// Runs the loop until `done` says so; fails if nothing is echoed for `STALL`.
    fn drive(&mut self, mut done: impl FnMut(&Self, Instant) -> bool) -> io::Result<()> {
        let mut last_progress = Instant::now();
        loop {
            let now = Instant::now();
            if done(self, now) {
                return Ok(());
            }
            let mut events = std::mem::take(&mut self.events);
            self.poll
                .wait(&mut events, Some(Duration::from_millis(50)))?;
            let now = Instant::now();
            if !events.is_empty() {
                last_progress = now;
            } else if now - last_progress > STALL {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server stopped echoing",
                ));
            }
            for event in &events {
                let index = token(event) as usize;
                if is_writable(event) && self.conns[index].want_write {
                    self.flush(index)?;
                }
                if is_readable(event) {
                    self.receive(index, now)?;
                }
            }
            self.events = events;
            if !self.thinking.is_empty() {
                std::thread::sleep(self.options.think);
                let mut thinking = std::mem::take(&mut self.thinking);
                for &index in &thinking {
                    self.top_up(index)?;
                }
                thinking.clear();
                self.thinking = thinking;
            }
        }
    }

    /// Sends exactly `count` messages and waits for all of them to come back.
    fn counted(&mut self, count: u64) -> io::Result<()> {
        self.budget = count;
        self.fill()?;
        self.drive(|load, _| load.budget == 0 && load.in_flight() == 0)
    }

    /// Keeps `depth` messages in flight until `until`, then stops sending and drains.
    fn timed(&mut self, until: Instant) -> io::Result<()> {
        self.budget = u64::MAX;
        self.fill()?;
        self.drive(|_, now| now >= until)?;
        self.record.stopped = Some(Instant::now());
        self.budget = 0;
        let recording = std::mem::replace(&mut self.recording, false);
        self.drive(|load, _| load.in_flight() == 0)?;
        self.recording = recording;
        Ok(())
    }
}

fn wait_for_line() -> io::Result<()> {
    let mut line = String::new();
    io::stdin().read_line(&mut line)?;
    Ok(())
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn main() -> io::Result<()> {
    let options = parse()?;
    let mut load = Load::new(&options)?;
    let started;
    match options.rtts {
        Some(count) => {
            load.counted(options.warmup_rtts)?;
            if options.sync {
                println!("READY");
                io::stdout().flush()?;
                wait_for_line()?;
            }
            load.recording = true;
            started = Instant::now();
            load.counted(count)?;
        }
        None => {
            let warmup_end = Instant::now() + Duration::from_secs_f64(options.warmup);
            load.timed(warmup_end)?;
            load.recording = true;
            started = Instant::now();
            load.timed(started + Duration::from_secs_f64(options.secs))?;
        }
    }
    let stopped = load.record.stopped.unwrap_or_else(Instant::now);
    let elapsed = stopped.duration_since(started).as_secs_f64();
    let verified: u64 = load.conns.iter().map(|c| c.received).sum();
    let mut latencies = std::mem::take(&mut load.record.latencies_ns);
    latencies.sort_unstable();
    let rtts = load.record.rtts;
    let rate = rtts as f64 / elapsed;
    let (p50, p99, p999) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    println!(
        "conns={} size={} depth={} rtts={} secs={:.3} rtt_per_sec={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} bytes_verified={}",
        options.conns, options.size, options.depth, rtts, elapsed, rate, p50, p99, p999, verified
    );
    eprintln!(
        "{} conns x {} B, depth {}: {rtts} round trips in {elapsed:.2} s = {rate:.0}/s; latency p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us; {verified} bytes verified",
        options.conns, options.size, options.depth
    );
    io::stdout().flush()?;
    if options.sync {
        wait_for_line()?;
    }
    Ok(())
}
