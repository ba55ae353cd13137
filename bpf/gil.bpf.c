// SPDX-License-Identifier: MIT
/*
 * The gil view, two ways. By default, a wait is seen where it blocks on
 * the GIL's condition, and nothing runs per take of the GIL: at
 * sched_switch (gil_switch below) where the kernel can say which syscall a
 * thread leaving the CPU is in, else at the futex syscalls
 * (gil_futex_enter below). 1-byte writes, which drop and take the GIL
 * each, ran 1.14x plain at sched_switch (python -m pyusdt alone: 1.23x),
 * 2.01x at the futex syscalls (four runs before) and 13.7x with the
 * uprobes (make bench, 5 interleaved rounds).
 *
 * With --gil-probes: uprobes on the interpreter's take_gil (entry and
 * return) and drop_gil (entry), which CPython builds keep as local
 * symbols. A thread that enters take_gil starts waiting, at its current
 * Python stack; when take_gil returns it holds the GIL, and the time in
 * between is counted under that stack and under the thread that dropped
 * the GIL last (the one that handed it over), at the stack where it
 * dropped it. take_gil brackets every wait exactly, also one that took
 * the GIL without blocking, whatever the kernel does inside it, at two
 * probes per GIL hand-over and one per release. Interpreters without
 * those symbols (stripped) are watched at the futex syscalls all the same.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "gil_counts.h"
#include "pyframe.bpf.h"
#include "tp_twin.bpf.h"

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

static __always_inline int take_gil_enter_body(struct pt_regs *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct gil_wait w;

	if (!is_target(tgid) || !in_span(tid))
		return 0;
	/* The walk first: its cost is the recorder's, not a wait. */
	w.pystack = py_stack_id(tgid, tid, loops);
	w.ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&gil_waits, &tid, &w, BPF_ANY);
	return 0;
}

WALK_TWIN("uprobe", take_gil_enter, struct pt_regs)

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

static __always_inline int drop_gil_enter_body(struct pt_regs *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct gil_drop d = { .tid = (__u32)id };

	if (!is_target(tgid))
		return 0;
	d.pystack = py_stack_id(tgid, d.tid, loops);
	bpf_map_update_elem(&gil_drops, &tgid, &d, BPF_ANY);
	return 0;
}

WALK_TWIN("uprobe", drop_gil_enter, struct pt_regs)

/*
 * Where the interpreter has no take_gil symbol to probe (a stripped build,
 * as distributions ship), the waits are seen in the kernel instead: a
 * thread waiting for the GIL blocks in a futex wait on the GIL's condition
 * (gil->cond), whose address the layout gives. A wait may block several
 * times (take_gil's timed wait times out every switch interval, 5 ms,
 * asks the holder to drop the GIL, and waits again at once); it ends with
 * a block that does not time out. Its time is its blocks' time and the
 * moments between them, under the thread that held the GIL
 * (gil->last_holder) at the end of each block; its count is one.
 * A wait that takes the GIL without blocking is not seen.
 *
 * Nothing is walked as a wait begins: the waiter's Python stack is the
 * same at the end of each block (the thread has been inside take_gil, in
 * the kernel, since), so both stacks are read then, once the block's
 * length is known. A block shorter than `sample_below_ns` is sampled as
 * the scheduler views sample waits (bpf/sched.bpf.c, hist.bpf.h's
 * sample_weight): kept with probability 1/k and counted k times, its
 * wait's count with it if it is the wait's first block; only kept blocks
 * walk the stacks.
 */

/* Blocks shorter than this are sampled; 0 keeps every block. */
const volatile __u64 sample_below_ns = 0;

/* Blocks shorter than sample_below_ns, and those of them kept. */
__u64 gil_short_blocks = 0;
__u64 gil_short_kept = 0;

/* Processes whose GIL waits are seen as their blocks (at the futex
 * syscalls, or at sched_switch), by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u8);
} gil_by_blocks SEC(".maps");

/* A thread in a wait for the GIL: blocked since `since` (0 between two
 * blocks: its last block timed out at `timed_out`), at the stack where the
 * wait began. */
struct gil_block {
	__u64 since;
	__u64 timed_out;
	__u64 pystack;
	__u32 counted; /* the wait's first block has ended */
	__u32 walked;  /* pystack was read */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct gil_block);
} gil_blocks SEC(".maps");

#define SYS_FUTEX 202
#define ETIMEDOUT 110
/* A block that follows a timed-out one this soon is the same wait's. */
#define GIL_REWAIT_NS 1000000

/* Fills `key`'s holder: the thread the GIL's last_holder names in the
 * waiter's process (layout `l`), and its Python stack as it is now (none
 * if it is the waiter itself: it let the GIL go). */
