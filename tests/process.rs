//! Child processes on the loop, with real programs (`sh`, `cat`, `sleep`): exit statuses,
//! output to its end, early-closed pipes, signals, broken stdin, and no zombies.

mod util;

use util::{serial, zombies};

use std::cell::RefCell;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::net::{ByteStream, PipeWriter, Protocol, Transport};
use selreactor::process::Subprocess;
use selreactor::{Registry, Selector};

#[test]
fn the_zombie_count_sees_an_unreaped_child() -> io::Result<()> {
    let _serial = serial();
    let mut child = Command::new("true").spawn()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while zombies()? == 0 {
        assert!(
            Instant::now() < deadline,
            "an exited, unreaped child is not counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait()?;
    assert_eq!(zombies()?, 0);
    Ok(())
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script);
    command
}

#[derive(Debug, PartialEq)]
enum Ev {
    Data(&'static str, Vec<u8>),
    Lost(&'static str, Option<io::ErrorKind>),
    Exit(Option<i32>, Option<i32>),
}

type Log = Rc<RefCell<Vec<Ev>>>;

/// Logs a stream's bytes (one `Data` per read, so tests join them) and its end.
struct Rec {
    name: &'static str,
    log: Log,
}

impl<T: ByteStream> Protocol<T> for Rec {
    fn data(&mut self, _: &mut Transport<'_, T>, data: &[u8]) -> io::Result<()> {
        self.log
            .borrow_mut()
            .push(Ev::Data(self.name, data.to_vec()));
        Ok(())
    }
    fn lost(&mut self, _: &mut Transport<'_, T>, reason: Option<io::Error>) {
        self.log
            .borrow_mut()
            .push(Ev::Lost(self.name, reason.map(|e| e.kind())));
    }
}

fn on_exit(log: &Log) -> impl FnOnce(&mut Registry, io::Result<ExitStatus>) {
    let log = Rc::clone(log);
    move |_, status| {
        let status = status.expect("the status was collected");
        log.borrow_mut()
            .push(Ev::Exit(status.code(), status.signal()));
    }
}

fn rec(name: &'static str, log: &Log) -> Rec {
    Rec {
        name,
        log: Rc::clone(log),
    }
}

/// Everything `name` delivered, joined.
fn output(log: &Log, name: &str) -> Vec<u8> {
    log.borrow()
        .iter()
        .filter_map(|e| match e {
            Ev::Data(n, d) if *n == name => Some(d.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

fn exits(log: &Log) -> Vec<(Option<i32>, Option<i32>)> {
    log.borrow()
        .iter()
        .filter_map(|e| match e {
            Ev::Exit(code, signal) => Some((*code, *signal)),
            _ => None,
        })
        .collect()
}

/// Runs the loop until it has nothing left (every child reaped, every pipe ended); fails
/// after `limit`.
fn run_to_end(sel: &mut Selector, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !sel.is_empty() || sel.timer_count() > 0 {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the loop did not end",
            ));
        }
        sel.run_once(Some(Duration::from_millis(50)))?;
    }
    sel.run_once(Some(Duration::ZERO))?; // deferred calls left, if any
    Ok(())
}

#[test]
fn exit_code_and_all_output_including_a_last_line_without_newline() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    Subprocess::build()
        .stdout(rec("out", &log))
        .stderr(rec("err", &log))
        .on_exit(on_exit(&log))
        .spawn(
            &mut sel,
            &mut sh("echo one; echo two >&2; printf 'no newline'; exit 3"),
        )?;
    run_to_end(&mut sel, Duration::from_secs(5))?;
    assert_eq!(output(&log, "out"), b"one\nno newline");
    assert_eq!(output(&log, "err"), b"two\n");
    assert_eq!(exits(&log), [(Some(3), None)]);
    let lost = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, Ev::Lost(..)))
        .count();
    assert_eq!(lost, 2);
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn a_child_that_closes_stdout_early_ends_that_stream_and_exits_later() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    // The child closes its stdout, then waits for its stdin to end, which this test does only
    // once it has seen the end of the output: the order is the child's, not the clock's.
    let child = Subprocess::build()
        .stdin(Idle(Rc::clone(&log)))
        .stdout(rec("out", &log))
        .on_exit(on_exit(&log))
        .spawn(&mut sel, &mut sh("echo bye; exec 1>&-; read line; exit 7"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log.borrow().contains(&Ev::Lost("out", None)) {
        assert!(Instant::now() < deadline, "the output never ended");
        sel.run_once(Some(Duration::from_millis(50)))?;
    }
    assert!(
        child.is_running(&mut sel),
        "it exited before its stdin ended"
    );
    let stdin = child.stdin().expect("piped");
    stdin.transport(&mut sel)?.close();
    run_to_end(&mut sel, Duration::from_secs(20))?;
    // Closing stdin and the exit it causes may be heard in either order: leave it out.
    let in_lost = Ev::Lost("in", None);
    assert!(log.borrow().contains(&in_lost));
    log.borrow_mut().retain(|e| *e != in_lost);
    assert_eq!(
        *log.borrow(),
        [
            Ev::Data("out", b"bye\n".to_vec()),
            Ev::Lost("out", None), // the end of its output, while it still runs
            Ev::Exit(Some(7), None),
        ]
    );
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn kill_and_signals_report_the_signal_and_kill_after_exit_is_not_found() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    let child = Subprocess::build()
        .on_exit(on_exit(&log))
        .spawn(&mut sel, Command::new("sleep").arg("30"))?;
    assert!(child.is_running(&mut sel));
    sel.call_later(Duration::from_millis(50), move |reg| {
        child.kill(reg).expect("running");
    });
    let term = Subprocess::build()
        .on_exit(on_exit(&log))
        .spawn(&mut sel, &mut sh("kill -TERM $$; sleep 30"))?;
    run_to_end(&mut sel, Duration::from_secs(5))?;
    let mut got = exits(&log);
    got.sort();
    assert_eq!(got, [(None, Some(9)), (None, Some(15))]);
    assert!(!child.is_running(&mut sel));
    for process in [child, term] {
        let error = process.kill(&mut sel).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
    assert_eq!(zombies()?, 0);
    Ok(())
}

/// Writes `data` to the child's stdin, then ends it.
struct Feed {
    data: Rc<Vec<u8>>,
    log: Log,
}

impl Protocol<PipeWriter> for Feed {
    fn made(&mut self, tx: &mut Transport<'_, PipeWriter>) -> io::Result<()> {
        tx.write(&self.data)?;
        tx.write_eof();
        Ok(())
    }
    fn data(&mut self, _: &mut Transport<'_, PipeWriter>, _: &[u8]) -> io::Result<()> {
        unreachable!("a write end is never read")
    }
    fn lost(&mut self, _: &mut Transport<'_, PipeWriter>, reason: Option<io::Error>) {
        self.log
            .borrow_mut()
            .push(Ev::Lost("in", reason.map(|e| e.kind())));
    }
}

#[test]
fn eight_mib_through_cat_come_back_byte_for_byte() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    // A pattern whose every 4-byte word is its own offset: a dropped or repeated chunk shows.
    let data: Vec<u8> = (0..2 * 1024 * 1024u32).flat_map(u32::to_le_bytes).collect();
    let data = Rc::new(data);
    Subprocess::build()
        .stdin(Feed {
            data: Rc::clone(&data),
            log: Rc::clone(&log),
        })
        .stdout(rec("out", &log))
        .on_exit(on_exit(&log))
        .spawn(&mut sel, &mut Command::new("cat"))?;
    run_to_end(&mut sel, Duration::from_secs(20))?;
    let echoed = output(&log, "out");
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == *data, "the bytes differ");
    assert!(log.borrow().contains(&Ev::Lost("in", None)));
    assert_eq!(exits(&log), [(Some(0), None)]);
    assert_eq!(zombies()?, 0);
    Ok(())
}

const CHILD_VAR: &str = "SELREACTOR_PROCESS_CHILD";

#[test]
fn writing_to_a_child_that_exited_is_broken_pipe_not_sigpipe_death() -> io::Result<()> {
    const TEST: &str = "writing_to_a_child_that_exited_is_broken_pipe_not_sigpipe_death";
    if std::env::var_os(CHILD_VAR).is_some() {
        // SAFETY: restores a signal's default disposition; no handler code is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let mut sel = Selector::new()?;
        let log = Log::default();
        let data = Rc::new(vec![b'x'; 4 << 20]);
        Subprocess::build()
            .stdin(Feed {
                data,
                log: Rc::clone(&log),
            })
            .on_exit(on_exit(&log))
            .spawn(&mut sel, &mut sh("exit 0"))?;
        run_to_end(&mut sel, Duration::from_secs(5))?;
        println!("events: {:?}", log.borrow());
        return Ok(());
    }
    let _serial = serial();
    let child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{child:?}");
    assert!(
        stdout.contains(r#"Lost("in", Some(BrokenPipe))"#),
        "{stdout}"
    );
    assert!(stdout.contains("Exit(Some(0), None)"), "{stdout}");
    Ok(())
}

#[test]
fn the_sigchld_watch_reaps_many_children_and_leaves_others_alone() -> io::Result<()> {
    let _serial = serial();
    // A child of std's, beside the loop: its owner must still be able to wait for it.
    let mut bystander = Command::new("sleep").arg("0.2").spawn()?;
    let mut sel = Selector::new()?;
    let log = Log::default();
    for code in 0..20 {
        Subprocess::build()
            .on_exit(on_exit(&log))
            .watch_by_sigchld()
            .spawn(&mut sel, &mut sh(&format!("exit {code}")))?;
    }
    // The loop ends by itself: the watch goes once no child needs it.
    run_to_end(&mut sel, Duration::from_secs(5))?;
    let mut codes: Vec<_> = exits(&log).into_iter().map(|(c, _)| c.unwrap()).collect();
    codes.sort();
    assert_eq!(codes, (0..20).collect::<Vec<_>>());
    assert!(bystander.wait()?.success());
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn dropping_the_selector_kills_and_reaps_a_running_child() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let child = Subprocess::build().spawn(&mut sel, Command::new("sleep").arg("30"))?;
    let pid = child.pid();
    sel.run_once(Some(Duration::ZERO))?;
    let start = Instant::now();
    drop(sel);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn a_program_that_does_not_exist_is_an_error_with_nothing_left_behind() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let outcome = Subprocess::build()
        .stdout(rec("out", &Log::default()))
        .spawn(&mut sel, &mut Command::new("/nonexistent/program"));
    match outcome {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::NotFound),
        // valgrind's emulation of the spawn reports a failed exec as a child exiting with 127.
        Ok(_) if util::under_valgrind() => return run_to_end(&mut sel, Duration::from_secs(30)),
        Ok(child) => panic!("spawned {child:?}"),
    }
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn the_exit_is_reported_while_a_grandchild_still_holds_the_pipe() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    // The grandchild inherits the pipe and holds it until this test kills it, once the
    // child's exit has been reported.
    Subprocess::build()
        .stdout(rec("out", &log))
        .on_exit(on_exit(&log))
        .spawn(&mut sel, &mut sh("sleep 30 & echo $!; exit 0"))?;
    let mut grandchild_killed = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log.borrow().iter().any(|e| matches!(e, Ev::Lost(..))) {
        assert!(Instant::now() < deadline, "the output never ended");
        sel.run_once(Some(Duration::from_millis(50)))?;
        let pid = String::from_utf8(output(&log, "out")).unwrap();
        if !grandchild_killed && !exits(&log).is_empty() && pid.ends_with('\n') {
            let pid: i32 = pid.trim().parse().expect("the grandchild's pid");
            // SAFETY: kill takes no pointers; the pid is the grandchild's, which holds the
            // pipe open, so it has not exited and its pid cannot have been reused.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            grandchild_killed = true;
        }
    }
    assert!(
        grandchild_killed,
        "the output ended before the exit was reported"
    );
    // The child is gone before its output ends, with the grandchild.
    assert_eq!(log.borrow().last(), Some(&Ev::Lost("out", None)));
    assert_eq!(exits(&log), [(Some(0), None)]);
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn two_children_end_their_output_independently() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    let slow = Subprocess::build()
        .stdout(rec("slow", &log))
        .spawn(&mut sel, Command::new("sleep").arg("30"))?;
    // Had the slow child inherited this one's pipe, this EOF would wait for it.
    Subprocess::build()
        .stdout(rec("quick", &log))
        .spawn(&mut sel, &mut sh("echo quick"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.borrow().contains(&Ev::Lost("quick", None)) {
        assert!(
            Instant::now() < deadline,
            "the quick child's output never ended"
        );
        sel.run_once(Some(Duration::from_millis(50)))?;
    }
    assert!(slow.is_running(&mut sel));
    slow.kill(&mut sel)?;
    run_to_end(&mut sel, Duration::from_secs(5))?;
    assert_eq!(log.borrow().last(), Some(&Ev::Lost("slow", None)));
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn a_child_that_stops_reading_ends_its_stdin_with_broken_pipe() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    Subprocess::build()
        .stdin(Feed {
            data: Rc::new(vec![b'y'; 1 << 20]),
            log: Rc::clone(&log),
        })
        .stdout(rec("out", &log))
        .on_exit(on_exit(&log))
        .spawn(&mut sel, Command::new("head").args(["-c", "10"]))?;
    run_to_end(&mut sel, Duration::from_secs(5))?;
    assert_eq!(output(&log, "out"), b"yyyyyyyyyy");
    assert!(log
        .borrow()
        .contains(&Ev::Lost("in", Some(io::ErrorKind::BrokenPipe))));
    assert_eq!(exits(&log), [(Some(0), None)]);
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn fifty_children_at_once_are_each_reported_through_their_pidfds() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let log = Log::default();
    for _ in 0..50 {
        Subprocess::build()
            .on_exit(on_exit(&log))
            .spawn(&mut sel, &mut Command::new("true"))?;
    }
    run_to_end(&mut sel, Duration::from_secs(10))?;
    assert_eq!(exits(&log), vec![(Some(0), None); 50]);
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn a_child_reaped_behind_the_loops_back_is_reported_as_an_error() -> io::Result<()> {
    const TEST: &str = "a_child_reaped_behind_the_loops_back_is_reported_as_an_error";
    if std::env::var_os(CHILD_VAR).is_some() {
        // SAFETY: sets a disposition; no handler code is involved. With SIGCHLD ignored the
        // kernel reaps children itself, so no waitpid can collect a status.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        let mut sel = Selector::new()?;
        let outcome = Rc::new(RefCell::new(None));
        let seen = Rc::clone(&outcome);
        Subprocess::build()
            .on_exit(move |_, status| *seen.borrow_mut() = Some(status.map_err(|e| e.kind())))
            .spawn(&mut sel, &mut Command::new("true"))?;
        run_to_end(&mut sel, Duration::from_secs(5))?;
        println!("outcome: {:?}", outcome.borrow());
        return Ok(());
    }
    let _serial = serial();
    let child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{child:?}");
    // ECHILD: the status is gone, and the loop says so instead of waiting for ever.
    assert!(stdout.contains("outcome: Some(Err("), "{stdout}");
    Ok(())
}

/// The descriptor limit that leaves exactly `free` numbers for new descriptors.
fn limit_leaving(free: usize) -> io::Result<u64> {
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is closed by now: keep only the open ones.
    let open: std::collections::BTreeSet<i32> =
        listed.into_iter().filter(|&fd| util::is_open(fd)).collect();
    let mut left = free;
    for limit in 0.. {
        if !open.contains(&limit) {
            if left == 0 {
                return Ok(limit as u64);
            }
            left -= 1;
        }
    }
    unreachable!("the loop returns")
}

#[test]
fn out_of_descriptors_at_any_step_of_a_spawn_leaves_nothing_behind() -> io::Result<()> {
    const TEST: &str = "out_of_descriptors_at_any_step_of_a_spawn_leaves_nothing_behind";
    if std::env::var_os(CHILD_VAR).is_none() {
        let _serial = serial();
        let child = Command::new(std::env::current_exe()?)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, "1")
            .output()?;
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(child.status.success(), "{child:?}");
        // The first limits fail the spawn itself; one fails the exit watch with the pipes
        // already on the loop (+4 on the machine this was written on); the last ones succeed.
        assert!(
            stdout.contains("failed at") && stdout.contains("succeeded at"),
            "{stdout}"
        );
        return Ok(());
    }
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let original = getrlimit(Resource::Nofile);
    for extra in 0..12 {
        let mut sel = Selector::new()?;
        let log = Log::default();
        let limit = limit_leaving(extra)?;
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(limit),
                ..original
            },
        )?;
        let outcome = Subprocess::build()
            .stdout(rec("out", &log))
            .stderr(rec("err", &log))
            .on_exit(on_exit(&log))
            .watch_by_sigchld() // its watch needs descriptors of its own: one more step to fail
            .spawn(&mut sel, &mut sh("echo hi"));
        setrlimit(Resource::Nofile, original)?;
        match outcome {
            Err(error) => {
                println!("failed at +{extra}: {error}");
                sel.run_once(Some(Duration::from_millis(10)))?;
                assert!(sel.is_empty(), "+{extra}: {sel:?}");
                assert_eq!(*log.borrow(), [], "+{extra}: a protocol heard of it");
            }
            Ok(_) => {
                println!("succeeded at +{extra}");
                run_to_end(&mut sel, Duration::from_secs(5))?;
                assert_eq!(output(&log, "out"), b"hi\n");
                assert_eq!(exits(&log), [(Some(0), None)]);
            }
        }
        assert_eq!(zombies()?, 0, "+{extra}");
    }
    Ok(())
}

/// Writes nothing: an idle stdin.
struct Idle(Log);

impl Protocol<PipeWriter> for Idle {
    fn data(&mut self, _: &mut Transport<'_, PipeWriter>, _: &[u8]) -> io::Result<()> {
        unreachable!("a write end is never read")
    }
    fn lost(&mut self, _: &mut Transport<'_, PipeWriter>, reason: Option<io::Error>) {
        self.0
            .borrow_mut()
            .push(Ev::Lost("in", reason.map(|e| e.kind())));
    }
}

#[test]
fn an_idle_stdin_ends_when_its_child_exits_without_a_write() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let errors = Rc::new(std::cell::Cell::new(0));
    let counted = Rc::clone(&errors);
    sel.set_error_handler(move |_, _, _| counted.set(counted.get() + 1));
    let log = Log::default();
    Subprocess::build()
        .stdin(Idle(Rc::clone(&log)))
        .on_exit(on_exit(&log))
        .spawn(&mut sel, &mut sh("sleep 0.1"))?;
    run_to_end(&mut sel, Duration::from_secs(5))?;
    let mut events = log
        .borrow()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>();
    events.sort();
    assert_eq!(
        events,
        [r#"Exit(Some(0), None)"#, r#"Lost("in", Some(BrokenPipe))"#]
    );
    assert_eq!(errors.get(), 0, "the error handler was called");
    assert_eq!(zombies()?, 0);
    Ok(())
}

#[test]
fn a_handle_means_nothing_to_another_loop() -> io::Result<()> {
    let _serial = serial();
    let (mut first, mut second) = (Selector::new()?, Selector::new()?);
    let mine = Subprocess::build().spawn(&mut first, Command::new("sleep").arg("30"))?;
    let theirs = Subprocess::build().spawn(&mut second, Command::new("sleep").arg("30"))?;
    assert!(!mine.is_running(&mut second));
    let error = mine.kill(&mut second).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(
        theirs.is_running(&mut second),
        "the other loop's child was touched"
    );
    drop((first, second)); // kills and reaps both
    assert_eq!(zombies()?, 0);
    Ok(())
}
