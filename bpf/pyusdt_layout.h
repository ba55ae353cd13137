/* SPDX-License-Identifier: MIT */
/*
 * The layout announcement: what a BPF program needs to walk a CPython
 * thread's frames from its kernel thread id.
 *
 * The pyusdt extension fills this struct from the interpreter's own headers
 * (pyext/csrc/layout.c, compiled with Py_BUILD_CORE) and fires
 * `pyusdt:layout(address, size)` while a tracer is attached to that probe.
 * Its Rust twin is `pyext/contract/src/layout.rs`; tests/contract_twin.rs proves that
 * both have the same size and every field the same offset.
 *
 * Only what crosses the process boundary lives here.
 */
#ifndef PYUSDT_LAYOUT_H
#define PYUSDT_LAYOUT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* "PYUSDTLY" read as a little-endian u64 */
#define PYUSDT_LAYOUT_MAGIC 0x594c544453555950ULL
/* Bumped on any change to the struct below. */
#define PYUSDT_LAYOUT_VERSION 3
/* An offset that this interpreter does not have. */
#define PYUSDT_NO_OFFSET 0xffffffffU

/* The current frame hangs off tstate->cframe (3.11, 3.12), not tstate. */
#define PYUSDT_F_CFRAME (1U << 0)
/* frame_instr points at the last instruction run (prev_instr, 3.11 and
 * 3.12), not at the next one (instr_ptr, 3.13). */
#define PYUSDT_F_INSTR_IS_PREV (1U << 1)
/* The offsets were checked against the interpreter's _Py_DebugOffsets. */
#define PYUSDT_F_DEBUG_OFFSETS (1U << 2)
/* sys.monitoring exists, so the per-call probes can fire. */
#define PYUSDT_F_PER_CALL_PROBES (1U << 3)
/* The interpreter is a free-threaded build (no GIL, Py_GIL_DISABLED): its
 * objects and frames differ, and pyusdt-prof does not read them yet. */
#define PYUSDT_F_FREE_THREADED (1U << 4)

struct pyusdt_layout {
	__u64 magic;	      /* PYUSDT_LAYOUT_MAGIC */
	__u32 version;	      /* PYUSDT_LAYOUT_VERSION */
	__u32 size;	      /* sizeof(struct pyusdt_layout) */
	__u32 py_version_hex; /* PY_VERSION_HEX of the running interpreter */
	__u32 flags;	      /* PYUSDT_F_* */

	/* Addresses in the target process. */
	__u64 runtime_addr;   /* &_PyRuntime */
	__u64 interp_addr;    /* the main PyInterpreterState */
	__u64 gil_addr;	      /* the main interpreter's _gil_runtime_state */
	__u64 code_type_addr; /* &PyCode_Type */

	/* _PyRuntimeState */
	__u32 runtime_interpreters_head;
	/* PyInterpreterState */
	__u32 interp_next;
	__u32 interp_threads_head;

	/* PyThreadState */
	__u32 tstate_next;
	__u32 tstate_interp;
	__u32 tstate_thread_id;	       /* pthread_t */
	__u32 tstate_native_thread_id; /* the kernel's thread id */
	__u32 tstate_cframe;	       /* PYUSDT_NO_OFFSET unless PYUSDT_F_CFRAME */
	__u32 current_frame;	       /* in _PyCFrame or in PyThreadState, see flags */

	/* _PyInterpreterFrame */
	__u32 frame_code; /* f_code (3.11, 3.12) or f_executable (3.13) */
	__u32 frame_previous;
	__u32 frame_instr; /* prev_instr or instr_ptr, see flags */
	__u32 frame_owner; /* a char */
	__u32 owner_cstack; /* owner of the interpreter's shim frames, or PYUSDT_NO_OFFSET */

	/* PyObject */
	__u32 object_type;

	/* PyCodeObject */
	__u32 code_qualname;
	__u32 code_name;
	__u32 code_filename;
	__u32 code_firstlineno; /* an int */
	__u32 code_linetable;	/* a bytes object */
	__u32 code_adaptive;	/* first instruction (co_code_adaptive) */

	/* PyUnicodeObject: the characters of a compact str follow its header. */
	__u32 unicode_length;
	__u32 unicode_state;	    /* a 32-bit bitfield word */
	__u32 unicode_ascii_data;   /* sizeof(PyASCIIObject) */
	__u32 unicode_compact_data; /* sizeof(PyCompactUnicodeObject) */
	__u32 unicode_kind_shift;   /* kind = (state >> shift) & 7 */
	__u32 unicode_compact_bit;
	__u32 unicode_ascii_bit;

	/* PyBytesObject */
	__u32 bytes_size;
	__u32 bytes_data;

	/* struct _gil_runtime_state */
	__u32 gil_locked;
	__u32 gil_last_holder;
	__u32 gil_switch_number;
	/* The condition a thread waits on for the GIL (a pthread_cond_t): its
	 * offset and size. A futex wait inside it is a wait for the GIL. */
	__u32 gil_cond;
	__u32 gil_cond_size;

	/* Where the GIL is, for a profiler that finds the layout without the
	 * extension: its offset in _PyRuntimeState (3.11, where the GIL is
	 * the runtime's), else the offset in PyInterpreterState of the
	 * pointer to it (interp->ceval.gil). */
	__u32 gil_at;
};

#endif /* PYUSDT_LAYOUT_H */
