//! Recording: load the BPF programs of the chosen views, attach them to
//! the target, count in the kernel until told to stop, then turn the
//! counts into a [`Profile`] with every frame named.
//!
//! Each view is one BPF object (`bpf/cpu.bpf.c`, `bpf/sched.bpf.c` for
//! off-CPU and wake-ups, `bpf/syscall.bpf.c`), all sharing the Python frame
//! walker of `bpf/pyframe.bpf.h`. The BPF side reads each code object's
//! names the first time a stack holds it, so that names resolve even when
//! the target exits before the recording ends.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder};

use crate::bpf::{calls, cpu, gil, procs, sched, span, syscall};
use crate::ksym::KernelSymbolizer;
use crate::layout::{self, Layout};
use crate::profile::{Process, Profile, Sample, SpanSummary, View, ViewKind, FORMAT, VERSION};
use crate::pyname::{self, Namer};
use crate::target::{self, Lookup, Target};
use crate::{syscalls, Result};

/// Why some detail was dropped because a map was full, as
/// [`Profile::walk_errors`] names it.
pub const LOST_STACKS: &str = "Python stack map full";
/// See [`LOST_STACKS`].
pub const LOST_NAMES: &str = "code name map full";
/// See [`LOST_STACKS`].
pub const LOST_KERNEL_STACKS: &str = "kernel stack map full or colliding";
/// Children not followed because the process table was full.
pub const LOST_CHILDREN: &str = "children not followed (process table full)";
/// Calls whose return the calls view did not see (it ended them with
/// their caller's).
pub const MISSED_EXITS: &str = "calls ended without their return";
/// Process events the recorder did not hear of (ring buffer full).
pub const LOST_PROCESS_EVENTS: &str = "process events lost";

/// The frame a cpu sample ends in (before any kernel frames) when the
/// thread was waiting for the GIL (with the gil view recorded).
pub const GIL_WAIT_FRAME: &str = "[waiting for the GIL]";

/// The name of the pyusdt extension's poll thread, left out of profiles.
pub const POLL_THREAD: &str = "pyusdt-poll";

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

/// Reads a counter that BPF updates in place.
pub(crate) fn live(v: &u64) -> u64 {
    // SAFETY: `v` points into the object's mmapped .bss, which BPF
    // programs update concurrently: read it as memory that may change.
    unsafe { std::ptr::read_volatile(v) }
}

/// Opens the cpu-clock event on `cpu` at `freq` samples a second.
fn open_cpu_clock(cpu: i32, freq: u64) -> std::io::Result<OwnedFd> {
    let mut attr = libbpf_sys::perf_event_attr {
        type_: libbpf_sys::PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32,
        config: u64::from(libbpf_sys::PERF_COUNT_SW_CPU_CLOCK),
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_freq = freq;
    attr.set_freq(1);
    // SAFETY: `attr` is a valid perf_event_attr; the other arguments are
    // plain integers (every process, one CPU, no group).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1,
            cpu,
            -1,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The CPUs that are online.
fn online_cpus() -> Result<Vec<i32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("read /sys/devices/system/cpu/online")?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (i32, i32) = (a.parse()?, b.parse()?);
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// Gives a loaded object the target's layout.
fn put_layout(map: &impl MapCore, pid: u32, l: &Layout) -> Result<()> {
    // SAFETY: Layout is plain C data without padding (tests/layout_twin.rs).
    let bytes = unsafe { plain::as_bytes(l) };
    map.update(&pid.to_ne_bytes(), bytes, MapFlags::ANY)
        .context("give a BPF program the target's layout")
}

/// What every view's object takes from the procs object: the process
/// table and the layouts, shared, so that a process the procs object adds
/// is recorded by every view at once.
#[derive(Clone, Copy)]
struct Shared<'a> {
    pid: u32,
    follow: bool,
    targets: BorrowedFd<'a>,
    layouts: BorrowedFd<'a>,
    gil_waits: BorrowedFd<'a>,
    span_threads: BorrowedFd<'a>,
    lines: bool,
    span: bool,
}

/// Points an open object at the shared maps and the recorded process.
macro_rules! share {
    ($open:expr, $shared:expr, $what:literal) => {{
        let ro = $open
            .maps
            .rodata_data
            .as_deref_mut()
            .context(concat!($what, " have no rodata"))?;
        ro.target_tgid = $shared.pid;
        ro.follow = u8::from($shared.follow);
        ro.with_lines = u8::from($shared.lines);
        ro.span_only = u8::from($shared.span);
        if !$shared.lines {
            $open
                .maps
                .code_lines
                .set_max_entries(1)
                .context("shrink the unused line table map")?;
        }
        $open
            .maps
            .targets
            .reuse_fd($shared.targets)
            .context("share the process table")?;
        $open
            .maps
            .layouts
            .reuse_fd($shared.layouts)
            .context("share the layouts")?;
        $open
            .maps
            .gil_waits
            .reuse_fd($shared.gil_waits)
            .context("share the GIL waits")?;
        $open
            .maps
            .span_threads
            .reuse_fd($shared.span_threads)
            .context("share the threads inside the span")?;
    }};
}

/// Loads with tp_btf programs where the kernel offers them (and
/// PYUSDT_PROF_RAW_TP=1 does not say otherwise), else with raw_tp ones.
pub(crate) fn btf_or_raw<'o, T>(
    btf_storage: &'o mut MaybeUninit<OpenObject>,
    raw_storage: &'o mut MaybeUninit<OpenObject>,
    load: impl Fn(&'o mut MaybeUninit<OpenObject>, bool) -> Result<T>,
) -> Result<T> {
    // PYUSDT_PROF_RAW_TP=1 skips tp_btf, to exercise the raw_tp programs
    // on a kernel that has both.
    let btf = if std::env::var_os("PYUSDT_PROF_RAW_TP").is_none_or(|v| v != "1") {
        load(btf_storage, true)
    } else {
        Err(anyhow::anyhow!("tp_btf skipped (PYUSDT_PROF_RAW_TP=1)"))
    };
    match btf {
        Ok(t) => Ok(t),
        Err(e) => {
            load(raw_storage, false).map_err(|raw| raw.context(format!("and with tp_btf: {e:#}")))
        }
    }
}

/// Attaches the tp_btf program of a tracepoint, or its raw_tp twin.
pub(crate) fn attach_tp(
    btf: bool,
    btf_prog: &libbpf_rs::ProgramMut<'_>,
    raw_prog: &libbpf_rs::ProgramMut<'_>,
    tracepoint: &str,
) -> Result<Link> {
    let prog = if btf { btf_prog } else { raw_prog };
    prog.attach()
        .with_context(|| format!("attach to {tracepoint}"))
}

/// The procs object: owns the process table and the layouts, and with
/// `follow` adds each child of a recorded process to them. Exec is watched
/// either way: a process that execs loses its layout until the new program
/// announces one.
pub(crate) fn load_procs<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    pid: u32,
    l: &Layout,
    follow: bool,
    btf: bool,
) -> Result<(procs::ProcsSkel<'o>, Vec<Link>)> {
    let mut open = procs::ProcsSkelBuilder::default()
        .open(storage)
        .context("open the process tracker")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the process tracker has no rodata")?;
    ro.target_tgid = pid;
    ro.follow = u8::from(follow);
    let p = &mut open.progs;
    p.exec_btf.set_autoload(btf);
    p.exec_raw.set_autoload(!btf);
    p.fork_btf.set_autoload(btf && follow);
    p.fork_raw.set_autoload(!btf && follow);
    p.exit_btf.set_autoload(btf && follow);
    p.exit_raw.set_autoload(!btf && follow);
    let skel = open.load().context("load the process tracker")?;
    skel.maps
        .targets
        .update(&pid.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
        .context("enter the target in the process table")?;
    put_layout(&skel.maps.layouts, pid, l)?;
    let p = &skel.progs;
    let mut links = vec![attach_tp(
        btf,
        &p.exec_btf,
        &p.exec_raw,
        "sched_process_exec",
    )?];
    if follow {
        links.push(attach_tp(
            btf,
            &p.fork_btf,
            &p.fork_raw,
            "sched_process_fork",
        )?);
        links.push(attach_tp(
            btf,
            &p.exit_btf,
            &p.exit_raw,
            "sched_process_exit",
        )?);
    }
    Ok((skel, links))
}

/// Attaches a perf_event program to the cpu-clock event of every online
/// CPU at `freq` samples a second.
pub fn attach_sampler(prog: &libbpf_rs::ProgramMut<'_>, freq: u64) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    for c in online_cpus()? {
        let fd = open_cpu_clock(c, freq)
            .with_context(|| format!("open the cpu-clock event on CPU {c}"))?;
        let link = prog
            .attach_perf_event(fd.as_raw_fd())
            .with_context(|| format!("attach the CPU sampler on CPU {c}"))?;
        // The link owns the event now: libbpf closes it with the link.
        let _ = fd.into_raw_fd();
        links.push(link);
    }
    Ok(links)
}

