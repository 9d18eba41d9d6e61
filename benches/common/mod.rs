//! What the dispatch and churn benches share: always-readable and idle sources, the same
//! workload written against selreactor and each baseline, and the benchmark groups themselves.
//!
//! Every peer gets the same eventfds and does the same thing per event (bumps a counter), so
//! the only difference measured is the reactor layer: selreactor's owned sources and boxed
//! callbacks against raw `polling` and raw epoll with a hand-written key dispatch. The lab
//! (`lab/`) reuses this file and adds mio and calloop to the same groups.

// Each bench binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rustix::event::{epoll, eventfd, EventfdFlags};

/// The most ready sources any bench uses (one wait collects up to 1024 events).
pub const MAX_READY: usize = 1024;

/// A key no population member uses, for the churned registration.
pub const CHURN_KEY: usize = 1 << 30;

/// An eventfd whose counter is non-zero and never read: readable on every wait.
pub fn ready_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(1, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?)
}

/// An eventfd with a zero counter: never readable unless poked.
pub fn idle_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?)
}

/// `ready` ready sources followed by `idle` idle ones.
pub fn sources(ready: usize, idle: usize) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(ready + idle);
    for _ in 0..ready {
        fds.push(ready_eventfd()?);
    }
    for _ in 0..idle {
        fds.push(idle_eventfd()?);
    }
    Ok(fds)
}

/// Adds one to an eventfd's counter. A level-triggered poller needs no such thing to see the
/// source again; mio is edge-triggered and reports a source only after a new write, as it would
/// after new data arrived. Every peer gets the same pokes, outside the timed part.
pub fn poke(fd: impl AsFd) -> io::Result<()> {
    rustix::io::write(fd, &1u64.to_ne_bytes())?;
    Ok(())
}

/// Runs `iters` turns, poking the first `ready` sources before each, and returns the time spent
/// in the turns alone.
pub fn time_turns<R: Reactor + ?Sized>(reactor: &mut R, ready: usize, iters: u64) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        reactor.poke_ready(ready);
        let start = Instant::now();
        std::hint::black_box(reactor.turn());
        spent += start.elapsed();
    }
    spent
}

/// One reactor (or a hand-written loop over a raw poller) holding a population of sources.
pub trait Reactor {
    /// One zero-timeout wait and the dispatch of what it found; returns how many callbacks ran.
    fn turn(&mut self) -> usize;

    /// Registers one more (idle) source and unregisters it again, keeping the source open.
    fn churn(&mut self);

    /// Pokes the first `ready` sources (see [`poke`]).
    fn poke_ready(&mut self, ready: usize);
}

/// The peers, by the names the benches print.
pub const PEERS: [&str; 3] = ["selreactor", "polling", "epoll"];

/// Builds a named peer over its sources; [`build`] for the peers here.
pub type Build = fn(&str, Vec<OwnedFd>) -> io::Result<Box<dyn Reactor>>;

/// Builds the named peer over `fds` (plus one spare idle eventfd for churn).
pub fn build(peer: &str, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Reactor>> {
    Ok(match peer {
        "selreactor" => Box::new(SelreactorPeer::new(fds)?),
        "polling" => Box::new(PollingPeer::new(fds)?),
        "epoll" => Box::new(EpollPeer::new(fds)?),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                other.to_owned(),
            ))
        }
    })
}

/// Checks that a peer really dispatches `expected` events per turn before it is measured, so
/// a broken peer cannot look fast.
pub fn check_turn(peer: &str, reactor: &mut dyn Reactor, ready: usize) {
    for _ in 0..3 {
        reactor.poke_ready(ready);
        let ran = reactor.turn();
        assert_eq!(
            ran, ready,
            "{peer}: expected {ready} callbacks per turn, got {ran}"
        );
    }
}

