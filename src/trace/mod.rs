//! Live events: every hit of chosen USDT probes of a process, and its
//! chosen syscalls, each with its arguments (or duration and return value)
//! and, if asked, its thread's Python stack, delivered as they happen.
//!
//! [`trace`] resolves each [`ProbeSpec`] against the USDT notes of every
//! file the process maps ([`crate::target::usdt::list`]), learns each probe's
//! argument types (the spec's own, else the file's `.pyusdt.argtypes`
//! section, else pyusdt's built-in table, else integers), and attaches the
//! one USDT program of `bpf/trace.bpf.c` to each probe with a cookie that
//! says how to read its arguments. Syscalls come from `raw_syscalls`
//! (tp_btf, or raw_tp where the kernel lacks it), filtered in the kernel to
//! the process and the chosen numbers. Events cross in a ring buffer; a
//! full one is counted as lost. Python stacks are walked in the kernel by
//! the recorder's walker (`bpf/pyframe.bpf.h`) with the layout the process
//! announced, and named as events arrive, so names resolve while the
//! target is alive: `qualname (file:firstline)`, as profiles name frames.
//!
//! The `.pyusdt.argtypes` contract: a non-allocated ELF section of that
//! name holds UTF-8 lines `provider:name:type,type,...\n`, each type `int`
//! or `str` (nothing after the second colon for a probe without
//! arguments). pyusdt's app-defined probes carry it.
//!
//! Probes are matched once, when the trace starts: a probe the process
//! loads later (an app-defined probe's object, built at its provider's
//! first use) is not traced.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use pyusdt_prof::trace::{trace, Event, ProbeSpec, TraceOptions};
//!
//! let opts = TraceOptions {
//!     probes: vec!["myapp:tick".parse::<ProbeSpec>().map_err(anyhow::Error::msg)?],
//!     syscalls: Some(vec!["write".into()]),
//!     stacks: true,
//!     duration: None,
//! };
//! let stop = AtomicBool::new(false);
//! let summary = trace(4242, &opts, &stop, || eprintln!("attached"), |e| {
//!     if let Event::Probe { name, args, stack, .. } = &e {
//!         println!("{name} {args:?} in {:?}", stack.last());
//!     }
//!     true // false stops the trace
//! })?;
//! eprintln!("{} events, {} lost", summary.events, summary.lost);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder, UsdtOpts};
use pyusdt_contract::args::ArgType;
use pyusdt_contract::probes;
use pyusdt_contract::walk::WalkError;

use crate::bpf::kernel::{self, Variant};
use crate::bpf::load::{attach_tp, btf_or_raw, load_procs};
use crate::bpf::maps::live;
use crate::bpf::procs;
use crate::bpf::trace::{types, TraceSkel, TraceSkelBuilder};
use crate::profile::pyname::Namer;
use crate::target::layout::{self, Layout};
use crate::target::{self, Lookup, Target};
use crate::Result;

mod event;
mod run;
mod spec;

pub use crate::bpf::maps::monotonic_ns;
pub use event::{ArgValue, Event};
pub use pyusdt_contract::trace::{MAX_ARGS, MAX_PROBES, STR_LEN};
pub use run::run;
pub use spec::{glob, resolve, syscall_numbers, ProbeSpec, Resolved, TraceError};

use event::{decode, Stacks};

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// The probes; each must match at least one probe of the process.
    pub probes: Vec<ProbeSpec>,
    /// None: no syscall events; Some(empty): every syscall; else the
    /// syscalls of these names.
    pub syscalls: Option<Vec<String>>,
    /// Walk the thread's Python stack at each event (needs pyusdt in the
    /// process).
    pub stacks: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// What a trace did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Events delivered.
    pub events: u64,
    /// Events lost (the ring buffer was full).
    pub lost: u64,
    /// What was attached: `provider:name(types)` per probe.
    pub probes: Vec<String>,
    /// Events whose Python stack was lost (a full stack or name map).
    pub stacks_lost: u64,
    /// Things the caller should know (a probe that cannot fire here).
    pub warnings: Vec<String>,
}

