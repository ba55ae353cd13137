//! The syscall view (`bpf/syscall.bpf.c`): raw_syscalls `sys_enter` notes
//! the time and the thread's Python stack, `sys_exit` counts the call and
//! its time under (thread, Python stack, syscall).

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::Link;

use crate::bpf::kernel::{self, Variant};
use crate::bpf::load::{attach_tp, btf_or_raw, share, size_counts, Shared, Slots};
use crate::bpf::maps::{live, python_stack, trimmed};
use crate::bpf::procs::types::time_hist;
use crate::bpf::retire::{thread_keys, LiveThreads, Retired};
use crate::bpf::syscall::{types, SyscallSkel, SyscallSkelBuilder};
use crate::profile::ViewKind;
use crate::views::{view, walker, RawSample, RawView, Reading, Recorder, Setup, Tail, Walker};
use crate::Result;

// SAFETY: plain C data, no padding, any bit pattern valid.
unsafe impl plain::Plain for types::syscall_key {}
thread_keys!(types::syscall_key);

struct Syscall<'o> {
    skel: SyscallSkel<'o>,
    links: Vec<Link>,
    /// Syscalls of exited threads.
    retired: Retired<types::syscall_key, time_hist>,
}

/// Loads the syscall programs and attaches them.
pub fn load<'o>(slots: &mut Slots<'o>, s: &Setup<'_>) -> Result<Box<dyn Recorder + 'o>> {
    let (skel, links) = btf_or_raw(slots, |st, v| open(st, s.shared, v))?;
    Ok(Box::new(Syscall {
        skel,
        links,
        retired: Retired::default(),
    }))
}

fn open<'o>(
    storage: &'o mut std::mem::MaybeUninit<libbpf_rs::OpenObject>,
    shared: Shared<'_>,
    v: Variant,
) -> Result<(SyscallSkel<'o>, Vec<Link>)> {
    let mut open = SyscallSkelBuilder::default()
        .open(storage)
        .context("open the syscall programs")?;
    // The shared walker brings a kernel stack map that syscalls do not use.
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the syscall programs");
    size_counts(&mut open.maps.syscalls)?;
    kernel::choose_programs(open.open_object_mut(), v, |_| true);
    let skel = crate::errors::loaded("load the syscall programs", || open.load())?;
    let o = skel.object();
    let links = vec![
        attach_tp(o, "enter", v, "raw_syscalls:sys_enter")?,
        attach_tp(o, "exit", v, "raw_syscalls:sys_exit")?,
    ];
    Ok((skel, links))
}

impl Recorder for Syscall<'_> {
    fn counters(&self) -> Vec<(ViewKind, u64, u64)> {
        let Some(b) = self.skel.maps.bss_data.as_deref() else {
            return Vec::new();
        };
        vec![(ViewKind::Syscall, live(&b.calls), live(&b.lost_syscalls))]
    }

    fn walker(&self) -> Walker<'_> {
        walker!(self.skel)
    }

    fn rows(&self, _: &Reading<'_>) -> Result<Vec<RawView>> {
        let m = &self.skel.maps;
        let mut out = Vec::new();
        for (k, v) in self.retired.entries(&m.syscalls)? {
            out.push(RawSample {
                pid: k.tgid,
                tid: k.tid,
                python: python_stack(&m.pystacks, k.pystack)?,
                tail: Tail::Syscall(k.nr),
                value: v.ns,
                count: v.count,
                hist: trimmed(&v.hist),
                gil_wait: false,
            });
        }
        Ok(vec![view(ViewKind::Syscall, &self.counters(), out)])
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn tick(&mut self, threads: &mut LiveThreads) {
        self.retired.tick(&self.skel.maps.syscalls, threads);
    }
}
