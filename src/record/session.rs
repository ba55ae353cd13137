//! One recording, from attach to detach: the BPF objects of the views
//! asked for (and the procs, span and layout objects beside them), the
//! process events and layout announcements they send, a tick every 100 ms
//! that follows processes and reports progress, and at the end the profile.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use libbpf_rs::{Link, OpenObject, RingBuffer, RingBufferBuilder};

use crate::bpf::kernel;
use crate::bpf::layout::LayoutSkel;
use crate::bpf::load::{btf_or_raw, load_procs, slot, Shared, Slots};
use crate::bpf::maps::monotonic_ns;
use crate::bpf::retire::LiveThreads;
use crate::bpf::{procs, span};
use crate::profile::Profile;
use crate::record::build::{build_profile, counters, Meta, Objects};
use crate::record::names::{move_exited_names, proc_threads};
use crate::record::span::load_span;
use crate::record::tracker::Tracker;
use crate::record::{Options, Progress};
use crate::target::derive;
use crate::target::layout::{self, Layout};
use crate::target::{self, Target};
use crate::views::{Recorder, Setup, REGISTRY};
use crate::Result;

/// BPF objects a recording may hold: procs (two tries, tp_btf then
/// raw_tp), two for each view's object, the span follower, the layout
/// program.
const SLOTS: usize = 4 + 2 * REGISTRY.len();

/// Ticks (100 ms) between two readings of the recorded threads' names.
const NAME_TICKS: u32 = 10;

/// The loaded objects and their links.
struct Loaded<'o> {
    procs: procs::ProcsSkel<'o>,
    procs_links: Vec<Link>,
    views: Vec<Box<dyn Recorder + 'o>>,
    span: Option<(span::SpanSkel<'o>, Vec<Link>)>,
    layout: LayoutSkel<'o>,
}

/// Asks for (or finds) the layouts of the processes that lack one, and
/// lets the views that attach per process attach to those that have one.
fn find_layouts(
    tracker: &mut Tracker,
    layout: &LayoutSkel<'_>,
    procs: &procs::ProcsSkel<'_>,
    views: &mut [Box<dyn Recorder + '_>],
    pid: u32,
) {
    tracker.ask(layout, &procs.maps.layouts);
    let python = tracker.python();
    for v in views {
        v.watch(&python, pid);
    }
}

/// Loads and attaches every object the recording needs.
fn load<'o>(
    slots: &mut Slots<'o>,
    target: &Target,
    opts: &Options,
    l: Option<&Layout>,
) -> Result<Loaded<'o>> {
    let pid = target.pid;
    let follow = opts.subprocesses;
    let (procs, procs_links) = btf_or_raw(slots, |s, v| load_procs(s, pid, l, follow, true, v))?;
    let shared = Shared::new(&procs, pid, follow, opts.lines, opts.span.is_some());
    let setup = Setup {
        shared,
        target,
        layout: l,
        views: &opts.views,
        freq: opts.freq,
        variant: kernel::kernel().variant(),
        gil_probes: opts.gil_probes,
        sample_waits_below_ns: opts.sample_waits_below_ns,
        stacks_at: opts.stacks_at,
    };
    let mut views = Vec::new();
    for entry in REGISTRY {
        if entry.kinds.iter().any(|k| opts.views.contains(k)) {
            views.push((entry.load)(slots, &setup)?);
        }
    }
    let span = match &opts.span {
        Some(name) => Some(load_span(slot(slots)?, shared, target, name)?),
        None => None,
    };
    let layout = layout::open(slot(slots)?)?;
    Ok(Loaded {
        procs,
        procs_links,
        views,
        span,
        layout,
    })
}

/// What the procs and layout objects send: process events and layout
/// announcements, one poll for both.
struct Events<'a> {
    ring: RingBuffer<'a>,
    procs: Rc<RefCell<Vec<procs::types::follow_event>>>,
    layouts: layout::Inbox,
}

