//! The per-thread call ring behind `pyusdt:calls` (`pyusdt-prof record
//! --exact`).
//!
//! A probe per call and return costs a trip into the kernel each (a
//! uprobe), several times a Python call. Instead, while a tracer is
//! attached to `pyusdt:calls`, each thread writes its calls and returns
//! into a ring in its own memory, 16 bytes an event (the code object's
//! address with the kind in its low bits, and the CLOCK_MONOTONIC time),
//! and fires `pyusdt:calls(ring, head, first)` once every
//! [`FLUSH_EVERY`] events. The tracer's BPF program then reads the new
//! events out of the ring and keeps the thread's call stack and the
//! aggregates in the kernel; it also drains a thread's ring whenever the
//! thread leaves the CPU, so a thread that blocks leaves nothing behind.
//!
//! The layout (`struct call_ring` in bpf/calls.h): `head: u64` (events
//! written since the thread started), `epoch: u32`, `reserved: u32`, then
//! [`RING`] slots of `[code | kind, ns]`. `first` is the index of the
//! first event the current tracer may have, or `u64::MAX` when the ring
//! was already announced to it.

use std::cell::UnsafeCell;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};

use crate::probes;

/// Slots in a ring (a power of two).
pub const RING: usize = 256;
/// Events between two `pyusdt:calls` probes; half the ring, so that the
/// tracer always reads an event before it is overwritten.
pub const FLUSH_EVERY: u64 = 128;

/// Event kinds, in the low 3 bits of the code address (code objects are
/// at least 8-byte aligned).
pub const START: u64 = 0;
/// A generator or coroutine resumed.
pub const RESUME: u64 = 1;
/// A generator or coroutine thrown into.
pub const THROW: u64 = 2;
/// A return.
pub const RETURN: u64 = 4;
/// A yield.
pub const YIELD: u64 = 5;
/// An exception left the frame.
pub const UNWIND: u64 = 6;

/// Bumped each time a calls tracer attaches (as the poll thread sees it):
/// a thread's first event of a new epoch announces its ring anew, with
/// the events before it not the new tracer's.
static EPOCH: AtomicU32 = AtomicU32::new(0);

/// A thread's ring; its address is announced, so it must not move: it
/// lives in the thread's TLS block.
#[repr(C)]
pub struct CallRing {
    head: u64,
    epoch: u32,
    reserved: u32,
    slots: [[u64; 2]; RING],
}

struct Ring(UnsafeCell<CallRing>);

impl Drop for Ring {
    /// A thread that ends hands over what it wrote.
    fn drop(&mut self) {
        self.0.get_mut().hand_over();
    }
}

impl CallRing {
    /// Fires `calls` for what the ring holds, if the tracer attached now
    /// has been told of it (this epoch) and there is anything.
    fn hand_over(&self) {
        if probes::calls_attached() && self.head > 0 && self.epoch == EPOCH.load(Ordering::Relaxed)
        {
            probes::fire_calls(self as *const CallRing as u64, self.head, u64::MAX);
        }
    }
}

thread_local! {
    static THREAD_RING: Ring = const {
        Ring(UnsafeCell::new(CallRing { head: 0, epoch: 0, reserved: 0, slots: [[0; 2]; RING] }))
    };
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC is what BPF's
    // bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes one event of code object `code` to this thread's ring, if a
/// calls tracer is attached.
#[inline]
pub fn record(code: u64, kind: u64) {
    if !probes::calls_attached() {
        return;
    }
    let _ = THREAD_RING.try_with(|ring| {
        // SAFETY: only this thread touches its ring while it runs (the
        // tracer reads it from this thread's probe, or while the thread
        // is off the CPU); no reference to it outlives this call.
        let r = unsafe { &mut *ring.0.get() };
        let epoch = EPOCH.load(Ordering::Relaxed);
        let fresh = r.epoch != epoch;
        r.epoch = epoch;
        let h = r.head;
        r.slots[h as usize & (RING - 1)] = [code | kind, now_ns()];
        // The slot is written before the head says so (a tracer may read
        // the ring at any switch of this thread off the CPU).
        compiler_fence(Ordering::Release);
        r.head = h + 1;
        if fresh || (h + 1) % FLUSH_EVERY == 0 {
            let first = if fresh { h } else { u64::MAX };
            probes::fire_calls(r as *const CallRing as u64, h + 1, first);
        }
    });
}

/// A calls tracer attached (the poll thread saw the probe's semaphore go
/// up): threads announce their rings anew.
pub fn new_epoch() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Hands over what this thread wrote (before the interpreter exits).
pub fn flush() {
    let _ = THREAD_RING.try_with(|ring| {
        // SAFETY: as in `record`.
        unsafe { &*ring.0.get() }.hand_over();
    });
}
