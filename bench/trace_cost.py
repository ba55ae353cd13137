"""What `pyusdt-prof trace` costs the traced program, and what it loses.

A target under `python -m pyusdt` times N one-byte writes to /dev/null,
and N calls of an empty function, three times each, and reports its
fastest round per operation; once untraced, once under `trace
--syscalls=write` (or `trace pyusdt:PY_START` for the calls), once with
`--stacks` too. The trace's output goes to /dev/null; its summary line
(events, lost) is printed beside the time. Needs root, and pyusdt-prof
built (PYUSDT_PROF, else target/release). PY_START needs Python 3.12+.

usage: sudo python bench/trace_cost.py [--n N]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROF = os.environ.get("PYUSDT_PROF") or str(ROOT / "target" / "release" / "pyusdt-prof")

TARGET = r"""
import os, sys, time

def work():
    return 1

fd = os.open(os.devnull, os.O_WRONLY)
print("ready", flush=True)
while line := sys.stdin.readline():
    what, n = line.split()
    n = int(n)
    t = time.perf_counter()
    if what == "write":
        for _ in range(n):
            os.write(fd, b"x")
    else:
        for _ in range(n):
            work()
    print((time.perf_counter() - t) / n * 1e9, flush=True)
"""


def measure(op, n, trace_args):
    """The fastest of three rounds of N ops, in ns per op, and the trace's
    summary line."""
    target = subprocess.Popen([sys.executable, "-m", "pyusdt", "-c", TARGET],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().strip() == "ready"
    tracer = None
    if trace_args is not None:
        tracer = subprocess.Popen([PROF, "trace", "-p", str(target.pid), *trace_args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = tracer.stderr.readline()
        assert "tracing" in line, line + tracer.stderr.read()
    rounds = []
    for _ in range(3):
        target.stdin.write(f"{op} {n}\n")
        target.stdin.flush()
        rounds.append(float(target.stdout.readline()))
    target.stdin.close()
    target.wait()
    summary = ""
    if tracer is not None:
        summary = tracer.stderr.read().strip().splitlines()[-1]
        tracer.wait()
    return min(rounds), summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="operations per round")
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}, {args.n} operations a round, fastest of 3")
    configs = [("write", [None, ["--syscalls=write"], ["--syscalls=write", "--stacks"]])]
    if sys.version_info >= (3, 12):
        configs.append(("call", [None, ["pyusdt:PY_START"], ["pyusdt:PY_START", "--stacks"]]))
    for op, runs in configs:
        for trace_args in runs:
            ns, summary = measure(op, args.n, trace_args)
            how = " ".join(trace_args) if trace_args else "untraced"
            print(f"{op:6} {how:32} {ns:8.0f} ns/op  {summary}")


if __name__ == "__main__":
    main()
