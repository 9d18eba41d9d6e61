//! Buffered, flow-controlled transports over byte streams, and the protocols they call.
//!
//! A connection is one registration whose source is an `Rc<Conn<T>>`: the stream, its output
//! buffer and flags (in a `RefCell` never borrowed across user code) and the protocol (in a
//! `Cell`, taken out while it runs, as the selector takes out a callback). Another callback
//! reaches a connection by its [`ConnId`] through [`Registry::get`], which hands out the `Rc`;
//! so no state lives anywhere the selector cannot see.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use slab::Slab;

use super::stream::ByteStream;
use crate::{Interest, Key, Readiness, RegisterError, Registry, TimerKey};

/// The write buffer's default high-water mark: above it the protocol is asked to pause.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// The default low-water mark: at or below it a paused protocol is asked to resume.
pub const DEFAULT_LOW_WATER: usize = 16 * 1024;
/// The loop-wide read buffer's size: the most one read takes.
const READ_SIZE: usize = 64 * 1024;
/// The most reads one readiness event makes before other connections get their turn.
const READS_PER_EVENT: usize = 4;

/// What a connection's owner implements: the transport calls it as the connection's life goes
/// on (asyncio's `Protocol`, Twisted's `Protocol`).
///
/// The order is fixed: [`made`](Protocol::made) once, then any number of
/// [`data`](Protocol::data), at most one [`eof`](Protocol::eof), and [`lost`](Protocol::lost)
/// exactly once, last, for every way the connection ends; `pause_writing` and `resume_writing`
/// alternate, starting with a pause, and never come after `lost`. No method runs inside
/// another of the same protocol. The protocol is dropped right after `lost`.
///
/// Every method gets the connection's [`Transport`], which also lends the registry
/// ([`Transport::registry`]): timers, deferred calls, other registrations, other connections
/// ([`ConnId::transport`]) and loop-wide [state](Registry::state).
///
/// # Examples
///
/// ```
/// use selreactor::net::{Protocol, Transport};
/// use std::io;
/// use std::net::TcpStream;
///
/// /// Sends back whatever arrives; the transport buffers what the socket does not take.
/// struct Echo;
///
/// impl Protocol for Echo {
///     fn data(&mut self, tx: &mut Transport<'_, TcpStream>, data: &[u8]) -> io::Result<()> {
///         tx.write(data)
///     }
/// }
/// # let _ = Echo;
/// ```
pub trait Protocol<T: ByteStream = std::net::TcpStream>: 'static {
    /// The connection is up. An `Err` ends it: [`lost`](Protocol::lost) follows with the error.
    ///
    /// # Errors
    ///
    /// Whatever the protocol decides; it ends the connection.
    fn made(&mut self, tx: &mut Transport<'_, T>) -> io::Result<()> {
        let _ = tx;
        Ok(())
    }

    /// Bytes arrived. They are lent from a buffer the loop reuses: copy what you keep. An `Err`
    /// ends the connection at once (as [`abort`](Transport::abort), with that error).
    ///
    /// # Errors
    ///
    /// Whatever the protocol decides; it ends the connection.
    fn data(&mut self, tx: &mut Transport<'_, T>, data: &[u8]) -> io::Result<()>;

    /// The peer will send nothing more. Return `true` to keep the connection open for writing
    /// (close it later yourself); `false` (the default) closes it once the output is flushed.
    /// A connection whose both directions have ended closes itself.
    fn eof(&mut self, tx: &mut Transport<'_, T>) -> bool {
        let _ = tx;
        false
    }

    /// The write buffer passed the high-water mark: stop producing until
    /// [`resume_writing`](Protocol::resume_writing).
    fn pause_writing(&mut self, tx: &mut Transport<'_, T>) {
        let _ = tx;
    }

    /// The write buffer drained to the low-water mark: produce again.
    fn resume_writing(&mut self, tx: &mut Transport<'_, T>) {
        let _ = tx;
    }

    /// The connection has ended, and its descriptor is out of the selector. `reason` is `None`
    /// for an orderly end (the peer's end of stream, [`close`](Transport::close),
    /// [`abort`](Transport::abort)) and the error otherwise: the peer's reset, a failed read or
    /// write, an idle timeout (`TimedOut`), the server closed with its connections
    /// (`ConnectionAborted`), the selector dropped (`ConnectionAborted`), the `Err` a
    /// protocol method returned, or its panic (`Other`, with the panic's message; the panic
    /// then goes on out of the loop's [`run`](crate::Selector::run)).
    ///
    /// The transport still answers questions ([`id`](Transport::id),
    /// [`get_ref`](Transport::get_ref)); writes fail with `NotConnected`. This is where a map
    /// of connections forgets this one.
    fn lost(&mut self, tx: &mut Transport<'_, T>, reason: Option<io::Error>) {
        let _ = (tx, reason);
    }
}

