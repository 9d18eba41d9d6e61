//! Runs a command and prints each line of its stdout and stderr as it arrives, labelled by
//! stream, then how it ended.
//!
//! ```text
//! cargo run --example subprocess -- ls -l /
//! cargo run --example subprocess -- sh -c 'echo out; echo err >&2; printf partial; exit 3'
//! cargo run --example subprocess -- sh -c 'echo bye; kill -TERM $$'
//! ```
//!
//! This is what `asyncio.create_subprocess_exec` is for; the Python notes have no program of
//! their own for it. What it shows:
//! - **Pipes as transports.** Each of the child's streams is a transport with a protocol of its
//!   own; [`Lines`] splits what arrives into lines, keeping a last line that has no newline for
//!   the end of the stream, and refusing (once, then going on) a line longer than 64 KiB.
//! - **Exit and end of output are two events.** The child can exit while a grandchild still
//!   holds its pipes, or close its stdout and run on. The last line waits for both, so it comes
//!   after every line of output.
//! - **State without `Rc<RefCell>`.** What the callbacks share (the exit status and the
//!   streams still open) lives in the loop's state, reached from every callback.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};

use selreactor::net::{Lines, PipeReader, Protocol, Transport};
use selreactor::process::Subprocess;
use selreactor::{Registry, Selector};

/// What the callbacks share: the status once known, and the streams not yet ended.
struct Progress {
    status: Option<io::Result<ExitStatus>>,
    open_streams: usize,
}

/// Labels each line of one stream.
struct Labelled {
    label: &'static str,
    lines: Lines,
}

impl Labelled {
    fn new(label: &'static str) -> Labelled {
        Labelled {
            label,
            lines: Lines::new(64 * 1024),
        }
    }
}

impl Protocol<PipeReader> for Labelled {
    fn data(&mut self, _: &mut Transport<'_, PipeReader>, data: &[u8]) -> io::Result<()> {
        self.lines.feed(data, |line| {
            match line {
                Ok(line) => println!("[{}] {}", self.label, String::from_utf8_lossy(line)),
                Err(too_long) => println!("[{}] <{too_long}>", self.label),
            }
            Ok(())
        })
    }

    fn lost(&mut self, tx: &mut Transport<'_, PipeReader>, reason: Option<io::Error>) {
        if let Some(partial) = self.lines.finish() {
            let text = String::from_utf8_lossy(&partial);
            println!("[{}] {text} (no newline at the end)", self.label);
        }
        if let Some(error) = reason {
            println!("[{}] read error: {error}", self.label);
        }
        tx.registry()
            .state::<Progress>()
            .expect("set by run")
            .open_streams -= 1;
        finish_if_done(tx.registry());
    }
}

/// Prints the last line once the child has exited and both streams have ended.
fn finish_if_done(registry: &mut Registry) {
    let progress = registry.state::<Progress>().expect("set by run");
    if progress.open_streams > 0 {
        return;
    }
    let Some(status) = progress.status.take() else {
        return;
    };
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => println!("exited with code {code}"),
            (None, Some(signal)) => println!("killed by signal {signal}"),
            (None, None) => println!("ended: {status}"),
        },
        Err(e) => println!("exit status unknown: {e}"),
    }
}

/// Runs `command` to its end, printing what it says and how it ended.
fn run(command: &mut Command) -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.insert_state(Progress {
        status: None,
        open_streams: 2,
    });
    Subprocess::build()
        .stdout(Labelled::new("stdout"))
        .stderr(Labelled::new("stderr"))
        .on_exit(|reg, status| {
            reg.state::<Progress>().expect("set above").status = Some(status);
            finish_if_done(reg);
        })
        .spawn(&mut sel, command)?;
    sel.run() // until the child is reaped and both pipes have ended
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let program = match args.next() {
        Some(program) if program != "-h" && program != "--help" => program,
        Some(_) => {
            println!("usage: subprocess CMD [ARGS...]");
            return ExitCode::SUCCESS;
        }
        None => {
            eprintln!("usage: subprocess CMD [ARGS...]");
            return ExitCode::from(2);
        }
    };
    match run(Command::new(&program).args(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subprocess: {}: {e}", program.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
