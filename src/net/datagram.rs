//! Datagram endpoints: UDP and Unix datagram sockets driven by a protocol's callbacks.
//!
//! The asyncio shape (`create_datagram_endpoint`, `DatagramProtocol`): a
//! [`DatagramProtocol`] value receives each datagram with its sender's address, and sends
//! through the [`DatagramContext`] its callbacks get, or through the [`DatagramEndpoint`]
//! handle from anywhere else on the loop.
//!
//! [`DatagramEndpoint`] states the policies: the send queue, the receive buffer, errors.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{self as unix, UnixDatagram};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use slab::Slab;
use socket2::{Domain, SockRef, Socket, Type};

use super::transport::panic_reason;
use crate::{Event, Interest, Key, Registry};

/// What each queued datagram costs on top of its payload, in the queue's accounting: about the
/// memory its queue entry takes. It keeps empty datagrams from queueing without bound.
pub const DATAGRAM_OVERHEAD: usize = 64;

/// The largest [`DatagramOptions::recv_buffer_size`]: 16 MiB, past any datagram a socket
/// buffer holds.
pub const MAX_RECV_BUFFER: usize = 16 << 20;

/// How many datagrams one wake-up reads at most before letting other sources run.
const READ_BATCH: usize = 64;

/// A socket that sends and receives datagrams: [`UdpSocket`] or [`UnixDatagram`].
///
/// The trait is sealed: the endpoint needs to know how each kind names its peers.
pub trait DatagramSocket: AsFd + sealed::Sealed + 'static {
    /// How a peer is named: [`SocketAddr`] for UDP, [`unix::SocketAddr`] for Unix sockets.
    type Addr: Clone + fmt::Debug + 'static;

    #[doc(hidden)]
    fn send_datagram(&self, data: &[u8], to: Option<&Self::Addr>) -> io::Result<usize>;

    #[doc(hidden)]
    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, Self::Addr)>;
}

#[allow(unreachable_pub)] // sealed: public, in a private module
mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::UdpSocket {}
    impl Sealed for std::os::unix::net::UnixDatagram {}
}

impl DatagramSocket for UdpSocket {
    type Addr = SocketAddr;

    fn send_datagram(&self, data: &[u8], to: Option<&SocketAddr>) -> io::Result<usize> {
        match to {
            Some(addr) => self.send_to(data, addr),
            None => self.send(data),
        }
    }

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.recv_from(buf)
    }
}

impl DatagramSocket for UnixDatagram {
    type Addr = unix::SocketAddr;

    fn send_datagram(&self, data: &[u8], to: Option<&unix::SocketAddr>) -> io::Result<usize> {
        match to {
            Some(addr) => self.send_to_addr(data, addr),
            None => self.send(data),
        }
    }

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, unix::SocketAddr)> {
        self.recv_from(buf)
    }
}

/// The peer-address type of protocol `P`'s socket.
pub type AddrOf<P> = <<P as DatagramProtocol>::Socket as DatagramSocket>::Addr;

