//! Exports of a profile for the tools people already use: speedscope,
//! the Chrome Trace Event format (Perfetto, chrome://tracing), pprof, and
//! folded stacks.
//!
//! Every export keeps the thread (and, for a recording that followed
//! children, the process) of each stack: speedscope as one profile per
//! view and thread, Chrome as one track per thread in a process per view,
//! pprof as sample labels.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::profile::frame::PyFrame;
use crate::profile::{Profile, Unit, View, ViewKind};
use crate::Result;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// speedscope's file format (<https://www.speedscope.app>).
    Speedscope,
    /// The Chrome Trace Event format, as JSON.
    Chrome,
    /// pprof's gzipped protobuf `Profile`.
    Pprof,
    /// Folded stacks, `root;...;leaf value`, of one view.
    Folded,
}

impl Format {
    /// Every format, as on the command line.
    pub const ALL: [(&'static str, Format); 4] = [
        ("speedscope", Format::Speedscope),
        ("chrome", Format::Chrome),
        ("pprof", Format::Pprof),
        ("folded", Format::Folded),
    ];

    /// A format by name.
    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, f)| f)
    }

    /// The file name extension its files usually have.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Speedscope => "speedscope.json",
            Format::Chrome => "trace.json",
            Format::Pprof => "pb.gz",
            Format::Folded => "folded",
        }
    }
}

/// Says why `views` of `p` cannot be exported as `format`, if they cannot.
pub fn check(p: &Profile, format: Format, views: &[ViewKind]) -> Result<()> {
    for &k in views {
        if p.view(k).is_none() {
            bail!("this profile has no {} view", k.name());
        }
    }
    if format == Format::Folded && views.len() != 1 {
        bail!("folded stacks hold one view: choose it with --view");
    }
    if views.is_empty() && p.views.is_empty() {
        bail!("this profile has no views");
    }
    Ok(())
}

/// Writes `views` of `p` (all recorded views when empty) as `format`.
pub fn export(p: &Profile, format: Format, views: &[ViewKind], out: &mut dyn Write) -> Result<()> {
    let views: Vec<&View> = if views.is_empty() {
        p.views.iter().collect()
    } else {
        views
            .iter()
            .map(|&k| {
                p.view(k)
                    .with_context(|| format!("this profile has no {} view", k.name()))
            })
            .collect::<Result<_>>()?
    };
    if views.is_empty() {
        bail!("this profile has no views");
    }
    match format {
        Format::Speedscope => serde_json::to_writer(&mut *out, &speedscope(p, &views))
            .context("write the speedscope file")?,
        Format::Chrome => {
            serde_json::to_writer(&mut *out, &chrome(p, &views)).context("write the trace")?
        }
        Format::Pprof => {
            let mut gz = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::default());
            gz.write_all(&pprof(p, &views))
                .context("write the pprof file")?;
            gz.finish().context("write the pprof file")?;
        }
        Format::Folded => {
            let [view] = views[..] else {
                bail!("folded stacks hold one view: choose it with --view");
            };
            for line in p.folded(view.kind, false, false)? {
                writeln!(out, "{line}").context("write the folded stacks")?;
            }
        }
    }
    out.flush().context("write the export")
}

/// A stack's frames as names, root first, with the process and thread
/// roots `fold` uses.
fn named_stack(p: &Profile, pid: u32, tid: u32, stack: &[u32]) -> Vec<String> {
    let mut names = Vec::with_capacity(stack.len() + 2);
    if !p.processes.is_empty() {
        names.push(p.process_frame(pid));
    }
    names.push(p.thread_frame(tid));
    names.extend(
        stack
            .iter()
            .map(|&f| p.frames.get(f as usize).cloned().unwrap_or_default()),
    );
    names
}

/// What one sample's value weighs in speedscope's and Chrome's terms.
fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Samples => "none",
        Unit::Nanoseconds => "nanoseconds",
    }
}

/// A thread's stacks (frame indexes, root first) and their values, by
/// (process, thread).
type ThreadStacks<'v> = BTreeMap<(u32, u32), Vec<(&'v [u32], u64)>>;

/// Samples of a view grouped by (process, thread), each with its stack.
fn by_thread(v: &View) -> ThreadStacks<'_> {
    let mut m = ThreadStacks::new();
    for s in &v.samples {
        if s.value > 0 {
            m.entry((s.pid, s.tid))
                .or_default()
                .push((&s.stack, s.value));
        }
    }
    m
}