/// selreactor: sources owned by the selector, one boxed closure each.
pub struct SelreactorPeer {
    sel: selreactor::Selector,
    hits: Rc<Cell<u64>>,
    /// Duplicates of the first sources' descriptors (same eventfds), so poking costs what it
    /// costs the other peers instead of going through `Registry::get`.
    pokers: Vec<OwnedFd>,
    spare: Option<OwnedFd>,
}

impl SelreactorPeer {
    pub fn new(fds: Vec<OwnedFd>) -> io::Result<Self> {
        let mut sel = selreactor::Selector::new()?;
        let hits = Rc::new(Cell::new(0));
        let pokers = fds
            .iter()
            .take(MAX_READY)
            .map(OwnedFd::try_clone)
            .collect::<io::Result<_>>()?;
        for fd in fds {
            let hits = Rc::clone(&hits);
            sel.register(fd, selreactor::Interest::READ, move |_, _, _| {
                hits.set(hits.get() + 1);
                Ok(())
            })?;
        }
        Ok(SelreactorPeer {
            sel,
            hits,
            pokers,
            spare: Some(idle_eventfd()?),
        })
    }
}

impl Reactor for SelreactorPeer {
    fn turn(&mut self) -> usize {
        let before = self.hits.get();
        let ran = self.sel.run_once(Some(Duration::ZERO)).expect("run_once");
        debug_assert_eq!(self.hits.get() - before, ran as u64);
        ran
    }

    fn churn(&mut self) {
        let fd = self.spare.take().expect("spare source");
        let key = self
            .sel
            .register(fd, selreactor::Interest::READ, |_, _, _| Ok(()))
            .expect("register");
        self.spare = Some(self.sel.unregister(key).expect("unregister"));
    }

    fn poke_ready(&mut self, ready: usize) {
        for fd in &self.pokers[..ready] {
            poke(fd).expect("poke");
        }
    }
}

/// Raw `polling` in level mode, with the dispatch a hand-written loop does: index by key.
pub struct PollingPeer {
    poller: polling::Poller,
    events: polling::Events,
    sources: Vec<OwnedFd>,
    hits: Vec<u64>,
    spare: OwnedFd,
}

impl PollingPeer {
    pub fn new(sources: Vec<OwnedFd>) -> io::Result<Self> {
        let poller = polling::Poller::new()?;
        for (key, fd) in sources.iter().enumerate() {
            // SAFETY: `fd` stays open in `sources` until `Drop` has deleted it from the poller.
            unsafe {
                poller.add_with_mode(
                    fd.as_raw_fd(),
                    polling::Event::readable(key),
                    polling::PollMode::Level,
                )?;
            }
        }
        Ok(PollingPeer {
            poller,
            events: polling::Events::with_capacity(std::num::NonZeroUsize::new(1024).unwrap()),
            hits: vec![0; sources.len()],
            sources,
            spare: idle_eventfd()?,
        })
    }
}

impl Reactor for PollingPeer {
    fn turn(&mut self) -> usize {
        self.events.clear();
        self.poller
            .wait(&mut self.events, Some(Duration::ZERO))
            .expect("wait");
        let mut ran = 0;
        for event in self.events.iter() {
            if let Some(hits) = self.hits.get_mut(event.key) {
                *hits += 1;
                ran += 1;
            }
        }
        ran
    }

    fn churn(&mut self) {
        // SAFETY: `spare` outlives its registration, which is deleted right below.
        unsafe {
            self.poller
                .add_with_mode(
                    self.spare.as_raw_fd(),
                    polling::Event::readable(CHURN_KEY),
                    polling::PollMode::Level,
                )
                .expect("add");
        }
        self.poller.delete(&self.spare).expect("delete");
    }

    fn poke_ready(&mut self, ready: usize) {
        for fd in &self.sources[..ready] {
            poke(fd).expect("poke");
        }
    }
}

impl Drop for PollingPeer {
    fn drop(&mut self) {
        for fd in &self.sources {
            let _ = self.poller.delete(fd);
        }
    }
}

/// Raw level-triggered epoll through rustix: the floor any epoll reactor can reach.
pub struct EpollPeer {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
    sources: Vec<OwnedFd>,
    hits: Vec<u64>,
    spare: OwnedFd,
}