impl<'a> Events<'a> {
    fn watch(procs: &'a procs::ProcsSkel<'_>, lay: &'a LayoutSkel<'_>) -> Result<Self> {
        let events: Rc<RefCell<Vec<procs::types::follow_event>>> = Rc::default();
        let layouts = layout::Inbox::default();
        let mut builder = RingBufferBuilder::new();
        let sink = Rc::clone(&events);
        builder
            .add(&procs.maps.follow_events, move |data: &[u8]| {
                let mut e = procs::types::follow_event::default();
                if plain::copy_from_bytes(&mut e, data).is_ok() {
                    sink.borrow_mut().push(e);
                }
                0
            })
            .context("watch the process events")?;
        layout::watch(&mut builder, lay, &layouts)?;
        let ring = builder.build().context("build the event ring buffers")?;
        Ok(Events {
            ring,
            procs: events,
            layouts,
        })
    }

    /// Waits up to `timeout` for events.
    fn poll(&self, timeout: Duration) -> Result<()> {
        match self.ring.poll(timeout) {
            // A signal (Ctrl-C) arrived: the stop flag says what to do.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => Ok(()),
            r => r.context("poll the event ring buffers"),
        }
    }

    /// Hands what arrived to the tracker.
    fn deliver(&self, tracker: &mut Tracker, procs: &procs::ProcsSkel<'_>) {
        for e in self.procs.borrow_mut().drain(..) {
            tracker.on_event(&e);
        }
        for e in self.layouts.borrow_mut().drain(..) {
            tracker.on_layout(&e, &procs.maps.layouts);
        }
    }
}

