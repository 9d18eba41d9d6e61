//! The executor: futures become `async-task` tasks whose runnables queue for the loop.
//!
//! A task is scheduled (woken) from any thread. From the loop's own thread, the usual case (a
//! task woken by I/O, a timer, another task or itself), its runnable goes to a queue that only
//! that thread touches: no lock, no atomic read-modify-write. The schedule function finds it
//! through a thread-local table keyed by the executor's id, which holds an entry only on the
//! executor's own thread. From any other thread, the runnable goes to a locked inbox and the
//! loop's wait is woken. The inbox is moved to the back of the local queue when the loop next
//! runs tasks, or first when a wake on the loop's thread comes after it, so tasks run in the
//! order they were woken.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use async_task::Runnable;
use slab::Slab;

use crate::handle::Shared;
use crate::registry::Registry;
use crate::task::context;

/// Runnables waiting for the loop, reached without a lock: only the loop's thread uses it.
type LocalQueue = Rc<RefCell<VecDeque<Runnable>>>;

thread_local! {
    /// The local queue of every executor living on this thread, by executor id. An entry is
    /// added when an executor is made and removed when it is dropped, so a schedule function
    /// finds its executor's queue here exactly when it runs on that executor's thread. The
    /// table and the queues are borrowed only for a moment, while no other code runs.
    static LOCAL_QUEUES: RefCell<Vec<(u64, LocalQueue)>> = const { RefCell::new(Vec::new()) };
}

/// Where executor ids come from: unique in the process, never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The part of a [`Registry`] that runs tasks.
pub(crate) struct Executor {
    /// Runnables scheduled from this thread (and, once a step starts, those moved from the
    /// inbox), in the order they will run. Also in `LOCAL_QUEUES` under `inbox.id`.
    local: LocalQueue,
    inbox: Arc<Inbox>,
    /// A waker for each live task (spawned, not yet finished or dropped). Dropping the selector
    /// wakes them all, so that every task's future is dropped here, on the loop's thread, even
    /// one that nothing else would ever wake (two tasks awaiting each other, say).
    live: Rc<RefCell<Slab<Waker>>>,
    /// Whether a task was ever spawned here: until then nothing can be queued, and the loop's
    /// check on every iteration is this one load (a loop without tasks pays nothing more).
    spawned: bool,
}

/// What every task's schedule function holds: the executor's id, to find its local queue,
/// and the queue for wakes from other threads.
struct Inbox {
    id: u64,
    runnables: Mutex<VecDeque<Runnable>>,
    /// The inbox's length, readable without the lock: the loop checks it on every iteration.
    len: AtomicUsize,
    /// To wake the loop's wait when another thread schedules a task.
    shared: Arc<Shared>,
}

impl Inbox {
    /// The schedule function of every task: queue it locally on the loop's thread, else in the
    /// inbox, and wake the loop. It never drops the runnable, so a `!Send` future is never
    /// dropped off its thread.
    fn schedule(&self, runnable: Runnable) {
        if let Some(local) = self.local_queue() {
            // Never fails: no other code runs while the queue is borrowed. If it ever did, the
            // inbox below would still work.
            if let Ok(mut local) = local.try_borrow_mut() {
                // Wakes from other threads that happened before this one run before it.
                self.drain_into(&mut local);
                local.push_back(runnable);
                return;
            }
        }
        {
            let mut runnables = self.lock();
            runnables.push_back(runnable);
            self.len.store(runnables.len(), Ordering::Release);
        }
        // Fails only once the selector is dropped: the runnable then stays in the inbox and
        // its task is leaked, never dropped on this thread.
        let _ = self.shared.signal();
    }

    /// This executor's local queue, if the calling thread is the executor's (and its
    /// thread-locals are not being destroyed).
    fn local_queue(&self) -> Option<LocalQueue> {
        LOCAL_QUEUES
            .try_with(|queues| {
                let queues = queues.try_borrow().ok()?;
                let (_, local) = queues.iter().find(|(id, _)| *id == self.id)?;
                Some(Rc::clone(local))
            })
            .ok()
            .flatten()
    }