/// A checked, `Copy` name for a live connection: keep it in maps, and reach the connection's
/// transport from any callback with [`ConnId::transport`].
///
/// Like a [`Key`], it names one connection, never a slot: once the connection has ended, every
/// use fails with `NotFound`, even after a new connection took its place.
pub struct ConnId<T: ByteStream> {
    pub(crate) key: Key<Rc<Conn<T>>>,
}

impl<T: ByteStream> Clone for ConnId<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ByteStream> Copy for ConnId<T> {}
impl<T: ByteStream> PartialEq for ConnId<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T: ByteStream> Eq for ConnId<T> {}
impl<T: ByteStream> std::hash::Hash for ConnId<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}
impl<T: ByteStream> PartialOrd for ConnId<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: ByteStream> Ord for ConnId<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.token().cmp(&other.key.token())
    }
}

impl<T: ByteStream> fmt::Debug for ConnId<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.key.token())
    }
}

impl<T: ByteStream> ConnId<T> {
    /// The connection's transport, lent with the registry, to write to it, close it, pause it:
    /// from a timer, a deferred call, or another connection's protocol (a broadcast).
    ///
    /// What it does to the connection's protocol (a `pause_writing`, a `lost`) is delivered by
    /// a deferred call, never inside the caller's callback.
    ///
    /// # Errors
    ///
    /// - `NotFound` once the connection has ended (or for an id from another selector): it
    ///   never touches another connection;
    /// - `ResourceBusy` from inside the connection's own callbacks, which have its transport
    ///   already.
    pub fn transport(self, reg: &mut Registry) -> io::Result<Transport<'_, T>> {
        let Some(conn) = reg.get(self.key) else {
            return Err(if reg.contains(self.key) {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "this connection's own callback is running: use the transport it was given",
                )
            } else {
                io::Error::new(io::ErrorKind::NotFound, "the connection has ended")
            });
        };
        let conn = Rc::clone(conn);
        Ok(Transport {
            reg,
            conn,
            direct: false,
        })
    }

    /// Whether the connection is still open (not yet ended).
    pub fn is_open(self, reg: &Registry) -> bool {
        reg.contains(self.key)
    }
}

/// A connection's transport, lent with the registry: write (buffered, never blocking), end,
/// pause and resume, tune flow control.
///
/// Protocol methods receive one; [`ConnId::transport`] lends one from anywhere else. Its
/// changes to what the selector waits for are applied as they are made (from the connection's
/// own callbacks, when the callback returns, at most one `epoll_ctl`).
pub struct Transport<'a, T: ByteStream> {
    reg: &'a mut Registry,
    conn: Rc<Conn<T>>,
    /// Whether the protocol may be called right after this transport's work (its own
    /// callback, or a setup no protocol is running above); otherwise through a deferred call.
    direct: bool,
}

impl<T: ByteStream> fmt::Debug for Transport<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.conn.state.borrow();
        f.debug_struct("Transport")
            .field("id", &self.conn.key.get())
            .field("buffered", &state.pending())
            .field("ended", &state.flags.has(Flags::ENDED))
            .finish_non_exhaustive()
    }
}

