/* SPDX-License-Identifier: MIT */
/*
 * The Python frame walker, shared by every BPF program that records Python
 * stacks: from the current kernel thread to its PyThreadState, then along
 * the live frame chain, with the layout the process announced.
 */
#ifndef PYUSDT_PYFRAME_BPF_H
#define PYUSDT_PYFRAME_BPF_H

#include "procs.bpf.h"
#include "hist.bpf.h"
#include "pystack.h"

#ifndef EEXIST
#define EEXIST 17
#endif
#ifndef EFAULT
#define EFAULT 14
#endif

/* Thread id -> its PyThreadState, checked on use. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} tstates SEC(".maps");

/*
 * Stack hash -> the stack. Maps written from scheduler context are
 * preallocated: allocating there can fail for want of memory.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct pystack);
} pystacks SEC(".maps");

/* A stack is too big for the BPF stack: build it here. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pystack);
} pystack_scratch SEC(".maps");

/* (process, code object address) -> its names, read at first sight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct code_key);
	__type(value, struct code_name);
} code_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct code_name);
} code_name_scratch SEC(".maps");

/* With --lines: (process, code object) -> its line table, read at first
 * sight (allocated as needed: most recordings have no --lines). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct code_key);
	__type(value, struct code_lines);
} code_lines SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct code_lines);
} code_lines_scratch SEC(".maps");

/* Puts `value` at `key` in hash `map` unless one is there: returns 1 if it
 * put it, 0 if one was there, -1 if the map is full. It looks first: an
 * update takes the bucket's lock even when the key is there, and most
 * keys (stacks seen before) are. */
static __always_inline int put_once(void *map, const void *key, const void *value)
{
	long err;

	if (bpf_map_lookup_elem(map, key))
		return 0;
	err = bpf_map_update_elem(map, key, value, BPF_NOEXIST);
	if (!err)
		return 1;
	return err == -EEXIST ? 0 : -1;
}

/* Walks that found no stack, by enum pystack_error. */
__u64 pystack_errors[PYSTACK_ERR_MAX] = {};

static __always_inline __u64 read_u64(__u64 addr, int *err)
{
	__u64 v = 0;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*err = 1;
	return v;
}

/*
 * Two ways to loop, chosen per program by a constant `loops` that every
 * handler passes down (bpf/tp_twin.bpf.h makes each handler in both):
 *
 * - loops = 1: under bpf_loop() (Linux 5.17+). The verifier checks a
 *   callback once instead of every iteration of a bounded loop, which
 *   took seconds per program at 256 frames.
 * - loops = 0: bounded loops, for kernels without bpf_loop. The verifier
 *   checks every step of those, so each loop's steps run BOUNDED_CHUNK at
 *   a time in a global function (the verifier checks a global function
 *   once per program, not at each call), its state in a per-CPU map,
 *   called as often as the loop needs; the walk and the naming are global
 *   functions too (py_stack_id_bounded, name_code_bounded). Such a
 *   program walks as deep as the other and loads in about 10 ms on 6.18.
 *
 * A program is one or the other: a kernel without bpf_loop rejects a
 * program that refers to a callback, even in code it would never run.
 */

struct thread_walk {
	__u64 t;
	__u32 tid;
	__u32 native_off;
	__u32 next_off;
	int found;
};

/* Steps of a bounded loop in one call of its global function. */
#define BOUNDED_CHUNK 16

/* NAME(): a global function that runs BOUNDED_CHUNK steps of STEP(i,
 * state) on the state in the per-CPU map MAP; returns 1 once the loop is
 * over (STEP said so), else 0. */
#define BOUNDED_CHUNK_FN(name, map, step)                                  \
	__noinline int name(void)                                          \
	{                                                                  \
		__u32 zero = 0;                                            \
		void *state = bpf_map_lookup_elem(&map, &zero);            \
                                                                           \
		if (!state)                                                \
			return 1;                                          \
		for (__u32 i = 0; i < BOUNDED_CHUNK; i++)                  \
			if (step(i, state))                                \
				return 1;                                  \
		return 0;                                                  \
	}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct thread_walk);
} thread_walk_scratch SEC(".maps");