    /// Moves everything in the inbox to the back of `local`, in the order it came.
    #[inline]
    fn drain_into(&self, local: &mut VecDeque<Runnable>) {
        // A wake that happened before the caller's (in the happens-before sense) has stored
        // its length by then.
        if self.len.load(Ordering::Relaxed) != 0 {
            self.drain_locked(local);
        }
    }

    #[cold]
    fn drain_locked(&self, local: &mut VecDeque<Runnable>) {
        let mut runnables = self.lock();
        if local.is_empty() {
            // The usual case (the loop woke for these): trade buffers instead of copying.
            std::mem::swap(local, &mut runnables);
        } else {
            local.append(&mut runnables);
        }
        self.len.store(0, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Runnable>> {
        self.runnables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>) -> Executor {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let local = LocalQueue::default();
        // Made while this thread's locals are being destroyed, the executor has no entry, and
        // every wake takes the inbox: slower, still correct.
        let _ = LOCAL_QUEUES.try_with(|queues| queues.borrow_mut().push((id, Rc::clone(&local))));
        Executor {
            local,
            inbox: Arc::new(Inbox {
                id,
                runnables: Mutex::new(VecDeque::new()),
                len: AtomicUsize::new(0),
                shared,
            }),
            live: Rc::new(RefCell::new(Slab::new())),
            spawned: false,
        }
    }

    #[inline]
    pub(crate) fn has_queued(&self) -> bool {
        self.spawned
            && (!self.local.borrow().is_empty() || self.inbox.len.load(Ordering::Relaxed) != 0)
    }

    pub(crate) fn has_live(&self) -> bool {
        self.has_queued() || !self.live.borrow().is_empty()
    }

    /// The next runnable, from either queue (the borrow ends before the caller runs it).
    fn pop(&self) -> Option<Runnable> {
        let mut local = self.local.borrow_mut();
        self.inbox.drain_into(&mut local);
        local.pop_front()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // First leave the table, so that no entry outlives its executor even if a future's
        // `drop` panics below; the wakes that follow go to the inbox, and `pop` takes them.
        let id = self.inbox.id;
        let _ = LOCAL_QUEUES.try_with(|queues| queues.borrow_mut().retain(|(i, _)| *i != id));
        // Wake every live task, then drop the runnables: that drops their futures, which may
        // drop wakers that schedule other tasks one last time; repeat until nothing is left.
        loop {
            let wakers: Vec<Waker> = self.live.borrow().iter().map(|(_, w)| w.clone()).collect();
            wakers.into_iter().for_each(Waker::wake);
            let mut dropped = false;
            while let Some(runnable) = self.pop() {
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
            .field(
                "queued",
                &(self.local.borrow().len() + self.inbox.len.load(Ordering::Relaxed)),
            )
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
        self.tasks.spawned = true;
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
        let inbox = Arc::clone(&tasks.inbox);
        let (runnable, task) = async_task::spawn_local(future, move |r| inbox.schedule(r));
        entry.insert(runnable.waker());
        drop(live);
        // A `Registry` never leaves its thread, so this is the loop's: straight to the local queue.
        tasks.local.borrow_mut().push_back(runnable);
        Task {
            inner: task.fallible(),
        }
    }

    /// Runs the tasks queued when this step starts; those woken meanwhile wait for the next
    /// iteration, so a task that keeps waking itself cannot starve I/O. Returns how many ran.
    pub(crate) fn run_tasks(&mut self) -> usize {
        let local = Rc::clone(&self.tasks.local);
        let batch = {
            let mut queued = local.borrow_mut();
            self.tasks.inbox.drain_into(&mut queued);
            queued.len()
        };
        context::enter(self, || {
            let mut ran = 0;
            while ran < batch {
                let Some(runnable) = local.borrow_mut().pop_front() else {
                    break;
                };
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