impl<T: ByteStream> Transport<'_, T> {
    /// The registry, for timers, deferred calls, other registrations and connections, and
    /// loop-wide state.
    pub fn registry(&mut self) -> &mut Registry {
        self.reg
    }

    /// This connection's id.
    pub fn id(&self) -> ConnId<T> {
        ConnId {
            key: self.conn.key.get().expect("set when registered"),
        }
    }

    /// The stream, for its addresses and options. Reading or writing it directly bypasses the
    /// transport's buffering.
    pub fn get_ref(&self) -> &T {
        &self.conn.io
    }

    /// Sends `data`, or buffers what the stream does not take now; never blocks, never drops.
    ///
    /// With nothing already buffered it writes straight from `data` (one syscall, no copy),
    /// and only a remainder is copied. Past the high-water mark the protocol's
    /// [`pause_writing`](Protocol::pause_writing) is called (after the current callback).
    /// A failing write ends the connection, and [`lost`](Protocol::lost) gets the error.
    ///
    /// # Errors
    ///
    /// `NotConnected` after [`close`](Transport::close), [`abort`](Transport::abort),
    /// [`write_eof`](Transport::write_eof) or the end of the connection (nothing is buffered);
    /// `Unsupported` for a read-only stream.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if !T::CAN_WRITE {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this stream is read-only",
            ));
        }
        let conn = &*self.conn;
        let mut state = conn.state.borrow_mut();
        if state.is_closing() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the transport is closing or closed",
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        if state.pending() == 0 && !state.flags.has(Flags::CONNECTING) {
            loop {
                match conn.io.write(data) {
                    Ok(n) => {
                        written = n;
                        state.active = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        drop(state);
                        conn.end(self.reg, Some(e));
                        self.changed();
                        return Ok(());
                    }
                }
            }
            if written == data.len() {
                return Ok(());
            }
        }
        state.output.extend_from_slice(&data[written..]);
        drop(state);
        self.changed();
        Ok(())
    }

    /// Ends the writing direction once the buffer is flushed: the peer reads end of stream
    /// and can still send. Streams that cannot half-close (a pipe's write end) close instead.
    /// Calling it again, or after `close`, does nothing.
    pub fn write_eof(&mut self) {
        let mut state = self.conn.state.borrow_mut();
        if state.is_closing() || !T::CAN_WRITE {
            return;
        }
        state.shutdown = Shutdown::Pending;
        drop(state);
        self.conn.flush(self.reg);
        self.changed();
    }

    /// Closes the connection once the buffer is flushed; reading stops now. Then
    /// [`lost`](Protocol::lost) gets `None`. Calling it again does nothing.
    pub fn close(&mut self) {
        let mut state = self.conn.state.borrow_mut();
        if state.flags.has(Flags::ENDED) {
            return;
        }
        state.flags.set(Flags::CLOSING, true);
        let done = state.pending() == 0;
        drop(state);
        if done {
            self.conn.end(self.reg, None);
        }
        self.changed();
    }

    /// Closes the connection at once, dropping what is buffered. Then
    /// [`lost`](Protocol::lost) gets `None`. Calling it again, or after the end, does nothing.
    pub fn abort(&mut self) {
        self.conn.end(self.reg, None);
        self.changed();
    }

    /// Stops reading: no [`data`](Protocol::data) until
    /// [`resume_reading`](Transport::resume_reading), even for bytes already read in this
    /// batch. Idempotent.
    pub fn pause_reading(&mut self) {
        let mut state = self.conn.state.borrow_mut();
        state.flags.set(Flags::READING, false);
        drop(state);
        self.changed();
    }

    /// Reads again after [`pause_reading`](Transport::pause_reading). Idempotent.
    pub fn resume_reading(&mut self) {
        self.conn.state.borrow_mut().flags.set(Flags::READING, true);
        self.changed();
    }

    /// Whether reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        !self.conn.state.borrow().flags.has(Flags::READING)
    }

    /// Sets the write buffer's marks: [`pause_writing`](Protocol::pause_writing) when the
    /// buffer holds more than `high` bytes, [`resume_writing`](Protocol::resume_writing) once
    /// it is down to `low` or less. The new marks are checked against the buffer at once.
    ///
    /// # Panics
    ///
    /// If `low > high`.
    #[track_caller]
    pub fn set_write_limits(&mut self, high: usize, low: usize) {
        assert!(
            low <= high,
            "low-water mark {low} above high-water mark {high}"
        );
        let mut state = self.conn.state.borrow_mut();
        state.high = high;
        state.low = low;
        drop(state);
        self.changed();
    }

    /// The write limits `(high, low)`.
    pub fn write_limits(&self) -> (usize, usize) {
        let state = self.conn.state.borrow();
        (state.high, state.low)
    }

    /// Whether the protocol should hold off writing: the buffer has passed the high-water mark
    /// and not yet drained to the low one. It turns true as a `write` passes the mark, before
    /// [`pause_writing`](Protocol::pause_writing) is delivered (after the current callback),
    /// so a producer writing in a loop can stop right there.
    pub fn is_writing_paused(&self) -> bool {
        let state = self.conn.state.borrow();
        let pending = state.pending();
        if state.flags.has(Flags::WRITING_PAUSED) {
            pending > state.low
        } else {
            pending > state.high
        }
    }

    /// Bytes buffered, not yet taken by the stream.
    pub fn write_buffer_size(&self) -> usize {
        self.conn.state.borrow().pending()
    }

    /// Whether the connection is closing or closed: writes fail from now on.
    pub fn is_closing(&self) -> bool {
        self.conn.state.borrow().is_closing()
    }

    /// Applies what an operation changed: the interest, and the protocol calls it calls for.
    fn changed(&mut self) {
        if self.direct {
            // The caller settles once its protocol call returns.
            return;
        }
        self.conn.sync_interest(self.reg);
        if self.conn.needs_settling() && !self.conn.settle_queued.replace(true) {
            let conn = Rc::clone(&self.conn);
            self.reg.call_soon(move |reg| {
                conn.settle_queued.set(false);
                conn.settle(reg);
            });
        }
    }
}

/// How far the writing direction has been shut.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Shutdown {
    Open,
    /// `write_eof` was called; the stream is shut once the buffer is flushed.
    Pending,
    Done,
}