static long thread_step(__u32 i, void *arg)
{
	struct thread_walk *w = arg;
	__u64 native;
	int err = 0;

	if (!w->t)
		return 1;
	native = read_u64(w->t + w->native_off, &err);
	if (err)
		return 1;
	if (native == w->tid) {
		w->found = 1;
		return 1;
	}
	w->t = read_u64(w->t + w->next_off, &err);
	return err ? 1 : 0;
}

BOUNDED_CHUNK_FN(thread_walk_bounded, thread_walk_scratch, thread_step)

/* Bytes of a thread state read at once (see py_thread_state). */
#define TSTATE_SPAN 256

struct tstate_bytes {
	__u8 b[TSTATE_SPAN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tstate_bytes);
} tstate_scratch SEC(".maps");

/* The 8 bytes at `off` of `t`, 0 past its end. */
static __always_inline __u64 tstate_u64(const struct tstate_bytes *t, __u32 off)
{
	if (off > TSTATE_SPAN - 8)
		return 0;
	return *(const __u64 *)(t->b + off);
}

/*
 * The PyThreadState of thread `tid`, or 0; and in *also the 8 bytes at
 * `also_off` of it, read with its thread id where the two lie within
 * TSTATE_SPAN bytes (a read of user memory costs about 40 ns whatever
 * its size up to a page, most of what a walk costs before its frames),
 * else 0 (the caller reads them).
 */
static __always_inline __u64 py_thread_state(const struct pyusdt_layout *l, __u32 tid,
					     const int loops, __u32 also_off, __u64 *also)
{
	__u64 *cached = bpf_map_lookup_elem(&tstates, &tid);
	struct thread_walk w = { .tid = tid };
	__u32 zero = 0, lo, hi;
	struct tstate_bytes *tb;
	__u64 native;
	int err = 0;

	*also = 0;
	/* A cached state is trusted only while it still names this thread. */
	if (cached && *cached) {
		lo = l->tstate_native_thread_id < also_off ? l->tstate_native_thread_id : also_off;
		hi = l->tstate_native_thread_id < also_off ? also_off : l->tstate_native_thread_id;
		tb = bpf_map_lookup_elem(&tstate_scratch, &zero);
		if (tb && hi - lo <= TSTATE_SPAN - 8 &&
		    !bpf_probe_read_user(tb->b, read_size(hi - lo + 8, TSTATE_SPAN),
					 (const void *)(*cached + lo))) {
			if (tstate_u64(tb, l->tstate_native_thread_id - lo) == tid) {
				*also = tstate_u64(tb, also_off - lo);
				return *cached;
			}
		} else {
			native = read_u64(*cached + l->tstate_native_thread_id, &err);
			if (!err && native == tid)
				return *cached;
		}
	}
	w.native_off = l->tstate_native_thread_id;
	w.next_off = l->tstate_next;
	w.t = read_u64(l->interp_addr + l->interp_threads_head, &err);
	if (err)
		return 0;
	if (loops) {
		bpf_loop(PYSTACK_MAX_THREADS, thread_step, &w, 0);
	} else {
		__u32 zero = 0;
		struct thread_walk *sw = bpf_map_lookup_elem(&thread_walk_scratch, &zero);

		if (!sw)
			return 0;
		*sw = w;
		for (__u32 k = 0; k < PYSTACK_MAX_THREADS / BOUNDED_CHUNK; k++)
			if (thread_walk_bounded())
				break;
		w = *sw;
	}
	if (!w.found)
		return 0;
	bpf_map_update_elem(&tstates, &tid, &w.t, BPF_ANY);
	return w.t;
}

static __always_inline void pystack_error(int which)
{
	if (which >= 0 && which < PYSTACK_ERR_MAX)
		__sync_fetch_and_add(&pystack_errors[which], 1);
}

/* Reads a compact str's characters into buf (at most cap bytes, cap a
 * power of two); returns the bytes read and sets *kind, or -1. */
