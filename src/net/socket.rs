//! Making sockets the way a server or client on a reactor needs them; usable on their own.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// How [`tcp_listener`] and [`unix_listener`] set up a listening socket.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The accept queue's length (the kernel caps it at `net.core.somaxconn`). Default 1024.
    pub backlog: i32,
    /// `SO_REUSEPORT`: several sockets (one per loop and thread) share the address, and the
    /// kernel spreads connections among them. Default off. Ignored for Unix sockets.
    pub reuse_port: bool,
    /// `IPV6_V6ONLY` for an IPv6 address: `Some(false)` also accepts IPv4 on `[::]`. Default
    /// `None`: the OS's default.
    pub only_v6: Option<bool>,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions {
            backlog: 1024,
            reuse_port: false,
            only_v6: None,
        }
    }
}

impl ListenOptions {
    /// The defaults with `backlog` instead.
    pub fn backlog(mut self, backlog: i32) -> ListenOptions {
        self.backlog = backlog;
        self
    }

    /// The defaults with `SO_REUSEPORT` set as given.
    pub fn reuse_port(mut self, on: bool) -> ListenOptions {
        self.reuse_port = on;
        self
    }
}

/// A non-blocking TCP listener on `addr` (IPv4 or IPv6; port 0 picks a free one), with
/// `SO_REUSEADDR` (a restarted server does not wait out `TIME_WAIT`) and the options' backlog.
///
/// # Errors
///
/// The OS's: `AddrInUse`, `AddrNotAvailable`, `PermissionDenied` for a privileged port.
///
/// # Examples
///
/// ```
/// use selreactor::net::{tcp_listener, ListenOptions};
///
/// let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), &ListenOptions::default())?;
/// assert_ne!(listener.local_addr()?.port(), 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn tcp_listener(addr: SocketAddr, options: &ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let (SocketAddr::V6(_), Some(only)) = (addr, options.only_v6) {
        socket.set_only_v6(only)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A non-blocking Unix-domain listener at `path`, with the options' backlog. The path must not
/// exist; removing it afterwards is the caller's business.
///
/// # Errors
///
/// The OS's: `AddrInUse` when the path exists, `PermissionDenied`, `InvalidInput` for a path
/// too long for `sockaddr_un`.
pub fn unix_listener(path: impl AsRef<Path>, options: &ListenOptions) -> io::Result<UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    socket.listen(options.backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Starts a non-blocking TCP connect to `addr`: the stream comes back at once, its connection
/// usually still in progress (`EINPROGRESS`). Wait for it to be writable, then call
/// [`finish_connect`].
///
/// # Errors
///
/// Failures the OS reports at once: `EMFILE`, `ENETUNREACH`, sometimes `ConnectionRefused`.
pub fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    connect_in_progress(&socket, &addr.into())?;
    Ok(socket.into())
}

/// [`start_connect`] for a Unix-domain socket at `path`.
///
/// # Errors
///
/// As for [`start_connect`]; `NotFound` when nothing is at `path`, `ConnectionRefused` when
/// nothing listens there.
pub fn start_connect_unix(path: impl AsRef<Path>) -> io::Result<UnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    connect_in_progress(&socket, &SockAddr::unix(path)?)?;
    Ok(socket.into())
}

fn connect_in_progress(socket: &Socket, addr: &SockAddr) -> io::Result<()> {
    match socket.connect(addr) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        // A Unix socket whose listener's queue is full says EAGAIN: still in progress.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Finishes a connect begun by [`start_connect`] once the socket is writable: `Ok` when it is
/// connected.
///
/// # Errors
///
/// - the connect's own failure, from `SO_ERROR`: `ConnectionRefused`, `HostUnreachable`,
///   `NetworkUnreachable`, `TimedOut` (the kernel's own, minutes long);
/// - `WouldBlock` when it is still in progress (a spurious wake-up: wait again);
/// - `AddrInUse` when a TCP socket connected to itself (a loopback connect to a free port in
///   the ephemeral range can pick that port as its own source).
pub fn finish_connect(socket: &impl AsFd) -> io::Result<()> {
    let socket = SockRef::from(socket);
    if let Some(error) = socket.take_error()? {
        return Err(error);
    }
    let peer = match socket.peer_addr() {
        Ok(peer) => peer,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
            return Err(io::ErrorKind::WouldBlock.into())
        }
        Err(e) => return Err(e),
    };
    if peer.as_socket().is_some() && socket.local_addr()? == peer {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the socket connected to itself (nothing listens on that port)",
        ));
    }
    Ok(())
}
