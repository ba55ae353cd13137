"""What an app-defined probe and a span cost while no tracer is attached.

Times, in this one process, a plain attribute read (`obj.attr`, the
yardstick: "no more than an attribute check"), `p.enabled`, a detached
`p.fire(1, "x")`, `with pyusdt.span("x"): pass` (and with one span made
beforehand) and an empty `with` on a plain Python context manager, each as the fastest of ROUNDS timeit runs of N
loops, interleaved so that a noisy moment hits every statement alike.
Prints nanoseconds per statement and each one's ratio to the attribute
read.

usage: python bench/app_probes.py [--n N] [--rounds R]
"""

import argparse
import os
import sys
import tempfile
import timeit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    os.environ.setdefault("PYUSDT_PROBE_DIR", tempfile.mkdtemp(prefix="pyusdt-bench-"))
    import pyusdt

    class Obj:
        def __init__(self):
            self.attr = 1

    class Plain:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    p = pyusdt.Probe("bench", "probe", int, str)
    p.load()
    env = {"obj": Obj(), "p": p, "pyusdt": pyusdt, "plain": Plain(), "s": pyusdt.span("x")}
    stmts = {
        "obj.attr": "obj.attr",
        "p.enabled": "p.enabled",
        'p.fire(1, "x")': 'p.fire(1, "x")',
        'with pyusdt.span("x")': 'with pyusdt.span("x"): pass',
        "with s (one span, made once)": "with s: pass",
        "with plain (a Python class)": "with plain: pass",
    }
    best = {k: float("inf") for k in stmts}
    for _ in range(a.rounds):
        for k, s in stmts.items():
            t = timeit.timeit(s, globals=env, number=a.n)
            best[k] = min(best[k], t / a.n * 1e9)
    base = best["obj.attr"]
    v = sys.version_info
    print(f"Python {v.major}.{v.minor}.{v.micro}, no tracer attached, best of {a.rounds} x {a.n:,}")
    print(f"{'statement':32} {'ns':>7} {'/ obj.attr':>10}")
    for k, ns in best.items():
        print(f"{k:32} {ns:7.1f} {ns / base:10.2f}")


if __name__ == "__main__":
    main()
