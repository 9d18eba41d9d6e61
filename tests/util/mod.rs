//! Helpers shared by the integration tests: descriptors, the kernel's view of the selector,
//! drop counters and a lock for tests that count descriptors.
//!
//! Each test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use selreactor::{Interest, Token};

/// The environment variable `scripts/valgrind.sh` sets: tests scale their counts down and skip
/// tight timing assertions when it is `1`.
pub const UNDER_VALGRIND_VAR: &str = "SELREACTOR_UNDER_VALGRIND";

/// Whether the tests run under valgrind (see [`UNDER_VALGRIND_VAR`]).
pub fn under_valgrind() -> bool {
    std::env::var_os(UNDER_VALGRIND_VAR).is_some_and(|v| v == "1")
}

/// `normal`, or `reduced` under valgrind, which runs code 20–50 times slower.
pub fn scaled(normal: usize, reduced: usize) -> usize {
    if under_valgrind() {
        reduced
    } else {
        normal
    }
}

/// A connected, non-blocking pair of Unix stream sockets.
pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

/// A socket with one byte waiting to be read, and its peer (keep the peer alive, or the socket
/// also reports a hang-up).
pub fn readable_pair() -> io::Result<(UnixStream, UnixStream)> {
    let (ours, mut peer) = pair()?;
    peer.write_all(b"x")?;
    Ok((ours, peer))
}

/// A non-blocking eventfd whose counter is 1: readable until read.
pub fn ready_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(1, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads an eventfd's counter (making it unreadable until written again).
pub fn read_eventfd(fd: &impl AsFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    File::from(fd.as_fd().try_clone_to_owned()?).read_exact(&mut buf)?;
    Ok(u64::from_ne_bytes(buf))
}

/// Reads until `WouldBlock` or end of stream; returns how many bytes were read.
pub fn drain(mut stream: &UnixStream) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the descriptor flags only; on a closed fd it fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// The number of open descriptors of this process.
///
/// Only meaningful as a difference taken while no other thread opens or closes descriptors:
/// tests that use it hold [`serial`].
pub fn fd_count() -> io::Result<usize> {
    // The directory handle `read_dir` holds is listed too.
    Ok(fs::read_dir("/proc/self/fd")?.count() - 1)
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of one binary that count or reuse descriptor numbers. Every test in
/// such a binary takes it, so no other test opens descriptors in between.
pub fn serial() -> MutexGuard<'static, ()> {
    // A test that failed while holding it poisons it; the next test still gets a fair run.
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One entry of the kernel's epoll interest list (a `tfd:` line of fdinfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EpollEntry {
    pub fd: RawFd,
    pub events: u32,
    pub data: u64,
}

impl EpollEntry {
    pub fn wants_read(&self) -> bool {
        self.events & libc::EPOLLIN as u32 != 0
    }

    pub fn wants_write(&self) -> bool {
        self.events & libc::EPOLLOUT as u32 != 0
    }

    /// The interest this entry stands for.
    pub fn interest(&self) -> Interest {
        let mut interest = Interest::NONE;
        if self.wants_read() {
            interest |= Interest::READ;
        }
        if self.wants_write() {
            interest |= Interest::WRITE;
        }
        interest
    }

    /// Whether the entry carries `token` (the selector packs the generation above the index).
    pub fn is_for(&self, token: Token) -> bool {
        let (index, generation) = token_parts(token);
        self.data == (generation << 32 | index)
    }
}

/// A token's (index, generation), read from its documented `Display` form `#<index>v<gen>`.
pub fn token_parts(token: Token) -> (u64, u64) {
    let text = token.to_string();
    let (index, generation) = text
        .trim_start_matches('#')
        .split_once('v')
        .expect("a token displays as #<index>v<generation>");
    (
        index.parse().expect("numeric index"),
        generation.parse().expect("numeric generation"),
    )
}

/// Every `tfd:` line of `/proc/self/fdinfo/<epoll fd>`, including polling's own notification
/// descriptors.
pub fn all_epoll_entries(epoll: &impl AsRawFd) -> io::Result<Vec<EpollEntry>> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", epoll.as_raw_fd()))?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tfd:") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // tfd: <fd> events: <hex> data: <hex> pos:... ino:... sdev:...
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad tfd line: {line}"));
        if fields.len() < 5 || fields[1] != "events:" || fields[3] != "data:" {
            return Err(bad());
        }
        entries.push(EpollEntry {
            fd: fields[0].parse().map_err(|_| bad())?,
            events: u32::from_str_radix(fields[2], 16).map_err(|_| bad())?,
            data: u64::from_str_radix(fields[4], 16).map_err(|_| bad())?,
        });
    }
    entries.sort();
    Ok(entries)
}