/// Opens and loads the trace object: rodata set, the walker's maps shared
/// with the procs object (if the process announced a layout), maps it
/// does not need shrunk, the syscall programs loaded only if wanted.
fn load_trace<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    pid: u32,
    shared: Option<&procs::ProcsSkel<'_>>,
    stacks: bool,
    syscalls: Option<&[i64]>,
    v: Variant,
) -> Result<(TraceSkel<'o>, Variant)> {
    let mut open = TraceSkelBuilder::default()
        .open(storage)
        .context("open the trace programs")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the trace programs have no rodata")?;
    ro.target_tgid = pid;
    ro.follow = 0;
    ro.with_lines = 0;
    ro.with_stacks = u8::from(stacks);
    ro.all_syscalls = u8::from(syscalls.is_some_and(|s| s.is_empty()));
    let m = &mut open.maps;
    m.code_lines
        .set_max_entries(1)
        .context("shrink the unused line table map")?;
    m.kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    // Every thread is traced: the span map (record --span) is not read.
    m.span_threads
        .set_max_entries(1)
        .context("shrink the unused span map")?;
    if !stacks {
        m.pystacks
            .set_max_entries(1)
            .context("shrink the unused stack map")?;
        m.code_names
            .set_max_entries(1)
            .context("shrink the unused name map")?;
    }
    match shared {
        Some(p) => {
            m.targets
                .reuse_fd(p.maps.targets.as_fd())
                .context("share the process table")?;
            m.layouts
                .reuse_fd(p.maps.layouts.as_fd())
                .context("share the layouts")?;
            m.gil_waits
                .reuse_fd(p.maps.gil_waits.as_fd())
                .context("share the GIL waits")?;
        }
        None => {
            m.gil_waits
                .set_max_entries(1)
                .context("shrink the unused GIL map")?;
        }
    }
    let sys = syscalls.is_some();
    kernel::choose_programs(open.open_object_mut(), v, |h| h == "trace_probe" || sys);
    let skel = crate::errors::loaded("load the trace programs", || open.load())?;
    if let Some(nrs) = syscalls {
        for &nr in nrs {
            skel.maps
                .syscall_wanted
                .update(&(nr as u32).to_ne_bytes(), &[1u8], MapFlags::ANY)
                .context("choose a syscall to trace")?;
        }
    }
    Ok((skel, v))
}

/// The process to trace, and whether it runs pyusdt (Python stacks need
/// Python: without pyusdt, its layout is found from outside).
fn target_of(pid: u32, stacks: bool) -> Result<(Target, bool)> {
    Ok(match target::lookup(pid)? {
        Lookup::Ready(t) => (t, true),
        Lookup::Gone => bail!("no process with PID {pid}"),
        Lookup::NotPython(comm) if stacks => bail!(
            "process {pid} ({comm}) does not run Python: Python stacks need it; trace without \
             --stacks"
        ),
        Lookup::WithoutPyusdt(comm) | Lookup::NotPython(comm) => {
            (Target::without_pyusdt(pid, comm), false)
        }
    })
}

