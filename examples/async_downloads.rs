//! Ten concurrent downloads as async tasks: the Python notes' asyncio "ex1" (`create_task` for
//! each `fetch_content`, then `asyncio.wait`), as `spawn` plus awaiting each task.
//!
//! ```text
//! cargo run --example async_downloads                    # 10 downloads, 300 ms server delay
//! cargo run --example async_downloads -- --count 50 --delay-ms 1000
//! ```
//!
//! Try a long `--delay-ms`: all downloads together still take about one delay, not N of them.
//! The `downloads` example does the same with callbacks.
//!
//! There is no internet here, so the same loop also runs a tiny HTTP/1.0 server on
//! `127.0.0.1:<free port>` that answers every `GET` with a random "image" after a delay. Each
//! fetch connects, sends its request, reads the response to the end and checks its length
//! against `Content-Length`; the notes' `write_img` becomes counting the bytes.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use selreactor::task::{self, Async};

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

/// The server: one task per connection; each reads the request head, sleeps, answers.
async fn serve(listener: Async<TcpListener>, delay: Duration) -> io::Result<()> {
    for seed in 1.. {
        let (conn, _) = listener.accept().await?;
        task::spawn(async move {
            if let Err(e) = answer(conn, seed, delay).await {
                eprintln!("server: {e}");
            }
        })
        .detach();
    }
    Ok(())
}

async fn answer(mut conn: Async<TcpStream>, seed: u64, delay: Duration) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut buf).await? {
            0 => return Ok(()), // the client left before asking
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    task::sleep(delay).await; // the slow part of a real server
    let body = image(seed);
    let header = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(header.as_bytes()).await?;
    conn.write_all(&body).await?;
    conn.close().await
}

/// One download (the notes' `fetch_content`): returns the body's length.
async fn fetch(addr: SocketAddr, path: String) -> io::Result<usize> {
    let mut conn = Async::<TcpStream>::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Content-Length"))?;
    let body = &response[split + 4..];
    if body.len() != length {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated body"));
    }
    Ok(body.len())
}

/// The notes' `main2`: create a task per download, then wait for all of them.
async fn main2(count: usize, delay: Duration) -> io::Result<Duration> {
    let listener = Async::<TcpListener>::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = task::spawn(serve(listener, delay)); // dropped (cancelled) at the end

    let start = Instant::now();
    let downloads: Vec<_> = (0..count)
        .map(|i| task::spawn(fetch(addr, format!("/320/240?lock={i}"))))
        .collect();
    for (i, download) in downloads.into_iter().enumerate() {
        println!("image {i}: {} bytes", download.await?);
    }
    drop(server);
    Ok(start.elapsed())
}

fn main() -> ExitCode {
    let (mut count, mut delay) = (10, Duration::from_millis(300));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (
            arg.as_str(),
            args.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            ("--count", Some(n)) => count = n as usize,
            ("--delay-ms", Some(ms)) => delay = Duration::from_millis(ms),
            _ => {
                eprintln!("usage: async_downloads [--count N] [--delay-ms MS]");
                return ExitCode::from(2);
            }
        }
    }
    match task::block_on(main2(count, delay)) {
        Ok(Ok(elapsed)) => {
            println!(
                "{count} downloads in {:.3} s (server delay {:.3} s each)",
                elapsed.as_secs_f64(),
                delay.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("async_downloads: {e}");
            ExitCode::FAILURE
        }
    }
}
