//! The BPF skeletons that build.rs generates from `bpf/*.bpf.c`.

#![allow(
    clippy::all,
    clippy::unwrap_used,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn
)]

/// `bpf/layout.bpf.c`: receives `pyusdt:layout` announcements.
pub mod layout {
    include!(concat!(env!("OUT_DIR"), "/layout.skel.rs"));

    // SAFETY: plain C data of fixed size with no pointers or padding
    // invariants; any bit pattern is a valid value.
    unsafe impl plain::Plain for types::layout_event {}
    // SAFETY: as above; the twin test proves it free of padding.
    unsafe impl plain::Plain for types::pyusdt_layout {}
}

/// `bpf/procs.bpf.c`: the process table, and children followed.
pub mod procs {
    include!(concat!(env!("OUT_DIR"), "/procs.skel.rs"));

    // SAFETY: plain C data, no padding (explicit reserved word), any bit
    // pattern valid.
    unsafe impl plain::Plain for types::follow_event {}
}

/// `bpf/cpu.bpf.c`: the CPU sampler and the shared Python frame walker.
pub mod cpu {
    include!(concat!(env!("OUT_DIR"), "/cpu.skel.rs"));

    /// `CPU_F_GIL_WAIT` of bpf/cpu_counts.h: the sampled thread was
    /// waiting for the GIL.
    pub const CPU_F_GIL_WAIT: u32 = 1;

    // SAFETY: plain C data, no padding (explicit reserved words), any bit
    // pattern valid.
    unsafe impl plain::Plain for types::cpu_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::pystack {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::code_name {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::code_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::code_lines {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::comm_value {}
}

/// `bpf/sched.bpf.c`: off-CPU time and wake-ups.
pub mod sched {
    include!(concat!(env!("OUT_DIR"), "/sched.skel.rs"));

    // SAFETY: plain C data, no padding, any bit pattern valid.
    unsafe impl plain::Plain for types::offcpu_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::wakeup_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::time_value {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::time_hist {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::comm_value {}
}

/// `bpf/syscall.bpf.c`: time and count per syscall.
pub mod syscall {
    include!(concat!(env!("OUT_DIR"), "/syscall.skel.rs"));

    // SAFETY: plain C data, no padding, any bit pattern valid.
    unsafe impl plain::Plain for types::syscall_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::time_hist {}
}

/// `bpf/gil.bpf.c`: time waiting for the GIL, by holder.
pub mod gil {
    include!(concat!(env!("OUT_DIR"), "/gil.skel.rs"));

    // SAFETY: plain C data, no padding (explicit reserved word), any bit
    // pattern valid.
    unsafe impl plain::Plain for types::gil_key {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::time_hist {}
}

/// `bpf/calls.bpf.c`: every call and return (`record --exact`), each
/// thread's call stack kept in the kernel.
pub mod calls {
    include!(concat!(env!("OUT_DIR"), "/calls.skel.rs"));

    /// `CALLS_MAX_DEPTH` of bpf/calls.h: frames of a thread's call stack kept.
    pub const CALLS_MAX_DEPTH: usize = 256;

    // SAFETY: plain C data of fixed-size integers, no padding (u64 fields
    // first, u32 pairs, a u32 array of even length), any bit pattern valid.
    unsafe impl plain::Plain for types::call_node {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::call_thread {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::call_frame {}
}

/// `bpf/span.bpf.c`: which threads are inside the span `record --span`
/// keeps to, and how long the spans last.
pub mod span {
    include!(concat!(env!("OUT_DIR"), "/span.skel.rs"));

    /// `SPAN_NAME_LEN` of bpf/span.h: bytes of a span's name compared,
    /// its NUL included.
    pub const SPAN_NAME_LEN: usize = 64;

    // SAFETY: plain C data, no padding (u64 fields, then u32s of an even
    // count), any bit pattern valid.
    unsafe impl plain::Plain for types::time_hist {}
}

/// `bpf/floor.bpf.c`: empty handlers at the recorder's attach points, for
/// `make bench`.
pub mod floor {
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

/// `bpf/trace.bpf.c`: one event per probe hit or syscall, for `trace`.
pub mod trace {
    include!(concat!(env!("OUT_DIR"), "/trace.skel.rs"));

    // SAFETY: plain C data, no padding (explicit reserved word, fields
    // laid out by size), any bit pattern valid.
    unsafe impl plain::Plain for types::trace_record {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::trace_head {}
    // SAFETY: as above.
    unsafe impl plain::Plain for types::probe_conf {}
}
