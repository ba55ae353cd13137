/* SPDX-License-Identifier: MIT */
#ifndef PYUSDT_TP_TWIN_BPF_H
#define PYUSDT_TP_TWIN_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/*
 * A tracepoint handler twice: NAME_btf as tp_btf, and NAME_raw as raw_tp
 * for kernels without tp_btf; userspace loads the one the kernel offers.
 * Both take the tracepoint's arguments ARGS and return CALL.
 */
#define TP_TWIN(tp, name, call, args...)                         \
	SEC("tp_btf/" #tp)                                       \
	int BPF_PROG(name##_btf, ##args) { return call; }        \
	SEC("raw_tp/" #tp)                                       \
	int BPF_PROG(name##_raw, ##args) { return call; }

#endif /* PYUSDT_TP_TWIN_BPF_H */