/// Tells the trace program how to read each probe's arguments, and
/// attaches it to each probe and, with `syscalls`, to raw_syscalls.
fn attach(
    skel: &TraceSkel<'_>,
    v: Variant,
    pid: u32,
    resolved: &[Resolved],
    syscalls: bool,
) -> Result<Vec<Link>> {
    for (i, r) in resolved.iter().enumerate() {
        let conf = types::probe_conf {
            nargs: r.types.len().min(MAX_ARGS) as u32,
            str_mask: r
                .types
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == ArgType::Str)
                .fold(0, |m, (i, _)| m | (1 << i)),
        };
        // SAFETY: probe_conf is plain C data without padding.
        let bytes = unsafe { plain::as_bytes(&conf) };
        skel.maps
            .probe_confs
            .update(&(i as u32).to_ne_bytes(), bytes, MapFlags::ANY)
            .context("give the trace program a probe's arguments")?;
    }
    let mut links = Vec::new();
    let o = skel.object();
    let probe = kernel::program(o, "trace_probe", v)?;
    for (i, r) in resolved.iter().enumerate() {
        let opts = UsdtOpts {
            cookie: i as u64,
            ..Default::default()
        };
        let link = probe
            .attach_usdt_with_opts(
                pid as i32,
                target::through_root(pid, &r.file),
                &r.provider,
                &r.name,
                opts,
            )
            .with_context(|| format!("attach to {}:{} in {}", r.provider, r.name, r.file))?;
        links.push(link);
    }
    if syscalls {
        links.push(attach_tp(o, "trace_enter", v, "raw_syscalls:sys_enter")?);
        links.push(attach_tp(o, "trace_exit", v, "raw_syscalls:sys_exit")?);
    }
    Ok(links)
}

/// What to say of pyusdt's per-call probes `per_call` once everything is
/// attached: that they never fire (no sys.monitoring), or may start late.
fn per_call_warnings(
    l: &Layout,
    listener: &layout::Listener<'_>,
    per_call: &[&str],
) -> Result<Vec<String>> {
    if per_call.is_empty() {
        return Ok(Vec::new());
    }
    if l.py_version_hex < 0x030c_0000 {
        return Ok(vec![format!(
            "Python {} has no sys.monitoring: pyusdt's per-call probes ({}) never fire there",
            layout::python_version(l),
            per_call.join(", ")
        )]);
    }
    // The poll thread fires the layout probe, then turns on the probes
    // whose semaphores rose, each tick: the second announcement after the
    // attach follows a tick that saw them.
    listener.forget()?;
    if listener.wait(2, Duration::from_secs(5))?.is_none() && listener.alive() {
        return Ok(vec![
            "pyusdt's poll thread did not tick within 5s: per-call probes may start late".into(),
        ]);
    }
    Ok(Vec::new())
}

/// The trace program's records, each after its length, as they came:
/// one buffer, reused.
#[derive(Default)]
struct Queue(Rc<RefCell<Vec<u8>>>);

impl Queue {
    /// A ring buffer that fills the queue from the trace program.
    fn ring<'a>(&self, skel: &'a TraceSkel<'_>) -> Result<RingBuffer<'a>> {
        let sink = Rc::clone(&self.0);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.trace_events, move |data: &[u8]| {
                let mut q = sink.borrow_mut();
                q.extend_from_slice(&(data.len() as u32).to_ne_bytes());
                q.extend_from_slice(data);
                0
            })
            .context("watch the trace ring buffer")?;
        builder.build().context("build the trace ring buffer")
    }

    /// Hands each record, decoded, to `on_event` while it wants more;
    /// returns how many it took, and whether it wants more.
    fn deliver<M: MapCore>(
        &self,
        resolved: &[Resolved],
        stacks: &mut Stacks<'_, M>,
        on_event: &mut impl FnMut(Event) -> bool,
    ) -> (u64, bool) {
        let mut q = self.0.borrow_mut();
        let (mut rest, mut delivered, mut going) = (&q[..], 0, true);
        while going && rest.len() >= 4 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(data) = rest.get(4..4 + len) else {
                break;
            };
            rest = &rest[4 + len..];
            if let Some(e) = decode(data, resolved, stacks) {
                delivered += 1;
                going = on_event(e);
            }
        }
        q.clear();
        (delivered, going)
    }
}

