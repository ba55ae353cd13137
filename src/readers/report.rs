//! `pyusdt-prof report`: the numbers behind the flame graphs. For each
//! view, the Python functions with the most self and total weight; for the
//! syscall view, a table per function of its syscalls (calls, total, mean,
//! p50, p99); for the syscall and offcpu views, bcc-style log2 histograms
//! of durations per function. As text for a terminal (80 columns) or as
//! JSON for scripts (the schema is [`Report`]; `version` changes when a
//! field changes meaning or goes away).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use anyhow::bail;
use serde::Serialize;

use crate::profile::frame::PyFrame;
use crate::profile::{add_hist, Profile, Unit, View, ViewKind};
use crate::Result;

/// The `format` of a JSON report.
pub const REPORT_FORMAT: &str = "pyusdt-prof report";
/// The version of the JSON report's schema.
pub const REPORT_VERSION: u32 = 1;
/// How the gil view's stacks name the thread that held the GIL.
pub const GIL_HOLDER_PREFIX: &str = "GIL held by ";

/// The name of the weight of stacks without a Python frame.
pub const NO_PYTHON: &str = "[no Python frame]";

/// What to report.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The views (all recorded ones when empty).
    pub views: Vec<ViewKind>,
    /// Only the threads with this name or thread id.
    pub thread: Option<String>,
    /// One section per thread instead of all threads merged.
    pub per_thread: bool,
    /// Rows per table.
    pub limit: usize,
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: &'static str,
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The recorded process, its command line and interpreter.
    pub pid: u32,
    /// See [`Report::pid`].
    pub command: Vec<String>,
    /// See [`Report::pid`].
    pub python: String,
    /// How long the recording lasted.
    pub duration_ns: u64,
    /// One section per view (and per thread with `per_thread`).
    pub sections: Vec<Section>,
    /// Recorded with `--span NAME`: the span, how many ended and how long
    /// they lasted (every section holds only what happened inside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<crate::profile::SpanSummary>,
}

/// One view, over all threads or one.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// The view's name.
    pub view: &'static str,
    /// `samples` or `nanoseconds`.
    pub unit: &'static str,
    /// The threads covered: `all`, or `thread NAME (TID)`.
    pub threads: String,
    /// The weight of every stack in the section.
    pub total: u64,
    /// Events (samples, switches, calls) in the section.
    pub events: u64,
    /// The functions with the most self weight.
    pub by_self: Vec<FunctionRow>,
    /// The functions with the most total weight.
    pub by_total: Vec<FunctionRow>,
    /// The syscall view: per function (most time first), its syscalls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallTable>,
    /// The syscall, offcpu and gil views: durations per function.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub histograms: Vec<Histogram>,
    /// The gil view: who held the GIL while the threads waited, and where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gil_holders: Vec<HolderRow>,
    /// Why the view could not be measured, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// How it was measured where that differs from the usual way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Time the threads waited for the GIL while one thread held it, at one
/// function.
#[derive(Debug, Clone, Serialize)]
pub struct HolderRow {
    /// `thread NAME (TID)`, or `[unknown]`.
    pub holder: String,
    /// The holder's innermost Python function when it let the GIL go.
    pub function: String,
    /// Waits it ended.
    pub waits: u64,
    /// Their time.
    pub total_ns: u64,
}

/// A Python function's weight.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRow {
    /// `qualname (file:firstline)`, or [`NO_PYTHON`].
    pub function: String,
    /// Weight where it is the innermost Python frame.
    pub self_value: u64,
    /// Weight where it is anywhere in the stack (once per stack).
    pub total_value: u64,
    /// The calls view: how many times it was called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
}

/// One function's syscalls.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallTable {
    /// The function that made them (innermost Python frame).
    pub function: String,
    /// All its syscalls' time.
    pub total_ns: u64,
    /// All its syscalls.
    pub calls: u64,
    /// Per syscall, most time first.
    pub rows: Vec<SyscallRow>,
}

