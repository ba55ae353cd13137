//! `pyusdt_prof._native`: the pyusdt-prof library for Python scripts and
//! notebooks.
//!
//! A [`Recording`] runs [`record::record`] in a thread of its own, which
//! owns every BPF object (libbpf's are not `Send`) from load to detach; the
//! caller's thread waits for it with the GIL released and hears back over a
//! channel once everything is attached, or why not. `stop()` sets the
//! recorder's stop flag and joins the thread, which hands back the
//! [`profile::Profile`]; a [`PyProfile`] holds it and answers with plain
//! Python data, computed by the same functions as the CLI's readers
//! (`report.rs`, `Profile::folded`), so that a script and `pyusdt-prof
//! report` never disagree. Live events come the same way from the trace
//! library (see [`trace`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::{
    PyFileNotFoundError, PyPermissionError, PyProcessLookupError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use pyusdt_prof::errors;
use pyusdt_prof::profile::{Profile, ViewKind};
use pyusdt_prof::readers::report;
use pyusdt_prof::record::{self, Progress};
use pyusdt_prof::target::{self, Lookup, Target};

mod trace;

/// How often a waiting caller wakes to look for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A recorder's error as the Python exception a script can branch on:
/// PermissionError when privileges are missing, RuntimeError otherwise,
/// with the CLI's hint appended.
pub(crate) fn recorder_error(e: &anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    match errors::hint(e) {
        Some(h) => PyPermissionError::new_err(format!("{msg} (hint: {h})")),
        None => PyRuntimeError::new_err(msg),
    }
}

/// A reader's error (a bad view, thread or argument): ValueError.
fn value_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// Fails with PermissionError when this process cannot load BPF programs
/// (RuntimeError when the kernel lacks BTF).
pub(crate) fn check_can_trace() -> PyResult<()> {
    let Err(e) = errors::check_can_trace() else {
        return Ok(());
    };
    let lacking =
        errors::effective_caps().is_some_and(|caps| !errors::missing_capabilities(caps).is_empty());
    let msg = format!("{e:#}");
    Err(if lacking {
        PyPermissionError::new_err(msg)
    } else {
        PyRuntimeError::new_err(msg)
    })
}

/// ProcessLookupError when no process has this pid.
pub(crate) fn check_pid(pid: u32) -> PyResult<()> {
    match target::lookup(pid) {
        Ok(Lookup::Gone) => Err(PyProcessLookupError::new_err(format!(
            "no process with PID {pid}"
        ))),
        _ => Ok(()),
    }
}

/// Process `pid` with pyusdt loaded, or the Python exception that says
/// why not.
fn find_target(pid: u32) -> PyResult<Target> {
    check_pid(pid)?;
    target::find(pid).map_err(|e| match target::lookup(pid) {
        Ok(Lookup::Gone) => PyProcessLookupError::new_err(format!("{e:#}")),
        _ => PyRuntimeError::new_err(format!("{e:#}")),
    })
}

/// Blocks every signal in the calling thread: signals are the
/// interpreter's, handled in its main thread.
pub(crate) fn block_signals() {
    // SAFETY: sigfillset fills a zeroed set we own; pthread_sigmask
    // changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Takes a lock, even one a panicking thread held (the data are plain).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something serializable as Python data, by `json.loads` of its JSON
/// text: fields keep their order, as `pyusdt-prof report --format json`
/// prints them.
fn ser_to_py<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A view by name, or ValueError naming the views.
fn view_kind(name: &str) -> PyResult<ViewKind> {
    ViewKind::named(name).map_err(PyValueError::new_err)
}

/// Views given as one string (`"cpu,syscall"`, `"all"`) or an iterable of
/// names.
fn view_list(views: &Bound<'_, PyAny>) -> PyResult<Vec<ViewKind>> {
    let names: Vec<String> = if let Ok(s) = views.cast::<PyString>() {
        s.to_str()?
            .split(',')
            .map(|n| n.trim().to_string())
            .collect()
    } else {
        views
            .try_iter()?
            .map(|n| n.and_then(|n| n.extract::<String>()))
            .collect::<PyResult<_>>()?
    };
    let mut out = Vec::new();
    for n in &names {
        // As `record --views`: a view, or all (every sampled view).
        out.extend(ViewKind::named_or_all(n).map_err(PyValueError::new_err)?);
    }
    Ok(out)
}

/// A thread given as a tid (int) or a name (str), as `report --thread`
/// takes it.
fn thread_arg(thread: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(t) = thread else { return Ok(None) };
    if t.is_none() {
        return Ok(None);
    }
    if let Ok(s) = t.cast::<PyString>() {
        return Ok(Some(s.to_str()?.to_string()));
    }
    let tid: u32 = t
        .extract()
        .map_err(|_| PyValueError::new_err("thread is a thread id (int) or a thread name (str)"))?;
    Ok(Some(tid.to_string()))
}

/// Seconds as a Duration, refusing what is not a positive number.
pub(crate) fn seconds(what: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|t| {
        record::seconds(t).map_err(|_| {
            PyValueError::new_err(format!(
                "{what} must be a number of seconds from 0 to {}, not {t}",
                record::MAX_SECONDS
            ))
        })
    })
    .transpose()
}

