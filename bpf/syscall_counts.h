/* SPDX-License-Identifier: MIT */
/* What bpf/syscall.bpf.c counts: what crosses the boundary. */
#ifndef PYUSDT_SYSCALL_H
#define PYUSDT_SYSCALL_H

#include "pystack.h"

struct syscall_key {
	__u32 tgid;
	__u32 tid;
	__u64 pystack; /* the thread's Python stack when it entered */
	__s64 nr;      /* the syscall number (x86_64) */
};

#endif /* PYUSDT_SYSCALL_H */
