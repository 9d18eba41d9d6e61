//! A selectors-style callback reactor.
//!
//! Register I/O sources (sockets, pipes, anything that owns a file descriptor) with an
//! [`Interest`] and a closure; [`Selector::run`] waits for readiness and calls each ready
//! source's closure. Closures get the [`Registry`], so they can register, modify and remove
//! sources (themselves included), schedule timers and deferred calls, and stop the loop.
//!
//! ```
//! use selreactor::{Interest, Selector};
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//!
//! let mut sel = Selector::new()?;
//! let (mut client, server) = UnixStream::pair()?;
//! server.set_nonblocking(true)?;
//!
//! // An echo: whatever arrives goes straight back; end of stream closes it.
//! sel.register(server, Interest::READ, |reg, mut conn, event| {
//!     let mut buf = [0; 1024];
//!     match conn.read(&mut buf)? {
//!         0 => reg.remove(event.key()),
//!         n => conn.write_all(&buf[..n]),
//!     }
//! })?;
//!
//! client.write_all(b"hello")?;
//! client.shutdown(std::net::Shutdown::Write)?;
//! sel.run()?; // returns when the connection is gone and nothing is left
//!
//! let mut echoed = String::new();
//! client.read_to_string(&mut echoed)?;
//! assert_eq!(echoed, "hello");
//! # Ok::<(), std::io::Error>(())
//! ```
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
//! - **Failures stay local.** A callback's `Err` removes that registration and goes to the
//!   [error handler](Registry::set_error_handler); the loop goes on. A panic removes it too,
//!   then unwinds out of `run`, leaving the selector usable.
//! - **One thread.** A [`Selector`] is driven from one thread. A [`Handle`] (`Send + Sync`)
//!   wakes it, queues closures onto it and stops it from others.
//! - **Fair iterations.** Each iteration runs the ready I/O callbacks, then the due timers, then
//!   the calls queued before it; what is queued during an iteration waits for the next.
//! - **Time and signals on the loop.** [`Registry::call_later`], [`Registry::call_every`] and
//!   [`Registry::call_soon`] schedule work with the same access as an I/O callback; timers never
//!   fire early and repeating ones do not drift. [`Registry::on_signals`] turns Unix signals
//!   into callbacks.
//! - **Linux first.** On Linux and Android each wait is a single `epoll_wait` (see `poller.rs`
//!   for how and why); other Unix systems go through `polling`'s portable wait, which CI
//!   builds and tests on Linux (`--cfg selreactor_portable_wait`) but no other OS has run.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod entry;
mod handle;
mod interest;
mod key;
mod poller;
mod registry;
mod run;
mod selector;
mod signal;
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
