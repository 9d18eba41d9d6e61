//! Loop-wide user state: stored by type, reachable from every kind of callback, lent together
//! with the registry, and never lent twice.

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use selreactor::{Interest, Registry, Selector};

mod util;

#[derive(Debug, Default, PartialEq)]
struct Counts {
    io: u32,
    timers: u32,
    deferred: u32,
}

#[test]
fn io_timer_and_deferred_callbacks_all_reach_the_same_state() -> io::Result<()> {
    let mut sel = Selector::new()?;
    assert!(sel.insert_state(Counts::default()).is_none());
    let (mut ours, theirs) = util::pair()?;
    sel.register(theirs, Interest::READ, |reg, stream, event| {
        util::drain(stream)?;
        reg.state::<Counts>().unwrap().io += 1;
        reg.remove(event.key())
    })?;
    sel.call_later(Duration::from_millis(1), |reg| {
        reg.state::<Counts>().unwrap().timers += 1
    });
    sel.call_soon(|reg| reg.state::<Counts>().unwrap().deferred += 1);
    ours.write_all(b"x")?;
    sel.run()?;
    let counts = sel.take_state::<Counts>().unwrap();
    assert_eq!(
        counts,
        Counts {
            io: 1,
            timers: 1,
            deferred: 1
        }
    );
    assert!(sel.state::<Counts>().is_none());
    Ok(())
}

#[test]
fn insert_replaces_and_returns_the_old_value_of_that_type_only() -> io::Result<()> {
    let mut sel = Selector::new()?;
    assert_eq!(sel.insert_state(1u32), None);
    assert_eq!(sel.insert_state("text"), None);
    assert_eq!(sel.insert_state(2u32), Some(1));
    assert_eq!(sel.state::<&str>(), Some(&mut "text"));
    assert_eq!(sel.state::<u64>(), None);
    Ok(())
}

#[test]
fn with_state_lends_the_state_and_the_registry_together() -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.insert_state(Vec::<u32>::new());
    sel.insert_state(10u32);
    let len = sel.with_state(|list: &mut Vec<u32>, reg: &mut Registry| {
        // The lent type is out; others are reachable; the registry works.
        assert!(reg.state::<Vec<u32>>().is_none());
        list.push(*reg.state::<u32>().unwrap());
        reg.call_soon(|reg| reg.state::<Vec<u32>>().unwrap().push(20));
        list.len()
    });
    assert_eq!(len, 1);
    sel.run()?;
    assert_eq!(sel.state::<Vec<u32>>().unwrap(), &[10, 20]);
    Ok(())
}

#[test]
fn a_nested_with_state_of_the_same_type_panics_and_the_state_survives() -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.insert_state(String::from("kept"));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        sel.with_state(|_: &mut String, reg: &mut Registry| {
            reg.with_state(|_: &mut String, _| ());
        })
    }));
    let message = *outcome.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("is out with a running `with_state`"),
        "{message}"
    );
    assert_eq!(sel.state::<String>().unwrap(), "kept");
    Ok(())
}

#[test]
fn with_state_of_a_missing_type_panics_with_its_name() {
    let mut sel = Selector::new().unwrap();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| sel.with_state(|_: &mut u8, _| ())));
    let message = *outcome.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("no state of type u8"), "{message}");
}

#[test]
fn state_is_dropped_with_the_selector() -> io::Result<()> {
    struct Flag(std::rc::Rc<std::cell::Cell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let dropped = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut sel = Selector::new()?;
    sel.insert_state(Flag(dropped.clone()));
    assert!(!dropped.get());
    drop(sel);
    assert!(dropped.get());
    Ok(())
}
