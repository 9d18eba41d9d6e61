//! What the dispatch, churn and instruction-count benches share: always-readable and idle
//! sources, and the same workload written against selreactor and each peer.
//!
//! Every peer gets the same eventfds and does the same thing per event (bumps a counter), so
//! the only difference measured is the reactor layer: selreactor's owned sources and boxed
//! callbacks; raw `polling` and raw epoll with a hand-written key dispatch; mio with a `Vec` of
//! boxed closures (what a mio user writes); calloop with its own callbacks.

// Each bench binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::event::{epoll, eventfd, EventfdFlags};

/// The most ready sources any bench uses (one wait collects up to 1024 events).
pub const MAX_READY: usize = 1024;

/// A key no population member uses, for the churned registration.
const CHURN_KEY: usize = 1 << 30;

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
pub const PEERS: [&str; 5] = ["selreactor", "polling", "epoll", "mio", "calloop"];

/// Builds the named peer over `fds` (plus one spare idle eventfd for churn).
pub fn build(peer: &str, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Reactor>> {
    Ok(match peer {
        "selreactor" => Box::new(SelreactorPeer::new(fds)?),
        "polling" => Box::new(PollingPeer::new(fds)?),
        "epoll" => Box::new(EpollPeer::new(fds)?),
        "mio" => Box::new(MioPeer::new(fds)?),
        "calloop" => Box::new(CalloopPeer::new(fds)?),
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

/// mio (edge-triggered) with a `Vec` of boxed closures indexed by token.
pub struct MioPeer {
    poll: mio::Poll,
    events: mio::Events,
    handlers: Vec<Box<dyn FnMut()>>,
    sources: Vec<OwnedFd>,
    spare: OwnedFd,
}

impl MioPeer {
    pub fn new(sources: Vec<OwnedFd>) -> io::Result<Self> {
        let poll = mio::Poll::new()?;
        let hits = Rc::new(Cell::new(0u64));
        let mut handlers: Vec<Box<dyn FnMut()>> = Vec::with_capacity(sources.len());
        for (token, fd) in sources.iter().enumerate() {
            poll.registry().register(
                &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                mio::Token(token),
                mio::Interest::READABLE,
            )?;
            let hits = Rc::clone(&hits);
            handlers.push(Box::new(move || hits.set(hits.get() + 1)));
        }
        Ok(MioPeer {
            poll,
            events: mio::Events::with_capacity(1024),
            handlers,
            sources,
            spare: idle_eventfd()?,
        })
    }
}

impl Reactor for MioPeer {
    fn turn(&mut self) -> usize {
        self.poll
            .poll(&mut self.events, Some(Duration::ZERO))
            .expect("poll");
        let mut ran = 0;
        for event in self.events.iter() {
            if let Some(handler) = self.handlers.get_mut(event.token().0) {
                handler();
                ran += 1;
            }
        }
        ran
    }

    fn churn(&mut self) {
        let raw = self.spare.as_raw_fd();
        let registry = self.poll.registry();
        registry
            .register(
                &mut mio::unix::SourceFd(&raw),
                mio::Token(CHURN_KEY),
                mio::Interest::READABLE,
            )
            .expect("register");
        registry
            .deregister(&mut mio::unix::SourceFd(&raw))
            .expect("deregister");
    }

    fn poke_ready(&mut self, ready: usize) {
        for fd in &self.sources[..ready] {
            poke(fd).expect("poke");
        }
    }
}

/// calloop: `Generic` sources in level mode, each with its own callback, counting into the
/// loop's shared data.
pub struct CalloopPeer {
    event_loop: calloop::EventLoop<'static, u64>,
    hits: u64,
    sources: Vec<Rc<OwnedFd>>,
    spare: Rc<OwnedFd>,
}

impl CalloopPeer {
    pub fn new(fds: Vec<OwnedFd>) -> io::Result<Self> {
        let event_loop = calloop::EventLoop::try_new().map_err(io::Error::other)?;
        let sources: Vec<Rc<OwnedFd>> = fds.into_iter().map(Rc::new).collect();
        for fd in &sources {
            let source = calloop::generic::Generic::new(
                Rc::clone(fd),
                calloop::Interest::READ,
                calloop::Mode::Level,
            );
            event_loop
                .handle()
                .insert_source(source, |_, _, hits: &mut u64| {
                    *hits += 1;
                    Ok(calloop::PostAction::Continue)
                })
                .map_err(|e| e.error)
                .map_err(io::Error::other)?;
        }
        Ok(CalloopPeer {
            event_loop,
            hits: 0,
            sources,
            spare: Rc::new(idle_eventfd()?),
        })
    }
}

impl Reactor for CalloopPeer {
    fn turn(&mut self) -> usize {
        let before = self.hits;
        self.event_loop
            .dispatch(Some(Duration::ZERO), &mut self.hits)
            .expect("dispatch");
        (self.hits - before) as usize
    }

    fn churn(&mut self) {
        let handle = self.event_loop.handle();
        let source = calloop::generic::Generic::new(
            Rc::clone(&self.spare),
            calloop::Interest::READ,
            calloop::Mode::Level,
        );
        let token = handle
            .insert_source(source, |_, _, _: &mut u64| {
                Ok(calloop::PostAction::Continue)
            })
            .map_err(|e| e.error)
            .expect("insert_source");
        handle.remove(token);
    }

    fn poke_ready(&mut self, ready: usize) {
        for fd in &self.sources[..ready] {
            poke(&**fd).expect("poke");
        }
    }
}
