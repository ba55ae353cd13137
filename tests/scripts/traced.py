"""A target for the trace tests, driven line by line on stdin.

usage: python -m pyusdt traced.py

Prints one JSON line at start: its pid, the file its code objects name,
and the first lines of work() and writer(). Then each command is answered
with one line, "ok":
  call N    call work() N times
  write N   writer(): N one-byte writes to /dev/null
  tick N    fire the app probe myapp:tick(i, "tick-i") for i in 0..N-1
  span N    N spans "outer", each around a span "inner"
  status    pyusdt.status() as JSON (instead of "ok")
  exit      exit 0
"""

import json
import os
import sys

import pyusdt


def work():
    return 1


def writer(fd, n):
    for _ in range(n):
        os.write(fd, b"x")


TICK = pyusdt.Probe("myapp", "tick", int, str) if hasattr(pyusdt, "Probe") else None
if TICK is not None:
    TICK.enabled  # loads the probe, so that a tracer finds it from the start


def ticker(n):
    for i in range(n):
        TICK.fire(i, f"tick-{i}")


def spans(n):
    for _ in range(n):
        with pyusdt.span("outer"):
            with pyusdt.span("inner"):
                pass


print(json.dumps({
    "pid": os.getpid(),
    "file": work.__code__.co_filename,
    "work_line": work.__code__.co_firstlineno,
    "writer_line": writer.__code__.co_firstlineno,
    "app_probes": TICK is not None,
    "spans": hasattr(pyusdt, "span"),
}), flush=True)
null = os.open(os.devnull, os.O_WRONLY)
while line := sys.stdin.readline():
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "call":
        for _ in range(int(arg)):
            work()
    elif cmd == "write":
        writer(null, int(arg))
    elif cmd == "tick":
        ticker(int(arg))
    elif cmd == "span":
        spans(int(arg))
    elif cmd == "status":
        print(json.dumps(pyusdt.status()), flush=True)
        continue
    elif cmd == "exit":
        break
    print("ok", flush=True)
