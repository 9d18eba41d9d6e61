//! Datagram endpoints over real loopback UDP and Unix datagram sockets: delivery, truncation,
//! ICMP errors, the send queue's policy, and `lost` exactly once.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::rc::Rc;
use std::time::Duration;

use selreactor::net::{
    DatagramContext, DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramSocket, Sent,
    DATAGRAM_OVERHEAD,
};
use selreactor::Selector;

#[path = "util/net.rs"]
mod net_util;

use net_util::{run_until, run_until_panic};

/// What a [`Rec`] protocol saw, in order.
#[derive(Debug, PartialEq)]
enum Ev {
    Made,
    Data(Vec<u8>),
    Error(io::ErrorKind),
    Resume,
    Lost(Option<io::ErrorKind>),
}

type Log = Rc<RefCell<Vec<Ev>>>;

/// Records every callback; echoes datagrams back when `echo` is set.
struct Rec<S> {
    log: Log,
    echo: bool,
    _socket: std::marker::PhantomData<S>,
}

fn rec<S>(echo: bool) -> (Rec<S>, Log) {
    let log = Log::default();
    let rec = Rec {
        log: Rc::clone(&log),
        echo,
        _socket: std::marker::PhantomData,
    };
    (rec, log)
}

impl<S: DatagramSocket> DatagramProtocol for Rec<S> {
    type Socket = S;

    fn made(&mut self, _: &mut DatagramContext<'_, Self>) -> io::Result<()> {
        self.log.borrow_mut().push(Ev::Made);
        Ok(())
    }

    fn datagram(
        &mut self,
        ep: &mut DatagramContext<'_, Self>,
        data: &[u8],
        from: S::Addr,
    ) -> io::Result<()> {
        self.log.borrow_mut().push(Ev::Data(data.to_vec()));
        if data == b"fail" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "asked to fail"));
        }
        if data == b"panic" {
            panic!("asked to panic");
        }
        if self.echo {
            assert_eq!(ep.send_to(data, &from)?, Sent::Sent);
        }
        Ok(())
    }

    fn error(&mut self, _: &mut DatagramContext<'_, Self>, error: io::Error) {
        self.log.borrow_mut().push(Ev::Error(error.kind()));
    }

    fn resume_writing(&mut self, _: &mut DatagramContext<'_, Self>) {
        self.log.borrow_mut().push(Ev::Resume);
    }

    fn lost(&mut self, ep: &mut DatagramContext<'_, Self>, reason: Option<io::Error>) {
        // The registry is there for every ending, the selector's drop included.
        ep.registry().call_soon(|_| {});
        let error = ep.send(b"late").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
        self.log
            .borrow_mut()
            .push(Ev::Lost(reason.map(|e| e.kind())));
    }
}

fn count(log: &Log, pred: impl Fn(&Ev) -> bool) -> usize {
    log.borrow().iter().filter(|e| pred(e)).count()
}

fn client(to: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .unwrap();
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(socket)
}

fn echo_round_trip(bind: &str) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(true);
    let ep = DatagramEndpoint::bind_udp(&mut sel, bind.parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    let peer = client(addr)?;
    let mut buf = [0; 64];
    for message in [&b"one"[..], b"two", b""] {
        peer.send_to(message, addr)?;
        let len_before = log.borrow().len();
        run_until(&mut sel, "the datagram", |_| {
            Ok(log.borrow().len() > len_before)
        })?;
        let (n, from) = peer.recv_from(&mut buf)?;
        assert_eq!((&buf[..n], from), (message, addr));
    }
    ep.close(&mut sel)?;
    assert!(!ep.is_open(&sel));
    assert_eq!(
        *log.borrow(),
        [
            Ev::Made,
            Ev::Data(b"one".to_vec()),
            Ev::Data(b"two".to_vec()),
            Ev::Data(Vec::new()), // an empty datagram is a datagram, not an end of stream
            Ev::Lost(None),
        ]
    );
    assert_eq!(
        ep.close(&mut sel).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    Ok(())
}

#[test]
fn udp_echo_over_ipv4_delivers_every_datagram_empty_ones_included() -> io::Result<()> {
    echo_round_trip("127.0.0.1:0")
}

#[test]
fn udp_echo_over_ipv6() -> io::Result<()> {
    echo_round_trip("[::1]:0")
}

#[test]
fn a_datagram_larger_than_the_buffer_is_reported_never_delivered_cut() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let options = DatagramOptions {
        recv_buffer_size: 2048,
        ..DatagramOptions::default()
    };
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    DatagramEndpoint::with_options(&mut sel, socket, proto, options)?;
    let peer = client(addr)?;
    peer.send_to(&[7; 4096], addr)?;
    peer.send_to(&[8; 2049], addr)?;
    peer.send_to(&[9; 2048], addr)?; // exactly the buffer: whole
    peer.send_to(b"after", addr)?;
    run_until(&mut sel, "5 events", |_| Ok(log.borrow().len() >= 5))?;
    assert_eq!(
        *log.borrow(),
        [
            Ev::Made,
            Ev::Error(io::ErrorKind::InvalidData),
            Ev::Error(io::ErrorKind::InvalidData),
            Ev::Data(vec![9; 2048]),
            Ev::Data(b"after".to_vec()),
        ]
    );
    Ok(())
}

