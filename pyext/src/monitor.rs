//! Turning `sys.monitoring` on only while a tracer is attached, and the
//! poll thread that notices tracers come and go.
//!
//! The poll thread wakes every `PYUSDT_CHECK_MSEC` and reads the probes'
//! semaphores with plain loads. It takes the GIL only when the set of
//! attached probes changed: then it claims a `sys.monitoring` tool id (the
//! first free of [`TOOL_IDS`]), turns on exactly the events of the attached
//! probes, and gives the id back when the last tracer has gone. It also
//! fires `pyusdt:layout` on each tick while a tracer is attached to it,
//! and `pyusdt:thread` for threads a tracer has not heard the name of
//! ([`crate::threads`]).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use pyo3::prelude::*;

use crate::callbacks;
use crate::layout_ffi;
use crate::probes::{self, Probe};

/// The `sys.monitoring` tool ids tried, in order. 0 (debuggers), 1
/// (coverage), 2 (profilers such as cProfile) and 5 (optimizers) have
/// owners by convention; 3 and 4 have none.
pub const TOOL_IDS: [u8; 2] = [4, 3];

/// Probes turned off after an error in their callback.
static DISABLED: AtomicU16 = AtomicU16::new(0);
/// The probe mask last reconciled with `sys.monitoring` (the poll thread
/// compares against it without the GIL).
static RECONCILED: AtomicU16 = AtomicU16::new(0);
/// Poll period in milliseconds.
static CHECK_MSEC: AtomicU64 = AtomicU64::new(100);
/// Tells the poll thread to stop.
static STOP: AtomicBool = AtomicBool::new(false);
/// The poll thread was stopped for a fork and is to start again after it.
static PAUSED: AtomicBool = AtomicBool::new(false);
/// The poll thread's kernel thread id, while it runs.
static POLL_TID: AtomicI32 = AtomicI32::new(0);

/// What only the GIL holder touches.
struct State {
    /// The tool id we hold, while we hold one.
    tool: Option<u8>,
    /// The probe mask whose events are on.
    on: u16,
    /// Per-call probes cannot work here (no sys.monitoring, no free id);
    /// said once on stderr.
    unavailable: bool,
    poll: Option<JoinHandle<()>>,
    /// The process that started `poll` (a forked child has no poll thread).
    poll_pid: u32,
}

