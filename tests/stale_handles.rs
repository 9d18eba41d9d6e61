//! A chat room keeps its members by `ConnId` in the loop's state; members leave in every way at
//! once: 50 clients chat in rounds while some reset their connections in the middle of a
//! broadcast, a client that never reads passes its backlog bound and is dropped, and newcomers
//! connect in the same turn of the loop and take the freed slots. Every surviving client gets
//! each other client's lines exactly once and in order, the room holds exactly the live
//! connections, and a write through the id of a member that has left fails with `NotFound`,
//! never reaching whoever took its slot.
//!
//! The loop and the clients (non-blocking sockets) run on the test's thread, so nothing can
//! hang and no helper can fail unseen; the randomness has a fixed seed.

#[path = "util/net.rs"]
mod net_util;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use selreactor::net::{
    serve, tcp_listener, ConnId, Lines, ListenOptions, Protocol, ServerOptions, Transport,
};
use selreactor::{Registry, Selector};
use socket2::{Domain, Socket, Type};

use net_util::{reset, DEADLINE};

const CLIENTS: usize = 50;
/// The most output that may wait for one member before the room drops it.
const MAX_BACKLOG: usize = 64 * 1024;
/// The server's send buffer per connection: small, so a backlog builds where the room sees it
/// (on loopback the kernel would otherwise hold megabytes for a reader that never reads).
const SEND_BUFFER: usize = 16 * 1024;
const MAX_LINE: usize = 1024;

/// The room: who is in it, and who has left.
#[derive(Default)]
struct Room {
    /// Each member's peer address (the test's client's local address).
    members: BTreeMap<ConnId<TcpStream>, SocketAddr>,
    /// Every member that has left, with its address: a careless room would still write to them.
    departed: Vec<(ConnId<TcpStream>, SocketAddr)>,
    /// Members dropped for falling too far behind.
    dropped_behind: usize,
    /// Members whose connection a broadcast's write found reset, and ended.
    ended_by_a_write: usize,
    /// Writes through a departed member's id that failed with `NotFound`.
    stale_refused: usize,
    /// Writes through a departed member's id that did anything else (none may).
    stale_other: Vec<String>,
}

impl Room {
    /// Sends `line` to every member but `from`, dropping those that fell too far behind; then
    /// tries every departed member's id, as a room that forgot to forget would.
    fn broadcast(&mut self, reg: &mut Registry, from: ConnId<TcpStream>, line: &[u8]) {
        for &member in self.members.keys().filter(|&&m| m != from) {
            let Ok(mut tx) = member.transport(reg) else {
                continue; // ended in this very turn; its `lost` is on its way
            };
            let wrote = tx.write(line).and_then(|()| tx.write(b"\n"));
            if tx.is_closing() {
                self.ended_by_a_write += 1; // a reset peer: the write failed and ended it
            } else if wrote.is_err() || tx.write_buffer_size() > MAX_BACKLOG {
                self.dropped_behind += 1;
                tx.abort();
            }
        }
        for &(gone, _) in &self.departed {
            match gone.transport(reg) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.stale_refused += 1,
                Err(e) => self.stale_other.push(format!("{gone:?}: {e}")),
                Ok(mut tx) => {
                    let _ = tx.write(b"stale\n");
                    self.stale_other
                        .push(format!("{gone:?} reached {:?}", tx.id()));
                }
            }
        }
    }
}

struct Member {
    lines: Lines,
    peer: SocketAddr,
}

impl Protocol for Member {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        socket2::SockRef::from(tx.get_ref()).set_send_buffer_size(SEND_BUFFER)?;
        let id = tx.id();
        let room = tx.registry().state::<Room>().expect("the test inserts it");
        assert!(room.members.insert(id, self.peer).is_none(), "a new id");
        Ok(())
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        let from = tx.id();
        self.lines.feed(data, |line| {
            let line = line.map_err(io::Error::other)?;
            tx.registry()
                .with_state(|room: &mut Room, reg| room.broadcast(reg, from, line));
            Ok(())
        })
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, _: Option<io::Error>) {
        let id = tx.id();
        let room = tx.registry().state::<Room>().expect("the test inserts it");
        let peer = room.members.remove(&id).expect("a member leaves once");
        room.departed.push((id, peer));
    }
}

