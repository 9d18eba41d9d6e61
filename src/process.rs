//! Child processes on the loop: pipes to their stdin, stdout and stderr as transports, their
//! exit reported by a callback, and every child reaped.
//!
//! asyncio's `subprocess_exec`, in the shape of this crate's transports: each pipe you ask for
//! is driven by a [`Protocol`] of its own (a [`Lines`](crate::net::Lines) splitter, say), and
//! the exit status goes to a callback.
//!
//! ```
//! use selreactor::net::{PipeReader, Protocol, Transport};
//! use selreactor::process::Subprocess;
//! use selreactor::Selector;
//! use std::io;
//! use std::process::Command;
//!
//! /// Collects what the child writes.
//! struct Collect(Vec<u8>);
//!
//! impl Protocol<PipeReader> for Collect {
//!     fn data(&mut self, _: &mut Transport<'_, PipeReader>, data: &[u8]) -> io::Result<()> {
//!         self.0.extend_from_slice(data);
//!         Ok(())
//!     }
//!     fn lost(&mut self, _: &mut Transport<'_, PipeReader>, _: Option<io::Error>) {
//!         assert_eq!(self.0, b"hello\n");
//!     }
//! }
//!
//! let mut sel = Selector::new()?;
//! Subprocess::build()
//!     .stdout(Collect(Vec::new()))
//!     .on_exit(|_, status| assert!(status.unwrap().success()))
//!     .spawn(&mut sel, Command::new("echo").arg("hello"))?;
//! sel.run()?; // until the output has ended and the child has exited
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How the exit is watched
//!
//! On Linux, through a pidfd (`pidfd_open`): the child's own descriptor, readable once it has
//! exited, registered with the selector like any source. Elsewhere, or where `pidfd_open`
//! fails (an old kernel, a seccomp policy, no descriptor left), through a `SIGCHLD` watch
//! ([`Registry::on_signals`]) shared by the loop's children, which polls each of them with a
//! non-blocking `waitpid` of its own pid, never `waitpid(-1)`: children started elsewhere in
//! the program (by [`std::process::Command`]) are left to their owners.
//!
//! # Every child is reaped
//!
//! The exit callback runs once the child has been reaped. A child still running when the
//! selector is dropped is killed (`SIGKILL`) and reaped then, so no zombie is left behind and
//! no child outlives the loop that watched it unnoticed.

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::process::{Pid, Signal};

use crate::net::{start, ByteStream, ConnId, PipeReader, PipeWriter, Protocol};
use crate::{Interest, Key, Registry, Signals};

type Starter<T> = Box<dyn FnOnce(&mut Registry, T) -> io::Result<ConnId<T>>>;
type OnExit = Box<dyn FnOnce(&mut Registry, io::Result<ExitStatus>)>;

/// How to start a child: which of its standard streams become transports, and what to call
/// when it exits. Made by [`Subprocess::build`].
///
/// A stream given no protocol is left as the [`Command`] says (inherited by default).
pub struct SubprocessBuilder {
    stdin: Option<Starter<PipeWriter>>,
    stdout: Option<Starter<PipeReader>>,
    stderr: Option<Starter<PipeReader>>,
    on_exit: Option<OnExit>,
    sigchld: bool,
}

impl fmt::Debug for SubprocessBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubprocessBuilder")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("on_exit", &self.on_exit.is_some())
            .field("sigchld", &self.sigchld)
            .finish()
    }
}

/// A child process started on the loop: its pid, the ids of its pipes' transports, and
/// signals. `Copy`; it names the child only while it runs (then [`kill`](Subprocess::kill)
/// and friends fail with `NotFound`), so it never signals a process that reused the pid, and
/// only with the registry of the loop that started it (another one's finds nothing).
#[derive(Clone, Copy, Debug)]
pub struct Subprocess {
    id: u64,
    pid: u32,
    stdin: Option<ConnId<PipeWriter>>,
    stdout: Option<ConnId<PipeReader>>,
    stderr: Option<ConnId<PipeReader>>,
}

