"""A small program of known shape for `make demo` (and later the gallery):
CPU work, sleeps, file I/O, and two threads sharing a lock.

Runs for --seconds (default 3) and exits 0.
"""

import argparse
import ctypes
import os
import tempfile
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def crunch(n):
    return sum(fib(n) for _ in range(3))


def nap():
    time.sleep(0.01)


def write_log(path, lines):
    with open(path, "a") as f:
        for i in range(lines):
            f.write(f"line {i}\n")
        f.flush()
        os.fsync(f.fileno())


def name_thread(name):
    """Gives the OS thread a name, which is what the profiler shows."""
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def worker(lock, stop, counter):
    name_thread("lock-worker")
    while not stop.is_set():
        with lock:
            counter[0] += 1
            time.sleep(0.002)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fib", type=int, default=18,
                    help="how deep crunch's fib goes (the gallery's diff compares 18 and 20)")
    args = ap.parse_args()
    print(f"demo app: pid {os.getpid()}, running {args.seconds:g}s", flush=True)
    lock, stop, counter = threading.Lock(), threading.Event(), [0]
    t = threading.Thread(target=worker, args=(lock, stop, counter), name="lock-worker")
    t.start()
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "demo.log")
        end = time.monotonic() + args.seconds
        rounds = 0
        while time.monotonic() < end:
            crunch(args.fib)
            nap()
            write_log(log, 50)
            with lock:
                counter[0] += 1
            rounds += 1
    stop.set()
    t.join()
    print(f"demo app: {rounds} rounds, lock taken {counter[0]} times", flush=True)


if __name__ == "__main__":
    main()
