//! An echo server on the transport layer (`tests/util/echo_server.rs`) under load and abuse:
//! many clients, slow and absent readers, half-close, resets, SIGPIPE, and big transfers both
//! ways. (Running out of descriptors is in `tests/server.rs`.)
//!
//! Each test runs the server on its own selector in its own thread, on `127.0.0.1:0`, and talks
//! to it from client threads with I/O timeouts; the server's counters are read on its own
//! thread through the `Handle`. Every byte echoed is checked against the byte sent. The
//! SIGPIPE case changes process-wide state (a signal disposition), so it re-runs this binary
//! as a child process.

mod util;

#[allow(dead_code)]
#[path = "util/echo_server.rs"]
mod echo_server;

use std::env;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use echo_server::{Config, EchoServer, SETTLE};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// No client call may block longer than this: a broken server fails the test, never hangs it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a connection may ever have pending: the mark plus one read.
fn buffer_bound(config: &Config) -> usize {
    config.high_water + config.read_chunk
}

// ---------------------------------------------------------------------------------------------
// Clients and the byte stream they check.

/// A blocking client with I/O timeouts; `buffers` sets SO_RCVBUF and SO_SNDBUF before connecting.
fn connect(addr: SocketAddr, buffers: Option<usize>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(size) = buffers {
        socket.set_recv_buffer_size(size)?;
        socket.set_send_buffer_size(size)?;
    }
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One round trip: sends `message`, reads the same number of bytes back, compares.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message)?;
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed)?;
    if echoed != message {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
    }
    Ok(())
}

/// The stream's period: a prime, so it never lines up with buffer sizes.
const PERIOD: usize = 1_048_573;
/// The longest slice [`expected`] hands out.
const MAX_SLICE: usize = 256 * 1024;

/// The byte stream every transfer sends: position `i` holds `pattern()[i % PERIOD]`, stored
/// with `MAX_SLICE` bytes of wrap-around so any slice is contiguous and checks with a memcmp.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes: Vec<u8> = (0..PERIOD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        bytes.extend_from_within(..MAX_SLICE);
        bytes
    })
}

/// The `len` bytes of the stream from `offset` on.
fn expected(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_SLICE);
    let start = (offset % PERIOD as u64) as usize;
    &pattern()[start..start + len]
}

/// A small deterministic generator of sizes, so each run sends the same chunking.
struct Sizes(u64);

impl Sizes {
    /// A size in `1..=max`.
    fn next(&mut self, max: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + ((self.0 >> 33) as usize % max)
    }
}

/// Writes `total` bytes of the stream in chunks of up to `max_chunk`.
fn write_stream(mut stream: &TcpStream, total: u64, max_chunk: usize, seed: u64) -> io::Result<()> {
    let mut sizes = Sizes(seed);
    let mut offset = 0;
    while offset < total {
        let len = sizes.next(max_chunk).min((total - offset) as usize);
        stream.write_all(expected(offset, len))?;
        offset += len as u64;
    }
    Ok(())
}

/// Reads `total` bytes and checks each against the stream; `pace` runs after every read with
/// the count so far (to sleep, say). Fails on the first wrong byte or an early end.
fn read_stream(
    mut stream: &TcpStream,
    total: u64,
    max_read: usize,
    mut pace: impl FnMut(u64),
) -> io::Result<()> {
    let mut buf = vec![0; max_read];
    let mut sizes = Sizes(total ^ max_read as u64);
    let mut offset = 0;
    while offset < total {
        let want = sizes.next(max_read).min((total - offset) as usize);
        let n = util::retry_interrupted(IO_TIMEOUT, || stream.read(&mut buf[..want]))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("end of stream after {offset} of {total} bytes"),
            ));
        }
        if buf[..n] != *expected(offset, n) {
            let at = buf[..n]
                .iter()
                .zip(expected(offset, n))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("wrong byte at offset {}", offset + at as u64),
            ));
        }
        offset += n as u64;
        pace(offset);
    }
    Ok(())
}

