// SPDX-License-Identifier: MIT
/*
 * The off-CPU and wake-up views: at sched_switch a target thread that
 * leaves the CPU notes its Python stack and the time; when it comes back,
 * the time it was away is counted under that stack and its kernel stack,
 * and under the thread that woke it (sched_waking, sched_wakeup_new) with
 * that thread's Python stack. A return the kernel did not report is
 * counted at the thread's next departure, ending at its last wake-up.
 * Each tracepoint has a tp_btf and a raw_tp program; userspace loads the
 * kind the kernel offers.
 *
 * What it costs is the stacks, and most waits are microseconds long. A
 * wait of L ns shorter than `sample_below_ns` (τ) is kept with
 * probability 1/k, k = floor(τ/L), and then counts as k such waits: the
 * expected time, count and histogram of every stack are the true ones,
 * and a wait of τ/2 or more is always kept, whole. The kernel stack is
 * taken only for kept waits: as the thread comes back, with
 * bpf_get_task_stack on its saved stack, which leaves out the scheduler's
 * own functions (those marked __sched: schedule, do_nanosleep, ...); on
 * raw_tp, whose plain task pointers cannot be passed to it, it is taken
 * at departure. The waker's Python stack is taken only for wake-ups kept
 * the same way, by the time the wakee had waited when it was woken.
 *
 * τ = 0 keeps every wait, each kernel stack taken whole at departure.
 * Waits noted by userspace (open when an attach began) have no departure
 * stack: theirs is taken at the return either way.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "pyframe.bpf.h"
#include "sched_counts.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* A target thread's departure (ts 0: it is on the CPU); those left at
 * the end are waits still open, which userspace counts up to the end. */
struct switch_out {
	__u64 ts;
	__u64 pystack;
	__s32 kstack;
	__u32 tgid;
};

/*
 * Target threads by tid, and whether each is off the CPU now. Like the
 * next two maps, a thread's entry is made once and then rewritten in
 * place, never deleted: an update or a delete takes locks that a lookup
 * does not. LRU, since threads come and go.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct switch_out);
} off_now SEC(".maps");

/* The last waker of each target thread that is off the CPU, by tid
 * (weight 0: none). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct waker);
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

/* τ of the sampling above; 0 keeps every wait. */
const volatile __u64 sample_below_ns = 0;

/* A kernel stack taken as its thread comes back, leaf first, 0 after its
 * end. */
struct kstack_ips {
	__u64 ips[KSTACK_DEPTH];
};

/* Kernel stacks taken at the return, by their hash. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct kstack_ips);
} kstacks_back SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kstack_ips);
} kstack_scratch SEC(".maps");

/* A waker noted for its wakee, and the wakes it stands for. */
struct waker {
	struct wakeup_key key;
	__u64 weight;
};

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
/* Waits shorter than τ, and those of them kept (the rest are counted by
 * the kept ones' weights). */
__u64 short_waits = 0;
__u64 short_waits_kept = 0;

/* Adds `ns` and `count` to the time_value at `key` in `map`. */
static __always_inline void add_time(void *map, const void *key, __u64 ns, __u64 count,
				     __u64 *lost)
{
	struct time_value *v = bpf_map_lookup_elem(map, key);
	struct time_value init = { .ns = ns, .count = count };

	if (v) {
		__sync_fetch_and_add(&v->ns, ns);
		__sync_fetch_and_add(&v->count, count);
	} else if (bpf_map_update_elem(map, key, &init, BPF_NOEXIST)) {
		/* Lost a race to create it, or the map is full. */
		v = bpf_map_lookup_elem(map, key);
		if (v) {
			__sync_fetch_and_add(&v->ns, ns);
			__sync_fetch_and_add(&v->count, count);
		} else {
			__sync_fetch_and_add(lost, 1);
		}
	}
}

/* Thread `t`'s kernel stack as it was when it left (it is not running):
 * stored in kstacks_back; returns its hash, or 0. */
static __always_inline __u64 kstack_back(struct task_struct *t)
{
	__u32 zero = 0;
	struct kstack_ips *k = bpf_map_lookup_elem(&kstack_scratch, &zero);
	__u64 h = 0xcbf29ce484222325ULL;
	long n;

	if (!k)
		return 0;
	n = bpf_get_task_stack(t, k->ips, sizeof(k->ips), 0);
	if (n <= 0)
		return 0;
	n /= 8;
	for (__u32 i = 0; i < KSTACK_DEPTH; i++) {
		if (i >= n)
			break;
		h = (h ^ k->ips[i]) * 0x100000001b3ULL;
	}
	if (h == 0)
		h = 1;
	if (put_once(&kstacks_back, &h, k) < 0) {
		pystack_error(PYSTACK_ERR_KSTACK); /* the map is full */
		return 0;
	}
	return h;
}

/* Thread `tid` of `tgid`, which left as `out` says, was away `ns`:
 * counts it as `weight` waits (0: not at all; see sample_weight) with the
 * kernel stack `kback` if it has none from its departure, joins it to its
 * waker, and forgets the departure. */