fn load_cpu<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    freq: u64,
) -> Result<(cpu::CpuSkel<'o>, Vec<Link>)> {
    let mut open = cpu::CpuSkelBuilder::default()
        .open(storage)
        .context("open the CPU sampler")?;
    share!(open, shared, "the CPU sampler");
    let skel = open.load().context("load the CPU sampler")?;
    let links = attach_sampler(&skel.progs.on_cpu_sample, freq)?;
    Ok((skel, links))
}

fn load_sched<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    btf: bool,
    wakeups: bool,
) -> Result<(sched::SchedSkel<'o>, Vec<Link>)> {
    let mut open = sched::SchedSkelBuilder::default()
        .open(storage)
        .context("open the scheduler programs")?;
    share!(open, shared, "the scheduler programs");
    let p = &mut open.progs;
    p.switch_btf.set_autoload(btf);
    p.switch_raw.set_autoload(!btf);
    p.wakeup_btf.set_autoload(btf && wakeups);
    p.wakeup_raw.set_autoload(!btf && wakeups);
    p.wakeup_new_btf.set_autoload(btf && wakeups);
    p.wakeup_new_raw.set_autoload(!btf && wakeups);
    let skel = open.load().context("load the scheduler programs")?;
    let p = &skel.progs;
    let mut links = vec![attach_tp(
        btf,
        &p.switch_btf,
        &p.switch_raw,
        "sched_switch",
    )?];
    if wakeups {
        links.push(attach_tp(
            btf,
            &p.wakeup_btf,
            &p.wakeup_raw,
            "sched_waking",
        )?);
        links.push(attach_tp(
            btf,
            &p.wakeup_new_btf,
            &p.wakeup_new_raw,
            "sched_wakeup_new",
        )?);
    }
    Ok((skel, links))
}

fn load_syscall<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    btf: bool,
) -> Result<(syscall::SyscallSkel<'o>, Vec<Link>)> {
    let mut open = syscall::SyscallSkelBuilder::default()
        .open(storage)
        .context("open the syscall programs")?;
    // The shared walker brings a kernel stack map that syscalls do not use.
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the syscall programs");
    let p = &mut open.progs;
    p.enter_btf.set_autoload(btf);
    p.exit_btf.set_autoload(btf);
    p.enter_raw.set_autoload(!btf);
    p.exit_raw.set_autoload(!btf);
    let skel = open.load().context("load the syscall programs")?;
    let p = &skel.progs;
    let links = vec![
        attach_tp(btf, &p.enter_btf, &p.enter_raw, "raw_syscalls:sys_enter")?,
        attach_tp(btf, &p.exit_btf, &p.exit_raw, "raw_syscalls:sys_exit")?,
    ];
    Ok((skel, links))
}

fn load_gil<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
) -> Result<gil::GilSkel<'o>> {
    let mut open = gil::GilSkelBuilder::default()
        .open(storage)
        .context("open the GIL probes")?;
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the GIL probes");
    open.load().context("load the GIL probes")
}

/// Attaches the GIL probes to process `pid`'s interpreter, or says why
/// they cannot be (no interpreter file, or one without the symbols).
fn attach_gil(skel: &gil::GilSkel<'_>, pid: u32) -> Result<Vec<Link>> {
    let file = target::interpreter_file(pid)
        .with_context(|| format!("process {pid} maps no python or libpython file"))?;
    let probe = |prog: &libbpf_rs::ProgramMut<'_>, func: &str, ret: bool| {
        let opts = libbpf_rs::UprobeOpts {
            func_name: Some(func.to_string()),
            retprobe: ret,
            ..Default::default()
        };
        prog.attach_uprobe_with_opts(pid as i32, &file, 0, opts)
            .with_context(|| {
                format!(
                    "{} has no symbol {func} (a stripped interpreter): the GIL cannot be \
                     watched there",
                    file.display()
                )
            })
    };
    let p = &skel.progs;
    Ok(vec![
        probe(&p.take_gil_enter, "take_gil", false)?,
        probe(&p.take_gil_return, "take_gil", true)?,
        probe(&p.drop_gil_enter, "drop_gil", false)?,
    ])
}

