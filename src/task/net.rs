//! Sockets for tasks: TCP and Unix listeners and streams, UDP.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::Path;

use std::os::fd::AsFd;

use crate::interest::Interest;
use crate::net::{
    finish_connect, start_connect, start_connect_unix, tcp_listener, unix_listener, ListenOptions,
};
use crate::task::io::Async;

fn resolve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    })
}

impl Async<TcpListener> {
    /// Binds a listener to `addr` (`SO_REUSEADDR` set; see
    /// [`tcp_listener`](crate::net::tcp_listener) for more options).
    ///
    /// # Errors
    ///
    /// The OS's error binding (`AddrInUse`, ...), or as for [`Async::new`].
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Async<TcpListener>> {
        Async::new(tcp_listener(resolve(addr)?, &ListenOptions::default())?)
    }

    /// Accepts a connection, registered with this selector. Cancel-safe: a connection is
    /// either returned or left in the backlog for the next `accept`.
    ///
    /// # Errors
    ///
    /// The OS's error from `accept` (`EMFILE` when out of descriptors: the connection stays in
    /// the backlog), or from registering the new stream.
    pub async fn accept(&self) -> io::Result<(Async<TcpStream>, SocketAddr)> {
        let (stream, peer) = self.read_with(|l| l.accept()).await?;
        Ok((Async::new(stream)?, peer))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// The OS's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().local_addr()
    }
}

impl Async<TcpStream> {
    /// Connects to `addr` without blocking the loop: a non-blocking `connect`, then a wait
    /// until the socket is writable, then its pending error, if any.
    ///
    /// # Errors
    ///
    /// The connection's error (`ConnectionRefused`, ...), or as for [`Async::new`].
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Async<TcpStream>> {
        finish(start_connect(resolve(addr)?)?).await
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// The OS's error (`NotConnected`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().peer_addr()
    }
}

/// Waits until a connect begun without blocking completes; the stream is registered.
async fn finish<T: AsFd + 'static>(stream: T) -> io::Result<Async<T>> {
    let stream = Async::register(stream, Interest::WRITE, Interest::NONE)?;
    loop {
        stream.writable().await?;
        match finish_connect(stream.get_ref()) {
            // Spurious: still in progress.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.clear_ready(Interest::WRITE),
            result => return result.map(|()| stream),
        }
    }
}

impl Async<UnixListener> {
    /// Binds a listener to the socket file at `path`.
    ///
    /// # Errors
    ///
    /// The OS's error binding (`AddrInUse` if the file exists), or as for [`Async::new`].
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Async<UnixListener>> {
        Async::new(unix_listener(path, &ListenOptions::default())?)
    }

    /// Accepts a connection, registered with this selector (cancel-safe, as for TCP).
    ///
    /// # Errors
    ///
    /// As for the TCP [`accept`](Async::<TcpListener>::accept).
    pub async fn accept(&self) -> io::Result<(Async<UnixStream>, UnixSocketAddr)> {
        let (stream, peer) = self.read_with(|l| l.accept()).await?;
        Ok((Async::new(stream)?, peer))
    }
}

impl Async<UnixStream> {
    /// Connects to the socket file at `path` without blocking the loop (a listener whose
    /// backlog is full makes it wait).
    ///
    /// # Errors
    ///
    /// The OS's error (`NotFound`, `ConnectionRefused`), or as for [`Async::new`].
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Async<UnixStream>> {
        finish(start_connect_unix(path)?).await
    }

    /// A connected pair, both registered with this selector.
    ///
    /// # Errors
    ///
    /// As for [`Async::new`].
    pub fn pair() -> io::Result<(Async<UnixStream>, Async<UnixStream>)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Async::new(a)?, Async::new(b)?))
    }
}

impl Async<UdpSocket> {
    /// Binds a UDP socket to `addr`.
    ///
    /// # Errors
    ///
    /// The OS's error binding, or as for [`Async::new`].
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Async<UdpSocket>> {
        Async::new(UdpSocket::bind(addr)?)
    }

    /// Sends one datagram to `addr`; returns the bytes sent (all of them, for UDP).
    ///
    /// # Errors
    ///
    /// The OS's error (`EMSGSIZE` for a datagram too large, ...).
    pub async fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        let addr = resolve(addr)?;
        self.write_with(|s| s.send_to(buf, addr)).await
    }

    /// Receives one datagram; a datagram longer than `buf` is truncated. Returns its length
    /// (as received) and sender.
    ///
    /// # Errors
    ///
    /// The OS's error (`ConnectionRefused` after an ICMP unreachable, ...).
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.read_with(|s| s.recv_from(buf)).await
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    ///
    /// The OS's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().local_addr()
    }
}
