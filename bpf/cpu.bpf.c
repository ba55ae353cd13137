// SPDX-License-Identifier: MIT
/*
 * The CPU view: a perf_event program on the software cpu-clock event of
 * every CPU. For each sample of the target it walks the thread's Python
 * frames, takes the kernel stack when the sample hit the kernel, and counts
 * (thread, Python stack, kernel stack) in a map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "cpu_counts.h"
#include "pyframe.bpf.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct cpu_key);
	__type(value, __u64);
} cpu_samples SEC(".maps");

/* Samples of the target, and those lost because cpu_samples was full. */
__u64 samples = 0;
__u64 lost_samples = 0;

static __always_inline int on_cpu_sample_body(struct bpf_perf_event_data *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cpu_key key = {};
	__u64 one = 1, *count;

	key.tgid = id >> 32;
	key.tid = (__u32)id;
	if (!is_target(key.tgid) || !in_span(key.tid))
		return 0;
	__sync_fetch_and_add(&samples, 1);
	key.pystack = py_stack_id(key.tgid, key.tid, loops);
	/* None when the sample hit user mode. */
	key.kstack = kernel_stack_id(ctx);
	if (bpf_map_lookup_elem(&gil_waits, &key.tid))
		key.flags = CPU_F_GIL_WAIT;

	count = bpf_map_lookup_elem(&cpu_samples, &key);
	if (count)
		__sync_fetch_and_add(count, 1);
	else if (bpf_map_update_elem(&cpu_samples, &key, &one, BPF_NOEXIST))
		__sync_fetch_and_add(&lost_samples, 1);
	return 0;
}

WALK_TWIN("perf_event", on_cpu_sample, struct bpf_perf_event_data)

/* Puts the key and stack types in the skeleton's types. */
struct cpu_key _cpu_key = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
struct code_lines _code_lines = {};
