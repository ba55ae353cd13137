// SPDX-License-Identifier: MIT
/*
 * `record --span NAME`: follows pyusdt:span_begin(name, id) and
 * span_end(name, id) of span NAME per thread. Every view's handler asks
 * in_span() (bpf/procs.bpf.h) whether the thread is inside it now; here
 * each ended span's duration goes to one histogram.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "procs.bpf.h"
#include "span.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The span followed, NUL-terminated; set before load. */
const volatile char span_name[SPAN_NAME_LEN] = {};

/* Threads inside the span now, by tid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct span_open);
} span_open SEC(".maps");

/* The ended spans' durations (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct time_hist);
} span_times SEC(".maps");

/* Spans that ended without the recording having seen them begin. */
__u64 unmatched_ends = 0;

/* Whether the probe's name argument is the span followed. */
static __always_inline int is_ours(const char *name)
{
	char buf[SPAN_NAME_LEN] = {};
	int i;

	if (bpf_probe_read_user_str(buf, sizeof(buf), name) < 0)
		return 0;
	for (i = 0; i < SPAN_NAME_LEN; i++) {
		if (buf[i] != span_name[i])
			return 0;
		if (!buf[i])
			return 1;
	}
	return 0;
}

SEC("usdt")
int BPF_USDT(span_begin, const char *name, __u64 id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, one = 1;
	struct span_open *o, init = {};

	if (!is_target(pid_tgid >> 32) || !is_ours(name))
		return 0;
	o = bpf_map_lookup_elem(&span_open, &tid);
	if (o && o->depth) {
		o->depth++;
	} else {
		init.start_ns = bpf_ktime_get_ns();
		init.depth = 1;
		bpf_map_update_elem(&span_open, &tid, &init, BPF_ANY);
	}
	o = bpf_map_lookup_elem(&span_open, &tid);
	if (o)
		bpf_map_update_elem(&span_threads, &tid, &o->depth, BPF_ANY);
	else
		bpf_map_update_elem(&span_threads, &tid, &one, BPF_ANY);
	return 0;
}

SEC("usdt")
int BPF_USDT(span_end, const char *name, __u64 id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid(), ns;
	__u32 tid = (__u32)pid_tgid, zero = 0, slot;
	struct span_open *o;
	struct time_hist *h;

	if (!is_target(pid_tgid >> 32) || !is_ours(name))
		return 0;
	o = bpf_map_lookup_elem(&span_open, &tid);
	if (!o || !o->depth) {
		__sync_fetch_and_add(&unmatched_ends, 1);
		return 0;
	}
	o->depth--;
	bpf_map_update_elem(&span_threads, &tid, &o->depth, BPF_ANY);
	if (o->depth)
		return 0;
	ns = bpf_ktime_get_ns() - o->start_ns;
	h = bpf_map_lookup_elem(&span_times, &zero);
	if (!h)
		return 0;
	__sync_fetch_and_add(&h->ns, ns);
	__sync_fetch_and_add(&h->count, 1);
	slot = 0;
	while (slot < HIST_SLOTS - 1 && (ns >> (slot + 1)))
		slot++;
	__sync_fetch_and_add(&h->hist[slot & 63], 1);
	return 0;
}

struct time_hist _time_hist = {};
