//! `block_on`: asyncio's `run_until_complete`, driving a selector until one future is done.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::handle::Shared;
use crate::run::Running;
use crate::selector::Selector;
use crate::task::context;

/// A number unique to the calling thread among the threads alive now: the address of a
/// thread-local, which costs no syscall and no reference count to read.
fn thread_mark() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|mark| mark as *const u8 as usize)
}

/// The waker of the future `block_on` drives.
struct MainWaker {
    woken: AtomicBool,
    loop_thread: usize,
    shared: Arc<Shared>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before signalling: the loop checks the flag between iterations, and the signal
        // ends a wait that began before the flag was set.
        if !self.woken.swap(true, Ordering::SeqCst) && thread_mark() != self.loop_thread {
            let _ = self.shared.signal();
        }
    }
}

fn nested() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "block_on called while a selector's loop is running on this thread (from a callback or \
         a task): it would block that loop; spawn the future or await it instead",
    )
}

impl Selector {
    /// Runs the loop until `future` completes, and returns its output: asyncio's
    /// `run_until_complete`. The future may borrow from the caller and need not be `Send`;
    /// inside it (and in the tasks it spawns) the `task` module's functions reach this
    /// selector. Callbacks, timers and other tasks run meanwhile, as in [`run`](Selector::run);
    /// tasks still pending when the future completes stay spawned, for a later `run` or
    /// `block_on`. A [`stop`](crate::Registry::stop) requested meanwhile is discarded: it ends
    /// `run`, not `block_on`.
    ///
    /// # Errors
    ///
    /// - [`ResourceBusy`](io::ErrorKind::ResourceBusy) if called while a loop is running on this
    ///   thread (from one of its callbacks or tasks): blocking there would stall that loop, so
    ///   it is refused (the future is dropped without being polled);
    /// - the OS's errors from waiting, as for `run`.
    ///
    /// # Panics
    ///
    /// A panic in the future, a task or a callback unwinds out of `block_on`, leaving the
    /// selector usable.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::{task, Selector};
    /// use std::time::{Duration, Instant};
    ///
    /// let mut sel = Selector::new()?;
    /// let start = Instant::now();
    /// let slept = sel.block_on(async {
    ///     task::sleep(Duration::from_millis(10)).await;
    ///     start.elapsed()
    /// })?;
    /// assert!(slept >= Duration::from_millis(10));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn block_on<F: Future>(&mut self, future: F) -> io::Result<F::Output> {
        if Running::on_this_thread() {
            return Err(nested());
        }
        let _running = Running::enter();
        let main = Arc::new(MainWaker {
            woken: AtomicBool::new(true),
            loop_thread: thread_mark(),
            shared: Arc::clone(&self.shared),
        });
        let waker = Waker::from(Arc::clone(&main));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if main.woken.swap(false, Ordering::SeqCst) {
                let polled = context::enter(self, || future.as_mut().poll(&mut cx));
                if let Poll::Ready(output) = polled {
                    return Ok(output);
                }
            }
            self.stop_requested = false;
            // Woken during its own poll (a yield): poll again after one non-blocking turn.
            let timeout = main.woken.load(Ordering::SeqCst).then_some(Duration::ZERO);
            self.run_once(timeout)?;
        }
    }
}

/// Runs `future` to completion on a new selector, then drops the selector with any tasks still
/// pending: asyncio's `asyncio.run`.
///
/// ```
/// use selreactor::task;
///
/// let greeting = task::block_on(async { "hello" })?;
/// assert_eq!(greeting, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// As for [`Selector::block_on`], and the OS's error creating the selector.
pub fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
    if Running::on_this_thread() {
        return Err(nested());
    }
    Selector::new()?.block_on(future)
}