/// What a datagram endpoint's owner implements: the callbacks, asyncio's `DatagramProtocol`
/// (`connection_made`, `datagram_received`, `error_received`, `connection_lost`) named as
/// the stream [`Protocol`](super::Protocol) names them.
///
/// The order is fixed: [`made`](DatagramProtocol::made) once, first; then any number of
/// [`datagram`](DatagramProtocol::datagram), [`error`](DatagramProtocol::error) and
/// [`resume_writing`](DatagramProtocol::resume_writing); and [`lost`](DatagramProtocol::lost)
/// exactly once, last, for every way the endpoint ends. No method runs inside another (a send
/// from inside a callback never calls back into the protocol). Every method gets the
/// [`DatagramContext`], through which it sends, closes, and reaches the registry and its
/// loop-wide [state](Registry::state). The protocol is dropped right after `lost`. A method
/// that panics ends the endpoint: `lost` gets an error of kind `Other` naming the panic, and
/// then the panic goes on out of [`run`](crate::Selector::run).
pub trait DatagramProtocol: 'static {
    /// The socket kind: [`UdpSocket`] or [`UnixDatagram`].
    type Socket: DatagramSocket;

    /// The endpoint is on the loop: runs first, on the next loop iteration in which its socket
    /// is ready (the very next one, unless a Unix datagram socket's peer is full). An `Err`
    /// ends it: [`lost`](DatagramProtocol::lost) follows with the error.
    ///
    /// # Errors
    ///
    /// Whatever the protocol decides; it ends the endpoint.
    fn made(&mut self, endpoint: &mut DatagramContext<'_, Self>) -> io::Result<()>
    where
        Self: Sized,
    {
        let _ = endpoint;
        Ok(())
    }

    /// A datagram arrived from `addr` (for a connected socket, always its peer). `data` is
    /// the whole datagram, possibly empty; it is lent from the loop's receive buffer: copy
    /// what you keep.
    ///
    /// # Errors
    ///
    /// Whatever the protocol decides: an `Err` ends the endpoint at once (as
    /// [`abort`](DatagramContext::abort)), and [`lost`](DatagramProtocol::lost) gets it.
    fn datagram(
        &mut self,
        endpoint: &mut DatagramContext<'_, Self>,
        data: &[u8],
        addr: AddrOf<Self>,
    ) -> io::Result<()>
    where
        Self: Sized;

    /// A receive, or the flush of a queued datagram, failed: `ConnectionRefused` after an ICMP
    /// "port unreachable" on a connected UDP socket, `InvalidData` for a datagram larger than
    /// the receive buffer, `EMSGSIZE` for a queued datagram too big to send. The endpoint
    /// stays open. The default ignores it.
    fn error(&mut self, endpoint: &mut DatagramContext<'_, Self>, error: io::Error)
    where
        Self: Sized,
    {
        let _ = (endpoint, error);
    }

    /// The send queue has drained after a send that was [queued](Sent::Queued) or
    /// [dropped](Sent::Dropped): sending goes straight out again.
    fn resume_writing(&mut self, endpoint: &mut DatagramContext<'_, Self>)
    where
        Self: Sized,
    {
        let _ = endpoint;
    }

    /// The endpoint has ended and its socket is out of the selector (closed right after).
    /// `reason` is `None` for [`close`](DatagramEndpoint::close) and
    /// [`abort`](DatagramEndpoint::abort), and the error otherwise: the `Err` a protocol
    /// method returned, or `ConnectionAborted` when the selector is dropped. The context still
    /// answers questions; sends fail with `NotConnected`.
    fn lost(&mut self, endpoint: &mut DatagramContext<'_, Self>, reason: Option<io::Error>)
    where
        Self: Sized,
    {
        let _ = (endpoint, reason);
    }
}

/// What became of one send: see the [endpoint's docs](DatagramEndpoint) for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use = "a datagram may have been dropped"]
pub enum Sent {
    /// The socket took it.
    Sent,
    /// The socket was full (or datagrams were already queued): it is queued, and goes out, in
    /// order, when the socket drains.
    Queued,
    /// The queue was at its limit: the datagram was discarded and counted.
    Dropped,
}

/// Sizes for a [`DatagramEndpoint`]; `Default` gives 64 KiB and 256 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramOptions {
    /// Bytes in the receive buffer; a larger datagram is reported, not delivered.
    pub recv_buffer_size: usize,
    /// Bytes the send queue may hold (payloads plus [`DATAGRAM_OVERHEAD`] each).
    pub send_queue_limit: usize,
}

impl Default for DatagramOptions {
    fn default() -> Self {
        DatagramOptions {
            recv_buffer_size: 64 * 1024,
            send_queue_limit: 256 * 1024,
        }
    }
}

/// The send side of an endpoint: what both the context and the handle touch.
struct Outbox<A> {
    queue: VecDeque<(Box<[u8]>, Option<A>)>,
    /// The queue's size in the accounting of [`DATAGRAM_OVERHEAD`].
    queued: usize,
    limit: usize,
    dropped: u64,
    /// A send was queued or dropped since the queue was last empty: `resume_writing` is owed.
    owes_resume: bool,
    /// `close` was called: end once the queue is empty.
    closing: bool,
}

impl<A: Clone> Outbox<A> {
    fn new(limit: usize) -> Outbox<A> {
        Outbox {
            queue: VecDeque::new(),
            queued: 0,
            limit,
            dropped: 0,
            owes_resume: false,
            closing: false,
        }
    }

    /// Sends at once if nothing is queued, else queues or drops by the policy.
    fn send<S>(&mut self, socket: &S, data: &[u8], to: Option<&A>) -> io::Result<Sent>
    where
        S: DatagramSocket<Addr = A>,
    {
        if self.closing {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the datagram endpoint is closing",
            ));
        }
        if self.queue.is_empty() {
            match retry(|| socket.send_datagram(data, to)) {
                Ok(_) => return Ok(Sent::Sent),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.owes_resume = true;
        let cost = data.len() + DATAGRAM_OVERHEAD;
        if !self.queue.is_empty() && self.queued + cost > self.limit {
            self.dropped += 1;
            return Ok(Sent::Dropped);
        }
        self.queued += cost;
        self.queue.push_back((data.into(), to.cloned()));
        Ok(Sent::Queued)
    }

    /// Sends queued datagrams until the socket is full; a datagram the OS refuses is dropped
    /// and its error returned, so the caller can report it and call again.
    fn flush<S: DatagramSocket<Addr = A>>(&mut self, socket: &S) -> io::Result<()> {
        while let Some((data, to)) = self.queue.front() {
            let outcome = retry(|| socket.send_datagram(data, to.as_ref()));
            if matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                return Ok(());
            }
            let (data, _) = self.queue.pop_front().expect("front was Some");
            self.queued -= data.len() + DATAGRAM_OVERHEAD;
            outcome?;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.queued = 0;
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            outcome => return outcome,
        }
    }
}

/// The registered source: the socket, its send queue and the protocol.
struct Source<P: DatagramProtocol> {
    socket: P::Socket,
    outbox: RefCell<Outbox<AddrOf<P>>>,
    /// Borrowed only by the endpoint's own callback (when the selector cannot hand the source
    /// to anyone else) or once the source is out of the selector, so never twice.
    protocol: RefCell<P>,
    /// Whether `made` ran.
    made: Cell<bool>,
    /// The endpoint's place in the loop's [`LiveEndpoints`].
    live_index: Cell<usize>,
}

impl<P: DatagramProtocol> AsFd for Source<P> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The receive buffer every endpoint of a loop shares (callbacks run one at a time), as large
/// as the largest [`DatagramOptions::recv_buffer_size`] asked for, plus one.
#[derive(Default)]
struct RecvBuffer(Vec<u8>);

impl RecvBuffer {
    /// Lends the buffer out, at least `len` bytes long.
    fn take(registry: &mut Registry, len: usize) -> Vec<u8> {
        let mut buffer = match registry.state::<RecvBuffer>() {
            Some(shared) => std::mem::take(&mut shared.0),
            None => Vec::new(),
        };
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        buffer
    }

    /// Puts it back for the next read (a panicking protocol loses it: the next read makes
    /// another).
    fn give_back(registry: &mut Registry, buffer: Vec<u8>) {
        match registry.state::<RecvBuffer>() {
            Some(shared) => shared.0 = buffer,
            None => drop(registry.insert_state(RecvBuffer(buffer))),
        }
    }
}

/// The loop's live endpoints, as calls that end each one: run when the selector is dropped,
/// so that every protocol hears `lost` with the registry still there.
#[derive(Default)]
struct LiveEndpoints(Slab<Ending>);

type Ending = Box<dyn FnOnce(&mut Registry)>;

/// Adds an endpoint's ending call to the loop's table (made, with its drop hook, on first
/// use); returns its index.
fn enlist(registry: &mut Registry, end: Ending) -> usize {
    if registry.state::<LiveEndpoints>().is_none() {
        registry.insert_state(LiveEndpoints::default());
        registry.states.drop_hooks.push(Box::new(|registry| {
            let Some(live) = registry.take_state::<LiveEndpoints>() else {
                return;
            };
            for (_, end) in live.0 {
                end(registry);
            }
        }));
    }
    let live = registry.state::<LiveEndpoints>().expect("inserted above");
    live.0.insert(end)
}

/// Takes an endpoint out of the loop's table (a no-op once the table is being emptied).
fn delist(registry: &mut Registry, index: usize) {
    if let Some(live) = registry.state::<LiveEndpoints>() {
        live.0.try_remove(index);
    }
}

/// A handle to a datagram endpoint on the loop: cheap, `Copy`, and safe to keep after the
/// endpoint is gone (its methods then fail with [`NotFound`](io::ErrorKind::NotFound)).
///
/// Inside the endpoint's own protocol callbacks, use the [`DatagramContext`] instead: the
/// handle's methods fail there with [`ResourceBusy`](io::ErrorKind::ResourceBusy), since the
/// endpoint is busy running the callback.
///
/// # Sending never blocks: the queue policy
///
/// A send goes straight to the socket when nothing is queued. When the socket is full
/// (`WouldBlock`), the datagram is copied into the endpoint's send queue, flushed in order as
/// the socket becomes writable. The queue is bounded ([`DatagramOptions::send_queue_limit`],
/// 256 KiB by default; each datagram counts its length plus [`DATAGRAM_OVERHEAD`] bytes, so
/// empty datagrams count too): a datagram that would take it past the bound is **dropped** and
/// counted ([`DatagramEndpoint::dropped`]), never queued (tail drop, as a router does). A
/// datagram is always queued when the queue is empty, however large. Each send says which of
/// the three happened ([`Sent`]); after a send that was queued or dropped,
/// [`DatagramProtocol::resume_writing`] runs once the queue has drained. Datagram delivery is
/// unreliable anyway, so a program that must not lose any watches [`Sent`]; asyncio instead
/// queues without bound and pauses the protocol, which lets a fast sender grow memory.
///
/// # Receiving: one buffer per loop, no silent truncation
///
/// An endpoint reads into [`DatagramOptions::recv_buffer_size`] bytes (64 KiB by default,
/// enough for any UDP datagram over IPv4 or IPv6 without jumbograms) of a buffer that every
/// endpoint of the loop shares, so an idle endpoint holds none. A
/// datagram larger than the buffer is **not** delivered: the kernel has already cut it, so it
/// is reported to [`DatagramProtocol::error`] as
/// [`InvalidData`](io::ErrorKind::InvalidData) and discarded. An empty datagram is delivered
/// as an empty slice; it is not an end of stream (datagram sockets have none).
///
/// Receiving, and sending straight through, allocate nothing; a queued datagram is one
/// allocation of its size. An idle UDP endpoint with a fieldless protocol holds its socket and
/// 116 bytes of heap in two allocations (its registration, and its entry in the loop's table
/// of endpoints to end when the selector is dropped), plus a slot in each of those tables.
///
/// # Errors, and the end of an endpoint
///
/// Errors that concern one datagram never close the endpoint: the ICMP "port unreachable" a
/// connected UDP socket learns of (`ECONNREFUSED`), a datagram too big to send (`EMSGSIZE`),
/// an unreachable host. A send that fails at once returns its error to the caller; an error
/// found while receiving, or while flushing the queue (that datagram is then dropped), goes to
/// [`error`](DatagramProtocol::error). The endpoint ends only through
/// [`close`](DatagramEndpoint::close) (after the queue is flushed),
/// [`abort`](DatagramEndpoint::abort) (at once), an `Err` from the protocol, or dropping the
/// selector; [`lost`](DatagramProtocol::lost) then runs exactly once, after
/// [`made`](DatagramProtocol::made) (an endpoint that ends before its first loop iteration
/// hears neither).
///
/// # Examples
///
/// ```
/// use selreactor::net::{DatagramContext, DatagramEndpoint, DatagramProtocol};
/// use selreactor::Selector;
/// use std::io;
/// use std::net::{SocketAddr, UdpSocket};
///
/// /// Prints what arrives, then stops the loop.
/// struct Print;
///
/// impl DatagramProtocol for Print {
///     type Socket = UdpSocket;
///     fn datagram(
///         &mut self,
///         ep: &mut DatagramContext<'_, Self>,
///         data: &[u8],
///         from: SocketAddr,
///     ) -> io::Result<()> {
///         println!("{from}: {}", String::from_utf8_lossy(data));
///         ep.close();
///         ep.registry().stop();
///         Ok(())
///     }
/// }
///
/// let mut sel = Selector::new()?;
/// let endpoint = DatagramEndpoint::bind_udp(&mut sel, "127.0.0.1:0".parse().unwrap(), Print)?;
/// let addr = endpoint.local_addr(&sel)?;
/// let client = UdpSocket::bind("127.0.0.1:0")?;
/// client.send_to(b"hello", addr)?;
/// sel.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct DatagramEndpoint<P: DatagramProtocol> {
    key: Key<Source<P>>,
}

