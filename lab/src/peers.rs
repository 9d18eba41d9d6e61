//! The peers the lab adds to the root's dispatch and churn benches: mio and calloop, written
//! the way a user of each writes a callback-per-source loop, over the same eventfds.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

pub use crate::baseline::*;

/// Every peer, by the names the benches print: the root's baselines, then mio and calloop.
pub const ALL_PEERS: [&str; 5] = ["selreactor", "polling", "epoll", "mio", "calloop"];

/// Builds any peer of [`ALL_PEERS`] over `fds` (plus one spare idle eventfd for churn).
pub fn build_any(peer: &str, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Reactor>> {
    Ok(match peer {
        "mio" => Box::new(MioPeer::new(fds)?),
        "calloop" => Box::new(CalloopPeer::new(fds)?),
        other => return build(other, fds),
    })
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
