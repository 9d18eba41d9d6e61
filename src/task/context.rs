//! How a task reaches the registry of the selector that runs it.
//!
//! A callback receives `&mut Registry`; a future's `poll` cannot. While the loop runs tasks (and
//! while [`block_on`](crate::Selector::block_on) polls its future), a thread-local slot holds a
//! pointer to the registry the loop is borrowing for that step, and [`with_registry`] lends it
//! out. The slot is emptied while the registry is lent, so a nested call finds nothing rather
//! than a second `&mut`.

use std::cell::Cell;
use std::ptr::NonNull;

use crate::registry::Registry;

thread_local! {
    /// The registry of the loop running tasks on this thread, if any.
    ///
    /// Invariant: while this is `Some(p)`, `p` was derived from a `&mut Registry` held by an
    /// [`enter`] call further up this thread's stack, and nothing else uses that borrow until
    /// `enter` returns (it restores the previous value first). [`try_with_registry`] takes the
    /// pointer out for as long as it lends the registry, so at most one `&mut` made from it
    /// exists at a time.
    static CURRENT: Cell<Option<NonNull<Registry>>> = const { Cell::new(None) };
}

/// Runs `f` with `registry` reachable through [`with_registry`].
pub(crate) fn enter<R>(registry: &mut Registry, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<NonNull<Registry>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    // `registry` is not used again in this function: `f` reaches it only through the slot.
    let _restore = Restore(CURRENT.replace(Some(NonNull::from(registry))));
    f()
}

/// Lends the running loop's registry to `f`; `None` when no loop is running tasks on this
/// thread, or when the registry is already lent (a nested call).
pub(crate) fn try_with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> Option<R> {
    struct PutBack(NonNull<Registry>);
    impl Drop for PutBack {
        fn drop(&mut self) {
            CURRENT.set(Some(self.0));
        }
    }
    let mut pointer = CURRENT.take()?;
    let _put_back = PutBack(pointer);
    // SAFETY: by `CURRENT`'s invariant the pointer comes from a live `&mut Registry` that its
    // owner (`enter`) does not use until we are done, and it cannot be dropped or moved while
    // that borrow lasts. We took it out of the slot, so no other `&mut` is made from it until
    // `PutBack` returns it, after `f` (and this reference) are finished, even on a panic.
    let registry = unsafe { pointer.as_mut() };
    Some(f(registry))
}

/// Runs `f` with the registry of the selector that is running the current task, so a task can
/// do what a callback does: register callback sources, schedule timers and calls, stop the loop.
///
/// ```
/// use selreactor::{task, Selector};
/// use std::time::Duration;
///
/// let mut sel = Selector::new()?;
/// let fired = sel.block_on(async {
///     let (tx, rx) = std::sync::mpsc::channel();
///     task::with_registry(|reg| reg.call_later(Duration::from_millis(5), move |_| tx.send(1).unwrap()));
///     task::sleep(Duration::from_millis(20)).await;
///     rx.try_recv().unwrap()
/// })?;
/// assert_eq!(fired, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// Outside a task or [`block_on`](crate::Selector::block_on)'s future (in a callback, use the
/// `&mut Registry` it receives), and when called from inside `f` itself.
#[track_caller]
pub fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    match try_with_registry(f) {
        Some(result) => result,
        None => panic!("{}", outside_loop()),
    }
}

/// Why an operation that needs the running selector failed.
pub(crate) fn outside_loop() -> &'static str {
    "no selector is running a task on this thread (or its registry is already lent out by \
     `with_registry`): call this from a task or a `block_on` future"
}

/// [`outside_loop`] as an error, for the I/O operations that return `io::Result`.
pub(crate) fn outside_loop_error() -> std::io::Error {
    std::io::Error::other(outside_loop())
}
