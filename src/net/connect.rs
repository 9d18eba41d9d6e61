//! Clients: a non-blocking connect that ends in a transport, or in a clear error.

use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::socket::{start_connect, start_connect_unix};
use super::stream::ByteStream;
use super::transport::{open, Conn, ConnId, Protocol, Setup};
use crate::{RegisterError, Registry};

/// Connects to `addr` without blocking (asyncio's `create_connection`); once connected,
/// `protocol` drives the connection like any other (`TCP_NODELAY` on).
///
/// The connect itself runs on the loop: `EINPROGRESS`, then writable, then `SO_ERROR`. If it
/// fails, or `timeout` passes first, `on_error` gets the reason (`ConnectionRefused`,
/// `HostUnreachable`, `NetworkUnreachable`, `TimedOut`, `AddrInUse` for a socket that
/// connected to itself) and the protocol is dropped unheard: its `made` and `lost` come only
/// for a connection that opened.
///
/// # Errors
///
/// What fails at once: creating the socket (`EMFILE`), a connect the OS refuses on the spot,
/// registering it. Then nothing is left behind and `on_error` is not called.
///
/// # Examples
///
/// ```
/// use selreactor::net::{connect_tcp, Protocol, Transport};
/// use selreactor::Selector;
/// use std::io;
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
///
/// struct Hello;
///
/// impl Protocol for Hello {
///     fn made(&mut self, tx: &mut Transport<'_, TcpStream>) -> io::Result<()> {
///         tx.write(b"hello")?;
///         tx.close(); // flushes first
///         Ok(())
///     }
///     fn data(&mut self, _: &mut Transport<'_, TcpStream>, _: &[u8]) -> io::Result<()> {
///         Ok(())
///     }
/// }
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut sel = Selector::new()?;
/// let timeout = Some(Duration::from_secs(5));
/// connect_tcp(&mut sel, listener.local_addr()?, timeout, Hello, |_, e| panic!("{e}"))?;
/// sel.run()?;
/// let (mut conn, _) = listener.accept()?;
/// let mut got = String::new();
/// io::Read::read_to_string(&mut conn, &mut got)?;
/// assert_eq!(got, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connect_tcp<P, E>(
    reg: &mut Registry,
    addr: SocketAddr,
    timeout: Option<Duration>,
    protocol: P,
    on_error: E,
) -> io::Result<ConnId<TcpStream>>
where
    P: Protocol<TcpStream>,
    E: FnOnce(&mut Registry, io::Error) + 'static,
{
    let stream = start_connect(addr)?;
    stream.set_nodelay(true)?;
    connecting(reg, stream, timeout, protocol, on_error)
}

/// [`connect_tcp`] for a Unix-domain socket at `path`.
///
/// # Errors
///
/// As for [`connect_tcp`]; `NotFound` when nothing is at `path`, `ConnectionRefused` when
/// nothing listens there.
pub fn connect_unix<P, E>(
    reg: &mut Registry,
    path: impl AsRef<Path>,
    timeout: Option<Duration>,
    protocol: P,
    on_error: E,
) -> io::Result<ConnId<UnixStream>>
where
    P: Protocol<UnixStream>,
    E: FnOnce(&mut Registry, io::Error) + 'static,
{
    let stream = start_connect_unix(path)?;
    connecting(reg, stream, timeout, protocol, on_error)
}

fn connecting<T, P, E>(
    reg: &mut Registry,
    stream: T,
    timeout: Option<Duration>,
    protocol: P,
    on_error: E,
) -> io::Result<ConnId<T>>
where
    T: ByteStream,
    P: Protocol<T>,
    E: FnOnce(&mut Registry, io::Error) + 'static,
{
    let setup = Setup {
        server: None,
        connecting: Some(Box::new(on_error)),
        idle_timeout: None,
        made_now: true,
        // `start_connect` made it non-blocking, to connect without waiting.
        nonblocking: true,
        _stream: PhantomData,
    };
    let id = open(reg, stream, Box::new(protocol), setup)?;
    if let Some(timeout) = timeout {
        Conn::connect_timeout(id, reg, timeout);
    }
    Ok(id)
}

/// Drives an open stream (a socket accepted or connected elsewhere, a pipe end) with
/// `protocol`: puts it in non-blocking mode and registers it; `made` follows from a deferred
/// call, so this may be called from inside another protocol.
///
/// # Errors
///
/// Setting non-blocking mode or registering can fail; the stream comes back with the error.
pub fn start<T, P>(
    reg: &mut Registry,
    stream: T,
    protocol: P,
) -> Result<ConnId<T>, RegisterError<T>>
where
    T: ByteStream,
    P: Protocol<T>,
{
    let setup = Setup {
        server: None,
        connecting: None,
        idle_timeout: None,
        made_now: false,
        nonblocking: false,
        _stream: PhantomData,
    };
    open(reg, stream, Box::new(protocol), setup)
}