impl EpollPeer {
    pub fn new(sources: Vec<OwnedFd>) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        for (key, fd) in sources.iter().enumerate() {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(key as u64),
                epoll::EventFlags::IN,
            )?;
        }
        Ok(EpollPeer {
            epoll,
            events: Vec::with_capacity(1024),
            hits: vec![0; sources.len()],
            sources,
            spare: idle_eventfd()?,
        })
    }
}

impl Reactor for EpollPeer {
    fn turn(&mut self) -> usize {
        self.events.clear();
        let zero = rustix::event::Timespec::default();
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&zero),
        )
        .expect("epoll_wait");
        let mut ran = 0;
        for event in &self.events {
            if let Some(hits) = self.hits.get_mut(event.data.u64() as usize) {
                *hits += 1;
                ran += 1;
            }
        }
        ran
    }

    fn churn(&mut self) {
        epoll::add(
            &self.epoll,
            &self.spare,
            epoll::EventData::new_u64(CHURN_KEY as u64),
            epoll::EventFlags::IN,
        )
        .expect("add");
        epoll::delete(&self.epoll, &self.spare).expect("delete");
    }

    fn poke_ready(&mut self, ready: usize) {
        for fd in &self.sources[..ready] {
            poke(fd).expect("poke");
        }
    }
}

/// `dispatch/ready`: M always-readable eventfds, every one ready on every turn.
pub fn ready_sources(c: &mut Criterion, peers: &[&str], build: Build) {
    let mut group = c.benchmark_group("dispatch/ready");
    for ready in [1, 16, 256, 1024] {
        group.throughput(Throughput::Elements(ready as u64));
        // The untimed pokes dominate the wall time of large turns: measure those for less.
        let measure = if ready >= 256 { 1 } else { 2 };
        group.measurement_time(Duration::from_secs(measure));
        for &peer in peers {
            let mut reactor = build(peer, sources(ready, 0).expect("eventfds")).expect(peer);
            check_turn(peer, reactor.as_mut(), ready);
            group.bench_with_input(BenchmarkId::new(peer, ready), &ready, |b, &ready| {
                b.iter_custom(|iters| time_turns(reactor.as_mut(), ready, iters))
            });
        }
    }
    group.finish();
}

/// `dispatch/one_ready_among`: one ready source among 10 or 10,000 registered idle ones.
pub fn one_ready_among_idle(c: &mut Criterion, peers: &[&str], build: Build) {
    let mut group = c.benchmark_group("dispatch/one_ready_among");
    group.throughput(Throughput::Elements(1));
    for registered in [10, 10_000] {
        for &peer in peers {
            let fds = sources(1, registered - 1).expect("eventfds");
            let mut reactor = build(peer, fds).expect(peer);
            check_turn(peer, reactor.as_mut(), 1);
            group.bench_with_input(BenchmarkId::new(peer, registered), &registered, |b, _| {
                b.iter_custom(|iters| time_turns(reactor.as_mut(), 1, iters))
            });
        }
    }
    group.finish();
}

/// `churn/register_unregister`: one source registered and unregistered again, among 0, 1,000
/// and 10,000 other live registrations.
pub fn register_unregister(c: &mut Criterion, peers: &[&str], build: Build) {
    let mut group = c.benchmark_group("churn/register_unregister");
    for live in [0, 1_000, 10_000] {
        for &peer in peers {
            let mut reactor = build(peer, sources(0, live).expect("eventfds")).expect(peer);
            // A broken churn (a registration left behind) fails here, not in the numbers.
            reactor.churn();
            reactor.churn();
            group.bench_with_input(BenchmarkId::new(peer, live), &live, |b, _| {
                b.iter(|| reactor.churn())
            });
        }
    }
    group.finish();
}

/// The settings every dispatch and churn group runs with (two cores, a few minutes in all).
pub fn config(measurement: Duration) -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measurement)
}
