// SPDX-License-Identifier: MIT
/*
 * The calls view (`record --exact`): every Python call and return. The
 * target writes them into a ring per thread in its own memory and fires
 * pyusdt:calls(ring, head, first) once per 128; this program reads the new
 * events there, and again whenever a target thread leaves the CPU. Each
 * thread's call stack is kept here; each return adds the activation's
 * inclusive and self time to its call path's node. Nothing goes to
 * userspace per call: it reads the nodes at the end.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "calls.h"
#include "pyframe.bpf.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";


/* Call path nodes by id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct call_node);
} call_nodes SEC(".maps");

/* Each target thread's call stack, by tid (allocated as threads come). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct call_thread);
} call_threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct call_thread);
} call_thread_scratch SEC(".maps");

/* A new node is built here: a call_node (its histogram above all) is too
 * big for the BPF stack of a loop callback, which shares the program's 512
 * bytes. Only the identity fields are ever written, so the counters stay
 * zero. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct call_node);
} call_node_scratch SEC(".maps");

/* Activations begun (calls, resumptions) read from the rings. */
__u64 calls = 0;
/* Events overwritten in a ring before they were read. */
__u64 lost_events = 0;
/* Call paths not kept (call_nodes full), threads not kept (call_threads
 * full), calls deeper than CALLS_MAX_DEPTH. */
__u64 lost_nodes = 0;
__u64 lost_threads = 0;
__u64 calls_too_deep = 0;
/* Nodes made: userspace moves those of exited threads out of call_nodes
 * as it fills (a service that starts a thread per request makes more
 * paths than the map holds). */
__u64 nodes_made = 0;
/* Frames popped without their own return (a return was missed). */
__u64 missed_exits = 0;

static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* The id of the path (parent, code); never 0. */
static __always_inline __u64 node_id(__u64 parent, __u64 code)
{
	__u64 id = mix64(parent ^ mix64(code));

	return id ? id : 1;
}

/* The id a thread's top frames hang from. */
static __always_inline __u64 thread_root(__u32 tgid, __u32 tid)
{
	return mix64(((__u64)tgid << 32) | tid) | 1;
}

/* The node of path (parent, code), made (and its code named) at first
 * sight; NULL if the map is full. */
static __always_inline struct call_node *get_node(__u64 id, __u64 parent, __u64 code,
						  __u32 tgid, __u32 tid, const int loops)
{
	struct call_node *n = bpf_map_lookup_elem(&call_nodes, &id), *init;
	__u32 zero = 0;

	if (n)
		return n;
	init = bpf_map_lookup_elem(&call_node_scratch, &zero);
	if (!init)
		return NULL;
	init->parent = parent;
	init->code = code;
	init->tgid = tgid;
	init->tid = tid;
	if (bpf_map_update_elem(&call_nodes, &id, init, BPF_NOEXIST) == 0) {
		__sync_fetch_and_add(&nodes_made, 1);
		if (loops)
			name_code(tgid, code);
		else
			name_code_bounded(tgid, code);
	}
	n = bpf_map_lookup_elem(&call_nodes, &id);
	if (!n)
		__sync_fetch_and_add(&lost_nodes, 1);
	return n;
}

/* Pushes frame `code` on thread `t`'s stack; `start` 0 for a frame that
 * began before the recording saw it. */
static __always_inline void push(struct call_thread *t, __u32 tgid, __u32 tid, __u64 code,
				 __u64 start, int kind, const int loops)
{
	__u32 d = t->depth;
	__u64 parent, id;
	struct call_node *n;
	struct call_frame *f;

	if (d >= CALLS_MAX_DEPTH) {
		t->depth = d + 1;
		__sync_fetch_and_add(&calls_too_deep, 1);
		return;
	}
	parent = d == 0 ? thread_root(tgid, tid) : t->frames[(d - 1) & (CALLS_MAX_DEPTH - 1)].node;
	id = node_id(parent, code);
	n = get_node(id, d == 0 ? 0 : parent, code, tgid, tid, loops);
	if (n && start && kind == CALL_KIND_START)
		n->calls++;
	f = &t->frames[d & (CALLS_MAX_DEPTH - 1)];
	f->node = id;
	f->code = code;
	f->start_ns = start;
	f->child_ns = 0;
	t->depth = d + 1;
}

