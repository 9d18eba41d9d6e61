//! The async examples, run as the processes a reader would start (built next to this test
//! binary by `cargo test`), their output checked.

#[path = "util/example.rs"]
mod example;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use example::{command, Example};

fn run(mut command: Command) -> io::Result<(Output, String)> {
    let output = example::finish(&mut command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output, stdout))
}

#[test]
fn async_downloads_overlap_and_report_like_the_callback_version() -> io::Result<()> {
    let (_, stdout) = run(args(
        "async_downloads",
        &["--count", "10", "--delay-ms", "300"],
    ))?;
    let last = stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix("10 downloads in ")
        .and_then(|r| r.strip_suffix(" s (server delay 0.300 s each)"))
        .unwrap_or_else(|| panic!("unexpected last line: {last}"));
    let seconds: f64 = rest.parse().expect("a number of seconds");
    assert!(seconds >= 0.3, "faster than one server delay: {seconds}");
    assert!(seconds < 3.0, "no faster than one after another: {seconds}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("image ")).count(),
        10
    );
    Ok(())
}

#[test]
fn async_timers_counts_tenths_and_says_every_three_seconds() -> io::Result<()> {
    let start = Instant::now();
    let (_, stdout) = run(args("async_timers", &["--secs", "3.25"]))?;
    assert!(start.elapsed() >= Duration::from_millis(3250));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["1", "0 seconds have passed"]);
    assert!(lines.contains(&"3 seconds have passed"), "{lines:?}");
    let numbers: Vec<u64> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    // A tick every 0.1 s for 3.25 s: 33, give or take a few on a loaded machine.
    assert!((28..=34).contains(&numbers.len()), "{}", numbers.len());
    Ok(())
}

#[test]
fn coroutines_prints_the_notes_results() -> io::Result<()> {
    let (_, stdout) = run(command("coroutines"))?;
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "4",
            "4.5",
            "Done",
            "average Some(4.5)",
            "_____________ Some _________________",
            "the value returned after the while",
        ]
    );
    Ok(())
}

#[test]
fn async_echo_serves_concurrent_connections() -> io::Result<()> {
    let server = Example::start("async_echo", &["127.0.0.1:0"])?;
    let addr = server.addr;
    let clients: Vec<_> = (0..8u8)
        .map(|i| {
            std::thread::spawn(move || -> io::Result<Vec<u8>> {
                let mut conn = TcpStream::connect(addr)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                let message: Vec<u8> = (0..100_000u32).map(|k| (k as u8) ^ i).collect();
                let mut writer = conn.try_clone()?;
                let sent = message.clone();
                let sender = std::thread::spawn(move || writer.write_all(&sent));
                let mut echoed = vec![0; message.len()];
                conn.read_exact(&mut echoed)?;
                sender.join().expect("the sender panicked")?;
                assert_eq!(echoed, message, "client {i}");
                Ok(echoed)
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client panicked")?;
    }
    // One connection closing does not stop the server.
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"still there?")?;
    let mut reply = [0; 12];
    conn.read_exact(&mut reply)?;
    assert_eq!(&reply, b"still there?");
    Ok(())
}

/// The example `name` with `args`.
fn args(name: &str, args: &[&str]) -> Command {
    let mut command = command(name);
    command.args(args);
    command
}
