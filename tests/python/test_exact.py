"""record --exact: the calls view, from pyusdt's frame_enter/frame_exit
probes, each thread's call stack kept in the kernel. Workloads of known
call shape (tests/scripts/calls.py), and pyperformance's richards against
cProfile's counts."""

import json
import os
import subprocess

import pytest

from conftest import PER_CALL, PY, SCRIPTS, TIMEOUT, VARIANTS, Child, need_bpf, prof_binary
from test_record import fn, fold

CALLS = str(SCRIPTS / "calls.py")

per_call = pytest.mark.skipif(not PER_CALL, reason="sys.monitoring needs Python 3.12+")


def record_exact(tmp_path, shape, extra=(), env=None):
    """The profile's path of `record --exact` of calls.py's shape."""
    return run_exact(tmp_path, shape, extra, env)[0]


def run_exact(tmp_path, shape, extra=(), env=None):
    """`record --exact` of calls.py's shape: the profile's path and the
    finished recorder (the program's output in its stdout)."""
    need_bpf(prof_binary())
    out = tmp_path / f"{shape}.json"
    p = subprocess.run(
        [prof_binary(), "record", "--exact", "-o", str(out), *extra,
         "--", PY, "-m", "pyusdt", CALLS, shape],
        capture_output=True, text=True, timeout=TIMEOUT * 4,
        env={**os.environ, **(env or {})},
    )
    assert p.returncode == 0, p.stderr
    assert "pyusdt-prof: wrote" in p.stderr, p.stderr
    return out, p


def calls_section(path):
    """The calls view's section of `report --format json` (every row)."""
    rep = subprocess.run([prof_binary(), "report", "-i", str(path), "--view", "calls",
                          "--limit", "1000", "--format", "json"], capture_output=True, text=True, check=True)
    return json.loads(rep.stdout)["sections"][0]


def python_chain(stack):
    """The qualnames of a folded stack's Python frames (the thread root left
    out)."""
    return tuple(fn(f) for f in stack[1:])


def by_chain(stacks):
    """{(thread, qualname chain): value}, the thread named "main" for the
    main thread (whose tid is the pid) and by its tid otherwise."""
    out = {}
    for stack, v in stacks.items():
        tid = stack[0].rsplit(" (", 1)[1].rstrip(")")
        key = (tid, python_chain(stack))
        out[key] = out.get(key, 0) + v
    main = {k[0] for k in out if k[1][:1] == ("<module>",)}
    assert len(main) <= 1, main
    return {("main" if k[0] in main else k[0], k[1]): v for k, v in out.items()}


@per_call
def test_calls_are_counted_exactly_per_path_and_thread(tmp_path):
    # A poll thread ticking every millisecond notices the recorder before
    # the launcher has prepared the program: its calls must stay unseen.
    path = record_exact(tmp_path, "known", env={"PYUSDT_CHECK_MSEC": "1"})
    calls = by_chain(fold(path, "calls", count=True))
    top = ("<module>", "shape_known")
    main = "main"
    # fib(15): 1973 calls in all, 1 at the top, 2^k at depth k below it
    # until the recursion thins out.
    fibs = {k: v for k, v in calls.items() if k[0] == main and "fib" in k[1]}
    assert sum(fibs.values()) == 1973
    assert calls[(main, top + ("fib",))] == 1
    assert calls[(main, top + ("fib", "fib"))] == 2
    assert calls[(main, top + ("fib", "fib", "fib"))] == 4
    assert max(len(k[1]) for k in fibs) == len(top) + 15
    # A generator is called once, however often it is resumed.
    assert calls[(main, top + ("numbers",))] == 1
    # An exception unwinds boom; catcher goes on to call after.
    assert calls[(main, top + ("catcher",))] == 5
    assert calls[(main, top + ("catcher", "boom"))] == 5
    assert calls[(main, top + ("catcher", "after"))] == 5
    assert calls[(main, top + ("Shape.method",))] == 100
    assert calls[(main, top + ("nap",))] == 1
    # Each thread has its own stack: its run, then thread_work's 300 leaves.
    others = {k[0] for k in calls} - {main}
    assert len(others) == 2
    for t in others:
        chains = {k[1]: v for k, v in calls.items() if k[0] == t}
        work = [c for c in chains if c[-1] == "thread_work"]
        assert len(work) == 1 and chains[work[0]] == 1
        assert chains[work[0] + ("leaf",)] == 300
        assert all(c[0] == "Thread._bootstrap" for c in chains), chains
    # Nothing of python -m pyusdt's own launcher is in the view: the main
    # thread's calls are the program's, and threading's at exit.
    assert {k[1][0] for k in calls if k[0] == main} == {"<module>", "_shutdown"}


@per_call
def test_threads_that_come_and_go_never_fill_the_map_of_paths(tmp_path):
    """A service that starts a thread per request makes more call paths
    than the kernel's map holds (65,536): the recorder moves the paths of
    threads that exited out of it as it fills, and every call is counted,
    none lost."""
    path = record_exact(tmp_path, "churn")
    calls = by_chain(fold(path, "calls", count=True))
    view = next(v for v in json.loads(path.read_text())["views"] if v["kind"] == "calls")
    assert view["lost"] == 0, view["lost"]
    leaves = {}
    for (tid, chain), n in calls.items():
        # The main thread's paths are left out: code objects are named by
        # address, and a module's code freed after its import may have
        # left its address to a leaf compiled later (seen on 3.14), which
        # then names that import's path too.
        if tid != "main" and chain[-1].startswith("churn_leaf_"):
            assert chain[-2] == "churn_work", chain
            leaves.setdefault(tid, {})[chain[-1]] = n
    # 2000 threads (a thread id the kernel used again sums two threads'),
    # each calling each of its 40 leaves once.
    assert sum(sum(t.values()) for t in leaves.values()) == 2000 * 40
    assert all(len(t) == 40 for t in leaves.values())
    assert sum(v for k, v in calls.items() if k[0] != "main" and k[1][-1:] == ("churn_work",)) == 2000


