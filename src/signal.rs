//! Unix signals as loop callbacks, through signal-hook's self-pipe.
//!
//! A signal handler may do almost nothing safely, so the handler signal-hook installs only sets
//! a per-signal flag and then writes a byte to a non-blocking socket; the loop polls the other
//! end like any source. On wake-up the pipe is drained *first* and the flags are swapped
//! *second*, which is the order that loses no signal: one that lands between the two either
//! has its flag seen now or leaves a byte behind for the next wake-up (at worst a spurious
//! wake-up with no flag set, which calls nothing).
//!
//! Removing the last watch of a signal gives it back its default action if that is what it had
//! before the first watch: see [`Restorer`].

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use signal_hook::consts::FORBIDDEN;
use signal_hook::low_level::{pipe, signal_name, unregister};
use signal_hook::SigId;

use crate::interest::Interest;
use crate::key::Key;
use crate::registry::Registry;

/// The source behind [`Registry::on_signals`]: the read end of a self-pipe and the signal-hook
/// actions that write to it.
///
/// The selector owns it like any other source, so its [`Key`] removes it the usual ways:
/// [`remove`](Registry::remove) (from anywhere, its own callback included), dropping the
/// selector, or [`unregister`](Registry::unregister), which hands it back. Dropping it
/// unregisters every signal-hook action it installed, which closes the write ends, and closes
/// the read end: no descriptor outlives it.
///
/// When the last watch of a signal in the process is dropped, the signal gets back the action
/// it had before its first watch: its default action (`SIGTERM` and `SIGUSR1` terminate the
/// process again), `SIG_IGN`, or the handler that was installed then (with `sigaction`, or
/// through signal-hook, whose actions keep running throughout). One exception: a signal whose
/// action was the default at its first watch takes the default again even if signal-hook
/// actions of your own were installed for it meanwhile (they run first); install yours before
/// the first watch, or keep a watch. Real-time signals, which signal-hook cannot emulate, keep
/// signal-hook's handler, so they stay ignored once unwatched.
pub struct Signals {
    read_end: UnixStream,
    watched: Vec<Watched>,
    /// Every action installed for this watch, flag and pipe writers alike.
    actions: Vec<SigId>,
}

struct Watched {
    signal: c_int,
    /// Set by the handler before it writes to the pipe.
    arrived: Arc<AtomicBool>,
}

impl Signals {
    /// The signals watched, without duplicates, in the order they are delivered within one
    /// wake-up.
    pub fn signals(&self) -> impl Iterator<Item = c_int> + '_ {
        self.watched.iter().map(|w| w.signal)
    }

    fn new(signals: &[c_int]) -> io::Result<Signals> {
        if signals.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no signal to watch",
            ));
        }
        if let Some(&forbidden) = signals.iter().find(|s| FORBIDDEN.contains(s)) {
            let name = signal_name(forbidden).unwrap_or("?");
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("signal {forbidden} ({name}) cannot be handled"),
            ));
        }
        let (read_end, write_end) = UnixStream::pair()?;
        read_end.set_nonblocking(true)?;
        write_end.set_nonblocking(true)?;
        let mut watch = Signals {
            read_end,
            watched: Vec::with_capacity(signals.len()),
            actions: Vec::with_capacity(2 * signals.len()),
        };
        // On an early return, dropping `watch` unregisters what was installed so far.
        for &signal in signals {
            if watch.watched.iter().any(|w| w.signal == signal) {
                continue;
            }
            // Counted before its actions exist, so that the drop of a half-built watch, which
            // uncounts every signal in `watched`, stays balanced: pushed right after.
            Restorer::watch(signal)?;
            let arrived = Arc::new(AtomicBool::new(false));
            watch.watched.push(Watched {
                signal,
                arrived: Arc::clone(&arrived),
            });
            // signal-hook runs a signal's actions in registration order: the flag is set
            // before the byte that announces it is written.
            let id = signal_hook::flag::register(signal, Arc::clone(&arrived))?;
            watch.actions.push(id);
            // The pipe action owns (and closes on unregister) its own clone of the write end.
            let id = pipe::register(signal, write_end.try_clone()?)?;
            watch.actions.push(id);
        }
        Ok(watch)
    }

    /// Reads the pipe until it is empty, so that a level-triggered loop does not wake again
    /// for the bytes of signals about to be delivered.
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            match (&self.read_end).read(&mut buf) {
                Ok(0) => return Ok(()), // no writer left: nothing more can arrive
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // Unregistering drops the action synchronously (signal-hook waits for any handler
        // still running it), which closes that action's write end.
        for &id in &self.actions {
            unregister(id);
        }
        for watched in &self.watched {
            Restorer::unwatch(watched.signal);
        }
    }
}

/// Gives a signal back its default action once no watch is left, process-wide.
///
/// signal-hook never uninstalls its handler: with every action unregistered, the handler
/// stays and does nothing, so a signal whose action was the default (terminate, for `SIGTERM`
/// and `SIGUSR1`) would be ignored for the rest of the process's life. Putting the old
/// disposition back with `sigaction` is not sound: signal-hook believes its handler installed
/// and would not reinstall it for a later watch, or for anyone else's signal-hook action.
/// So the selector works with signal-hook instead. The first time a signal is watched in the
/// process, it reads the signal's disposition; if it is the default, it installs one more
/// signal-hook action, first in line and never removed, that performs the default action
/// ([`signal_hook::flag::register_conditional_default`], which emulates it as signal-hook's own
/// table says) while no watch of the signal is live. Any other disposition needs nothing: an
/// ignored signal stays ignored by the idle handler, and an earlier handler keeps being called,
/// since signal-hook chains to the handler it replaced.
struct Restorer;

