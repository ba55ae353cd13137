//! The CPU sampler: `bpf/cpu.bpf.c` on the software cpu-clock event of
//! every CPU, counting (thread, Python stack, kernel stack) of the target.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::cpu::{types, CpuSkelBuilder};
use crate::layout::Layout;
use crate::target::Target;
use crate::Result;

/// One counted stack of the CPU view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuStack {
    /// The kernel's thread id.
    pub tid: u32,
    /// Code object addresses, root first; empty when the thread ran no
    /// Python (or its stack could not be read).
    pub python: Vec<u64>,
    /// The Python stack was deeper than the walker keeps: `python` holds
    /// its leaf-most frames.
    pub truncated: bool,
    /// Kernel instruction pointers, root first; empty when the sample hit
    /// user mode.
    pub kernel: Vec<u64>,
    /// Samples.
    pub count: u64,
}

/// What a CPU recording counted.
#[derive(Debug, Clone, Default)]
pub struct CpuProfile {
    /// Samples of the target.
    pub samples: u64,
    /// Samples lost because the count map was full.
    pub lost: u64,
    /// Walks that found no Python stack, by reason (no layout, no thread
    /// state, a failed read, stack map full).
    pub walk_errors: [u64; 4],
    /// The counted stacks.
    pub stacks: Vec<CpuStack>,
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
    // plain integers (all processes, one CPU, no group).
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

/// The CPUs that are online, from /sys.
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

/// Samples `target`'s CPU use at `freq` Hz while `keep_going()` says so
/// (it is asked every 50 ms), then reads what was counted.
pub fn sample_cpu(
    target: &Target,
    layout: &Layout,
    freq: u64,
    mut keep_going: impl FnMut() -> bool,
) -> Result<CpuProfile> {
    let mut storage = MaybeUninit::uninit();
    let mut open = CpuSkelBuilder::default()
        .open(&mut storage)
        .context("open the CPU sampler BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the CPU sampler has no rodata")?;
    rodata.target_tgid = target.pid;
    let skel = open.load().context("load the CPU sampler BPF program")?;
    // SAFETY: Layout is plain C data without padding (tests/layout_twin.rs).
    let layout_bytes = unsafe { plain::as_bytes(layout) };
    skel.maps
        .layouts
        .update(&target.pid.to_ne_bytes(), layout_bytes, MapFlags::ANY)
        .context("give the CPU sampler the target's layout")?;

    let mut links = Vec::new();
    for cpu in online_cpus()? {
        let fd = open_cpu_clock(cpu, freq)
            .with_context(|| format!("open the cpu-clock event on CPU {cpu}"))?;
        let link = skel
            .progs
            .on_cpu_sample
            .attach_perf_event(fd.as_raw_fd())
            .with_context(|| format!("attach the CPU sampler on CPU {cpu}"))?;
        // The link owns the event now: libbpf closes it with the link.
        let _ = fd.into_raw_fd();
        links.push(link);
    }
    while keep_going() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(links);

    let bss = skel
        .maps
        .bss_data
        .as_deref()
        .context("the CPU sampler has no bss")?;
    let mut profile = CpuProfile {
        samples: bss.samples,
        lost: bss.lost_samples,
        walk_errors: bss.pystack_errors,
        stacks: Vec::new(),
    };
    for key_bytes in skel.maps.cpu_samples.keys() {
        let mut key = types::cpu_key::default();
        if plain::copy_from_bytes(&mut key, &key_bytes).is_err() {
            bail!("a cpu_samples key of {} bytes", key_bytes.len());
        }
        let Some(count) = skel
            .maps
            .cpu_samples
            .lookup(&key_bytes, MapFlags::ANY)
            .context("read a CPU sample count")?
        else {
            continue;
        };
        let count = u64::from_ne_bytes(count[..8].try_into().context("a count of 8 bytes")?);
        let (python, truncated) = python_stack(&skel, key.pystack)?;
        let kernel = kernel_stack(&skel, key.kstack)?;
        profile.stacks.push(CpuStack {
            tid: key.tid,
            python,
            truncated,
            kernel,
            count,
        });
    }
    Ok(profile)
}

fn python_stack(skel: &crate::bpf::cpu::CpuSkel<'_>, id: u64) -> Result<(Vec<u64>, bool)> {
    if id == 0 {
        return Ok((Vec::new(), false));
    }
    let Some(bytes) = skel
        .maps
        .pystacks
        .lookup(&id.to_ne_bytes(), MapFlags::ANY)
        .context("read a Python stack")?
    else {
        return Ok((Vec::new(), false));
    };
    let mut s = types::pystack::default();
    if plain::copy_from_bytes(&mut s, &bytes).is_err() {
        bail!("a Python stack of {} bytes", bytes.len());
    }
    let n = (s.len as usize).min(s.frames.len());
    let mut frames = s.frames[..n].to_vec();
    frames.reverse();
    Ok((frames, s.truncated != 0))
}

fn kernel_stack(skel: &crate::bpf::cpu::CpuSkel<'_>, id: i32) -> Result<Vec<u64>> {
    if id < 0 {
        return Ok(Vec::new());
    }
    let Some(bytes) = skel
        .maps
        .kstacks
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
