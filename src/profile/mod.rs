//! The profile: the file `record` writes and the readers read, and the
//! names of its frames ([`pyname`] for Python code objects, [`ksym`] for
//! kernel frames, [`syscalls`] for syscall numbers).
//!
//! JSON, self-describing and versioned: a header naming the format and its
//! version, the process (pid, command line, interpreter), when and how
//! long it was recorded, the sample rate, thread names, a table of frame
//! names, and one entry per view with its unit and its weighted stacks.
//! JSON was chosen over pprof's protobuf as the native form because each
//! view carries its own unit and count, the wake-up view joins two
//! threads' stacks in one, and people and scripts can read it with
//! nothing but a JSON parser; pprof is an export.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::Result;

pub mod frame;
pub mod ksym;
pub mod pyname;
pub mod syscalls;

/// A thread as frames, reports and exports name it: `NAME (TID)`, NAME
/// its Python name (`threading`'s) where it has one, else its kernel name
/// (`comm`); with the kernel name beside the id where the two differ,
/// `NAME (TID, KERNEL)`. A kernel name that is the Python name cut to the
/// kernel's 15 bytes (CPython 3.14 sets it so) does not differ. Characters
/// that would break a folded line (`;`, line breaks, control characters)
/// become spaces or colons.
pub fn thread_label(tid: u32, kernel: Option<&str>, python: Option<&str>) -> String {
    let clean = |n: &str| -> String { frame::printable(n).replace(';', ":") };
    match (python, kernel) {
        (Some(py), Some(k)) if !same_thread_name(py, k) => {
            format!("{} ({tid}, {})", clean(py), clean(k))
        }
        (Some(n), _) | (None, Some(n)) => format!("{} ({tid})", clean(n)),
        (None, None) => format!("? ({tid})"),
    }
}

/// Whether kernel name `k` is Python name `py`, or its first bytes as the
/// kernel keeps them (15, cut at a character's boundary).
fn same_thread_name(py: &str, k: &str) -> bool {
    py == k || (py.len() > 15 && k.len() >= 12 && py.starts_with(k))
}

/// The `format` field of every profile file.
pub const FORMAT: &str = "pyusdt-prof profile";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// The views a profile can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ViewKind {
    /// CPU samples.
    Cpu,
    /// Time off the CPU, under the stacks at switch-out.
    Offcpu,
    /// Time inside syscalls, and their count.
    Syscall,
    /// Time waited, under the wakee's and the waker's stacks.
    Wakeup,
    /// Time waiting for the GIL, under the waiter's stack and the stack of
    /// the thread that handed the GIL over.
    Gil,
    /// Every Python call (`record --exact`): self time under each call
    /// path, with the exact count of calls and a histogram of each call's
    /// inclusive time.
    Calls,
}

impl ViewKind {
    /// Every view, in the order they are shown.
    pub const ALL: [ViewKind; 6] = [
        ViewKind::Cpu,
        ViewKind::Offcpu,
        ViewKind::Syscall,
        ViewKind::Wakeup,
        ViewKind::Gil,
        ViewKind::Calls,
    ];

    /// The views that read Python frames only when an event happens (what
    /// `record --views all` records); [`ViewKind::Calls`] is not one.
    pub const SAMPLED: [ViewKind; 5] = [
        ViewKind::Cpu,
        ViewKind::Offcpu,
        ViewKind::Syscall,
        ViewKind::Wakeup,
        ViewKind::Gil,
    ];

    /// The view's name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ViewKind::Cpu => "cpu",
            ViewKind::Offcpu => "offcpu",
            ViewKind::Syscall => "syscall",
            ViewKind::Wakeup => "wakeup",
            ViewKind::Gil => "gil",
            ViewKind::Calls => "calls",
        }
    }

    /// The unit of a sample's value.
    pub fn unit(self) -> Unit {
        match self {
            ViewKind::Cpu => Unit::Samples,
            _ => Unit::Nanoseconds,
        }
    }

    /// A view by name.
    pub fn parse(name: &str) -> Option<ViewKind> {
        ViewKind::ALL.into_iter().find(|v| v.name() == name)
    }

    /// A view by name, or what the views are.
    pub fn named(name: &str) -> std::result::Result<ViewKind, String> {
        ViewKind::parse(name).ok_or_else(|| {
            let names: Vec<_> = ViewKind::ALL.iter().map(|v| v.name()).collect();
            format!("`{name}` is not a view; the views are {}", names.join(", "))
        })
    }

    /// The views `name` asks for: one by name, or `all` (every sampled
    /// view, as `record --views all`: not calls).
    pub fn named_or_all(name: &str) -> std::result::Result<Vec<ViewKind>, String> {
        if name == "all" {
            return Ok(ViewKind::SAMPLED.to_vec());
        }
        ViewKind::named(name)
            .map(|v| vec![v])
            .map_err(|e| format!("{e}, or all"))
    }
}

