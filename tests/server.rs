//! Servers and clients on loopback: the connection cap, idle timeouts, running out of
//! descriptors (in a child process with a low limit), connect errors and timeouts, Unix and
//! IPv6 sockets. Every test holds `util::serial()`, since one counts descriptors.

#[path = "util/net.rs"]
mod net_util;
mod util;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::env;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use net_util::{client, drain, run_for, run_until, server, Heard, Log, Recorder};
use selreactor::net::{
    connect_tcp, connect_unix, finish_connect, serve, start_connect, tcp_listener, unix_listener,
    ListenOptions, Protocol, ServerOptions, Transport,
};
use selreactor::Selector;
use socket2::{Domain, Socket, Type};

/// Echoes whatever arrives, on any stream type.
struct Echo;

impl<T: selreactor::net::ByteStream> Protocol<T> for Echo {
    fn data(&mut self, tx: &mut Transport<'_, T>, data: &[u8]) -> io::Result<()> {
        tx.write(data)
    }
}

fn echo_recorder() -> Recorder {
    Recorder::new(|tx, heard| match heard {
        Heard::Data(data) => tx.write(data),
        _ => Ok(()),
    })
}

fn made_count(sel: &mut Selector) -> usize {
    let log = sel.state::<Log>().unwrap();
    log.0.iter().filter(|(_, h)| *h == Heard::Made).count()
}

#[test]
fn at_the_cap_the_server_waits_and_resumes_when_one_closes() -> io::Result<()> {
    let _serial = util::serial();
    let (mut sel, addr, server) =
        server(ServerOptions::default().max_connections(2), echo_recorder)?;
    let first = client(addr)?;
    let _second = client(addr)?;
    // Over the cap: the connect succeeds (the kernel queues it in the backlog) and the write
    // is buffered, but nothing answers and nothing ends the connection.
    let third = client(addr)?;
    (&third).write_all(b"hi")?;
    run_until(&mut sel, "two made", |sel| Ok(made_count(sel) == 2))?;
    run_for(&mut sel, Duration::from_millis(100))?;
    assert_eq!(made_count(&mut sel), 2, "accepted past the cap");
    assert!(!server.is_accepting(&sel));
    assert_eq!(server.stats(&sel).unwrap().open, 2);
    let mut got = Vec::new();
    assert!(!drain(&third, &mut got)?, "the waiting client was closed");
    assert!(got.is_empty(), "answered over the cap: {got:?}");
    // One closes: the waiting client is accepted and gets the echo of what it sent meanwhile.
    drop(first);
    run_until(&mut sel, "the third made", |sel| Ok(made_count(sel) == 3))?;
    assert!(!server.is_accepting(&sel), "at the cap again");
    run_until(&mut sel, "the echo", |_| {
        drain(&third, &mut got)?;
        Ok(got == b"hi")
    })?;
    let stats = server.stats(&sel).unwrap();
    assert_eq!((stats.accepted, stats.open), (3, 2));
    Ok(())
}

#[test]
fn an_idle_connection_is_closed_between_one_and_two_timeouts_and_a_busy_one_is_not(
) -> io::Result<()> {
    let _serial = util::serial();
    let idle = Duration::from_millis(200);
    let (mut sel, addr, server) =
        server(ServerOptions::default().idle_timeout(idle), echo_recorder)?;
    // Taken before the connects: the idle clock of each connection starts at its accept.
    let start = Instant::now();
    let quiet = client(addr)?;
    let busy = client(addr)?;
    run_until(&mut sel, "made", |sel| Ok(made_count(sel) == 2))?;
    let mut got = Vec::new();
    run_until(&mut sel, "the idle one lost", |sel| {
        // The busy client talks every 50 ms.
        if start.elapsed().as_millis() / 50 > got.len() as u128 {
            (&busy).write_all(b".")?;
        }
        drain(&busy, &mut got)?;
        Ok(sel.state::<Log>().unwrap().lost() == 1)
    })?;
    let elapsed = start.elapsed();
    assert!(elapsed >= idle, "closed after {elapsed:?}");
    let log = sel.state::<Log>().unwrap();
    let quiet_reason = log.0.iter().find_map(|(_, h)| match h {
        Heard::Lost(reason) => Some(*reason),
        _ => None,
    });
    assert_eq!(quiet_reason, Some(Some(io::ErrorKind::TimedOut)));
    assert_eq!(server.stats(&sel).unwrap().open, 1);
    let mut end = Vec::new();
    assert!(drain(&quiet, &mut end)?, "the idle client saw no end");
    Ok(())
}

