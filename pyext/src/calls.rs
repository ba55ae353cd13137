//! The per-thread call ring behind `pyusdt:calls` (`pyusdt-prof record
//! --exact`).
//!
//! A probe per call and return costs a trip into the kernel each (a
//! uprobe), several times a Python call. Instead, while a tracer is
//! attached to `pyusdt:calls`, each thread writes its calls and returns
//! into a ring in its own memory, 16 bytes an event (the code object's
//! address with the kind in its low bits, and the CLOCK_MONOTONIC time,
//! read as [`clock`] says),
//! and fires `pyusdt:calls(ring, head, first)` once every
//! `FLUSH_EVERY` events. The tracer's BPF program then reads the new
//! events out of the ring and keeps the thread's call stack and the
//! aggregates in the kernel; it also drains a thread's ring whenever the
//! thread leaves the CPU, so a thread that blocks leaves nothing behind.
//!
//! The ring, its event kinds and sizes are
//! [`pyusdt_contract::calls`] (`CALL_RING_*` in bpf/calls.h). `first` is
//! the index of the first event the current tracer may have, or `u64::MAX`
//! when the ring was already announced to it.

use std::cell::UnsafeCell;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};

use pyusdt_contract::calls::{CallRing, FLUSH_EVERY, RING_SLOTS};
pub use pyusdt_contract::calls::{RESUME, RETURN, START, THROW, UNWIND, YIELD};

use crate::{clock, probes};

/// Bumped each time a calls tracer attaches (as the poll thread sees it):
/// a thread's first event of a new epoch announces its ring anew, with
/// the events before it not the new tracer's.
static EPOCH: AtomicU32 = AtomicU32::new(0);

/// A thread's ring; its address is announced, so it must not move: it
/// lives in the thread's TLS block.
struct Ring(UnsafeCell<CallRing>);

impl Drop for Ring {
    /// A thread that ends hands over what it wrote.
    fn drop(&mut self) {
        hand_over(self.0.get_mut());
    }
}

/// Fires `calls` for what ring `r` holds, if the tracer attached now has
/// been told of it (this epoch) and there is anything.
fn hand_over(r: &CallRing) {
    if probes::calls_attached() && r.head > 0 && r.epoch == EPOCH.load(Ordering::Relaxed) {
        probes::fire_calls(r as *const CallRing as u64, r.head, u64::MAX);
    }
}

thread_local! {
    static THREAD_RING: Ring = const { Ring(UnsafeCell::new(CallRing::EMPTY)) };
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
        // Never before this thread's last event: the clock may be the
        // counter of another CPU than the last event's (see clock). A
        // new ring's slots are all 0.
        let last = r.slots[h.wrapping_sub(1) as usize & (RING_SLOTS - 1)][1];
        let now = clock::now_ns().max(last);
        r.slots[h as usize & (RING_SLOTS - 1)] = [code | kind, now];
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
/// up): threads announce their rings anew, and the clock is fitted anew.
pub fn new_epoch() {
    clock::restart();
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Hands over what this thread wrote (before the interpreter exits).
pub fn flush() {
    let _ = THREAD_RING.try_with(|ring| {
        // SAFETY: as in `record`.
        hand_over(unsafe { &*ring.0.get() });
    });
}