/* push of a frame begun before the recording, for programs without
 * bpf_loop: checked once per program. */
__noinline int push_bounded(__u32 tgid, __u32 tid, __u64 code)
{
	struct call_thread *t = bpf_map_lookup_elem(&call_threads, &tid);

	if (!t)
		return 1;
	push(t, tgid, tid, code, 0, 0, 0);
	return 0;
}

struct prefix_walk {
	struct call_thread *t;
	__u32 tgid;
	__u32 tid;
	__u32 len;  /* frames in the scratch */
	__u32 leaf; /* the innermost one to push: 1 leaves the leaf out */
};

/* Pushes frame i (root first) of the walked stack in the scratch. */
static __always_inline long prefix_push(__u32 i, struct prefix_walk *w, const int loops)
{
	__u64 code;
	__u32 zero = 0;
	struct pystack *s = bpf_map_lookup_elem(&pystack_scratch, &zero);
	__u32 at;

	if (!s || i >= w->len || i >= PYSTACK_MAX_FRAMES)
		return 1;
	/* The scratch is leaf first. */
	at = w->len - 1 - i;
	if (at < w->leaf)
		return 1;
	code = s->frames[at & (PYSTACK_MAX_FRAMES - 1)];
	if (!loops)
		return push_bounded(w->tgid, w->tid, code);
	push(w->t, w->tgid, w->tid, code, 0, 0, 1);
	return 0;
}

static long prefix_step(__u32 i, void *arg)
{
	return prefix_push(i, arg, 1);
}

/*
 * A thread seen for the first time: its stack starts with the frames it
 * is running already (the recording attached to a running program), read
 * by the frame walker, less the one that begins now.
 */
static __always_inline struct call_thread *new_thread(__u32 tgid, __u32 tid, __u64 code,
						   __u64 ring, __u64 tail, const int loops)
{
	__u32 zero = 0;
	struct call_thread *t = bpf_map_lookup_elem(&call_thread_scratch, &zero);
	struct prefix_walk w = { .tgid = tgid, .tid = tid };
	struct pystack *s;

	if (!t)
		return NULL;
	t->depth = 0;
	t->tgid = tgid;
	t->ring = ring;
	t->tail = tail;
	t->busy = 0;
	if (bpf_map_update_elem(&call_threads, &tid, t, BPF_NOEXIST)) {
		__sync_fetch_and_add(&lost_threads, 1);
		return NULL;
	}
	t = bpf_map_lookup_elem(&call_threads, &tid);
	if (!t)
		return NULL;
	if (py_stack_id(tgid, tid, loops) == PYSTACK_NONE)
		return t;
	s = bpf_map_lookup_elem(&pystack_scratch, &zero);
	if (!s || s->len == 0 || s->truncated)
		return t;
	w.t = t;
	w.len = s->len;
	/* The leaf, frames[0], is the frame that begins now: the caller
	 * pushes it. Push the others from the root. */
	w.leaf = s->frames[0] == code;
	if (loops) {
		bpf_loop(PYSTACK_MAX_FRAMES, prefix_step, &w, 0);
	} else {
		for (__u32 i = 0; i < PYSTACK_MAX_FRAMES; i++)
			if (prefix_push(i, &w, 0))
				break;
	}
	return t;
}

/* Ends the activation of the frame at depth d: its time goes to its node
 * and to its caller's child time. */
static __always_inline void pop(struct call_thread *t, __u32 d, __u64 now)
{
	struct call_frame *f = &t->frames[d & (CALLS_MAX_DEPTH - 1)];
	struct call_node *n;
	__u64 dur, self;

	t->depth = d;
	if (!f->start_ns)
		return;
	dur = now - f->start_ns;
	self = dur > f->child_ns ? dur - f->child_ns : 0;
	if (d > 0)
		t->frames[(d - 1) & (CALLS_MAX_DEPTH - 1)].child_ns += dur;
	n = bpf_map_lookup_elem(&call_nodes, &f->node);
	if (!n)
		return;
	n->self_ns += self;
	n->hist[hist_index(hist_slot(dur))]++;
}