impl<P: DatagramProtocol> Clone for DatagramEndpoint<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: DatagramProtocol> Copy for DatagramEndpoint<P> {}

impl<P: DatagramProtocol> PartialEq for DatagramEndpoint<P> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<P: DatagramProtocol> Eq for DatagramEndpoint<P> {}

impl<P: DatagramProtocol> fmt::Debug for DatagramEndpoint<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatagramEndpoint")
            .field(&self.key.token())
            .finish()
    }
}

impl<P: DatagramProtocol> DatagramEndpoint<P> {
    /// Puts `socket` on the loop, driven by `protocol`, with the default [`DatagramOptions`].
    /// The socket may be bound, connected, both or neither; it is made non-blocking.
    /// [`made`](DatagramProtocol::made) runs on the next iteration.
    ///
    /// # Errors
    ///
    /// The OS's error making the socket non-blocking or registering it; the socket and the
    /// protocol are dropped (no protocol callback runs).
    pub fn new(registry: &mut Registry, socket: P::Socket, protocol: P) -> io::Result<Self> {
        Self::with_options(registry, socket, protocol, DatagramOptions::default())
    }

    /// As [`new`](DatagramEndpoint::new), with the buffer sizes given.
    ///
    /// # Errors
    ///
    /// As for [`new`](DatagramEndpoint::new), and
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for a receive buffer of zero bytes or
    /// more than [`MAX_RECV_BUFFER`].
    pub fn with_options(
        registry: &mut Registry,
        socket: P::Socket,
        protocol: P,
        options: DatagramOptions,
    ) -> io::Result<Self> {
        if !(1..=MAX_RECV_BUFFER).contains(&options.recv_buffer_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a receive buffer of {} bytes: it must hold 1 to {MAX_RECV_BUFFER}",
                    options.recv_buffer_size
                ),
            ));
        }
        SockRef::from(&socket).set_nonblocking(true)?;
        let source = Source {
            socket,
            outbox: RefCell::new(Outbox::new(options.send_queue_limit)),
            protocol: RefCell::new(protocol),
            made: Cell::new(false),
            live_index: Cell::new(usize::MAX),
        };
        // One byte more than the limit: a read that fills it found a datagram over the limit
        // (the kernel cuts a datagram to the buffer it is read into, and says so only through
        // a flag that not every platform reports).
        let reads = options.recv_buffer_size + 1;
        // Writable at once in practice: the first callback delivers `made`.
        let key = registry.register(source, Interest::BOTH, move |reg, source, event| {
            let mut buffer = RecvBuffer::take(reg, reads);
            on_ready(reg, source, event, &mut buffer[..reads]);
            RecvBuffer::give_back(reg, buffer);
            Ok(())
        })?;
        let endpoint = DatagramEndpoint { key };
        let index = enlist(
            registry,
            Box::new(move |registry| {
                let dropped =
                    io::Error::new(io::ErrorKind::ConnectionAborted, "the selector was dropped");
                let _ = endpoint.end(registry, Some(dropped));
            }),
        );
        if let Some(source) = registry.get(key) {
            source.live_index.set(index);
        }
        Ok(endpoint)
    }

    /// Sends `data` to `addr`; the [endpoint's docs](DatagramEndpoint) say what happens when
    /// the socket is full.
    ///
    /// # Errors
    ///
    /// - [`NotFound`](io::ErrorKind::NotFound) once the endpoint is gone;
    /// - [`ResourceBusy`](io::ErrorKind::ResourceBusy) from the endpoint's own callbacks (use
    ///   the context there);
    /// - [`NotConnected`](io::ErrorKind::NotConnected) once it is closing;
    /// - the OS's error for this datagram (`EMSGSIZE`, an unreachable network, a pending
    ///   `ECONNREFUSED` on a connected socket); the endpoint stays open.
    pub fn send_to(
        &self,
        registry: &mut Registry,
        data: &[u8],
        addr: &AddrOf<P>,
    ) -> io::Result<Sent> {
        self.send_inner(registry, data, Some(addr))
    }

    /// Sends `data` to the connected peer; as [`send_to`](DatagramEndpoint::send_to).
    ///
    /// # Errors
    ///
    /// As for [`send_to`](DatagramEndpoint::send_to); also the OS's error for a socket that is
    /// not connected.
    pub fn send(&self, registry: &mut Registry, data: &[u8]) -> io::Result<Sent> {
        self.send_inner(registry, data, None)
    }

    fn send_inner(
        &self,
        registry: &mut Registry,
        data: &[u8],
        to: Option<&AddrOf<P>>,
    ) -> io::Result<Sent> {
        let source = self.source(registry)?;
        let mut outbox = source.outbox.borrow_mut();
        let sent = outbox.send(&source.socket, data, to)?;
        let waiting = !outbox.queue.is_empty();
        drop(outbox);
        if waiting {
            registry.modify(self.key, Interest::BOTH)?;
        }
        Ok(sent)
    }

    /// Closes the endpoint once its queue is flushed: no more datagrams are received, sends
    /// fail with `NotConnected`, and [`lost`](DatagramProtocol::lost) runs when the last
    /// queued datagram is out (at once, here, if none is queued). Closing again while the
    /// queue flushes changes nothing.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) once the endpoint is gone;
    /// [`ResourceBusy`](io::ErrorKind::ResourceBusy) from its own callbacks (use the context).
    pub fn close(&self, registry: &mut Registry) -> io::Result<()> {
        let source = self.source(registry)?;
        let mut outbox = source.outbox.borrow_mut();
        outbox.closing = true;
        if outbox.queue.is_empty() {
            drop(outbox);
            return self.abort(registry);
        }
        drop(outbox);
        registry.modify(self.key, Interest::WRITE)
    }

    /// Closes the endpoint at once, discarding its queue;
    /// [`lost`](DatagramProtocol::lost) runs before this returns.
    ///
    /// # Errors
    ///
    /// As for [`close`](DatagramEndpoint::close).
    pub fn abort(&self, registry: &mut Registry) -> io::Result<()> {
        self.end(registry, None)
    }

    /// Takes the endpoint out of the selector and delivers `lost`.
    fn end(&self, registry: &mut Registry, reason: Option<io::Error>) -> io::Result<()> {
        self.source(registry)?;
        let mut source = registry.unregister(self.key)?;
        let outbox = source.outbox.get_mut();
        outbox.clear();
        outbox.closing = true;
        delist(registry, source.live_index.get());
        if source.made.get() {
            let mut ctx = DatagramContext {
                registry,
                socket: &source.socket,
                outbox: &source.outbox,
                endpoint: *self,
            };
            source.protocol.borrow_mut().lost(&mut ctx, reason);
        }
        Ok(())
    }

    /// The endpoint's socket (for its addresses and options), or `None` once it is gone or
    /// while its own callback runs.
    pub fn socket<'r>(&self, registry: &'r Registry) -> Option<&'r P::Socket> {
        registry.get(self.key).map(|s| &s.socket)
    }

    /// The bytes queued, in the accounting of the [endpoint's docs](DatagramEndpoint); 0 when
    /// gone.
    pub fn queued_bytes(&self, registry: &Registry) -> usize {
        registry
            .get(self.key)
            .map_or(0, |s| s.outbox.borrow().queued)
    }

    /// How many datagrams the queue's limit has dropped so far; 0 when gone.
    pub fn dropped(&self, registry: &Registry) -> u64 {
        registry
            .get(self.key)
            .map_or(0, |s| s.outbox.borrow().dropped)
    }

    /// Whether the endpoint is still on the loop (closing counts).
    pub fn is_open(&self, registry: &Registry) -> bool {
        registry.contains(self.key)
    }

    fn source<'r>(&self, registry: &'r Registry) -> io::Result<&'r Source<P>> {
        registry.get(self.key).ok_or_else(|| {
            if registry.contains(self.key) {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the endpoint is running its own callback: use its DatagramContext",
                )
            } else {
                io::Error::new(io::ErrorKind::NotFound, "the datagram endpoint is gone")
            }
        })
    }
}

