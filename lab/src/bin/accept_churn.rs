//! Load generator for the accept-churn benchmark: hold N idle connections to an echo server,
//! then run connect → write → read the echo → close cycles from C threads for a bounded time.
//!
//! ```text
//! cargo run --release -p selreactor-lab --bin accept_churn -- [ADDR] [--hold N] [--concurrency C]
//!     [--secs T] [--max-cycles M] [--size S] [--stall-ms MS] [--timeout-s T]
//! ```
//!
//! Start an echo server first (`cargo run --release --example echo -- --quiet`, or one of
//! `peer_echo`'s), usually under a low descriptor limit (`prlimit --nofile=64:64 ...`); ADDR
//! defaults to 127.0.0.1:8008. `lab/scripts/accept-churn.sh` drives it.
//!
//! 1. Opens `--hold` connections (default 50) and has each echo one byte, so that the server
//!    really holds them (a connection still in the backlog would cost it no descriptor).
//! 2. Runs cycles from `--concurrency` threads (default 16) until `--secs` (default 3) have passed
//!    or `--max-cycles` (default 30,000) have started. A cycle connects, writes `--size` bytes
//!    (default 16, numbered so that a mixed-up echo is caught), reads them back, and closes
//!    first (so the TIME_WAIT state stays on this side, and loopback reuses the ports).
//! 3. Has every held connection echo one byte again: churn must not have cost any of them.
//!
//! Each step of a cycle gives up after `--timeout-s` (default 5): the cycle then counts as
//! failed, and the run goes on. A cycle is a stall when it takes longer than `--stall-ms`
//! (default 500). The result is one `key=value` line on stdout and a summary on stderr.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

struct Options {
    addr: SocketAddr,
    hold: usize,
    concurrency: usize,
    secs: f64,
    max_cycles: u64,
    size: usize,
    stall: Duration,
    timeout: Duration,
}

fn parse() -> io::Result<Options> {
    let mut options = Options {
        addr: "127.0.0.1:8008".parse().unwrap(),
        hold: 50,
        concurrency: 16,
        secs: 3.0,
        max_cycles: 30_000,
        size: 16,
        stall: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
    };
    let mut args = std::env::args().skip(1);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| bad(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--hold" => options.hold = value()?.parse().map_err(|_| bad("--hold"))?,
            "--concurrency" => {
                options.concurrency = value()?.parse().map_err(|_| bad("--concurrency"))?
            }
            "--secs" => options.secs = value()?.parse().map_err(|_| bad("--secs"))?,
            "--max-cycles" => {
                options.max_cycles = value()?.parse().map_err(|_| bad("--max-cycles"))?
            }
            "--size" => options.size = value()?.parse().map_err(|_| bad("--size"))?,
            "--stall-ms" => {
                let ms = value()?.parse().map_err(|_| bad("--stall-ms"))?;
                options.stall = Duration::from_millis(ms)
            }
            "--timeout-s" => {
                let secs = value()?.parse().map_err(|_| bad("--timeout-s"))?;
                options.timeout = Duration::from_secs_f64(secs)
            }
            _ if !arg.starts_with('-') => {
                options.addr = arg.parse().map_err(|_| bad("ADDR must be IP:PORT"))?
            }
            _ => return Err(bad(&format!("unknown option {arg}"))),
        }
    }
    if options.concurrency == 0 || options.size == 0 || options.secs.is_nan() || options.secs <= 0.0
    {
        return Err(bad("--concurrency, --size and --secs must be positive"));
    }
    if options.timeout.is_zero() {
        return Err(bad("--timeout-s must be positive"));
    }
    if !options.addr.ip().is_loopback() {
        return Err(bad("this benchmark only talks to loopback addresses"));
    }
    Ok(options)
}

/// Connects, retrying refusals for a while: the server may still be starting.
fn connect_when_up(options: &Options) -> io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&options.addr, options.timeout) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            result => return result,
        }
    }
}

