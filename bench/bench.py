"""`make bench`: what profiling costs, side by side with what users would
pick instead, written to bench/RESULTS.md.

Every figure is a ratio to the plain run of the same workload measured in
this same invocation: the median over --rounds rounds (columns alternate
within a round, so a noisy moment hits them alike), with the spread
(lowest and highest ratio) beside it. See bench/workloads.py for the
workloads. Needs root (BPF), pyusdt-prof built, and in this interpreter's
environment pyusdt, pyperf, pyperformance and py-spy; bpftrace on PATH.

usage: python bench/bench.py [--rounds N (5)] [--quick] [--out bench/RESULTS.md]
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROF = os.environ.get("PYUSDT_PROF") or str(ROOT / "target" / "release" / "pyusdt-prof")
WORK = str(ROOT / "bench" / "workloads.py")
PY = sys.executable
PYPERF_BENCHES = ["richards", "nbody", "float", "chaos", "spectral_norm"]
VIEWS = ["cpu", "offcpu", "syscall", "wakeup", "gil"]


def pyperformance_dir():
    import pyperformance

    return os.path.join(os.path.dirname(pyperformance.__file__), "data-files", "benchmarks")


def extension():
    import pyusdt._native as n

    return n.__file__


# pyusdt built with feature trap-nop (1-byte nop probe sites, as usdt.h
# and <sys/sdt.h> emit: every probe hit is a trap), installed here by
# `make bench`: the seed's way as it was.
TRAP_SITE = ROOT / "target" / "trap-site"


def trap_extension():
    found = sorted(TRAP_SITE.glob("pyusdt/_native*.so"))
    if not found:
        raise RuntimeError(f"no trap-nop build of pyusdt in {TRAP_SITE} (make bench builds it)")
    return str(found[0])


# bench/monitoring_floor.c, built for this interpreter by floor_module().
MONITORING_DIR = ROOT / "target" / "bench-monitoring"


def floor_module():
    """Builds bench/monitoring_floor.c into MONITORING_DIR (gcc, this
    interpreter's headers) and returns the directory."""
    import sysconfig

    out = MONITORING_DIR / ("monitoring_floor" + sysconfig.get_config_var("EXT_SUFFIX"))
    src = ROOT / "bench" / "monitoring_floor.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        MONITORING_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"],
                        str(src), "-o", str(out)], check=True)
    return str(MONITORING_DIR)


def bench_env():
    return {**os.environ, "BENCH_PYPERFORMANCE": pyperformance_dir()}


def parse(out):
    for line in out.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"no result in: {out[-500:]}")


def run(cmd, env=None, timeout=600):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or bench_env(),
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-800:]}")
    return p


class Tracer:
    """A bpftrace program attached for the length of one run."""

    def __init__(self, program):
        self.p = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("bpftrace exited before attaching")
            if line.startswith("Attaching"):
                break
        # "Attaching N probes..." comes before the last attach: give the
        # kernel a moment to finish (the only sleep: bpftrace prints nothing
        # after it attaches).
        time.sleep(0.5)

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def seed_program(ext=None):
    ext = ext or extension()
    return (f"usdt:{ext}:pyusdt:PY_START {{ @calls[tid] = count(); }} "
            f"usdt:{ext}:pyusdt:PY_RETURN {{ @rets[tid] = count(); }}")


FLOOR = str(ROOT / "target" / "release" / "examples" / "floor")


