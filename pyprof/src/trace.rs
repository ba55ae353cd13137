//! Live events: `pyusdt_prof.trace()`, over the library's
//! [`pyusdt_prof::trace::trace`].
//!
//! The trace runs in a thread of its own (it owns the BPF objects) and
//! hands each event over a bounded channel; the caller waits on it with the
//! GIL released, waking ten times a second for Ctrl-C. A consumer slower
//! than the events makes the channel full, then the trace's ring buffer,
//! whose drops are counted in the summary's `lost`. Closing drops the
//! receiving end, which ends the trace at its next event or tick.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};

use pyusdt_prof::trace::{self as lib, ArgValue, Event, ProbeSpec, TraceOptions, TraceSummary};

use crate::{
    block_signals, check_can_trace, check_pid, lock, recorder_error, seconds, ser_to_py,
    SIGNAL_CHECK,
};

/// Events waiting in the channel before the trace's thread waits.
const CHANNEL: usize = 4096;

/// What the trace's thread says.
enum Msg {
    /// Everything is attached.
    Ready,
    /// One event.
    Event(Event),
}

type Handle = JoinHandle<anyhow::Result<TraceSummary>>;

/// A trace's error: ValueError for what the caller asked wrongly (no
/// such probe, syscall), else as a recording's.
fn trace_error(e: &anyhow::Error) -> PyErr {
    if e.chain()
        .any(|c| c.downcast_ref::<lib::TraceError>().is_some())
    {
        return PyValueError::new_err(format!("{e:#}"));
    }
    recorder_error(e)
}

/// Names given as an iterable of them, or as one string: one name
/// (`split` false: a probe spec holds commas in its types), or
/// comma-separated names.
fn names(v: &Bound<'_, PyAny>, split: bool) -> PyResult<Vec<String>> {
    if let Ok(s) = v.cast::<PyString>() {
        let s = s.to_str()?;
        if !split {
            return Ok(vec![s.to_string()]);
        }
        return Ok(s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect());
    }
    v.try_iter()?
        .map(|n| n.and_then(|n| n.extract::<String>()))
        .collect()
}

/// An event as a dict: `kind` ("probe" or "syscall"), `time_ns`
/// (CLOCK_MONOTONIC), `pid`, `tid`, `thread`, `name`, `stack` (Python
/// frames, root first), and for a probe `provider` and `args`, for a
/// syscall `duration_ns` and `ret`.
fn event_dict(py: Python<'_>, e: Event) -> PyResult<Bound<'_, PyAny>> {
    let d = PyDict::new(py);
    match e {
        Event::Probe {
            time_ns,
            pid,
            tid,
            thread,
            provider,
            name,
            args,
            stack,
        } => {
            d.set_item("kind", "probe")?;
            d.set_item("time_ns", time_ns)?;
            d.set_item("pid", pid)?;
            d.set_item("tid", tid)?;
            d.set_item("thread", thread)?;
            d.set_item("provider", provider)?;
            d.set_item("name", name)?;
            let values = PyList::empty(py);
            for a in &args {
                match a {
                    ArgValue::Int(i) => values.append(i)?,
                    ArgValue::Str(s) => values.append(s)?,
                    other => values.append(ser_to_py(py, other)?)?,
                }
            }
            d.set_item("args", values)?;
            d.set_item("stack", stack)?;
        }
        Event::Syscall {
            time_ns,
            pid,
            tid,
            thread,
            name,
            duration_ns,
            ret,
            stack,
        } => {
            d.set_item("kind", "syscall")?;
            d.set_item("time_ns", time_ns)?;
            d.set_item("pid", pid)?;
            d.set_item("tid", tid)?;
            d.set_item("thread", thread)?;
            d.set_item("name", name)?;
            d.set_item("duration_ns", duration_ns)?;
            d.set_item("ret", ret)?;
            d.set_item("stack", stack)?;
        }
        other => return ser_to_py(py, &other),
    }
    Ok(d.into_any())
}

/// A summary as a dict: `events`, `lost`, `probes` (what was attached),
/// `stacks_lost`, `warnings`.
fn summary_dict<'py>(py: Python<'py>, s: &TraceSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("events", s.events)?;
    d.set_item("lost", s.lost)?;
    d.set_item("probes", s.probes.clone())?;
    d.set_item("stacks_lost", s.stacks_lost)?;
    d.set_item("warnings", s.warnings.clone())?;
    Ok(d)
}

