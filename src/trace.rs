//! Live events: every hit of chosen USDT probes of a process, and its
//! chosen syscalls, each with its arguments (or duration and return value)
//! and, if asked, its thread's Python stack, delivered as they happen.
//!
//! [`trace`] resolves each [`ProbeSpec`] against the USDT notes of every
//! file the process maps ([`crate::usdt::list`]), learns each probe's
//! argument types (the spec's own, else the file's `.pyusdt.argtypes`
//! section, else pyusdt's built-in table, else integers), and attaches the
//! one USDT program of `bpf/trace.bpf.c` to each probe with a cookie that
//! says how to read its arguments. Syscalls come from `raw_syscalls`
//! (tp_btf, or raw_tp where the kernel lacks it), filtered in the kernel to
//! the process and the chosen numbers. Events cross in a ring buffer; a
//! full one is counted as lost. Python stacks are walked in the kernel by
//! the recorder's walker (`bpf/pyframe.bpf.h`) with the layout the process
//! announced, and named as events arrive, so names resolve while the
//! target is alive: `qualname (file:firstline)`, as profiles name frames.
//!
//! The `.pyusdt.argtypes` contract: a non-allocated ELF section of that
//! name holds UTF-8 lines `provider:name:type,type,...\n`, each type `int`
//! or `str` (nothing after the second colon for a probe without
//! arguments). pyusdt's app-defined probes carry it.
//!
//! Probes are matched once, when the trace starts: a probe the process
//! loads later (an app-defined probe's object, built at its provider's
//! first use) is not traced.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use pyusdt_prof::trace::{trace, Event, ProbeSpec, TraceOptions};
//!
//! let opts = TraceOptions {
//!     probes: vec!["myapp:tick".parse::<ProbeSpec>().map_err(anyhow::Error::msg)?],
//!     syscalls: Some(vec!["write".into()]),
//!     stacks: true,
//!     duration: None,
//! };
//! let stop = AtomicBool::new(false);
//! let summary = trace(4242, &opts, &stop, || eprintln!("attached"), |e| {
//!     if let Event::Probe { name, args, stack, .. } = &e {
//!         println!("{name} {args:?} in {:?}", stack.last());
//!     }
//!     true // false stops the trace
//! })?;
//! eprintln!("{} events, {} lost", summary.events, summary.lost);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder, UsdtOpts};
use serde::Serialize;

use crate::bpf::trace::{types, TraceSkel, TraceSkelBuilder};
use crate::bpf::{cpu, procs};
use crate::layout::{self, Layout};
use crate::pyname::Namer;
use crate::record::{self, POLL_THREAD};
use crate::target::{self, Lookup, Target};
use crate::{syscalls, usdt, Result};

/// Arguments read per probe hit (TRACE_MAX_ARGS of bpf/trace_events.h).
pub const MAX_ARGS: usize = 12;
/// Bytes kept of each string argument, its NUL included (TRACE_STR_LEN).
pub const STR_LEN: usize = 128;
/// Probes one trace attaches to at most (TRACE_MAX_PROBES).
pub const MAX_PROBES: usize = 1024;
/// Syscall numbers that can be chosen one by one (TRACE_MAX_SYSCALLS).
const MAX_SYSCALLS: i64 = 512;

/// The ELF section that lists a file's probes' argument types.
pub const ARGTYPES_SECTION: &str = ".pyusdt.argtypes";

/// pyusdt's per-call probes: they fire only once the extension's poll
/// thread has turned sys.monitoring on (Python 3.12 and later).
const PER_CALL: [&str; 8] = [
    "PY_START",
    "PY_RESUME",
    "PY_RETURN",
    "PY_YIELD",
    "CALL",
    "LINE",
    "PY_UNWIND",
    "PY_THROW",
];

/// The type of a probe argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgType {
    /// A signed 64-bit integer.
    Int,
    /// A `const char *` to NUL-terminated text (UTF-8 expected).
    Str,
}

impl ArgType {
    /// `int` or `str`.
    pub fn name(self) -> &'static str {
        match self {
            ArgType::Int => "int",
            ArgType::Str => "str",
        }
    }

    /// The type named `int` or `str`.
    pub fn parse(s: &str) -> Option<ArgType> {
        match s.trim() {
            "int" => Some(ArgType::Int),
            "str" => Some(ArgType::Str),
            _ => None,
        }
    }
}