class Floor:
    """bench/floor.rs: empty handlers at the recorder's attach points."""

    def __init__(self, points=()):
        self.p = subprocess.Popen([FLOOR, *points], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        if self.p.stdout.readline().strip() != "attached":
            raise RuntimeError("the floor's handlers did not attach")

    def stop(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


class BpfStats:
    """Polls bpftool for the run time of pyusdt-prof's programs while a
    recording runs (kernel.bpf_stats_enabled=1): the last reading before
    they are unloaded."""

    def __init__(self):
        self.last = {}
        self.stop_flag = False
        # Programs loaded already belong to an earlier run that is still
        # going away: not this one's.
        self.before = {p["id"] for p in self.programs()}
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    @staticmethod
    def programs():
        try:
            out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True,
                                 text=True, timeout=10).stdout
            return json.loads(out or "[]")
        except Exception:
            return []

    def loop(self):
        while not self.stop_flag:
            for p in self.programs():
                name = p.get("name", "")
                if name in HANDLERS and p.get("run_cnt") and p["id"] not in self.before:
                    self.last[(name, p["id"])] = (p["run_cnt"], p["run_time_ns"])
            time.sleep(0.2)

    def stop(self):
        self.stop_flag = True
        self.t.join()
        per = {}
        for (name, _), (cnt, ns) in self.last.items():
            c, t = per.get(name, (0, 0))
            per[name] = (c + cnt, t + ns)
        return per


HANDLERS = {"on_calls": "calls batch (128 calls and returns)", "thread_exit_btf": "thread exit",
            "task_exit_btf": "sched_process_exit (thread names)", "on_cpu_sample": "cpu sample", "switch_btf": "sched_switch",
            "wakeup_btf": "sched_waking", "enter_btf": "sys_enter", "exit_btf": "sys_exit",
            "take_gil_enter": "take_gil entry", "take_gil_return": "take_gil return",
            "drop_gil_enter": "drop_gil entry", "gil_futex_enter_btf": "sys_enter (gil)",
            "gil_futex_exit_btf": "sys_exit (gil)", "gil_switch_btf": "sched_switch (gil)",
            "sys_back_btf": "sys_exit (offcpu)"}


def workload_cmd(w):
    return [WORK] + (["pyperf", w[7:]] if w.startswith("pyperf:") else [w])


def measure(column, w):
    """One run of workload `w` under `column`: its result and, for record
    columns, the recorder's own CPU seconds and peak MiB."""
    args = workload_cmd(w)
    extra = {}
    with tempfile.TemporaryDirectory() as d:
        if column == "plain":
            p = run([PY] + args)
        elif column == "pyusdt":
            p = run([PY, "-m", "pyusdt"] + args)
        elif column.startswith("record"):
            views = column.split(" ", 1)[1] if " " in column else None
            cmd = [PROF, "record", "-o", f"{d}/p.json"]
            if views == "--exact":
                cmd.append("--exact")
            elif views:
                # "gil --gil-probes": the view, then its options.
                first, *rest = views.split()
                cmd += ["--views", first, *rest]
            p = run(cmd + ["--", PY, "-m", "pyusdt"] + args)
            m = re.search(r"recorder ([\d.]+) s CPU, ([\d.]+) MiB peak", p.stderr)
            if m:
                extra = {"cpu": float(m.group(1)), "rss": float(m.group(2))}
            m = re.search(r", lost (\d+)", p.stderr)
            if m:
                extra["lost"] = int(m.group(1))
        elif column == "cProfile":
            p = run([PY, "-m", "cProfile", "-o", f"{d}/p.out"] + args)
        elif column.startswith("monitoring"):
            mode = {"monitoring no-op": "noop"}.get(column, column.split()[-1])
            p = run([PY, str(ROOT / "bench" / "monitoring_floor.py"), floor_module(), mode] + args)
        elif column.startswith("py-spy"):
            cmd = [shutil.which("py-spy") or str(Path(PY).parent / "py-spy"), "record", "-r",
                   "100", "-o", f"{d}/p.txt", "-f", "raw"]
            if "nonblocking" in column:
                cmd.append("--nonblocking")
            p = run(cmd + ["--", PY] + args)
        elif column == "bpftrace (seed, trap)":
            tr = Tracer(seed_program(trap_extension()))
            try:
                env = {**bench_env(), "PYTHONPATH": str(TRAP_SITE)}
                p = run([PY, "-m", "pyusdt"] + args, env=env)
            finally:
                tr.stop()
        elif column == "bpftrace (seed)" or column.startswith("floor"):
            floor = column.startswith("floor")
            tr = Floor(column.split()[1:]) if floor else Tracer(seed_program())
            try:
                p = run([PY] + args if floor else [PY, "-m", "pyusdt"] + args)
            finally:
                tr.stop()
        else:
            raise ValueError(column)
    r = parse(p.stdout)
    r.update(extra)
    return r


def ratio_cells(rows, base, key, invert=False):
    """median and spread of per-round ratios to `base`."""
    out = {}
    for col, vals in rows.items():
        rs = []
        for v, b in zip(vals, rows[base]):
            if v is None or b is None:
                continue
            rs.append((b[key] / v[key]) if invert else (v[key] / b[key]))
        out[col] = rs
    return out


def fmt(rs):
    if not rs:
        return "n/a"
    med = statistics.median(rs)
    if len(rs) == 1:
        return f"{med:.3f}"
    return f"{med:.3f} ({min(rs):.3f}–{max(rs):.3f})"


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"- CPU: {cpu}, {os.cpu_count()} CPUs\n- kernel: {platform.release()}\n"
            f"- Python: {platform.python_version()} ({PY})\n"
            f"- pyusdt-prof: {subprocess.run([PROF, '--version'], capture_output=True, text=True).stdout.strip()}\n")


