//! A model-based property test of timers and deferred calls (P4): random sequences of
//! `call_at`, `call_later(Duration::MAX)`, `call_every`, `cancel` (with live, fired, cancelled
//! and stale keys), `call_soon` and `run_once(0)`, with callbacks that cancel a timer, schedule a
//! due timer or queue a call when they run; checked after every step against a plain model.
//!
//! No step depends on how fast the clock runs: a timer is either due at once (`call_at` a
//! deadline an hour in the past, plus a few milliseconds so deadlines differ and tie) or never
//! due while the test runs (an hour or more ahead, or `Duration::MAX`). Repeating timers get
//! periods of an hour, so they never fire here; they are still counted and cancellable.
//!
//! Cases: `PROPTEST_CASES` (default 512, 32 under valgrind), each up to 80 operations, from a
//! fixed ChaCha seed so every run explores the same sequences.

mod util;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use selreactor::{Registry, Selector, TimerKey};
use util::*;

/// Deadline offsets are `0..DEADLINES` milliseconds: few enough that equal deadlines are common.
const DEADLINES: u8 = 6;

/// How far "due" deadlines lie in the past and "never" deadlines in the future.
const HOUR: Duration = Duration::from_secs(3600);

/// What a callback does when it runs, besides recording that it ran.
#[derive(Clone, Debug)]
enum Act {
    Record,
    /// Cancels the timer the index picks among every timer scheduled so far: pending, fired or
    /// cancelled (its slot perhaps reused), or the running timer itself.
    Cancel(Index),
    /// Schedules a timer due at once, `ms` after the case's past base, that does `then`.
    ScheduleDue(u8, Box<Act>),
    /// Schedules a timer an hour ahead (it never fires here).
    ScheduleNever,
    /// Queues a deferred call that does `then`.
    CallSoon(Box<Act>),
}

#[derive(Clone, Debug)]
enum Op {
    /// `call_at(past + ms)`: due at the next iteration.
    Due(u8, Act),
    /// `call_at(now + 1 h + ms)`: never due here.
    Future(u8, Act),
    /// `call_later(Duration::MAX)`.
    LaterMax(Act),
    /// `call_every(1 h + ms)`.
    Every(u8, Act),
    Cancel(Index),
    CallSoon(Act),
    RunOnce,
}

fn act() -> impl Strategy<Value = Act> {
    let leaf = prop_oneof![
        2 => Just(Act::Record),
        3 => any::<Index>().prop_map(Act::Cancel),
    ];
    leaf.prop_recursive(3, 12, 1, |inner| {
        prop_oneof![
            3 => (0..DEADLINES, inner.clone()).prop_map(|(ms, then)| Act::ScheduleDue(ms, Box::new(then))),
            1 => Just(Act::ScheduleNever),
            2 => inner.prop_map(|then| Act::CallSoon(Box::new(then))),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..DEADLINES, act()).prop_map(|(ms, a)| Op::Due(ms, a)),
        1 => (0..DEADLINES, act()).prop_map(|(ms, a)| Op::Future(ms, a)),
        1 => act().prop_map(Op::LaterMax),
        1 => (0..DEADLINES, act()).prop_map(|(ms, a)| Op::Every(ms, a)),
        3 => any::<Index>().prop_map(Op::Cancel),
        3 => act().prop_map(Op::CallSoon),
        4 => Just(Op::RunOnce),
    ]
}

/// One callback that ran, as it saw things.
#[derive(Debug)]
struct Ran {
    id: usize,
    /// For [`Act::Cancel`]: the job it targeted and what `cancel` returned.
    cancelled: Option<(usize, Result<(), io::ErrorKind>)>,
}

/// Sets its job's flag when the closure holding it is dropped.
struct DropFlag {
    id: usize,
    dropped: Rc<RefCell<Vec<bool>>>,
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.dropped.borrow_mut()[self.id] = true;
    }
}