static __always_inline void count_return(__u32 tgid, __u32 tid, struct switch_out *out, __u64 ns,
					 __u64 weight, __u64 kback)
{
	struct offcpu_key key = {};
	struct waker *w;

	if (weight) {
		key.tgid = tgid;
		key.tid = tid;
		key.pystack = out->pystack;
		key.kstack = out->kstack;
		key.kstack_back = kback;
		add_time_weighted(&offcpu, &key, ns, weight, &lost_offcpu);
	}
	w = bpf_map_lookup_elem(&wakers, &tid);
	if (w && w->weight) {
		w->key.pystack = out->pystack;
		__sync_fetch_and_add(&wakeups_joined, 1);
		add_time(&wakeups, &w->key, ns * w->weight, w->weight, &lost_wakeups);
		w->weight = 0;
	}
	out->ts = 0;
}

/* Forgets thread `tid`'s waker. */
static __always_inline void forget_waker(__u32 tid)
{
	struct waker *w = bpf_map_lookup_elem(&wakers, &tid);

	if (w)
		w->weight = 0;
}

static __always_inline int on_switch(void *ctx, struct task_struct *prev, struct task_struct *next,
				     const int loops, const int btf_args)
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
		struct switch_out out = { .tgid = prev_tgid };

		if (unseen && unseen->ts) {
			/* It came back unseen: its wait ended when it was woken. */
			__u64 *woke = bpf_map_lookup_elem(&woken_at, &prev_tid);

			if (woke && *woke > unseen->ts && *woke <= now) {
				__u64 ns = *woke - unseen->ts;

				__sync_fetch_and_add(&returns_unreported, 1);
				count_return(prev_tgid, prev_tid, unseen, ns,
					     sample_weight(ns, sample_below_ns), 0);
			} else {
				/* Preempted, not woken: when it came back is unknown. */
				__sync_fetch_and_add(&lost_offcpu, 1);
				forget_waker(prev_tid);
			}
		}
		__sync_fetch_and_add(&switches, 1);
		out.pystack = py_stack_id(prev_tgid, prev_tid, loops);
		out.kstack = btf_args && sample_below_ns ? KSTACK_NONE : kernel_stack_id(ctx);
		out.ts = now;
		if (unseen)
			*unseen = out;
		else if (bpf_map_update_elem(&off_now, &prev_tid, &out, BPF_ANY))
			__sync_fetch_and_add(&lost_offcpu, 1);
	}

	/* A target thread comes back: count the time it was away. */
	if (next_ours) {
		struct switch_out *out = bpf_map_lookup_elem(&off_now, &next_tid);

		__u64 ns, weight, kback = 0;

		if (!out || !out->ts)
			return 0; /* it left before the recording began */
		ns = now - out->ts;
		weight = sample_weight_counted(ns, sample_below_ns, &short_waits,
					       &short_waits_kept);
		if (btf_args && weight && out->kstack == KSTACK_NONE)
			kback = kstack_back(next);
		count_return(next_tgid, next_tid, out, ns, weight, kback);
	}
	return 0;
}

/* The waker is current; note it for the wakee. */
static __always_inline int on_wakeup(struct task_struct *p, const int loops)
{
	__u32 tgid = BPF_CORE_READ(p, tgid), tid = BPF_CORE_READ(p, pid);
	__u64 id = bpf_get_current_pid_tgid();
	struct switch_out *out;
	struct waker w = {}, *known;
	__u64 now, *woke;

	if (!is_target(tgid))
		return 0;
	now = bpf_ktime_get_ns();
	woke = bpf_map_lookup_elem(&woken_at, &tid);
	if (woke)
		*woke = now;
	else
		bpf_map_update_elem(&woken_at, &tid, &now, BPF_ANY);
	if (!wakeup_view)
		return 0;
	/* Kept by the time waited so far (a wake-up of a thread not known to
	 * be off the CPU is never joined to a wait: kept as it costs nothing). */
	out = bpf_map_lookup_elem(&off_now, &tid);
	w.weight = out && out->ts && now > out->ts ? sample_weight(now - out->ts, sample_below_ns) : 1;
	known = bpf_map_lookup_elem(&wakers, &tid);
	if (!w.weight) {
		if (known)
			known->weight = 0;
		return 0;
	}
	w.key.tgid = tgid;
	w.key.tid = tid;
	w.key.waker_tgid = id >> 32;
	w.key.waker_tid = (__u32)id;
	if (is_target(w.key.waker_tgid))
		w.key.waker_pystack = py_stack_id(w.key.waker_tgid, w.key.waker_tid, loops);
	bpf_get_current_comm(w.key.waker_comm, sizeof(w.key.waker_comm));
	if (known)
		*known = w;
	else if (bpf_map_update_elem(&wakers, &tid, &w, BPF_ANY))
		__sync_fetch_and_add(&lost_wakeups, 1);
	return 0;
}

TP_WALK(sched_switch, switch, on_switch(ctx, prev, next, loops, btf_args),
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
struct waker _waker = {};
struct time_value _time_value = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct comm_value _comm_value = {};
