//! The `sys.monitoring` callbacks behind the per-call probes.
//!
//! A callback runs only while its event is on, which is only while a tracer
//! is attached to its probe; so `repr()` of a value is computed only then.
//! A callback never raises into the user's program: on an unexpected error
//! it turns its own probe off and says so once on stderr.
//!
//! The callbacks are raw `METH_FASTCALL` C functions, one static
//! `PyMethodDef` each, not pyo3 functions: CPython calls them with the
//! event's arguments in an array, which they read in place. While only a
//! `calls` tracer is attached (`record --exact`), a PY_START or PY_RETURN
//! callback reads the code object's address, writes the ring
//! ([`calls::record`]) and returns None: no argument conversion, nothing
//! allocated. The offset, the code object's names and a value's `repr()`
//! are read only when the event's own (seed-compatible) probe is attached.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU16, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::Borrowed;

use crate::calls;
use crate::monitor;
use crate::probes::{self, Probe, Site};

const UNENCODABLE: &CStr = c"<unencodable>";
const REPR_FAILED: &CStr = c"<repr failed>";

/// The NUL-terminated UTF-8 text of a `str`, owned by that object; a fixed
/// text for anything that has none.
fn utf8(s: &Bound<'_, PyAny>) -> *const c_char {
    // SAFETY: `s` is a live object and we hold the GIL. The buffer belongs
    // to the str and lives as long as it does.
    let p = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), std::ptr::null_mut()) };
    if p.is_null() {
        // SAFETY: GIL held; drop the TypeError or UnicodeEncodeError.
        unsafe { ffi::PyErr_Clear() };
        return UNENCODABLE.as_ptr();
    }
    p
}

/// Probes whose next callback fails on purpose (`_inject_fault`, for the
/// tests of the error path).
static FAULTS: AtomicU16 = AtomicU16::new(0);

/// Makes the next callback of `probe` fail as an unexpected error would.
pub fn inject_fault(probe: Probe) {
    FAULTS.fetch_or(probe.bit(), Ordering::Relaxed);
}

/// A code object's qualname, file and first line; the strings stay owned
/// by the code object, which outlives the probe.
fn site(probe: Probe, code: &Bound<'_, PyAny>) -> PyResult<Site> {
    let py = code.py();
    if FAULTS.load(Ordering::Relaxed) & probe.bit() != 0 {
        FAULTS.fetch_and(!probe.bit(), Ordering::Relaxed);
        return Err(PyRuntimeError::new_err("injected fault"));
    }
    let function = code.getattr(intern!(py, "co_qualname"))?;
    let file = code.getattr(intern!(py, "co_filename"))?;
    Ok(Site {
        function: utf8(&function),
        file: utf8(&file),
        firstlineno: code.getattr(intern!(py, "co_firstlineno"))?.extract()?,
    })
}

fn entry(probe: Probe, code: &Bound<'_, PyAny>, offset: i64) {
    match site(probe, code) {
        Ok(s) => probes::fire_entry(probe, &s, offset),
        Err(e) => monitor::disable(code.py(), probe, &e),
    }
}

fn with_value(probe: Probe, code: &Bound<'_, PyAny>, offset: i64, value: &Bound<'_, PyAny>) {
    let s = match site(probe, code) {
        Ok(s) => s,
        Err(e) => return monitor::disable(code.py(), probe, &e),
    };
    // A value whose repr() raises is the program's business, not an error
    // of the probe: it is shown as a fixed text.
    match value.repr() {
        Ok(text) => probes::fire_value(probe, &s, offset, utf8(text.as_any())),
        Err(_) => probes::fire_value(probe, &s, offset, REPR_FAILED.as_ptr()),
    }
}

/// The arguments CPython passes a `METH_FASTCALL` function.
type Args = *mut *mut ffi::PyObject;

