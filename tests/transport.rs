//! Transports on real loopback sockets: every way a connection ends (one `lost` each, with its
//! reason), flow control, half-close both ways, resets mid-write, and reaching another
//! connection by its id.
//!
//! The selector runs on the test's thread; clients are non-blocking sockets drained between
//! turns of the loop, so nothing can hang and no thread can fail unseen.

#[path = "util/net.rs"]
mod net_util;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use net_util::{
    client, drain, only_id, only_log, pattern, reset, run_for, run_until, run_until_panic, server,
    Heard, Log, Recorder,
};
use selreactor::net::{start, ByteStream, Protocol, ServerOptions, Transport};
use selreactor::Selector;

const MIB: usize = 1 << 20;

/// How one ending is provoked, and what `lost` must say.
struct Ending {
    name: &'static str,
    options: ServerOptions,
    /// The server side's behaviour.
    script: fn(&mut Transport<'_, TcpStream>, &Heard) -> io::Result<()>,
    /// What the client does once the connection is made; may end the selector itself.
    client: fn(&mut selreactor::Selector, TcpStream) -> io::Result<Option<TcpStream>>,
    /// Whether to drop the selector instead of waiting for `lost`.
    drop_selector: bool,
    reason: &'static [Option<io::ErrorKind>],
}

fn nothing(_: &mut Transport<'_, TcpStream>, _: &Heard) -> io::Result<()> {
    Ok(())
}

fn keep(_: &mut selreactor::Selector, client: TcpStream) -> io::Result<Option<TcpStream>> {
    Ok(Some(client))
}

/// Reads the client until end of stream, running the loop meanwhile; returns what came.
fn read_to_end(sel: &mut selreactor::Selector, client: &TcpStream) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    run_until(sel, "end of stream at the client", |_| {
        drain(client, &mut got)
    })?;
    Ok(got)
}

fn big_write_then(tx: &mut Transport<'_, TcpStream>, then: fn(&mut Transport<'_, TcpStream>)) {
    tx.write(&pattern(0, 4 * MIB)).unwrap();
    assert!(tx.write_buffer_size() > 0, "4 MiB fit in the socket");
    then(tx);
}

fn endings() -> Vec<Ending> {
    use io::ErrorKind::*;
    vec![
        Ending {
            name: "peer FIN",
            options: ServerOptions::default(),
            script: nothing,
            client: |_, c| {
                c.shutdown(Shutdown::Write)?;
                Ok(Some(c))
            },
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "peer RST",
            options: ServerOptions::default(),
            script: nothing,
            client: |_, c| reset(c).map(|()| None),
            drop_selector: false,
            reason: &[Some(ConnectionReset)],
        },
        Ending {
            name: "close with an empty buffer",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if *heard == Heard::Made {
                    tx.close();
                }
                Ok(())
            },
            client: keep,
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "close with 4 MiB buffered",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if *heard == Heard::Made {
                    big_write_then(tx, |tx| tx.close());
                }
                Ok(())
            },
            client: |sel, c| {
                let got = read_to_end(sel, &c)?;
                assert!(got == pattern(0, 4 * MIB), "the flush lost bytes");
                Ok(Some(c))
            },
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "abort with 4 MiB buffered",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if *heard == Heard::Made {
                    big_write_then(tx, |tx| tx.abort());
                }
                Ok(())
            },
            client: keep,
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "close, then abort",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if *heard == Heard::Made {
                    big_write_then(tx, |tx| {
                        tx.close();
                        tx.abort();
                        tx.close();
                    });
                }
                Ok(())
            },
            client: keep,
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "abort inside data",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if let Heard::Data(_) = heard {
                    tx.abort();
                    assert!(tx.write(b"late").is_err());
                }
                Ok(())
            },
            client: |_, mut c| {
                c.write_all(b"x")?;
                Ok(Some(c))
            },
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "an error returned by data",
            options: ServerOptions::default(),
            script: |_, heard| match heard {
                Heard::Data(_) => Err(io::Error::new(InvalidData, "bad input")),
                _ => Ok(()),
            },
            client: |_, mut c| {
                c.write_all(b"x")?;
                Ok(Some(c))
            },
            drop_selector: false,
            reason: &[Some(InvalidData)],
        },
        Ending {
            name: "the peer resets while a flush is pending",
            options: ServerOptions::default(),
            script: |tx, heard| {
                if *heard == Heard::Made {
                    tx.write(&pattern(0, 4 * MIB))?;
                }
                Ok(())
            },
            client: |_, c| reset(c).map(|()| None),
            drop_selector: false,
            reason: &[Some(ConnectionReset), Some(BrokenPipe)],
        },
        Ending {
            name: "close inside resume_writing",
            options: ServerOptions::default(),
            script: |tx, heard| {
                match heard {
                    Heard::Made => tx.write(&pattern(0, 8 * MIB))?,
                    Heard::Resume(_) => tx.close(),
                    _ => {}
                }
                Ok(())
            },
            client: |sel, c| {
                let got = read_to_end(sel, &c)?;
                assert_eq!(got.len(), 8 * MIB);
                Ok(Some(c))
            },
            drop_selector: false,
            reason: &[None],
        },
        Ending {
            name: "idle timeout",
            options: ServerOptions::default().idle_timeout(Duration::from_millis(50)),
            script: nothing,
            client: keep,
            drop_selector: false,
            reason: &[Some(TimedOut)],
        },
        Ending {
            name: "the selector dropped",
            options: ServerOptions::default(),
            script: nothing,
            client: keep,
            drop_selector: true,
            reason: &[Some(ConnectionAborted)],
        },
    ]
}

