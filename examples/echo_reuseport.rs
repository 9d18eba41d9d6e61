//! N selectors on N threads sharing one port through `SO_REUSEPORT`: the kernel spreads
//! incoming connections across the listeners, and each thread serves its own with no locks.
//!
//! ```text
//! cargo run --release --example echo_reuseport -- [ADDR] [--threads N]
//! ```
//!
//! ADDR defaults to 127.0.0.1:8008, N to the number of CPUs. Ctrl-C (or SIGTERM) stops every
//! thread through its [`Handle`](selreactor::Handle) and prints how many connections and bytes
//! each one served, which shows how the kernel balanced them. Try
//! `for i in $(seq 20); do echo hi | nc -N 127.0.0.1 8008; done`, then Ctrl-C.
//!
//! This is the Python notes' `selectors` echo server scaled out to N threads: each thread runs
//! `echo.rs`'s server (the transport layer, `selreactor::net`) on a listener of its own, made
//! with `ListenOptions::default().reuse_port(true)`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;

use selreactor::net::{serve, tcp_listener, ListenOptions, Protocol, ServerOptions, Transport};
use selreactor::Selector;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The bytes one thread echoed, in its selector's state.
struct Echoed(u64);

/// One connection: everything that arrives goes back; a peer that stops reading stops us
/// reading from it.
struct Echo;

impl Protocol for Echo {
    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        tx.registry().state::<Echoed>().expect("inserted").0 += data.len() as u64;
        tx.write(data)
    }

    fn pause_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.pause_reading();
    }

    fn resume_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.resume_reading();
    }
}

fn main() -> ExitCode {
    let mut addr: SocketAddr = "127.0.0.1:8008".parse().expect("a valid default");
    let mut threads = thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--threads" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => threads = n,
                _ => return usage_error("--threads needs a positive number"),
            },
            _ if !arg.starts_with('-') => match arg.parse() {
                Ok(parsed) => addr = parsed,
                Err(_) => return usage_error(&format!("{arg:?} is not IP:PORT")),
            },
            _ => return usage_error(&format!("unknown option {arg:?}")),
        }
    }
    match run(addr, threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_reuseport: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str =
    "usage: echo_reuseport [ADDR] [--threads N]   (default 127.0.0.1:8008, one thread per CPU)";

fn usage_error(problem: &str) -> ExitCode {
    eprintln!("echo_reuseport: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn run(addr: SocketAddr, threads: usize) -> io::Result<()> {
    // Signals first, so that no thread of ours can receive them before the iterator exists.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let (handles_tx, handles_rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(threads);
    for index in 0..threads {
        // Every listener is bound before any thread starts serving, so a bind error (the port
        // taken by a process without SO_REUSEPORT) stops the program at once.
        let listener = tcp_listener(addr, &ListenOptions::default().reuse_port(true))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let handles_tx = handles_tx.clone();
        workers.push(thread::spawn(move || -> io::Result<(u64, u64)> {
            let mut sel = Selector::new()?;
            sel.insert_state(Echoed(0));
            let server = serve(&mut sel, listener, ServerOptions::default(), |_, _| Echo)?;
            handles_tx
                .send((index, sel.handle()))
                .map_err(|_| io::Error::other("the main thread is gone"))?;
            drop(handles_tx);
            sel.run()?;
            let accepted = server.stats(&sel).map_or(0, |stats| stats.accepted);
            Ok((accepted, sel.state::<Echoed>().map_or(0, |echoed| echoed.0)))
        }));
    }
    drop(handles_tx);
    // A thread that failed before sending its handle ends the collection early.
    let handles: Vec<_> = handles_rx.iter().take(threads).collect();
    eprintln!("echo_reuseport: {threads} selector thread(s) on {addr}");

    signals.forever().next();
    for (_, handle) in &handles {
        // A thread whose loop already failed has dropped its selector: nothing to stop.
        let _ = handle.stop();
    }
    for (index, worker) in workers.into_iter().enumerate() {
        match worker.join() {
            Ok(Ok((connections, bytes))) => {
                eprintln!("echo_reuseport: thread {index}: {connections} connections, {bytes} bytes echoed")
            }
            Ok(Err(e)) => eprintln!("echo_reuseport: thread {index} failed: {e}"),
            Err(_) => eprintln!("echo_reuseport: thread {index} panicked"),
        }
    }
    Ok(())
}
