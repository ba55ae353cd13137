//! Python thread names for a tracer: `pyusdt:thread(tid, name)`.
//!
//! The kernel knows a thread by its `comm`, 15 bytes that CPython before
//! 3.14 never sets (every thread is `python`); the name people gave it is
//! `threading.Thread.name`. pyusdt's Python side notes each thread's name
//! here as the thread starts and whenever it is renamed (it wraps
//! `Thread._set_native_id` and the `name` setter: once per thread, never
//! per call), and takes those already running when it is enabled. While a
//! tracer is attached to `thread`, the poll thread fires the probe for
//! each live thread whose name it has not told yet or that changed, and
//! for all of them again each second and whenever the number of tracers
//! changes, so that a tracer attached after another detached hears every
//! name. The poll thread never takes the GIL for it: taking it would make
//! the program's threads wait for it, in syscalls of their own.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::probes;

/// Every name is told again this often.
const RETELL: Duration = Duration::from_secs(1);

struct Names {
    /// Each thread's name as the program set it, by kernel thread id.
    noted: Option<HashMap<i64, String>>,
    /// What the tracers were told.
    told: Option<HashMap<i64, String>>,
    /// The number of tracers then.
    tracers: u16,
    /// When every name was told last.
    all_at: Option<Instant>,
}

static NAMES: Mutex<Names> = Mutex::new(Names {
    noted: None,
    told: None,
    tracers: 0,
    all_at: None,
});

fn names() -> std::sync::MutexGuard<'static, Names> {
    NAMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Thread `tid` is called `name` now.
pub fn note(tid: i64, name: &str) {
    names()
        .noted
        .get_or_insert_with(HashMap::new)
        .insert(tid, name.to_string());
}

/// Forgets every thread (a forked child has only the one that forked).
pub fn forget_all() {
    let mut n = names();
    n.noted = None;
    n.told = None;
}

/// Whether thread `tid` of this process still exists.
fn alive(tid: i64) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// On each tick of the poll thread: tells an attached tracer the names of
/// threads it has not heard of (or heard another name for); with `all`,
/// every name.
pub fn tick(all: bool) {
    let tracers = probes::thread_attached();
    let mut n = names();
    if tracers == 0 {
        n.told = None;
        n.tracers = 0;
        return;
    }
    let now = Instant::now();
    let all = all || tracers != n.tracers || n.all_at.is_none_or(|t| now - t >= RETELL);
    if all {
        n.told = None;
        n.tracers = tracers;
        n.all_at = Some(now);
    }
    let Names { noted, told, .. } = &mut *n;
    let Some(noted) = noted.as_mut() else {
        return;
    };
    let told = told.get_or_insert_with(HashMap::new);
    for (&tid, name) in noted.iter() {
        if told.get(&tid) == Some(name) {
            continue;
        }
        // A name with a NUL in it is told up to the NUL.
        let c = CString::new(name.split('\0').next().unwrap_or_default()).unwrap_or_default();
        probes::fire_thread(tid, c.as_ptr());
        told.insert(tid, name.clone());
    }
    // Threads gone are forgotten once told to all (a thread that ended
    // before the first tick, in a short program, is still named).
    if all {
        noted.retain(|&tid, _| alive(tid));
        told.retain(|tid, _| noted.contains_key(tid));
    }
}
