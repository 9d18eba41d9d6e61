//! The chat example run as a program: lines reach every other client intact, a client that
//! never reads is dropped without stalling the others, an over-long line is refused.

#[path = "util/example.rs"]
mod example;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use example::Example;

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line)
}

/// Connects and waits until the server has the client in the room: it hears a probe line.
fn join_room(chat: &Example, probe_from: &mut TcpStream) -> io::Result<BufReader<TcpStream>> {
    let client = chat.connect()?;
    let mut reader = BufReader::new(client);
    let deadline = Instant::now() + example::SETTLE;
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))?;
    loop {
        probe_from.write_all(b"probe\n")?;
        match read_line(&mut reader) {
            Ok(line) if line == "probe\n" => break,
            Ok(line) => return Err(io::Error::other(format!("unexpected {line:?}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("never joined the room"));
        }
    }
    reader.get_ref().set_read_timeout(Some(example::SETTLE))?;
    Ok(reader)
}

/// Reads lines until the probes stop (they may have been sent more than once).
fn skip_probes(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    loop {
        let line = read_line(reader)?;
        if line != "probe\n" {
            return Ok(line);
        }
    }
}

#[test]
fn each_line_reaches_every_other_client_intact() -> io::Result<()> {
    let chat = Example::start("chat", &["127.0.0.1:0"])?;
    let mut prober = chat.connect()?;
    let mut a = join_room(&chat, &mut prober)?;
    let mut b = join_room(&chat, &mut prober)?;
    prober.shutdown(Shutdown::Both)?;
    a.get_mut().write_all(b"hello from a\n")?;
    assert_eq!(skip_probes(&mut b)?, "hello from a\n");
    // A line split across writes arrives whole.
    b.get_mut().write_all(b"split ")?;
    thread::sleep(Duration::from_millis(50));
    b.get_mut()
        .write_all("across writes, ünïcode intact\r\n".as_bytes())?;
    assert_eq!(
        skip_probes(&mut a)?,
        "split across writes, ünïcode intact\n"
    );
    // The sender never hears itself: the next thing a hears is b's next line.
    b.get_mut().write_all(b"second\n")?;
    assert_eq!(read_line(&mut a)?, "second\n");
    Ok(())
}

#[test]
fn a_client_that_never_reads_is_dropped_and_the_others_get_everything() -> io::Result<()> {
    let chat = Example::start("chat", &["127.0.0.1:0"])?;
    let mut sender = chat.connect()?;
    let mut reader = join_room(&chat, &mut sender)?;
    // The slow one has a small receive buffer and never reads (until the end).
    let slow = {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(4096)?;
        socket.connect(&chat.addr.into())?;
        TcpStream::from(socket)
    };
    // The slow client is in the room once a probe from it reaches the reader.
    (&slow).write_all(b"probe\n")?;
    assert_eq!(read_line(&mut reader)?, "probe\n");
    let before = chat.resident_kib()?;
    const LINES: usize = 8192; // 8 MiB of 1 KiB lines: far past the 1 MiB backlog bound
                               // The reader must keep up, or it is dropped too (rightly): the sender stays at most this
                               // many lines ahead of it, well inside the bound, however the machine schedules the two.
    const AHEAD: usize = 128;
    let progress = Arc::new(AtomicUsize::new(0));
    let read_so_far = Arc::clone(&progress);
    let reader_thread = thread::spawn(move || -> io::Result<usize> {
        let mut count = 0;
        while count < LINES {
            let line = read_line(&mut reader)?;
            if line == "probe\n" {
                continue;
            }
            let expected = format!("{count:05} {}\n", "x".repeat(1017));
            if line != expected {
                return Err(io::Error::other(format!("line {count} is {line:?}")));
            }
            count += 1;
            read_so_far.store(count, Ordering::Relaxed);
        }
        Ok(count)
    });
    for i in 0..LINES {
        while i > progress.load(Ordering::Relaxed) + AHEAD && !reader_thread.is_finished() {
            thread::sleep(Duration::from_millis(1));
        }
        if reader_thread.is_finished() {
            break; // it failed: its error is the test's
        }
        writeln!(sender, "{i:05} {}", "x".repeat(1017))?;
    }
    let received = reader_thread
        .join()
        .map_err(|_| io::Error::other("the reader panicked"))??;
    assert_eq!(received, LINES);
    let growth = chat.resident_kib()?.saturating_sub(before);
    assert!(growth < 16 * 1024, "the server grew {growth} KiB");
    // The slow client was disconnected: reading it now ends well short of everything sent.
    slow.set_read_timeout(Some(example::SETTLE))?;
    let mut got = Vec::new();
    let ended = (&slow).read_to_end(&mut got);
    assert!(
        ended.is_ok() || matches!(&ended, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the slow client was not disconnected: {ended:?}"
    );
    assert!(
        got.len() < LINES * 1024 / 2,
        "the slow client got {} bytes",
        got.len()
    );
    Ok(())
}

#[test]
fn an_over_long_line_is_refused_and_the_connection_closed() -> io::Result<()> {
    let chat = Example::start("chat", &["127.0.0.1:0"])?;
    let mut client = chat.connect()?;
    client.write_all(&[b'y'; 5000])?;
    let mut answer = String::new();
    client.read_to_string(&mut answer)?;
    assert_eq!(answer, "error: line longer than 4096 bytes\n");
    Ok(())
}