#[test]
fn every_ending_calls_lost_exactly_once_with_its_reason() -> io::Result<()> {
    for ending in endings() {
        let drops = Rc::new(Cell::new(0));
        let script = ending.script;
        let d = Rc::clone(&drops);
        let mirror = Rc::new(RefCell::new(Vec::new()));
        let m = Rc::clone(&mirror);
        let (mut sel, addr, _server) = server(ending.options, move || Recorder {
            script: Box::new(script),
            keep_open: false,
            drops: Rc::clone(&d),
            mirror: Rc::clone(&m),
        })?;
        let stream = client(addr)?;
        run_until(&mut sel, "made", |sel| Ok(!only_log(sel).is_empty()))?;
        let _client = (ending.client)(&mut sel, stream)?;
        if ending.drop_selector {
            drop(sel);
        } else {
            run_until(&mut sel, ending.name, |sel| {
                Ok(sel.state::<Log>().unwrap().lost() > 0)
            })?;
            // Anything still owed would come now.
            run_for(&mut sel, Duration::from_millis(50))?;
            assert_eq!(sel.len(), 1, "{}: only the listener is left", ending.name);
        }
        let log = mirror.take();
        assert_eq!(log.first(), Some(&Heard::Made), "{}: {log:?}", ending.name);
        let lost: Vec<_> = log
            .iter()
            .filter_map(|h| match h {
                Heard::Lost(reason) => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(lost.len(), 1, "{}: {log:?}", ending.name);
        assert!(
            matches!(log.last(), Some(Heard::Lost(_))),
            "{}: lost is not last: {log:?}",
            ending.name
        );
        assert!(
            ending.reason.contains(&lost[0]),
            "{}: lost({:?}), expected one of {:?}",
            ending.name,
            lost[0],
            ending.reason
        );
        assert_eq!(drops.get(), 1, "{}: protocol drops", ending.name);
    }
    Ok(())
}

#[test]
fn server_close_with_connections_ends_each_once_and_the_port_is_free_at_once() -> io::Result<()> {
    let (mut sel, addr, server) =
        server(ServerOptions::default(), || Recorder::new(|_, _| Ok(())))?;
    let clients = (0..3)
        .map(|_| client(addr))
        .collect::<io::Result<Vec<_>>>()?;
    run_until(&mut sel, "three made", |sel| {
        Ok(sel.state::<Log>().unwrap().0.len() == 3)
    })?;
    server.close_with_connections(&mut sel);
    run_until(&mut sel, "three lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 3)
    })?;
    run_for(&mut sel, Duration::from_millis(30))?;
    let log = sel.state::<Log>().unwrap();
    assert_eq!(log.lost(), 3);
    assert!(log.0.iter().all(|(_, h)| matches!(
        h,
        Heard::Made | Heard::Lost(Some(io::ErrorKind::ConnectionAborted))
    )));
    assert!(sel.is_empty());
    // The listener is closed: the address can be bound again right away.
    std::net::TcpListener::bind(addr)?;
    for c in &clients {
        let mut got = Vec::new();
        run_until(&mut sel, "the client sees the end", |_| {
            Ok(match drain(c, &mut got) {
                Ok(eof) => eof,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            })
        })?;
    }
    Ok(())
}

#[test]
fn server_close_leaves_live_connections_serving() -> io::Result<()> {
    let (mut sel, addr, server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| match heard {
            Heard::Data(data) => tx.write(data),
            _ => Ok(()),
        })
    })?;
    let mut live = client(addr)?;
    run_until(&mut sel, "made", |sel| Ok(!only_log(sel).is_empty()))?;
    server.close(&mut sel)?;
    assert_eq!(
        server.close(&mut sel).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "a closed server still accepts"
    );
    live.write_all(b"still here")?;
    let mut got = Vec::new();
    run_until(&mut sel, "the echo", |_| {
        drain(&live, &mut got)?;
        Ok(got.len() == 10)
    })?;
    assert_eq!(got, b"still here");
    Ok(())
}

