//! A request/reply server as one small state machine per connection: the Python notes'
//! generator-based `select` server ("Async на генераторах").
//!
//! ```text
//! cargo run --example select_loop                   # serves on 127.0.0.1:5001
//! cargo run --example select_loop -- 127.0.0.1:0   # or anywhere else (0: any free port)
//! ```
//!
//! Try it: `nc 127.0.0.1 5001`, then type lines: every request (whatever one read returns) is
//! answered with `Hello world`. Ctrl-D (or closing `nc`) ends the connection. Several at once:
//! `for i in 1 2 3; do echo hi | nc -N 127.0.0.1 5001 & done; wait`.
//!
//! The notes' generators alternate between "wait to read" and "wait to write"; here each
//! connection's callback owns a [`State`] and switches its interest to match: `Reading`
//! (interest `READ`) → a request arrives → `Writing` (interest `WRITE`, the reply partly sent)
//! → the reply is out → `Reading` again. A read of 0 closes the connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use selreactor::{Event, Interest, Registry, Selector};

const RESPONSE: &[u8] = b"Hello world\n";

/// Where a connection is in its request/reply cycle.
enum State {
    Reading,
    /// How much of the reply has been sent.
    Writing {
        sent: usize,
    },
}

/// One connection's callback: the state machine.
fn connection() -> impl FnMut(&mut Registry, &TcpStream, Event<TcpStream>) -> io::Result<()> {
    let mut state = State::Reading;
    move |reg, mut stream, event| {
        match &mut state {
            State::Reading => match stream.read(&mut [0; 4096]) {
                Ok(0) => return reg.remove(event.key()),
                Ok(_) => {
                    state = State::Writing { sent: 0 };
                    reg.modify(event.key(), Interest::WRITE)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e), // the loop closes this connection
            },
            State::Writing { sent } => match stream.write(&RESPONSE[*sent..]) {
                Ok(n) => {
                    *sent += n;
                    if *sent == RESPONSE.len() {
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

fn start(reg: &mut Registry, stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    reg.register(stream, Interest::READ, connection())?;
    Ok(())
}

/// The listener's callback: accepts until `WouldBlock`, and survives transient failures.
fn accept(reg: &mut Registry, listener: &TcpListener, event: Event<TcpListener>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                println!("connection from {peer}");
                // A failure here loses this connection (dropping it closes it), not the server.
                if let Err(e) = start(reg, stream) {
                    eprintln!("select_loop: {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // The client gave up before we accepted it: try the next one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            // Out of descriptors (EMFILE) or similar: the connection stays in the backlog and
            // the listener stays readable, so pause it for a while rather than spin on it.
            Err(e) => {
                eprintln!("select_loop: accept: {e}; pausing for 100 ms");
                let key = event.key();
                reg.modify(key, Interest::NONE)?;
                reg.call_later(Duration::from_millis(100), move |reg| {
                    let _ = reg.modify(key, Interest::READ);
                });
                return Ok(());
            }
        }
    }
}

fn main() -> ExitCode {
    let addr = match std::env::args().nth(1) {
        None => "127.0.0.1:5001".to_string(),
        Some(arg) if arg == "-h" || arg == "--help" => {
            println!("usage: select_loop [ADDRESS]   (default 127.0.0.1:5001)");
            return ExitCode::SUCCESS;
        }
        Some(arg) => arg,
    };
    match serve(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("select_loop: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let mut sel = Selector::new()?;
    sel.register(listener, Interest::READ, accept)?;
    sel.run()
}