impl<P: DatagramProtocol<Socket = UdpSocket>> DatagramEndpoint<P> {
    /// A UDP endpoint bound to `addr` (IPv4 or IPv6; port 0 picks a free one).
    ///
    /// # Errors
    ///
    /// The OS's error creating or binding the socket (`AddrInUse`, `AddrNotAvailable`), or
    /// registering it.
    pub fn bind_udp(registry: &mut Registry, addr: SocketAddr, protocol: P) -> io::Result<Self> {
        Self::new(registry, udp_socket(addr)?, protocol)
    }

    /// A UDP endpoint connected to `remote`, bound to the wildcard address of its family:
    /// it receives only from `remote`, and learns of ICMP errors from it through
    /// [`error`](DatagramProtocol::error). Connecting sends nothing.
    ///
    /// # Errors
    ///
    /// As for [`bind_udp`](DatagramEndpoint::bind_udp); also the OS's error connecting
    /// (`NetworkUnreachable`).
    pub fn connect_udp(
        registry: &mut Registry,
        remote: SocketAddr,
        protocol: P,
    ) -> io::Result<Self> {
        let wildcard = match remote {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = udp_socket(wildcard)?;
        socket.connect(remote)?;
        Self::new(registry, socket, protocol)
    }

    /// The address the endpoint's socket is bound to.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) once the endpoint is gone, or while its own
    /// callback runs (use [`DatagramContext::socket`] there).
    pub fn local_addr(&self, registry: &Registry) -> io::Result<SocketAddr> {
        self.socket(registry)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the datagram endpoint is gone")
            })?
            .local_addr()
    }
}

