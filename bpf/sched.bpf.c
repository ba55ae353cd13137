// SPDX-License-Identifier: MIT
/*
 * The off-CPU and wake-up views: at sched_switch a target thread that
 * leaves the CPU notes its Python and kernel stacks and the time; when it
 * comes back, the time it was away is counted under those stacks, and
 * under the thread that woke it (sched_waking, sched_wakeup_new) with that
 * thread's Python stack. Each tracepoint has a tp_btf and a raw_tp
 * program; userspace loads the kind the kernel offers.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "pyframe.bpf.h"
#include "sched_counts.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct switch_out {
	__u64 ts;
	__u64 pystack;
	__s32 kstack;
	__u32 reserved;
};

/* Target threads off the CPU now, by tid (LRU: a thread that exits while
 * off the CPU never comes back to delete its entry). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct switch_out);
} off_now SEC(".maps");

/* The last waker of each target thread that is off the CPU, by tid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct wakeup_key);
} wakers SEC(".maps");

/* With a histogram of each key's waits; 65536 keys keep the preallocated
 * map near 14 MB. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct offcpu_key);
	__type(value, struct time_hist);
} offcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct wakeup_key);
	__type(value, struct time_value);
} wakeups SEC(".maps");

/* Switches of the target and wake-ups joined to them, and records lost
 * to full maps. */
__u64 switches = 0;
__u64 wakeups_joined = 0;
__u64 lost_offcpu = 0;
__u64 lost_wakeups = 0;

static __always_inline void add_time(void *map, const void *key, __u64 ns, __u64 *lost)
{
	struct time_value *v = bpf_map_lookup_elem(map, key);
	struct time_value init = { .ns = ns, .count = 1 };

	if (v) {
		__sync_fetch_and_add(&v->ns, ns);
		__sync_fetch_and_add(&v->count, 1);
	} else if (bpf_map_update_elem(map, key, &init, BPF_NOEXIST)) {
		/* Lost a race to create it, or the map is full. */
		v = bpf_map_lookup_elem(map, key);
		if (v) {
			__sync_fetch_and_add(&v->ns, ns);
			__sync_fetch_and_add(&v->count, 1);
		} else {
			__sync_fetch_and_add(lost, 1);
		}
	}
}

static __always_inline int on_switch(void *ctx, struct task_struct *prev, struct task_struct *next)
{
	__u32 prev_tgid = BPF_CORE_READ(prev, tgid), prev_tid = BPF_CORE_READ(prev, pid);
	__u32 next_tgid = BPF_CORE_READ(next, tgid), next_tid = BPF_CORE_READ(next, pid);
	/* A thread leaving counts only inside the span (with --span); one
	 * coming back counts if it left inside it (off_now says). */
	int prev_ours = is_target(prev_tgid) && in_span(prev_tid), next_ours = is_target(next_tgid);
	__u64 now;

	if (!prev_ours && !next_ours)
		return 0;
	now = bpf_ktime_get_ns();

	/* A target thread leaves: note where it is (it is still current). */
	if (prev_ours) {
		struct switch_out out = { .ts = now };

		__sync_fetch_and_add(&switches, 1);
		out.pystack = py_stack_id(prev_tgid, prev_tid);
		out.kstack = kernel_stack_id(ctx);
		if (bpf_map_update_elem(&off_now, &prev_tid, &out, BPF_ANY))
			__sync_fetch_and_add(&lost_offcpu, 1);
	}

	/* A target thread comes back: count the time it was away. */
	if (next_ours) {
		struct switch_out *out = bpf_map_lookup_elem(&off_now, &next_tid);
		struct offcpu_key key = {};
		struct wakeup_key *w;
		__u64 ns;

		if (!out)
			return 0; /* it left before the recording began */
		ns = now - out->ts;
		key.tgid = next_tgid;
		key.tid = next_tid;
		key.pystack = out->pystack;
		key.kstack = out->kstack;
		add_time_hist(&offcpu, &key, ns, &lost_offcpu);
		w = bpf_map_lookup_elem(&wakers, &next_tid);
		if (w) {
			w->pystack = out->pystack;
			__sync_fetch_and_add(&wakeups_joined, 1);
			add_time(&wakeups, w, ns, &lost_wakeups);
			bpf_map_delete_elem(&wakers, &next_tid);
		}
		bpf_map_delete_elem(&off_now, &next_tid);
	}
	return 0;
}

/* The waker is current; note it for the wakee. */
static __always_inline int on_wakeup(struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid), tid = BPF_CORE_READ(p, pid);
	__u64 id = bpf_get_current_pid_tgid();
	struct wakeup_key w = {};

	if (!is_target(tgid))
		return 0;
	w.tgid = tgid;
	w.tid = tid;
	w.waker_tgid = id >> 32;
	w.waker_tid = (__u32)id;
	if (is_target(w.waker_tgid))
		w.waker_pystack = py_stack_id(w.waker_tgid, w.waker_tid);
	bpf_get_current_comm(w.waker_comm, sizeof(w.waker_comm));
	if (bpf_map_update_elem(&wakers, &tid, &w, BPF_ANY))
		__sync_fetch_and_add(&lost_wakeups, 1);
	return 0;
}

TP_TWIN(sched_switch, switch, on_switch(ctx, prev, next),
	bool preempt, struct task_struct *prev, struct task_struct *next)

/*
 * sched_waking, not sched_wakeup: sched_wakeup fires wherever the wakee is
 * queued, which for a wakee on another CPU is that CPU's interrupt (the
 * idle task is current there); sched_waking always fires in the waker.
 */
TP_TWIN(sched_waking, wakeup, on_wakeup(p), struct task_struct *p)

TP_TWIN(sched_wakeup_new, wakeup_new, on_wakeup(p), struct task_struct *p)

/* Puts the key and value types in the skeleton's types. */
struct offcpu_key _offcpu_key = {};
struct wakeup_key _wakeup_key = {};
struct time_value _time_value = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct comm_value _comm_value = {};
