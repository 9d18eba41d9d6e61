//! Pipe ends on the loop: reading and writing through transports, `SIGPIPE`, `O_NONBLOCK`.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use selreactor::net::{pipe, start, PipeReader, PipeWriter, Protocol, Transport};
use selreactor::Selector;

#[path = "util/net.rs"]
mod net_util;

use net_util::run_until;

#[derive(Debug, PartialEq)]
enum Ev {
    Made,
    Data(Vec<u8>),
    Eof,
    Lost(Option<io::ErrorKind>),
}

type Log = Rc<RefCell<Vec<Ev>>>;

struct Rec(Log);

impl<T: selreactor::net::ByteStream> Protocol<T> for Rec {
    fn made(&mut self, _: &mut Transport<'_, T>) -> io::Result<()> {
        self.0.borrow_mut().push(Ev::Made);
        Ok(())
    }
    fn data(&mut self, _: &mut Transport<'_, T>, data: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().push(Ev::Data(data.to_vec()));
        Ok(())
    }
    fn eof(&mut self, _: &mut Transport<'_, T>) -> bool {
        self.0.borrow_mut().push(Ev::Eof);
        false
    }
    fn lost(&mut self, _: &mut Transport<'_, T>, reason: Option<io::Error>) {
        self.0.borrow_mut().push(Ev::Lost(reason.map(|e| e.kind())));
    }
}

#[test]
fn a_read_end_delivers_data_then_eof_then_lost_once() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (reader, writer) = pipe()?;
    let log = Log::default();
    start(&mut sel, reader, Rec(Rc::clone(&log)))?;
    (&writer).write_all(b"hello")?;
    run_until(&mut sel, "2 events", |_| Ok(log.borrow().len() >= 2))?;
    drop(writer);
    run_until(&mut sel, "4 events", |_| Ok(log.borrow().len() >= 4))?;
    sel.run_once(Some(Duration::from_millis(20)))?;
    assert_eq!(
        *log.borrow(),
        [
            Ev::Made,
            Ev::Data(b"hello".to_vec()),
            Ev::Eof,
            Ev::Lost(None)
        ]
    );
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn an_idle_write_end_learns_its_reader_left_without_writing() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (reader, writer) = pipe()?;
    let log = Log::default();
    start(&mut sel, writer, Rec(Rc::clone(&log)))?;
    run_until(&mut sel, "made", |_| Ok(!log.borrow().is_empty()))?;
    drop(reader);
    run_until(&mut sel, "2 events", |_| Ok(log.borrow().len() >= 2))?;
    assert_eq!(
        *log.borrow(),
        [Ev::Made, Ev::Lost(Some(io::ErrorKind::BrokenPipe))]
    );
    Ok(())
}

#[test]
fn reads_and_writes_on_an_empty_or_full_pipe_would_block() -> io::Result<()> {
    let (reader, writer) = pipe()?;
    let mut buf = [0; 16];
    let error = (&reader).read(&mut buf).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    let chunk = [0u8; 4096];
    let mut written = 0;
    let error = loop {
        match (&writer).write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "a pipe that never fills");
    };
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    assert!(written > 0);
    Ok(())
}

fn nonblocking(fd: impl AsFd) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(flags.contains(rustix::fs::OFlags::NONBLOCK))
}

#[test]
fn wrapping_sets_o_nonblock_on_the_shared_file_and_dropping_restores_it() -> io::Result<()> {
    let (read, write) = rustix::pipe::pipe()?;
    let other_copy: OwnedFd = read.try_clone()?;
    assert!(!nonblocking(&other_copy)?);
    let wrapped = PipeReader::new(read)?;
    assert!(
        nonblocking(&other_copy)?,
        "the flag belongs to the open file"
    );
    drop(wrapped);
    assert!(!nonblocking(&other_copy)?, "restored on drop");

    // A descriptor already non-blocking stays so: the wrapper did not change it.
    let copy2 = write.try_clone()?;
    rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK)?;
    drop(PipeWriter::new(write)?);
    assert!(nonblocking(&copy2)?);
    Ok(())
}

/// The variable that makes this binary, re-run, play a child with `SIGPIPE` at its default.
const CHILD_VAR: &str = "SELREACTOR_SIGPIPE_CHILD";

/// Re-runs `test` in a fresh process with `CHILD_VAR=mode`; returns its exit status and output.
fn in_child(test: &str, mode: &str) -> io::Result<std::process::Output> {
    Command::new(std::env::current_exe()?)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, mode)
        .output()
}

#[test]
fn a_write_to_a_pipe_with_no_reader_is_an_error_not_a_sigpipe_death() -> io::Result<()> {
    const TEST: &str = "a_write_to_a_pipe_with_no_reader_is_an_error_not_a_sigpipe_death";
    if let Ok(mode) = std::env::var(CHILD_VAR) {
        // SAFETY: restores a signal's default disposition; no handler code is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let (read, write) = rustix::pipe::pipe()?;
        drop(read);
        let outcome = if mode == "raw" {
            std::fs::File::from(write).write(b"x")
        } else {
            (&PipeWriter::new(write)?).write(b"x")
        };
        println!("survived: {:?}", outcome.map_err(|e| e.kind()));
        return Ok(());
    }
    // The control: without the wrapper the child dies of SIGPIPE, so the test can fail.
    let raw = in_child(TEST, "raw")?;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(raw.status.signal(), Some(libc::SIGPIPE), "{raw:?}");

    let wrapped = in_child(TEST, "wrapped")?;
    let stdout = String::from_utf8_lossy(&wrapped.stdout);
    assert!(wrapped.status.success(), "{wrapped:?}");
    assert!(stdout.contains("survived: Err(BrokenPipe)"), "{stdout}");
    Ok(())
}

#[test]
fn a_terminal_whose_other_side_closed_reads_as_end_of_stream() -> io::Result<()> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&controller)?;
    unlockpt(&controller)?;
    let name = ptsname(&controller, Vec::new())?;
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("a path"))?;
    let mut child = Command::new("sh")
        .args(["-c", "printf x"])
        .stdin(std::process::Stdio::null())
        .stdout(terminal)
        .spawn()?; // the last descriptor of the terminal's side is the child's
    let mut sel = Selector::new()?;
    let log = Log::default();
    start(&mut sel, PipeReader::new(controller)?, Rec(Rc::clone(&log)))?;
    run_until(&mut sel, "the end", |_| {
        Ok(log.borrow().iter().any(|e| matches!(e, Ev::Lost(_))))
    })?;
    child.wait()?;
    let got: Vec<u8> = log
        .borrow()
        .iter()
        .filter_map(|e| match e {
            Ev::Data(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(got, b"x");
    // No error: the hang-up (`EIO` from a terminal) is the end of the stream.
    assert_eq!(log.borrow().last(), Some(&Ev::Lost(None)));
    assert!(log.borrow().contains(&Ev::Eof));
    Ok(())
}