/// Calls `body` (what the callback does: `args` are the event's
/// arguments, borrowed, the code object first) with the `nargs` arguments at `args`, turns a panic into
/// the error path of `probe`, and returns a new reference to None; raises
/// `TypeError` (NULL) only if called by hand with fewer than `want`
/// arguments (`sys.monitoring` always passes them all).
///
/// # Safety
///
/// The GIL is held and `args` holds `nargs` borrowed references, as when
/// CPython calls a `METH_FASTCALL` function.
#[inline(always)]
unsafe fn run(
    probe: Probe,
    want: usize,
    args: Args,
    nargs: ffi::Py_ssize_t,
    body: impl FnOnce(Python<'_>, &[*mut ffi::PyObject]),
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a C function with the GIL held; sys.monitoring
    // callbacks run on the thread that hit the event, holding it.
    let py = unsafe { Python::assume_attached() };
    let n = nargs.max(0) as usize;
    if n < want {
        let msg = format!("{}() takes {want} arguments, {n} given", probe.name());
        PyTypeError::new_err(msg).restore(py);
        return std::ptr::null_mut();
    }
    // SAFETY: args holds nargs (>= want > 0) live borrowed pointers for
    // the duration of the call (above).
    let args = unsafe { std::slice::from_raw_parts(args, n) };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(py, args)));
    if ran.is_err() {
        let e = PyRuntimeError::new_err("a panic in the callback");
        monitor::disable(py, probe, &e);
    }
    // SAFETY: None is immortal or counted; the caller gets a new reference.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

/// The object behind a borrowed argument pointer.
///
/// # Safety
///
/// `p` is one of the live arguments of the current call (see [`run`]).
#[inline(always)]
unsafe fn arg<'a, 'py>(py: Python<'py>, p: *mut ffi::PyObject) -> Borrowed<'a, 'py, PyAny> {
    // SAFETY: see above; the reference is not kept past the call.
    unsafe { Borrowed::from_ptr(py, p) }
}