/// One syscall of one function.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallRow {
    /// `read`, `futex`, ...
    pub syscall: String,
    /// How many calls.
    pub calls: u64,
    /// Their time.
    pub total_ns: u64,
    /// total_ns / calls.
    pub mean_ns: u64,
    /// The median, estimated from the log2 histogram (interpolated within
    /// its power-of-two bucket).
    pub p50_ns: u64,
    /// The 99th percentile, likewise.
    pub p99_ns: u64,
}

/// How one function's waits (offcpu) or syscalls spread.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    /// The function.
    pub function: String,
    /// Events.
    pub count: u64,
    /// Their time.
    pub total_ns: u64,
    /// `buckets[k]` events lasted from 2^k to 2^(k+1) ns (`[0]`: under 2).
    pub buckets: Vec<u64>,
}

/// The Python frames of a stack, root first (the wake-up view: the
/// wakee's only, not the waker's).
pub(crate) fn python_frames<'p>(p: &'p Profile, stack: &[u32]) -> Vec<&'p str> {
    let mut out = Vec::new();
    for &f in stack {
        let name = p.frames.get(f as usize).map_or("", String::as_str);
        if name.starts_with("waker ") || name.starts_with(GIL_HOLDER_PREFIX) {
            break;
        }
        if PyFrame::split(name).is_some() && !name.ends_with("_[k]") {
            out.push(name);
        }
    }
    out
}

/// The syscall a syscall-view stack ends in.
fn syscall_of<'p>(p: &'p Profile, stack: &[u32]) -> &'p str {
    stack
        .last()
        .and_then(|&f| p.frames.get(f as usize))
        .and_then(|n| n.strip_prefix("syscall:"))
        .unwrap_or("?")
}

/// Events, their time and their log2 histogram, summed.
#[derive(Default)]
struct Acc {
    count: u64,
    ns: u64,
    hist: Vec<u64>,
}

impl Acc {
    fn add(&mut self, count: u64, ns: u64, h: &[u64]) {
        self.count += count;
        self.ns += ns;
        add_hist(&mut self.hist, h);
    }
}

/// The `q` quantile of a log2 histogram, interpolated within its bucket.
pub fn quantile(hist: &[u64], q: f64) -> u64 {
    let count: u64 = hist.iter().sum();
    if count == 0 {
        return 0;
    }
    let target = q * count as f64;
    let mut before = 0.0;
    for (k, &n) in hist.iter().enumerate() {
        let n = n as f64;
        if n > 0.0 && before + n >= target {
            let (lo, hi) = bucket(k);
            let frac = ((target - before) / n).clamp(0.0, 1.0);
            return (lo as f64 + (hi - lo) as f64 * frac).round() as u64;
        }
        before += n;
    }
    bucket(hist.len().saturating_sub(1)).1
}

/// The range of bucket `k`, in ns.
fn bucket(k: usize) -> (u64, u64) {
    if k == 0 {
        (0, 2)
    } else {
        (1u64 << k.min(62), 1u64 << (k + 1).min(63))
    }
}

/// What a view's stacks add up to, by innermost Python function.
#[derive(Default)]
struct Tally<'p> {
    self_w: HashMap<&'p str, u64>,
    calls_of: HashMap<&'p str, u64>,
    total_w: HashMap<&'p str, u64>,
    sys: BTreeMap<&'p str, BTreeMap<&'p str, Acc>>,
    hists: HashMap<&'p str, Acc>,
    holders: HashMap<(String, &'p str), Acc>,
    total: u64,
    events: u64,
}