static __always_inline int read_pystr(const struct pyusdt_layout *l, __u64 str, char *buf,
				      __u32 cap, __u8 *kind)
{
	__u32 state = 0;
	__u64 length, bytes, data;
	int err = 0;

	if (!str || bpf_probe_read_user(&state, sizeof(state), (const void *)(str + l->unicode_state)))
		return -1;
	if (!((state >> l->unicode_compact_bit) & 1))
		return -1;
	length = read_u64(str + l->unicode_length, &err);
	if (err)
		return -1;
	if ((state >> l->unicode_ascii_bit) & 1) {
		*kind = 1;
		data = str + l->unicode_ascii_data;
	} else {
		*kind = (state >> l->unicode_kind_shift) & 7;
		data = str + l->unicode_compact_data;
	}
	bytes = length * *kind;
	if (bytes > cap)
		bytes = cap;
	bytes &= (cap - 1) | cap;
	if (bytes == 0 || bytes > cap)
		return 0;
	if (bpf_probe_read_user(buf, read_size(bytes, cap), (const void *)data))
		return -1;
	return bytes;
}

struct name_walk {
	__u32 tgid;
};

/* Keeps code object `code`'s line table (a bytes object) in code_lines. */
static __always_inline void read_line_table(const struct pyusdt_layout *l,
					    const struct code_key *key, __u64 code)
{
	__u32 zero = 0;
	struct code_lines *t = bpf_map_lookup_elem(&code_lines_scratch, &zero);
	__u64 table, size, n;
	int err = 0;

	if (!t)
		return;
	table = read_u64(code + l->code_linetable, &err);
	size = read_u64(table + l->bytes_size, &err);
	if (err || !table)
		return;
	n = size > LINETABLE_MAX ? LINETABLE_MAX : size;
	n &= (LINETABLE_MAX - 1) | LINETABLE_MAX;
	if (n == 0 || n > LINETABLE_MAX)
		return;
	if (bpf_probe_read_user(t->data, read_size(n, LINETABLE_MAX), (const void *)(table + l->bytes_data)))
		return;
	t->len = n;
	t->full_len = size;
	if (bpf_map_update_elem(&code_lines, key, t, BPF_ANY))
		pystack_error(PYSTACK_ERR_NAMES);
}

/* Reads code object `code`'s names into code_names unless they are known
 * and its address still holds the same code object; returns 1 when
 * nothing more can be named (no layout, no scratch), else 0. */
static __always_inline int name_code(__u32 tgid, __u64 code)
{
	const struct pyusdt_layout *l = bpf_map_lookup_elem(&layouts, &tgid);
	__u32 zero = 0;
	struct code_name *n, *known;
	struct code_key key = { .tgid = tgid };
	__u64 qualname;
	int err = 0, got;

	if (!l)
		return 1;
	qualname = read_u64(code + l->code_qualname, &err);
	if (err)
		return 0;
	key.code = code;
	known = bpf_map_lookup_elem(&code_names, &key);
	if (known && known->qualname_ptr == qualname)
		return 0;
	n = bpf_map_lookup_elem(&code_name_scratch, &zero);
	if (!n)
		return 1;
	n->qualname_ptr = qualname;
	n->firstlineno = 0;
	bpf_probe_read_user(&n->firstlineno, sizeof(n->firstlineno),
			    (const void *)(code + l->code_firstlineno));
	got = read_pystr(l, qualname, n->qualname, CODE_QUALNAME_LEN, &n->qualname_kind);
	n->qualname_len = got > 0 ? got : 0;
	got = read_pystr(l, read_u64(code + l->code_filename, &err), n->filename,
			 CODE_FILENAME_LEN, &n->filename_kind);
	n->filename_len = got > 0 ? got : 0;
	if (bpf_map_update_elem(&code_names, &key, n, BPF_ANY))
		pystack_error(PYSTACK_ERR_NAMES);
	if (with_lines)
		read_line_table(l, &key, code);
	return 0;
}

/* name_code for programs without bpf_loop: checked once per program. */
__noinline int name_code_bounded(__u32 tgid, __u64 code)
{
	return name_code(tgid, code);
}

