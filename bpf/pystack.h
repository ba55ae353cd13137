/* SPDX-License-Identifier: MIT */
/*
 * Python stacks as the BPF side records them: what crosses the boundary.
 */
#ifndef PYUSDT_PYSTACK_H
#define PYUSDT_PYSTACK_H

#include "pyusdt_layout.h"

/* Frames kept per stack; a deeper stack keeps its leaf-most frames. */
#define PYSTACK_MAX_FRAMES 256
/* Thread states looked at when finding the current thread's. */
#define PYSTACK_MAX_THREADS 256

/* Kernel frames kept per stack, and the id of "no kernel stack" (a
 * sample in user mode). */
#define KSTACK_DEPTH 127
#define KSTACK_NONE (-1)

/* The stack id of "no Python stack" (no layout yet, or a thread that runs
 * no Python). */
#define PYSTACK_NONE 0

/* lasti of a frame whose instruction is not known. */
#define LASTI_NONE 0xffffffffU

struct pystack {
	__u32 len;	 /* frames used */
	__u32 truncated; /* 1 if the stack was deeper than PYSTACK_MAX_FRAMES */
	/* Code object addresses, leaf first. */
	__u64 frames[PYSTACK_MAX_FRAMES];
	/* With `record --lines`: each frame's instruction, in code units from
	 * the code's first (CPython's _PyInterpreterFrame_LASTI), else
	 * LASTI_NONE. */
	__u32 lasti[PYSTACK_MAX_FRAMES];
};

/* Bytes of a code object's line table (co_linetable) kept. */
#define LINETABLE_MAX 2048

/* A code object's line table, read at first sight with `--lines`. */
struct code_lines {
	__u32 len;	 /* bytes kept */
	__u32 full_len;	 /* bytes the table has */
	__u8 data[LINETABLE_MAX];
};

/* Bytes of a code object's names kept. */
#define CODE_QUALNAME_LEN 128
#define CODE_FILENAME_LEN 256
#define COMM_LEN 16

/*
 * A code object's names, read in the kernel the first time a stack holds
 * it, so that they resolve even after the process has exited. The text is
 * the str's raw characters, `kind` bytes each (1: Latin-1, 2: UCS-2, 4:
 * UCS-4).
 */
struct code_name {
	__u64 qualname_ptr; /* the str read; another one means a reused address */
	__s32 firstlineno;
	__u16 qualname_len; /* bytes */
	__u16 filename_len;
	__u8 qualname_kind;
	__u8 filename_kind;
	__u8 reserved[6];
	char qualname[CODE_QUALNAME_LEN];
	char filename[CODE_FILENAME_LEN];
};

/* Names are kept per process: the same address names other code in
 * another program. */
struct code_key {
	__u32 tgid;
	__u32 reserved;
	__u64 code;
};

/* A thread's name as the kernel knows it. */
struct comm_value {
	char comm[COMM_LEN];
};

/* Why a walk found no stack; counted per reason. */
enum pystack_error {
	PYSTACK_ERR_NO_LAYOUT = 0,
	PYSTACK_ERR_NO_THREAD = 1, /* no thread state for this thread */
	PYSTACK_ERR_READ = 2,	   /* a read of the target's memory failed */
	PYSTACK_ERR_FULL = 3,	   /* the stack map was full */
	PYSTACK_ERR_NAMES = 4,	   /* the code name map was full */
	PYSTACK_ERR_KSTACK = 5,	   /* a kernel stack was lost (map full, or a hash collision) */
	PYSTACK_ERR_MAX = 6,
};

/*
 * Time spent, how often, and how it was spread: hist[k] counts the events
 * that lasted [2^k, 2^(k+1)) ns (hist[0]: under 2 ns), the last slot
 * everything from 2^(HIST_SLOTS-1) ns (about 9 minutes) up.
 */
#define HIST_SLOTS 40

struct time_hist {
	__u64 ns;
	__u64 count;
	__u32 hist[HIST_SLOTS];
};

#endif /* PYUSDT_PYSTACK_H */
