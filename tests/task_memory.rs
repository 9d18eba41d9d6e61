//! 100,000 pending tasks and 200 idle connections: the memory each costs, stated and bounded,
//! and all of it returned when they finish or the selector is dropped. A counting
//! `#[global_allocator]` in this binary only, counting the test's own thread: the harness's
//! threads (its "running for over 60 seconds" notice on a stalled machine, say) are not counted.

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
mod util;

use std::cell::Cell;
use std::future::pending;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use counting_alloc::{count_this_thread, live};
use selreactor::Selector;
use util::*;

/// The bytes a pending task costs, as documented in the crate's `task` module.
const BYTES_PER_PENDING_TASK: isize = 160;

#[test]
fn a_hundred_thousand_pending_tasks_cost_a_bounded_amount_and_all_of_it_comes_back(
) -> io::Result<()> {
    count_this_thread(true);
    let tasks = scaled(100_000, 10_000);
    // Warm up what the first selector and task on a thread allocate once (thread-locals).
    let mut warm = Selector::new()?;
    let t = warm.spawn(async {});
    warm.block_on(t)?;
    drop(warm);
    let empty = live();

    let mut sel = Selector::new()?;
    sel.block_on(async {})?;
    let baseline = live();

    // Pending tasks whose futures hold nothing: the executor's own cost per task.
    let handles: Vec<_> = (0..tasks).map(|_| sel.spawn(pending::<()>())).collect();
    sel.run_once(Some(Duration::ZERO))?; // each polled once, now waiting
    let handles_bytes = (handles.capacity() * std::mem::size_of_val(&handles[0])) as isize;
    let per_task = (live() - baseline - handles_bytes) / tasks as isize;
    assert!(
        per_task <= BYTES_PER_PENDING_TASK,
        "{per_task} bytes per pending task"
    );
    drop(handles); // cancels them all: their futures go on the next iteration
    sel.run_once(Some(Duration::ZERO))?;
    assert!(!sel.block_on(async { false })?);

    // Tasks each awaiting their own gate: half are opened and finish, then the selector is
    // dropped with the other half pending. Every future is dropped, every byte comes back.
    let drops = DropCounter::new();
    let gates: Vec<Gate> = (0..tasks).map(|_| Gate::new()).collect();
    for gate in &gates {
        let (gate, guard) = (gate.clone(), drops.guard());
        sel.spawn(async move {
            let _guard = guard;
            gate.wait().await;
        })
        .detach();
    }
    sel.run_once(Some(Duration::ZERO))?;
    gates[..tasks / 2].iter().for_each(Gate::open);
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(drops.count(), tasks / 2, "the opened half finished");
    drop(sel);
    assert_eq!(
        drops.count(),
        tasks,
        "the selector's drop dropped the pending half"
    );
    drop((gates, drops));
    assert_eq!(live(), empty, "bytes left after the selector was dropped");
    // Printed last: the harness's output capture allocates.
    println!("{per_task} bytes per pending task, its handle not counted");
    idle_connections()
}

/// What an idle connection costs a server written as one task per connection (the
/// `async_echo` example's shape): the task, its `Async<TcpStream>` and registration, and the
/// 16 KiB buffer the task holds. Run inside the one test, so nothing else allocates meanwhile.
fn idle_connections() -> io::Result<()> {
    use futures_lite::AsyncReadExt;
    use selreactor::task::{self, Async};
    use std::net::{TcpListener, TcpStream};

    const BUFFER: isize = 16 * 1024;
    let connections = 200;
    let mut sel = Selector::new()?;
    let (listener, addr) = sel.block_on(async {
        let listener = Async::<TcpListener>::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        io::Result::Ok((listener, addr))
    })??;
    let accepted = Rc::new(Cell::new(0));
    let counted = Rc::clone(&accepted);
    let server = sel.spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await?;
            counted.set(counted.get() + 1);
            task::spawn(async move {
                let mut buf = vec![0u8; BUFFER as usize];
                while conn.read(&mut buf).await? > 0 {}
                io::Result::Ok(())
            })
            .detach();
        }
        #[allow(unreachable_code)]
        io::Result::Ok(())
    });
    let mut clients = Vec::with_capacity(2 * connections);
    clients.push(TcpStream::connect(addr)?); // the first accept's one-off allocations
    while accepted.get() < 1 {
        sel.run_once(Some(Duration::from_millis(100)))?;
    }
    sel.run_once(Some(Duration::ZERO))?;
    let before = live();
    for _ in 0..connections {
        clients.push(TcpStream::connect(addr)?);
        sel.run_once(Some(Duration::ZERO))?; // keep the backlog short
    }
    while accepted.get() < connections + 1 {
        sel.run_once(Some(Duration::from_millis(100)))?;
    }
    sel.run_once(Some(Duration::ZERO))?; // every connection's task now waits in `read`
    let per_connection = (live() - before) / connections as isize;
    assert!(
        per_connection <= BUFFER + 1024,
        "{per_connection} bytes per idle connection"
    );
    drop(server);
    drop(sel);
    drop(clients);
    println!(
        "{per_connection} bytes per idle connection: the {BUFFER}-byte buffer plus {} bytes",
        per_connection - BUFFER
    );
    Ok(())
}