/// xorshift64: the test's randomness, from a fixed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One client, on the test's side.
struct Client {
    /// `None` once it has reset its connection, or the server dropped it.
    stream: Option<TcpStream>,
    addr: SocketAddr,
    /// Whether it reads what it is sent (the slow one never does, nor sends).
    reads: bool,
    /// The round it joined in (it is in the room from the next one on).
    joined: usize,
    /// The round of its first line; it sends one line per round from then on, while it lasts.
    first_line: usize,
    /// Lines sent so far (line `k` went out in round `first_line + k`).
    sent: usize,
    /// The round it reset its connection in, if it did.
    reset_in: Option<usize>,
    /// Per sender, the numbers of its lines this client received, in arrival order.
    got: HashMap<usize, Vec<usize>>,
    unfinished: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, reads: bool, round: usize) -> io::Result<Client> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if !reads {
            socket.set_recv_buffer_size(4096)?;
        }
        socket.connect(&addr.into())?;
        socket.set_nonblocking(true)?;
        let stream: TcpStream = socket.into();
        Ok(Client {
            addr: stream.local_addr()?,
            stream: Some(stream),
            reads,
            joined: round,
            first_line: round + 1,
            sent: 0,
            reset_in: None,
            got: HashMap::new(),
            unfinished: Vec::new(),
        })
    }

    /// Whether it sends a line in `round`.
    fn sends_in(&self, round: usize) -> bool {
        self.reads && self.stream.is_some() && round >= self.first_line
    }

    /// Reads what has arrived, recording each line's sender and number.
    fn read(&mut self) -> io::Result<()> {
        let (Some(mut stream), true) = (self.stream.as_ref(), self.reads) else {
            return Ok(());
        };
        let mut buf = [0; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.unfinished.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let complete = self.unfinished.iter().rposition(|&b| b == b'\n');
        let Some(end) = complete else {
            return Ok(());
        };
        let text = String::from_utf8(self.unfinished.drain(..=end).collect()).expect("text");
        for line in text.lines() {
            let mut words = line.split(' ');
            let (Some(sender), Some(number), Some(pad), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                panic!("a line the room never sent: {line:?}");
            };
            assert!(
                pad.bytes().all(|b| b == b'x'),
                "a line cut or mixed: {line:?}"
            );
            let (sender, number) = (sender.parse().unwrap(), number.parse().unwrap());
            self.got.entry(sender).or_default().push(number);
        }
        Ok(())
    }
}

/// Checks what `receiver` got from `sender` by the end of `up_to_round`: consecutive numbers
/// (each line once, in order), including every line `sender` sent while both were surely in the
/// room.
fn check(clients: &[Client], receiver: usize, sender: usize, up_to_round: usize) {
    let (r, s) = (&clients[receiver], &clients[sender]);
    let got = r.got.get(&sender).map_or(&[][..], Vec::as_slice);
    if !s.reads {
        assert!(got.is_empty(), "the client that never sends sent {got:?}");
        return;
    }
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "client {receiver} got client {sender}'s lines out of order or twice: {got:?}"
    );
    assert!(
        got.last().is_none_or(|&last| last < s.sent),
        "client {receiver} got lines client {sender} never sent: {got:?}"
    );
    // The lines that must have arrived: sent after the receiver was in the room, before the
    // sender's reset round (whose line may or may not have been read before the reset), and
    // up to `up_to_round`.
    let last_sure_round = s
        .reset_in
        .map_or(up_to_round, |reset| reset - 1)
        .min(up_to_round);
    let first_sure_round = s.first_line.max(r.joined + 1);
    for round in first_sure_round..=last_sure_round {
        let number = round - s.first_line;
        assert!(
            got.contains(&number),
            "client {receiver} never got line {number} (round {round}) of client {sender}: {got:?}"
        );
    }
}

fn room(sel: &mut Selector) -> &mut Room {
    sel.state::<Room>().expect("the test inserts it")
}

/// Whether every reader has every line sent up to `round` by every sender still there.
fn round_complete(clients: &[Client], round: usize) -> bool {
    clients.iter().enumerate().all(|(r, receiver)| {
        !receiver.reads
            || receiver.stream.is_none()
            || clients.iter().enumerate().all(|(s, sender)| {
                s == r
                    || !sender.sends_in(round)
                    || receiver.joined >= round
                    || receiver
                        .got
                        .get(&s)
                        .and_then(|got| got.last())
                        .is_some_and(|&n| n + 1 == sender.sent)
            })
    })
}

