//! Memory per registration: heap bytes the reactor itself allocates for each registered source
//! (counted by a global allocator that tallies every allocation), and resident memory per idle
//! registered TCP connection (VmRSS from `/proc/self/status`, in a fresh child process per peer).
//!
//! Peers, measured the same way: selreactor; raw `polling` and mio, which keep nothing per
//! registration in user space, plus the slab of (source, boxed handler) a mio user keeps; and
//! calloop. Only the process's user-space memory is seen here: the kernel's own cost per epoll
//! watch and per socket is not in VmRSS.
//!
//! Run: `cargo bench -p selreactor-lab --bench memory` (a few seconds). It prints two tables.

use std::cell::Cell;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::rc::Rc;

use rustix::event::{eventfd, EventfdFlags};
use selreactor_lab::counting::Counting;
use slab::Slab;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Registrations per heap measurement: a power of two, so every slab's `Vec` is exactly full
/// and the figure has no growth slack in it.
const HEAP_REGISTRATIONS: usize = 8192;
/// Connections per resident-memory measurement; 2 descriptors each, under the 20,000 limit.
const RSS_CONNECTIONS: usize = 5000;

fn idle_eventfd() -> io::Result<OwnedFd> {
    Ok(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?)
}

/// Heap growth per registration while each of `fds` is registered. The descriptors exist
/// before the first snapshot, and their `Vec` is freed only after the last, so neither counts.
fn heap_per_registration(
    fds: Vec<OwnedFd>,
    mut register: impl FnMut(OwnedFd) -> io::Result<()>,
) -> (f64, f64) {
    let count = fds.len();
    let mut fds = fds.into_iter();
    let before = Counting::snapshot();
    for fd in fds.by_ref() {
        register(fd).expect("register");
    }
    let after = Counting::snapshot();
    drop(fds);
    (
        (after.bytes - before.bytes) as f64 / count as f64,
        (after.allocations - before.allocations) as f64 / count as f64,
    )
}

fn idle_eventfds(count: usize) -> io::Result<Vec<OwnedFd>> {
    (0..count).map(|_| idle_eventfd()).collect()
}

fn heap_table() -> io::Result<()> {
    let n = HEAP_REGISTRATIONS;
    println!("heap bytes per registration ({n} idle eventfds, READ, a closure that captures nothing unless noted)");
    println!("{:<44} {:>12} {:>12}", "peer", "bytes/reg", "allocs/reg");
    let row = |name: &str, (bytes, allocs): (f64, f64)| {
        println!("{name:<44} {bytes:>12.1} {allocs:>12.3}");
    };

    {
        let mut sel = selreactor::Selector::new()?;
        row(
            "selreactor",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                sel.register(fd, selreactor::Interest::READ, |_, _, _| Ok(()))?;
                Ok(())
            }),
        );
    }
    {
        let mut sel = selreactor::Selector::new()?;
        let hits = Rc::new(Cell::new(0u64));
        row(
            "selreactor, closure capturing an Rc",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                let hits = Rc::clone(&hits);
                sel.register(fd, selreactor::Interest::READ, move |_, _, _| {
                    hits.set(hits.get() + 1);
                    Ok(())
                })?;
                Ok(())
            }),
        );
    }
    {
        let poller = polling::Poller::new()?;
        let mut held = Vec::with_capacity(n);
        row(
            "polling (kernel only; caller keeps sources)",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                // SAFETY: `fd` is kept open in `held` until every source is deleted below.
                unsafe {
                    poller.add_with_mode(
                        fd.as_raw_fd(),
                        polling::Event::readable(held.len()),
                        polling::PollMode::Level,
                    )?;
                }
                held.push(fd);
                Ok(())
            }),
        );
        for fd in &held {
            poller.delete(fd)?;
        }
    }
    {
        let poll = mio::Poll::new()?;
        let mut held = Vec::with_capacity(n);
        row(
            "mio (kernel only; caller keeps sources)",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                poll.registry().register(
                    &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                    mio::Token(held.len()),
                    mio::Interest::READABLE,
                )?;
                held.push(fd);
                Ok(())
            }),
        );
    }
    {
        let poll = mio::Poll::new()?;
        let mut handlers: Slab<(OwnedFd, Box<dyn FnMut()>)> = Slab::new();
        row(
            "mio + user Slab<(OwnedFd, Box<dyn FnMut()>)>",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                let entry = handlers.vacant_entry();
                poll.registry().register(
                    &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                    mio::Token(entry.key()),
                    mio::Interest::READABLE,
                )?;
                entry.insert((fd, Box::new(|| {})));
                Ok(())
            }),
        );
    }
    {
        let event_loop: calloop::EventLoop<'static, ()> =
            calloop::EventLoop::try_new().map_err(io::Error::other)?;
        let handle = event_loop.handle();
        row(
            "calloop (Generic, Mode::Level)",
            heap_per_registration(idle_eventfds(n)?, |fd| {
                let source = calloop::generic::Generic::new(
                    fd,
                    calloop::Interest::READ,
                    calloop::Mode::Level,
                );
                handle
                    .insert_source(source, |_, _, _| Ok(calloop::PostAction::Continue))
                    .map_err(|e| io::Error::other(e.error))?;
                Ok(())
            }),
        );
    }
    println!(
        "(for reference: size_of OwnedFd = {}, Option<Box<dyn Any>> = {}, Rc = {})",
        size_of::<OwnedFd>(),
        size_of::<Option<Box<dyn std::any::Any>>>(),
        size_of::<Rc<()>>()
    );
    Ok(())
}

