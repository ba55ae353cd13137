//! What a trace delivers: each probe hit or syscall as an [`Event`],
//! decoded from the ring buffer's records, its Python stack named as it
//! arrives; and each event as `trace` prints it.

use std::collections::HashMap;

use libbpf_rs::{MapCore, MapFlags};
use pyusdt_contract::probes;
use serde::Serialize;

use crate::bpf::maps::{comm_str, python_stack};
use crate::bpf::procs;
use crate::bpf::trace::types;
use crate::profile::frame::program_frames;
use crate::profile::pyname::{code_name, Namer};
use crate::profile::syscalls;
use pyusdt_contract::trace::{MAX_ARGS, STR_LEN};

use crate::trace::spec::Resolved;

/// A probe argument's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ArgValue {
    /// An `int` argument.
    Int(i64),
    /// A `str` argument's text, at most 127 bytes of it (invalid UTF-8
    /// replaced); empty if it could not be read.
    Str(String),
}

/// One event of the traced process. In JSON (serde) each is an object
/// with `kind` `probe` or `syscall` beside its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Event {
    /// A probe hit.
    Probe {
        /// CLOCK_MONOTONIC at the hit (bpf_ktime_get_ns).
        time_ns: u64,
        /// The process.
        pid: u32,
        /// The thread.
        tid: u32,
        /// The thread's name, as the kernel knew it then.
        thread: String,
        /// The probe's provider.
        provider: String,
        /// The probe's name.
        name: String,
        /// The arguments, as their types say.
        args: Vec<ArgValue>,
        /// The thread's Python frames, root first, `qualname
        /// (file:firstline)` (empty without [`TraceOptions::stacks`]).
        stack: Vec<String>,
    },
    /// A syscall, sent when it returned.
    Syscall {
        /// CLOCK_MONOTONIC when it was entered.
        time_ns: u64,
        /// The process.
        pid: u32,
        /// The thread.
        tid: u32,
        /// The thread's name.
        thread: String,
        /// The syscall's name (its number if it has none).
        name: String,
        /// Time from entry to exit.
        duration_ns: u64,
        /// Its return value (a negative errno on failure).
        ret: i64,
        /// The thread's Python frames at entry, root first.
        stack: Vec<String>,
    },
}

impl Event {
    /// CLOCK_MONOTONIC of the event (a syscall's entry).
    pub fn time_ns(&self) -> u64 {
        match self {
            Event::Probe { time_ns, .. } | Event::Syscall { time_ns, .. } => *time_ns,
        }
    }

    /// The thread's Python frames, root first.
    pub fn stack(&self) -> &[String] {
        match self {
            Event::Probe { stack, .. } | Event::Syscall { stack, .. } => stack,
        }
    }
}

/// Names events' stacks as they arrive: from the names the BPF side read
/// at first sight, else from the process's memory.
pub(crate) struct Stacks<'a, M: MapCore> {
    pystacks: &'a M,
    code_names: &'a M,
    namer: Namer,
    by_id: HashMap<u64, Vec<String>>,
}

impl<'a, M: MapCore> Stacks<'a, M> {
    /// Names the stacks of `pystacks` with `code_names` (what the BPF
    /// side read), else with `namer`.
    pub(crate) fn new(pystacks: &'a M, code_names: &'a M, namer: Namer) -> Self {
        Stacks {
            pystacks,
            code_names,
            namer,
            by_id: HashMap::new(),
        }
    }

    fn name(&mut self, pid: u32, code: u64) -> String {
        let mut key = Vec::with_capacity(16);
        key.extend_from_slice(&pid.to_ne_bytes());
        key.extend_from_slice(&0u32.to_ne_bytes());
        key.extend_from_slice(&code.to_ne_bytes());
        if let Ok(Some(bytes)) = self.code_names.lookup(&key, MapFlags::ANY) {
            let mut n = procs::types::code_name::default();
            if plain::copy_from_bytes(&mut n, &bytes).is_ok() {
                let name = code_name(&n);
                self.namer.learn(code, name.clone());
                return name;
            }
        }
        self.namer.name(code).to_string()
    }

    /// Stack `id`'s frames, root first, as profiles name them: the
    /// launcher's frames (`python -m pyusdt`) left out, `[truncated]`
    /// first if the walker cut it.
    fn get(&mut self, pid: u32, id: u64) -> Vec<String> {
        if id == 0 {
            return Vec::new();
        }
        if let Some(s) = self.by_id.get(&id) {
            return s.clone();
        }
        let Ok((codes, truncated)) = python_stack(self.pystacks, id) else {
            return Vec::new();
        };
        let names: Vec<String> = codes.iter().map(|&(c, _)| self.name(pid, c)).collect();
        let mut out = Vec::with_capacity(names.len() + 1);
        if truncated {
            out.push("[truncated]".to_string());
        }
        out.extend(program_frames(&names, |f| f.as_str()).cloned());
        self.by_id.insert(id, out.clone());
        out
    }
}

