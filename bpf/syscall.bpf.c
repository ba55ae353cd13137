// SPDX-License-Identifier: MIT
/*
 * The syscall view: raw_syscalls sys_enter notes the time and the
 * thread's Python stack; sys_exit counts the call and its time under
 * (thread, Python stack, syscall). tp_btf and raw_tp variants.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "pyframe.bpf.h"
#include "syscall_counts.h"
#include "sys_in.bpf.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Target threads by tid: the syscall each is in now (see sys_in_begin);
 * LRU, since threads come and go. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sys_in);
} in_syscall SEC(".maps");

/* Allocated as keys appear (syscall exit may allocate; the scheduler's
 * maps may not), each with a histogram of its calls' times. A key is per
 * thread: 10,000 short threads of 3.14, which name themselves and read
 * their CPU affinity, make about 150,000 keys. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct syscall_key);
	__type(value, struct time_hist);
} syscalls SEC(".maps");

/* Syscalls of the target counted, and records lost to full maps. */
__u64 calls = 0;
__u64 lost_syscalls = 0;

static __always_inline int on_enter(long nr, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	__u64 pystack;

	if (!is_target(tgid) || !in_span(tid) || is_uprobe_syscall(nr))
		return 0;
	pystack = py_stack_id(tgid, tid, loops);
	/* The syscall's time begins after the walk: its cost is the
	 * recorder's, not the syscall's. */
	if (sys_in_begin(&in_syscall, tid, nr, pystack))
		__sync_fetch_and_add(&lost_syscalls, 1);
	return 0;
}

static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid(), now;
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct syscall_key key = {};
	struct sys_in *in;

	if (!is_target(tgid))
		return 0;
	now = bpf_ktime_get_ns();
	in = bpf_map_lookup_elem(&in_syscall, &tid);
	if (!in || !in->ts)
		return 0; /* entered before the recording began, or out of the span */
	key.tgid = tgid;
	key.tid = tid;
	key.pystack = in->pystack;
	key.nr = in->nr;
	now -= in->ts;
	in->ts = 0;
	__sync_fetch_and_add(&calls, 1);

	add_time_hist(&syscalls, &key, now, &lost_syscalls);
	return 0;
}

TP_WALK(sys_enter, enter, on_enter(id, loops), struct pt_regs *regs, long id)

TP_TWIN(sys_exit, exit, on_exit(), struct pt_regs *regs, long ret)

/* Puts the key and value types in the skeleton's types. */
struct syscall_key _syscall_key = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
