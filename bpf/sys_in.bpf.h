/* SPDX-License-Identifier: MIT */
/*
 * A thread's syscall between its entry and its exit, for the views that
 * pair the two (bpf/syscall.bpf.c, bpf/trace.bpf.c).
 */
#ifndef PYUSDT_SYS_IN_BPF_H
#define PYUSDT_SYS_IN_BPF_H

#include <bpf/bpf_helpers.h>

/* When the syscall began (0: the thread is in none), its number, and the
 * Python stack it was made from. */
struct sys_in {
	__u64 ts;
	__u64 pystack;
	__s64 nr;
};

/*
 * Notes in `map` (tid -> struct sys_in, LRU) that thread `tid` is in
 * syscall `nr` from `pystack` from now on; returns -1 if the map is full.
 * A thread's entry is made at its first syscall and then rewritten in
 * place, never deleted: an update or a delete takes locks that a lookup
 * does not (with the walker's stored stacks found by a lookup too, the
 * syscall view's sys_enter and sys_exit went from 816 to 638 ns on 1-byte
 * writes). The exit sets ts to 0.
 */
static __always_inline int sys_in_begin(void *map, __u32 tid, long nr, __u64 pystack)
{
	struct sys_in *in = bpf_map_lookup_elem(map, &tid);
	struct sys_in now = { .ts = bpf_ktime_get_ns(), .pystack = pystack, .nr = nr };

	if (in) {
		*in = now;
		return 0;
	}
	return bpf_map_update_elem(map, &tid, &now, BPF_ANY) ? -1 : 0;
}

#endif /* PYUSDT_SYS_IN_BPF_H */
