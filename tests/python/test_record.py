"""pyusdt-prof record, fold and flame end to end: workloads of known shape
(tests/scripts/shapes.py) recorded for real under BPF, on the interpreter
this suite runs under, checked against exact expectations."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import (AT_DEPARTURE, AT_SYS_EXIT, EMULATED, KERNEL, PY, SCRIPTS, TIMEOUT,
                      VARIANTS, WALK_AT, Child, need_bpf, prof_binary, walk_at)

SHAPES = str(SCRIPTS / "shapes.py")


def run_recorded(tmp_path, shape, views, extra=(), env=None):
    """Launches SHAPE under the recorder; returns (the finished recorder,
    whose stdout is the program's, and the profile's path)."""
    need_bpf(prof_binary())
    out = tmp_path / f"{shape}.json"
    p = subprocess.run(
        [prof_binary(), "record", "--views", views, "-o", str(out), *extra,
         "--", PY, "-m", "pyusdt", SHAPES, shape],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
        env={**os.environ, **(env or {})},
    )
    return p, out


def record(tmp_path, shape, views="cpu,offcpu,syscall,wakeup", extra=(), env=None):
    """Launches SHAPE under the recorder; returns (exit code, profile path)."""
    p, out = run_recorded(tmp_path, shape, views, extra, env)
    assert out.exists(), p.stderr
    assert "pyusdt-prof: wrote" in p.stderr, p.stderr
    return p.returncode, out


def cpu_truth(stdout):
    """heavy's share of heavy's and light's CPU time by their thread's
    clock, as the cpu shape prints it (about 0.75)."""
    took = re.search(r"^heavy (\d+) light (\d+)$", stdout, re.M)
    assert took, stdout
    return int(took.group(1)) / (int(took.group(1)) + int(took.group(2)))


def fold(path, view, count=False, merge=False):
    """{stack tuple: value} of a view, via `pyusdt-prof fold`."""
    args = [prof_binary(), "fold", "-i", str(path), "--view", view]
    if count:
        args.append("--count")
    if merge:
        args.append("--merge-threads")
    p = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    stacks = {}
    for line in p.stdout.splitlines():
        stack, value = line.rsplit(" ", 1)
        stacks[tuple(stack.split(";"))] = int(value)
    return stacks


def fn(frame):
    """The qualname of a Python frame name `qualname (file:line)`."""
    return frame.split(" (", 1)[0]


def under(stacks, leaf_fn, last=None):
    """Total of the stacks whose Python leaf is `leaf_fn`, optionally
    followed by exactly the frame `last`."""
    total = 0
    for stack, v in stacks.items():
        py = [f for f in stack if f.endswith(")") and " (" in f and not f.startswith("thread ")]
        if not py or fn(py[-1]) != leaf_fn:
            continue
        if last is not None and stack[-1] != last:
            continue
        total += v
    return total


def test_syscall_view_counts_exactly(tmp_path):
    code, path = record(tmp_path, "syscalls", views="syscall")
    assert code == 0
    stacks = fold(path, "syscall", count=True, merge=True)
    assert under(stacks, "writer", "syscall:write") == 1000
    assert under(stacks, "reader", "syscall:read") == 700
    # Nothing else happens under them.
    assert under(stacks, "writer") == 1000
    assert under(stacks, "reader") == 700
    # The chain above is exact: module, shape, then the function.
    chains = {tuple(fn(f) for f in s[:-1]) for s in stacks
              if len(s) > 1 and fn(s[-2]) in ("writer", "reader")}
    assert chains == {("<module>", "shape_syscalls", "writer"), ("<module>", "shape_syscalls", "reader")}
    times = fold(path, "syscall", merge=True)
    assert under(times, "writer", "syscall:write") > 0


def test_an_exited_thread_leaves_no_wait_behind(tmp_path):
    """A thread's last departure, as it exits, is no wait: the launched
    program's main thread, which stays a zombie until the recorder reaps
    it, counts no time off the CPU from its exit to the end of the
    recording (every wait kept: --sample-waits-below 0)."""
    code, path = record(tmp_path, "sleep", views="offcpu", extra=("--sample-waits-below", "0"))
    assert code == 0
    profile = json.loads(path.read_text())
    frames = profile["frames"]
    [view] = [v for v in profile["views"] if v["kind"] == "offcpu"]
    outside = [s["value"] for s in view["samples"] if s["tid"] == profile["pid"] and not any(
        " (" in frames[i] and not frames[i].endswith("_[k]") for i in s["stack"])]
    # Its waits outside Python are its start's, before its first frame:
    # short (about 0.1 ms here), where the exit counted up to 100 ms.
    assert sum(outside) < 5_000_000, outside
    assert abs(under(fold(path, "offcpu"), "sleeper") - 0.5e9) < 0.05 * 0.5e9


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_every_program_variant_counts_the_same(tmp_path, variant):
    """The raw_tp programs (kernels without tp_btf) and those with bounded
    loops (kernels without bpf_loop) give the same exact syscall counts
    (test_lock_wait_and_its_waker checks their off-CPU time and wake-ups)."""
    code, path = record(tmp_path, "syscalls", views="syscall,offcpu,wakeup", env=variant)
    assert code == 0
    stacks = fold(path, "syscall", count=True, merge=True)
    assert under(stacks, "writer", "syscall:write") == 1000
    assert under(stacks, "reader", "syscall:read") == 700
    # The offcpu programs ran in this variant: its switches are counted
    # (its few waits are short, and may all be sampled out).
    views = {v["kind"]: v for v in json.loads(path.read_text())["views"]}
    assert views["offcpu"]["events"] > 0
    # The wakeup programs loaded in this variant too; this one-thread shape
    # may have no wake-up at all (its only waker was pyusdt's poll thread,
    # at exit, which no view shows).
    kinds = [v["kind"] for v in json.loads(path.read_text())["views"]]
    assert kinds.count("wakeup") == 1 and all(
        "pyusdt-poll" not in "".join(s) for s in fold(path, "wakeup")), kinds


# The notes that say where a recording read the stacks (none: at every
# departure).
WAY_NOTES = {
    "return": "came back (a kprobe on finish_task_switch",
    "syscall exit": "came back from the syscall it left in",
}
WAYS = [pytest.param({}, id="tp_btf"), AT_DEPARTURE, AT_SYS_EXIT]


@pytest.mark.parametrize("variant", WAYS)
def test_offcpu_sleep_time_within_5_percent(tmp_path, variant):
    code, path = record(tmp_path, "sleep", views="offcpu", env=variant)
    assert code == 0
    # The way this kernel reads the stacks, as the profile says it.
    [notes] = [v.get("notes", []) for v in json.loads(path.read_text())["views"]]
    way = walk_at(variant)
    for w, note in WAY_NOTES.items():
        assert any(note in n for n in notes) == (w == way), (way, notes)
    stacks = fold(path, "offcpu", merge=True)
    slept = under(stacks, "sleeper")
    assert abs(slept - 500e6) <= 0.05 * 500e6, f"{slept / 1e6:.1f} ms off-CPU under sleeper"
    # The kernel stack at the switch-out ends in the scheduler.
    assert any(s[-1].endswith("_[k]") for s in stacks if under({s: 1}, "sleeper"))


@pytest.mark.parametrize("way", ["auto", "syscall-exit", "departure"])
def test_a_thread_preempted_outside_a_syscall_waits_under_its_own_frames(tmp_path, way):
    # A thread pinned beside a spinning child process is preempted in
    # user mode about half of 1 s, in spin, with a getppid under
    # getppid_now between spins: a wait whose stack were read at the next
    # syscall's exit (wrongly) would land there. Those that truly begin
    # there (about 3% of the time is there) stay far below 10%.
    code, path = record(tmp_path, "preempted", views="offcpu",
                        extra=("--offcpu-stacks-at", way))
    assert code == 0
    [notes] = [v.get("notes", []) for v in json.loads(path.read_text())["views"]]
    took = {"auto": WALK_AT, "departure": "departure"}.get(way, walk_at(AT_SYS_EXIT.values[0]))
    for w, note in WAY_NOTES.items():
        assert any(note in n for n in notes) == (w == took), (took, notes)
    stacks = fold(path, "offcpu", merge=True)
    spun, between = under(stacks, "spin"), under(stacks, "getppid_now")
    assert 0.25e9 <= spun <= 0.75e9, f"{spun / 1e6:.1f} ms off-CPU under spin"
    assert between <= 0.1 * spun, f"{between / 1e6:.1f} ms off-CPU under getppid_now"


@pytest.mark.parametrize("variant", VARIANTS + [AT_DEPARTURE, AT_SYS_EXIT])
def test_lock_wait_and_its_waker(tmp_path, variant):
    code, path = record(tmp_path, "lock", views="offcpu,wakeup", env=variant)
    assert code == 0
    off = fold(path, "offcpu")
    blocked = sum(v for s, v in off.items() if s[0].startswith("thread waiter (")
                  and any(fn(f) == "waiter" for f in s))
    assert blocked >= 150e6, f"waiter blocked {blocked / 1e6:.1f} ms"
    wake = fold(path, "wakeup")
    by_holder = [
        (s, v) for s, v in wake.items()
        if s[0].startswith("thread waiter (") and any(fn(f) == "waiter" for f in s)
        and any(f.startswith("waker thread holder (") for f in s)
    ]
    assert by_holder, wake
    stack, waited = max(by_holder, key=lambda sv: sv[1])
    assert waited >= 150e6
    # After the waker's thread come its Python frames: it released the
    # lock on leaving holder()'s with block.
    after = [fn(f) for f in stack[stack.index(next(f for f in stack if f.startswith("waker "))) + 1:]]
    assert "holder" in after, stack


@pytest.mark.parametrize("variant", VARIANTS + [AT_SYS_EXIT])
def test_a_syscall_that_blocks_many_times_counts_every_block_under_its_caller(
        tmp_path, variant):
    # One write of 1 MiB into a pipe that another thread empties 64 KiB
    # every 5 ms: the syscall blocks about 15 times, each block over the
    # 1 ms under which waits are sampled, so each counts whole, under
    # big_write, and together they are the write's time.
    p, out = run_recorded(tmp_path, "pipe", "offcpu", env=variant)
    assert p.returncode == 0, p.stderr
    took = int(re.search(r"^wrote (\d+)$", p.stdout, re.M).group(1))
    values, counts = fold(out, "offcpu"), fold(out, "offcpu", count=True)
    blocks = [s for s in values if fn(s[-1 - kernel_depth(s)]) == "big_write"]
    blocked, n = sum(values[s] for s in blocks), sum(counts[s] for s in blocks)
    # 15 pauses of the reader after the first 64 KiB (a wake-up may find
    # the next chunk already read: a few fewer), and short blocks where
    # the writer wakes while the reader is still reading (sampled: each
    # kept one counts for the ones like it).
    assert n >= 10, (n, blocks)
    # All but the copies of the chunks, on the CPU.
    assert 0.85 * took <= blocked <= took, (blocked, took)


def test_cpu_shares_follow_the_work(tmp_path):
    p, path = run_recorded(tmp_path, "cpu", "cpu", extra=("-F", "999"))
    assert p.returncode == 0, p.stderr
    truth = cpu_truth(p.stdout)
    stacks = fold(path, "cpu", merge=True)
    heavy = sum(v for s, v in stacks.items() if any(fn(f) == "heavy" for f in s))
    light = sum(v for s, v in stacks.items() if any(fn(f) == "light" for f in s))
    total = sum(stacks.values())
    sleep = sum(v for s, v in stacks.items() if any("sleep" in f for f in s if f.endswith("_[k]")))
    assert heavy + light > 500
    # heavy does three times light's work; the share its thread's clock
    # measured is the truth (about 0.75). Over 1,000 samples, 0.05 is
    # four standard deviations.
    assert abs(truth - 0.75) <= 0.05, truth
    assert abs(heavy / (heavy + light) - truth) <= 0.05, (heavy, light, truth)
    assert sleep < 0.05 * total


def test_threads_have_named_roots_even_short_lived(tmp_path):
    code, path = record(tmp_path, "threads", views="cpu,syscall", extra=("-F", "999"))
    assert code == 0
    profile = json.loads(path.read_text())
    cpu = fold(path, "cpu")
    roots = {s[0] for s in cpu}
    short = [r for r in roots if r.startswith("thread short (")]
    assert len(short) == 1, roots
    assert any(fn(f) == "short_lived" for s in cpu if s[0] == short[0] for f in s)
    # The main thread by its Python name, with the kernel's beside it.
    assert f"thread MainThread ({profile['pid']}, python)" in roots, roots
    assert profile["python_threads"][str(profile["pid"])] == "MainThread"


@pytest.mark.parametrize("variant", VARIANTS)
def test_stacks_are_exact_chains(tmp_path, variant):
    """Every variant of the programs walks the whole stack, 203 frames
    deep, exactly."""
    code, path = record(tmp_path, "stacks", views="syscall", env=variant)
    assert code == 0
    stacks = fold(path, "syscall", count=True, merge=True)
    writes = {tuple(fn(f) for f in s[:-1]): v for s, v in stacks.items() if s[-1] == "syscall:write"}
    assert writes[("<module>", "shape_stacks", *["recurse"] * 201)] == 1
    assert writes[("<module>", "shape_stacks", "gen")] == 1
    assert writes[("<module>", "shape_stacks", "catcher", "raiser")] == 1
    coro = [k for k in writes if k[-2:] == ("coro_outer", "coro_inner")]
    assert len(coro) == 1 and writes[coro[0]] == 1
    assert coro[0][:3] == ("<module>", "shape_stacks", "run"), coro


def test_attach_mid_run_sees_older_frames(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "attach.json"
    with Child([PY, "-m", "pyusdt", SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        with Child([prof_binary(), "record", "-p", str(target.pid), "--views", "syscall",
                    "-o", str(out)]) as rec:
            line = rec.proc.stderr.readline()
            assert "pyusdt-prof: recording process" in line, line
            target.send("go")
            assert target.finish()[0] == 0
            code, _, err = rec.finish()
            assert code == 0, err
    stacks = fold(out, "syscall", count=True, merge=True)
    late = [s for s in stacks if s[-1] == "syscall:write" and fn(s[-2]) == "outer_before"]
    assert [tuple(fn(f) for f in s[:-1]) for s in late] == [("<module>", "shape_attach", "outer_before")]


def test_launch_sees_the_first_function_and_passes_the_exit_code(tmp_path):
    code, path = record(tmp_path, "exit", views="syscall")
    assert code == 7
    stacks = fold(path, "syscall", count=True, merge=True)
    assert under(stacks, "first_function", "syscall:write") == 1


def test_flame_draws_each_view(tmp_path):
    code, path = record(tmp_path, "lock")
    assert code == 0
    for view, unit in (("cpu", "samples"), ("offcpu", "ms"), ("syscall", "ms"), ("wakeup", "ms")):
        svg = tmp_path / f"{view}.svg"
        subprocess.run([prof_binary(), "flame", str(svg), "-i", str(path), "--view", view],
                       check=True, capture_output=True, timeout=TIMEOUT)
        text = svg.read_text()
        assert text.startswith("<?xml") and f"{view} view" in text and unit in text


@pytest.mark.parametrize("bad,message", [
    (b"", "the file is empty"),
    (b'{"format": "pyusdt-prof profile", "vers', "the file is truncated"),
    (b"GIF89a", "not a pyusdt-prof profile"),
])
def test_fold_refuses_bad_files_clearly(tmp_path, bad, message):
    f = tmp_path / "bad.json"
    f.write_bytes(bad)
    p = subprocess.run([prof_binary(), "fold", "-i", str(f)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 1
    assert p.stderr == f"pyusdt-prof: {f} is not a usable profile: {message}\n"


def attach(target_pid, out, *args):
    """`record -p` behind a guard; returns once it says it records."""
    rec = Child([prof_binary(), "record", "-p", str(target_pid), "-o", str(out), *args])
    line = rec.proc.stderr.readline()
    assert "pyusdt-prof: recording process" in line, line + rec.proc.stderr.read()
    return rec


def serve_stacks(path):
    return under(fold(path, "syscall", count=True, merge=True), "serve_once", "syscall:write")


@contextlib.contextmanager
def recording_serve(out, views):
    """A `serve` target recorded with `record -p`, after two ticks of
    recorded work: yields (target, recorder)."""
    need_bpf(prof_binary())
    with Child([PY, "-m", "pyusdt", SHAPES, "serve"]) as target:
        target.expect("^waiting$")
        with attach(target.pid, out, "--views", views) as rec:
            target.send("go")
            target.expect("^tick$")
            target.expect("^tick$")
            yield target, rec


def test_a_deadline_returns_with_the_profile_and_counts_the_wait_still_open(tmp_path):
    # record -d 1 of a program that sleeps 60 s: it returns at the deadline
    # with the profile written, the program going on; the sleep, still
    # open then, counts up to the end of the recording.
    need_bpf(prof_binary())
    out, log = tmp_path / "deadline.json", tmp_path / "stderr"
    # To a file: the program, which goes on, holds the recorder's stderr.
    with open(log, "w") as f:
        p = subprocess.Popen(
            [prof_binary(), "record", "-d", "1", "--views", "offcpu", "-o", str(out),
             "--", PY, "-m", "pyusdt", SHAPES, "longsleep"],
            stdout=subprocess.DEVNULL, stderr=f,
        )
    program = None
    try:
        p.wait(timeout=TIMEOUT)
        err = log.read_text()
        assert p.returncode == 0, err
        m = re.search(r"the program \(process (\d+)\) goes on, unrecorded", err)
        assert m, err
        program = int(m.group(1))
        os.kill(program, 0)  # it goes on
        profile = json.loads(out.read_text())
        waits = {s: (v, n) for s, v in fold(out, "offcpu").items()
                 for n in [fold(out, "offcpu", count=True)[s]]
                 if fn(s[-1 - kernel_depth(s)]) == "long_sleeper"}
        [(value, count)] = waits.values()
        # The sleep began once the program had started (well within the
        # first half second), and counts up to the end.
        assert count == 1 and 0.5 * profile["duration_ns"] <= value <= profile["duration_ns"], (
            value, profile["duration_ns"])
    finally:
        if p.poll() is None:
            p.kill()
        if program:
            os.kill(program, signal.SIGKILL)


def test_an_attached_recording_counts_a_wait_open_through_it(tmp_path):
    # record -p of a thread asleep before the recording begins and after
    # it ends: its wait counts for the whole window, under its frames.
    need_bpf(prof_binary())
    out = tmp_path / "open.json"
    with Child([PY, "-m", "pyusdt", SHAPES, "longsleep"]) as target:
        target.expect("^sleeping$")
        p = subprocess.run([prof_binary(), "record", "-p", str(target.pid), "-d", "1",
                            "--views", "offcpu", "-o", str(out)],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 0, p.stderr
    profile = json.loads(out.read_text())
    values, counts = fold(out, "offcpu"), fold(out, "offcpu", count=True)
    waits = [(values[s], counts[s]) for s in values if fn(s[-1 - kernel_depth(s)]) == "long_sleeper"]
    assert len(waits) == 1 and waits[0][1] == 1, waits
    # Seeded a little after the window opened, counted up to its end.
    assert 0.9 * profile["duration_ns"] <= waits[0][0] <= profile["duration_ns"], (
        waits, profile["duration_ns"])


def kernel_depth(stack):
    """How many kernel frames (`_[k]`) end a folded stack."""
    n = 0
    while n < len(stack) and stack[-1 - n].endswith("_[k]"):
        n += 1
    return n


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_recorder_writes_a_complete_profile(tmp_path, sig):
    out = tmp_path / "stopped.json"
    with recording_serve(out, "syscall,cpu") as (target, rec):
        rec.proc.send_signal(sig)
        code, _, err = rec.finish()
        assert code == 0, err
        assert target.proc.poll() is None, "the target keeps running"
    assert serve_stacks(out) > 0


def test_a_target_killed_mid_record_ends_the_recording_with_names(tmp_path):
    out = tmp_path / "killed.json"
    with recording_serve(out, "syscall") as (target, rec):
        target.proc.kill()
        code, _, err = rec.finish()
        assert code == 0, err
    assert serve_stacks(out) > 0


def bpf_programs():
    p = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                       check=True, timeout=TIMEOUT)
    return {prog.get("name", "") for prog in json.loads(p.stdout)}


OUR_PROGRAMS = {"on_cpu_sample", "switch_btf", "switch_raw", "wakeup_btf", "wakeup_raw",
                "wakeup_new_btf", "wakeup_new_raw", "enter_btf", "enter_raw", "exit_btf",
                "exit_raw", "on_layout"}


def test_a_killed_recorder_leaves_nothing_attached(tmp_path):
    need_bpf(prof_binary(), "bpftool")
    from conftest import pyusdt_child

    with pyusdt_child("controlled.py") as target:
        target.ask_first()
        with attach(target.pid, tmp_path / "k.json", "--views", "all") as rec:
            assert bpf_programs() & OUR_PROGRAMS
            rec.proc.kill()
            rec.proc.wait()
        # The kernel frees a program once its last descriptor is gone,
        # which it does after the process has died, not with it.
        deadline = time.monotonic() + TIMEOUT
        while bpf_programs() & OUR_PROGRAMS:
            assert time.monotonic() < deadline, bpf_programs() & OUR_PROGRAMS
            time.sleep(0.05)
        s = target.ask("call 10")
        assert set(s["semaphores"].values()) == {0}
        assert s["active"] == []
        target.send("exit")
        assert target.finish()[0] == 0
    assert not (tmp_path / "k.json").exists()
    assert not list(tmp_path.glob(".k.json.*")), "no temporary file left"


def test_two_recorders_on_one_process_both_count_exactly(tmp_path):
    need_bpf(prof_binary())
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    with Child([PY, "-m", "pyusdt", SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        with attach(target.pid, outs[0], "--views", "syscall") as a, \
                attach(target.pid, outs[1], "--views", "syscall") as b:
            target.send("go")
            assert target.finish()[0] == 0
            assert a.finish()[0] == 0 and b.finish()[0] == 0
    for out in outs:
        stacks = fold(out, "syscall", count=True, merge=True)
        assert under(stacks, "outer_before", "syscall:write") == 1


@pytest.mark.parametrize("args,message", [
    (["-F", "0", "-p", "1"], "0 is not in 1..=10000"),
    (["-d=-3", "-p", "1"], "is not a number of seconds"),
    (["--views", "cpu,lock", "-p", "1"], "`lock` is not a view; the views are cpu, offcpu, syscall, wakeup, gil, calls"),
    (["-o", "/nonexistent/dir/p.json", "-p", "1"], "cannot write /nonexistent/dir/p.json"),
    (["-p", "4000000"], "no process with PID 4000000"),
    (["--gil-probes", "-p", "1"], "--gil-probes is how the gil view measures: add it, --views ...,gil"),
    (["--offcpu-stacks-at", "exit", "-p", "1"],
     "invalid value 'exit' for '--offcpu-stacks-at <WAY>'"),
    ([], "the following required arguments were not provided"),
])
def test_bad_record_arguments_get_one_clear_line(args, message):
    p = subprocess.run([prof_binary(), "record", *args], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


def test_without_privileges_it_says_which_capabilities_are_missing(tmp_path):
    need_bpf(prof_binary(), "setpriv")
    p = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         prof_binary(), "record", "-p", str(os.getpid()), "-o", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert p.returncode == 1
    assert p.stderr.startswith(
        "pyusdt-prof: pyusdt-prof loads BPF programs and lacks CAP_BPF and CAP_PERFMON: "
        "run it as root"
    ), p.stderr
    assert p.stderr.count("\n") == 1


def test_deep_recursion_keeps_the_leaf_most_frames(tmp_path):
    code, path = record(tmp_path, "deep", views="syscall")
    assert code == 0
    stacks = fold(path, "syscall", count=True, merge=True)
    deep = [s for s in stacks if s[-1] == "syscall:write" and "[truncated]" in s]
    assert len(deep) == 1
    frames = deep[0][1:-1]
    assert deep[0][0] == "[truncated]"
    assert len(frames) == 256 and all(fn(f) == "deep" for f in frames)


def test_ten_thousand_short_threads_are_all_counted(tmp_path):
    code, path = record(tmp_path, "many_threads", views="syscall")
    assert code == 0
    stacks = fold(path, "syscall", count=True)
    per_thread = {}
    for s, v in stacks.items():
        if s[-1] == "syscall:write" and fn(s[-2]) == "one_write":
            per_thread[s[0]] = per_thread.get(s[0], 0) + v
    assert len(per_thread) == 10_000
    assert set(per_thread.values()) == {1}


def test_exited_threads_leave_the_maps_and_nothing_is_lost(tmp_path):
    """3,000 short threads, 100 at a time, make about 40,000 keys in the
    syscall view's map (65,000 under TCG), held to 32,768 keys
    (PYUSDT_PROF_COUNT_KEYS, every view's count map): the counts of exited
    threads are moved out while recording, so no view loses any, and every
    thread's syscalls are still counted exactly, under its name. (16,384 keys left a 5.10
    guest under TCG, where the recorder gets little of the CPU, short of
    room between two passes in 2 runs of 4.)"""
    keys = 32_768
    views = "cpu,offcpu,wakeup,syscall,gil"
    # Every wait kept (by default waits under 1 ms are sampled). The
    # departure's way of the offcpu view (the sleep and lock tests check
    # both): under TCG the return's kprobe slows every context switch,
    # and the recorder's passes fell behind (33 and 199 syscalls lost in 2
    # of 7 runs on 6.1, none in 3 runs at departure).
    # The map of the names threads had as they exited holds 1,024
    # (PYUSDT_PROF_NAME_KEYS): they are moved out while recording too, and
    # every thread keeps its own.
    env = {"PYUSDT_PROF_COUNT_KEYS": str(keys), "PYUSDT_PROF_WALK_AT_DEPARTURE": "1",
           "PYUSDT_PROF_NAME_KEYS": "1024"}
    code, path = record(tmp_path, "churn", views=views, extra=["--sample-waits-below", "0"],
                        env=env)
    assert code == 0
    profile = json.loads(path.read_text())
    by_kind = {v["kind"]: v for v in profile["views"]}
    lost = {k: v["lost"] for k, v in by_kind.items()}
    # A wait whose return to the CPU the kernel did not report and whose
    # wake-up came before it left is not counted, and a note says how many
    # (0 to 2 in a run of this shape, 8 once): not a loss of the maps.
    assert lost == dict.fromkeys(["cpu", "offcpu", "wakeup", "syscall", "gil"], 0)
    assert len(by_kind["syscall"]["samples"]) > keys
    # Each thread's syscalls, by the thread the kernel ran them in (not by
    # the Python stack, which a walk may fail to read): exactly one write
    # and one nap each, in all 3,000 threads; the main thread's 30 pauses.
    calls = {}
    for s, v in fold(path, "syscall", count=True).items():
        if s[-1] in ("syscall:write", "syscall:clock_nanosleep"):
            calls.setdefault(s[0], {}).setdefault(s[-1], 0)
            calls[s[0]][s[-1]] += v
    main = [t for t in calls if t.startswith("thread MainThread ")]
    assert len(main) == 1 and calls.pop(main[0]) == {"syscall:clock_nanosleep": 30}
    assert len(calls) == 3_000
    # Each one's name as the kernel knew it (Python's names come from the
    # process, and label the threads without it).
    tids = {int(re.findall(r"\((\d+)(?:, [^)]*)?\)", t)[-1]) for t in calls}
    unnamed = sorted(tids - {int(t) for t in profile["threads"]})
    assert len(tids) == 3_000 and not unnamed, (len(unnamed), unnamed[:3])
    expected = {"syscall:write": 1, "syscall:clock_nanosleep": 1}
    odd = {t: c for t, c in calls.items() if c != expected}
    assert not odd, list(odd.items())[:3]
    # Every GIL wait counted is in the profile once: moved or not.
    gil = by_kind["gil"]
    assert sum(s["count"] for s in gil["samples"]) == gil["events"] > 0
    # Every thread waited off the CPU (for its nap at least), or a wait's
    # return is noted as unknown; but for a rare miss of the offcpu view,
    # not understood: a nap missing with no loss counted, seen on 6.1
    # under TCG only (2 runs of 5 once, at departure; a thread then left
    # with no wait at all in 1 run of 7, at the return).
    unknown = sum(int(m.group(1)) for n in by_kind["offcpu"].get("notes", [])
                  for m in [re.match(r"(\d+) returns to the CPU .* no wake-up", n)] if m)
    waited = {s[0] for s in fold(path, "offcpu")} - set(main)
    assert 3_000 - unknown - 2 <= len(waited & set(calls)), len(waited & set(calls))


def test_a_recording_holds_only_its_process(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "mine.json"
    with Child([PY, "-m", "pyusdt", SHAPES, "serve"]) as other, \
            Child([PY, "-m", "pyusdt", SHAPES, "attach"]) as mine:
        other.expect("^waiting$")
        other.send("go")
        other.expect("^tick$")
        mine.expect("^waiting$")
        with attach(mine.pid, out, "--views", "syscall,cpu,offcpu") as rec:
            mine.send("go")
            assert mine.finish()[0] == 0
            assert rec.finish()[0] == 0
    profile = json.loads(out.read_text())
    assert not [f for f in profile["frames"] if f.startswith(("serve_once (", "shape_serve ("))]
    assert set(profile["threads"]) == {str(mine.pid)}


def test_a_syscall_storm_is_counted_exactly(tmp_path):
    """As many 1-byte writes as four threads can make: every one recorded
    under its function, or counted as lost."""
    p, out = run_recorded(tmp_path, "storm", "syscall")
    assert p.returncode == 0, p.stderr
    made = int(p.stdout.split()[-1])
    profile = json.loads(out.read_text())
    lost = next(v["lost"] for v in profile["views"] if v["kind"] == "syscall")
    stacks = fold(out, "syscall", count=True, merge=True)
    recorded = under(stacks, "storm_writes", "syscall:write")
    assert recorded + lost == made, (recorded, lost, made)
    assert made > 100_000


def by_process(stacks):
    """{pid: {stack below the process root: value}} of a folded view
    recorded with --subprocesses."""
    out = {}
    for stack, v in stacks.items():
        root = stack[0]
        assert root.startswith("process "), stack
        pid = int(root.rsplit("(", 1)[1].rstrip(")"))
        out.setdefault(pid, {})[stack[1:]] = v
    return out


def test_subprocesses_are_recorded_each_under_its_root(tmp_path):
    """Two forked workers and an exec'd Python: each is its own process
    root, with its own functions and none of another's."""
    code, path = record(tmp_path, "fork", views="cpu,syscall", extra=("--subprocesses",))
    assert code == 0
    profile = json.loads(path.read_text())
    procs = {int(p): v for p, v in profile["processes"].items()}
    assert len(procs) == 4, procs
    main = profile["pid"]
    assert procs[main]["ppid"] == 0
    children = [p for p in procs if p != main]
    assert all(procs[c]["ppid"] == main for c in children)
    execd = [c for c in children if "exec_child" in procs[c]["command"]]
    forked = [c for c in children if c not in execd]
    assert len(execd) == 1 and len(forked) == 2, procs
    assert procs[execd[0]]["python"] == profile["python"]

    cpu = by_process(fold(path, "cpu", merge=True))
    for pid in forked:
        mine = cpu.get(pid, {})
        total = sum(mine.values())
        spin = under(mine, "spin_for")
        # 0.5 s at 99 Hz: about 50 samples on an idle machine, nearly all in
        # child_spin. The rest: the child's start and exit (the fork's
        # copied pages, the exit's teardown), slower in an emulated guest
        # (5.10 under TCG: 40 of 45 in CI once).
        assert total >= 10, (pid, mine)
        assert spin >= (0.8 if EMULATED else 0.9) * total, (pid, mine)
        assert all("child_spin" in {fn(f) for f in s} for s in mine if s and fn(s[-1]) == "spin_for")
    ex = cpu.get(execd[0], {})
    # 0.6 s, less the time it takes to receive the new program's layout.
    assert under(ex, "spin_for") >= 20, ex
    assert all("exec_spin" in {fn(f) for f in s} for s in ex if s and fn(s[-1]) == "spin_for")
    assert not [s for s in cpu.get(main, {}) if "child_spin" in {fn(f) for f in s}]

    sys_ = by_process(fold(path, "syscall", count=True, merge=True))
    # The parent's waits are its own, under the function that waited.
    assert under(sys_[main], "parent_wait", "syscall:wait4") == 2