impl<P: DatagramProtocol<Socket = UnixDatagram>> DatagramEndpoint<P> {
    /// A Unix datagram endpoint bound to the filesystem path `path` (which must not exist;
    /// the socket file is left behind when the endpoint closes, as with any Unix socket).
    ///
    /// # Errors
    ///
    /// The OS's error binding (`AddrInUse` if the path exists), or registering.
    pub fn bind_unix(
        registry: &mut Registry,
        path: impl AsRef<Path>,
        protocol: P,
    ) -> io::Result<Self> {
        Self::new(registry, UnixDatagram::bind(path)?, protocol)
    }
}

/// A close-on-exec UDP socket bound to `addr`, made with socket2 (the endpoint makes it
/// non-blocking).
fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// What a datagram protocol's callbacks get: the endpoint's socket and send side, and the
/// registry.
pub struct DatagramContext<'a, P: DatagramProtocol> {
    registry: &'a mut Registry,
    socket: &'a P::Socket,
    outbox: &'a RefCell<Outbox<AddrOf<P>>>,
    endpoint: DatagramEndpoint<P>,
}

impl<P: DatagramProtocol> fmt::Debug for DatagramContext<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramContext")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl<P: DatagramProtocol> DatagramContext<'_, P> {
    /// The loop's registry: timers, other sources, stopping the loop.
    pub fn registry(&mut self) -> &mut Registry {
        self.registry
    }

    /// A handle to this endpoint, to keep (in a timer, another connection's state).
    pub fn endpoint(&self) -> DatagramEndpoint<P> {
        self.endpoint
    }

    /// The endpoint's socket, for its addresses and options.
    pub fn socket(&self) -> &P::Socket {
        self.socket
    }

    /// Sends `data` to `addr`; see [`DatagramEndpoint::send_to`].
    ///
    /// # Errors
    ///
    /// [`NotConnected`](io::ErrorKind::NotConnected) once closing, or the OS's error for this
    /// datagram.
    pub fn send_to(&mut self, data: &[u8], addr: &AddrOf<P>) -> io::Result<Sent> {
        self.outbox.borrow_mut().send(self.socket, data, Some(addr))
    }

    /// Sends `data` to the connected peer; see [`DatagramEndpoint::send`].
    ///
    /// # Errors
    ///
    /// As for [`send_to`](DatagramContext::send_to).
    pub fn send(&mut self, data: &[u8]) -> io::Result<Sent> {
        self.outbox.borrow_mut().send(self.socket, data, None)
    }

    /// Closes the endpoint once its queue is flushed (see [`DatagramEndpoint::close`]); no
    /// more datagrams are delivered after the current callback.
    pub fn close(&mut self) {
        self.outbox.borrow_mut().closing = true;
    }

    /// Closes the endpoint when the current callback returns, discarding its queue.
    pub fn abort(&mut self) {
        let mut outbox = self.outbox.borrow_mut();
        outbox.closing = true;
        outbox.clear();
    }

    /// The bytes queued; see [`DatagramEndpoint::queued_bytes`].
    pub fn queued_bytes(&self) -> usize {
        self.outbox.borrow().queued
    }

    /// How many datagrams the queue's limit has dropped so far.
    pub fn dropped(&self) -> u64 {
        self.outbox.borrow().dropped
    }
}

