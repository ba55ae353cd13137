/* SPDX-License-Identifier: MIT */
/*
 * The Python frame walker, shared by every BPF program that records Python
 * stacks: from the current kernel thread to its PyThreadState, then along
 * the live frame chain, with the layout the process announced.
 */
#ifndef PYUSDT_PYFRAME_BPF_H
#define PYUSDT_PYFRAME_BPF_H

#include "pystack.h"

#ifndef EEXIST
#define EEXIST 17
#endif
#ifndef EFAULT
#define EFAULT 14
#endif

/* The layout of each traced process, by tgid; userspace fills it from the
 * pyusdt:layout announcement. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pyusdt_layout);
} layouts SEC(".maps");

/* Thread id -> its PyThreadState, checked on use. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} tstates SEC(".maps");

/*
 * Stack hash -> the stack. Maps written from scheduler context are
 * preallocated: allocating there can fail for want of memory.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct pystack);
} pystacks SEC(".maps");

/* A stack is too big for the BPF stack: build it here. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pystack);
} pystack_scratch SEC(".maps");

/* Code object address -> its names, read at first sight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct code_name);
} code_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct code_name);
} code_name_scratch SEC(".maps");

/* Thread id -> its name, kept current (threads rename themselves). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct comm_value);
} comms SEC(".maps");

/* Walks that found no stack, by enum pystack_error. */
__u64 pystack_errors[PYSTACK_ERR_MAX] = {};

static __always_inline __u64 read_u64(__u64 addr, int *err)
{
	__u64 v = 0;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*err = 1;
	return v;
}

/* The PyThreadState of thread `tid`, or 0. */
static __always_inline __u64 py_thread_state(const struct pyusdt_layout *l, __u32 tid)
{
	__u64 *cached = bpf_map_lookup_elem(&tstates, &tid);
	__u64 t, native;
	int err = 0;

	/* A cached state is trusted only while it still names this thread. */
	if (cached && *cached) {
		native = read_u64(*cached + l->tstate_native_thread_id, &err);
		if (!err && native == tid)
			return *cached;
	}
	t = read_u64(l->interp_addr + l->interp_threads_head, &err);
	for (int i = 0; i < PYSTACK_MAX_THREADS && t && !err; i++) {
		native = read_u64(t + l->tstate_native_thread_id, &err);
		if (!err && native == tid) {
			bpf_map_update_elem(&tstates, &tid, &t, BPF_ANY);
			return t;
		}
		t = read_u64(t + l->tstate_next, &err);
	}
	return 0;
}

/* FNV-1a over the frames, never PYSTACK_NONE. */
static __always_inline __u64 pystack_hash(const struct pystack *s)
{
	__u64 h = 0xcbf29ce484222325ULL;

	for (int i = 0; i < PYSTACK_MAX_FRAMES; i++) {
		if (i >= s->len)
			break;
		h = (h ^ s->frames[i]) * 0x100000001b3ULL;
	}
	h ^= s->truncated;
	return h == PYSTACK_NONE ? 1 : h;
}

static __always_inline void pystack_error(int which)
{
	if (which >= 0 && which < PYSTACK_ERR_MAX)
		__sync_fetch_and_add(&pystack_errors[which], 1);
}

/* Reads a compact str's characters into buf (at most cap bytes, cap a
 * power of two); returns the bytes read and sets *kind, or -1. */
static __always_inline int read_pystr(const struct pyusdt_layout *l, __u64 str, char *buf,
				      __u32 cap, __u8 *kind)
{
	__u32 state = 0;
	__u64 length, bytes, data;
	int err = 0;

	if (!str || bpf_probe_read_user(&state, sizeof(state), (const void *)(str + l->unicode_state)))
		return -1;
	if (!((state >> l->unicode_compact_bit) & 1))
		return -1;
	length = read_u64(str + l->unicode_length, &err);
	if (err)
		return -1;
	if ((state >> l->unicode_ascii_bit) & 1) {
		*kind = 1;
		data = str + l->unicode_ascii_data;
	} else {
		*kind = (state >> l->unicode_kind_shift) & 7;
		data = str + l->unicode_compact_data;
	}
	bytes = length * *kind;
	if (bytes > cap)
		bytes = cap;
	bytes &= (cap - 1) | cap;
	if (bytes == 0 || bytes > cap)
		return 0;
	if (bpf_probe_read_user(buf, bytes, (const void *)data))
		return -1;
	return bytes;
}

/* Reads the names of each code object of `s` that has none yet, or whose
 * address now holds another code object. */
