"""A long-running target for the Python API tests (tests/python/test_api.py),
driven line by line on stdin.

usage: python -m pyusdt api_target.py

Prints "ready", then answers each command with "done":
  write N   api_writer makes exactly N one-byte writes to /dev/null
  read N    api_reader makes exactly N one-byte reads of /dev/zero
  fork N    a forked child makes N writes in api_child; waits for it
  exit      (or end of input) exits 0
"""

import os
import sys

DEVNULL = os.open("/dev/null", os.O_WRONLY)
ZERO = os.open("/dev/zero", os.O_RDONLY)


def api_writer(n):
    for _ in range(n):
        os.write(DEVNULL, b"x")


def api_reader(n):
    for _ in range(n):
        os.read(ZERO, 1)


def api_child(n):
    for _ in range(n):
        os.write(DEVNULL, b"c")


def main():
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "write":
            api_writer(int(arg))
        elif cmd == "read":
            api_reader(int(arg))
        elif cmd == "fork":
            pid = os.fork()
            if pid == 0:
                api_child(int(arg))
                os._exit(0)
            os.waitpid(pid, 0)
        elif cmd == "exit":
            break
        print("done", flush=True)


main()
