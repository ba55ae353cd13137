//! The time of each event of the call ring (`record --exact`):
//! CLOCK_MONOTONIC nanoseconds, read off the CPU's time stamp counter
//! where the kernel keeps its own clock on that counter.
//!
//! Every call and return is stamped, so the clock is most of what an event
//! costs: `sys.monitoring` with C callbacks that do nothing costs fib 2.10×
//! here, with a `clock_gettime(CLOCK_MONOTONIC)` in each 3.51×, with a
//! read of the counter in each 2.83× (`make bench`); `record --exact`
//! went from 5.14× to 4.57× with the counter. The counter is
//! scaled to nanoseconds by a line fitted against `clock_gettime` by the
//! poll thread: until it is fitted (the first tick after a calls tracer
//! attaches), and wherever the kernel's clock source is not `tsc` (the
//! kernel then does not trust the counter to agree across CPUs, or to run
//! at a constant rate), each event reads `clock_gettime` as before.
//!
//! The line is fitted again at every tick for the first seconds of a
//! tracer, each fit over a longer span, and anchored where the line in
//! use is at that moment, so that the scaled time does not jump; the
//! ring's writer keeps each thread's times in order (see
//! `calls::record`), since the counters of two CPUs may differ by a few
//! cycles.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// A fitted line: ns = base_ns + (tsc - base_tsc) * mult / 2^32.
struct Scale {
    base_tsc: u64,
    base_ns: u64,
    mult: u64,
}

/// The line in use; null: read `clock_gettime`. A new line is a new
/// allocation, never freed (a few per tracer), so a reader never sees one
/// half written.
static SCALE: AtomicPtr<Scale> = AtomicPtr::new(std::ptr::null_mut());

/// The poll thread's fit: where it began (counter, ns) and how many ticks
/// are left to refine it.
struct Fit {
    start: (u64, u64),
    ticks_left: u32,
}

static FIT: Mutex<Option<Fit>> = Mutex::new(None);

/// Ticks (of the poll thread, 100 ms by default) over which the line is
/// refitted after a tracer attaches.
const REFIT_TICKS: u32 = 50;

/// Nanoseconds of CLOCK_MONOTONIC.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC is what BPF's
    // bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(target_arch = "x86_64")]
fn counter() -> u64 {
    // SAFETY: rdtsc has no preconditions (x86_64 always has it).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn counter() -> u64 {
    0
}

/// Now, in CLOCK_MONOTONIC nanoseconds (see the module's text).
#[inline]
pub fn now_ns() -> u64 {
    let s = SCALE.load(Ordering::Acquire);
    if s.is_null() {
        return monotonic_ns();
    }
    // SAFETY: a published Scale is never freed nor written again.
    unsafe { &*s }.at(counter())
}

impl Scale {
    /// The time at counter value `tsc`.
    fn at(&self, tsc: u64) -> u64 {
        let ticks = tsc.wrapping_sub(self.base_tsc);
        // A counter a few cycles behind the base (another CPU's) counts
        // as the base.
        let ticks = if ticks > u64::MAX / 2 { 0 } else { ticks };
        self.base_ns + ((u128::from(ticks) * u128::from(self.mult)) >> 32) as u64
    }
}

/// Whether the kernel keeps CLOCK_MONOTONIC on the time stamp counter.
fn counter_trusted() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

/// One reading of (counter, ns) taken together: the counter read on both
/// sides of the clock, the best of a few tries (the one least apart).
fn pair() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..5 {
        let a = counter();
        let ns = monotonic_ns();
        let b = counter();
        let spread = b.wrapping_sub(a);
        if spread < best.0 {
            best = (spread, a + spread / 2, ns);
        }
    }
    (best.1, best.2)
}

/// A calls tracer attached: the fit starts over; events read the clock
/// until the next tick has fitted a line.
pub fn restart() {
    SCALE.store(std::ptr::null_mut(), Ordering::Release);
    if let Some(mut fit) = fit() {
        *fit = counter_trusted().then(|| Fit {
            start: pair(),
            ticks_left: REFIT_TICKS,
        });
    }
}

/// The fit, unless another thread holds it: never waited for, since a
/// child forked while a thread of its parent held it would wait forever
/// (its events then read the clock).
fn fit() -> Option<std::sync::MutexGuard<'static, Option<Fit>>> {
    match FIT.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A tick of the poll thread: fits the line again while the fit is young.
pub fn tick() {
    let Some(mut guard) = fit() else {
        return;
    };
    let Some(fit) = guard.as_mut() else {
        return;
    };
    if fit.ticks_left == 0 {
        return;
    }
    fit.ticks_left -= 1;
    let (tsc, ns) = pair();
    let (tsc0, ns0) = fit.start;
    if tsc <= tsc0 || ns <= ns0 {
        return;
    }
    let mult = ((u128::from(ns - ns0) << 32) / u128::from(tsc - tsc0)) as u64;
    // Anchored where the line in use is at this counter value, so that
    // time does not jump by that line's error; the first line at the
    // clock itself.
    let old = SCALE.load(Ordering::Acquire);
    // SAFETY: as in now_ns.
    let base_ns = if old.is_null() {
        ns
    } else {
        unsafe { &*old }.at(tsc)
    };
    let scale = Box::new(Scale {
        base_tsc: tsc,
        base_ns,
        mult,
    });
    SCALE.store(Box::into_raw(scale), Ordering::Release);
}