/// A producer that writes 16 KiB pieces while the transport lets it, up to `total`.
fn produce(tx: &mut Transport<'_, TcpStream>, sent: &Cell<usize>, total: usize) -> io::Result<()> {
    while !tx.is_writing_paused() && sent.get() < total {
        let piece = (total - sent.get()).min(16 * 1024);
        tx.write(&pattern(sent.get(), piece))?;
        sent.set(sent.get() + piece);
    }
    Ok(())
}

#[test]
fn a_peer_that_does_not_read_pauses_the_producer_and_draining_resumes_it() -> io::Result<()> {
    const TOTAL: usize = 16 * MIB;
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        let sent = Cell::new(0);
        Recorder::new(move |tx, heard| match heard {
            Heard::Made => {
                tx.set_write_limits(64 * 1024, 16 * 1024);
                produce(tx, &sent, TOTAL)
            }
            Heard::Resume(_) => produce(tx, &sent, TOTAL),
            _ => Ok(()),
        })
    })?;
    let peer = client(addr)?;
    run_until(&mut sel, "a pause", |sel| {
        Ok(only_log(sel).iter().any(|h| matches!(h, Heard::Pause(_))))
    })?;
    // The peer reads nothing for a while: no resume, and the buffer stays bounded.
    run_for(&mut sel, Duration::from_millis(200))?;
    let id = only_id(&mut sel);
    let buffered = id.transport(&mut sel)?.write_buffer_size();
    assert!(
        buffered <= 64 * 1024 + 16 * 1024,
        "{buffered} bytes buffered"
    );
    let log = only_log(&mut sel);
    assert_eq!(log.len(), 2, "{log:?}");

    let mut got = Vec::new();
    run_until(&mut sel, "every byte", |_| {
        drain(&peer, &mut got)?;
        Ok(got.len() >= TOTAL)
    })?;
    assert!(got == pattern(0, TOTAL), "the stream is not intact");
    let log = only_log(&mut sel);
    let marks: Vec<_> = log
        .iter()
        .filter(|h| matches!(h, Heard::Pause(_) | Heard::Resume(_)))
        .collect();
    assert!(marks.len() >= 4, "{marks:?}");
    for (i, mark) in marks.iter().enumerate() {
        match (i % 2, mark) {
            (0, Heard::Pause(size)) => assert!(*size > 64 * 1024, "pause at {size}"),
            (1, Heard::Resume(size)) => assert!(*size <= 16 * 1024, "resume at {size}"),
            _ => panic!("pause and resume do not alternate: {marks:?}"),
        }
    }
    assert_eq!(id.transport(&mut sel)?.write_buffer_size(), 0);
    Ok(())
}

#[test]
fn new_write_limits_are_checked_at_once() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                tx.write(&pattern(0, 4 * MIB))?;
            }
            Ok(())
        })
    })?;
    let peer = client(addr)?;
    run_until(&mut sel, "a pause", |sel| {
        Ok(only_log(sel).iter().any(|h| matches!(h, Heard::Pause(_))))
    })?;
    let id = only_id(&mut sel);
    // Raising the high mark above the buffer is not a resume (the low mark decides that)...
    let mut tx = id.transport(&mut sel)?;
    tx.set_write_limits(8 * MIB, 0);
    drop(tx);
    run_for(&mut sel, Duration::from_millis(30))?;
    assert!(!only_log(&mut sel).contains(&Heard::Resume(4 * MIB)));
    // ...raising the low mark above it is.
    let mut tx = id.transport(&mut sel)?;
    let size = tx.write_buffer_size();
    tx.set_write_limits(8 * MIB, 8 * MIB);
    drop(tx);
    run_until(&mut sel, "a resume", |sel| {
        Ok(only_log(sel).iter().any(|h| matches!(h, Heard::Resume(_))))
    })?;
    assert!(only_log(&mut sel).contains(&Heard::Resume(size)));
    drop(peer);
    Ok(())
}

