/* SPDX-License-Identifier: MIT */
/* What bpf/sched.bpf.c counts: what crosses the boundary. */
#ifndef PYUSDT_SCHED_H
#define PYUSDT_SCHED_H

#include "pystack.h"

#define SCHED_COMM_LEN 16

/* Time a thread spent off the CPU, by where it was when it left. */
struct offcpu_key {
	__u32 tgid;
	__u32 tid;
	__u64 pystack; /* the thread's Python stack at switch-out */
	__s32 kstack;  /* its kernel stack at switch-out, id in `kstacks` */
	__u32 reserved;
	/* Or, taken as it came back (tp_btf): its hash in `kstacks_back`;
	 * 0: none. */
	__u64 kstack_back;
};

/* Time a thread waited, by who woke it and where the waker was. */
struct wakeup_key {
	__u32 tgid;
	__u32 tid;
	__u64 pystack;	      /* the wakee's Python stack at switch-out */
	__u32 waker_tgid;     /* 0 for an interrupt or the idle task */
	__u32 waker_tid;
	__u64 waker_pystack;  /* PYSTACK_NONE unless the waker is the target */
	char waker_comm[SCHED_COMM_LEN];
};

struct time_value {
	__u64 ns;
	__u64 count;
};

#endif /* PYUSDT_SCHED_H */
