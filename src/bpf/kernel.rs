//! What the running kernel offers BPF programs, probed once, and which
//! variant of each program fits it.
//!
//! Every handler that walks Python stacks is built four times (see
//! `bpf/tp_twin.bpf.h`): tp_btf or raw_tp, each with `bpf_loop()` (Linux
//! 5.17+) or with bounded loops for older kernels. [`choose_programs`]
//! marks the variant a [`Variant`] names for loading and leaves the rest
//! out; [`program`] finds it again to attach it.

use std::sync::OnceLock;

use anyhow::{bail, Context};
use libbpf_rs::{MapType, Object, OpenObject, ProgramMut, ProgramType};

use crate::Result;

/// Set to 1, these environment variables make the recorder load the
/// variant older kernels get even where the kernel has more: raw_tp
/// programs instead of tp_btf, bounded loops instead of `bpf_loop()`.
/// Tests use them to prove those variants on a new kernel.
pub const RAW_TP_ENV: &str = "PYUSDT_PROF_RAW_TP";
/// See [`RAW_TP_ENV`].
pub const NO_BPF_LOOP_ENV: &str = "PYUSDT_PROF_NO_BPF_LOOP";

/// What the running kernel offers, as probed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Kernel {
    /// Its release, as `uname -r` prints it.
    pub release: String,
    /// BTF-typed tracepoints (tp_btf: Linux 5.5, and the kernel's BTF).
    pub tp_btf: bool,
    /// The `bpf_loop()` helper (Linux 5.17).
    pub bpf_loop: bool,
    /// The BPF ring buffer (Linux 5.8).
    pub ringbuf: bool,
    /// Whether perf_event programs may use hash maps allocated as they
    /// grow (Linux 6.1; before, only preallocated ones).
    pub perf_event_dynamic_maps: bool,
    /// The `bpf_task_pt_regs()` helper (Linux 5.15): which syscall a
    /// thread leaving the CPU is in, so that the gil view sees its blocks
    /// at sched_switch rather than at the futex syscalls.
    pub task_pt_regs: bool,
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let has = |yes: bool, what: &str| format!("{}{what}", if yes { "" } else { "no " });
        write!(
            f,
            "Linux {} ({}, {}, {}, {}, perf_event programs with {} maps)",
            self.release,
            has(self.tp_btf, "tp_btf"),
            has(self.bpf_loop, "bpf_loop"),
            has(self.ringbuf, "ring buffer"),
            has(self.task_pt_regs, "bpf_task_pt_regs"),
            if self.perf_event_dynamic_maps {
                "any"
            } else {
                "preallocated"
            }
        )
    }
}

/// The running kernel, probed on first use.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(Kernel::probe)
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

impl Kernel {
    fn probe() -> Kernel {
        let yes = |r: libbpf_rs::Result<bool>| r.unwrap_or(false);
        Kernel {
            release: crate::errors::kernel_release(),
            tp_btf: tp_btf_loads(),
            bpf_loop: yes(ProgramType::Kprobe.is_helper_supported(libbpf_sys::BPF_FUNC_loop)),
            ringbuf: yes(MapType::RingBuf.is_supported()),
            perf_event_dynamic_maps: perf_event_takes_dynamic_maps(),
            task_pt_regs: yes(
                ProgramType::Kprobe.is_helper_supported(libbpf_sys::BPF_FUNC_task_pt_regs)
            ),
        }
    }

    /// The variant to load first: the best this kernel has, unless the
    /// environment asks for an older one.
    pub fn variant(&self) -> Variant {
        Variant {
            btf: self.tp_btf && !env_set(RAW_TP_ENV),
            loops: self.bpf_loop && !env_set(NO_BPF_LOOP_ENV),
        }
    }

    /// Fails, naming what is missing and the first kernel that has it,
    /// unless the kernel has the ring buffer every recording needs (it
    /// carries process events and layout announcements).
    pub fn require_ringbuf(&self) -> Result<()> {
        if !self.ringbuf {
            bail!(
                "this kernel (Linux {}) has no BPF ring buffer, which pyusdt-prof needs \
                 (Linux 5.8 or later)",
                self.release
            );
        }
        Ok(())
    }
}

