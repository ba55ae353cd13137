//! The offcpu and wakeup views (`bpf/sched.bpf.c`): at `sched_switch` a
//! target thread that leaves the CPU notes its Python stack and the time;
//! when it comes back, the time away is counted under that stack and its
//! kernel stack (offcpu), and under the thread that woke it, with that
//! thread's Python stack (wakeup, from `sched_waking` and
//! `sched_wakeup_new`). Waits shorter than `--sample-waits-below` are
//! sampled, each kept one weighted by 1/p (the profile says so). A return
//! to the CPU the kernel did not report is counted at the thread's next
//! departure, ending at its last `sched_waking`, and said in a note.
//!
//! Where the kernel has kprobes, the stacks are read at the return
//! instead, in the returning thread (a kprobe on `finish_task_switch`),
//! and only for the waits kept: the thread has not run since it left, so
//! they are the stacks it left with. On request (`--offcpu-stacks-at
//! syscall-exit`), a thread that left inside a syscall has them read at
//! that syscall's exit, in the thread, for the same reason. A wait still
//! open at the end has its Python stack read here, from the process's
//! memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};
use pyusdt_contract::walk as walk_contract;

use crate::bpf::kernel::{self, Variant, Walk};
use crate::bpf::load::{attach_tp, btf_or_raw, share, size_counts, Shared, Slots};
use crate::bpf::maps::{
    comm_str, entries, histogram_of, kernel_stack, kernel_stack_at, live, python_stack, trimmed,
};
use crate::bpf::procs::types::{pystack, time_hist};
use crate::bpf::retire::{thread_keys, Count, LiveThreads, Retired};
use crate::bpf::sched::{types, SchedSkel, SchedSkelBuilder};
use crate::profile::ksym;
use crate::profile::pyname::{Namer, LASTI_NONE};
use crate::profile::ViewKind;
use crate::record::POLL_THREAD;
use crate::target::layout::Layout;
use crate::target::walk;
use crate::views::{
    note_sampled, view, walker, RawSample, RawView, Reading, Recorder, Setup, Tail, Walker,
};
use crate::Result;

// SAFETY: plain C data, no padding, any bit pattern valid.
unsafe impl plain::Plain for types::offcpu_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::wakeup_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::time_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::sched_thread {}
thread_keys!(types::offcpu_key, types::wakeup_key);

impl Count for types::time_value {
    fn add(&mut self, other: &Self) {
        self.ns = self.ns.saturating_add(other.ns);
        self.count = self.count.saturating_add(other.count);
    }
}

struct Sched<'o> {
    skel: SchedSkel<'o>,
    links: Vec<Link>,
    offcpu: bool,
    wakeups: bool,
    /// Waits shorter than this are sampled; 0: none.
    sample_below_ns: u64,
    /// Names of the code objects of the waits open at the start and of
    /// those still open at the end whose stacks userspace read.
    names: RefCell<Vec<(u32, u64, String)>>,
    /// Stacks of waits still open at the end, read by userspace (their
    /// stacks are read at the return, which did not come): by tid.
    closed: RefCell<HashMap<u32, u64>>,
    /// Where the stacks were read, if not at every departure as without
    /// kprobes: a note of both views.
    way: Option<String>,
    /// Where the stacks of kept waits are read: after the departure (at
    /// the return, or at the syscall's exit), those of waits still open at
    /// the end are read here.
    walk: Walk,
    /// Waits and wake-ups of exited threads (each keyed by the thread that
    /// waited, whose own return counts it).
    retired_offcpu: Retired<types::offcpu_key, time_hist>,
    retired_wakeups: Retired<types::wakeup_key, types::time_value>,
}

