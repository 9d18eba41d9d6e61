//! An echo server on the transport layer (`tests/util/echo_server.rs`) soaked: thousands of short connections one after
//! another (churn), and ten thousand held open at once (scale).
//!
//! Churn checks that a connection's whole life (accept, register, echo, close, remove) gives
//! back everything it took: after the run the process has the descriptors, the live heap bytes
//! and (within a stated slack) the resident memory it had after a warm-up, the server's
//! counters say every connection accepted was closed, and only the listener is registered.
//! Scale holds N connections open from a child process, echoes on every one of them, and checks
//! the server held exactly N registrations and gave every descriptor back afterwards.
//!
//! Counts come from the environment so `scripts/soak.sh` runs the same tests at full size in
//! release mode: `SELREACTOR_SOAK_CYCLES` (churn cycles, default 10,000) and
//! `SELREACTOR_SOAK_CONNECTIONS` (connections held, default 10,000). Figures are written
//! straight to stderr, so they show without `--nocapture`.
//!
//! Every test in this binary counts process-wide descriptors and memory, so each holds
//! `util::serial()`.

mod util;

#[allow(dead_code)]
#[path = "util/echo_server.rs"]
mod echo_server;

use std::alloc::{GlobalAlloc, Layout, System};
use std::env;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use echo_server::{poll_until, Config, EchoServer, Totals, SETTLE};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Churn cycles: `cargo test` default, and the count under valgrind.
const CYCLES_VAR: &str = "SELREACTOR_SOAK_CYCLES";
const DEFAULT_CYCLES: usize = 10_000;
/// Connections held at once: default, and the count under valgrind.
const CONNECTIONS_VAR: &str = "SELREACTOR_SOAK_CONNECTIONS";
const DEFAULT_CONNECTIONS: usize = 10_000;

/// No client call may block longer than this: a broken server fails the test, never hangs it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Resident memory may grow this much over the measured churn (after the warm-up): page-level
/// noise from the allocator and thread stacks. A leak of 100 bytes per connection over 9,000
/// cycles is 879 KiB, over 90,000 cycles 8.6 MiB.
const RSS_SLACK_KIB: u64 = 512;
/// Live heap bytes may differ this much between the warm-up and the end of the churn: the
/// clients' and the server's buffers are all freed by then, so any steady growth is a leak.
const HEAP_SLACK_BYTES: isize = 4096;

// ---------------------------------------------------------------------------------------------
// Live heap bytes, process-wide.

/// Counts the heap bytes live in this process; `System` does the allocating.
struct CountingAllocator;

static LIVE_HEAP_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: each method hands its arguments to `System` unchanged and returns what `System`
// returns, so `System`'s guarantees hold; the counter only observes sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout meets `alloc`'s contract; passed through as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_HEAP_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_HEAP_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; passed through as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_HEAP_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------------
// Process measures.

/// `VmRSS` of this process, in KiB.
fn resident_kib() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS line in /proc/self/status"))
}

/// The selector's epoll descriptor, for reading its interest list from `/proc/self/fdinfo`.
struct EpollFd(RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Raises the soft descriptor limit to the hard one. Returns the soft limit now in force.
fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from the live local it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(limit.rlim_cur)
}

/// A count from the environment, or `default` (scaled down under valgrind).
fn count_from_env(var: &str, default: usize, under_valgrind: usize) -> usize {
    match env::var(var) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a count")),
        Err(_) => util::scaled(default, under_valgrind),
    }
}

