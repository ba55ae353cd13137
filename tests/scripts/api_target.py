"""A long-running target for the Python API tests (tests/python/test_api.py),
driven line by line on stdin.

usage: python -m pyusdt api_target.py

Prints "ready", then answers each command with "done":
  write N   api_writer makes exactly N one-byte writes to /dev/null
  read N    api_reader makes exactly N one-byte reads of /dev/zero
  fork N    a forked child makes N writes in api_child; waits for it
  tick N    fires the app probe apitest:tick(int, str) N times, with
            (i, "job-i") for i in 0..N-1
  span N    N spans "api-span", each one write in api_spanned
  call N    once pyusdt has turned a per-call probe on (a tracer attached
            to one: 3.12+), calls api_call N times
  exit      (or end of input) exits 0
"""

import os
import sys
import time

import pyusdt

DEVNULL = os.open("/dev/null", os.O_WRONLY)
ZERO = os.open("/dev/zero", os.O_RDONLY)
# Loaded before "ready", so that a tracer finds it at start.
TICK = pyusdt.Probe("apitest", "tick", int, str)
TICK.load()


def api_writer(n):
    for _ in range(n):
        os.write(DEVNULL, b"x")


def api_reader(n):
    for _ in range(n):
        os.read(ZERO, 1)


def api_child(n):
    for _ in range(n):
        os.write(DEVNULL, b"c")


def api_ticker(n):
    for i in range(n):
        TICK.fire(i, f"job-{i}")


def api_spanned():
    with pyusdt.span("api-span"):
        os.write(DEVNULL, b"s")


def api_call():
    return 1


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
        elif cmd == "tick":
            api_ticker(int(arg))
        elif cmd == "span":
            for _ in range(int(arg)):
                api_spanned()
        elif cmd == "call":
            while not pyusdt.status()["active"]:
                time.sleep(0.001)
            for _ in range(int(arg)):
                api_call()
        elif cmd == "exit":
            break
        print("done", flush=True)


main()