static __always_inline void gil_holder(struct gil_key *key, const struct pyusdt_layout *l,
				       const int loops)
{
	int err = 0;
	__u64 holder = read_u64(l->gil_addr + l->gil_last_holder, &err);

	key->holder_tid = 0;
	key->holder_pystack = PYSTACK_NONE;
	if (!holder || err)
		return;
	key->holder_tid = (__u32)read_u64(holder + l->tstate_native_thread_id, &err);
	if (key->holder_tid && key->holder_tid != key->tid && !err)
		key->holder_pystack = py_stack_id(key->tgid, key->holder_tid, loops);
}

/* Process `tgid`'s layout if `regs`, a thread's saved registers at a
 * futex syscall, wait on its GIL's condition; else NULL. */
static __always_inline const struct pyusdt_layout *gil_cond_wait(__u32 tgid, struct pt_regs *regs)
{
	const struct pyusdt_layout *l = bpf_map_lookup_elem(&layouts, &tgid);
	__u64 uaddr, cond;

	if (!l)
		return NULL;
	uaddr = BPF_CORE_READ(regs, di);
	cond = l->gil_addr + l->gil_cond;
	return uaddr >= cond && uaddr < cond + l->gil_cond_size ? l : NULL;
}

static __always_inline int on_futex_enter(struct pt_regs *regs, long nr, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct gil_block *b, init = {};
	__u64 now;

	if (nr != SYS_FUTEX || !is_target(tgid) || !bpf_map_lookup_elem(&gil_by_blocks, &tgid))
		return 0;
	if (!gil_cond_wait(tgid, regs))
		return 0;
	b = bpf_map_lookup_elem(&gil_blocks, &tid);
	now = bpf_ktime_get_ns();
	if (b && now - b->timed_out < GIL_REWAIT_NS) {
		/* The same wait: the moment between its blocks is waiting too
		 * (longer where the thread was preempted in it). */
		b->since = b->timed_out;
		return 0;
	}
	/* A wait begins; its stack is read when a block of it is kept. */
	if (!in_span(tid))
		return 0;
	init.since = now;
	bpf_map_update_elem(&gil_blocks, &tid, &init, BPF_ANY);
	return 0;
}

static __always_inline int on_futex_exit(long ret, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	const struct pyusdt_layout *l;
	struct gil_key key = {};
	struct gil_block *b;
	__u64 ns, first, weight;

	b = bpf_map_lookup_elem(&gil_blocks, &tid);
	if (!b || !b->since)
		return 0;
	ns = bpf_ktime_get_ns() - b->since;
	b->since = 0;
	first = !b->counted;
	b->counted = 1;
	if (first)
		__sync_fetch_and_add(&gil_waited, 1);
	weight = sample_weight_counted(ns, sample_below_ns, &gil_short_blocks, &gil_short_kept);
	if (weight) {
		if (!b->walked) {
			b->pystack = py_stack_id(tgid, tid, loops);
			b->walked = 1;
		}
		key.tgid = tgid;
		key.tid = tid;
		key.pystack = b->pystack;
		l = bpf_map_lookup_elem(&layouts, &tgid);
		if (l)
			gil_holder(&key, l, loops);
		/* The histogram counts each block, as add_time_part does. */
		add_time_at(&gil, &key, ns * weight, hist_slot(ns), first * weight, weight,
			    &lost_gil);
	}
	/* Timed out: it asks the holder to drop the GIL and blocks again;
	 * else (woken, or the condition signalled before it slept) it takes
	 * the GIL now: the wait is over. */
	if (ret == -ETIMEDOUT)
		b->timed_out = bpf_ktime_get_ns();
	else
		bpf_map_delete_elem(&gil_blocks, &tid);
	return 0;
}

/*
 * Where the kernel can say which syscall a thread leaving the CPU is in
 * (tp_btf and bpf_task_pt_regs, Linux 5.15+), the same blocks are seen at
 * sched_switch, and the syscalls, which the futex way slows down one and
 * all (1-byte writes 1.7x with empty handlers there), cost nothing: a
 * target thread that leaves the CPU inside a futex wait on the GIL's
 * condition (its saved orig_ax is the futex syscall, its first argument
 * in the condition) begins a block, and its return to the CPU ends it.
 * The return is seen in another thread, where the target's memory cannot
 * be read, so the stacks are read as the block begins: the waiter's, and
 * that of the thread it waits for (gil->last_holder, as it is then).
 * Every block is counted, none sampled: the walks are made either way.
 * A block that begins within GIL_REWAIT_NS of the end of one that timed
 * out (lasted the switch interval, gil->interval, the field before
 * last_holder in every version) is the same wait's; the time between
 * is not counted (the waiter ran, asking the holder to let go).
 */
