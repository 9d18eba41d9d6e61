//! Two periodic tasks on one loop: the Python notes' asyncio "ex2" (`print_nums` and
//! `print_time`), with repeating timers instead of coroutines.
//!
//! ```text
//! cargo run --example timers                # runs for 10 seconds
//! cargo run --example timers -- --secs 4    # or for 4
//! ```
//!
//! A counter is printed every 0.1 s and "N seconds have passed" every 3 s. Both are repeating
//! timers ([`Registry::call_every`](selreactor::Registry::call_every)) on the
//! `start + k * period` grid, so neither drifts however long the program runs: try
//! `cargo run --example timers -- --secs 30 | grep -v seconds | tail -1`, which prints 301 (the
//! first number at the start, then one per tick). A one-shot timer cancels both after `--secs`,
//! and `run` returns because nothing is left.

use std::cell::Cell;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use selreactor::Selector;

const COUNTER_PERIOD: Duration = Duration::from_millis(100);
const CLOCK_PERIOD: Duration = Duration::from_secs(3);

fn run(length: Duration) -> io::Result<()> {
    let mut sel = Selector::new()?;

    // Like the coroutines, both tasks print once at the start, then once per period.
    let number = Cell::new(1u64);
    let print_number = move || {
        println!("{}", number.get());
        number.set(number.get() + 1);
    };
    print_number();
    println!("0 seconds have passed");

    let counter = sel.call_every(COUNTER_PERIOD, move |_, _| print_number());
    let ticks = Cell::new(0u64);
    let clock = sel.call_every(CLOCK_PERIOD, move |_, _| {
        ticks.set(ticks.get() + 1);
        println!(
            "{} seconds have passed",
            ticks.get() * CLOCK_PERIOD.as_secs()
        );
    });
    sel.call_later(length, move |reg| {
        // Both are pending, so neither cancel can fail.
        let _ = reg.cancel(counter);
        let _ = reg.cancel(clock);
    });
    sel.run()
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let secs = match (
        args.next().as_deref(),
        args.next().map(|v| v.parse::<f64>()),
    ) {
        (None, _) => 10.0,
        (Some("--secs"), Some(Ok(secs))) if secs >= 0.0 && args.next().is_none() => secs,
        (Some("-h" | "--help"), _) => {
            println!("usage: timers [--secs N]   (default 10)");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: timers [--secs N]   (default 10)");
            return ExitCode::from(2);
        }
    };
    match run(Duration::from_secs_f64(secs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timers: {e}");
            ExitCode::FAILURE
        }
    }
}
