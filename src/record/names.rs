//! Naming what the maps hold: each object's code-object names and thread
//! names, learned at first sight by the BPF side; Python frames named by
//! function or line, kernel frames by symbol, syscalls by name; all
//! interned in the profile's frame table.

use std::collections::{BTreeMap, HashMap};

use libbpf_rs::MapCore;

use crate::bpf::maps::{comm_str, decode, entries, hash_scan};
use crate::bpf::procs::types as walk_types;
use crate::bpf::retire::delete_keys;
use crate::profile::frame::program_frames;
use crate::profile::ksym::KernelSymbolizer;
use crate::profile::pyname::{code_name, Namer};
use crate::profile::{syscalls, Sample, View};
use crate::target::layout::Layout;
use crate::views::{RawView, Tail, Walker};
use crate::Result;

/// The frame a cpu sample ends in (before any kernel frames) when the
/// thread was waiting for the GIL (with the gil view recorded).
pub const GIL_WAIT_FRAME: &str = "[waiting for the GIL]";

/// A namer per recorded process, made on first use.
pub struct Namers {
    pub layouts: HashMap<u32, Option<Layout>>,
    pub by_pid: HashMap<u32, Namer>,
}

impl Namers {
    pub fn get(&mut self, pid: u32) -> &mut Namer {
        let layouts = &self.layouts;
        self.by_pid
            .entry(pid)
            .or_insert_with(|| Namer::new(pid, layouts.get(&pid).copied().flatten()))
    }
}

/// The names the BPF side read at first sight, from one object's
/// `code_names` (and `code_lines`) maps.
pub fn learn_names(w: &Walker<'_>, namers: &mut Namers) -> Result<()> {
    let Walker {
        code_names,
        code_lines,
        ..
    } = *w;
    for (key, t) in entries::<walk_types::code_key, walk_types::code_lines>(code_lines)? {
        let n = (t.len as usize).min(t.data.len());
        namers
            .get(key.tgid)
            .learn_lines(key.code, t.data[..n].to_vec(), t.full_len);
    }
    for (key, n) in entries::<walk_types::code_key, walk_types::code_name>(code_names)? {
        namers.get(key.tgid).learn(key.code, code_name(&n));
    }
    Ok(())
}

/// The names of the threads that exited since the last call, which the
/// procs object noted in its `comms` map as they exited, moved out of it
/// into `into` (the names read from /proc): called as the recording goes,
/// so that a program that starts a thread per request
/// (`ThreadingHTTPServer`) does not fill the map, and once more at the
/// end. An exited thread's name wins over the one /proc gave its id
/// before: the last one it took.
pub fn move_exited_names(comms: &dyn MapCore, into: &mut BTreeMap<u32, String>) -> Result<()> {
    let mut gone = Vec::new();
    hash_scan(comms, |kb, vb| {
        let (tid, c) = decode::<u32, walk_types::comm_value>(kb, vb)?;
        gone.push((tid, comm_str(&c.comm)));
        Ok(())
    })?;
    let tids: Vec<u32> = gone.iter().map(|(tid, _)| *tid).collect();
    delete_keys(comms, &tids);
    into.extend(gone);
    Ok(())
}

/// Thread names of `pid` from /proc.
pub fn proc_threads(pid: u32, into: &mut BTreeMap<u32, String>) {
    for tid in crate::target::tasks(pid) {
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
            into.insert(tid, c.trim_end().to_string());
        }
    }
}

/// Names every frame of every view (kernel symbols in one batch) into a
/// frame table and the views' stacks.
pub fn name_views(
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
            notes: v.notes,
            sampled_below_ns: v.sampled_below_ns,
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
