//! `pyusdt-prof dump`: every thread of a process now, as one would look at
//! a hung service: its Python stack (innermost first) and name, whether it
//! runs or sleeps and in which syscall, whether it holds or waits for the
//! GIL, and the kernel stack it is blocked in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::mem::MaybeUninit;
use std::time::Duration;

use serde::Serialize;

use crate::profile::frame::printable;
use crate::profile::pyname::Namer;
use crate::profile::syscalls;
use crate::record::POLL_THREAD;
use crate::target::layout::{self, Layout};
use crate::target::walk::{self, Snapshot};
use crate::target::{self, derive, Lookup, Target};
use crate::Result;

/// One thread, now.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadDump {
    pub tid: u32,
    /// Its Python name (`threading`), else its kernel name.
    pub name: String,
    /// The kernel's name for it.
    pub kernel_name: String,
    /// `running`, `sleeping`, `disk sleep`, `stopped`, ... (`/proc`).
    pub state: String,
    /// The syscall it is in, if it is blocked in one.
    pub syscall: Option<String>,
    /// `holds` or `waits` (for the GIL), else None.
    pub gil: Option<&'static str>,
    /// Its Python frames, innermost first (`qualname (file:line)`, the
    /// line it is at); empty for a thread that runs no Python.
    pub python: Vec<String>,
    /// Deeper than the frames read.
    pub truncated: bool,
    /// The kernel functions it is blocked in, innermost first (empty when
    /// it runs, or without root).
    pub kernel: Vec<String>,
}

/// One process, now.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessDump {
    pub pid: u32,
    pub command: Vec<String>,
    /// Its Python version, where its frames could be read.
    pub python: Option<String>,
    /// Why its Python frames could not be read, if not.
    pub note: Option<String>,
    pub threads: Vec<ThreadDump>,
}

/// Dumps process `pid`, and with `children` every process it started,
/// recursively (a child that runs no Python is dumped without frames).
/// `timeout`: how long to wait for a process's layout announcement.
pub fn dump(pid: u32, children: bool, timeout: Duration) -> Result<Vec<ProcessDump>> {
    let mut pids = vec![pid];
    if children {
        pids.extend(target::descendants(pid).into_iter().map(|(p, _)| p));
    }
    let mut out = Vec::new();
    for (i, &p) in pids.iter().enumerate() {
        match dump_one(p, timeout) {
            Ok(d) => out.push(d),
            // The process asked for must be there; a child may be gone.
            Err(e) if i == 0 => return Err(e),
            Err(_) => {}
        }
    }
    Ok(out)
}

fn dump_one(pid: u32, timeout: Duration) -> Result<ProcessDump> {
    let command = target::command_line(pid).unwrap_or_default();
    let read = match target::lookup(pid)? {
        Lookup::Gone => anyhow::bail!("no process with PID {pid}"),
        Lookup::Ready(t) => read_python(&t, timeout),
        // Its layout derived, its threads named by the kernel.
        Lookup::WithoutPyusdt(_) => derive::derive_now(pid).map(|l| (l, BTreeMap::new())),
        Lookup::NotPython(_) => Err(anyhow::anyhow!("not a Python process")),
    }
    .and_then(|(l, names)| {
        let snapshot = walk::snapshot(pid, &l)
            .map_err(|e| anyhow::anyhow!("read the Python threads of process {pid}: {e}"))?;
        Ok((l, snapshot, names))
    });
    let (layout, note, snapshot, names) = match read {
        Ok((l, snap, names)) => (Some(l), None, snap, names),
        Err(e) => (
            None,
            Some(format!("{e:#}")),
            Snapshot::default(),
            BTreeMap::new(),
        ),
    };
    let python = layout.as_ref().map(layout::python_version);
    let mut namer = layout.map(|l| Namer::new(pid, Some(l)));
    let by_tid: BTreeMap<u32, &walk::PyThread> =
        snapshot.threads.iter().map(|t| (t.tid, t)).collect();
    let mut threads = Vec::new();
    for tid in target::tasks(pid) {
        let task = format!("/proc/{pid}/task/{tid}");
        let kernel_name = read_trimmed(&format!("{task}/comm")).unwrap_or_default();
        if kernel_name == POLL_THREAD {
            continue; // pyusdt's own
        }
        let state = read_trimmed(&format!("{task}/stat"))
            .as_deref()
            .and_then(state_of)
            .unwrap_or("gone")
            .to_string();
        let (syscall, futex_addr) = read_trimmed(&format!("{task}/syscall"))
            .as_deref()
            .map(syscall_of)
            .unwrap_or((None, None));
        let py = by_tid.get(&tid);
        let python = match (py, namer.as_mut()) {
            (Some(p), Some(n)) => p.frames.iter().map(|&(c, i)| n.line_name(c, i)).collect(),
            _ => Vec::new(),
        };
        let gil = match (snapshot.gil_holder, &layout, futex_addr) {
            (Some(h), _, _) if h == tid => Some("holds"),
            (_, Some(l), Some(a)) if py.is_some() && walk::is_gil_futex(l, a) => Some("waits"),
            _ => None,
        };
        let kernel = if state == "running" {
            Vec::new()
        } else {
            kernel_stack(&format!("{task}/stack"))
        };
        threads.push(ThreadDump {
            tid,
            name: names
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| kernel_name.clone()),
            kernel_name,
            state,
            syscall,
            gil,
            python,
            truncated: py.is_some_and(|p| p.truncated),
            kernel,
        });
    }
    Ok(ProcessDump {
        pid,
        command,
        python,
        note,
        threads,
    })
}

