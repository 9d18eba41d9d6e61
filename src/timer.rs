//! Timers: one-shot and repeating callbacks in deadline order, cancellable by key.
//!
//! A 4-ary min-heap orders `(deadline, sequence)`; a slab holds the callbacks. Cancelling
//! removes the slab entry at once and leaves the heap entry behind as a tombstone, skipped when
//! it surfaces; when tombstones outnumber live entries the heap is rebuilt, so schedule/cancel
//! churn keeps memory proportional to the live timers.
//!
//! Heap entries are 24 bytes: the deadline as nanoseconds from a base instant (one `u64`
//! comparison instead of `Instant`'s two fields), the sequence number and the slab index. With
//! four children per node the heap is half as deep as a binary one and a node's children share
//! cache lines, which is what a pop from a large heap pays for (see BENCHMARKS.md, "Timers").
//! The heap is written out here rather than taken from `dary_heap`, whose `QuaternaryHeap` (a
//! port of std's `BinaryHeap`) measured 15-25 % slower at a million timers in paired runs.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::key::Owner;
use crate::registry::Registry;

type Once = Box<dyn FnOnce(&mut Registry)>;
type Every = Box<dyn FnMut(&mut Registry, TimerKey)>;

/// A handle to a timer, returned by [`Registry::call_later`] and friends.
///
/// Like [`Key`](crate::Key), it is checked on use: once its timer has fired (one-shot) or been
/// cancelled, [`cancel`](Registry::cancel) rejects it with `NotFound`, even if another timer has
/// taken its slot since.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    seq: u64,
    owner: Owner,
}

impl TimerKey {
    /// The slot this timer occupies. Slots are reused once a timer fires or is cancelled; the
    /// key itself is not.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerKey(#{}v{})", self.index, self.seq)
    }
}

enum Callback {
    Once(Once),
    /// `callback` is `None` while it runs.
    Every {
        period: Duration,
        callback: Option<Every>,
    },
}

struct Timer {
    /// Unique per timer; also orders timers with equal deadlines (first scheduled, first fired).
    seq: u64,
    callback: Callback,
}

/// A heap entry. Ordered by deadline, then by sequence (derive order follows field order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    /// Nanoseconds after [`Timers::base`].
    deadline: u64,
    seq: u64,
    index: u32,
}

/// A min-heap with four children per node.
struct QuadHeap {
    items: Vec<Scheduled>,
}

impl QuadHeap {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn peek(&self) -> Option<&Scheduled> {
        self.items.first()
    }

    fn push(&mut self, item: Scheduled) {
        self.items.push(item);
        self.sift_up(self.items.len() - 1);
    }

    fn pop(&mut self) -> Option<Scheduled> {
        if self.items.is_empty() {
            return None;
        }
        let top = self.items.swap_remove(0);
        if !self.items.is_empty() {
            self.sift_down(0);
        }
        Some(top)
    }