/// What a sample's value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// CPU samples.
    Samples,
    /// Nanoseconds.
    Nanoseconds,
}

/// One weighted stack of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The process the thread belongs to; 0 in files that name only one
    /// (then it is [`Profile::pid`]).
    #[serde(default)]
    pub pid: u32,
    /// The thread (kernel thread id) the stack belongs to.
    pub tid: u32,
    /// Indexes into [`Profile::frames`], root first; the thread is not in
    /// it (it is the root that [`Profile::folded`] adds).
    pub stack: Vec<u32>,
    /// The weight, in the view's unit.
    pub value: u64,
    /// How many events make up `value` (samples, switches, calls).
    pub count: u64,
    /// For the offcpu and syscall views: how the events' durations spread,
    /// as a log2 histogram: `hist[k]` events lasted from 2^k to 2^(k+1) ns
    /// (`hist[0]`: under 2 ns), without trailing empty slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hist: Vec<u64>,
}

/// Adds log2 histogram `h` to `into`, bucket by bucket.
pub fn add_hist(into: &mut Vec<u64>, h: &[u64]) {
    if into.len() < h.len() {
        into.resize(h.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(h) {
        *a += b;
    }
}

/// Writes `path` atomically: `fill` writes a temporary file beside it,
/// which is synced and renamed into place, readable by its owner only. A
/// failure or a crash never leaves a partial file under the final name.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("the output path names no file")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("write {}", path.display()))
}

/// A process of a recording that followed children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The process that made it; 0 for the one the recording began with.
    pub ppid: u32,
    /// Its command line, as last seen (after an exec, the new program's).
    pub command: Vec<String>,
    /// The interpreter version its layout named, empty if it announced
    /// none (not Python, or Python without pyusdt).
    pub python: String,
}

/// A command line short enough for a frame: file names without their
/// directories, pyusdt's launcher (`-m pyusdt`) left out, at most 60
/// characters.
pub fn short_command(argv: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "-m" && argv.get(i + 1).is_some_and(|m| m == "pyusdt") {
            i += 2;
            continue;
        }
        let a = argv[i].as_str();
        parts.push(if a.starts_with('/') {
            a.rsplit('/').next().unwrap_or(a)
        } else {
            a
        });
        i += 1;
    }
    let joined = frame::printable(&parts.join(" ")).into_owned();
    if joined.chars().count() <= 60 {
        return joined;
    }
    let mut short: String = joined.chars().take(57).collect();
    short.push_str("...");
    short
}

/// One view: its unit and its stacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Which view.
    pub kind: ViewKind,
    /// The unit of the values.
    pub unit: Unit,
    /// Events counted in this view.
    pub events: u64,
    /// Events lost (a full map), counted.
    pub lost: u64,
    /// Why the view could not be measured (then it has no stacks), e.g. an
    /// interpreter without the symbols the gil view probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// How the view was measured where that differs from the usual way,
    /// one sentence each (say, GIL waits seen at the futex syscalls of an
    /// interpreter without the symbols to probe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Events shorter than this many nanoseconds were sampled: one of L ns
    /// was kept with probability 1/k, k = floor(this / L), and counts as k
    /// (its value, count and histogram): expected totals are the true
    /// ones. Absent: every event was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_below_ns: Option<u64>,
    /// The stacks.
    pub samples: Vec<Sample>,
}