#[test]
fn write_goes_straight_through_when_the_socket_takes_it() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                tx.write(b"hello")?;
                assert_eq!(tx.write_buffer_size(), 0, "a small write was buffered");
            }
            Ok(())
        })
    })?;
    let peer = client(addr)?;
    let mut got = Vec::new();
    run_until(&mut sel, "hello", |_| {
        drain(&peer, &mut got)?;
        Ok(got.len() == 5)
    })?;
    assert_eq!(got, b"hello");
    // Nothing pending: the connection waits for reading only.
    let id = only_id(&mut sel);
    assert_eq!(id.transport(&mut sel)?.write_buffer_size(), 0);
    Ok(())
}

#[test]
fn write_eof_sends_end_of_stream_after_the_buffer_and_reading_goes_on() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        let mut rec = Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                tx.write(&pattern(0, 4 * MIB))?;
                tx.write_eof();
                tx.write_eof();
                assert_eq!(
                    tx.write(b"late").unwrap_err().kind(),
                    io::ErrorKind::NotConnected
                );
            }
            Ok(())
        });
        rec.keep_open = true;
        rec
    })?;
    let mut peer = client(addr)?;
    let got = read_to_end(&mut sel, &peer)?;
    assert!(got == pattern(0, 4 * MIB), "end of stream came early");
    // The other direction still works, and ending it closes the connection.
    peer.write_all(b"after")?;
    peer.shutdown(Shutdown::Write)?;
    run_until(&mut sel, "lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let log: Vec<_> = only_log(&mut sel)
        .into_iter()
        .filter(|h| !matches!(h, Heard::Pause(_) | Heard::Resume(_)))
        .collect();
    assert_eq!(
        log,
        [
            Heard::Made,
            Heard::Data(b"after".to_vec()),
            Heard::Eof,
            Heard::Lost(None)
        ]
    );
    Ok(())
}

#[test]
fn eof_kept_open_lets_the_protocol_reply_then_close() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        let mut rec = Recorder::new(|tx, heard| {
            if *heard == Heard::Eof {
                tx.write(&pattern(0, MIB))?;
                tx.close();
            }
            Ok(())
        });
        rec.keep_open = true;
        rec
    })?;
    let mut peer = client(addr)?;
    peer.write_all(b"hello")?;
    peer.shutdown(Shutdown::Write)?;
    let got = read_to_end(&mut sel, &peer)?;
    assert!(got == pattern(0, MIB), "the reply is not intact");
    run_until(&mut sel, "lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let log = only_log(&mut sel);
    assert_eq!(log.iter().filter(|h| **h == Heard::Eof).count(), 1);
    assert_eq!(log.last(), Some(&Heard::Lost(None)));
    Ok(())
}

#[test]
fn eof_not_kept_open_flushes_then_closes() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| match heard {
            Heard::Data(data) => tx.write(&data.repeat(1 << 16)),
            _ => Ok(()),
        })
    })?;
    let mut peer = client(addr)?;
    peer.write_all(b"0123")?;
    peer.shutdown(Shutdown::Write)?;
    let got = read_to_end(&mut sel, &peer)?;
    assert_eq!(got.len(), 4 << 16);
    run_until(&mut sel, "lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    assert_eq!(only_log(&mut sel).last(), Some(&Heard::Lost(None)));
    Ok(())
}

