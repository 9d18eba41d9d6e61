//! Runs a command and prints each line of its stdout and stderr as it arrives, labelled by
//! stream, then how it ended.
//!
//! ```text
//! cargo run --example subprocess -- ls -l /
//! cargo run --example subprocess -- sh -c 'echo out; echo err >&2; printf partial; exit 3'
//! cargo run --example subprocess -- sh -c 'echo bye; kill -TERM $$'
//! ```
//!
//! What it shows:
//! - **Pipes as transports.** Each of the child's streams is a transport with a protocol of its
//!   own; [`Lines`] splits what arrives into lines, keeping a last line that has no newline for
//!   the end of the stream, and refusing (once, then going on) a line longer than 64 KiB.
//! - **Exit and end of output are two events.** The child can exit while a grandchild still
//!   holds its pipes, or close its stdout and run on. The last line waits for both, so it comes
//!   after every line of output.
//! - **State without `Rc<RefCell>`.** What the callbacks share (the exit status, the streams
//!   still open, where to print) lives in the loop's state, reached from every callback.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use selreactor::net::{Lines, PipeReader, Protocol, Transport};
use selreactor::process::Subprocess;
use selreactor::{Registry, Selector};

/// What the callbacks share: the status once known, the streams not yet ended, the output.
struct Progress {
    status: Option<io::Result<ExitStatus>>,
    open_streams: usize,
    emit: Box<dyn FnMut(String)>,
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
    fn data(&mut self, tx: &mut Transport<'_, PipeReader>, data: &[u8]) -> io::Result<()> {
        let progress = tx.registry().state::<Progress>().expect("set by run");
        self.lines.feed(data, |line| {
            let text = match line {
                Ok(line) => String::from_utf8_lossy(line).into_owned(),
                Err(too_long) => format!("<{too_long}>"),
            };
            (progress.emit)(format!("[{}] {text}", self.label));
            Ok(())
        })
    }

    fn lost(&mut self, tx: &mut Transport<'_, PipeReader>, reason: Option<io::Error>) {
        let progress = tx.registry().state::<Progress>().expect("set by run");
        if let Some(partial) = self.lines.finish() {
            let text = String::from_utf8_lossy(&partial);
            (progress.emit)(format!("[{}] {text} (no newline at the end)", self.label));
        }
        if let Some(error) = reason {
            (progress.emit)(format!("[{}] read error: {error}", self.label));
        }
        progress.open_streams -= 1;
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
    let line = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("ended: {status}"),
        },
        Err(e) => format!("exit status unknown: {e}"),
    };
    (progress.emit)(line);
}

/// Runs `command` to its end, passing each line of the report to `emit`.
pub fn run(command: &mut Command, emit: impl FnMut(String) + 'static) -> io::Result<()> {
    let mut sel = Selector::new()?;
    sel.insert_state(Progress {
        status: None,
        open_streams: 2,
        emit: Box::new(emit),
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

#[allow(dead_code)] // a test includes this file as a module and calls `run`
fn main() -> io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: subprocess CMD [ARGS...]");
        std::process::exit(2);
    };
    run(Command::new(program).args(args), |line| println!("{line}"))
}