/// Records `target` as `opts` says until `stop` is set, the duration runs
/// out or the target exits (with `opts.subprocesses`, once every recorded
/// process has). `on_ready` runs once everything is attached (the launcher
/// lets the program start then); `on_tick` gets live figures about ten
/// times a second, with a function that reads a profile of what was
/// recorded so far (without kernel frame names), for a live view.
pub fn record(
    target: &Target,
    opts: &Options,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
    mut on_tick: impl FnMut(&Progress, &mut dyn FnMut() -> Result<Profile>),
) -> Result<Profile> {
    opts.check()?;
    kernel::kernel().require_ringbuf()?;
    let pid = target.pid;
    // A root without pyusdt (a shell) is recorded for its children.
    let l = if target.has_pyusdt() {
        Some(layout::receive(target, Duration::from_secs(10))?)
    } else {
        if opts.span.is_some() {
            return Err(target::needs_pyusdt("record --span", target));
        }
        // A Python without pyusdt: its layout found from outside. A root
        // that is not Python (a shell), or not yet, is recorded for its
        // children.
        match derive::derive(pid) {
            Ok(Some(l)) => Some(l),
            // Launched: found as its interpreter starts.
            Ok(None) if !opts.attached => None,
            _ if opts.subprocesses => None,
            Ok(None) => return Err(derive::not_started(pid)),
            Err(e) => {
                return Err(e.context(format!(
                    "record process {pid} ({}), which runs Python without pyusdt",
                    target.comm
                )))
            }
        }
    };
    let mut storage: [MaybeUninit<OpenObject>; SLOTS] =
        std::array::from_fn(|_| MaybeUninit::uninit());
    let mut slots = storage.iter_mut();
    let mut o = load(&mut slots, target, opts, l.as_ref())?;
    let events = Events::watch(&o.procs, &o.layout)?;
    let command = target::command_line(pid).unwrap_or_default();
    let mut tracker = Tracker::new(pid, command, l, target.has_pyusdt());
    // Children started before the recording (a shell's) are followed too;
    // those started from now on the procs object enters itself.
    if opts.subprocesses {
        tracker.adopt(pid, &o.procs.maps.targets);
    }
    tracker.listen_to_names(&o.layout);
    // The views that attach per process attach to the target now, before
    // it starts (a launched program waits for on_ready).
    for v in &mut o.views {
        v.watch(&tracker.python(), pid);
    }
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let meta_at = |d: Duration, end_monotonic_ns: u64| Meta {
        pid,
        follow: opts.subprocesses,
        python: l.as_ref().map(layout::python_version).unwrap_or_default(),
        start_unix_ns,
        duration_ns: d.as_nanos() as u64,
        freq: opts.freq,
        lines: opts.lines,
        end_monotonic_ns,
        span: opts.span.clone(),
    };
    let started = Instant::now();
    // A process that ran before: the waits it is in count from now.
    if let (true, Some(l)) = (opts.attached, &l) {
        let now = monotonic_ns();
        for v in &o.views {
            v.open_waits(pid, l, now, opts.lines);
        }
    }
    on_ready();
    let mut threads = BTreeMap::new();
    let mut ticks = 0u32;
    let tick = Duration::from_millis(100);
    let mut next_tick = Instant::now();
    // A program just exec'd that runs Python without pyusdt cannot wait
    // for the recorder: its layout is looked for every few milliseconds,
    // to be found as its interpreter starts, before its first line.
    let soon = Duration::from_millis(3);
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let deriving = tracker.deriving();
        events.poll(if deriving { wait.min(soon) } else { wait })?;
        events.deliver(&mut tracker, &o.procs);
        if Instant::now() < next_tick {
            if deriving {
                find_layouts(&mut tracker, &o.layout, &o.procs, &mut o.views, pid);
            }
            continue;
        }
        next_tick += tick;
        let elapsed = started.elapsed();
        if !target.alive() {
            if let Some(p) = tracker.procs.get_mut(&pid) {
                p.alive = false;
            }
        }
        find_layouts(&mut tracker, &o.layout, &o.procs, &mut o.views, pid);
        tracker.listen_to_names(&o.layout);
        let mut live = LiveThreads::default();
        for v in &mut o.views {
            v.tick(&mut live);
        }
        // Threads are named from /proc once a second, not at every tick:
        // reading every thread's name at every tick cost the recorder 6%
        // of a core with a process of 1,000 threads. Those that exited
        // since are named as they exited.
        if ticks % NAME_TICKS == 0 {
            for (&p, _) in tracker.procs.iter().filter(|(_, f)| f.alive) {
                proc_threads(p, &mut threads);
            }
            // A map that cannot be read keeps its names: it may fill,
            // and threads that follow go unnamed.
            let _ = move_exited_names(&o.procs.maps.comms, &mut threads);
        }
        ticks += 1;
        let running = tracker.live();
        let objects = Objects {
            procs: &o.procs,
            views: &o.views,
            span: o.span.as_ref().map(|(s, _)| s),
            layout: &o.layout,
        };
        let progress = Progress::from_counters(elapsed, running, &counters(&o.views));
        let mut snapshot = || {
            build_profile(
                &objects,
                &tracker,
                threads.clone(),
                &meta_at(elapsed, monotonic_ns()),
                false,
            )
        };
        on_tick(&progress, &mut snapshot);
        if running == 0
            || stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| elapsed >= d)
        {
            break;
        }
    }
    // The end of the window: waits still open then count up to it.
    let ended = monotonic_ns();
    let duration = started.elapsed();
    for (&p, f) in &tracker.procs {
        if let Some(l) = &f.layout {
            for v in &o.views {
                v.close_waits(p, l, opts.lines);
            }
        }
    }

    // Detach everything before reading: the counts stop moving.
    drop(std::mem::take(&mut o.procs_links));
    for v in &mut o.views {
        v.detach();
    }
    if let Some((_, links)) = &mut o.span {
        links.clear();
    }
    events.deliver(&mut tracker, &o.procs);
    for (&p, f) in &mut tracker.procs {
        f.asking = None;
        f.naming = None;
        if target::command_line(p).is_some() {
            proc_threads(p, &mut threads);
        }
    }
    move_exited_names(&o.procs.maps.comms, &mut threads)?;
    let objects = Objects {
        procs: &o.procs,
        views: &o.views,
        span: o.span.as_ref().map(|(s, _)| s),
        layout: &o.layout,
    };
    build_profile(&objects, &tracker, threads, &meta_at(duration, ended), true)
}