#[test]
fn the_default_buffer_takes_the_largest_udp_datagram() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    let peer = client(addr)?;
    let largest: Vec<u8> = (0..65_507u32).map(|i| i as u8).collect();
    peer.send_to(&largest, addr)?;
    run_until(&mut sel, "2 events", |_| Ok(log.borrow().len() >= 2))?;
    assert_eq!(log.borrow()[1], Ev::Data(largest));
    Ok(())
}

#[test]
fn icmp_port_unreachable_is_an_error_received_not_an_ending() -> io::Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let freed = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::connect_udp(&mut sel, freed, proto)?;
    run_until(&mut sel, "made", |_| Ok(!log.borrow().is_empty()))?;
    assert_eq!(ep.send(&mut sel, b"anyone?")?, Sent::Sent);
    run_until(&mut sel, "2 events", |_| Ok(log.borrow().len() >= 2))?;
    assert_eq!(log.borrow()[1], Ev::Error(io::ErrorKind::ConnectionRefused));
    // Still open, and still sending: the error was consumed by the receive that reported it.
    assert!(ep.is_open(&sel));
    assert_eq!(ep.send(&mut sel, b"again")?, Sent::Sent);
    run_until(&mut sel, "3 events", |_| Ok(log.borrow().len() >= 3))?;
    assert_eq!(log.borrow()[2], Ev::Error(io::ErrorKind::ConnectionRefused));
    ep.close(&mut sel)?;
    assert_eq!(count(&log, |e| matches!(e, Ev::Lost(_))), 1);
    Ok(())
}

#[test]
fn a_datagram_too_big_to_send_fails_alone() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let peer = client("127.0.0.1:1".parse().unwrap())?;
    let to = peer.local_addr()?;
    let error = ep.send_to(&mut sel, &[0; 70_000], &to).unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(90),
        "EMSGSIZE expected, got {error}"
    );
    assert_eq!(ep.send_to(&mut sel, b"next", &to)?, Sent::Sent);
    let mut buf = [0; 16];
    let (n, _) = peer.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"next");
    assert!(ep.is_open(&sel));
    drop(log);
    Ok(())
}

/// A Unix datagram pair whose reading side is not on the loop: it reads only when told, so
/// the endpoint's socket fills after a few datagrams (`net.unix.max_dgram_qlen`).
fn full_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let (ours, theirs) = UnixDatagram::pair()?;
    theirs.set_nonblocking(true)?;
    Ok((ours, theirs))
}

