//! A model-based property test (P1): random sequences of registry operations on real socket
//! pairs and pipes, checked after every step against a plain model of what should be live,
//! polled and dispatched.
//!
//! Cases: `PROPTEST_CASES` (default 256, 16 under valgrind), each up to 60 operations, from a
//! fixed ChaCha seed so every run explores the same sequences. The model test shares this
//! binary with the P5 key test below; both take [`serial`], so descriptor counts are exact.

mod util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use selreactor::{Interest, Key, Readiness, Registry, Selector};
use util::*;

/// A registered source: one end of a socket pair (always writable) or a pipe's read end
/// (never writable).
enum Source {
    Socket(UnixStream),
    Pipe(File),
}

impl AsFd for Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Socket(s) => s.as_fd(),
            Source::Pipe(p) => p.as_fd(),
        }
    }
}

impl Source {
    /// Reads everything waiting.
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            let read = match self {
                Source::Socket(s) => (&*s).read(&mut buf),
                Source::Pipe(p) => (&*p).read(&mut buf),
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Socket,
    Pipe,
}

/// What a callback does besides recording that it ran.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Record,
    RemoveSelf,
    /// Removes the registration picked by the index among all issued so far (possibly itself,
    /// possibly already gone).
    RemoveOther(Index),
    /// Like `RemoveOther`, then registers a new, already readable socket, which takes the freed
    /// slot while the removed one's event may still be pending in the batch.
    ReplaceOther(Index),
}

#[derive(Clone, Debug)]
enum Op {
    Register(Kind, Interest, Behaviour),
    Modify(Index, Interest),
    Unregister(Index),
    Remove(Index),
    MakeReady(Index),
    Drain(Index),
    RunOnce,
}

fn interest() -> impl Strategy<Value = Interest> {
    prop_oneof![
        Just(Interest::READ),
        Just(Interest::WRITE),
        Just(Interest::BOTH)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(Kind::Socket), Just(Kind::Pipe)];
    let behaviour = prop_oneof![
        3 => Just(Behaviour::Record),
        1 => Just(Behaviour::RemoveSelf),
        1 => any::<Index>().prop_map(Behaviour::RemoveOther),
        1 => any::<Index>().prop_map(Behaviour::ReplaceOther),
    ];
    prop_oneof![
        3 => (kind, interest(), behaviour).prop_map(|(k, i, b)| Op::Register(k, i, b)),
        2 => (any::<Index>(), prop_oneof![interest(), Just(Interest::NONE)])
            .prop_map(|(i, interest)| Op::Modify(i, interest)),
        1 => any::<Index>().prop_map(Op::Unregister),
        1 => any::<Index>().prop_map(Op::Remove),
        3 => any::<Index>().prop_map(Op::MakeReady),
        1 => any::<Index>().prop_map(Op::Drain),
        4 => Just(Op::RunOnce),
    ]
}

/// One registration ever issued in a case.
struct Issued {
    key: Key<Source>,
    fd: RawFd,
    kind: Kind,
    behaviour: Behaviour,
    /// `None` once the test has dropped it (after the registration ended).
    peer: Option<Box<dyn Write>>,
    live: bool,
    interest: Interest,
    has_data: bool,
}

/// What callbacks report: who ran, with what, and whether they saw themselves correctly.
#[derive(Debug)]
struct Dispatch {
    id: usize,
    readiness: Readiness,
    right_key_and_source: bool,
    /// For `RemoveOther` and `ReplaceOther`: the id it targeted.
    removed: Option<usize>,
}

/// A registration made by a callback, for the model to adopt when it replays the batch.
struct Spawned {
    key: Key<Source>,
    fd: RawFd,
    peer: Box<dyn Write>,
}

type Callback = Box<dyn FnMut(&mut Registry, &Source, selreactor::Event<Source>) -> io::Result<()>>;

/// What every callback shares with the test.
#[derive(Clone, Default)]
struct Shared {
    /// Every key issued, indexed by id (the order of registration).
    keys: Rc<RefCell<Vec<Key<Source>>>>,
    dispatches: Rc<RefCell<Vec<Dispatch>>>,
    spawned: Rc<RefCell<Vec<Spawned>>>,
}

impl Shared {
    fn callback(&self, id: usize, fd: RawFd, behaviour: Behaviour) -> Callback {
        let shared = self.clone();
        Box::new(move |reg, source, event| {
            let right = shared.keys.borrow().get(id) == Some(&event.key())
                && source.as_fd().as_raw_fd() == fd;
            let mut removed = None;
            match behaviour {
                Behaviour::Record => {}
                Behaviour::RemoveSelf => reg.remove(event.key())?,
                Behaviour::RemoveOther(target) | Behaviour::ReplaceOther(target) => {
                    let key = {
                        let keys = shared.keys.borrow();
                        let target = target.index(keys.len());
                        removed = Some(target);
                        keys[target]
                    };
                    match reg.remove(key) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                    if let Behaviour::ReplaceOther(_) = behaviour {
                        let (ours, mut peer) = pair()?;
                        peer.write_all(b"x")?;
                        let fd = ours.as_raw_fd();
                        let id = shared.keys.borrow().len();
                        let callback = shared.callback(id, fd, Behaviour::Record);
                        let key = reg.register(Source::Socket(ours), Interest::READ, callback)?;
                        shared.keys.borrow_mut().push(key);
                        let peer = Box::new(peer);
                        shared.spawned.borrow_mut().push(Spawned { key, fd, peer });
                    }
                }
            }
            shared.dispatches.borrow_mut().push(Dispatch {
                id,
                readiness: event.readiness(),
                right_key_and_source: right,
                removed,
            });
            Ok(())
        })
    }
}