/// Writes `message` and reads back exactly it (or fails: timeout, early close, wrong bytes).
fn echo(stream: &mut TcpStream, message: &[u8], reply: &mut [u8]) -> io::Result<()> {
    stream.write_all(message)?;
    stream.read_exact(reply)?;
    if reply != message {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo differs from the message",
        ));
    }
    Ok(())
}

fn check_held(held: &mut [TcpStream], round: u8) -> io::Result<()> {
    for (index, stream) in held.iter_mut().enumerate() {
        echo(stream, &[round], &mut [0])
            .map_err(|e| io::Error::new(e.kind(), format!("held connection {index}: {e}")))?;
    }
    Ok(())
}

/// One connect → write → read → close cycle.
fn cycle(options: &Options, number: u64) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&options.addr, options.timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(options.timeout))?;
    stream.set_write_timeout(Some(options.timeout))?;
    let message: Vec<u8> = (0..options.size)
        .map(|i| (number as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    let mut reply = vec![0; options.size];
    echo(&mut stream, &message, &mut reply)
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    /// Every finished cycle's duration, failed ones included.
    durations: Vec<Duration>,
    failed: u64,
    first_error: Option<String>,
}

fn churn(options: &Options, started: &AtomicU64, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let number = started.fetch_add(1, Ordering::Relaxed);
        if number >= options.max_cycles {
            break;
        }
        let begun = Instant::now();
        let result = cycle(options, number);
        tally.durations.push(begun.elapsed());
        if let Err(e) = result {
            tally.failed += 1;
            tally.first_error.get_or_insert_with(|| match e.kind() {
                // A blocking socket's timeout reads as `WouldBlock`.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no answer within {:?}", options.timeout)
                }
                _ => e.to_string(),
            });
        }
    }
    tally
}

fn percentile_ms(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn main() -> io::Result<()> {
    let options = parse()?;
    let mut held = Vec::with_capacity(options.hold);
    for _ in 0..options.hold {
        let stream = connect_when_up(&options)?;
        stream.set_read_timeout(Some(options.timeout))?;
        stream.set_write_timeout(Some(options.timeout))?;
        held.push(stream);
    }
    check_held(&mut held, b'a')?;

    let started = AtomicU64::new(0);
    let begun = Instant::now();
    let deadline = begun + Duration::from_secs_f64(options.secs);
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let threads: Vec<_> = (0..options.concurrency)
            .map(|_| scope.spawn(|| churn(&options, &started, deadline)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a churn thread panicked"))
            .collect()
    });
    let elapsed = begun.elapsed().as_secs_f64();
    let held_ok = check_held(&mut held, b'b');

    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let first_error = tallies.iter().find_map(|t| t.first_error.clone());
    let mut durations: Vec<Duration> = tallies.into_iter().flat_map(|t| t.durations).collect();
    durations.sort_unstable();
    let cycles = durations.len() as u64 - failed;
    let stalls = durations.iter().filter(|&&d| d > options.stall).count();
    let rate = cycles as f64 / elapsed;
    let (p50, p99, max) = (
        percentile_ms(&durations, 0.5),
        percentile_ms(&durations, 0.99),
        percentile_ms(&durations, 1.0),
    );
    println!(
        "hold={} concurrency={} cycles={cycles} failed={failed} secs={elapsed:.3} cycles_per_sec={rate:.0} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.1} stalls={stalls} held_ok={}",
        options.hold,
        options.concurrency,
        held_ok.is_ok()
    );
    eprintln!(
        "{} held, {} threads: {cycles} cycles in {elapsed:.2} s = {rate:.0}/s, {failed} failed; \
         p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms; {stalls} over {} ms; held connections {}",
        options.hold,
        options.concurrency,
        options.stall.as_millis(),
        match &held_ok {
            Ok(()) => "all still served".to_string(),
            Err(e) => format!("FAILED ({e})"),
        }
    );
    if let Some(e) = first_error {
        eprintln!("first failure: {e}");
    }
    Ok(())
}