/// Which probes to trace: `provider:name`, `name` (any provider), or either
/// with argument types, `provider:name(int,str)`. Provider and name may
/// hold `*`, which matches any text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The provider, or None for any.
    pub provider: Option<String>,
    /// The probe's name (may hold `*`).
    pub name: String,
    /// The arguments' types, if given: these many arguments are read.
    pub types: Option<Vec<ArgType>>,
}

impl ProbeSpec {
    /// Whether this spec names probe `provider:name`.
    pub fn matches(&self, provider: &str, name: &str) -> bool {
        self.provider.as_deref().is_none_or(|p| glob(p, provider)) && glob(&self.name, name)
    }
}

impl FromStr for ProbeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ProbeSpec, String> {
        let (head, types) = match s.split_once('(') {
            None => (s, None),
            Some((head, rest)) => {
                let Some(inner) = rest.strip_suffix(')') else {
                    return Err(format!("`{s}`: the argument types end with `)`"));
                };
                let mut types = Vec::new();
                if !inner.trim().is_empty() {
                    for t in inner.split(',') {
                        types.push(ArgType::parse(t).ok_or_else(|| {
                            format!("`{s}`: `{}` is not an argument type (int or str)", t.trim())
                        })?);
                    }
                }
                if types.len() > MAX_ARGS {
                    return Err(format!("`{s}`: at most {MAX_ARGS} arguments"));
                }
                (head, Some(types))
            }
        };
        let (provider, name) = match head.split_once(':') {
            Some((p, n)) => (Some(p), n),
            None => (None, head),
        };
        let bad = |part: &str| {
            part.is_empty() || part.chars().any(|c| c.is_whitespace() || ":()".contains(c))
        };
        if bad(name) || provider.is_some_and(bad) {
            return Err(format!(
                "`{s}` is not a probe: write provider:name, name, or provider:name(int,str)"
            ));
        }
        Ok(ProbeSpec {
            provider: provider.map(str::to_string),
            name: name.to_string(),
            types,
        })
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.provider {
            write!(f, "{p}:")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.types {
            write!(f, "({})", type_list(t))?;
        }
        Ok(())
    }
}

fn type_list(types: &[ArgType]) -> String {
    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// The probes; each must match at least one probe of the process.
    pub probes: Vec<ProbeSpec>,
    /// None: no syscall events; Some(empty): every syscall; else the
    /// syscalls of these names.
    pub syscalls: Option<Vec<String>>,
    /// Walk the thread's Python stack at each event (needs pyusdt in the
    /// process).
    pub stacks: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

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

/// What a trace did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Events delivered.
    pub events: u64,
    /// Events lost (the ring buffer was full).
    pub lost: u64,
    /// What was attached: `provider:name(types)` per probe.
    pub probes: Vec<String>,
    /// Events whose Python stack was lost (a full stack or name map).
    pub stacks_lost: u64,
    /// Things the caller should know (a probe that cannot fire here).
    pub warnings: Vec<String>,
}

/// A trace asked for something the process does not have: a caller's
/// mistake (the command line exits with 2 on it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceError {
    /// No probe of the process matches a spec.
    NoMatch {
        /// The process.
        pid: u32,
        /// The spec, as given.
        spec: String,
        /// Every `provider:name` the process carries.
        carried: Vec<String>,
    },
    /// A syscall name that x86_64 does not have.
    UnknownSyscall(String),
    /// Neither probes nor syscalls.
    Nothing,
    /// More probes matched than one trace attaches.
    TooMany(usize),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::NoMatch { pid, spec, carried } if carried.is_empty() => {
                write!(
                    f,
                    "no probe matches {spec}: process {pid} carries no USDT probes"
                )
            }
            TraceError::NoMatch { pid, spec, carried } => write!(
                f,
                "no probe matches {spec}; process {pid} carries {} (pyusdt-prof list -p {pid})",
                carried.join(", ")
            ),
            TraceError::UnknownSyscall(s) => write!(f, "`{s}` is not a syscall"),
            TraceError::Nothing => write!(f, "nothing to trace: name a probe, or --syscalls"),
            TraceError::TooMany(n) => write!(
                f,
                "{n} probes match; one trace attaches at most {MAX_PROBES}: name fewer"
            ),
        }
    }
}