impl<'p> Tally<'p> {
    /// The stacks of view `v` of the threads `threads`, added up.
    fn of(p: &'p Profile, v: &View, threads: &BTreeSet<u32>) -> Tally<'p> {
        let mut t = Tally::default();
        for s in v.samples.iter().filter(|s| threads.contains(&s.tid)) {
            t.total += s.value;
            t.events += s.count;
            let py = python_frames(p, &s.stack);
            let leaf = py.last().copied().unwrap_or(NO_PYTHON);
            *t.self_w.entry(leaf).or_default() += s.value;
            *t.calls_of.entry(leaf).or_default() += s.count;
            let mut seen = BTreeSet::new();
            for f in py.iter().copied().chain(py.is_empty().then_some(NO_PYTHON)) {
                if seen.insert(f) {
                    *t.total_w.entry(f).or_default() += s.value;
                }
            }
            if v.kind == ViewKind::Syscall {
                t.sys
                    .entry(leaf)
                    .or_default()
                    .entry(syscall_of(p, &s.stack))
                    .or_default()
                    .add(s.count, s.value, &s.hist);
            }
            if v.kind == ViewKind::Gil {
                t.holders
                    .entry(gil_holder(p, &s.stack))
                    .or_default()
                    .add(s.count, s.value, &[]);
            }
            if matches!(
                v.kind,
                ViewKind::Syscall | ViewKind::Offcpu | ViewKind::Gil | ViewKind::Calls
            ) {
                t.hists
                    .entry(leaf)
                    .or_default()
                    .add(s.count, s.value, &s.hist);
            }
        }
        t
    }

    /// The functions with the most self weight, and with the most total.
    fn functions(&self, calls: bool, limit: usize) -> (Vec<FunctionRow>, Vec<FunctionRow>) {
        let functions: Vec<FunctionRow> = self
            .total_w
            .iter()
            .map(|(&f, &t)| FunctionRow {
                function: f.to_string(),
                self_value: self.self_w.get(f).copied().unwrap_or(0),
                total_value: t,
                calls: calls.then(|| self.calls_of.get(f).copied().unwrap_or(0)),
            })
            .collect();
        let mut by_self = functions.clone();
        by_self.sort_by(|a, b| {
            (b.self_value, b.total_value, &a.function).cmp(&(
                a.self_value,
                a.total_value,
                &b.function,
            ))
        });
        by_self.truncate(limit);
        let mut by_total = functions;
        by_total.sort_by(|a, b| {
            (b.total_value, b.self_value, &a.function).cmp(&(
                a.total_value,
                a.self_value,
                &b.function,
            ))
        });
        by_total.truncate(limit);
        (by_self, by_total)
    }

    /// Per function, its syscalls.
    fn syscalls(sys: BTreeMap<&str, BTreeMap<&str, Acc>>, limit: usize) -> Vec<SyscallTable> {
        let mut syscalls: Vec<SyscallTable> = sys
            .into_iter()
            .map(|(f, rows)| {
                let mut rows: Vec<SyscallRow> = rows
                    .into_iter()
                    .map(|(name, a)| SyscallRow {
                        syscall: name.to_string(),
                        calls: a.count,
                        total_ns: a.ns,
                        mean_ns: a.ns / a.count.max(1),
                        p50_ns: quantile(&a.hist, 0.5),
                        p99_ns: quantile(&a.hist, 0.99),
                    })
                    .collect();
                rows.sort_by(|a, b| (b.total_ns, &a.syscall).cmp(&(a.total_ns, &b.syscall)));
                SyscallTable {
                    function: f.to_string(),
                    total_ns: rows.iter().map(|r| r.total_ns).sum(),
                    calls: rows.iter().map(|r| r.calls).sum(),
                    rows,
                }
            })
            .collect();
        syscalls.sort_by(|a, b| (b.total_ns, &a.function).cmp(&(a.total_ns, &b.function)));
        syscalls.truncate(limit);
        syscalls
    }

    /// The histograms of the `limit` functions with the most time (the
    /// text shows the first [`TEXT_HISTOGRAMS`]).
    fn histograms(hists: HashMap<&str, Acc>, limit: usize) -> Vec<Histogram> {
        let mut histograms: Vec<Histogram> = hists
            .into_iter()
            .map(|(f, a)| Histogram {
                function: f.to_string(),
                count: a.count,
                total_ns: a.ns,
                buckets: a.hist,
            })
            .collect();
        histograms.sort_by(|a, b| (b.total_ns, &a.function).cmp(&(a.total_ns, &b.function)));
        histograms.truncate(limit);
        histograms
    }

    /// Who held the GIL, where, while others waited.
    fn holders(holders: HashMap<(String, &str), Acc>, limit: usize) -> Vec<HolderRow> {
        let mut gil_holders: Vec<HolderRow> = holders
            .into_iter()
            .map(|((holder, f), a)| HolderRow {
                holder,
                function: f.to_string(),
                waits: a.count,
                total_ns: a.ns,
            })
            .collect();
        gil_holders.sort_by(|a, b| {
            (b.total_ns, &a.holder, &a.function).cmp(&(a.total_ns, &b.holder, &b.function))
        });
        gil_holders.truncate(limit);
        gil_holders
    }
}

fn section(p: &Profile, v: &View, threads: &BTreeSet<u32>, label: String, limit: usize) -> Section {
    let t = Tally::of(p, v, threads);
    let (by_self, by_total) = t.functions(v.kind == ViewKind::Calls, limit);
    Section {
        view: v.kind.name(),
        unit: match v.unit {
            Unit::Samples => "samples",
            Unit::Nanoseconds => "nanoseconds",
        },
        threads: label,
        total: t.total,
        events: t.events,
        by_self,
        by_total,
        syscalls: Tally::syscalls(t.sys, limit),
        histograms: Tally::histograms(t.hists, limit),
        gil_holders: Tally::holders(t.holders, limit),
        unavailable: v.unavailable.clone(),
        notes: v.notes.clone(),
    }
}

/// The holder of a gil-view stack and its innermost Python function.
fn gil_holder<'p>(p: &'p Profile, stack: &[u32]) -> (String, &'p str) {
    let names: Vec<&str> = stack
        .iter()
        .map(|&f| p.frames.get(f as usize).map_or("", String::as_str))
        .collect();
    let Some(at) = names.iter().position(|n| n.starts_with(GIL_HOLDER_PREFIX)) else {
        return ("[unknown]".into(), NO_PYTHON);
    };
    let holder = names[at][GIL_HOLDER_PREFIX.len()..].to_string();
    let f = names[at + 1..]
        .iter()
        .rev()
        .find(|n| PyFrame::split(n).is_some() && !n.ends_with("_[k]"))
        .copied()
        .unwrap_or(NO_PYTHON);
    (holder, f)
}

