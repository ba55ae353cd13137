//! Every contract between the three parts of pyusdt-prof, defined once:
//! the `pyusdt` extension (which a profiled program loads), the BPF
//! programs in `bpf/` (C), and the recorder (`pyusdt-prof`).
//!
//! Each item here has a C twin in a `bpf/*.h` header where a BPF program
//! reads it; the profiler's `tests/contract_twin.rs` holds each twin
//! against this crate, field by field and value by value.
//!
//! - [`layout`]: the layout announcement (`bpf/pyusdt_layout.h`);
//! - [`calls`]: the per-thread call ring of `record --exact` (`bpf/calls.h`);
//! - [`args`]: probe argument types, and the `.pyusdt.argtypes` section that
//!   lists them in the objects that carry app-defined probes;
//! - [`probes`]: the `pyusdt` provider's probes and their arguments;
//! - [`walk`]: why a stack walk failed (`bpf/pystack.h`), flags and limits;
//! - [`trace`]: the limits of `trace` (`bpf/trace_events.h`).
//!
//! It depends on nothing, so both the extension and the profiler use it.

pub mod args;
pub mod calls;
pub mod layout;
pub mod probes;
pub mod trace;
pub mod walk;
