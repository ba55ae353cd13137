/* SPDX-License-Identifier: MIT */
/* What bpf/layout.bpf.c hands to userspace. */
#ifndef PYUSDT_LAYOUT_EVENT_H
#define PYUSDT_LAYOUT_EVENT_H

#include "pyusdt_layout.h"

struct layout_event {
	__u32 pid;
	__s32 read_error;     /* bpf_probe_read_user's result, 0 on success */
	__u64 announced_size; /* the size the target said its struct has */
	struct pyusdt_layout layout;
};

/* A Python thread's name (threading's), as pyusdt:thread told it: up to
 * PY_THREAD_NAME_LEN - 1 bytes of UTF-8, NUL-terminated. */
#define PY_THREAD_NAME_LEN 128
/* Threads whose names are kept (the least recently told go first). */
#define PY_THREAD_NAMES 16384

struct py_thread_name {
	__u32 tgid;
	__u32 len; /* bytes before the NUL */
	char name[PY_THREAD_NAME_LEN];
};

#endif
