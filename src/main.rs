//! The `pyusdt-prof` command line.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pyusdt_prof::{errors, layout, target, Result};

/// A profiler for Python on Linux: Python frames with CPU, off-CPU,
/// syscall and wake-up time, per thread.
///
/// The program to profile runs with the pyusdt extension loaded:
/// `python -m pyusdt app.py` (or `-m module`), or `import pyusdt;
/// pyusdt.enable()` inside it. pyusdt-prof needs root (or CAP_BPF,
/// CAP_PERFMON and CAP_SYS_PTRACE).
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the interpreter layout that a pyusdt process announces.
    ///
    /// Attaches a BPF program to the process's `pyusdt:layout` probe and
    /// prints what it announces: the interpreter version, where its thread
    /// list and GIL are, and the offsets a BPF program uses to walk its
    /// frames. A quick check that a process can be profiled.
    ///
    /// Examples:
    ///
    ///   pyusdt-prof layout -p 4242
    ///
    ///   pyusdt-prof layout -p "$(pgrep -f 'pyusdt app.py')" --json
    #[command(verbatim_doc_comment)]
    Layout {
        /// The process id of a Python program that runs pyusdt.
        #[arg(short, long)]
        pid: u32,
        /// Print every field as JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the announcement, in seconds.
        #[arg(long, default_value_t = 5.0, value_parser = parse_timeout)]
        timeout: f64,
    },
}

fn parse_timeout(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 3600.0 => Ok(t),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 3600")),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Layout { pid, json, timeout } => {
            let t = target::find(pid)?;
            let l = layout::receive(&t, Duration::from_secs_f64(timeout))?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", layout::to_json(&l))?;
            } else {
                writeln!(
                    out,
                    "process {pid} ({}): Python {}, pyusdt layout v{}",
                    t.comm,
                    layout::python_version(&l),
                    l.version
                )?;
                for (name, value) in layout::describe(&l) {
                    writeln!(out, "  {name:<26} {value}")?;
                }
            }
            out.flush().context("write to stdout")?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyusdt-prof: {e:#}");
            if let Some(h) = errors::hint(&e) {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
