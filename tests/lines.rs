//! Line framing: lines split at every offset, lengths at the limit and past it, CRLF, a huge
//! line with no end, and a partial last line; also through a real connection.

#[path = "util/net.rs"]
mod net_util;

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};

use net_util::{client, drain, run_until, server};
use selreactor::net::{LineTooLong, Lines, Protocol, ServerOptions, Transport};

/// What feeding `chunks` produced: lines as text, errors as `<too long>`.
fn split(max: usize, chunks: &[&[u8]]) -> (Vec<String>, Lines) {
    let mut lines = Lines::new(max);
    let mut got = Vec::new();
    for chunk in chunks {
        lines
            .feed(chunk, |line| {
                got.push(match line {
                    Ok(line) => String::from_utf8_lossy(line).into_owned(),
                    Err(LineTooLong { max: m }) => {
                        assert_eq!(m, max);
                        "<too long>".into()
                    }
                });
                assert!(got.len() < 1000);
                Ok(())
            })
            .unwrap();
    }
    (got, lines)
}

#[test]
fn lines_at_and_around_the_limit_split_at_every_offset() {
    const MAX: usize = 8;
    for end in ["\n", "\r\n"] {
        let short = "a".repeat(MAX - 1);
        let exact = "b".repeat(MAX);
        let over = "c".repeat(MAX + 1);
        let input = format!("{short}{end}{exact}{end}{over}{end}next{end}");
        let expected = [short.as_str(), exact.as_str(), "<too long>", "next"];
        let bytes = input.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let (got, lines) = split(MAX, &[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, expected, "split at {i} and {j} with {end:?}");
                assert_eq!(lines.buffered(), 0);
            }
        }
    }
}

#[test]
fn a_huge_line_without_end_is_one_error_and_memory_stays_bounded() {
    let mut lines = Lines::new(1024);
    let mut errors = 0;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..160 {
        // 10 MiB in all
        lines
            .feed(&chunk, |line| {
                assert!(line.is_err());
                errors += 1;
                Ok(())
            })
            .unwrap();
        assert!(lines.buffered() <= 1025);
    }
    let mut after = Vec::new();
    lines
        .feed(b"rest of it\nfine\n", |line| {
            after.push(line.map(<[u8]>::to_vec));
            Ok(())
        })
        .unwrap();
    assert_eq!(errors, 1);
    assert_eq!(after, [Ok(b"fine".to_vec())]);
}

#[test]
fn a_partial_last_line_is_there_at_the_end() {
    let (got, mut lines) = split(16, &[b"one\ntwo\nthr", b"ee"]);
    assert_eq!(got, ["one", "two"]);
    assert_eq!(lines.finish().as_deref(), Some(&b"three"[..]));
    assert_eq!(lines.finish(), None);
}

#[test]
fn an_error_from_the_callback_stops_feeding() {
    let mut lines = Lines::new(16);
    let mut seen = 0;
    let result = lines.feed(b"a\nb\nc\n", |_| {
        seen += 1;
        Err(io::Error::other("stop"))
    });
    assert_eq!(result.unwrap_err().to_string(), "stop");
    assert_eq!(seen, 1);
    let error: io::Error = LineTooLong { max: 3 }.into();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(error.to_string(), "line longer than 3 bytes");
}

/// Answers each line with its length; an over-long line ends the connection.
struct Lengths(Lines);

impl Protocol for Lengths {
    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.0.feed(data, |line| {
            tx.write(format!("{}\n", line?.len()).as_bytes())
        })
    }
}

#[test]
fn lines_across_reads_on_a_connection_and_an_over_long_one_ends_it() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || Lengths(Lines::new(100)))?;
    let mut peer = client(addr)?;
    let mut got = Vec::new();
    for piece in [&b"hel"[..], b"lo\nwor", b"ld\r", b"\n", b"\n"] {
        peer.write_all(piece)?;
        run_until(&mut sel, "the piece read", |_| {
            drain(&peer, &mut got)?;
            Ok(true)
        })?;
        sel.run_once(Some(std::time::Duration::from_millis(20)))?;
    }
    run_until(&mut sel, "three answers", |_| {
        drain(&peer, &mut got)?;
        Ok(got == b"5\n5\n0\n")
    })?;
    // No end of stream from the client: only the over-long line can end it.
    peer.write_all(&[b'x'; 200])?;
    run_until(&mut sel, "the connection ended", |_| drain(&peer, &mut got))?;
    peer.shutdown(Shutdown::Both)?;
    assert_eq!(got, b"5\n5\n0\n");
    Ok(())
}
