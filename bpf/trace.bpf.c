// SPDX-License-Identifier: MIT
/*
 * `pyusdt-prof trace`: one event per hit of the chosen USDT probes, and
 * per chosen syscall, each with its thread's Python stack if asked, through
 * a ring buffer (a full one is counted as lost).
 *
 * One USDT program serves every probe: its attach cookie indexes
 * `probe_confs`, which says how many arguments to read and which are
 * strings. Syscalls: raw_syscalls sys_enter notes the time (and the stack),
 * sys_exit sends the event with the duration and the return value; tp_btf
 * and raw_tp variants.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "pyframe.bpf.h"
#include "tp_twin.bpf.h"
#include "trace_events.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Walk the Python stack at each event; set before load. */
const volatile __u8 with_stacks = 0;
/* Every syscall, not only those marked in syscall_wanted. */
const volatile __u8 all_syscalls = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} trace_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRACE_MAX_PROBES);
	__type(key, __u32);
	__type(value, struct probe_conf);
} probe_confs SEC(".maps");

/* Syscall number -> 1 if traced. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRACE_MAX_SYSCALLS);
	__type(key, __u32);
	__type(value, __u8);
} syscall_wanted SEC(".maps");

struct trace_sys_in {
	__u64 ts;
	__u64 pystack;
	__s64 nr;
};

/* Target threads inside a traced syscall now, by tid (LRU: a thread's
 * last syscall, exit, never returns to delete its entry). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct trace_sys_in);
} trace_in_syscall SEC(".maps");

/* Events sent, and events lost to a full ring buffer (or entry map). */
__u64 sent = 0;
__u64 lost = 0;

static __always_inline struct trace_record *reserve(__u32 kind, __u32 tgid, __u32 tid)
{
	struct trace_record *e = bpf_ringbuf_reserve(&trace_events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&lost, 1);
		return 0;
	}
	e->kind = kind;
	e->pid = tgid;
	e->tid = tid;
	e->pystack = 0;
	e->duration_ns = 0;
	e->ret = 0;
	e->nr = 0;
	e->probe = 0;
	e->nargs = 0;
	e->str_mask = 0;
	e->err_mask = 0;
	e->reserved = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void send(struct trace_record *e)
{
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&sent, 1);
}

SEC("usdt")
int trace_probe(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	__u32 cookie = (__u32)bpf_usdt_cookie(ctx);
	const struct probe_conf *conf;
	struct trace_record *e;
	__u64 pystack = 0;
	__u32 nargs, i;
	int cnt, n;
	long v;

	if (!is_target(tgid))
		return 0;
	conf = bpf_map_lookup_elem(&probe_confs, &cookie);
	if (!conf)
		return 0;
	/* The stack first: the walk must not run with an event reserved. */
	if (with_stacks)
		pystack = py_stack_id(tgid, tid);
	e = reserve(TRACE_PROBE, tgid, tid);
	if (!e)
		return 0;
	e->ts = bpf_ktime_get_ns();
	e->pystack = pystack;
	e->probe = cookie;
	e->str_mask = conf->str_mask;
	nargs = conf->nargs;
	cnt = bpf_usdt_arg_cnt(ctx);
	if (cnt >= 0 && nargs > (__u32)cnt)
		nargs = cnt;
	if (nargs > TRACE_MAX_ARGS)
		nargs = TRACE_MAX_ARGS;
	e->nargs = nargs;
	/* Each argument as an integer, and a string argument's text. */
	for (i = 0; i < TRACE_MAX_ARGS; i++) {
		if (i >= nargs)
			break;
		e->args[i] = 0;
		e->str_len[i] = 0;
		if (bpf_usdt_arg(ctx, i, &v)) {
			e->err_mask |= 1U << i;
			continue;
		}
		e->args[i] = v;
		if (!(e->str_mask & (1U << i)))
			continue;
		n = bpf_probe_read_user_str(e->strs + i * TRACE_STR_LEN, TRACE_STR_LEN, (const void *)v);
		if (n > 0)
			e->str_len[i] = n - 1;
		else
			e->err_mask |= 1U << i;
	}
	send(e);
	return 0;
}

static __always_inline int on_enter(long nr)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, k;
	struct trace_sys_in in = {};
	__u8 *wanted;

	if (!is_target(tgid))
		return 0;
	if (!all_syscalls) {
		if (nr < 0 || nr >= TRACE_MAX_SYSCALLS)
			return 0;
		k = nr;
		wanted = bpf_map_lookup_elem(&syscall_wanted, &k);
		if (!wanted || !*wanted)
			return 0;
	}
	in.ts = bpf_ktime_get_ns();
	in.nr = nr;
	if (with_stacks)
		in.pystack = py_stack_id(tgid, tid);
	if (bpf_map_update_elem(&trace_in_syscall, &tid, &in, BPF_ANY))
		__sync_fetch_and_add(&lost, 1);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct trace_sys_in *in;
	struct trace_record *e;
	__u64 now = bpf_ktime_get_ns();

	if (!is_target(tgid))
		return 0;
	in = bpf_map_lookup_elem(&trace_in_syscall, &tid);
	if (!in)
		return 0; /* not traced, or entered before the trace began */
	e = reserve(TRACE_SYSCALL, tgid, tid);
	if (e) {
		e->ts = in->ts;
		e->duration_ns = now - in->ts;
		e->pystack = in->pystack;
		e->nr = in->nr;
		e->ret = ret;
		send(e);
	}
	bpf_map_delete_elem(&trace_in_syscall, &tid);
	return 0;
}

TP_TWIN(sys_enter, trace_enter, on_enter(id), struct pt_regs *regs, long id)

TP_TWIN(sys_exit, trace_exit, on_exit(ret), struct pt_regs *regs, long ret)

/* Puts the types userspace reads in the skeleton's types. */
struct trace_record _trace_record = {};
struct probe_conf _probe_conf = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
enum trace_kind _trace_kind = TRACE_PROBE;