/// The threads of `p` (every one named or with a stack), or only those
/// named `thread` or with that thread id; an error naming the threads
/// when none is.
pub fn select_threads(p: &Profile, thread: Option<&str>) -> Result<BTreeSet<u32>> {
    let mut all: BTreeSet<u32> = p.threads.keys().copied().collect();
    all.extend(p.python_threads.keys().copied());
    all.extend(p.views.iter().flat_map(|v| v.samples.iter().map(|s| s.tid)));
    let Some(t) = thread else {
        return Ok(all);
    };
    let picked: BTreeSet<u32> = all.into_iter().filter(|&tid| p.thread_is(tid, t)).collect();
    if picked.is_empty() {
        let names: BTreeSet<String> = p.threads.keys().map(|&tid| p.thread_label(tid)).collect();
        let names: Vec<String> = names.into_iter().collect();
        bail!(
            "no thread named or numbered `{t}` in this profile; its threads are {}",
            names.join(", ")
        );
    }
    Ok(picked)
}

/// The durations of one function's events (and, in the syscall view, of
/// one syscall of it), all of them, for scripts: the same sums as the
/// report's syscall tables and histograms, before any limit.
#[derive(Debug, Clone, Serialize)]
pub struct DurationHistogram {
    /// The innermost Python function, or [`NO_PYTHON`].
    pub function: String,
    /// The syscall view: the syscall (`write`, ...); other views: none.
    pub syscall: Option<String>,
    /// Events (calls, switches, waits).
    pub calls: u64,
    /// Their time (in the calls view, their self time, while `buckets`
    /// spread each call's inclusive time, as the report's histograms do).
    pub total_ns: u64,
    /// `buckets[k]` events lasted from 2^k to 2^(k+1) ns (`[0]`: under 2).
    pub buckets: Vec<u64>,
}

