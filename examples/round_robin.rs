//! Tasks taking turns through deferred calls: the Python notes' generator round robin
//! ("Генераторы и событийный цикл Round Robin").
//!
//! ```text
//! cargo run --example round_robin
//! ```
//!
//! Two tasks, the letters of `'any string'` and the numbers of `range(11)`, take turns. Each
//! task is a deferred call ([`Registry::call_soon`]) that produces one item and queues itself
//! again at the back, so the queue alternates between them; a finished task simply does not
//! re-queue, and `run` returns once nothing is left. Prints `'a'`, `0`, `'n'`, `1`, ... one
//! item per line (letters quoted, so that the space shows). Try a third task: push another
//! iterator into `tasks`.

use std::io;

use selreactor::{Registry, Selector};

type Task = Box<dyn Iterator<Item = String>>;

/// Queues one step of `task`: it prints the next item, then queues itself again, until exhausted.
fn step(reg: &mut Registry, mut task: Task) {
    reg.call_soon(move |reg| {
        if let Some(item) = task.next() {
            println!("{item}");
            step(reg, task);
        }
    });
}

fn main() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let letters: Task = Box::new("any string".chars().map(|c| format!("{c:?}")));
    let numbers: Task = Box::new((0..11).map(|n: u32| n.to_string()));
    let tasks = [letters, numbers];
    for task in tasks {
        step(&mut sel, task);
    }
    sel.run()
}