/// Where a recording is.
enum State {
    /// Made, not started.
    New,
    /// start() is attaching.
    Starting,
    /// Attached and counting in the recorder's thread.
    Running(JoinHandle<anyhow::Result<Profile>>),
    /// stop() is collecting the profile.
    Stopping,
    /// Over; the profile, if it could be made.
    Done(Option<Py<PyProfile>>),
}

/// What the recorder's thread reports as it goes.
#[derive(Default)]
struct Live {
    progress: Progress,
    ended: bool,
}

/// A recording of a running Python process (with pyusdt loaded, as
/// `python -m pyusdt app.py` or `pyusdt.enable()`, or any CPython
/// 3.11-3.15 without it), needing root.
///
/// `Recording(pid, views=("cpu",), freq=99, lines=False,
/// subprocesses=False, duration=None, exact=False, span=None,
/// gil_probes=False, sample_waits_below=0.001, offcpu_stacks_at="auto")`,
/// as `record -p` takes
/// them: the views as names or
/// one string (`"cpu,syscall"`, `"all"`); freq the CPU samples per second;
/// lines names Python frames by line; subprocesses records the processes
/// the target starts too; duration (seconds) stops the recording by
/// itself; exact adds the calls view (every Python call, 3.12+); span
/// keeps to what threads do inside `pyusdt.span(span)`; gil_probes
/// measures the gil view by uprobes on every take of the GIL;
/// sample_waits_below (seconds) is `--sample-waits-below` (0: every wait);
/// offcpu_stacks_at is `--offcpu-stacks-at`.
///
/// `start()` returns once every probe and sampler is attached; `stop()`
/// returns the Profile. As a context manager it starts on enter and stops
/// on exit; `.profile` holds the result. A Recording records once.
#[pyclass(module = "pyusdt_prof._native", frozen)]
struct Recording {
    pid: u32,
    opts: record::Options,
    state: Mutex<State>,
    stop: Arc<AtomicBool>,
    live: Arc<(Mutex<Live>, Condvar)>,
}

impl Recording {
    /// Takes the running recorder's thread out of the state, or says why
    /// there is none.
    fn take_running(&self) -> PyResult<JoinHandle<anyhow::Result<Profile>>> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut *st, State::Stopping) {
            State::Running(h) => Ok(h),
            other => {
                let why = match &other {
                    State::New => "this recording was not started",
                    State::Starting => "this recording is still starting",
                    State::Stopping => "this recording is being stopped already",
                    _ => "this recording was stopped already",
                };
                *st = other;
                Err(PyRuntimeError::new_err(why))
            }
        }
    }

    /// Joins the recorder's thread (GIL released) and keeps its profile.
    fn finish(
        &self,
        py: Python<'_>,
        h: JoinHandle<anyhow::Result<Profile>>,
    ) -> PyResult<Py<PyProfile>> {
        let result = py.detach(|| h.join());
        let done = match result {
            Err(_) => Err(PyRuntimeError::new_err("the recorder's thread panicked")),
            Ok(Err(e)) => Err(recorder_error(&e)),
            Ok(Ok(p)) => Py::new(py, PyProfile { p }),
        };
        *lock(&self.state) = State::Done(done.as_ref().ok().map(|p| p.clone_ref(py)));
        done
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // A recording dropped while it runs stops and lets go of the
        // target (its thread needs no GIL to end).
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let State::Running(h) = std::mem::replace(st, State::Done(None)) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
}

