//! Deterministic costs, for a machine too noisy for timings: user-space instructions per
//! dispatched event (valgrind's callgrind) and syscalls per turn (strace), for selreactor and
//! the same peers as the lab's `dispatch` and `churn` benches, on the same workloads.
//!
//! Each figure is the difference between two runs of the same child process that differ only
//! in how many turns they make, divided by the extra turns (and by the events per turn), so
//! start-up and registration cancel out. The untimed eventfd pokes every peer gets before each
//! turn (see `benches/common/mod.rs` at the root) are measured alone the same way and subtracted.
//!
//! Run: `cargo bench -p selreactor-lab --bench instructions` (a few minutes; needs `valgrind`, and `strace` for
//! the syscall column). `cargo bench -p selreactor-lab --bench instructions -- ready/1` runs only the matching
//! scenarios.

use std::io;
use std::process::Command;

use selreactor_lab::peers::{build_any, check_turn, sources, Reactor, ALL_PEERS};

/// The peer name of the baseline that only pokes.
const POKES_ONLY: &str = "pokes-only";
const FEW_TURNS: u64 = 100;
const MANY_TURNS: u64 = 600;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// `ready` sources, all ready.
    Ready(usize),
    /// One ready source among `registered`.
    OneReadyAmong(usize),
    /// Register+unregister with `live` other registrations.
    Churn(usize),
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::Ready(m) => format!("dispatch/ready/{m}"),
            Scenario::OneReadyAmong(n) => format!("dispatch/one_ready_among/{n}"),
            Scenario::Churn(n) => format!("churn/register_unregister/{n}"),
        }
    }

    fn parse(kind: &str, param: usize) -> Option<Scenario> {
        match kind {
            "ready" => Some(Scenario::Ready(param)),
            "among" => Some(Scenario::OneReadyAmong(param)),
            "churn" => Some(Scenario::Churn(param)),
            _ => None,
        }
    }

    fn args(self) -> (&'static str, usize) {
        match self {
            Scenario::Ready(m) => ("ready", m),
            Scenario::OneReadyAmong(n) => ("among", n),
            Scenario::Churn(n) => ("churn", n),
        }
    }

    /// Ready sources per turn (events per turn for dispatch; one registration for churn).
    fn ready(self) -> usize {
        match self {
            Scenario::Ready(m) => m,
            Scenario::OneReadyAmong(_) => 1,
            Scenario::Churn(_) => 0,
        }
    }

    fn events_per_turn(self) -> usize {
        self.ready().max(1)
    }

    fn population(self) -> (usize, usize) {
        match self {
            Scenario::Ready(m) => (m, 0),
            Scenario::OneReadyAmong(n) => (1, n - 1),
            Scenario::Churn(n) => (0, n),
        }
    }
}

/// The child: builds `peer` for `scenario` and makes `turns` turns (or churns).
fn child(scenario: Scenario, peer: &str, turns: u64) -> io::Result<()> {
    let (ready, idle) = scenario.population();
    let name = if peer == POKES_ONLY { "epoll" } else { peer };
    let mut reactor = build_any(name, sources(ready, idle)?)?;
    if scenario.ready() > 0 {
        check_turn(name, reactor.as_mut(), scenario.ready());
    }
    for _ in 0..turns {
        step(scenario, peer, reactor.as_mut());
    }
    Ok(())
}

fn step(scenario: Scenario, peer: &str, reactor: &mut dyn Reactor) {
    match scenario {
        Scenario::Churn(_) => reactor.churn(),
        _ => {
            reactor.poke_ready(scenario.ready());
            if peer != POKES_ONLY {
                std::hint::black_box(reactor.turn());
            }
        }
    }
}

