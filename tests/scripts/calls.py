"""Workloads of known call shape for `record --exact` (the calls view).

usage: python -m pyusdt calls.py SHAPE
       python calls.py richards --cprofile OUT.json

Each shape_NAME function is one workload; its docstring says what the
calls view must count. `richards` runs pyperformance's pure-Python
richards benchmark; with --cprofile it runs under cProfile instead and
writes each function's call count ({"file:firstline": ncalls}).
"""

import importlib.util
import json
import sys
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def numbers(n):
    for i in range(n):
        yield i


def boom():
    raise ValueError("boom")


def catcher():
    try:
        boom()
    except ValueError:
        return after()


def after():
    return 1


class Shape:
    def method(self):
        return 1


def nap():
    time.sleep(0.2)


def leaf():
    return 1


def thread_work(n):
    for _ in range(n):
        leaf()


def shape_known():
    """fib(15) called once: 1973 calls of fib, 1 at the top; numbers(7)
    drained once: 1 call (8 activations); catcher() 5 times, each calling
    boom (which raises) and then after; Shape().method() 100 times; nap()
    once, 0.2 s asleep in C (self time); two threads named calls-1 and
    calls-2 each run thread_work(300): 1 call and 300 calls of leaf."""
    fib(15)
    sum(numbers(7))
    for _ in range(5):
        catcher()
    s = Shape()
    for _ in range(100):
        s.method()
    nap()
    threads = [threading.Thread(target=thread_work, args=(300,), name=f"calls-{i}")
               for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def shape_clock():
    """nap() five times (1 s asleep), timed by the program itself with
    perf_counter (CLOCK_MONOTONIC): prints "naps SECONDS". The calls view's
    time of nap must agree with it, whichever clock stamped the calls: the
    first tick of pyusdt's poll thread reads clock_gettime, the rest the
    time stamp counter scaled to it."""
    t = time.perf_counter()
    for _ in range(5):
        nap()
    print(f"naps {time.perf_counter() - t:.6f}", flush=True)


def traced():
    """Whether a tracer has the per-call events on (pyusdt's poll thread
    turns them on within a tick of a recorder attaching)."""
    import pyusdt

    return {"PY_START", "PY_RETURN"} <= set(pyusdt.status()["active"])


def shape_attach():
    """Prints "waiting", then waits (inside attach_outer, entered before
    any recorder) until the per-call events are on, and calls leaf 50
    times: a recorder attached with -p sees 50 calls of leaf under
    <module>, shape_attach, attach_outer, and no call of those three."""
    attach_outer()


def attach_outer():
    sys.stdout.write("waiting\n")
    sys.stdout.flush()
    while not traced():
        time.sleep(0.001)
    for _ in range(50):
        leaf()


def richards_module():
    import pyperformance

    path = (f"{pyperformance.__path__[0]}/data-files/benchmarks/bm_richards/"
            "run_benchmark.py")
    spec = importlib.util.spec_from_file_location("bm_richards", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_richards(mod):
    mod.Richards().run(1)


def shape_richards():
    """pyperformance's richards, one iteration (run_richards): every call
    counted as cProfile counts it."""
    run_richards(richards_module())


# CHURN_THREADS threads, one after the other, each calling CHURN_LEAVES
# functions of their own code: about 46 call paths a thread, 92,000 in
# all, more than the kernel's map of paths holds (65,536). At most about
# a thousand threads a second, as a busy service starts them (the
# recorder moves exited threads' paths out of the map every 100 ms; an
# unpaced loop here starts 8,000 a second and fills the map in between).
CHURN_THREADS = 2000
CHURN_LEAVES = 40
CHURN = {}
exec("\n".join(f"def churn_leaf_{i}():\n    pass" for i in range(CHURN_LEAVES)), CHURN)


def churn_work():
    for i in range(CHURN_LEAVES):
        CHURN[f"churn_leaf_{i}"]()


def shape_churn():
    for _ in range(CHURN_THREADS):
        t = threading.Thread(target=churn_work)
        t.start()
        t.join()
        time.sleep(0.001)


if __name__ == "__main__":
    shape = sys.argv[1]
    if shape == "richards" and sys.argv[2:3] == ["--cprofile"]:
        import cProfile
        import pstats

        mod = richards_module()
        prof = cProfile.Profile()
        prof.runcall(run_richards, mod)
        stats = pstats.Stats(prof).stats
        counts = {f"{file}:{line}": nc for (file, line, _), (_, nc, *_) in stats.items()
                  if file.endswith("run_benchmark.py")}
        with open(sys.argv[3], "w") as f:
            json.dump(counts, f)
    else:
        globals()[f"shape_{shape}"]()
