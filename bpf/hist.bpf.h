/* SPDX-License-Identifier: MIT */
/* Log2 time histograms (struct time_hist of pystack.h), for every object
 * that keeps one. */
#ifndef PYUSDT_HIST_BPF_H
#define PYUSDT_HIST_BPF_H

#include <bpf/bpf_helpers.h>

#include "pystack.h"

/* floor(log2(v)), 0 for 0. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* The log2 histogram slot of `ns` (pystack.h's time_hist). */
static __always_inline __u32 hist_slot(__u64 ns)
{
	__u32 slot = log2_u64(ns);

	return slot < HIST_SLOTS ? slot : HIST_SLOTS - 1;
}

/* Adds one event of `ns` to the time_hist at `key` in `map`, creating it;
 * counts it in *lost if the map is full. */
static __always_inline void add_time_hist(void *map, const void *key, __u64 ns, __u64 *lost)
{
	struct time_hist *v = bpf_map_lookup_elem(map, key);
	__u32 slot = hist_slot(ns);

	if (!v) {
		struct time_hist init = { .ns = ns, .count = 1 };

		init.hist[slot & 63] = 1;
		if (!bpf_map_update_elem(map, key, &init, BPF_NOEXIST))
			return;
		/* Lost a race to create it, or the map is full. */
		v = bpf_map_lookup_elem(map, key);
		if (!v) {
			__sync_fetch_and_add(lost, 1);
			return;
		}
	}
	__sync_fetch_and_add(&v->ns, ns);
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->hist[slot & 63], 1);
}

#endif /* PYUSDT_HIST_BPF_H */