def throughput(rounds_threads):
    """Writes per second under `record --views syscall` with a rising
    number of threads, and what was lost."""
    rows = []
    shapes = str(ROOT / "tests" / "scripts" / "shapes.py")
    for threads in rounds_threads:
        with tempfile.TemporaryDirectory() as d:
            env = {**bench_env(), "STORM_THREADS": str(threads)}
            p = run([PROF, "record", "--views", "syscall", "-o", f"{d}/p.json", "--",
                     PY, "-m", "pyusdt", shapes, "storm"], env=env)
            made = int(p.stdout.split()[-1])
            prof = json.load(open(f"{d}/p.json"))
            v = prof["views"][0]
            rows.append((threads, made / 2.0, v["lost"], v["events"]))
    return rows


def flame_time():
    """Seconds to draw a 1M-sample profile: pyusdt-prof flame, and inferno's
    own binary on the same folded stacks."""
    with tempfile.TemporaryDirectory() as d:
        frames = [f"f{i} (/app/mod{i % 50}.py:{i})" for i in range(2000)]
        samples = []
        import random

        rnd = random.Random(7)
        for i in range(20000):
            depth = rnd.randint(3, 30)
            stack = [rnd.randrange(len(frames)) for _ in range(depth)]
            samples.append({"pid": 0, "tid": 1 + i % 8, "stack": stack, "value": 50, "count": 50})
        prof = {"format": "pyusdt-prof profile", "version": 1, "pid": 1, "command": ["x"],
                "python": "3.13.0", "start_unix_ns": 0, "duration_ns": 1, "sample_hz": 99,
                "threads": {str(t): f"t{t}" for t in range(1, 9)}, "frames": frames,
                "views": [{"kind": "cpu", "unit": "samples", "events": 1_000_000, "lost": 0,
                           "samples": samples}], "walk_errors": {}}
        pj = Path(d) / "p.json"
        pj.write_text(json.dumps(prof))
        t = time.perf_counter()
        run([PROF, "flame", f"{d}/a.svg", "-i", str(pj)])
        ours = time.perf_counter() - t
        folded = run([PROF, "fold", "-i", str(pj)]).stdout
        (Path(d) / "f.txt").write_text(folded)
        inferno = shutil.which("inferno-flamegraph") or str(Path.home() / ".cargo/bin/inferno-flamegraph")
        theirs = None
        if os.path.exists(inferno):
            t = time.perf_counter()
            subprocess.run([inferno, f"{d}/f.txt"], stdout=subprocess.DEVNULL, check=True)
            theirs = time.perf_counter() - t
        return ours, theirs


