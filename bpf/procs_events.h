/* SPDX-License-Identifier: MIT */
/* What bpf/procs.bpf.c tells userspace about the processes it follows. */
#ifndef PYUSDT_PROCS_EVENTS_H
#define PYUSDT_PROCS_EVENTS_H

#include "pystack.h"

enum follow_event_kind {
	PROC_FORK = 1, /* a recorded process made a new one: now recorded */
	PROC_EXEC = 2, /* a recorded process runs a new program: its layout is gone */
	PROC_EXIT = 3, /* the last thread of a recorded process ended */
};

struct follow_event {
	__u32 kind;
	__u32 pid;
	__u32 ppid; /* PROC_FORK: the parent */
	__u32 reserved;
	__u64 ts;
	char comm[COMM_LEN];
};

#endif /* PYUSDT_PROCS_EVENTS_H */