#[test]
fn unix_sockets_serve_and_connect() -> io::Result<()> {
    let _serial = util::serial();
    let dir = env::temp_dir().join(format!("selreactor-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let mut sel = Selector::new()?;
    let listener = unix_listener(&path, &ListenOptions::default())?;
    serve(&mut sel, listener, ServerOptions::default(), |_, _| Echo)?;

    struct Ask(Rc<RefCell<Vec<u8>>>);
    impl Protocol<UnixStream> for Ask {
        fn made(&mut self, tx: &mut Transport<'_, UnixStream>) -> io::Result<()> {
            tx.write(b"over unix")
        }
        fn data(&mut self, tx: &mut Transport<'_, UnixStream>, data: &[u8]) -> io::Result<()> {
            self.0.borrow_mut().extend_from_slice(data);
            if self.0.borrow().len() == 9 {
                tx.close();
            }
            Ok(())
        }
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    let timeout = Some(Duration::from_secs(5));
    connect_unix(&mut sel, &path, timeout, Ask(Rc::clone(&got)), |_, e| {
        panic!("connect failed: {e}")
    })?;
    run_until(&mut sel, "the answer", |_| Ok(got.borrow().len() == 9))?;
    assert_eq!(&*got.borrow(), b"over unix");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn ipv6_loopback_serves_where_the_host_has_it() -> io::Result<()> {
    let _serial = util::serial();
    let listener = match tcp_listener("[::1]:0".parse().unwrap(), &ListenOptions::default()) {
        Ok(listener) => listener,
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => return Ok(()), // no IPv6 here
        Err(e) => return Err(e),
    };
    let addr = listener.local_addr()?;
    let mut sel = Selector::new()?;
    serve(&mut sel, listener, ServerOptions::default(), |_, _| Echo)?;
    let peer = client(addr)?;
    (&peer).write_all(b"v6")?;
    let mut got = Vec::new();
    run_until(&mut sel, "the echo", |_| {
        drain(&peer, &mut got)?;
        Ok(got == b"v6")
    })?;
    Ok(())
}

#[test]
fn reuse_port_lets_two_listeners_share_an_address() -> io::Result<()> {
    let _serial = util::serial();
    let options = ListenOptions::default().reuse_port(true);
    let first = tcp_listener("127.0.0.1:0".parse().unwrap(), &options)?;
    let second = tcp_listener(first.local_addr()?, &options)?;
    assert_eq!(first.local_addr()?, second.local_addr()?);
    let plain = tcp_listener(first.local_addr()?, &ListenOptions::default());
    assert_eq!(plain.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    Ok(())
}

/// The outcome of one connect: `Ok` once made, or the error.
type Outcome = Rc<RefCell<Option<io::Result<()>>>>;

struct Made(Outcome);

impl Protocol for Made {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        *self.0.borrow_mut() = Some(Ok(()));
        tx.close();
        Ok(())
    }
    fn data(&mut self, _: &mut Transport<'_, TcpStream>, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `addr` with `timeout`; returns the outcome and how long it took.
fn try_connect(
    sel: &mut Selector,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<(io::Result<()>, Duration)> {
    let outcome: Outcome = Rc::default();
    let failed = Rc::clone(&outcome);
    let start = Instant::now();
    if let Err(e) = connect_tcp(
        sel,
        addr,
        Some(timeout),
        Made(Rc::clone(&outcome)),
        move |_, e| {
            *failed.borrow_mut() = Some(Err(e));
        },
    ) {
        return Ok((Err(e), start.elapsed()));
    }
    run_until(sel, "the connect's outcome", |_| {
        Ok(outcome.borrow().is_some())
    })?;
    let elapsed = start.elapsed();
    let result = outcome.borrow_mut().take().unwrap();
    Ok((result, elapsed))
}

#[test]
fn connect_succeeds_to_a_listener() -> io::Result<()> {
    let _serial = util::serial();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut sel = Selector::new()?;
    let (result, _) = try_connect(&mut sel, listener.local_addr()?, Duration::from_secs(5))?;
    result?;
    let (mut conn, _) = listener.accept()?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    assert!(rest.is_empty());
    Ok(())
}

#[test]
fn a_socket_that_connects_to_itself_is_refused_not_handed_out() -> io::Result<()> {
    // A socket bound to an address and connecting to that same address completes a TCP
    // simultaneous open with itself: local == peer. (A loopback connect to a free ephemeral
    // port can do the same by chance.)
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())?;
    let own = socket.local_addr()?;
    socket.set_nonblocking(true)?;
    match socket.connect(&own) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + net_util::DEADLINE;
    let outcome = loop {
        match finish_connect(&socket) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the connect never finished");
                std::thread::sleep(Duration::from_millis(1));
            }
            outcome => break outcome,
        }
    };
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(io::ErrorKind::AddrInUse),
        "a self-connected socket was taken for a connection"
    );
    Ok(())
}

#[test]
fn connect_to_a_port_nobody_listens_on_is_refused() -> io::Result<()> {
    let _serial = util::serial();
    // Bound but not listening: the port stays ours, so nothing else can take it meanwhile.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())?;
    let addr = socket.local_addr()?.as_socket().unwrap();
    let mut sel = Selector::new()?;
    let (result, elapsed) = try_connect(&mut sel, addr, Duration::from_secs(5))?;
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(sel.is_empty(), "the failed connect left a registration");
    Ok(())
}

/// A listener whose accept queue is full: further connects hang in SYN-SENT.
fn full_listener() -> io::Result<(TcpListener, Vec<TcpStream>)> {
    let listener = tcp_listener(
        "127.0.0.1:0".parse().unwrap(),
        &ListenOptions::default().backlog(0),
    )?;
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let stream = start_connect(addr)?;
        let deadline = Instant::now() + Duration::from_millis(300);
        let connected = loop {
            match finish_connect(&stream) {
                Ok(()) => break true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        fillers.push(stream);
        if !connected {
            return Ok((listener, fillers));
        }
    }
    Err(io::Error::other("the accept queue never filled"))
}

#[test]
fn connect_gives_up_after_its_timeout_and_leaves_nothing_behind() -> io::Result<()> {
    let _serial = util::serial();
    let (listener, _fillers) = full_listener()?;
    let addr = listener.local_addr()?;
    let mut sel = Selector::new()?;
    let timeout = Duration::from_millis(200);
    let fds = util::fd_count()?;
    for _ in 0..util::scaled(10, 2) {
        let (result, elapsed) = try_connect(&mut sel, addr, timeout)?;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
        run_for(&mut sel, Duration::from_millis(1))?;
        assert!(sel.is_empty(), "a registration outlived the timeout");
        assert_eq!(sel.timer_count(), 0, "a timer outlived the connect");
        assert_eq!(util::fd_count()?, fds, "a descriptor outlived the connect");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running out of descriptors, in a child process (the limit is process-wide).

const CHILD_VAR: &str = "SELREACTOR_SERVER_CHILD";

fn open_fds() -> io::Result<BTreeSet<RawFd>> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    Ok(listed.into_iter().filter(|&fd| util::is_open(fd)).collect())
}

/// Sets the soft descriptor limit so that exactly `spare` more descriptors can be opened.
fn leave_only(spare: usize) -> io::Result<libc::rlimit> {
    let open = open_fds()?;
    let (mut free, mut limit) = (0, 0);
    while free < spare {
        if !open.contains(&(limit as RawFd)) {
            free += 1;
        }
        limit += 1;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    set_limit(libc::rlimit {
        rlim_cur: limit,
        rlim_max: old.rlim_max,
    })?;
    Ok(old)
}

fn set_limit(limit: libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit reads one rlimit from the live local it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the test process, runs the test `name` again in a child process, where it may lower the
/// descriptor limit, and returns `false` once the child has passed; in the child, `true`.
fn in_child(name: &str) -> io::Result<bool> {
    if env::var(CHILD_VAR).as_deref() == Ok(name) {
        return Ok(true);
    }
    let output = Command::new(env::current_exe()?)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_VAR, name)
        .stdin(Stdio::null())
        .output()?;
    assert!(
        output.status.success(),
        "the child failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(false)
}

#[test]
fn out_of_descriptors_pauses_accepting_and_a_closing_connection_resumes_it() -> io::Result<()> {
    let _serial = util::serial();
    if !in_child("out_of_descriptors_pauses_accepting_and_a_closing_connection_resumes_it")? {
        return Ok(());
    }

    const QUEUED: usize = 20;
    const SPARE: usize = 2;
    // The fallback retry is far away: only a connection's close can explain a prompt resume.
    let options = ServerOptions::default().retry_after(Duration::from_secs(30));
    let (mut sel, addr, server) = server(options, echo_recorder)?;
    let steady = client(addr)?;
    run_until(&mut sel, "steady made", |sel| Ok(made_count(sel) == 1))?;
    // Client sockets are made before the limit drops; connecting needs no new descriptor.
    let clients = (0..QUEUED)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None))
        .collect::<io::Result<Vec<_>>>()?;
    let old_limit = leave_only(SPARE)?;
    for c in &clients {
        c.connect(&addr.into())?; // completes in the backlog
    }
    run_until(&mut sel, "accepting to pause", |sel| {
        Ok(server.stats(sel).unwrap().out_of_descriptors > 0)
    })?;
    let paused = server.stats(&sel).unwrap();
    assert!(paused.accepted <= 1 + SPARE as u64, "{paused:?}");
    assert!(!server.is_accepting(&sel));

    // A second of service while out of descriptors: the steady client is served, and the loop
    // does not spin on the listener.
    let window = Instant::now();
    let (mut callbacks, mut rounds) = (0, 0);
    while window.elapsed() < Duration::from_secs(1) {
        (&steady).write_all(b"ping")?;
        let mut got = Vec::new();
        while got.len() < 4 {
            callbacks += sel.run_once(Some(Duration::from_millis(10)))?;
            drain(&steady, &mut got)?;
        }
        rounds += 1;
        callbacks += sel.run_once(Some(Duration::from_millis(20)))?;
    }
    assert!(
        rounds >= 10,
        "the steady client was starved: {rounds} rounds"
    );
    assert!(
        callbacks < 20 * rounds,
        "{callbacks} callbacks for {rounds} rounds: spinning"
    );
    assert_eq!(server.stats(&sel).unwrap().accepted, paused.accepted);

    // One of the server's connections closes: its descriptor goes to the next in the queue.
    let before = server.stats(&sel).unwrap().accepted;
    steady.shutdown(Shutdown::Write)?;
    let closed = Instant::now();
    run_until(&mut sel, "the next accept", |sel| {
        Ok(server.stats(sel).unwrap().accepted > before)
    })?;
    let resumed_after = closed.elapsed();
    assert!(
        resumed_after < Duration::from_secs(5),
        "resumed only after {resumed_after:?}"
    );

    // With the limit back, closing the accepted clients lets the server drain its backlog.
    set_limit(old_limit)?;
    drop(clients);
    run_until(&mut sel, "every queued client accepted and gone", |sel| {
        let stats = server.stats(sel).unwrap();
        Ok(stats.accepted == 1 + QUEUED as u64 && stats.open == 0)
    })?;
    assert!(server.is_accepting(&sel));
    let late = client(addr)?;
    (&late).write_all(b"late")?;
    let mut got = Vec::new();
    run_until(&mut sel, "a late client served", |_| {
        drain(&late, &mut got)?;
        Ok(got == b"late")
    })?;
    let _ = steady.as_raw_fd();
    Ok(())
}

#[test]
fn a_connection_of_another_server_on_the_loop_closing_resumes_a_starved_one() -> io::Result<()> {
    a_starved_server_resumes_when_released(
        Holder::OtherServer,
        "a_connection_of_another_server_on_the_loop_closing_resumes_a_starved_one",
    )
}

#[test]
fn a_client_connection_on_the_loop_closing_resumes_a_starved_server() -> io::Result<()> {
    a_starved_server_resumes_when_released(
        Holder::Client,
        "a_client_connection_on_the_loop_closing_resumes_a_starved_server",
    )
}

/// Whether the holder's connection has ended.
type IsEnded = Box<dyn Fn(&Selector) -> bool>;

/// What holds the one descriptor whose release must wake a server out of descriptors.
enum Holder {
    /// A connection of another server on the same loop (as a dual-stack or TCP-and-Unix
    /// program has).
    OtherServer,
    /// A client transport (`connect_tcp`) on the same loop.
    Client,
}

/// `starved` runs out of descriptors while `holder` holds one. The fallback retry is far away:
/// only the holder's connection closing can explain a prompt resume.
fn a_starved_server_resumes_when_released(holder: Holder, name: &str) -> io::Result<()> {
    let _serial = util::serial();
    if !in_child(name)? {
        return Ok(());
    }
    let options = ServerOptions::default().retry_after(Duration::from_secs(30));
    let (mut sel, addr, starved) = server(options.clone(), echo_recorder)?;
    // The holder's far end (closing it ends the holder's connection), and how to see it ended.
    let (far_end, ended): (TcpStream, IsEnded) = match holder {
        Holder::OtherServer => {
            let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
            let other_addr = listener.local_addr()?;
            let other = serve(&mut sel, listener, options, |_, _| Echo)?;
            let far_end = client(other_addr)?;
            run_until(&mut sel, "the other server's connection", |sel| {
                Ok(other.stats(sel).unwrap().open == 1)
            })?;
            (
                far_end,
                Box::new(move |sel| other.stats(sel).unwrap().open == 0),
            )
        }
        Holder::Client => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let id = connect_tcp(&mut sel, listener.local_addr()?, None, Echo, |_, e| {
                panic!("connect failed: {e}")
            })?;
            let far_end = listener.accept()?.0;
            far_end.set_nonblocking(true)?;
            (&far_end).write_all(b"up?")?;
            let mut got = Vec::new();
            run_until(&mut sel, "the client's echo", |_| {
                drain(&far_end, &mut got)?;
                Ok(got == b"up?")
            })?;
            (far_end, Box::new(move |sel| !id.is_open(sel)))
        }
    };

    const QUEUED: usize = 4;
    let clients = (0..QUEUED)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None))
        .collect::<io::Result<Vec<_>>>()?;
    let old_limit = leave_only(1)?;
    for c in &clients {
        c.connect(&addr.into())?;
    }
    run_until(&mut sel, "accepting to pause", |sel| {
        Ok(starved.stats(sel).unwrap().out_of_descriptors > 0)
    })?;
    let paused = starved.stats(&sel).unwrap();
    assert_eq!(paused.accepted, 1, "{paused:?}");
    assert!(!starved.is_accepting(&sel));

    // The holder's connection ends: its descriptor goes to the starved server's queue.
    far_end.shutdown(Shutdown::Write)?;
    let closed = Instant::now();
    run_until(&mut sel, "the next accept", |sel| {
        Ok(starved.stats(sel).unwrap().accepted > paused.accepted)
    })?;
    let resumed_after = closed.elapsed();
    assert!(
        resumed_after < Duration::from_secs(5),
        "resumed only after {resumed_after:?}"
    );
    assert!(ended(&sel), "the holder's connection is still open");

    set_limit(old_limit)?;
    drop(clients);
    run_until(&mut sel, "every queued client accepted and gone", |sel| {
        let stats = starved.stats(sel).unwrap();
        Ok(stats.accepted == QUEUED as u64 && stats.open == 0)
    })?;
    assert!(starved.is_accepting(&sel));
    Ok(())
}
