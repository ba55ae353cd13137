//! The calls view (`record --exact`, `bpf/calls.bpf.c`): every Python
//! call and return. Attaching to the target's `pyusdt:calls` raises its
//! semaphore, the extension turns the per-call events on, and each thread
//! hands over its calls in batches (pyext/src/calls.rs); `sched_switch`
//! reads what a thread leaving the CPU wrote since. Each thread's call
//! stack is kept in the kernel; the view's rows are its call paths.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore};
use pyusdt_contract::calls::MAX_DEPTH;

use crate::bpf::calls::{types, CallsSkel, CallsSkelBuilder};
use crate::bpf::kernel::{self, Variant};
use crate::bpf::load::{attach_tp, btf_or_raw, share, Shared, Slots};
use crate::bpf::maps::{entries, hash_entries, live, trimmed};
use crate::bpf::retire::{add_slots, Count, LiveThreads, Moved};
use crate::profile::pyname;
use crate::profile::ViewKind;
use crate::target::{layout, Target};
use crate::views::{view, walker, RawSample, RawView, Reading, Recorder, Setup, Tail, Walker};
use crate::Result;

/// Calls whose return the calls view did not see (it ended them with
/// their caller's), as [`crate::profile::Profile::walk_errors`] names them.
pub const MISSED_EXITS: &str = "calls ended without their return";

// SAFETY: plain C data of fixed-size integers, no padding (u64 fields
// first, u32 pairs, a u32 array of even length), any bit pattern valid.
unsafe impl plain::Plain for types::call_node {}
// SAFETY: as above.
unsafe impl plain::Plain for types::call_thread {}
// SAFETY: as above.
unsafe impl plain::Plain for types::call_frame {}

struct Calls<'o> {
    skel: CallsSkel<'o>,
    links: Vec<Link>,
    /// Nodes of threads that exited, moved out of `call_nodes` as it
    /// filled, by id.
    moved: Moved<u64, types::call_node>,
    /// The count of nodes made (`nodes_made`) at which the next move is due.
    move_at: u64,
}

impl Calls<'_> {
    /// Nodes made between two moves: a quarter of the map, so that the
    /// map is never more than about half full of exited threads' nodes,
    /// and a map full of live threads' is not read again at every tick.
    fn move_every(&self) -> u64 {
        u64::from(self.skel.maps.call_nodes.max_entries() / 4)
    }

    /// Moves the nodes of threads that exited out of `call_nodes` into
    /// `moved`. Their exit handler names them in `call_exited`, read
    /// before the nodes: no program writes their nodes after that, so
    /// the copies read are final. A thread id that is in `call_threads`
    /// again after the read is a new thread's, and waits.
    fn move_exited(&mut self) -> Result<()> {
        let m = &self.skel.maps;
        let tids = |map: &dyn MapCore| -> HashSet<u32> {
            map.keys()
                .filter_map(|k| {
                    k.get(..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                })
                .collect()
        };
        let exited = tids(&m.call_exited);
        if exited.is_empty() {
            return Ok(());
        }
        let nodes =
            hash_entries::<u64, types::call_node>(&m.call_nodes).context("read the call paths")?;
        let again = tids(&m.call_threads);
        for tid in &exited {
            if !again.contains(tid) {
                let _ = m.call_exited.delete(&tid.to_ne_bytes());
            }
        }
        let gone: Vec<(u64, types::call_node)> = nodes
            .into_iter()
            .filter(|(_, n)| exited.contains(&n.tid) && !again.contains(&n.tid))
            .collect();
        self.moved.take(&m.call_nodes, &gone);
        Ok(())
    }
}

impl Count for types::call_node {
    fn add(&mut self, other: &Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.self_ns = self.self_ns.saturating_add(other.self_ns);
        add_slots(&mut self.hist, &other.hist);
    }
}

/// Loads the call tracer and attaches it to the target's `pyusdt:calls`;
/// refuses a Python without sys.monitoring.
pub fn load<'o>(slots: &mut Slots<'o>, s: &Setup<'_>) -> Result<Box<dyn Recorder + 'o>> {
    let (Some(l), true) = (s.layout, s.target.has_pyusdt()) else {
        return Err(crate::target::needs_pyusdt("record --exact", s.target));
    };
    if l.py_version_hex < 0x030c_0000 {
        bail!(
            "record --exact needs Python 3.12 or later (its calls come from \
             sys.monitoring); process {} runs Python {}",
            s.target.pid,
            layout::python_version(l)
        );
    }
    let (skel, links) = btf_or_raw(slots, |st, v| open(st, s.shared, s.target, v))?;
    Ok(Box::new(Calls {
        skel,
        links,
        moved: Moved::default(),
        move_at: 0,
    }))
}

