//! What keeps the tests alive on a stalled machine (see `scripts/stall-test.sh`): a blocking
//! socket call with a timeout returns `EINTR` when the process is stopped and continued, so
//! test clients retry it; and helper threads are joined so that one's failure fails the test
//! instead of leaving it waiting on another that the failure left stuck.
//!
//! The first test stops and continues this whole process (from a child shell), so it holds
//! `util::serial()` against the other.

mod util;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::thread;
use std::time::Duration;

use util::{join_all, retry_interrupted, serial};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A child that stops this process after `after`, for 50 ms, then continues it.
fn stop_and_continue_me(after: Duration) -> io::Result<Child> {
    let pid = std::process::id();
    let after = after.as_secs_f64();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep {after}; kill -STOP {pid}; sleep 0.05; kill -CONT {pid}"
        ))
        .spawn()
}

#[test]
fn a_timed_socket_read_is_interrupted_by_a_stop_and_the_retrying_read_goes_on() -> io::Result<()> {
    let _serial = serial();
    let (ours, mut theirs) = UnixStream::pair()?;
    ours.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0; 8];

    // What the kernel does (socket(7)): the blocked read fails with EINTR. (Should the stop
    // land before the read blocks, on a very loaded machine, the read times out instead.)
    ours.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut stopper = stop_and_continue_me(Duration::from_millis(200))?;
    let read = (&ours).read(&mut buf);
    stopper.wait()?;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::Interrupted),
        "the read returned {read:?}, with nothing sent"
    );
    ours.set_read_timeout(Some(TIMEOUT))?;

    // The helper retries it, and gets the bytes sent after the stop.
    let mut stopper = stop_and_continue_me(Duration::from_millis(200))?;
    let writer = thread::spawn(move || -> io::Result<()> {
        thread::sleep(Duration::from_millis(600));
        theirs.write_all(b"after")
    });
    let n = retry_interrupted(TIMEOUT, || (&ours).read(&mut buf))?;
    stopper.wait()?;
    writer.join().expect("writer panicked")?;
    assert_eq!(&buf[..n], b"after");
    Ok(())
}

#[test]
fn join_all_reports_a_failure_while_another_thread_is_stuck_because_of_it() -> io::Result<()> {
    let _serial = serial();
    let (stuck_end, other_end) = UnixStream::pair()?;
    stuck_end.set_read_timeout(Some(TIMEOUT))?;
    // Blocked until `other_end` closes, which happens only after `join_all` returns: joining
    // it first would wait for its timeout.
    let stuck = thread::spawn(move || -> io::Result<usize> {
        retry_interrupted(TIMEOUT, || (&stuck_end).read(&mut [0; 8]))
    });
    let failing = thread::spawn(|| -> io::Result<usize> {
        thread::sleep(Duration::from_millis(50));
        Err(io::Error::other("the reader failed"))
    });
    let error = join_all(vec![stuck, failing], 2 * TIMEOUT).expect_err("one thread failed");
    assert_eq!(error.to_string(), "the reader failed");
    drop(other_end);

    let fine = (0..3)
        .map(|i| thread::spawn(move || -> io::Result<usize> { Ok(i) }))
        .collect();
    assert_eq!(
        join_all(fine, TIMEOUT)?,
        [0, 1, 2],
        "results in thread order"
    );
    Ok(())
}