def test_without_subprocesses_children_are_not_recorded(tmp_path):
    code, path = record(tmp_path, "fork", views="cpu")
    assert code == 0
    profile = json.loads(path.read_text())
    assert "processes" not in profile
    assert not [f for f in profile["frames"] if fn(f) in ("child_spin", "exec_spin")]


FORK_AND_EXIT = """\
import os, time

def child_work():
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass

statuses = []
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        child_work()
        os._exit(0)
    statuses.append(os.waitpid(pid, 0)[1])
print(statuses, flush=True)
"""


@pytest.mark.parametrize("extra", [(), ("--exact",)], ids=["sampled", "exact"])
def test_forked_children_of_a_recorded_process_live(tmp_path, extra):
    """A child forked while the parent is recorded has no tracer attached:
    it must not fire the probes the parent's recorder listens to (on 6.18,
    whose optimized uprobes call a trampoline that only the parent maps,
    that was a SIGSEGV in each child)."""
    if extra and sys.version_info < (3, 12):
        pytest.skip("--exact needs sys.monitoring (3.12+)")
    need_bpf(prof_binary())
    script = tmp_path / "forks.py"
    script.write_text(FORK_AND_EXIT)
    out = tmp_path / "forks.json"
    p = subprocess.run([prof_binary(), "record", "--views", "cpu", *extra, "-o", str(out),
                        "--", PY, "-m", "pyusdt", str(script)],
                       capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str([0] * 10), p.stdout


@pytest.mark.parametrize("variant", [pytest.param({}, id="tp_btf"), AT_SYS_EXIT])
def test_short_waits_are_sampled_without_bias_and_every_wait_kept_on_request(tmp_path, variant):
    """4000 sleeps of about 150 us, all below the default 1 ms of
    --sample-waits-below: about one in 6 is kept, weighted 6, so the
    offcpu and wakeup views' counts and times estimate the true ones
    (standard deviation about 3.5% of the count here; the bounds are 4 of
    them). The syscall view beside them counts exactly. With
    --sample-waits-below 0 every wait is counted, once."""
    views = "offcpu,wakeup,syscall"
    code, path = record(tmp_path, "shortsleeps", views=views, env=variant)
    assert code == 0
    sleeps = under(fold(path, "syscall", count=True, merge=True), "short_sleeper")
    in_syscall = under(fold(path, "syscall", merge=True), "short_sleeper")
    assert sleeps == 4000
    prof = json.loads(path.read_text())
    by_kind = {v["kind"]: v for v in prof["views"]}
    for kind in ("offcpu", "wakeup"):
        assert by_kind[kind]["sampled_below_ns"] == 1_000_000
        waits = under(fold(path, kind, count=True, merge=True), "short_sleeper")
        away = under(fold(path, kind, merge=True), "short_sleeper")
        assert 0.85 * 4000 <= waits <= 1.15 * 4000, (kind, waits)
        # Off the CPU is a part of the time in the syscall: most of it.
        assert 0.6 * in_syscall <= away <= 1.15 * in_syscall, (kind, away, in_syscall)
    note = next(n for n in by_kind["offcpu"]["notes"] if "sampled" in n)
    kept, short = map(int, re.search(r"(\d+) kept of (\d+)", note).groups())
    # Every sleep is a short wait unless the machine is loaded enough to
    # keep one away for over 1 ms (2 of 4000 were once, in CI; over 80
    # once on a busy host), and other threads add a few. What is checked
    # is that most are, and that about one in 6 of them is kept.
    assert short >= 0.9 * 4000 and kept < short / 2, note

    exact = tmp_path / "exact"
    exact.mkdir()
    code, path = record(exact, "shortsleeps", views=views, env=variant,
                        extra=("--sample-waits-below", "0"))
    assert code == 0
    prof = json.loads(path.read_text())
    assert all("sampled_below_ns" not in v for v in prof["views"])
    waits = under(fold(path, "offcpu", count=True, merge=True), "short_sleeper")
    # Each sleep is one wait; a preemption now and then adds one. A return
    # to the CPU the kernel did not report (README, "offcpu") is counted
    # at the thread's next departure if a wake-up came after its own, else
    # not counted (a note says how many): on one 6.18 build CI saw 10 such
    # returns in these 4000 sleeps, 9 of them not counted.
    assert 4000 * 0.98 <= waits <= 4000 + 40, waits