/// Every log2 histogram of view `kind` (syscall, offcpu, gil or calls) over
/// `threads`: per function, and per syscall of it in the syscall view;
/// most time first.
pub fn duration_histograms(
    p: &Profile,
    kind: ViewKind,
    threads: &BTreeSet<u32>,
) -> Result<Vec<DurationHistogram>> {
    if !matches!(
        kind,
        ViewKind::Syscall | ViewKind::Offcpu | ViewKind::Gil | ViewKind::Calls
    ) {
        bail!(
            "the {} view keeps no durations; the syscall, offcpu, gil and calls views do",
            kind.name()
        );
    }
    let Some(v) = p.view(kind) else {
        bail!("this profile has no {} view", kind.name());
    };
    if let Some(why) = &v.unavailable {
        bail!("the {} view could not be measured: {why}", kind.name());
    }
    let mut acc: BTreeMap<(&str, Option<&str>), Acc> = BTreeMap::new();
    for s in v.samples.iter().filter(|s| threads.contains(&s.tid)) {
        let py = python_frames(p, &s.stack);
        let leaf = py.last().copied().unwrap_or(NO_PYTHON);
        let sys = (kind == ViewKind::Syscall).then(|| syscall_of(p, &s.stack));
        acc.entry((leaf, sys))
            .or_default()
            .add(s.count, s.value, &s.hist);
    }
    let mut out: Vec<DurationHistogram> = acc
        .into_iter()
        .map(|((f, sys), a)| DurationHistogram {
            function: f.to_string(),
            syscall: sys.map(str::to_string),
            calls: a.count,
            total_ns: a.ns,
            buckets: a.hist,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.total_ns, &a.function, &a.syscall).cmp(&(a.total_ns, &b.function, &b.syscall))
    });
    Ok(out)
}

/// Builds the report of `p` that `o` asks for.
pub fn report(p: &Profile, o: &ReportOptions) -> Result<Report> {
    let views: Vec<&View> = if o.views.is_empty() {
        p.views.iter().collect()
    } else {
        let mut vs = Vec::new();
        for &k in &o.views {
            match p.view(k) {
                Some(v) => vs.push(v),
                None => bail!("this profile has no {} view", k.name()),
            }
        }
        vs
    };
    let chosen = select_threads(p, o.thread.as_deref())?;
    let limit = o.limit.max(1);
    let mut sections = Vec::new();
    for v in views {
        if o.per_thread {
            let present: BTreeSet<u32> = v.samples.iter().map(|s| s.tid).collect();
            for &tid in chosen.intersection(&present) {
                let one = BTreeSet::from([tid]);
                sections.push(section(p, v, &one, p.thread_frame(tid), limit));
            }
        } else {
            let label = if o.thread.is_some() && chosen.len() == 1 {
                p.thread_frame(*chosen.iter().next().unwrap_or(&0))
            } else if o.thread.is_some() {
                format!(
                    "{} threads named {}",
                    chosen.len(),
                    o.thread.as_deref().unwrap_or("")
                )
            } else {
                "all threads".to_string()
            };
            sections.push(section(p, v, &chosen, label, limit));
        }
    }
    Ok(Report {
        format: REPORT_FORMAT,
        version: REPORT_VERSION,
        pid: p.pid,
        command: p.command.clone(),
        python: p.python.clone(),
        duration_ns: p.duration_ns,
        sections,
        span: p.span.clone(),
    })
}