#[pymethods]
impl Recording {
    #[new]
    #[pyo3(signature = (pid, views=None, freq=99, lines=false, subprocesses=false, duration=None, exact=false, span=None, gil_probes=false, sample_waits_below=0.001, offcpu_stacks_at="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pid: u32,
        views: Option<&Bound<'_, PyAny>>,
        freq: u64,
        lines: bool,
        subprocesses: bool,
        duration: Option<f64>,
        exact: bool,
        span: Option<String>,
        gil_probes: bool,
        sample_waits_below: f64,
        offcpu_stacks_at: &str,
    ) -> PyResult<Self> {
        let stacks_at = match offcpu_stacks_at {
            "auto" => record::StacksAt::Auto,
            "syscall-exit" => record::StacksAt::SyscallExit,
            "departure" => record::StacksAt::Departure,
            other => {
                return Err(value_error(anyhow::anyhow!(
                    "offcpu_stacks_at is auto, syscall-exit or departure, not {other:?}"
                )))
            }
        };
        if !(0.0..=1.0).contains(&sample_waits_below) {
            return Err(value_error(anyhow::anyhow!(
                "sample_waits_below is in seconds, from 0 (every wait) to 1"
            )));
        }
        let mut views: BTreeSet<ViewKind> = match views {
            None => [ViewKind::Cpu].into_iter().collect(),
            Some(v) => view_list(v)?.into_iter().collect(),
        };
        if exact {
            views.insert(ViewKind::Calls);
        }
        let opts = record::Options {
            views,
            freq,
            duration: seconds("duration", duration)?,
            subprocesses,
            lines,
            span,
            attached: true,
            gil_probes,
            sample_waits_below_ns: (sample_waits_below * 1e9).round() as u64,
            stacks_at,
        };
        opts.check().map_err(value_error)?;
        Ok(Recording {
            pid,
            opts,
            state: Mutex::new(State::New),
            stop: Arc::new(AtomicBool::new(false)),
            live: Arc::default(),
        })
    }

    /// The process id recorded.
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// The views asked for, by name.
    #[getter]
    fn views(&self) -> Vec<&'static str> {
        self.opts.views.iter().map(|v| v.name()).collect()
    }

    /// Whether the recorder is attached and counting (False before
    /// start(), and once it stopped by itself: duration over, or every
    /// recorded process gone).
    #[getter]
    fn running(&self) -> bool {
        matches!(*lock(&self.state), State::Running(_)) && !lock(&self.live.0).ended
    }

    /// The Profile once stopped (None before).
    #[getter]
    fn profile(&self, py: Python<'_>) -> Option<Py<PyProfile>> {
        match &*lock(&self.state) {
            State::Done(p) => p.as_ref().map(|p| p.clone_ref(py)),
            _ => None,
        }
    }

    /// Attaches to the process: returns once every probe and sampler is
    /// attached. Raises PermissionError without root (or CAP_BPF and
    /// CAP_PERFMON), ProcessLookupError for no such process, RuntimeError
    /// with the recorder's message otherwise (e.g. exact=True on a process
    /// without pyusdt), and RuntimeError when called twice.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = lock(&self.state);
            match &*st {
                State::New => *st = State::Starting,
                State::Starting | State::Running(_) => {
                    return Err(PyRuntimeError::new_err(
                        "this recording was started already",
                    ))
                }
                State::Stopping | State::Done(_) => return Err(PyRuntimeError::new_err(
                    "this recording was stopped already: a Recording records once; make a new one",
                )),
            }
        }
        let started = self.spawn(py);
        let mut st = lock(&self.state);
        match started {
            Ok(h) => {
                *st = State::Running(h);
                Ok(())
            }
            Err(e) => {
                // Nothing was recorded: it may be started again.
                *st = State::New;
                self.stop.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Stops the recording and returns its Profile (also kept as
    /// `.profile`). RuntimeError if it was not started or was stopped
    /// already, or with the recorder's message if it failed.
    fn stop(&self, py: Python<'_>) -> PyResult<Py<PyProfile>> {
        let h = self.take_running()?;
        self.stop.store(true, Ordering::Relaxed);
        self.finish(py, h)
    }

    /// Waits until the recording ends by itself (its duration is over or
    /// every recorded process exited), then returns its Profile like
    /// stop(). Ctrl-C raises KeyboardInterrupt and leaves it recording.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyProfile>> {
        if !matches!(*lock(&self.state), State::Running(_)) {
            // Says why.
            self.take_running()?;
        }
        loop {
            let ended = py.detach(|| {
                let (m, cv) = &*self.live;
                let g = lock(m);
                let (g, _) = cv
                    .wait_timeout_while(g, SIGNAL_CHECK, |l| !l.ended)
                    .unwrap_or_else(|e| e.into_inner());
                g.ended
            });
            if ended {
                break;
            }
            py.check_signals()?;
        }
        let h = self.take_running()?;
        self.finish(py, h)
    }

    /// Live figures: `elapsed` (seconds since attached), `events` per
    /// view, `lost`, `processes` recorded now, and `running`.
    fn progress<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (p, ended) = {
            let l = lock(&self.live.0);
            (l.progress.clone(), l.ended)
        };
        let d = PyDict::new(py);
        d.set_item("elapsed", p.elapsed.as_secs_f64())?;
        let events = PyDict::new(py);
        for v in &self.opts.views {
            events.set_item(v.name(), p.events.get(v).copied().unwrap_or(0))?;
        }
        d.set_item("events", events)?;
        d.set_item("lost", p.lost)?;
        d.set_item("processes", p.processes)?;
        d.set_item(
            "running",
            matches!(*lock(&self.state), State::Running(_)) && !ended,
        )?;
        Ok(d)
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().start(slf.py())?;
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        if matches!(*lock(&self.state), State::Running(_)) {
            self.stop(py)?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match &*lock(&self.state) {
            State::New => "new",
            State::Starting => "starting",
            State::Running(_) => "running",
            State::Stopping => "stopping",
            State::Done(_) => "stopped",
        };
        format!(
            "<pyusdt_prof.Recording pid={} views={} {state}>",
            self.pid,
            self.views().join(",")
        )
    }
}

impl Recording {
    /// Starts the recorder's thread and waits (GIL released, waking for
    /// Ctrl-C) until it has attached everything or failed.
    fn spawn(&self, py: Python<'_>) -> PyResult<JoinHandle<anyhow::Result<Profile>>> {
        check_can_trace()?;
        let t = find_target(self.pid)?;
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (stop, live, opts) = (
            Arc::clone(&self.stop),
            Arc::clone(&self.live),
            self.opts.clone(),
        );
        *lock(&live.0) = Live::default();
        let h = std::thread::Builder::new()
            .name("pyusdt-prof-rec".into())
            .spawn(move || {
                block_signals();
                let r = record::record(
                    &t,
                    &opts,
                    &stop,
                    || {
                        let _ = ready_tx.send(());
                    },
                    |p, _| lock(&live.0).progress = p.clone(),
                );
                let (m, cv) = &*live;
                lock(m).ended = true;
                cv.notify_all();
                r
            })
            .map_err(|e| PyRuntimeError::new_err(format!("start the recorder's thread: {e}")))?;
        let ready_rx = Mutex::new(ready_rx);
        loop {
            match py.detach(|| lock(&ready_rx).recv_timeout(SIGNAL_CHECK)) {
                Ok(()) => return Ok(h),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        // The thread ends by itself once it sees the flag
                        // (after the layout wait, at worst 10 s).
                        self.stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(match py.detach(|| h.join()) {
                        Ok(Err(e)) => recorder_error(&e),
                        Ok(Ok(_)) => {
                            PyRuntimeError::new_err("the recording ended before it was attached")
                        }
                        Err(_) => PyRuntimeError::new_err("the recorder's thread panicked"),
                    });
                }
            }
        }
    }
}

