//! Ten concurrent downloads on one loop: the Python notes' asyncio "ex1" (`fetch_content` with
//! aiohttp), without the internet.
//!
//! ```text
//! cargo run --example downloads                   # 10 downloads, 300 ms server delay
//! cargo run --example downloads -- --delay-ms 50  # a shorter delay
//! ```
//!
//! Try `--delay-ms 2000`: ten downloads still take about two seconds, not twenty.
//!
//! The notes fetched ten random images from loremflickr.com at once. There is no network here, so
//! the same selector also runs a tiny HTTP/1.0 server on `127.0.0.1:<free port>` that answers
//! every `GET` with a random "image" after a delay (a timer, with the connection paused
//! meanwhile). Ten non-blocking clients connect, send their request, read the response to the
//! end, and write each body to a file under `std::env::temp_dir()`. The lengths are checked
//! against `Content-Length`, and the elapsed time shows the downloads overlapped: about one
//! delay in all, not ten.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::{Event, Interest, Registry, Selector};
use socket2::{Domain, Socket, Type};

/// What one download produced.
struct Download {
    path: PathBuf,
    bytes: usize,
}

/// What the whole run produced.
struct Report {
    downloads: Vec<Download>,
    elapsed: Duration,
}

/// A random "image": a JPEG start-of-image marker and pseudo-random bytes, 20–80 KB.
fn image(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 20_000 + (next() % 60_000) as usize;
    let mut body = vec![0xff, 0xd8, 0xff, 0xe0];
    body.extend((4..len).map(|_| next() as u8));
    body
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

// --- the server ---

/// A server connection: read the request, wait `delay`, write the response, close.
struct Exchange {
    request: Vec<u8>,
    response: Vec<u8>,
    sent: usize,
}

fn start_server(sel: &mut Selector, delay: Duration) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let served = Cell::new(0u64);
    sel.register(listener, Interest::READ, move |reg, listener, _| loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                served.set(served.get() + 1);
                reg.register(stream, Interest::READ, server_side(served.get(), delay))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    })?;
    Ok(addr)
}

fn server_side(
    seed: u64,
    delay: Duration,
) -> impl FnMut(&mut Registry, &TcpStream, Event<TcpStream>) -> io::Result<()> {
    let exchange = Rc::new(RefCell::new(Exchange {
        request: Vec::new(),
        response: Vec::new(),
        sent: 0,
    }));
    move |reg, mut stream, event| {
        let key = event.key();
        if event.is_readable() {
            let mut buf = [0; 1024];
            let n = match stream.read(&mut buf) {
                Ok(0) => return reg.remove(key), // gave up before the response
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut ex = exchange.borrow_mut();
            ex.request.extend_from_slice(&buf[..n]);
            if ex.request.windows(4).any(|w| w == b"\r\n\r\n") {
                if !ex.request.starts_with(b"GET ") {
                    return Err(invalid("not a GET"));
                }
                // "Fetch the image": pause the connection, answer when the timer fires.
                reg.modify(key, Interest::NONE)?;
                let exchange = Rc::clone(&exchange);
                reg.call_later(delay, move |reg| {
                    let body = image(seed);
                    let mut ex = exchange.borrow_mut();
                    ex.response = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    ex.response.extend_from_slice(&body);
                    // The connection may have failed meanwhile: then there is no one to answer.
                    let _ = reg.modify(key, Interest::WRITE);
                });
            }
        } else if event.is_writable() {
            let mut ex = exchange.borrow_mut();
            let from = ex.sent;
            match stream.write(&ex.response[from..]) {
                Ok(n) => ex.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if ex.sent == ex.response.len() {
                return reg.remove(key); // HTTP/1.0: closing ends the body
            }
        }
        Ok(())
    }
}

// --- the clients ---

/// Starts a non-blocking connect (`EINPROGRESS` while the handshake is under way); the socket
/// becomes writable when it completes.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Splits a complete HTTP/1.0 response into its body, checking status and length.
fn body_of(response: &[u8]) -> io::Result<&[u8]> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| invalid("binary headers"))?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(invalid("not 200 OK"));
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .ok_or_else(|| invalid("no Content-Length"))?
        .parse()
        .map_err(|_| invalid("bad Content-Length"))?;
    let body = &response[end + 4..];
    if body.len() != length {
        return Err(invalid("body length differs from Content-Length"));
    }
    Ok(body)
}

