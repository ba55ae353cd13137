/* SPDX-License-Identifier: MIT */
/* What bpf/span.bpf.c counts (`record --span NAME`): what crosses the boundary. */
#ifndef PYUSDT_SPAN_H
#define PYUSDT_SPAN_H

#include "pystack.h"

/* Bytes of a span's name compared (the recorder refuses longer names). */
#define SPAN_NAME_LEN 64

/* A thread inside the span: how deep (the span nested in itself), and
 * since when (its outermost entry). */
struct span_open {
	__u64 start_ns;
	__u32 depth;
	__u32 reserved;
};

#endif /* PYUSDT_SPAN_H */
