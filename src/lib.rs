//! A selectors-style callback reactor.
//!
//! Register I/O sources (sockets, pipes, anything that owns a file descriptor) with an
//! [`Interest`] and a closure; [`Selector::run`] waits for readiness and calls each ready
//! source's closure. Closures get the [`Registry`], so they can register, modify and remove
//! sources (themselves included), schedule timers and deferred calls, and stop the loop. It is
//! Python's `selectors` module plus the callback half of `asyncio` (`call_later`, `call_soon`,
//! `call_soon_threadsafe`, signal handlers), with the selector owning what it polls.
//!
//! # A TCP echo server
//!
//! A listener whose callback accepts connections and registers each one with an echo callback;
//! a client on another thread talks to it while the loop runs.
//!
//! ```
//! use selreactor::{Event, Interest, Registry, Selector};
//! use std::io::{self, Read, Write};
//! use std::net::{Shutdown, TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! /// Accepts every waiting connection, and survives what `accept` may say.
//! fn accept(reg: &mut Registry, listener: &TcpListener, event: Event<TcpListener>) -> io::Result<()> {
//!     loop {
//!         match listener.accept() {
//!             Ok((conn, _peer)) => {
//!                 // Trouble with one connection must not end the listener: drop (close) it.
//!                 if conn.set_nonblocking(true).is_ok() {
//!                     let _ = reg.register(conn, Interest::READ, echo());
//!                 }
//!             }
//!             Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()), // all taken
//!             // A client gave up while waiting in the backlog: on to the next one.
//!             Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
//!             // Out of descriptors (EMFILE, ENFILE) or memory: the connection stays in the
//!             // backlog and the listener stays readable. Pause it rather than spin; retry soon.
//!             Err(_) => {
//!                 let key = event.key();
//!                 reg.modify(key, Interest::NONE)?;
//!                 reg.call_later(Duration::from_millis(100), move |reg| {
//!                     let _ = reg.modify(key, Interest::READ);
//!                 });
//!                 return Ok(());
//!             }
//!         }
//!     }
//! }
//!
//! /// One connection: read, write back, and keep what the socket did not take.
//! fn echo() -> impl FnMut(&mut Registry, &TcpStream, Event<TcpStream>) -> io::Result<()> {
//!     let mut pending = Vec::new();
//!     move |reg, mut conn, event| {
//!         if !pending.is_empty() {
//!             // Waiting for WRITE: flush, then read again once everything is out.
//!             match conn.write(&pending) {
//!                 Ok(n) => drop(pending.drain(..n)),
//!                 Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
//!                 Err(e) => return Err(e), // closes this connection only
//!             }
//!             if pending.is_empty() {
//!                 reg.modify(event.key(), Interest::READ)?;
//!             }
//!             return Ok(());
//!         }
//!         let mut buf = [0; 4096];
//!         let n = match conn.read(&mut buf) {
//!             Ok(0) => return reg.remove(event.key()), // the peer is done: close ours
//!             Ok(n) => n,
//!             Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()), // nothing now
//!             Err(e) => return Err(e),
//!         };
//!         let written = match conn.write(&buf[..n]) {
//!             Ok(written) => written,
//!             Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
//!             Err(e) => return Err(e),
//!         };
//!         if written < n {
//!             // Keep the rest, stop reading (back-pressure) and wait until it can be sent.
//!             pending.extend_from_slice(&buf[written..n]);
//!             reg.modify(event.key(), Interest::WRITE)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! listener.set_nonblocking(true)?;
//! let addr = listener.local_addr()?;
//! let mut sel = Selector::new()?;
//! sel.register(listener, Interest::READ, accept)?;
//!
//! let client = std::thread::spawn(move || -> io::Result<String> {
//!     let mut stream = TcpStream::connect(addr)?;
//!     stream.write_all(b"hello")?;
//!     stream.shutdown(Shutdown::Write)?;
//!     let mut echoed = String::new();
//!     stream.read_to_string(&mut echoed)?;
//!     Ok(echoed)
//! });
//! // A server calls `sel.run()` and serves until stopped; here, one iteration at a time
//! // until the client is done.
//! while !client.is_finished() {
//!     sel.run_once(Some(Duration::from_millis(10)))?;
//! }
//! assert_eq!(client.join().unwrap()?, "hello");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! That is the core: readiness and callbacks, with the buffering left to you. The [`net`] module
//! builds the rest on it, as asyncio's transports and protocols do: a [`Protocol`](net::Protocol)
//! per connection receives data and writes through a [`Transport`](net::Transport) that
//! buffers what the socket does not take, applies flow control, half-closes, and accepts with
//! the out-of-descriptors pause above; its page has the same echo server in a dozen lines.
//!
//! [`process`] runs child processes with their pipes as transports, and, with the default
//! `async` feature, `task` runs async/await tasks on the same loop, beside the callbacks.
//!
//! The repository's `examples/` directory has complete programs, each with a header saying how
//! to run it and what to try: servers on [`net`] (`echo`, `chat`, `udp_echo`), on the bare
//! core (`select_loop`, `echo_reuseport`: one selector per thread on a shared port) and as
//! tasks (`async_echo`); time (`timers`, `async_timers`), deferred calls (`round_robin`),
//! concurrent clients (`downloads`, `async_downloads`), `coroutines` and `subprocess`. Run one
//! with `cargo run --example echo`.
//!
//! # Transports, protocols and loop-wide state
//!
//! Most servers and clients need not write callbacks like the ones above: the [`net`] module
//! is asyncio's transports and protocols on this loop. [`net::serve`] runs a server,
//! [`net::connect_tcp`] a client; each connection's [`net::Protocol`] gets a
//! [`net::Transport`] that buffers writes, drives flow control and half-close, and reports
//! every ending once. Values the whole loop shares live in the registry by type
//! ([`Registry::insert_state`], [`Registry::with_state`]), so callbacks of every kind reach
//! them without `Rc<RefCell<..>>`. The `chat` example shows both.
//!
//! # The contract
//!
//! - **Level-triggered.** A ready source's callback runs on every iteration until the source is
//!   drained (a read returns `WouldBlock`) or its interest changes. A callback may do a bounded
//!   amount of work and return: it is called again. Keep `WRITE` interest only while there is
//!   something to write. Spurious wake-ups are possible (another callback may have drained the
//!   source first): treat `WouldBlock` as "nothing now", never as an error or end of stream.
//! - **Owned sources.** The selector owns each source while it is registered, and callbacks see
//!   it only by shared reference, so nothing can close it behind the poller's back.
//!   [`Registry::unregister`] hands it back; [`Registry::remove`] closes it.
//! - **Checked keys.** A [`Key`] names one registration, not a slot: once that registration is
//!   gone the key is rejected with [`NotFound`](std::io::ErrorKind::NotFound), even after its
//!   slot is reused, and an event already collected for it is dropped, never delivered to the
//!   slot's new occupant. Readiness is filtered by the interest as it stands when the callback
//!   is about to run.
//! - **Failures stay local.** A callback's error removes that registration only (see
//!   [below](#what-a-callbacks-err-does)); the loop goes on. A panic removes it too, then
//!   unwinds out of `run`, leaving the selector usable.
//! - **One thread.** A [`Selector`] is driven from one thread. A [`Handle`] (`Send + Sync`)
//!   wakes it, queues closures onto it and stops it from others.
//! - **Fair iterations.** Each iteration runs the ready I/O callbacks, then the due timers, then
//!   the calls queued before it; what is queued during an iteration waits for the next.
//! - **Time and signals on the loop.** [`Registry::call_later`], [`Registry::call_every`] and
//!   [`Registry::call_soon`] schedule work with the same access as an I/O callback; timers never
//!   fire early and repeating ones do not drift. [`Registry::on_signals`] turns Unix signals
//!   into callbacks.
//! - **Linux first.** On Linux and Android each wait is a single `epoll_wait` on the poller's
//!   own descriptor, and a wake-up from another thread costs one eventfd `write`. Other Unix
//!   systems (macOS and the BSDs: kqueue) go through `polling`'s portable wait; that path
//!   builds for them and is tested on Linux over epoll, but has not been run on another OS.
//!
//! # What a callback's `Err` does
//!
//! An I/O callback returns `io::Result<()>`, so `?` works inside it. What the loop does with
//! the result:
//!
//! - `Ok(())`: the registration stays, with whatever interest the callback left it.
//! - `Err` of kind [`WouldBlock`](std::io::ErrorKind::WouldBlock) or
//!   [`Interrupted`](std::io::ErrorKind::Interrupted): "nothing now". The registration stays
//!   and is called again when ready; the error is not reported. So `conn.read(&mut buf)?` on a
//!   spurious wake-up does no harm. (A `write_all` that meets `WouldBlock` has lost the part it
//!   had not sent, though: on a non-blocking socket, match `write`'s result and keep the rest.)
//! - Any other `Err`: the registration is removed and its source closed (the callback and
//!   what it captured are dropped), and the error goes to the
//!   [error handler](Registry::set_error_handler). Without one, it is logged through the
//!   [`log`](https://docs.rs/log) crate at level `error`. The loop goes on.
//!
//! For a **connection** that is usually right: `?` on a read or write that fails with a reset
//! or a broken pipe closes that connection, and the server carries on.
//!
//! For a **listener** it usually is not: `listener.accept()?` turns a passing failure into a
//! dead listener. `ECONNABORTED` (a client gave up while in the backlog) concerns one client;
//! `EMFILE`/`ENFILE` (out of descriptors) lasts until a connection closes. After `?` the
//! listener is closed, new clients are refused, and `run` returns once the last connection is
//! gone: a server that exits without a word. Match `accept`'s errors in the callback instead:
//! skip the aborted connection, and pause the listener ([`Registry::modify`] to
//! [`Interest::NONE`]) and resume it from a [`Registry::call_later`] timer when out of
//! descriptors, as the example above does. The same holds for any registration whose errors
//! are transient: handle them in the callback, and return `Err` only to end it.
//!
//! Timer and deferred callbacks return nothing; a signal callback
//! ([`Registry::on_signals`]) returns `io::Result<()>` like an I/O callback, and its `Err`
//! ends that watch the same way.
//!
//! # Child processes
//!
//! A child's pipes are sources like any other, with one conversion: [`std::process::ChildStdout`]
//! owns its descriptor but `&ChildStdout` is not `Read`, and a callback only gets `&T`. Turn it
//! into an [`OwnedFd`](std::os::fd::OwnedFd) and then a [`File`](std::fs::File), which is
//! `Read` through a shared reference too:
//!
//! ```
//! use selreactor::{Interest, Selector};
//! use std::fs::File;
//! use std::io::{self, Read};
//! use std::os::fd::OwnedFd;
//! use std::process::{Command, Stdio};
//!
//! let mut child = Command::new("echo")
//!     .arg("hello from a child")
//!     .stdout(Stdio::piped())
//!     .spawn()?;
//! let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped")));
//!
//! let mut sel = Selector::new()?;
//! sel.register(stdout, Interest::READ, |reg, mut pipe, event| {
//!     let mut buf = [0; 4096];
//!     // One read per call: the pipe is ready, so this read does not block even though the
//!     // pipe is in blocking mode. (Reading again until `WouldBlock` would need non-blocking
//!     // mode: `fcntl(fd, F_SETFL, O_NONBLOCK)`, e.g. through the `rustix` or `libc` crates.)
//!     match pipe.read(&mut buf) {
//!         Ok(0) => reg.remove(event.key()), // end of output: the child closed its end
//!         Ok(n) => {
//!             print!("{}", String::from_utf8_lossy(&buf[..n]));
//!             Ok(())
//!         }
//!         Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
//!         Err(e) => Err(e),
//!     }
//! })?;
//! sel.run()?; // returns once the pipe is closed and removed
//! assert!(child.wait()?.success()); // reap the child (its output has ended; it is exiting)
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `ChildStdin` and `ChildStderr` convert the same way; write to a child's stdin with `WRITE`
//! interest, and remove the registration (closing the pipe) to send it end of file.
//!
//! The transport layer does all of this for you: [`net::PipeReader`] and [`net::PipeWriter`]
//! wrap any pipe end (non-blocking, `Read`/`Write` through `&self`, no `SIGPIPE`) as a stream
//! for a [`net::Protocol`], and [`process::Subprocess`] spawns a child with its pipes as
//! transports, reports its exit to a callback and always reaps it.

#![doc(test(attr(deny(warnings))))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod claims;
mod entry;
mod handle;
mod interest;
mod key;
pub mod net;
mod poller;
pub mod process;
mod registry;
mod run;
mod selector;
mod signal;
mod state;
#[cfg(feature = "async")]
pub mod task;
mod timer;

pub use handle::Handle;
pub use interest::{Event, Interest, Readiness};
pub use key::{Key, Token};
pub use registry::{RegisterError, Registry};
pub use selector::Selector;
pub use signal::Signals;
pub use timer::TimerKey;

/// Compiles the README's example, so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The loop's owner and callbacks stay on one thread; handles cross threads.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Handle>();
    is_send_sync::<Key<std::net::TcpStream>>();
    is_send_sync::<TimerKey>();
};