/// Resident bytes of this process (`VmRSS`, which the kernel keeps in kB).
fn resident_bytes() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// `count` loopback connections: (client ends, accepted server ends, non-blocking).
fn connections(count: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let clients = std::thread::spawn(move || -> io::Result<Vec<TcpStream>> {
        (0..count).map(|_| TcpStream::connect(address)).collect()
    });
    let mut accepted = Vec::with_capacity(count);
    for _ in 0..count {
        let (stream, _) = listener.accept()?;
        stream.set_nonblocking(true)?;
        accepted.push(stream);
    }
    let clients = clients.join().expect("client thread")?;
    Ok((clients, accepted))
}

/// Child process: registers `count` idle connections with `peer`, prints the resident bytes
/// the connections added and the bytes the registrations added.
fn rss_child(peer: &str, count: usize) -> io::Result<()> {
    let start = resident_bytes()?;
    let (clients, accepted) = connections(count)?;
    let connected = resident_bytes()?;
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    match peer {
        "none" => keep.push(Box::new(accepted)),
        "selreactor" => {
            let mut sel = selreactor::Selector::new()?;
            for stream in accepted {
                sel.register(stream, selreactor::Interest::READ, |_, _, _| Ok(()))?;
            }
            keep.push(Box::new(sel));
        }
        "polling" => {
            let poller = polling::Poller::new()?;
            for (key, stream) in accepted.iter().enumerate() {
                // SAFETY: the streams are kept (and the poller is dropped) only at process exit.
                unsafe {
                    poller.add_with_mode(
                        stream.as_raw_fd(),
                        polling::Event::readable(key),
                        polling::PollMode::Level,
                    )?;
                }
            }
            keep.push(Box::new(poller));
            keep.push(Box::new(accepted));
        }
        "mio+slab" => {
            let poll = mio::Poll::new()?;
            let mut handlers: Slab<(TcpStream, Box<dyn FnMut()>)> = Slab::new();
            for stream in accepted {
                let entry = handlers.vacant_entry();
                poll.registry().register(
                    &mut mio::unix::SourceFd(&stream.as_fd().as_raw_fd()),
                    mio::Token(entry.key()),
                    mio::Interest::READABLE,
                )?;
                entry.insert((stream, Box::new(|| {})));
            }
            keep.push(Box::new(poll));
            keep.push(Box::new(handlers));
        }
        "calloop" => {
            let event_loop: calloop::EventLoop<'static, ()> =
                calloop::EventLoop::try_new().map_err(io::Error::other)?;
            for stream in accepted {
                let source = calloop::generic::Generic::new(
                    stream,
                    calloop::Interest::READ,
                    calloop::Mode::Level,
                );
                event_loop
                    .handle()
                    .insert_source(source, |_, _, _| Ok(calloop::PostAction::Continue))
                    .map_err(|e| io::Error::other(e.error))?;
            }
            keep.push(Box::new(event_loop));
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                other.to_owned(),
            ))
        }
    }
    let registered = resident_bytes()?;
    println!(
        "{} {} {}",
        count,
        connected as i64 - start as i64,
        registered as i64 - connected as i64
    );
    drop(keep);
    drop(clients);
    Ok(())
}

fn rss_table() -> io::Result<()> {
    let exe = std::env::current_exe()?;
    println!();
    println!("resident bytes per idle registered TCP connection ({RSS_CONNECTIONS} loopback connections, fresh process per peer)");
    println!(
        "{:<12} {:>22} {:>22}",
        "peer", "connect+accept B/conn", "registration B/conn"
    );
    for peer in ["none", "selreactor", "polling", "mio+slab", "calloop"] {
        let output = Command::new(&exe)
            .args(["--rss-child", peer, &RSS_CONNECTIONS.to_string()])
            .output()?;
        if !output.status.success() {
            eprintln!("{peer}: {}", String::from_utf8_lossy(&output.stderr));
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<f64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [count, connected, registered] = fields[..] {
            println!(
                "{peer:<12} {:>22.1} {:>22.1}",
                connected / count,
                registered / count
            );
        }
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--rss-child") {
        let peer = &args[at + 1];
        let count = args[at + 2].parse().map_err(io::Error::other)?;
        return rss_child(peer, count);
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return Ok(()); // `cargo test --benches` and friends: nothing to check quickly here
    }
    Counting::start();
    heap_table()?;
    rss_table()
}
