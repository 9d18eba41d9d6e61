//! A UDP echo server: each datagram goes straight back to whoever sent it.
//!
//! ```text
//! cargo run --example udp_echo                     # listens on 127.0.0.1:8009
//! cargo run --example udp_echo -- '[::1]:9000'     # or anywhere else, IPv6 included
//! ```
//!
//! Try it with `nc -u 127.0.0.1 8009` (each line you type is one datagram, and comes back),
//! `socat - UDP:127.0.0.1:8009`, or from Python:
//!
//! ```text
//! python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);
//! s.sendto(b"hi", ("127.0.0.1", 8009)); print(s.recvfrom(100))'
//! ```
//!
//! No program of the Python notes works with datagrams; this is their `selectors` echo server
//! for UDP. Ctrl-C stops it and prints what it echoed. What the datagram layer does for it:
//! - **No framing, no connections.** Each `datagram` call gets one whole datagram (an empty
//!   one included) with its sender's address; there is no end of stream to watch for.
//! - **Sending never blocks.** When the socket is full, a reply is queued (up to a bound) or
//!   dropped, and [`Sent`] says which: a loaded echo server sheds load instead of stalling.
//! - **Errors stay per datagram.** An ICMP error about one client (its port closed) arrives at
//!   the protocol's `error` and the server goes on.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use selreactor::net::{DatagramContext, DatagramEndpoint, DatagramProtocol, Sent};
use selreactor::Selector;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The echo protocol: its state is its totals.
#[derive(Debug, Default)]
struct Echo {
    echoed: u64,
    dropped: u64,
}

impl DatagramProtocol for Echo {
    type Socket = UdpSocket;

    fn made(&mut self, endpoint: &mut DatagramContext<'_, Self>) -> io::Result<()> {
        println!("udp_echo: listening on {}", endpoint.socket().local_addr()?);
        Ok(())
    }

    fn datagram(
        &mut self,
        endpoint: &mut DatagramContext<'_, Self>,
        data: &[u8],
        from: SocketAddr,
    ) -> io::Result<()> {
        match endpoint.send_to(data, &from) {
            Ok(Sent::Sent | Sent::Queued) => self.echoed += 1,
            Ok(Sent::Dropped) => self.dropped += 1,
            // One client's trouble (EMSGSIZE, an unreachable host) is not the server's.
            Err(e) => eprintln!("cannot echo to {from}: {e}"),
        }
        Ok(())
    }

    fn error(&mut self, _: &mut DatagramContext<'_, Self>, error: io::Error) {
        eprintln!("error (the server goes on): {error}");
    }

    fn lost(&mut self, _: &mut DatagramContext<'_, Self>, reason: Option<io::Error>) {
        println!("echoed {} datagrams, dropped {}", self.echoed, self.dropped);
        if let Some(reason) = reason {
            eprintln!("ended by: {reason}");
        }
    }
}

fn main() -> ExitCode {
    let addr = match std::env::args().nth(1).as_deref() {
        None => SocketAddr::from(([127, 0, 0, 1], 8009)),
        Some("-h" | "--help") => {
            println!("usage: udp_echo [ADDRESS]   (default 127.0.0.1:8009)");
            return ExitCode::SUCCESS;
        }
        Some(arg) => match arg.parse() {
            Ok(addr) => addr,
            Err(_) => {
                eprintln!("udp_echo: {arg:?} is not IP:PORT");
                return ExitCode::from(2);
            }
        },
    };
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Echoes on `addr` until SIGINT or SIGTERM.
fn serve(addr: SocketAddr) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let echo = DatagramEndpoint::bind_udp(&mut sel, addr, Echo::default())?;
    sel.on_signals(&[SIGINT, SIGTERM], move |reg, _| {
        echo.abort(reg)?; // prints the totals (replies still queued are dropped)
        reg.stop();
        Ok(())
    })?;
    sel.run()
}