/// Live events of a process: iterate for event dicts (see `trace()`);
/// `close()` (or leaving a `with` block) stops the trace; `summary` holds
/// what it did once it ended.
#[pyclass(module = "pyusdt_prof._native", frozen)]
struct Trace {
    rx: Mutex<Option<Receiver<Msg>>>,
    handle: Mutex<Option<Handle>>,
    stop: Arc<AtomicBool>,
    summary: Mutex<Option<Py<PyDict>>>,
}

impl Drop for Trace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.rx.get_mut().map(Option::take));
        if let Some(h) = self.handle.get_mut().ok().and_then(Option::take) {
            let _ = h.join();
        }
    }
}

/// What one wait on the channel gave.
enum Next {
    Event(Event),
    Tick,
    Over,
}

impl Trace {
    /// Waits (GIL released) up to one tick for the next message.
    fn recv(&self, py: Python<'_>) -> Next {
        py.detach(|| {
            let g = lock(&self.rx);
            let Some(rx) = g.as_ref() else {
                return Next::Over;
            };
            match rx.recv_timeout(SIGNAL_CHECK) {
                Ok(Msg::Event(e)) => Next::Event(e),
                Ok(Msg::Ready) | Err(RecvTimeoutError::Timeout) => Next::Tick,
                Err(RecvTimeoutError::Disconnected) => Next::Over,
            }
        })
    }

    /// Joins the trace's thread, once, and keeps its summary; its error,
    /// if it failed.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let Some(h) = lock(&self.handle).take() else {
            return Ok(());
        };
        drop(lock(&self.rx).take());
        match py.detach(|| h.join()) {
            Err(_) => Err(PyRuntimeError::new_err("the trace's thread panicked")),
            Ok(Err(e)) => Err(trace_error(&e)),
            Ok(Ok(s)) => {
                *lock(&self.summary) = Some(summary_dict(py, &s)?.unbind());
                Ok(())
            }
        }
    }

    /// The next event, None once the trace is over; Ctrl-C stops it.
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        loop {
            match self.recv(py) {
                Next::Event(e) => return event_dict(py, e).map(Some),
                Next::Tick => {
                    if let Err(e) = py.check_signals() {
                        // The interrupt matters more than how the trace
                        // ended.
                        let _ = self.close(py);
                        return Err(e);
                    }
                }
                Next::Over => {
                    self.finish(py)?;
                    return Ok(None);
                }
            }
        }
    }
}

