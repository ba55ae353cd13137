//! The views, one module each: its BPF object (`bpf/X.bpf.c`, loaded
//! and attached), its counters, and its rows of the profile. A view is
//! `bpf/X.bpf.c` + `bpf/X.h` + `src/views/X.rs` and one line of
//! [`REGISTRY`].

use std::collections::{BTreeMap, BTreeSet};

use libbpf_rs::MapCore;

use crate::bpf::kernel::{StacksAt, Variant};
use crate::bpf::load::{Shared, Slots};
use crate::bpf::maps::PyStack;
use crate::bpf::retire::LiveThreads;
use crate::profile::ViewKind;
use crate::target::layout::Layout;
use crate::target::Target;
use crate::Result;

pub mod calls;
pub mod cpu;
pub mod gil;
pub mod sched;
pub mod syscall;

/// A view's entry: the kinds of view its object records, and how to load
/// and attach that object.
#[derive(Debug)]
pub struct Entry {
    /// The views its object records.
    pub kinds: &'static [ViewKind],
    /// Loads and attaches its object, in slots of the recording's.
    pub load: for<'o> fn(&mut Slots<'o>, &Setup<'_>) -> Result<Box<dyn Recorder + 'o>>,
}

/// Every view's object.
pub const REGISTRY: &[Entry] = &[
    Entry {
        kinds: &[ViewKind::Cpu],
        load: cpu::load,
    },
    Entry {
        kinds: &[ViewKind::Offcpu, ViewKind::Wakeup],
        load: sched::load,
    },
    Entry {
        kinds: &[ViewKind::Syscall],
        load: syscall::load,
    },
    Entry {
        kinds: &[ViewKind::Gil],
        load: gil::load,
    },
    Entry {
        kinds: &[ViewKind::Calls],
        load: calls::load,
    },
];

/// What a view's object needs to load.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// The maps it shares with the procs object, and the recording's
    /// settings they carry.
    pub shared: Shared<'a>,
    /// The process recorded first, and its layout (None for a root that
    /// runs no pyusdt, recorded for its children).
    pub target: &'a Target,
    pub layout: Option<&'a Layout>,
    /// The views asked for.
    pub views: &'a BTreeSet<ViewKind>,
    /// CPU samples per second.
    pub freq: u64,
    /// The variant of the programs to load first.
    pub variant: Variant,
    /// The gil view by uprobes on take_gil and drop_gil.
    pub gil_probes: bool,
    /// Waits off the CPU shorter than this are sampled; 0: none.
    pub sample_waits_below_ns: u64,
    /// Where the offcpu and wakeup views read the stacks of kept waits.
    pub stacks_at: StacksAt,
}

/// What a view needs to turn its maps into rows.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// The recorded processes.
    pub recorded: &'a BTreeSet<u32>,
    /// Thread names by tid, the kernel's.
    pub threads: &'a BTreeMap<u32, String>,
    /// Python thread names by tid, where the process told them.
    pub python_threads: &'a BTreeMap<u32, String>,
    /// The monotonic clock when the counts were read: calls still running
    /// count their time up to it.
    pub end_monotonic_ns: u64,
}

impl Reading<'_> {
    /// Thread `tid` as frames name it ([`crate::profile::thread_label`]),
    /// with `kernel` as its kernel name where none was noted.
    pub fn thread_label(&self, tid: u32, kernel: Option<&str>) -> String {
        crate::profile::thread_label(
            tid,
            self.threads.get(&tid).map(String::as_str).or(kernel),
            self.python_threads.get(&tid).map(String::as_str),
        )
    }
}

/// A process that a view may have to probe by itself (the gil view's
/// uprobes live in each interpreter): its pid and how many programs it
/// has exec'd (a new one needs new probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub generation: u32,
}

