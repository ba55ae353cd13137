//! App-defined USDT probes: `pyusdt.Probe(provider, name, *argtypes)`.
//!
//! A declared probe waits in its provider's pending list. The first
//! `enabled`, `fire()` or `load()` of any pending probe builds one ELF
//! object ([`crate::elf`]) holding every pending probe of that provider,
//! writes it to a file and `dlopen`s it; a probe declared later goes into a
//! new object. Firing calls the object's `nop; ret` function for the probe
//! with the arguments in rdi, rsi, rdx, rcx, r8, r9 (ints as signed 64-bit,
//! strings as `const char *` to NUL-terminated UTF-8), but only while the
//! probe's semaphore, in the object's `.probes` section, is non-zero.
//!
//! Files are `pyusdt-probes-PID-PROVIDER-SEQ.so` in `$PYUSDT_PROBE_DIR`,
//! else `$XDG_RUNTIME_DIR`, else `/tmp`. The process removes its own at
//! interpreter exit ([`remove_files`]); creating one also removes those of
//! processes that no longer exist.
//!
//! A forked child shares its parent's mapping of each object loaded before
//! the fork: its probes fire in the child, against the child's own copy of
//! the semaphores (less the parent's counts: no tracer is attached to the
//! child at its birth), and a tracer attached to the child by PID sees them while the
//! parent's file exists. Probes the child declares get files of
//! the child's own. The child never removes its parent's files.

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use pyo3::Borrowed;

use crate::elf::{self, ArgType, ProbeSpec};

/// The most arguments a probe takes (the argument registers).
pub const MAX_ARGS: usize = 6;
/// The longest provider or probe name accepted.
const MAX_NAME: usize = 64;

/// The semaphore of a probe that could not be loaded: always zero.
static OFF: AtomicU16 = AtomicU16::new(0);

