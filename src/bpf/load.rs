//! The steps every BPF object of a recording shares: tp_btf or raw_tp
//! programs, the process table and layouts every view's object shares
//! with the procs object, and the CPU sampler's perf events.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use crate::bpf::kernel::{self, Variant};
use crate::bpf::procs;
use crate::target::layout::Layout;
use crate::Result;

/// Room for the BPF objects of one recording: each object's skeleton
/// borrows one slot for as long as it lives.
pub type Slots<'o> = std::slice::IterMut<'o, MaybeUninit<OpenObject>>;

/// The next free slot.
pub fn slot<'o>(slots: &mut Slots<'o>) -> Result<&'o mut MaybeUninit<OpenObject>> {
    slots.next().context("no room for another BPF object")
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

/// Gives a loaded object the target's layout.
pub fn put_layout(map: &impl MapCore, pid: u32, l: &Layout) -> Result<()> {
    // SAFETY: Layout is plain C data without padding (tests/contract_twin.rs).
    let bytes = unsafe { plain::as_bytes(l) };
    map.update(&pid.to_ne_bytes(), bytes, MapFlags::ANY)
        .context("give a BPF program the target's layout")
}

/// What every view's object takes from the procs object: the process
/// table and the layouts, shared, so that a process the procs object adds
/// is recorded by every view at once.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    /// The process the recording started with.
    pub pid: u32,
    /// Children are followed (`--subprocesses`).
    pub follow: bool,
    pub targets: BorrowedFd<'a>,
    pub layouts: BorrowedFd<'a>,
    pub gil_waits: BorrowedFd<'a>,
    pub span_threads: BorrowedFd<'a>,
    /// Frames are named by line (`--lines`).
    pub lines: bool,
    /// Only inside a span (`--span`).
    pub span: bool,
}

impl<'a> Shared<'a> {
    /// What the procs object `p` shares with every view's object.
    pub fn new(
        p: &'a procs::ProcsSkel<'_>,
        pid: u32,
        follow: bool,
        lines: bool,
        span: bool,
    ) -> Self {
        use std::os::fd::AsFd;
        Shared {
            pid,
            follow,
            targets: p.maps.targets.as_fd(),
            layouts: p.maps.layouts.as_fd(),
            gil_waits: p.maps.gil_waits.as_fd(),
            span_threads: p.maps.span_threads.as_fd(),
            lines,
            span,
        }
    }
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
        if $shared.lines {
            // Written from the scheduler and the sampler, where allocating
            // can fail: preallocated (about 8 MiB) when it is used.
            $open
                .maps
                .code_lines
                .set_map_flags(0)
                .context("preallocate the line table map")?;
        } else {
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
pub(crate) use share;

/// Loads with the variant of the programs that the kernel fits best
/// ([`kernel::Kernel::variant`]), in a slot of `slots`; when that has
/// tp_btf programs and fails, once more with raw_tp ones, in another.
pub fn btf_or_raw<'o, T>(
    slots: &mut Slots<'o>,
    load: impl Fn(&'o mut MaybeUninit<OpenObject>, Variant) -> Result<T>,
) -> Result<T> {
    let v = kernel::kernel().variant();
    if !v.btf {
        return load(slot(slots)?, v);
    }
    match load(slot(slots)?, v) {
        Ok(t) => Ok(t),
        Err(e) => load(slot(slots)?, v.raw()).map_err(|raw| {
            // The same failure both ways is said once.
            if format!("{raw:#}") == format!("{e:#}") {
                raw
            } else {
                raw.context(format!("with tp_btf: {e:#}; with raw_tp"))
            }
        }),
    }
}

/// Attaches handler `base`'s program of variant `v` to its tracepoint.
pub fn attach_tp(
    obj: &libbpf_rs::Object,
    base: &str,
    v: Variant,
    tracepoint: &str,
) -> Result<Link> {
    kernel::program(obj, base, v)?
        .attach()
        .with_context(|| format!("attach to {tracepoint}"))
}

/// The procs object: owns the process table and the layouts, and with
/// `follow` adds each child of a recorded process to them. Exec is watched
/// either way: a process that execs loses its layout until the new program
/// announces one. With `name_exits`, each recorded thread's name is noted
/// as it exits (`comms`), for the recorder to read.
pub fn load_procs<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    pid: u32,
    l: Option<&Layout>,
    follow: bool,
    name_exits: bool,
    v: Variant,
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
    kernel::choose_programs(open.open_object_mut(), v, |h| {
        h == "exec" || (h == "task_exit" && name_exits) || follow
    });
    if name_exits {
        size_names(&mut open.maps.comms)?;
    } else {
        open.maps
            .comms
            .set_max_entries(1)
            .context("shrink the unused map of thread names")?;
    }
    let skel = crate::errors::loaded("load the process tracker", || open.load())?;
    skel.maps
        .targets
        .update(&pid.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
        .context("enter the target in the process table")?;
    if let Some(l) = l {
        put_layout(&skel.maps.layouts, pid, l)?;
    }
    let o = skel.object();
    let mut links = vec![attach_tp(o, "exec", v, "sched_process_exec")?];
    if follow || name_exits {
        links.push(attach_tp(o, "task_exit", v, "sched_process_exit")?);
    }
    if follow {
        links.push(attach_tp(o, "fork", v, "sched_process_fork")?);
    }
    Ok((skel, links))
}

/// Set to a number: the keys of each view's count map (each map's own
/// size otherwise, 65,536 or 131,072), for the tests, which fill them.
const COUNT_KEYS: &str = "PYUSDT_PROF_COUNT_KEYS";

/// Set to a number: the keys of the procs object's map of exited threads'
/// names (`comms`, 65,536 otherwise), for the tests, which fill it.
const NAME_KEYS: &str = "PYUSDT_PROF_NAME_KEYS";

/// Sizes count map `map` as [`COUNT_KEYS`] asks, if it does.
pub fn size_counts(map: &mut libbpf_rs::OpenMapMut<'_>) -> Result<()> {
    size_as(map, COUNT_KEYS)
}

/// Sizes the thread names' map `map` as [`NAME_KEYS`] asks, if it does.
fn size_names(map: &mut libbpf_rs::OpenMapMut<'_>) -> Result<()> {
    size_as(map, NAME_KEYS)
}

fn size_as(map: &mut libbpf_rs::OpenMapMut<'_>, var: &str) -> Result<()> {
    let Some(keys) = std::env::var(var).ok().and_then(|v| v.parse().ok()) else {
        return Ok(());
    };
    map.set_max_entries(keys)
        .with_context(|| format!("size a map as {var} asks"))
}