/* Names frame i of the scratch stack if it needs it. */
static long name_step(__u32 i, void *arg)
{
	struct name_walk *w = arg;
	__u32 zero = 0;
	struct pystack *s = bpf_map_lookup_elem(&pystack_scratch, &zero);

	if (!s || i >= s->len)
		return 1;
	return name_code(w->tgid, s->frames[i & (PYSTACK_MAX_FRAMES - 1)]);
}

/* Reads the names of the scratch stack's code objects that need them. */
static __always_inline void name_codes(__u32 tgid, const int loops)
{
	struct name_walk w = { .tgid = tgid };
	__u32 zero = 0;
	struct pystack *s;

	if (loops) {
		bpf_loop(PYSTACK_MAX_FRAMES, name_step, &w, 0);
		return;
	}
	for (__u32 i = 0; i < PYSTACK_MAX_FRAMES; i++) {
		s = bpf_map_lookup_elem(&pystack_scratch, &zero);
		if (!s || i >= s->len)
			break;
		if (name_code_bounded(tgid, s->frames[i & (PYSTACK_MAX_FRAMES - 1)]))
			break;
	}
}

/* Kernel stacks, by id. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

/* The current kernel stack's id in `kstacks`, without its `skip` innermost
 * frames, or KSTACK_NONE; a stack lost to a full map is counted (a sample
 * in user mode has none, and is not). */
static __always_inline __s32 kernel_stack_id_skip(void *ctx, __u32 skip)
{
	long id = bpf_get_stackid(ctx, &kstacks, skip & BPF_F_SKIP_FIELD_MASK);

	if (id >= 0)
		return id;
	if (id != -EFAULT)
		pystack_error(PYSTACK_ERR_KSTACK);
	return KSTACK_NONE;
}

static __always_inline __s32 kernel_stack_id(void *ctx)
{
	return kernel_stack_id_skip(ctx, 0);
}

/* Bytes of a frame the walk needs at most: enough for every field it
 * reads (userspace's layout check keeps them below it). */
#define FRAME_CHUNK 128

/*
 * A frame's caller is most often just below it, in the same chunk of the
 * thread's frame stack (3.11+: frames are pushed upwards, one after the
 * other): the walk reads up to FRAME_WINDOW bytes at once, the frame and
 * what lies below it on its page (never past the page, which the frame's
 * own mapping covers), and takes the frames it holds from there. A walk
 * of 20 frames makes 2 or 3 reads instead of 20. Generator frames, and
 * 3.12+'s entry frames on the C stack, lie elsewhere: a window of their
 * own. An entry frame's window reaches up from it instead, where the C
 * stack's older frames are, its callers' entry frames among them (about
 * 850 bytes apart through a class's __init__ on 3.13): the entry frames
 * of a walk then take one read, not one each. On 1-byte writes under
 * `python -m pyusdt` that made 2 reads of windows per walk where there
 * were 4; on http.server's threads, 1.7 where there were 2.6.
 */
#define FRAME_WINDOW 2048
/* A frame's owner while it runs on the thread's frame stack (3.11-3.15). */
#define FRAME_OWNED_BY_THREAD 0
#define PAGE_BYTES 4096ULL

struct frame_bytes {
	__u64 lo;  /* the user address of b[0] */
	__u64 len; /* bytes of b read; 0: none */
	__u8 b[FRAME_WINDOW + FRAME_CHUNK];
};

/* Two windows: the walk goes back and forth between the thread's frame
 * stack and the entry frames on its C stack (3.12+), and the caller of an
 * entry frame is most often in the window the walk read before it. */
#define FRAME_WINDOWS 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FRAME_WINDOWS);
	__type(key, __u32);
	__type(value, struct frame_bytes);
} frame_scratch SEC(".maps");

/* Whether window `c` holds the `n` bytes at `f`. */
static __always_inline int in_window(const struct frame_bytes *c, __u64 f, __u32 n)
{
	return c->len && f >= c->lo && f + n <= c->lo + c->len;
}

/* The 8 bytes at `off` of the frame at `base` in `c`, 0 past its end. */
static __always_inline __u64 chunk_u64(const struct frame_bytes *c, __u64 base, __u32 off)
{
	if (base > FRAME_WINDOW || off > FRAME_CHUNK - 8)
		return 0;
	return *(const __u64 *)(c->b + base + off);
}

