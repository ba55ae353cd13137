/* SPDX-License-Identifier: MIT */
/* What bpf/cpu.bpf.c counts: what crosses the boundary. */
#ifndef PYUSDT_CPU_H
#define PYUSDT_CPU_H

#include "pystack.h"


/* The thread was inside the interpreter's take_gil (the gil view is
 * recorded): waiting for the GIL, not running its Python frame. */
#define CPU_F_GIL_WAIT 1

struct cpu_key {
	__u32 tgid;
	__u32 tid;
	__u64 pystack; /* id in `pystacks`, or PYSTACK_NONE */
	__s32 kstack;  /* id in `kstacks`, or KSTACK_NONE (sample in user mode) */
	__u32 flags;   /* CPU_F_* */
};

#endif /* PYUSDT_CPU_H */
