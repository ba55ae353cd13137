"""The gil view, against ground truth: threads of known shape, recorded for
real under BPF, both ways the view measures: the waits' blocks on the
GIL's condition (the default), seen at sched_switch (tp_btf on 5.15+) or
at the futex syscalls (raw_tp, older kernels), and, with --gil-probes
(PYUSDT_PROF_GIL_PROBES here), uprobes on the interpreter's take_gil and
drop_gil (where those symbols are stripped, the blocks all the same)."""

import json
import os
import re
import shutil
import subprocess
import sysconfig

import pytest

from conftest import EMULATED, KERNEL, PY, SCRIPTS, TIMEOUT, VARIANTS, need_bpf, prof_binary
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


def launch(tmp_path, shape, views, env=None):
    """Records SHAPE launched under pyusdt; returns (its stdout, profile)."""
    need_bpf(prof_binary())
    out = tmp_path / f"{shape}.json"
    p = subprocess.run(
        [prof_binary(), "record", "--views", views, "-o", str(out),
         "--", PY, "-m", "pyusdt", SHAPES, shape],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
        env={**os.environ, **(env or {})},
    )
    assert p.returncode == 0, p.stderr
    return p.stdout, out


PROBES = {"PYUSDT_PROF_GIL_PROBES": "1"}
# Each way of measuring, on each program variant that tells them apart
# (tp_btf with bpf_loop: blocks at sched_switch; bounded loops on raw_tp:
# blocks at the futex syscalls; the probes' programs have no tracepoint).
MODES = [pytest.param({**v.values[0], **PROBES}, id=f"probes-{v.id}", marks=v.marks)
         for v in VARIANTS[::3]] + [
    pytest.param(v.values[0], id=f"futex-{v.id}", marks=v.marks) for v in VARIANTS[::3]]


def interpreter_has_take_gil():
    """Whether this interpreter's file (libpython where it is built shared)
    has the take_gil symbol (Debian's are stripped)."""
    lib = sysconfig.get_config_var("LDLIBRARY") or ""
    path = os.path.join(sysconfig.get_config_var("LIBDIR") or "", lib)
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and os.path.exists(path)):
        path = os.path.realpath(PY)
    nm = subprocess.run(["nm", path], capture_output=True, text=True)
    return any(line.split()[-1:] == ["take_gil"] for line in nm.stdout.splitlines())


# How the gil view's note ends, by where it saw the blocks.
BLOCKS = {
    "sched_switch": "its waits are its blocks on the GIL's condition, seen as it leaves "
                    "the CPU in them (sched_switch)",
    "futex": "its waits are its blocks on the GIL's condition, seen at the futex syscalls",
}


def blocks_expected(variant):
    """Where the recorder should see the GIL's blocks under `variant`:
    "sched_switch", "futex", or None (the probes). (bpf_task_pt_regs is
    there from 5.15: the recorder must find it.)"""
    release = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", KERNEL.get("kernel", "0.0")).groups())
    assert release < (5, 15) or KERNEL.get("task_pt_regs") is not False, KERNEL
    if "PYUSDT_PROF_GIL_PROBES" in variant and interpreter_has_take_gil():
        return None
    if "PYUSDT_PROF_RAW_TP" not in variant and KERNEL.get("tp_btf") and KERNEL.get("task_pt_regs"):
        return "sched_switch"
    return "futex"


def by_blocks(profile):
    """Where the gil view saw the waits as blocks on the GIL's condition
    (the default, or an interpreter without the symbols to probe), as
    blocks_expected says it; None if it did not (the probes)."""
    gil = next(v for v in profile["views"] if v["kind"] == "gil")
    notes = gil.get("notes", [])
    return next((way for way, note in BLOCKS.items() if any(n.endswith(note) for n in notes)),
                None)