/// The calls view's object (`record --exact`), attached to the target's
/// `pyusdt:calls`: attaching raises its semaphore, the extension turns the
/// per-call events on, and each thread hands over its calls in batches
/// (pyext/src/calls.rs); sched_switch reads what a thread leaving the CPU
/// wrote since.
fn load_calls<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    target: &Target,
    btf: bool,
) -> Result<(calls::CallsSkel<'o>, Vec<Link>)> {
    let mut open = calls::CallsSkelBuilder::default()
        .open(storage)
        .context("open the call tracer")?;
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the call tracer");
    let p = &mut open.progs;
    p.thread_exit_btf.set_autoload(btf);
    p.thread_exit_raw.set_autoload(!btf);
    p.switch_btf.set_autoload(btf);
    p.switch_raw.set_autoload(!btf);
    let skel = open.load().context("load the call tracer")?;
    let p = &skel.progs;
    let mut links = vec![
        attach_tp(
            btf,
            &p.thread_exit_btf,
            &p.thread_exit_raw,
            "sched_process_exit",
        )?,
        attach_tp(btf, &p.switch_btf, &p.switch_raw, "sched_switch")?,
    ];
    let path = target.extension_path();
    links.push(
        p.on_calls
            .attach_usdt(target.pid as i32, &path, "pyusdt", "calls")
            .with_context(|| {
                format!(
                    "attach to pyusdt:calls in {} (a pyusdt older than this pyusdt-prof \
                     has no such probe: rebuild it)",
                    path.display()
                )
            })?,
    );
    Ok((skel, links))
}

/// The span follower (`record --span NAME`), attached to the target's
/// `pyusdt:span_begin` and `span_end`: it keeps each thread's depth inside
/// span `name` where every view's handler looks, and the spans' times.
fn load_span<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    shared: Shared<'_>,
    target: &Target,
    name: &str,
) -> Result<(span::SpanSkel<'o>, Vec<Link>)> {
    let mut open = span::SpanSkelBuilder::default()
        .open(storage)
        .context("open the span follower")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the span follower has no rodata")?;
    ro.target_tgid = shared.pid;
    ro.follow = u8::from(shared.follow);
    for (d, s) in ro.span_name.iter_mut().zip(name.bytes()) {
        *d = s as _;
    }
    open.maps
        .targets
        .reuse_fd(shared.targets)
        .context("share the process table")?;
    open.maps
        .span_threads
        .reuse_fd(shared.span_threads)
        .context("share the threads inside the span")?;
    let skel = open.load().context("load the span follower")?;
    let path = target.extension_path();
    let p = &skel.progs;
    let mut links = Vec::new();
    for (prog, probe) in [(&p.span_begin, "span_begin"), (&p.span_end, "span_end")] {
        links.push(
            prog.attach_usdt(target.pid as i32, &path, "pyusdt", probe)
                .with_context(|| {
                    format!(
                        "attach to pyusdt:{probe} in {} (a pyusdt without spans: rebuild it)",
                        path.display()
                    )
                })?,
        );
    }
    Ok((skel, links))
}

/// The spans a span follower saw end.
fn span_summary(s: &span::SpanSkel<'_>, name: &str) -> Result<SpanSummary> {
    let v = s
        .maps
        .span_times
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("read the spans' times")?
        .unwrap_or_default();
    let mut h = span::types::time_hist::default();
    plain::copy_from_bytes(&mut h, &v).map_err(|_| anyhow::anyhow!("a short span time"))?;
    Ok(SpanSummary {
        name: name.to_string(),
        count: h.count,
        total_ns: h.ns,
        hist: trimmed(&h.hist),
    })
}

/// CLOCK_MONOTONIC now, in ns: the clock BPF's `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A Python stack: (code address, instruction) per frame, root first, and
/// whether the walker cut it.
pub(crate) type PyStack = (Vec<(u64, u32)>, bool);

/// A Python stack by id from a `pystacks` map: code addresses root first,
/// and whether it was truncated. Every object's map holds the one C
/// `struct pystack` (bpf/pystack.h), so one skeleton's type decodes all.
pub(crate) fn python_stack(map: &impl MapCore, id: u64) -> Result<PyStack> {
    if id == 0 {
        return Ok((Vec::new(), false));
    }
    let Some(bytes) = map
        .lookup(&id.to_ne_bytes(), MapFlags::ANY)
        .context("read a Python stack")?
    else {
        return Ok((Vec::new(), false));
    };
    let mut s = cpu::types::pystack::default();
    plain::copy_from_bytes(&mut s, &bytes)
        .map_err(|_| anyhow::anyhow!("a Python stack of {} bytes", bytes.len()))?;
    let n = (s.len as usize).min(s.frames.len());
    let mut frames: Vec<(u64, u32)> = s.frames[..n]
        .iter()
        .copied()
        .zip(s.lasti[..n].iter().copied())
        .collect();
    frames.reverse();
    Ok((frames, s.truncated != 0))
}

/// A kernel stack by id from a stack-trace map, root first.
fn kernel_stack(map: &impl MapCore, id: i32) -> Result<Vec<u64>> {
    if id < 0 {
        return Ok(Vec::new());
    }
    let Some(bytes) = map
        .lookup(&id.to_ne_bytes(), MapFlags::ANY)
        .context("read a kernel stack")?
    else {
        return Ok(Vec::new());
    };
    let mut ips: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .take_while(|&ip| ip != 0)
        .collect();
    ips.reverse();
    Ok(ips)
}

/// Every (key, value) of a hash map, decoded.
fn entries<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &(impl MapCore + ?Sized),
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for kb in map.keys() {
        let Some(vb) = map.lookup(&kb, MapFlags::ANY).context("read a count")? else {
            continue;
        };
        let (mut k, mut v) = (K::default(), V::default());
        plain::copy_from_bytes(&mut k, &kb).map_err(|_| anyhow::anyhow!("a short map key"))?;
        plain::copy_from_bytes(&mut v, &vb).map_err(|_| anyhow::anyhow!("a short map value"))?;
        out.push((k, v));
    }
    Ok(out)
}

/// A namer per recorded process, made on first use.
struct Namers {
    layouts: HashMap<u32, Option<Layout>>,
    by_pid: HashMap<u32, Namer>,
}

impl Namers {
    fn get(&mut self, pid: u32) -> &mut Namer {
        let layouts = &self.layouts;
        self.by_pid
            .entry(pid)
            .or_insert_with(|| Namer::new(pid, layouts.get(&pid).copied().flatten()))
    }
}

/// The names the BPF side read at first sight, and the thread names it
/// kept, from one object's `code_names` and `comms` maps.
fn learn_names(
    w: &Walker<'_>,
    namers: &mut Namers,
    threads: &mut BTreeMap<u32, String>,
) -> Result<()> {
    let Walker {
        code_names,
        comms,
        code_lines,
        ..
    } = *w;
    for (key, t) in entries::<cpu::types::code_key, cpu::types::code_lines>(code_lines)? {
        let n = (t.len as usize).min(t.data.len());
        namers
            .get(key.tgid)
            .learn_lines(key.code, t.data[..n].to_vec(), t.full_len);
    }
    for (key, n) in entries::<cpu::types::code_key, cpu::types::code_name>(code_names)? {
        namers.get(key.tgid).learn(key.code, code_name(&n));
    }
    for (tid, c) in entries::<u32, cpu::types::comm_value>(comms)? {
        threads.insert(tid, comm_str(&c.comm));
    }
    Ok(())
}

