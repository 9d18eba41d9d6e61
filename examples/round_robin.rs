//! Round-robin over tasks with deferred calls: the seed's generator round robin.
//!
//! ```text
//! cargo run --example round_robin
//! ```
//!
//! Two tasks, the letters of `'any string'` and the numbers of `range(11)`, take turns. Each
//! task is a deferred call that produces one item and queues itself again at the back, so the
//! queue alternates between them; a finished task simply does not re-queue, and `run` returns
//! once the queue is empty. Prints `a 0 n 1 y 2 ...`, one item per line.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use selreactor::{Registry, Selector};

type Task = Box<dyn Iterator<Item = String>>;

/// Queues one step of `task`: it emits the next item, then re-queues itself, until exhausted.
fn step(reg: &mut Registry, mut task: Task, out: Rc<RefCell<Vec<String>>>) {
    reg.call_soon(move |reg| {
        if let Some(item) = task.next() {
            out.borrow_mut().push(item);
            step(reg, task, out);
        }
    });
}

/// Runs the two tasks and returns what they produced, in the order they produced it.
pub fn run() -> io::Result<Vec<String>> {
    let mut sel = Selector::new()?;
    let out = Rc::new(RefCell::new(Vec::new()));
    let letters: Task = Box::new("any string".chars().map(String::from));
    let numbers: Task = Box::new((0..11).map(|n: u32| n.to_string()));
    for task in [letters, numbers] {
        step(&mut sel, task, Rc::clone(&out));
    }
    sel.run()?;
    let produced = out.borrow().clone();
    Ok(produced)
}

#[allow(dead_code)] // a test includes this file as a module and calls `run`
fn main() -> io::Result<()> {
    for item in run()? {
        println!("{item}");
    }
    Ok(())
}
