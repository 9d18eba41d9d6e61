//! The examples, run as a user runs them: each built binary (`cargo test` builds them next to
//! the test binaries, in `target/<profile>/examples/`) is started as a process, driven over
//! loopback, and its output checked.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The built example `name`.
fn example(name: &str) -> Command {
    // The test binary is target/<profile>/deps/examples-<hash>; examples sit in
    // target/<profile>/examples/.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path: PathBuf = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples (or run `cargo build --examples`)",
        path.display()
    );
    let mut command = Command::new(path);
    command.stdin(Stdio::null());
    command
}

/// Runs an example to completion; `secs` is a generous bound after which it is killed and the
/// test fails instead of hanging.
fn finish(mut command: Command, secs: u64) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within {secs} s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the output")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A server example running in the background; killed when dropped, so a failing test never
/// leaves it behind.
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the example");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Server { child, stdout }
    }

    /// The next line the server prints (its first one says where it listens).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the server's output");
        line.trim_end().to_owned()
    }

    /// The address in a first line that ends with it ("serving on 127.0.0.1:40123").
    fn address(&mut self) -> SocketAddr {
        let line = self.line();
        let addr = line.rsplit(' ').next().unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|_| panic!("no address at the end of {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    // A server that stops answering fails the test rather than hanging it.
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

#[test]
fn timers_prints_the_counter_every_tenth_and_the_clock_at_start() {
    let start = Instant::now();
    let mut timers = example("timers");
    timers.args(["--secs", "0.35"]);
    let output = finish(timers, 60);
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
    let mut timers = example("timers");
    timers.args(["--secs", "soon"]);
    let output = finish(timers, 60);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: timers"));
}

#[test]
fn round_robin_interleaves_the_two_tasks() {
    let output = finish(example("round_robin"), 60);
    assert!(output.status.success(), "{output:?}");
    let expected = [
        "'a'", "0", "'n'", "1", "'y'", "2", "' '", "3", "'s'", "4", "'t'", "5", "'r'", "6", "'i'",
        "7", "'n'", "8", "'g'", "9", "10",
    ];
    assert_eq!(stdout_lines(&output), expected);
}

#[test]
fn select_loop_answers_every_request_of_concurrent_clients() {
    let mut select_loop = example("select_loop");
    select_loop.arg("127.0.0.1:0");
    let mut server = Server::start(select_loop);
    let addr = server.address();
    let clients: Vec<_> = (0..5)
        .map(|_| {
            thread::spawn(move || -> io::Result<()> {
                let mut stream = connect(addr)?;
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
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client panicked").expect("client I/O");
    }
    // It logged each connection and is still serving.
    for _ in 0..5 {
        assert!(server.line().starts_with("connection from 127.0.0.1:"));
    }
    assert!(server.child.try_wait().expect("wait").is_none());
}

#[test]
fn select_loop_help_and_a_bad_address() {
    let mut help = example("select_loop");
    help.arg("--help");
    let output = finish(help, 60);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: select_loop"));

    let mut bad = example("select_loop");
    bad.arg("not-an-address");
    let output = finish(bad, 60);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("select_loop: not-an-address: "));
}

#[test]
fn downloads_overlap_ten_downloads() {
    let delay = Duration::from_millis(1000);
    let mut downloads = example("downloads");
    downloads.args(["--delay-ms", "1000"]);
    let output = finish(downloads, 120);
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
fn echo_on_port_zero_says_the_port_it_got_and_stops_on_sigterm() {
    let mut echo = example("echo");
    echo.arg("127.0.0.1:0");
    let mut server = Server::start(echo);
    let addr = server.address();
    assert_ne!(addr.port(), 0);
    let mut stream = connect(addr).expect("connect");
    stream.write_all(b"hello\n").expect("write");
    let mut echoed = [0; 6];
    stream.read_exact(&mut echoed).expect("read the echo");
    assert_eq!(&echoed, b"hello\n");
    drop(stream);

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "echo did not stop on SIGTERM");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "{exit:?}");
    let mut rest = String::new();
    server.stdout.read_to_string(&mut rest).expect("read");
    assert!(rest.contains("echo: served "), "{rest:?}");
}

#[test]
fn echo_reuseport_help_exits_zero_and_errors_read_as_sentences() {
    let mut help = example("echo_reuseport");
    help.arg("--help");
    let output = finish(help, 60);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: echo_reuseport"));

    let mut bad = example("echo_reuseport");
    bad.arg("1.2.3");
    let output = finish(bad, 60);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("echo_reuseport: \"1.2.3\" is not IP:PORT"),
        "{stderr}"
    );
    assert!(!stderr.contains("Custom {"), "Debug form: {stderr}");
}
