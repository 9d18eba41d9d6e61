//! The registry: what the selector owns, and everything a callback may do to it.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use slab::Slab;

use crate::claims::Claims;
use crate::entry::{Callback, Entry, Registration};
use crate::handle::{Handle, Shared};
use crate::interest::{Event, Interest, Readiness};
use crate::key::{short_type_name, Key, Owner, Token, GENERATION_MASK, MAX_INDEX};
use crate::poller::Poller;
use crate::state::States;
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
    /// Which registration holds each descriptor number: one number, one registration.
    claims: Claims,
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
    /// `None` while the handler runs (and before one is set: then errors go to the `log`
    /// facade).
    error_handler: Option<ErrorHandler>,
    /// Loop-wide user state, by type (see `state.rs`).
    pub(crate) states: States,
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
            claims: Claims::new(),
            next_generation: 0,
            owner: Owner::next(),
            #[cfg(feature = "async")]
            tasks: crate::task::Executor::new(Arc::clone(&shared)),
            shared,
            timers: Timers::new(),
            deferred: VecDeque::new(),
            stop_requested: false,
            error_handler: None,
            states: States::default(),
        }
    }

    /// Registers `source` for `interest`; `callback` runs each time the loop finds it ready.
    ///
    /// The selector owns the source until [`unregister`](Registry::unregister) hands it back or
    /// [`remove`](Registry::remove) (or dropping the selector) closes it. The callback receives
    /// the registry, the source by shared reference (so no callback can close or swap the
    /// descriptor under the poller) and the [`Event`]. Polling is level-triggered: a source stays
    /// ready, and its callback keeps being called, until it is drained to `WouldBlock` or its
    /// interest changes. Sources should be in non-blocking mode (`set_nonblocking(true)`): on a
    /// blocking source, a read that finds nothing (another callback drained it first, or the
    /// callback reads again after draining it) blocks the whole loop. A read that finds less
    /// than it asked for returns what there is, in either mode.
    ///
    /// What the callback's result means:
    /// - `Ok(())`: carry on.
    /// - `Err` of kind [`WouldBlock`](io::ErrorKind::WouldBlock) or
    ///   [`Interrupted`](io::ErrorKind::Interrupted): "nothing now" (a spurious wake-up, say,
    ///   when `read(..)?` finds the source drained by another callback). The registration stays
    ///   and is dispatched again when ready; the error handler does not see it.
    /// - Any other `Err`: the registration is removed (its source closed) and the error goes to
    ///   the [error handler](Registry::set_error_handler).
    ///
    /// So a callback whose `Err` should not end it must handle that error itself. A listener is
    /// the usual case: `accept` failing with `ECONNABORTED` (a peer gave up in the backlog)
    /// concerns one connection, and `EMFILE`/`ENFILE` (out of descriptors) a moment; returned
    /// with `?`, either would close the listener. Match them in the accept callback instead:
    /// skip the former; for the latter, pause the listener with
    /// [`modify`](Registry::modify)`(key, Interest::NONE)` (a level-triggered listener with a
    /// full backlog would otherwise wake the loop without end) and resume it from a
    /// [`call_later`](Registry::call_later) timer.
    ///
    /// A callback that panics is removed the same way, and the panic unwinds out of
    /// `run`/`run_once`, leaving the selector usable.
    ///
    /// # Errors
    ///
    /// The source comes back inside the [`RegisterError`], open and unchanged:
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput) for [`Interest::NONE`];
    /// - [`AlreadyExists`](io::ErrorKind::AlreadyExists) for a descriptor number a live
    ///   registration of this selector holds, paused ones included: one number names one
    ///   registration, so that removing or changing one can never act on another's entry in the
    ///   OS poller. (A number stays held until its registration is removed, even if code that
    ///   breaks I/O safety closed the descriptor behind the selector's back and the OS reused it:
    ///   remove the stale registration first.)
    /// - whatever the OS says: `EPERM` for a regular file or a directory (epoll cannot poll
    ///   them), `EINVAL` for the selector's own descriptor, `ENOSPC` past `max_user_watches`.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io::{self, Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// theirs.set_nonblocking(true)?;
    /// sel.register(theirs, Interest::READ, |reg, mut stream, event| {
    ///     let mut buf = [0; 64];
    ///     match stream.read(&mut buf) {
    ///         Ok(n) => {
    ///             assert_eq!(&buf[..n], b"ping");
    ///             reg.remove(event.key()) // done: close it
    ///         }
    ///         Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()), // nothing now
    ///         Err(e) => Err(e),
    ///     }
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
        let fd = source.as_fd().as_raw_fd();
        if let Some(holder) = self.claims.holder(fd) {
            return Err(RegisterError::new(source, already_registered(fd, holder)));
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
        self.claims.claim(fd, token);
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
    ///
    /// # Examples
    ///
    /// Waiting for `WRITE` only while there is something to send (a writable socket is
    /// writable almost always, so keeping `WRITE` on would call the callback without end):
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io::{self, Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// theirs.set_nonblocking(true)?;
    /// let mut outbox = b"queued reply".to_vec();
    /// let key = sel.register(theirs, Interest::READ, move |reg, mut stream, event| {
    ///     if event.is_writable() {
    ///         match stream.write(&outbox) {
    ///             Ok(n) => drop(outbox.drain(..n)),
    ///             Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
    ///             Err(e) => return Err(e),
    ///         }
    ///         if outbox.is_empty() {
    ///             reg.remove(event.key())?; // all sent: close it
    ///         }
    ///     }
    ///     Ok(())
    /// })?;
    /// sel.modify(key, Interest::WRITE)?; // something to send: wait for room
    /// assert_eq!(sel.interest(key), Some(Interest::WRITE));
    /// sel.run()?;
    /// let mut reply = String::new();
    /// ours.read_to_string(&mut reply)?;
    /// assert_eq!(reply, "queued reply");
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// Handing a connection over to blocking code once the loop is done with it:
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// theirs.set_nonblocking(true)?;
    /// let key = sel.register(theirs, Interest::READ, |_, _, _| Ok(()))?;
    ///
    /// let mut stream = sel.unregister(key)?; // the same socket, still open
    /// assert!(!sel.contains(key));
    /// stream.set_nonblocking(false)?;
    /// ours.write_all(b"still here")?;
    /// let mut buf = [0; 10];
    /// stream.read_exact(&mut buf)?;
    /// assert_eq!(&buf, b"still here");
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
        delete(
            &self.shared.poller,
            &mut self.claims,
            key.token,
            armed,
            registration.as_ref(),
        );
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
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io::{self, Read};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// let key = sel.register(theirs, Interest::READ, |_, _, _| Ok(()))?;
    /// sel.remove(key)?; // closes our end of the pair: the peer sees end of stream
    /// assert_eq!(ours.read(&mut [0; 8])?, 0);
    /// assert_eq!(sel.remove(key).unwrap_err().kind(), io::ErrorKind::NotFound); // stale now
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn remove<T>(&mut self, key: Key<T>) -> io::Result<()> {
        self.entry_mut(key.owner, key.token)?;
        let entry = self.entries.remove(key.token.index());
        let armed = entry.armed;
        if let Some(registration) = entry.into_registration() {
            release(
                &self.shared.poller,
                &mut self.claims,
                key.token,
                armed,
                registration,
            );
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
    ///
    /// A live handle keeps [`run`](crate::Selector::run) going even with nothing registered,
    /// since work may still arrive through it; drop every handle (or stop the loop) to let
    /// `run` return.
    ///
    /// # Examples
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::thread;
    ///
    /// let mut sel = Selector::new()?;
    /// let handle = sel.handle();
    /// let worker = thread::spawn(move || {
    ///     // `handle` is dropped when this thread ends, which also lets `run` return.
    ///     handle.call_soon(|_| println!("queued from another thread"))
    /// });
    /// sel.run()?;
    /// worker.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.shared))
    }

    /// Runs `f` on the next loop iteration, after the iteration's I/O callbacks and timers, in
    /// the order queued. A call queued during an iteration waits for the next one, so a call
    /// that queues itself again cannot starve I/O or timers.
    ///
    /// These calls and those of [`Handle::call_soon`] share one queue (asyncio's `call_soon`
    /// and `call_soon_threadsafe`): a call queued through a handle before this one, from any
    /// thread, runs before it.
    pub fn call_soon<F>(&mut self, f: F)
    where
        F: FnOnce(&mut Registry) + 'static,
    {
        if self.shared.is_pending() {
            self.shared.take_queued(&mut self.deferred);
        }
        self.deferred.push_back(Box::new(f));
    }

    /// Sets what happens to errors returned by callbacks (other than `WouldBlock` and
    /// `Interrupted`, which are not failures: see [`register`](Registry::register)). The
    /// failed registration has already been removed (its source closed) when the handler runs;
    /// the handler gets its token and the error, and may do anything a callback may, such as
    /// [`stop`](Registry::stop).
    ///
    /// Without a handler, each error is reported through the [`log`](https://docs.rs/log)
    /// facade at level `error` (target `selreactor::registry`), with the registration's token
    /// and its source's type, and the loop goes on. The library itself never writes to stdout
    /// or stderr.
    ///
    /// # Examples
    ///
    /// Counting failures, and stopping when a source that must not fail does:
    ///
    /// ```
    /// use selreactor::{Interest, Selector};
    /// use std::io;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut sel = Selector::new()?;
    /// let (_ours, theirs) = UnixStream::pair()?;
    /// let vital = sel.register(theirs, Interest::WRITE, |_, _, _| {
    ///     Err(io::Error::other("the control channel broke"))
    /// })?;
    /// let mut failures = 0;
    /// sel.set_error_handler(move |reg, token, error| {
    ///     failures += 1;
    ///     eprintln!("registration {token} failed ({failures} so far): {error}");
    ///     if token == vital.token() {
    ///         reg.stop();
    ///     }
    /// });
    /// sel.run()?; // the callback's error removed it, and the handler stopped the loop
    /// assert!(!sel.contains(vital));
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
            return false; // the wake-up's key lands here too
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
            Ok(Err(error)) => self.fail(token, armed, registration, error),
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

    /// A callback returned `Err`. "Nothing now" (`WouldBlock`, `Interrupted`) is not a failure:
    /// the registration stays. Any other error removes it and goes to the error handler.
    #[cold]
    #[inline(never)]
    fn fail(
        &mut self,
        token: Token,
        armed: Interest,
        registration: Box<dyn Registration>,
        error: io::Error,
    ) {
        if is_transient(&error) {
            return self.put_back(token, armed, registration);
        }
        let source_type = registration.type_name();
        self.discard(token, armed, registration);
        self.report(token, source_type, error);
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
            return release(poller, &mut self.claims, token, armed, registration);
        };
        if let Err(error) = rearm(poller, registration.fd(), token, armed, entry.interest) {
            let source_type = registration.type_name();
            self.discard(token, armed, registration);
            return self.report(token, source_type, error);
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
        release(
            &self.shared.poller,
            &mut self.claims,
            token,
            armed,
            registration,
        );
    }

    fn report(&mut self, token: Token, source_type: &str, error: io::Error) {
        match self.error_handler.take() {
            Some(mut handler) => {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler(self, token, error)));
                // Keep the handler unless it installed a new one while it ran.
                self.error_handler.get_or_insert(handler);
                if let Err(panic) = outcome {
                    panic::resume_unwind(panic);
                }
            }
            None => log::error!(
                "the callback of {token} ({source_type}) failed and was removed: {error}"
            ),
        }
    }
}

