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

/*
 * `slot` made an index the verifier knows is below HIST_SLOTS: the mask is applied
 * to the 64-bit register right before its use. A plain `slot & 63` lets
 * clang move the mask away from the access, and older verifiers (6.1)
 * then reject the histogram's atomic add as an unbounded memory access.
 */
static __always_inline __u64 hist_index(__u32 slot)
{
	__u64 i = slot;

	asm volatile("%0 &= 63" : "+r"(i));
	return i < HIST_SLOTS ? i : HIST_SLOTS - 1;
}

/*
 * A read's size `n` (1 <= n <= cap) in a register the verifier knows is in
 * [1, cap], computed right before the helper call: 6.1's verifier loses
 * the bounds of a size spilled to the stack inside a bpf_loop callback.
 */
static __always_inline __u64 read_size(__u64 n, __u64 cap)
{
	__u64 m = cap - 1, i = n - 1;

	asm volatile("%0 &= %1" : "+r"(i) : "r"(m));
	return i + 1;
}

/* A new time_hist is made here, not on the BPF stack (176 bytes of the
 * 512 a program and all it calls may use). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct time_hist);
} time_hist_scratch SEC(".maps");

/* Adds `ns` to the time_hist at `key` in `map`, creating it: `events`
 * events, `in_slot` of them in histogram slot `slot`; counts it in *lost
 * if the map is full. */
static __always_inline void add_time_at(void *map, const void *key, __u64 ns, __u32 slot,
					__u64 events, __u64 in_slot, __u64 *lost)
{
	struct time_hist *v = bpf_map_lookup_elem(map, key);

	if (!v) {
		__u32 zero = 0;
		struct time_hist *init = bpf_map_lookup_elem(&time_hist_scratch, &zero);

		if (!init) {
			__sync_fetch_and_add(lost, 1);
			return;
		}
		__builtin_memset(init, 0, sizeof(*init));
		init->ns = ns;
		init->count = events;
		init->hist[hist_index(slot)] = in_slot;
		if (!bpf_map_update_elem(map, key, init, BPF_NOEXIST))
			return;
		/* Lost a race to create it, or the map is full. */
		v = bpf_map_lookup_elem(map, key);
		if (!v) {
			__sync_fetch_and_add(lost, 1);
			return;
		}
	}
	__sync_fetch_and_add(&v->ns, ns);
	__sync_fetch_and_add(&v->count, events);
	__sync_fetch_and_add(&v->hist[hist_index(slot)], in_slot);
}

/* Adds `ns` to the time_hist at `key` in `map` as `events` events (0 or
 * 1: the time of one event may arrive in parts) of which the histogram
 * counts the whole. */
static __always_inline void add_time_part(void *map, const void *key, __u64 ns, __u64 events,
					  __u64 *lost)
{
	add_time_at(map, key, ns, hist_slot(ns), events, 1, lost);
}

/* Adds one event of `ns` to the time_hist at `key` in `map`. */
static __always_inline void add_time_hist(void *map, const void *key, __u64 ns, __u64 *lost)
{
	add_time_at(map, key, ns, hist_slot(ns), 1, 1, lost);
}

/*
 * The weight of an event of `ns` when those shorter than `below` are
 * sampled: 1 for one kept whole (not shorter, or k = floor(below/ns) is
 * 1), k for one kept with probability 1/k to stand for k like it, 0 for
 * one not kept. Expected sums of weighted events are the true sums.
 */
static __always_inline __u64 sample_weight(__u64 ns, __u64 below)
{
	__u64 k;

	if (ns >= below)
		return 1;
	k = below / (ns ? ns : 1);
	if (k <= 1)
		return 1;
	if (k > 0xffffffffULL)
		k = 0xffffffffULL;
	return bpf_get_prandom_u32() % k == 0 ? k : 0;
}

/* sample_weight, counting the events shorter than `below` in *shorter and
 * those of them kept in *kept (for the notes that say how much was
 * kept). */
static __always_inline __u64 sample_weight_counted(__u64 ns, __u64 below, __u64 *shorter,
						   __u64 *kept)
{
	__u64 weight = sample_weight(ns, below);

	if (ns < below) {
		__sync_fetch_and_add(shorter, 1);
		if (weight)
			__sync_fetch_and_add(kept, 1);
	}
	return weight;
}

/* Adds one kept event of `ns` that stands for `weight` events like it (a
 * sampled event kept with probability 1/weight): the expected sums are
 * the true ones. */
static __always_inline void add_time_weighted(void *map, const void *key, __u64 ns,
					      __u64 weight, __u64 *lost)
{
	add_time_at(map, key, ns * weight, hist_slot(ns), weight, weight, lost);
}

#endif /* PYUSDT_HIST_BPF_H */
