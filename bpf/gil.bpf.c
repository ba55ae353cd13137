// SPDX-License-Identifier: MIT
/*
 * The gil view: uprobes on the interpreter's take_gil (entry and return)
 * and drop_gil (entry), which CPython builds keep as local symbols. A
 * thread that enters take_gil starts waiting, at its current Python stack;
 * when take_gil returns it holds the GIL, and the time in between is
 * counted under that stack and under the thread that dropped the GIL last
 * (the one that handed it over), at the stack where it dropped it.
 *
 * Why uprobes rather than reading the GIL's state at sched_switch: a
 * switch tells when a thread leaves the CPU, not why, and a waiter that
 * spins or is woken and loses the race again is not seen at all; take_gil
 * brackets every wait exactly, whatever the kernel does inside it. The
 * cost is two probes per GIL hand-over and one per release, never per
 * Python call.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "gil_counts.h"
#include "pyframe.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The last drop of the GIL in each process. */
struct gil_drop {
	__u32 tid;
	__u32 reserved;
	__u64 pystack;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct gil_drop);
} gil_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gil_key);
	__type(value, struct time_hist);
} gil SEC(".maps");

/* Waits counted, and waits lost to a full map. */
__u64 gil_waited = 0;
__u64 lost_gil = 0;

SEC("uprobe")
int take_gil_enter(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct gil_wait w;

	if (!is_target(tgid) || !in_span(tid))
		return 0;
	/* The walk first: its cost is the recorder's, not a wait. */
	w.pystack = py_stack_id(tgid, tid);
	w.ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&gil_waits, &tid, &w, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int take_gil_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct gil_key key = {};
	struct gil_wait *w;
	struct gil_drop *d;
	__u64 ns;

	if (!is_target(tgid))
		return 0;
	w = bpf_map_lookup_elem(&gil_waits, &tid);
	if (!w)
		return 0; /* it began to wait before the recording */
	ns = bpf_ktime_get_ns() - w->ts;
	key.tgid = tgid;
	key.tid = tid;
	key.pystack = w->pystack;
	d = bpf_map_lookup_elem(&gil_drops, &tgid);
	if (d) {
		/* The thread itself: nobody took the GIL since it let it go. */
		key.holder_tid = d->tid;
		key.holder_pystack = d->tid == tid ? PYSTACK_NONE : d->pystack;
	}
	bpf_map_delete_elem(&gil_waits, &tid);
	__sync_fetch_and_add(&gil_waited, 1);
	add_time_hist(&gil, &key, ns, &lost_gil);
	return 0;
}

SEC("uprobe")
int drop_gil_enter(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct gil_drop d = { .tid = (__u32)id };

	if (!is_target(tgid))
		return 0;
	d.pystack = py_stack_id(tgid, d.tid);
	bpf_map_update_elem(&gil_drops, &tgid, &d, BPF_ANY);
	return 0;
}

/* Puts the key and value types in the skeleton's types. */
struct gil_key _gil_key = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
struct comm_value _comm_value = {};
