//! Streams as users write them: servers, clients and buffered, flow-controlled transports,
//! the callback layer asyncio calls transports and protocols.
//!
//! A [`Protocol`] is the per-connection value you write; the [`Transport`] each of its methods
//! receives writes (buffering what the socket does not take), ends, pauses and tunes the
//! connection, and lends the [`Registry`](crate::Registry) for everything else (timers, other
//! connections by [`ConnId`], loop-wide [state](crate::Registry::state)). [`serve`] runs a
//! server, [`connect_tcp`] a client, [`start`] drives any other stream (a pipe end, say);
//! [`Lines`] splits input into bounded lines. [`PipeReader`] and [`PipeWriter`] make any
//! pipe end (a child's stdout, stdin) such a stream; [`crate::process::Subprocess`] spawns a
//! child with its pipes as transports. [`DatagramEndpoint`] is the datagram counterpart (UDP
//! and Unix datagram sockets).
//!
//! # What a transport promises
//!
//! - **Writes never block and never drop.** With nothing buffered, `write` goes straight to the
//!   socket (one syscall, no copy); what it does not take is buffered, and the connection waits
//!   for `WRITE` only while something is.
//! - **Flow control.** Past the high-water mark (64 KiB by default) the protocol's
//!   `pause_writing` runs; at the low one (16 KiB), `resume_writing`. Reading can be paused.
//! - **Exactly one `lost`**, after `made`, for every ending, with the reason; the protocol is
//!   dropped right after it. No protocol method runs inside another of the same protocol; what
//!   one connection's callback does to another reaches that one's protocol from a deferred call.
//! - **No `SIGPIPE`**: socket writes pass `MSG_NOSIGNAL`; making a [`PipeWriter`] installs a
//!   do-nothing `SIGPIPE` handler once per process, so a pipe write fails with `BrokenPipe`.
//! - **Memory.** One 64 KiB read buffer serves every connection of a loop (callbacks run one
//!   at a time), so an idle connection holds no read buffer; its write buffer is freed as soon
//!   as it has been flushed, so an idle connection holds none either. What an idle connection
//!   does hold is its transport state, its protocol value, its registration and a slot in the
//!   loop's table of live connections: about 220 heap bytes with a 16-byte protocol, at most
//!   300 while the loop's tables grow, measured over 2,000 idle connections on Linux x86-64 (a
//!   bare registration costs about 140).
//!   Steady-state reading and writing allocate nothing.
//!
//! # Examples
//!
//! An echo server that answers until its peer ends the stream:
//!
//! ```no_run
//! use selreactor::net::{serve, tcp_listener, ListenOptions, Protocol, ServerOptions, Transport};
//! use selreactor::Selector;
//! use std::io;
//! use std::net::TcpStream;
//!
//! struct Echo;
//!
//! impl Protocol for Echo {
//!     fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
//!         tx.write(data)
//!     }
//! }
//!
//! let mut sel = Selector::new()?;
//! let listener = tcp_listener("127.0.0.1:8008".parse().unwrap(), &ListenOptions::default())?;
//! serve(&mut sel, listener, ServerOptions::default(), |_, _| Echo)?;
//! sel.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod connect;
mod datagram;
mod lines;
mod pipe;
mod server;
mod socket;
mod stream;
mod transport;

pub use connect::{connect_tcp, connect_unix, start};
pub use datagram::{
    AddrOf, DatagramContext, DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramSocket,
    Sent, DATAGRAM_OVERHEAD, MAX_RECV_BUFFER,
};
pub use lines::{LineTooLong, Lines};
pub use pipe::{pipe, PipeReader, PipeWriter};
pub use server::{serve, Listener, Server, ServerOptions, ServerStats};
pub use socket::{
    finish_connect, start_connect, start_connect_unix, tcp_listener, unix_listener, ListenOptions,
};
pub use stream::ByteStream;
pub use transport::{ConnId, Protocol, Transport, DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
