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

#endif
