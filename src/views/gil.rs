//! The gil view (`bpf/gil.bpf.c`): each wait for the GIL under the
//! waiter's stack and the thread that held the GIL last. By default a wait
//! is seen where it blocks: its blocks on the GIL's condition, whose
//! address the process's layout gives, seen at `sched_switch` where the
//! kernel tells which syscall a thread leaving the CPU is in (tp_btf and
//! `bpf_task_pt_regs`, 5.15+), else at the futex syscalls (cheap either
//! way: nothing runs per take of the GIL; the first costs the syscalls
//! nothing). With `--gil-probes`, uprobes on the
//! interpreter's `take_gil` (entry and return) and `drop_gil` see every
//! take, also those that did not block, at a uprobe's price each; they
//! live in each process's interpreter and are attached per process as the
//! recording finds them ([`Recorder::watch`]), and where an interpreter
//! has no such symbols (a stripped build, as distributions ship) its waits
//! are seen as their blocks all the same.

use std::collections::HashMap;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};

use crate::bpf::gil::{types, GilSkel, GilSkelBuilder};
use crate::bpf::kernel;
use crate::bpf::kernel::Variant;
use crate::bpf::load::{attach_tp, btf_or_raw, share, size_counts, Shared, Slots};
use crate::bpf::maps::{live, python_stack, trimmed};
use crate::bpf::procs::types::time_hist;
use crate::bpf::retire::{thread_keys, LiveThreads, Retired};
use crate::profile::ViewKind;
use crate::target;
use crate::views::{
    note_sampled, view, walker, Process, RawSample, RawView, Reading, Recorder, Setup, Tail, Walker,
};
use crate::Result;

// SAFETY: plain C data, no padding (explicit reserved word), any bit
// pattern valid.
unsafe impl plain::Plain for types::gil_key {}
thread_keys!(types::gil_key);

struct Gil<'o> {
    skel: GilSkel<'o>,
    variant: Variant,
    /// Uprobes asked for (--gil-probes), not the blocks.
    by_probes: bool,
    /// Each process's probes, and the program (generation) they are in.
    probes: HashMap<u32, (u32, Vec<Link>)>,
    /// The programs that see blocks (sched_switch, or the futex
    /// syscalls), once a process needs them.
    blocks: Vec<Link>,
    /// Blocks are seen at sched_switch, not at the futex syscalls.
    at_switch: bool,
    /// How processes' waits were measured, where not by the probes.
    notes: Vec<String>,
    /// Why the first process's waits could not be measured at all.
    unmeasured: Option<String>,
    /// Blocks at the futex syscalls shorter than this are sampled; 0: none.
    sample_below_ns: u64,
    /// Some process's waits were watched as their blocks.
    blocks_used: bool,
    /// Waits of exited threads.
    retired: Retired<types::gil_key, time_hist>,
}

/// Loads the GIL probes; they are attached per process by `watch`.
pub fn load<'o>(slots: &mut Slots<'o>, s: &Setup<'_>) -> Result<Box<dyn Recorder + 'o>> {
    let below = s.sample_waits_below_ns;
    let by_probes = s.gil_probes || forced(PROBES);
    let (skel, variant) = btf_or_raw(slots, |st, v| open(st, s.shared, v, below, by_probes))?;
    Ok(Box::new(Gil {
        skel,
        variant,
        by_probes,
        probes: HashMap::new(),
        blocks: Vec::new(),
        at_switch: at_switch(variant),
        notes: Vec::new(),
        unmeasured: None,
        sample_below_ns: below,
        blocks_used: false,
        retired: Retired::default(),
    }))
}

/// Whether variant `v` sees blocks at sched_switch (else at the futex
/// syscalls).
fn at_switch(v: Variant) -> bool {
    v.btf && kernel::kernel().task_pt_regs
}

/// Opens and loads the GIL programs of variant `v`: those of one way to
/// see blocks, the way `v` has, and the uprobes only `by_probes`. Each
/// program that walks stacks costs the verifier's time: the gil view
/// alone started in 0.53 s (0.40 s of system time) with all six loaded,
/// 0.27 s (0.14 s) with the one it runs by default (6.18; 0.17 s and
/// 0.07 s since the walk is a global function, see bpf/pyframe.bpf.h).
fn open<'o>(
    storage: &'o mut std::mem::MaybeUninit<libbpf_rs::OpenObject>,
    shared: Shared<'_>,
    v: Variant,
    sample_below_ns: u64,
    by_probes: bool,
) -> Result<(GilSkel<'o>, Variant)> {
    let mut open = GilSkelBuilder::default()
        .open(storage)
        .context("open the GIL probes")?;
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("the GIL probes have no rodata")?
        .sample_below_ns = sample_below_ns;
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the GIL probes");
    size_counts(&mut open.maps.gil)?;
    // Blocks are seen with --gil-probes too, in an interpreter without
    // the symbols.
    let switch = at_switch(v);
    kernel::choose_programs(open.open_object_mut(), v, |h| match h {
        "gil_switch" => switch,
        "gil_futex_enter" | "gil_futex_exit" => !switch,
        _ => by_probes,
    });
    let skel = crate::errors::loaded("load the GIL probes", || open.load())?;
    Ok((skel, v))
}

/// Set (to anything but 0): every process's waits are seen as their
/// blocks (at sched_switch or the futex syscalls), even with
/// --gil-probes (to compare the two ways).
const FORCE_BLOCKS: &str = "PYUSDT_PROF_GIL_BLOCKS";
/// Set (to anything but 0): as --gil-probes (for the tests, which run each
/// way through the environment).
const PROBES: &str = "PYUSDT_PROF_GIL_PROBES";

