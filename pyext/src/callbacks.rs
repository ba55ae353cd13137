//! The `sys.monitoring` callbacks behind the per-call probes.
//!
//! A callback runs only while its event is on, which is only while a tracer
//! is attached to its probe; so `repr()` of a value is computed only then.
//! A callback never raises into the user's program: on an unexpected error
//! it turns its own probe off and says so once on stderr.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU16, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;

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

/// Notes the call for a `calls` tracer (if attached), then fires the
/// event's own probe (if attached: the event may be on for `calls` alone).
fn enter(probe: Probe, kind: u64, code: &Bound<'_, PyAny>, offset: i64) {
    calls::record(code.as_ptr() as u64, kind);
    if probe.attached() != 0 {
        entry(probe, code, offset)
    }
}

/// Notes the return for a `calls` tracer, then fires the event's own probe.
fn exit(probe: Probe, kind: u64, code: &Bound<'_, PyAny>, offset: i64, value: &Bound<'_, PyAny>) {
    calls::record(code.as_ptr() as u64, kind);
    if probe.attached() != 0 {
        with_value(probe, code, offset, value)
    }
}

#[pyfunction]
pub fn on_py_start(code: &Bound<'_, PyAny>, offset: i64) {
    enter(Probe::PyStart, calls::START, code, offset)
}

#[pyfunction]
pub fn on_py_resume(code: &Bound<'_, PyAny>, offset: i64) {
    enter(Probe::PyResume, calls::RESUME, code, offset)
}

#[pyfunction]
pub fn on_py_return(code: &Bound<'_, PyAny>, offset: i64, retval: &Bound<'_, PyAny>) {
    exit(Probe::PyReturn, calls::RETURN, code, offset, retval)
}

#[pyfunction]
pub fn on_py_yield(code: &Bound<'_, PyAny>, offset: i64, value: &Bound<'_, PyAny>) {
    exit(Probe::PyYield, calls::YIELD, code, offset, value)
}

#[pyfunction]
pub fn on_call(
    code: &Bound<'_, PyAny>,
    offset: i64,
    callable: &Bound<'_, PyAny>,
    _arg0: &Bound<'_, PyAny>,
) {
    with_value(Probe::Call, code, offset, callable)
}

#[pyfunction]
pub fn on_py_unwind(code: &Bound<'_, PyAny>, offset: i64, exception: &Bound<'_, PyAny>) {
    exit(Probe::PyUnwind, calls::UNWIND, code, offset, exception)
}

#[pyfunction]
pub fn on_py_throw(code: &Bound<'_, PyAny>, offset: i64, exception: &Bound<'_, PyAny>) {
    calls::record(code.as_ptr() as u64, calls::THROW);
    if Probe::PyThrow.attached() != 0 {
        with_value(Probe::PyThrow, code, offset, exception)
    }
}

#[pyfunction]
pub fn on_line(code: &Bound<'_, PyAny>, line: i64) {
    match site(Probe::Line, code) {
        Ok(s) => probes::fire_line(&s, line),
        Err(e) => monitor::disable(code.py(), Probe::Line, &e),
    }
}

/// The callback object for `probe`.
pub fn for_probe<'py>(py: Python<'py>, probe: Probe) -> PyResult<Bound<'py, PyAny>> {
    let f = match probe {
        Probe::PyStart => wrap_pyfunction!(on_py_start, py)?,
        Probe::PyResume => wrap_pyfunction!(on_py_resume, py)?,
        Probe::PyReturn => wrap_pyfunction!(on_py_return, py)?,
        Probe::PyYield => wrap_pyfunction!(on_py_yield, py)?,
        Probe::Call => wrap_pyfunction!(on_call, py)?,
        Probe::Line => wrap_pyfunction!(on_line, py)?,
        Probe::PyUnwind => wrap_pyfunction!(on_py_unwind, py)?,
        Probe::PyThrow => wrap_pyfunction!(on_py_throw, py)?,
    };
    Ok(f.into_any())
}