/// Traces `pid` until `stop` is set, the duration runs out, the target
/// exits, or `on_event` returns false. `on_ready` runs once everything is
/// attached (and, for pyusdt's per-call probes, once the process has
/// turned them on). Events arrive in the order the kernel sent them: a
/// syscall when it returns, stamped with its entry time.
pub fn trace(
    pid: u32,
    opts: &TraceOptions,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
    mut on_event: impl FnMut(Event) -> bool,
) -> Result<TraceSummary> {
    if opts.probes.is_empty() && opts.syscalls.is_none() {
        return Err(TraceError::Nothing.into());
    }
    kernel::kernel().require_ringbuf()?;
    let nrs = opts.syscalls.as_deref().map(syscall_numbers).transpose()?;
    let resolved = resolve(pid, &opts.probes)?;
    let (target, has_pyusdt) = target_of(pid, opts.stacks)?;

    // The layout, with the link that asks for it kept until everything is
    // on: its announcements, which follow the poll thread's ticks, tell
    // when pyusdt has turned its per-call probes on. Neither stacks nor
    // per-call probes: no layout is needed (app-defined probes and spans
    // fire without pyusdt's poll thread).
    let per_call: Vec<&str> = resolved
        .iter()
        .filter(|r| r.provider == probes::PROVIDER && probes::PER_CALL.contains(&r.name.as_str()))
        .map(|r| r.name.as_str())
        .collect();
    let mut storage: [MaybeUninit<OpenObject>; 5] = std::array::from_fn(|_| MaybeUninit::uninit());
    let [s_layout, rest @ ..] = &mut storage;
    let mut slots = rest.iter_mut();
    let lay_skel;
    let mut listener = None;
    let mut l: Option<Layout> = None;
    if has_pyusdt && (opts.stacks || !per_call.is_empty()) {
        lay_skel = layout::open(s_layout)?;
        let lis = layout::Listener::attach(&lay_skel, &target)?;
        l = Some(lis.layout(Duration::from_secs(10))?);
        listener = Some(lis);
    } else if opts.stacks {
        l = Some(target::derive::derive_now(pid)?);
    }
    let procs = match &l {
        Some(l) => Some(btf_or_raw(&mut slots, |s, v| {
            load_procs(s, pid, Some(l), false, false, v)
        })?),
        None => None,
    };
    let shared = procs.as_ref().map(|(p, _)| p);
    let (skel, v) = btf_or_raw(&mut slots, |s, v| {
        load_trace(s, pid, shared, opts.stacks, nrs.as_deref(), v)
    })?;
    let links = attach(&skel, v, pid, &resolved, nrs.is_some())?;
    let warnings = match (&l, &listener) {
        (Some(l), Some(lis)) => per_call_warnings(l, lis, &per_call)?,
        _ => Vec::new(),
    };
    drop(listener);

    let queue = Queue::default();
    let ring = queue.ring(&skel)?;
    let mut stacks = Stacks::new(
        &skel.maps.pystacks,
        &skel.maps.code_names,
        Namer::new(pid, l),
    );
    let (mut delivered, mut going) = (0, true);
    let started = Instant::now();
    on_ready();
    let tick = Duration::from_millis(100);
    let mut next_check = Instant::now() + tick;
    while going {
        match ring.poll(tick) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            r => r.context("poll the trace ring buffer")?,
        }
        let (n, more) = queue.deliver(&resolved, &mut stacks, &mut on_event);
        (delivered, going) = (delivered + n, more);
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if Instant::now() >= next_check {
            next_check += tick;
            if !target.alive() {
                break;
            }
        }
    }
    // Detach, then hand over what is still in the ring buffer.
    drop(links);
    drop(procs);
    if going {
        ring.consume().context("drain the trace ring buffer")?;
        delivered += queue.deliver(&resolved, &mut stacks, &mut on_event).0;
    }
    let (lost, stacks_lost) = match skel.maps.bss_data.as_deref() {
        Some(b) => (
            live(&b.lost),
            live(&b.pystack_errors[WalkError::StacksFull as usize])
                + live(&b.pystack_errors[WalkError::NamesFull as usize]),
        ),
        None => (0, 0),
    };
    Ok(TraceSummary {
        events: delivered,
        lost,
        probes: resolved.iter().map(Resolved::label).collect(),
        stacks_lost,
        warnings,
    })
}
