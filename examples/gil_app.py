"""A threaded program for the gallery's GIL view: two threads crunch
numbers in pure Python while a third does short reads, and every one of
its reads is followed by a wait for the GIL that the crunchers hold.

Runs for --seconds (default 3) and exits 0.
"""

import argparse
import ctypes
import os
import threading
import time


def name_thread(name):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def checksum(data):
    total = 0
    for b in data:
        total = (total * 31 + b) & 0xFFFFFFFF
    return total


def crunch(name, stop):
    name_thread(name)
    block = bytes(range(256)) * 16
    while not stop.is_set():
        checksum(block)


def read_block(fd):
    return os.read(fd, 512)


def fetch(stop, count):
    name_thread("fetch")
    fd = os.open("/dev/urandom", os.O_RDONLY)
    while not stop.is_set():
        read_block(fd)
        count[0] += 1
    os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    stop, count = threading.Event(), [0]
    threads = [threading.Thread(target=crunch, args=(f"crunch-{i}", stop)) for i in (1, 2)]
    threads.append(threading.Thread(target=fetch, args=(stop, count)))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    print(f"gil app: {count[0]} reads", flush=True)


if __name__ == "__main__":
    main()
