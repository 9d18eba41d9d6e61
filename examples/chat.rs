//! A line chat server: each line a client sends goes to every other client. It is the Python
//! notes' `selectors` echo server grown into a chat: what one connection reads goes to the
//! others instead of back.
//!
//! ```text
//! cargo run --example chat                     # listens on 127.0.0.1:8010
//! cargo run --example chat -- 127.0.0.1:0      # or anywhere (0: any free port)
//! ```
//!
//! Open two or three `nc 127.0.0.1 8010` and type. A line longer than 4 KiB gets an error and
//! the connection closed. A client that stops reading is disconnected once 1 MiB waits for it,
//! the way IRC servers drop a client whose send queue is full, so it neither stalls the others
//! nor grows the server's memory: try
//! `python3 -c "import socket,time; s=socket.create_connection(('127.0.0.1',8010)); time.sleep(600)"`
//! next to `yes | nc 127.0.0.1 8010 > /dev/null`.
//!
//! What it shows:
//! - **The room is loop-wide state**, not an `Rc<RefCell<..>>`: `with_state` lends it together
//!   with the registry, so a broadcast can reach every member's transport by its `ConnId`.
//! - **`lost` is where a member leaves**, whatever ended it (a close, a reset, the backlog cap,
//!   an over-long line), so the room never holds a connection that is gone; and a stale id
//!   could never reach another client anyway: it fails with `NotFound`.
//! - **Framing with a bound**: [`Lines`] never holds more than one line's limit.

use std::collections::BTreeSet;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;

use selreactor::net::{
    serve, tcp_listener, ConnId, Lines, ListenOptions, Protocol, ServerOptions, Transport,
};
use selreactor::{Registry, Selector};

const DEFAULT_ADDR: &str = "127.0.0.1:8010";
/// The longest line a client may send.
const MAX_LINE: usize = 4096;
/// The most output that may wait for one client before it is dropped.
const MAX_BACKLOG: usize = 1 << 20;

/// Who is connected: the loop-wide state every member's protocol reaches.
#[derive(Default)]
struct Room {
    members: BTreeSet<ConnId<TcpStream>>,
}

impl Room {
    /// Sends `line` to every member but `from`, dropping members that fell too far behind.
    fn broadcast(&self, reg: &mut Registry, from: ConnId<TcpStream>, line: &[u8]) {
        for &member in self.members.iter().filter(|&&m| m != from) {
            let Ok(mut tx) = member.transport(reg) else {
                continue; // ended in this very turn; its `lost` is on its way
            };
            if tx.write(line).and_then(|()| tx.write(b"\n")).is_err()
                || tx.write_buffer_size() > MAX_BACKLOG
            {
                tx.abort();
            }
        }
    }
}

/// One client.
struct Member {
    lines: Lines,
}

impl Protocol for Member {
    fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        let id = tx.id();
        tx.registry()
            .state::<Room>()
            .expect("main inserts it")
            .members
            .insert(id);
        Ok(())
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        let from = tx.id();
        self.lines.feed(data, |line| {
            if tx.is_closing() {
                return Ok(());
            }
            match line {
                Ok(line) => tx
                    .registry()
                    .with_state(|room: &mut Room, reg| room.broadcast(reg, from, line)),
                Err(too_long) => {
                    tx.write(format!("error: {too_long}\n").as_bytes())?;
                    tx.close();
                }
            }
            Ok(())
        })
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, _: Option<io::Error>) {
        let id = tx.id();
        tx.registry()
            .state::<Room>()
            .expect("main inserts it")
            .members
            .remove(&id);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = match args.as_slice() {
        [] => DEFAULT_ADDR,
        [addr] if !addr.starts_with('-') => addr,
        _ => {
            eprintln!("usage: chat [ADDRESS]   (default {DEFAULT_ADDR})");
            return ExitCode::from(2);
        }
    };
    match run(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str) -> io::Result<()> {
    let addr = (addr.to_socket_addrs()?.next()).ok_or(io::ErrorKind::InvalidInput)?;
    let listener = tcp_listener(addr, &ListenOptions::default())?;
    let bound = listener.local_addr()?;
    let mut sel = Selector::new()?;
    sel.insert_state(Room::default());
    serve(&mut sel, listener, ServerOptions::default(), |_, _| {
        Member {
            lines: Lines::new(MAX_LINE),
        }
    })?;
    println!("chat: listening on {bound}");
    sel.run()
}