/// A code object's names as the BPF side read them, as profiles name a
/// Python frame: `qualname (file:firstline)`.
pub(crate) fn code_name(n: &cpu::types::code_name) -> String {
    let q = &n.qualname[..(n.qualname_len as usize).min(n.qualname.len())];
    let f = &n.filename[..(n.filename_len as usize).min(n.filename.len())];
    let bytes = |s: &[i8]| s.iter().map(|&b| b as u8).collect::<Vec<u8>>();
    format!(
        "{} ({}:{})",
        pyname::decode(&bytes(q), n.qualname_kind),
        pyname::decode(&bytes(f), n.filename_kind),
        n.firstlineno
    )
}

/// Thread names of `pid` from /proc.
fn proc_threads(pid: u32, into: &mut BTreeMap<u32, String>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(c) = std::fs::read_to_string(e.path().join("comm")) {
            into.insert(tid, c.trim_end().to_string());
        }
    }
}

pub(crate) fn comm_str(c: &[i8]) -> String {
    let bytes: Vec<u8> = c
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A stack as the maps hold it, before anything is named.
struct RawSample {
    pid: u32,
    tid: u32,
    /// Code addresses, root first, and whether the walker cut the stack.
    python: PyStack,
    /// What follows the Python frames.
    tail: Tail,
    value: u64,
    count: u64,
    /// Log2 histogram of the events' durations, if the view keeps one.
    hist: Vec<u64>,
    /// A CPU sample taken while the thread waited for the GIL.
    gil_wait: bool,
}

/// A histogram as the profile keeps it: without its trailing empty slots.
fn trimmed(hist: &[u32]) -> Vec<u64> {
    let used = hist.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
    hist[..used].iter().map(|&n| u64::from(n)).collect()
}

/// What a view puts after a thread's Python frames.
enum Tail {
    /// Kernel instruction pointers, root first.
    Kernel(Vec<u64>),
    /// A syscall number.
    Syscall(i64),
    /// The waker's frame name, its process and its Python stack.
    Waker(String, u32, PyStack),
    /// Nothing: the Python frames are the whole stack.
    None,
}

/// A view as the maps hold it.
struct RawView {
    kind: ViewKind,
    events: u64,
    lost: u64,
    unavailable: Option<String>,
    samples: Vec<RawSample>,
}

fn cpu_samples(s: &cpu::CpuSkel<'_>) -> Result<Vec<RawSample>> {
    let mut out = Vec::new();
    for (k, count) in entries::<cpu::types::cpu_key, u64>(&s.maps.cpu_samples)? {
        out.push(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&s.maps.pystacks, k.pystack)?,
            tail: Tail::Kernel(kernel_stack(&s.maps.kstacks, k.kstack)?),
            value: count,
            count,
            hist: Vec::new(),
            gil_wait: k.flags & cpu::CPU_F_GIL_WAIT != 0,
        });
    }
    Ok(out)
}

fn offcpu_samples(s: &sched::SchedSkel<'_>) -> Result<Vec<RawSample>> {
    let mut out = Vec::new();
    for (k, v) in entries::<sched::types::offcpu_key, sched::types::time_hist>(&s.maps.offcpu)? {
        out.push(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&s.maps.pystacks, k.pystack)?,
            tail: Tail::Kernel(kernel_stack(&s.maps.kstacks, k.kstack)?),
            value: v.ns,
            count: v.count,
            hist: trimmed(&v.hist),
            gil_wait: false,
        });
    }
    Ok(out)
}

fn wakeup_samples(
    s: &sched::SchedSkel<'_>,
    recorded: &BTreeSet<u32>,
    threads: &BTreeMap<u32, String>,
) -> Result<Vec<RawSample>> {
    let mut out = Vec::new();
    for (k, v) in entries::<sched::types::wakeup_key, sched::types::time_value>(&s.maps.wakeups)? {
        let waker = if k.waker_tgid == 0 {
            "waker [kernel]".to_string()
        } else if recorded.contains(&k.waker_tgid) {
            let name = threads
                .get(&k.waker_tid)
                .cloned()
                .unwrap_or_else(|| comm_str(&k.waker_comm));
            if k.waker_tgid == k.tgid {
                format!("waker thread {name} ({})", k.waker_tid)
            } else {
                format!(
                    "waker thread {name} ({}) of process {}",
                    k.waker_tid, k.waker_tgid
                )
            }
        } else {
            format!(
                "waker {} ({}) of process {}",
                comm_str(&k.waker_comm),
                k.waker_tid,
                k.waker_tgid
            )
        };
        out.push(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&s.maps.pystacks, k.pystack)?,
            tail: Tail::Waker(
                waker,
                k.waker_tgid,
                python_stack(&s.maps.pystacks, k.waker_pystack)?,
            ),
            value: v.ns,
            count: v.count,
            hist: Vec::new(),
            gil_wait: false,
        });
    }
    Ok(out)
}

fn gil_samples(s: &gil::GilSkel<'_>, threads: &BTreeMap<u32, String>) -> Result<Vec<RawSample>> {
    let mut out = Vec::new();
    for (k, v) in entries::<gil::types::gil_key, gil::types::time_hist>(&s.maps.gil)? {
        let holder = if k.holder_tid == 0 {
            "GIL held by [unknown]".to_string()
        } else if k.holder_tid == k.tid {
            "GIL held by nobody (free)".to_string()
        } else {
            let name = threads.get(&k.holder_tid).map_or("?", String::as_str);
            format!("GIL held by thread {name} ({})", k.holder_tid)
        };
        out.push(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&s.maps.pystacks, k.pystack)?,
            tail: Tail::Waker(
                holder,
                k.tgid,
                python_stack(&s.maps.pystacks, k.holder_pystack)?,
            ),
            value: v.ns,
            count: v.count,
            hist: trimmed(&v.hist),
            gil_wait: false,
        });
    }
    Ok(out)
}

fn syscall_samples(s: &syscall::SyscallSkel<'_>) -> Result<Vec<RawSample>> {
    let mut out = Vec::new();
    for (k, v) in
        entries::<syscall::types::syscall_key, syscall::types::time_hist>(&s.maps.syscalls)?
    {
        out.push(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&s.maps.pystacks, k.pystack)?,
            tail: Tail::Syscall(k.nr),
            value: v.ns,
            count: v.count,
            hist: trimmed(&v.hist),
            gil_wait: false,
        });
    }
    Ok(out)
}

