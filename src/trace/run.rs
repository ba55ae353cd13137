//! `pyusdt-prof trace -p PID`: each event one line on stdout (or one
//! JSON object), the summary on stderr.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::trace::{monotonic_ns, trace, TraceOptions};
use crate::{errors, Result};

/// Traces `pid` as `opts` says until `stop` is set (or the duration runs
/// out, the process exits, or stdout's reader goes away).
pub fn run(pid: u32, opts: &TraceOptions, json: bool, stop: &AtomicBool) -> Result<u8> {
    errors::check_can_trace()?;
    let start_ns = std::cell::Cell::new(0);
    let mut out = std::io::stdout().lock();
    let mut broken = None;
    let stacks = opts.stacks;
    let summary = trace(
        pid,
        opts,
        stop,
        || {
            start_ns.set(monotonic_ns());
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            eprintln!(
                "pyusdt-prof: tracing process {pid} ({}); Ctrl-C to stop",
                comm.trim_end()
            );
        },
        |e| {
            let line = e.line(start_ns.get(), stacks, json);
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => true,
                Err(err) => {
                    broken = Some(err);
                    false
                }
            }
        },
    )?;
    for w in &summary.warnings {
        eprintln!("pyusdt-prof: {w}");
    }
    let mut what = summary.probes.clone();
    if opts.syscalls.is_some() {
        what.push("syscalls".into());
    }
    let mut line = format!(
        "pyusdt-prof: {} events, lost {} ({})",
        summary.events,
        summary.lost,
        what.join(", ")
    );
    if summary.stacks_lost > 0 {
        line.push_str(&format!(", stacks lost {}", summary.stacks_lost));
    }
    eprintln!("{line}");
    match broken {
        // The reader went away (`| head`): that ends the trace, no error.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Some(e) => Err(e).context("write to stdout"),
        None => Ok(0),
    }
}