/* Reads into `c` the window that ends with the `n` bytes of the frame at
 * `f`, or with `up`, the one that begins with it (just the frame if the
 * window cannot be read); returns the frame's offset in it, or -1. */
static __always_inline long read_window(struct frame_bytes *c, __u64 f, __u32 n, __u32 up)
{
	__u64 end = f + n, lo = f & ~(PAGE_BYTES - 1), len;

	if (up) {
		/* The older frames of the C stack lie above; it is mapped up to
		 * its top, and a failed read falls back to the frame alone. */
		if (!bpf_probe_read_user(c->b, FRAME_WINDOW, (const void *)f)) {
			c->lo = f;
			c->len = FRAME_WINDOW;
			return 0;
		}
		goto alone;
	}
	if (end > FRAME_WINDOW && end - FRAME_WINDOW > lo)
		lo = end - FRAME_WINDOW;
	len = end - lo;
	if (len >= 1 && len <= FRAME_WINDOW &&
	    !bpf_probe_read_user(c->b, read_size(len, FRAME_WINDOW), (const void *)lo)) {
		c->lo = lo;
		c->len = len;
		return f - lo;
	}
alone:
	c->len = 0;
	if (bpf_probe_read_user(c->b, read_size(n, FRAME_CHUNK), (const void *)f))
		return -1;
	c->lo = f;
	c->len = n;
	return 0;
}

/* Code objects whose type was checked (3.13+), per CPU, direct-mapped by
 * address: f_executable is a code object or None, and None, a static
 * object, is never at an address that held code, so an address once seen
 * as code in a process is code whenever a live frame names it. `tag` is
 * the process and its code type's address (another image after exec). */
#define CODE_SEEN_SLOTS 256

struct code_seen {
	struct {
		__u64 code;
		__u64 tag;
	} slot[CODE_SEEN_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct code_seen);
} code_seen_scratch SEC(".maps");

struct frame_walk {
	__u64 frame;
	__u64 h; /* the stack's hash so far */
	__u64 code_type_addr;
	__u64 tag; /* see code_seen */
	__u32 frame_code;
	__u32 frame_owner;
	__u32 frame_previous;
	__u32 object_type;
	__u32 owner_cstack;
	__u32 frame_instr;
	__u32 code_adaptive;
	__u32 chunk_len;  /* bytes of each frame to read */
	__u32 check_type; /* whether f_code may be something other than code */
	__u32 window;	  /* the window (of frame_scratch) used last */
	/* The frame stepped from lay on the thread's frame stack, and the
	 * interpreter has entry frames (3.12+): a frame it names that no
	 * window holds is most likely an entry frame on the C stack, whose
	 * callers' entry frames lie above it. */
	__u32 up;
	int err;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frame_walk);
} frame_walk_scratch SEC(".maps");

/* Whether `code` (not 0) is a code object; see code_seen. */
static __always_inline int is_code(struct frame_walk *w, __u64 code)
{
	__u32 zero = 0, i = ((code >> 4) ^ (code >> 12)) & (CODE_SEEN_SLOTS - 1);
	struct code_seen *seen = bpf_map_lookup_elem(&code_seen_scratch, &zero);

	if (!w->check_type)
		return 1;
	if (seen && seen->slot[i].code == code && seen->slot[i].tag == w->tag)
		return 1;
	if (read_u64(code + w->object_type, &w->err) != w->code_type_addr)
		return 0;
	if (seen) {
		seen->slot[i].code = code;
		seen->slot[i].tag = w->tag;
	}
	return 1;
}

/* One frame of the chain into the scratch stack; stops at the end, on a
 * failed read, or when the stack is full (marking it truncated). */