/// The calls view's call paths. With `open_until`, frames still running
/// then (a recording stopped with -d or Ctrl-C) count their time up to it.
fn calls_samples(s: &calls::CallsSkel<'_>, open_until: Option<u64>) -> Result<Vec<RawSample>> {
    let mut nodes: HashMap<u64, calls::types::call_node> =
        entries::<u64, calls::types::call_node>(&s.maps.call_nodes)?
            .into_iter()
            .collect();
    if let Some(now) = open_until {
        for (_, t) in entries::<u32, calls::types::call_thread>(&s.maps.call_threads)? {
            let kept = (t.depth as usize).min(t.frames.len());
            // From the innermost frame out: each one's time includes the
            // one it called.
            let mut inner = 0u64;
            for f in t.frames[..kept].iter().rev() {
                if f.start_ns == 0 || f.start_ns > now {
                    inner = 0;
                    continue;
                }
                let dur = now - f.start_ns;
                if let Some(n) = nodes.get_mut(&f.node) {
                    n.self_ns += dur.saturating_sub(f.child_ns + inner);
                }
                inner = dur;
            }
        }
    }
    let mut out = Vec::new();
    for n in nodes.values() {
        if n.calls == 0 && n.self_ns == 0 {
            continue; // a frame that ran before the recording, with no time of its own
        }
        let mut codes = Vec::new();
        let mut at = Some(n);
        let mut truncated = false;
        while let Some(node) = at {
            codes.push((node.code, pyname::LASTI_NONE));
            if node.parent == 0 {
                break;
            }
            at = nodes.get(&node.parent);
            if at.is_none() || codes.len() > calls::CALLS_MAX_DEPTH {
                truncated = true; // a caller's node was lost (map full)
                break;
            }
        }
        codes.reverse();
        out.push(RawSample {
            pid: n.tgid,
            tid: n.tid,
            python: (codes, truncated),
            tail: Tail::None,
            value: n.self_ns,
            count: n.calls,
            hist: trimmed(&n.hist),
            gil_wait: false,
        });
    }
    Ok(out)
}