/* How far below the top a returning frame may be found when returns were
 * missed. */
#define RESYNC_DEPTH 4

/* A frame ends: the top one, unless returns were missed; then it is
 * found a little deeper, and the frames above it end with it. */
static __always_inline void leave(struct call_thread *t, __u64 code, __u64 now)
{
	__u32 d;
	int k;

	/* A frame the recording did not see begin (it ran before). */
	if (t->depth == 0)
		return;
	d = t->depth - 1;
	if (d >= CALLS_MAX_DEPTH) {
		t->depth = d;
		return;
	}
	for (k = 0; k < RESYNC_DEPTH; k++) {
		if (k > d)
			break;
		if (t->frames[(d - k) & (CALLS_MAX_DEPTH - 1)].code == code)
			break;
	}
	if (k == RESYNC_DEPTH || k > d)
		return; /* not on the stack: it began before the recording */
	for (int j = 0; j < RESYNC_DEPTH; j++) {
		if (j >= k)
			break;
		pop(t, d - j, now);
		__sync_fetch_and_add(&missed_exits, 1);
	}
	pop(t, d - k, now);
}

/* Applies event `at` of thread t's copy of its ring; returns 1 if it
 * began an activation, else 0. */
static __always_inline int apply_event(struct call_thread *t, __u32 tgid, __u32 tid, __u64 at,
				       const int loops)
{
	__u32 slot = at & (CALL_RING_SLOTS - 1);
	__u64 code = t->copy[slot][0] & ~CALL_KIND_MASK;
	__u64 kind = t->copy[slot][0] & CALL_KIND_MASK;
	__u64 ts = t->copy[slot][1];
	int entered = 0;

	if (kind & CALL_KIND_EXIT) {
		leave(t, code, ts);
	} else {
		entered = 1;
		push(t, tgid, tid, code, ts, kind, loops);
	}
	t->tail = at + 1;
	return entered;
}

/* apply_event for programs without bpf_loop, on thread `tid`: checked
 * once per program, not at each step of the loop that calls it (an
 * event's paths through push and leave, times the ring's 256 slots, are
 * more than the verifier takes). Returns -1 if the thread is gone. */
__noinline int apply_event_bounded(__u32 tgid, __u32 tid, __u64 at)
{
	struct call_thread *t = bpf_map_lookup_elem(&call_threads, &tid);

	if (!t)
		return -1;
	return apply_event(t, tgid, tid, at, 0);
}

struct drain {
	struct call_thread *t;
	__u32 tgid;
	__u32 tid;
	__u64 from;
	__u64 n;
	__u64 entered; /* activations begun among them */
};

/* Applies event `from + i` of the thread's ring. */
static long drain_step(__u32 i, void *arg)
{
	struct drain *w = arg;

	if (i >= w->n)
		return 1;
	w->entered += apply_event(w->t, w->tgid, w->tid, w->from + i, 1);
	return 0;
}

/* Reads the thread's events from its tail up to `head`. */
static __always_inline void drain(struct call_thread *t, __u32 tgid, __u32 tid, __u64 head,
				  const int loops)
{
	struct drain w = { .t = t, .tgid = tgid, .tid = tid };

	if (head <= t->tail)
		return;
	if (head - t->tail > CALL_RING_SLOTS) {
		/* Overwritten before anyone read them. */
		__sync_fetch_and_add(&lost_events, head - t->tail - CALL_RING_SLOTS);
		t->tail = head - CALL_RING_SLOTS;
	}
	w.from = t->tail;
	w.n = head - t->tail;
	/* Copy the new slots in: from the tail's slot to the ring's end, then
	 * what wrapped around to its start. */
	{
		__u32 a = w.from & (CALL_RING_SLOTS - 1), first = CALL_RING_SLOTS - a;
		__u64 n1 = w.n < first ? w.n : first, n2 = w.n - n1;

		if (n1 == 0 || n1 > CALL_RING_SLOTS ||
		    bpf_probe_read_user(&t->copy[a], read_size(n1 * 16, CALL_RING_SLOTS * 16),
					(const void *)(t->ring + CALL_RING_DATA + a * 16)))
			return;
		if (n2 > 0 && (n2 > CALL_RING_SLOTS ||
			       bpf_probe_read_user(&t->copy[0], read_size(n2 * 16, CALL_RING_SLOTS * 16),
						   (const void *)(t->ring + CALL_RING_DATA))))
			return;
	}
	if (loops) {
		bpf_loop(CALL_RING_SLOTS, drain_step, &w, 0);
	} else {
		for (__u32 i = 0; i < CALL_RING_SLOTS; i++) {
			int r;

			if (i >= w.n)
				break;
			r = apply_event_bounded(tgid, tid, w.from + i);
			if (r < 0)
				break;
			w.entered += r;
		}
	}
	__sync_fetch_and_add(&calls, w.entered);
}

