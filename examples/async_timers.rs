//! Two endless tasks on one loop: the Python notes' asyncio "ex2" (`print_nums` every 0.1 s and
//! `print_time` every second, saying so every three), bounded by `--secs`.
//!
//! ```text
//! cargo run --example async_timers                # runs for 10 s
//! cargo run --example async_timers -- --secs 4
//! ```
//!
//! The notes slept with `asyncio.sleep` in a `while True`; each iteration's own work then adds
//! to the period, so the ticks drift. `interval` keeps them on a fixed grid instead. The
//! `timers` example does the same with callbacks (`call_every`).

use std::io;
use std::time::Duration;

use selreactor::task;

/// The notes' `print_nums`: a counter every tenth of a second.
async fn print_nums() {
    let mut every = task::interval(Duration::from_millis(100));
    for num in 1.. {
        println!("{num}");
        every.tick().await;
    }
}

/// The notes' `print_time`: every second, and says so every three.
async fn print_time() {
    let mut every = task::interval(Duration::from_secs(1));
    for count in 0.. {
        if count % 3 == 0 {
            println!("{count} seconds have passed");
        }
        every.tick().await;
    }
}

fn main() -> io::Result<()> {
    let secs = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 10.0,
        [flag, value] if flag == "--secs" => value.parse::<f64>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage: async_timers [--secs S]",
            )
        })?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage: async_timers [--secs S]",
            ))
        }
    };
    // The notes' `main`: create both tasks; here the loop runs them for `secs`, then the
    // selector (and both tasks with it) is dropped.
    task::block_on(async move {
        let _nums = task::spawn(print_nums());
        let _time = task::spawn(print_time());
        task::sleep(Duration::from_secs_f64(secs)).await;
    })
}