#[test]
fn the_last_bytes_before_a_peer_close_arrive_before_eof() -> io::Result<()> {
    let (mut sel, addr, _server) =
        server(ServerOptions::default(), || Recorder::new(|_, _| Ok(())))?;
    let mut peer = TcpStream::connect(addr)?;
    peer.write_all(&pattern(0, 256 * 1024))?;
    drop(peer);
    run_until(&mut sel, "lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let log = only_log(&mut sel);
    let data: Vec<u8> = log
        .iter()
        .filter_map(|h| match h {
            Heard::Data(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(data == pattern(0, 256 * 1024));
    let tail: Vec<_> = log.iter().rev().take(2).collect();
    assert_eq!(tail, [&Heard::Lost(None), &Heard::Eof]);
    Ok(())
}

#[test]
fn pause_reading_stops_data_until_resumed_and_nothing_is_lost() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                tx.pause_reading();
                tx.pause_reading();
                assert!(tx.is_reading_paused());
            }
            Ok(())
        })
    })?;
    let mut peer = client(addr)?;
    run_until(&mut sel, "made", |sel| Ok(!only_log(sel).is_empty()))?;
    peer.write_all(&pattern(0, 100_000))?;
    run_for(&mut sel, Duration::from_millis(200))?;
    assert_eq!(only_log(&mut sel), [Heard::Made], "data while paused");
    let id = only_id(&mut sel);
    id.transport(&mut sel)?.resume_reading();
    run_until(&mut sel, "all the data", |sel| {
        let total: usize = only_log(sel)
            .iter()
            .map(|h| match h {
                Heard::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        Ok(total == 100_000)
    })?;
    Ok(())
}

#[test]
fn another_connection_is_reached_by_id_and_a_stale_id_touches_nothing() -> io::Result<()> {
    // Each connection forwards what it receives to the connection named in the loop's state.
    struct Target(Option<selreactor::net::ConnId<TcpStream>>);
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if let Heard::Data(data) = heard {
                let target = tx.registry().state::<Target>().unwrap().0;
                if let Some(target) = target {
                    let result = target
                        .transport(tx.registry())
                        .and_then(|mut t| t.write(data));
                    if let Err(e) = result {
                        tx.write(format!("{:?}", e.kind()).as_bytes())?;
                    }
                }
            }
            Ok(())
        })
    })?;
    sel.insert_state(Target(None));
    let mut a = client(addr)?;
    run_until(&mut sel, "a made", |sel| Ok(!only_log(sel).is_empty()))?;
    let a_id = only_id(&mut sel);
    let b = client(addr)?;
    run_until(&mut sel, "b made", |sel| {
        Ok(sel.state::<Log>().unwrap().0.len() == 2)
    })?;
    let b_id = sel.state::<Log>().unwrap().0[1].0;
    assert_ne!(a_id, b_id);
    sel.state::<Target>().unwrap().0 = Some(b_id);
    a.write_all(b"to b")?;
    let mut got = Vec::new();
    run_until(&mut sel, "b gets it", |_| {
        drain(&b, &mut got)?;
        Ok(got == b"to b")
    })?;
    // Its own id, from inside its own callback, is a clear error.
    sel.state::<Target>().unwrap().0 = Some(a_id);
    a.write_all(b"to self")?;
    let mut got = Vec::new();
    run_until(&mut sel, "a's error", |_| {
        drain(&a, &mut got)?;
        Ok(got == b"ResourceBusy")
    })?;

    // B goes; a new connection may take its slot, and the old id must not reach it.
    drop(b);
    run_until(&mut sel, "b lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let c = client(addr)?;
    run_until(&mut sel, "c made", |sel| {
        Ok(sel
            .state::<Log>()
            .unwrap()
            .0
            .iter()
            .filter(|(_, h)| *h == Heard::Made)
            .count()
            == 3)
    })?;
    assert_eq!(
        b_id.transport(&mut sel).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(!b_id.is_open(&sel));
    sel.state::<Target>().unwrap().0 = Some(b_id);
    a.write_all(b"to stale b")?;
    let mut got = Vec::new();
    run_until(&mut sel, "a's error", |_| {
        drain(&a, &mut got)?;
        Ok(got == b"NotFound")
    })?;
    let mut at_c = Vec::new();
    drain(&c, &mut at_c)?;
    assert!(at_c.is_empty(), "a stale id reached another connection");
    Ok(())
}

#[test]
fn a_panicking_protocol_hears_lost_once_and_the_others_are_still_served() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| match heard {
            Heard::Data(data) if data == b"boom" => panic!("boom"),
            Heard::Data(data) => tx.write(data),
            _ => Ok(()),
        })
    })?;
    let mut a = client(addr)?;
    let mut b = client(addr)?;
    run_until(&mut sel, "both made", |sel| {
        Ok(sel.state::<Log>().unwrap().0.len() == 2)
    })?;
    let a_id = only_log_id(&mut sel, 0);
    a.write_all(b"boom")?;
    let panic = run_until_panic(&mut sel)?;
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
    assert_eq!(
        sel.state::<Log>().unwrap().of(a_id),
        [
            Heard::Made,
            Heard::Data(b"boom".to_vec()),
            Heard::Lost(Some(io::ErrorKind::Other)),
        ]
    );
    assert!(!a_id.is_open(&sel));
    // The panicking connection is closed; the other one is still served.
    assert_eq!(read_to_end(&mut sel, &a)?, b"");
    b.write_all(b"still here")?;
    let mut got = Vec::new();
    run_until(&mut sel, "b's echo", |_| {
        drain(&b, &mut got)?;
        Ok(got == b"still here")
    })?;
    assert_eq!(sel.state::<Log>().unwrap().lost(), 1);
    Ok(())
}

