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
 *
 * Where the kernel has kprobes, the stacks are read later and less often
 * (walk_at_return): sched_switch notes only the time of a departure, and
 * `back`, a kprobe on finish_task_switch, counts the return in the
 * returning thread, whose memory is mapped there (sched_switch runs in
 * the thread leaving). The thread has not run since it left, so its
 * Python and kernel stacks are still the ones it left with, frame for
 * frame; they are read there for the waits kept alone. Waits still open
 * at the end are read by userspace, from the process's memory.
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

/* A waker noted for its wakee, and the wakes it stands for (0: none). */
struct waker {
	struct wakeup_key key;
	__u64 weight;
};

/*
 * What the scheduler's events note of a target thread: its departure, when
 * it was last woken (sched_waking), and its last waker while it is off the
 * CPU. The kernel does not report every return to the CPU (on 6.18, about
 * one in 1600 sleeps' switch-in reaches no BPF program, ours or another
 * tool's): a thread that leaves while `out` still holds its last
 * departure came back unseen, and its wait is counted then, ending at
 * `woken_at`. Each field is written by the events that own it: the
 * departure and return by the thread's own switches, the wake-up by its
 * waker.
 */
struct sched_thread {
	struct switch_out out;
	__u64 woken_at;
	struct waker waker;
};

/*
 * Target threads by tid. A thread's entry is made at its first event and
 * then rewritten in place, never deleted: an update or a delete takes
 * locks that a lookup does not, and one entry is one lookup per event.
 * LRU, since threads come and go.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sched_thread);
} sched_threads SEC(".maps");

/* Makes thread `tid`'s entry, empty, at its first event, unless the
 * other kind of event made it meanwhile (a departure and a wake-up of the
 * thread may race; each then writes only its own fields); returns it, or
 * NULL. */
static __always_inline struct sched_thread *sched_thread_make(__u32 tid)
{
	struct sched_thread empty = {};

	bpf_map_update_elem(&sched_threads, &tid, &empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&sched_threads, &tid);
}

/* Whether the wakeup view is recorded (else sched_waking notes only the
 * time of the wake-up, for woken_at). */
const volatile __u8 wakeup_view = 0;

/* τ of the sampling above; 0 keeps every wait. */
const volatile __u64 sample_below_ns = 0;

/* Whether returns are counted by `back`, in the returning thread (see
 * there); else by sched_switch, which reads the stacks at every
 * departure. */
const volatile __u8 walk_at_return = 0;

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

/* Thread `tid` of `tgid`, whose entry is `t`, was away `ns` since the
 * departure `t->out`: counts it as `weight` waits (0: not at all; see
 * sample_weight) with the kernel stack `kback` if it has none from its
 * departure, joins it to its waker, and forgets the departure. */
static __always_inline void count_return(__u32 tgid, __u32 tid, struct sched_thread *t, __u64 ns,
					 __u64 weight, __u64 kback)
{
	struct switch_out *out = &t->out;
	struct waker *w = &t->waker;
	struct offcpu_key key = {};

	if (weight) {
		key.tgid = tgid;
		key.tid = tid;
		key.pystack = out->pystack;
		key.kstack = out->kstack;
		key.kstack_back = kback;
		add_time_weighted(&offcpu, &key, ns, weight, &lost_offcpu);
	}
	if (w->weight) {
		w->key.pystack = out->pystack;
		__sync_fetch_and_add(&wakeups_joined, 1);
		add_time(&wakeups, &w->key, ns * w->weight, w->weight, &lost_wakeups);
		w->weight = 0;
	}
	out->ts = 0;
}