fn speedscope(p: &Profile, views: &[&View]) -> Value {
    let mut frames: Vec<Value> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut frame = |name: &str| -> usize {
        if let Some(&i) = index.get(name) {
            return i;
        }
        let mut f = json!({ "name": name });
        if let Some((_, file, line)) = PyFrame::split(name) {
            f["file"] = json!(file);
            f["line"] = json!(line);
        }
        frames.push(f);
        index.insert(name.to_string(), frames.len() - 1);
        frames.len() - 1
    };
    let mut profiles = Vec::new();
    for v in views {
        for ((pid, tid), samples) in by_thread(v) {
            let mut stacks = Vec::new();
            let mut weights = Vec::new();
            for (stack, value) in samples {
                // The thread is the profile; its root frame would repeat it.
                let names = named_stack(p, pid, tid, stack);
                let skip = if p.processes.is_empty() { 1 } else { 2 };
                let ids: Vec<usize> = names[skip..].iter().map(|n| frame(n)).collect();
                stacks.push(ids);
                weights.push(value);
            }
            let total: u64 = weights.iter().sum();
            let mut name = format!("{}: {}", v.kind.name(), p.thread_frame(tid));
            if !p.processes.is_empty() {
                name = format!("{name} of {}", p.process_frame(pid));
            }
            profiles.push(json!({
                "type": "sampled",
                "name": name,
                "unit": unit_name(v.unit),
                "startValue": 0,
                "endValue": total,
                "samples": stacks,
                "weights": weights,
            }));
        }
    }
    json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": format!("pyusdt-prof: {}", p.command.join(" ")),
        "exporter": format!("pyusdt-prof {}", env!("CARGO_PKG_VERSION")),
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": profiles,
    })
}

/// A tree of merged stacks, for laying a view out in time.
#[derive(Default)]
struct Node {
    total: u64,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn add(&mut self, names: &[String], value: u64) {
        self.total += value;
        if let Some((first, rest)) = names.split_first() {
            self.children
                .entry(first.clone())
                .or_default()
                .add(rest, value);
        }
    }
}

/// Chrome's trace: one "process" per view, one track per thread, and the
/// thread's stacks merged and laid end to end like a flame graph (the
/// profile holds totals, not times): a frame's duration is its total.
fn chrome(p: &Profile, views: &[&View]) -> Value {
    let mut events = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let track = i as u64 + 1;
        // Microseconds per unit of value.
        let us = match v.unit {
            Unit::Nanoseconds => 1e-3,
            Unit::Samples => 1e6 / p.sample_hz.max(1) as f64,
        };
        events.push(json!({
            "name": "process_name", "ph": "M", "pid": track, "tid": 0,
            "args": { "name": format!("{} view ({})", v.kind.name(), unit_name(v.unit)) },
        }));
        for ((pid, tid), samples) in by_thread(v) {
            let mut root = Node::default();
            for (stack, value) in samples {
                let names = named_stack(p, pid, tid, stack);
                let skip = if p.processes.is_empty() { 1 } else { 2 };
                root.add(&names[skip..], value);
            }
            let mut name = p.thread_frame(tid);
            if !p.processes.is_empty() {
                name = format!("{name} of {}", p.process_frame(pid));
            }
            events.push(json!({
                "name": "thread_name", "ph": "M", "pid": track, "tid": tid,
                "args": { "name": name },
            }));
            lay_out(&root, 0.0, us, track, tid, v.kind, &mut events);
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

fn lay_out(
    node: &Node,
    start: f64,
    us: f64,
    pid: u64,
    tid: u32,
    kind: ViewKind,
    events: &mut Vec<Value>,
) {
    let mut at = start;
    for (name, child) in &node.children {
        events.push(json!({
            "name": name, "cat": kind.name(), "ph": "X",
            "ts": at, "dur": child.total as f64 * us,
            "pid": pid, "tid": tid,
            "args": { "value": child.total },
        }));
        lay_out(child, at, us, pid, tid, kind, events);
        at += child.total as f64 * us;
    }
}

/// Protobuf wire encoding, the little pprof needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field; zero is the default and is left out.
    fn int(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint(u64::from(field) << 3);
            self.varint(v);
        }
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) {
        let mut inner = Pb::default();
        for v in vs {
            inner.varint(v);
        }
        self.bytes(field, &inner.0);
    }
}

