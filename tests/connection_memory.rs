//! What an idle connection costs a server on the transport layer, and that its memory comes
//! back: 2,000 loopback connections each exchange 64 KiB with an echo server and go idle, one
//! of them then carries a 16 MiB burst, all close, and the cycle repeats.
//!
//! A counting `#[global_allocator]` in this binary only counts the heap of the test's own
//! thread, where both the loop and the clients run; the clients allocate nothing once made
//! (their table is reserved up front, their reads land in one scratch buffer), so what the
//! count moves by is the server's. Both tests take `util::serial()`: each holds 4,000
//! descriptors.

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
#[path = "util/net.rs"]
mod net_util;
mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use counting_alloc::{count_this_thread, live};
use net_util::run_until;
use selreactor::net::Transport;
use selreactor::net::{serve, tcp_listener, ListenOptions, Protocol, Server, ServerOptions};
use selreactor::Selector;
use socket2::{Domain, Socket, Type};
use util::*;

/// What an idle connection holds, as the `net` module documents it ("at most 300 heap bytes
/// with a 16-byte protocol", the loop's tables' growth included); the echo protocol here is 16
/// bytes.
const DOCUMENTED_IDLE_BYTES: isize = 300;
const EXCHANGE: usize = 64 * 1024;
/// The most one client write sends.
const PIECE: usize = 256 * 1024;
/// Long enough for any loaded machine (or valgrind); a stuck exchange fails instead of hanging.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(120);

/// Echoes, and stops reading while its peer does not read (so a burst is bounded by the
/// high-water mark plus one read). With `send_buffer`, its socket's send buffer is that small.
struct Echo {
    send_buffer: Option<usize>,
}

/// The most any echo connection had buffered at once (the test's own premise).
static MOST_BUFFERED: AtomicIsize = AtomicIsize::new(0);

impl Protocol for Echo {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        if let Some(size) = self.send_buffer {
            socket2::SockRef::from(tx.get_ref()).set_send_buffer_size(size)?;
        }
        Ok(())
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        tx.write(data)?;
        MOST_BUFFERED.fetch_max(tx.write_buffer_size() as isize, Ordering::Relaxed);
        Ok(())
    }

    fn pause_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.pause_reading();
    }

    fn resume_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.resume_reading();
    }
}

/// How the clients of a cycle read their echo.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Peers {
    /// Each sends a 4 KiB piece once the last came back, and reads at once: the server's
    /// writes go straight through, and it never buffers.
    PingPong,
    /// Each sends its 64 KiB at once, through 4 KiB socket buffers both ways (the kernel's
    /// buffers on loopback would otherwise take it all), so the server's echo outruns it and
    /// the server buffers part of every connection's echo for a while.
    Slow,
}

struct Client {
    stream: TcpStream,
    sent: usize,
    received: usize,
}

/// Byte `i` of every exchange is `i % 251`; `at(i, len)` gives up to `max` bytes of it from
/// offset `i`.
struct Pattern(Vec<u8>);

impl Pattern {
    fn new(max: usize) -> Pattern {
        Pattern((0..max + 251).map(|i| (i % 251) as u8).collect())
    }

    fn at(&self, offset: usize, len: usize) -> &[u8] {
        &self.0[offset % 251..][..len]
    }
}

