//! The Python notes' generator coroutines, in Rust async: the running `average()` fed with
//! `send`, and `delegate()` handing its work to `sub_gen()` with `yield from`.
//!
//! ```text
//! cargo run --example coroutines
//! ```
//!
//! A Python generator is a function that stops at each `yield` and is resumed by `send(x)`.
//! A Rust `async fn` is the same idea, compiled into a state machine that stops at each
//! `.await` and is resumed by the loop when what it awaits is ready. The notes' pieces map so:
//!
//! | Python (the notes)                        | Rust (this file)                                  |
//! |-------------------------------------------|---------------------------------------------------|
//! | `def average(): ... x = yield average`    | `async fn average(inbox, replies)`, `inbox.recv().await` |
//! | `@coroutine` priming with `g.send(None)`  | `task::spawn`: the loop starts it, no priming by hand |
//! | `gener.send(4)` (and its return value)    | `inbox.send(4.0)`, then `replies.recv().await`    |
//! | `gener.throw(StopIteration)`              | `inbox.close()`: `recv` gives `None`, the loop ends |
//! | `return average`, read as `e.value`       | the task's output, read with `task.await`         |
//! | `result = yield from g`                   | `let result = g.await`: polls pass straight through |
//! | the event loop that drives generators     | the selector, running tasks beside its callbacks  |
//!
//! A generator is resumed synchronously by whoever calls `send`; a task is resumed by the loop,
//! so sending and receiving go through a mailbox (here a small single-threaded queue).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use selreactor::task;

/// A single-threaded queue between tasks: the channel `send` and `yield` form in Python.
struct Mailbox<T>(Rc<RefCell<Slot<T>>>);

struct Slot<T> {
    queue: VecDeque<T>,
    closed: bool,
    waiter: Option<Waker>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox(Rc::clone(&self.0))
    }
}

impl<T> Mailbox<T> {
    fn new() -> Self {
        Mailbox(Rc::new(RefCell::new(Slot {
            queue: VecDeque::new(),
            closed: false,
            waiter: None,
        })))
    }

    fn send(&self, value: T) {
        let mut slot = self.0.borrow_mut();
        slot.queue.push_back(value);
        if let Some(waker) = slot.waiter.take() {
            waker.wake();
        }
    }

    fn close(&self) {
        let mut slot = self.0.borrow_mut();
        slot.closed = true;
        if let Some(waker) = slot.waiter.take() {
            waker.wake();
        }
    }

    /// The next value, or `None` once the mailbox is closed and empty.
    async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            let mut slot = self.0.borrow_mut();
            match slot.queue.pop_front() {
                Some(value) => Poll::Ready(Some(value)),
                None if slot.closed => Poll::Ready(None),
                None => {
                    slot.waiter = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// The notes' `average()`: receives numbers, answers each with the running average, and
/// returns the last average when its input is closed (the notes' `throw(StopIteration)`).
async fn average(inbox: Mailbox<f64>, replies: Mailbox<f64>) -> Option<f64> {
    let (mut count, mut sum, mut average) = (0.0, 0.0, None);
    while let Some(x) = inbox.recv().await {
        count += 1.0;
        sum += x;
        let rounded = (sum / count * 100.0).round() / 100.0;
        average = Some(rounded);
        replies.send(rounded);
    }
    println!("Done");
    average
}

/// The notes' `sub_gen()`: prints every message until its input closes, then returns a value.
async fn sub_gen(inbox: Mailbox<String>) -> &'static str {
    while let Some(message) = inbox.recv().await {
        println!("_____________ {message} _________________");
    }
    "the value returned after the while"
}

/// The notes' `delegate()`: `result = yield from g` is `g.await`.
async fn delegate(inbox: Mailbox<String>) {
    let result = sub_gen(inbox).await;
    println!("{result}");
}

fn main() -> io::Result<()> {
    task::block_on(async {
        // gener = average(); gener.send(4); gener.send(5); gener.throw(StopIteration)
        let (inbox, replies) = (Mailbox::new(), Mailbox::new());
        let gener = task::spawn(average(inbox.clone(), replies.clone()));
        for x in [4.0, 5.0] {
            inbox.send(x);
            println!("{}", replies.recv().await.unwrap_or(f64::NAN));
        }
        inbox.close();
        println!("average {:?}", gener.await);

        // gen = delegate(sub_gen()); gen.send('Some')
        let messages = Mailbox::new();
        let gen = task::spawn(delegate(messages.clone()));
        messages.send("Some".to_owned());
        messages.close();
        gen.await;
    })
}