impl Subprocess {
    /// Starts describing a child to spawn.
    pub fn build() -> SubprocessBuilder {
        SubprocessBuilder {
            stdin: None,
            stdout: None,
            stderr: None,
            on_exit: None,
            sigchld: false,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The transport writing to the child's stdin, if one was asked for.
    pub fn stdin(&self) -> Option<ConnId<PipeWriter>> {
        self.stdin
    }

    /// The transport reading the child's stdout, if one was asked for.
    pub fn stdout(&self) -> Option<ConnId<PipeReader>> {
        self.stdout
    }

    /// The transport reading the child's stderr, if one was asked for.
    pub fn stderr(&self) -> Option<ConnId<PipeReader>> {
        self.stderr
    }

    /// Whether the child has not been reaped yet (it may have exited a moment ago).
    pub fn is_running(&self, registry: &mut Registry) -> bool {
        registry
            .state::<Children>()
            .is_some_and(|c| c.position(self.id).is_some())
    }

    /// Sends `signal` (`SIGTERM`, `SIGUSR1`, ...) to the child.
    ///
    /// # Errors
    ///
    /// - [`NotFound`](io::ErrorKind::NotFound) once the child has exited and been reaped;
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput) for a number that is not a signal;
    /// - the OS's error.
    pub fn send_signal(&self, registry: &mut Registry, signal: c_int) -> io::Result<()> {
        let signal = Signal::from_named_raw(signal).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no signal {signal}"))
        })?;
        let watch = registry
            .state::<Children>()
            .and_then(|c| c.position(self.id).map(|i| c.entries[i].pidfd))
            .ok_or_else(exited)?;
        if let Some(pidfd) = watch.and_then(|key| registry.get(key)) {
            return signal_pidfd(pidfd, signal);
        }
        // Not reaped yet (it is in the table), so the pid is still the child's.
        let pid = Pid::from_raw(self.pid as i32).ok_or_else(exited)?;
        Ok(rustix::process::kill_process(pid, signal)?)
    }

    /// Kills the child (`SIGKILL`). Its exit is reported as usual.
    ///
    /// # Errors
    ///
    /// As for [`send_signal`](Subprocess::send_signal).
    pub fn kill(&self, registry: &mut Registry) -> io::Result<()> {
        self.send_signal(registry, Signal::KILL.as_raw())
    }

    /// Asks the child to end (`SIGTERM`).
    ///
    /// # Errors
    ///
    /// As for [`send_signal`](Subprocess::send_signal).
    pub fn terminate(&self, registry: &mut Registry) -> io::Result<()> {
        self.send_signal(registry, Signal::TERM.as_raw())
    }
}

fn exited() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the process has already exited and been reaped",
    )
}

impl SubprocessBuilder {
    /// Pipes the child's stdin to a transport driven by `protocol` (a write-only one: write
    /// to it, and [`write_eof`](crate::net::Transport::write_eof) or
    /// [`close`](crate::net::Transport::close) to end the child's input).
    #[must_use]
    pub fn stdin<P: Protocol<PipeWriter>>(mut self, protocol: P) -> Self {
        self.stdin = Some(starter(protocol));
        self
    }

    /// Pipes the child's stdout to a transport driven by `protocol`.
    #[must_use]
    pub fn stdout<P: Protocol<PipeReader>>(mut self, protocol: P) -> Self {
        self.stdout = Some(starter(protocol));
        self
    }

    /// Pipes the child's stderr to a transport driven by `protocol`.
    #[must_use]
    pub fn stderr<P: Protocol<PipeReader>>(mut self, protocol: P) -> Self {
        self.stderr = Some(starter(protocol));
        self
    }

    /// Calls `on_exit` once the child has exited and been reaped, with its status, or with
    /// the error from collecting it (`ECHILD` if another part of the program reaped it first).
    /// Its output may still be arriving on its pipes: the exit and the end of its output are
    /// separate events (a grandchild may keep a pipe open after the child exits).
    #[must_use]
    pub fn on_exit<F>(mut self, on_exit: F) -> Self
    where
        F: FnOnce(&mut Registry, io::Result<ExitStatus>) + 'static,
    {
        self.on_exit = Some(Box::new(on_exit));
        self
    }

    /// Watches the exit through `SIGCHLD` even where a pidfd is available (the fallback
    /// elsewhere; see the [module docs](crate::process)).
    #[must_use]
    pub fn watch_by_sigchld(mut self) -> Self {
        self.sigchld = true;
        self
    }

    /// Spawns `command`, with a pipe for each stream given a protocol. The protocols'
    /// [`made`](Protocol::made) run on the next loop iteration.
    ///
    /// # Errors
    ///
    /// The OS's error spawning the child (`NotFound` for a program that does not exist), or
    /// putting its pipes or its watch on the loop. A child that started is then killed and
    /// reaped before this returns.
    pub fn spawn(self, registry: &mut Registry, command: &mut Command) -> io::Result<Subprocess> {
        if self.stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        if self.stdout.is_some() {
            command.stdout(Stdio::piped());
        }
        if self.stderr.is_some() {
            command.stderr(Stdio::piped());
        }
        let mut child = command.spawn()?;
        let pid = child.id();
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        // From here the table owns the child: whatever fails, dropping it kills and reaps.
        let children = children(registry);
        // Unique across loops, so a handle used with another loop's registry finds nothing.
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        children.entries.push(Entry {
            id,
            child,
            pidfd: None,
            on_exit: self.on_exit,
        });
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        let outcome = (|| {
            if let (Some(start), Some(pipe)) = (self.stdin, pipes.0) {
                stdin = Some(start(registry, PipeWriter::new(pipe)?)?);
            }
            if let (Some(start), Some(pipe)) = (self.stdout, pipes.1) {
                stdout = Some(start(registry, PipeReader::new(pipe)?)?);
            }
            if let (Some(start), Some(pipe)) = (self.stderr, pipes.2) {
                stderr = Some(start(registry, PipeReader::new(pipe)?)?);
            }
            watch(registry, id, pid, self.sigchld)
        })();
        if let Err(error) = outcome {
            // Undo it all: the caller hears of it through the error, not through callbacks
            // (the pipes' protocols have not been `made` yet, so `abort` ends them unheard).
            abort(registry, stdin);
            abort(registry, stdout);
            abort(registry, stderr);
            let children = registry.state::<Children>().expect("made above");
            if let Some(i) = children.position(id) {
                let mut entry = children.entries.swap_remove(i);
                entry.on_exit = None;
                let pidfd = entry.pidfd.take();
                drop(entry); // kills and reaps
                if let Some(key) = pidfd {
                    let _ = registry.remove(key);
                }
            }
            return Err(error);
        }
        Ok(Subprocess {
            id,
            pid,
            stdin,
            stdout,
            stderr,
        })
    }
}

