//! The `pyusdt` provider: every probe, its semaphore and its arguments.
//!
//! Every probe and its arguments are [`pyusdt_contract::probes`]: the
//! profiler reads the same table.
//!
//! `function` is the code object's `co_qualname`. `span_begin` and
//! `span_end` bracket a `with pyusdt.span(name):` block (or a function
//! decorated with `@pyusdt.span(name)`): `name` is a `const char *` (UTF-8,
//! NUL-terminated) and `id` an unsigned 64-bit number, unique per span
//! instance in the process (from 1), the same in both, so that a tracer can
//! pair them. `span_end` fires for a span whose entry saw a tracer on
//! either probe, also when the block raises.
//!
//! Probes of other providers, declared by the application
//! (`pyusdt.Probe`), live in objects generated at run time: see
//! [`crate::app`] and [`crate::elf`].
//!
//! `calls` is for tracers that keep the call stack themselves
//! (`pyusdt-prof record --exact`): while one is attached, every call and
//! return goes into a ring in the thread's memory, and the probe fires
//! once per 128 of them ([`crate::calls`]). Attaching to it turns on the
//! `PY_START`, `PY_RESUME`, `PY_THROW`, `PY_RETURN`, `PY_YIELD` and
//! `PY_UNWIND` events.
//!
//! `thread(tid, name)` tells a tracer the Python name (`threading`'s,
//! whole) of each thread: while one is attached, the poll thread fires it
//! for every live thread whose name it has not told yet, and for all of
//! them again each second and whenever the number of tracers changes
//! ([`crate::threads`]).

use std::ffi::c_char;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::usdt::{fire, semaphore};

semaphore!(SEM_PY_START);
semaphore!(SEM_PY_RESUME);
semaphore!(SEM_PY_RETURN);
semaphore!(SEM_PY_YIELD);
semaphore!(SEM_CALL);
semaphore!(SEM_LINE);
semaphore!(SEM_PY_UNWIND);
semaphore!(SEM_PY_THROW);
semaphore!(SEM_LAYOUT);
semaphore!(SEM_CALLS);
semaphore!(SEM_SPAN_BEGIN);
semaphore!(SEM_SPAN_END);
semaphore!(SEM_THREAD);

/// A per-call probe, fed by the `sys.monitoring` event of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    PyStart,
    PyResume,
    PyReturn,
    PyYield,
    Call,
    Line,
    PyUnwind,
    PyThrow,
}

impl Probe {
    /// Every per-call probe, in bit order.
    pub const ALL: [Probe; 8] = [
        Probe::PyStart,
        Probe::PyResume,
        Probe::PyReturn,
        Probe::PyYield,
        Probe::Call,
        Probe::Line,
        Probe::PyUnwind,
        Probe::PyThrow,
    ];

    /// The probe's name, which is also its `sys.monitoring.events` name.
    pub fn name(self) -> &'static str {
        pyusdt_contract::probes::PER_CALL[self as usize]
    }

    /// This probe's bit in a probe mask.
    pub fn bit(self) -> u16 {
        1 << self as u16
    }

    fn semaphore(self) -> &'static AtomicU16 {
        match self {
            Probe::PyStart => &SEM_PY_START,
            Probe::PyResume => &SEM_PY_RESUME,
            Probe::PyReturn => &SEM_PY_RETURN,
            Probe::PyYield => &SEM_PY_YIELD,
            Probe::Call => &SEM_CALL,
            Probe::Line => &SEM_LINE,
            Probe::PyUnwind => &SEM_PY_UNWIND,
            Probe::PyThrow => &SEM_PY_THROW,
        }
    }

    /// How many tracers are attached to this probe.
    pub fn attached(self) -> u16 {
        self.semaphore().load(Ordering::Relaxed)
    }
}

/// The events a `calls` tracer needs: every entry to and exit from a
/// Python frame.
const CALLS_EVENTS: u16 = 1 << Probe::PyStart as u16
    | 1 << Probe::PyResume as u16
    | 1 << Probe::PyThrow as u16
    | 1 << Probe::PyReturn as u16
    | 1 << Probe::PyYield as u16
    | 1 << Probe::PyUnwind as u16;

/// The mask of per-call events that some attached tracer needs: those of
/// the per-call probes it is attached to, and those that feed `calls`.
pub fn attached_mask() -> u16 {
    let m = Probe::ALL
        .iter()
        .filter(|p| p.attached() != 0)
        .fold(0, |m, p| m | p.bit());
    if calls_attached() {
        m | CALLS_EVENTS
    } else {
        m
    }
}

/// Whether a tracer is attached to `calls`.
#[inline]
pub fn calls_attached() -> bool {
    SEM_CALLS.load(Ordering::Relaxed) != 0
}

/// How many tracers are attached to `calls`.
pub fn calls_tracers() -> u16 {
    SEM_CALLS.load(Ordering::Relaxed)
}

/// How many tracers are attached to `pyusdt:layout`.
pub fn layout_attached() -> u16 {
    SEM_LAYOUT.load(Ordering::Relaxed)
}

/// Where a code object is: the first three arguments of most probes.
pub struct Site {
    pub function: *const c_char,
    pub file: *const c_char,
    pub firstlineno: i64,
}

