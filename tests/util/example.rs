//! Runs an example program as a child process, as a user would, and finds the address it
//! printed. Include it with `#[path = "util/example.rs"] mod example;`.
#![allow(dead_code)]

use std::env;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for the example to start, answer, or exit.
pub const SETTLE: Duration = Duration::from_secs(20);

/// A running example; killed when dropped.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line of its stdout and stderr, as they come.
    lines: mpsc::Receiver<String>,
}

/// The example binary `name`, built next to this test binary (`cargo test` builds examples);
/// built here if a narrower `cargo test --test ...` did not.
pub fn binary(name: &str) -> io::Result<PathBuf> {
    let exe = env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| io::Error::other("no target directory"))?;
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "building example {name}: {status}"
            )));
        }
    }
    Ok(path)
}

/// The built example `name`, ready to be given arguments; its stdin is empty.
pub fn command(name: &str) -> Command {
    let mut command = Command::new(binary(name).expect("the example's binary"));
    command.stdin(Stdio::null());
    command
}

/// Runs an example to completion and collects its output. After `limit` (a generous bound) it
/// is killed and the test fails, rather than hanging.
pub fn finish(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    // Read both pipes while it runs, so a chatty example cannot fill one and stall.
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The example's standard output, line by line.
pub fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

impl Example {
    /// Starts example `name` with `args` and waits for its "listening on ADDR" line.
    pub fn start(name: &str, args: &[&str]) -> io::Result<Example> {
        let mut command = Command::new(binary(name)?);
        command.args(args);
        Example::spawn(command)
    }

    /// Starts `command` (an example, perhaps under a shell with a lower limit) and waits for
    /// its "listening on ADDR" line.
    pub fn spawn(mut command: Command) -> io::Result<Example> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        forward(out, tx.clone());
        forward(err, tx);
        let mut example = Example {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
        };
        let line = example.wait_for_line("listening on")?;
        let addr = line.rsplit(' ').next().unwrap_or_default();
        example.addr = addr
            .parse()
            .map_err(|_| io::Error::other(format!("no address in {line:?}")))?;
        Ok(example)
    }

    /// Waits for a line containing `text`; returns it.
    pub fn wait_for_line(&mut self, text: &str) -> io::Result<String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no line with {text:?} from the example"),
                    ))
                }
            }
        }
    }

    /// Sends `signal` and waits for the exit; returns the status and the rest of the output.
    pub fn signal_and_wait(mut self, signal: i32) -> io::Result<(ExitStatus, Vec<String>)> {
        // SAFETY: kill takes a pid and a signal number, no pointers.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the example did not exit",
                ));
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The forwarding threads end with the pipes.
        let rest = self.lines.iter().collect();
        Ok((status, rest))
    }

    /// The example's resident memory in KiB.
    pub fn resident_kib(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS"))
    }

    /// A blocking client with I/O timeouts.
    pub fn connect(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, SETTLE)?;
        stream.set_read_timeout(Some(SETTLE))?;
        stream.set_write_timeout(Some(SETTLE))?;
        Ok(stream)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}