/// An event as the ring buffer carries it (a `trace_head`, and for a
/// probe hit the rest of a `trace_record`), made into an [`Event`]; None
/// for a short record and for the instrumentation's own syscalls
/// (pyusdt's poll thread).
pub(crate) fn decode(
    data: &[u8],
    probes: &[Resolved],
    stacks: &mut Stacks<'_, impl MapCore>,
) -> Option<Event> {
    let mut h = types::trace_head::default();
    plain::copy_from_bytes(&mut h, data).ok()?;
    let thread = comm_str(&h.comm);
    if types::trace_kind(h.kind) == types::trace_kind::TRACE_SYSCALL {
        if thread == probes::POLL_THREAD {
            return None;
        }
        return Some(Event::Syscall {
            time_ns: h.ts,
            pid: h.pid,
            tid: h.tid,
            thread,
            name: syscalls::name(h.nr).map_or_else(|| h.nr.to_string(), str::to_string),
            duration_ns: h.duration_ns,
            ret: h.ret,
            stack: stacks.get(h.pid, h.pystack),
        });
    }
    let p = probes.get(h.probe as usize)?;
    let at = |off: usize, len: usize| data.get(off..off + len);
    let (args_at, lens_at, strs_at) = (
        std::mem::offset_of!(types::trace_record, args),
        std::mem::offset_of!(types::trace_record, str_len),
        std::mem::offset_of!(types::trace_record, strs),
    );
    let n = (h.nargs as usize).min(MAX_ARGS);
    let mut args = Vec::with_capacity(n);
    // The strings' text is packed, one after the other.
    let mut text_at = strs_at;
    for i in 0..n {
        if h.str_mask & (1 << i) == 0 {
            let b = at(args_at + 8 * i, 8)?;
            args.push(ArgValue::Int(i64::from_ne_bytes(b.try_into().ok()?)));
            continue;
        }
        let b = at(lens_at + 4 * i, 4)?;
        let len = (u32::from_ne_bytes(b.try_into().ok()?) as usize).min(STR_LEN - 1);
        let text = at(text_at, len)?;
        text_at += len;
        args.push(ArgValue::Str(String::from_utf8_lossy(text).into_owned()));
    }
    Some(Event::Probe {
        time_ns: h.ts,
        pid: h.pid,
        tid: h.tid,
        thread,
        provider: p.provider.clone(),
        name: p.name.clone(),
        args,
        stack: stacks.get(h.pid, h.pystack),
    })
}

impl Event {
    /// The event as `trace` prints it: a line (seconds since `start_ns`,
    /// the thread, the probe and its arguments, or the syscall, its return
    /// value and duration), and with `stacks` the frames leaf first on
    /// indented lines; or, with `json`, one JSON object.
    pub fn line(&self, start_ns: u64, stacks: bool, json: bool) -> String {
        let secs = (self.time_ns() as i64 - start_ns as i64) as f64 / 1e9;
        if json {
            let mut v = serde_json::to_value(self).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("time".into(), serde_json::json!(secs));
            }
            return v.to_string();
        }
        let mut line = match self {
            Event::Probe {
                tid,
                thread,
                provider,
                name,
                args,
                ..
            } => {
                let mut l = format!("{secs:.6} {thread} ({tid}) {provider}:{name}");
                for a in args {
                    match a {
                        ArgValue::Int(i) => l.push_str(&format!(" {i}")),
                        ArgValue::Str(s) => {
                            l.push(' ');
                            l.push_str(&serde_json::to_string(s).unwrap_or_default());
                        }
                    }
                }
                l
            }
            Event::Syscall {
                tid,
                thread,
                name,
                duration_ns,
                ret,
                ..
            } => format!(
                "{secs:.6} {thread} ({tid}) syscall:{name} = {ret} <{:.6}>",
                *duration_ns as f64 / 1e9
            ),
        };
        if stacks {
            for frame in self.stack().iter().rev() {
                line.push_str("\n        ");
                line.push_str(frame);
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_record_starts_with_a_syscall_record() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(types::trace_record, head), 0);
        assert_eq!(
            offset_of!(types::trace_record, args),
            size_of::<types::trace_head>()
        );
        assert_eq!(
            size_of::<types::trace_record>() - offset_of!(types::trace_record, strs),
            MAX_ARGS * STR_LEN
        );
    }

    #[test]
    fn events_serialize_with_their_kind() {
        let e = Event::Probe {
            time_ns: 5,
            pid: 1,
            tid: 2,
            thread: "t".into(),
            provider: "myapp".into(),
            name: "tick".into(),
            args: vec![ArgValue::Int(-3), ArgValue::Str("x".into())],
            stack: vec!["f (a.py:1)".into()],
        };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["kind"], "probe");
        assert_eq!(v["args"], serde_json::json!([-3, "x"]));
        assert_eq!(v["stack"][0], "f (a.py:1)");
    }
}