type ProbeFn = unsafe extern "C" fn(u64, u64, u64, u64, u64, u64);
/// A loaded object's file, and each probe's function and semaphore.
type Placed = (String, Vec<(ProbeFn, &'static AtomicU16)>);

/// Where a loaded probe lives in this process.
#[derive(Debug)]
struct Loaded {
    /// The probe's `nop; ret` function; None if it could not be loaded.
    func: Option<ProbeFn>,
    /// Its semaphore ([`OFF`] if it could not be loaded).
    sem: &'static AtomicU16,
    /// The object's file.
    file: Option<String>,
    /// Its semaphore when the process last began to fork.
    at_fork: AtomicU16,
}

/// One declared probe.
#[derive(Debug)]
struct State {
    provider: String,
    name: String,
    args: Vec<ArgType>,
    loaded: OnceLock<Loaded>,
}

impl State {
    fn full_name(&self) -> String {
        format!("{}:{}", self.provider, self.name)
    }
}

#[derive(Default)]
struct Registry {
    /// Declared, not yet loaded, by provider.
    pending: BTreeMap<String, Vec<Arc<State>>>,
    /// Every probe loaded, in load order (for `status()`).
    loaded: Vec<Arc<State>>,
    /// The files this process created, with its PID then.
    files: Vec<(u32, PathBuf)>,
    /// Set at interpreter exit: nothing more is loaded.
    closed: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pending: BTreeMap::new(),
    loaded: Vec::new(),
    files: Vec::new(),
    closed: false,
});
static SEQ: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory for probe files.
pub fn probe_dir() -> PathBuf {
    for var in ["PYUSDT_PROBE_DIR", "XDG_RUNTIME_DIR"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    PathBuf::from("/tmp")
}

const PREFIX: &str = "pyusdt-probes-";

/// Removes the probe files of processes that no longer exist.
fn remove_stale(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || !rest.ends_with(".so") {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let dead = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Builds, writes and loads one object holding `batch` (all of one
/// provider); returns the file and each probe's function and semaphore.
fn load_object(reg: &mut Registry, provider: &str, batch: &[Arc<State>]) -> Result<Placed, String> {
    let specs: Vec<ProbeSpec> = batch
        .iter()
        .map(|s| ProbeSpec {
            name: s.name.clone(),
            args: s.args.clone(),
        })
        .collect();
    let image = elf::build(provider, &specs);
    let dir = probe_dir();
    remove_stale(&dir);
    let pid = std::process::id();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{PREFIX}{pid}-{provider}-{seq}.so"));
    let shown = path.display().to_string();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("create {shown}: {e}"))?;
    let opened = (|| {
        f.write_all(&image.bytes)
            .map_err(|e| format!("write {shown}: {e}"))?;
        drop(f);
        let cpath = CString::new(shown.as_bytes()).map_err(|_| format!("a NUL in {shown}"))?;
        // SAFETY: the object has no initialisers and no dependencies; it is
        // never closed, so the addresses taken below stay valid.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("load {shown}: {}", dlerror()));
        }
        Ok(handle)
    })();
    let handle = match opened {
        Ok(h) => h,
        Err(e) => {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    };
    reg.files.push((pid, path));
    let anchor = CString::new(image.anchor).map_err(|_| "a NUL in the anchor".to_string())?;
    // SAFETY: handle is a live dlopen handle; anchor is NUL-terminated.
    let at = unsafe { libc::dlsym(handle, anchor.as_ptr()) };
    if at.is_null() {
        return Err(format!("find {} in {shown}: {}", image.anchor, dlerror()));
    }
    let base = (at as u64).wrapping_sub(image.anchor_addr);
    let placed = image
        .probes
        .iter()
        .map(|&(pc, sem)| {
            // SAFETY: pc is a `nop; ret` function of the loaded object and
            // sem a 2-byte-aligned u16 in its writable segment, mapped for
            // the rest of the process's life.
            unsafe {
                (
                    std::mem::transmute::<usize, ProbeFn>(base.wrapping_add(pc) as usize),
                    &*(base.wrapping_add(sem) as usize as *const AtomicU16),
                )
            }
        })
        .collect();
    Ok((shown, placed))
}

/// Loads every pending probe of `provider`. On error, the probes stay
/// pending.
fn load_provider(provider: &str) -> Result<String, String> {
    let mut reg = registry();
    if reg.closed {
        return Err("the interpreter is exiting".into());
    }
    let Some(batch) = reg.pending.remove(provider) else {
        return Ok(String::new());
    };
    match load_object(&mut reg, provider, &batch) {
        Ok((file, placed)) => {
            for (s, (func, sem)) in batch.iter().zip(placed) {
                let _ = s.loaded.set(Loaded {
                    at_fork: AtomicU16::new(0),
                    func: Some(func),
                    sem,
                    file: Some(file.clone()),
                });
            }
            reg.loaded.extend(batch);
            Ok(file)
        }
        Err(e) => {
            reg.pending.insert(provider.to_string(), batch);
            Err(e)
        }
    }
}

/// Turns every pending probe of `provider` off for good.
fn disable_provider(provider: &str) {
    let mut reg = registry();
    if let Some(batch) = reg.pending.remove(provider) {
        for s in batch {
            let _ = s.loaded.set(Loaded {
                at_fork: AtomicU16::new(0),
                func: None,
                sem: &OFF,
                file: None,
            });
        }
    }
}

impl State {
    /// Loads the probe (with its provider's pending siblings) on first use;
    /// a failure turns it off with one line on stderr.
    #[cold]
    fn load_lazily(&self) -> &Loaded {
        if let Err(e) = load_provider(&self.provider) {
            if !registry().closed {
                eprintln!("pyusdt: app probes of {} are off: {e}", self.provider);
            }
            disable_provider(&self.provider);
        }
        self.loaded.get_or_init(|| Loaded {
            at_fork: AtomicU16::new(0),
            func: None,
            sem: &OFF,
            file: None,
        })
    }

    #[inline]
    fn get(&self) -> &Loaded {
        match self.loaded.get() {
            Some(l) => l,
            None => self.load_lazily(),
        }
    }
}

/// Removes this process's probe files (at interpreter exit); probes not
/// loaded yet stay off from then on. Objects already loaded stay mapped
/// and keep firing for tracers already attached.
#[pyfunction]
pub fn _remove_probe_files() {
    let mut reg = registry();
    reg.closed = true;
    let pid = std::process::id();
    reg.files.retain(|(owner, path)| {
        if *owner == pid {
            let _ = fs::remove_file(path);
        }
        false
    });
}

fn check_name(what: &str, s: &str) -> PyResult<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "a probe's {what} is 1 to {MAX_NAME} letters, digits and underscores, \
             not starting with a digit: {s:?}"
        )))
    }
}

/// An application-defined USDT probe.
///
/// ``Probe(provider, name, *argtypes)`` declares probe ``provider:name``
/// with up to six arguments, each ``int`` (signed 64-bit) or ``str``
/// (``const char *`` to NUL-terminated UTF-8, valid during the call).
/// Probes of one provider declared before its first use are loaded
/// together, into one generated shared object, at the first ``enabled``,
/// ``fire()`` or ``load()`` of any of them; call ``load()`` to make a
/// probe visible to tracers before it is first used.
///
/// ``fire(*args)`` reads the probe's semaphore first and returns at once
/// when no tracer is attached: the arguments are checked only while one
/// is (``TypeError`` for a wrong count or type, ``OverflowError`` for an
/// int outside 64 bits).
#[pyclass(frozen, name = "Probe", module = "pyusdt")]
#[derive(Debug)]
pub struct AppProbe {
    st: Arc<State>,
    argtypes: Py<PyTuple>,
}

