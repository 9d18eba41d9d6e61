//! The seed's generator-based select loop server, as one small state machine per connection.
//!
//! ```text
//! cargo run --example select_loop               # serves on 127.0.0.1:5001 until killed
//! cargo run --example select_loop -- --selftest # serves on a free port, runs a few clients
//!                                               # against itself, checks replies, exits 0
//! ```
//!
//! Poke it with `nc 127.0.0.1 5001`: every request (whatever one read returns) is answered with
//! `Hello world\n`. The seed's generators alternate between "wait to read" and "wait to write";
//! here each connection's callback owns a [`State`] and switches its interest to match:
//! `Reading` (interest `READ`) → a request arrives → `Writing` (interest `WRITE`, the reply
//! partly sent) → the reply is out → `Reading` again. A read of 0 closes the connection.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use selreactor::{Interest, Registry, Selector};

const RESPONSE: &[u8] = b"Hello world\n";

/// Where a connection is in its request/reply cycle.
enum State {
    Reading,
    /// How much of the reply has been sent.
    Writing {
        sent: usize,
    },
}

/// What the server did, for the self-test.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub connections: usize,
    pub replies: usize,
}

/// Accepts connections on `listener` and serves them. With `stop_after`, stops once that many
/// connections have closed; without, serves forever.
pub fn serve(listener: TcpListener, stop_after: Option<usize>) -> io::Result<Served> {
    listener.set_nonblocking(true)?;
    let mut sel = Selector::new()?;
    let served = Rc::new(Cell::new(Served::default()));
    let s = Rc::clone(&served);
    sel.register(listener, Interest::READ, move |reg, listener, _| {
        loop {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    stream.set_nonblocking(true)?;
                    let s = Rc::clone(&s);
                    reg.register(stream, Interest::READ, connection(s, stop_after))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The client gave up before we accepted it: not the listener's problem.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e),
            }
        }
    })?;
    sel.run()?;
    Ok(served.get())
}

/// One connection's callback: the state machine.
fn connection(
    served: Rc<Cell<Served>>,
    stop_after: Option<usize>,
) -> impl FnMut(&mut Registry, &TcpStream, selreactor::Event<TcpStream>) -> io::Result<()> {
    let mut state = State::Reading;
    move |reg, mut stream, event| {
        match &mut state {
            State::Reading => {
                let mut request = [0; 4096];
                match stream.read(&mut request) {
                    Ok(0) => {
                        let mut totals = served.get();
                        totals.connections += 1;
                        served.set(totals);
                        if stop_after.is_some_and(|n| totals.connections >= n) {
                            reg.stop();
                        }
                        return reg.remove(event.key());
                    }
                    Ok(_) => {
                        state = State::Writing { sent: 0 };
                        reg.modify(event.key(), Interest::WRITE)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            State::Writing { sent } => match stream.write(&RESPONSE[*sent..]) {
                Ok(n) => {
                    *sent += n;
                    if *sent == RESPONSE.len() {
                        let mut totals = served.get();
                        totals.replies += 1;
                        served.set(totals);
                        state = State::Reading;
                        reg.modify(event.key(), Interest::READ)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }
}

/// One blocking client: sends `requests` requests one at a time, checks every reply.
fn client(addr: SocketAddr, requests: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    for i in 0..requests {
        stream.write_all(format!("request {i}\n").as_bytes())?;
        let mut reply = [0; RESPONSE.len()];
        stream.read_exact(&mut reply)?;
        if reply != RESPONSE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"));
        }
    }
    stream.shutdown(Shutdown::Write)?;
    // The server closes after our half-close; nothing more may arrive.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unasked-for bytes",
        ));
    }
    Ok(())
}

/// Serves `clients` concurrent clients of `requests` requests each on a free loopback port;
/// returns what the server counted once they are all done.
pub fn selftest(clients: usize, requests: usize) -> io::Result<Served> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let threads: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || client(addr, requests)))
        .collect();
    let served = serve(listener, Some(clients))?;
    for thread in threads {
        thread.join().expect("client thread")?;
    }
    Ok(served)
}

#[allow(dead_code)] // a test includes this file as a module and calls `selftest`
fn main() -> io::Result<()> {
    if std::env::args().any(|arg| arg == "--selftest") {
        let (clients, requests) = (5, 3);
        let served = selftest(clients, requests)?;
        println!("{served:?}");
        assert_eq!(served.connections, clients);
        assert_eq!(served.replies, clients * requests);
        println!("selftest passed");
        return Ok(());
    }
    let listener = TcpListener::bind("127.0.0.1:5001")?;
    println!("serving on {}", listener.local_addr()?);
    serve(listener, None).map(drop)
}