/// A duration for people, to three significant digits: `850 ns`,
/// `12.3 us`, `4.56 ms`, `1.20 s`.
pub fn duration(ns: u64) -> String {
    if ns < 1_000 {
        return format!("{ns} ns");
    }
    let (v, unit) = if ns < 1_000_000 {
        (ns as f64 / 1e3, "us")
    } else if ns < 1_000_000_000 {
        (ns as f64 / 1e6, "ms")
    } else {
        (ns as f64 / 1e9, "s")
    };
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 || unit == "s" && v < 1000.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// Cuts `s` to `n` characters, marking the cut with `~`.
fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n - 1).collect();
    out.push('~');
    out
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * part as f64 / whole as f64)
}

/// The report as text for an 80-column terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pyusdt-prof report: process {} ({}), Python {}, {:.1} s",
        r.pid,
        fit(&crate::profile::short_command(&r.command), 30),
        r.python,
        r.duration_ns as f64 / 1e9
    );
    if let Some(sp) = &r.span {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "span {}: {} ended, {} in all, {} on average",
            fit(&sp.name, 32),
            sp.count,
            duration(sp.total_ns),
            duration(sp.total_ns / sp.count.max(1))
        );
        let _ = writeln!(
            o,
            "(only what happened inside it is recorded); how long they lasted:"
        );
        o.push_str(&histogram_text(&sp.hist));
    }
    for s in &r.sections {
        let _ = writeln!(o);
        if let Some(why) = &s.unavailable {
            let _ = writeln!(o, "{} view: not measured: {why}", s.view);
            continue;
        }
        section_text(&mut o, s);
    }
    o
}

/// A value of section `s` for people: a duration, or a count.
fn value_text(s: &Section, v: u64) -> String {
    if s.unit == "nanoseconds" {
        duration(v)
    } else {
        v.to_string()
    }
}

/// One view's section: its total, its functions, and the tables and
/// histograms it has.
fn section_text(o: &mut String, s: &Section) {
    let what = match s.view {
        "cpu" => "samples",
        "offcpu" => "off the CPU",
        "syscall" => "in syscalls",
        "gil" => "waiting for the GIL",
        "calls" => "in calls",
        _ => "waited",
    };
    let _ = writeln!(
        o,
        "{} view, {}: {} {what} ({} events)",
        s.view,
        s.threads,
        value_text(s, s.total),
        s.events
    );
    for note in &s.notes {
        let _ = writeln!(o, "  ({note})");
    }
    for (title, rows) in [("most self", &s.by_self), ("most total", &s.by_total)] {
        let (calls, width) = if s.view == "calls" {
            ("    calls", 32)
        } else {
            ("", 41)
        };
        let _ = writeln!(
            o,
            "  {:>9} {:>6} {:>9} {:>6}{calls}  function ({title})",
            "self", "self%", "total", "total%"
        );
        for f in rows {
            let calls = f.calls.map_or(String::new(), |n| format!(" {n:>8}"));
            let _ = writeln!(
                o,
                "  {:>9} {:>6} {:>9} {:>6}{calls}  {}",
                value_text(s, f.self_value),
                pct(f.self_value, s.total),
                value_text(s, f.total_value),
                pct(f.total_value, s.total),
                fit(&PyFrame::short(&f.function), width)
            );
        }
    }
    syscalls_text(o, s);
    holders_text(o, s);
    histograms_text(o, s);
}