/// The id of the connection whose event is the log's `index`th.
fn only_log_id(sel: &mut Selector, index: usize) -> selreactor::net::ConnId<TcpStream> {
    sel.state::<Log>().unwrap().0[index].0
}

#[test]
fn a_reset_in_the_middle_of_a_big_write_ends_that_connection_only() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| match heard {
            Heard::Made => tx.write(&pattern(0, 8 * MIB)),
            Heard::Data(data) => tx.write(data),
            _ => Ok(()),
        })
    })?;
    let victim = client(addr)?;
    let mut steady = client(addr)?;
    run_until(&mut sel, "both made", |sel| {
        let log = sel.state::<Log>().unwrap();
        Ok(log.0.iter().filter(|(_, h)| *h == Heard::Made).count() == 2)
    })?;
    let mut got = Vec::new();
    run_until(&mut sel, "some of the big write", |_| {
        drain(&victim, &mut got)?;
        Ok(got.len() > MIB)
    })?;
    reset(victim)?;
    run_until(&mut sel, "the victim lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let log = sel.state::<Log>().unwrap();
    let lost = log.0.iter().find_map(|(_, h)| match h {
        Heard::Lost(reason) => Some(*reason),
        _ => None,
    });
    assert!(
        matches!(
            lost,
            Some(Some(
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ))
        ),
        "{lost:?}"
    );
    // The other connection still has its own 8 MiB coming, then echoes.
    let mut got = Vec::new();
    run_until(&mut sel, "the steady client's data", |_| {
        drain(&steady, &mut got)?;
        Ok(got.len() == 8 * MIB)
    })?;
    steady.write_all(b"ping")?;
    got.clear();
    run_until(&mut sel, "the echo", |_| {
        drain(&steady, &mut got)?;
        Ok(got == b"ping")
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streams that go one way only (as pipe ends do), driven through `start`.

/// The read end of a stream, as a child's stdout would be.
struct ReadOnly(UnixStream);
/// The write end of a stream, as a child's stdin would be.
struct WriteOnly(UnixStream);

impl AsFd for ReadOnly {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl AsFd for WriteOnly {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ByteStream for ReadOnly {
    const CAN_WRITE: bool = false;
    fn set_nonblocking(&self) -> io::Result<()> {
        self.0.set_nonblocking(true)
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &self.0, buf)
    }
}

impl ByteStream for WriteOnly {
    const CAN_READ: bool = false;
    fn set_nonblocking(&self) -> io::Result<()> {
        self.0.set_nonblocking(true)
    }
    fn write(&self, data: &[u8]) -> io::Result<usize> {
        Write::write(&mut &self.0, data)
    }
}

/// Records what it hears as text; `on_made` runs in `made`.
struct Notes<T: ByteStream> {
    heard: Rc<RefCell<Vec<String>>>,
    on_made: fn(&mut Transport<'_, T>) -> io::Result<()>,
}

impl<T: ByteStream> Protocol<T> for Notes<T> {
    fn made(&mut self, tx: &mut Transport<'_, T>) -> io::Result<()> {
        self.heard.borrow_mut().push("made".into());
        (self.on_made)(tx)
    }
    fn data(&mut self, _: &mut Transport<'_, T>, data: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(data).into_owned();
        self.heard.borrow_mut().push(text);
        Ok(())
    }
    fn eof(&mut self, _: &mut Transport<'_, T>) -> bool {
        self.heard.borrow_mut().push("eof".into());
        false
    }
    fn lost(&mut self, _: &mut Transport<'_, T>, reason: Option<io::Error>) {
        let reason = reason.map(|e| e.kind());
        self.heard.borrow_mut().push(format!("lost {reason:?}"));
    }
}

fn notes<T: ByteStream>(
    on_made: fn(&mut Transport<'_, T>) -> io::Result<()>,
) -> (Notes<T>, Rc<RefCell<Vec<String>>>) {
    let heard = Rc::new(RefCell::new(Vec::new()));
    (
        Notes {
            heard: Rc::clone(&heard),
            on_made,
        },
        heard,
    )
}

fn run_until_lost(sel: &mut Selector, heard: &Rc<RefCell<Vec<String>>>) -> io::Result<()> {
    run_until(sel, "lost", |_| {
        Ok(heard.borrow().last().is_some_and(|h| h.starts_with("lost")))
    })
}

#[test]
fn a_read_only_stream_reads_to_the_end_and_refuses_writes() -> io::Result<()> {
    let (ours, mut theirs) = UnixStream::pair()?;
    let mut sel = Selector::new()?;
    let (protocol, heard) = notes::<ReadOnly>(|tx| {
        assert_eq!(
            tx.write(b"no").unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        Ok(())
    });
    start(&mut sel, ReadOnly(ours), protocol).map_err(io::Error::from)?;
    theirs.write_all(b"abc")?;
    drop(theirs);
    run_until_lost(&mut sel, &heard)?;
    assert_eq!(*heard.borrow(), ["made", "abc", "eof", "lost None"]);
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn an_idle_write_only_stream_hears_its_reader_leave() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut sel = Selector::new()?;
    let (protocol, heard) = notes::<WriteOnly>(|_| Ok(()));
    start(&mut sel, WriteOnly(ours), protocol).map_err(io::Error::from)?;
    run_until(&mut sel, "made", |_| Ok(!heard.borrow().is_empty()))?;
    drop(theirs);
    run_until_lost(&mut sel, &heard)?;
    assert_eq!(*heard.borrow(), ["made", "lost Some(BrokenPipe)"]);
    Ok(())
}

#[test]
fn a_write_only_stream_whose_reader_leaves_mid_flush_ends_with_the_error() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut sel = Selector::new()?;
    let (protocol, heard) = notes::<WriteOnly>(|tx| {
        tx.write(&pattern(0, 4 * MIB))?;
        assert!(tx.write_buffer_size() > 0);
        Ok(())
    });
    start(&mut sel, WriteOnly(ours), protocol).map_err(io::Error::from)?;
    run_until(&mut sel, "made", |_| Ok(!heard.borrow().is_empty()))?;
    let mut some = [0; 1024];
    (&theirs).read_exact(&mut some)?;
    drop(theirs);
    run_until_lost(&mut sel, &heard)?;
    let last = heard.borrow().last().cloned().unwrap();
    assert!(
        last == "lost Some(BrokenPipe)" || last == "lost Some(ConnectionReset)",
        "{last}"
    );
    Ok(())
}

#[test]
fn write_eof_on_a_write_only_stream_flushes_then_closes() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    let mut sel = Selector::new()?;
    let (protocol, heard) = notes::<WriteOnly>(|tx| {
        tx.write(&pattern(0, 4 * MIB))?;
        tx.write_eof();
        Ok(())
    });
    start(&mut sel, WriteOnly(ours), protocol).map_err(io::Error::from)?;
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 16];
    run_until(&mut sel, "end of stream", |_| loop {
        match Read::read(&mut &theirs, &mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    })?;
    assert!(got == pattern(0, 4 * MIB));
    run_until_lost(&mut sel, &heard)?;
    assert_eq!(*heard.borrow(), ["made", "lost None"]);
    Ok(())
}

#[test]
fn an_abandoned_connect_reports_to_its_caller_not_to_the_protocol() -> io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut sel = Selector::new()?;
    let (protocol, heard) = notes::<TcpStream>(|_| Ok(()));
    let failure = Rc::new(RefCell::new(None));
    let f = Rc::clone(&failure);
    let id = selreactor::net::connect_tcp(
        &mut sel,
        listener.local_addr()?,
        None,
        protocol,
        move |_, e| {
            *f.borrow_mut() = Some(e.kind());
        },
    )?;
    id.transport(&mut sel)?.abort();
    run_until(&mut sel, "the failure", |_| Ok(failure.borrow().is_some()))?;
    assert_eq!(*failure.borrow(), Some(io::ErrorKind::ConnectionAborted));
    assert!(heard.borrow().is_empty(), "{:?}", heard.borrow());
    assert!(sel.is_empty());
    Ok(())
}