    fn retain(&mut self, keep: impl FnMut(&Scheduled) -> bool) {
        self.items.retain(keep);
        if self.items.len() > 1 {
            for i in (0..=(self.items.len() - 2) / 4).rev() {
                self.sift_down(i);
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let item = self.items[i];
        while i > 0 {
            let parent = (i - 1) / 4;
            if item >= self.items[parent] {
                break;
            }
            self.items[i] = self.items[parent];
            i = parent;
        }
        self.items[i] = item;
    }

    fn sift_down(&mut self, mut i: usize) {
        let len = self.items.len();
        let item = self.items[i];
        loop {
            let first = 4 * i + 1;
            if first >= len {
                break;
            }
            let mut min = first;
            for child in first + 1..(first + 4).min(len) {
                if self.items[child] < self.items[min] {
                    min = child;
                }
            }
            if self.items[min] >= item {
                break;
            }
            self.items[i] = self.items[min];
            i = min;
        }
        self.items[i] = item;
    }
}

pub(crate) struct Timers {
    timers: Slab<Timer>,
    heap: QuadHeap,
    /// What heap deadlines count from: a day before the selector was created (where the clock
    /// allows), so deadlines already past when they are scheduled keep their order too.
    base: Instant,
    next_seq: u64,
    tombstones: usize,
    /// Due entries that `fire_timers` popped because they were scheduled during its round:
    /// they wait for the next iteration without hiding the older due timers beneath them.
    /// Put back when the round ends, or, after a callback's panic cut it short, before the
    /// heap is next read.
    postponed: Vec<Scheduled>,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        let now = Instant::now();
        Timers {
            timers: Slab::new(),
            heap: QuadHeap { items: Vec::new() },
            base: now
                .checked_sub(Duration::from_secs(24 * 3600))
                .unwrap_or(now),
            next_seq: 0,
            tombstones: 0,
            postponed: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.timers.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// `instant` as a heap deadline: earlier ones become 0 (all overdue, in scheduling order),
    /// later than 584 years saturate. Exact to the nanosecond otherwise, so never early.
    fn nanos(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.base).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        let offset = Duration::from_nanos(nanos);
        self.base
            .checked_add(offset)
            .unwrap_or_else(|| far_future(self.base))
    }

    fn is_live(&self, s: &Scheduled) -> bool {
        self.timers
            .get(s.index as usize)
            .is_some_and(|t| t.seq == s.seq)
    }

    /// The earliest deadline of a live timer, dropping tombstones that sit on top.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.restore_postponed();
        while let Some(top) = self.heap.peek() {
            if self.is_live(top) {
                return Some(self.instant(top.deadline));
            }
            self.heap.pop();
            self.tombstones -= 1;
        }
        None
    }

    fn insert(&mut self, deadline: Instant, callback: Callback, owner: Owner) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = self.timers.insert(Timer { seq, callback }) as u32;
        self.heap.push(Scheduled {
            deadline: self.nanos(deadline),
            seq,
            index,
        });
        TimerKey { index, seq, owner }
    }

    fn cancel(&mut self, key: TimerKey) -> bool {
        let Some(timer) = self.timers.get(key.index as usize) else {
            return false;
        };
        if timer.seq != key.seq {
            return false;
        }
        let running = matches!(timer.callback, Callback::Every { callback: None, .. });
        drop(self.timers.remove(key.index as usize));
        if !running {
            // Its heap entry stays behind until it surfaces or the heap is rebuilt. A running
            // repeating timer has none: it is pushed back only after its callback returns.
            self.tombstones += 1;
            if self.tombstones > 64 && self.tombstones > self.heap.len() / 2 {
                self.restore_postponed();
                let timers = &self.timers;
                self.heap
                    .retain(|s| timers.get(s.index as usize).is_some_and(|t| t.seq == s.seq));
                self.tombstones = 0;
            }
        }
        true
    }

    /// Pops the next live timer that is due at `now` (in heap nanoseconds) and was scheduled
    /// before `cutoff`. Due timers scheduled since are set aside in `postponed`.
    fn pop_due(&mut self, now: u64, cutoff: u64) -> Option<Scheduled> {
        loop {
            let top = self.heap.peek()?;
            if top.deadline > now {
                return None;
            }
            let top = self.heap.pop().expect("peeked");
            if !self.is_live(&top) {
                self.tombstones -= 1;
            } else if top.seq >= cutoff {
                self.postponed.push(top);
            } else {
                return Some(top);
            }
        }
    }

    fn restore_postponed(&mut self) {
        if !self.postponed.is_empty() {
            for scheduled in self.postponed.drain(..) {
                self.heap.push(scheduled);
            }
        }
    }
}

/// The first deadline on `deadline`'s grid of `period` that lies after `now`.
pub(crate) fn next_tick(deadline: Instant, period: Duration, now: Instant) -> Instant {
    let next = deadline.checked_add(period).unwrap_or(now + period);
    if next > now {
        return next;
    }
    // Fell behind: skip the missed ticks rather than firing them in a burst.
    let behind = now.duration_since(deadline).as_nanos();
    let ticks = behind / period.as_nanos() + 1;
    u32::try_from(ticks)
        .ok()
        .and_then(|ticks| period.checked_mul(ticks))
        .and_then(|offset| deadline.checked_add(offset))
        .unwrap_or(now + period)
}

