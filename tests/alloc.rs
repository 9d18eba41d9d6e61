//! Dispatch is allocation-free: a counting `#[global_allocator]`, in this binary only, counts
//! the allocations made on the measuring thread while a measurement is open, and the steady
//! state of the loop (waiting, dispatching ready sources, a callback changing its own
//! interest, pausing and resuming, firing timers, running deferred calls) makes none. What
//! does allocate is measured too: registering (one box per registration) and scheduling a
//! closure that captures something (one box per closure).
//!
//! Counts are per thread (a thread-local flag and thread-local counters), so the test threads
//! the harness runs in parallel, and anything else it does on other threads, cannot leak into
//! a measurement. Nothing inside a measured window prints or formats.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::{Interest, Key, Selector};
use util::*;

/// What one thread allocated while it was measuring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    allocations: usize,
    deallocations: usize,
    reallocations: usize,
    /// Bytes allocated minus bytes freed (a realloc counts its change in size).
    net_bytes: isize,
}

impl Counts {
    const ZERO: Counts = Counts {
        allocations: 0,
        deallocations: 0,
        reallocations: 0,
        net_bytes: 0,
    };
}

thread_local! {
    // Const-initialised and without destructors: reading them never allocates, so the
    // allocator itself can use them.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static COUNTS: Cell<Counts> = const { Cell::new(Counts::ZERO) };
}

/// Applies `change` to this thread's counts if it is measuring.
fn record(change: impl FnOnce(&mut Counts)) {
    // `try_with`: a thread's locals may already be gone while it exits, and it still frees.
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if measuring {
        let _ = COUNTS.try_with(|counts| {
            let mut c = counts.get();
            change(&mut c);
            counts.set(c);
        });
    }
}

/// `System`, counting.
struct CountingAllocator;