/// Where a connection is in its life, as bits of one byte, so that one comparison tells the
/// usual state (open, reading, nothing owed) from every other.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    /// `made` has been delivered.
    const MADE: u8 = 1;
    /// A connect is in progress.
    const CONNECTING: u8 = 1 << 1;
    /// The user's wish (`pause_reading`/`resume_reading`).
    const READING: u8 = 1 << 2;
    /// The peer's end of stream has been read.
    const EOF: u8 = 1 << 3;
    /// `close` was called: flush, then end.
    const CLOSING: u8 = 1 << 4;
    /// The connection is over; `lost` is due (or done, once the protocol is gone).
    const ENDED: u8 = 1 << 5;
    /// The protocol has been told to pause writing (and not yet to resume).
    const WRITING_PAUSED: u8 = 1 << 6;

    /// An open connection, reading, writing not paused.
    const USUAL: Flags = Flags(Flags::MADE | Flags::READING);

    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }
}

/// A connection's mutable state. Borrowed only between user calls.
struct State {
    /// Output not yet written: `output[sent..]`.
    output: Vec<u8>,
    sent: usize,
    high: usize,
    low: usize,
    flags: Flags,
    shutdown: Shutdown,
    /// What `lost` will get.
    reason: Option<io::Error>,
    /// The interest the registration has now.
    armed: Interest,
    /// Whether any byte moved since the idle timer last looked.
    active: bool,
    timer: Option<TimerKey>,
    /// The slot in the loop's table of live connections.
    live_index: usize,
}

impl State {
    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }

    /// The usual state, which needs nothing: open and reading, nothing buffered, nothing owed
    /// to the protocol, and the selector waiting for just that. Cheaper to ask than
    /// [`owes_call`](State::owes_call) and [`wanted`](State::wanted).
    #[inline]
    fn is_usual(&self) -> bool {
        self.flags == Flags::USUAL && self.armed == Interest::READ && self.output.len() == self.sent
    }

    /// Whether writing has ended or is ending: `close`, `write_eof`, or the end.
    #[inline]
    fn is_closing(&self) -> bool {
        self.flags.has(Flags::ENDED)
            || self.flags.has(Flags::CLOSING)
            || self.shutdown != Shutdown::Open
    }

    /// Whether a protocol call is owed: a pause, a resume, or `lost`.
    #[inline]
    fn owes_call(&self) -> bool {
        if self.flags.has(Flags::ENDED) {
            return true;
        }
        let pending = self.pending();
        if self.flags.has(Flags::WRITING_PAUSED) {
            pending <= self.low
        } else {
            pending > self.high
        }
    }

    /// What the connection waits for now, from the selector.
    #[inline]
    fn wanted<T: ByteStream>(&self) -> Interest {
        if self.flags.has(Flags::CONNECTING) {
            return Interest::WRITE;
        }
        let reading = if T::CAN_READ {
            self.flags.has(Flags::READING)
                && !self.flags.has(Flags::EOF)
                && !self.flags.has(Flags::CLOSING)
        } else {
            // A write-only stream listens for the error or hang-up that says its reader has
            // gone, even while it has nothing to write.
            true
        };
        let mut want = Interest::NONE;
        if reading {
            want |= Interest::READ;
        }
        if self.pending() > 0 {
            want |= Interest::WRITE;
        }
        want
    }
}

/// What a connection reports to the server that accepted it.
pub(crate) trait ServerLink {
    /// The server's identity, to find its connections.
    fn id(&self) -> u64;
    /// One of its connections ended: a slot and a descriptor are free again.
    fn connection_ended(&self, reg: &mut Registry);
}

/// What the connect code wants to hear about a connect that failed.
pub(crate) type ConnectFailed = Box<dyn FnOnce(&mut Registry, io::Error)>;

/// One connection: the selector's source for it.
pub(crate) struct Conn<T: ByteStream> {
    io: T,
    key: Cell<Option<Key<Rc<Conn<T>>>>>,
    state: RefCell<State>,
    /// `None` while one of its methods runs, and after `lost`.
    protocol: Cell<Option<Box<dyn Protocol<T>>>>,
    server: Option<Rc<dyn ServerLink>>,
    /// For a connect in progress: who hears of its failure (instead of `made`/`lost`).
    connect_failed: Cell<Option<ConnectFailed>>,
    /// A deferred `settle` is queued.
    settle_queued: Cell<bool>,
    /// The loop's read buffer, which all its connections share.
    read_buffer: Rc<ReadBuffer>,
}

/// The read buffer every transport of a loop shares: callbacks run one at a time, and only the
/// loop's dispatch reads, so reads never nest. Grown to its size at the first read.
#[derive(Default)]
struct ReadBuffer(RefCell<Vec<u8>>);