/// A view's object, loaded and attached.
pub trait Recorder {
    /// Events and losses so far, per view it records (they move while
    /// the programs are attached).
    fn counters(&self) -> Vec<(ViewKind, u64, u64)>;
    /// The names its walker read and why its walks failed.
    fn walker(&self) -> Walker<'_>;
    /// Its views' rows, as its maps hold them.
    fn rows(&self, r: &Reading<'_>) -> Result<Vec<RawView>>;
    /// Stops counting: the counts stop moving.
    fn detach(&mut self);
    /// The recorded Python processes now (with `first`, the target):
    /// attaches what this view attaches per process.
    fn watch(&mut self, _live: &[Process], _first: u32) {}
    /// Called every tick of the recording (100 ms), with the threads
    /// alive then: housekeeping of its maps while the programs run.
    fn tick(&mut self, _threads: &mut LiveThreads) {}
    /// What it counts besides its views' events, into `walk_errors`.
    fn errors(&self, _walk_errors: &mut BTreeMap<String, u64>) {}
    /// Process `pid` (which announced `layout`) ran before the recording
    /// began at `start_ns`: the waits its threads are in then count from
    /// then, under their stacks read now.
    fn open_waits(&self, _pid: u32, _layout: &Layout, _start_ns: u64, _lines: bool) {}
    /// The recording ends, still attached, and process `pid` (which
    /// announced `layout`) may have waits open: reads what it keeps of them.
    fn close_waits(&self, _pid: u32, _layout: &Layout, _lines: bool) {}
    /// Names of code objects it read itself: (process, code, name).
    fn names(&self) -> Vec<(u32, u64, String)> {
        Vec::new()
    }
}

/// What every object that walks Python stacks keeps beside its counts: the
/// names of code objects it read, and why walks failed. (Thread names are
/// the procs object's, noted as threads exit.)
pub struct Walker<'a> {
    pub code_names: &'a dyn MapCore,
    pub code_lines: &'a dyn MapCore,
    pub errors: [u64; 6],
}

/// The [`Walker`] of skeleton `$s`.
macro_rules! walker {
    ($s:expr) => {
        $crate::views::Walker {
            code_names: &$s.maps.code_names,
            code_lines: &$s.maps.code_lines,
            errors: $s
                .maps
                .bss_data
                .as_deref()
                .map_or([0; 6], |b| b.pystack_errors),
        }
    };
}
pub(crate) use walker;

/// The rows of one view, with its counters.
pub fn view(kind: ViewKind, counters: &[(ViewKind, u64, u64)], samples: Vec<RawSample>) -> RawView {
    let (_, events, lost) = counters
        .iter()
        .copied()
        .find(|c| c.0 == kind)
        .unwrap_or((kind, 0, 0));
    RawView {
        kind,
        events,
        lost,
        unavailable: None,
        notes: Vec::new(),
        sampled_below_ns: None,
        samples,
    }
}

/// Marks `v` as sampled below `below_ns` and says so in a note: `what`
/// was sampled, and, where the view counts them, how many of the short
/// events (`kept`, `short`) were kept.
pub fn note_sampled(v: &mut RawView, below_ns: u64, what: &str, counts: Option<(u64, u64)>) {
    v.sampled_below_ns = Some(below_ns);
    let mut note = format!(
        "{what} shorter than {} sampled, each kept one weighted by 1/p \
         (--sample-waits-below 0 keeps every one)",
        crate::readers::report::duration(below_ns)
    );
    if let Some((kept, short)) = counts {
        note.push_str(&format!(": {kept} kept of {short}"));
    }
    v.notes.push(note);
}

/// A stack as the maps hold it, before anything is named.
pub struct RawSample {
    pub pid: u32,
    pub tid: u32,
    /// Code addresses, root first, and whether the walker cut the stack.
    pub python: PyStack,
    /// What follows the Python frames.
    pub tail: Tail,
    pub value: u64,
    pub count: u64,
    /// Log2 histogram of the events' durations, if the view keeps one.
    pub hist: Vec<u64>,
    /// A CPU sample taken while the thread waited for the GIL.
    pub gil_wait: bool,
}

/// What a view puts after a thread's Python frames.
pub enum Tail {
    /// Kernel instruction pointers, root first.
    Kernel(Vec<u64>),
    /// A syscall number.
    Syscall(i64),
    /// The waker's frame name, its process and its Python stack.
    Waker(String, u32, PyStack),
    /// Nothing: the Python frames are the whole stack.
    None,
}

/// A view as the maps hold it.
pub struct RawView {
    pub kind: ViewKind,
    pub events: u64,
    pub lost: u64,
    pub unavailable: Option<String>,
    pub notes: Vec<String>,
    /// Events shorter than this were sampled (see `View`).
    pub sampled_below_ns: Option<u64>,
    pub samples: Vec<RawSample>,
}
