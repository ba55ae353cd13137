// SPDX-License-Identifier: MIT
/*
 * The off-CPU and wake-up views: at sched_switch a target thread that
 * leaves the CPU notes its Python and kernel stacks and the time; when it
 * comes back, the time it was away is counted under those stacks, and
 * under the thread that woke it (sched_waking, sched_wakeup_new) with that
 * thread's Python stack. A return the kernel did not report is counted
 * at the thread's next departure, ending at its last wake-up. Each
 * tracepoint has a tp_btf and a raw_tp program; userspace loads the kind
 * the kernel offers.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "pyframe.bpf.h"
#include "sched_counts.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* A target thread's departure; those left at the end are waits still
 * open, which userspace counts up to the end. */
struct switch_out {
	__u64 ts;
	__u64 pystack;
	__s32 kstack;
	__u32 tgid;
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

/*
 * When each target thread was last woken (sched_waking), by tid. The
 * kernel does not report every return to the CPU (on 6.18, about one in
 * 1600 sleeps' switch-in reaches no BPF program, ours or another tool's):
 * a thread that leaves while off_now still holds its last departure came
 * back unseen, and its wait is counted then, ending at this wake-up.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} woken_at SEC(".maps");

/* Whether the wakeup view is recorded (else sched_waking notes only the
 * time of the wake-up, for woken_at). */
const volatile __u8 wakeup_view = 0;

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
/* Returns to the CPU the kernel did not report, counted at the thread's
 * next departure (see woken_at). */
__u64 returns_unreported = 0;

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

/* Thread `tid` of `tgid`, which left as `out` says, was away `ns`:
 * counts it, joins it to its waker, and forgets the departure. */
static __always_inline void count_return(__u32 tgid, __u32 tid, struct switch_out *out, __u64 ns)
{
	struct offcpu_key key = {};
	struct wakeup_key *w;

	key.tgid = tgid;
	key.tid = tid;
	key.pystack = out->pystack;
	key.kstack = out->kstack;
	add_time_hist(&offcpu, &key, ns, &lost_offcpu);
	w = bpf_map_lookup_elem(&wakers, &tid);
	if (w) {
		w->pystack = out->pystack;
		__sync_fetch_and_add(&wakeups_joined, 1);
		add_time(&wakeups, w, ns, &lost_wakeups);
		bpf_map_delete_elem(&wakers, &tid);
	}
	bpf_map_delete_elem(&off_now, &tid);
}

static __always_inline int on_switch(void *ctx, struct task_struct *prev, struct task_struct *next,
				     const int loops)
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
		struct switch_out *unseen = bpf_map_lookup_elem(&off_now, &prev_tid);
		struct switch_out out = { .ts = now, .tgid = prev_tgid };

		if (unseen) {
			/* It came back unseen: its wait ended when it was woken. */
			__u64 *woke = bpf_map_lookup_elem(&woken_at, &prev_tid);

			if (woke && *woke > unseen->ts && *woke <= now) {
				__sync_fetch_and_add(&returns_unreported, 1);
				count_return(prev_tgid, prev_tid, unseen, *woke - unseen->ts);
			} else {
				/* Preempted, not woken: when it came back is unknown. */
				__sync_fetch_and_add(&lost_offcpu, 1);
				bpf_map_delete_elem(&wakers, &prev_tid);
			}
		}
		__sync_fetch_and_add(&switches, 1);
		out.pystack = py_stack_id(prev_tgid, prev_tid, loops);
		out.kstack = kernel_stack_id(ctx);
		if (bpf_map_update_elem(&off_now, &prev_tid, &out, BPF_ANY))
			__sync_fetch_and_add(&lost_offcpu, 1);
	}

	/* A target thread comes back: count the time it was away. */
	if (next_ours) {
		struct switch_out *out = bpf_map_lookup_elem(&off_now, &next_tid);

		if (!out)
			return 0; /* it left before the recording began */
		count_return(next_tgid, next_tid, out, now - out->ts);
	}
	return 0;
}

/* The waker is current; note it for the wakee. */
static __always_inline int on_wakeup(struct task_struct *p, const int loops)
{
	__u32 tgid = BPF_CORE_READ(p, tgid), tid = BPF_CORE_READ(p, pid);
	__u64 id = bpf_get_current_pid_tgid();
	struct wakeup_key w = {};
	__u64 now;

	if (!is_target(tgid))
		return 0;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&woken_at, &tid, &now, BPF_ANY);
	if (!wakeup_view)
		return 0;
	w.tgid = tgid;
	w.tid = tid;
	w.waker_tgid = id >> 32;
	w.waker_tid = (__u32)id;
	if (is_target(w.waker_tgid))
		w.waker_pystack = py_stack_id(w.waker_tgid, w.waker_tid, loops);
	bpf_get_current_comm(w.waker_comm, sizeof(w.waker_comm));
	if (bpf_map_update_elem(&wakers, &tid, &w, BPF_ANY))
		__sync_fetch_and_add(&lost_wakeups, 1);
	return 0;
}

TP_WALK(sched_switch, switch, on_switch(ctx, prev, next, loops),
	bool preempt, struct task_struct *prev, struct task_struct *next)

/*
 * sched_waking, not sched_wakeup: sched_wakeup fires wherever the wakee is
 * queued, which for a wakee on another CPU is that CPU's interrupt (the
 * idle task is current there); sched_waking always fires in the waker.
 */
TP_WALK(sched_waking, wakeup, on_wakeup(p, loops), struct task_struct *p)

TP_WALK(sched_wakeup_new, wakeup_new, on_wakeup(p, loops), struct task_struct *p)

/* Puts the key and value types in the skeleton's types. */
struct offcpu_key _offcpu_key = {};
struct switch_out _switch_out = {};
struct wakeup_key _wakeup_key = {};
struct time_value _time_value = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct comm_value _comm_value = {};