impl<T: ByteStream> AsFd for Conn<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// Every connection of the loop whose `lost` has not run yet, so that dropping the selector
/// can end them all properly, and closing a server can find its own; and the buffer they read
/// into.
#[derive(Default)]
struct Live {
    connections: Slab<Rc<dyn Endpoint>>,
    read_buffer: Rc<ReadBuffer>,
}

/// What the loop-wide table needs of a connection, whatever its stream type.
trait Endpoint {
    fn server_id(&self) -> Option<u64>;
    /// Ends it (if it has not ended) with `reason`, and calls `lost` now.
    fn end_now(self: Rc<Self>, reg: &mut Registry, reason: io::Error);
    /// Ends it (if it has not ended) with `reason`; `lost` follows from a deferred call.
    fn end_soon(self: Rc<Self>, reg: &mut Registry, reason: io::Error);
}

impl<T: ByteStream> Endpoint for Conn<T> {
    fn server_id(&self) -> Option<u64> {
        self.server.as_ref().map(|s| s.id())
    }

    fn end_now(self: Rc<Self>, reg: &mut Registry, reason: io::Error) {
        self.end(reg, Some(reason));
        self.settle(reg);
    }

    fn end_soon(self: Rc<Self>, reg: &mut Registry, reason: io::Error) {
        self.end(reg, Some(reason));
        if !self.settle_queued.replace(true) {
            reg.call_soon(move |reg| {
                self.settle_queued.set(false);
                self.settle(reg);
            });
        }
    }
}

/// What `lost` hears when its protocol panicked: an error of kind `Other` with the panic's
/// message.
pub(crate) fn panic_reason(panic: &(dyn Any + Send)) -> io::Error {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic");
    io::Error::other(format!("the protocol panicked: {message}"))
}

/// Ends every live connection of the server `server` (`lost` follows from deferred calls).
pub(crate) fn end_server_connections(reg: &mut Registry, server: u64, reason: &str) {
    let Some(live) = reg.state::<Live>() else {
        return;
    };
    let ours: Vec<_> = live
        .connections
        .iter()
        .filter(|(_, c)| c.server_id() == Some(server))
        .map(|(_, c)| Rc::clone(c))
        .collect();
    for conn in ours {
        conn.end_soon(
            reg,
            io::Error::new(io::ErrorKind::ConnectionAborted, reason),
        );
    }
}

/// Where a new connection comes from.
pub(crate) struct Setup<T: ByteStream> {
    pub(crate) server: Option<Rc<dyn ServerLink>>,
    pub(crate) connecting: Option<ConnectFailed>,
    pub(crate) idle_timeout: Option<Duration>,
    /// Whether `made` may run right away (no protocol is running above the caller).
    pub(crate) made_now: bool,
    /// Whether the stream is non-blocking already (saves a syscall per connection).
    pub(crate) nonblocking: bool,
    pub(crate) _stream: PhantomData<T>,
}

/// Registers `stream` as a connection driven by `protocol`.
pub(crate) fn open<T: ByteStream>(
    reg: &mut Registry,
    stream: T,
    protocol: Box<dyn Protocol<T>>,
    setup: Setup<T>,
) -> Result<ConnId<T>, RegisterError<T>> {
    if !setup.nonblocking {
        if let Err(error) = stream.set_nonblocking() {
            return Err(RegisterError {
                source: stream,
                error,
            });
        }
    }
    let connecting = setup.connecting.is_some();
    let interest = if connecting {
        Interest::WRITE
    } else {
        Interest::READ
    };
    let read_buffer = Rc::clone(&live_table(reg).read_buffer);
    let conn = Rc::new(Conn {
        io: stream,
        key: Cell::new(None),
        state: RefCell::new(State {
            output: Vec::new(),
            sent: 0,
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_LOW_WATER,
            flags: Flags(if connecting {
                Flags::READING | Flags::CONNECTING
            } else {
                Flags::READING
            }),
            shutdown: Shutdown::Open,
            reason: None,
            armed: interest,
            active: false,
            timer: None,
            live_index: usize::MAX,
        }),
        protocol: Cell::new(Some(protocol)),
        server: setup.server,
        connect_failed: Cell::new(setup.connecting),
        settle_queued: Cell::new(false),
        read_buffer,
    });
    let key = match reg.register(Rc::clone(&conn), interest, |reg, conn, event| {
        conn.ready(reg, event.readiness());
        Ok(())
    }) {
        Ok(key) => key,
        Err(e) => {
            let error = e.error;
            drop(e.source);
            let conn = Rc::into_inner(conn).expect("nothing else holds it yet");
            return Err(RegisterError {
                source: conn.io,
                error,
            });
        }
    };
    conn.key.set(Some(key));
    let live = live_table(reg);
    let index = live
        .connections
        .insert(Rc::clone(&conn) as Rc<dyn Endpoint>);
    conn.state.borrow_mut().live_index = index;
    if let Some(timeout) = setup.idle_timeout {
        arm_timer(reg, &conn, timeout);
    }
    if !connecting {
        if setup.made_now {
            conn.deliver_made(reg);
            conn.settle(reg);
        } else {
            let conn = Rc::clone(&conn);
            reg.call_soon(move |reg| {
                conn.deliver_made(reg);
                conn.settle(reg);
            });
        }
    }
    Ok(ConnId { key })
}