/// Names every frame of every view (kernel symbols in one batch) into a
/// frame table and the views' stacks.
fn name_views(
    raw: Vec<RawView>,
    namers: &mut Namers,
    kernel_names: bool,
    lines: bool,
) -> (Vec<String>, Vec<View>, Vec<u32>) {
    let mut ips: Vec<u64> = raw
        .iter()
        .flat_map(|v| &v.samples)
        .filter_map(|s| match &s.tail {
            Tail::Kernel(ips) => Some(ips.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    ips.sort_unstable();
    ips.dedup();
    let names = if kernel_names {
        KernelSymbolizer::new().symbolize(&ips)
    } else {
        ips.iter().map(|ip| format!("{ip:#x}")).collect()
    };
    let mut frames = Frames {
        names: Vec::new(),
        index: HashMap::new(),
        kernel: ips.into_iter().zip(names).collect(),
        lines,
        function_of: HashMap::new(),
    };
    let views = raw
        .into_iter()
        .map(|v| View {
            kind: v.kind,
            unit: v.kind.unit(),
            events: v.events,
            lost: v.lost,
            unavailable: v.unavailable,
            samples: v
                .samples
                .into_iter()
                .map(|s| {
                    let mut stack = Vec::new();
                    frames.python(namers.get(s.pid), &s.python.0, s.python.1, &mut stack);
                    if s.gil_wait {
                        stack.push(frames.id(GIL_WAIT_FRAME));
                    }
                    match &s.tail {
                        Tail::Kernel(ips) => frames.kernel(ips, &mut stack),
                        Tail::Syscall(nr) => stack.push(frames.id(&syscalls::label(*nr))),
                        Tail::Waker(name, pid, (codes, truncated)) => {
                            stack.push(frames.id(name));
                            frames.python(namers.get(*pid), codes, *truncated, &mut stack);
                        }
                        Tail::None => {}
                    }
                    Sample {
                        pid: s.pid,
                        tid: s.tid,
                        stack,
                        value: s.value,
                        count: s.count,
                        hist: s.hist,
                    }
                })
                .collect(),
        })
        .collect();
    // With lines: every frame's function frame (itself, for the others).
    let function_of = if lines {
        (0..frames.names.len() as u32)
            .map(|i| frames.function_of.get(&i).copied().unwrap_or(i))
            .collect()
    } else {
        Vec::new()
    };
    (frames.names, views, function_of)
}

/// The program's frames of a Python stack (root first) whose functions
/// `function` names: those after the launcher's (runpy and pyusdt's own
/// `__main__`, which `python -m pyusdt` adds under every program), and
/// without pyusdt's own wrappers (the `@pyusdt.span` decorator).
pub(crate) fn program_frames<'a, T>(
    frames: &'a [T],
    function: impl Fn(&T) -> &str + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    let start = frames
        .iter()
        .rposition(|f| function(f).contains("/pyusdt/__main__.py:"))
        .map_or(0, |i| i + 1);
    frames[start..]
        .iter()
        .filter(move |f| !function(f).contains("/pyusdt/__init__.py:"))
}

/// Interns frame names and builds stacks.
struct Frames {
    names: Vec<String>,
    index: HashMap<String, u32>,
    kernel: HashMap<u64, String>,
    /// Name Python frames by line.
    lines: bool,
    /// A line frame's function frame.
    function_of: HashMap<u32, u32>,
}

impl Frames {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
    }

    /// The Python part of a stack: launcher frames (runpy and pyusdt's
    /// own `__main__`, which `python -m pyusdt` adds under every program)
    /// left out, `[truncated]` first if the walker cut it.
    /// With `lines`, each frame is named by its current line and its
    /// function is noted in `function_of`.
    fn python(
        &mut self,
        namer: &mut Namer,
        codes: &[(u64, u32)],
        truncated: bool,
        out: &mut Vec<u32>,
    ) {
        let names: Vec<(String, String)> = codes
            .iter()
            .map(|&(c, lasti)| {
                let function = namer.name(c).to_string();
                let line = if self.lines {
                    namer.line_name(c, lasti)
                } else {
                    function.clone()
                };
                (line, function)
            })
            .collect();
        if truncated {
            out.push(self.id("[truncated]"));
        }
        for (line, function) in program_frames(&names, |(_, f)| f) {
            let id = self.id(line);
            if self.lines && line != function {
                let f = self.id(function);
                self.function_of.insert(id, f);
            }
            out.push(id);
        }
    }

    /// Kernel frames, root first, without the recorder's own at the leaf
    /// (the BPF program and the tracepoint trampoline that ran it).
    fn kernel(&mut self, ips: &[u64], out: &mut Vec<u32>) {
        let names: Vec<String> = ips
            .iter()
            .map(|ip| {
                self.kernel
                    .get(ip)
                    .cloned()
                    .unwrap_or_else(|| format!("{ip:#x}"))
            })
            .collect();
        let ours = |n: &str| {
            n.starts_with("bpf_prog_")
                || n.starts_with("bpf_trace_run")
                || n.starts_with("__bpf_trace_")
        };
        let keep = names.iter().rposition(|n| !ours(n)).map_or(0, |i| i + 1);
        for name in &names[..keep] {
            out.push(self.id(&format!("{name}_[k]")));
        }
    }
}

/// A process of the recording, as the procs object and /proc tell of it.
struct Followed {
    ppid: u32,
    command: Vec<String>,
    /// Its layout, None until a program it exec'd announces one.
    layout: Option<Layout>,
    /// It exec'd a program that may load pyusdt: ask it for its layout.
    awaiting: bool,
    /// The link that asks it.
    asking: Option<Link>,
    alive: bool,
    /// The gil view's probes in its interpreter, once tried.
    gil: Option<Vec<Link>>,
}

/// Processes and their layouts, kept current from the procs object's
/// events and the layout announcements.
struct Tracker {
    procs: BTreeMap<u32, Followed>,
    /// Problems met once, to say once each.
    said: BTreeSet<String>,
}

impl Tracker {
    fn new(pid: u32, command: Vec<String>, l: Layout) -> Self {
        let first = Followed {
            ppid: 0,
            command,
            layout: Some(l),
            awaiting: false,
            asking: None,
            alive: true,
            gil: None,
        };
        Tracker {
            procs: BTreeMap::from([(pid, first)]),
            said: BTreeSet::new(),
        }
    }

    fn say_once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            eprintln!("\r\x1b[Kpyusdt-prof: {what}");
        }
    }

    fn on_event(&mut self, e: &procs::types::follow_event) {
        use procs::types::follow_event_kind as Kind;
        let comm = || vec![comm_str(&e.comm)];
        match Kind(e.kind) {
            Kind::PROC_FORK => {
                let parent = self.procs.get(&e.ppid);
                let layout = parent.and_then(|p| p.layout);
                let command = target::command_line(e.pid)
                    .or_else(|| parent.map(|p| p.command.clone()))
                    .unwrap_or_else(comm);
                self.procs.insert(
                    e.pid,
                    Followed {
                        ppid: e.ppid,
                        command,
                        layout,
                        awaiting: false,
                        asking: None,
                        alive: true,
                        gil: None,
                    },
                );
            }
            Kind::PROC_EXEC => {
                if let Some(p) = self.procs.get_mut(&e.pid) {
                    p.layout = None;
                    p.awaiting = true;
                    p.asking = None;
                    p.gil = None;
                    p.command = target::command_line(e.pid).unwrap_or_else(comm);
                }
            }
            Kind::PROC_EXIT => {
                if let Some(p) = self.procs.get_mut(&e.pid) {
                    p.alive = false;
                    p.awaiting = false;
                    p.asking = None;
                    p.gil = None;
                }
            }
            _ => {}
        }
    }

    /// Takes a layout announcement: the process's frames can be walked
    /// from now on.
    fn on_layout(&mut self, e: &layout::Event, layouts: &impl MapCore) {
        let Some(p) = self.procs.get_mut(&e.pid) else {
            return;
        };
        p.awaiting = false;
        p.asking = None;
        match layout::accept(e).and_then(|l| put_layout(layouts, e.pid, &l).map(|()| l)) {
            Ok(l) => p.layout = Some(l),
            Err(err) => self.say_once(format!("{err:#}; its Python frames are not recorded")),
        }
    }

    /// Asks each process that exec'd a program with pyusdt for its layout;
    /// stops asking one that runs a program that is not Python.
    fn ask(&mut self, skel: &crate::bpf::layout::LayoutSkel<'_>) {
        let mut problems = Vec::new();
        for (&pid, p) in &mut self.procs {
            if !p.alive || !p.awaiting || p.asking.is_some() {
                continue;
            }
            match target::lookup(pid) {
                Ok(Lookup::Ready(t)) => match layout::attach(skel, &t) {
                    Ok(link) => p.asking = Some(link),
                    Err(e) => {
                        p.awaiting = false;
                        problems.push(format!("process {pid}: {e:#}"));
                    }
                },
                Ok(Lookup::NotPython(_)) => p.awaiting = false,
                Ok(Lookup::Gone) => p.alive = false,
                // Python that may import pyusdt later: ask again.
                Ok(Lookup::WithoutPyusdt(_)) | Err(_) => {}
            }
        }
        for what in problems {
            self.say_once(what);
        }
    }

    /// Attaches the GIL probes to each live Python process that has a
    /// layout and has not had them yet. Returns why the first process's
    /// interpreter cannot be probed, if it cannot.
    fn watch_gil(&mut self, skel: &gil::GilSkel<'_>, first: u32) -> Option<String> {
        let mut why = None;
        let mut problems = Vec::new();
        for (&pid, p) in &mut self.procs {
            if !p.alive || p.layout.is_none() || p.gil.is_some() {
                continue;
            }
            p.gil = Some(match attach_gil(skel, pid) {
                Ok(links) => links,
                Err(e) => {
                    if pid == first {
                        why = Some(format!("{e:#}"));
                    } else {
                        problems.push(format!("process {pid}: {e:#}"));
                    }
                    Vec::new()
                }
            });
        }
        for what in problems {
            self.say_once(what);
        }
        why
    }

    fn live(&self) -> usize {
        self.procs.values().filter(|p| p.alive).count()
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
    if opts.views.is_empty() {
        bail!("no view to record");
    }
    if let Some(name) = &opts.span {
        if opts.views.contains(&ViewKind::Calls) {
            bail!(
                "record --span does not combine with --exact: calls are read from the \
                 threads in batches, after the span they ran in may have ended"
            );
        }
        if name.is_empty() || name.len() >= span::SPAN_NAME_LEN || name.contains('\0') {
            bail!(
                "--span {name:?}: a span name of 1 to {} bytes, without NUL",
                span::SPAN_NAME_LEN - 1
            );
        }
    }
    let pid = target.pid;
    let follow = opts.subprocesses;
    let l = layout::receive(target, Duration::from_secs(10))?;
    let want = |v| opts.views.contains(&v);
    let (mut s_procs_btf, mut s_procs_raw, mut s_layout) = (
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
    );
    let (procs, procs_links) = btf_or_raw(&mut s_procs_btf, &mut s_procs_raw, |s, btf| {
        load_procs(s, pid, &l, follow, btf)
    })?;
    let shared = Shared {
        pid,
        follow,
        targets: procs.maps.targets.as_fd(),
        layouts: procs.maps.layouts.as_fd(),
        gil_waits: procs.maps.gil_waits.as_fd(),
        span_threads: procs.maps.span_threads.as_fd(),
        lines: opts.lines,
        span: opts.span.is_some(),
    };
    let (mut s_cpu, mut s_sched_btf, mut s_sched_raw, mut s_sys_btf, mut s_sys_raw) = (
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
    );
    let cpu = if want(ViewKind::Cpu) {
        Some(load_cpu(&mut s_cpu, shared, opts.freq)?)
    } else {
        None
    };
    let wakeups = want(ViewKind::Wakeup);
    let sched = if want(ViewKind::Offcpu) || wakeups {
        Some(btf_or_raw(&mut s_sched_btf, &mut s_sched_raw, |s, btf| {
            load_sched(s, shared, btf, wakeups)
        })?)
    } else {
        None
    };
    let sys = if want(ViewKind::Syscall) {
        Some(btf_or_raw(&mut s_sys_btf, &mut s_sys_raw, |s, btf| {
            load_syscall(s, shared, btf)
        })?)
    } else {
        None
    };
    let mut s_gil = MaybeUninit::uninit();
    let gil_skel = if want(ViewKind::Gil) {
        Some(load_gil(&mut s_gil, shared)?)
    } else {
        None
    };
    let (mut s_calls_btf, mut s_calls_raw) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let calls = if want(ViewKind::Calls) {
        let python = layout::python_version(&l);
        if l.py_version_hex < 0x030c_0000 {
            bail!(
                "record --exact needs Python 3.12 or later (its calls come from \
                 sys.monitoring); process {pid} runs Python {python}"
            );
        }
        Some(btf_or_raw(&mut s_calls_btf, &mut s_calls_raw, |s, btf| {
            load_calls(s, shared, target, btf)
        })?)
    } else {
        None
    };

    let mut s_span = MaybeUninit::uninit();
    let span_skel = match &opts.span {
        Some(name) => Some(load_span(&mut s_span, shared, target, name)?),
        None => None,
    };

    // Processes come and go through one ring buffer, and the layouts that
    // exec'd programs announce through another; one poll waits on both.
    let lay = layout::open(&mut s_layout)?;
    let proc_events: Rc<RefCell<Vec<procs::types::follow_event>>> = Rc::default();
    let announced = layout::Inbox::default();
    let mut builder = RingBufferBuilder::new();
    let sink = Rc::clone(&proc_events);
    builder
        .add(&procs.maps.follow_events, move |data: &[u8]| {
            let mut e = procs::types::follow_event::default();
            if plain::copy_from_bytes(&mut e, data).is_ok() {
                sink.borrow_mut().push(e);
            }
            0
        })
        .context("watch the process events")?;
    layout::watch(&mut builder, &lay, &announced)?;
    let ring = builder.build().context("build the event ring buffers")?;

    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut tracker = Tracker::new(pid, target::command_line(pid).unwrap_or_default(), l);
    let gil_unavailable = gil_skel.as_ref().and_then(|g| tracker.watch_gil(g, pid));
    let started = Instant::now();
    on_ready();
    let mut threads = BTreeMap::new();
    let meta_at = |d: Duration| Meta {
        pid,
        follow,
        offcpu: want(ViewKind::Offcpu),
        wakeups,
        python: layout::python_version(&l),
        start_unix_ns,
        duration_ns: d.as_nanos() as u64,
        freq: opts.freq,
        gil_unavailable: gil_unavailable.clone(),
        lines: opts.lines,
        end_monotonic_ns: monotonic_ns(),
        span: opts.span.clone(),
    };
    let live_skels = Skels {
        procs: &procs,
        cpu: cpu.as_ref().map(|(s, _)| s),
        sched: sched.as_ref().map(|(s, _)| s),
        sys: sys.as_ref().map(|(s, _)| s),
        gil: gil_skel.as_ref(),
        calls: calls.as_ref().map(|(s, _)| s),
        span: span_skel.as_ref().map(|(s, _)| s),
    };
    let progress = |elapsed, processes| {
        let mut p = Progress {
            elapsed,
            processes,
            ..Default::default()
        };
        for (kind, events, lost) in counters(&live_skels, &meta_at(elapsed)) {
            p.events.insert(kind, events);
            p.lost += lost;
        }
        p
    };
    let tick = Duration::from_millis(100);
    let mut next_tick = Instant::now();
    loop {
        match ring.poll(next_tick.saturating_duration_since(Instant::now())) {
            // A signal (Ctrl-C) arrived: the stop flag says what to do.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            r => r.context("poll the event ring buffers")?,
        }
        for e in proc_events.borrow_mut().drain(..) {
            tracker.on_event(&e);
        }
        for e in announced.borrow_mut().drain(..) {
            tracker.on_layout(&e, &procs.maps.layouts);
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick += tick;
        let elapsed = started.elapsed();
        if !target.alive() {
            if let Some(p) = tracker.procs.get_mut(&pid) {
                p.alive = false;
            }
        }
        tracker.ask(&lay);
        if let Some(g) = &gil_skel {
            tracker.watch_gil(g, pid);
        }
        for (&p, _) in tracker.procs.iter().filter(|(_, f)| f.alive) {
            proc_threads(p, &mut threads);
        }
        let running = tracker.live();
        let mut snapshot = || {
            build_profile(
                &live_skels,
                &tracker,
                threads.clone(),
                &meta_at(elapsed),
                false,
            )
        };
        on_tick(&progress(elapsed, running), &mut snapshot);
        if running == 0
            || stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| elapsed >= d)
        {
            break;
        }
    }
    let duration = started.elapsed();

    // Detach everything before reading: the counts stop moving.
    drop(procs_links);
    let cpu = cpu.map(|(s, links)| {
        drop(links);
        s
    });
    let sched = sched.map(|(s, links)| {
        drop(links);
        s
    });
    let sys = sys.map(|(s, links)| {
        drop(links);
        s
    });
    let calls = calls.map(|(s, links)| {
        drop(links);
        s
    });
    let span_skel = span_skel.map(|(s, links)| {
        drop(links);
        s
    });
    for e in proc_events.borrow_mut().drain(..) {
        tracker.on_event(&e);
    }
    for (&p, f) in &mut tracker.procs {
        f.asking = None;
        if target::command_line(p).is_some() {
            proc_threads(p, &mut threads);
        }
    }

    let skels = Skels {
        procs: &procs,
        cpu: cpu.as_ref(),
        sched: sched.as_ref(),
        sys: sys.as_ref(),
        gil: gil_skel.as_ref(),
        calls: calls.as_ref(),
        span: span_skel.as_ref(),
    };
    build_profile(&skels, &tracker, threads, &meta_at(duration), true)
}