/// A whole recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The version of this layout of the file, [`VERSION`].
    pub version: u32,
    /// The recorded process.
    pub pid: u32,
    /// Its command line.
    pub command: Vec<String>,
    /// Its interpreter version, as `3.12.1`.
    pub python: String,
    /// When the recording began, in nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// How long it lasted.
    pub duration_ns: u64,
    /// The CPU sampling rate, in Hz.
    pub sample_hz: u64,
    /// Thread names by thread id, as the kernel knows them (`comm`).
    pub threads: BTreeMap<u32, String>,
    /// Python thread names by thread id (`threading.Thread.name`, whole),
    /// as the process told them while it was recorded; frames and reports
    /// name a thread by it where it has one (see [`Profile::thread_label`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub python_threads: BTreeMap<u32, String>,
    /// Every process recorded, by pid, when children were followed
    /// (`record --subprocesses`); empty otherwise. Stacks then have a
    /// process root above the thread.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<u32, Process>,
    /// Frame names, indexed by [`Sample::stack`].
    pub frames: Vec<String>,
    /// Recorded with `--lines`: Python frames are named by their line,
    /// `qualname (file:line)`, and `function_of[i]` is the index of frame
    /// i's function, `qualname (file:firstline)` (i itself for frames that
    /// are not lines). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub function_of: Vec<u32>,
    /// The views recorded.
    pub views: Vec<View>,
    /// Python stacks that could not be read, and stacks or names dropped
    /// because a map was full, by reason.
    pub walk_errors: BTreeMap<String, u64>,
    /// Recorded with `--span NAME`: only what happened inside that span,
    /// and how long the spans lasted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<SpanSummary>,
    /// The kernel it was recorded on, as `uname -r` prints it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
}

/// The span a recording kept to (`record --span NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanSummary {
    /// The span's name, as `pyusdt.span(NAME)` gave it.
    pub name: String,
    /// Spans that ended while recording (nested ones count once, as the
    /// outermost).
    pub count: u64,
    /// Their time, in ns.
    pub total_ns: u64,
    /// Their durations, as a log2 histogram like [`Sample::hist`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hist: Vec<u64>,
}

/// The profile file `record` writes and the other commands read by default.
pub const DEFAULT_FILE: &str = "pyusdt-profile.json";

/// A file named after profile `input`: its stem, then `suffix`
/// (`-cpu.svg`, `.pb.gz`), in the current folder.
pub fn derived_path(input: &Path, suffix: &str) -> std::path::PathBuf {
    let stem = input
        .file_stem()
        .map_or("pyusdt-profile".into(), |s| s.to_string_lossy());
    std::path::PathBuf::from(format!("{stem}{suffix}"))
}

impl Profile {
    /// Reads a profile, with its Python frames named by function (not
    /// line) if `functions` says so.
    pub fn read_as(path: &Path, functions: bool) -> Result<Profile> {
        let p = Profile::read(path)?;
        Ok(if functions { p.by_function() } else { p })
    }

    /// The view `kind`, if it was recorded.
    pub fn view(&self, kind: ViewKind) -> Option<&View> {
        self.views.iter().find(|v| v.kind == kind)
    }