@per_call
@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_every_program_variant_counts_the_same_calls(tmp_path, variant):
    """The raw_tp twins of the thread-exit and switch handlers (kernels
    without tp_btf), and the programs with bounded loops (kernels without
    bpf_loop), give the same exact counts."""
    path = record_exact(tmp_path, "known", env=variant)
    calls = by_chain(fold(path, "calls", count=True))
    assert sum(v for k, v in calls.items() if k[0] == "main" and "fib" in k[1]) == 1973
    others = {k[0] for k in calls} - {"main"}
    assert len(others) == 2
    for t in others:
        assert sum(v for k, v in calls.items() if k[0] == t and k[1][-1] == "leaf") == 300


@per_call
def test_attach_sees_calls_under_frames_entered_before(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "attach.json"
    with Child([PY, "-m", "pyusdt", CALLS, "attach"]) as target:
        target.expect("^waiting$")
        with Child([prof_binary(), "record", "--exact", "-p", str(target.pid),
                    "-o", str(out)]) as rec:
            assert target.finish()[0] == 0
            code, _, err = rec.finish()
            assert code == 0, err
    calls = by_chain(fold(out, "calls", count=True))
    outer = ("<module>", "shape_attach", "attach_outer")
    assert calls[("main", outer + ("leaf",))] == 50
    # The frames entered before the recorder attached are not counted as
    # calls; only the call that found the events on and threading's at exit
    # happened besides.
    assert {k[1] for k in calls if k[1][0] != "_shutdown"} == {outer + ("leaf",),
                                                               outer + ("traced",)}, calls


@per_call
def test_self_and_inclusive_time(tmp_path):
    path = record_exact(tmp_path, "known")
    times = by_chain(fold(path, "calls"))
    main = "main"
    top = ("<module>", "shape_known")
    # nap sleeps 0.2 s in C: all of it is nap's own time.
    assert times[(main, top + ("nap",))] >= 200_000_000
    # Self time under a path; inclusive time is the subtree's.
    module = sum(v for k, v in times.items() if k[0] == main and k[1][:1] == ("<module>",))
    assert module >= times[(main, top + ("nap",))]
    sec = calls_section(path)
    assert sec["view"] == "calls"
    rows = {fn(r["function"]): r for r in sec["by_total"]}
    assert rows["fib"]["calls"] == 1973
    assert rows["nap"]["self_value"] >= 200_000_000
    assert rows["nap"]["total_value"] == rows["nap"]["self_value"]
    # shape_known's inclusive time holds all it called, nap included.
    assert rows["shape_known"]["total_value"] >= rows["nap"]["total_value"] + rows["fib"]["total_value"]
    text = subprocess.run([prof_binary(), "report", "-i", str(path), "--view", "calls"],
                          capture_output=True, text=True, check=True).stdout
    assert "calls of nap (calls.py:48): 1, self 20" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@per_call
def test_call_times_agree_with_the_programs_clock(tmp_path):
    # Five naps of 0.2 s: their time in the calls view is what the program
    # itself measured around them, within 1% (a counter scaled wrong would
    # be off by its error).
    out, p = run_exact(tmp_path, "clock")
    measured = float(p.stdout.split("naps ")[1].split()[0])
    rows = {fn(r["function"]): r for r in calls_section(out)["by_total"]}
    assert rows["nap"]["calls"] == 5
    assert measured >= 1.0
    assert abs(rows["nap"]["self_value"] / 1e9 - measured) <= 0.01 * measured, (rows["nap"], measured)


@per_call
def test_calls_agree_with_cprofile_on_richards(tmp_path):
    # pyperformance (its benchmarks are data files) comes with `make deps`.
    expected_path = tmp_path / "cprofile.json"
    subprocess.run([PY, CALLS, "richards", "--cprofile", str(expected_path)],
                   check=True, timeout=TIMEOUT * 4)
    expected = json.loads(expected_path.read_text())
    assert sum(expected.values()) > 10_000
    path = record_exact(tmp_path, "richards")
    profile = json.loads(path.read_text())
    frames = profile["frames"]
    view = next(v for v in profile["views"] if v["kind"] == "calls")
    got = {}
    for s in view["samples"]:
        # cProfile saw run_richards's calls only, not the module's exec.
        if not any(frames[f].startswith("run_richards (") for f in s["stack"]):
            continue
        leaf = frames[s["stack"][-1]]
        if "run_benchmark.py:" not in leaf:
            continue
        where = leaf.rsplit(" (", 1)[1].rstrip(")")
        got[where] = got.get(where, 0) + s["count"]
    assert got == expected


@per_call
def test_flamegraph_of_the_calls_view(tmp_path):
    path = record_exact(tmp_path, "known")
    svg = tmp_path / "calls.svg"
    subprocess.run([prof_binary(), "flame", str(svg), "-i", str(path), "--view", "calls"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    text = svg.read_text()
    assert "calls view" in text and "fib (" in text and "nap (" in text


@pytest.mark.skipif(PER_CALL, reason="Python 3.11 only: it has no sys.monitoring")
def test_exact_needs_python_3_12(tmp_path):
    need_bpf(prof_binary())
    p = subprocess.run(
        [prof_binary(), "record", "--exact", "-o", str(tmp_path / "x.json"),
         "--", PY, "-m", "pyusdt", CALLS, "known"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert p.returncode != 0
    assert "record --exact needs Python 3.12 or later" in p.stderr, p.stderr
    assert not (tmp_path / "x.json").exists()
