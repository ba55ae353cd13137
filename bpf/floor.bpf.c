// SPDX-License-Identifier: MIT
/*
 * The floor of `make bench`: the recorder's kernel attach points with
 * handlers that do nothing, so that each view's cost can be read as a
 * multiple of what the kernel charges for running any handler there.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("tp_btf/sys_enter")
int BPF_PROG(floor_enter)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(floor_exit)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(floor_switch)
{
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(floor_waking)
{
	return 0;
}

SEC("perf_event")
int floor_sample(struct bpf_perf_event_data *ctx)
{
	return 0;
}
