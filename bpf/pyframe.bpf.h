/* SPDX-License-Identifier: MIT */
/*
 * The Python frame walker, shared by every BPF program that records Python
 * stacks: from the current kernel thread to its PyThreadState, then along
 * the live frame chain, with the layout the process announced.
 */
#ifndef PYUSDT_PYFRAME_BPF_H
#define PYUSDT_PYFRAME_BPF_H

#include "pystack.h"

#ifndef E2BIG
#define E2BIG 7
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

/* Stack hash -> the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
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
	id = pystack_hash(s);
	if (bpf_map_update_elem(&pystacks, &id, s, BPF_NOEXIST) == -E2BIG) {
		pystack_error(PYSTACK_ERR_FULL);
		return PYSTACK_NONE;
	}
	return id;
}

#endif /* PYUSDT_PYFRAME_BPF_H */
