//! Transport edges the other transport tests leave out: a pause of reading inside `made`, or
//! from another connection's callback in the same batch; writes after each way of closing,
//! and inside `lost`; the high-water mark to the byte; a client that resets before it is
//! accepted; a connection cap given back by every kind of ending; a producer that never stops
//! meeting a reset; `close` on a pipe with a full buffer.
//!
//! The selector runs on the test's thread; clients are non-blocking sockets drained between
//! turns of the loop, so nothing can hang and no thread can fail unseen.

#[path = "util/net.rs"]
mod net_util;
mod util;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

use net_util::{
    client, drain, only_id, only_log, pattern, reset, run_for, run_until, server, Heard, Log,
    Recorder,
};
use selreactor::net::{pipe, start, ConnId, PipeWriter, Protocol, ServerOptions, Transport};
use selreactor::{Registry, Selector};

const MIB: usize = 1 << 20;
/// Long enough to see a `data` that should not come on a loaded machine; never an upper bound.
const QUIET: Duration = Duration::from_millis(300);

fn data_of(log: &[Heard]) -> Vec<u8> {
    log.iter()
        .filter_map(|h| match h {
            Heard::Data(d) => Some(d.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn lost_count(log: &[Heard]) -> usize {
    log.iter().filter(|h| matches!(h, Heard::Lost(_))).count()
}

#[test]
fn a_pause_inside_made_holds_until_resumed() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                tx.pause_reading();
                tx.pause_reading(); // idempotent
            }
            Ok(())
        })
    })?;
    let mut peer = client(addr)?;
    peer.write_all(b"hello")?;
    run_until(&mut sel, "made", |sel| Ok(!only_log(sel).is_empty()))?;
    run_for(&mut sel, QUIET)?;
    assert_eq!(only_log(&mut sel), [Heard::Made], "data while paused");

    let id = only_id(&mut sel);
    let mut tx = id.transport(&mut sel)?;
    assert!(tx.is_reading_paused());
    tx.resume_reading();
    tx.resume_reading();
    run_until(&mut sel, "the data", |sel| {
        Ok(data_of(&only_log(sel)) == b"hello")
    })?;
    Ok(())
}

/// The connection whose reading the first `data` of another connection pauses.
struct ToPause(Option<ConnId<TcpStream>>);

#[test]
fn a_pause_from_another_connections_callback_holds_within_the_same_batch() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if let Heard::Data(_) = heard {
                if let Some(other) = tx.registry().state::<ToPause>().unwrap().0.take() {
                    other.transport(tx.registry())?.pause_reading();
                    let me = tx.id();
                    // A marker in the log: nothing of the other's may follow it.
                    let log = tx.registry().state::<Log>().unwrap();
                    log.0.push((me, Heard::Pause(usize::MAX)));
                }
            }
            Ok(())
        })
    })?;
    sel.insert_state(ToPause(None));
    let mut a = client(addr)?;
    run_until(&mut sel, "a made", |sel| Ok(!only_log(sel).is_empty()))?;
    let a_id = only_id(&mut sel);
    let mut b = client(addr)?;
    run_until(&mut sel, "b made", |sel| {
        Ok(sel.state::<Log>().unwrap().0.len() == 2)
    })?;
    let b_id = sel.state::<Log>().unwrap().0[1].0;
    sel.state::<ToPause>().unwrap().0 = Some(b_id);
    // A becomes readable first, so its callback runs first in the batch both are in.
    a.write_all(b"from a")?;
    b.write_all(b"from b")?;
    run_for(&mut sel, QUIET)?;
    let log = sel.state::<Log>().unwrap();
    let marker = log
        .0
        .iter()
        .position(|&(id, ref h)| id == a_id && *h == Heard::Pause(usize::MAX))
        .expect("a's data paused b");
    let b_data_after: Vec<_> = log.0[marker..]
        .iter()
        .filter(|&&(id, ref h)| id == b_id && matches!(h, Heard::Data(_)))
        .collect();
    assert!(
        b_data_after.is_empty(),
        "b read while paused: {b_data_after:?}"
    );
    // And none before: the loop dispatches in readiness order, so b's turn came after a's.
    assert!(data_of(&log.of(b_id)).is_empty(), "b read before a");

    b_id.transport(&mut sel)?.resume_reading();
    run_until(&mut sel, "b's data", |sel| {
        Ok(data_of(&sel.state::<Log>().unwrap().of(b_id)) == b"from b")
    })?;
    Ok(())
}