fn join<T>(thread: JoinHandle<io::Result<T>>) -> io::Result<T> {
    thread
        .join()
        .map_err(|_| io::Error::other("a client thread panicked"))?
}

// ---------------------------------------------------------------------------------------------
// Child processes for the tests that change process-wide state.

/// Set in a child process to the test it should run for real.
const CHILD_VAR: &str = "SELREACTOR_ECHO_CHILD";

/// Runs one test of this binary in a child process with `CHILD_VAR` set to `mode`; returns its
/// exit status and its output.
fn run_child(test: &str, mode: &str) -> io::Result<(ExitStatus, String)> {
    let mut child = Command::new(env::current_exe()?)
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_VAR, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("child for {test} ran over 30 s"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    Ok((status, output))
}

/// The signal that killed a child, if one did.
fn killing_signal(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn many_concurrent_clients_each_get_their_own_bytes_back() -> io::Result<()> {
    const CLIENTS: usize = 64;
    let round_trips = util::scaled(50, 5);
    let server = EchoServer::start(Config::default(), None)?;
    let addr = server.addr;
    let all_connected = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let all_connected = Arc::clone(&all_connected);
            thread::spawn(move || -> io::Result<u64> {
                let mut stream = connect(addr, None)?;
                all_connected.wait(); // every connection open before any traffic
                let mut sizes = Sizes(client as u64);
                let mut offset = client as u64 * 7919;
                let mut sent = 0;
                for _ in 0..round_trips {
                    let len = sizes.next(8192);
                    round_trip(&mut stream, expected(offset, len))?;
                    offset += len as u64;
                    sent += len as u64;
                }
                Ok(sent)
            })
        })
        .collect();
    // A client that fails leaves the others at the barrier: join so that its error surfaces.
    let sent: u64 = util::join_all(clients, 2 * IO_TIMEOUT)?.into_iter().sum();
    let totals = server.wait_for("every connection closed", |t| t.closed == CLIENTS as u64)?;
    assert_eq!(totals.accepted, CLIENTS as u64);
    assert_eq!(totals.bytes_received, sent);
    assert_eq!(totals.bytes_echoed, sent);
    assert_eq!(totals.connection_errors, 0);
    assert_eq!(totals.pending_now, 0);
    server.stop()?;
    Ok(())
}

#[test]
fn slow_reader_gets_every_byte_and_the_buffer_stays_under_the_mark() -> io::Result<()> {
    let total = util::scaled(8 << 20, 1 << 20) as u64;
    let config = Config::default();
    let bound = buffer_bound(&config);
    // Small kernel buffers on both sides, so the server's writes come up short often.
    let server = EchoServer::start(config, Some(16 * 1024))?;
    let stream = connect(server.addr, Some(16 * 1024))?;

    let writer_stream = stream.try_clone()?;
    let writer = thread::spawn(move || write_stream(&writer_stream, total, 64 * 1024, 1));
    // Slow: nothing for a while (so the server must hold and then stop reading), then
    // small reads with pauses.
    thread::sleep(Duration::from_millis(200));
    let mut reads = 0u32;
    read_stream(&stream, total, 16 * 1024, |_| {
        reads += 1;
        if reads % 16 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    })?;
    join(writer)?;
    drop(stream);

    let totals = server.wait_for("the connection closed", |t| t.closed == 1)?;
    assert_eq!(totals.bytes_echoed, total);
    assert!(totals.short_writes > 0, "no partial write was exercised");
    assert!(
        totals.read_pauses > 0,
        "the slow reader never made the server stop reading"
    );
    assert!(
        totals.peak_pending <= bound,
        "a buffer reached {} bytes (bound {bound})",
        totals.peak_pending
    );
    server.stop()?;
    Ok(())
}

