//! What a transport drives: a non-blocking byte stream, readable, writable or both.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use rustix::net::SendFlags;

/// A byte-stream descriptor a [`Transport`](super::Transport) can drive: a socket, or one end
/// of a pipe.
///
/// Methods take `&self`, as the selector lends its sources. A read-only end (a child's stdout)
/// sets [`CAN_WRITE`](ByteStream::CAN_WRITE) to `false` and keeps the default `write`; a
/// write-only end (a child's stdin) does the reverse. The transport never calls what a stream
/// says it cannot do.
///
/// Implemented for [`TcpStream`] and [`UnixStream`], whose writes pass `MSG_NOSIGNAL` (where the
/// OS has it), so writing to a peer that has gone never raises `SIGPIPE`. A pipe has no such
/// flag: [`PipeWriter`](super::PipeWriter) makes sure `SIGPIPE` is handled, so that such a
/// write fails with `BrokenPipe` (which ends the transport with that error).
pub trait ByteStream: AsFd + 'static {
    /// Whether the stream can be read: the transport reads it and calls
    /// [`Protocol::data`](super::Protocol::data).
    const CAN_READ: bool = true;
    /// Whether the stream can be written: [`Transport::write`](super::Transport::write) works.
    const CAN_WRITE: bool = true;

    /// Puts the descriptor in non-blocking mode (the transport does, before it registers it).
    ///
    /// # Errors
    ///
    /// The OS's.
    fn set_nonblocking(&self) -> io::Result<()>;

    /// Reads what is there, as [`Read::read`](io::Read::read) does; `Ok(0)` is end of stream.
    ///
    /// # Errors
    ///
    /// The OS's; `WouldBlock` when nothing is there. The default is `Unsupported`.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Writes what the descriptor takes now, as [`Write::write`](io::Write::write) does.
    ///
    /// # Errors
    ///
    /// The OS's; `WouldBlock` when it takes nothing. The default is `Unsupported`.
    fn write(&self, data: &[u8]) -> io::Result<usize> {
        let _ = data;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Ends the writing direction only (`shutdown(SHUT_WR)` on a socket), so the peer reads end
    /// of stream while it can still send.
    ///
    /// # Errors
    ///
    /// The OS's. The default is `Unsupported`: the transport then closes the stream instead,
    /// once its output is flushed (what ending a pipe's only direction means).
    fn shutdown_write(&self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// `send(2)` flags that keep a write to a vanished peer from raising `SIGPIPE`.
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
/// Apple's systems have no such flag; Rust's runtime ignores `SIGPIPE` in every binary it
/// starts.
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: SendFlags = SendFlags::empty();

/// Sends on any socket without the risk of `SIGPIPE`.
///
/// Through rustix rather than socket2 or std: on Linux it makes the system call itself, which
/// is a third of the user-space instructions of a round trip through libc, on every write.
#[inline]
pub(crate) fn send(socket: &impl AsFd, data: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, data, SEND_FLAGS)?)
}

/// Reads from any descriptor (see [`send`] for why through rustix).
#[inline]
pub(crate) fn read(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

impl ByteStream for TcpStream {
    fn set_nonblocking(&self) -> io::Result<()> {
        TcpStream::set_nonblocking(self, true)
    }

    #[inline]
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(self, buf)
    }

    #[inline]
    fn write(&self, data: &[u8]) -> io::Result<usize> {
        send(self, data)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl ByteStream for UnixStream {
    fn set_nonblocking(&self) -> io::Result<()> {
        UnixStream::set_nonblocking(self, true)
    }

    #[inline]
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(self, buf)
    }

    #[inline]
    fn write(&self, data: &[u8]) -> io::Result<usize> {
        send(self, data)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