struct Case {
    sel: Selector,
    issued: Vec<Issued>,
    shared: Shared,
    baseline_fds: usize,
}

impl Case {
    fn new() -> io::Result<Case> {
        let sel = Selector::new()?;
        let baseline_fds = fd_count()?;
        Ok(Case {
            sel,
            issued: Vec::new(),
            shared: Shared::default(),
            baseline_fds,
        })
    }

    fn pick(&self, index: Index) -> Option<usize> {
        (!self.issued.is_empty()).then(|| index.index(self.issued.len()))
    }

    fn register(&mut self, kind: Kind, interest: Interest, behaviour: Behaviour) -> io::Result<()> {
        let (source, peer): (Source, Box<dyn Write>) = match kind {
            Kind::Socket => {
                let (ours, peer) = pair()?;
                (Source::Socket(ours), Box::new(peer))
            }
            Kind::Pipe => {
                let (read, write) = pipe()?;
                (Source::Pipe(read), Box::new(write))
            }
        };
        let fd = source.as_fd().as_raw_fd();
        let id = self.issued.len();
        let callback = self.shared.callback(id, fd, behaviour);
        let key = self.sel.register(source, interest, callback)?;
        self.shared.keys.borrow_mut().push(key);
        self.issued.push(Issued {
            key,
            fd,
            kind,
            behaviour,
            peer: Some(peer),
            live: true,
            interest,
            has_data: false,
        });
        Ok(())
    }

    /// Marks `id` gone in the model and closes the test's end of it.
    fn end(&mut self, id: usize) {
        let issued = &mut self.issued[id];
        issued.live = false;
        issued.peer = None;
    }

    /// Whether the model says `id` is ready for its interest, and with what.
    fn expected(&self, id: usize) -> Option<(bool, bool)> {
        let s = &self.issued[id];
        let readable = s.has_data && s.interest.is_readable();
        let writable = s.kind == Kind::Socket && s.interest.is_writable();
        (s.live && (readable || writable)).then_some((readable, writable))
    }

    fn apply(&mut self, op: &Op) -> io::Result<()> {
        match *op {
            Op::Register(kind, interest, behaviour) => self.register(kind, interest, behaviour)?,
            Op::Modify(index, interest) => {
                let Some(id) = self.pick(index) else {
                    return Ok(());
                };
                let result = self.sel.modify(self.issued[id].key, interest);
                if self.issued[id].live {
                    result?;
                    self.issued[id].interest = interest;
                } else {
                    assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
                }
            }
            Op::Unregister(index) => {
                let Some(id) = self.pick(index) else {
                    return Ok(());
                };
                let result = self.sel.unregister(self.issued[id].key);
                if self.issued[id].live {
                    let source = result?;
                    assert_eq!(source.as_fd().as_raw_fd(), self.issued[id].fd);
                    self.end(id);
                } else {
                    assert_eq!(
                        result.map(drop).map_err(|e| e.kind()),
                        Err(io::ErrorKind::NotFound)
                    );
                }
            }
            Op::Remove(index) => {
                let Some(id) = self.pick(index) else {
                    return Ok(());
                };
                let result = self.sel.remove(self.issued[id].key);
                if self.issued[id].live {
                    result?;
                    self.end(id);
                } else {
                    assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
                }
            }
            Op::MakeReady(index) => {
                let Some(id) = self.pick(index) else {
                    return Ok(());
                };
                if let Some(peer) = self.issued[id].peer.as_mut() {
                    peer.write_all(b"x")?;
                    self.issued[id].has_data = true;
                }
            }
            Op::Drain(index) => {
                let Some(id) = self.pick(index) else {
                    return Ok(());
                };
                let source = self.sel.get(self.issued[id].key);
                assert_eq!(source.is_some(), self.issued[id].live);
                if let Some(source) = source {
                    source.drain()?;
                    self.issued[id].has_data = false;
                }
            }
            Op::RunOnce => self.run_once()?,
        }
        Ok(())
    }