fn drain(theirs: &UnixDatagram) -> io::Result<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let mut buf = [0; 2048];
    loop {
        match theirs.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn a_full_socket_queues_up_to_the_limit_then_drops_and_counts() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, theirs) = full_pair()?;
    let (proto, log) = rec::<UnixDatagram>(false);
    let limit = 4 * (1000 + DATAGRAM_OVERHEAD);
    let options = DatagramOptions {
        send_queue_limit: limit,
        ..DatagramOptions::default()
    };
    let ep = DatagramEndpoint::with_options(&mut sel, ours, proto, options)?;
    let mut outcomes = Vec::new();
    for i in 0..200u32 {
        let mut datagram = vec![0u8; 1000];
        datagram[..4].copy_from_slice(&i.to_be_bytes());
        outcomes.push(ep.send(&mut sel, &datagram)?);
    }
    let sent = outcomes.iter().filter(|o| **o == Sent::Sent).count();
    let queued = outcomes.iter().filter(|o| **o == Sent::Queued).count();
    let dropped = outcomes.iter().filter(|o| **o == Sent::Dropped).count();
    // Straight out until the socket filled, then exactly as many as the limit holds, then drops.
    assert!(sent > 0 && sent < 200, "sent {sent}");
    assert_eq!(queued, 4);
    assert_eq!(dropped, 200 - sent - 4);
    assert_eq!(outcomes[..sent], vec![Sent::Sent; sent][..]);
    assert_eq!(outcomes[sent..sent + 4], [Sent::Queued; 4]);
    assert_eq!(ep.dropped(&sel), dropped as u64);
    assert_eq!(ep.queued_bytes(&sel), limit);

    // The reader drains; the queue flushes in order, then resume_writing runs once.
    let mut got = Vec::new();
    run_until(&mut sel, "the queue to drain", |sel| {
        got.extend(drain(&theirs)?);
        Ok(ep.queued_bytes(sel) == 0 && log.borrow().contains(&Ev::Resume))
    })?;
    got.extend(drain(&theirs)?);
    let numbers: Vec<u32> = got
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert_eq!(numbers, (0..(sent + 4) as u32).collect::<Vec<_>>());
    assert_eq!(count(&log, |e| *e == Ev::Resume), 1);
    // Sending goes straight out again.
    assert_eq!(ep.send(&mut sel, b"more")?, Sent::Sent);
    Ok(())
}

#[test]
fn close_flushes_the_queue_first_and_abort_discards_it() -> io::Result<()> {
    for abort in [false, true] {
        let mut sel = Selector::new()?;
        let (ours, theirs) = full_pair()?;
        let (proto, log) = rec::<UnixDatagram>(false);
        let ep = DatagramEndpoint::new(&mut sel, ours, proto)?;
        run_until(&mut sel, "made", |_| Ok(!log.borrow().is_empty()))?; // made
        let mut sent = 0;
        while ep.send(&mut sel, b"payload")? == Sent::Sent {
            sent += 1;
        }
        assert_eq!(ep.send(&mut sel, b"payload")?, Sent::Queued);
        if abort {
            ep.abort(&mut sel)?;
            assert!(!ep.is_open(&sel));
        } else {
            ep.close(&mut sel)?;
            assert!(ep.is_open(&sel), "closing waits for the queue");
            let error = ep.send(&mut sel, b"late").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotConnected);
            sel.run_once(Some(Duration::from_millis(100)))?;
            assert_eq!(count(&log, |e| matches!(e, Ev::Lost(_))), 0);
        }
        let mut got = 0;
        run_until(&mut sel, "the endpoint to end", |sel| {
            got += drain(&theirs)?.len();
            Ok(!ep.is_open(sel))
        })?;
        got += drain(&theirs)?.len();
        let expected = if abort { sent } else { sent + 2 };
        assert_eq!(got, expected, "abort: {abort}");
        assert_eq!(*log.borrow(), [Ev::Made, Ev::Lost(None)], "abort: {abort}");
    }
    Ok(())
}

#[test]
fn unix_endpoint_replies_to_a_named_sender() -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("selreactor-dgram-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server_path = dir.join("server.sock");
    let client_path = dir.join("client.sock");
    let _ = std::fs::remove_file(&server_path);
    let _ = std::fs::remove_file(&client_path);
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UnixDatagram>(true);
    let ep = DatagramEndpoint::bind_unix(&mut sel, &server_path, proto)?;
    let peer = UnixDatagram::bind(&client_path)?;
    peer.set_read_timeout(Some(Duration::from_secs(2)))?;
    peer.send_to(b"ping", &server_path)?;
    run_until(&mut sel, "2 events", |_| Ok(log.borrow().len() >= 2))?;
    let mut buf = [0; 16];
    let n = peer.recv(&mut buf)?;
    assert_eq!(&buf[..n], b"ping");
    ep.close(&mut sel)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn dropping_the_selector_ends_the_endpoint_once() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    run_until(&mut sel, "made", |_| Ok(!log.borrow().is_empty()))?;
    drop(sel);
    assert_eq!(
        *log.borrow(),
        [Ev::Made, Ev::Lost(Some(io::ErrorKind::ConnectionAborted))]
    );
    Ok(())
}