/// The endpoint's one callback: deliver `made`, read, flush, resume, close.
fn on_ready<P: DatagramProtocol>(
    registry: &mut Registry,
    source: &Source<P>,
    event: Event<Source<P>>,
    buffer: &mut [u8],
) {
    let mut protocol = source.protocol.borrow_mut();
    let mut ctx = DatagramContext {
        registry,
        socket: &source.socket,
        outbox: &source.outbox,
        endpoint: DatagramEndpoint { key: event.key() },
    };
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(&mut *protocol, &mut ctx, source, event, buffer)
    }));
    let (ended, panicked) = match served {
        Ok(ended) => (ended, None),
        Err(panic) => (Err(panic_reason(&*panic)), Some(panic)),
    };
    let (closing, drained) = {
        let outbox = ctx.outbox.borrow();
        (outbox.closing, outbox.queue.is_empty())
    };
    if ended.is_err() || (closing && drained) {
        let mut outbox = ctx.outbox.borrow_mut();
        outbox.clear();
        outbox.closing = true;
        drop(outbox);
        delist(ctx.registry, source.live_index.get());
        // Cannot fail: the key names the registration whose callback this is. The socket is
        // out of the selector, and closed, as soon as this callback returns.
        let _ = ctx.registry.remove(event.key());
        let Some(panic) = panicked else {
            return protocol.lost(&mut ctx, ended.err());
        };
        // A second panic, from `lost` itself, gives way to the first, which goes on out of
        // the loop's `run`.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| protocol.lost(&mut ctx, ended.err())));
        panic::resume_unwind(panic);
    }
    let interest = match (closing, drained) {
        (true, _) => Interest::WRITE,
        (false, true) => Interest::READ,
        (false, false) => Interest::BOTH,
    };
    // Cannot fail either; the OS's view changes when this callback returns.
    let _ = ctx.registry.modify(event.key(), interest);
}