/// What callbacks share with the test. Every job (timer or deferred call) gets an id in the
/// order it was scheduled, which is also the order the selector numbers timers in.
#[derive(Clone)]
struct Shared {
    /// By job id: the timer's key, `None` for a deferred call.
    keys: Rc<RefCell<Vec<Option<TimerKey>>>>,
    /// The ids of the timer jobs, in scheduling order: what [`Act::Cancel`] picks from.
    timer_ids: Rc<RefCell<Vec<usize>>>,
    /// By job id: whether its closure has been dropped.
    dropped: Rc<RefCell<Vec<bool>>>,
    log: Rc<RefCell<Vec<Ran>>>,
    past: Instant,
    future: Instant,
}

impl Shared {
    fn new() -> Shared {
        let now = Instant::now();
        Shared {
            keys: Rc::default(),
            timer_ids: Rc::default(),
            dropped: Rc::default(),
            log: Rc::default(),
            past: now
                .checked_sub(HOUR)
                .expect("the clock reaches an hour back"),
            future: now + HOUR,
        }
    }

    fn next_id(&self) -> (usize, DropFlag) {
        let id = self.keys.borrow().len();
        self.keys.borrow_mut().push(None);
        self.dropped.borrow_mut().push(false);
        let flag = DropFlag {
            id,
            dropped: Rc::clone(&self.dropped),
        };
        (id, flag)
    }

    fn adopt_timer(&self, id: usize, key: TimerKey) {
        self.keys.borrow_mut()[id] = Some(key);
        self.timer_ids.borrow_mut().push(id);
    }

    /// A one-shot callback for job `id`.
    fn once(&self, id: usize, flag: DropFlag, act: Act) -> impl FnOnce(&mut Registry) + 'static {
        let shared = self.clone();
        move |reg| {
            let _flag = flag;
            shared.perform(reg, id, &act);
        }
    }

    fn schedule_at(&self, reg: &mut Registry, deadline: Instant, act: Act) -> usize {
        let (id, flag) = self.next_id();
        let key = reg.call_at(deadline, self.once(id, flag, act));
        self.adopt_timer(id, key);
        id
    }

    fn schedule_later_max(&self, reg: &mut Registry, act: Act) -> usize {
        let (id, flag) = self.next_id();
        let key = reg.call_later(Duration::MAX, self.once(id, flag, act));
        self.adopt_timer(id, key);
        id
    }

    fn schedule_every(&self, reg: &mut Registry, ms: u8, act: Act) -> usize {
        let (id, flag) = self.next_id();
        let shared = self.clone();
        let period = HOUR + Duration::from_millis(ms.into());
        let key = reg.call_every(period, move |reg, _key| {
            let _flag = &flag;
            shared.perform(reg, id, &act);
        });
        self.adopt_timer(id, key);
        id
    }

    fn call_soon(&self, reg: &mut Registry, act: Act) -> usize {
        let (id, flag) = self.next_id();
        reg.call_soon(self.once(id, flag, act));
        id
    }

    fn perform(&self, reg: &mut Registry, id: usize, act: &Act) {
        let mut cancelled = None;
        match act {
            Act::Record => {}
            Act::Cancel(index) => {
                let target = {
                    let timer_ids = self.timer_ids.borrow();
                    (!timer_ids.is_empty()).then(|| timer_ids[index.index(timer_ids.len())])
                };
                if let Some(target) = target {
                    let key = self.keys.borrow()[target].expect("a timer job has a key");
                    cancelled = Some((target, reg.cancel(key).map_err(|e| e.kind())));
                }
            }
            Act::ScheduleDue(ms, then) => {
                let deadline = self.past + Duration::from_millis((*ms).into());
                self.schedule_at(reg, deadline, (**then).clone());
            }
            Act::ScheduleNever => {
                self.schedule_at(reg, self.future, Act::Record);
            }
            Act::CallSoon(then) => {
                self.call_soon(reg, (**then).clone());
            }
        }
        self.log.borrow_mut().push(Ran { id, cancelled });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// A timer due at once, `ms` after the past base.
    Due(u8),
    /// A timer that is never due here.
    Never,
    /// A deferred call.
    Soon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Ran,
    Cancelled,
}

struct Job {
    when: When,
    act: Act,
    key: Option<TimerKey>,
    state: State,
}

