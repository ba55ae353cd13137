//! The BPF skeletons that build.rs generates from `bpf/*.bpf.c`, one
//! module each (named after its file), and the `Plain` impls of the types
//! that userspace reads out of the objects that are not views (each view's
//! are in its `src/views/X.rs`).

#![allow(
    clippy::all,
    clippy::unwrap_used,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn
)]

include!(concat!(env!("OUT_DIR"), "/skels.rs"));

// SAFETY (every impl below): plain C data of fixed-size integers, without
// padding (explicit reserved fields where needed; the layout's twin test
// proves it), for which any bit pattern is a valid value.
unsafe impl plain::Plain for layout::types::layout_event {}
unsafe impl plain::Plain for layout::types::pyusdt_layout {}
unsafe impl plain::Plain for layout::types::py_thread_name {}
unsafe impl plain::Plain for procs::types::follow_event {}
// The types every walker's maps hold, decoded through the procs
// skeleton's copy of them.
unsafe impl plain::Plain for procs::types::pystack {}
unsafe impl plain::Plain for procs::types::code_name {}
unsafe impl plain::Plain for procs::types::code_key {}
unsafe impl plain::Plain for procs::types::code_lines {}
unsafe impl plain::Plain for procs::types::comm_value {}
unsafe impl plain::Plain for procs::types::time_hist {}
unsafe impl plain::Plain for trace::types::trace_record {}
unsafe impl plain::Plain for trace::types::trace_head {}
unsafe impl plain::Plain for trace::types::probe_conf {}