/// A profile: what a Recording made or `load()` read, as plain Python
/// data. Nothing in it needs the recorded process any more.
#[derive(Debug)]
#[pyclass(name = "Profile", module = "pyusdt_prof._native", frozen)]
struct PyProfile {
    p: Profile,
}

impl PyProfile {
    /// The view `name`, which this profile must hold.
    fn kind_in(&self, name: &str) -> PyResult<ViewKind> {
        let k = view_kind(name)?;
        if self.p.view(k).is_none() {
            return Err(PyValueError::new_err(format!(
                "this profile has no {} view; it has {}",
                k.name(),
                self.view_names().join(", ")
            )));
        }
        Ok(k)
    }

    fn view_names(&self) -> Vec<&'static str> {
        self.p.views.iter().map(|v| v.kind.name()).collect()
    }
}

#[pymethods]
impl PyProfile {
    /// The recorded process id.
    #[getter]
    fn pid(&self) -> u32 {
        self.p.pid
    }

    /// Its command line.
    #[getter]
    fn command(&self) -> Vec<String> {
        self.p.command.clone()
    }

    /// Its interpreter version, as `3.12.1`.
    #[getter]
    fn python(&self) -> String {
        self.p.python.clone()
    }

    /// When the recording began, in nanoseconds since the Unix epoch.
    #[getter]
    fn start_unix_ns(&self) -> u64 {
        self.p.start_unix_ns
    }