/// The interest-list entries for registrations: polling's own descriptors (keyed `u64::MAX`)
/// left out.
pub fn epoll_entries(epoll: &impl AsRawFd) -> io::Result<Vec<EpollEntry>> {
    let mut entries = all_epoll_entries(epoll)?;
    entries.retain(|e| e.data != u64::MAX);
    Ok(entries)
}

/// The descriptors the kernel polls for registrations.
pub fn epoll_fds(epoll: &impl AsRawFd) -> io::Result<BTreeSet<RawFd>> {
    Ok(epoll_entries(epoll)?.iter().map(|e| e.fd).collect())
}

/// The entry for `fd`, if the kernel polls it.
pub fn epoll_entry(epoll: &impl AsRawFd, fd: RawFd) -> io::Result<Option<EpollEntry>> {
    Ok(epoll_entries(epoll)?.into_iter().find(|e| e.fd == fd))
}

/// Counts drops of the [`DropGuard`]s it hands out, for exactly-once checks. `Send`, so it also
/// works for handle calls and across threads.
#[derive(Clone, Debug, Default)]
pub struct DropCounter(Arc<AtomicUsize>);

impl DropCounter {
    pub fn new() -> DropCounter {
        DropCounter::default()
    }

    /// A value to move into a closure: dropping it bumps the count.
    pub fn guard(&self) -> DropGuard {
        DropGuard(Arc::clone(&self.0))
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A shared, single-threaded log of what ran.
pub type Log<T> = Rc<RefCell<Vec<T>>>;

pub fn log<T>() -> Log<T> {
    Rc::new(RefCell::new(Vec::new()))
}

/// Takes everything logged so far.
pub fn take<T>(log: &Log<T>) -> Vec<T> {
    std::mem::take(&mut *log.borrow_mut())
}

/// A short pause for "nothing should happen" checks.
pub const SETTLE: Duration = Duration::from_millis(10);

/// A callback that does nothing (the source stays ready if it was).
pub fn noop<T>() -> impl FnMut(&mut selreactor::Registry, &T, selreactor::Event<T>) -> io::Result<()>
{
    |_, _, _| Ok(())
}

/// A callback that logs `name` and the readiness it was given, and does nothing else.
pub fn recorder<T>(
    log: &Log<(&'static str, selreactor::Readiness)>,
    name: &'static str,
) -> impl FnMut(&mut selreactor::Registry, &T, selreactor::Event<T>) -> io::Result<()> {
    let log = Rc::clone(log);
    move |_, _, event| {
        log.borrow_mut().push((name, event.readiness()));
        Ok(())
    }
}

/// Just the names from a [`recorder`] log.
pub fn names(log: &Log<(&'static str, selreactor::Readiness)>) -> Vec<&'static str> {
    take(log).into_iter().map(|(name, _)| name).collect()
}

/// Whether the peer of `stream` has been closed: a blocking read sees end of stream.
pub fn peer_closed(stream: &mut UnixStream) -> io::Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => continue,
            // Closed with our bytes still unread in its buffer.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// A deterministic proptest runner for the model tests: `normal` cases (`reduced` under
/// valgrind), or `PROPTEST_CASES` when set. Returns the runner and its case count.
pub fn model_runner(normal: u32, reduced: u32) -> (proptest::test_runner::TestRunner, u32) {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if under_valgrind() { reduced } else { normal });
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    (TestRunner::new_with_rng(config, rng), cases)
}

/// A one-shot signal for async tests: `open` (from any thread) completes every `wait` (the
/// waiter's waker is woken from the opening thread, as a real cross-thread wake would be).
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<Mutex<(bool, Option<std::task::Waker>)>>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        let waker = {
            let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            state.0 = true;
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub fn is_open(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if state.0 {
                return std::task::Poll::Ready(());
            }
            state.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// Runs `op` again while it fails with `Interrupted`, for up to `limit` in all.
///
/// A blocking socket call with a timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`) returns `EINTR` when
/// the process is stopped and continued (Ctrl-Z and `fg`, a debugger, a loaded host), even
/// without any signal handler. `read_exact` and `write_all` retry by themselves; a single
/// `read` or `write` needs this. The limit keeps a call that keeps being interrupted (and so
/// never reaches its own timeout) from blocking a broken test for ever.
pub fn retry_interrupted<T>(
    limit: Duration,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let start = Instant::now();
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && start.elapsed() < limit => {}
            other => return other,
        }
    }
}

/// Joins helper threads in an order that cannot block: whichever finishes first is looked at
/// first, and the first failure (an `Err` or a panic) is returned at once, even while other
/// threads are stuck because of it (a writer blocked on a socket its failed reader no longer
/// drains). Threads still running after `limit` fail the test with `TimedOut` (a watchdog).
/// Threads left behind are detached; the test's sockets closing as it returns unblocks them.
/// On success, the results come in the order of `threads`.
pub fn join_all<T>(threads: Vec<JoinHandle<io::Result<T>>>, limit: Duration) -> io::Result<Vec<T>> {
    let deadline = Instant::now() + limit;
    let mut running: Vec<_> = threads.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = running.iter().map(|_| None).collect();
    while running.iter().any(Option::is_some) {
        let mut progressed = false;
        for (slot, result) in running.iter_mut().zip(&mut results) {
            if !slot.as_ref().is_some_and(JoinHandle::is_finished) {
                continue;
            }
            let thread = slot.take().expect("checked above");
            let value = thread
                .join()
                .map_err(|_| io::Error::other("a helper thread panicked"))??;
            *result = Some(value);
            progressed = true;
        }
        if !progressed {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("helper threads still running after {limit:?}"),
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(results.into_iter().map(|r| r.expect("joined")).collect())
}

/// How long a test that waits on the loop may run before its [`watchdog`] ends the process.
pub const HUNG_AFTER: Duration = Duration::from_secs(60);

/// Disarms its watchdog when dropped.
#[must_use = "the watchdog is disarmed as soon as this guard is dropped"]
pub struct Watchdog {
    disarmed: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

/// Ends the whole test process with a message if the calling test is still running after
/// `limit` (hold the guard for the test's duration). For tests that block in `run()` or an
/// unbounded `run_once`: if the wake-up, stop or timer they wait for is lost, they fail instead
/// of hanging the suite.
pub fn watchdog(limit: Duration) -> Watchdog {
    let disarmed = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let test = thread::current().name().unwrap_or("a test").to_owned();
    let flag = Arc::clone(&disarmed);
    thread::spawn(move || {
        let (lock, changed) = &*flag;
        let done = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, _) = changed
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        if !*done {
            // Straight to the descriptor: `eprintln!` output of a test's threads is captured,
            // and the capture dies with the process.
            let _ = writeln!(
                io::stderr(),
                "{test}: still running after {limit:?}: it hung; the watchdog ends the process"
            );
            std::process::exit(101);
        }
    });
    Watchdog { disarmed }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, changed) = &*self.disarmed;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }
}

/// This process's children in state Z (exited, not reaped), from procfs.
pub fn zombies() -> io::Result<usize> {
    let me = std::process::id().to_string();
    let mut count = 0;
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path().join("stat");
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue; // gone meanwhile, or not a process
        };
        // "pid (comm) state ppid ...": the comm may hold spaces, so split after its ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if let (Some("Z"), Some(ppid)) = (fields.next(), fields.next()) {
            count += usize::from(ppid == me);
        }
    }
    Ok(count)
}
