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
//! This is the Python notes' `selectors` echo server (see `echo.rs` for the robust one-thread
//! version) scaled out to N threads. Each connection echoes with the simplest level-triggered
//! step: read once, write it back, and keep what the socket does not take (waiting for `WRITE`,
//! not reading) until it is flushed.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use selreactor::{Interest, Registry, Selector};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};

const READ_SIZE: usize = 16 * 1024;

/// What one thread served, reported when it stops.
#[derive(Debug, Default)]
struct Served {
    connections: Cell<u64>,
    bytes: Cell<u64>,
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
        let listener = bind_shared(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let handles_tx = handles_tx.clone();
        workers.push(thread::spawn(move || -> io::Result<(u64, u64)> {
            let mut sel = Selector::new()?;
            let served = Rc::new(Served::default());
            serve(&mut sel, listener, Rc::clone(&served))?;
            handles_tx
                .send((index, sel.handle()))
                .map_err(|_| invalid("main thread gone"))?;
            drop(handles_tx);
            sel.run()?;
            Ok((served.connections.get(), served.bytes.get()))
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

fn invalid(message: &str) -> io::Error {
    io::Error::other(message.to_string())
}

/// A listener that shares `addr` with every other `SO_REUSEPORT` listener of this user.
fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn serve(reg: &mut Registry, listener: TcpListener, served: Rc<Served>) -> io::Result<()> {
    // A connection whose read or write fails (a reset) is removed by the loop; one log line
    // per dead client is noise in a benchmark.
    reg.set_error_handler(|_, _, _| {});
    let buf = Rc::new(RefCell::new(vec![0; READ_SIZE]));
    reg.register(listener, Interest::READ, move |reg, listener, event| {
        // Level-triggered: one accept per call; a longer backlog calls again.
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // The client gave up while in the backlog: the next call takes the next one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return Ok(()),
            // Out of descriptors or memory: the connection stays in the backlog and the listener
            // readable, so pause it for a while instead of spinning on it.
            Err(_) => {
                let key = event.key();
                reg.modify(key, Interest::NONE)?;
                reg.call_later(Duration::from_millis(100), move |reg| {
                    let _ = reg.modify(key, Interest::READ);
                });
                return Ok(());
            }
        };
        if stream.set_nonblocking(true).is_err() {
            return Ok(()); // this connection only: dropping it closes it
        }
        let _ = stream.set_nodelay(true);
        served.connections.set(served.connections.get() + 1);
        let buf = Rc::clone(&buf);
        let served = Rc::clone(&served);
        let mut pending: Vec<u8> = Vec::new();
        // A registration that fails drops (closes) this connection only.
        let _ = reg.register(stream, Interest::READ, move |reg, mut stream, event| {
            if !pending.is_empty() {
                let n = match stream.write(&pending) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                };
                pending.drain(..n);
                served.bytes.set(served.bytes.get() + n as u64);
                if pending.is_empty() {
                    reg.modify(event.key(), Interest::READ)?;
                }
                return Ok(());
            }
            let mut buf = buf.borrow_mut();
            let n = match stream.read(&mut buf) {
                Ok(0) => return reg.remove(event.key()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let written = match stream.write(&buf[..n]) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            served.bytes.set(served.bytes.get() + written as u64);
            if written < n {
                pending.extend_from_slice(&buf[written..n]);
                reg.modify(event.key(), Interest::WRITE)?;
            }
            Ok(())
        });
        Ok(())
    })?;
    Ok(())
}