/// Set to 1, the offcpu and wakeup views read a wait's stacks as its
/// thread leaves, at every departure (for comparison).
const AT_DEPARTURE_ENV: &str = "PYUSDT_PROF_WALK_AT_DEPARTURE";
/// Set to 1, they read them at the syscall's exit where the kernel can,
/// even where it has kprobes (for comparison).
const AT_SYS_EXIT_ENV: &str = "PYUSDT_PROF_WALK_AT_SYS_EXIT";

/// The function a thread runs first when it is back on the CPU, in the
/// thread (`finish_task_switch`, by the name the kernel gives it), to
/// attach a kprobe to; None where the kernel has no kprobes (no perf
/// kprobe PMU: built without them, or before 4.17) or no such function.
pub fn return_probe() -> Option<&'static str> {
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return None;
    }
    crate::profile::ksym::function_named("finish_task_switch")
}

/// Where the offcpu and wakeup views read the stacks of a wait they keep.
/// A thread's memory is mapped only while it runs: `sched_switch` runs in
/// the thread leaving, before the wait's length is known, and reports the
/// return in another thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// As the thread comes back, in it: a kprobe on this function
    /// ([`return_probe`]); only for the waits kept.
    Return(&'static str),
    /// At the exit of the syscall the thread left in (raw_syscalls
    /// `sys_exit`, in the thread, before it runs its own code), only for
    /// the waits kept; at the departure for one made outside a syscall (a
    /// preemption in user mode, a page fault). Needs tp_btf programs and
    /// `bpf_task_pt_regs()` (Linux 5.15), which tell a syscall.
    SysExit,
    /// At every departure.
    Departure,
}

/// Where a recording asks the offcpu and wakeup views to read the stacks
/// of the waits they keep (`record --offcpu-stacks-at`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StacksAt {
    /// At the return where the kernel has kprobes, else at every
    /// departure.
    #[default]
    Auto,
    /// At the syscall's exit where the kernel can tell a syscall (tp_btf
    /// and `bpf_task_pt_regs()`, Linux 5.15), even where it has kprobes;
    /// else at every departure. Every syscall of the machine then pays a
    /// tracepoint.
    SyscallExit,
    /// At every departure.
    Departure,
}

impl Walk {
    /// The way of variant `v`'s programs on this kernel, as `at` asks;
    /// `sampled`: waits are sampled (else every wait is kept, and its
    /// stacks are read at departure, as it leaves, at no cost that reading
    /// later would save, unless a kprobe reads them); `kprobes`: a kprobe
    /// may be tried. The environment's PYUSDT_PROF_WALK_AT_DEPARTURE and
    /// PYUSDT_PROF_WALK_AT_SYS_EXIT stand for `at` where it is `Auto`.
    pub fn of(v: Variant, sampled: bool, kprobes: bool, at: StacksAt) -> Walk {
        let at = match at {
            StacksAt::Auto if env_set(AT_DEPARTURE_ENV) => StacksAt::Departure,
            StacksAt::Auto if env_set(AT_SYS_EXIT_ENV) => StacksAt::SyscallExit,
            at => at,
        };
        let sys_exit = sampled && v.btf && kernel().task_pt_regs;
        match at {
            StacksAt::Departure => Walk::Departure,
            StacksAt::SyscallExit if sys_exit => Walk::SysExit,
            StacksAt::SyscallExit => Walk::Departure,
            StacksAt::Auto => match return_probe().filter(|_| kprobes) {
                Some(f) => Walk::Return(f),
                None => Walk::Departure,
            },
        }
    }

    /// Its name in `check`.
    pub fn name(self) -> &'static str {
        match self {
            Walk::Return(_) => "return",
            Walk::SysExit => "syscall exit",
            Walk::Departure => "departure",
        }
    }
}