static STATE: Mutex<State> = Mutex::new(State {
    tool: None,
    on: 0,
    unavailable: false,
    poll: None,
    poll_pid: 0,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while holding the lock leaves consistent data behind: each
    // field is written in one step.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-call events are held off: `python -m pyusdt`, launched by a
/// recorder, runs its own start-up code before the program's first line.
static HELD: AtomicBool = AtomicBool::new(false);

/// Holds per-call events off (`true`) until released (`false`); the
/// poll thread's ticks meanwhile turn nothing on.
pub fn hold(held: bool) {
    HELD.store(held, Ordering::Relaxed);
}

/// The probes that should have their events on now.
fn wanted() -> u16 {
    if HELD.load(Ordering::Relaxed) {
        return 0;
    }
    probes::attached_mask() & !DISABLED.load(Ordering::Relaxed)
}

/// The names of the probes in `mask`.
pub fn names(mask: u16) -> Vec<&'static str> {
    Probe::ALL
        .iter()
        .filter(|p| mask & p.bit() != 0)
        .map(|p| p.name())
        .collect()
}

/// Whether a `calls` tracer was attached at the last reconcile.
static CALLS_SEEN: AtomicBool = AtomicBool::new(false);

/// Brings `sys.monitoring` in line with the attached probes.
pub fn reconcile(py: Python<'_>) {
    let calls = probes::calls_attached();
    if calls != CALLS_SEEN.swap(calls, Ordering::Relaxed) && calls {
        crate::calls::new_epoch();
    }
    let want = wanted();
    RECONCILED.store(want, Ordering::Relaxed);
    let mut st = state();
    if want == st.on || st.unavailable {
        return;
    }
    if let Err(e) = apply(py, &mut st, want) {
        st.unavailable = true;
        eprintln!("pyusdt: per-call probes are off: {e}");
        if let Some(tool) = st.tool.take() {
            let _ = release(py, tool);
        }
        st.on = 0;
    }
}

fn apply(py: Python<'_>, st: &mut State, want: u16) -> PyResult<()> {
    let sys = py.import("sys")?;
    if !sys.hasattr("monitoring")? {
        st.unavailable = true;
        let v = py.version_info();
        eprintln!(
            "pyusdt: the per-call probes ({}) need Python 3.12 or later and this is {}.{}; \
             the layout announcement (sampled profiling) works",
            names(want).join(", "),
            v.major,
            v.minor
        );
        return Ok(());
    }
    let mon = sys.getattr("monitoring")?;
    if want == 0 {
        if let Some(tool) = st.tool.take() {
            release(py, tool)?;
        }
        st.on = 0;
        return Ok(());
    }
    let tool = match st.tool {
        Some(t) => t,
        None => {
            let Some(t) = claim(py, &mon)? else {
                st.unavailable = true;
                eprintln!(
                    "pyusdt: sys.monitoring tool ids {TOOL_IDS:?} are all taken; \
                     the per-call probes stay off"
                );
                return Ok(());
            };
            st.tool = Some(t);
            t
        }
    };
    let events = mon.getattr("events")?;
    let mut bits = 0u32;
    for p in Probe::ALL.iter().filter(|p| want & p.bit() != 0) {
        bits |= events.getattr(p.name())?.extract::<u32>()?;
    }
    mon.call_method1("set_events", (tool, bits))?;
    st.on = want;
    Ok(())
}

/// Takes the first free tool id and registers every callback under it.
fn claim(py: Python<'_>, mon: &Bound<'_, PyAny>) -> PyResult<Option<u8>> {
    for id in TOOL_IDS {
        if !mon.call_method1("get_tool", (id,))?.is_none() {
            continue;
        }
        mon.call_method1("use_tool_id", (id, "pyusdt"))?;
        let events = mon.getattr("events")?;
        for p in Probe::ALL {
            let ev = events.getattr(p.name())?;
            mon.call_method1("register_callback", (id, ev, callbacks::for_probe(py, p)?))?;
        }
        return Ok(Some(id));
    }
    Ok(None)
}

/// Turns every event off, drops the callbacks and frees the tool id.
fn release(py: Python<'_>, tool: u8) -> PyResult<()> {
    let mon = py.import("sys")?.getattr("monitoring")?;
    mon.call_method1("set_events", (tool, 0))?;
    let events = mon.getattr("events")?;
    for p in Probe::ALL {
        let ev = events.getattr(p.name())?;
        mon.call_method1("register_callback", (tool, ev, py.None()))?;
    }
    mon.call_method1("free_tool_id", (tool,))?;
    Ok(())
}

/// Turns `probe` off after its callback failed; says so once.
pub fn disable(py: Python<'_>, probe: Probe, err: &PyErr) {
    if DISABLED.fetch_or(probe.bit(), Ordering::Relaxed) & probe.bit() == 0 {
        eprintln!(
            "pyusdt: probe {} is off after an error in its callback: {err}",
            probe.name()
        );
        reconcile(py);
    }
}

/// The tool id held and the probe mask whose events are on.
pub fn current() -> (Option<u8>, u16, bool) {
    let st = state();
    (st.tool, st.on, st.unavailable)
}

/// Probes turned off after an error.
pub fn disabled() -> u16 {
    DISABLED.load(Ordering::Relaxed)
}

/// Blocks every signal in the calling thread; returns the mask it had.
fn block_signals() -> libc::sigset_t {
    // SAFETY: zeroed sigset_t values are valid storage that sigfillset and
    // pthread_sigmask fill; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    }
}

/// Puts back a mask that [`block_signals`] returned.
fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` is a mask pthread_sigmask filled.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

fn poll_loop(started: std::sync::mpsc::Sender<()>) {
    // SAFETY: gettid cannot fail.
    POLL_TID.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    // The thread has its name (set before this runs) and its mask: the
    // program may look at its threads now.
    let _ = started.send(());
    while !STOP.load(Ordering::Relaxed) {
        // Announce the layout on every tick while a tracer is attached: a
        // count that rose cannot tell a tracer that detached and another
        // that attached between two ticks, and one uprobe hit per tick
        // costs nothing that matters.
        let asked = probes::layout_attached() != 0;
        if asked {
            if let Some(l) = layout_ffi::get() {
                probes::fire_layout(l as *const _ as u64, std::mem::size_of_val(l) as u64);
            }
        }
        // A tracer that asks for the layout is setting up: it hears every
        // thread's name too (for the same reason as above, the count of
        // name listeners cannot tell one that came for one that went).
        crate::threads::tick(asked);
        crate::clock::tick();
        if wanted() != RECONCILED.load(Ordering::Relaxed) {
            Python::attach(reconcile);
        }
        thread::park_timeout(Duration::from_millis(CHECK_MSEC.load(Ordering::Relaxed)));
    }
}

/// Starts the poll thread unless this process already has one.
pub fn start(check_msec: u64) -> PyResult<bool> {
    let mut st = state();
    let pid = std::process::id();
    if st.poll.is_some() && st.poll_pid == pid {
        return Ok(false);
    }
    // In a forked child the parent's poll thread does not exist: forget
    // its handle (joining it would wait forever) and start our own.
    if let Some(h) = st.poll.take() {
        std::mem::forget(h);
    }
    CHECK_MSEC.store(check_msec, Ordering::Relaxed);
    STOP.store(false, Ordering::Relaxed);
    // The thread is born with every signal blocked (it inherits the mask),
    // so that process-directed signals, Ctrl-C above all, go to the
    // interpreter's main thread as they would without pyusdt, even in the
    // instant after it starts; and start() returns only once it runs,
    // named, so that nobody sees it half made.
    let (tx, rx) = std::sync::mpsc::channel();
    let old = block_signals();
    let spawned = thread::Builder::new()
        .name(pyusdt_contract::probes::POLL_THREAD.into())
        .spawn(move || poll_loop(tx));
    restore_signals(&old);
    let handle = spawned
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("start the poll thread: {e}")))?;
    let _ = rx.recv();
    st.poll = Some(handle);
    st.poll_pid = pid;
    Ok(true)
}

/// Stops the poll thread before a fork, and waits until the kernel no
/// longer counts it: CPython 3.12+ warns (DeprecationWarning, an error
/// under -W error) when a process with several threads forks, and counts
/// them in /proc/self/stat. The program must not see pyusdt's thread.
pub fn pause(py: Python<'_>) {
    let handle = {
        let mut st = state();
        if st.poll_pid != std::process::id() {
            return;
        }
        st.poll.take()
    };
    let Some(h) = handle else { return };
    STOP.store(true, Ordering::Relaxed);
    h.thread().unpark();
    let tid = POLL_TID.load(Ordering::Relaxed);
    py.detach(|| {
        let _ = h.join();
        // The join returns when the thread has cleared its tid, on its
        // way out of the kernel; the kernel drops it from the thread group
        // (the count CPython reads) a moment later, and on a loaded machine
        // that moment can be long. Wait for it by the clock, not by a
        // number of tries: yield first, then sleep a little, for as long
        // as the exit takes (the deadline only guards against a kernel
        // that never reaps).
        let task = format!("/proc/self/task/{tid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut tries = 0u32;
        while std::path::Path::new(&task).exists() && std::time::Instant::now() < deadline {
            if tries < 1000 {
                thread::yield_now();
            } else {
                thread::sleep(Duration::from_micros(50));
            }
            tries += 1;
        }
    });
    PAUSED.store(true, Ordering::Relaxed);
}

/// Starts the poll thread again after a fork, if [`pause`] stopped it.
pub fn resume() -> PyResult<()> {
    if PAUSED.swap(false, Ordering::Relaxed) {
        start(CHECK_MSEC.load(Ordering::Relaxed))?;
    }
    Ok(())
}

/// Stops the poll thread (at interpreter exit) and turns monitoring off.
pub fn stop(py: Python<'_>) {
    // At exit: what this (the main) thread wrote for a calls tracer.
    crate::calls::flush();
    let handle = {
        let mut st = state();
        STOP.store(true, Ordering::Relaxed);
        if st.poll_pid == std::process::id() {
            st.poll.take()
        } else {
            None
        }
    };
    if let Some(h) = handle {
        h.thread().unpark();
        // The poll thread may be waiting for the GIL: let it have it.
        py.detach(|| {
            let _ = h.join();
        });
    }
    // The threads' last names, once the poll thread has stopped.
    crate::threads::tick(false);
    let mut st = state();
    if let Some(tool) = st.tool.take() {
        // At exit an error here would only add noise to the program's
        // output; the interpreter drops every tool id anyway.
        let _ = release(py, tool);
    }
    st.on = 0;
}

/// Whether the poll thread runs in this process.
pub fn running() -> bool {
    let st = state();
    st.poll.is_some() && st.poll_pid == std::process::id()
}

/// The poll period in milliseconds.
pub fn check_msec() -> u64 {
    CHECK_MSEC.load(Ordering::Relaxed)
}
