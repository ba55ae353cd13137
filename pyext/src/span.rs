//! `pyusdt.span(name)`: a block or a function bracketed by the static
//! probes `pyusdt:span_begin(name, id)` and `pyusdt:span_end(name, id)`.
//!
//! Entering reads both semaphores; while neither has a tracer, that is all
//! it does (no id is taken, no probe fires). While one has, the span takes
//! the next id of a process-wide counter and fires `span_begin` if it is
//! attached; leaving fires `span_end` with the same id if that is attached
//! (also when the block raises). A span whose entry saw no tracer fires
//! nothing when it ends, so a tracer sees each span it saw begin end, and
//! ends only of spans it could have seen begin.

use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::probes;

/// The next span id: unique in the process, from 1 (0 means untraced).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A span: ``with pyusdt.span("handle_request"):`` fires
/// ``pyusdt:span_begin(name, id)`` on entry and ``pyusdt:span_end(name,
/// id)`` on exit, exceptions included, while a tracer is attached to
/// either; ``@pyusdt.span("name")`` does the same around each call of a
/// function (generators and coroutines: around their whole run).
///
/// One span object may be nested in itself within one thread; for spans
/// in several threads at once, make one per ``with`` (or use the
/// decorator, which does).
#[pyclass(name = "span", module = "pyusdt")]
#[derive(Debug)]
pub struct Span {
    name: Py<PyString>,
    /// The name's UTF-8, NUL-terminated, owned by `name`.
    utf8: usize,
    /// The id of the innermost open entry (0: untraced or not open).
    id: u64,
    /// How many entries are open.
    depth: u32,
    /// The ids of the open entries outside the innermost.
    outer: Vec<u64>,
}

#[pymethods]
impl Span {
    #[new]
    fn new(name: &Bound<'_, PyString>) -> PyResult<Self> {
        let mut size = 0;
        // SAFETY: `name` is a str; the buffer is its cached UTF-8, valid as
        // long as the string lives, which `Span::name` ensures.
        let p: *const c_char =
            unsafe { pyo3::ffi::PyUnicode_AsUTF8AndSize(name.as_ptr(), &mut size) };
        if p.is_null() {
            return Err(PyErr::fetch(name.py()));
        }
        Ok(Span {
            name: name.clone().unbind(),
            utf8: p as usize,
            id: 0,
            depth: 0,
            outer: Vec::new(),
        })
    }

    /// The span's name.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.clone_ref(py)
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyRefMut<'_, Self> {
        let (begin, end) = probes::span_attached();
        let id = if begin != 0 || end != 0 {
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        if slf.depth > 0 {
            let outer = slf.id;
            slf.outer.push(outer);
        }
        slf.depth += 1;
        slf.id = id;
        if begin != 0 {
            probes::fire_span_begin(slf.utf8 as *const c_char, id);
        }
        slf
    }

    fn __exit__(
        mut slf: PyRefMut<'_, Self>,
        _kind: &Bound<'_, PyAny>,
        _value: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> bool {
        if slf.depth == 0 {
            return false;
        }
        let id = slf.id;
        if id != 0 {
            probes::fire_span_end(slf.utf8 as *const c_char, id);
        }
        slf.depth -= 1;
        slf.id = if slf.depth > 0 {
            slf.outer.pop().unwrap_or(0)
        } else {
            0
        };
        false
    }

    /// Used as a decorator: the function, each call of it in a span of
    /// this name.
    fn __call__(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let wrap = py.import("pyusdt")?.getattr("_span_wrap")?;
        Ok(wrap.call1((self.name.clone_ref(py), func))?.unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("pyusdt.span({})", self.name.bind(py).repr()?))
    }
}