    /// The profile with Python frames named by function rather than line
    /// (for a profile recorded with `--lines`; others are as they are):
    /// stacks that differ only in lines are merged.
    pub fn by_function(&self) -> Profile {
        let mut p = self.clone();
        if self.function_of.is_empty() {
            return p;
        }
        let map = |f: u32| self.function_of.get(f as usize).copied().unwrap_or(f);
        for v in &mut p.views {
            let mut merged: BTreeMap<(u32, u32, Vec<u32>), Sample> = BTreeMap::new();
            for s in std::mem::take(&mut v.samples) {
                let stack: Vec<u32> = s.stack.iter().map(|&f| map(f)).collect();
                match merged.entry((s.pid, s.tid, stack.clone())) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(Sample { stack, ..s });
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let m = e.get_mut();
                        m.value += s.value;
                        m.count += s.count;
                        add_hist(&mut m.hist, &s.hist);
                    }
                }
            }
            v.samples = merged.into_values().collect();
        }
        p.function_of.clear();
        p
    }

    /// `process COMMAND (PID)`, the root frame of a process in a recording
    /// that followed children.
    pub fn process_frame(&self, pid: u32) -> String {
        let pid = if pid == 0 { self.pid } else { pid };
        let command = self
            .processes
            .get(&pid)
            .map(|p| short_command(&p.command))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "?".into());
        format!("process {command} ({pid})")
    }

    /// `thread NAME (TID)`, the root frame of a thread (see
    /// [`Profile::thread_label`]).
    pub fn thread_frame(&self, tid: u32) -> String {
        format!("thread {}", self.thread_label(tid))
    }

    /// A thread as people read it: `NAME (TID)`, or `NAME (TID, KERNEL)`
    /// where its Python name and its kernel name differ ([`thread_label`]).
    pub fn thread_label(&self, tid: u32) -> String {
        thread_label(
            tid,
            self.threads.get(&tid).map(String::as_str),
            self.python_threads.get(&tid).map(String::as_str),
        )
    }

    /// A thread's name: its Python name, else its kernel name, else `?`.
    pub fn thread_name(&self, tid: u32) -> &str {
        self.python_threads
            .get(&tid)
            .or_else(|| self.threads.get(&tid))
            .map_or("?", String::as_str)
    }

    /// Whether `t` names thread `tid`: its id, its Python name or its
    /// kernel name.
    pub fn thread_is(&self, tid: u32, t: &str) -> bool {
        tid.to_string() == t
            || self.python_threads.get(&tid).is_some_and(|n| n == t)
            || self.threads.get(&tid).is_some_and(|n| n == t)
    }

    /// The folded lines of a view (`root;...;leaf value`), merged where
    /// they are equal and sorted; `by_count` weighs by events instead of
    /// the value, `merge_threads` leaves the thread root out.
    pub fn folded(
        &self,
        kind: ViewKind,
        by_count: bool,
        merge_threads: bool,
    ) -> Result<Vec<String>> {
        let view = self
            .view(kind)
            .with_context(|| format!("this profile has no {} view", kind.name()))?;
        if let Some(why) = &view.unavailable {
            bail!("the {} view could not be measured: {why}", kind.name());
        }
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for s in &view.samples {
            let mut parts: Vec<String> = Vec::with_capacity(s.stack.len() + 2);
            if !self.processes.is_empty() {
                parts.push(self.process_frame(s.pid).replace(';', ":"));
            }
            if !merge_threads {
                parts.push(self.thread_frame(s.tid));
            }
            for &f in &s.stack {
                let name = self
                    .frames
                    .get(f as usize)
                    .with_context(|| format!("frame {f} is not in the frame table"))?;
                parts.push(name.replace(';', ":"));
            }
            if parts.is_empty() {
                parts.push("[no stack]".into());
            }
            let w = if by_count { s.count } else { s.value };
            if w > 0 {
                *merged.entry(parts.join(";")).or_default() += w;
            }
        }
        Ok(merged
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect())
    }

    /// Writes the profile to `path` atomically (a temporary file beside
    /// it, renamed into place), readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, |w| {
            serde_json::to_writer(&mut *w, self)?;
            w.write_all(b"\n")?;
            Ok(())
        })
    }

    /// Reads a profile, with a clear error for anything that is not one
    /// this build can read.
    pub fn read(path: &Path) -> Result<Profile> {
        let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{} is not a usable profile", path.display()))
    }

    /// Parses a profile from its bytes.
    pub fn parse(bytes: &[u8]) -> Result<Profile> {
        if bytes.is_empty() {
            bail!("the file is empty");
        }
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                anyhow::anyhow!("the file is truncated")
            } else {
                anyhow::anyhow!("not a pyusdt-prof profile")
            }
        })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!("not a pyusdt-prof profile (no \"format\": \"{FORMAT}\")");
        }
        let version = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
        if version != u64::from(VERSION) {
            bail!("profile version {version}; this pyusdt-prof reads version {VERSION}");
        }
        let p: Profile = serde_json::from_value(v).context("a damaged profile")?;
        let n = p.frames.len();
        if !p.function_of.is_empty()
            && (p.function_of.len() != n || p.function_of.iter().any(|&f| f as usize >= n))
        {
            bail!("a damaged profile: its function_of table does not match its frames");
        }
        for view in &p.views {
            for s in &view.samples {
                if let Some(&f) = s.stack.iter().find(|&&f| f as usize >= p.frames.len()) {
                    bail!("a damaged profile: frame {f} is not in its frame table");
                }
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile() -> Profile {
        Profile {
            format: FORMAT.into(),
            version: VERSION,
            pid: 7,
            command: vec!["python".into(), "app.py".into()],
            python: "3.12.1".into(),
            start_unix_ns: 1,
            duration_ns: 2,
            sample_hz: 99,
            threads: BTreeMap::from([(7, "python".to_string()), (8, "worker".to_string())]),
            python_threads: BTreeMap::new(),
            processes: BTreeMap::new(),
            function_of: Vec::new(),
            frames: vec![
                "main (a.py:1)".into(),
                "f (a.py:5)".into(),
                "schedule_[k]".into(),
            ],
            views: vec![View {
                kind: ViewKind::Offcpu,
                unit: Unit::Nanoseconds,
                events: 3,
                lost: 0,
                unavailable: None,
                notes: Vec::new(),
                sampled_below_ns: None,
                samples: vec![
                    Sample {
                        pid: 0,
                        tid: 7,
                        stack: vec![0, 1, 2],
                        value: 100,
                        count: 1,
                        hist: vec![0, 0, 0, 0, 0, 0, 1],
                    },
                    Sample {
                        pid: 0,
                        tid: 8,
                        stack: vec![0, 1, 2],
                        value: 50,
                        count: 2,
                        hist: vec![0, 0, 0, 0, 0, 2],
                    },
                    Sample {
                        pid: 0,
                        tid: 7,
                        stack: vec![0, 1, 2],
                        value: 10,
                        count: 1,
                        hist: vec![0, 0, 0, 1],
                    },
                ],
            }],
            walk_errors: BTreeMap::new(),
            span: None,
            kernel: String::new(),
        }
    }

    #[test]
    fn threads_are_named_by_python_with_the_kernel_name_where_it_differs() {
        assert_eq!(
            thread_label(5, Some("python"), Some("napper")),
            "napper (5, python)"
        );
        assert_eq!(
            thread_label(5, Some("napper"), Some("napper")),
            "napper (5)"
        );
        assert_eq!(thread_label(5, Some("python"), None), "python (5)");
        assert_eq!(thread_label(5, None, None), "? (5)");
        // 3.14 gives the kernel the Python name's first 15 bytes.
        let long = "a-rather-long-worker-name";
        assert_eq!(
            thread_label(5, Some(&long[..15]), Some(long)),
            format!("{long} (5)")
        );
        assert_eq!(
            thread_label(5, Some("py"), Some("a;b\nc")),
            "a:b\\nc (5, py)"
        );
        let mut p = sample_profile();
        p.python_threads.insert(8, "napper".into());
        assert_eq!(p.thread_frame(8), "thread napper (8, worker)");
        assert_eq!(p.thread_name(8), "napper");
        assert_eq!(p.thread_name(7), "python");
        assert!(p.thread_is(8, "napper") && p.thread_is(8, "worker") && p.thread_is(8, "8"));
        assert!(!p.thread_is(7, "napper"));
    }

    #[test]
    fn folds_per_thread_or_merged() {
        let p = sample_profile();
        assert_eq!(
            p.folded(ViewKind::Offcpu, false, false).unwrap(),
            [
                "thread python (7);main (a.py:1);f (a.py:5);schedule_[k] 110",
                "thread worker (8);main (a.py:1);f (a.py:5);schedule_[k] 50",
            ]
        );
        assert_eq!(
            p.folded(ViewKind::Offcpu, true, true).unwrap(),
            ["main (a.py:1);f (a.py:5);schedule_[k] 4"]
        );
        assert!(p.folded(ViewKind::Cpu, false, false).is_err());
    }

    #[test]
    fn followed_processes_get_roots() {
        let mut p = sample_profile();
        p.processes = BTreeMap::from([
            (
                7,
                Process {
                    ppid: 0,
                    command: vec!["python".into(), "app.py".into()],
                    python: "3.12.1".into(),
                },
            ),
            (
                9,
                Process {
                    ppid: 7,
                    command: vec![
                        "/usr/bin/python3".into(),
                        "-m".into(),
                        "pyusdt".into(),
                        "/srv/w.py".into(),
                        "x".repeat(70),
                    ],
                    python: String::new(),
                },
            ),
        ]);
        p.views[0].samples[1].pid = 9;
        assert_eq!(
            p.folded(ViewKind::Offcpu, false, true).unwrap(),
            [
                "process python app.py (7);main (a.py:1);f (a.py:5);schedule_[k] 110",
                &format!(
                    "process python3 w.py {}... (9);main (a.py:1);f (a.py:5);schedule_[k] 50",
                    "x".repeat(44)
                ),
            ]
        );
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let dir = std::env::temp_dir().join(format!("pyusdt-prof-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        let p = sample_profile();
        p.write(&path).unwrap();
        assert_eq!(Profile::read(&path).unwrap(), p);
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let text = fs::read(&path).unwrap();
        let err = |bytes: &[u8]| format!("{:#}", Profile::parse(bytes).unwrap_err());
        assert_eq!(err(b""), "the file is empty");
        assert_eq!(err(&text[..text.len() / 2]), "the file is truncated");
        assert!(err(b"\x89PNG\r\n").starts_with("not a pyusdt-prof profile"));
        assert!(err(b"{\"a\": 1}").starts_with("not a pyusdt-prof profile"));
        let newer = String::from_utf8(text.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        assert_eq!(
            err(newer.as_bytes()),
            "profile version 9; this pyusdt-prof reads version 1"
        );
        let bad = String::from_utf8(text)
            .unwrap()
            .replace("[0,1,2]", "[0,1,9]");
        assert!(err(bad.as_bytes()).contains("frame 9 is not in its frame table"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