#[test]
fn departed_members_never_reach_anyone_and_everyone_left_gets_every_line_once() -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.insert_state(Room::default());
    let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
    let addr = listener.local_addr()?;
    serve(&mut sel, listener, ServerOptions::default(), |_, peer| {
        Member {
            lines: Lines::new(MAX_LINE),
            peer: *peer,
        }
    })?;
    let mut rng = Rng(0x5EED_CAFE_F00D_D00D);

    // Client 0 never reads.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(Client::connect(addr, i != 0, 0)?);
    }
    net_util::run_until(&mut sel, "everyone in the room", |sel| {
        Ok(room(sel).members.len() == CLIENTS)
    })?;

    let mut round = 0;
    let mut slow_dropped_in = None;
    while round < 30 || slow_dropped_in.is_none() {
        round += 1;
        assert!(round < 500, "the reader that never reads was never dropped");
        for (i, client) in clients.iter_mut().enumerate() {
            if client.sends_in(round) {
                let pad = "x".repeat(rng.below(300));
                let line = format!("{i} {} {pad}\n", client.sent);
                let mut stream = client.stream.as_ref().unwrap();
                stream.write_all(line.as_bytes())?; // a few hundred bytes: the socket takes them
                client.sent += 1;
            }
        }
        // Every third round, two random original members reset their connections right after
        // sending (the room meets them mid-broadcast) and two newcomers connect, all before the
        // loop turns again.
        if round % 3 == 0 && round <= 30 {
            for _ in 0..2 {
                let victim = 1 + rng.below(CLIENTS - 1);
                if let Some(stream) = clients[victim].stream.take() {
                    reset(stream)?;
                    clients[victim].reset_in = Some(round);
                }
            }
            for _ in 0..2 {
                clients.push(Client::connect(addr, true, round)?);
            }
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            for client in clients.iter_mut() {
                client.read()?;
            }
            // The reader that never reads leaves the room when its backlog passes the bound.
            let members = &room(&mut sel).members;
            if slow_dropped_in.is_none() && !members.values().any(|&a| a == clients[0].addr) {
                slow_dropped_in = Some(round);
                clients[0].stream = None;
            }
            let in_room = clients.iter().filter(|c| c.stream.is_some()).count();
            if round_complete(&clients, round) && room(&mut sel).members.len() == in_room {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: waited {DEADLINE:?}; room {}, clients {in_room}",
                room(&mut sel).members.len()
            );
            sel.run_once(Some(Duration::from_millis(10)))?;
        }
        // From outside any callback too: every departed id is refused.
        for &(gone, _) in &room(&mut sel).departed.clone() {
            assert!(!gone.is_open(&sel));
            let error = gone.transport(&mut sel).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotFound);
        }
    }

    for receiver in 0..clients.len() {
        if clients[receiver].reads && clients[receiver].stream.is_some() {
            for sender in (0..clients.len()).filter(|&s| s != receiver) {
                check(&clients, receiver, sender, round);
            }
        }
    }
    let room = room(&mut sel);
    assert!(room.stale_other.is_empty(), "{:?}", room.stale_other);
    assert!(
        room.stale_refused > 0,
        "no write went through a departed id"
    );
    assert!(
        room.ended_by_a_write > 0,
        "no reset was met in the middle of a broadcast"
    );
    let resets = clients.iter().filter(|c| c.reset_in.is_some()).count();
    assert_eq!(
        room.departed.len(),
        resets + 1,
        "the resets and the slow reader"
    );
    // Newcomers took departed members' slots, so the refusals above were tested against
    // live occupants: a slot index is a token's, as its `Debug` form shows (`ConnId(#7v2)`).
    let slot = |id: ConnId<TcpStream>| format!("{id:?}").split('v').next().unwrap().to_owned();
    let departed: Vec<String> = room.departed.iter().map(|&(id, _)| slot(id)).collect();
    let reused = room
        .members
        .keys()
        .filter(|&&id| departed.contains(&slot(id)))
        .count();
    assert!(reused > 0, "no newcomer took a departed member's slot");
    println!(
        "{round} rounds; the slow reader dropped in round {slow_dropped_in:?}; {resets} resets; \
         {} met mid-broadcast; {} stale writes refused; {reused} members in departed members' \
         slots",
        room.ended_by_a_write, room.stale_refused
    );
    Ok(())
}