@pytest.mark.parametrize("variant", MODES)
def test_two_cpu_bound_threads_each_wait_about_half(tmp_path, variant):
    stdout, path = launch(tmp_path, "gil_pair", "gil,cpu", variant)
    assert by_blocks(json.loads(path.read_text())) == blocks_expected(variant)
    clocks = {}
    for line in stdout.splitlines():
        name, start, end = line.split()
        clocks[name] = (float(start), float(end))
    stacks = fold(path, "gil")
    (a0, a1), (b0, b1) = clocks["spin-a"], clocks["spin-b"]
    both = min(a1, b1) - max(a0, b0)
    waits = {}
    for me, other in (("spin-a", "spin-b"), ("spin-b", "spin-a")):
        mine = per_thread(stacks, me)
        waits[me] = sum(mine.values()) / 1e9
        # Each thread lives 2 s and waits for the GIL while the other
        # holds it: about half, and a fair share whatever else runs.
        assert waits[me] >= 0.25 * 2, f"{me} waited {waits[me] * 1e3:.0f} ms of 2000"
        by_other = sum(v for s, v in mine.items() if (holder(s) or "").startswith(f"GIL held by thread {other} ("))
        assert by_other >= 0.9 * waits[me] * 1e9, mine
    # While both live, one of them waits at every moment (the other holds
    # the GIL): the waits add up to the time they lived together, less the
    # hand-overs. That needs a CPU for each: where other work takes the
    # CPUs (tests run beside these), a thread that handed the GIL over
    # waits in drop_gil for a CPU, not for the GIL, after the other took
    # it (3.11 under two busy VMs: 0.61 s in take_gil and 0.39 s in
    # drop_gil each, by bpftrace), and the sum falls to about 0.6. In an
    # emulated guest, where a hand-over (a futex wake, a thread scheduled
    # on the other vCPU) takes longer, 0.849 was seen once on 6.1.
    least = 0.75 if EMULATED else 0.85
    assert least * both <= waits["spin-a"] + waits["spin-b"] <= 1.02 * both, (waits, both)

def long_waits(profile, name, ns):
    """Waits for the GIL of thread `name` that lasted `ns` or longer (from
    the log2 histograms: `ns` a power of two)."""
    tids = {int(t) for t, n in profile["threads"].items() if n == name}
    gil = next(v for v in profile["views"] if v["kind"] == "gil")
    slot = ns.bit_length() - 1
    return sum(sum(s["hist"][slot:]) for s in gil["samples"] if s["tid"] in tids)


@pytest.mark.parametrize("variant", MODES)
def test_an_io_thread_waits_after_each_read_under_the_call(tmp_path, variant):
    stdout, out = launch(tmp_path, "gil_io", "gil,cpu", variant)
    _, reads, _, io_cpu = stdout.split()
    reads, io_cpu = int(reads), float(io_cpu)
    counts = per_thread(fold(out, "gil", count=True), "io")
    # One wait for the GIL after each read, under the function that read;
    # and one more wherever the cpu thread, tired of waiting (5 ms, the
    # switch interval), made io drop the GIL between two reads, in io_call.
    # Each of those follows a wait of cpu's of 5 ms or more. Seen at the
    # futex syscalls, a wait is counted only if it blocked (not where io
    # took the GIL back before the cpu thread, woken, could). The same at
    # sched_switch.
    profile = json.loads(out.read_text())
    assert by_blocks(profile) == blocks_expected(variant)
    forced = long_waits(profile, "cpu", 1 << 22)
    under_io_call = sum(v for s, v in counts.items() if waiter_leaf(s) == "io_call")
    least = 1 if by_blocks(profile) else reads
    assert least <= under_io_call <= reads + forced, (under_io_call, reads, forced)
    times = per_thread(fold(out, "gil"), "io")
    waited = sum(times.values())
    under_call = sum(v for s, v in times.items() if waiter_leaf(s) == "io_call")
    # The rest: the thread's start (no Python frame of its own yet, or in
    # set_thread_name, 46 ms seen once on 3.12), and the drops forced
    # while io held the GIL between two reads, in its loop (a preemption
    # of io there makes cpu wait the switch interval). CI saw 16% of io's
    # time outside io_call once, on 3.14. Never under a function io does
    # not run.
    elsewhere = {s: v for s, v in times.items() if waiter_leaf(s) != "io_call"}
    shown = "\n".join(f"{v / 1e6:.1f} ms: {' ; '.join(s)}" for s, v in elsewhere.items())
    assert {waiter_leaf(s) for s in elsewhere} <= {None, "io_loop", "Event.is_set", "set_thread_name"}, shown
    assert under_call >= 0.75 * waited, shown
    by_cpu = sum(v for s, v in times.items()
                 if waiter_leaf(s) == "io_call" and (holder(s) or "").startswith("GIL held by thread cpu ("))
    assert by_cpu >= 0.9 * under_call
    # The cpu view does not count those waits as running io_call: the
    # thread is off the CPU while it waits (py-spy shows it as working).
    # Its samples are what it ran by its own clock (within the error of
    # sampling at 99 Hz: 24 samples for 0.149 s once in CI, its short runs
    # in step with the sampler's ticks), far below the time it waited
    # (about 1.5 s, where it runs 0.03 s).
    hz = profile["sample_hz"]
    cpu = per_thread(fold(out, "cpu"), "io")
    running = sum(cpu.values()) / hz
    assert running <= 1.5 * io_cpu + 10 / hz, (running, io_cpu)
    assert io_cpu < waited / 1e9, (io_cpu, waited)
    assert running < 0.5 * waited / 1e9, (running, waited)
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