static long frame_step(__u32 i, void *arg)
{
	struct frame_walk *w = arg;
	__u32 zero = 0, one = 1, n = w->chunk_len;
	struct pystack *s = bpf_map_lookup_elem(&pystack_scratch, &zero);
	struct frame_bytes *c0 = bpf_map_lookup_elem(&frame_scratch, &zero);
	struct frame_bytes *c1 = bpf_map_lookup_elem(&frame_scratch, &one);
	struct frame_bytes *c;
	__u64 code, slot, f = w->frame;
	long base;
	__u8 owner;

	if (!s || !c0 || !c1 || !f || w->err)
		return 1;
	n &= (FRAME_CHUNK - 1) | FRAME_CHUNK;
	if (n < 8 || n > FRAME_CHUNK) {
		w->err = 1;
		return 1;
	}
	/* The frame from a window read before, else a new window in place of
	 * the one used less recently. */
	if (in_window(c0, f, n)) {
		c = c0;
		w->window = 0;
		base = f - c->lo;
	} else if (in_window(c1, f, n)) {
		c = c1;
		w->window = 1;
		base = f - c->lo;
	} else {
		c = w->window ? c0 : c1;
		w->window = !w->window;
		base = read_window(c, f, n, w->up);
	}
	if (base < 0 || base > FRAME_WINDOW) {
		w->err = 1;
		return 1;
	}
	/* 3.14's f_executable is a _PyStackRef, a pointer with tag bits below
	 * its alignment: masked off (a code object is at least 8-aligned, so
	 * 3.11-3.13's plain pointers lose nothing). */
	code = chunk_u64(c, base, w->frame_code) & ~7ULL;
	owner = (__u8)chunk_u64(c, base, w->frame_owner);
	/* Skip the interpreter's shim frames and anything not code (3.13's
	 * f_executable may be None; 3.11's and 3.12's f_code is code). */
	if (owner != w->owner_cstack && code && is_code(w, code)) {
		if (s->len >= PYSTACK_MAX_FRAMES) {
			s->truncated = 1;
			return 1;
		}
		slot = s->len & (PYSTACK_MAX_FRAMES - 1);
		s->frames[slot] = code;
		s->lasti[slot] = LASTI_NONE;
		w->h = (w->h ^ code) * 0x100000001b3ULL;
		if (with_lines) {
			__u64 instr = chunk_u64(c, base, w->frame_instr);
			__u64 first = code + w->code_adaptive;

			if (instr >= first && instr - first < (1ULL << 32))
				s->lasti[slot] = (instr - first) / 2;
			w->h = (w->h ^ s->lasti[slot]) * 0x100000001b3ULL;
		}
		s->len++;
	}
	w->up = owner == FRAME_OWNED_BY_THREAD && w->owner_cstack != PYUSDT_NO_OFFSET;
	w->frame = chunk_u64(c, base, w->frame_previous);
	return 0;
}

BOUNDED_CHUNK_FN(frame_walk_bounded, frame_walk_scratch, frame_step)

/*
 * Thread `tid`'s Python stack, stored in `pystacks`; returns its id, or
 * PYSTACK_NONE (and counts why).
 */
