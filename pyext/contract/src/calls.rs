//! The per-thread call ring behind `pyusdt:calls` (`record --exact`): the
//! extension writes each call and return of a thread into it, and
//! `bpf/calls.bpf.c` reads them out (its twin: `CALL_RING_*` and
//! `CALL_KIND_*` in `bpf/calls.h`).

/// Slots in a ring (a power of two).
pub const RING_SLOTS: usize = 256;
/// Events between two `pyusdt:calls` probes; half the ring, so that the
/// tracer always reads an event before it is overwritten.
pub const FLUSH_EVERY: u64 = 128;

/// Event kinds, in the low bits of the code object's address (code
/// objects are at least 8-byte aligned): a call.
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
/// The bits of an event's first word that hold its kind.
pub const KIND_MASK: u64 = 7;
/// The kinds with this bit leave a frame; the others enter one.
pub const KIND_EXIT: u64 = 4;

/// Frames of a thread's call stack the BPF side keeps; deeper calls are
/// counted and their time stays with the deepest kept frame.
pub const MAX_DEPTH: usize = 256;

/// A thread's ring, as the thread writes it and BPF reads it: `head`
/// events written since the thread started, then the slots, each
/// `[code | kind, CLOCK_MONOTONIC ns]`; event `i` is in slot
/// `i % RING_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallRing {
    /// Events written so far.
    pub head: u64,
    /// The tracer generation the ring was last announced to (the
    /// extension's own bookkeeping; BPF does not read it).
    pub epoch: u32,
    pub reserved: u32,
    pub slots: [[u64; 2]; RING_SLOTS],
}

impl CallRing {
    /// An empty ring.
    pub const EMPTY: CallRing = CallRing {
        head: 0,
        epoch: 0,
        reserved: 0,
        slots: [[0; 2]; RING_SLOTS],
    };
}
