//! `pyusdt._native`: the instrumented side of pyusdt-prof.
//!
//! A Python program that loads this module carries the USDT probes of
//! provider `pyusdt` ([`probes`]). While no tracer is attached nothing runs
//! per Python call: `sys.monitoring` stays off and a poll thread ([`monitor`])
//! only reads the probes' semaphores. When a tracer attaches to a per-call
//! probe, the poll thread turns on exactly that probe's `sys.monitoring`
//! event, whose callback ([`callbacks`]) fires the probe. When a tracer
//! attaches to `pyusdt:layout`, the poll thread fires it with the address of
//! a `pyusdt_contract::layout::PyusdtLayout` that tells a BPF program how to walk this
//! interpreter's threads and frames without any per-call probe.
//!
//! Two more kinds of probes serve the application itself: spans
//! ([`span`]), bracketed by the static probes `pyusdt:span_begin` and
//! `pyusdt:span_end`, and probes of the application's own providers
//! ([`app`]), which live in small shared objects generated at run time
//! ([`elf`]) and loaded with `dlopen`, so that tracers find them by path.
//! Each such object carries a non-allocated section `.pyusdt.argtypes`:
//! UTF-8 lines `provider:name:type,type,...\n`, types `int` or `str`
//! (nothing after the second colon for a probe without arguments).

mod app;
mod callbacks;
mod calls;
mod clock;
mod elf;
mod forks;
mod layout_ffi;
mod monitor;
mod probes;
mod span;
mod threads;
mod usdt;

use std::mem::{offset_of, size_of_val};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::probes::Probe;
use pyusdt_contract::for_each_layout_field;
use pyusdt_contract::layout::PyusdtLayout;

/// Starts the poll thread (once per process; again in a forked child).
/// Returns whether it started now.
#[pyfunction]
fn _start(py: Python<'_>, check_msec: u64) -> PyResult<bool> {
    layout_ffi::init(py);
    monitor::start(check_msec)
}

/// Notes that thread `tid` (its kernel thread id) is called `name` now,
/// for a tracer of `pyusdt:thread` (see `threads`).
#[pyfunction]
fn _thread_named(tid: i64, name: &str) {
    threads::note(tid, name)
}

/// Forgets every thread's name (in a forked child).
#[pyfunction]
fn _threads_forget() {
    threads::forget_all()
}

/// Stops the poll thread for a fork (see `monitor::pause`).
#[pyfunction]
fn _before_fork(py: Python<'_>) {
    monitor::pause(py)
}

/// Starts the poll thread again in a forked child.
#[pyfunction]
fn _after_fork_child() -> PyResult<()> {
    monitor::resume()
}

extern "C" fn resume_later(_: *mut std::ffi::c_void) -> std::ffi::c_int {
    match monitor::resume() {
        Ok(()) => 0,
        Err(e) => {
            // A pending call that fails raises in whatever code runs next:
            // say it here instead.
            eprintln!("pyusdt: the poll thread did not restart after fork: {e}");
            0
        }
    }
}

/// Starts the poll thread again in the parent, once `os.fork()` has
/// returned: CPython 3.13 counts the process's threads for its fork
/// warning after the after-fork hooks have run.
#[pyfunction]
fn _after_fork_parent() {
    // SAFETY: a plain C callback with no argument; the interpreter runs it
    // in the main thread with the GIL held.
    if unsafe { pyo3::ffi::Py_AddPendingCall(Some(resume_later), std::ptr::null_mut()) } != 0 {
        resume_later(std::ptr::null_mut());
    }
}

/// Brings `sys.monitoring` in line with the attached probes now, without
/// waiting for the poll thread's next tick: `python -m pyusdt` calls it
/// once the recorder that launched it is attached, so that the program's
/// first call is seen.
#[pyfunction]
fn _reconcile(py: Python<'_>) {
    monitor::reconcile(py)
}

/// Holds per-call events off while `python -m pyusdt` prepares the
/// program (`True`), or lets them follow the attached probes (`False`):
/// a recorder attached before the program starts sees none of the
/// launcher's own calls, whenever the poll thread ticks.
#[pyfunction]
fn _hold(held: bool) {
    monitor::hold(held)
}

/// Stops the poll thread and turns `sys.monitoring` off.
#[pyfunction]
fn _stop(py: Python<'_>) {
    monitor::stop(py)
}

