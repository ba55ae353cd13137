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
#include "sys_in.bpf.h"
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

/* Target threads by tid: the traced syscall each is in now (see
 * sys_in_begin); LRU, since threads come and go. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sys_in);
} trace_in_syscall SEC(".maps");

/* Events lost to a full ring buffer (or entry map). */
__u64 lost = 0;

/* A record of `size` bytes (a head, or a whole trace_record) with its
 * head filled in, or NULL (counted as lost). */
static __always_inline struct trace_head *reserve(__u32 kind, __u32 tgid, __u32 tid, __u64 size)
{
	struct trace_head *e = bpf_ringbuf_reserve(&trace_events, size, 0);

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

/* A probe hit's record is built here, then sent as long as it is. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_record);
} record_scratch SEC(".maps");

static __always_inline int trace_probe_body(struct pt_regs *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, zero = 0;
	__u32 cookie = (__u32)bpf_usdt_cookie(ctx);
	const struct probe_conf *conf;
	struct trace_record *e;
	__u32 nargs, i, off = 0;
	__u64 size;
	int cnt, n;
	long v;

	if (!is_target(tgid))
		return 0;
	conf = bpf_map_lookup_elem(&probe_confs, &cookie);
	e = bpf_map_lookup_elem(&record_scratch, &zero);
	if (!conf || !e)
		return 0;
	e->head.ts = bpf_ktime_get_ns();
	e->head.pystack = with_stacks ? py_stack_id(tgid, tid, loops) : 0;
	e->head.duration_ns = 0;
	e->head.ret = 0;
	e->head.nr = 0;
	e->head.pid = tgid;
	e->head.tid = tid;
	e->head.kind = TRACE_PROBE;
	e->head.probe = cookie;
	e->head.str_mask = conf->str_mask;
	e->head.err_mask = 0;
	e->head.reserved = 0;
	bpf_get_current_comm(e->head.comm, sizeof(e->head.comm));
	nargs = conf->nargs;
	cnt = bpf_usdt_arg_cnt(ctx);
	if (cnt >= 0 && nargs > (__u32)cnt)
		nargs = cnt;
	if (nargs > TRACE_MAX_ARGS)
		nargs = TRACE_MAX_ARGS;
	e->head.nargs = nargs;
	/* Each argument as an integer; a string argument's text packed after
	 * the ones before it, str_len[i] bytes, without its NUL. */
	for (i = 0; i < TRACE_MAX_ARGS; i++) {
		if (i >= nargs)
			break;
		e->args[i] = 0;
		e->str_len[i] = 0;
		if (bpf_usdt_arg(ctx, i, &v)) {
			e->head.err_mask |= 1U << i;
			continue;
		}
		e->args[i] = v;
		if (!(e->head.str_mask & (1U << i)))
			continue;
		if (off > (TRACE_MAX_ARGS - 1) * TRACE_STR_LEN)
			break;
		n = bpf_probe_read_user_str(e->strs + off, TRACE_STR_LEN, (const void *)v);
		if (n > 0) {
			e->str_len[i] = n - 1;
			off += n - 1;
		} else {
			e->head.err_mask |= 1U << i;
		}
	}
	size = __builtin_offsetof(struct trace_record, strs) + off;
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&trace_events, e, size, 0)) {
		__sync_fetch_and_add(&lost, 1);
		return 0;
	}
	return 0;
}

WALK_TWIN("usdt", trace_probe, struct pt_regs)

static __always_inline int on_enter(long nr, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, k;
	__u8 *wanted;
	__u64 pystack = 0;

	if (!is_target(tgid) || is_uprobe_syscall(nr))
		return 0;
	if (!all_syscalls) {
		if (nr < 0 || nr >= TRACE_MAX_SYSCALLS)
			return 0;
		k = nr;
		wanted = bpf_map_lookup_elem(&syscall_wanted, &k);
		if (!wanted || !*wanted)
			return 0;
	}
	if (with_stacks)
		pystack = py_stack_id(tgid, tid, loops);
	/* The syscall begins after the walk, as in the syscall view. */
	if (sys_in_begin(&trace_in_syscall, tid, nr, pystack))
		__sync_fetch_and_add(&lost, 1);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct sys_in *in;
	struct trace_head *e;
	__u64 now;

	if (!is_target(tgid))
		return 0;
	in = bpf_map_lookup_elem(&trace_in_syscall, &tid);
	if (!in || !in->ts)
		return 0; /* not traced, or entered before the trace began */
	now = bpf_ktime_get_ns();
	e = reserve(TRACE_SYSCALL, tgid, tid, sizeof(*e));
	if (e) {
		e->ts = in->ts;
		e->duration_ns = now - in->ts;
		e->pystack = in->pystack;
		e->nr = in->nr;
		e->ret = ret;
		bpf_ringbuf_submit(e, 0);
	}
	in->ts = 0;
	return 0;
}

TP_WALK(sys_enter, trace_enter, on_enter(id, loops), struct pt_regs *regs, long id)

TP_TWIN(sys_exit, trace_exit, on_exit(ret), struct pt_regs *regs, long ret)

/* Puts the types userspace reads in the skeleton's types. */
struct trace_record _trace_record = {};
struct trace_head _trace_head = {};
struct probe_conf _probe_conf = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
enum trace_kind _trace_kind = TRACE_PROBE;