/// Loads the scheduler programs (`sched_wakeup_new` only for the wakeup
/// view) and attaches them.
pub fn load<'o>(slots: &mut Slots<'o>, s: &Setup<'_>) -> Result<Box<dyn Recorder + 'o>> {
    let offcpu = s.views.contains(&ViewKind::Offcpu);
    let wakeups = s.views.contains(&ViewKind::Wakeup);
    let sample_below_ns = s.sample_waits_below_ns;
    // A kernel whose kprobe cannot be attached after all is recorded the
    // way it would be without kprobes.
    let mut load = |kprobe| {
        btf_or_raw(slots, |st, v| {
            let walk = Walk::of(v, sample_below_ns > 0, kprobe, s.stacks_at);
            open(st, s.shared, v, wakeups, sample_below_ns, walk)
        })
    };
    let (skel, links, walk, why) = match load(true) {
        Ok((skel, links, walk)) => (skel, links, walk, None),
        Err(e)
            if matches!(
                Walk::of(s.variant, sample_below_ns > 0, true, s.stacks_at),
                Walk::Return(_)
            ) =>
        {
            let (skel, links, walk) = load(false)?;
            (skel, links, walk, Some(e))
        }
        Err(e) => return Err(e),
    };
    let way = match (walk, why) {
        (Walk::Return(f), _) => Some(format!(
            "stacks read as each kept wait's thread came back (a kprobe on {f})"
        )),
        (Walk::SysExit, _) => Some(
            "stacks read as each kept wait's thread came back from the syscall it left in \
             (at its exit), and at the departure for one made outside a syscall"
                .to_string(),
        ),
        (Walk::Departure, Some(e)) => Some(format!(
            "stacks read at every departure: the kprobe did not attach ({e:#})"
        )),
        (Walk::Departure, None) => None,
    };
    Ok(Box::new(Sched {
        skel,
        links,
        offcpu,
        wakeups,
        sample_below_ns,
        names: RefCell::new(Vec::new()),
        closed: RefCell::new(HashMap::new()),
        way,
        walk,
        retired_offcpu: Retired::default(),
        retired_wakeups: Retired::default(),
    }))
}

fn open<'o>(
    storage: &'o mut std::mem::MaybeUninit<libbpf_rs::OpenObject>,
    shared: Shared<'_>,
    v: Variant,
    wakeups: bool,
    sample_below_ns: u64,
    walk: Walk,
) -> Result<(SchedSkel<'o>, Vec<Link>, Walk)> {
    let back = match walk {
        Walk::Return(f) => Some(f),
        _ => None,
    };
    let sys_exit = walk == Walk::SysExit;
    let mut open = SchedSkelBuilder::default()
        .open(storage)
        .context("open the scheduler programs")?;
    share!(open, shared, "the scheduler programs");
    size_counts(&mut open.maps.offcpu)?;
    size_counts(&mut open.maps.wakeups)?;
    // A byte per possible thread id, 64 to an entry (unused without the
    // syscall exit's way).
    let marks = if sys_exit { pid_max().div_ceil(64) } else { 1 };
    open.maps
        .late_marks
        .set_max_entries(marks)
        .context("size the map of threads left to their syscall's exit")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the scheduler programs have no rodata")?;
    rodata.wakeup_view = u8::from(wakeups);
    rodata.sample_below_ns = sample_below_ns;
    rodata.walk_at_return = u8::from(back.is_some());
    rodata.walk_at_sys_exit = u8::from(sys_exit);
    // sched_waking also times the wake-ups that end returns the kernel
    // does not report.
    kernel::choose_programs(open.open_object_mut(), v, |h| match h {
        "back" => back.is_some(),
        "sys_back" => sys_exit,
        "wakeup_new" => wakeups,
        _ => true,
    });
    let skel = crate::errors::loaded("load the scheduler programs", || open.load())?;
    let o = skel.object();
    let mut links = Vec::new();
    // Before sched_switch: every departure it leaves to a syscall's exit
    // is seen there.
    if sys_exit {
        links.push(attach_tp(o, "sys_back", v, "raw_syscalls:sys_exit")?);
    }
    links.push(attach_tp(o, "switch", v, "sched_switch")?);
    links.push(attach_tp(o, "wakeup", v, "sched_waking")?);
    if wakeups {
        links.push(attach_tp(o, "wakeup_new", v, "sched_wakeup_new")?);
    }
    if let Some(f) = back {
        links.push(
            kernel::program(o, "back", v)?
                .attach_kprobe(false, f)
                .with_context(|| format!("attach a kprobe to {f}"))?,
        );
    }
    Ok((skel, links, walk))
}

