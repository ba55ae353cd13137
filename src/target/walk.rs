//! A process's Python stacks read now, from userspace: the walk of
//! `bpf/pyframe.bpf.h` (the main interpreter's thread list, each thread's
//! live frames, the interpreter's shim frames skipped) through
//! `process_vm_readv`, with the layout the process announced; and who
//! holds the GIL.

use std::io;

use pyusdt_contract::layout::F_CFRAME;

use crate::profile::pyname::{Memory, LASTI_NONE};
use crate::target::layout::Layout;

/// Frames read per thread at most (the recorder keeps 256).
pub const MAX_FRAMES: usize = 1024;

/// Threads read at most (a corrupt list is not followed forever).
const MAX_THREADS: usize = 4096;

/// One Python thread as its `PyThreadState` says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyThread {
    /// The kernel's thread id.
    pub tid: u32,
    /// Its `PyThreadState`.
    pub tstate: u64,
    /// Its frames, innermost first: (code object, instruction index or
    /// [`LASTI_NONE`]).
    pub frames: Vec<(u64, u32)>,
    /// Deeper than [`MAX_FRAMES`].
    pub truncated: bool,
}

/// Every Python thread of a process, and the GIL.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// In the interpreter's order (the newest thread first).
    pub threads: Vec<PyThread>,
    /// The thread that holds the GIL, if it is held.
    pub gil_holder: Option<u32>,
}

/// Reads process `pid`'s memory with layout `l`.
struct Reader<'l> {
    m: Memory,
    l: &'l Layout,
}

impl Reader<'_> {
    fn u64_at(&self, addr: u64) -> io::Result<u64> {
        self.m.u64_at(addr)
    }

    /// The frames of the thread whose state is at `t`, innermost first.
    fn frames(&self, t: u64) -> io::Result<(Vec<(u64, u32)>, bool)> {
        let l = self.l;
        let mut frame = if l.flags & F_CFRAME != 0 {
            self.u64_at(self.u64_at(t + u64::from(l.tstate_cframe))? + u64::from(l.current_frame))?
        } else {
            self.u64_at(t + u64::from(l.current_frame))?
        };
        // 3.13's f_executable may be something other than code.
        let check_type = l.py_version_hex >= 0x030d_0000;
        let mut frames = Vec::new();
        while frame != 0 {
            if frames.len() == MAX_FRAMES {
                return Ok((frames, true));
            }
            // 3.14's f_executable is a tagged _PyStackRef.
            let code = self.u64_at(frame + u64::from(l.frame_code))? & !7;
            let owner = self.m.u8_at(frame + u64::from(l.frame_owner))?;
            let is_code = code != 0
                && (!check_type
                    || self.u64_at(code + u64::from(l.object_type))? == l.code_type_addr);
            if u32::from(owner) != l.owner_cstack && is_code {
                let instr = self.u64_at(frame + u64::from(l.frame_instr))?;
                let first = code + u64::from(l.code_adaptive);
                let lasti = match instr.checked_sub(first) {
                    Some(d) if d < 1 << 32 => (d / 2) as u32,
                    _ => LASTI_NONE,
                };
                frames.push((code, lasti));
            }
            frame = self.u64_at(frame + u64::from(l.frame_previous))?;
        }
        Ok((frames, false))
    }
}

/// Every Python thread of process `pid` (which announced `l`) and its
/// stack now. The process runs on meanwhile: a thread's stack is read
/// frame by frame, and one that changes under the read may come out
/// mixed (a sampling profiler's stacks are the same).
pub fn snapshot(pid: u32, l: &Layout) -> io::Result<Snapshot> {
    let r = Reader { m: Memory(pid), l };
    let mut out = Snapshot::default();
    let mut t = r.u64_at(l.interp_addr + u64::from(l.interp_threads_head))?;
    while t != 0 && out.threads.len() < MAX_THREADS {
        let tid = r.u64_at(t + u64::from(l.tstate_native_thread_id))? as u32;
        // A thread being torn down may have no frames to read.
        let (frames, truncated) = r.frames(t).unwrap_or_default();
        out.threads.push(PyThread {
            tid,
            tstate: t,
            frames,
            truncated,
        });
        t = r.u64_at(t + u64::from(l.tstate_next))?;
    }
    if l.gil_addr != 0 && r.m.i32_at(l.gil_addr + u64::from(l.gil_locked))? != 0 {
        let holder = r.u64_at(l.gil_addr + u64::from(l.gil_last_holder))?;
        out.gil_holder = out
            .threads
            .iter()
            .find(|p| p.tstate == holder)
            .map(|p| p.tid);
    }
    Ok(out)
}

/// Whether a futex word at `addr` is inside the GIL's condition variable
/// (a thread waiting on it waits for the GIL).
pub fn is_gil_futex(l: &Layout, addr: u64) -> bool {
    let start = l.gil_addr + u64::from(l.gil_cond);
    l.gil_addr != 0
        && l.gil_cond_size != 0
        && (start..start + u64::from(l.gil_cond_size)).contains(&addr)
}

/// The id the BPF walker gives a stack of process `tgid` (its FNV-1a over
/// the process and the frames, with their instructions under `--lines`;
/// `bpf/pyframe.bpf.h`), so that a stack read here and the same stack
/// read there are one.
pub fn stack_id(tgid: u32, frames: &[(u64, u32)], lines: bool, truncated: bool) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = (0xcbf2_9ce4_8422_2325_u64 ^ u64::from(tgid)).wrapping_mul(PRIME);
    for &(code, lasti) in frames {
        h = (h ^ code).wrapping_mul(PRIME);
        if lines {
            h = (h ^ u64::from(lasti)).wrapping_mul(PRIME);
        }
    }
    match h ^ u64::from(truncated) {
        0 => 1, // 0 is PYSTACK_NONE
        id => id,
    }
}

/// Whether thread `tid` of `pid` is off the CPU, waiting (`S` or `D`).
pub fn blocked(pid: u32, tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            Some(matches!(
                *crate::target::stat_fields(&s)?.first()?,
                "S" | "D"
            ))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_ids_hash_as_the_bpf_walker_does() {
        let prime = 0x0000_0100_0000_01b3_u64;
        let seed = (0xcbf2_9ce4_8422_2325_u64 ^ 7).wrapping_mul(prime);
        let one = (seed ^ 0x1000).wrapping_mul(prime);
        assert_eq!(stack_id(7, &[(0x1000, 3)], false, false), one);
        assert_eq!(stack_id(7, &[(0x1000, 3)], false, true), one ^ 1);
        assert_eq!(
            stack_id(7, &[(0x1000, 3)], true, false),
            (one ^ 3).wrapping_mul(prime)
        );
        assert_ne!(stack_id(8, &[(0x1000, 3)], false, false), one);
    }
}