/// What a write inside `lost` returned.
type LateWrite = Rc<RefCell<Option<io::ErrorKind>>>;

#[test]
fn writes_after_close_or_abort_and_inside_lost_are_refused_and_never_sent() -> io::Result<()> {
    for abort in [false, true] {
        let late: LateWrite = Rc::default();
        let in_lost = Rc::clone(&late);
        let (mut sel, addr, _server) = server(ServerOptions::default(), move || {
            let in_lost = Rc::clone(&in_lost);
            Recorder::new(move |tx, heard| {
                match heard {
                    Heard::Made => {
                        tx.write(&pattern(0, 4 * MIB))?;
                        let buffered = tx.write_buffer_size();
                        assert!(buffered > 0, "4 MiB fit in the socket");
                        if abort {
                            tx.abort();
                            tx.abort();
                            tx.close();
                        } else {
                            tx.close();
                            tx.close();
                        }
                        let error = tx.write(b"late").unwrap_err();
                        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
                        assert!(tx.is_closing());
                        if !abort {
                            assert_eq!(tx.write_buffer_size(), buffered, "the buffer grew");
                        }
                    }
                    Heard::Lost(_) => {
                        *in_lost.borrow_mut() = tx.write(b"later").err().map(|e| e.kind());
                    }
                    _ => {}
                }
                Ok(())
            })
        })?;
        let peer = client(addr)?;
        let mut got = Vec::new();
        run_until(&mut sel, "the end of the stream", |_| {
            match drain(&peer, &mut got) {
                Ok(end) => Ok(end),
                // An abort with unsent data resets the connection.
                Err(e) if abort && e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
                Err(e) => Err(e),
            }
        })?;
        if abort {
            assert!(got.len() < 4 * MIB, "an abort sent the whole buffer");
        } else {
            assert!(got == pattern(0, 4 * MIB), "close lost or added bytes");
        }
        run_until(&mut sel, "lost", |sel| Ok(lost_count(&only_log(sel)) == 1))?;
        run_for(&mut sel, Duration::from_millis(20))?;
        assert_eq!(only_log(&mut sel).last(), Some(&Heard::Lost(None)));
        assert_eq!(lost_count(&only_log(&mut sel)), 1);
        assert_eq!(
            *late.borrow(),
            Some(io::ErrorKind::NotConnected),
            "a write in lost"
        );
    }
    Ok(())
}

#[test]
fn a_buffer_at_the_high_water_mark_does_not_pause_and_one_byte_more_does() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| {
            if *heard == Heard::Made {
                // Fill the socket (the peer never reads), so what follows stays buffered.
                tx.write(&pattern(0, 4 * MIB))?;
                tx.set_write_limits(usize::MAX, 0);
            }
            Ok(())
        })
    })?;
    let _peer = client(addr)?;
    run_until(&mut sel, "made", |sel| Ok(!only_log(sel).is_empty()))?;
    let id = only_id(&mut sel);
    let pauses = |sel: &mut Selector| {
        only_log(sel)
            .iter()
            .filter(|h| matches!(h, Heard::Pause(_)))
            .count()
    };

    // Exactly at the mark (`high` is the most a buffer may hold without a pause).
    let mut tx = id.transport(&mut sel)?;
    let buffered = tx.write_buffer_size();
    assert!(buffered > 0, "4 MiB fit in the socket");
    tx.set_write_limits(buffered + 100, 0);
    tx.write(&[7; 100])?;
    assert_eq!(tx.write_buffer_size(), buffered + 100);
    assert!(!tx.is_writing_paused());
    run_for(&mut sel, Duration::from_millis(50))?;
    assert_eq!(pauses(&mut sel), 0, "paused at the mark, not past it");

    // One byte past it.
    let mut tx = id.transport(&mut sel)?;
    let buffered = tx.write_buffer_size();
    tx.set_write_limits(buffered, 0);
    run_for(&mut sel, Duration::from_millis(50))?;
    assert_eq!(pauses(&mut sel), 0, "a new mark equal to the buffer paused");
    let mut tx = id.transport(&mut sel)?;
    let buffered = tx.write_buffer_size();
    tx.set_write_limits(buffered, 0);
    tx.write(&[7])?;
    assert!(tx.is_writing_paused());
    run_until(&mut sel, "the pause", |sel| Ok(pauses(sel) == 1))?;
    Ok(())
}

