"""Per-call cost of `python -m pyusdt` with no tracer attached.

Runs a call-heavy function (fib) in fresh interpreters, alternating plain
`python` and `python -m pyusdt`, all in this one run. Each child times fib
REPEAT times and reports its fastest (the run least disturbed by the rest
of the machine); the ratio is the median of the per-round ratios, with its
spread (interquartile range), so that a noisy moment hits both sides of a
round alike.

Times on a shared machine are noisy, so where valgrind exists the same
comparison is also made in instructions (callgrind), which do not depend on
what else the machine is doing: the instructions per Python call are the
difference between fib(N2) and fib(N1) in one configuration, divided by the
difference in calls, so that start-up (importing pyusdt) cancels out.

As root, with pyusdt-prof built (PYUSDT_PROF, else target/release), a third
column times fib under `pyusdt-prof record` with the default views at the
default rate, launched the way users launch it.

usage: python bench/overhead.py [--rounds N] [--n FIB_N] [--repeat R]
"""

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(20)  # warm up the specializing interpreter
best = float("inf")
for _ in range({repeat}):
    t = time.perf_counter()
    fib({n})
    best = min(best, time.perf_counter() - t)
print(best)
"""


PROF = os.environ.get("PYUSDT_PROF") or str(
    Path(__file__).resolve().parents[1] / "target" / "release" / "pyusdt-prof"
)


def run(argv):
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def recorded(script, out):
    return [PROF, "record", "-o", str(out), "--", sys.executable, "-m", "pyusdt", str(script)]


COUNT_CHILD = """
import sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(int(sys.argv[1]))
"""


def fib_calls(n):
    return 2 * round(((1 + 5**0.5) / 2) ** (n + 1) / 5**0.5) - 1


def instructions(argv):
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True, text=True, check=True,
    )
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def per_call_instructions(prefix, script, n1=18, n2=23):
    i1 = instructions([*prefix, str(script), str(n1)])
    i2 = instructions([*prefix, str(script), str(n2)])
    return (i2 - i1) / (fib_calls(n2) - fib_calls(n1))


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "fib_child.py"
        script.write_text(CHILD.format(n=args.n, repeat=args.repeat))
        plain, traced, ratios = [], [], []
        with_prof = os.geteuid() == 0 and os.path.exists(PROF)
        rec, rec_ratios = [], []
        for i in range(args.rounds):
            # Rotate which goes first, so that none always runs warm.
            runs = [[sys.executable, str(script)], [sys.executable, "-m", "pyusdt", str(script)]]
            if with_prof:
                runs.append(recorded(script, Path(d) / "fib.json"))
            order = list(range(len(runs)))
            order = order[i % len(order):] + order[:i % len(order)]
            got = {k: run(runs[k]) for k in order}
            plain.append(got[0])
            traced.append(got[1])
            ratios.append(got[1] / got[0])
            if with_prof:
                rec.append(got[2])
                rec_ratios.append(got[2] / got[0])
        counted = None
        if shutil.which("valgrind"):
            count_script = Path(d) / "fib_count.py"
            count_script.write_text(COUNT_CHILD)
            counted = (
                per_call_instructions([sys.executable], count_script),
                per_call_instructions([sys.executable, "-m", "pyusdt"], count_script),
            )
    calls = fib_calls(args.n)
    lo, hi = quartiles(ratios)
    print(f"machine: {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}")
    print(f"fib({args.n}): {calls:,} Python calls; best of {args.repeat} per child; "
          f"{args.rounds} alternating rounds")
    print()
    print("| run | median time | per call | ratio to python (IQR) |")
    print("| --- | --- | --- | --- |")
    mp = statistics.median(plain)
    print(f"| python | {mp * 1e3:.2f} ms | {mp / calls * 1e9:.1f} ns | 1 |")
    mt = statistics.median(traced)
    print(f"| python -m pyusdt, no tracer | {mt * 1e3:.2f} ms | {mt / calls * 1e9:.1f} ns | "
          f"{statistics.median(ratios):.3f} ({lo:.3f}-{hi:.3f}) |")
    if rec:
        mr = statistics.median(rec)
        rlo, rhi = quartiles(rec_ratios)
        print(f"| pyusdt-prof record, default views, 99 Hz | {mr * 1e3:.2f} ms | "
              f"{mr / calls * 1e9:.1f} ns | {statistics.median(rec_ratios):.3f} ({rlo:.3f}-{rhi:.3f}) |")
    if counted:
        print()
        print("| run | instructions per Python call (callgrind) | ratio |")
        print("| --- | --- | --- |")
        print(f"| python | {counted[0]:.1f} | 1 |")
        print(f"| python -m pyusdt, no tracer | {counted[1]:.1f} | {counted[1] / counted[0]:.4f} |")
    else:
        print("\n(valgrind not found: no instruction counts)")


if __name__ == "__main__":
    main()