// SAFETY: each method hands its arguments to `System` unchanged and returns what `System`
// returns, so `System`'s guarantees hold; the counters only observe.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout meets `alloc`'s contract; passed through as is.
        let ptr = unsafe { System.alloc(layout) };
        record(|c| {
            c.allocations += 1;
            c.net_bytes += layout.size() as isize;
        });
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        record(|c| {
            c.allocations += 1;
            c.net_bytes += layout.size() as isize;
        });
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        record(|c| {
            c.deallocations += 1;
            c.net_bytes -= layout.size() as isize;
        });
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; passed through as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        record(|c| {
            c.reallocations += 1;
            c.net_bytes += new_size as isize - layout.size() as isize;
        });
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f`, counting what this thread allocates meanwhile.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    COUNTS.with(|c| c.set(Counts::ZERO));
    MEASURING.with(|m| m.set(true));
    let result = f();
    MEASURING.with(|m| m.set(false));
    (result, COUNTS.with(Cell::get))
}

const SOURCES: usize = 64;
const WARM_UP: usize = 3;
const ITERATIONS: usize = 1_000;

/// Runs `iterations` zero-timeout iterations; returns the callbacks run in all (no early
/// return, no formatting: it runs inside measured windows).
fn spin(sel: &mut Selector, iterations: usize, timeout: Option<Duration>) -> io::Result<usize> {
    let mut ran = 0;
    for _ in 0..iterations {
        ran += sel.run_once(timeout)?;
    }
    Ok(ran)
}

#[test]
fn dispatching_64_ready_sources_a_thousand_times_allocates_nothing() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let dispatched = Rc::new(Cell::new(0usize));
    let wrong_readiness = Rc::new(Cell::new(0usize));
    let mut peers = Vec::new();
    for i in 0..SOURCES {
        let dispatched = Rc::clone(&dispatched);
        let wrong = Rc::clone(&wrong_readiness);
        if i % 2 == 0 {
            // Readable until read, and never read.
            sel.register(ready_eventfd()?, Interest::READ, move |_, _, event| {
                dispatched.set(dispatched.get() + 1);
                if !event.is_readable() || event.is_writable() {
                    wrong.set(wrong.get() + 1);
                }
                Ok(())
            })?;
        } else {
            // One unread byte: readable, and writable too.
            let (ours, peer) = readable_pair()?;
            peers.push(peer);
            sel.register(ours, Interest::BOTH, move |_, _, event| {
                dispatched.set(dispatched.get() + 1);
                if !event.is_readable() || !event.is_writable() {
                    wrong.set(wrong.get() + 1);
                }
                Ok(())
            })?;
        }
    }
    assert_eq!(
        spin(&mut sel, WARM_UP, Some(Duration::ZERO))?,
        WARM_UP * SOURCES
    );
    dispatched.set(0);

    let (ran, counts) = measure(|| spin(&mut sel, ITERATIONS, Some(Duration::ZERO)));
    assert_eq!(ran?, ITERATIONS * SOURCES, "every source, every iteration");
    assert_eq!(dispatched.get(), ITERATIONS * SOURCES);
    assert_eq!(counts, Counts::ZERO, "dispatch allocated");

    // Waits that may block (they find everything ready) take the same path, plus the clock.
    let (ran, counts) = measure(|| {
        Ok::<_, io::Error>(
            spin(&mut sel, ITERATIONS / 2, None)?
                + spin(&mut sel, ITERATIONS / 2, Some(Duration::from_secs(10)))?,
        )
    });
    assert_eq!(ran?, ITERATIONS * SOURCES);
    assert_eq!(
        counts,
        Counts::ZERO,
        "dispatch after a blocking wait allocated"
    );
    assert_eq!(wrong_readiness.get(), 0, "readiness as registered");
    drop(peers);
    Ok(())
}

/// Level-triggered, a source stays ready, so one callback can flip its own interest every
/// time it runs; another pauses itself (taken out of epoll when it returns) and is resumed
/// (put back into epoll at once) by a third. Every one of these `epoll_ctl` paths runs without
/// allocating.
#[test]
fn changing_interest_from_callbacks_allocates_nothing() -> io::Result<()> {
    let mut sel = Selector::new()?;

    let flips = Rc::new(Cell::new(0usize));
    let saw_writable = Rc::new(Cell::new(0usize));
    let (flipper, _flipper_peer) = readable_pair()?;
    let (f, w) = (Rc::clone(&flips), Rc::clone(&saw_writable));
    sel.register(flipper, Interest::READ, move |reg, _, event| {
        f.set(f.get() + 1);
        if event.is_writable() {
            w.set(w.get() + 1);
        }
        let next = if reg.interest(event.key()) == Some(Interest::READ) {
            Interest::BOTH
        } else {
            Interest::READ
        };
        reg.modify(event.key(), next)
    })?;

    let pauser_runs = Rc::new(Cell::new(0usize));
    let runs = Rc::clone(&pauser_runs);
    let pauser: Key<OwnedFd> =
        sel.register(ready_eventfd()?, Interest::READ, move |reg, _, event| {
            runs.set(runs.get() + 1);
            reg.modify(event.key(), Interest::NONE)
        })?;

    let resumer_runs = Rc::new(Cell::new(0usize));
    let runs = Rc::clone(&resumer_runs);
    sel.register(ready_eventfd()?, Interest::READ, move |reg, _, _| {
        runs.set(runs.get() + 1);
        // Every other iteration, so the pauser sits out the ones in between.
        if runs.get() % 2 == 0 {
            reg.modify(pauser, Interest::READ)?;
        }
        Ok(())
    })?;

    spin(&mut sel, WARM_UP + 1, Some(Duration::ZERO))?;
    let (flips_before, writable_before, pauser_before) =
        (flips.get(), saw_writable.get(), pauser_runs.get());

    let (ran, counts) = measure(|| spin(&mut sel, ITERATIONS, Some(Duration::ZERO)));
    let ran = ran?;
    assert_eq!(counts, Counts::ZERO, "changing interest allocated");

    let flipped = flips.get() - flips_before;
    let writable = saw_writable.get() - writable_before;
    let paused_runs = pauser_runs.get() - pauser_before;
    assert_eq!(flipped, ITERATIONS, "the flipper ran every iteration");
    // READ and BOTH alternate, and each takes effect for the next wait.
    assert_eq!(
        writable,
        ITERATIONS / 2,
        "the flipper saw WRITE half the time"
    );
    assert_eq!(
        paused_runs,
        ITERATIONS / 2,
        "the pauser ran every other iteration"
    );
    assert_eq!(ran, flipped + paused_runs + ITERATIONS);
    Ok(())
}

/// Due one-shot timers and deferred calls run without allocating (their boxes are freed);
/// a repeating timer's re-arming allocates nothing either.
#[test]
fn firing_timers_and_running_calls_allocates_nothing() -> io::Result<()> {
    const N: usize = 200;
    let mut sel = Selector::new()?;
    let ran = Rc::new(Cell::new(0usize));
    let past = Instant::now() - Duration::from_secs(3600);
    // Warm-up: the timer slab, its heap and the call queue reach their size.
    for _ in 0..2 {
        for i in 0..N {
            let (t, c) = (Rc::clone(&ran), Rc::clone(&ran));
            sel.call_at(past + Duration::from_micros(i as u64), move |_| {
                t.set(t.get() + 1)
            });
            sel.call_soon(move |_| c.set(c.get() + 1));
        }
        assert_eq!(sel.run_once(Some(Duration::ZERO))?, 2 * N);
    }
    for i in 0..N {
        let (t, c) = (Rc::clone(&ran), Rc::clone(&ran));
        sel.call_at(past + Duration::from_micros(i as u64), move |_| {
            t.set(t.get() + 1)
        });
        sel.call_soon(move |_| c.set(c.get() + 1));
    }
    ran.set(0);
    let (count, counts) = measure(|| sel.run_once(Some(Duration::ZERO)));
    assert_eq!(count?, 2 * N);
    assert_eq!(ran.get(), 2 * N);
    assert_eq!(counts.allocations + counts.reallocations, 0, "{counts:?}");
    assert_eq!(counts.deallocations, 2 * N, "each closure's box freed");
    assert_eq!(sel.timer_count(), 0);

    // A 1 ms repeating timer, with the loop sleeping 2 ms before each iteration: it is due
    // every time and fires exactly once (missed ticks are skipped), then goes back in the heap.
    let ticks = Rc::new(Cell::new(0usize));
    let t = Rc::clone(&ticks);
    let every = sel.call_every(Duration::from_millis(1), move |_, _| t.set(t.get() + 1));
    let tick = |sel: &mut Selector| -> io::Result<usize> {
        std::thread::sleep(Duration::from_millis(2));
        sel.run_once(Some(Duration::ZERO))
    };
    for _ in 0..WARM_UP {
        assert_eq!(tick(&mut sel)?, 1);
    }
    let (fired, counts) = measure(|| {
        let mut fired = 0;
        for _ in 0..20 {
            fired += tick(&mut sel)?;
        }
        Ok::<_, io::Error>(fired)
    });
    assert_eq!(fired?, 20);
    assert_eq!(ticks.get(), WARM_UP + 20);
    assert_eq!(
        counts,
        Counts::ZERO,
        "re-arming a repeating timer allocated"
    );
    sel.cancel(every)?;
    Ok(())
}

/// What allocates, measured: one box per registration (even for a zero-sized closure: it
/// holds the source); one per captured closure given to `call_soon` or a timer; none for a
/// zero-sized closure once the queues have room. Removing and cancelling only free.
#[test]
fn registering_and_scheduling_allocate_one_box_each() -> io::Result<()> {
    let (sel, counts) = measure(Selector::new);
    let mut sel = sel?;
    eprintln!("Selector::new: {counts:?}");

    // The first registration also gives the slab its first buffer.
    let source = ready_eventfd()?;
    let (key, first) = measure(|| sel.register(source, Interest::READ, noop()));
    sel.remove(key?)?;
    eprintln!("first register: {first:?}");
    assert!(first.allocations >= 1);

    let source = ready_eventfd()?;
    let (key, counts) = measure(|| sel.register(source, Interest::READ, noop()));
    let key = key?;
    assert_eq!(counts.allocations, 1, "register: {counts:?}");
    assert_eq!((counts.reallocations, counts.deallocations), (0, 0));
    let box_bytes = counts.net_bytes;
    assert!(box_bytes > 0);
    eprintln!("register (slab has room, zero-sized closure): {counts:?}");

    let ((), counts) = measure(|| sel.remove(key).expect("live key"));
    assert_eq!(counts.allocations + counts.reallocations, 0, "{counts:?}");
    assert_eq!(counts.deallocations, 1);
    assert_eq!(counts.net_bytes, -box_bytes);

    // A socket with a 64-byte captured state: the box grows by the capture, still one box.
    let (ours, _peer) = pair()?;
    let state = [7u8; 64];
    let (key, counts) = measure(|| {
        sel.register(ours, Interest::READ, move |_, _: &UnixStream, _| {
            std::hint::black_box(&state);
            Ok(())
        })
    });
    let key = key?;
    assert_eq!(counts.allocations, 1, "{counts:?}");
    eprintln!("register (socket, 64-byte capture): {counts:?}");
    sel.remove(key)?;

    // Deferred calls and timers: the first use sizes the queue, slab and heap.
    sel.call_soon(|_| {});
    let timer = sel.call_later(Duration::from_secs(3600), |_| {});
    sel.cancel(timer)?;
    sel.run_once(Some(Duration::ZERO))?;

    let ((), counts) = measure(|| sel.call_soon(|_| {}));
    assert_eq!(
        counts,
        Counts::ZERO,
        "call_soon, zero-sized closure: {counts:?}"
    );
    let ran = Rc::new(Cell::new(0u32));
    let r = Rc::clone(&ran);
    let ((), counts) = measure(|| sel.call_soon(move |_| r.set(r.get() + 1)));
    assert_eq!(
        counts.allocations, 1,
        "call_soon, capturing closure: {counts:?}"
    );
    assert_eq!(counts.reallocations + counts.deallocations, 0);
    eprintln!("call_soon (capturing an Rc): {counts:?}");

    let (timer, counts) = measure(|| sel.call_later(Duration::from_secs(3600), |_| {}));
    assert_eq!(
        counts,
        Counts::ZERO,
        "call_later, zero-sized closure: {counts:?}"
    );
    sel.cancel(timer)?;
    let r = Rc::clone(&ran);
    let (timer, counts) =
        measure(|| sel.call_later(Duration::from_secs(3600), move |_| r.set(r.get() + 1)));
    assert_eq!(
        counts.allocations, 1,
        "call_later, capturing closure: {counts:?}"
    );
    assert_eq!(counts.reallocations + counts.deallocations, 0);
    eprintln!("call_later (capturing an Rc): {counts:?}");
    let (cancelled, counts) = measure(|| sel.cancel(timer));
    cancelled?;
    assert_eq!(counts.allocations + counts.reallocations, 0, "{counts:?}");
    assert_eq!(counts.deallocations, 1, "cancel frees the closure's box");

    assert_eq!(
        sel.run_once(Some(Duration::ZERO))?,
        2,
        "the two queued calls"
    );
    assert_eq!(ran.get(), 1);
    Ok(())
}

/// The control: an allocation made inside dispatch, on the loop's thread, is counted, once
/// per call. Without it, zero counts could mean the counter sees nothing.
#[test]
fn an_allocation_inside_a_callback_is_counted() -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.register(ready_eventfd()?, Interest::READ, |_, _, _| {
        std::hint::black_box(Box::new(1u64));
        Ok(())
    })?;
    spin(&mut sel, WARM_UP, Some(Duration::ZERO))?;
    let (ran, counts) = measure(|| spin(&mut sel, ITERATIONS, Some(Duration::ZERO)));
    assert_eq!(ran?, ITERATIONS);
    assert_eq!(counts.allocations, ITERATIONS, "{counts:?}");
    assert_eq!(counts.deallocations, ITERATIONS);
    assert_eq!(counts.net_bytes, 0);
    Ok(())
}

/// Echoes through the transport layer.
struct TransportEcho;

impl selreactor::net::Protocol<UnixStream> for TransportEcho {
    fn data(
        &mut self,
        tx: &mut selreactor::net::Transport<'_, UnixStream>,
        data: &[u8],
    ) -> io::Result<()> {
        tx.write(data)
    }
}

/// A transport's steady state (read into the loop's shared buffer, call the protocol, write
/// straight through) allocates nothing per event, over 16 connections.
#[test]
fn transport_echo_round_trips_allocate_nothing() -> io::Result<()> {
    const CONNECTIONS: usize = 16;
    let mut sel = Selector::new()?;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (ours, theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        selreactor::net::start(&mut sel, ours, TransportEcho).map_err(io::Error::from)?;
        clients.push(theirs);
    }
    let mut buf = [0u8; 64];
    let mut round = |sel: &mut Selector| -> io::Result<()> {
        for client in &clients {
            io::Write::write_all(&mut &*client, &[7; 64])?;
        }
        for client in &clients {
            let mut got = 0;
            while got < 64 {
                match io::Read::read(&mut &*client, &mut buf[got..]) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        sel.run_once(Some(Duration::from_secs(5)))?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    };
    for _ in 0..WARM_UP {
        round(&mut sel)?;
    }
    let (result, counts) = measure(|| (0..ITERATIONS / 10).try_for_each(|_| round(&mut sel)));
    result?;
    assert_eq!(counts, Counts::ZERO, "a transport round trip allocated");
    Ok(())
}

/// Echoes each datagram to its sender.
struct DatagramEcho;

impl selreactor::net::DatagramProtocol for DatagramEcho {
    type Socket = std::net::UdpSocket;

    fn datagram(
        &mut self,
        ep: &mut selreactor::net::DatagramContext<'_, Self>,
        data: &[u8],
        from: std::net::SocketAddr,
    ) -> io::Result<()> {
        let _ = ep.send_to(data, &from)?;
        Ok(())
    }
}

#[test]
fn a_udp_echo_round_trip_allocates_nothing_and_an_idle_endpoint_little() -> io::Result<()> {
    use selreactor::net::DatagramEndpoint;
    use std::net::UdpSocket;

    let mut sel = Selector::new()?;
    let any = "127.0.0.1:0".parse().unwrap();
    let endpoint = DatagramEndpoint::bind_udp(&mut sel, any, DatagramEcho)?;
    let addr = endpoint.local_addr(&sel)?;
    // A second endpoint, the loop's tables made: what one more idle endpoint holds.
    let (second, made) = measure(|| DatagramEndpoint::bind_udp(&mut sel, any, DatagramEcho));
    let second = second?;
    println!("an idle endpoint's heap: {made:?}");
    assert!(made.net_bytes <= 256, "{made:?}");
    second.abort(&mut sel)?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 64];
    let mut round_trip = |sel: &mut Selector| -> io::Result<()> {
        client.send_to(b"ping", addr)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while sel.run_once(Some(Duration::from_millis(100)))? == 0 {
            assert!(Instant::now() < deadline, "the datagram never arrived");
        }
        let n = client.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"ping");
        Ok(())
    };
    for _ in 0..WARM_UP {
        round_trip(&mut sel)?; // the first one delivers `made` and makes the shared buffer
    }
    let (outcome, counts) = measure(|| -> io::Result<()> {
        for _ in 0..ITERATIONS {
            round_trip(&mut sel)?;
        }
        Ok(())
    });
    outcome?;
    assert_eq!(counts, Counts::ZERO);
    Ok(())
}
