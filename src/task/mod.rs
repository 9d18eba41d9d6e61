//! async/await on the selector: tasks, async I/O and time, beside the callbacks.
//!
//! One loop runs both styles. [`Registry::spawn`](crate::Registry::spawn) (from the loop's
//! owner or any callback) and [`spawn`] (from inside a task) run futures as tasks on the
//! selector; [`Selector::block_on`](crate::Selector::block_on) and [`block_on`] drive a loop
//! until one future completes (asyncio's `run_until_complete` and `asyncio.run`). Tasks reach
//! the selector's registry with [`with_registry`], so they can register callback sources and
//! schedule timers and calls; [`Async`] wraps sockets and pipes for them, and [`sleep`],
//! [`timeout`] and [`interval`] put their timers on the selector's own timer heap.
//!
//! ```
//! use selreactor::task::{self, Async};
//! use futures_lite::{AsyncReadExt, AsyncWriteExt};
//! use std::net::{TcpListener, TcpStream};
//!
//! let echoed = task::block_on(async {
//!     let listener = Async::<TcpListener>::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     // The server: one task per connection, echoing until end of stream.
//!     task::spawn(async move {
//!         let (mut conn, _) = listener.accept().await?;
//!         let (mut buf, mut n) = ([0; 64], 1);
//!         while n > 0 {
//!             n = conn.read(&mut buf).await?;
//!             conn.write_all(&buf[..n]).await?;
//!         }
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .detach();
//!     let mut client = Async::<TcpStream>::connect(addr).await?;
//!     client.write_all(b"hello").await?;
//!     client.close().await?; // shutdown(Write): the server sees end of stream
//!     let mut echoed = String::new();
//!     client.read_to_string(&mut echoed).await?;
//!     Ok::<String, std::io::Error>(echoed)
//! })??;
//! assert_eq!(echoed, "hello");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How tasks run
//!
//! - **In the iteration, after the calls.** Each iteration runs the ready I/O callbacks, the
//!   due timers, the queued calls, then the tasks that were woken before that last step began,
//!   so a task woken by this iteration's I/O or timers runs in the same iteration. A task woken
//!   while tasks run (one that yields, say) waits for the next iteration: tasks cannot starve
//!   I/O, and the wait does not block while any task is queued.
//! - **On the loop's thread.** Futures need not be `Send`. Wakers are `Send + Sync`: a wake
//!   from another thread queues the task and wakes the loop's wait through the selector's
//!   cross-thread notification (as a [`Handle`](crate::Handle) does, and with the same
//!   guarantee that no wake-up is lost); a wake from the loop's own thread only queues it, on
//!   a queue only that thread touches (no syscall, no lock), and waking a task that is already
//!   queued does nothing (`async-task` coalesces). Tasks run in the order they were woken,
//!   whichever thread woke them.
//! - **Alive until done.** [`run`](crate::Selector::run) does not return while any task lives.
//!   Dropping a [`Task`] cancels it; [`Task::detach`] lets it run. Dropping the selector drops
//!   every task's future on its thread. A task woken from another thread after its selector is
//!   gone is leaked rather than dropped on the wrong thread.
//! - **Panics.** A panic in a task's future unwinds out of `run` (or `block_on`, or
//!   `run_once`), as a callback's does; that task is gone (awaiting its [`Task`] then panics),
//!   and the selector, with every other task, stays usable: call `run` again.
//! - **The registry.** While the loop runs tasks, a thread-local slot lends its registry to
//!   [`with_registry`] (taken out during the call, so never lent twice). That is how the
//!   futures here find their selector; outside a task they fail with a clear error or panic.
//! - **Memory.** A pending task costs about 130 bytes besides its future's own state (the
//!   `async-task` allocation, a waker in the selector's live set, its run-queue slot); an idle
//!   connection of a task-per-connection server (its task, [`Async`] and registration) about
//!   500 bytes besides the read buffer its task holds.
//! - **No nesting.** A `block_on` called while a loop runs on the thread (in a callback or a
//!   task) returns [`ResourceBusy`](std::io::ErrorKind::ResourceBusy) instead of blocking that
//!   loop.

mod block_on;
mod context;
mod executor;
mod io;
mod net;
mod time;

pub use block_on::block_on;
pub use context::with_registry;
pub(crate) use executor::Executor;
pub use executor::{spawn, Task};
pub use io::{Async, CloseWrite};
pub use time::{interval, sleep, sleep_until, timeout, timeout_at, Elapsed, Interval, Sleep};