fn forced(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v != "0")
}

/// Attaches the GIL probes to process `pid`'s interpreter, or says why
/// they cannot be (no interpreter file, or one without the symbols).
fn attach(skel: &GilSkel<'_>, pid: u32, v: Variant) -> Result<Vec<Link>> {
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
    let o = skel.object();
    Ok(vec![
        probe(&kernel::program(o, "take_gil_enter", v)?, "take_gil", false)?,
        probe(&kernel::program(o, "take_gil_return", v)?, "take_gil", true)?,
        probe(&kernel::program(o, "drop_gil_enter", v)?, "drop_gil", false)?,
    ])
}

impl Gil<'_> {
    /// Watches process `pid`'s GIL waits as their blocks (where its
    /// interpreter cannot be probed, `why`); says so in the view.
    fn by_blocks(&mut self, pid: u32, first: u32, why: Option<&anyhow::Error>) {
        let how = match self.blocks_on(pid) {
            Ok(()) if self.at_switch => "its waits are its blocks on the GIL's condition, \
                                         seen as it leaves the CPU in them (sched_switch)"
                .to_string(),
            Ok(()) => "its waits are its blocks on the GIL's condition, seen at the futex \
                       syscalls"
                .to_string(),
            Err(e) => {
                if pid == first {
                    self.unmeasured = Some(match why {
                        Some(why) => format!("{why:#}, and {e:#}"),
                        None => format!("{e:#}"),
                    });
                }
                format!("its waits are not measured: {e:#}")
            }
        };
        let who = if pid == first {
            String::new()
        } else {
            format!("process {pid}: ")
        };
        let note = match why {
            Some(why) => format!("{who}{why:#}; {how}"),
            None => format!("{who}{how}"),
        };
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn blocks_on(&mut self, pid: u32) -> Result<()> {
        self.skel
            .maps
            .gil_by_blocks
            .update(&pid.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .context("watch the process's blocks on the GIL")?;
        self.blocks_used = true;
        if self.blocks.is_empty() {
            let o = self.skel.object();
            let v = self.variant;
            self.blocks = if self.at_switch {
                vec![attach_tp(o, "gil_switch", v, "sched_switch")?]
            } else {
                vec![
                    attach_tp(o, "gil_futex_enter", v, "raw_syscalls:sys_enter")?,
                    attach_tp(o, "gil_futex_exit", v, "raw_syscalls:sys_exit")?,
                ]
            };
        }
        Ok(())
    }
}

impl Recorder for Gil<'_> {
    fn counters(&self) -> Vec<(ViewKind, u64, u64)> {
        let Some(b) = self.skel.maps.bss_data.as_deref() else {
            return Vec::new();
        };
        vec![(ViewKind::Gil, live(&b.gil_waited), live(&b.lost_gil))]
    }

    fn walker(&self) -> Walker<'_> {
        walker!(self.skel)
    }

    fn rows(&self, r: &Reading<'_>) -> Result<Vec<RawView>> {
        let m = &self.skel.maps;
        let mut out = Vec::new();
        for (k, v) in self.retired.entries(&m.gil)? {
            let holder = if k.holder_tid == 0 {
                "GIL held by [unknown]".to_string()
            } else if k.holder_tid == k.tid {
                "GIL held by nobody (free)".to_string()
            } else {
                format!("GIL held by thread {}", r.thread_label(k.holder_tid, None))
            };
            out.push(RawSample {
                pid: k.tgid,
                tid: k.tid,
                python: python_stack(&m.pystacks, k.pystack)?,
                tail: Tail::Waker(holder, k.tgid, python_stack(&m.pystacks, k.holder_pystack)?),
                value: v.ns,
                count: v.count,
                hist: trimmed(&v.hist),
                gil_wait: false,
            });
        }
        let mut v = view(ViewKind::Gil, &self.counters(), out);
        v.notes = self.notes.clone();
        v.unavailable = self.unmeasured.clone();
        // Blocks seen at sched_switch are every one counted.
        if self.blocks_used && !self.at_switch && self.sample_below_ns > 0 {
            let counts = self
                .skel
                .maps
                .bss_data
                .as_deref()
                .map(|b| (live(&b.gil_short_kept), live(&b.gil_short_blocks)));
            let what = "blocks at the futex syscalls";
            note_sampled(&mut v, self.sample_below_ns, what, counts);
        }
        Ok(vec![v])
    }

    fn detach(&mut self) {
        self.probes.clear();
        self.blocks.clear();
    }

    fn tick(&mut self, threads: &mut LiveThreads) {
        self.retired.tick(&self.skel.maps.gil, threads);
    }

    /// Attaches the probes to each live Python process that has not had
    /// them yet in the program it runs now (or, where its interpreter has
    /// no symbols to probe, watches its blocks on the GIL); forgets processes
    /// gone or turned into another program.
    fn watch(&mut self, live: &[Process], first: u32) {
        self.probes.retain(|pid, (generation, _)| {
            live.contains(&Process {
                pid: *pid,
                generation: *generation,
            })
        });
        for p in live {
            if self.probes.contains_key(&p.pid) {
                continue;
            }
            let how = if !self.by_probes {
                Err(None)
            } else if forced(FORCE_BLOCKS) {
                Err(Some(anyhow::anyhow!("{FORCE_BLOCKS} is set")))
            } else {
                attach(&self.skel, p.pid, self.variant).map_err(Some)
            };
            let links = match how {
                Ok(links) => links,
                Err(why) => {
                    self.by_blocks(p.pid, first, why.as_ref());
                    Vec::new()
                }
            };
            self.probes.insert(p.pid, (p.generation, links));
        }
    }
}
