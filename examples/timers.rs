//! Two periodic tasks on one loop: the seed's asyncio "ex2", with timers instead of coroutines.
//!
//! ```text
//! cargo run --example timers                # runs for 10 seconds
//! cargo run --example timers -- --secs 4    # or for 4
//! ```
//!
//! A counter is printed every 0.1 s and "N seconds have passed" every 3 s. Both are repeating
//! timers on the `start + k * period` grid, so neither drifts however long the program runs;
//! a one-shot timer cancels both after `--secs`, and `run` returns because nothing is left.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use selreactor::Selector;

const COUNTER_PERIOD: Duration = Duration::from_millis(100);
const CLOCK_PERIOD: Duration = Duration::from_secs(3);

/// Runs both tasks for `length`, handing each line to `emit`.
pub fn run(length: Duration, emit: impl FnMut(String) + 'static) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let emit = Rc::new(RefCell::new(emit));

    // Like the coroutines, both tasks print once at the start, then once per period.
    let number = Rc::new(Cell::new(1u64));
    let print_number = {
        let (emit, number) = (Rc::clone(&emit), Rc::clone(&number));
        move || {
            (emit.borrow_mut())(number.get().to_string());
            number.set(number.get() + 1);
        }
    };
    let print_clock = {
        let emit = Rc::clone(&emit);
        move |seconds: u64| (emit.borrow_mut())(format!("{seconds} seconds have passed"))
    };
    print_number();
    print_clock(0);

    let counter = sel.call_every(COUNTER_PERIOD, move |_, _| print_number());
    let ticks = Cell::new(0u64);
    let clock = sel.call_every(CLOCK_PERIOD, move |_, _| {
        ticks.set(ticks.get() + 1);
        print_clock(ticks.get() * CLOCK_PERIOD.as_secs());
    });
    sel.call_later(length, move |reg| {
        // Both are pending, so neither cancel can fail.
        let _ = reg.cancel(counter);
        let _ = reg.cancel(clock);
    });
    sel.run()
}

#[allow(dead_code)] // a test includes this file as a module and calls `run`
fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut secs = 10.0;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<f64>())) {
            ("--secs", Some(Ok(value))) if value >= 0.0 => secs = value,
            _ => {
                eprintln!("usage: timers [--secs N]");
                std::process::exit(2);
            }
        }
    }
    run(Duration::from_secs_f64(secs), |line| println!("{line}"))
}