/// What `pyusdt-prof check` says of this machine: whether it can record,
/// and with which variant of the programs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// The kernel's release.
    pub kernel: String,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`), which CO-RE needs.
    pub btf: bool,
    /// What the kernel offers BPF programs ([`Kernel`]); None when this
    /// process lacks the privileges to probe it.
    pub ringbuf: Option<bool>,
    pub tp_btf: Option<bool>,
    pub bpf_loop: Option<bool>,
    pub perf_event_dynamic_maps: Option<bool>,
    pub task_pt_regs: Option<bool>,
    /// A kprobe on `finish_task_switch` ([`return_probe`]).
    pub return_probe: Option<bool>,
    /// Where the offcpu and wakeup views read the stacks of the waits
    /// they keep, by default ([`Walk::name`]).
    pub offcpu_stacks: Option<&'static str>,
    /// Whether they can read them at the syscall's exit
    /// (`--offcpu-stacks-at syscall-exit`).
    pub offcpu_stacks_at_syscall_exit: Option<bool>,
    /// The lockdown mode, where the kernel has one.
    pub lockdown: Option<String>,
    /// The capabilities this process lacks to load BPF programs.
    pub missing_capabilities: Vec<&'static str>,
    /// The programs a recording would load: tp_btf (else raw_tp), with
    /// bpf_loop (else bounded loops).
    pub tp_btf_programs: bool,
    pub loop_programs: bool,
    /// Whether a recording can start here.
    pub ok: bool,
}

impl Check {
    /// Looks at this machine (probing the kernel needs the privileges; a
    /// process without them sees every feature missing).
    pub fn now() -> Check {
        let missing = crate::errors::effective_caps()
            .map(crate::errors::missing_capabilities)
            .unwrap_or_default();
        let k = kernel();
        let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
        let lockdown = crate::errors::lockdown();
        let v = k.variant();
        let probed = |b: bool| missing.is_empty().then_some(b);
        Check {
            kernel: k.release.clone(),
            btf,
            ringbuf: probed(k.ringbuf),
            tp_btf: probed(k.tp_btf),
            bpf_loop: probed(k.bpf_loop),
            perf_event_dynamic_maps: probed(k.perf_event_dynamic_maps),
            task_pt_regs: probed(k.task_pt_regs),
            return_probe: probed(return_probe().is_some()),
            offcpu_stacks: missing
                .is_empty()
                .then(|| Walk::of(v, true, true, StacksAt::Auto).name()),
            offcpu_stacks_at_syscall_exit: probed(
                Walk::of(v, true, false, StacksAt::SyscallExit) == Walk::SysExit,
            ),
            ok: btf
                && k.ringbuf
                && missing.is_empty()
                && lockdown.as_deref() != Some("confidentiality"),
            lockdown,
            missing_capabilities: missing,
            tp_btf_programs: v.btf,
            loop_programs: v.loops,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        writeln!(f, "Linux {}", self.kernel)?;
        let rows = [
            ("BTF", yes(Some(self.btf)), "needed: CO-RE programs read it"),
            ("BPF ring buffer", yes(self.ringbuf), "needed (Linux 5.8)"),
            (
                "tp_btf tracepoints",
                yes(self.tp_btf),
                "else raw_tp programs (5.5)",
            ),
            (
                "bpf_loop()",
                yes(self.bpf_loop),
                "else bounded loops (5.17)",
            ),
            (
                "perf_event maps",
                match self.perf_event_dynamic_maps {
                    Some(true) => "any",
                    Some(false) => "preallocated",
                    None => "?",
                },
                "any from 6.1",
            ),
            (
                "bpf_task_pt_regs()",
                yes(self.task_pt_regs),
                "gil view at sched_switch, else at the futex syscalls (5.15)",
            ),
            (
                "kprobes",
                yes(self.return_probe),
                "offcpu, wakeup: stacks read for kept waits as they return",
            ),
            (
                "offcpu stacks at",
                self.offcpu_stacks.unwrap_or("?"),
                "the return (kprobes), else each departure",
            ),
            (
                "  or syscall exit",
                yes(self.offcpu_stacks_at_syscall_exit),
                "--offcpu-stacks-at syscall-exit (tp_btf, 5.15)",
            ),
        ];
        for (what, has, why) in rows {
            writeln!(f, "  {what:<20} {has:<13} {why}")?;
        }
        if let Some(l) = &self.lockdown {
            writeln!(f, "  {:<20} {l}", "lockdown")?;
        }
        let privileges = if self.missing_capabilities.is_empty() {
            "enough".to_string()
        } else {
            format!("lacks {}", self.missing_capabilities.join(" and "))
        };
        writeln!(f, "  {:<20} {privileges}", "privileges")?;
        if self.missing_capabilities.is_empty() {
            let v = Variant {
                btf: self.tp_btf_programs,
                loops: self.loop_programs,
            };
            writeln!(f, "programs: {v}")?;
        } else {
            writeln!(
                f,
                "(? : probing the kernel needs the privileges: run it as root)"
            )?;
        }
        if self.ok {
            write!(f, "pyusdt-prof can record here")
        } else {
            write!(f, "pyusdt-prof cannot record here")
        }
    }
}

/// One BPF instruction.
fn insn(code: u32, dst: u8, src: u8, imm: i32) -> libbpf_sys::bpf_insn {
    let mut i = libbpf_sys::bpf_insn {
        code: code as u8,
        off: 0,
        imm,
        ..Default::default()
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

/// `r0 = 0; exit`.
fn return_zero() -> [libbpf_sys::bpf_insn; 2] {
    [
        insn(
            libbpf_sys::BPF_ALU64 | libbpf_sys::BPF_MOV | libbpf_sys::BPF_K,
            0,
            0,
            0,
        ),
        insn(libbpf_sys::BPF_JMP | libbpf_sys::BPF_EXIT, 0, 0, 0),
    ]
}

/// Whether the kernel loads `insns` as a program of type `ty`.
fn loads(
    ty: libbpf_sys::bpf_prog_type,
    insns: &[libbpf_sys::bpf_insn],
    opts: &libbpf_sys::bpf_prog_load_opts,
) -> bool {
    let mut opts = *opts;
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _;
    // SAFETY: valid instructions, their count, a license and options.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            ty,
            std::ptr::null(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the program's descriptor, ours to close.
    unsafe { libc::close(fd) };
    true
}

/// Whether a tp_btf program loads: one on sched_switch that returns 0.
/// (libbpf's probe of the tracing program type loads an fentry program,
/// which some kernels refuse though they take tp_btf.)
fn tp_btf_loads() -> bool {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return false;
    }
    // SAFETY: a NUL-terminated name.
    let id = unsafe {
        libbpf_sys::libbpf_find_vmlinux_btf_id(
            c"sched_switch".as_ptr(),
            libbpf_sys::BPF_TRACE_RAW_TP,
        )
    };
    if id <= 0 {
        return false;
    }
    let opts = libbpf_sys::bpf_prog_load_opts {
        expected_attach_type: libbpf_sys::BPF_TRACE_RAW_TP,
        attach_btf_id: id as u32,
        ..Default::default()
    };
    loads(libbpf_sys::BPF_PROG_TYPE_TRACING, &return_zero(), &opts)
}

/// Whether a perf_event program may use a hash map that is not
/// preallocated: loads a program that refers to one.
fn perf_event_takes_dynamic_maps() -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    // SAFETY: a valid name, sizes and options.
    let fd = unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_HASH,
            c"pyusdt_probe".as_ptr(),
            4,
            4,
            1,
            &opts,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a new descriptor that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd) };
    // r1 = map (ld_imm64: two slots); r0 = 0; exit.
    let [mov, exit] = return_zero();
    let insns = [
        insn(
            libbpf_sys::BPF_LD | libbpf_sys::BPF_DW | libbpf_sys::BPF_IMM,
            1,
            libbpf_sys::BPF_PSEUDO_MAP_FD as u8,
            map.as_raw_fd(),
        ),
        insn(0, 0, 0, 0),
        mov,
        exit,
    ];
    loads(
        libbpf_sys::BPF_PROG_TYPE_PERF_EVENT,
        &insns,
        &Default::default(),
    )
}

/// Which of a handler's programs to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// tp_btf (true) or raw_tp tracepoint programs.
    pub btf: bool,
    /// Loops under `bpf_loop()` (true), or bounded loops.
    pub loops: bool,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} programs with {}",
            if self.btf { "tp_btf" } else { "raw_tp" },
            if self.loops {
                "bpf_loop"
            } else {
                "bounded loops"
            }
        )
    }
}

impl Variant {
    /// The same, with raw_tp programs.
    pub fn raw(self) -> Variant {
        Variant { btf: false, ..self }
    }
}

const BOUNDED: &str = "_bounded";

/// A program's name taken apart: the handler, its tracepoint kind (None
/// for a program of another kind) and whether it loops bounded.
fn parse(name: &str) -> (&str, Option<bool>, bool) {
    let (rest, tp) = if let Some(r) = name.strip_suffix("_btf") {
        (r, Some(true))
    } else if let Some(r) = name.strip_suffix("_raw") {
        (r, Some(false))
    } else {
        (name, None)
    };
    match rest.strip_suffix(BOUNDED) {
        Some(base) => (base, tp, true),
        None => (rest, tp, false),
    }
}

/// Names the program of handler `base` in variant `v`, among `names`.
fn pick<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
    base: &str,
    v: Variant,
) -> Option<&'a str> {
    let mut best = None;
    for n in names {
        let (b, tp, bounded) = parse(n);
        if b != base || tp.is_some_and(|btf| btf != v.btf) {
            continue;
        }
        // The bounded twin where loops are off, else the one with loops
        // (a handler that walks no stack has only that).
        if bounded != v.loops {
            return Some(n);
        }
        if !bounded {
            best = Some(n);
        }
    }
    best
}

/// In an open object, loads the programs of variant `v` of the handlers
/// `wanted` says yes to (by handler name, without suffixes) and no other.
pub fn choose_programs(obj: &mut OpenObject, v: Variant, wanted: impl Fn(&str) -> bool) {
    let names: Vec<String> = obj
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    let chosen: Vec<&str> = names
        .iter()
        .filter_map(|n| {
            let base = parse(n).0;
            wanted(base)
                .then(|| pick(names.iter().map(String::as_str), base, v))
                .flatten()
        })
        .collect();
    for mut p in obj.progs_mut() {
        let name = p.name().to_string_lossy().into_owned();
        p.set_autoload(chosen.contains(&name.as_str()));
    }
}

/// The loaded program of handler `base` in variant `v`.
pub fn program<'o>(obj: &'o Object, base: &str, v: Variant) -> Result<ProgramMut<'o>> {
    let names: Vec<String> = obj
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    let name = pick(names.iter().map(String::as_str), base, v)
        .with_context(|| format!("no BPF program {base} ({v:?})"))?
        .to_string();
    obj.progs_mut()
        .find(|p| p.name().to_string_lossy() == name)
        .with_context(|| format!("no BPF program {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "switch_btf",
        "switch_raw",
        "switch_bounded_btf",
        "switch_bounded_raw",
        "exit_btf",
        "exit_raw",
        "on_calls",
        "on_calls_bounded",
        "take_gil_return",
    ];

    fn chosen(base: &str, btf: bool, loops: bool) -> Option<&'static str> {
        pick(NAMES.iter().copied(), base, Variant { btf, loops })
    }

    #[test]
    fn each_variant_picks_its_program() {
        assert_eq!(chosen("switch", true, true), Some("switch_btf"));
        assert_eq!(chosen("switch", false, true), Some("switch_raw"));
        assert_eq!(chosen("switch", true, false), Some("switch_bounded_btf"));
        assert_eq!(chosen("switch", false, false), Some("switch_bounded_raw"));
        // A handler that walks no stack has no bounded twin.
        assert_eq!(chosen("exit", false, false), Some("exit_raw"));
        assert_eq!(chosen("on_calls", true, false), Some("on_calls_bounded"));
        assert_eq!(chosen("on_calls", false, true), Some("on_calls"));
        assert_eq!(
            chosen("take_gil_return", true, false),
            Some("take_gil_return")
        );
        assert_eq!(chosen("nothing", true, true), None);
    }

    #[test]
    fn names_come_apart() {
        assert_eq!(
            parse("wakeup_new_bounded_raw"),
            ("wakeup_new", Some(false), true)
        );
        assert_eq!(parse("on_cpu_sample"), ("on_cpu_sample", None, false));
    }
}