static __always_inline void name_codes(const struct pyusdt_layout *l, const struct pystack *s)
{
	__u32 zero = 0;

	for (int i = 0; i < PYSTACK_MAX_FRAMES; i++) {
		struct code_name *n, *known;
		__u64 code, qualname;
		int err = 0, got;

		if (i >= s->len)
			break;
		code = s->frames[i];
		qualname = read_u64(code + l->code_qualname, &err);
		if (err)
			continue;
		known = bpf_map_lookup_elem(&code_names, &code);
		if (known && known->qualname_ptr == qualname)
			continue;
		n = bpf_map_lookup_elem(&code_name_scratch, &zero);
		if (!n)
			return;
		n->qualname_ptr = qualname;
		n->firstlineno = 0;
		bpf_probe_read_user(&n->firstlineno, sizeof(n->firstlineno),
				    (const void *)(code + l->code_firstlineno));
		got = read_pystr(l, qualname, n->qualname, CODE_QUALNAME_LEN, &n->qualname_kind);
		n->qualname_len = got > 0 ? got : 0;
		got = read_pystr(l, read_u64(code + l->code_filename, &err), n->filename,
				 CODE_FILENAME_LEN, &n->filename_kind);
		n->filename_len = got > 0 ? got : 0;
		if (bpf_map_update_elem(&code_names, &code, n, BPF_ANY))
			pystack_error(PYSTACK_ERR_NAMES);
	}
}

/* Keeps the current thread's name in `comms`. */
static __always_inline void note_comm(__u32 tid)
{
	struct comm_value c = {}, *known;
	const __u64 *a, *b;

	bpf_get_current_comm(c.comm, sizeof(c.comm));
	known = bpf_map_lookup_elem(&comms, &tid);
	if (known) {
		/* COMM_LEN is 16: compare as two words. */
		a = (const __u64 *)known->comm;
		b = (const __u64 *)c.comm;
		if (a[0] == b[0] && a[1] == b[1])
			return;
	}
	bpf_map_update_elem(&comms, &tid, &c, BPF_ANY);
}


/* Kernel stacks, by id. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

/* The current kernel stack's id in `kstacks`, or KSTACK_NONE; a stack lost
 * to a full map is counted (a sample in user mode has none, and is not). */
static __always_inline __s32 kernel_stack_id(void *ctx)
{
	long id = bpf_get_stackid(ctx, &kstacks, 0);

	if (id >= 0)
		return id;
	if (id != -EFAULT)
		pystack_error(PYSTACK_ERR_KSTACK);
	return KSTACK_NONE;
}

/*
 * The current thread's Python stack, stored in `pystacks`; returns its id,
 * or PYSTACK_NONE (and counts why).
 */
static __always_inline __u64 py_stack_id(__u32 tgid, __u32 tid)
{
	const struct pyusdt_layout *l = bpf_map_lookup_elem(&layouts, &tgid);
	struct pystack *s;
	__u32 zero = 0;
	__u64 t, frame, code, id;
	__u8 owner;
	int err = 0;

	if (!l) {
		pystack_error(PYSTACK_ERR_NO_LAYOUT);
		return PYSTACK_NONE;
	}
	s = bpf_map_lookup_elem(&pystack_scratch, &zero);
	if (!s)
		return PYSTACK_NONE;
	t = py_thread_state(l, tid);
	if (!t) {
		pystack_error(PYSTACK_ERR_NO_THREAD);
		return PYSTACK_NONE;
	}
	/* The innermost frame: through tstate->cframe on 3.11 and 3.12. */
	if (l->flags & PYUSDT_F_CFRAME)
		frame = read_u64(read_u64(t + l->tstate_cframe, &err) + l->current_frame, &err);
	else
		frame = read_u64(t + l->current_frame, &err);

	s->len = 0;
	s->truncated = 0;
	for (int i = 0; i < PYSTACK_MAX_FRAMES * 2 && frame && !err; i++) {
		code = read_u64(frame + l->frame_code, &err);
		owner = 0;
		bpf_probe_read_user(&owner, sizeof(owner), (const void *)(frame + l->frame_owner));
		/* Skip the interpreter's shim frames and anything not code. */
		if (owner != l->owner_cstack && code &&
		    read_u64(code + l->object_type, &err) == l->code_type_addr) {
			if (s->len >= PYSTACK_MAX_FRAMES) {
				s->truncated = 1;
				break;
			}
			s->frames[s->len & (PYSTACK_MAX_FRAMES - 1)] = code;
			s->len++;
		}
		frame = read_u64(frame + l->frame_previous, &err);
	}
	if (err && s->len == 0) {
		pystack_error(PYSTACK_ERR_READ);
		return PYSTACK_NONE;
	}
	if (frame && !s->truncated && !err)
		s->truncated = 1;
	note_comm(tid);
	id = pystack_hash(s);
	err = bpf_map_update_elem(&pystacks, &id, s, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		pystack_error(PYSTACK_ERR_FULL);
		return PYSTACK_NONE;
	}
	if (err == 0)
		name_codes(l, s); /* a stack not seen before */
	return id;
}

#endif /* PYUSDT_PYFRAME_BPF_H */
