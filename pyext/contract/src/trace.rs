//! The limits of `pyusdt-prof trace`'s BPF program (`TRACE_*` in
//! `bpf/trace_events.h`).

/// Arguments of a probe hit kept (`TRACE_MAX_ARGS`).
pub const MAX_ARGS: usize = 12;
/// Bytes kept of each string argument, its NUL included
/// (`TRACE_STR_LEN`).
pub const STR_LEN: usize = 128;
/// Probes one trace attaches to at most (`TRACE_MAX_PROBES`).
pub const MAX_PROBES: usize = 1024;
/// Syscall numbers that can be chosen one by one (`TRACE_MAX_SYSCALLS`).
pub const MAX_SYSCALLS: i64 = 512;