#[pymethods]
impl AppProbe {
    #[new]
    #[pyo3(signature = (provider, name, *argtypes))]
    fn new(provider: &str, name: &str, argtypes: &Bound<'_, PyTuple>) -> PyResult<Self> {
        check_name("provider", provider)?;
        check_name("name", name)?;
        if argtypes.len() > MAX_ARGS {
            return Err(PyTypeError::new_err(format!(
                "a probe takes at most {MAX_ARGS} arguments, not {}",
                argtypes.len()
            )));
        }
        let py = argtypes.py();
        let mut args = Vec::new();
        for t in argtypes.iter() {
            if t.is(py.get_type::<PyInt>()) {
                args.push(ArgType::Int);
            } else if t.is(py.get_type::<PyString>()) {
                args.push(ArgType::Str);
            } else {
                return Err(PyTypeError::new_err(format!(
                    "a probe argument's type is int or str, not {}",
                    t.repr()?
                )));
            }
        }
        let st = Arc::new(State {
            provider: provider.to_string(),
            name: name.to_string(),
            args,
            loaded: OnceLock::new(),
        });
        registry()
            .pending
            .entry(provider.to_string())
            .or_default()
            .push(st.clone());
        Ok(AppProbe {
            st,
            argtypes: argtypes.clone().unbind(),
        })
    }

    /// Loads the probe now, with every probe of its provider declared and
    /// not loaded yet; returns the generated file's path. Raises `OSError`
    /// if the object cannot be written or loaded.
    fn load(&self) -> PyResult<String> {
        if self.st.loaded.get().is_none() {
            load_provider(&self.st.provider)
                .map_err(|e| PyOSError::new_err(format!("pyusdt: {e}")))?;
        }
        Ok(self.path().unwrap_or_default())
    }

    /// The provider's name.
    #[getter]
    fn provider(&self) -> &str {
        &self.st.provider
    }

    /// The probe's name.
    #[getter]
    fn name(&self) -> &str {
        &self.st.name
    }

    /// The argument types, a tuple of `int` and `str`.
    #[getter]
    fn argtypes(&self, py: Python<'_>) -> Py<PyTuple> {
        self.argtypes.clone_ref(py)
    }

    /// The generated object's file once loaded, else None.
    #[getter]
    fn path(&self) -> Option<String> {
        self.st.loaded.get().and_then(|l| l.file.clone())
    }

    fn __repr__(&self) -> String {
        let mut s = format!("pyusdt.Probe({:?}, {:?}", self.st.provider, self.st.name);
        for a in &self.st.args {
            s.push_str(", ");
            s.push_str(a.name());
        }
        s.push(')');
        s
    }
}

impl AppProbe {
    #[cold]
    fn fire_traced(&self, l: &Loaded, args: &[Bound<'_, PyAny>]) -> PyResult<()> {
        let want = &self.st.args;
        if args.len() != want.len() {
            let types: Vec<&str> = want.iter().map(|t| t.name()).collect();
            return Err(PyTypeError::new_err(format!(
                "probe {} takes {} argument{} ({}), {} given",
                self.st.full_name(),
                want.len(),
                if want.len() == 1 { "" } else { "s" },
                types.join(", "),
                args.len()
            )));
        }
        let mut regs = [0u64; MAX_ARGS];
        for (i, (a, t)) in args.iter().zip(want).enumerate() {
            let wrong = |a: &Bound<'_, PyAny>| {
                let got = a
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                PyTypeError::new_err(format!(
                    "probe {} argument {} must be {}, not {got}",
                    self.st.full_name(),
                    i + 1,
                    t.name()
                ))
            };
            regs[i] = match t {
                ArgType::Int => {
                    if !a.is_instance_of::<PyInt>() {
                        return Err(wrong(a));
                    }
                    a.extract::<i64>()? as u64
                }
                ArgType::Str => {
                    if !a.is_instance_of::<PyString>() {
                        return Err(wrong(a));
                    }
                    let mut size = 0;
                    // SAFETY: `a` is a str; the returned buffer is the
                    // string's NUL-terminated UTF-8, valid while `args`
                    // (which holds a reference) lives: during the call.
                    let p: *const c_char =
                        unsafe { pyo3::ffi::PyUnicode_AsUTF8AndSize(a.as_ptr(), &mut size) };
                    if p.is_null() {
                        return Err(PyErr::fetch(a.py()));
                    }
                    p as u64
                }
            };
        }
        if let Some(f) = l.func {
            // SAFETY: f is the probe's `nop; ret`; the strings it passes
            // stay alive until it returns.
            unsafe { f(regs[0], regs[1], regs[2], regs[3], regs[4], regs[5]) };
        }
        Ok(())
    }
}