/// The layout announced through `pyusdt:layout`, as a dict of its fields.
#[pyfunction]
fn layout(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let l = layout_ffi::init(py);
    let d = PyDict::new(py);
    macro_rules! put {
        ($($f:ident),*) => { $( d.set_item(stringify!($f), l.$f)?; )* };
    }
    for_each_layout_field!(put);
    d.set_item("address", l as *const PyusdtLayout as usize)?;
    Ok(d)
}

/// The layout's fields that `_Py_DebugOffsets` carries too, each with its
/// offset there, and `__size__`: what a profiler reads to find the
/// layout of a process without pyusdt (`make layout-tables`).
#[pyfunction]
fn _debug_positions(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (positions, size) = layout_ffi::debug_positions();
    let d = PyDict::new(py);
    for (field, offset) in positions {
        d.set_item(field, offset)?;
    }
    d.set_item("__size__", size)?;
    Ok(d)
}

/// Each layout field's (offset, size) in the Rust struct, for tests.
#[pyfunction]
fn _layout_offsets(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let l = PyusdtLayout::default();
    let d = PyDict::new(py);
    macro_rules! put {
        ($($f:ident),*) => {
            $( d.set_item(stringify!($f), (offset_of!(PyusdtLayout, $f), size_of_val(&l.$f)))?; )*
        };
    }
    for_each_layout_field!(put);
    d.set_item("__size__", (0, size_of_val(&l)))?;
    Ok(d)
}

/// Makes the next callback of `probe` fail, to test that an error inside
/// the extension turns that probe off and never reaches the program.
#[pyfunction]
fn _inject_fault(probe: &str) -> PyResult<()> {
    let p = Probe::ALL
        .into_iter()
        .find(|p| p.name() == probe)
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("no probe {probe}")))?;
    callbacks::inject_fault(p);
    Ok(())
}

/// What the extension is doing now: the poll thread, each probe's
/// semaphore (spans' included), the `sys.monitoring` tool id held, the
/// probes whose events are on, and the app probes loaded (`app_probes`:
/// provider, name, args, semaphore, file of each).
#[pyfunction]
fn status(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (tool, on, unavailable) = monitor::current();
    let d = PyDict::new(py);
    d.set_item("enabled", monitor::running())?;
    d.set_item("check_msec", monitor::check_msec())?;
    let sems = PyDict::new(py);
    for p in Probe::ALL {
        sems.set_item(p.name(), p.attached())?;
    }
    sems.set_item("layout", probes::layout_attached())?;
    sems.set_item("calls", probes::calls_tracers())?;
    let (begin, end) = probes::span_attached();
    sems.set_item("span_begin", begin)?;
    sems.set_item("span_end", end)?;
    sems.set_item("thread", probes::thread_attached())?;
    d.set_item("semaphores", sems)?;
    d.set_item("app_probes", app::status(py)?)?;
    d.set_item("tool_id", tool)?;
    d.set_item("active", monitor::names(on))?;
    d.set_item("disabled", monitor::names(monitor::disabled()))?;
    d.set_item("per_call_unavailable", unavailable)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    forks::install();
    m.add_function(wrap_pyfunction!(_start, m)?)?;
    m.add_function(wrap_pyfunction!(_stop, m)?)?;
    m.add_function(wrap_pyfunction!(_reconcile, m)?)?;
    m.add_function(wrap_pyfunction!(_hold, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(layout, m)?)?;
    m.add_function(wrap_pyfunction!(_layout_offsets, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_positions, m)?)?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(_thread_named, m)?)?;
    m.add_function(wrap_pyfunction!(_threads_forget, m)?)?;
    m.add_function(wrap_pyfunction!(_inject_fault, m)?)?;
    m.add_function(wrap_pyfunction!(app::_remove_probe_files, m)?)?;
    m.add_class::<app::AppProbe>()?;
    app::install_fast_paths(&m.py().get_type::<app::AppProbe>())?;
    m.add_class::<span::Span>()?;
    m.add("MAX_PROBE_ARGS", app::MAX_ARGS)?;
    let names: Vec<&str> = Probe::ALL.iter().map(|p| p.name()).collect();
    m.add("PER_CALL_PROBES", PyTuple::new(m.py(), names)?)?;
    m.add("TOOL_IDS", PyTuple::new(m.py(), monitor::TOOL_IDS)?)?;
    m.add("LAYOUT_VERSION", pyusdt_contract::layout::VERSION)?;
    Ok(())
}