/// Section `s`'s syscalls by the function that made them.
fn syscalls_text(o: &mut String, s: &Section) {
    if s.syscalls.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "  syscalls by the function that made them:");
    for t in &s.syscalls {
        let _ = writeln!(
            o,
            "  {}: {} calls, {}",
            fit(&PyFrame::short(&t.function), 50),
            t.calls,
            duration(t.total_ns)
        );
        let _ = writeln!(
            o,
            "    {:<16} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "syscall", "calls", "total", "mean", "p50", "p99"
        );
        for row in &t.rows {
            let _ = writeln!(
                o,
                "    {:<16} {:>8} {:>9} {:>9} {:>9} {:>9}",
                fit(&row.syscall, 16),
                row.calls,
                duration(row.total_ns),
                duration(row.mean_ns),
                duration(row.p50_ns),
                duration(row.p99_ns)
            );
        }
    }
}

/// Section `s`'s GIL holders.
fn holders_text(o: &mut String, s: &Section) {
    if s.gil_holders.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  who held the GIL during the waits, and where it let go:"
    );
    let _ = writeln!(o, "  {:>9} {:>7}  holder: function", "waited", "waits");
    for h in &s.gil_holders {
        let _ = writeln!(
            o,
            "  {:>9} {:>7}  {}",
            duration(h.total_ns),
            h.waits,
            fit(
                &format!("{}: {}", h.holder, PyFrame::short(&h.function)),
                60
            )
        );
    }
}

/// Histograms a text report draws, at most: each takes a dozen lines.
const TEXT_HISTOGRAMS: usize = 5;

/// Section `s`'s histograms of durations, per function.
fn histograms_text(o: &mut String, s: &Section) {
    for h in s.histograms.iter().take(TEXT_HISTOGRAMS) {
        let _ = writeln!(o);
        let what = match s.view {
            "syscall" => "syscalls",
            "gil" => "waits for the GIL",
            "calls" => "calls",
            _ => "waits off the CPU",
        };
        // A call's bucket is its inclusive time; the figure after the
        // count is the function's self time.
        let total = if s.view == "calls" { ", self" } else { " in" };
        let _ = writeln!(
            o,
            "  {what} of {}: {}{total} {}",
            fit(&PyFrame::short(&h.function), 40),
            h.count,
            duration(h.total_ns)
        );
        o.push_str(&histogram_text(&h.buckets));
    }
}

