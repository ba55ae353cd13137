/* SPDX-License-Identifier: MIT */
/* What bpf/trace.bpf.c sends to `pyusdt-prof trace`: what crosses the
 * boundary. */
#ifndef PYUSDT_TRACE_EVENTS_H
#define PYUSDT_TRACE_EVENTS_H

/* Arguments read per probe hit (USDT's own limit) and bytes kept of each
 * string argument, its NUL included. */
#define TRACE_MAX_ARGS 12
#define TRACE_STR_LEN 128
/* Probes one trace attaches to (each has its settings by cookie). */
#define TRACE_MAX_PROBES 1024
/* Syscall numbers that can be chosen one by one. */
#define TRACE_MAX_SYSCALLS 512

enum trace_kind {
	TRACE_PROBE = 1,
	TRACE_SYSCALL = 2,
};

/* How to read the arguments of the probe whose attach cookie indexes it. */
struct probe_conf {
	__u32 nargs;	/* arguments to read */
	__u32 str_mask; /* bit i: argument i is a `const char *` */
};

/* What every record starts with; a syscall's is only this. */
struct trace_head {
	__u64 ts;	   /* bpf_ktime_get_ns() at the hit, or at syscall entry */
	__u64 pystack;	   /* the thread's Python stack (pystacks), or 0 */
	__u64 duration_ns; /* syscalls: entry to exit */
	__s64 ret;	   /* syscalls: the return value */
	__s64 nr;	   /* syscalls: the number */
	__u32 pid;
	__u32 tid;
	__u32 kind;	   /* enum trace_kind */
	__u32 probe;	   /* probes: the attach cookie */
	__u32 nargs;	   /* arguments read */
	__u32 str_mask;	   /* as in probe_conf */
	__u32 err_mask;	   /* bit i: argument i could not be read */
	__u32 reserved;
	char comm[16];	   /* the thread's name */
};

/* A probe hit's record: sent only as long as its strings (the text of
 * each string argument, str_len[i] bytes without its NUL, one after the
 * other from strs). */
struct trace_record {
	struct trace_head head;
	__s64 args[TRACE_MAX_ARGS];   /* integer arguments (and string pointers) */
	__u32 str_len[TRACE_MAX_ARGS]; /* bytes of each string argument, NUL excluded */
	char strs[TRACE_MAX_ARGS * TRACE_STR_LEN];
};

#endif /* PYUSDT_TRACE_EVENTS_H */