struct gil_switch_block {
	__u64 since;	/* 0 between two blocks of a wait */
	__u64 interval; /* the switch interval, ns */
	__u64 ended;	/* when its last block ended, if that one timed out */
	__u32 first;	/* the block is its wait's first */
	__u32 reserved;
	struct gil_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct gil_switch_block);
} gil_switch_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gil_switch_block);
} gil_switch_scratch SEC(".maps");

/* A target thread `tid` of `tgid` leaves the CPU inside a futex wait on
 * the GIL's condition (it is current): a block begins. */
static __always_inline void gil_block_begins(__u32 tgid, __u32 tid, const struct pyusdt_layout *l,
					     __u64 now, const int loops)
{
	struct gil_switch_block *known = bpf_map_lookup_elem(&gil_switch_blocks, &tid), *b = known;
	__u32 zero = 0;
	int err = 0;

	if (b && b->ended && now - b->ended < GIL_REWAIT_NS) {
		b->since = now; /* the same wait, under the stacks it began with */
		b->first = 0;
		return;
	}
	/* A thread's entry is made once, then rewritten in place (as the
	 * scheduler's maps are: bpf/sched.bpf.c). */
	if (!b)
		b = bpf_map_lookup_elem(&gil_switch_scratch, &zero);
	if (!b)
		return;
	b->key.tgid = tgid;
	b->key.tid = tid;
	b->key.pystack = py_stack_id(tgid, tid, loops);
	b->key.reserved = 0;
	gil_holder(&b->key, l, loops);
	b->interval = l->gil_last_holder >= 8 ?
			      read_u64(l->gil_addr + l->gil_last_holder - 8, &err) * 1000 :
			      0;
	if (err)
		b->interval = 0;
	b->ended = 0;
	b->first = 1;
	b->reserved = 0;
	b->since = bpf_ktime_get_ns(); /* after the walks: their cost is not a wait */
	if (!known && bpf_map_update_elem(&gil_switch_blocks, &tid, b, BPF_ANY))
		__sync_fetch_and_add(&lost_gil, 1);
}

static __always_inline int on_gil_switch(struct task_struct *prev, struct task_struct *next,
					 const int loops, const int btf_args)
{
	__u32 prev_tgid, prev_tid, next_tid;
	const struct pyusdt_layout *l;
	struct gil_switch_block *b;
	struct pt_regs *regs;
	__u64 now, ns;

	/* A target thread comes back: a block of it ends. (Every switch of
	 * the machine runs this: the task's fields are plain loads on tp_btf,
	 * and read only where they are needed.) */
	if (is_target(TP_FIELD(next, tgid))) {
		next_tid = TP_FIELD(next, pid);
		b = bpf_map_lookup_elem(&gil_switch_blocks, &next_tid);
		if (b && b->since) {
			now = bpf_ktime_get_ns();
			ns = now - b->since;
			b->since = 0;
			if (b->first)
				__sync_fetch_and_add(&gil_waited, 1);
			/* The histogram counts each block, as add_time_part does. */
			add_time_part(&gil, &b->key, ns, b->first, &lost_gil);
			/* Timed out: its wait goes on with its next block. */
			b->ended = b->interval && ns >= b->interval - b->interval / 8 ? now : 0;
		}
	}
	if (!btf_args)
		return 0;
	prev_tgid = TP_FIELD(prev, tgid);
	if (!is_target(prev_tgid))
		return 0;
	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		return 0;
	/* The saved syscall number first: a load, where the rest are map
	 * lookups, and most of a target's departures are in other syscalls. */
	regs = (struct pt_regs *)bpf_task_pt_regs(prev);
	if (regs->orig_ax != SYS_FUTEX)
		return 0;
	prev_tid = TP_FIELD(prev, pid);
	if (!in_span(prev_tid) || !bpf_map_lookup_elem(&gil_by_blocks, &prev_tgid))
		return 0;
	l = gil_cond_wait(prev_tgid, regs);
	if (l)
		gil_block_begins(prev_tgid, prev_tid, l, bpf_ktime_get_ns(), loops);
	return 0;
}

TP_WALK(sched_switch, gil_switch, on_gil_switch(prev, next, loops, btf_args), bool preempt,
	struct task_struct *prev, struct task_struct *next)

TP_WALK(sys_enter, gil_futex_enter, on_futex_enter(regs, id, loops), struct pt_regs *regs, long id)

TP_WALK(sys_exit, gil_futex_exit, on_futex_exit(ret, loops), struct pt_regs *regs, long ret)

/* Puts the key and value types in the skeleton's types. */
struct gil_key _gil_key = {};
struct gil_switch_block _gil_switch_block = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