static __always_inline __u64 py_walk(__u32 tgid, __u32 tid, const int loops)
{
	const struct pyusdt_layout *l = bpf_map_lookup_elem(&layouts, &tgid);
	struct frame_walk fw = {};
	struct frame_bytes *c, *c1;
	struct pystack *s;
	__u32 zero = 0, one = 1;
	__u64 t, frame, id;
	int err = 0, cframe;

	if (!l) {
		pystack_error(PYSTACK_ERR_NO_LAYOUT);
		return PYSTACK_NONE;
	}
	s = bpf_map_lookup_elem(&pystack_scratch, &zero);
	if (!s)
		return PYSTACK_NONE;
	/* The innermost frame: through tstate->cframe on 3.11 and 3.12. */
	cframe = l->flags & PYUSDT_F_CFRAME;
	t = py_thread_state(l, tid, loops, cframe ? l->tstate_cframe : l->current_frame, &frame);
	if (!t) {
		pystack_error(PYSTACK_ERR_NO_THREAD);
		return PYSTACK_NONE;
	}
	if (!frame)
		frame = read_u64(t + (cframe ? l->tstate_cframe : l->current_frame), &err);
	if (cframe)
		frame = read_u64(frame + l->current_frame, &err);

	c = bpf_map_lookup_elem(&frame_scratch, &zero);
	c1 = bpf_map_lookup_elem(&frame_scratch, &one);
	if (!c || !c1)
		return PYSTACK_NONE;
	/* No window yet: the last walk's may be stale. */
	c->len = 0;
	c1->len = 0;
	fw.window = 1; /* the first window read is window 0 */
	s->len = 0;
	s->truncated = 0;
	fw.frame = frame;
	fw.tag = l->code_type_addr ^ tgid;
	fw.err = err;
	fw.code_type_addr = l->code_type_addr;
	fw.frame_code = l->frame_code;
	fw.frame_owner = l->frame_owner;
	fw.frame_previous = l->frame_previous;
	fw.object_type = l->object_type;
	fw.owner_cstack = l->owner_cstack;
	fw.frame_instr = l->frame_instr;
	fw.code_adaptive = l->code_adaptive;
	fw.check_type = l->py_version_hex >= 0x030d0000;
	fw.chunk_len = fw.frame_code;
	if (fw.frame_previous > fw.chunk_len)
		fw.chunk_len = fw.frame_previous;
	if (fw.frame_owner > fw.chunk_len)
		fw.chunk_len = fw.frame_owner;
	if (with_lines && fw.frame_instr > fw.chunk_len)
		fw.chunk_len = fw.frame_instr;
	fw.chunk_len += 8;
	/* FNV-1a over the process and the frames (with their instructions
	 * under --lines). The process is in it because a stack's names are
	 * read per process: a forked child runs code at its parent's
	 * addresses, and another program may put other code there. */
	fw.h = (0xcbf29ce484222325ULL ^ tgid) * 0x100000001b3ULL;
	/* Twice the frames kept: shim frames are walked, not kept. */
	if (loops) {
		bpf_loop(PYSTACK_MAX_FRAMES * 2, frame_step, &fw, 0);
	} else {
		struct frame_walk *sw = bpf_map_lookup_elem(&frame_walk_scratch, &zero);

		if (!sw)
			return PYSTACK_NONE;
		*sw = fw;
		for (__u32 k = 0; k < PYSTACK_MAX_FRAMES * 2 / BOUNDED_CHUNK; k++)
			if (frame_walk_bounded())
				break;
		fw = *sw;
	}
	if (fw.err && s->len == 0) {
		pystack_error(PYSTACK_ERR_READ);
		return PYSTACK_NONE;
	}
	if (fw.frame && !s->truncated && !fw.err)
		s->truncated = 1;
	id = fw.h ^ s->truncated;
	if (id == PYSTACK_NONE)
		id = 1;
	err = put_once(&pystacks, &id, s);
	if (err < 0) {
		pystack_error(PYSTACK_ERR_FULL);
		return PYSTACK_NONE;
	}
	if (err > 0)
		name_codes(tgid, loops); /* a stack not seen before */
	return id;
}

/*
 * py_walk as global functions, which the verifier checks once per program
 * (apart from its callers, against their arguments) where an inlined
 * walk is checked along every path of its caller: sched_switch's offcpu
 * program, which walks at departure, took 133 ms to load with the walk
 * inlined and 24 ms with it called, and the gil view's, which walks the
 * waiter and the holder, 117 and 19 ms (6.18). What a walk costs does not
 * change: sched_switch 1,239 and 1,269 ns, sys_enter 365 and 360 ns
 * (bpf_stats, 6 interleaved rounds).
 */
__noinline __u64 py_stack_id_looped(__u32 tgid, __u32 tid)
{
	return py_walk(tgid, tid, 1);
}

/* py_walk for programs without bpf_loop. */
__noinline __u64 py_stack_id_bounded(__u32 tgid, __u32 tid)
{
	return py_walk(tgid, tid, 0);
}

/* The Python stack id of thread `tid` of process `tgid` (see py_walk),
 * the way `loops` says: the current thread's, or another's as its frames
 * are now. */
static __always_inline __u64 py_stack_id(__u32 tgid, __u32 tid, const int loops)
{
	if (loops)
		return py_stack_id_looped(tgid, tid);
	return py_stack_id_bounded(tgid, tid);
}

#endif /* PYUSDT_PYFRAME_BPF_H */
