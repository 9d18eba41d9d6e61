//! The echo example run as a program: the address it prints, exact echo both ways at once,
//! half-close, a client that never reads, Ctrl-C with totals, and a 64-descriptor limit.
//! (The library's own robustness is tested in `echo_transport.rs`, `transport.rs` and
//! `server.rs`.)

#[path = "util/example.rs"]
mod example;
mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use example::Example;

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn it_prints_the_address_it_bound_and_echoes_both_ways_at_once_exactly() -> io::Result<()> {
    let total = util::scaled(64 << 20, 4 << 20);
    let echo = Example::start("echo", &["127.0.0.1:0", "--quiet"])?;
    assert_ne!(echo.addr.port(), 0);
    let stream = echo.connect()?;
    let mut writer_side = stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<usize> {
        for offset in (0..total).step_by(1 << 20) {
            writer_side.write_all(&pattern(offset, (total - offset).min(1 << 20)))?;
        }
        writer_side.shutdown(Shutdown::Write).map(|()| 0)
    });
    let mut reader_side = stream.try_clone()?;
    let reader = thread::spawn(move || -> io::Result<usize> {
        let mut buf = vec![0; 1 << 16];
        let mut offset = 0;
        loop {
            let n =
                util::retry_interrupted(Duration::from_secs(60), || reader_side.read(&mut buf))?;
            if n == 0 {
                return Ok(offset);
            }
            if buf[..n] != pattern(offset, n)[..] {
                return Err(io::Error::other(format!("wrong bytes at {offset}")));
            }
            offset += n;
        }
    });
    // Either may fail first, leaving the other blocked: join so that the failure surfaces.
    let done = util::join_all(vec![writer, reader], Duration::from_secs(300))?;
    assert_eq!(done[1], total, "the echo ended early");
    Ok(())
}

#[test]
fn half_close_gets_the_whole_echo_then_end_of_stream() -> io::Result<()> {
    let echo = Example::start("echo", &["127.0.0.1:0", "--quiet"])?;
    let mut stream = echo.connect()?;
    stream.write_all(b"the last words")?;
    stream.shutdown(Shutdown::Write)?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed)?;
    assert_eq!(echoed, b"the last words");
    Ok(())
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory_and_others_are_served() -> io::Result<()> {
    let echo = Example::start("echo", &["127.0.0.1:0", "--quiet"])?;
    let before = echo.resident_kib()?;
    let hog = echo.connect()?;
    hog.set_nonblocking(true)?;
    let chunk = vec![7u8; 1 << 16];
    let (mut sent, mut stuck_since) = (0usize, None::<Instant>);
    // Send until the server has stopped reading (our writes stay blocked for half a second).
    while stuck_since.is_none_or(|t| t.elapsed() < Duration::from_millis(500)) {
        match (&hog).write(&chunk) {
            Ok(n) => {
                sent += n;
                stuck_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stuck_since.get_or_insert_with(Instant::now);
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
        assert!(sent < 1 << 30, "the server never stopped reading");
    }
    let growth = echo.resident_kib()?.saturating_sub(before);
    assert!(
        growth < 8 * 1024,
        "the server grew {growth} KiB for one idle reader"
    );
    let mut other = echo.connect()?;
    other.write_all(b"still served")?;
    let mut got = [0; 12];
    other.read_exact(&mut got)?;
    assert_eq!(&got, b"still served");
    Ok(())
}

#[test]
fn ctrl_c_ends_the_connections_and_prints_the_totals() -> io::Result<()> {
    let mut echo = Example::start("echo", &["127.0.0.1:0"])?;
    let mut done = echo.connect()?;
    done.write_all(b"12345")?;
    done.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    done.read_to_end(&mut got)?;
    let mut open = echo.connect()?;
    open.write_all(b"678")?;
    let mut got = [0; 3];
    open.read_exact(&mut got)?;
    echo.wait_for_line("closed after 5 bytes")?;
    let (status, lines) = echo.signal_and_wait(libc::SIGINT)?;
    assert!(status.success(), "{status}: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "echo: served 2 connections, 8 bytes"),
        "{lines:?}"
    );
    // The open client saw its connection end.
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
    Ok(())
}

/// Waits up to `within` for the client to read back one byte; true if it did.
fn answered(stream: &TcpStream, within: Duration) -> io::Result<bool> {
    stream.set_read_timeout(Some(within))?;
    let mut byte = [0];
    // A stop of this process interrupts the read (EINTR): ask again, within the same time.
    match util::retry_interrupted(within, || (&*stream).read(&mut byte)) {
        Ok(1) => Ok(true),
        Ok(_) => Err(io::Error::other("the server closed a waiting client")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[test]
fn at_a_64_descriptor_limit_it_serves_what_it_can_and_the_rest_as_others_close() -> io::Result<()> {
    let binary = example::binary("echo")?;
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -n 64 && exec \"$0\" 127.0.0.1:0 --quiet"]);
    command.arg(&binary);
    let echo = Example::spawn(command)?;
    // 80 clients: more than the server has descriptors for. Each sends one byte.
    let clients = (0..80)
        .map(|_| {
            let client = echo.connect()?;
            (&client).write_all(b"x")?;
            Ok(client)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for client in clients {
        if answered(
            &client,
            Duration::from_millis(if served.is_empty() { 5000 } else { 200 }),
        )? {
            served.push(client);
        } else {
            waiting.push(client);
        }
    }
    assert!(
        served.len() >= 40 && !waiting.is_empty(),
        "{} served, {} waiting",
        served.len(),
        waiting.len()
    );
    // Served clients leave; as many waiting ones must get their answer.
    served.truncate(served.len() - 10);
    let mut answered_now = 0;
    let start = Instant::now();
    for client in &waiting {
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        if answered(client, Duration::from_millis(500))? {
            answered_now += 1;
        }
    }
    assert!(
        answered_now >= 10,
        "only {answered_now} of the waiting clients were served"
    );
    Ok(())
}