/* pyusdt:calls(ring, head, first): the thread's ring has events up to
 * head; `first` (unless ~0) is where the new tracer's begin. */
static __always_inline int on_calls_body(struct pt_regs *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct call_thread *t;
	__u64 code = 0, ev = 0;
	__u64 ring, head, first;

	if (!is_target(tgid))
		return 0;
	if (bpf_usdt_arg(ctx, 0, (long *)&ring) || bpf_usdt_arg(ctx, 1, (long *)&head) ||
	    bpf_usdt_arg(ctx, 2, (long *)&first))
		return 0;
	t = bpf_map_lookup_elem(&call_threads, &tid);
	if (t && (t->tgid != tgid || t->ring != ring)) {
		/* Another process's (or an ended thread's) stack. */
		bpf_map_delete_elem(&call_threads, &tid);
		t = NULL;
	}
	if (!t) {
		__u64 tail = first == ~0ULL ? head : first, at = first == ~0ULL ? head - 1 : first;

		/*
		 * The stack starts as the walker finds it now, in the callback of
		 * event `at`. A frame that event enters is there already (the
		 * event will push it); one it leaves is still there (it has gone):
		 * either way the walked leaf is left out.
		 */
		if (head > 0 && !bpf_probe_read_user(&ev, sizeof(ev),
				(const void *)(ring + CALL_RING_DATA +
					       (at & (CALL_RING_SLOTS - 1)) * 16)) &&
		    ((first == ~0ULL) == !!(ev & CALL_KIND_EXIT)))
			code = ev & ~CALL_KIND_MASK;
		t = new_thread(tgid, tid, code, ring, tail, loops);
		if (!t)
			return 0;
	}
	t->busy = 1;
	drain(t, tgid, tid, head, loops);
	t->busy = 0;
	return 0;
}

WALK_TWIN("usdt", on_calls, struct pt_regs)

/* A target thread leaves the CPU: read what it wrote since, so that a
 * thread that blocks leaves nothing unread. */
static __always_inline int on_switch(struct task_struct *prev, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid(), head = 0;
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct call_thread *t;

	if (!is_target(tgid))
		return 0;
	t = bpf_map_lookup_elem(&call_threads, &tid);
	if (!t || t->tgid != tgid || t->busy)
		return 0;
	if (bpf_probe_read_user(&head, sizeof(head), (const void *)(t->ring + CALL_RING_HEAD)))
		return 0;
	drain(t, tgid, tid, head, loops);
	return 0;
}

TP_WALK(sched_switch, switch, on_switch(prev, loops), bool preempt, struct task_struct *prev,
	struct task_struct *next)

/* Threads that exited since userspace last moved nodes out, by tid: no
 * program writes their nodes again. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} call_exited SEC(".maps");

/* A thread that exits leaves its stack behind for a new thread of the
 * same id: drop it, and say that its nodes are final. */
static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u8 one = 1;

	if (is_target(id >> 32) && bpf_map_delete_elem(&call_threads, &tid) == 0)
		bpf_map_update_elem(&call_exited, &tid, &one, BPF_ANY);
	return 0;
}

TP_TWIN(sched_process_exit, thread_exit, on_exit(), struct task_struct *p)

/* Puts the types in the skeleton's types. */
struct call_node _call_node = {};
struct call_thread _call_thread = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
struct code_lines _code_lines = {};