/// A deadline far enough away to mean "never", for delays that overflow `Instant`.
fn far_future(now: Instant) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(CENTURY)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

impl Registry {
    /// Runs `f` once, `delay` from now (never earlier; later by at most the OS's timer
    /// resolution, about a millisecond, if the loop is idle). A delay too large for [`Instant`]
    /// means "never" in practice.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::time::{Duration, Instant};
    ///
    /// let mut sel = Selector::new()?;
    /// let start = Instant::now();
    /// sel.call_later(Duration::from_millis(20), |_| println!("later"));
    /// sel.run()?; // returns once the timer has fired: nothing is left
    /// assert!(start.elapsed() >= Duration::from_millis(20));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn call_later<F>(&mut self, delay: Duration, f: F) -> TimerKey
    where
        F: FnOnce(&mut Registry) + 'static,
    {
        let now = Instant::now();
        self.call_at(now.checked_add(delay).unwrap_or_else(|| far_future(now)), f)
    }

    /// Runs `f` once at `deadline` (at once, on the next iteration, if it has passed).
    /// Timers with equal deadlines fire in the order they were scheduled.
    pub fn call_at<F>(&mut self, deadline: Instant, f: F) -> TimerKey
    where
        F: FnOnce(&mut Registry) + 'static,
    {
        let owner = self.owner();
        self.timers
            .insert(deadline, Callback::Once(Box::new(f)), owner)
    }

    /// Runs `f` every `period`, first at one period from now, until cancelled. The callback
    /// receives its own [`TimerKey`], so it can [`cancel`](Registry::cancel) itself.
    ///
    /// Deadlines stay on the grid `start + k * period`, so the timer does not drift however
    /// long each callback takes. If the loop falls behind by more than a period (a callback
    /// blocked it, say), the missed ticks are skipped: the timer fires once, late, and then
    /// at the next deadline on the grid.
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    ///
    /// # Examples
    ///
    /// A heartbeat that stops itself after three beats:
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::time::Duration;
    ///
    /// let mut sel = Selector::new()?;
    /// let mut beats = 0;
    /// sel.call_every(Duration::from_millis(10), move |reg, me| {
    ///     beats += 1;
    ///     println!("beat {beats}");
    ///     if beats == 3 {
    ///         let _ = reg.cancel(me); // it is pending, so this cannot fail
    ///     }
    /// });
    /// sel.run()?; // returns once the timer is cancelled: nothing is left
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[track_caller]
    pub fn call_every<F>(&mut self, period: Duration, f: F) -> TimerKey
    where
        F: FnMut(&mut Registry, TimerKey) + 'static,
    {
        assert!(!period.is_zero(), "call_every needs a non-zero period");
        let now = Instant::now();
        let deadline = now.checked_add(period).unwrap_or_else(|| far_future(now));
        let callback = Callback::Every {
            period,
            callback: Some(Box::new(f)),
        };
        let owner = self.owner();
        self.timers.insert(deadline, callback, owner)
    }