def test_a_stripped_interpreter_is_measured_at_its_blocks_and_says_so(tmp_path):
    d = stripped_interpreter(tmp_path)
    if d is None:
        pytest.skip("this interpreter has no shared libpython to strip")
    code, path = record(tmp_path, "gil_pair", views="gil,cpu", extra=("--gil-probes",),
                        env={"LD_LIBRARY_PATH": str(d)})
    assert code == 0
    profile = json.loads(path.read_text())
    gil = next(v for v in profile["views"] if v["kind"] == "gil")
    note, *sampling = gil["notes"]
    assert "has no symbol take_gil (a stripped interpreter)" in note
    way = blocks_expected({})
    assert note.endswith(BLOCKS[way]), note
    if way == "futex":
        # Blocks under 1 ms are sampled (each kept one weighted); the
        # spinners' 5 ms blocks are all kept.
        assert gil["sampled_below_ns"] == 1_000_000
        assert sampling[0].startswith("blocks at the futex syscalls shorter than 1.00 ms sampled")
    else:
        # At sched_switch, where the stacks are read as every block
        # begins, every block is counted.
        assert not gil.get("sampled_below_ns") and not sampling, gil
    assert "unavailable" not in gil
    # Each spinner waits while the other holds the GIL.
    stacks = fold(path, "gil")
    for me, other in (("spin-a", "spin-b"), ("spin-b", "spin-a")):
        mine = per_thread(stacks, me)
        by_other = sum(v for s, v in mine.items() if (holder(s) or "").startswith(f"GIL held by thread {other} ("))
        assert by_other >= 0.25 * 2e9, mine
    assert fold(path, "cpu")  # the other views are recorded as usual
    text = subprocess.run([prof_binary(), "report", "-i", str(path), "--view", "gil"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert f"  ({note})" in text


def test_the_blocks_can_be_forced_over_the_probes_and_the_note_says_why(tmp_path):
    # PYUSDT_PROF_GIL_BLOCKS=1 with --gil-probes: the blocks, where the
    # kernel lets the view see them, as if the probes could not attach.
    code, path = record(tmp_path, "gil_pair", views="gil", extra=("--gil-probes",),
                        env={"PYUSDT_PROF_GIL_BLOCKS": "1"})
    assert code == 0
    profile = json.loads(path.read_text())
    gil = next(v for v in profile["views"] if v["kind"] == "gil")
    note = gil["notes"][0]
    assert note == f"PYUSDT_PROF_GIL_BLOCKS is set; {BLOCKS[blocks_expected({})]}", note
    stacks = fold(path, "gil")
    for me in ("spin-a", "spin-b"):
        assert sum(per_thread(stacks, me).values()) >= 0.25 * 2e9, stacks


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
