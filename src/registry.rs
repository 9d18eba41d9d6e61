//! The registry: what the selector owns, and everything a callback may do to it.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use slab::Slab;

use crate::entry::{Callback, Entry, Registration};
use crate::handle::{Handle, Shared};
use crate::interest::{Event, Interest, Readiness};
use crate::key::{short_type_name, Key, Owner, Token, GENERATION_MASK, MAX_INDEX};
use crate::poller::Poller;
use crate::timer::Timers;

type ErrorHandler = Box<dyn FnMut(&mut Registry, Token, io::Error)>;
pub(crate) type Deferred = Box<dyn FnOnce(&mut Registry)>;

/// The selector's registrations, timers and deferred calls: everything a callback can reach.
///
/// A [`Selector`](crate::Selector) dereferences to its `Registry`, so these methods are called on
/// the selector directly; callbacks receive `&mut Registry`. The split is what makes running the
/// loop from inside a callback a compile error rather than a runtime one: `run` and `run_once`
/// live on `Selector`, which callbacks never see.
pub struct Registry {
    entries: Slab<Entry>,
    /// The generation the next registration gets; see [`Token`].
    next_generation: u32,
    owner: Owner,
    pub(crate) shared: Arc<Shared>,
    pub(crate) timers: Timers,
    pub(crate) deferred: VecDeque<Deferred>,
    pub(crate) stop_requested: bool,
    /// Tasks spawned on this selector (the `async` feature's executor).
    #[cfg(feature = "async")]
    pub(crate) tasks: crate::task::Executor,
    /// `None` while the handler runs (and before one is set: then errors go to stderr).
    error_handler: Option<ErrorHandler>,
}

/// A source that could not be registered, handed back with the reason.
///
/// It converts into [`io::Error`] (dropping the source), so `?` works in functions returning
/// `io::Result`.
pub struct RegisterError<T> {
    /// The source, unchanged and still open.
    pub source: T,
    /// Why the OS (or the selector) refused it.
    pub error: io::Error,
}

impl<T> RegisterError<T> {
    fn new(source: T, error: io::Error) -> Self {
        RegisterError { source, error }
    }
}

impl<T> fmt::Debug for RegisterError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterError")
            .field("source", &short_type_name::<T>())
            .field("error", &self.error)
            .finish()
    }
}

impl<T> fmt::Display for RegisterError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot register {}: {}",
            short_type_name::<T>(),
            self.error
        )
    }
}

impl<T> std::error::Error for RegisterError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<RegisterError<T>> for io::Error {
    fn from(e: RegisterError<T>) -> io::Error {
        e.error
    }
}

fn not_found() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such registration: the key is stale or from another selector",
    )
}

impl Registry {
    pub(crate) fn new(poller: Poller) -> Registry {
        let shared = Arc::new(Shared::new(poller));
        Registry {
            entries: Slab::new(),
            next_generation: 0,
            owner: Owner::next(),
            #[cfg(feature = "async")]
            tasks: crate::task::Executor::new(Arc::clone(&shared)),
            shared,
            timers: Timers::new(),
            deferred: VecDeque::new(),
            stop_requested: false,
            error_handler: None,
        }
    }