#[test]
fn client_that_stops_reading_makes_the_server_stop_reading() -> io::Result<()> {
    let total = 16u64 << 20;
    let config = Config::default();
    let (bound, low_water) = (buffer_bound(&config), config.low_water);
    // Bounded kernel buffers, or loopback autotuning could swallow the whole 16 MiB.
    let server = EchoServer::start(config, Some(64 * 1024))?;
    let stream = connect(server.addr, Some(64 * 1024))?;
    let writer_stream = stream.try_clone()?;
    let writer = thread::spawn(move || write_stream(&writer_stream, total, 256 * 1024, 2));

    // Not reading: the server must reach its mark, stop reading, and stay stopped.
    server.wait_for("reading paused", |t| {
        t.read_pauses > 0 && t.pending_now >= low_water
    })?;
    thread::sleep(Duration::from_millis(100));
    let before = server.totals()?;
    thread::sleep(Duration::from_millis(300));
    let after = server.totals()?;
    assert_eq!(
        after.bytes_received, before.bytes_received,
        "the server kept reading from a client that does not read"
    );
    assert!(after.bytes_received < total, "the server took everything");
    assert!(
        after.pending_now <= bound,
        "{} bytes pending",
        after.pending_now
    );

    read_stream(&stream, total, 256 * 1024, |_| {})?;
    join(writer)?;
    drop(stream);
    let totals = server.wait_for("the connection closed", |t| t.closed == 1)?;
    assert_eq!(totals.bytes_echoed, total);
    assert!(totals.peak_pending <= bound, "peak {}", totals.peak_pending);
    server.stop()?;
    Ok(())
}

#[test]
fn half_close_gets_the_whole_echo_then_end_of_stream() -> io::Result<()> {
    let server = EchoServer::start(Config::default(), Some(16 * 1024))?;

    let mut short = connect(server.addr, None)?;
    short.write_all(b"hello")?;
    short.shutdown(Shutdown::Write)?;
    let mut echoed = Vec::new();
    short.read_to_end(&mut echoed)?; // returns only once the server has closed
    assert_eq!(echoed, b"hello");

    // Enough that the echo is still pending, mostly, when the end of stream arrives.
    let total = 2u64 << 20;
    let long = connect(server.addr, Some(16 * 1024))?;
    let writer_stream = long.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        write_stream(&writer_stream, total, 64 * 1024, 3)?;
        writer_stream.shutdown(Shutdown::Write)
    });
    read_stream(&long, total, 64 * 1024, |_| {})?;
    join(writer)?;
    let mut rest = [0; 1];
    assert_eq!(
        (&long).read(&mut rest)?,
        0,
        "no end of stream after the echo"
    );

    let totals = server.wait_for("both connections closed", |t| t.closed == 2)?;
    assert_eq!(totals.bytes_echoed, total + 5);
    assert_eq!(totals.connection_errors, 0);
    server.stop()?;
    Ok(())
}

#[test]
fn idle_and_reset_connections_cause_no_wakeups() -> io::Result<()> {
    let server = EchoServer::start(Config::default(), Some(16 * 1024))?;
    // A transfer big enough to need WRITE interest on and off many times.
    let total = 1u64 << 20;
    let busy = connect(server.addr, Some(16 * 1024))?;
    let writer_stream = busy.try_clone()?;
    let writer = thread::spawn(move || write_stream(&writer_stream, total, 64 * 1024, 5));
    thread::sleep(Duration::from_millis(100)); // not reading yet: the server's writes back up
    read_stream(&busy, total, 64 * 1024, |_| {})?;
    join(writer)?;
    // And one that resets, leaving a hang-up that must not stick.
    let doomed = connect(server.addr, None)?;
    (&doomed).write_all(b"bye")?;
    server.wait_for("the echo", |t| t.bytes_echoed == total + 3)?;
    reset(doomed)?;
    server.wait_for("the reset connection closed", |t| t.closed == 1)?;

    let before = server.totals()?;
    assert!(before.short_writes > 0, "WRITE interest was never needed");
    thread::sleep(Duration::from_millis(300));
    let after = server.totals()?;
    assert_eq!(
        after.callbacks, before.callbacks,
        "callbacks ran while nothing happened"
    );
    drop(busy);
    server.wait_for("all closed", |t| t.closed == 2)?;
    server.stop()?;
    Ok(())
}

