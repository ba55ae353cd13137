"""A process to dump, for tests/python/test_dump.py: threads that each wait
in a known way, for good.

usage: python -m pyusdt dumpme.py

- napper: sleeps in nap (clock_nanosleep);
- reader: reads a pipe nobody writes, in wait_for_input (read);
- a child process without pyusdt, asleep;
- then it prints "ready NAPPER_TID READER_TID CHILD_PID" and starts
  spinner, which spins in spin and, with a switch interval of 1000 s,
  keeps the GIL: the main thread, woken by it as it starts (in main at the
  line marked "line: start"), waits for the GIL from then on.
"""

import os
import subprocess
import sys
import threading
import time


def nap():
    time.sleep(3600)


def wait_for_input(fd):
    os.read(fd, 1)


def spin():
    while True:
        pass


def main():
    r, _w = os.pipe()
    napper = threading.Thread(target=nap, name="napper", daemon=True)
    reader = threading.Thread(target=wait_for_input, args=(r,), name="reader", daemon=True)
    napper.start()
    reader.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print("ready", napper.native_id, reader.native_id, child.pid, flush=True)
    sys.setswitchinterval(1000)
    threading.Thread(target=spin, name="spinner", daemon=True).start()  # line: start


if __name__ == "__main__":
    main()