/// `Probe.fire(*args)`, a `METH_FASTCALL` method of its own: pyo3's
/// `*args` would build a tuple before the semaphore is read, and this
/// path is the one a program pays for on every untraced fire.
///
/// # Safety
///
/// CPython calls it with the GIL held, `slf` an `AppProbe` (the method
/// descriptor checks the type) and `args` holding `nargs` references.
unsafe extern "C" fn fire_fastcall(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: see above.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: slf is a live AppProbe (above).
    let probe = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<AppProbe>() };
    let p = probe.get();
    let l = p.st.get();
    if l.sem.load(Ordering::Relaxed) == 0 {
        // SAFETY: None is immortal or counted; a new reference is returned.
        return unsafe { ffi::Py_NewRef(ffi::Py_None()) };
    }
    let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let args: Vec<Bound<'_, PyAny>> = (0..nargs.max(0) as usize)
            // SAFETY: args holds nargs borrowed references (above).
            .map(|i| unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) })
            .collect();
        p.fire_traced(l, &args)
    }));
    let err = match fired {
        Ok(Ok(())) => return unsafe { ffi::Py_NewRef(ffi::Py_None()) },
        Ok(Err(e)) => e,
        Err(_) => PyRuntimeError::new_err("pyusdt: a panic while firing a probe"),
    };
    err.restore(py);
    std::ptr::null_mut()
}

/// `Probe.enabled`, a getter of its own for the same reason as
/// [`fire_fastcall`].
///
/// # Safety
///
/// CPython calls it with the GIL held and `slf` an `AppProbe`.
unsafe extern "C" fn enabled_get(
    slf: *mut ffi::PyObject,
    _closure: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: see above.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: slf is a live AppProbe (above).
    let probe = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<AppProbe>() };
    let on = probe.get().st.get().sem.load(Ordering::Relaxed) != 0;
    // SAFETY: True and False are immortal or counted; a new reference.
    unsafe { ffi::Py_NewRef(if on { ffi::Py_True() } else { ffi::Py_False() }) }
}

/// Installs `fire` and `enabled` on the `Probe` type (see
/// [`fire_fastcall`] and [`enabled_get`]).
pub fn install_fast_paths(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let getset = Box::leak(Box::new(ffi::PyGetSetDef {
        name: c"enabled".as_ptr(),
        get: Some(enabled_get),
        set: None,
        doc: c"Whether a tracer is attached to this probe now (its semaphore is \
non-zero). Loads the probe on first use."
            .as_ptr(),
        closure: std::ptr::null_mut(),
    }));
    // SAFETY: ty is a type object; getset lives for the rest of the process.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            ty.py(),
            ffi::PyDescr_NewGetSet(ty.as_ptr().cast::<ffi::PyTypeObject>(), getset),
        )?
    };
    ty.setattr("enabled", descr)?;
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"fire".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFast: fire_fastcall,
        },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"fire(*args)\n--\n\nFires the probe with args if a tracer is attached; \
otherwise returns at once without looking at them (TypeError for a wrong \
count or type, OverflowError for an int outside 64 bits, only while traced)."
            .as_ptr(),
    }));
    // SAFETY: ty is a type object; def lives for the rest of the process.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            ty.py(),
            ffi::PyDescr_NewMethod(ty.as_ptr().cast::<ffi::PyTypeObject>(), def),
        )?
    };
    ty.setattr("fire", descr)
}

/// Each loaded app probe's part in [`crate::forks`]: its semaphore's count
/// noted before a fork (`child` false), taken off in the child with its
/// code page's breakpoint (`child` true). Skipped if another thread holds the
/// registry (it cannot be taken in the child).
pub fn at_fork(child: bool) {
    if let Ok(reg) = REGISTRY.try_lock() {
        for s in &reg.loaded {
            if let Some(l) = s.loaded.get() {
                if child {
                    crate::probes::forget_count(l.sem, &l.at_fork);
                    if let Some(f) = l.func {
                        // Its object's code page, without the parent's breakpoint.
                        let page = f as usize & !4095;
                        crate::forks::fresh_text(page, page + 4096);
                    }
                } else {
                    l.at_fork
                        .store(l.sem.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }
}

/// The loaded app probes, for `status()`: provider, name, argument types,
/// semaphore and file of each.
pub fn status(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let reg = registry();
    let out = PyList::empty(py);
    for s in &reg.loaded {
        let Some(l) = s.loaded.get() else { continue };
        let d = PyDict::new(py);
        d.set_item("provider", &s.provider)?;
        d.set_item("name", &s.name)?;
        let types: Vec<&str> = s.args.iter().map(|t| t.name()).collect();
        d.set_item("args", types)?;
        d.set_item("semaphore", l.sem.load(Ordering::Relaxed))?;
        d.set_item("file", l.file.clone())?;
        out.append(d)?;
    }
    Ok(out)
}
