"""The gil view, against ground truth: threads of known shape, recorded for
real under BPF (uprobes on the interpreter's take_gil and drop_gil)."""

import json
import os
import shutil
import subprocess
import sysconfig

import pytest

from conftest import PY, SCRIPTS, TIMEOUT, need_bpf, prof_binary
from test_record import fold, fn, record

SHAPES = str(SCRIPTS / "shapes.py")


def per_thread(stacks, name):
    """The stacks (without the root) of the thread named `name`."""
    return {s[1:]: v for s, v in stacks.items() if s[0].startswith(f"thread {name} (")}


def waiter_leaf(stack):
    """The waiter's innermost Python function in a gil-view stack."""
    py = []
    for f in stack:
        if f.startswith("GIL held by "):
            break
        if " (" in f and f.endswith(")"):
            py.append(fn(f))
    return py[-1] if py else None


def holder(stack):
    return next((f for f in stack if f.startswith("GIL held by ")), None)


def test_two_cpu_bound_threads_each_wait_about_half(tmp_path):
    code, path = record(tmp_path, "gil_pair", views="gil,cpu")
    assert code == 0
    stacks = fold(path, "gil")
    for me, other in (("spin-a", "spin-b"), ("spin-b", "spin-a")):
        mine = per_thread(stacks, me)
        waited = sum(mine.values())
        # Each thread lives 2 s and holds the GIL about half of it.
        assert abs(waited / 2e9 - 0.5) <= 0.10, f"{me} waited {waited / 1e6:.0f} ms of 2000"
        by_other = sum(v for s, v in mine.items() if (holder(s) or "").startswith(f"GIL held by thread {other} ("))
        assert by_other >= 0.9 * waited, mine


def test_an_io_thread_waits_after_each_read_under_the_call(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "io.json"
    p = subprocess.run(
        [prof_binary(), "record", "--views", "gil,cpu", "-o", str(out),
         "--", PY, "-m", "pyusdt", SHAPES, "gil_io"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert p.returncode == 0, p.stderr
    reads = int(p.stdout.split()[-1])
    counts = per_thread(fold(out, "gil", count=True), "io")
    # One wait for the GIL after each read, under the function that read.
    assert sum(v for s, v in counts.items() if waiter_leaf(s) == "io_call") == reads
    times = per_thread(fold(out, "gil"), "io")
    waited = sum(times.values())
    under_call = sum(v for s, v in times.items() if waiter_leaf(s) == "io_call")
    assert under_call >= 0.95 * waited
    by_cpu = sum(v for s, v in times.items()
                 if waiter_leaf(s) == "io_call" and (holder(s) or "").startswith("GIL held by thread cpu ("))
    assert by_cpu >= 0.9 * under_call
    # The cpu view does not count those waits as running io_call: the
    # thread is off the CPU while it waits (py-spy shows it as working).
    profile = json.loads(out.read_text())
    cpu = per_thread(fold(out, "cpu"), "io")
    running = sum(v for s, v in cpu.items() if "[waiting for the GIL]" not in s)
    assert running / profile["sample_hz"] < 0.2 * waited / 1e9, (running, waited)
    # report: the gil-holder breakdown names the cpu thread in its function.
    p = subprocess.run([prof_binary(), "report", "-i", str(out), "--view", "gil",
                        "--thread", "io", "--format", "json"],
                       capture_output=True, text=True, timeout=TIMEOUT, check=True)
    [section] = json.loads(p.stdout)["sections"]
    top = section["gil_holders"][0]
    assert top["holder"].startswith("thread cpu (") and fn(top["function"]) in ("spin", "burn_for")


def stripped_interpreter(tmp_path):
    """A stripped copy of this interpreter's libpython (no .symtab, so no
    take_gil), for LD_LIBRARY_PATH; None where Python is not built shared."""
    lib = sysconfig.get_config_var("LDLIBRARY") or ""
    src = os.path.join(sysconfig.get_config_var("LIBDIR") or "", lib)
    if not lib.startswith("libpython") or not lib.endswith(".so") or not os.path.exists(src):
        return None
    real = os.path.realpath(src)
    d = tmp_path / "stripped"
    d.mkdir()
    dst = d / os.path.basename(real)
    shutil.copy(real, dst)
    subprocess.run(["strip", str(dst)], check=True)
    return d


def test_a_stripped_interpreter_says_why_instead_of_zeros(tmp_path):
    d = stripped_interpreter(tmp_path)
    if d is None:
        pytest.skip("this interpreter has no shared libpython to strip")
    code, path = record(tmp_path, "gil_pair", views="gil,cpu",
                        env={"LD_LIBRARY_PATH": str(d)})
    assert code == 0
    profile = json.loads(path.read_text())
    gil = next(v for v in profile["views"] if v["kind"] == "gil")
    assert "has no symbol take_gil (a stripped interpreter)" in gil["unavailable"]
    assert gil["samples"] == []
    assert fold(path, "cpu")  # the other views are recorded as usual
    p = subprocess.run([prof_binary(), "flame", str(tmp_path / "g.svg"), "-i", str(path),
                        "--view", "gil"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert "the gil view could not be measured: " in p.stderr
    text = subprocess.run([prof_binary(), "report", "-i", str(path), "--view", "gil"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert "gil view: not measured: " in text


def test_the_gil_view_is_in_flame_and_the_exports(tmp_path):
    code, path = record(tmp_path, "gil_pair", views="gil")
    assert code == 0
    svg = tmp_path / "gil.svg"
    subprocess.run([prof_binary(), "flame", str(svg), "-i", str(path), "--view", "gil"],
                   capture_output=True, check=True, timeout=TIMEOUT)
    text = svg.read_text()
    assert "gil view: time waiting for the GIL, by holder" in text
    assert "GIL held by thread spin-b (" in text
    out = tmp_path / "gil.speedscope.json"
    subprocess.run([prof_binary(), "export", "-i", str(path), "--format", "speedscope",
                    "-o", str(out)], capture_output=True, check=True, timeout=TIMEOUT)
    doc = json.loads(out.read_text())
    names = [p["name"] for p in doc["profiles"]]
    assert any(n.startswith("gil: thread spin-a (") for n in names), names
    frames = {f["name"] for f in doc["shared"]["frames"]}
    assert any(f.startswith("GIL held by thread spin-a (") for f in frames)
