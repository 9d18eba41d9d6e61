//! Time for tasks: sleeps, timeouts and intervals on the selector's own timer heap.

use std::cell::Cell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::task::context::{try_with_registry, with_registry};
use crate::timer::{next_tick, TimerKey};

/// Waits until `duration` has passed (never less). A duration too large for [`Instant`] never
/// ends.
///
/// The clock starts when `sleep` is called, not when the future is first polled.
///
/// # Panics
///
/// When first polled outside a task or `block_on` future (see [`with_registry`]), unless the
/// time has already passed.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::new(Instant::now().checked_add(duration))
}

/// Waits until `deadline` (at once if it has passed).
///
/// # Panics
///
/// As for [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(Some(deadline))
}

/// The future of [`sleep`] and [`sleep_until`].
///
/// Its first poll schedules a timer on the running selector (unless the deadline has passed);
/// the timer wakes the task at or after the deadline, never before. Dropping it cancels the
/// timer.
#[must_use = "a sleep does nothing unless awaited"]
pub struct Sleep {
    /// `None`: never.
    deadline: Option<Instant>,
    timer: Option<(TimerKey, Rc<Alarm>)>,
}

/// What a sleep shares with its timer's callback.
struct Alarm {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Sleep {
    fn new(deadline: Option<Instant>) -> Sleep {
        Sleep {
            deadline,
            timer: None,
        }
    }

    /// When this sleep ends; `None` for never.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the deadline has passed. Does not need the loop.
    pub fn is_elapsed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl Future for Sleep {
    type Output = ();

    #[track_caller]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        if let Some((_, alarm)) = &self.timer {
            if alarm.fired.get() {
                return Poll::Ready(());
            }
            let waker = alarm.waker.take();
            alarm.waker.set(match waker {
                Some(w) if w.will_wake(cx.waker()) => Some(w),
                _ => Some(cx.waker().clone()),
            });
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let alarm = Rc::new(Alarm {
            fired: Cell::new(false),
            waker: Cell::new(Some(cx.waker().clone())),
        });
        let ring = Rc::clone(&alarm);
        let key = with_registry(|reg| {
            reg.call_at(deadline, move |_| {
                ring.fired.set(true);
                if let Some(waker) = ring.waker.take() {
                    waker.wake();
                }
            })
        });
        self.timer = Some((key, alarm));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((key, alarm)) = self.timer.take() {
            if !alarm.fired.get() {
                // Outside the loop (the selector being dropped, say) the timer stays until it
                // fires, waking nothing.
                try_with_registry(|reg| reg.cancel(key));
            }
        }
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("scheduled", &self.timer.is_some())
            .finish()
    }
}

/// The error of a [`timeout`] whose deadline passed first. It converts into an [`io::Error`] of
/// kind [`TimedOut`](io::ErrorKind::TimedOut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(e: Elapsed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

/// Runs `future` for at most `duration`: its output, or [`Elapsed`] if the time ran out first
/// (the future is then dropped, cancelling it).
///
/// The clock starts when `timeout` is called. The future is polled before the deadline is
/// checked, so an output ready at the deadline is not lost, and `timeout(Duration::ZERO, f)`
/// still gives `f` one poll.
///
/// ```
/// use selreactor::task;
/// use std::time::Duration;
///
/// task::block_on(async {
///     let quick = task::timeout(Duration::from_secs(1), async { 7 }).await;
///     assert_eq!(quick, Ok(7));
///     let slow = task::timeout(Duration::from_millis(5), task::sleep(Duration::from_secs(60))).await;
///     assert!(slow.is_err());
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> {
    timeout_with(sleep(duration), future)
}

/// Runs `future` until `deadline` at the latest (see [`timeout`]).
pub fn timeout_at<F: Future>(
    deadline: Instant,
    future: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> {
    timeout_with(sleep_until(deadline), future)
}

async fn timeout_with<F: Future>(mut sleep: Sleep, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(&mut sleep).poll(cx).map(|()| Err(Elapsed(())))
    })
    .await
}

/// Ticks every `period`, first one period from now: asyncio's loop of `sleep`s without the drift.
///
/// Tick `k` is never earlier than `start + k * period`, whatever each tick's work costs. If the
/// loop falls behind by more than a period, the missed ticks are skipped: the next tick comes
/// once, late, and the following ones return to the grid (as for
/// [`Registry::call_every`](crate::Registry::call_every)).
///
/// ```
/// use selreactor::task;
/// use std::time::{Duration, Instant};
///
/// task::block_on(async {
///     let start = Instant::now();
///     let mut every = task::interval(Duration::from_millis(5));
///     for k in 1..=3 {
///         let tick = every.tick().await;
///         assert!(tick >= start + Duration::from_millis(5) * k);
///     }
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// If `period` is zero.
#[track_caller]
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "interval needs a non-zero period");
    let start = Instant::now();
    Interval {
        period,
        next: start.checked_add(period),
        sleep: None,
    }
}

/// The ticker of [`interval`].
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    /// The next tick's deadline; `None`: beyond `Instant`'s range, never.
    next: Option<Instant>,
    sleep: Option<Sleep>,
}

impl Interval {
    /// Waits for the next tick and returns its scheduled time (on the grid, not when it was
    /// noticed).
    pub async fn tick(&mut self) -> Instant {
        poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// The poll form of [`tick`](Interval::tick).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        let next = self.next;
        let sleep = self.sleep.get_or_insert_with(|| Sleep::new(next));
        if Pin::new(sleep).poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        let Some(tick) = next else {
            return Poll::Pending;
        };
        self.next = Some(next_tick(tick, self.period, Instant::now()));
        Poll::Ready(tick)
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}