/// An event's `offset` (or `line`) argument.
fn int_arg(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<i64> {
    // SAFETY: p is an argument of the current call (callers pass args[i]).
    unsafe { arg(py, p) }.extract::<i64>()
}

/// The seed-compatible probe of an entry event (only while attached).
#[cold]
#[inline(never)]
fn entry_traced(py: Python<'_>, probe: Probe, args: &[*mut ffi::PyObject]) {
    // SAFETY: args[0] is the code object of the current call.
    let code = unsafe { arg(py, args[0]) };
    match int_arg(py, args[1]) {
        Ok(offset) => entry(probe, &code, offset),
        Err(e) => monitor::disable(py, probe, &e),
    }
}

/// The seed-compatible probe of an event that carries a value: `args` are
/// code, offset, value (and, for CALL, arg0).
#[cold]
#[inline(never)]
fn value_traced(py: Python<'_>, probe: Probe, args: &[*mut ffi::PyObject]) {
    // SAFETY: args[0] and args[2] are arguments of the current call.
    let (code, value) = unsafe { (arg(py, args[0]), arg(py, args[2])) };
    match int_arg(py, args[1]) {
        Ok(offset) => with_value(probe, &code, offset, &value),
        Err(e) => monitor::disable(py, probe, &e),
    }
}

/// Notes the call for a `calls` tracer (if attached), then fires the
/// event's own probe (if attached: the event may be on for `calls` alone).
#[inline(always)]
fn enter(py: Python<'_>, probe: Probe, kind: u64, args: &[*mut ffi::PyObject]) {
    calls::record(args[0] as u64, kind);
    if probe.attached() != 0 {
        entry_traced(py, probe, args)
    }
}

/// Notes the return (or unwind, throw) for a `calls` tracer, then fires
/// the event's own probe.
#[inline(always)]
fn exit(py: Python<'_>, probe: Probe, kind: u64, args: &[*mut ffi::PyObject]) {
    calls::record(args[0] as u64, kind);
    if probe.attached() != 0 {
        value_traced(py, probe, args)
    }
}

fn py_start(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    enter(py, Probe::PyStart, calls::START, args)
}

fn py_resume(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    enter(py, Probe::PyResume, calls::RESUME, args)
}

fn py_return(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    exit(py, Probe::PyReturn, calls::RETURN, args)
}

fn py_yield(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    exit(py, Probe::PyYield, calls::YIELD, args)
}

fn py_unwind(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    exit(py, Probe::PyUnwind, calls::UNWIND, args)
}

fn py_throw(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    exit(py, Probe::PyThrow, calls::THROW, args)
}

/// CALL (code, offset, callable, arg0): on only while `CALL` is attached.
fn call(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    value_traced(py, Probe::Call, args)
}

/// LINE (code, line): on only while `LINE` is attached.
fn line(py: Python<'_>, args: &[*mut ffi::PyObject]) {
    // SAFETY: args[0] is the code object of the current call.
    let code = unsafe { arg(py, args[0]) };
    let s = match site(Probe::Line, &code) {
        Ok(s) => s,
        Err(e) => return monitor::disable(py, Probe::Line, &e),
    };
    match int_arg(py, args[1]) {
        Ok(line) => probes::fire_line(&s, line),
        Err(e) => monitor::disable(py, Probe::Line, &e),
    }
}

/// A `METH_FASTCALL` definition that CPython may hold a pointer to: it is
/// never written after it is built.
#[repr(transparent)]
struct Def(ffi::PyMethodDef);

// SAFETY: a Def is immutable, its pointers are to 'static C strings and
// functions; CPython reads it only with the GIL held.
unsafe impl Sync for Def {}

/// Defines the raw callback `$c` for `Probe::$probe`, taking `$want`
/// arguments and running `$body`, and its method definition `$def`.
macro_rules! callback {
    ($c:ident, $def:ident, $probe:ident, $want:literal, $body:path) => {
        /// A `sys.monitoring` callback, `METH_FASTCALL`: no argument
        /// parsing, nothing allocated unless its own probe is attached.
        ///
        /// # Safety
        ///
        /// Called by CPython as a `METH_FASTCALL` function: GIL held,
        /// `args` holding `nargs` borrowed references.
        unsafe extern "C" fn $c(
            _slf: *mut ffi::PyObject,
            args: Args,
            nargs: ffi::Py_ssize_t,
        ) -> *mut ffi::PyObject {
            // SAFETY: see above.
            unsafe { run(Probe::$probe, $want, args, nargs, $body) }
        }

        static $def: Def = Def(ffi::PyMethodDef {
            ml_name: concat!(stringify!($c), "\0").as_ptr().cast::<c_char>(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFast: $c,
            },
            ml_flags: ffi::METH_FASTCALL,
            ml_doc: std::ptr::null(),
        });
    };
}

callback!(on_py_start, ON_PY_START, PyStart, 2, py_start);
callback!(on_py_resume, ON_PY_RESUME, PyResume, 2, py_resume);
callback!(on_py_return, ON_PY_RETURN, PyReturn, 3, py_return);
callback!(on_py_yield, ON_PY_YIELD, PyYield, 3, py_yield);
callback!(on_call, ON_CALL, Call, 4, call);
callback!(on_line, ON_LINE, Line, 2, line);
callback!(on_py_unwind, ON_PY_UNWIND, PyUnwind, 3, py_unwind);
callback!(on_py_throw, ON_PY_THROW, PyThrow, 3, py_throw);

/// The callback object for `probe`: a builtin function over the probe's
/// static `METH_FASTCALL` definition.
pub fn for_probe<'py>(py: Python<'py>, probe: Probe) -> PyResult<Bound<'py, PyAny>> {
    let def = match probe {
        Probe::PyStart => &ON_PY_START,
        Probe::PyResume => &ON_PY_RESUME,
        Probe::PyReturn => &ON_PY_RETURN,
        Probe::PyYield => &ON_PY_YIELD,
        Probe::Call => &ON_CALL,
        Probe::Line => &ON_LINE,
        Probe::PyUnwind => &ON_PY_UNWIND,
        Probe::PyThrow => &ON_PY_THROW,
    };
    // SAFETY: GIL held (py); def is 'static and never written, so the
    // function object may keep its pointer; no self, no module.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(
                (&def.0 as *const ffi::PyMethodDef).cast_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
        )
    }
}