static __always_inline int on_switch(void *ctx, struct task_struct *prev, struct task_struct *next,
				     const int loops, const int btf_args)
{
	__u32 prev_tgid = BPF_CORE_READ(prev, tgid), prev_tid = BPF_CORE_READ(prev, pid);
	__u32 next_tgid = BPF_CORE_READ(next, tgid), next_tid = BPF_CORE_READ(next, pid);
	/* A thread leaving counts only inside the span (with --span); one
	 * coming back counts if it left inside it (its entry says). */
	int prev_ours = is_target(prev_tgid) && in_span(prev_tid), next_ours = is_target(next_tgid);
	__u64 now;

	if (!prev_ours && !next_ours)
		return 0;
	now = bpf_ktime_get_ns();

	/* A target thread leaves: note where it is (it is still current). */
	if (prev_ours) {
		struct sched_thread *t = bpf_map_lookup_elem(&sched_threads, &prev_tid);

		if (t && t->out.ts) {
			/* It came back unseen: its wait ended when it was woken. */
			__u64 woke = t->woken_at;

			if (woke > t->out.ts && woke <= now) {
				__u64 ns = woke - t->out.ts;

				__sync_fetch_and_add(&returns_unreported, 1);
				count_return(prev_tgid, prev_tid, t, ns,
					     sample_weight(ns, sample_below_ns), 0);
			} else {
				/* Preempted, not woken: when it came back is unknown. */
				__sync_fetch_and_add(&lost_offcpu, 1);
				t->waker.weight = 0;
			}
		}
		__sync_fetch_and_add(&switches, 1);
		/* A thread that has exited (its Python thread state is gone)
		 * leaves for good: nothing of its departure would count. Its
		 * process, if it is the launched one, may stay a zombie until
		 * the recording ends, and its departure would have counted as
		 * a wait open until then. */
		if (BPF_CORE_READ(prev, exit_state))
			goto back;
		if (!t)
			t = sched_thread_make(prev_tid);
		if (!t) {
			__sync_fetch_and_add(&lost_offcpu, 1);
			goto back;
		}
		t->out.tgid = prev_tgid;
		if (walk_at_return) {
			t->out.pystack = PYSTACK_NONE;
			t->out.kstack = KSTACK_NONE;
		} else {
			t->out.pystack = py_stack_id(prev_tgid, prev_tid, loops);
			t->out.kstack = btf_args && sample_below_ns ? KSTACK_NONE :
								      kernel_stack_id(ctx);
		}
		t->out.ts = now;
	}

back:
	/* A target thread comes back: count the time it was away. */
	if (next_ours && !walk_at_return) {
		struct sched_thread *t = bpf_map_lookup_elem(&sched_threads, &next_tid);
		__u64 ns, weight, kback = 0;

		if (!t || !t->out.ts)
			return 0; /* it left before the recording began */
		ns = now - t->out.ts;
		weight = sample_weight_counted(ns, sample_below_ns, &short_waits,
					       &short_waits_kept);
		if (btf_args && weight && t->out.kstack == KSTACK_NONE)
			kback = kstack_back(next);
		count_return(next_tgid, next_tid, t, ns, weight, kback);
	}
	return 0;
}

/*
 * A target thread comes back, and is current: counts the time it was
 * away. Until it runs its own code again, its Python stack and its kernel
 * stack are the ones it left with, frame for frame, so they are read here
 * and only for the waits kept (the time away decides), where sched_switch
 * would read them at every departure. A wait noted by userspace at the
 * start has its Python stack already.
 */
static __always_inline int back_body(struct pt_regs *ctx, const int loops)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct sched_thread *t;
	__u64 ns, weight;

	if (!is_target(tgid))
		return 0;
	t = bpf_map_lookup_elem(&sched_threads, &tid);
	if (!t || !t->out.ts)
		return 0; /* it left before the recording began */
	ns = bpf_ktime_get_ns() - t->out.ts;
	weight = sample_weight_counted(ns, sample_below_ns, &short_waits, &short_waits_kept);
	if ((weight || t->waker.weight) && t->out.pystack == PYSTACK_NONE)
		t->out.pystack = py_stack_id(tgid, tid, loops);
	/* Past this probe's own frame: the stack sched_switch would take. */
	if (weight && t->out.kstack == KSTACK_NONE)
		t->out.kstack = kernel_stack_id_skip(ctx, 1);
	count_return(tgid, tid, t, ns, weight, 0);
	return 0;
}

/* finish_task_switch, as the kernel names it (userspace attaches it by
 * the name /proc/kallsyms gives, which may carry a suffix such as .isra.0):
 * the first function a thread runs when it is back on the CPU. */
WALK_TWIN("kprobe", back, struct pt_regs)

/* The waker is current; note it for the wakee. */
static __always_inline int on_wakeup(struct task_struct *p, const int loops)
{
	__u32 tgid = BPF_CORE_READ(p, tgid), tid = BPF_CORE_READ(p, pid);
	__u64 id = bpf_get_current_pid_tgid();
	struct sched_thread *t;
	struct waker w = {};
	__u64 now, left;

	if (!is_target(tgid))
		return 0;
	now = bpf_ktime_get_ns();
	t = bpf_map_lookup_elem(&sched_threads, &tid);
	if (!t)
		t = sched_thread_make(tid);
	if (!t)
		return 0;
	t->woken_at = now;
	if (!wakeup_view)
		return 0;
	/* Kept by the time waited so far (a wake-up of a thread not known to
	 * be off the CPU is never joined to a wait: kept as it costs nothing). */
	left = t->out.ts;
	w.weight = left && now > left ? sample_weight(now - left, sample_below_ns) : 1;
	if (!w.weight) {
		t->waker.weight = 0;
		return 0;
	}
	w.key.tgid = tgid;
	w.key.tid = tid;
	w.key.waker_tgid = id >> 32;
	w.key.waker_tid = (__u32)id;
	if (is_target(w.key.waker_tgid))
		w.key.waker_pystack = py_stack_id(w.key.waker_tgid, w.key.waker_tid, loops);
	bpf_get_current_comm(w.key.waker_comm, sizeof(w.key.waker_comm));
	t->waker = w;
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
struct sched_thread _sched_thread = {};
struct wakeup_key _wakeup_key = {};
struct time_value _time_value = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
struct comm_value _comm_value = {};