/// pprof's string table.
#[derive(Default)]
struct Strings {
    list: Vec<String>,
    index: BTreeMap<String, u64>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u64 {
        if self.list.is_empty() {
            self.list.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as u64;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// pprof: one sample type per view (cpu in samples, the others in
/// nanoseconds); each stack is a sample whose value is set in its view's
/// column, labelled with its thread (name, tid) and, when children were
/// followed, its process. Each frame is a location with one function:
/// Python frames carry their file and first line.
fn pprof(p: &Profile, views: &[&View]) -> Vec<u8> {
    let mut st = Strings::default();
    st.id("");
    let mut out = Pb::default();
    for v in views {
        let mut vt = Pb::default();
        vt.int(1, st.id(v.kind.name()));
        vt.int(
            2,
            st.id(match v.unit {
                Unit::Samples => "count",
                Unit::Nanoseconds => "nanoseconds",
            }),
        );
        out.message(1, vt);
    }
    let (k_thread, k_tid, k_pid) = (st.id("thread"), st.id("tid"), st.id("pid"));
    let mut used = vec![false; p.frames.len()];
    for (col, v) in views.iter().enumerate() {
        for s in &v.samples {
            if s.value == 0 {
                continue;
            }
            let mut sample = Pb::default();
            // Leaf first; location ids are frame indexes plus one.
            sample.packed(1, s.stack.iter().rev().map(|&f| u64::from(f) + 1));
            for &f in &s.stack {
                if let Some(u) = used.get_mut(f as usize) {
                    *u = true;
                }
            }
            sample.packed(
                2,
                (0..views.len()).map(|c| if c == col { s.value } else { 0 }),
            );
            let mut label = Pb::default();
            label.int(1, k_thread);
            let name = p.thread_name(s.tid);
            label.int(2, st.id(name));
            sample.message(3, label);
            let mut label = Pb::default();
            label.int(1, k_tid);
            label.int(3, u64::from(s.tid));
            sample.message(3, label);
            if !p.processes.is_empty() {
                let mut label = Pb::default();
                label.int(1, k_pid);
                label.int(3, u64::from(if s.pid == 0 { p.pid } else { s.pid }));
                sample.message(3, label);
            }
            out.message(2, sample);
        }
    }
    for (i, name) in p.frames.iter().enumerate() {
        if !used[i] {
            continue;
        }
        let id = i as u64 + 1;
        let mut loc = Pb::default();
        loc.int(1, id);
        let mut line = Pb::default();
        line.int(1, id);
        let mut func = Pb::default();
        func.int(1, id);
        if let Some((qualname, file, at)) = PyFrame::split(name) {
            // With --lines the frame names its line; its function, the
            // first line.
            let function = p
                .function_of
                .get(i)
                .and_then(|&f| p.frames.get(f as usize))
                .unwrap_or(name);
            let first = PyFrame::split(function).map_or(at, |(_, _, l)| l);
            line.int(2, at as u64);
            func.int(2, st.id(qualname));
            func.int(3, st.id(function));
            func.int(4, st.id(file));
            func.int(5, first as u64);
        } else {
            func.int(2, st.id(name));
            func.int(3, st.id(name));
        }
        loc.message(4, line);
        out.message(4, loc);
        out.message(5, func);
    }
    let hz = p.sample_hz.max(1);
    let mut period = Pb::default();
    period.int(1, st.id("cpu"));
    period.int(2, st.id("nanoseconds"));
    let comment = st.id(&format!(
        "pyusdt-prof: process {} ({}), Python {}",
        p.pid,
        p.command.join(" "),
        p.python
    ));
    for s in std::mem::take(&mut st.list) {
        out.bytes(6, s.as_bytes());
    }
    out.int(9, p.start_unix_ns);
    out.int(10, p.duration_ns);
    out.message(11, period);
    out.int(12, 1_000_000_000 / hz);
    out.packed(13, [comment]);
    out.0
}

/// `pyusdt-prof export`: the profile at `input` (frames by function with
/// `functions`) as `format`, into `output` (default: the profile's name
/// with the format's extension); the views `views` (default: all; folded:
/// cpu). Refuses what cannot be exported before creating any file.
pub fn export_file(
    input: &std::path::Path,
    format: Format,
    output: Option<std::path::PathBuf>,
    views: Vec<ViewKind>,
    functions: bool,
) -> Result<std::path::PathBuf> {
    let p = Profile::read_as(input, functions)?;
    let views = if views.is_empty() && format == Format::Folded {
        vec![ViewKind::Cpu]
    } else {
        views
    };
    let out = output.unwrap_or_else(|| {
        crate::profile::derived_path(input, &format!(".{}", format.extension()))
    });
    check(&p, format, &views)?;
    crate::profile::write_atomic(&out, |w| export(&p, format, &views, w))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut pb = Pb::default();
        pb.varint(300);
        assert_eq!(pb.0, [0xac, 0x02]);
        let mut pb = Pb::default();
        pb.int(1, 150);
        assert_eq!(pb.0, [0x08, 0x96, 0x01]);
        let mut pb = Pb::default();
        pb.int(1, 0);
        assert!(pb.0.is_empty());
    }
}