impl std::error::Error for TraceError {}

/// Whether `text` matches `pattern`, where `*` matches any text.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The argument types of each probe an `.pyusdt.argtypes` section lists,
/// by (provider, name); lines that do not parse are skipped.
pub fn parse_argtypes(text: &str) -> HashMap<(String, String), Vec<ArgType>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.trim_end_matches('\r').splitn(3, ':');
        let (Some(provider), Some(name), Some(types)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if provider.is_empty() || name.is_empty() {
            continue;
        }
        let types: Option<Vec<ArgType>> = if types.trim().is_empty() {
            Some(Vec::new())
        } else {
            types.split(',').map(ArgType::parse).collect()
        };
        if let Some(t) = types {
            out.insert((provider.to_string(), name.to_string()), t);
        }
    }
    out
}

/// The bytes of section `name` of a little-endian ELF64 image, if it has
/// one (a section without file bytes, NOBITS, has none).
pub fn elf_section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?));
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(0x3a)?),
        usize::from(u16_at(0x3c)?),
        usize::from(u16_at(0x3e)?),
    );
    // (name offset, type, file offset, size) of section i.
    let section = |i: usize| -> Option<(usize, u32, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(at)? as usize,
            u32_at(at + 4)?,
            usize::try_from(u64_at(at + 0x18)?).ok()?,
            usize::try_from(u64_at(at + 0x20)?).ok()?,
        ))
    };
    let (_, _, str_off, str_size) = section(shstrndx)?;
    let names = image.get(str_off..str_off.checked_add(str_size)?)?;
    for i in 0..shnum {
        let Some((name_off, kind, off, size)) = section(i) else {
            continue;
        };
        let Some(n) = names.get(name_off..) else {
            continue;
        };
        let end = n.iter().position(|&c| c == 0).unwrap_or(n.len());
        // SHT_NOBITS (8) has no bytes in the file.
        if &n[..end] == name.as_bytes() && kind != 8 {
            return image.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// pyusdt's own probes' argument types (pyext/src/probes.rs).
fn builtin_types(provider: &str, name: &str) -> Option<Vec<ArgType>> {
    use ArgType::{Int, Str};
    if provider != "pyusdt" {
        return None;
    }
    Some(match name {
        "PY_START" | "PY_RESUME" => vec![Str, Str, Int, Int],
        "PY_RETURN" | "PY_YIELD" | "CALL" | "PY_UNWIND" | "PY_THROW" => {
            vec![Str, Str, Int, Int, Str]
        }
        "LINE" => vec![Str, Str, Int],
        "layout" => vec![Int, Int],
        "span_begin" | "span_end" => vec![Str, Int],
        _ => return None,
    })
}

/// A probe as a trace attaches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its provider.
    pub provider: String,
    /// Its name.
    pub name: String,
    /// The file that holds it, as the process mapped it.
    pub file: String,
    /// The types of the arguments read.
    pub types: Vec<ArgType>,
}

impl Resolved {
    /// `provider:name(types)`.
    pub fn label(&self) -> String {
        format!(
            "{}:{}({})",
            self.provider,
            self.name,
            type_list(&self.types)
        )
    }
}

/// The probes of process `pid` that `specs` name, each once per file that
/// holds it, with the types of its arguments; a [`TraceError::NoMatch`]
/// for a spec that names none.
pub fn resolve(pid: u32, specs: &[ProbeSpec]) -> Result<Vec<Resolved>> {
    let probes = usdt::list(pid)?;
    let mut argtypes: HashMap<String, HashMap<(String, String), Vec<ArgType>>> = HashMap::new();
    let mut out: Vec<Resolved> = Vec::new();
    for spec in specs {
        let mut matched = false;
        for p in probes.iter().filter(|p| spec.matches(&p.provider, &p.name)) {
            matched = true;
            if out
                .iter()
                .any(|r| r.file == p.file && r.provider == p.provider && r.name == p.name)
            {
                continue;
            }
            let types = match &spec.types {
                Some(t) => t.clone(),
                None => {
                    let section = argtypes.entry(p.file.clone()).or_insert_with(|| {
                        std::fs::read(target::through_root(pid, &p.file))
                            .ok()
                            .and_then(|image| {
                                elf_section(&image, ARGTYPES_SECTION)
                                    .map(|b| parse_argtypes(&String::from_utf8_lossy(b)))
                            })
                            .unwrap_or_default()
                    });
                    section
                        .get(&(p.provider.clone(), p.name.clone()))
                        .cloned()
                        .or_else(|| builtin_types(&p.provider, &p.name))
                        .unwrap_or_else(|| {
                            let n = p.args.split_whitespace().count().min(MAX_ARGS);
                            vec![ArgType::Int; n]
                        })
                }
            };
            out.push(Resolved {
                provider: p.provider.clone(),
                name: p.name.clone(),
                file: p.file.clone(),
                types,
            });
        }
        if !matched {
            let carried: BTreeSet<String> = probes
                .iter()
                .map(|p| format!("{}:{}", p.provider, p.name))
                .collect();
            return Err(TraceError::NoMatch {
                pid,
                spec: spec.to_string(),
                carried: carried.into_iter().collect(),
            }
            .into());
        }
    }
    if out.len() > MAX_PROBES {
        return Err(TraceError::TooMany(out.len()).into());
    }
    Ok(out)
}

/// The x86_64 number of each syscall named; a [`TraceError`] for a name
/// that is none.
pub fn syscall_numbers(names: &[String]) -> Result<Vec<i64>> {
    names
        .iter()
        .map(|n| {
            (0..MAX_SYSCALLS)
                .find(|&nr| syscalls::name(nr) == Some(n.as_str()))
                .ok_or_else(|| TraceError::UnknownSyscall(n.clone()).into())
        })
        .collect()
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of [`Event::time_ns`].
pub use crate::record::monotonic_ns;

/// Opens and loads the trace object: rodata set, the walker's maps shared
/// with the procs object (if the process announced a layout), maps it
/// does not need shrunk, the syscall programs loaded only if wanted.
fn load_trace<'o>(
    storage: &'o mut MaybeUninit<OpenObject>,
    pid: u32,
    shared: Option<&procs::ProcsSkel<'_>>,
    stacks: bool,
    syscalls: Option<&[i64]>,
    btf: bool,
) -> Result<TraceSkel<'o>> {
    let mut open = TraceSkelBuilder::default()
        .open(storage)
        .context("open the trace programs")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the trace programs have no rodata")?;
    ro.target_tgid = pid;
    ro.follow = 0;
    ro.with_lines = 0;
    ro.with_stacks = u8::from(stacks);
    ro.all_syscalls = u8::from(syscalls.is_some_and(|s| s.is_empty()));
    let m = &mut open.maps;
    m.code_lines
        .set_max_entries(1)
        .context("shrink the unused line table map")?;
    m.kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    // Every thread is traced: the span map (record --span) is not read.
    m.span_threads
        .set_max_entries(1)
        .context("shrink the unused span map")?;
    if !stacks {
        m.pystacks
            .set_max_entries(1)
            .context("shrink the unused stack map")?;
        m.code_names
            .set_max_entries(1)
            .context("shrink the unused name map")?;
    }
    match shared {
        Some(p) => {
            m.targets
                .reuse_fd(p.maps.targets.as_fd())
                .context("share the process table")?;
            m.layouts
                .reuse_fd(p.maps.layouts.as_fd())
                .context("share the layouts")?;
            m.gil_waits
                .reuse_fd(p.maps.gil_waits.as_fd())
                .context("share the GIL waits")?;
        }
        None => {
            m.gil_waits
                .set_max_entries(1)
                .context("shrink the unused GIL map")?;
        }
    }
    let sys = syscalls.is_some();
    let p = &mut open.progs;
    p.trace_enter_btf.set_autoload(sys && btf);
    p.trace_exit_btf.set_autoload(sys && btf);
    p.trace_enter_raw.set_autoload(sys && !btf);
    p.trace_exit_raw.set_autoload(sys && !btf);
    let skel = open.load().context("load the trace programs")?;
    if let Some(nrs) = syscalls {
        for &nr in nrs {
            skel.maps
                .syscall_wanted
                .update(&(nr as u32).to_ne_bytes(), &[1u8], MapFlags::ANY)
                .context("choose a syscall to trace")?;
        }
    }
    Ok(skel)
}

