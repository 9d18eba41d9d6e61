//! The executor: futures become `async-task` tasks whose runnables queue for the loop.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use async_task::Runnable;
use slab::Slab;

use crate::handle::Shared;
use crate::registry::Registry;
use crate::task::context;

/// The part of a [`Registry`] that runs tasks.
pub(crate) struct Executor {
    queue: Arc<RunQueue>,
    /// A waker for each live task (spawned, not yet finished or dropped). Dropping the selector
    /// wakes them all, so that every task's future is dropped here, on the loop's thread, even
    /// one that nothing else would ever wake (two tasks awaiting each other, say).
    live: Rc<RefCell<Slab<Waker>>>,
}

/// Runnables waiting for the loop, shared with every waker of this selector's tasks.
struct RunQueue {
    runnables: Mutex<VecDeque<Runnable>>,
    /// The queue's length, readable without the lock: the loop checks it on every iteration.
    len: AtomicUsize,
    /// The loop's thread ([`thread_mark`]): a wake from it needs no notification, since the
    /// loop checks the queue before it next waits.
    loop_thread: usize,
    /// To wake the loop's wait when another thread schedules a task.
    shared: Arc<Shared>,
}

impl RunQueue {
    /// The schedule function of every task: queue it, and wake the loop if this is another
    /// thread. It never drops the runnable, so a `!Send` future is never dropped off its thread.
    fn push(&self, runnable: Runnable) {
        {
            let mut runnables = self.lock();
            runnables.push_back(runnable);
            self.len.store(runnables.len(), Ordering::SeqCst);
        }
        if thread_mark() != self.loop_thread {
            // Fails only once the selector is dropped: the runnable then stays queued and its
            // task is leaked, never dropped on this thread.
            let _ = self.shared.signal();
        }
    }

    fn pop(&self) -> Option<Runnable> {
        let mut runnables = self.lock();
        let runnable = runnables.pop_front();
        self.len.store(runnables.len(), Ordering::SeqCst);
        runnable
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Runnable>> {
        self.runnables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A number unique to the calling thread among the threads alive now: the address of a
/// thread-local, which costs no syscall and no reference count to read.
pub(crate) fn thread_mark() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|mark| mark as *const u8 as usize)
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>) -> Executor {
        Executor {
            queue: Arc::new(RunQueue {
                runnables: Mutex::new(VecDeque::new()),
                len: AtomicUsize::new(0),
                loop_thread: thread_mark(),
                shared,
            }),
            live: Rc::new(RefCell::new(Slab::new())),
        }
    }

    #[inline]
    pub(crate) fn has_queued(&self) -> bool {
        self.queue.len.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn has_live(&self) -> bool {
        self.has_queued() || !self.live.borrow().is_empty()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Wake every live task, then drop the runnables: that drops their futures, which may
        // drop wakers that schedule other tasks one last time; repeat until nothing is left.
        loop {
            let wakers: Vec<Waker> = self.live.borrow().iter().map(|(_, w)| w.clone()).collect();
            wakers.into_iter().for_each(Waker::wake);
            let mut dropped = false;
            while let Some(runnable) = self.queue.pop() {
                drop(runnable);
                dropped = true;
            }
            if !dropped {
                break;
            }
        }
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("live", &self.live.borrow().len())
            .field("queued", &self.queue.len.load(Ordering::Relaxed))
            .finish()
    }
}

/// Removes a task from the live set when its future finishes or is dropped.
struct Live {
    tasks: Rc<RefCell<Slab<Waker>>>,
    index: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.tasks.borrow_mut().try_remove(self.index);
    }
}

impl Registry {
    /// Spawns `future` as a task on this selector and returns its [`Task`] handle.
    ///
    /// The task first runs in the loop's next iteration, then whenever it is woken, always on
    /// the loop's thread, so the future need not be `Send`. [`run`](crate::Selector::run) does
    /// not return while tasks are alive. Within a task, spawn with [`task::spawn`](spawn).
    ///
    /// ```
    /// use selreactor::Selector;
    ///
    /// let mut sel = Selector::new()?;
    /// let answer = sel.spawn(async { 6 * 7 });
    /// assert_eq!(sel.block_on(answer)?, 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F>(&mut self, future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let tasks = &self.tasks;
        let mut live = tasks.live.borrow_mut();
        let entry = live.vacant_entry();
        let guard = Live {
            tasks: Rc::clone(&tasks.live),
            index: entry.key(),
        };
        let future = async move {
            let _live = guard;
            future.await
        };
        let queue = Arc::clone(&tasks.queue);
        let (runnable, task) = async_task::spawn_local(future, move |r| queue.push(r));
        entry.insert(runnable.waker());
        drop(live);
        runnable.schedule();
        Task {
            inner: task.fallible(),
        }
    }

    /// Runs the tasks queued when this step starts; those woken meanwhile wait for the next
    /// iteration, so a task that keeps waking itself cannot starve I/O. Returns how many ran.
    pub(crate) fn run_tasks(&mut self) -> usize {
        let queue = Arc::clone(&self.tasks.queue);
        let batch = queue.len.load(Ordering::Relaxed);
        context::enter(self, || {
            let mut ran = 0;
            while ran < batch {
                let Some(runnable) = queue.pop() else { break };
                runnable.run();
                ran += 1;
            }
            ran
        })
    }
}

/// Spawns `future` on the selector running the current task (see [`Registry::spawn`]).
///
/// ```
/// use selreactor::{task, Selector};
///
/// let total = Selector::new()?.block_on(async {
///     let parts: Vec<_> = (1..=3).map(|i| task::spawn(async move { i * 10 })).collect();
///     let mut total = 0;
///     for part in parts {
///         total += part.await;
///     }
///     total
/// })?;
/// assert_eq!(total, 60);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// Outside a task or a `block_on` future, as for [`with_registry`](super::with_registry).
#[track_caller]
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    super::with_registry(|reg| reg.spawn(future))
}

/// A spawned task: a future of its output.
///
/// Dropping it cancels the task (its future is dropped on the loop's next iteration, on the
/// loop's thread); [`detach`](Task::detach) lets it run to completion unobserved.
///
/// # Panics
///
/// Awaiting it panics if the task ended without an output: its future panicked (that panic
/// unwound out of the loop, see the [module docs](super)), or its selector was dropped first.
#[must_use = "dropping a task cancels it; use `detach` to let it run"]
pub struct Task<T> {
    inner: async_task::FallibleTask<T>,
}

impl<T> Task<T> {
    /// Lets the task run to completion without anyone awaiting it.
    pub fn detach(self) {
        self.inner.detach();
    }

    /// Cancels the task and waits until its future is dropped. Returns its output if it had
    /// already finished.
    pub async fn cancel(self) -> Option<T> {
        self.inner.cancel().await
    }

    /// Whether the task has finished (or was cancelled, or panicked).
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Some(output)) => Poll::Ready(output),
            Poll::Ready(None) => {
                panic!("awaited a task that ended without output: it panicked, or its selector was dropped")
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.is_finished())
            .finish()
    }
}
