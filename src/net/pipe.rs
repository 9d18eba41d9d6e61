//! Pipe ends as non-blocking sources: a child's stdin, stdout and stderr, or any pipe.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Once;

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

use super::stream::ByteStream;

/// The read end of a pipe, non-blocking: a child's stdout or stderr, or any descriptor one
/// reads a byte stream from (a FIFO, a terminal).
///
/// `&PipeReader` is [`Read`], and a `PipeReader` is a [`ByteStream`], so
/// [`start`](super::start) drives it with a [`Protocol`](super::Protocol): `data` per chunk,
/// `eof` when every writer has closed its end. A terminal (the controlling side of a
/// pseudo-terminal) reports that its other side has closed with `EIO`; a `PipeReader` reads
/// that as the end of the stream it is.
///
/// # `O_NONBLOCK` belongs to the open file, not the descriptor
///
/// Wrapping a descriptor makes the open file description non-blocking, which every
/// descriptor duplicated from it shares (another process's copy included). Dropping the
/// wrapper restores the blocking mode if it was the wrapper that changed it, so wrapping, say,
/// a shell's terminal for a while leaves the shell as it was. A child's pipe ends, made by
/// [`Command::spawn`](std::process::Command::spawn), are shared with no one.
///
/// # Examples
///
/// ```
/// use selreactor::net::PipeReader;
/// use std::io::Read;
/// use std::process::{Command, Stdio};
///
/// let mut child = Command::new("echo").arg("hi").stdout(Stdio::piped()).spawn()?;
/// let stdout = PipeReader::new(child.stdout.take().unwrap())?;
/// child.wait()?;
/// let mut got = String::new();
/// (&stdout).read_to_string(&mut got)?; // non-blocking, but the child has written and exited
/// assert_eq!(got, "hi\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PipeReader {
    end: NonBlocking,
}

/// The write end of a pipe, non-blocking: a child's stdin, or any descriptor one writes a byte
/// stream to.
///
/// `&PipeWriter` is [`Write`], and a `PipeWriter` is a [`ByteStream`] that the transport only
/// writes to (its [`write_eof`](super::Transport::write_eof) closes it, the only way to end a
/// pipe), and whose reader going away ends it with `BrokenPipe`, even while idle.
///
/// # `SIGPIPE`
///
/// Writing to a pipe whose reader has gone raises `SIGPIPE`, whose default action kills the
/// process. Binaries Rust starts ignore it already; a program that restored the default (or
/// a Rust library inside a C program) would die. So making the first `PipeWriter` installs,
/// once per process, a `SIGPIPE` handler that does nothing (through `signal-hook`, so other
/// handlers of it keep running): a write then fails with `BrokenPipe` instead. A handler,
/// unlike an ignored disposition, does not pass on to the programs a child `exec`s.
///
/// The wrapper shares [`PipeReader`]'s policy on `O_NONBLOCK`.
pub struct PipeWriter {
    end: NonBlocking,
}

/// A descriptor in non-blocking mode, restored to blocking on drop if this made it
/// non-blocking.
struct NonBlocking {
    fd: OwnedFd,
    restore: bool,
}

impl NonBlocking {
    fn new(fd: OwnedFd) -> io::Result<NonBlocking> {
        let flags = fcntl_getfl(&fd)?;
        let restore = !flags.contains(OFlags::NONBLOCK);
        if restore {
            fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        }
        Ok(NonBlocking { fd, restore })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if self.restore {
            // Best effort: the descriptor closes right after, whatever happens here.
            if let Ok(flags) = fcntl_getfl(&self.fd) {
                let _ = fcntl_setfl(&self.fd, flags - OFlags::NONBLOCK);
            }
        }
    }
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => {}
            outcome => return outcome.map_err(io::Error::from),
        }
    }
}

impl PipeReader {
    /// Wraps a pipe's read end (`ChildStdout`, `ChildStderr`, an `OwnedFd`), making it
    /// non-blocking.
    ///
    /// # Errors
    ///
    /// The OS's error reading or setting the descriptor's flags; the descriptor is closed.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<PipeReader> {
        Ok(PipeReader {
            end: NonBlocking::new(fd.into())?,
        })
    }
}

impl PipeWriter {
    /// Wraps a pipe's write end (`ChildStdin`, an `OwnedFd`), making it non-blocking; see the
    /// type's docs for `SIGPIPE`.
    ///
    /// # Errors
    ///
    /// The OS's error reading or setting the descriptor's flags, or installing the `SIGPIPE`
    /// handler; the descriptor is closed.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<PipeWriter> {
        let fd = fd.into();
        survive_sigpipe()?;
        Ok(PipeWriter {
            end: NonBlocking::new(fd)?,
        })
    }
}

/// A new pipe, both ends non-blocking and close-on-exec.
///
/// # Errors
///
/// The OS's (`EMFILE`).
pub fn pipe() -> io::Result<(PipeReader, PipeWriter)> {
    let (read, write) = close_on_exec_pipe()?;
    Ok((PipeReader::new(read)?, PipeWriter::new(write)?))
}

#[cfg(not(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "watchos"
)))]
fn close_on_exec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Apple systems have no `pipe2`: the flag is set just after, as std does there.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "watchos"
))]
fn close_on_exec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::io::{fcntl_setfd, FdFlags};
    let (read, write) = rustix::pipe::pipe()?;
    fcntl_setfd(&read, FdFlags::CLOEXEC)?;
    fcntl_setfd(&write, FdFlags::CLOEXEC)?;
    Ok((read, write))
}

/// Installs the do-nothing `SIGPIPE` handler, once per process.
fn survive_sigpipe() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut outcome = Ok(());
    INSTALL.call_once(|| {
        // An action that only sets a flag nobody reads: its presence is the point. It stays
        // installed for the life of the process.
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        outcome = signal_hook::flag::register(signal_hook::consts::SIGPIPE, flag).map(drop);
    });
    outcome
}

impl Read for &PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match retry(|| rustix::io::read(&self.end.fd, &mut *buf)) {
            // A terminal whose other side has closed says so with `EIO`: its end of stream.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
            outcome => outcome,
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }
}

impl Write for &PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        retry(|| rustix::io::write(&self.end.fd, data))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Write::write(&mut &*self, data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ByteStream for PipeReader {
    const CAN_WRITE: bool = false;

    fn set_nonblocking(&self) -> io::Result<()> {
        Ok(()) // made so by `new`
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }
}

impl ByteStream for PipeWriter {
    const CAN_READ: bool = false;

    fn set_nonblocking(&self) -> io::Result<()> {
        Ok(()) // made so by `new`
    }

    fn write(&self, data: &[u8]) -> io::Result<usize> {
        Write::write(&mut &*self, data)
    }
}

macro_rules! fd_traits {
    ($($pipe:ident),*) => {$(
        impl AsFd for $pipe {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.end.fd.as_fd()
            }
        }

        impl AsRawFd for $pipe {
            fn as_raw_fd(&self) -> RawFd {
                self.end.fd.as_raw_fd()
            }
        }

        impl fmt::Debug for $pipe {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($pipe)).field(&self.end.fd).finish()
            }
        }
    )*};
}

fd_traits!(PipeReader, PipeWriter);
