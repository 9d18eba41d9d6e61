//! `examples/echo.rs`'s server on a selector thread of its own, for the echo test binaries.
//!
//! Include it next to the example: `#[path = "../examples/echo.rs"] mod echo;` and
//! `#[path = "util/echo_server.rs"] mod echo_server;`.

use std::cell::RefCell;
use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use selreactor::{Handle, Registry, Selector};
use socket2::SockRef;

use crate::echo::{self, Config, Stats, Totals};

/// How long a test waits for the server to start, answer, or reach a state.
pub const SETTLE: Duration = Duration::from_secs(20);

thread_local! {
    /// The counters of the server running on this thread (set on server threads only).
    static STATS: RefCell<Option<Rc<Stats>>> = const { RefCell::new(None) };
}

pub struct EchoServer {
    pub addr: SocketAddr,
    pub handle: Handle,
    /// The server selector's epoll descriptor, for reading its `fdinfo`.
    pub epoll: RawFd,
    thread: Option<JoinHandle<io::Result<Totals>>>,
}

impl EchoServer {
    /// Starts a quiet server on `127.0.0.1:0` with `config`; `socket_buffers` sets the
    /// listener's SO_RCVBUF and SO_SNDBUF, which accepted connections inherit (small ones force
    /// partial writes).
    pub fn start(config: Config, socket_buffers: Option<usize>) -> io::Result<EchoServer> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn(move || -> io::Result<Totals> {
            let setup = || -> io::Result<_> {
                let listener = echo::bind("127.0.0.1:0".parse().expect("an address"))?;
                if let Some(size) = socket_buffers {
                    let socket = SockRef::from(&listener);
                    socket.set_recv_buffer_size(size)?;
                    socket.set_send_buffer_size(size)?;
                }
                let addr = listener.local_addr()?;
                let mut sel = Selector::new()?;
                let config = Config {
                    quiet: true,
                    ..config
                };
                let stats = echo::serve(&mut sel, listener, config)?;
                Ok((sel, stats, addr))
            };
            let (mut sel, stats, addr) = match setup() {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(Totals::default());
                }
            };
            STATS.with(|s| *s.borrow_mut() = Some(Rc::clone(&stats)));
            let _ = ready_tx.send(Ok((addr, sel.handle(), sel.as_raw_fd())));
            sel.run()?;
            Ok(stats.totals())
        });
        let (addr, handle, epoll) = ready_rx
            .recv_timeout(SETTLE)
            .map_err(|_| io::Error::other("the server thread did not start"))??;
        Ok(EchoServer {
            addr,
            handle,
            epoll,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the server's thread, between callbacks, with its registry and counters.
    pub fn query<R, F>(&self, f: F) -> io::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Registry, &Stats) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.handle.call_soon(move |reg| {
            let stats = STATS.with(|s| s.borrow().clone());
            let _ = tx.send(stats.map(|stats| f(reg, &stats)));
        })?;
        rx.recv_timeout(SETTLE)
            .ok()
            .flatten()
            .ok_or_else(|| io::Error::other("the server did not answer"))
    }

    /// The server's counters, read on its own thread.
    pub fn totals(&self) -> io::Result<Totals> {
        self.query(|_, stats| stats.totals())
    }

    /// Polls the counters until `done` holds; fails after `SETTLE`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Totals) -> bool) -> io::Result<Totals> {
        poll_until(what, || self.totals(), done)
    }

    /// Stops the loop and returns the final counters.
    pub fn stop(mut self) -> io::Result<Totals> {
        self.handle.stop()?;
        let thread = self.thread.take().expect("stopped once");
        thread
            .join()
            .map_err(|_| io::Error::other("the server thread panicked"))?
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // A test that failed early still stops its server rather than leaving it running.
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.stop();
            let _ = thread.join();
        }
    }
}

/// Samples until `done` holds; fails after `SETTLE`, showing the last sample.
pub fn poll_until<S: Debug>(
    what: &str,
    mut sample: impl FnMut() -> io::Result<S>,
    done: impl Fn(&S) -> bool,
) -> io::Result<S> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let sampled = sample()?;
        if done(&sampled) {
            return Ok(sampled);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "timed out waiting for {what}; server at {sampled:?}"
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}
