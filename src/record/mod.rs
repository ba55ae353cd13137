//! Recording: load the BPF objects of the chosen views ([`crate::views`]),
//! attach them to the target, count in the kernel until told to stop,
//! then turn the counts into a [`Profile`] with every frame named.
//!
//! [`session`] runs one recording; [`tracker`] follows its processes
//! (fork, exec, exit, layouts); [`build`] reads the profile out of the
//! maps, and [`names`] names its frames; [`span`] follows `--span`. The
//! BPF side reads each code object's names the first time a stack holds
//! it, so that names resolve even when the target exits before the
//! recording ends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;
use pyusdt_contract::walk::{self, WalkError};

pub use crate::bpf::kernel::StacksAt;
use crate::profile::ViewKind;
use crate::Result;

pub(crate) mod build;
pub(crate) mod names;
pub mod run;
mod session;
pub(crate) mod span;
pub(crate) mod tracker;

pub use crate::views::calls::MISSED_EXITS;
pub use names::GIL_WAIT_FRAME;
pub use pyusdt_contract::probes::POLL_THREAD;
pub use session::record;

/// Why some detail was dropped because a map was full, as
/// [`Profile::walk_errors`] names it.
pub const LOST_STACKS: &str = WalkError::StacksFull.reason();

/// See [`LOST_STACKS`].
pub const LOST_NAMES: &str = WalkError::NamesFull.reason();

/// See [`LOST_STACKS`].
pub const LOST_KERNEL_STACKS: &str = WalkError::KernelStack.reason();

/// Children not followed because the process table was full.
pub const LOST_CHILDREN: &str = "children not followed (process table full)";

/// Process events the recorder did not hear of (ring buffer full).
pub const LOST_PROCESS_EVENTS: &str = "process events lost";

/// What to record.
#[derive(Debug, Clone)]
pub struct Options {
    /// The views to record.
    pub views: BTreeSet<ViewKind>,
    /// CPU samples per second.
    pub freq: u64,
    /// Stop after this long (else at `stop` or when the target exits).
    pub duration: Option<Duration>,
    /// Record the processes the target starts, and theirs, too.
    pub subprocesses: bool,
    /// Name each Python frame by its current line, not its function.
    pub lines: bool,
    /// Record only what threads do inside this span (`pyusdt.span(NAME)`).
    pub span: Option<String>,
    /// The process ran before the recording (`-p`): the off-CPU waits its
    /// threads are in when it begins count from its start.
    pub attached: bool,
    /// The gil view by uprobes on every take and drop of the GIL (exact
    /// counts of waits, at a uprobe's price per take), not at the futex
    /// syscalls where a wait blocks.
    pub gil_probes: bool,
    /// Waits off the CPU shorter than this (offcpu and wakeup views) are
    /// sampled, each kept one weighted by 1/p; 0 keeps every wait.
    pub sample_waits_below_ns: u64,
    /// Where the offcpu and wakeup views read the stacks of the waits they
    /// keep (`--offcpu-stacks-at`).
    pub stacks_at: StacksAt,
}

/// Live figures, for a progress line.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Time since the programs were attached.
    pub elapsed: Duration,
    /// Events so far per view.
    pub events: BTreeMap<ViewKind, u64>,
    /// Events lost so far (full maps).
    pub lost: u64,
    /// Processes being recorded now (more than one only when following
    /// children).
    pub processes: usize,
}

/// The CPU sampling rates a recording takes, per second.
pub const FREQ: std::ops::RangeInclusive<u64> = 1..=10_000;

/// The longest a recording (or a wait) may be asked to last.
pub const MAX_SECONDS: f64 = 86_400.0;

/// `seconds` as a duration, if it is a number of seconds a recording may
/// last (above 0, at most a day).
pub fn seconds(seconds: f64) -> std::result::Result<Duration, String> {
    if seconds > 0.0 && seconds <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "{seconds} is not a number of seconds from 0 to 86400"
        ))
    }
}

impl Options {
    /// Fails, saying why, unless these options make a recording.
    pub fn check(&self) -> Result<()> {
        if self.views.is_empty() {
            bail!("no view to record");
        }
        if !FREQ.contains(&self.freq) {
            bail!(
                "freq is CPU samples per second from 1 to 10000, not {}",
                self.freq
            );
        }
        if let Some(name) = &self.span {
            if self.views.contains(&ViewKind::Calls) {
                bail!(
                    "record --span does not combine with --exact: calls are read from the \
                     threads in batches, after the span they ran in may have ended"
                );
            }
            if name.is_empty() || name.len() >= walk::SPAN_NAME_LEN || name.contains('\0') {
                bail!(
                    "--span {name:?}: a span name of 1 to {} bytes, without NUL",
                    walk::SPAN_NAME_LEN - 1
                );
            }
        }
        if self.gil_probes && !self.views.contains(&ViewKind::Gil) {
            bail!("--gil-probes is how the gil view measures: add it, --views ...,gil");
        }
        Ok(())
    }
}

impl Progress {
    /// The figures of a recording `elapsed` in, from its views' counters.
    pub fn from_counters(
        elapsed: Duration,
        processes: usize,
        counters: &[(ViewKind, u64, u64)],
    ) -> Progress {
        let mut p = Progress {
            elapsed,
            processes,
            ..Default::default()
        };
        for &(kind, events, lost) in counters {
            p.events.insert(kind, events);
            p.lost += lost;
        }
        p
    }

    /// One line for a terminal: time, events per view, losses.
    pub fn line(&self) -> String {
        let mut s = format!("recording {:.1}s", self.elapsed.as_secs_f64());
        for (v, n) in &self.events {
            s.push_str(&format!("  {} {n}", v.name()));
        }
        s.push_str(&format!("  lost {}", self.lost));
        if self.processes > 1 {
            s.push_str(&format!("  processes {}", self.processes));
        }
        s
    }
}