#[pymethods]
impl Trace {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.next_event(py)
    }

    /// Stops the trace (detaching everything) and keeps its summary;
    /// events not yet read are dropped. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        drop(lock(&self.rx).take());
        self.finish(py)
    }

    /// What the trace did, once it ended (None while it runs):
    /// `{"events", "lost", "probes", "stacks_lost", "warnings"}`.
    #[getter]
    fn summary(&self, py: Python<'_>) -> Option<Py<PyDict>> {
        lock(&self.summary).as_ref().map(|d| d.clone_ref(py))
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// Starts a trace and waits until it is attached.
fn start(py: Python<'_>, pid: u32, opts: TraceOptions) -> PyResult<Trace> {
    check_can_trace()?;
    check_pid(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL);
    let flag = Arc::clone(&stop);
    let h = std::thread::Builder::new()
        .name("pyusdt-prof-trace".into())
        .spawn(move || {
            block_signals();
            lib::trace(
                pid,
                &opts,
                &flag,
                || {
                    let _ = tx.send(Msg::Ready);
                },
                |e| tx.send(Msg::Event(e)).is_ok(),
            )
        })
        .map_err(|e| PyRuntimeError::new_err(format!("start the trace's thread: {e}")))?;
    let t = Trace {
        rx: Mutex::new(None),
        handle: Mutex::new(Some(h)),
        stop,
        summary: Mutex::new(None),
    };
    let rx = Mutex::new(rx);
    loop {
        match py.detach(|| lock(&rx).recv_timeout(SIGNAL_CHECK)) {
            Ok(Msg::Ready) => break,
            // Never before Ready; kept, not lost, all the same.
            Ok(Msg::Event(_)) => {}
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    // The thread ends by itself once it sees the flag;
                    // nothing waits for it.
                    t.stop.store(true, Ordering::Relaxed);
                    drop(lock(&t.handle).take());
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                t.finish(py)?;
                return Err(PyRuntimeError::new_err(
                    "the trace ended before it was attached",
                ));
            }
        }
    }
    *lock(&t.rx) = Some(rx.into_inner().unwrap_or_else(|e| e.into_inner()));
    Ok(t)
}

/// Traces process `pid` live: hits of USDT probes (`probes`, a list of
/// specs or one, each `provider:name`, `name` or `provider:name(int,str)`,
/// `*` globbing) and syscalls (`syscalls`: None for none, `[]` for every
/// one, or names, as a list or `"read,write"`),
/// with each thread's Python stack if `stacks` (the process must run
/// pyusdt), for `duration` seconds or until stopped or the process exits.
/// Returns once everything is attached.
///
/// Without `callback`: a Trace to iterate for event dicts (`kind`
/// "probe" or "syscall", `time_ns`, `pid`, `tid`, `thread`, `name`,
/// `stack`; a probe's `provider` and `args`; a syscall's `duration_ns`
/// and `ret`); `close()` or a `with` block stops it, then `.summary`.
/// With `callback`: calls it with each event dict until it returns False
/// (or raises) or the trace ends, and returns the summary dict.
///
/// Ctrl-C stops the trace and raises KeyboardInterrupt. A probe or
/// syscall that does not exist is a ValueError; missing privileges a
/// PermissionError; no such process a ProcessLookupError.
#[pyfunction]
#[pyo3(signature = (pid, probes=None, syscalls=None, stacks=false, duration=None, callback=None))]
fn trace<'py>(
    py: Python<'py>,
    pid: u32,
    probes: Option<&Bound<'py, PyAny>>,
    syscalls: Option<&Bound<'py, PyAny>>,
    stacks: bool,
    duration: Option<f64>,
    callback: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let specs = match probes {
        None => Vec::new(),
        Some(p) if p.is_none() => Vec::new(),
        Some(p) => names(p, false)?
            .iter()
            .map(|s| ProbeSpec::from_str(s).map_err(PyValueError::new_err))
            .collect::<PyResult<_>>()?,
    };
    let syscalls = match syscalls {
        None => None,
        Some(s) if s.is_none() => None,
        Some(s) => Some(names(s, true)?),
    };
    let opts = TraceOptions {
        probes: specs,
        syscalls,
        stacks,
        duration: seconds("duration", duration)?,
    };
    let t = start(py, pid, opts)?;
    let Some(callback) = callback.filter(|c| !c.is_none()) else {
        return Ok(Bound::new(py, t)?.into_any());
    };
    loop {
        let Some(e) = t.next_event(py)? else { break };
        match callback.call1((e,)) {
            Ok(r) if r.is_instance_of::<PyBool>() && !r.is_truthy()? => {
                t.close(py)?;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = t.close(py);
                return Err(e);
            }
        }
    }
    Ok(t.summary(py)
        .map(|d| d.into_bound(py).into_any())
        .unwrap_or_else(|| py.None().into_bound(py)))
}

/// Adds the trace API to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Trace>()?;
    m.add_function(wrap_pyfunction!(trace, m)?)?;
    Ok(())
}