/// The loop's table of live connections, created (with the hook that ends them when the
/// selector is dropped) on first use.
fn live_table(reg: &mut Registry) -> &mut Live {
    if reg.state::<Live>().is_none() {
        reg.insert_state(Live::default());
        reg.states.drop_hooks.push(Box::new(|reg| {
            let Some(live) = reg.take_state::<Live>() else {
                return;
            };
            for (_, conn) in live.connections {
                conn.end_now(
                    reg,
                    io::Error::new(io::ErrorKind::ConnectionAborted, "the selector was dropped"),
                );
            }
        }));
    }
    reg.state::<Live>().expect("inserted above")
}

fn arm_timer<T: ByteStream>(reg: &mut Registry, conn: &Rc<Conn<T>>, timeout: Duration) {
    let weak = Rc::downgrade(conn);
    let timer = reg.call_later(timeout, move |reg| {
        let Some(conn) = weak.upgrade() else { return };
        let mut state = conn.state.borrow_mut();
        state.timer = None;
        if state.flags.has(Flags::ENDED) {
            return;
        }
        if std::mem::take(&mut state.active) {
            drop(state);
            arm_timer(reg, &conn, timeout);
            return;
        }
        drop(state);
        let reason = io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {timeout:?}: closed"),
        );
        conn.end(reg, Some(reason));
        conn.settle(reg);
    });
    conn.state.borrow_mut().timer = Some(timer);
}

impl<T: ByteStream> Conn<T> {
    /// The registration's callback. Kept lean for the common event, an open connection
    /// readable or writable: everything else goes through [`Conn::ready_unusual`].
    #[inline]
    fn ready(self: &Rc<Self>, reg: &mut Registry, readiness: Readiness) {
        let state = self.state.borrow();
        let open = state.flags.has(Flags::MADE) && !state.flags.has(Flags::CONNECTING);
        drop(state);
        if !open {
            return self.ready_unusual(reg, readiness);
        }
        if readiness.is_writable() {
            self.flush(reg);
        }
        if readiness.is_readable() {
            if T::CAN_READ {
                self.read(reg);
            } else {
                self.write_end_gone(reg, readiness);
            }
        }
        self.settle(reg);
    }

    /// An event for a connect in progress, or for a connection whose `made` is still queued.
    #[cold]
    fn ready_unusual(self: &Rc<Self>, reg: &mut Registry, readiness: Readiness) {
        if self.state.borrow().flags.has(Flags::CONNECTING) {
            self.connected(reg);
            return self.settle(reg);
        }
        self.deliver_made(reg);
        self.settle(reg);
        if self.state.borrow().flags.has(Flags::MADE) {
            self.ready(reg, readiness);
        }
    }

    /// A connect in progress became writable: done, or failed.
    fn connected(self: &Rc<Self>, reg: &mut Registry) {
        match super::socket::finish_connect(&self.io) {
            Ok(()) => {
                let mut state = self.state.borrow_mut();
                state.flags.set(Flags::CONNECTING, false);
                let timer = state.timer.take();
                drop(state);
                if let Some(timer) = timer {
                    let _ = reg.cancel(timer);
                }
                self.connect_failed.take();
                self.deliver_made(reg);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.connect_failed(reg, e),
        }
    }

    /// Gives up a connect in progress after `timeout`.
    pub(crate) fn connect_timeout(id: ConnId<T>, reg: &mut Registry, timeout: Duration) {
        let timer = reg.call_later(timeout, move |reg| {
            if let Some(conn) = reg.get(id.key).cloned() {
                conn.state.borrow_mut().timer = None;
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                );
                conn.connect_failed(reg, error);
            }
        });
        if let Some(conn) = reg.get(id.key) {
            conn.state.borrow_mut().timer = Some(timer);
        }
    }

    /// Ends a connection that never opened: its protocol is dropped unheard, and the connect's
    /// caller hears the error instead.
    pub(crate) fn connect_failed(self: &Rc<Self>, reg: &mut Registry, error: io::Error) {
        if !self.state.borrow().flags.has(Flags::CONNECTING) {
            return;
        }
        self.end(reg, Some(error));
        self.settle(reg);
    }