/// The kernel's bound on thread ids (`kernel.pid_max`): at most 4,194,304
/// (its limit on 64-bit machines), which it is taken to be if unreadable.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
        .min(4_194_304)
}

impl Sched<'_> {
    /// Reads the stacks of process `pid`'s threads that are off the CPU now
    /// from its memory (userspace's walk), puts each in `pystacks`, and
    /// hands it to `keep` (tid, stack id); names its code if `keep` says
    /// yes. A process it cannot read is left alone.
    fn read_stacks(
        &self,
        pid: u32,
        layout: &Layout,
        lines: bool,
        mut keep: impl FnMut(u32, u64) -> bool,
    ) {
        let Ok(snapshot) = walk::snapshot(pid, layout) else {
            return;
        };
        let m = &self.skel.maps;
        let mut namer = Namer::new(pid, Some(*layout));
        for t in snapshot
            .threads
            .iter()
            .filter(|t| walk::blocked(pid, t.tid))
        {
            let n = t.frames.len().min(walk_contract::MAX_FRAMES);
            let frames: Vec<(u64, u32)> = t.frames[..n]
                .iter()
                .map(|&(c, i)| (c, if lines { i } else { LASTI_NONE }))
                .collect();
            let truncated = t.truncated || t.frames.len() > n;
            let mut s = pystack {
                len: n as u32,
                truncated: u32::from(truncated),
                ..Default::default()
            };
            for (k, &(c, i)) in frames.iter().enumerate() {
                s.frames[k] = c;
                s.lasti[k] = i;
            }
            let id = walk::stack_id(pid, &frames, lines, truncated);
            // SAFETY: plain C data without padding.
            let stack = unsafe { plain::as_bytes(&s) };
            // A stack the kernel side has already is the same stack.
            let _ = m
                .pystacks
                .update(&id.to_ne_bytes(), stack, MapFlags::NO_EXIST);
            if keep(t.tid, id) {
                let mut names = self.names.borrow_mut();
                for &(c, _) in &frames {
                    names.push((pid, c, namer.name(c).to_string()));
                }
            }
        }
    }

    /// The kernel stack of a wait: taken at departure (an id in
    /// `kstacks`) or as the thread came back (a hash in `kstacks_back`).
    fn kernel_frames(&self, id: i32, back: u64) -> Result<Vec<u64>> {
        let m = &self.skel.maps;
        if back == 0 {
            return kernel_stack(&m.kstacks, id);
        }
        kernel_stack_at(&m.kstacks_back, &back.to_ne_bytes())
    }

    /// `threads`: the entries of `sched_threads`, read once for both views.
    fn offcpu_samples(
        &self,
        r: &Reading<'_>,
        threads: &[(u32, types::sched_thread)],
    ) -> Result<Vec<RawSample>> {
        let m = &self.skel.maps;
        let mut out = Vec::new();
        // Waits still open at the end count up to it, under the stacks the
        // thread left with (a thread that is gone left for good). A thread
        // on the CPU has ts 0.
        for &(tid, t) in threads {
            // A kept wait whose thread came back but had not left its
            // syscall when the recording ended: its Python stack was not
            // read (the thread has run since).
            let late = &t.late;
            if late.weight > 0 && r.recorded.contains(&t.out.tgid) {
                out.push(RawSample {
                    pid: t.out.tgid,
                    tid,
                    python: python_stack(&m.pystacks, 0)?,
                    tail: Tail::Kernel(self.kernel_frames(walk_contract::KSTACK_NONE, late.kback)?),
                    value: late.ns.saturating_mul(late.weight),
                    count: late.weight,
                    hist: histogram_of(late.ns)
                        .into_iter()
                        .map(|n| n * late.weight)
                        .collect(),
                    gil_wait: false,
                });
            }
            let o = t.out;
            if o.ts == 0 {
                continue;
            }
            let alive = Path::new(&format!("/proc/{}/task/{tid}", o.tgid)).exists();
            if !alive || o.ts >= r.end_monotonic_ns || !r.recorded.contains(&o.tgid) {
                continue;
            }
            let ns = r.end_monotonic_ns - o.ts;
            // A thread still away has its stack where it left it; the
            // kernel shows it (taken at departure only on raw_tp).
            let kernel = if o.kstack == walk_contract::KSTACK_NONE {
                ksym::task_stack(o.tgid, tid)
            } else {
                kernel_stack(&m.kstacks, o.kstack)?
            };
            let pystack = match o.pystack {
                0 => self.closed.borrow().get(&tid).copied().unwrap_or(0),
                id => id,
            };
            out.push(RawSample {
                pid: o.tgid,
                tid,
                python: python_stack(&m.pystacks, pystack)?,
                tail: Tail::Kernel(kernel),
                value: ns,
                count: 1,
                hist: histogram_of(ns),
                gil_wait: false,
            });
        }
        for (k, v) in self.retired_offcpu.entries(&m.offcpu)? {
            out.push(RawSample {
                pid: k.tgid,
                tid: k.tid,
                python: python_stack(&m.pystacks, k.pystack)?,
                tail: Tail::Kernel(self.kernel_frames(k.kstack, k.kstack_back)?),
                value: v.ns,
                count: v.count,
                hist: trimmed(&v.hist),
                gil_wait: false,
            });
        }
        Ok(out)
    }

    fn wakeup_samples(
        &self,
        r: &Reading<'_>,
        threads: &[(u32, types::sched_thread)],
    ) -> Result<Vec<RawSample>> {
        let m = &self.skel.maps;
        let mut out = Vec::new();
        for (k, v) in self.retired_wakeups.entries(&m.wakeups)? {
            out.extend(self.wakeup_sample(r, &k, v.ns, v.count)?);
        }
        // A kept wait whose thread came back but had not left its syscall
        // when the recording ended (see offcpu_samples): joined to its
        // waker here, as its return would have, without its Python stack.
        for (_, t) in threads {
            let w = &t.late.waker;
            if w.weight > 0 && r.recorded.contains(&t.out.tgid) {
                let k = types::wakeup_key {
                    pystack: 0,
                    ..w.key
                };
                let (ns, count) = (t.late.ns.saturating_mul(w.weight), w.weight);
                out.extend(self.wakeup_sample(r, &k, ns, count)?);
            }
        }
        Ok(out)
    }

    /// The wakeup view's sample of `count` wake-ups of key `k`, `ns` in
    /// all; none for pyusdt's poll thread, which is instrumentation (a
    /// wait it ends, the join at exit, is not the program's).
    fn wakeup_sample(
        &self,
        r: &Reading<'_>,
        k: &types::wakeup_key,
        ns: u64,
        count: u64,
    ) -> Result<Option<RawSample>> {
        let m = &self.skel.maps;
        if r.recorded.contains(&k.waker_tgid) && comm_str(&k.waker_comm) == POLL_THREAD {
            return Ok(None);
        }
        let waker = if k.waker_tgid == 0 {
            "waker [kernel]".to_string()
        } else if r.recorded.contains(&k.waker_tgid) {
            let name = r.thread_label(k.waker_tid, Some(&comm_str(&k.waker_comm)));
            if k.waker_tgid == k.tgid {
                format!("waker thread {name}")
            } else {
                format!("waker thread {name} of process {}", k.waker_tgid)
            }
        } else {
            format!(
                "waker {} ({}) of process {}",
                comm_str(&k.waker_comm),
                k.waker_tid,
                k.waker_tgid
            )
        };
        Ok(Some(RawSample {
            pid: k.tgid,
            tid: k.tid,
            python: python_stack(&m.pystacks, k.pystack)?,
            tail: Tail::Waker(
                waker,
                k.waker_tgid,
                python_stack(&m.pystacks, k.waker_pystack)?,
            ),
            value: ns,
            count,
            hist: Vec::new(),
            gil_wait: false,
        }))
    }
}

