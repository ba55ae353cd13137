//! The cpu view (`bpf/cpu.bpf.c`): a perf_event program on the software
//! cpu-clock event of every CPU counts (thread, Python stack, kernel
//! stack) of each sample of the target.

use anyhow::Context;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::Link;
use pyusdt_contract::walk;

use crate::bpf::cpu::{types, CpuSkel, CpuSkelBuilder};
use crate::bpf::kernel;
use crate::bpf::load::{attach_sampler, share, size_counts, slot, Slots};
use crate::bpf::maps::{kernel_stack, live, python_stack};
use crate::bpf::retire::{thread_keys, LiveThreads, Retired};
use crate::profile::ViewKind;
use crate::views::{view, walker, RawSample, RawView, Reading, Recorder, Setup, Tail, Walker};
use crate::Result;

// SAFETY: plain C data, no padding (explicit reserved words), any bit
// pattern valid.
unsafe impl plain::Plain for types::cpu_key {}
thread_keys!(types::cpu_key);

struct Cpu<'o> {
    skel: CpuSkel<'o>,
    links: Vec<Link>,
    /// Samples of exited threads.
    retired: Retired<types::cpu_key, u64>,
}

/// Loads the CPU sampler and attaches it to every CPU.
pub fn load<'o>(slots: &mut Slots<'o>, s: &Setup<'_>) -> Result<Box<dyn Recorder + 'o>> {
    let mut open = CpuSkelBuilder::default()
        .open(slot(slots)?)
        .context("open the CPU sampler")?;
    share!(open, s.shared, "the CPU sampler");
    if !kernel::kernel().perf_event_dynamic_maps {
        // Before 6.1 a perf_event program takes only preallocated hash maps.
        open.maps
            .code_lines
            .set_map_flags(0)
            .context("preallocate the line table map")?;
    }
    size_counts(&mut open.maps.cpu_samples)?;
    kernel::choose_programs(open.open_object_mut(), s.variant, |_| true);
    let skel = crate::errors::loaded("load the CPU sampler", || open.load())?;
    let prog = kernel::program(skel.object(), "on_cpu_sample", s.variant)?;
    let links = attach_sampler(&prog, s.freq)?;
    Ok(Box::new(Cpu {
        skel,
        links,
        retired: Retired::default(),
    }))
}

impl Recorder for Cpu<'_> {
    fn counters(&self) -> Vec<(ViewKind, u64, u64)> {
        let Some(b) = self.skel.maps.bss_data.as_deref() else {
            return Vec::new();
        };
        vec![(ViewKind::Cpu, live(&b.samples), live(&b.lost_samples))]
    }

    fn walker(&self) -> Walker<'_> {
        walker!(self.skel)
    }

    fn rows(&self, _: &Reading<'_>) -> Result<Vec<RawView>> {
        let m = &self.skel.maps;
        let mut out = Vec::new();
        for (k, count) in self.retired.entries(&m.cpu_samples)? {
            out.push(RawSample {
                pid: k.tgid,
                tid: k.tid,
                python: python_stack(&m.pystacks, k.pystack)?,
                tail: Tail::Kernel(kernel_stack(&m.kstacks, k.kstack)?),
                value: count,
                count,
                hist: Vec::new(),
                gil_wait: k.flags & walk::CPU_F_GIL_WAIT != 0,
            });
        }
        Ok(vec![view(ViewKind::Cpu, &self.counters(), out)])
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn tick(&mut self, threads: &mut LiveThreads) {
        self.retired.tick(&self.skel.maps.cpu_samples, threads);
    }
}