/// Sends to the server without reading until it has stopped reading from this client, so
/// that echo is pending and the connection waits for WRITE only.
fn fill_until_server_stops_reading(server: &EchoServer, stream: &TcpStream) -> io::Result<()> {
    let pauses_before = server.totals()?.read_pauses;
    stream.set_nonblocking(true)?;
    let mut offset = 0u64;
    let deadline = Instant::now() + SETTLE;
    loop {
        match (&*stream).write(expected(offset, 64 * 1024)) {
            Ok(n) => offset += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let totals = server.totals()?;
                if totals.read_pauses > pauses_before {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!("server never paused: {totals:?}")));
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    stream.set_nonblocking(false)
}

/// Closes `stream` with a reset (SO_LINGER 0) rather than a FIN.
fn reset(stream: TcpStream) -> io::Result<()> {
    SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

#[test]
fn a_reset_peer_closes_only_its_own_connection() -> io::Result<()> {
    let server = EchoServer::start(Config::default(), Some(32 * 1024))?;
    let mut steady = connect(server.addr, None)?;
    round_trip(&mut steady, b"before")?;

    // Reset while the server is reading from it.
    let reading = connect(server.addr, None)?;
    (&reading).write_all(expected(0, 1000))?;
    server.wait_for("the first echo", |t| t.bytes_echoed >= 1006)?;
    reset(reading)?;
    // Reset while the server has echo pending and waits to write.
    let writing = connect(server.addr, Some(32 * 1024))?;
    fill_until_server_stops_reading(&server, &writing)?;
    reset(writing)?;

    let totals = server.wait_for("both reset connections closed", |t| t.closed == 2)?;
    assert_eq!(totals.connection_errors, 2, "{totals:?}");
    for i in 0..20u64 {
        round_trip(&mut steady, expected(i * 100, 100))?;
    }
    drop(steady);
    let totals = server.wait_for("all closed", |t| t.closed == 3)?;
    assert_eq!(totals.accepted, 3);
    assert_eq!(
        totals.pending_now, 0,
        "a reset connection's buffer was not released"
    );
    server.stop()?;
    Ok(())
}

#[test]
fn writing_to_a_reset_peer_does_not_kill_the_server_with_sigpipe() -> io::Result<()> {
    const TEST: &str = "writing_to_a_reset_peer_does_not_kill_the_server_with_sigpipe";
    match env::var(CHILD_VAR).as_deref() {
        Ok("sigpipe control") => return raw_write_after_reset_raises_sigpipe(),
        Ok(TEST) => return echo_survives_write_after_reset(),
        _ => {}
    }
    // The control proves the setup can fail: the same scenario written with plain write(2)
    // kills its process.
    let (status, output) = run_child(TEST, "sigpipe control")?;
    assert_eq!(
        killing_signal(status),
        Some(libc::SIGPIPE),
        "the control survived ({status}), so the scenario does not raise SIGPIPE:\n{output}"
    );
    let (status, output) = run_child(TEST, TEST)?;
    assert!(
        status.success(),
        "the echo child failed ({status}):\n{output}"
    );
    Ok(())
}

/// Restores the default SIGPIPE action (terminate), which Rust's runtime replaces with "ignore".
fn default_sigpipe() -> io::Result<()> {
    // SAFETY: installs the default disposition; no handler code, no pointers besides libc's
    // own constant.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resets a connection whose peer (the server) has received everything the client sent: the
/// client half-closes first, so the reset finds the server's side in CLOSE_WAIT, and the kernel
/// answers the server's next write with EPIPE, which raises SIGPIPE unless the write passes
/// MSG_NOSIGNAL. (Reset straight from ESTABLISHED, the write gets ECONNRESET: no signal.)
fn half_close_then_reset(client: TcpStream) -> io::Result<()> {
    client.shutdown(Shutdown::Write)?;
    thread::sleep(Duration::from_millis(20));
    reset(client)?;
    thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// Bytes the client has sent that its peer has not acknowledged yet (`SIOCOUTQ`).
fn unacknowledged(stream: &TcpStream) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int into the live local it is given.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued as usize)
}

/// Like [`fill_until_server_stops_reading`], but in steps the server's kernel fully takes in,
/// so that nothing is left in the client's queue when it stops: a FIN sent then arrives.
fn feed_until_server_stops_reading(server: &EchoServer, stream: &TcpStream) -> io::Result<()> {
    let pauses_before = server.totals()?.read_pauses;
    let deadline = Instant::now() + SETTLE;
    let mut offset = 0u64;
    loop {
        (&*stream).write_all(expected(offset, 8 * 1024))?;
        offset += 8 * 1024;
        while unacknowledged(stream)? > 0 {
            if Instant::now() > deadline {
                return Err(io::Error::other("the server stopped taking data in"));
            }
            thread::sleep(Duration::from_millis(1));
        }
        let totals = server.totals()?;
        if totals.read_pauses > pauses_before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("server never paused: {totals:?}")));
        }
    }
}