    /// Reads until the stream is drained, paused, or has given its share of this turn.
    fn read(self: &Rc<Self>, reg: &mut Registry) {
        let mut buffer = self.read_buffer.0.borrow_mut();
        if buffer.len() < READ_SIZE {
            buffer.resize(READ_SIZE, 0);
        }
        for _ in 0..READS_PER_EVENT {
            if !self.wants_to_read() {
                break;
            }
            match self.io.read(&mut buffer) {
                Ok(0) => {
                    self.end_of_stream(reg);
                    break;
                }
                Ok(n) => {
                    self.state.borrow_mut().active = true;
                    self.call(reg, |p, tx| p.data(tx, &buffer[..n]));
                    // A short read drained the stream: another would only say WouldBlock.
                    // (The caller settles what the protocol's call changed.)
                    if n < buffer.len() {
                        break;
                    }
                    // A pause owed goes out before the next read, so a protocol that stops
                    // reading when told to pause writing stops now.
                    self.settle(reg);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end(reg, Some(e));
                    break;
                }
            }
        }
    }

    fn wants_to_read(&self) -> bool {
        let state = self.state.borrow();
        state.flags.has(Flags::READING)
            && !state.flags.has(Flags::EOF)
            && !state.flags.has(Flags::CLOSING)
            && !state.flags.has(Flags::ENDED)
    }

    fn end_of_stream(self: &Rc<Self>, reg: &mut Registry) {
        self.state.borrow_mut().flags.set(Flags::EOF, true);
        let mut keep_open = false;
        self.call(reg, |p, tx| {
            keep_open = p.eof(tx);
            Ok(())
        });
        let state = self.state.borrow();
        if state.flags.has(Flags::ENDED) {
            return;
        }
        let both_done = state.shutdown == Shutdown::Done || !T::CAN_WRITE;
        let pending = state.pending();
        drop(state);
        if !keep_open || both_done {
            self.state.borrow_mut().flags.set(Flags::CLOSING, true);
            if pending == 0 {
                self.end(reg, None);
            }
        }
    }

    /// A write-only stream reported readable: only an error or a hang-up does that.
    fn write_end_gone(self: &Rc<Self>, reg: &mut Registry, readiness: Readiness) {
        if self.state.borrow().pending() > 0 {
            // The flush will meet the error itself.
            self.flush(reg);
        }
        if readiness.is_error() || readiness.is_hangup() {
            self.end(reg, Some(io::ErrorKind::BrokenPipe.into()));
        }
    }

    /// Writes what the stream takes of the buffer; then shuts or closes if that was asked.
    fn flush(self: &Rc<Self>, reg: &mut Registry) {
        let mut state = self.state.borrow_mut();
        if state.flags.has(Flags::ENDED) || state.flags.has(Flags::CONNECTING) {
            return;
        }
        while state.pending() > 0 {
            match self.io.write(&state.output[state.sent..]) {
                Ok(n) => {
                    state.sent += n;
                    state.active = true;
                    if state.pending() > 0 {
                        break; // a short write: the stream is full for now
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    drop(state);
                    return self.end(reg, Some(e));
                }
            }
        }
        if state.pending() == 0 {
            // Freed, not kept: an idle connection holds no output buffer. Writes that go
            // straight through never allocate one; only a connection that had to buffer pays
            // one allocation per episode.
            state.sent = 0;
            state.output = Vec::new();
        } else if state.sent >= state.output.len() / 2 {
            // Move the unsent tail to the front so the buffer does not creep.
            let sent = state.sent;
            state.output.drain(..sent);
            state.sent = 0;
            return;
        } else {
            return;
        }
        if state.flags.has(Flags::CLOSING) {
            drop(state);
            return self.end(reg, None);
        }
        if state.shutdown == Shutdown::Pending {
            state.shutdown = Shutdown::Done;
            let eof = state.flags.has(Flags::EOF) || !T::CAN_READ;
            drop(state);
            match self.io.shutdown_write() {
                Ok(()) if !eof => {}
                // Both directions are done, or the stream cannot half-close: close it.
                Ok(()) => self.end(reg, None),
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.end(reg, None),
                Err(e) => self.end(reg, Some(e)),
            }
        }
    }

    /// Runs one protocol method, if the protocol is here; an `Err` or a panic ends the
    /// connection.
    fn call(
        self: &Rc<Self>,
        reg: &mut Registry,
        method: impl FnOnce(&mut dyn Protocol<T>, &mut Transport<'_, T>) -> io::Result<()>,
    ) {
        let Some(mut protocol) = self.protocol.take() else {
            return;
        };
        let mut tx = Transport {
            reg,
            conn: Rc::clone(self),
            direct: true,
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| method(&mut *protocol, &mut tx)));
        self.protocol.set(Some(protocol));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.end(reg, Some(e)),
            Err(panic) => self.protocol_panicked(reg, panic),
        }
    }