    /// Registers `source` for `interest`; `callback` runs each time the loop finds it ready.
    ///
    /// The selector owns the source until [`unregister`](Registry::unregister) hands it back or
    /// [`remove`](Registry::remove) (or dropping the selector) closes it. The callback receives
    /// the registry, the source by shared reference (so no callback can close or swap the
    /// descriptor under the poller) and the [`Event`]. Polling is level-triggered: a source stays
    /// ready, and its callback keeps being called, until it is drained to `WouldBlock` or its
    /// interest changes. Sources should be in non-blocking mode (`set_nonblocking(true)`), or a
    /// read that finds less than it asked for blocks the whole loop.
    ///
    /// A callback that returns `Err` is removed (its source closed) and the error goes to the
    /// [error handler](Registry::set_error_handler). A callback that panics is removed the same
    /// way, and the panic unwinds out of `run`/`run_once`, leaving the selector usable.
    ///
    /// # Errors
    ///
    /// The source comes back inside the [`RegisterError`], open and unchanged:
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput) for [`Interest::NONE`];
    /// - whatever the OS says: `EPERM` for a regular file or a directory (epoll cannot poll
    ///   them), [`AlreadyExists`](io::ErrorKind::AlreadyExists) for a descriptor this selector
    ///   already polls, `EINVAL` for the selector's own descriptor, `ENOSPC` past
    ///   `max_user_watches`.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// theirs.set_nonblocking(true)?;
    /// sel.register(theirs, Interest::READ, |reg, mut stream, event| {
    ///     let mut buf = [0; 64];
    ///     let n = stream.read(&mut buf)?;
    ///     assert_eq!(&buf[..n], b"ping");
    ///     reg.remove(event.key())?; // done: close it
    ///     Ok(())
    /// })?;
    /// ours.write_all(b"ping")?;
    /// sel.run()?; // returns once nothing is left to wait for
    /// assert!(sel.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn register<T, F>(
        &mut self,
        source: T,
        interest: Interest,
        callback: F,
    ) -> Result<Key<T>, RegisterError<T>>
    where
        T: AsFd + 'static,
        F: FnMut(&mut Registry, &T, Event<T>) -> io::Result<()> + 'static,
    {
        if interest.is_none() {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot register with Interest::NONE (pause with `modify` instead)",
            );
            return Err(RegisterError::new(source, error));
        }
        let slot = self.entries.vacant_entry();
        if slot.key() > MAX_INDEX {
            let error = io::Error::new(io::ErrorKind::OutOfMemory, "too many registrations");
            return Err(RegisterError::new(source, error));
        }
        let token = Token {
            index: slot.key() as u32,
            generation: self.next_generation,
        };
        if let Err(error) = self
            .shared
            .poller
            .add(source.as_fd(), token.to_poller_key(), interest)
        {
            return Err(RegisterError::new(source, error));
        }
        self.next_generation = self.next_generation.wrapping_add(1) & GENERATION_MASK;
        let registration = Box::new(Callback { source, callback });
        slot.insert(Entry::new(token.generation, interest, registration));
        Ok(Key::new(token, self.owner))
    }

    /// Changes what a registration waits for. [`Interest::NONE`] pauses it: the source is taken
    /// out of the OS poller (so a hung-up peer cannot make the loop spin) until a later `modify`
    /// puts it back. Events already collected in the current batch are filtered by the new
    /// interest before its callback would run.
    ///
    /// Called by a registration's own callback, the change reaches the OS when that callback
    /// returns; an error from the OS then removes the registration and goes to the error
    /// handler.
    ///
    /// # Errors
    ///
    /// - [`NotFound`](io::ErrorKind::NotFound) for a stale key or one from another selector;
    /// - the OS's error, with the registration left as it was.
    pub fn modify<T>(&mut self, key: Key<T>, interest: Interest) -> io::Result<()> {
        let entry = find_mut(&mut self.entries, self.owner, key.owner, key.token)?;
        if entry.interest == interest {
            return Ok(());
        }
        if let Some(registration) = entry.registration() {
            let poller = &self.shared.poller;
            rearm(poller, registration.fd(), key.token, entry.armed, interest)?;
            entry.armed = interest;
        }
        entry.interest = interest;
        Ok(())
    }

    /// Removes a registration and hands its source back, still open, as it was registered.
    ///
    /// The callback (and whatever it captured) is dropped.
    ///
    /// # Errors
    ///
    /// - [`NotFound`](io::ErrorKind::NotFound) for a stale key or one from another selector;
    /// - [`ResourceBusy`](io::ErrorKind::ResourceBusy) when called from the registration's own
    ///   callback, which still borrows the source: use [`remove`](Registry::remove) there.
    pub fn unregister<T: 'static>(&mut self, key: Key<T>) -> io::Result<T> {
        let entry = self.entry_mut(key.owner, key.token)?;
        if entry.registration().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "a callback cannot take back its own source while it runs; use `remove`",
            ));
        }
        let entry = self.entries.remove(key.token.index());
        let armed = entry.armed;
        let registration = entry.into_registration().expect("checked above");
        delete(&self.shared.poller, armed, registration.as_ref());
        let mut source: Option<T> = None;
        registration.take_source(&mut source);
        Ok(source.expect("a typed key always names a source of its type"))
    }

    /// Removes a registration and closes its source (drops it, with its callback).
    ///
    /// It works from any callback, the registration's own included: then the source is deleted
    /// from the poller and dropped as soon as that callback returns, and no further event is
    /// dispatched to it, even one already collected in the current batch.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) for a stale key or one from another selector.
    pub fn remove<T>(&mut self, key: Key<T>) -> io::Result<()> {
        self.entry_mut(key.owner, key.token)?;
        let entry = self.entries.remove(key.token.index());
        let armed = entry.armed;
        if let Some(registration) = entry.into_registration() {
            release(&self.shared.poller, armed, registration);
        }
        Ok(())
    }

    /// Whether `key` names a live registration of this selector.
    pub fn contains<T>(&self, key: Key<T>) -> bool {
        self.entry(key.owner, key.token).is_some()
    }

    /// The interest of a live registration, or `None` for a stale or foreign key.
    pub fn interest<T>(&self, key: Key<T>) -> Option<Interest> {
        self.entry(key.owner, key.token).map(|e| e.interest)
    }

    /// The registered source, or `None` for a stale or foreign key, and while the source's own
    /// callback runs (it has the source already).
    pub fn get<T: 'static>(&self, key: Key<T>) -> Option<&T> {
        let registration = self.entry(key.owner, key.token)?.registration()?;
        registration.source().downcast_ref()
    }

    /// The number of live registrations, paused ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no registrations.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every live registration's token and interest, in slot order (the map of Python's
    /// `get_map`).
    pub fn registrations(&self) -> impl Iterator<Item = (Token, Interest)> + '_ {
        self.entries.iter().map(|(index, e)| {
            let token = Token {
                index: index as u32,
                generation: e.generation,
            };
            (token, e.interest)
        })
    }

    /// Asks [`run`](crate::Selector::run) to return once the current iteration is done.
    ///
    /// The rest of the iteration still runs (the remaining ready callbacks, due timers and
    /// deferred calls), so nothing already collected is lost. A stop requested while the loop is
    /// not running makes the next `run` return after one iteration.
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }

    /// A handle for other threads: wake the loop, queue work onto it, stop it.
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.shared))
    }

    /// Runs `f` on the next loop iteration, after the iteration's I/O callbacks and timers, in
    /// the order queued. A call queued during an iteration waits for the next one, so a call
    /// that queues itself again cannot starve I/O or timers.
    pub fn call_soon<F>(&mut self, f: F)
    where
        F: FnOnce(&mut Registry) + 'static,
    {
        self.deferred.push_back(Box::new(f));
    }

    /// Sets what happens to errors returned by callbacks. The failed registration has already
    /// been removed (its source closed) when the handler runs; the handler gets its token and
    /// the error, and may do anything a callback may, such as [`stop`](Registry::stop).
    ///
    /// Without a handler, errors are written to stderr and the loop goes on.
    pub fn set_error_handler<F>(&mut self, handler: F)
    where
        F: FnMut(&mut Registry, Token, io::Error) + 'static,
    {
        self.error_handler = Some(Box::new(handler));
    }

    pub(crate) fn owner(&self) -> Owner {
        self.owner
    }

    pub(crate) fn has_pending_calls(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Whether `run` has nothing left to wait for: no registrations, timers, calls, handles
    /// or tasks.
    pub(crate) fn is_idle(&self) -> bool {
        self.entries.is_empty()
            && self.timers.is_empty()
            && self.deferred.is_empty()
            && !self.shared.has_handles()
            && !self.shared.is_pending()
            && !self.has_live_tasks()
    }

    /// Whether tasks are queued to run: the next wait must not block.
    #[inline]
    pub(crate) fn has_ready_tasks(&self) -> bool {
        #[cfg(feature = "async")]
        return self.tasks.has_queued();
        #[cfg(not(feature = "async"))]
        false
    }

    fn has_live_tasks(&self) -> bool {
        #[cfg(feature = "async")]
        return self.tasks.has_live();
        #[cfg(not(feature = "async"))]
        false
    }

    fn entry(&self, owner: Owner, token: Token) -> Option<&Entry> {
        if owner != self.owner {
            return None;
        }
        self.entries
            .get(token.index())
            .filter(|e| e.generation == token.generation)
    }

    fn entry_mut(&mut self, owner: Owner, token: Token) -> io::Result<&mut Entry> {
        find_mut(&mut self.entries, self.owner, owner, token)
    }

    /// Runs the callback an event is for, if its registration still lives and still wants it.
    /// Returns whether a callback ran.
    #[inline(always)]
    pub(crate) fn dispatch(&mut self, poller_key: usize, readiness: Readiness) -> bool {
        let token = Token::from_poller_key(poller_key);
        let Some(entry) = self.entries.get_mut(token.index()) else {
            return false; // polling's own notification key lands here too
        };
        if entry.generation != token.generation {
            return false; // removed, and maybe reused, earlier in this batch
        }
        let Some(readiness) = readiness.filter(entry.interest) else {
            return false;
        };
        let Some(mut registration) = entry.take() else {
            return false;
        };
        let armed = entry.armed;
        let owner = self.owner;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            registration.call(self, token, owner, readiness)
        }));
        match outcome {
            Ok(Ok(())) => self.put_back(token, armed, registration),
            Ok(Err(error)) => {
                self.discard(token, armed, registration);
                self.report(token, error);
            }
            Err(panic) => {
                self.discard(token, armed, registration);
                panic::resume_unwind(panic);
            }
        }
        true
    }

    /// Returns a registration to its slot after its callback: the common case, kept small
    /// enough to inline into `dispatch`.
    #[inline(always)]
    fn put_back(&mut self, token: Token, armed: Interest, registration: Box<dyn Registration>) {
        if let Some(entry) = self.entries.get_mut(token.index()) {
            if entry.generation == token.generation && entry.interest == armed {
                entry.put_back(registration);
                return;
            }
        }
        self.put_back_changed(token, armed, registration);
    }

    /// The callback changed its own registration: apply the interest it asked for, or release
    /// it if it removed itself.
    #[cold]
    #[inline(never)]
    fn put_back_changed(
        &mut self,
        token: Token,
        armed: Interest,
        registration: Box<dyn Registration>,
    ) {
        let poller = &self.shared.poller;
        let Some(entry) = self
            .entries
            .get_mut(token.index())
            .filter(|e| e.generation == token.generation)
        else {
            return release(poller, armed, registration);
        };
        if let Err(error) = rearm(poller, registration.fd(), token, armed, entry.interest) {
            self.discard(token, armed, registration);
            return self.report(token, error);
        }
        entry.armed = entry.interest;
        entry.put_back(registration);
    }

    /// Removes a registration whose callback failed, if the callback has not already done so.
    fn discard(&mut self, token: Token, armed: Interest, registration: Box<dyn Registration>) {
        if self
            .entries
            .get(token.index())
            .is_some_and(|e| e.generation == token.generation)
        {
            self.entries.remove(token.index());
        }
        release(&self.shared.poller, armed, registration);
    }

    fn report(&mut self, token: Token, error: io::Error) {
        match self.error_handler.take() {
            Some(mut handler) => {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler(self, token, error)));
                // Keep the handler unless it installed a new one while it ran.
                self.error_handler.get_or_insert(handler);
                if let Err(panic) = outcome {
                    panic::resume_unwind(panic);
                }
            }
            None => eprintln!("selreactor: callback for {token} failed and was removed: {error}"),
        }
    }
}