/// The loaded objects of a recording, to read a profile out of.
struct Skels<'a, 'o> {
    procs: &'a procs::ProcsSkel<'o>,
    cpu: Option<&'a cpu::CpuSkel<'o>>,
    sched: Option<&'a sched::SchedSkel<'o>>,
    sys: Option<&'a syscall::SyscallSkel<'o>>,
    gil: Option<&'a gil::GilSkel<'o>>,
    calls: Option<&'a calls::CallsSkel<'o>>,
    span: Option<&'a span::SpanSkel<'o>>,
}

/// What every object that walks Python stacks keeps beside its counts: the
/// names it read, and why walks failed.
struct Walker<'a> {
    code_names: &'a dyn MapCore,
    comms: &'a dyn MapCore,
    code_lines: &'a dyn MapCore,
    errors: [u64; 6],
}

impl Skels<'_, '_> {
    /// The walkers among the loaded objects.
    fn walkers(&self) -> Vec<Walker<'_>> {
        let mut out = Vec::new();
        macro_rules! walker {
            ($skel:expr) => {
                if let Some(s) = $skel {
                    out.push(Walker {
                        code_names: &s.maps.code_names,
                        comms: &s.maps.comms,
                        code_lines: &s.maps.code_lines,
                        errors: s
                            .maps
                            .bss_data
                            .as_deref()
                            .map_or([0; 6], |b| b.pystack_errors),
                    });
                }
            };
        }
        walker!(self.cpu);
        walker!(self.sched);
        walker!(self.sys);
        walker!(self.gil);
        walker!(self.calls);
        out
    }
}