/// How often each kind of cancel was exercised, over all cases.
#[derive(Debug, Default)]
struct Coverage {
    cancel_pending: usize,
    cancel_fired: usize,
    cancel_cancelled: usize,
    /// Cancels of a fired or cancelled key whose slot a pending timer holds now.
    cancel_stale_reused_slot: usize,
    cancel_self: usize,
    timers_fired: usize,
    calls_run: usize,
    /// Due timers that ran after a callback of the same iteration had scheduled a new timer
    /// (which must wait, without holding back the older due timers).
    fired_after_a_new_timer_this_iteration: usize,
}

struct Case<'c> {
    sel: Selector,
    shared: Shared,
    jobs: Vec<Job>,
    /// Timer job ids in scheduling order (the model's copy of `Shared::timer_ids`).
    timers: Vec<usize>,
    /// Deferred calls not yet run, in the order queued.
    queue: VecDeque<usize>,
    coverage: &'c RefCell<Coverage>,
}

impl Case<'_> {
    fn new(coverage: &RefCell<Coverage>) -> io::Result<Case<'_>> {
        Ok(Case {
            sel: Selector::new()?,
            shared: Shared::new(),
            jobs: Vec::new(),
            timers: Vec::new(),
            queue: VecDeque::new(),
            coverage,
        })
    }

    /// Records a job the selector now holds, checking the callbacks and the model agree on
    /// its id.
    fn adopt(&mut self, id: usize, when: When, act: Act) {
        assert_eq!(id, self.jobs.len(), "jobs numbered in scheduling order");
        let key = self
            .shared
            .keys
            .borrow()
            .get(id)
            .copied()
            .unwrap_or_else(|| panic!("job {id} ({when:?}) was never scheduled"));
        assert_eq!(key.is_some(), when != When::Soon, "job {id} is a {when:?}");
        self.jobs.push(Job {
            when,
            act,
            key,
            state: State::Pending,
        });
        match when {
            When::Soon => self.queue.push_back(id),
            When::Due(_) | When::Never => self.timers.push(id),
        }
    }

    /// The model's outcome of cancelling job `target` (and its effect on the model).
    fn expect_cancel(&mut self, target: usize, by: Option<usize>) -> Result<(), io::ErrorKind> {
        let mut coverage = self.coverage.borrow_mut();
        let job = &self.jobs[target];
        if job.state == State::Pending {
            coverage.cancel_pending += 1;
            self.jobs[target].state = State::Cancelled;
            return Ok(());
        }
        if by == Some(target) {
            coverage.cancel_self += 1;
        } else if job.state == State::Ran {
            coverage.cancel_fired += 1;
        } else {
            coverage.cancel_cancelled += 1;
        }
        let slot = job.key.expect("a timer").index();
        let reused = self
            .jobs
            .iter()
            .any(|j| j.state == State::Pending && j.key.is_some_and(|k| k.index() == slot));
        if reused {
            coverage.cancel_stale_reused_slot += 1;
        }
        Err(io::ErrorKind::NotFound)
    }

    fn apply(&mut self, op: &Op) -> io::Result<()> {
        let shared = self.shared.clone();
        match op {
            Op::Due(ms, act) => {
                let deadline = shared.past + Duration::from_millis((*ms).into());
                let id = shared.schedule_at(&mut self.sel, deadline, act.clone());
                self.adopt(id, When::Due(*ms), act.clone());
            }
            Op::Future(ms, act) => {
                let deadline = shared.future + Duration::from_millis((*ms).into());
                let id = shared.schedule_at(&mut self.sel, deadline, act.clone());
                self.adopt(id, When::Never, act.clone());
            }
            Op::LaterMax(act) => {
                let id = shared.schedule_later_max(&mut self.sel, act.clone());
                self.adopt(id, When::Never, act.clone());
            }
            Op::Every(ms, act) => {
                let id = shared.schedule_every(&mut self.sel, *ms, act.clone());
                self.adopt(id, When::Never, act.clone());
            }
            Op::Cancel(index) => {
                if self.timers.is_empty() {
                    return Ok(());
                }
                let target = self.timers[index.index(self.timers.len())];
                let key = self.jobs[target].key.expect("a timer");
                let result = self.sel.cancel(key).map_err(|e| e.kind());
                assert_eq!(
                    result,
                    self.expect_cancel(target, None),
                    "cancel of job {target} from the test"
                );
            }
            Op::CallSoon(act) => {
                let id = shared.call_soon(&mut self.sel, act.clone());
                self.adopt(id, When::Soon, act.clone());
            }
            Op::RunOnce => self.run_once()?,
        }
        Ok(())
    }

    /// Runs one iteration and replays it on the model: first the due timers scheduled before
    /// it, by (deadline, scheduling order), skipping any cancelled meanwhile; then the calls
    /// queued before it, in order. Anything scheduled while it runs waits for the next one.
    fn run_once(&mut self) -> io::Result<()> {
        let mut due: Vec<usize> = self
            .timers
            .iter()
            .copied()
            .filter(|&id| self.jobs[id].state == State::Pending)
            .filter(|&id| matches!(self.jobs[id].when, When::Due(_)))
            .collect();
        due.sort_by_key(|&id| match self.jobs[id].when {
            When::Due(ms) => (ms, id),
            _ => unreachable!("filtered"),
        });
        let calls_due = self.queue.len();
        let jobs_before = self.jobs.len();

        let ran = self.sel.run_once(Some(Duration::ZERO))?;
        let log = std::mem::take(&mut *self.shared.log.borrow_mut());
        let mut log = log.into_iter();

        let mut expected = 0;
        for id in due {
            if self.jobs[id].state != State::Pending {
                continue; // cancelled by a callback earlier in this iteration
            }
            if self.jobs.len() > jobs_before {
                self.coverage
                    .borrow_mut()
                    .fired_after_a_new_timer_this_iteration += 1;
            }
            self.coverage.borrow_mut().timers_fired += 1;
            self.replay(id, log.next())?;
            expected += 1;
        }
        for _ in 0..calls_due {
            let id = self.queue.pop_front().expect("counted");
            self.coverage.borrow_mut().calls_run += 1;
            self.replay(id, log.next())?;
            expected += 1;
        }
        let extra: Vec<Ran> = log.collect();
        assert!(
            extra.is_empty(),
            "ran beyond the model's iteration: {extra:?}"
        );
        assert_eq!(ran, expected, "run_once's count");
        Ok(())
    }

    /// Checks that the next callback to run was job `id`, and applies what it did.
    fn replay(&mut self, id: usize, ran: Option<Ran>) -> io::Result<()> {
        let ran = ran.unwrap_or_else(|| panic!("job {id} should have run next; nothing did"));
        assert_eq!(
            ran.id, id,
            "job {} ran where the model expected job {id} ({:?})",
            ran.id, self.jobs[id].when
        );
        self.jobs[id].state = State::Ran;
        match self.jobs[id].act.clone() {
            Act::Record => assert!(ran.cancelled.is_none()),
            Act::Cancel(index) => {
                if self.timers.is_empty() {
                    assert!(ran.cancelled.is_none());
                } else {
                    let target = self.timers[index.index(self.timers.len())];
                    let (actual_target, result) = ran.cancelled.expect("it cancelled");
                    assert_eq!(actual_target, target, "job {id} picked another timer");
                    assert_eq!(
                        result,
                        self.expect_cancel(target, Some(id)),
                        "cancel of job {target} from job {id}"
                    );
                }
            }
            Act::ScheduleDue(ms, then) => self.adopt(self.jobs.len(), When::Due(ms), *then),
            Act::ScheduleNever => self.adopt(self.jobs.len(), When::Never, Act::Record),
            Act::CallSoon(then) => self.adopt(self.jobs.len(), When::Soon, *then),
        }
        Ok(())
    }

    /// The selector's state against the model's.
    fn check(&self) {
        let pending_timers = self
            .timers
            .iter()
            .filter(|&&id| self.jobs[id].state == State::Pending)
            .count();
        assert_eq!(self.sel.timer_count(), pending_timers, "timer_count");
        assert_eq!(self.shared.keys.borrow().len(), self.jobs.len());
        assert_eq!(*self.shared.timer_ids.borrow(), self.timers);
        let dropped = self.shared.dropped.borrow();
        for (id, job) in self.jobs.iter().enumerate() {
            // A closure is dropped once it has run or been cancelled, and not before.
            assert_eq!(
                dropped[id],
                job.state != State::Pending,
                "job {id} ({:?}, {:?}): closure dropped?",
                job.when,
                job.state
            );
        }
    }

    /// Cancels what is left (never-due timers too) and drops the selector: every closure must
    /// be dropped exactly when the model says.
    fn finish(mut self) {
        for position in 0..self.timers.len() {
            let id = self.timers[position];
            if self.jobs[id].state == State::Pending && self.jobs[id].when == When::Never {
                let key = self.jobs[id].key.expect("a timer");
                assert_eq!(self.sel.cancel(key).map_err(|e| e.kind()), Ok(()));
                self.jobs[id].state = State::Cancelled;
            }
        }
        self.check();
        drop(self.sel);
        let dropped = self.shared.dropped.borrow();
        assert!(
            dropped.iter().all(|&d| d),
            "dropping the selector drops every pending closure"
        );
        assert!(self.shared.log.borrow().is_empty(), "nothing runs on drop");
    }
}

