//! The layout announcement: the Rust twin of `struct pyusdt_layout` in
//! `bpf/pyusdt_layout.h`. The extension fills it, the profiler's tests set
//! it beside the BPF skeleton's own type and prove that both have the same
//! size and every field the same offset (`tests/contract_twin.rs`).

/// `"PYUSDTLY"` read as a little-endian `u64`.
pub const MAGIC: u64 = 0x594c_5444_5355_5950;
/// Bumped on any change to [`PyusdtLayout`].
pub const VERSION: u32 = 3;
/// An offset that this interpreter does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// The current frame hangs off `tstate->cframe` (3.11, 3.12).
pub const F_CFRAME: u32 = 1 << 0;
/// `frame_instr` points at the last instruction run (3.11, 3.12).
pub const F_INSTR_IS_PREV: u32 = 1 << 1;
/// The offsets were checked against the interpreter's `_Py_DebugOffsets`.
pub const F_DEBUG_OFFSETS: u32 = 1 << 2;
/// `sys.monitoring` exists, so the per-call probes can fire.
pub const F_PER_CALL_PROBES: u32 = 1 << 3;
/// A free-threaded interpreter (no GIL): not read yet.
pub const F_FREE_THREADED: u32 = 1 << 4;

/// What a BPF program needs to walk a CPython thread's frames from its
/// kernel thread id. See `bpf/pyusdt_layout.h` for each field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyusdtLayout {
    pub magic: u64,
    pub version: u32,
    pub size: u32,
    pub py_version_hex: u32,
    pub flags: u32,
    pub runtime_addr: u64,
    pub interp_addr: u64,
    pub gil_addr: u64,
    pub code_type_addr: u64,
    pub runtime_interpreters_head: u32,
    pub interp_next: u32,
    pub interp_threads_head: u32,
    pub tstate_next: u32,
    pub tstate_interp: u32,
    pub tstate_thread_id: u32,
    pub tstate_native_thread_id: u32,
    pub tstate_cframe: u32,
    pub current_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    pub frame_owner: u32,
    pub owner_cstack: u32,
    pub object_type: u32,
    pub code_qualname: u32,
    pub code_name: u32,
    pub code_filename: u32,
    pub code_firstlineno: u32,
    pub code_linetable: u32,
    pub code_adaptive: u32,
    pub unicode_length: u32,
    pub unicode_state: u32,
    pub unicode_ascii_data: u32,
    pub unicode_compact_data: u32,
    pub unicode_kind_shift: u32,
    pub unicode_compact_bit: u32,
    pub unicode_ascii_bit: u32,
    pub bytes_size: u32,
    pub bytes_data: u32,
    pub gil_locked: u32,
    pub gil_last_holder: u32,
    pub gil_switch_number: u32,
    pub gil_cond: u32,
    pub gil_cond_size: u32,
    pub gil_at: u32,
}

/// Calls `$m!` with every field of [`PyusdtLayout`], in declaration order,
/// so that code which must visit each field (the dict for Python, the twin
/// test, the profiler's printout) cannot forget one.
#[macro_export]
macro_rules! for_each_layout_field {
    ($m:ident) => {
        $m! {
            magic, version, size, py_version_hex, flags, runtime_addr, interp_addr, gil_addr,
            code_type_addr, runtime_interpreters_head, interp_next, interp_threads_head,
            tstate_next, tstate_interp, tstate_thread_id, tstate_native_thread_id, tstate_cframe,
            current_frame, frame_code, frame_previous, frame_instr, frame_owner, owner_cstack,
            object_type, code_qualname, code_name, code_filename, code_firstlineno,
            code_linetable, code_adaptive, unicode_length, unicode_state, unicode_ascii_data,
            unicode_compact_data, unicode_kind_shift, unicode_compact_bit, unicode_ascii_bit,
            bytes_size, bytes_data, gil_locked, gil_last_holder, gil_switch_number, gil_cond,
            gil_cond_size, gil_at
        }
    };
}
