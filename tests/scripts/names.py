"""Threads with Python names, for tests/python/test_names.py, driven line
by line on stdin.

usage: python -m pyusdt names.py

Starts a thread named FIRST (longer than the kernel's 15 bytes, not all
ASCII) before anything records it, then prints "ready TID" (its kernel
thread id). The thread, the napper, runs each command the main thread
hands it while the main thread waits for its answer:
  write N      N one-byte writes to /dev/null, in napper_writes, then a
               20 ms nap (the main thread, waiting, is woken by the napper)
  rename NAME  the napper takes NAME as its threading name (and, on 3.14+,
               as its kernel name, cut to 15 bytes, as threading does)
  kname NAME   the napper takes NAME (at most 15 bytes) as its kernel name
               alone (prctl PR_SET_NAME), as C code it calls might
  exit         (or end of input) exits 0
Each command is answered "done".
"""

import ctypes
import os
import queue
import sys
import threading
import time

FIRST = "napper-with-a-long-name ☕"
DEVNULL = os.open("/dev/null", os.O_WRONLY)


def napper_writes(n):
    for _ in range(n):
        os.write(DEVNULL, b"x")


def napper(orders, answers):
    while True:
        verb, arg = orders.get()
        if verb == "write":
            napper_writes(int(arg))
            # The main thread waits meanwhile: this thread wakes it.
            time.sleep(0.02)
        elif verb == "rename":
            threading.current_thread().name = arg
        elif verb == "kname":
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.prctl(15, arg.encode(), 0, 0, 0) == 0  # PR_SET_NAME
        answers.put("done")


def main():
    orders, answers = queue.Queue(), queue.Queue()
    # A daemon: it is alive (and told of) until the interpreter's very end.
    t = threading.Thread(target=napper, args=(orders, answers), name=FIRST, daemon=True)
    t.start()
    print("ready", t.native_id, flush=True)
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        if verb == "exit":
            break
        orders.put((verb, arg))
        print(answers.get(), flush=True)


if __name__ == "__main__":
    main()
