/* SPDX-License-Identifier: MIT */
/* What bpf/gil.bpf.c counts: what crosses the boundary. */
#ifndef PYUSDT_GIL_COUNTS_H
#define PYUSDT_GIL_COUNTS_H

#include "pystack.h"

/* Time a thread waited for the GIL, by where it waited and who handed the
 * GIL over to it (the thread that dropped it last), where that one was. */
struct gil_key {
	__u32 tgid;
	__u32 tid;
	__u64 pystack;	      /* the waiter's Python stack when it began to wait */
	__u32 holder_tid;     /* 0 if no thread dropped the GIL since recording
			       * began; `tid` itself if the GIL was free */
	__u32 reserved;
	__u64 holder_pystack; /* the holder's Python stack when it dropped the GIL */
};

#endif /* PYUSDT_GIL_COUNTS_H */
