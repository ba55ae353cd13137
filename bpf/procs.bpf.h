/* SPDX-License-Identifier: MIT */
/*
 * Which processes a recording covers, and the layout each announced. Every
 * BPF object of a recording includes this; userspace makes them share one
 * `targets` and one `layouts` map (the recorder's procs object owns them),
 * so that a process that bpf/procs.bpf.c adds on fork is recorded by every
 * view at once.
 */
#ifndef PYUSDT_PROCS_BPF_H
#define PYUSDT_PROCS_BPF_H

#include "pyusdt_layout.h"

/* Processes recorded, most of them; one recording follows at most this
 * many processes at a time. */
#define MAX_TARGETS 16384

/* The process the recording started with; set before load. */
const volatile __u32 target_tgid = 0;
/* Whether children are followed: then `targets` says which processes are
 * recorded, else only target_tgid is. */
const volatile __u8 follow = 0;
/* `record --lines`: walks note each frame's instruction, and code objects'
 * line tables are read at first sight. */
const volatile __u8 with_lines = 0;

/* Recorded processes by tgid (value: the parent's tgid, 0 for the first). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u32);
} targets SEC(".maps");

/* The layout of each recorded process, by tgid: userspace puts the one a
 * process announced through pyusdt:layout; a fork inherits its parent's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct pyusdt_layout);
} layouts SEC(".maps");

/* A thread waiting for the GIL: since when, and the Python stack it
 * waits at (bpf/gil.bpf.c writes it; the CPU sampler reads it to tell a
 * sample spent waiting for the GIL from one spent running). */
struct gil_wait {
	__u64 ts;
	__u64 pystack;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct gil_wait);
} gil_waits SEC(".maps");

/* `record --span NAME`: only what a thread does inside span NAME is
 * recorded; bpf/span.bpf.c keeps each thread's place in it here. */
const volatile __u8 span_only = 0;

/* A thread and span NAME: how deep inside it is (the span nested in
 * itself; 0 outside), and since when (its outermost entry). */
struct span_state {
	__u64 start_ns;
	__u32 depth;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct span_state);
} span_threads SEC(".maps");

/* Whether thread `tid` is to be recorded now: always, unless --span says
 * only inside the span. */
static __always_inline int in_span(__u32 tid)
{
	struct span_state *s;

	if (!span_only)
		return 1;
	s = bpf_map_lookup_elem(&span_threads, &tid);
	return s && s->depth;
}

/* x86_64's uretprobe and uprobe syscalls: the kernel's own way into a
 * uprobe handler (its optimized uprobes, 6.18+, call a trampoline that
 * makes them), not the program's. */
static __always_inline int is_uprobe_syscall(long nr)
{
	return nr == 335 || nr == 336;
}

/* Whether process `tgid` is recorded. Without --subprocesses this is one
 * comparison, the cost every event outside the target pays. */
static __always_inline int is_target(__u32 tgid)
{
	if (tgid == target_tgid)
		return 1;
	return follow && bpf_map_lookup_elem(&targets, &tgid);
}

#endif /* PYUSDT_PROCS_BPF_H */
