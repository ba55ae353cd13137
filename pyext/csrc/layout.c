// SPDX-License-Identifier: MIT
/*
 * Fills struct pyusdt_layout from the running interpreter's own headers.
 *
 * Compiled with Py_BUILD_CORE against include/pythonX.Y/internal, so every
 * offset below is the compiler's, never a hand-typed number. On 3.13 the
 * result is also checked against the interpreter's _Py_DebugOffsets.
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <string.h>

#include "internal/pycore_code.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"

#include "pyusdt_layout.h"

#if PY_VERSION_HEX < 0x030B0000
#error "pyusdt needs CPython 3.11 or later"
#endif

/* A layout field and the offset in _Py_DebugOffsets of its value. */
struct pyusdt_debug_position {
	const char *field;
	size_t offset;
};

/* The size the Rust side checks against its twin before it trusts us. */
const size_t pyusdt_layout_c_size = sizeof(struct pyusdt_layout);

/* The bit at which a one-bit-wide or kind field of PyASCIIObject.state sits:
 * set it in a zeroed struct and look at the 32-bit word. */
static __u32 state_bit(int which)
{
	PyASCIIObject o;
	__u32 word;

	memset(&o, 0, sizeof(o));
	switch (which) {
	case 0:
		o.state.kind = 1;
		break;
	case 1:
		o.state.compact = 1;
		break;
	default:
		o.state.ascii = 1;
		break;
	}
	memcpy(&word, &o.state, sizeof(word));
	return (__u32)__builtin_ctz(word);
}

/* The layout's fields that _Py_DebugOffsets (3.13+) carries too, each with
 * its place there: a profiler that finds the layout without the extension
 * reads them from the running interpreter, and the extension checks that
 * its own agree. */
#if PY_VERSION_HEX >= 0x030D0000
#define DEBUG_FIELDS(X)                                                  \
	X(runtime_interpreters_head, runtime_state.interpreters_head)    \
	X(interp_next, interpreter_state.next)                           \
	X(interp_threads_head, interpreter_state.threads_head)           \
	X(gil_at, interpreter_state.ceval_gil)                           \
	X(tstate_next, thread_state.next)                                \
	X(tstate_interp, thread_state.interp)                            \
	X(tstate_thread_id, thread_state.thread_id)                      \
	X(tstate_native_thread_id, thread_state.native_thread_id)        \
	X(current_frame, thread_state.current_frame)                     \
	X(frame_previous, interpreter_frame.previous)                    \
	X(frame_code, interpreter_frame.executable)                      \
	X(frame_instr, interpreter_frame.instr_ptr)                      \
	X(frame_owner, interpreter_frame.owner)                          \
	X(object_type, pyobject.ob_type)                                 \
	X(code_filename, code_object.filename)                           \
	X(code_name, code_object.name)                                   \
	X(code_qualname, code_object.qualname)                           \
	X(code_linetable, code_object.linetable)                         \
	X(code_firstlineno, code_object.firstlineno)                     \
	X(code_adaptive, code_object.co_code_adaptive)                   \
	X(bytes_size, bytes_object.ob_size)                              \
	X(bytes_data, bytes_object.ob_sval)                              \
	X(unicode_length, unicode_object.length)                         \
	X(unicode_ascii_data, unicode_object.asciiobject_size)

#define POSITION(field, debug) {#field, offsetof(_Py_DebugOffsets, debug)},
const struct pyusdt_debug_position pyusdt_debug_positions[] = {
	DEBUG_FIELDS(POSITION){0, 0}};
const size_t pyusdt_debug_offsets_size = sizeof(_Py_DebugOffsets);

/* 1 if every offset this layout shares with _Py_DebugOffsets agrees. */
static int agrees_with_debug_offsets(const struct pyusdt_layout *l)
{
	const _Py_DebugOffsets *d = &_PyRuntime.debug_offsets;

#define AGREES(field, debug) d->debug == l->field &&
	return DEBUG_FIELDS(AGREES) 1;
}
#else
const struct pyusdt_debug_position pyusdt_debug_positions[] = {{0, 0}};
const size_t pyusdt_debug_offsets_size = 0;
#endif

