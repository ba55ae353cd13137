//! The `pyusdt` provider: every probe, its semaphore and its arguments.
//!
//! The per-call probes keep the seed's names and argument order, strings as
//! `const char *` (UTF-8, NUL-terminated) and integers as signed 64-bit:
//!
//! | probe | arguments |
//! | --- | --- |
//! | `PY_START`, `PY_RESUME` | function, file, firstlineno, offset |
//! | `PY_RETURN` | function, file, firstlineno, offset, repr(retval) |
//! | `PY_YIELD` | function, file, firstlineno, offset, repr(yieldval) |
//! | `CALL` | function, file, firstlineno, offset, repr(callable) |
//! | `LINE` | function, file, line |
//! | `PY_UNWIND`, `PY_THROW` | function, file, firstlineno, offset, repr(exception) |
//! | `layout` | address, size of the `pyusdt_layout::PyusdtLayout` |
//! | `frame_enter` | code object address, kind (0 start, 1 resume, 2 throw) |
//! | `frame_exit` | code object address, kind (0 return, 1 yield, 2 unwind) |
//!
//! `function` is the code object's `co_qualname`.
//!
//! `frame_enter` and `frame_exit` are for tracers that keep the call stack
//! themselves (`pyusdt-prof record --exact`): they carry no text, so firing
//! them reads no attribute and computes no `repr()`. The first fires where
//! `PY_START`, `PY_RESUME` and `PY_THROW` do, the second where `PY_RETURN`,
//! `PY_YIELD` and `PY_UNWIND` do; attaching to one turns those events on.

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
semaphore!(SEM_FRAME_ENTER);
semaphore!(SEM_FRAME_EXIT);

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
        match self {
            Probe::PyStart => "PY_START",
            Probe::PyResume => "PY_RESUME",
            Probe::PyReturn => "PY_RETURN",
            Probe::PyYield => "PY_YIELD",
            Probe::Call => "CALL",
            Probe::Line => "LINE",
            Probe::PyUnwind => "PY_UNWIND",
            Probe::PyThrow => "PY_THROW",
        }
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

/// The events `frame_enter` needs.
const ENTER_EVENTS: u16 =
    1 << Probe::PyStart as u16 | 1 << Probe::PyResume as u16 | 1 << Probe::PyThrow as u16;
/// The events `frame_exit` needs.
const EXIT_EVENTS: u16 =
    1 << Probe::PyReturn as u16 | 1 << Probe::PyYield as u16 | 1 << Probe::PyUnwind as u16;

/// The mask of per-call events that some attached tracer needs: those of
/// the per-call probes it is attached to, and those that feed
/// `frame_enter` and `frame_exit`.
pub fn attached_mask() -> u16 {
    let mut m = Probe::ALL
        .iter()
        .filter(|p| p.attached() != 0)
        .fold(0, |m, p| m | p.bit());
    if frame_enter_attached() {
        m |= ENTER_EVENTS;
    }
    if frame_exit_attached() {
        m |= EXIT_EVENTS;
    }
    m
}

/// Whether a tracer is attached to `frame_enter`.
#[inline]
pub fn frame_enter_attached() -> bool {
    SEM_FRAME_ENTER.load(Ordering::Relaxed) != 0
}

/// Whether a tracer is attached to `frame_exit`.
#[inline]
pub fn frame_exit_attached() -> bool {
    SEM_FRAME_EXIT.load(Ordering::Relaxed) != 0
}

/// How many tracers are attached to `frame_enter` and to `frame_exit`.
pub fn frame_attached() -> (u16, u16) {
    (
        SEM_FRAME_ENTER.load(Ordering::Relaxed),
        SEM_FRAME_EXIT.load(Ordering::Relaxed),
    )
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

/// Fires `frame_enter(code, kind)`.
#[inline]
pub fn fire_frame_enter(code: u64, kind: i64) {
    fire!(SEM_FRAME_ENTER, "frame_enter", code: "8" = code, kind: "-8" = kind);
}

/// Fires `frame_exit(code, kind)`.
#[inline]
pub fn fire_frame_exit(code: u64, kind: i64) {
    fire!(SEM_FRAME_EXIT, "frame_exit", code: "8" = code, kind: "-8" = kind);
}
