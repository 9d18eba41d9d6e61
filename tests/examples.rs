//! The examples, run through the functions their `main`s call: each is bounded and checks its
//! own output here.

#[allow(dead_code)]
#[path = "../examples/timers.rs"]
mod timers_example;

#[allow(dead_code)]
#[path = "../examples/round_robin.rs"]
mod round_robin_example;

#[allow(dead_code)]
#[path = "../examples/select_loop.rs"]
mod select_loop_example;

#[allow(dead_code)]
#[path = "../examples/downloads.rs"]
mod downloads_example;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[test]
fn timers_example_prints_the_counter_every_tenth_and_the_clock_at_start() -> io::Result<()> {
    let lines = Rc::new(RefCell::new(Vec::new()));
    let l = Rc::clone(&lines);
    let start = Instant::now();
    timers_example::run(Duration::from_millis(350), move |line| {
        l.borrow_mut().push(line)
    })?;
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    let lines = lines.take();
    assert_eq!(lines[..2], ["1", "0 seconds have passed"]);
    let numbers: Vec<u64> = lines.iter().filter_map(|line| line.parse().ok()).collect();
    // At 0, 0.1, 0.2 and 0.3 s: four, give or take one for a loaded machine at the edges.
    assert!((3..=5).contains(&numbers.len()), "{lines:?}");
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn round_robin_example_interleaves_the_two_tasks() -> io::Result<()> {
    let produced = round_robin_example::run()?;
    let expected = [
        "a", "0", "n", "1", "y", "2", " ", "3", "s", "4", "t", "5", "r", "6", "i", "7", "n", "8",
        "g", "9", "10",
    ];
    assert_eq!(produced, expected);
    Ok(())
}

#[test]
fn select_loop_example_answers_every_request_of_concurrent_clients() -> io::Result<()> {
    let served = select_loop_example::selftest(5, 3)?;
    assert_eq!(served.connections, 5);
    assert_eq!(served.replies, 15);
    Ok(())
}

#[test]
fn downloads_example_overlaps_ten_downloads() -> io::Result<()> {
    let delay = Duration::from_millis(300);
    let dir =
        std::env::temp_dir().join(format!("selreactor-downloads-test-{}", std::process::id()));
    let report = downloads_example::run(10, delay, &dir)?;
    assert_eq!(report.downloads.len(), 10);
    for download in &report.downloads {
        assert!(download.bytes >= 20_000, "{download:?}");
        let body = std::fs::read(&download.path)?;
        assert_eq!(body.len(), download.bytes);
        assert_eq!(body[..4], [0xff, 0xd8, 0xff, 0xe0]);
    }
    std::fs::remove_dir_all(&dir)?;
    // Overlapped: about one delay in all. Sequential downloads would take ten.
    assert!(report.elapsed >= delay, "{:?}", report.elapsed);
    assert!(
        report.elapsed < delay * 4,
        "not concurrent: {:?}",
        report.elapsed
    );
    Ok(())
}
