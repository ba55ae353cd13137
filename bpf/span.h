/* SPDX-License-Identifier: MIT */
/* What bpf/span.bpf.c shares with userspace (`record --span NAME`). */
#ifndef PYUSDT_SPAN_H
#define PYUSDT_SPAN_H

/* Bytes of a span's name compared (the recorder refuses longer names). */
#define SPAN_NAME_LEN 64

#endif /* PYUSDT_SPAN_H */
