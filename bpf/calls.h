/* SPDX-License-Identifier: MIT */
/* What bpf/calls.bpf.c counts (`record --exact`): what crosses the boundary. */
#ifndef PYUSDT_CALLS_H
#define PYUSDT_CALLS_H

#include "pystack.h"

/* Frames of one thread's call stack kept; deeper calls are counted in
 * `calls_too_deep` and their time stays with the deepest kept frame. */
#define CALLS_MAX_DEPTH 256

/*
 * One call path of one thread: the code object called and the path of its
 * caller. Nodes are keyed by a hash of (caller's node, code), so a path is
 * its chain of parents up to a thread's top (parent 0).
 */
struct call_node {
	__u64 parent;	/* the caller's node id, 0 at the thread's top */
	__u64 code;	/* code object address */
	__u32 tgid;
	__u32 tid;
	__u64 calls;	/* calls begun (PY_START) */
	/* Time of the activations that ended, less the time in the calls they
	 * made (a path's inclusive time is its subtree's). */
	__u64 self_ns;
	/* Inclusive time per ended activation, log2: hist[k] lasted from 2^k
	 * to 2^(k+1) ns. */
	__u32 hist[HIST_SLOTS];
};

/* A frame on a thread's call stack. */
struct call_frame {
	__u64 node;
	__u64 code;
	__u64 start_ns;	/* 0: it ran before the recording saw it begin */
	__u64 child_ns;	/* time in the calls it made that ended */
};

/*
 * The per-thread ring the target writes its calls and returns to
 * (pyext/src/calls.rs, struct CallRing): `head` events written so far,
 * then CALL_RING_SLOTS slots of (code | kind, CLOCK_MONOTONIC ns).
 */
#define CALL_RING_SLOTS 256
#define CALL_RING_HEAD 0  /* offset of head */
#define CALL_RING_DATA 16 /* offset of the first slot */
#define CALL_KIND_MASK 7ULL
#define CALL_KIND_EXIT 4ULL /* kinds 4-6 leave a frame, 0-2 enter one */
#define CALL_KIND_START 0ULL

/* A thread's call stack, as the kernel keeps it. */
struct call_thread {
	__u32 depth;	/* frames on the stack, kept or not */
	__u32 tgid;
	__u64 ring;	/* the thread's call ring in the target */
	__u64 tail;	/* events of the ring read so far */
	__u32 busy;	/* a drain runs (it may be preempted: the switch skips) */
	__u32 reserved;
	struct call_frame frames[CALLS_MAX_DEPTH];
	/* The ring's new events, copied in (at most) two reads per drain; as
	 * big as two rings, so that a copy to any slot's place fits. */
	__u64 copy[2 * CALL_RING_SLOTS][2];
};


#endif /* PYUSDT_CALLS_H */