/// Runs the child under `tool` (callgrind or strace) with `turns`, returning its count.
fn count(tool: Tool, scenario: Scenario, peer: &str, turns: u64) -> io::Result<u64> {
    let exe = std::env::current_exe()?;
    let (kind, param) = scenario.args();
    let out = std::env::temp_dir().join(format!("selreactor-d1-{}.out", std::process::id()));
    let child_args = [
        "--child".to_owned(),
        kind.to_owned(),
        param.to_string(),
        peer.to_owned(),
        turns.to_string(),
    ];
    let output = match tool {
        Tool::Callgrind => Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&exe)
            .args(&child_args)
            .output()?,
        Tool::Strace => Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&out)
            .arg(&exe)
            .args(&child_args)
            .output()?,
    };
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{peer} {}: {}",
            scenario.name(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let found = match tool {
        // "==pid== Collected : N" on stderr.
        Tool::Callgrind => String::from_utf8_lossy(&output.stderr)
            .lines()
            .find_map(|line| line.split("Collected :").nth(1)?.trim().parse().ok()),
        // The summary's last line: "100.00  seconds  usecs/call  calls  [errors]  total".
        Tool::Strace => std::fs::read_to_string(&out)?
            .lines()
            .rfind(|line| line.trim_end().ends_with("total"))
            .and_then(|line| line.split_whitespace().nth(3)?.parse().ok()),
    };
    let _ = std::fs::remove_file(&out);
    found.ok_or_else(|| io::Error::other(format!("no count from {tool:?}")))
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Callgrind,
    Strace,
}

/// The tool's count per turn, start-up cancelled out.
fn per_turn(tool: Tool, scenario: Scenario, peer: &str) -> io::Result<f64> {
    let few = count(tool, scenario, peer, FEW_TURNS)?;
    let many = count(tool, scenario, peer, MANY_TURNS)?;
    Ok((many as f64 - few as f64) / (MANY_TURNS - FEW_TURNS) as f64)
}

fn has(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let scenario = Scenario::parse(
            &args[at + 1],
            args[at + 2].parse().map_err(io::Error::other)?,
        )
        .ok_or_else(|| io::Error::other("unknown scenario"))?;
        let turns = args[at + 4].parse().map_err(io::Error::other)?;
        return child(scenario, &args[at + 3], turns);
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return Ok(()); // not a quick check: this runs valgrind
    }
    if !has("valgrind") {
        println!("valgrind not found: no instruction counts (apt-get install valgrind)");
        return Ok(());
    }
    let with_strace = has("strace");
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
    let scenarios = [
        Scenario::Ready(1),
        Scenario::Ready(16),
        Scenario::Ready(256),
        Scenario::Ready(1024),
        Scenario::OneReadyAmong(10),
        Scenario::OneReadyAmong(10_000),
        Scenario::Churn(0),
        Scenario::Churn(1_000),
        Scenario::Churn(10_000),
    ];
    println!(
        "{:<34} {:<11} {:>14} {:>12} {:>14}",
        "scenario", "peer", "instr/event", "sel/peer", "syscalls/turn"
    );
    for scenario in scenarios {
        let name = scenario.name();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let events = scenario.events_per_turn() as f64;
        let (poke_instructions, poke_syscalls) = if scenario.ready() > 0 {
            let syscalls = if with_strace {
                per_turn(Tool::Strace, scenario, POKES_ONLY)?
            } else {
                0.0
            };
            (per_turn(Tool::Callgrind, scenario, POKES_ONLY)?, syscalls)
        } else {
            (0.0, 0.0)
        };
        let mut ours = None;
        for peer in ALL_PEERS {
            let instructions =
                (per_turn(Tool::Callgrind, scenario, peer)? - poke_instructions) / events;
            let ours = *ours.get_or_insert(instructions);
            let syscalls = if with_strace {
                format!(
                    "{:.2}",
                    per_turn(Tool::Strace, scenario, peer)? - poke_syscalls
                )
            } else {
                "-".to_owned()
            };
            println!(
                "{name:<34} {peer:<11} {instructions:>14.1} {:>12.2}x {syscalls:>14}",
                ours / instructions
            );
        }
    }
    Ok(())
}