    /// A protocol method panicked: the connection ends, `lost` hears why, and the panic goes on
    /// out of the loop's `run`, as a callback's does.
    #[cold]
    fn protocol_panicked(self: &Rc<Self>, reg: &mut Registry, panic: Box<dyn Any + Send>) -> ! {
        self.end(reg, Some(panic_reason(&*panic)));
        // A second panic, from `lost` itself, gives way to the first.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| self.settle_now(reg)));
        // Whatever happened in `lost`, the protocol is gone and the connection forgotten.
        drop(self.protocol.take());
        self.forget(reg);
        panic::resume_unwind(panic)
    }

    fn deliver_made(self: &Rc<Self>, reg: &mut Registry) {
        let mut state = self.state.borrow_mut();
        if state.flags.has(Flags::MADE) || state.flags.has(Flags::ENDED) {
            return;
        }
        state.flags.set(Flags::MADE, true);
        drop(state);
        self.call(reg, |p, tx| p.made(tx));
    }

    /// Whether a protocol call is owed: a pause, a resume, or `lost`.
    fn needs_settling(&self) -> bool {
        self.state.borrow().owes_call()
    }

    /// Delivers what is owed to the protocol, then brings the interest up to date. Nothing to
    /// do is the common case, and costs one look at the state.
    #[inline]
    fn settle(self: &Rc<Self>, reg: &mut Registry) {
        let state = self.state.borrow();
        let settled =
            state.is_usual() || (!state.owes_call() && state.armed == state.wanted::<T>());
        drop(state);
        if !settled {
            self.settle_now(reg);
        }
    }

    #[inline(never)]
    fn settle_now(self: &Rc<Self>, reg: &mut Registry) {
        loop {
            let mut state = self.state.borrow_mut();
            if state.flags.has(Flags::ENDED) {
                let reason = state.reason.take();
                let made = state.flags.has(Flags::MADE);
                drop(state);
                return self.deliver_lost(reg, reason, made);
            }
            let pending = state.pending();
            if !state.flags.has(Flags::WRITING_PAUSED) && pending > state.high {
                state.flags.set(Flags::WRITING_PAUSED, true);
                drop(state);
                self.call(reg, |p, tx| {
                    p.pause_writing(tx);
                    Ok(())
                });
            } else if state.flags.has(Flags::WRITING_PAUSED) && pending <= state.low {
                state.flags.set(Flags::WRITING_PAUSED, false);
                drop(state);
                self.call(reg, |p, tx| {
                    p.resume_writing(tx);
                    Ok(())
                });
            } else {
                break;
            }
        }
        self.sync_interest(reg);
    }

    fn deliver_lost(self: &Rc<Self>, reg: &mut Registry, reason: Option<io::Error>, made: bool) {
        let Some(mut protocol) = self.protocol.take() else {
            return;
        };
        self.forget(reg);
        if made {
            let mut tx = Transport {
                reg,
                conn: Rc::clone(self),
                direct: true,
            };
            protocol.lost(&mut tx, reason);
            return;
        }
        // Never opened: the protocol goes unheard; a connect's caller hears why.
        drop(protocol);
        if let Some(report) = self.connect_failed.take() {
            let reason = reason.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connect was abandoned",
                )
            });
            report(reg, reason);
        }
    }

    /// Takes the connection out of the loop's table of live ones.
    fn forget(&self, reg: &mut Registry) {
        let index = std::mem::replace(&mut self.state.borrow_mut().live_index, usize::MAX);
        if let Some(live) = reg.state::<Live>() {
            if live.connections.contains(index) {
                live.connections.remove(index);
            }
        }
    }

    /// Asks the selector for what the connection waits for now.
    fn sync_interest(&self, reg: &mut Registry) {
        let mut state = self.state.borrow_mut();
        if state.flags.has(Flags::ENDED) {
            return;
        }
        let want = state.wanted::<T>();
        if want == state.armed {
            return;
        }
        state.armed = want;
        drop(state);
        let key = self.key.get().expect("set when registered");
        if let Err(e) = reg.modify(key, want) {
            self.end(reg, Some(e));
        }
    }

    /// Ends the connection (once): out of the selector, buffer freed, timer cancelled, its
    /// server told. `lost` is delivered by the next `settle`.
    fn end(&self, reg: &mut Registry, reason: Option<io::Error>) {
        let mut state = self.state.borrow_mut();
        if state.flags.has(Flags::ENDED) {
            return;
        }
        state.flags.set(Flags::ENDED, true);
        state.reason = reason;
        state.output = Vec::new();
        state.sent = 0;
        let timer = state.timer.take();
        drop(state);
        if let Some(timer) = timer {
            let _ = reg.cancel(timer);
        }
        if let Some(key) = self.key.get() {
            let _ = reg.remove(key);
        }
        match &self.server {
            Some(server) => server.connection_ended(reg),
            // A client's or a pipe's descriptor counts against the same limit.
            None => super::server::descriptor_freed(reg),
        }
    }
}