/// Names events' stacks as they arrive: from the names the BPF side read
/// at first sight, else from the process's memory.
struct Stacks<'a, M: MapCore> {
    pystacks: &'a M,
    code_names: &'a M,
    namer: Namer,
    by_id: HashMap<u64, Vec<String>>,
}

impl<M: MapCore> Stacks<'_, M> {
    fn name(&mut self, pid: u32, code: u64) -> String {
        let mut key = Vec::with_capacity(16);
        key.extend_from_slice(&pid.to_ne_bytes());
        key.extend_from_slice(&0u32.to_ne_bytes());
        key.extend_from_slice(&code.to_ne_bytes());
        if let Ok(Some(bytes)) = self.code_names.lookup(&key, MapFlags::ANY) {
            let mut n = cpu::types::code_name::default();
            if plain::copy_from_bytes(&mut n, &bytes).is_ok() {
                let name = crate::record::code_name(&n);
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
        let Ok((codes, truncated)) = record::python_stack(self.pystacks, id) else {
            return Vec::new();
        };
        let names: Vec<String> = codes.iter().map(|&(c, _)| self.name(pid, c)).collect();
        let mut out = Vec::with_capacity(names.len() + 1);
        if truncated {
            out.push("[truncated]".to_string());
        }
        out.extend(record::program_frames(&names, |f| f.as_str()).cloned());
        self.by_id.insert(id, out.clone());
        out
    }
}

/// An event as the ring buffer carries it (a `trace_head`, and for a
/// probe hit the rest of a `trace_record`), made into an [`Event`]; None
/// for a short record and for the instrumentation's own syscalls
/// (pyusdt's poll thread).
fn decode(
    data: &[u8],
    probes: &[Resolved],
    stacks: &mut Stacks<'_, impl MapCore>,
) -> Option<Event> {
    let mut h = types::trace_head::default();
    plain::copy_from_bytes(&mut h, data).ok()?;
    let thread = record::comm_str(&h.comm);
    if types::trace_kind(h.kind) == types::trace_kind::TRACE_SYSCALL {
        if thread == POLL_THREAD {
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

/// Waits up to `timeout` for `n` announcements in `inbox` (polling
/// `ring`); the last one.
fn announcements(
    ring: &libbpf_rs::RingBuffer<'_>,
    inbox: &layout::Inbox,
    target: &Target,
    n: usize,
    timeout: Duration,
) -> Result<Option<layout::Event>> {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    let mut last = None;
    while Instant::now() < deadline && target.alive() {
        match ring.poll(Duration::from_millis(50)) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            r => r.context("poll the layout ring buffer")?,
        }
        for e in inbox.borrow_mut().drain(..) {
            seen += 1;
            last = Some(e);
        }
        if seen >= n {
            return Ok(last);
        }
    }
    Ok(None)
}

/// Traces `pid` until `stop` is set, the duration runs out, the target
/// exits, or `on_event` returns false. `on_ready` runs once everything is
/// attached (and, for pyusdt's per-call probes, once the process has
/// turned them on). Events arrive in the order the kernel sent them: a
/// syscall when it returns, stamped with its entry time.
pub fn trace(
    pid: u32,
    opts: &TraceOptions,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
    mut on_event: impl FnMut(Event) -> bool,
) -> Result<TraceSummary> {
    if opts.probes.is_empty() && opts.syscalls.is_none() {
        return Err(TraceError::Nothing.into());
    }
    let nrs = opts.syscalls.as_deref().map(syscall_numbers).transpose()?;
    let resolved = resolve(pid, &opts.probes)?;
    let (target, has_pyusdt) = match target::lookup(pid)? {
        Lookup::Ready(t) => (t, true),
        Lookup::Gone => bail!("no process with PID {pid}"),
        Lookup::WithoutPyusdt(comm) | Lookup::NotPython(comm) => {
            if opts.stacks {
                bail!(
                    "process {pid} ({comm}) does not run pyusdt: Python stacks need it (start \
                     it with `python -m pyusdt app.py`); trace without --stacks"
                );
            }
            let t = Target {
                pid,
                comm,
                extension: PathBuf::new(),
            };
            (t, false)
        }
    };

    // The layout, with the link that asks for it kept until everything is
    // on: its announcements, which follow the poll thread's ticks, tell
    // when pyusdt has turned its per-call probes on. Neither stacks nor
    // per-call probes: no layout is needed (app-defined probes and spans
    // fire without pyusdt's poll thread).
    let per_call: Vec<&str> = resolved
        .iter()
        .filter(|r| r.provider == "pyusdt" && PER_CALL.contains(&r.name.as_str()))
        .map(|r| r.name.as_str())
        .collect();
    let mut s_layout = MaybeUninit::uninit();
    let lay_skel;
    let mut asking: Option<(Link, libbpf_rs::RingBuffer<'_>, layout::Inbox)> = None;
    let mut l: Option<Layout> = None;
    if has_pyusdt && (opts.stacks || !per_call.is_empty()) {
        lay_skel = layout::open(&mut s_layout)?;
        let link = layout::attach(&lay_skel, &target)?;
        let inbox = layout::Inbox::default();
        let mut b = RingBufferBuilder::new();
        layout::watch(&mut b, &lay_skel, &inbox)?;
        let ring = b.build().context("build the layout ring buffer")?;
        match announcements(&ring, &inbox, &target, 1, Duration::from_secs(10))? {
            Some(e) => l = Some(layout::accept(&e)?),
            None if !target.alive() => {
                bail!("process {pid} exited before it announced its layout")
            }
            None => bail!(
                "process {pid} ({}) did not announce its layout within 10s: pyusdt is loaded \
                 but not enabled (start the program with `python -m pyusdt`, or call \
                 `pyusdt.enable()`)",
                target.comm
            ),
        }
        asking = Some((link, ring, inbox));
    }

    let (mut s_procs_btf, mut s_procs_raw) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let procs = match &l {
        Some(l) => Some(record::btf_or_raw(
            &mut s_procs_btf,
            &mut s_procs_raw,
            |s, btf| record::load_procs(s, pid, l, false, btf),
        )?),
        None => None,
    };
    let (mut s_btf, mut s_raw) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let shared = procs.as_ref().map(|(p, _)| p);
    let mut btf_used = true;
    let skel = record::btf_or_raw(&mut s_btf, &mut s_raw, |s, btf| {
        load_trace(s, pid, shared, opts.stacks, nrs.as_deref(), btf)
    })?;
    if nrs.is_some() {
        // Which variant loaded: the tp_btf programs, unless only raw_tp did.
        btf_used = skel.progs.trace_enter_btf.autoload();
    }

    for (i, r) in resolved.iter().enumerate() {
        let conf = types::probe_conf {
            nargs: r.types.len().min(MAX_ARGS) as u32,
            str_mask: r
                .types
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == ArgType::Str)
                .fold(0, |m, (i, _)| m | (1 << i)),
        };
        // SAFETY: probe_conf is plain C data without padding.
        let bytes = unsafe { plain::as_bytes(&conf) };
        skel.maps
            .probe_confs
            .update(&(i as u32).to_ne_bytes(), bytes, MapFlags::ANY)
            .context("give the trace program a probe's arguments")?;
    }
    let mut links = Vec::new();
    for (i, r) in resolved.iter().enumerate() {
        let opts = UsdtOpts {
            cookie: i as u64,
            ..Default::default()
        };
        let link = skel
            .progs
            .trace_probe
            .attach_usdt_with_opts(
                pid as i32,
                target::through_root(pid, &r.file),
                &r.provider,
                &r.name,
                opts,
            )
            .with_context(|| format!("attach to {}:{} in {}", r.provider, r.name, r.file))?;
        links.push(link);
    }
    if nrs.is_some() {
        let p = &skel.progs;
        links.push(record::attach_tp(
            btf_used,
            &p.trace_enter_btf,
            &p.trace_enter_raw,
            "raw_syscalls:sys_enter",
        )?);
        links.push(record::attach_tp(
            btf_used,
            &p.trace_exit_btf,
            &p.trace_exit_raw,
            "raw_syscalls:sys_exit",
        )?);
    }

    let mut warnings = Vec::new();
    if let (Some(l), false) = (&l, per_call.is_empty()) {
        if l.py_version_hex < 0x030c_0000 {
            warnings.push(format!(
                "Python {} has no sys.monitoring: pyusdt's per-call probes ({}) never fire there",
                layout::python_version(l),
                per_call.join(", ")
            ));
        } else if let Some((_, ring, inbox)) = &asking {
            // The poll thread fires the layout probe, then turns on the
            // probes whose semaphores rose, each tick: the second
            // announcement after the attach follows a tick that saw them.
            ring.consume().context("poll the layout ring buffer")?;
            inbox.borrow_mut().clear();
            if announcements(ring, inbox, &target, 2, Duration::from_secs(5))?.is_none()
                && target.alive()
            {
                warnings.push(
                    "pyusdt's poll thread did not tick within 5s: per-call probes may start late"
                        .into(),
                );
            }
        }
    }
    drop(asking);

    // Records as they came, each after its length: one buffer, reused.
    let queue: Rc<RefCell<Vec<u8>>> = Rc::default();
    let sink = Rc::clone(&queue);
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&skel.maps.trace_events, move |data: &[u8]| {
            let mut q = sink.borrow_mut();
            q.extend_from_slice(&(data.len() as u32).to_ne_bytes());
            q.extend_from_slice(data);
            0
        })
        .context("watch the trace ring buffer")?;
    let ring = builder.build().context("build the trace ring buffer")?;

    let mut stacks = Stacks {
        pystacks: &skel.maps.pystacks,
        code_names: &skel.maps.code_names,
        namer: Namer::new(pid, l),
        by_id: HashMap::new(),
    };
    let mut delivered = 0u64;
    let mut going = true;
    let mut deliver = |queue: &RefCell<Vec<u8>>, going: &mut bool| {
        let mut q = queue.borrow_mut();
        let mut rest = &q[..];
        while *going && rest.len() >= 4 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(data) = rest.get(4..4 + len) else {
                break;
            };
            rest = &rest[4 + len..];
            if let Some(e) = decode(data, &resolved, &mut stacks) {
                delivered += 1;
                *going = on_event(e);
            }
        }
        q.clear();
    };
    let started = Instant::now();
    on_ready();
    let tick = Duration::from_millis(100);
    let mut next_check = Instant::now() + tick;
    while going {
        match ring.poll(tick) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            r => r.context("poll the trace ring buffer")?,
        }
        deliver(&queue, &mut going);
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if Instant::now() >= next_check {
            next_check += tick;
            if !target.alive() {
                break;
            }
        }
    }
    // Detach, then hand over what is still in the ring buffer.
    drop(links);
    drop(procs);
    if going {
        ring.consume().context("drain the trace ring buffer")?;
        deliver(&queue, &mut going);
    }
    let (lost, stacks_lost) = match skel.maps.bss_data.as_deref() {
        Some(b) => (
            record::live(&b.lost),
            record::live(&b.pystack_errors[3]) + record::live(&b.pystack_errors[4]),
        ),
        None => (0, 0),
    };
    Ok(TraceSummary {
        events: delivered,
        lost,
        probes: resolved.iter().map(Resolved::label).collect(),
        stacks_lost,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ProbeSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_probe_specs() {
        assert_eq!(
            spec("pyusdt:PY_START"),
            ProbeSpec {
                provider: Some("pyusdt".into()),
                name: "PY_START".into(),
                types: None
            }
        );
        assert_eq!(
            spec("tick"),
            ProbeSpec {
                provider: None,
                name: "tick".into(),
                types: None
            }
        );
        assert_eq!(
            spec("myapp:tick(int, str)"),
            ProbeSpec {
                provider: Some("myapp".into()),
                name: "tick".into(),
                types: Some(vec![ArgType::Int, ArgType::Str])
            }
        );
        assert_eq!(spec("tick()").types, Some(vec![]));
        assert_eq!(spec("py*:PY_*").to_string(), "py*:PY_*");
        assert_eq!(
            spec("myapp:tick(int,str)").to_string(),
            "myapp:tick(int,str)"
        );
        for bad in [
            "",
            ":",
            "a:",
            ":b",
            "a:b:c",
            "a b",
            "a:b(int",
            "a:b(float)",
            "a:b(int)x",
        ] {
            assert!(bad.parse::<ProbeSpec>().is_err(), "{bad:?} parsed");
        }
        let err = "a:b(int,float)".parse::<ProbeSpec>().unwrap_err();
        assert_eq!(
            err,
            "`a:b(int,float)`: `float` is not an argument type (int or str)"
        );
        let many = format!("a:b({})", vec!["int"; 13].join(","));
        assert!(many.parse::<ProbeSpec>().is_err());
    }

    #[test]
    fn specs_match_by_provider_and_glob() {
        assert!(spec("PY_START").matches("pyusdt", "PY_START"));
        assert!(spec("PY_START").matches("other", "PY_START"));
        assert!(!spec("pyusdt:PY_START").matches("other", "PY_START"));
        assert!(spec("pyusdt:PY_*").matches("pyusdt", "PY_RETURN"));
        assert!(!spec("pyusdt:PY_*").matches("pyusdt", "LINE"));
        assert!(spec("*:span_*").matches("pyusdt", "span_end"));
        assert!(spec("*").matches("x", "y"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "a-b-c") && !glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn parses_argtypes_sections() {
        let t = parse_argtypes(
            "myapp:tick:int,str\nmyapp:empty:\nmyapp:bad:float\nnot a line\nother:x:str\n",
        );
        use ArgType::{Int, Str};
        let get = |p: &str, n: &str| t.get(&(p.to_string(), n.to_string())).cloned();
        assert_eq!(get("myapp", "tick"), Some(vec![Int, Str]));
        assert_eq!(get("myapp", "empty"), Some(vec![]));
        assert_eq!(get("other", "x"), Some(vec![Str]));
        assert_eq!(get("myapp", "bad"), None);
        assert_eq!(t.len(), 3);
    }

    /// A minimal ELF64 image with a null section, `.shstrtab` and one
    /// section `name` holding `data`.
    fn elf_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut strtab = b"\0.shstrtab\0".to_vec();
        let name_off = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let mut img = vec![0u8; 64];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let data_off = img.len();
        img.extend_from_slice(data);
        let str_off = img.len();
        img.extend_from_slice(&strtab);
        let shoff = img.len();
        let sh = |name: u32, kind: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            s
        };
        let headers = [
            sh(0, 0, 0, 0),
            sh(1, 3, str_off, strtab.len()),
            sh(name_off, 1, data_off, data.len()),
        ];
        for h in headers {
            img.extend_from_slice(&h);
        }
        img[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        img[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        img[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        img[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        img
    }

    #[test]
    fn finds_the_argtypes_section() {
        let img = elf_with(ARGTYPES_SECTION, b"myapp:tick:int,str\n");
        assert_eq!(
            elf_section(&img, ARGTYPES_SECTION),
            Some(&b"myapp:tick:int,str\n"[..])
        );
        assert_eq!(elf_section(&img, ".other"), None);
        assert_eq!(elf_section(b"not an elf", ARGTYPES_SECTION), None);
        let cut = &img[..img.len() - 64];
        assert_eq!(elf_section(cut, ARGTYPES_SECTION), None);
    }

    #[test]
    fn knows_pyusdt_probes_and_syscalls() {
        use ArgType::{Int, Str};
        assert_eq!(
            builtin_types("pyusdt", "PY_START"),
            Some(vec![Str, Str, Int, Int])
        );
        assert_eq!(builtin_types("pyusdt", "span_end"), Some(vec![Str, Int]));
        assert_eq!(builtin_types("myapp", "PY_START"), None);
        assert_eq!(
            syscall_numbers(&["read".into(), "write".into()]).ok(),
            Some(vec![0, 1])
        );
        let err = syscall_numbers(&["wirte".into()]).unwrap_err();
        assert_eq!(err.to_string(), "`wirte` is not a syscall");
    }

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