/// The protocol's share of one wake-up; an `Err` from it ends the endpoint.
fn serve<P: DatagramProtocol>(
    protocol: &mut P,
    ctx: &mut DatagramContext<'_, P>,
    source: &Source<P>,
    event: Event<Source<P>>,
    buffer: &mut [u8],
) -> io::Result<()> {
    if !source.made.replace(true) {
        protocol.made(ctx)?;
    }
    if event.is_readable() {
        for _ in 0..READ_BATCH {
            if ctx.outbox.borrow().closing {
                break;
            }
            match receive(&source.socket, buffer) {
                Ok(Some((len, from))) => protocol.datagram(ctx, &buffer[..len], from)?,
                Ok(None) => break,
                Err(error) => {
                    protocol.error(ctx, error);
                    break; // a next error, if any, waits for the next wake-up
                }
            }
        }
    }
    loop {
        let flushed = ctx.outbox.borrow_mut().flush(&source.socket);
        match flushed {
            Ok(()) => break,
            Err(error) => protocol.error(ctx, error),
        }
    }
    let owes_resume = {
        let mut outbox = ctx.outbox.borrow_mut();
        let owed = outbox.queue.is_empty() && outbox.owes_resume && !outbox.closing;
        outbox.owes_resume &= !owed;
        owed
    };
    if owes_resume {
        protocol.resume_writing(ctx);
    }
    Ok(())
}

/// Reads one datagram into `buffer` (one byte longer than the endpoint's limit). `Ok(None)`:
/// nothing to read.
fn receive<S: DatagramSocket>(
    socket: &S,
    buffer: &mut [u8],
) -> io::Result<Option<(usize, S::Addr)>> {
    match retry(|| socket.recv_datagram(buffer)) {
        Ok((len, _)) if len == buffer.len() => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "discarded a datagram larger than the {}-byte receive buffer",
                buffer.len() - 1
            ),
        )),
        Ok((len, from)) => Ok(Some((len, from))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}