/// A bcc-style log2 histogram: one row per bucket from the first used to
/// the last, `range : count |bar|`, 78 columns.
pub fn histogram_text(buckets: &[u64]) -> String {
    let mut o = String::new();
    let Some(first) = buckets.iter().position(|&n| n > 0) else {
        return o;
    };
    let last = buckets.iter().rposition(|&n| n > 0).unwrap_or(first);
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    let _ = writeln!(o, "  {:>21}  : {:<8} distribution", "duration", "count");
    for (k, &n) in buckets.iter().enumerate().take(last + 1).skip(first) {
        let (lo, hi) = bucket(k);
        let width = ((n as f64 / max as f64) * 40.0).round() as usize;
        let width = if n > 0 { width.max(1) } else { 0 };
        let _ = writeln!(
            o,
            "  {:>9} -> {:<9} : {:<8} |{:<40}|",
            duration(lo),
            duration(hi),
            n,
            "*".repeat(width)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall_profile() -> Profile {
        use crate::profile::Sample;
        let sample = |tid, stack: Vec<u32>, count, value, hist: Vec<u64>| Sample {
            pid: 0,
            tid,
            stack,
            value,
            count,
            hist,
        };
        Profile {
            format: crate::profile::FORMAT.into(),
            version: crate::profile::VERSION,
            pid: 7,
            command: vec!["python".into()],
            python: "3.12.1".into(),
            start_unix_ns: 0,
            duration_ns: 1,
            sample_hz: 99,
            threads: BTreeMap::from([(7, "main".to_string()), (8, "worker".to_string())]),
            python_threads: BTreeMap::new(),
            processes: BTreeMap::new(),
            frames: vec![
                "main (a.py:1)".into(),
                "f (a.py:5)".into(),
                "syscall:write".into(),
                "syscall:read".into(),
            ],
            function_of: Vec::new(),
            views: vec![View {
                kind: ViewKind::Syscall,
                unit: Unit::Nanoseconds,
                events: 6,
                lost: 0,
                unavailable: None,
                notes: Vec::new(),
                sampled_below_ns: None,
                samples: vec![
                    sample(7, vec![0, 1, 2], 3, 30, vec![0, 0, 0, 3]),
                    sample(8, vec![0, 1, 2], 2, 40, vec![0, 0, 0, 0, 0, 2]),
                    sample(7, vec![0, 1, 3], 1, 5, vec![0, 0, 1]),
                    sample(7, vec![0, 3], 1, 2, vec![0, 1]),
                ],
            }],
            walk_errors: BTreeMap::new(),
            span: None,
            kernel: String::new(),
        }
    }

    #[test]
    fn duration_histograms_per_function_and_syscall() {
        let p = syscall_profile();
        let all = select_threads(&p, None).unwrap();
        let h = duration_histograms(&p, ViewKind::Syscall, &all).unwrap();
        let rows: Vec<String> = h
            .iter()
            .map(|h| {
                let s = h.syscall.as_deref().unwrap_or("-");
                format!(
                    "{} {s} {} {} {:?}",
                    h.function, h.calls, h.total_ns, h.buckets
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "f (a.py:5) write 5 70 [0, 0, 0, 3, 0, 2]",
                "f (a.py:5) read 1 5 [0, 0, 1]",
                "main (a.py:1) read 1 2 [0, 1]",
            ]
        );
        // The report's syscall table sums the same events.
        let r = report(
            &p,
            &ReportOptions {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let f = &r.sections[0].syscalls[0];
        assert_eq!(
            (f.function.as_str(), f.calls, f.total_ns),
            ("f (a.py:5)", 6, 75)
        );
        let one = select_threads(&p, Some("worker")).unwrap();
        let h = duration_histograms(&p, ViewKind::Syscall, &one).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].calls, h[0].total_ns), (2, 40));
        assert_eq!(select_threads(&p, Some("7")).unwrap(), BTreeSet::from([7]));
        let err = select_threads(&p, Some("nosuch")).unwrap_err().to_string();
        assert_eq!(
            err,
            "no thread named or numbered `nosuch` in this profile; its threads are \
             main (7), worker (8)"
        );
        let err = duration_histograms(&p, ViewKind::Cpu, &all).unwrap_err();
        assert!(err.to_string().contains("keeps no durations"), "{err}");
        let err = duration_histograms(&p, ViewKind::Offcpu, &all).unwrap_err();
        assert_eq!(err.to_string(), "this profile has no offcpu view");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        // 100 events in [1024, 2048) ns.
        let mut h = vec![0; 11];
        h[10] = 100;
        assert_eq!(quantile(&h, 0.5), 1536);
        assert_eq!(quantile(&h, 0.99), 2038);
        // 90 fast, 10 slow: the p99 is among the slow.
        let mut h = vec![0; 21];
        h[3] = 90;
        h[20] = 10;
        assert!(quantile(&h, 0.5) < 16);
        assert!(quantile(&h, 0.99) >= 1 << 20);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ns");
        assert_eq!(duration(12_300), "12.3 us");
        assert_eq!(duration(4_560_000), "4.56 ms");
        assert_eq!(duration(1_200_000_000), "1.20 s");
    }

    #[test]
    fn histogram_rows_fit_80_columns() {
        let text = histogram_text(&[0, 0, 3, 0, 40, 1]);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 5, "{text}");
        assert!(rows.iter().all(|r| r.chars().count() <= 80), "{text}");
        assert!(
            rows[3].ends_with(&format!("|{}|", "*".repeat(40))),
            "{text}"
        );
        assert!(rows[1].starts_with("       4 ns -> 8 ns"), "{text}");
    }
}
