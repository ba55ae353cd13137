"""The Python API (pyusdt_prof): recordings made from Python, for real under
BPF, of a target driven on stdin (tests/scripts/api_target.py), checked
against exact expectations and against the CLI's readers."""

import json
import os
import subprocess
import sys
import time

import pytest

import pyusdt_prof
from conftest import PY, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary, pyusdt_child


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
    assert all(s.startswith(f"thread python ({t.pid});") for s in per_thread)
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


def test_python_without_pyusdt_is_a_runtime_error_with_the_recorders_message():
    need_bpf()
    with Child([PY, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"]) as c:
        c.expect("^ready$")
        rec = pyusdt_prof.Recording(c.pid)
        with pytest.raises(RuntimeError, match="runs Python without pyusdt"):
            rec.start()
        # Nothing was recorded: it may be started again (and fails again).
        with pytest.raises(RuntimeError, match="runs Python without pyusdt"):
            rec.start()


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
    ({"views": "cpu,lock"}, "`lock` is not a view; the views are cpu, offcpu, syscall, wakeup, gil"),
    ({"views": []}, "no view to record"),
    ({"freq": 0}, "freq is CPU samples per second from 1 to 10000, not 0"),
    ({"duration": -1.0}, "duration must be a number of seconds"),
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
    assert pyusdt_prof.VIEWS == ["cpu", "offcpu", "syscall", "wakeup", "gil"]