/// What a profile says of its recording besides the counts.
struct Meta {
    pid: u32,
    follow: bool,
    offcpu: bool,
    wakeups: bool,
    python: String,
    start_unix_ns: u64,
    duration_ns: u64,
    freq: u64,
    /// Why the gil view could not be measured.
    gil_unavailable: Option<String>,
    /// Frames named by line.
    lines: bool,
    /// The monotonic clock when the counts were read: calls still running
    /// count their time up to it.
    end_monotonic_ns: u64,
    /// The span kept to (`--span`).
    span: Option<String>,
}

/// Events and losses per recorded view, as the BPF side counts them (they
/// move while the programs are attached).
fn counters(skels: &Skels<'_, '_>, meta: &Meta) -> Vec<(ViewKind, u64, u64)> {
    let mut out = Vec::new();
    if let Some(b) = skels.cpu.and_then(|s| s.maps.bss_data.as_deref()) {
        out.push((ViewKind::Cpu, live(&b.samples), live(&b.lost_samples)));
    }
    if let Some(b) = skels.sched.and_then(|s| s.maps.bss_data.as_deref()) {
        if meta.offcpu {
            out.push((ViewKind::Offcpu, live(&b.switches), live(&b.lost_offcpu)));
        }
        if meta.wakeups {
            let (events, lost) = (live(&b.wakeups_joined), live(&b.lost_wakeups));
            out.push((ViewKind::Wakeup, events, lost));
        }
    }
    if let Some(b) = skels.sys.and_then(|s| s.maps.bss_data.as_deref()) {
        out.push((ViewKind::Syscall, live(&b.calls), live(&b.lost_syscalls)));
    }
    if let Some(b) = skels.gil.and_then(|s| s.maps.bss_data.as_deref()) {
        out.push((ViewKind::Gil, live(&b.gil_waited), live(&b.lost_gil)));
    }
    if let Some(b) = skels.calls.and_then(|s| s.maps.bss_data.as_deref()) {
        let lost = live(&b.lost_nodes)
            + live(&b.lost_threads)
            + live(&b.calls_too_deep)
            + live(&b.lost_events);
        out.push((ViewKind::Calls, live(&b.calls), lost));
    }
    out
}

/// Reads the counts out of the maps (while they still move, for a live
/// view, or after detaching) and names every frame; kernel frames only
/// with `kernel_names` (symbolizing takes a while; `top` shows none).
fn build_profile(
    skels: &Skels<'_, '_>,
    tracker: &Tracker,
    mut threads: BTreeMap<u32, String>,
    meta: &Meta,
    kernel_names: bool,
) -> Result<Profile> {
    let Skels {
        procs,
        cpu,
        sched,
        sys,
        gil,
        calls,
        span,
    } = *skels;
    let (pid, follow, wakeups) = (meta.pid, meta.follow, meta.wakeups);
    // Names read by the BPF side at first sight win: they are what the
    // code objects were called when the stacks were taken.
    let mut namers = Namers {
        layouts: tracker.procs.iter().map(|(&p, f)| (p, f.layout)).collect(),
        by_pid: HashMap::new(),
    };
    let walkers = skels.walkers();
    for w in &walkers {
        learn_names(w, &mut namers, &mut threads)?;
    }

    let recorded: BTreeSet<u32> = tracker.procs.keys().copied().collect();
    let counted = counters(skels, meta);
    let view = |kind: ViewKind, samples: Vec<RawSample>| {
        let (_, events, lost) = counted
            .iter()
            .copied()
            .find(|c| c.0 == kind)
            .unwrap_or((kind, 0, 0));
        let unavailable = (kind == ViewKind::Gil)
            .then(|| meta.gil_unavailable.clone())
            .flatten();
        RawView {
            kind,
            events,
            lost,
            unavailable,
            samples,
        }
    };
    let mut raw: Vec<RawView> = Vec::new();
    if let Some(s) = &cpu {
        raw.push(view(ViewKind::Cpu, cpu_samples(s)?));
    }
    if let Some(s) = &sched {
        if meta.offcpu {
            raw.push(view(ViewKind::Offcpu, offcpu_samples(s)?));
        }
        if wakeups {
            raw.push(view(
                ViewKind::Wakeup,
                wakeup_samples(s, &recorded, &threads)?,
            ));
        }
    }
    if let Some(s) = &sys {
        raw.push(view(ViewKind::Syscall, syscall_samples(s)?));
    }
    if let Some(s) = &gil {
        raw.push(view(ViewKind::Gil, gil_samples(s, &threads)?));
    }
    if let Some(s) = &calls {
        raw.push(view(
            ViewKind::Calls,
            calls_samples(s, Some(meta.end_monotonic_ns))?,
        ));
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

    let mut walk_errors = BTreeMap::new();
    let reasons = [
        "no layout",
        "not a Python thread",
        "unreadable memory",
        LOST_STACKS,
        LOST_NAMES,
        LOST_KERNEL_STACKS,
    ];
    let mut add_errors = |e: &[u64; 6]| {
        for (r, n) in reasons.iter().zip(e) {
            *walk_errors.entry(r.to_string()).or_insert(0) += n;
        }
    };
    for w in &walkers {
        add_errors(&w.errors);
    }
    if let Some(b) = procs.maps.bss_data.as_deref() {
        if b.lost_children > 0 {
            walk_errors.insert(LOST_CHILDREN.into(), b.lost_children);
        }
        if b.lost_events > 0 {
            walk_errors.insert(LOST_PROCESS_EVENTS.into(), b.lost_events);
        }
    }
    if let Some(b) = calls.and_then(|s| s.maps.bss_data.as_deref()) {
        if b.missed_exits > 0 {
            walk_errors.insert(MISSED_EXITS.into(), b.missed_exits);
        }
    }

    let command = tracker.procs[&pid].command.clone();
    let processes = if follow {
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
                        .map(layout::python_version)
                        .unwrap_or_default(),
                };
                (p, process)
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(Profile {
        format: FORMAT.into(),
        version: VERSION,
        pid,
        command,
        python: meta.python.clone(),
        start_unix_ns: meta.start_unix_ns,
        duration_ns: meta.duration_ns,
        sample_hz: meta.freq,
        threads,
        processes,
        frames: frame_names,
        function_of,
        views,
        walk_errors,
        span: match (span, &meta.span) {
            (Some(s), Some(name)) => Some(span_summary(s, name)?),
            _ => None,
        },
    })
}
