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

#include "hist.bpf.h"
#include "procs.bpf.h"
#include "span.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The span followed, NUL-terminated; set before load. */
const volatile char span_name[SPAN_NAME_LEN] = {};

/* The ended spans' durations (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct time_hist);
} span_times SEC(".maps");

/* Never counts: span_times is an array, its one entry always there. */
__u64 lost_spans = 0;

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
	__u32 tid = (__u32)pid_tgid;
	struct span_state *s, init = { .depth = 1 };

	if (!is_target(pid_tgid >> 32) || !is_ours(name))
		return 0;
	s = bpf_map_lookup_elem(&span_threads, &tid);
	if (s && s->depth) {
		s->depth++;
		return 0;
	}
	init.start_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&span_threads, &tid, &init, BPF_ANY);
	return 0;
}

SEC("usdt")
int BPF_USDT(span_end, const char *name, __u64 id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, zero = 0;
	struct span_state *s;

	if (!is_target(pid_tgid >> 32) || !is_ours(name))
		return 0;
	s = bpf_map_lookup_elem(&span_threads, &tid);
	/* An end whose begin came before the recording: nothing to close. */
	if (!s || !s->depth)
		return 0;
	if (--s->depth == 0)
		add_time_hist(&span_times, &zero, bpf_ktime_get_ns() - s->start_ns, &lost_spans);
	return 0;
}

struct time_hist _time_hist = {};
