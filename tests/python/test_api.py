"""The Python API (pyusdt_prof): recordings made from Python, for real under
BPF, of a target driven on stdin (tests/scripts/api_target.py), checked
against exact expectations and against the CLI's readers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import pyusdt_prof
from conftest import PER_CALL, PY, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary, pyusdt_child


def fn(frame):
    """The qualname of a Python frame name `qualname (file:line)`."""
    return frame.split(" (", 1)[0]


def target():
    """api_target.py under `python -m pyusdt`, behind a guard, once it is
    ready for commands."""
    t = pyusdt_child("api_target.py")
    t.expect("^ready$")
    return t


def run(t, command):
    """Sends a command to the target and waits until it is done."""
    t.send(command)
    t.expect("^done$")


def calls(profile, function, syscall):
    """The calls of `syscall` made with `function` innermost, from
    histograms()."""
    return sum(h["calls"] for h in profile.histograms("syscall")
               if fn(h["function"]) == function and h["syscall"] == syscall)


def test_a_recording_counts_syscalls_exactly():
    need_bpf()
    with target() as t:
        rec = pyusdt_prof.Recording(t.pid, views=("cpu", "syscall"))
        assert rec.views == ["cpu", "syscall"] and not rec.running
        rec.start()
        assert rec.running
        run(t, "write 1000")
        run(t, "read 700")
        p = rec.stop()
        assert not rec.running and rec.profile is not None
    assert isinstance(p, pyusdt_prof.Profile)
    assert p.views == ["cpu", "syscall"]
    assert p.pid == t.pid and p.threads[t.pid] == "python"
    assert p.python.split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert calls(p, "api_writer", "write") == 1000
    assert calls(p, "api_reader", "read") == 700
    for h in p.histograms("syscall"):
        assert sum(h["buckets"]) == h["calls"], h
    # The same counts through every reader.
    folded = p.folded("syscall", merge_threads=True, count=True)
    writes = {s: n for s, n in folded.items() if s.endswith(";syscall:write")
              and fn(s.split(";")[-2]) == "api_writer"}
    assert list(writes.values()) == [1000], writes
    assert [fn(f) for f in next(iter(writes)).split(";")[:-1]] == ["<module>", "main", "api_writer"]
    per_thread = p.folded("syscall", count=True)
    main = p.thread_label(t.pid)
    assert main in (f"python ({t.pid})", f"MainThread ({t.pid}, python)"), main
    assert all(s.startswith(f"thread {main};") for s in per_thread)
    top = {fn(r["function"]): r for r in p.top("syscall", by="self")}
    assert top["api_writer"]["self_value"] == top["api_writer"]["total_value"] > 0
    assert list(top["api_writer"]) == ["function", "self_value", "total_value"]
    by_total = p.top("syscall", by="total", limit=2)
    assert len(by_total) == 2 and by_total[0]["total_value"] >= by_total[1]["total_value"]
    report = p.report(view="syscall")
    table = {fn(s["function"]): s for s in report["sections"][0]["syscalls"]}
    assert table["api_writer"]["calls"] == 1000 and table["api_reader"]["calls"] == 700
    assert p.events["syscall"] >= 1700 and p.lost == {"cpu": 0, "syscall": 0}


def test_the_with_form_starts_and_stops():
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views=["syscall"]) as rec:
            assert rec.running and rec.profile is None
            run(t, "write 300")
        assert not rec.running
        assert rec.profile.views == ["syscall"]
        assert calls(rec.profile, "api_writer", "write") == 300


def test_progress_counts_live():
    need_bpf()
    with target() as t, pyusdt_prof.Recording(t.pid, views="syscall") as rec:
        run(t, "write 500")
        # The recorder refreshes its figures ten times a second: wait for
        # the writes to show (a condition, not a sleep).
        deadline = time.monotonic() + TIMEOUT
        while rec.progress()["events"]["syscall"] < 500:
            assert time.monotonic() < deadline, rec.progress()
        pr = rec.progress()
        assert set(pr) == {"elapsed", "events", "lost", "processes", "running"}
        assert pr["running"] and pr["lost"] == 0 and pr["processes"] == 1
        assert pr["elapsed"] > 0


def test_start_and_stop_twice_are_refused_clearly():
    need_bpf()
    with target() as t:
        rec = pyusdt_prof.Recording(t.pid, views="syscall")
        with pytest.raises(RuntimeError, match="^this recording was not started$"):
            rec.stop()
        rec.start()
        with pytest.raises(RuntimeError, match="^this recording was started already$"):
            rec.start()
        rec.stop()
        with pytest.raises(RuntimeError, match="^this recording was stopped already$"):
            rec.stop()
        with pytest.raises(RuntimeError, match="a Recording records once"):
            rec.start()


def test_a_recording_ends_with_its_duration():
    need_bpf()
    with target() as t:
        rec = pyusdt_prof.Recording(t.pid, views="syscall", duration=0.3)
        rec.start()
        run(t, "write 50")
        p = rec.wait()
        assert rec.profile is p and not rec.running
        assert calls(p, "api_writer", "write") == 50


def test_a_target_that_exits_ends_the_recording():
    need_bpf()
    with target() as t:
        rec = pyusdt_prof.Recording(t.pid, views="syscall")
        rec.start()
        run(t, "write 20")
        t.send("exit")
        assert t.finish()[0] == 0
        p = rec.wait()
    assert calls(p, "api_writer", "write") == 20


def test_a_missing_process_is_a_process_lookup_error():
    need_bpf()
    with pytest.raises(ProcessLookupError, match="^no process with PID 4000000$"):
        pyusdt_prof.Recording(4000000).start()


def test_what_needs_pyusdt_is_a_runtime_error_with_the_recorders_message():
    need_bpf()
    with Child([PY, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"]) as c:
        c.expect("^ready$")
        rec = pyusdt_prof.Recording(c.pid, exact=True)
        needs = r"^record --exact needs pyusdt in process \d+ \(python\), which runs without it"
        with pytest.raises(RuntimeError, match=needs):
            rec.start()
        # Nothing was recorded: it may be started again (and fails again).
        with pytest.raises(RuntimeError, match=needs):
            rec.start()
        # Without --exact, a Python without pyusdt is recorded.
        with pyusdt_prof.Recording(c.pid, views="cpu") as plain:
            pass
        assert plain.profile.python == "%d.%d.%d" % sys.version_info[:3]


def test_without_privileges_start_is_a_permission_error():
    need_bpf("setpriv")
    code = ("import os, pyusdt_prof\n"
            "try:\n"
            "    pyusdt_prof.Recording(os.getpid()).start()\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    p = subprocess.run(
        # Root without capabilities (root's own files stay readable: the
        # interpreter may live in root's home).
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", PY, "-c", code],
        capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(
        "PermissionError pyusdt-prof loads BPF programs and lacks CAP_BPF and CAP_PERFMON"), p.stdout


@pytest.mark.parametrize("kwargs,message", [
    ({"views": "cpu,lock"}, "`lock` is not a view; the views are cpu, offcpu, syscall, wakeup, gil, calls"),
    ({"views": []}, "no view to record"),
    ({"freq": 0}, "freq is CPU samples per second from 1 to 10000, not 0"),
    ({"duration": -1.0}, "duration must be a number of seconds"),
    ({"sample_waits_below": 2.0}, "sample_waits_below is in seconds, from 0 (every wait) to 1"),
    ({"offcpu_stacks_at": "exit"},
     'offcpu_stacks_at is auto, syscall-exit or departure, not "exit"'),
])
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        pyusdt_prof.Recording(1, **kwargs)
    assert message in str(e.value)


def cli(*args):
    p = subprocess.run([prof_binary(), *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_a_saved_profile_reads_the_same_in_the_cli_and_in_load(tmp_path):
    need_bpf(prof_binary())
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="cpu,syscall,offcpu") as rec:
            run(t, "write 200")
            run(t, "read 100")
    p = rec.profile
    path = tmp_path / "api.json"
    p.save(path)
    assert json.loads(cli("report", "-i", path, "--format", "json")) == p.report()
    assert (json.loads(cli("report", "-i", path, "--format", "json", "--view", "syscall",
                           "-n", "3", "--thread", "python"))
            == p.report(view="syscall", limit=3, thread="python"))
    assert (json.loads(cli("report", "-i", path, "--format", "json", "--per-thread"))
            == p.report(per_thread=True))
    folded = cli("fold", "-i", path, "--view", "syscall", "--count", "--merge-threads")
    assert {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
            for line in folded.splitlines()} == p.folded("syscall", merge_threads=True, count=True)
    again = pyusdt_prof.load(str(path))
    assert again.report() == p.report() and again.threads == p.threads
    assert calls(again, "api_writer", "write") == 200
    # Short waits are sampled by default, and the profile says so.
    assert p.sampled == again.sampled == {"offcpu": 1_000_000}


def test_lines_name_frames_by_line_and_by_function_folds_them_back():
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="syscall", lines=True) as rec:
            run(t, "write 40")
    p = rec.profile
    script = SCRIPTS / "api_target.py"
    text = script.read_text().splitlines()
    first = text.index("def api_writer(n):") + 1
    line = text.index('        os.write(DEVNULL, b"x")') + 1
    leaf = "(" + str(script) + ":{});syscall:write"
    by_line = p.folded("syscall", merge_threads=True, count=True)
    assert p.lines and sum(n for s, n in by_line.items()
                           if s.endswith("api_writer " + leaf.format(line))) == 40, by_line
    f = p.by_function()
    assert not f.lines
    by_fn = f.folded("syscall", merge_threads=True, count=True)
    assert sum(n for s, n in by_fn.items() if s.endswith("api_writer " + leaf.format(first))) == 40
    assert calls(f, "api_writer", "write") == 40


@pytest.mark.parametrize("follow", [True, False])
def test_subprocesses_records_forked_children_only_when_asked(follow):
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="syscall", subprocesses=follow) as rec:
            run(t, "fork 25")
            run(t, "write 5")
    p = rec.profile
    assert calls(p, "api_child", "write") == (25 if follow else 0)
    assert calls(p, "api_writer", "write") == 5
    if follow:
        children = {pid: proc for pid, proc in p.processes.items() if pid != t.pid}
        assert len(children) == 1 and next(iter(children.values()))["ppid"] == t.pid, p.processes
        assert all(s.startswith("process ") for s in p.folded("syscall"))
    else:
        assert p.processes == {}


def test_readers_refuse_what_the_profile_lacks():
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="syscall") as rec:
            run(t, "write 1")
    p = rec.profile
    with pytest.raises(ValueError, match="^this profile has no cpu view; it has syscall$"):
        p.top("cpu")
    with pytest.raises(ValueError, match="is not a view"):
        p.folded("disk")
    with pytest.raises(ValueError, match='by is "self" or "total"'):
        p.top("syscall", by="mean")
    with pytest.raises(ValueError, match="no thread named or numbered `nosuch`"):
        p.top("syscall", thread="nosuch")
    assert p.top("syscall", thread=t.pid) == p.top("syscall")


def test_load_refuses_bad_files_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="read .*missing.json"):
        pyusdt_prof.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a usable profile: the file is empty$"):
        pyusdt_prof.load(bad)
    bad.write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="not a pyusdt-prof profile"):
        pyusdt_prof.load(bad)


def test_the_package_is_one_abi3_build():
    native = pyusdt_prof._native.__file__
    assert native.endswith(".abi3.so"), native
    assert pyusdt_prof.VIEWS == ["cpu", "offcpu", "syscall", "wakeup", "gil", "calls"]


def writes_until_done(events, t, n):
    """Sends `write N` and reads events up to the target's `done` line (a
    write from main, after api_writer's): api_writer's writes."""
    t.send(f"write {n}")
    mine = []
    for e in events:
        assert e["kind"] == "syscall" and e["name"] == "write", e
        frames = [fn(f) for f in e["stack"]]
        if "api_writer" in frames:
            mine.append(e)
        elif frames[-1:] == ["main"]:
            break
    t.expect("^done$")
    return mine


def test_trace_iterates_exactly_the_writes_of_a_function_with_their_stacks():
    need_bpf()
    with target() as t:
        # duration: a bound, should an event be lost and the loop not end.
        tr = pyusdt_prof.trace(t.pid, syscalls=["write"], stacks=True, duration=TIMEOUT)
        assert isinstance(tr, pyusdt_prof.Trace) and tr.summary is None
        with tr:
            mine = writes_until_done(tr, t, 50)
        assert len(mine) == 50
        for e in mine:
            assert [fn(f) for f in e["stack"]] == ["<module>", "main", "api_writer"], e
            assert e["pid"] == t.pid and e["tid"] == t.pid and e["thread"] == "python"
            assert e["ret"] == 1 and e["duration_ns"] > 0
            assert set(e) == {"kind", "time_ns", "pid", "tid", "thread", "name", "duration_ns",
                              "ret", "stack"}
        times = [e["time_ns"] for e in mine]
        assert times == sorted(times)
        assert tr.summary["events"] >= 51 and tr.summary["lost"] == 0
        assert list(tr) == []  # closed: the iteration is over


def test_trace_with_a_callback_stops_when_it_returns_false():
    need_bpf()
    with target() as t:
        seen, sent = [], []

        def on_event(e):
            if e["kind"] == "probe":
                # pyusdt:layout fires on every poll tick while attached:
                # its first hit says the trace is live.
                if not sent:
                    t.send("write 30")
                    sent.append(True)
                return None
            frames = [fn(f) for f in e["stack"]]
            if "api_writer" in frames:
                seen.append(e)
            return frames[-1:] != ["main"]

        summary = pyusdt_prof.trace(t.pid, probes=["pyusdt:layout"], syscalls=["write"],
                                    stacks=True, callback=on_event, duration=TIMEOUT)
        t.expect("^done$")
    assert len(seen) == 30
    assert summary["lost"] == 0 and summary["events"] >= 31
    assert summary["probes"] == ["pyusdt:layout(int,int)"], summary


def test_an_exception_in_the_callback_stops_the_trace_and_propagates():
    need_bpf()
    with target() as t:
        def on_event(e):
            raise KeyError("from the callback")

        with pytest.raises(KeyError, match="from the callback"):
            pyusdt_prof.trace(t.pid, probes=["pyusdt:layout"], callback=on_event,
                              duration=TIMEOUT)


def test_trace_of_a_probe_gives_its_arguments():
    need_bpf()
    with target() as t:
        # One spec as a string, commas in its types and all.
        with pyusdt_prof.trace(t.pid, probes="pyusdt:layout(int,int)", duration=TIMEOUT) as tr:
            events = [next(tr) for _ in range(3)]
    for e in events:
        assert (e["kind"], e["provider"], e["name"]) == ("probe", "pyusdt", "layout"), e
        assert len(e["args"]) == 2 and all(isinstance(a, int) for a in e["args"]), e
        assert e["stack"] == [] and e["pid"] == t.pid
    assert tr.summary["probes"] == ["pyusdt:layout(int,int)"]


def test_trace_of_an_app_probe_gives_its_exact_arguments_and_types():
    need_bpf()
    with target() as t:
        # Types from the probe's .pyusdt.argtypes section; duration bounds
        # a trace that would lose events.
        with pyusdt_prof.trace(t.pid, probes=["apitest:*"], duration=TIMEOUT) as tr:
            t.send("tick 100")
            hits = [next(tr) for _ in range(100)]
        t.expect("^done$")
    assert [e["args"] for e in hits] == [[i, f"job-{i}"] for i in range(100)]
    assert {(e["provider"], e["name"]) for e in hits} == {("apitest", "tick")}
    assert tr.summary["probes"] == ["apitest:tick(int,str)"] and tr.summary["lost"] == 0


def test_a_span_recording_keeps_to_the_span():
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="syscall", span="api-span") as rec:
            run(t, "write 7")
            run(t, "span 12")
    p = rec.profile
    assert calls(p, "api_spanned", "write") == 12
    assert calls(p, "api_writer", "write") == 0
    assert (p.span["name"], p.span["count"]) == ("api-span", 12), p.span


@pytest.mark.skipif(not PER_CALL, reason="the calls view needs sys.monitoring (3.12+)")
def test_exact_counts_every_call():
    need_bpf()
    with target() as t:
        with pyusdt_prof.Recording(t.pid, views="cpu", exact=True) as rec:
            run(t, "call 250")
    p = rec.profile
    assert p.views == ["cpu", "calls"]
    row = next(r for r in p.top("calls", by="total", limit=100) if fn(r["function"]) == "api_call")
    assert row["calls"] == 250, row
    (h,) = [h for h in p.histograms("calls") if fn(h["function"]) == "api_call"]
    assert h["calls"] == 250 and sum(h["buckets"]) == 250


def test_trace_refuses_what_the_process_does_not_have():
    need_bpf()
    with target() as t:
        with pytest.raises(ValueError, match="no probe matches nosuch:probe"):
            pyusdt_prof.trace(t.pid, probes=["nosuch:probe"])
        with pytest.raises(ValueError, match="`frobnicate` is not a syscall"):
            pyusdt_prof.trace(t.pid, syscalls=["frobnicate"])
        with pytest.raises(ValueError, match="is not a probe"):
            pyusdt_prof.trace(t.pid, probes=["a:b:c"])
    with pytest.raises(ProcessLookupError):
        pyusdt_prof.trace(4000000, syscalls=[])


CTRL_C = """
import signal, sys
import pyusdt_prof
# A runner in the background may hand SIGINT ignored: the default here.
signal.signal(signal.SIGINT, signal.default_int_handler)
pid = int(sys.argv[1])
tr = pyusdt_prof.trace(pid, syscalls=["write"])
try:
    print("tracing", flush=True)
    for e in tr:
        pass