fn connect(addr: SocketAddr, peers: Peers) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if peers == Peers::Slow {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.connect(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Each client sends `total` bytes of the pattern and reads them back, with at most
/// `in_flight` bytes not yet echoed, all clients at once, the loop turning between passes;
/// every echoed byte is checked.
fn exchange(
    sel: &mut Selector,
    clients: &mut [Client],
    total: usize,
    in_flight: usize,
    pattern: &Pattern,
    scratch: &mut [u8],
) -> io::Result<()> {
    let piece = in_flight.min(PIECE);
    for client in clients.iter_mut() {
        client.sent = 0;
        client.received = 0;
    }
    let deadline = Instant::now() + EXCHANGE_DEADLINE;
    let mut done = 0;
    while done < clients.len() {
        done = 0;
        for client in clients.iter_mut() {
            let mut stream = &client.stream;
            while client.sent < total && client.sent - client.received < in_flight {
                let len = piece
                    .min(total - client.sent)
                    .min(in_flight - (client.sent - client.received));
                match stream.write(pattern.at(client.sent, len)) {
                    Ok(n) => client.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            loop {
                match stream.read(scratch) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        assert!(
                            scratch[..n] == *pattern.at(client.received, n),
                            "the echo differs from what was sent"
                        );
                        client.received += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            done += usize::from(client.received == total);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{done} of {} exchanges done after {EXCHANGE_DEADLINE:?}",
                    clients.len()
                ),
            ));
        }
        sel.run_once(Some(Duration::from_millis(1)))?;
    }
    // Whatever the last writes left for the loop (a resume, a re-arm) runs now.
    for _ in 0..3 {
        sel.run_once(Some(Duration::ZERO))?;
    }
    Ok(())
}

/// One cycle's heap figures, in bytes.
#[derive(Debug)]
struct Cycle {
    /// The most any connection had buffered during the exchanges (not the burst).
    most_buffered: isize,
    /// Per connection, idle after its exchange (the table of clients not counted).
    idle_per_connection: isize,
    /// What the loop holds more after the burst than before it, all idle again.
    after_burst: isize,
    /// What the loop holds, every connection closed.
    closed: isize,
}

/// Raises the soft descriptor limit to what `connections` need (up to the hard limit);
/// returns how many connections fit under it.
fn room_for(connections: usize) -> io::Result<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let need = 2 * connections as u64 + 64;
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft < need {
        let raised = limit.maximum.map_or(need, |hard| hard.min(need));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        )?;
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    Ok(connections.min((soft.saturating_sub(64) / 2) as usize))
}

/// Runs `cycles` cycles of `connections` connections; returns their figures.
fn cycles(peers: Peers, connections: usize, cycles: usize) -> io::Result<Vec<Cycle>> {
    let burst = scaled(16 << 20, 1 << 20);
    let pattern = Pattern::new(PIECE);
    let in_flight = match peers {
        Peers::PingPong => 4096,
        Peers::Slow => usize::MAX,
    };
    let mut scratch = vec![0; 64 * 1024];
    let mut clients: Vec<Client> = Vec::with_capacity(connections);
    let mut figures = Vec::with_capacity(cycles);
    count_this_thread(true);

    let mut sel = Selector::new()?;
    let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
    let addr = listener.local_addr()?;
    let server: Server<TcpListener> =
        serve(&mut sel, listener, ServerOptions::default(), move |_, _| {
            Echo {
                send_buffer: (peers == Peers::Slow).then_some(4096),
            }
        })?;
    let open = |sel: &Selector| server.stats(sel).map_or(0, |s| s.open);
    // One connection first, for the loop's one-off allocations (its shared read buffer).
    clients.push(Client {
        stream: connect(addr, peers)?,
        sent: 0,
        received: 0,
    });
    exchange(
        &mut sel,
        &mut clients,
        EXCHANGE,
        in_flight,
        &pattern,
        &mut scratch,
    )?;
    clients.clear();
    run_until(&mut sel, "the first connection's end", |sel| {
        Ok(open(sel) == 0)
    })?;

    for _ in 0..cycles {
        let before = live();
        for i in 0..connections {
            clients.push(Client {
                stream: connect(addr, peers)?,
                sent: 0,
                received: 0,
            });
            if i % 64 == 63 {
                sel.run_once(Some(Duration::ZERO))?; // keep the backlog short
            }
        }
        run_until(&mut sel, "every accept", |sel| Ok(open(sel) == connections))?;
        MOST_BUFFERED.store(0, Ordering::Relaxed);
        exchange(
            &mut sel,
            &mut clients,
            EXCHANGE,
            in_flight,
            &pattern,
            &mut scratch,
        )?;
        let idle = live();
        let most_buffered = MOST_BUFFERED.load(Ordering::Relaxed);
        exchange(
            &mut sel,
            &mut clients[..1],
            burst,
            usize::MAX,
            &pattern,
            &mut scratch,
        )?;
        let after_burst = live();
        clients.clear();
        run_until(&mut sel, "every connection's end", |sel| Ok(open(sel) == 0))?;
        sel.run_once(Some(Duration::ZERO))?;
        figures.push(Cycle {
            most_buffered,
            idle_per_connection: (idle - before) / connections as isize,
            after_burst: after_burst - idle,
            closed: live(),
        });
    }
    drop(sel);
    count_this_thread(false);
    Ok(figures)
}

/// Runs the cycles and checks what holds whatever the peers: the burst's memory all comes back
/// (a drained write buffer is freed), and nothing grows from one cycle to the next.
fn run(peers: Peers) -> io::Result<Vec<Cycle>> {
    let _serial = serial();
    let wanted = scaled(2_000, 100);
    let connections = room_for(wanted)?;
    if connections < wanted {
        println!("only {connections} connections: the hard descriptor limit allows no more");
    }
    let figures = cycles(peers, connections, scaled(3, 3))?;
    println!("{peers:?}, {connections} connections: {figures:#?}");
    for cycle in &figures {
        assert!(
            cycle.after_burst <= 0,
            "{} bytes left over from the burst",
            cycle.after_burst
        );
    }
    for later in &figures[1..] {
        assert_eq!(
            later.closed, figures[0].closed,
            "the loop's memory with every connection closed grew from one cycle to the next"
        );
    }
    Ok(figures)
}

fn assert_idle_bytes_as_documented(figures: &[Cycle]) {
    for cycle in figures {
        assert!(
            cycle.idle_per_connection <= DOCUMENTED_IDLE_BYTES,
            "{} bytes per idle connection (one connection buffered {} bytes at most)",
            cycle.idle_per_connection,
            cycle.most_buffered,
        );
    }
}

#[test]
fn idle_connections_cost_the_documented_bytes_and_a_burst_gives_its_memory_back() -> io::Result<()>
{
    assert_idle_bytes_as_documented(&run(Peers::PingPong)?);
    Ok(())
}

#[test]
fn connections_whose_echo_was_buffered_cost_the_documented_bytes_once_idle() -> io::Result<()> {
    let figures = run(Peers::Slow)?;
    assert!(
        figures.iter().all(|cycle| cycle.most_buffered > 0),
        "the premise: the server had to buffer echoes"
    );
    assert_idle_bytes_as_documented(&figures);
    Ok(())
}