fn open<'o>(
    storage: &'o mut std::mem::MaybeUninit<libbpf_rs::OpenObject>,
    shared: Shared<'_>,
    target: &Target,
    v: Variant,
) -> Result<(CallsSkel<'o>, Vec<Link>)> {
    let mut open = CallsSkelBuilder::default()
        .open(storage)
        .context("open the call tracer")?;
    open.maps
        .kstacks
        .set_max_entries(1)
        .context("shrink the unused kernel stack map")?;
    share!(open, shared, "the call tracer");
    kernel::choose_programs(open.open_object_mut(), v, |_| true);
    let skel = crate::errors::loaded("load the call tracer", || open.load())?;
    let o = skel.object();
    let mut links = vec![
        attach_tp(o, "thread_exit", v, "sched_process_exit")?,
        attach_tp(o, "switch", v, "sched_switch")?,
    ];
    let path = target.extension_path("record --exact")?;
    links.push(
        kernel::program(o, "on_calls", v)?
            .attach_usdt(target.pid as i32, &path, "pyusdt", "calls")
            .with_context(|| {
                format!(
                    "attach to pyusdt:calls in {} (a pyusdt older than this pyusdt-prof \
                     has no such probe: rebuild it)",
                    path.display()
                )
            })?,
    );
    Ok((skel, links))
}

impl Recorder for Calls<'_> {
    fn counters(&self) -> Vec<(ViewKind, u64, u64)> {
        let Some(b) = self.skel.maps.bss_data.as_deref() else {
            return Vec::new();
        };
        let lost = live(&b.lost_nodes)
            + live(&b.lost_threads)
            + live(&b.calls_too_deep)
            + live(&b.lost_events);
        vec![(ViewKind::Calls, live(&b.calls), lost)]
    }

    fn walker(&self) -> Walker<'_> {
        walker!(self.skel)
    }

    fn rows(&self, r: &Reading<'_>) -> Result<Vec<RawView>> {
        let m = &self.skel.maps;
        // A thread id used again makes the same ids, whose counts add up.
        let mut nodes: HashMap<u64, types::call_node> = HashMap::new();
        for (id, n) in self.moved.with(&m.call_nodes)? {
            nodes.entry(id).and_modify(|h| h.add(&n)).or_insert(n);
        }
        let threads = entries::<u32, types::call_thread>(&m.call_threads)?;
        close_running(&mut nodes, &threads, r.end_monotonic_ns);
        Ok(vec![view(ViewKind::Calls, &self.counters(), paths(&nodes))])
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    fn tick(&mut self, _: &mut LiveThreads) {
        let made = self
            .skel
            .maps
            .bss_data
            .as_deref()
            .map_or(0, |b| live(&b.nodes_made));
        if made < self.move_at + self.move_every() {
            return;
        }
        self.move_at = made;
        // If they cannot be read, the nodes stay where they are: the map
        // may fill, and what does not fit is counted as lost.
        let _ = self.move_exited();
    }

    fn errors(&self, walk_errors: &mut BTreeMap<String, u64>) {
        if let Some(b) = self.skel.maps.bss_data.as_deref() {
            if b.missed_exits > 0 {
                walk_errors.insert(MISSED_EXITS.into(), b.missed_exits);
            }
        }
    }
}

/// Frames still running at `now` (a recording stopped with -d or Ctrl-C)
/// count their time up to then.
fn close_running(
    nodes: &mut HashMap<u64, types::call_node>,
    threads: &[(u32, types::call_thread)],
    now: u64,
) {
    for (_, t) in threads {
        let kept = (t.depth as usize).min(t.frames.len());
        // From the innermost frame out: each one's time includes the
        // one it called.
        let mut inner = 0u64;
        for f in t.frames[..kept].iter().rev() {
            if f.start_ns == 0 || f.start_ns > now {
                inner = 0;
                continue;
            }
            let dur = now - f.start_ns;
            if let Some(n) = nodes.get_mut(&f.node) {
                n.self_ns += dur.saturating_sub(f.child_ns + inner);
            }
            inner = dur;
        }
    }
}

/// Each call path's row: its chain of code objects from the thread's top.
fn paths(nodes: &HashMap<u64, types::call_node>) -> Vec<RawSample> {
    let mut out = Vec::new();
    for n in nodes.values() {
        if n.calls == 0 && n.self_ns == 0 {
            continue; // a frame that ran before the recording, with no time of its own
        }
        let mut codes = Vec::new();
        let mut at = Some(n);
        let mut truncated = false;
        while let Some(node) = at {
            codes.push((node.code, pyname::LASTI_NONE));
            if node.parent == 0 {
                break;
            }
            at = nodes.get(&node.parent);
            if at.is_none() || codes.len() > MAX_DEPTH {
                truncated = true; // a caller's node was lost (map full)
                break;
            }
        }
        codes.reverse();
        out.push(RawSample {
            pid: n.tgid,
            tid: n.tid,
            python: (codes, truncated),
            tail: Tail::None,
            value: n.self_ns,
            count: n.calls,
            hist: trimmed(&n.hist),
            gil_wait: false,
        });
    }
    out
}