except KeyboardInterrupt:
    print("interrupted", tr.summary is not None, flush=True)
rec = pyusdt_prof.Recording(pid, views="syscall")
rec.start()
try:
    print("recording", flush=True)
    rec.wait()
except KeyboardInterrupt:
    print("interrupted", rec.running, flush=True)
print("stopped", rec.stop().views, flush=True)
"""


def waiting(pid):
    """Returns once process pid's main thread sleeps in a futex: past its
    last print, waiting in the iterator or in wait() (GIL released)."""
    deadline = time.monotonic() + TIMEOUT
    while "futex" not in open(f"/proc/{pid}/wchan").read():
        assert time.monotonic() < deadline, open(f"/proc/{pid}/wchan").read()


def test_ctrl_c_wakes_a_waiting_iterator_and_a_waiting_recording():
    need_bpf()
    with target() as t, Child([PY, "-c", CTRL_C, str(t.pid)]) as c:
        c.expect("^tracing$")
        waiting(c.pid)
        c.proc.send_signal(signal.SIGINT)
        c.expect("^interrupted True$")
        c.expect("^recording$")
        waiting(c.pid)
        c.proc.send_signal(signal.SIGINT)
        c.expect("^interrupted True$")
        c.expect(r"^stopped \['syscall'\]$")
        assert c.finish()[0] == 0