/// Whether a callback's error only means "nothing now": a spurious wake-up (`WouldBlock`, say
/// from `read(..)?` on a source another callback drained) or a signal (`Interrupted`).
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
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

/// Deletes a source from the poller and frees its descriptor number, before anything can
/// close it.
fn delete(
    poller: &Poller,
    claims: &mut Claims,
    token: Token,
    armed: Interest,
    registration: &dyn Registration,
) {
    let fd = registration.fd();
    claims.release(fd.as_raw_fd(), token);
    if !armed.is_none() {
        // It can only fail if the source's descriptor was closed behind the selector's back
        // (or its `AsFd` swapped it): the registration is gone either way, and since its number
        // stayed claimed, no other registration's entry can have been touched.
        let _ = poller.delete(fd);
    }
}

/// Deletes a source from the poller, then drops it and its callback.
fn release(
    poller: &Poller,
    claims: &mut Claims,
    token: Token,
    armed: Interest,
    registration: Box<dyn Registration>,
) {
    delete(poller, claims, token, armed, registration.as_ref());
    drop(registration);
}

fn already_registered(fd: std::os::fd::RawFd, holder: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "descriptor {fd} is already registered with this selector, as {holder} (if that \
             registration's descriptor was closed behind the selector's back, remove it first)"
        ),
    )
}

impl Drop for Registry {
    fn drop(&mut self) {
        States::run_drop_hooks(self);
        self.shared.close();
        for (index, entry) in std::mem::take(&mut self.entries) {
            let token = Token {
                index: index as u32,
                generation: entry.generation,
            };
            let armed = entry.armed;
            if let Some(registration) = entry.into_registration() {
                release(
                    &self.shared.poller,
                    &mut self.claims,
                    token,
                    armed,
                    registration,
                );
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