    /// How long it lasted, in nanoseconds.
    #[getter]
    fn duration_ns(&self) -> u64 {
        self.p.duration_ns
    }

    /// The CPU sampling rate, in Hz.
    #[getter]
    fn sample_hz(&self) -> u64 {
        self.p.sample_hz
    }

    /// The views recorded, by name.
    #[getter]
    fn views(&self) -> Vec<&'static str> {
        self.view_names()
    }

    /// The views whose short events were sampled (each kept one weighted
    /// by 1/p; `sample_waits_below`), with the length in ns under which
    /// they were: `{"offcpu": 1000000, ...}`.
    #[getter]
    fn sampled(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.p
            .views
            .iter()
            .filter_map(|v| v.sampled_below_ns.map(|ns| (v.kind.name(), ns)))
            .collect()
    }

    /// Thread names by thread id, as the kernel knows them.
    #[getter]
    fn threads(&self) -> std::collections::BTreeMap<u32, String> {
        self.p.threads.clone()
    }

    /// Python thread names (`threading.Thread.name`) by thread id, of the
    /// threads that had one while they were recorded.
    #[getter]
    fn python_threads(&self) -> std::collections::BTreeMap<u32, String> {
        self.p.python_threads.clone()
    }

    /// A thread as frames and reports name it: `NAME (TID)`, its Python
    /// name where it has one, with its kernel name beside the id where the
    /// two differ (`NAME (TID, KERNEL)`).
    fn thread_label(&self, tid: u32) -> String {
        self.p.thread_label(tid)
    }

    /// Events counted per view.
    #[getter]
    fn events(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.p
            .views
            .iter()
            .map(|v| (v.kind.name(), v.events))
            .collect()
    }

    /// Events lost per view (a full map).
    #[getter]
    fn lost(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.p
            .views
            .iter()
            .map(|v| (v.kind.name(), v.lost))
            .collect()
    }

    /// Per recorded process (with subprocesses): `{pid: {"ppid",
    /// "command", "python"}}`; empty otherwise.
    #[getter]
    fn processes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (pid, proc) in &self.p.processes {
            let one = PyDict::new(py);
            one.set_item("ppid", proc.ppid)?;
            one.set_item("command", proc.command.clone())?;
            one.set_item("python", proc.python.clone())?;
            d.set_item(pid, one)?;
        }
        Ok(d)
    }

    /// Stacks that could not be read, or names dropped, by reason.
    #[getter]
    fn walk_errors(&self) -> std::collections::BTreeMap<String, u64> {
        self.p.walk_errors.clone()
    }

    /// The span the recording kept to (`span=`): `{"name", "count",
    /// "total_ns", "hist"}`; None otherwise.
    #[getter]
    fn span<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.p.span {
            None => Ok(py.None().into_bound(py)),
            Some(s) => ser_to_py(py, s),
        }
    }

    /// Whether Python frames are named by line (recorded with lines=True).
    #[getter]
    fn lines(&self) -> bool {
        !self.p.function_of.is_empty()
    }

    /// The same profile with Python frames named by function, for one
    /// recorded with lines=True (as the CLI's `--functions`).
    fn by_function(&self) -> PyProfile {
        PyProfile {
            p: self.p.by_function(),
        }
    }

    /// The Python functions with the most weight in a view: a list of
    /// `{"function", "self_value", "total_value"}`, sorted by `by`
    /// ("self": where the function is the innermost Python frame; "total":
    /// anywhere in the stack), at most `limit`, over every thread or one
    /// (`thread`: a tid or a name). The rows of `report()`'s `by_self` and
    /// `by_total`.
    #[pyo3(signature = (view="cpu", by="self", limit=20, thread=None))]
    fn top<'py>(
        &self,
        py: Python<'py>,
        view: &str,
        by: &str,
        limit: usize,
        thread: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = self.kind_in(view)?;
        if by != "self" && by != "total" {
            return Err(PyValueError::new_err(format!(
                "by is \"self\" or \"total\", not {by:?}"
            )));
        }
        let opts = report::ReportOptions {
            views: vec![kind],
            thread: thread_arg(thread)?,
            per_thread: false,
            limit: limit.max(1),
        };
        let r = report::report(&self.p, &opts).map_err(value_error)?;
        let s = r
            .sections
            .first()
            .ok_or_else(|| PyRuntimeError::new_err("the report has no section"))?;
        if let Some(why) = &s.unavailable {
            return Err(PyValueError::new_err(format!(
                "the {view} view could not be measured: {why}"
            )));
        }
        ser_to_py(
            py,
            if by == "self" {
                &s.by_self
            } else {
                &s.by_total
            },
        )
    }

    /// A view's folded stacks as `{"root;...;leaf": weight}`, exactly what
    /// `pyusdt-prof fold` prints: roots `thread NAME (TID)` (left out with
    /// merge_threads), weights in the view's unit, or events with count.
    #[pyo3(signature = (view="cpu", merge_threads=false, count=false))]
    fn folded<'py>(
        &self,
        py: Python<'py>,
        view: &str,
        merge_threads: bool,
        count: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let kind = self.kind_in(view)?;
        let lines = self
            .p
            .folded(kind, count, merge_threads)
            .map_err(value_error)?;
        let d = PyDict::new(py);
        for line in &lines {
            if let Some((stack, w)) = line.rsplit_once(' ') {
                let w: u64 = w
                    .parse()
                    .map_err(|_| PyRuntimeError::new_err(format!("a bad folded line: {line}")))?;
                d.set_item(stack, w)?;
            }
        }
        Ok(d)
    }

    /// The log2 duration histograms of the syscall, offcpu, gil or calls
    /// view, all of them: a list of `{"function", "syscall", "calls",
    /// "total_ns", "buckets"}`, one per innermost Python function (and per
    /// syscall of it in the syscall view; None elsewhere), most time
    /// first; `buckets[k]` events lasted from 2^k to 2^(k+1) ns (the calls
    /// view: total_ns is self time, buckets each call's inclusive time).
    #[pyo3(signature = (view="syscall", thread=None))]
    fn histograms<'py>(
        &self,
        py: Python<'py>,
        view: &str,
        thread: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = self.kind_in(view)?;
        let threads =
            report::select_threads(&self.p, thread_arg(thread)?.as_deref()).map_err(value_error)?;
        let h = report::duration_histograms(&self.p, kind, &threads).map_err(value_error)?;
        ser_to_py(py, &h)
    }

    /// Exactly what `pyusdt-prof report --format json` prints for the
    /// same options, as Python data: `view` a name or a list of them
    /// (default: every view), `thread` a tid or name, `per_thread`,
    /// `limit` rows per table.
    #[pyo3(signature = (view=None, thread=None, per_thread=false, limit=10))]
    fn report<'py>(
        &self,
        py: Python<'py>,
        view: Option<&Bound<'py, PyAny>>,
        thread: Option<&Bound<'py, PyAny>>,
        per_thread: bool,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let views = match view {
            None => Vec::new(),
            Some(v) if v.is_none() => Vec::new(),
            Some(v) => view_list(v)?,
        };
        let opts = report::ReportOptions {
            views,
            thread: thread_arg(thread)?,
            per_thread,
            limit: limit.max(1),
        };
        let r = report::report(&self.p, &opts).map_err(value_error)?;
        ser_to_py(py, &r)
    }

    /// Writes the profile file that `pyusdt-prof report`, `flame`,
    /// `export` and `load()` read (atomically, readable by its owner).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.p.write(&path))
            .map_err(|e| file_error(&e))
    }

    fn __repr__(&self) -> String {
        format!(
            "<pyusdt_prof.Profile pid={} python={} views={} {:.1}s>",
            self.p.pid,
            self.p.python,
            self.view_names().join(","),
            self.p.duration_ns as f64 / 1e9
        )
    }
}

/// A file error as FileNotFoundError, PermissionError or OSError; a
/// file that is no profile as ValueError.
fn file_error(e: &anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                _ => pyo3::exceptions::PyOSError::new_err(msg),
            };
        }
    }
    PyValueError::new_err(msg)
}

/// Reads a profile file (what `pyusdt-prof record` or `Profile.save()`
/// wrote). FileNotFoundError and the like for the file; ValueError for
/// a file that is not a profile this version reads.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyProfile> {
    let p = py
        .detach(|| Profile::read(&path))
        .map_err(|e| file_error(&e))?;
    Ok(PyProfile { p })
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Recording>()?;
    m.add_class::<PyProfile>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    trace::register(m)?;
    let views: Vec<&str> = ViewKind::ALL.iter().map(|v| v.name()).collect();
    m.add("VIEWS", views)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