#[test]
fn an_endpoint_closed_before_its_first_iteration_hears_neither_made_nor_lost() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    ep.close(&mut sel)?;
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(*log.borrow(), []);
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn an_err_from_the_protocol_ends_the_endpoint_with_that_error() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    let peer = client(addr)?;
    peer.send_to(b"fail", addr)?;
    peer.send_to(b"never read", addr)?;
    run_until(&mut sel, "the endpoint to end", |sel| Ok(sel.is_empty()))?;
    assert_eq!(
        *log.borrow(),
        [
            Ev::Made,
            Ev::Data(b"fail".to_vec()),
            Ev::Lost(Some(io::ErrorKind::InvalidData)),
        ]
    );
    Ok(())
}

#[test]
fn a_panicking_protocol_hears_lost_and_the_panic_leaves_run() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (proto, log) = rec::<UdpSocket>(false);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    let peer = client(addr)?;
    peer.send_to(b"panic", addr)?;
    peer.send_to(b"never read", addr)?;
    let panic = run_until_panic(&mut sel)?;
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"asked to panic"));
    assert_eq!(
        *log.borrow(),
        [
            Ev::Made,
            Ev::Data(b"panic".to_vec()),
            Ev::Lost(Some(io::ErrorKind::Other)),
        ]
    );
    assert!(!ep.is_open(&sel));
    assert!(sel.is_empty(), "the endpoint is still registered");
    // The selector is still usable: another endpoint echoes.
    let (proto, _) = rec::<UdpSocket>(true);
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    peer.set_nonblocking(true)?;
    peer.send_to(b"still here", addr)?;
    run_until(&mut sel, "the echo", |_| {
        let mut buf = [0; 64];
        match peer.recv(&mut buf) {
            Ok(n) => Ok(&buf[..n] == b"still here"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    Ok(())
}

/// Sends through its own handle from inside a callback: refused, the context is the way.
struct SelfHandle {
    outcome: Rc<RefCell<Option<io::ErrorKind>>>,
}

impl DatagramProtocol for SelfHandle {
    type Socket = UdpSocket;

    fn datagram(
        &mut self,
        ep: &mut DatagramContext<'_, Self>,
        data: &[u8],
        from: SocketAddr,
    ) -> io::Result<()> {
        let handle = ep.endpoint();
        let error = handle.send_to(ep.registry(), data, &from).unwrap_err();
        *self.outcome.borrow_mut() = Some(error.kind());
        ep.close();
        Ok(())
    }
}

#[test]
fn the_handle_is_refused_inside_its_own_callback() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let outcome = Rc::default();
    let proto = SelfHandle {
        outcome: Rc::clone(&outcome),
    };
    let ep = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), proto)?;
    let addr = ep.local_addr(&sel)?;
    client(addr)?.send_to(b"x", addr)?;
    run_until(&mut sel, "the endpoint to end", |sel| Ok(sel.is_empty()))?;
    assert_eq!(*outcome.borrow(), Some(io::ErrorKind::ResourceBusy));
    Ok(())
}

#[test]
fn a_receive_buffer_of_no_bytes_or_too_many_is_refused_and_nothing_registered() -> io::Result<()> {
    let mut sel = Selector::new()?;
    for size in [0, selreactor::net::MAX_RECV_BUFFER + 1, usize::MAX] {
        let (proto, log) = rec::<UdpSocket>(false);
        let options = DatagramOptions {
            recv_buffer_size: size,
            ..DatagramOptions::default()
        };
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let error = DatagramEndpoint::with_options(&mut sel, socket, proto, options).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{size}");
        assert!(sel.is_empty());
        assert!(log.borrow().is_empty());
    }
    Ok(())
}
