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
}