/// Per watched signal: live watches, and the flag of its default-action keeper (`None`: the
/// signal had no default action to give back).
struct Gate {
    watches: usize,
    no_watch: Option<Arc<AtomicBool>>,
}

static GATES: Mutex<BTreeMap<c_int, Gate>> = Mutex::new(BTreeMap::new());

impl Restorer {
    fn watch(signal: c_int) -> io::Result<()> {
        let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
        let gate = match gates.entry(signal) {
            std::collections::btree_map::Entry::Occupied(gate) => gate.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let no_watch = if has_default_action(signal)? && signal_name(signal).is_some() {
                    let flag = Arc::new(AtomicBool::new(false));
                    // Never unregistered: it is needed whenever the signal has no watch.
                    signal_hook::flag::register_conditional_default(signal, Arc::clone(&flag))?;
                    Some(flag)
                } else {
                    None
                };
                slot.insert(Gate {
                    watches: 0,
                    no_watch,
                })
            }
        };
        gate.watches += 1;
        if let Some(flag) = &gate.no_watch {
            flag.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    fn unwatch(signal: c_int) {
        let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get_mut(&signal) {
            gate.watches -= 1;
            if let (0, Some(flag)) = (gate.watches, &gate.no_watch) {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Whether `signal`'s disposition is `SIG_DFL`.
fn has_default_action(signal: c_int) -> io::Result<bool> {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: with a null new action, `sigaction` only writes the current one to `current`,
    // which is valid for writes of a `libc::sigaction`; it is read only after a success.
    let current = unsafe {
        if libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        current.assume_init()
    };
    Ok(current.sa_sigaction == libc::SIG_DFL)
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .watched
            .iter()
            .map(|w| signal_name(w.signal).unwrap_or("?"))
            .collect();
        f.debug_struct("Signals")
            .field("signals", &names)
            .field("fd", &self.read_end)
            .finish()
    }
}

impl Registry {
    /// Runs `callback` on the loop whenever one of `signals` arrives (`SIGINT`, `SIGTERM`,
    /// `SIGHUP`, `SIGUSR1`, ... as numbers, e.g. from [`signal_hook::consts`]).
    ///
    /// The callback runs on the loop's thread, as an ordinary callback, so it may do anything
    /// a callback may: [`stop`](Registry::stop) the loop, say. Signals coalesce: each wake-up
    /// delivers every signal that arrived since the last one *once*, in the order of
    /// `signals`, however many times it was raised in between (as the kernel itself coalesces
    /// a pending signal). Duplicates in `signals` are ignored.
    ///
    /// The returned key names the watch like any registration: [`remove`](Registry::remove)
    /// it to stop watching, which uninstalls its signal-hook actions and closes its
    /// descriptors (see [`Signals`] for what that does and does not restore). A callback that
    /// returns `Err` is removed the same way, and the error goes to the
    /// [error handler](Registry::set_error_handler). The watch costs one descriptor for the
    /// read end, registered with the selector, and one per signal for the write ends.
    ///
    /// Other handlers for the same signals, installed through signal-hook before or after,
    /// keep running; one installed with `sigaction` *before* runs too (signal-hook chains to
    /// it), one installed after replaces signal-hook's.
    ///
    /// # Errors
    ///
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput) for an empty list or a signal that
    ///   cannot be handled ([`FORBIDDEN`]: `SIGKILL`, `SIGSTOP`, `SIGILL`, `SIGFPE`,
    ///   `SIGSEGV`), and from the OS for a number that is not a signal;
    /// - the OS's error creating the pipe or registering its read end (`EMFILE`).
    ///
    /// Nothing stays installed after an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::Selector;
    /// use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    ///
    /// let mut sel = Selector::new()?;
    /// sel.on_signals(&[SIGINT, SIGTERM, SIGUSR1], |reg, signal| {
    ///     println!("got signal {signal}, stopping");
    ///     reg.stop();
    ///     Ok(())
    /// })?;
    /// signal_hook::low_level::raise(SIGUSR1)?; // as if `kill -USR1` came from outside
    /// sel.run()?; // returns once the callback has stopped it
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_signals<F>(&mut self, signals: &[c_int], mut callback: F) -> io::Result<Key<Signals>>
    where
        F: FnMut(&mut Registry, c_int) -> io::Result<()> + 'static,
    {
        let watch = Signals::new(signals)?;
        let key = self.register(watch, Interest::READ, move |reg, watch, event| {
            watch.drain()?;
            for watched in &watch.watched {
                // A callback that removed this watch has asked for no more deliveries.
                if !reg.contains(event.key()) {
                    break;
                }
                if watched.arrived.swap(false, Ordering::SeqCst) {
                    callback(reg, watched.signal)?;
                }
            }
            Ok(())
        })?;
        Ok(key)
    }
}