fn start_client(
    sel: &mut Selector,
    addr: SocketAddr,
    path: PathBuf,
    done: Rc<RefCell<Vec<Download>>>,
) -> io::Result<()> {
    let request = format!("GET /320/240 HTTP/1.0\r\nHost: {addr}\r\n\r\n").into_bytes();
    let mut sent = 0;
    let mut response = Vec::new();
    sel.register(
        connect(addr)?,
        Interest::WRITE,
        move |reg, mut stream, event| {
            if event.is_writable() {
                if let Some(error) = stream.take_error()? {
                    return Err(error); // the connect failed
                }
                match stream.write(&request[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
                if sent == request.len() {
                    reg.modify(event.key(), Interest::READ)?;
                }
                return Ok(());
            }
            let mut buf = [0; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            // End of stream: the whole response is in.
            let body = body_of(&response)?;
            fs::write(&path, body)?; // a small synchronous write, as in the notes
            done.borrow_mut().push(Download {
                path: path.clone(),
                bytes: body.len(),
            });
            reg.remove(event.key())
        },
    )?;
    Ok(())
}

/// Runs `count` concurrent downloads from a local server that answers after `delay`, saving
/// the bodies under `dir`.
fn run(count: usize, delay: Duration, dir: &Path) -> io::Result<Report> {
    fs::create_dir_all(dir)?;
    let mut sel = Selector::new()?;
    let failed = Rc::new(Cell::new(false));
    let f = Rc::clone(&failed);
    sel.set_error_handler(move |reg, token, error| {
        eprintln!("connection {token} failed: {error}");
        f.set(true);
        reg.stop();
    });
    let addr = start_server(&mut sel, delay)?;
    let done = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    for i in 0..count {
        let path = dir.join(format!("{i}.jpeg"));
        start_client(&mut sel, addr, path, Rc::clone(&done))?;
    }
    // The listener keeps `run` going forever: stop once every download has landed.
    let watched = Rc::clone(&done);
    sel.call_every(Duration::from_millis(5), move |reg, _| {
        if watched.borrow().len() == count {
            reg.stop();
        }
    });
    sel.run()?;
    let elapsed = start.elapsed();
    if failed.get() {
        return Err(io::Error::other("a download failed"));
    }
    let downloads = done.take();
    for download in &downloads {
        if fs::metadata(&download.path)?.len() != download.bytes as u64 {
            return Err(invalid("file length differs from the body"));
        }
    }
    Ok(Report { downloads, elapsed })
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut delay = Duration::from_millis(300);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<u64>())) {
            ("--delay-ms", Some(Ok(ms))) => delay = Duration::from_millis(ms),
            ("-h" | "--help", _) => {
                println!("usage: downloads [--delay-ms N]   (default 300)");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("usage: downloads [--delay-ms N]   (default 300)");
                return ExitCode::from(2);
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("selreactor-downloads-{}", std::process::id()));
    let result = run(10, delay, &dir);
    let _ = fs::remove_dir_all(&dir);
    match result {
        Ok(report) => {
            for download in &report.downloads {
                println!("{} ({} bytes)", download.path.display(), download.bytes);
            }
            println!(
                "{} downloads in {:.3} s (server delay {:.3} s each)",
                report.downloads.len(),
                report.elapsed.as_secs_f64(),
                delay.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("downloads: {e}");
            ExitCode::FAILURE
        }
    }
}