/// The layout `t` announces, and its threads' Python names (told on the
/// tick that announces it, and the next).
fn read_python(t: &Target, timeout: Duration) -> Result<(Layout, BTreeMap<u32, String>)> {
    let mut storage = MaybeUninit::uninit();
    let skel = layout::open(&mut storage)?;
    // Listening for names before asking for the layout: the poll thread
    // tells every name on the tick that announces the layout.
    let names_link = layout::listen_to_thread_names(&skel, t).ok();
    let listener = layout::Listener::attach(&skel, t)?;
    let l = listener.layout(timeout)?;
    if names_link.is_some() {
        // One more tick: the names of the tick that announced are told.
        let _ = listener.wait(1, timeout);
    }
    let names = layout::thread_names(&skel, &BTreeSet::from([t.pid]))?;
    Ok((l, names))
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// A thread's state in words, from its `/proc/.../stat`.
fn state_of(stat: &str) -> Option<&'static str> {
    Some(match *target::stat_fields(stat)?.first()? {
        "R" => "running",
        "S" => "sleeping",
        "D" => "disk sleep",
        "T" => "stopped",
        "t" => "tracing stop",
        "Z" => "zombie",
        "X" => "dead",
        "I" => "idle",
        _ => "unknown",
    })
}

/// The syscall of a `/proc/.../syscall` line, and its first argument when
/// it is a futex (the word it waits on).
fn syscall_of(line: &str) -> (Option<String>, Option<u64>) {
    let mut f = line.split_whitespace();
    let Some(nr) = f.next().and_then(|n| n.parse::<i64>().ok()) else {
        return (None, None); // "running"
    };
    if nr < 0 {
        return (None, None); // blocked, but not in a syscall
    }
    let name = syscalls::name(nr).map_or_else(|| nr.to_string(), str::to_string);
    let arg = f
        .next()
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    let futex = (name == "futex").then_some(arg).flatten();
    (Some(name), futex)
}

/// The functions of a `/proc/.../stack`, innermost first, without their
/// offsets.
fn kernel_stack(path: &str) -> Vec<String> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f = l.split_once("] ").map_or(l, |(_, f)| f);
            let f = f.split('+').next()?.trim();
            (!f.is_empty()).then(|| f.to_string())
        })
        .collect()
}

/// The dumps as people read them.
pub fn text(dumps: &[ProcessDump]) -> String {
    let mut out = String::new();
    for (i, d) in dumps.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let command = printable(&d.command.join(" ")).into_owned();
        let _ = write!(out, "Process {}: {command}", d.pid);
        if let Some(v) = &d.python {
            let _ = write!(out, "\nPython {v}");
        }
        if let Some(n) = &d.note {
            let _ = write!(out, "\n({n})");
        }
        out.push('\n');
        for t in &d.threads {
            let name = printable(&t.name);
            let mut what = t.state.clone();
            if let Some(s) = &t.syscall {
                let _ = write!(what, " in {s}");
            }
            match t.gil {
                Some("holds") => what.push_str(", holds the GIL"),
                Some(_) => what.push_str(", waits for the GIL"),
                None => {}
            }
            let kernel = if t.kernel_name != t.name {
                format!(", {}", printable(&t.kernel_name))
            } else {
                String::new()
            };
            let _ = writeln!(out, "\nThread {name} ({}{kernel}): {what}", t.tid);
            for f in &t.python {
                let _ = writeln!(out, "    {}", printable(f));
            }
            if t.truncated {
                let _ = writeln!(out, "    [truncated]");
            }
            for k in &t.kernel {
                let _ = writeln!(out, "    {k}_[k]");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_lines() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1";
        assert_eq!(state_of(stat), Some("sleeping"));
        assert_eq!(syscall_of("running"), (None, None));
        assert_eq!(syscall_of("-1 0x7ffc 0x4011"), (None, None));
        assert_eq!(
            syscall_of("0 0x3 0x7f00 0x1 0x0 0x0 0x0 0x7ffc 0x4011"),
            (Some("read".into()), None)
        );
        assert_eq!(
            syscall_of("202 0x7f12345678 0x189 0x0 0x0 0x0 0xffffffff 0x7ffc 0x4011"),
            (Some("futex".into()), Some(0x7f12345678))
        );
    }
}