impl Sched<'_> {
    /// Says how `v`'s waits were sampled, with the offcpu view's figures,
    /// and where their stacks were read.
    fn note_sampling(&self, v: &mut RawView) {
        v.notes.extend(self.way.clone());
        if self.sample_below_ns == 0 {
            return;
        }
        let counts = self
            .skel
            .maps
            .bss_data
            .as_deref()
            .filter(|_| v.kind == ViewKind::Offcpu)
            .map(|b| (live(&b.short_waits_kept), live(&b.short_waits)));
        note_sampled(v, self.sample_below_ns, "waits", counts);
    }
}

impl Recorder for Sched<'_> {
    fn counters(&self) -> Vec<(ViewKind, u64, u64)> {
        let Some(b) = self.skel.maps.bss_data.as_deref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if self.offcpu {
            out.push((ViewKind::Offcpu, live(&b.switches), live(&b.lost_offcpu)));
        }
        if self.wakeups {
            let (events, lost) = (live(&b.wakeups_joined), live(&b.lost_wakeups));
            out.push((ViewKind::Wakeup, events, lost));
        }
        out
    }

    fn walker(&self) -> Walker<'_> {
        walker!(self.skel)
    }

    fn rows(&self, r: &Reading<'_>) -> Result<Vec<RawView>> {
        let counters = self.counters();
        let threads = entries::<u32, types::sched_thread>(&self.skel.maps.sched_threads)?;
        let mut out = Vec::new();
        if self.offcpu {
            let mut v = view(
                ViewKind::Offcpu,
                &counters,
                self.offcpu_samples(r, &threads)?,
            );
            let (unseen, unknown) = self.skel.maps.bss_data.as_deref().map_or((0, 0), |b| {
                (live(&b.returns_unreported), live(&b.returns_unknown))
            });
            if unseen > 0 {
                v.notes.push(format!(
                    "{unseen} returns to the CPU the kernel did not report: \
                     each wait counted up to the thread's wake-up"
                ));
            }
            if unknown > 0 {
                v.notes.push(format!(
                    "{unknown} returns to the CPU the kernel did not report, with no \
                     wake-up to end the wait at (preempted threads): those waits not counted"
                ));
            }
            self.note_sampling(&mut v);
            out.push(v);
        }
        if self.wakeups {
            let mut v = view(
                ViewKind::Wakeup,
                &counters,
                self.wakeup_samples(r, &threads)?,
            );
            self.note_sampling(&mut v);
            out.push(v);
        }
        Ok(out)
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn tick(&mut self, threads: &mut LiveThreads) {
        let m = &self.skel.maps;
        if self.offcpu {
            self.retired_offcpu.tick(&m.offcpu, threads);
        }
        if self.wakeups {
            self.retired_wakeups.tick(&m.wakeups, threads);
        }
    }

    fn open_waits(&self, pid: u32, layout: &Layout, start_ns: u64, lines: bool) {
        if !self.offcpu {
            return;
        }
        let m = &self.skel.maps;
        self.read_stacks(pid, layout, lines, |tid, id| {
            let out = types::sched_thread {
                out: types::switch_out {
                    ts: start_ns,
                    pystack: id,
                    kstack: walk_contract::KSTACK_NONE,
                    tgid: pid,
                },
                ..Default::default()
            };
            // SAFETY: plain C data without padding.
            let out = unsafe { plain::as_bytes(&out) };
            // A departure the kernel side noted meanwhile is the truer one.
            m.sched_threads
                .update(&tid.to_ne_bytes(), out, MapFlags::NO_EXIST)
                .is_ok()
        });
    }

    fn close_waits(&self, pid: u32, layout: &Layout, lines: bool) {
        // Only the ways that read after the departure (at the return, at
        // the syscall's exit) leave departures unread; at departure, a
        // stack missing is a walk that failed then.
        if !self.offcpu || self.walk == Walk::Departure {
            return;
        }
        // Waits still open whose stacks would be read after their return:
        // read now, while the threads are still away.
        let Ok(open) = entries::<u32, types::sched_thread>(&self.skel.maps.sched_threads) else {
            return;
        };
        let unread: Vec<u32> = open
            .into_iter()
            .filter(|(_, t)| t.out.tgid == pid && t.out.ts != 0 && t.out.pystack == 0)
            .map(|(tid, _)| tid)
            .collect();
        if unread.is_empty() {
            return;
        }
        let mut closed = self.closed.borrow_mut();
        self.read_stacks(pid, layout, lines, |tid, id| {
            if !unread.contains(&tid) {
                return false;
            }
            closed.insert(tid, id);
            true
        });
    }

    fn names(&self) -> Vec<(u32, u64, String)> {
        self.names.borrow().clone()
    }
}