/// Fires `PY_START` or `PY_RESUME`.
pub fn fire_entry(probe: Probe, s: &Site, offset: i64) {
    match probe {
        Probe::PyStart => fire!(SEM_PY_START, "PY_START",
            function: "8" = s.function, file: "8" = s.file, firstlineno: "-8" = s.firstlineno,
            offset: "-8" = offset),
        _ => fire!(SEM_PY_RESUME, "PY_RESUME",
            function: "8" = s.function, file: "8" = s.file, firstlineno: "-8" = s.firstlineno,
            offset: "-8" = offset),
    }
}

/// Fires a probe that carries a value's `repr()`: `PY_RETURN`, `PY_YIELD`,
/// `CALL`, `PY_UNWIND` or `PY_THROW`.
pub fn fire_value(probe: Probe, s: &Site, offset: i64, value: *const c_char) {
    macro_rules! value_probe {
        ($sem:path, $name:literal) => {
            fire!($sem, $name,
                function: "8" = s.function, file: "8" = s.file,
                firstlineno: "-8" = s.firstlineno, offset: "-8" = offset, value: "8" = value)
        };
    }
    match probe {
        Probe::PyReturn => value_probe!(SEM_PY_RETURN, "PY_RETURN"),
        Probe::PyYield => value_probe!(SEM_PY_YIELD, "PY_YIELD"),
        Probe::Call => value_probe!(SEM_CALL, "CALL"),
        Probe::PyUnwind => value_probe!(SEM_PY_UNWIND, "PY_UNWIND"),
        _ => value_probe!(SEM_PY_THROW, "PY_THROW"),
    }
}

/// Fires `LINE`.
pub fn fire_line(s: &Site, line: i64) {
    fire!(SEM_LINE, "LINE", function: "8" = s.function, file: "8" = s.file, line: "-8" = line);
}

/// Fires `layout(address, size)`.
pub fn fire_layout(address: u64, size: u64) {
    fire!(SEM_LAYOUT, "layout", address: "8" = address, size: "8" = size);
}

/// Fires `calls(ring, head, first)`. Never inlined: one probe site, in a
/// function the linker keeps (a note naming a discarded copy would point
/// a tracer at address 0).
#[inline(never)]
pub fn fire_calls(ring: u64, head: u64, first: u64) {
    fire!(SEM_CALLS, "calls", ring: "8" = ring, head: "8" = head, first: "8" = first);
}

/// How many tracers are attached to `pyusdt:span_begin` and
/// `pyusdt:span_end`.
pub fn span_attached() -> (u16, u16) {
    (
        SEM_SPAN_BEGIN.load(Ordering::Relaxed),
        SEM_SPAN_END.load(Ordering::Relaxed),
    )
}

/// Fires `span_begin(name, id)`.
pub fn fire_span_begin(name: *const c_char, id: u64) {
    fire!(SEM_SPAN_BEGIN, "span_begin", name: "8" = name, id: "8" = id);
}

/// Fires `span_end(name, id)`.
pub fn fire_span_end(name: *const c_char, id: u64) {
    fire!(SEM_SPAN_END, "span_end", name: "8" = name, id: "8" = id);
}

/// How many tracers are attached to `pyusdt:thread`.
pub fn thread_attached() -> u16 {
    SEM_THREAD.load(Ordering::Relaxed)
}

/// Fires `thread(tid, name)`. Never inlined: one probe site.
#[inline(never)]
pub fn fire_thread(tid: i64, name: *const c_char) {
    fire!(SEM_THREAD, "thread", tid: "-8" = tid, name: "8" = name);
}

/// Every semaphore of the provider, spans' and `thread` included.
const ALL_SEMAPHORES: [&AtomicU16; 13] = [
    &SEM_PY_START,
    &SEM_PY_RESUME,
    &SEM_PY_RETURN,
    &SEM_PY_YIELD,
    &SEM_CALL,
    &SEM_LINE,
    &SEM_PY_UNWIND,
    &SEM_PY_THROW,
    &SEM_LAYOUT,
    &SEM_CALLS,
    &SEM_SPAN_BEGIN,
    &SEM_SPAN_END,
    &SEM_THREAD,
];

/// Each semaphore when the process last began to fork.
static AT_FORK: [AtomicU16; 13] = [const { AtomicU16::new(0) }; 13];

/// In the process about to fork: notes each semaphore's count, for
/// [`after_fork_child`] (see [`crate::forks`]).
pub fn before_fork() {
    for (s, at) in ALL_SEMAPHORES.iter().zip(&AT_FORK) {
        at.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// In a forked child, at once: each semaphore less its count at the fork
/// (see [`crate::forks`]).
pub fn after_fork_child() {
    for (s, at) in ALL_SEMAPHORES.iter().zip(&AT_FORK) {
        forget_count(s, at);
    }
}

/// `sem` less `at_fork` (not below zero).
pub fn forget_count(sem: &AtomicU16, at_fork: &AtomicU16) {
    let n = at_fork.load(Ordering::Relaxed);
    if n != 0 {
        let _ = sem.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}