#[test]
fn a_client_that_resets_before_it_is_accepted_ends_once_and_the_server_goes_on() -> io::Result<()> {
    let (mut sel, addr, _server) = server(ServerOptions::default(), || {
        Recorder::new(|tx, heard| match heard {
            Heard::Data(data) => tx.write(data),
            _ => Ok(()),
        })
    })?;
    // Connected (the kernel finished the handshake) and reset before the loop ever runs.
    for _ in 0..3 {
        reset(TcpStream::connect(addr)?)?;
    }
    let steady = client(addr)?;
    run_until(&mut sel, "the steady client made", |sel| {
        let log = sel.state::<Log>().unwrap();
        Ok(log.0.iter().filter(|(_, h)| *h == Heard::Made).count() == 4)
    })?;
    run_until(&mut sel, "three lost", |sel| {
        Ok(sel.state::<Log>().unwrap().lost() == 3)
    })?;
    let log = &sel.state::<Log>().unwrap().0;
    let ids: Vec<_> = log
        .iter()
        .filter(|(_, h)| *h == Heard::Made)
        .map(|&(id, _)| id)
        .collect();
    for &id in &ids[..3] {
        let heard = sel.state::<Log>().unwrap().of(id);
        assert_eq!(
            heard,
            [
                Heard::Made,
                Heard::Lost(Some(io::ErrorKind::ConnectionReset))
            ],
            "{id:?}"
        );
    }
    let mut steady_ref = &steady;
    steady_ref.write_all(b"ping")?;
    let mut got = Vec::new();
    run_until(&mut sel, "the echo", |_| {
        drain(&steady, &mut got)?;
        Ok(got == b"ping")
    })?;
    Ok(())
}

#[test]
fn the_connection_cap_is_given_back_by_every_ending() -> io::Result<()> {
    let options = ServerOptions::default()
        .max_connections(4)
        .idle_timeout(Duration::from_millis(200));
    let (mut sel, addr, server) = server(options, || {
        Recorder::new(|tx, heard| match heard {
            Heard::Data(data) if data == b"abort" => {
                tx.abort();
                Ok(())
            }
            Heard::Data(data) => tx.write(data),
            _ => Ok(()),
        })
    })?;
    let count = |sel: &mut Selector, what: fn(&Heard) -> bool| {
        sel.state::<Log>()
            .unwrap()
            .0
            .iter()
            .filter(|(_, h)| what(h))
            .count()
    };
    let made = |h: &Heard| *h == Heard::Made;
    let lost = |h: &Heard| matches!(h, Heard::Lost(_));
    let open_matches_log = |sel: &mut Selector| {
        let live = count(sel, made) - count(sel, lost);
        assert_eq!(server.stats(sel).unwrap().open, live);
    };

    let first: Vec<TcpStream> = (0..4).map(|_| client(addr)).collect::<io::Result<_>>()?;
    run_until(&mut sel, "four made", |sel| Ok(count(sel, made) == 4))?;
    let waiting = client(addr)?; // over the cap: waits in the backlog
    run_for(&mut sel, Duration::from_millis(50))?;
    assert_eq!(count(&mut sel, made), 4, "accepted past the cap");
    open_matches_log(&mut sel);

    // One ends by a reset, one by a FIN, one by the server's abort; the last goes idle.
    let mut first = first.into_iter();
    reset(first.next().unwrap())?;
    drop(first.next().unwrap());
    let mut aborted = first.next().unwrap();
    aborted.write_all(b"abort")?;
    let _idle = first.next().unwrap();
    let later: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect::<io::Result<_>>()?;
    run_until(&mut sel, "four more made", |sel| {
        open_matches_log(sel);
        Ok(count(sel, made) == 8)
    })?;
    // Every connection ends at last, the later ones by their idle timeouts.
    run_until(&mut sel, "every connection lost", |sel| {
        open_matches_log(sel);
        Ok(count(sel, lost) == 8)
    })?;
    let stats = server.stats(&sel).unwrap();
    assert_eq!((stats.accepted, stats.open), (8, 0));
    assert!(server.is_accepting(&sel));
    let log = sel.state::<Log>().unwrap();
    let reasons: Vec<_> = log
        .0
        .iter()
        .filter_map(|(_, h)| match h {
            Heard::Lost(reason) => Some(*reason),
            _ => None,
        })
        .collect();
    let timed_out = reasons
        .iter()
        .filter(|&&r| r == Some(io::ErrorKind::TimedOut))
        .count();
    assert!(
        reasons.contains(&Some(io::ErrorKind::ConnectionReset)),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| r.is_none()).count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(timed_out, 5, "{reasons:?}");
    drop((waiting, later));
    Ok(())
}

