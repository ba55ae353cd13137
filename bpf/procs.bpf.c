// SPDX-License-Identifier: MIT
/*
 * `record --subprocesses`: follows the recorded processes' children. A
 * child made by fork is recorded from its first instruction, with its
 * parent's layout (a fork copies the address space, so every address in it
 * still holds). A recorded process that execs another program loses its
 * layout until the new program announces one. Userspace hears of each
 * fork, exec and exit through a ring buffer, to name the processes and to
 * ask an exec'd Python for its layout.
 *
 * It also notes the name of every recorded thread that exits (`comms`),
 * whether or not children are followed.
 *
 * This object owns `targets` and `layouts`; every view's object shares
 * them.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "procs.bpf.h"
#include "procs_events.h"
#include "pystack.h"
#include "tp_twin.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} follow_events SEC(".maps");

/*
 * Thread id -> its name, noted as it exits (sched_process_exit runs in
 * the thread): its last name, which a thread that renames itself took
 * last. Threads alive at the end are named from /proc. The recorder moves
 * the names out once a second, so that a program that starts a thread per
 * request does not fill it. One note per thread, where the walkers used to
 * note the name at every walk (a lookup, and the name read, in each).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct comm_value);
} comms SEC(".maps");

/* Processes followed, and what could not be: a child not recorded because
 * `targets` was full, events userspace did not hear of. */
__u64 forks = 0;
__u64 lost_children = 0;
__u64 lost_events = 0;

static __always_inline void tell(__u32 kind, __u32 pid, __u32 ppid)
{
	struct follow_event *e = bpf_ringbuf_reserve(&follow_events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	e->kind = kind;
	e->pid = pid;
	e->ppid = ppid;
	e->reserved = 0;
	e->ts = bpf_ktime_get_ns();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ppid = BPF_CORE_READ(parent, tgid), pid = BPF_CORE_READ(child, tgid);
	struct pyusdt_layout *l;

	/* A new thread is in its process already. */
	if (pid == ppid || !bpf_map_lookup_elem(&targets, &ppid))
		return 0;
	if (bpf_map_update_elem(&targets, &pid, &ppid, BPF_ANY)) {
		__sync_fetch_and_add(&lost_children, 1);
		return 0;
	}
	__sync_fetch_and_add(&forks, 1);
	l = bpf_map_lookup_elem(&layouts, &ppid);
	if (l)
		bpf_map_update_elem(&layouts, &pid, l, BPF_ANY);
	tell(PROC_FORK, pid, ppid);
	return 0;
}

static __always_inline int on_exec(struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, tgid);

	if (!bpf_map_lookup_elem(&targets, &pid))
		return 0;
	bpf_map_delete_elem(&layouts, &pid);
	tell(PROC_EXEC, pid, 0);
	return 0;
}

static __always_inline int on_exit(struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, tgid), tid = BPF_CORE_READ(p, pid);
	struct comm_value c;

	if (!is_target(pid))
		return 0;
	/* Every thread's name, Python's or not: pyusdt's poll thread is
	 * known by it, even in a child that exits before /proc is read. */
	bpf_get_current_comm(c.comm, sizeof(c.comm));
	bpf_map_update_elem(&comms, &tid, &c, BPF_ANY);
	/* Once per process: the thread whose exit ends the thread group. */
	if (!follow || BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	/* The pid may be reused by a process this recording must not see. */
	bpf_map_delete_elem(&targets, &pid);
	bpf_map_delete_elem(&layouts, &pid);
	tell(PROC_EXIT, pid, 0);
	return 0;
}

TP_TWIN(sched_process_fork, fork, on_fork(parent, child),
	struct task_struct *parent, struct task_struct *child)

TP_TWIN(sched_process_exec, exec, on_exec(p), struct task_struct *p)

TP_TWIN(sched_process_exit, task_exit, on_exit(p), struct task_struct *p)

/* Puts the event type in the skeleton's types. */
struct follow_event _follow_event = {};
enum follow_event_kind _follow_event_kind = PROC_FORK;

/* The types every walker's maps hold (bpf/pystack.h), in this skeleton's
 * types too: the procs object is in every recording, and userspace
 * decodes every object's stacks, names and histograms with them. */
struct pystack _pystack = {};
struct code_name _code_name = {};
struct code_key _code_key = {};
struct code_lines _code_lines = {};
struct comm_value _comm_value = {};
struct time_hist _time_hist = {};
