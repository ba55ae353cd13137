//! The profile out of the maps: every view's rows, named (see
//! [`super::names`]), with the threads and processes recorded and why
//! walks failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pyusdt_contract::walk::WalkError;

use crate::bpf::kernel;
use crate::bpf::{layout, procs, span};
use crate::profile::{Process, Profile, ViewKind, FORMAT, VERSION};
use crate::record::names::{learn_names, name_views, Namers};
use crate::record::span::span_summary;
use crate::record::tracker::Tracker;
use crate::record::{LOST_CHILDREN, LOST_PROCESS_EVENTS, POLL_THREAD};
use crate::target::layout as target_layout;
use crate::views::{RawView, Reading, Recorder};
use crate::Result;

/// What a profile says of its recording besides the counts.
#[derive(Debug, Clone)]
pub struct Meta {
    pub pid: u32,
    pub follow: bool,
    pub python: String,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub freq: u64,
    /// Frames named by line.
    pub lines: bool,
    /// The monotonic clock when the counts were read: calls still running
    /// count their time up to it.
    pub end_monotonic_ns: u64,
    /// The span kept to (`--span`).
    pub span: Option<String>,
}

/// The loaded objects of a recording, to read a profile out of.
pub struct Objects<'a, 'o> {
    pub procs: &'a procs::ProcsSkel<'o>,
    pub views: &'a [Box<dyn Recorder + 'o>],
    pub span: Option<&'a span::SpanSkel<'o>>,
    /// The layout object, which also hears the threads' Python names.
    pub layout: &'a layout::LayoutSkel<'o>,
}

/// Events and losses per recorded view, as the BPF side counts them (they
/// move while the programs are attached).
pub fn counters(views: &[Box<dyn Recorder + '_>]) -> Vec<(ViewKind, u64, u64)> {
    views.iter().flat_map(|v| v.counters()).collect()
}

/// Reads the counts out of the maps (while they still move, for a live
/// view, or after detaching) and names every frame; kernel frames only
/// with `kernel_names` (symbolizing takes a while; `top` shows none).
pub fn build_profile(
    objects: &Objects<'_, '_>,
    tracker: &Tracker,
    mut threads: BTreeMap<u32, String>,
    meta: &Meta,
    kernel_names: bool,
) -> Result<Profile> {
    let pid = meta.pid;
    // Names read by the BPF side at first sight win: they are what the
    // code objects were called when the stacks were taken.
    let mut namers = Namers {
        layouts: tracker.procs.iter().map(|(&p, f)| (p, f.layout)).collect(),
        by_pid: HashMap::new(),
    };
    for v in objects.views {
        learn_names(&v.walker(), &mut namers)?;
        for (pid, code, name) in v.names() {
            namers.get(pid).learn(code, name);
        }
    }
    let recorded: BTreeSet<u32> = tracker.procs.keys().copied().collect();
    let mut python_threads = target_layout::thread_names(objects.layout, &recorded)?;
    let reading = Reading {
        recorded: &recorded,
        threads: &threads,
        python_threads: &python_threads,
        end_monotonic_ns: meta.end_monotonic_ns,
    };
    let mut raw: Vec<RawView> = Vec::new();
    for v in objects.views {
        raw.extend(v.rows(&reading)?);
    }
    let (frame_names, mut views, function_of) =
        name_views(raw, &mut namers, kernel_names, meta.lines);

    // pyusdt's own poll thread is instrumentation, not the program.
    let poll: Vec<u32> = threads
        .iter()
        .filter(|(_, n)| n.as_str() == POLL_THREAD)
        .map(|(&t, _)| t)
        .collect();
    for v in &mut views {
        v.samples.retain(|s| !poll.contains(&s.tid));
        if v.kind == ViewKind::Calls {
            // Calls of pyusdt's own launcher alone (`python -m pyusdt`
            // running the program), which naming left no frame of.
            v.samples.retain(|s| !s.stack.is_empty());
        }
    }
    threads.retain(|t, _| !poll.contains(t));
    python_threads.retain(|t, _| !poll.contains(t));

    Ok(Profile {
        format: FORMAT.into(),
        version: VERSION,
        pid,
        command: tracker.procs[&pid].command.clone(),
        // The root's layout may have come after the start (a launched
        // Python without pyusdt, found as its interpreter starts).
        python: tracker.procs[&pid]
            .layout
            .as_ref()
            .map(target_layout::python_version)
            .unwrap_or_else(|| meta.python.clone()),
        start_unix_ns: meta.start_unix_ns,
        duration_ns: meta.duration_ns,
        sample_hz: meta.freq,
        threads,
        python_threads,
        processes: processes(tracker, meta.follow),
        frames: frame_names,
        function_of,
        views,
        walk_errors: walk_errors(objects),
        span: match (objects.span, &meta.span) {
            (Some(s), Some(name)) => Some(span_summary(s, name)?),
            _ => None,
        },
        kernel: kernel::kernel().release.clone(),
    })
}

/// Why stacks, names or events were lost, by reason.
fn walk_errors(objects: &Objects<'_, '_>) -> BTreeMap<String, u64> {
    let mut walk_errors = BTreeMap::new();
    for v in objects.views {
        for (r, n) in WalkError::ALL.iter().zip(v.walker().errors) {
            *walk_errors.entry(r.reason().to_string()).or_insert(0) += n;
        }
        v.errors(&mut walk_errors);
    }
    if let Some(b) = objects.procs.maps.bss_data.as_deref() {
        if b.lost_children > 0 {
            walk_errors.insert(LOST_CHILDREN.into(), b.lost_children);
        }
        if b.lost_events > 0 {
            walk_errors.insert(LOST_PROCESS_EVENTS.into(), b.lost_events);
        }
    }
    walk_errors
}

/// Every process recorded, when children were followed.
fn processes(tracker: &Tracker, follow: bool) -> BTreeMap<u32, Process> {
    if !follow {
        return BTreeMap::new();
    }
    tracker
        .procs
        .iter()
        .map(|(&p, f)| {
            let process = Process {
                ppid: f.ppid,
                command: f.command.clone(),
                python: f
                    .layout
                    .as_ref()
                    .map(target_layout::python_version)
                    .unwrap_or_default(),
            };
            (p, process)
        })
        .collect()
}
