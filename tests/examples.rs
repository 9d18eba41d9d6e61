//! The examples, run as a user runs them: each built binary (`cargo test` builds them next to
//! the test binaries, in `target/<profile>/examples/`) is started as a process, driven over
//! loopback, and its output checked. The echo and chat servers have suites of their own.

#[path = "util/example.rs"]
mod example;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use example::{command, stdout_lines, Example};

/// How long an example that ends by itself may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(60);

fn finish(mut command: Command) -> Output {
    example::finish(&mut command, LIMIT)
}

#[test]
fn timers_prints_the_counter_every_tenth_and_the_clock_at_start() {
    let start = Instant::now();
    let mut timers = command("timers");
    timers.args(["--secs", "0.35"]);
    let output = finish(timers);
    let elapsed = start.elapsed();
    assert!(output.status.success(), "{output:?}");
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    let lines = stdout_lines(&output);
    assert_eq!(lines[..2], ["1", "0 seconds have passed"], "{lines:?}");
    let numbers: Vec<u64> = lines.iter().filter_map(|line| line.parse().ok()).collect();
    // Ticks at 0.1, 0.2 and 0.3 s all fall before the 0.35 s stop, and never run early; a
    // stalled machine may merge late ones, so at least one of them.
    assert!((2..=4).contains(&numbers.len()), "{lines:?}");
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    assert_eq!(lines.len(), numbers.len() + 1, "{lines:?}");
}

#[test]
fn timers_rejects_a_bad_argument_with_usage() {
    let mut timers = command("timers");
    timers.args(["--secs", "soon"]);
    let output = finish(timers);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: timers"));
}

#[test]
fn round_robin_interleaves_the_two_tasks() {
    let output = finish(command("round_robin"));
    assert!(output.status.success(), "{output:?}");
    let expected = [
        "'a'", "0", "'n'", "1", "'y'", "2", "' '", "3", "'s'", "4", "'t'", "5", "'r'", "6", "'i'",
        "7", "'n'", "8", "'g'", "9", "10",
    ];
    assert_eq!(stdout_lines(&output), expected);
}

#[test]
fn select_loop_answers_every_request_of_concurrent_clients() {
    let mut server = Example::start("select_loop", &["127.0.0.1:0"]).expect("start select_loop");
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let mut stream = server.connect().expect("connect");
            thread::spawn(move || {
                for i in 0..3 {
                    stream.write_all(format!("request {i}\n").as_bytes())?;
                    let mut reply = [0; 12];
                    stream.read_exact(&mut reply)?;
                    assert_eq!(&reply, b"Hello world\n");
                }
                stream.shutdown(Shutdown::Write)?;
                // The server closes after our half-close; nothing more may arrive.
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                assert!(rest.is_empty(), "unasked-for bytes: {rest:?}");
                Ok::<(), std::io::Error>(())
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client panicked").expect("client I/O");
    }
    // It logged each connection and is still serving.
    for _ in 0..5 {
        server
            .wait_for_line("connection from 127.0.0.1:")
            .expect("a log line per connection");
    }
    assert!(server.child.try_wait().expect("wait").is_none());
}

#[test]
fn select_loop_help_and_a_bad_address() {
    let mut help = command("select_loop");
    help.arg("--help");
    let output = finish(help);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: select_loop"));

    let mut bad = command("select_loop");
    bad.arg("not-an-address");
    let output = finish(bad);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("select_loop: not-an-address: "));
}

#[test]
fn downloads_overlap_ten_downloads() {
    let delay = Duration::from_millis(1000);
    let mut downloads = command("downloads");
    downloads.args(["--delay-ms", "1000"]);
    let output = finish(downloads);
    assert!(output.status.success(), "{output:?}");
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 11, "{lines:?}");
    for line in &lines[..10] {
        let bytes: usize = line
            .rsplit_once(" (")
            .and_then(|(_, rest)| rest.strip_suffix(" bytes)"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a download line: {line:?}"));
        assert!(bytes >= 20_000, "{line}");
    }
    // "10 downloads in 1.004 s (server delay 1.000 s each)"
    let summary = &lines[10];
    let secs: f64 = summary
        .strip_prefix("10 downloads in ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a summary: {summary:?}"));
    let elapsed = Duration::from_secs_f64(secs);
    // Overlapped: about one delay in all. One after another they would take ten.
    assert!(elapsed >= delay, "{summary}");
    assert!(elapsed < delay * 5, "not concurrent: {summary}");
}

#[test]
fn echo_reuseport_help_exits_zero_and_errors_read_as_sentences() {
    let mut help = command("echo_reuseport");
    help.arg("--help");
    let output = finish(help);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: echo_reuseport"));

    let mut bad = command("echo_reuseport");
    bad.arg("1.2.3");
    let output = finish(bad);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("echo_reuseport: \"1.2.3\" is not IP:PORT"),
        "{stderr}"
    );
    assert!(!stderr.contains("Custom {"), "Debug form: {stderr}");
}

#[test]
fn subprocess_labels_each_line_and_ends_with_how_the_child_ended() {
    let mut run = command("subprocess");
    run.args(["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"]);
    let output = finish(run);
    assert!(output.status.success(), "{output:?}");
    let mut lines = stdout_lines(&output);
    let last = lines.pop();
    // The two streams interleave as the child wrote them; the end comes after both.
    lines.sort();
    assert_eq!(
        lines,
        [
            "[stderr] err",
            "[stdout] out",
            "[stdout] partial (no newline at the end)"
        ]
    );
    assert_eq!(last.as_deref(), Some("exited with code 3"));

    let mut killed = command("subprocess");
    killed.args(["sh", "-c", "kill -KILL $$"]);
    let output = finish(killed);
    assert_eq!(stdout_lines(&output), ["killed by signal 9"], "{output:?}");

    let mut missing = command("subprocess");
    missing.arg("/nonexistent/program");
    let output = finish(missing);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("subprocess: /nonexistent/program: "),
        "{stderr}"
    );
}

#[test]
fn udp_echo_sends_each_datagram_back_to_its_sender_and_stops_on_sigterm() {
    use std::net::UdpSocket;

    let echo = Example::start("udp_echo", &["127.0.0.1:0"]).expect("start udp_echo");
    let client = || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        socket
    };
    let (alice, bob) = (client(), client());
    alice.send_to(b"from alice", echo.addr).expect("send");
    bob.send_to(b"from bob", echo.addr).expect("send");
    let mut buf = [0; 64];
    for (socket, sent) in [(&alice, &b"from alice"[..]), (&bob, &b"from bob"[..])] {
        let (n, from) = socket.recv_from(&mut buf).expect("the echo");
        assert_eq!((&buf[..n], from), (sent, echo.addr));
    }
    let (status, rest) = echo.signal_and_wait(libc::SIGTERM).expect("stop it");
    assert!(status.success(), "{status:?}");
    assert!(
        rest.iter()
            .any(|line| line == "echoed 2 datagrams, dropped 0"),
        "{rest:?}"
    );
}
