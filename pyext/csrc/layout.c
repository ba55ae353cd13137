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

#if PY_VERSION_HEX >= 0x030D0000
/* 1 if every offset this layout shares with _Py_DebugOffsets agrees. */
static int agrees_with_debug_offsets(const struct pyusdt_layout *l)
{
	const _Py_DebugOffsets *d = &_PyRuntime.debug_offsets;

	return d->runtime_state.interpreters_head == l->runtime_interpreters_head &&
	       d->interpreter_state.next == l->interp_next &&
	       d->interpreter_state.threads_head == l->interp_threads_head &&
	       d->thread_state.next == l->tstate_next &&
	       d->thread_state.interp == l->tstate_interp &&
	       d->thread_state.thread_id == l->tstate_thread_id &&
	       d->thread_state.native_thread_id == l->tstate_native_thread_id &&
	       d->thread_state.current_frame == l->current_frame &&
	       d->interpreter_frame.previous == l->frame_previous &&
	       d->interpreter_frame.executable == l->frame_code &&
	       d->interpreter_frame.instr_ptr == l->frame_instr &&
	       d->interpreter_frame.owner == l->frame_owner &&
	       d->pyobject.ob_type == l->object_type &&
	       d->code_object.filename == l->code_filename &&
	       d->code_object.name == l->code_name &&
	       d->code_object.qualname == l->code_qualname &&
	       d->code_object.linetable == l->code_linetable &&
	       d->code_object.firstlineno == l->code_firstlineno &&
	       d->code_object.co_code_adaptive == l->code_adaptive &&
	       d->bytes_object.ob_size == l->bytes_size &&
	       d->bytes_object.ob_sval == l->bytes_data &&
	       d->unicode_object.length == l->unicode_length &&
	       d->unicode_object.asciiobject_size == l->unicode_ascii_data;
}
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
#if PY_VERSION_HEX >= 0x030C0000
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

#if PY_VERSION_HEX >= 0x030D0000
	if (agrees_with_debug_offsets(l))
		l->flags |= PYUSDT_F_DEBUG_OFFSETS;
#endif
}