#[inline]
fn find_mut(
    entries: &mut Slab<Entry>,
    ours: Owner,
    owner: Owner,
    token: Token,
) -> io::Result<&mut Entry> {
    if owner != ours {
        return Err(not_found());
    }
    match entries.get_mut(token.index()) {
        Some(entry) if entry.generation == token.generation => Ok(entry),
        _ => Err(not_found()),
    }
}

/// Moves a registration's entry in the OS poller from `armed` to `wanted`.
fn rearm(
    poller: &Poller,
    fd: BorrowedFd<'_>,
    token: Token,
    armed: Interest,
    wanted: Interest,
) -> io::Result<()> {
    let key = token.to_poller_key();
    match (armed.is_none(), wanted.is_none()) {
        (true, true) => Ok(()),
        (true, false) => poller.add(fd, key, wanted),
        (false, true) => poller.delete(fd),
        (false, false) => poller.modify(fd, key, wanted),
    }
}

/// Deletes a source from the poller, before anything can close it.
fn delete(poller: &Poller, armed: Interest, registration: &dyn Registration) {
    if !armed.is_none() {
        // It can only fail if the source broke the `AsFd` contract (closed or swapped its
        // descriptor): the registration is gone either way, and nothing is left to undo.
        let _ = poller.delete(registration.fd());
    }
}

/// Deletes a source from the poller, then drops it and its callback.
fn release(poller: &Poller, armed: Interest, registration: Box<dyn Registration>) {
    delete(poller, armed, registration.as_ref());
    drop(registration);
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shared.close();
        for entry in self.entries.drain() {
            let armed = entry.armed;
            if let Some(registration) = entry.into_registration() {
                release(&self.shared.poller, armed, registration);
            }
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("registrations", &self.entries.len())
            .field("timers", &self.timers.len())
            .field("deferred_calls", &self.deferred.len())
            .field("stop_requested", &self.stop_requested)
            .finish_non_exhaustive()
    }
}
