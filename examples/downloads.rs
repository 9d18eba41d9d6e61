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
//! The notes fetched ten random images from loremflickr.com at once. There is no network here,
//! so the same selector also runs a tiny HTTP/1.0 server on `127.0.0.1:<free port>` that answers
//! every `GET` with a made-up "image" after a delay (a timer, with the connection waiting
//! meanwhile). Ten clients ([`connect_tcp`]) send their request, collect the response until the
//! server closes, and write each body to a file in a directory under `std::env::temp_dir()`
//! (removed at the end). The lengths are checked against `Content-Length`, and the elapsed
//! time shows the downloads overlapped: about one delay in all, not ten. Both sides are
//! [`Protocol`]s on the transport layer, which does the buffering, the non-blocking connect and
//! the end of stream; `async_downloads` does the same with async tasks.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use selreactor::net::{
    connect_tcp, serve, tcp_listener, ListenOptions, Protocol, ServerOptions, Transport,
};
use selreactor::{Registry, Selector};

/// A made-up "image": a JPEG start-of-image marker, then filler, 20–80 KB by `seed`.
fn image(seed: u64) -> Vec<u8> {
    let len = 20_000 + (seed as usize * 7_919) % 60_000;
    let mut body = vec![0xff, 0xd8, 0xff, 0xe0];
    body.extend((4..len).map(|i| (i as u64 ^ seed.wrapping_mul(0x9e37_79b9)) as u8));
    body
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// The server's side of one exchange: read the request, wait `delay`, answer, close.
struct ImageServer {
    request: Vec<u8>,
    seed: u64,
    delay: Duration,
}

impl Protocol for ImageServer {
    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.request.extend_from_slice(data);
        if !self.request.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(()); // the request is not complete yet
        }
        if !self.request.starts_with(b"GET ") {
            return Err(invalid("not a GET"));
        }
        // "Fetch the image": answer when the timer fires. The client may be gone by then.
        tx.pause_reading();
        let (conn, body) = (tx.id(), image(self.seed));
        tx.registry().call_later(self.delay, move |reg| {
            if let Ok(mut tx) = conn.transport(reg) {
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let sent = tx.write(head.as_bytes()).and_then(|()| tx.write(&body));
                // HTTP/1.0: the end of the connection is the end of the body.
                match sent {
                    Ok(()) => tx.close(),
                    Err(_) => tx.abort(),
                }
            }
        });
        Ok(())
    }
}

/// What the downloads have produced so far, kept in the selector's state.
struct Results {
    expected: usize,
    done: Vec<io::Result<(PathBuf, usize)>>,
}

/// Records one download's outcome; the last one stops the loop (the server would run on).
fn finished(reg: &mut Registry, outcome: io::Result<(PathBuf, usize)>) {
    let results = reg.state::<Results>().expect("inserted by run");
    results.done.push(outcome);
    if results.done.len() == results.expected {
        reg.stop();
    }
}

/// One client: send the request, keep what arrives, save the body when the server closes.
struct Download {
    request: Vec<u8>,
    response: Vec<u8>,
    path: PathBuf,
}

impl Protocol for Download {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        tx.write(&self.request)
    }

    fn data(&mut self, _: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.response.extend_from_slice(data);
        Ok(())
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, reason: Option<io::Error>) {
        let outcome = match reason {
            Some(error) => Err(error),
            None => save(&self.response, &self.path).map(|bytes| (self.path.clone(), bytes)),
        };
        finished(tx.registry(), outcome);
    }
}

/// Checks a complete HTTP/1.0 response and writes its body to `path`; returns the body's size.
fn save(response: &[u8], path: &Path) -> io::Result<usize> {
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
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("no Content-Length"))?;
    let body = &response[end + 4..];
    if body.len() != length {
        return Err(invalid("body length differs from Content-Length"));
    }
    fs::write(path, body)?; // a small synchronous write, as in the notes
    Ok(body.len())
}

/// Runs `count` concurrent downloads from a local server that answers after `delay`, saving
/// the bodies under `dir`; returns them and the time they took.
fn run(count: usize, delay: Duration, dir: &Path) -> io::Result<(Vec<(PathBuf, usize)>, Duration)> {
    fs::create_dir_all(dir)?;
    let mut sel = Selector::new()?;
    let listener = tcp_listener(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &ListenOptions::default(),
    )?;
    let addr = listener.local_addr()?;
    let mut served = 0;
    serve(&mut sel, listener, ServerOptions::default(), move |_, _| {
        served += 1;
        ImageServer {
            request: Vec::new(),
            seed: served,
            delay,
        }
    })?;

    sel.insert_state(Results {
        expected: count,
        done: Vec::new(),
    });
    let start = Instant::now();
    for i in 0..count {
        let download = Download {
            request: format!("GET /320/240 HTTP/1.0\r\nHost: {addr}\r\n\r\n").into_bytes(),
            response: Vec::new(),
            path: dir.join(format!("{i}.jpeg")),
        };
        let timeout = Some(Duration::from_secs(10));
        connect_tcp(&mut sel, addr, timeout, download, |reg, error| {
            finished(reg, Err(error)) // the connect failed or timed out
        })?;
    }
    sel.run()?;
    let elapsed = start.elapsed();
    let results = sel.take_state::<Results>().expect("inserted above");
    let downloads = results.done.into_iter().collect::<io::Result<Vec<_>>>()?;
    Ok((downloads, elapsed))
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
        Ok((downloads, elapsed)) => {
            for (path, bytes) in &downloads {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                println!("{name} ({bytes} bytes)");
            }
            println!(
                "{} downloads in {:.3} s (server delay {:.3} s each)",
                downloads.len(),
                elapsed.as_secs_f64(),
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
