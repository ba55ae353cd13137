// SPDX-License-Identifier: MIT
/*
 * Receives the layout a pyusdt process announces through
 * pyusdt:layout(address, size): copies the struct out of the target and
 * hands it to userspace. The recorder keeps it per process; `pyusdt-prof
 * layout` prints it.
 *
 * And the Python names of a process's threads, which it tells through
 * pyusdt:thread(tid, name) while the recorder listens: kept by thread id
 * in py_thread_names, the last name told for each.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>

#include "layout.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} layout_events SEC(".maps");

/* Announcements lost because the ring buffer was full. */
__u64 lost_layouts = 0;

/* Python thread names, by kernel thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PY_THREAD_NAMES);
	__type(key, __u32);
	__type(value, struct py_thread_name);
} py_thread_names SEC(".maps");

/* Puts the event and name types in the skeleton's types. */
struct layout_event _layout_event = {};
struct py_thread_name _py_thread_name = {};

SEC("usdt")
int BPF_USDT(on_layout, void *address, __u64 size)
{
	struct layout_event *e;

	e = bpf_ringbuf_reserve(&layout_events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&lost_layouts, 1);
		return 0;
	}
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->announced_size = size;
	/* Copy what both sides know; a size mismatch is userspace's to report. */
	e->read_error = bpf_probe_read_user(&e->layout, sizeof(e->layout), address);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("usdt")
int BPF_USDT(on_thread, __s64 tid, const char *name)
{
	struct py_thread_name n = {};
	__u32 key = (__u32)tid;
	long len;

	n.tgid = bpf_get_current_pid_tgid() >> 32;
	len = bpf_probe_read_user_str(n.name, sizeof(n.name), name);
	if (len <= 0)
		return 0;
	n.len = len - 1;
	bpf_map_update_elem(&py_thread_names, &key, &n, BPF_ANY);
	return 0;
}
