//! An echo server: the `selectors` example from the Python notes, on the transport layer.
//!
//! ```text
//! cargo run --release --example echo                     # listens on 127.0.0.1:8008
//! cargo run --release --example echo -- 127.0.0.1:0      # or anywhere (0: any free port)
//! cargo run --release --example echo -- --quiet          # no per-connection lines
//! ```
//!
//! Poke it with `nc 127.0.0.1 8008` (type lines; Ctrl-D half-closes, and the server closes once
//! it has sent back everything), or `head -c 100M /dev/zero | nc -N 127.0.0.1 8008 | wc -c`.
//! A client that sends without reading,
//! `python3 -c "import socket; socket.create_connection(('127.0.0.1', 8008)).sendall(bytes(1 << 30))"`,
//! stalls once the server stops reading from it, and everyone else is still served.
//! Ctrl-C or `kill -TERM` ends every connection and prints the totals.
//!
//! [`selreactor::net`] does the hard parts, so this file is only the policy:
//! - **Back-pressure.** `write` sends what the socket takes and buffers the rest. When the
//!   buffer passes its high-water mark the transport calls `pause_writing`, and `Echo` stops
//!   reading from that client until `resume_writing`: a client that never reads costs a bounded
//!   buffer, not all the memory there is.
//! - **Half-close.** `eof` keeps the default (`false`): the transport flushes the echo still
//!   owed, then closes.
//! - **Running out of descriptors.** On `EMFILE` the server stops accepting, and starts again
//!   as soon as one of its connections closes. Writes pass `MSG_NOSIGNAL`, so a vanished peer
//!   is a `lost` with an error, never a `SIGPIPE`.
//! - **Totals without shared cells.** The counters live in the selector's state; each
//!   connection adds its own when `lost` tells it it is over.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use selreactor::net::{serve, tcp_listener, ListenOptions, Protocol, ServerOptions, Transport};
use selreactor::Selector;
use signal_hook::consts::{SIGINT, SIGTERM};

const DEFAULT_ADDR: &str = "127.0.0.1:8008";

/// The server's counters, kept in the selector's state.
#[derive(Default)]
struct Totals {
    connections: u64,
    bytes: u64,
}

/// One connection.
struct Echo {
    peer: SocketAddr,
    bytes: u64,
    quiet: bool,
}

impl Protocol for Echo {
    fn made(&mut self, _: &mut Transport<'_, TcpStream>) -> io::Result<()> {
        if !self.quiet {
            println!("echo: {} connected", self.peer);
        }
        Ok(())
    }

    fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
        self.bytes += data.len() as u64;
        tx.write(data)
    }

    fn pause_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.pause_reading();
    }

    fn resume_writing(&mut self, tx: &mut Transport<'_, TcpStream>) {
        tx.resume_reading();
    }

    fn lost(&mut self, tx: &mut Transport<'_, TcpStream>, reason: Option<io::Error>) {
        let totals = tx.registry().state::<Totals>().expect("main inserts it");
        totals.connections += 1;
        totals.bytes += self.bytes;
        if !self.quiet {
            let how = reason.map_or_else(|| "closed".to_string(), |e| format!("failed ({e})"));
            println!("echo: {} {how} after {} bytes", self.peer, self.bytes);
        }
    }
}

fn main() -> ExitCode {
    let mut quiet = false;
    let mut addr = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quiet" | "-q" => quiet = true,
            _ if addr.is_none() && !arg.starts_with('-') => addr = Some(arg),
            _ => {
                eprintln!("usage: echo [ADDRESS] [--quiet]   (default {DEFAULT_ADDR})");
                return ExitCode::from(2);
            }
        }
    }
    match run(addr.as_deref().unwrap_or(DEFAULT_ADDR), quiet) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str, quiet: bool) -> Result<(), String> {
    let addr = (addr.to_socket_addrs().ok().and_then(|mut a| a.next()))
        .ok_or_else(|| format!("{addr:?} is not an address (try {DEFAULT_ADDR})"))?;
    let listener = tcp_listener(addr, &ListenOptions::default())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let mut sel = Selector::new().map_err(|e| format!("cannot create the selector: {e}"))?;
    sel.insert_state(Totals::default());
    let server = serve(
        &mut sel,
        listener,
        ServerOptions::default(),
        move |_, &peer| Echo {
            peer,
            bytes: 0,
            quiet,
        },
    )
    .map_err(|e| format!("cannot serve: {e}"))?;
    sel.on_signals(&[SIGINT, SIGTERM], move |reg, _| {
        eprintln!("echo: stopping");
        server.close_with_connections(reg);
        reg.stop();
        Ok(())
    })
    .map_err(|e| format!("cannot watch signals: {e}"))?;
    println!("echo: listening on {bound}");
    sel.run().map_err(|e| format!("the loop failed: {e}"))?;
    // The connections just ended hear `lost` from calls queued for the next turn.
    let _ = sel.run_once(Some(Duration::ZERO));
    let totals = sel.state::<Totals>().expect("inserted above");
    println!(
        "echo: served {} connections, {} bytes",
        totals.connections, totals.bytes
    );
    Ok(())
}
