"""Per-call cost of `python -m pyusdt` with no tracer attached.

Runs a call-heavy function (fib) in fresh interpreters, alternating plain
`python` and `python -m pyusdt`, and reports the median time of each and
their ratio, all measured in this one run. Each child times only fib,
not its start-up.

usage: python bench/overhead.py [--rounds N] [--n FIB_N]
"""

import argparse
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(20)  # warm up the specializing interpreter
t = time.perf_counter()
fib({n})
print(time.perf_counter() - t)
"""


def run(argv):
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--n", type=int, default=27)
    args = ap.parse_args()
    script = Path(__file__).with_name("_fib_child.py")
    script.write_text(CHILD.format(n=args.n))
    try:
        plain, traced = [], []
        for _ in range(args.rounds):
            plain.append(run([sys.executable, str(script)]))
            traced.append(run([sys.executable, "-m", "pyusdt", str(script)]))
    finally:
        script.unlink()
    calls = 2 * round(((1 + 5**0.5) / 2) ** (args.n + 1) / 5**0.5) - 1
    mp, mt = statistics.median(plain), statistics.median(traced)
    spread = lambda xs: (max(xs) - min(xs)) / statistics.median(xs) * 100  # noqa: E731
    print(f"machine: {platform.processor() or platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}")
    print(f"fib({args.n}): {calls:,} Python calls, median of {args.rounds} alternating runs")
    print()
    print("| run | median | spread | per call | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, xs, m in (("python", plain, mp), ("python -m pyusdt (no tracer)", traced, mt)):
        print(f"| {name} | {m * 1e3:.1f} ms | {spread(xs):.1f}% | {m / calls * 1e9:.1f} ns | "
              f"{m / mp:.3f} |")


if __name__ == "__main__":
    main()
