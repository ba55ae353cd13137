"""A target with app-defined probes and spans, driven line by line on stdin.

At start it declares myapp:start_loop(int, str), myapp:tick() and
myapp:six(int, str, int, str, int, str), loads them (one object) and
prints one JSON line: {"pid", "files", "status"}. Each command is answered
with one JSON line.

  status             {"enabled": {probe: bool}, "status": pyusdt.status()}
  wait PROBE 0|1     wait until PROBE.enabled is that
  loop N             start_loop.fire(i, "item{i}") for i in 0..N-1, and
                     tick.fire() once per round
  six                six.fire() with edge values, once
  declare P N T,..   declare probe P:N with types (int/str, "-" for none),
                     load it; answers {"path"}
  fire P:N ARGS      fire a declared probe with ints (digits) and strs
  bad                fire start_loop wrongly; answers the errors raised
  spans              the known span sequence (see spans())
  fork               fork; the child fires start_loop(7, "child"), declares
                     and loads child:probe(), prints its own JSON line
                     {"child_pid", "child_files"} and exits; the parent
                     answers once the child has exited
  fork-traced FILE   fork; the child prints {"child_pid"}, waits until
                     FILE exists, fires start_loop(i, "child") for i in
                     0..49 and exits; the parent answers once it has
  exit               exit 0
"""

import json
import os
import sys
import time

import pyusdt

start_loop = pyusdt.Probe("myapp", "start_loop", int, str)
tick = pyusdt.Probe("myapp", "tick")
six = pyusdt.Probe("myapp", "six", int, str, int, str, int, str)
PROBES = {"myapp:start_loop": start_loop, "myapp:tick": tick, "myapp:six": six}
start_loop.load()


def files():
    return sorted({p.path for p in PROBES.values() if p.path})


@pyusdt.span("decorated")
def decorated(x):
    return x + 1


@pyusdt.span("generator")
def gen(n):
    for i in range(n):
        yield i


def spans():
    """10 x outer{inner}, 3 x "raises" around an exception, 4 calls of a
    decorated function, a decorated generator run to its end, and one span
    object nested in itself."""
    for _ in range(10):
        with pyusdt.span("outer"):
            with pyusdt.span("inner"):
                pass
    for _ in range(3):
        try:
            with pyusdt.span("raises"):
                raise ValueError("inside a span")
        except ValueError:
            pass
    for i in range(4):
        assert decorated(i) == i + 1
    assert list(gen(3)) == [0, 1, 2]
    same = pyusdt.span("same")
    with same:
        with same:
            pass


def answer(obj):
    print(json.dumps(obj), flush=True)


answer({"pid": os.getpid(), "files": files(), "status": pyusdt.status()})
while line := sys.stdin.readline():
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "status":
        answer({"enabled": {k: p.enabled for k, p in PROBES.items()}, "status": pyusdt.status()})
    elif cmd == "wait":
        name, want = arg.split()
        while PROBES[name].enabled != bool(int(want)):
            time.sleep(0.005)
        answer({"enabled": PROBES[name].enabled})
    elif cmd == "loop":
        for i in range(int(arg)):
            start_loop.fire(i, f"item{i}")
            tick.fire()
        answer({})
    elif cmd == "six":
        six.fire(-1, "a", 2**63 - 1, "caf\u00e9 \u2603", -(2**63), "")
        answer({})
    elif cmd == "declare":
        provider, name, types = arg.split()
        kinds = [] if types == "-" else [{"int": int, "str": str}[t] for t in types.split(",")]
        p = pyusdt.Probe(provider, name, *kinds)
        PROBES[f"{provider}:{name}"] = p
        answer({"path": p.load()})
    elif cmd == "fire":
        name, *args = arg.split()
        PROBES[name].fire(*[int(a) if a.lstrip("-").isdigit() else a for a in args])
        answer({})
    elif cmd == "bad":
        errors = []
        for args in [(1,), (1, "x", 2), ("x", "y"), (1, 2), (2**64, "x")]:
            try:
                start_loop.fire(*args)
                errors.append(None)
            except (TypeError, OverflowError) as e:
                errors.append(f"{type(e).__name__}: {e}")
        answer({"errors": errors})
    elif cmd == "spans":
        spans()
        answer({})
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:
            start_loop.fire(7, "child")
            p = pyusdt.Probe("child", "probe")
            path = p.load()
            answer({"child_pid": os.getpid(), "child_files": [path],
                    "inherited": start_loop.path, "enabled": start_loop.enabled})
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        answer({"status": status, "files_exist": [os.path.exists(f) for f in files()]})
    elif cmd == "fork-traced":
        pid = os.fork()
        if pid == 0:
            answer({"child_pid": os.getpid()})
            while not os.path.exists(arg):
                time.sleep(0.005)
            for i in range(50):
                start_loop.fire(i, "child")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        answer({"status": status})
    elif cmd == "exit":
        break