/* Called with the GIL held, once per process. */
void pyusdt_fill_layout(struct pyusdt_layout *l)
{
	PyInterpreterState *interp = PyInterpreterState_Main();

	memset(l, 0, sizeof(*l));
	l->magic = PYUSDT_LAYOUT_MAGIC;
	l->version = PYUSDT_LAYOUT_VERSION;
	l->size = sizeof(*l);
	l->py_version_hex = PY_VERSION_HEX;

	l->runtime_addr = (__u64)(uintptr_t)&_PyRuntime;
	l->interp_addr = (__u64)(uintptr_t)interp;
#if PY_VERSION_HEX >= 0x030C0000
	l->gil_addr = (__u64)(uintptr_t)interp->ceval.gil;
#else
	l->gil_addr = (__u64)(uintptr_t)&_PyRuntime.ceval.gil;
#endif
	l->code_type_addr = (__u64)(uintptr_t)&PyCode_Type;

	l->runtime_interpreters_head = offsetof(_PyRuntimeState, interpreters.head);
	l->interp_next = offsetof(PyInterpreterState, next);
	l->interp_threads_head = offsetof(PyInterpreterState, threads.head);

	l->tstate_next = offsetof(PyThreadState, next);
	l->tstate_interp = offsetof(PyThreadState, interp);
	l->tstate_thread_id = offsetof(PyThreadState, thread_id);
	l->tstate_native_thread_id = offsetof(PyThreadState, native_thread_id);
#if PY_VERSION_HEX >= 0x030D0000
	l->tstate_cframe = PYUSDT_NO_OFFSET;
	l->current_frame = offsetof(PyThreadState, current_frame);
	l->frame_code = offsetof(_PyInterpreterFrame, f_executable);
	l->frame_instr = offsetof(_PyInterpreterFrame, instr_ptr);
	l->flags |= PYUSDT_F_PER_CALL_PROBES;
#else
	l->flags |= PYUSDT_F_CFRAME | PYUSDT_F_INSTR_IS_PREV;
	l->tstate_cframe = offsetof(PyThreadState, cframe);
	l->current_frame = offsetof(_PyCFrame, current_frame);
	l->frame_code = offsetof(_PyInterpreterFrame, f_code);
	l->frame_instr = offsetof(_PyInterpreterFrame, prev_instr);
#if PY_VERSION_HEX >= 0x030C0000
	l->flags |= PYUSDT_F_PER_CALL_PROBES;
#endif
#endif
	l->frame_previous = offsetof(_PyInterpreterFrame, previous);
	l->frame_owner = offsetof(_PyInterpreterFrame, owner);
	/* The owner of the interpreter's shim frames, which the walker skips:
	 * 3.12 and 3.13 mark the entry frame as owned by the C stack; 3.14
	 * (which has no FRAME_OWNED_BY_CSTACK) as owned by the interpreter. */
#if PY_VERSION_HEX >= 0x030E0000
	l->owner_cstack = FRAME_OWNED_BY_INTERPRETER;
#elif PY_VERSION_HEX >= 0x030C0000
	l->owner_cstack = FRAME_OWNED_BY_CSTACK;
#else
	l->owner_cstack = PYUSDT_NO_OFFSET;
#endif

	l->object_type = offsetof(PyObject, ob_type);

	l->code_qualname = offsetof(PyCodeObject, co_qualname);
	l->code_name = offsetof(PyCodeObject, co_name);
	l->code_filename = offsetof(PyCodeObject, co_filename);
	l->code_firstlineno = offsetof(PyCodeObject, co_firstlineno);
	l->code_linetable = offsetof(PyCodeObject, co_linetable);
	l->code_adaptive = offsetof(PyCodeObject, co_code_adaptive);

	l->unicode_length = offsetof(PyASCIIObject, length);
	l->unicode_state = offsetof(PyASCIIObject, state);
	l->unicode_ascii_data = sizeof(PyASCIIObject);
	l->unicode_compact_data = sizeof(PyCompactUnicodeObject);
	l->unicode_kind_shift = state_bit(0);
	l->unicode_compact_bit = state_bit(1);
	l->unicode_ascii_bit = state_bit(2);

	l->bytes_size = offsetof(PyVarObject, ob_size);
	l->bytes_data = offsetof(PyBytesObject, ob_sval);

	l->gil_locked = offsetof(struct _gil_runtime_state, locked);
	l->gil_last_holder = offsetof(struct _gil_runtime_state, last_holder);
	l->gil_switch_number = offsetof(struct _gil_runtime_state, switch_number);
	l->gil_cond = offsetof(struct _gil_runtime_state, cond);
	l->gil_cond_size = sizeof(((struct _gil_runtime_state *)0)->cond);
#if PY_VERSION_HEX >= 0x030C0000
	l->gil_at = offsetof(PyInterpreterState, ceval.gil);
#else
	l->gil_at = offsetof(_PyRuntimeState, ceval.gil);
#endif

#ifdef Py_GIL_DISABLED
	l->flags |= PYUSDT_F_FREE_THREADED;
#endif
#if PY_VERSION_HEX >= 0x030D0000
	if (agrees_with_debug_offsets(l))
		l->flags |= PYUSDT_F_DEBUG_OFFSETS;
#endif
}