    /// Cancels a timer: its callback is dropped without running. A repeating timer may cancel
    /// itself from its own callback.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) if the timer has already fired (one-shot), was
    /// cancelled, or belongs to another selector.
    ///
    /// # Examples
    ///
    /// A timeout that is called off when the answer comes first:
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::io;
    /// use std::time::Duration;
    ///
    /// let mut sel = Selector::new()?;
    /// let timeout = sel.call_later(Duration::from_secs(30), |_| panic!("no answer"));
    /// sel.call_soon(move |reg| {
    ///     // the answer arrived: the timeout must not fire
    ///     reg.cancel(timeout).expect("still pending");
    /// });
    /// sel.run()?; // returns at once: the only timer is gone
    /// assert_eq!(sel.cancel(timeout).unwrap_err().kind(), io::ErrorKind::NotFound);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cancel(&mut self, key: TimerKey) -> io::Result<()> {
        if key.owner == self.owner() && self.timers.cancel(key) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such timer: it has fired, was cancelled, or is from another selector",
            ))
        }
    }

    /// The number of pending timers (a repeating timer counts until cancelled).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Marks the start of an iteration: timers scheduled from here on wait for the next one.
    pub(crate) fn timer_cutoff(&self) -> u64 {
        self.timers.next_seq
    }

    /// Fires the timers due at `now` that were scheduled before `cutoff` (see
    /// [`timer_cutoff`](Registry::timer_cutoff)). Returns how many ran.
    pub(crate) fn fire_timers(&mut self, now: Instant, cutoff: u64) -> usize {
        self.timers.restore_postponed();
        let owner = self.owner();
        let now_nanos = self.timers.nanos(now);
        let mut fired = 0;
        while let Some(due) = self.timers.pop_due(now_nanos, cutoff) {
            fired += 1;
            let index = due.index as usize;
            match &mut self.timers.timers[index].callback {
                Callback::Once(_) => {
                    let Callback::Once(f) = self.timers.timers.remove(index).callback else {
                        unreachable!("matched above");
                    };
                    f(self);
                }
                Callback::Every { period, callback } => {
                    let period = *period;
                    let mut f = callback.take().expect("a queued timer is not running");
                    let key = TimerKey {
                        index: due.index,
                        seq: due.seq,
                        owner,
                    };
                    let outcome = panic::catch_unwind(AssertUnwindSafe(|| f(self, key)));
                    if let Err(panic) = outcome {
                        let _ = self.timers.cancel(key);
                        panic::resume_unwind(panic);
                    }
                    // Put it back unless it was cancelled while it ran.
                    if let Some(timer) = self.timers.timers.get_mut(index) {
                        if timer.seq == due.seq {
                            timer.callback = Callback::Every {
                                period,
                                callback: Some(f),
                            };
                            let deadline = self.timers.instant(due.deadline);
                            let next = next_tick(deadline, period, now);
                            let deadline = self.timers.nanos(next);
                            self.timers.heap.push(Scheduled {
                                deadline,
                                seq: due.seq,
                                index: due.index,
                            });
                        }
                    }
                }
            }
        }
        self.timers.restore_postponed();
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick_stays_on_the_grid_and_skips_missed_ticks() {
        let t0 = Instant::now();
        let p = Duration::from_millis(10);
        assert_eq!(next_tick(t0, p, t0), t0 + p);
        assert_eq!(next_tick(t0, p, t0 + Duration::from_millis(3)), t0 + p);
        // 55 ms late: ticks at 10..50 are skipped, the next is 60.
        assert_eq!(
            next_tick(t0, p, t0 + Duration::from_millis(55)),
            t0 + Duration::from_millis(60)
        );
        // Exactly on a tick: that tick is now, so the next one is later.
        assert_eq!(
            next_tick(t0, p, t0 + Duration::from_millis(20)),
            t0 + Duration::from_millis(30)
        );
    }

    #[test]
    fn the_heap_pops_in_order_after_pushes_and_retains() {
        let mut heap = QuadHeap { items: Vec::new() };
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut expected = Vec::new();
        for seq in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let item = Scheduled {
                deadline: x % 300, // many equal deadlines: ties go by sequence
                seq,
                index: seq as u32,
            };
            heap.push(item);
            expected.push(item);
        }
        heap.retain(|s| s.seq % 3 != 0);
        expected.retain(|s| s.seq % 3 != 0);
        expected.sort();
        let popped: Vec<_> = std::iter::from_fn(|| heap.pop()).collect();
        assert!(popped == expected, "the heap popped out of order");
    }

    #[test]
    fn cancelled_timers_do_not_pile_up() {
        let mut timers = Timers::new();
        let owner = Owner::next();
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..10_000 {
            let key = timers.insert(far, Callback::Once(Box::new(|_| {})), owner);
            assert!(timers.cancel(key));
        }
        assert_eq!(timers.len(), 0);
        assert!(
            timers.heap.len() <= 200,
            "heap kept {} tombstones",
            timers.heap.len()
        );
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.heap.len(), 0);
    }
}