/// Writes 1 KiB through `id` whenever writing is not paused, from a deferred call that
/// schedules itself again at once, until the id is refused; then records the refusal.
fn pump(reg: &mut Registry, id: ConnId<TcpStream>, refused: Rc<Cell<Option<io::ErrorKind>>>) {
    match id.transport(reg) {
        Ok(mut tx) => {
            if !tx.is_writing_paused() {
                let _ = tx.write(&[b'x'; 1024]);
            }
            reg.call_soon(move |reg| pump(reg, id, refused));
        }
        Err(e) => refused.set(Some(e.kind())),
    }
}

#[test]
fn a_producer_that_never_stops_hears_a_reset_and_is_refused_after() -> io::Result<()> {
    let _watchdog = util::watchdog(util::HUNG_AFTER);
    let refused: Rc<Cell<Option<io::ErrorKind>>> = Rc::default();
    let for_made = Rc::clone(&refused);
    let (mut sel, addr, _server) = server(ServerOptions::default(), move || {
        let refused = Rc::clone(&for_made);
        Recorder::new(move |tx, heard| {
            match heard {
                Heard::Made => {
                    let (id, refused) = (tx.id(), Rc::clone(&refused));
                    tx.registry().call_soon(move |reg| pump(reg, id, refused));
                }
                // And on every `data`, as an echo would.
                Heard::Data(data) if !tx.is_writing_paused() => tx.write(data)?,
                _ => {}
            }
            Ok(())
        })
    })?;
    let peer = client(addr)?;
    (&peer).write_all(b"hello")?;
    let mut got = Vec::new();
    run_until(&mut sel, "some output", |_| {
        drain(&peer, &mut got)?;
        Ok(got.len() > 64 * 1024)
    })?;
    reset(peer)?;
    run_until(&mut sel, "lost", |sel| Ok(lost_count(&only_log(sel)) == 1))?;
    let last = only_log(&mut sel).last().cloned();
    assert!(
        matches!(
            last,
            Some(Heard::Lost(Some(
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )))
        ),
        "{last:?}"
    );
    run_until(&mut sel, "the producer refused", |_| {
        Ok(refused.get().is_some())
    })?;
    assert_eq!(refused.get(), Some(io::ErrorKind::NotFound));
    // The server still accepts.
    let _next = client(addr)?;
    run_until(&mut sel, "the next made", |sel| {
        Ok(sel
            .state::<Log>()
            .unwrap()
            .0
            .iter()
            .filter(|(_, h)| *h == Heard::Made)
            .count()
            == 2)
    })?;
    Ok(())
}

/// Writes `pattern(0, 4 MiB)` in `made`, then closes; records `lost`.
struct CloseFull(Rc<RefCell<Vec<Option<io::ErrorKind>>>>);

impl Protocol<PipeWriter> for CloseFull {
    fn made(&mut self, tx: &mut Transport<'_, PipeWriter>) -> io::Result<()> {
        tx.write(&pattern(0, 4 * MIB))?;
        assert!(tx.write_buffer_size() > 0, "4 MiB fit in a pipe");
        tx.close();
        assert_eq!(
            tx.write(b"late").unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        Ok(())
    }

    fn data(&mut self, _: &mut Transport<'_, PipeWriter>, _: &[u8]) -> io::Result<()> {
        unreachable!("a write end reads nothing")
    }

    fn lost(&mut self, _: &mut Transport<'_, PipeWriter>, reason: Option<io::Error>) {
        self.0.borrow_mut().push(reason.map(|e| e.kind()));
    }
}

#[test]
fn close_on_a_pipe_with_a_full_buffer_delivers_every_byte_then_the_end() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (reader, writer) = pipe()?;
    let lost = Rc::new(RefCell::new(Vec::new()));
    start(&mut sel, writer, CloseFull(Rc::clone(&lost))).map_err(io::Error::from)?;
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 16];
    run_until(&mut sel, "the end of the pipe", |_| loop {
        match (&reader).read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    })?;
    assert!(got == pattern(0, 4 * MIB), "close lost or added bytes");
    run_until(&mut sel, "lost", |_| Ok(!lost.borrow().is_empty()))?;
    run_for(&mut sel, Duration::from_millis(20))?;
    assert_eq!(*lost.borrow(), [None]);
    assert!(sel.is_empty());
    Ok(())
}
