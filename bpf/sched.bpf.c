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
 *
 * Without kprobes, where the kernel can say which syscall a thread leaving
 * is in (tp_btf and bpf_task_pt_regs) and the recording asks for it
 * (walk_at_sys_exit), a departure inside a syscall notes only its time
 * too, and the stacks of its wait, if kept as the thread comes back, are
 * read at the syscall's exit (`sys_back`, raw_syscalls sys_exit), in the
 * thread, before it runs its own code. A departure outside a syscall (a
 * preemption in user mode, a page fault) is read as it leaves. The kernel
 * stack is still taken at the return, from the saved stack. Every syscall
 * of the machine then runs sys_back, which looks at one byte (late_marks)
 * for most of them.
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

/* A wait counted once its Python stack is read (walk_at_sys_exit): how
 * long it was, the waits it stands for (0: none), its kernel stack taken
 * as it came back, and its waker. */
struct late_wait {
	__u64 ns;
	__u64 weight;
	__u64 kback;
	struct waker waker;
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
	/* The departure in `out` was made inside a syscall, its stacks left
	 * to be read as the syscall exits (walk_at_sys_exit). */
	__u64 in_syscall;
	/* A wait of such a departure, kept as its thread came back, counted
	 * as the syscall exits, when its Python stack is read. */
	struct late_wait late;
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

/* An empty entry, never written: not on the BPF stack (its 224 bytes
 * would be there, with sched_switch's own). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sched_thread);
} sched_thread_empty SEC(".maps");

/* Makes thread `tid`'s entry, empty, at its first event, unless the
 * other kind of event made it meanwhile (a departure and a wake-up of the
 * thread may race; each then writes only its own fields); returns it, or
 * NULL. */
static __always_inline struct sched_thread *sched_thread_make(__u32 tid)
{
	__u32 zero = 0;
	struct sched_thread *empty = bpf_map_lookup_elem(&sched_thread_empty, &zero);

	if (!empty)
		return NULL;
	bpf_map_update_elem(&sched_threads, &tid, empty, BPF_NOEXIST);
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

/* Whether a departure inside a syscall leaves its stacks to the
 * syscall's exit, `sys_back` (tp_btf and bpf_task_pt_regs; see there). */
const volatile __u8 walk_at_sys_exit = 0;

/*
 * A byte per thread id, 64 to an entry: set while the thread's departure
 * is noted as made inside a syscall, or a wait of it is left to the
 * syscall's exit (walk_at_sys_exit); what sys_back looks at first, so
 * that the syscalls with nothing to do there (most) cost an array's
 * lookup, not a hash's. Userspace sizes it to pid_max; a thread id past
 * its end is never left to the syscall's exit.
 */
struct late_marks {
	__u8 tid[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4194304 / 64);
	__type(key, __u32);
	__type(value, struct late_marks);
} late_marks SEC(".maps");

/* Thread `tid`'s mark, or NULL past the map's end. */
static __always_inline __u8 *late_mark(__u32 tid)
{
	__u32 k = tid / 64;
	struct late_marks *m = bpf_map_lookup_elem(&late_marks, &k);

	return m ? &m->tid[tid % 64] : NULL;
}

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
 * next departure (see woken_at); and those with no wake-up after the
 * departure to end the wait at (a thread preempted, which no one wakes),
 * not counted: when they came back is unknown. */
__u64 returns_unreported = 0;
__u64 returns_unknown = 0;
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

/* Counts a wait of thread `tid` of `tgid` of `ns`, as `weight` waits (0:
 * not at all; see sample_weight), under the Python stack `pystack` and the
 * kernel stack `kstack` from the departure or `kback` from the return,
 * and joins it to its waker `w`, if kept. */
static __always_inline void count_wait(__u32 tgid, __u32 tid, __u64 pystack, __s32 kstack,
				       __u64 kback, __u64 ns, __u64 weight, struct waker *w)
{
	struct offcpu_key key = {};

	if (weight) {
		key.tgid = tgid;
		key.tid = tid;
		key.pystack = pystack;
		key.kstack = kstack;
		key.kstack_back = kback;
		add_time_weighted(&offcpu, &key, ns, weight, &lost_offcpu);
	}
	if (w->weight) {
		w->key.pystack = pystack;
		__sync_fetch_and_add(&wakeups_joined, 1);
		add_time(&wakeups, &w->key, ns * w->weight, w->weight, &lost_wakeups);
		w->weight = 0;
	}
}

/* Thread `tid` of `tgid`, whose entry is `t`, was away `ns` since the
 * departure `t->out`: counts it (see count_wait) with the kernel stack
 * `kback` if it has none from its departure, and forgets the departure. */
static __always_inline void count_return(__u32 tgid, __u32 tid, struct sched_thread *t, __u64 ns,
					 __u64 weight, __u64 kback)
{
	count_wait(tgid, tid, t->out.pystack, t->out.kstack, kback, ns, weight, &t->waker);
	t->out.ts = 0;
}

/* Thread `tid` of `tgid`, whose entry is `t`, is running at `now` though
 * its last departure is still noted: it came back unseen, and its wait
 * ended when it was woken. */
static __always_inline void count_unreported(__u32 tgid, __u32 tid, struct sched_thread *t,
					     __u64 now)
{
	__u64 woke = t->woken_at, ns;

	if (woke > t->out.ts && woke <= now) {
		ns = woke - t->out.ts;
		__sync_fetch_and_add(&returns_unreported, 1);
		count_return(tgid, tid, t, ns, sample_weight(ns, sample_below_ns), 0);
	} else {
		/* Preempted, not woken: when it came back is unknown. */
		__sync_fetch_and_add(&returns_unknown, 1);
		t->waker.weight = 0;
		t->out.ts = 0;
	}
}

/* Counts thread `tid`'s late wait, if any, under `pystack`. */
static __always_inline void count_late(__u32 tgid, __u32 tid, struct sched_thread *t,
				       __u64 pystack)
{
	struct late_wait *lw = &t->late;

	count_wait(tgid, tid, pystack, KSTACK_NONE, lw->kback, lw->ns, lw->weight, &lw->waker);
	lw->weight = 0;
}

/* From the kernel's sched.h (defines are not in BTF). */
#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000

/* Whether thread `t` (not running) left inside a syscall, and is a user
 * thread, whose syscall's exit `sys_back` sees before the thread runs its
 * own code again. x86's entry code leaves the syscall's number in the
 * saved orig_ax, and -1 for an interrupt or an exception (the kernel's own
 * test for a syscall to restart, syscall_get_nr). */
static __always_inline int left_in_syscall(struct task_struct *t, const int btf_args)
{
	struct pt_regs *regs;

	if (!btf_args || !walk_at_sys_exit ||
	    !bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		return 0;
	if (t->flags & (PF_KTHREAD | PF_IO_WORKER))
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(t);
	return (long)regs->orig_ax >= 0;
}

static __always_inline int on_switch(void *ctx, struct task_struct *prev, struct task_struct *next,
				     const int loops, const int btf_args)
{
	__u32 prev_tgid = TP_FIELD(prev, tgid), prev_tid = TP_FIELD(prev, pid);
	__u32 next_tgid = TP_FIELD(next, tgid), next_tid = TP_FIELD(next, pid);
	/* A thread leaving counts only inside the span (with --span); one
	 * coming back counts if it left inside it (its entry says). */
	int prev_ours = is_target(prev_tgid) && in_span(prev_tid), next_ours = is_target(next_tgid);
	__u64 now, pystack = PYSTACK_NONE;
	__u8 *mark;
	int walked = 0;

	if (!prev_ours && !next_ours)
		return 0;
	now = bpf_ktime_get_ns();

	/* A target thread leaves: note where it is (it is still current). */
	if (prev_ours) {
		struct sched_thread *t = bpf_map_lookup_elem(&sched_threads, &prev_tid);

		/* Left inside a syscall and back, and leaving again with no exit
		 * from it between (sys_back would have seen one): still in that
		 * syscall, with the stack it first left with. A late wait is
		 * counted under it now, and this departure has it too. */
		if (walk_at_sys_exit && t &&
		    (t->late.weight || t->late.waker.weight || (t->out.ts && t->in_syscall))) {
			pystack = py_stack_id(prev_tgid, prev_tid, loops);
			walked = 1;
			count_late(prev_tgid, prev_tid, t, pystack);
			if (t->out.ts && t->in_syscall)
				t->out.pystack = pystack;
		}
		if (t && t->out.ts)
			count_unreported(prev_tgid, prev_tid, t, now);
		__sync_fetch_and_add(&switches, 1);
		/* A thread that has exited (its Python thread state is gone)
		 * leaves for good: nothing of its departure would count. Its
		 * process, if it is the launched one, may stay a zombie until
		 * the recording ends, and its departure would have counted as
		 * a wait open until then. */
		if (TP_FIELD(prev, exit_state))
			goto back;
		if (!t)
			t = sched_thread_make(prev_tid);
		if (!t) {
			__sync_fetch_and_add(&lost_offcpu, 1);
			goto back;
		}
		t->out.tgid = prev_tgid;
		t->in_syscall = 0;
		if (walk_at_return) {
			t->out.pystack = PYSTACK_NONE;
			t->out.kstack = KSTACK_NONE;
		} else if (walked) {
			t->out.pystack = pystack;
			t->out.kstack = KSTACK_NONE;
		} else if (sample_below_ns && left_in_syscall(prev, btf_args) &&
			   (mark = late_mark(prev_tid))) {
			t->out.pystack = PYSTACK_NONE;
			t->out.kstack = KSTACK_NONE;
			t->in_syscall = 1;
			*mark = 1;
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
		if (walk_at_sys_exit && t->in_syscall) {
			if (weight || t->waker.weight) {
				/* Its Python stack is read as the syscall exits. */
				t->late.ns = ns;
				t->late.weight = weight;
				t->late.kback = kback;
				t->late.waker = t->waker;
				t->waker.weight = 0;
				t->out.ts = 0;
				return 0;
			}
			/* Nothing is left to the syscall's exit. */
			mark = late_mark(next_tid);
			if (mark)
				*mark = 0;
		}
		count_return(next_tgid, next_tid, t, ns, weight, kback);
	}
	return 0;
}

/*
 * The syscall exit of a target thread (tp_btf, with walk_at_sys_exit),
 * which is current: the first point where its memory is mapped after a
 * departure inside the syscall, and before it runs its own code, so its
 * Python stack is still the one it left with, frame for frame. It is read
 * here, only for the waits kept as the thread came back (the time away
 * decides), where sched_switch would read it at every departure; and for
 * a departure whose return the kernel did not report (the thread is back,
 * or it would not be here), counted here.
 */
static __always_inline int on_sys_back(const int loops)
{
	__u64 id = bpf_get_current_pid_tgid(), pystack;
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct sched_thread *t;
	int unreported;
	__u8 *mark;

	if (!is_target(tgid))
		return 0;
	mark = late_mark(tid);
	if (!mark || !*mark)
		return 0;
	*mark = 0;
	t = bpf_map_lookup_elem(&sched_threads, &tid);
	if (!t)
		return 0;
	unreported = t->out.ts && t->in_syscall;
	if (!unreported && !t->late.weight && !t->late.waker.weight)
		return 0;
	pystack = py_stack_id(tgid, tid, loops);
	count_late(tgid, tid, t, pystack);
	if (unreported) {
		t->out.pystack = pystack;
		count_unreported(tgid, tid, t, bpf_ktime_get_ns());
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
static __always_inline int on_wakeup(struct task_struct *p, const int loops, const int btf_args)
{
	__u32 tgid = TP_FIELD(p, tgid), tid;
	struct sched_thread *t;
	struct waker w = {};
	__u64 id, now, left;

	/* Every wake-up of the machine runs this: the rest waits for a
	 * target's thread. */
	if (!is_target(tgid))
		return 0;
	tid = TP_FIELD(p, pid);
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
	id = bpf_get_current_pid_tgid();
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
TP_WALK(sched_waking, wakeup, on_wakeup(p, loops, btf_args), struct task_struct *p)

TP_WALK(sys_exit, sys_back, on_sys_back(loops), struct pt_regs *regs, long ret)

TP_WALK(sched_wakeup_new, wakeup_new, on_wakeup(p, loops, btf_args), struct task_struct *p)

/* Puts the key and value types in the skeleton's types. */
struct offcpu_key _offcpu_key = {};
struct sched_thread _sched_thread = {};
struct wakeup_key _wakeup_key = {};
struct time_value _time_value = {};
struct time_hist _time_hist = {};
struct pystack _pystack = {};
struct code_name _code_name = {};