/// Writes a line straight to stderr: libtest does not capture it, so figures and skips show.
fn report(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

fn kib(bytes: isize) -> f64 {
    bytes as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// The server under test, on its own thread.

/// What the server's process looks like at one moment, read on the server's thread.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    totals: Totals,
    /// `Registry::len`: the listener plus every live connection.
    registrations: usize,
    /// Registration entries in the kernel's epoll interest list.
    epoll_entries: usize,
    /// Open descriptors of the whole process.
    descriptors: usize,
    resident_kib: u64,
    live_heap_bytes: isize,
}

/// The echo server under test, with the soak's view of its process.
struct SoakServer {
    server: EchoServer,
}

impl SoakServer {
    /// Starts a quiet echo server with the default configuration on `127.0.0.1:0`.
    fn start() -> io::Result<SoakServer> {
        Ok(SoakServer {
            server: EchoServer::start(Config::default(), None)?,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The server's state, read on its own thread between callbacks.
    fn snapshot(&self) -> io::Result<Snapshot> {
        let epoll = EpollFd(self.server.epoll);
        self.server
            .query(move |reg, stats| -> io::Result<Snapshot> {
                // Memory first: reading a 10,000-line fdinfo allocates about a megabyte, which the
                // allocator may keep resident.
                let live_heap_bytes = LIVE_HEAP_BYTES.load(Ordering::SeqCst);
                let resident_kib = resident_kib()?;
                Ok(Snapshot {
                    totals: stats.totals(),
                    registrations: reg.len(),
                    epoll_entries: util::epoll_entries(&epoll)?.len(),
                    descriptors: util::fd_count()?,
                    resident_kib,
                    live_heap_bytes,
                })
            })?
    }

    /// Polls until `done` holds; fails after `SETTLE`.
    fn wait_for(&self, what: &str, done: impl Fn(&Snapshot) -> bool) -> io::Result<Snapshot> {
        poll_until(what, || self.snapshot(), done)
    }

    /// Stops the loop and returns the final counters.
    fn stop(self) -> io::Result<Totals> {
        self.server.stop()
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A blocking client with I/O timeouts, connected from `source` (port chosen at connect time).
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if source != Ipv4Addr::LOCALHOST {
        bind_address_only(&socket, source)?;
    }
    socket.connect_timeout(&server.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Binds `socket` to `source` but leaves the port to `connect`, which picks one unique for the
/// whole four-tuple (`IP_BIND_ADDRESS_NO_PORT`); a plain bind to port 0 would pick a port with
/// no TIME_WAIT entry on this address at all, and run out much sooner.
fn bind_address_only(socket: &Socket, source: Ipv4Addr) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size; the socket is open.
    let status = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddrV4::new(source, 0).into())
}

/// Sends `message`, reads as many bytes back, and compares.
fn round_trip(mut stream: &TcpStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message)?;
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed)?;
    if echoed != message {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sent {message:?}, got back {echoed:?}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Churn.

/// Client threads churning at once.
const CHURN_CLIENTS: usize = 4;
/// Source addresses the churn spreads its connections over: `127.0.0.10` to `127.0.0.17`.
const CHURN_SOURCES: u8 = 8;

/// How one churn cycle ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client half-closes, waits for the server's end of stream (proof the server closed),
    /// then closes. The client side keeps a TIME_WAIT entry for a minute.
    Orderly,
    /// The client closes with `SO_LINGER` 0: a reset, and no TIME_WAIT anywhere. The server
    /// sees `ECONNRESET` on its next read.
    Reset,
}

/// Cycle `i`'s ending: each client thread alternates between the two.
fn ending(i: usize) -> Ending {
    if (i / CHURN_CLIENTS) % 2 == 0 {
        Ending::Orderly
    } else {
        Ending::Reset
    }
}

/// Cycle `i`'s source address.
fn churn_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + (i % usize::from(CHURN_SOURCES)) as u8)
}

/// One connection's life: connect, echo a message naming the cycle, close.
fn churn_cycle(server: SocketAddr, i: usize, message: &mut String) -> io::Result<()> {
    let source = churn_source(i);
    let stream = connect_from(source, server)?;
    message.clear();
    let _ = write!(message, "cycle {i} from {source}");
    round_trip(&stream, message.as_bytes())?;
    match ending(i) {
        Ending::Orderly => {
            stream.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            (&stream).read_to_end(&mut rest).map_err(|e| {
                io::Error::new(e.kind(), format!("no end of stream from the server: {e}"))
            })?;
            if !rest.is_empty() {
                return Err(io::Error::other(format!("cycle {i}: stray bytes {rest:?}")));
            }
        }
        Ending::Reset => SockRef::from(&stream).set_linger(Some(Duration::ZERO))?,
    }
    Ok(())
}

/// Runs cycles `cycles` from [`CHURN_CLIENTS`] threads; returns when every client is done.
fn churn(server: SocketAddr, cycles: std::ops::Range<usize>) -> io::Result<()> {
    let clients: Vec<_> = (0..CHURN_CLIENTS)
        .map(|client| {
            let cycles = cycles.clone();
            thread::spawn(move || -> io::Result<()> {
                let mut message = String::new();
                for i in cycles.filter(|i| i % CHURN_CLIENTS == client) {
                    churn_cycle(server, i, &mut message)
                        .map_err(|e| io::Error::new(e.kind(), format!("cycle {i}: {e}")))?;
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .map_err(|_| io::Error::other("a churn client panicked"))??;
    }
    Ok(())
}

#[test]
fn churn_of_short_connections_leaves_descriptors_memory_and_registrations_flat() -> io::Result<()> {
    let _serial = util::serial();
    let cycles = count_from_env(CYCLES_VAR, DEFAULT_CYCLES, 1_000);
    let warm_up = (cycles / 10).max(CHURN_CLIENTS);
    assert!(cycles > warm_up, "{CYCLES_VAR} must be above {warm_up}");
    let server = SoakServer::start()?;
    let settled = |n: usize| {
        let n = n as u64;
        move |s: &Snapshot| s.totals.closed == n && s.registrations == 1
    };

    // The warm-up grows whatever grows once: the slab, the allocator's arenas, thread stacks.
    let first_cycle = Instant::now();
    churn(server.addr(), 0..warm_up)?;
    let warm = server.wait_for("the warm-up connections closed", settled(warm_up))?;
    let started = Instant::now();
    churn(server.addr(), warm_up..cycles)?;
    let churn_time = started.elapsed();
    let end = server.wait_for("every connection closed", settled(cycles))?;
    let settle_time = started.elapsed();
    let all_cycles_time = first_cycle.elapsed();

    let measured = (cycles - warm_up) as f64;
    let heap_growth = end.live_heap_bytes - warm.live_heap_bytes;
    let rss_growth = end.resident_kib as i64 - warm.resident_kib as i64;
    report(&format!(
        "echo_soak churn: {cycles} cycles ({warm_up} warm-up), {CHURN_CLIENTS} client threads, \
         {CHURN_SOURCES} source addresses; all {cycles} in {:.2} s; the measured {} in {:.2} s \
         ({:.0} cycles/s), all closed {:.3} s after the first measured cycle",
        all_cycles_time.as_secs_f64(),
        cycles - warm_up,
        churn_time.as_secs_f64(),
        measured / churn_time.as_secs_f64(),
        settle_time.as_secs_f64(),
    ));
    report(&format!(
        "echo_soak churn: descriptors {} -> {}; VmRSS {} -> {} KiB ({rss_growth:+} KiB); \
         live heap {:.1} -> {:.1} KiB ({heap_growth:+} bytes); registrations {}; epoll entries \
         {}; {:?}",
        warm.descriptors,
        end.descriptors,
        warm.resident_kib,
        end.resident_kib,
        kib(warm.live_heap_bytes),
        kib(end.live_heap_bytes),
        end.registrations,
        end.epoll_entries,
        end.totals,
    ));

    let totals = end.totals;
    let resets = (0..cycles).filter(|&i| ending(i) == Ending::Reset).count() as u64;
    assert_eq!(totals.accepted, cycles as u64, "{totals:?}");
    assert_eq!(totals.closed, cycles as u64, "{totals:?}");
    assert_eq!(
        totals.connection_errors, resets,
        "every reset, and nothing else, should end in a connection error: {totals:?}"
    );
    assert_eq!(totals.pending_now, 0, "{totals:?}");
    let echoed: u64 = (0..cycles)
        .map(|i| format!("cycle {i} from {}", churn_source(i)).len() as u64)
        .sum();
    assert_eq!(totals.bytes_echoed, echoed, "{totals:?}");
    assert_eq!(end.registrations, 1, "connections left registered");
    assert_eq!(end.epoll_entries, 1, "connections left in the epoll set");
    assert_eq!(
        end.descriptors, warm.descriptors,
        "descriptors grew over {measured} cycles"
    );
    assert!(
        heap_growth.abs() <= HEAP_SLACK_BYTES,
        "live heap moved by {heap_growth} bytes over {measured} cycles (slack {HEAP_SLACK_BYTES})"
    );
    // Valgrind's own bookkeeping inflates the resident set; the heap check above still holds.
    if !util::under_valgrind() {
        assert!(
            rss_growth <= RSS_SLACK_KIB as i64,
            "VmRSS grew by {rss_growth} KiB over {measured} cycles (slack {RSS_SLACK_KIB} KiB)"
        );
    }
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scale: N connections held at once, the clients in a child process.

/// Set in the child process to the number of connections it should hold.
const CHILD_VAR: &str = "SELREACTOR_SOAK_CHILD";
/// Echo rounds over every held connection.
const ROUNDS: usize = 3;
/// The child connects in batches this size and checks the server has accepted each batch
/// (an echo on its last connection) before the next, so the listen backlog never overflows
/// (an overflow drops the handshake and the client waits a second to retry).
const CONNECT_BATCH: usize = 256;
/// Descriptors beyond the connections: the test harness, the selector, the listener, pipes.
const DESCRIPTOR_HEADROOM: u64 = 64;

/// The message connection `c` sends in round `round`: always 16 bytes, different each time.
fn held_message(c: usize, round: usize) -> [u8; 16] {
    let mut message = [0; 16];
    message[..8].copy_from_slice(&(c as u64).to_le_bytes());
    message[8..].copy_from_slice(&(round as u64 ^ 0x5eed_0000_0000_0000).to_le_bytes());
    message
}

/// The batch probe's message.
const PROBE: &[u8] = b"accepted?";

/// Bytes the child's probes echo when it opens `n` connections.
fn probe_bytes(n: usize) -> u64 {
    (n.div_ceil(CONNECT_BATCH) * PROBE.len()) as u64
}

/// The child: opens `n` connections, then waits for the parent's word at each step.
/// It talks on stdout in lines starting `soak-child:`, and reads commands on stdin; a closed
/// stdin (the parent gave up) ends it.
fn hold_connections_child(n: usize) -> io::Result<()> {
    let limit = raise_descriptor_limit()?;
    let mut commands = io::stdin().lock().lines();
    let say = |line: &str| -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "soak-child: {line}")?;
        out.flush()
    };
    let mut expect = |word: &str| -> io::Result<()> {
        match commands.next() {
            Some(Ok(line)) if line == word => Ok(()),
            other => Err(io::Error::other(format!(
                "expected {word:?}, got {other:?}"
            ))),
        }
    };
    let server: SocketAddr = env::var("SELREACTOR_SOAK_SERVER")
        .map_err(|_| io::Error::other("no server address"))?
        .parse()
        .map_err(|_| io::Error::other("bad server address"))?;

    expect("connect")?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    for c in 0..n {
        let stream = connect_from(Ipv4Addr::LOCALHOST, server).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connection {c} of {n} (soft limit {limit}): {e}"),
            )
        })?;
        held.push(stream);
        if (c + 1) % CONNECT_BATCH == 0 || c + 1 == n {
            round_trip(&held[c], PROBE).map_err(|e| {
                io::Error::new(e.kind(), format!("no echo on connection {c} of {n}: {e}"))
            })?;
        }
    }
    say(&format!(
        "connected {n} in {:.2} s",
        started.elapsed().as_secs_f64()
    ))?;

    expect("echo")?;
    let started = Instant::now();
    for round in 0..ROUNDS {
        // All the writes first, then all the reads: every connection has echo in flight at once.
        for (c, mut stream) in held.iter().enumerate() {
            stream.write_all(&held_message(c, round))?;
        }
        for (c, mut stream) in held.iter().enumerate() {
            let mut echoed = [0; 16];
            stream.read_exact(&mut echoed).map_err(|e| {
                io::Error::new(e.kind(), format!("connection {c}, round {round}: {e}"))
            })?;
            if echoed != held_message(c, round) {
                return Err(io::Error::other(format!(
                    "connection {c}, round {round}: got {echoed:?}"
                )));
            }
        }
    }
    say(&format!(
        "echoed {ROUNDS} rounds on {n} in {:.2} s",
        started.elapsed().as_secs_f64()
    ))?;

    expect("close")?;
    drop(held);
    say("closed")?;
    Ok(())
}

/// The parent's side of the conversation with the child.
struct ChildClients {
    child: Child,
    commands: ChildStdin,
    lines: Receiver<String>,
    /// The threads forwarding the child's stdout and stderr; each ends (closing its pipe) when
    /// the child exits.
    readers: Vec<JoinHandle<()>>,
    /// Everything the child printed that was not a protocol line, for failure messages.
    chatter: String,
}

impl ChildClients {
    fn spawn(test: &str, n: usize, server: SocketAddr) -> io::Result<ChildClients> {
        let mut child = Command::new(env::current_exe()?)
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_VAR, n.to_string())
            .env("SELREACTOR_SOAK_SERVER", server.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let commands = child.stdin.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let outputs = [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ];
        let readers = outputs
            .into_iter()
            .map(|output| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for line in BufReader::new(output).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Ok(ChildClients {
            child,
            commands,
            lines,
            readers,
            chatter: String::new(),
        })
    }

    /// Tells the child to do `command` and waits for its answer starting with `answer`.
    fn ask(&mut self, command: &str, answer: &str) -> io::Result<String> {
        writeln!(self.commands, "{command}")?;
        self.commands.flush()?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // libtest's "test ... " has no newline, so a protocol line may follow it.
                Ok(line) => match line.split_once("soak-child: ") {
                    Some((_, said)) if said.starts_with(answer) => return Ok(said.to_string()),
                    _ => {
                        self.chatter.push_str(&line);
                        self.chatter.push('\n');
                    }
                },
                Err(_) => {
                    // Gather what the child said on its way out, for the message.
                    thread::sleep(Duration::from_millis(100));
                    while let Ok(line) = self.lines.try_recv() {
                        self.chatter.push_str(&line);
                        self.chatter.push('\n');
                    }
                    return Err(io::Error::other(format!(
                        "the child did not answer {command:?} with {answer:?}; it said:\n{}",
                        self.chatter
                    )));
                }
            }
        }
    }

    /// Waits for the child to exit, and fails unless it succeeded. On success every pipe to
    /// the child is closed by the time it returns.
    fn finish(mut self) -> io::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    for reader in self.readers.drain(..) {
                        let _ = reader.join();
                    }
                    return Ok(());
                }
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.chatter.push_str(&line);
                    self.chatter.push('\n');
                }
                return Err(io::Error::other(format!(
                    "the child failed ({status}):\n{}",
                    self.chatter
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("the child did not exit"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildClients {
    fn drop(&mut self) {
        // On failure the child must not outlive the test.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn ten_thousand_connections_held_at_once_are_all_served() -> io::Result<()> {
    const TEST: &str = "ten_thousand_connections_held_at_once_are_all_served";
    if let Ok(n) = env::var(CHILD_VAR) {
        let n = n
            .parse()
            .map_err(|_| io::Error::other("bad connection count"))?;
        return hold_connections_child(n);
    }
    let _serial = util::serial();
    let n = count_from_env(CONNECTIONS_VAR, DEFAULT_CONNECTIONS, 500);
    let limit = raise_descriptor_limit()?;
    if limit < n as u64 + DESCRIPTOR_HEADROOM {
        report(&format!(
            "echo_soak: SKIPPED {TEST}: the descriptor limit is {limit} even raised to the \
             hard limit, and {n} connections need {}; set {CONNECTIONS_VAR} lower or raise \
             the hard limit",
            n as u64 + DESCRIPTOR_HEADROOM
        ));
        return Ok(());
    }

    let server = SoakServer::start()?;
    let baseline = server.snapshot()?;
    let mut clients = ChildClients::spawn(TEST, n, server.addr())?;
    // The pipes to the child: its stdin, stdout and stderr.
    let pipes = 3;

    let said = clients.ask("connect", "connected")?;
    let held = server.wait_for("every connection accepted and registered", |s| {
        s.totals.accepted == n as u64 && s.registrations == n + 1
    })?;
    assert_eq!(
        held.epoll_entries,
        n + 1,
        "the kernel polls other descriptors"
    );
    assert_eq!(held.descriptors, baseline.descriptors + pipes + n);
    assert_eq!(held.totals.closed, 0, "{:?}", held.totals);
    let connect_line = said;

    let said = clients.ask("echo", "echoed")?;
    let echoed = probe_bytes(n) + (n * ROUNDS * 16) as u64;
    let served = server.wait_for("every echo written", |s| s.totals.bytes_echoed == echoed)?;
    assert_eq!(served.totals.bytes_received, echoed);
    assert_eq!(
        served.registrations,
        n + 1,
        "connections dropped while held"
    );
    assert_eq!(served.totals.closed, 0, "{:?}", served.totals);
    let echo_line = said;

    clients.ask("close", "closed")?;
    clients.finish()?;
    let end = server.wait_for("every connection closed", |s| {
        s.totals.closed == n as u64 && s.registrations == 1
    })?;

    let per_connection =
        |s: &Snapshot| (s.resident_kib as f64 - baseline.resident_kib as f64) * 1024.0 / n as f64;
    report(&format!(
        "echo_soak scale: {n} connections held (soft descriptor limit {limit}); child: \
         {connect_line}; {echo_line}"
    ));
    report(&format!(
        "echo_soak scale: server process VmRSS {} KiB before, {} KiB with {n} idle connections \
         ({:.0} bytes each), {} KiB after {ROUNDS} echo rounds ({:.0} bytes each), {} KiB after \
         all closed; live heap {:.1} -> {:.1} -> {:.1} KiB ({:.0} bytes per connection)",
        baseline.resident_kib,
        held.resident_kib,
        per_connection(&held),
        served.resident_kib,
        per_connection(&served),
        end.resident_kib,
        kib(baseline.live_heap_bytes),
        kib(held.live_heap_bytes),
        kib(end.live_heap_bytes),
        (held.live_heap_bytes - baseline.live_heap_bytes) as f64 / n as f64,
    ));
    report(&format!(
        "echo_soak scale: descriptors {} -> {} -> {}; registrations {} -> {} -> {}; {:?}",
        baseline.descriptors,
        held.descriptors,
        end.descriptors,
        baseline.registrations,
        held.registrations,
        end.registrations,
        end.totals,
    ));

    assert_eq!(end.descriptors, baseline.descriptors, "descriptors leaked");
    assert_eq!(end.epoll_entries, 1, "connections left in the epoll set");
    assert_eq!(end.totals.accepted, n as u64);
    assert_eq!(end.totals.connection_errors, 0, "{:?}", end.totals);
    assert_eq!(end.totals.pending_now, 0, "{:?}", end.totals);
    server.stop()?;
    Ok(())
}