fn raw_write_after_reset_raises_sigpipe() -> io::Result<()> {
    default_sigpipe()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = connect(listener.local_addr()?, None)?;
    let (server_side, _) = listener.accept()?;
    half_close_then_reset(client)?;
    let byte = [0u8; 1];
    // SAFETY: writes one byte from a live buffer to a descriptor `server_side` keeps open.
    let written = unsafe { libc::write(server_side.as_raw_fd(), byte.as_ptr().cast(), 1) };
    // Reaching this line means no SIGPIPE: the parent sees a normal exit and fails.
    eprintln!("write returned {written}: {}", io::Error::last_os_error());
    Ok(())
}

fn echo_survives_write_after_reset() -> io::Result<()> {
    default_sigpipe()?;
    let server = EchoServer::start(Config::default(), Some(32 * 1024))?;
    let mut steady = connect(server.addr, None)?;
    for round in 0..3u64 {
        let client = connect(server.addr, Some(32 * 1024))?;
        feed_until_server_stops_reading(&server, &client)?;
        half_close_then_reset(client)?;
        server.wait_for("the reset connection closed", |t| t.closed == round + 1)?;
        round_trip(&mut steady, b"still here")?;
    }
    let totals = server.stop()?;
    // The server did write to the reset peers, got EPIPE each time, and lived.
    assert_eq!(totals.broken_pipes, 3, "{totals:?}");
    Ok(())
}

#[test]
fn sixty_four_mib_each_way_at_once_is_exact() -> io::Result<()> {
    let total = util::scaled(64 << 20, 4 << 20) as u64;
    let config = Config::default();
    let bound = buffer_bound(&config);
    let server = EchoServer::start(config, Some(128 * 1024))?;
    let stream = connect(server.addr, Some(128 * 1024))?;
    let writer_stream = stream.try_clone()?;
    let writer = thread::spawn(move || write_stream(&writer_stream, total, MAX_SLICE, 4));
    let reader_stream = stream.try_clone()?;
    let reader = thread::spawn(move || read_stream(&reader_stream, total, MAX_SLICE, |_| {}));
    // Either may fail first, leaving the other blocked: join so that the failure surfaces.
    util::join_all(vec![writer, reader], 6 * IO_TIMEOUT)?;
    drop(stream);
    let totals = server.wait_for("the connection closed", |t| t.closed == 1)?;
    assert_eq!(totals.bytes_received, total);
    assert_eq!(totals.bytes_echoed, total);
    assert!(totals.peak_pending <= bound, "peak {}", totals.peak_pending);
    server.stop()?;
    Ok(())
}
