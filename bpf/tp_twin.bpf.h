/* SPDX-License-Identifier: MIT */
#ifndef PYUSDT_TP_TWIN_BPF_H
#define PYUSDT_TP_TWIN_BPF_H

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/*
 * A tracepoint handler twice: NAME_btf as tp_btf, and NAME_raw as raw_tp
 * for kernels without tp_btf; userspace loads the one the kernel offers.
 * Both take the tracepoint's arguments ARGS and return CALL, which sees
 * the constant `btf_args`: 1 where the arguments are BTF pointers that
 * helpers taking a task accept (tp_btf), 0 where they are plain numbers.
 */
#define TP_TWIN(tp, name, call, args...)                                            \
	SEC("tp_btf/" #tp)                                                          \
	int BPF_PROG(name##_btf, ##args)                                            \
	{                                                                           \
		const int btf_args __attribute__((unused)) = 1;                     \
		return call;                                                        \
	}                                                                           \
	SEC("raw_tp/" #tp)                                                          \
	int BPF_PROG(name##_raw, ##args)                                            \
	{                                                                           \
		const int btf_args __attribute__((unused)) = 0;                     \
		return call;                                                        \
	}

/*
 * Field F of kernel struct pointer P in a TP_TWIN body: a plain load
 * where the arguments are BTF pointers (tp_btf: the verifier checks it,
 * no helper call), else bpf_probe_read_kernel (raw_tp).
 */
#define TP_FIELD(p, f) (btf_args ? (p)->f : BPF_CORE_READ(p, f))

/*
 * A tracepoint handler that walks Python stacks, four times: the twins of
 * TP_TWIN with bpf_loop() (NAME_btf, NAME_raw), and again with bounded
 * loops for kernels before 5.17 (NAME_bounded_btf, NAME_bounded_raw).
 * CALL sees the constant `loops` (1 or 0) to pass to the walker
 * (bpf/pyframe.bpf.h).
 */
#define TP_WALK(tp, name, call, args...)                                                \
	TP_TWIN(tp, name, ({ const int loops = 1; call; }), ##args)                       \
	TP_TWIN(tp, name##_bounded, ({ const int loops = 0; call; }), ##args)

/*
 * A program of another kind (SEC("usdt"), "uprobe", "perf_event") that
 * walks Python stacks, twice: NAME with bpf_loop(), NAME_bounded with
 * bounded loops. Both call `static __always_inline int NAME_body(CTX_TYPE
 * *ctx, const int loops)`, which does the work.
 */
#define WALK_TWIN(sec, name, ctx_type)                                                 \
	SEC(sec)                                                                        \
	int name(ctx_type *ctx) { return name##_body(ctx, 1); }                           \
	SEC(sec)                                                                        \
	int name##_bounded(ctx_type *ctx) { return name##_body(ctx, 0); }

#endif /* PYUSDT_TP_TWIN_BPF_H */