fn abort<T: ByteStream>(registry: &mut Registry, pipe: Option<ConnId<T>>) {
    if let Some(mut transport) = pipe.and_then(|id| id.transport(registry).ok()) {
        transport.abort();
    }
}

fn starter<T: ByteStream, P: Protocol<T>>(protocol: P) -> Starter<T> {
    Box::new(move |reg, pipe| start(reg, pipe, protocol).map_err(io::Error::from))
}

/// The loop's children not yet reaped, in loop-wide state.
#[derive(Default)]
struct Children {
    entries: Vec<Entry>,
    /// The `SIGCHLD` watch, while a child is watched through it.
    sigchld: Option<Key<Signals>>,
}

impl Children {
    fn position(&self, id: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }
}

struct Entry {
    id: u64,
    child: Child,
    /// The pidfd watching it; `None` when `SIGCHLD` does.
    pidfd: Option<Key<OwnedFd>>,
    on_exit: Option<OnExit>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Reaped children answer from std's cache; a running one is killed and reaped, so that
        // none is left a zombie (or running on, unwatched).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn children(registry: &mut Registry) -> &mut Children {
    if registry.state::<Children>().is_none() {
        registry.insert_state(Children::default());
    }
    registry.state::<Children>().expect("inserted above")
}

/// Starts watching child `id` for its exit: a pidfd where there is one, else `SIGCHLD`.
fn watch(registry: &mut Registry, id: u64, pid: u32, sigchld: bool) -> io::Result<()> {
    if !sigchld {
        if let Some(pidfd) = open_pidfd(pid) {
            let key = registry.register(pidfd, Interest::READ, move |reg, _, _| {
                reap(reg, id);
                Ok(())
            })?;
            let children = children(registry);
            let i = children.position(id).expect("added by spawn");
            children.entries[i].pidfd = Some(key);
            return Ok(());
        }
    }
    if children(registry).sigchld.is_none() {
        let key = registry.on_signals(&[signal_hook::consts::SIGCHLD], |reg, _| {
            reap_unwatched(reg);
            Ok(())
        })?;
        children(registry).sigchld = Some(key);
    }
    // The child may have exited before the watch was installed: look once anyway.
    registry.call_soon(reap_unwatched);
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = Pid::from_raw(pid as i32)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn open_pidfd(_pid: u32) -> Option<OwnedFd> {
    None
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn signal_pidfd(pidfd: &OwnedFd, signal: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, signal)?)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn signal_pidfd(_pidfd: &OwnedFd, _signal: Signal) -> io::Result<()> {
    unreachable!("`open_pidfd` makes none here")
}

/// Reaps child `id` if it has exited, and reports it.
fn reap(registry: &mut Registry, id: u64) {
    let Some(children) = registry.state::<Children>() else {
        return;
    };
    let Some(i) = children.position(id) else {
        return;
    };
    let status = match children.entries[i].child.try_wait() {
        Ok(None) => return, // still running (a spurious wake-up)
        Ok(Some(status)) => Ok(status),
        Err(e) => Err(e),
    };
    let mut entry = children.entries.swap_remove(i);
    let last_by_sigchld =
        entry.pidfd.is_none() && !children.entries.iter().any(|e| e.pidfd.is_none());
    let sigchld = if last_by_sigchld {
        children.sigchld.take()
    } else {
        None
    };
    if let Some(key) = entry.pidfd.take() {
        let _ = registry.remove(key);
    }
    if let Some(key) = sigchld {
        // No child left to watch this way: the loop need not wait for signals any more.
        let _ = registry.remove(key);
    }
    let on_exit = entry.on_exit.take();
    drop(entry);
    if let Some(on_exit) = on_exit {
        on_exit(registry, status);
    }
}

/// Reaps every child the `SIGCHLD` watch is for that has exited (signals coalesce: one
/// `SIGCHLD` may stand for many exits).
fn reap_unwatched(registry: &mut Registry) {
    let ids: Vec<u64> = match registry.state::<Children>() {
        Some(children) => children
            .entries
            .iter()
            .filter(|e| e.pidfd.is_none())
            .map(|e| e.id)
            .collect(),
        None => return,
    };
    for id in ids {
        reap(registry, id);
    }
}