fn run_case(ops: &[Op], coverage: &RefCell<Coverage>) -> io::Result<()> {
    let mut case = Case::new(coverage)?;
    for op in ops {
        case.apply(op)?;
        case.check();
    }
    case.finish();
    Ok(())
}

#[test]
fn timers_and_deferred_calls_match_a_simple_model_under_random_operations() {
    let coverage = RefCell::new(Coverage::default());
    let (mut runner, cases) = model_runner(512, 32);
    let outcome = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        run_case(&ops, &coverage).map_err(|e| TestCaseError::fail(e.to_string()))
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let coverage = coverage.into_inner();
    eprintln!("timer model: {cases} cases of up to 79 operations passed; {coverage:?}");
    // The cases must reach every kind of cancel, or the model proves less than it says.
    if cases >= 256 {
        assert!(coverage.cancel_pending > 0 && coverage.cancel_fired > 0);
        assert!(coverage.cancel_cancelled > 0 && coverage.cancel_self > 0);
        assert!(coverage.cancel_stale_reused_slot > 0);
        assert!(coverage.fired_after_a_new_timer_this_iteration > 0);
    }
}

/// The model's first find, kept as a regression test: a due timer must not wait an iteration
/// because a timer scheduled during the round, with an earlier past deadline, sits above it in
/// the heap. Before the fix, `late` ran only in the next iteration, after `new`.
#[test]
fn a_due_timer_is_not_held_back_by_an_earlier_one_scheduled_in_the_same_round() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let past = Instant::now() - HOUR;
    let fired = log();
    let record = |name: &'static str| {
        let fired = Rc::clone(&fired);
        move |_: &mut Registry| fired.borrow_mut().push(name)
    };
    let new = record("new");
    let first = record("first");
    sel.call_at(past, move |reg| {
        first(reg);
        reg.call_at(past, new);
    });
    sel.call_at(past + Duration::from_millis(1), record("late"));
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 2);
    assert_eq!(take(&fired), ["first", "late"]);
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 1);
    assert_eq!(take(&fired), ["new"]);
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}

/// A timer set aside during a round (scheduled in it, already due) is not lost when a later
/// callback of the round panics: it and the timers left unrun fire on the next iteration.
#[test]
fn a_timer_set_aside_in_a_round_survives_a_panic_later_in_it() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let past = Instant::now() - HOUR;
    let fired = log();
    let record = |name: &'static str| {
        let fired = Rc::clone(&fired);
        move |_: &mut Registry| fired.borrow_mut().push(name)
    };
    let new = record("new");
    sel.call_at(past, move |reg| {
        reg.call_at(past, new);
    });
    sel.call_at(past + Duration::from_millis(1), |_| panic!("deliberate"));
    sel.call_at(past + Duration::from_millis(2), record("after"));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sel.run_once(Some(Duration::ZERO))
    }));
    assert!(outcome.is_err(), "the panic unwinds out of run_once");
    assert_eq!(sel.timer_count(), 2, "`new` and `after` are still pending");
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 2);
    assert_eq!(take(&fired), ["new", "after"]);
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}