    fn run_once(&mut self) -> io::Result<()> {
        let ready: BTreeMap<usize, (bool, bool)> = (0..self.issued.len())
            .filter_map(|id| self.expected(id).map(|e| (id, e)))
            .collect();
        let ran = self.sel.run_once(Some(Duration::ZERO))?;
        let dispatches = std::mem::take(&mut *self.shared.dispatches.borrow_mut());
        let mut spawned = std::mem::take(&mut *self.shared.spawned.borrow_mut()).into_iter();
        assert_eq!(ran, dispatches.len());
        let mut seen = Vec::new();
        // Replay the batch in the order it ran: each dispatch must be for a registration the
        // model still holds at that point, ready as the model says, and not seen before.
        for d in dispatches {
            assert!(
                d.right_key_and_source,
                "a callback got another's key or source: {d:?}"
            );
            let (readable, writable) = *ready
                .get(&d.id)
                .unwrap_or_else(|| panic!("dispatched but not ready: {d:?}"));
            assert!(self.issued[d.id].live, "dispatched after removal: {d:?}");
            assert!(
                !seen.contains(&d.id),
                "dispatched twice in one iteration: {d:?}"
            );
            assert_eq!(
                (d.readiness.is_readable(), d.readiness.is_writable()),
                (readable, writable),
                "{d:?}"
            );
            seen.push(d.id);
            match self.issued[d.id].behaviour {
                Behaviour::Record => {}
                Behaviour::RemoveSelf => self.end(d.id),
                Behaviour::RemoveOther(_) | Behaviour::ReplaceOther(_) => {
                    let target = d.removed.expect("recorded");
                    if self.issued[target].live {
                        self.end(target);
                    }
                }
            }
            if let Behaviour::ReplaceOther(_) = self.issued[d.id].behaviour {
                let Spawned { key, fd, peer } = spawned.next().expect("one per replacement");
                self.issued.push(Issued {
                    key,
                    fd,
                    kind: Kind::Socket,
                    behaviour: Behaviour::Record,
                    peer: Some(peer),
                    live: true,
                    interest: Interest::READ,
                    has_data: true,
                });
            }
        }
        for &id in ready.keys() {
            assert!(
                seen.contains(&id) || !self.issued[id].live,
                "registration {id} was ready, live and not dispatched"
            );
        }
        assert!(
            spawned.next().is_none(),
            "every registration made in the batch adopted"
        );
        Ok(())
    }

    /// The selector's state against the model's.
    fn check(&self) -> io::Result<()> {
        let live: Vec<&Issued> = self.issued.iter().filter(|s| s.live).collect();
        assert_eq!(self.sel.len(), live.len());
        for s in &self.issued {
            assert_eq!(self.sel.contains(s.key), s.live);
            assert_eq!(self.sel.interest(s.key), s.live.then_some(s.interest));
        }
        let mut expected: Vec<(RawFd, Interest)> = live
            .iter()
            .filter(|s| !s.interest.is_none())
            .map(|s| (s.fd, s.interest))
            .collect();
        expected.sort_by_key(|&(fd, _)| fd);
        let entries = epoll_entries(&self.sel)?;
        let actual: Vec<(RawFd, Interest)> = entries.iter().map(|e| (e.fd, e.interest())).collect();
        assert_eq!(actual, expected, "the kernel's interest list");
        for entry in entries {
            let owner = live
                .iter()
                .find(|s| s.fd == entry.fd)
                .expect("listed above");
            assert!(entry.is_for(owner.key.token()), "{entry:?}");
        }
        // Each live registration holds its source and the test its peer: two descriptors.
        assert_eq!(fd_count()?, self.baseline_fds + 2 * live.len());
        Ok(())
    }
}

fn run_case(ops: &[Op]) -> io::Result<()> {
    let mut case = Case::new()?;
    for op in ops {
        case.apply(op)?;
        case.check()?;
    }
    drop(case.sel);
    drop(case.issued);
    Ok(())
}

#[test]
fn the_registry_matches_a_simple_model_under_random_operations() {
    let _serial = serial();
    let baseline = fd_count().expect("fd count");
    let (mut runner, cases) = model_runner(256, 16);
    let outcome = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        run_case(&ops).map_err(|e| TestCaseError::fail(e.to_string()))
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    assert_eq!(
        fd_count().expect("fd count"),
        baseline,
        "every case released everything"
    );
    eprintln!("model: {cases} cases of up to 59 operations passed");
}

/// P5 through the public API: however often a slot is reused, every key issued for it before
/// stays rejected, and no two registrations ever share a token.
#[test]
fn keys_stay_rejected_across_many_reuses_of_one_slot() -> io::Result<()> {
    let _serial = serial();
    let reuses = scaled(20_000, 1_000);
    let mut sel = Selector::new()?;
    let mut old = Vec::with_capacity(reuses);
    let mut tokens = std::collections::BTreeSet::new();
    for _ in 0..reuses {
        let key = sel.register(ready_eventfd()?, Interest::READ, noop())?;
        assert_eq!(key.token().index(), 0, "one slot, reused");
        assert!(
            tokens.insert(key.token()),
            "token {:?} issued twice",
            key.token()
        );
        sel.remove(key)?;
        old.push(key);
    }
    let live = sel.register(ready_eventfd()?, Interest::READ, noop())?;
    assert_eq!(live.token().index(), 0);
    for key in old {
        assert!(!sel.contains(key));
        assert_eq!(
            sel.modify(key, Interest::WRITE).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        assert_eq!(
            sel.remove(key).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }
    assert_eq!(sel.interest(live), Some(Interest::READ));
    assert_eq!(
        sel.run_once(Some(Duration::ZERO))?,
        1,
        "only the live one dispatches"
    );
    Ok(())
}