def attach_latency(n=3):
    """Seconds from `record -p` starting to its first sample, on a busy
    program (the recorder's attach, then one sampling period)."""
    out = []
    shapes = str(ROOT / "tests" / "scripts" / "shapes.py")
    for _ in range(n):
        app = subprocess.Popen([PY, "-m", "pyusdt", shapes, "busy"], stdout=subprocess.PIPE,
                               text=True, env=bench_env())
        app.stdout.readline()
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            rec = subprocess.Popen([PROF, "record", "-p", str(app.pid), "-o", f"{d}/p.json"],
                                   stderr=subprocess.PIPE, text=True)
            line = rec.stderr.readline()
            attached = time.perf_counter() - t
            rec.send_signal(signal.SIGINT)
            rec.communicate(timeout=60)
            out.append(attached + 1 / 99)
        app.kill()
        app.wait()
    return out


def profile_size():
    """Bytes per minute of a recording of the demo app, all views."""
    with tempfile.TemporaryDirectory() as d:
        run([PROF, "record", "-o", f"{d}/p.json", "--", PY, "-m", "pyusdt",
             str(ROOT / "examples" / "demo_app.py"), "--seconds", "20"])
        size = os.path.getsize(f"{d}/p.json")
        prof = json.load(open(f"{d}/p.json"))
        return size * 60e9 / prof["duration_ns"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer workloads and columns")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (BPF)")
    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=False)

    workloads = ["fib", "writes", "pingpong", "http"] + [f"pyperf:{b}" for b in PYPERF_BENCHES]
    columns = (["plain", "pyusdt", "record all"] + [f"record {v}" for v in VIEWS]
               + ["record offcpu --sample-waits-below 0",
                  "record offcpu --offcpu-stacks-at syscall-exit", "record gil --gil-probes",
                  "record --exact", "monitoring no-op", "monitoring clock",
                  "monitoring tsc", "cProfile", "py-spy", "py-spy --nonblocking",
                  "bpftrace (seed)", "bpftrace (seed, trap)", "floor", "floor sched"])
    if args.quick:
        workloads = workloads[:4] + workloads[4:5]
        columns = ["plain", "pyusdt", "record all", "record syscall", "record --exact",
                   "cProfile", "py-spy", "bpftrace (seed)", "bpftrace (seed, trap)", "floor"]
    started = time.monotonic()
    results = {w: {c: [] for c in columns} for w in workloads}
    stats = {}
    for r in range(args.rounds):
        for w in workloads:
            for c in columns:
                slow = c.startswith("bpftrace (seed") or c == "record --exact"
                per_call = w == "fib" or w.startswith("pyperf:")
                if slow and per_call and r > 0:
                    results[w][c].append(None)  # one round: per-call tracing takes minutes
                    continue
                if c.startswith("monitoring") and not per_call:
                    results[w][c].append(None)  # a floor of per-call tools: calls' workloads
                    continue
                bs = BpfStats() if c.startswith("record") else None
                try:
                    res = measure(c, w)
                except Exception as e:  # a column that cannot run here
                    print(f"bench: {w} under {c}: {e}", file=sys.stderr)
                    res = None
                if bs:
                    for name, (cnt, ns) in bs.stop().items():
                        a, b = stats.get((w, c, name), (0, 0))
                        stats[(w, c, name)] = (a + cnt, b + ns)
                results[w][c].append(res)
                print(f"bench: round {r + 1}/{args.rounds} {w:<22} {c:<22} "
                      f"{res['seconds'] if res else float('nan'):.4f} s", file=sys.stderr)

    lines = ["# Benchmark results", "",
             f"Regenerate with `sudo make bench` (the {args.rounds} rounds of this run took "
             f"{(time.monotonic() - started) / 60:.0f} minutes). Every figure is a ratio to "
             "the plain run of the same workload in the same invocation: the median of "
             f"{args.rounds} rounds, with the lowest and highest ratio in brackets. Time "
             "ratios: above 1 is slower. http: requests a second, ratio of plain to the "
             "column (above 1 is fewer requests).", "", "## Machine", "", machine(),
             "## Time, as a ratio to plain", ""]
    lines.append("| workload | " + " | ".join(columns[1:]) + " |")
    lines.append("|" + " --- |" * len(columns))
    for w in workloads:
        key, inv = ("rps", True) if w == "http" else ("seconds", False)
        cells = ratio_cells(results[w], "plain", key, invert=inv)
        plain = [v[key] for v in results[w]["plain"] if v]
        label = f"{w} (plain {statistics.median(plain):.3g} {'req/s' if inv else 's'})" if plain else w
        lines.append(f"| {label} | " + " | ".join(fmt(cells[c]) for c in columns[1:]) + " |")
    lines += ["", "`record --exact` records every Python call (the calls view) on top of the "
              "default cpu view. `bpftrace (seed)` counts PY_START and PY_RETURN per thread on "
              "pyusdt's probes (5-byte nop sites, which kernel 6.18 enters by a call); "
              "`bpftrace (seed, trap)` the same on a build of pyusdt with the 1-byte nop of "
              "usdt.h, as the seed had it (every probe hit is a trap). Per-call columns run one "
              "round on fib and pyperformance. `monitoring no-op`, `monitoring clock` and "
              "`monitoring tsc` (bench/monitoring_floor.py) turn on the sys.monitoring events "
              "that `--exact` turns on, each calling a C callback that does nothing, reads "
              "CLOCK_MONOTONIC, or reads the time stamp counter: what any tool that sees every "
              "call that way pays before it records anything (on fib and pyperformance "
              "only).", "",
              "`floor` (bench/floor.rs): the default "
              "views' kernel attach points (raw_syscalls enter and exit, sched_switch, "
              "sched_waking as tp_btf, the cpu-clock sampler at 99 Hz) with handlers that do "
              "nothing, under plain python: what the kernel charges for running any handler "
              "there; `floor sched` the same at sched_switch and sched_waking alone, the "
              "offcpu and wakeup views' attach points. The offcpu and wakeup columns sample "
              "the waits under 1 ms (the default); `record offcpu --sample-waits-below 0` "
              "counts every wait; `record offcpu --offcpu-stacks-at syscall-exit` reads a "
              "kept wait's stacks at the exit of the syscall it left in, not at every "
              "departure.", ""]

    def fib_ratio(col):
        cells = ratio_cells(results.get("fib", {}), "plain", "seconds")
        rs = cells.get(col) or []
        return statistics.median(rs) if rs else None

    exact, seed, trap = (fib_ratio(c) for c in
                         ("record --exact", "bpftrace (seed)", "bpftrace (seed, trap)"))
    if exact and seed and trap:
        lines += ["## `--exact` against the seed's way (fib)", "",
                  f"`record --exact` {exact:.1f}× plain; bpftrace on PY_START/PY_RETURN "
                  f"{seed:.1f}× on the same probes ({seed / exact:.1f}× slower than --exact), "
                  f"{trap:.1f}× with the seed's 1-byte nop sites ({trap / exact:.1f}× slower than "
                  "--exact; target: 3×). cProfile: "
                  f"{fib_ratio('cProfile') or float('nan'):.1f}×.", ""]
    noop, clock, tsc = (fib_ratio(c) for c in
                        ("monitoring no-op", "monitoring clock", "monitoring tsc"))
    if exact and noop and clock and tsc:
        lines += [f"sys.monitoring alone, on the same events: {noop:.2f}× with callbacks that do "
                  f"nothing, {clock:.2f}× with a CLOCK_MONOTONIC read in each, {tsc:.2f}× with a "
                  f"time stamp counter read in each (target for `--exact`: 3×). Of `--exact`'s "
                  f"{exact:.2f}×, {clock:.2f}× is that floor with the clock it reads; the rest is "
                  "its ring and the BPF program's drain.", ""]

    lines += ["## The recorder's own cost", "",
              "CPU seconds of the pyusdt-prof process and its peak resident memory, per run "
              "(median); the BPF programs' time is spent in the target and shows in the ratios.",
              "", "| workload | column | recorder CPU s | peak MiB | lost |", "| --- | --- | --- | --- | --- |"]
    for w in workloads:
        for c in columns:
            if not c.startswith("record"):
                continue
            vals = [v for v in results[w][c] if v and "cpu" in v]
            if vals:
                lines.append(f"| {w} | {c} | {statistics.median(v['cpu'] for v in vals):.2f} | "
                             f"{statistics.median(v['rss'] for v in vals):.1f} | "
                             f"{max(v.get('lost', 0) for v in vals)} |")
    lines += ["", "## BPF run time per event", "",
              "`kernel.bpf_stats_enabled=1`, `run_time_ns / run_cnt` of each handler "
              "(bpftool), summed over the rounds of the record columns.", "",
              "| workload | column | handler | events | ns per event |", "| --- | --- | --- | --- | --- |"]
    for (w, c, name), (cnt, ns) in sorted(stats.items()):
        lines.append(f"| {w} | {c} | {HANDLERS[name]} | {cnt} | {ns / max(cnt, 1):.0f} |")

    # Syscall cost against the floor, per write.
    wr = results.get("writes", {})
    def per_write(col):
        vals = [v["seconds"] for v in wr.get(col, []) if v]
        return statistics.median(vals) / int(os.environ.get("BENCH_WRITES", "200000")) * 1e9 if vals else None
    plain_ns, floor_ns, sys_ns = per_write("plain"), per_write("floor"), per_write("record syscall")
    lines += ["", "## A 1-byte write, in ns", ""]
    if plain_ns and floor_ns and sys_ns:
        added, floor_added = sys_ns - plain_ns, floor_ns - plain_ns
        lines += [f"plain {plain_ns:.0f} ns; with empty handlers (floor) {floor_ns:.0f} ns; under "
                  f"`record --views syscall` {sys_ns:.0f} ns. Added cost {added:.0f} ns, "
                  f"{added / max(floor_added, 1):.1f}× the floor's added {floor_added:.0f} ns "
                  "(target: 1.5×).", ""]

    print("bench: throughput", file=sys.stderr)
    tp = throughput([1, 2, 4, 8])
    lines += ["## Syscall throughput under `record --views syscall`", "",
              "1-byte writes to /dev/null from N threads for 2 s (tests/scripts/shapes.py storm).",
              "", "| threads | writes/s | recorded | lost |", "| --- | --- | --- | --- |"]
    for threads, rate, lost, events in tp:
        lines.append(f"| {threads} | {rate:,.0f} | {events:,} | {lost} |")
    lines.append("")
    print("bench: flame, attach, size", file=sys.stderr)
    ours, theirs = flame_time()
    att = attach_latency()
    size = profile_size()
    lines += ["## Drawing, attaching, storing", "",
              f"- `flame` on a 1M-sample profile (20,000 stacks of 3–30 frames): {ours:.2f} s; "
              + (f"inferno-flamegraph on the same folded stacks: {theirs:.2f} s." if theirs
                 else "inferno-flamegraph not installed (cargo install inferno)."),
              f"- `record -p` to the first sample: median {statistics.median(att):.2f} s "
              f"(attach, measured to the recorder's ready line, plus one 99 Hz period).",
              f"- profile size: {size / 1024:.0f} KiB per minute of the demo app, all views.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"bench: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
