"""Keeps, for as long as it runs, what a recording turns on and off in the
kernel turned on: two do-nothing BPF programs on each tracepoint that
pyusdt-prof attaches to, and a perf event of this process.

usage: python hold.py    (prints "holding" once everything is held)

Run inside an emulated guest (tests/kernels/guest.sh) before the tests:
turning a tracepoint or perf's scheduler hooks on or off patches the
kernel's code while other CPUs run it, and QEMU's multi-threaded TCG lets
a CPU run such code half patched (6.12 died of "Oops: int3" in __schedule
one boot in two). With two programs held on a tracepoint, attaching a
third or detaching it changes no code; with one task-bound perf event
held, perf's scheduler hooks stay on.
"""

import ctypes
import os
import signal
import struct
import sys

NR_BPF, NR_PERF_EVENT_OPEN = 321, 298  # x86_64
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 5, 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY = 1, 9
TRACEPOINTS = ("sched_switch", "sched_waking", "sched_wakeup_new", "sys_enter", "sys_exit",
               "sched_process_fork", "sched_process_exec", "sched_process_exit")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def syscall(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    return syscall(NR_BPF, ctypes.c_int(cmd), buf, ctypes.c_uint(128))


def main():
    # r0 = 0; exit
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    license = ctypes.create_string_buffer(b"GPL")
    # Two programs: a kernel before 6.12 refuses one program twice on a
    # tracepoint (EEXIST).
    progs = [bpf(BPF_PROG_LOAD, struct.pack("<IIQQ", BPF_PROG_TYPE_RAW_TRACEPOINT, 2,
                                            ctypes.addressof(insns), ctypes.addressof(license)))
             for _ in range(2)]
    held, missed = [], []
    for tp in TRACEPOINTS:
        name = ctypes.create_string_buffer(tp.encode())
        for prog in progs:
            try:
                held.append(bpf(BPF_RAW_TRACEPOINT_OPEN,
                                struct.pack("<QI", ctypes.addressof(name), prog)))
            except OSError as e:
                missed.append(f"{tp}: {e.strerror}")
    # struct perf_event_attr: type, size, config; the rest zero (counting,
    # disabled); pid 0 (this process), any CPU.
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", PERF_TYPE_SOFTWARE, 128,
                                                   PERF_COUNT_SW_DUMMY).ljust(128, b"\0"), 128)
    held.append(syscall(NR_PERF_EVENT_OPEN, attr, ctypes.c_int(0), ctypes.c_int(-1),
                        ctypes.c_int(-1), ctypes.c_ulong(0)))
    print("holding", len(held), *(["missed:", *missed] if missed else []), flush=True)
    signal.pause()


if __name__ == "__main__":
    sys.exit(main())
