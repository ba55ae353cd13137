"""Any CPython process, no restart: pyusdt-prof finds the layout of a
process that runs without pyusdt itself (src/target/derive.rs) from the
table of its minor version (src/target/tables.json) and, from 3.13 on,
from the interpreter's own _Py_DebugOffsets; and records it."""

import importlib.util
import json
import subprocess
import sys

from conftest import PY, ROOT, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary, wait_in_syscall
from test_gil import holder, per_thread
from test_record import attach, by_process, fold, fn, under

SHAPES = str(SCRIPTS / "shapes.py")
MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


def layout_tables():
    spec = importlib.util.spec_from_file_location("layout_tables", ROOT / "pyext" / "layout_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_of_this_version_is_what_its_headers_compile_to():
    """The table pyusdt-prof carries for this minor version is what
    pyext/csrc/layout.c, compiled against this interpreter's headers, says
    (make layout-tables writes it)."""
    said = json.loads(subprocess.check_output([PY, "-c", layout_tables().ASK], text=True))
    tables = json.loads((ROOT / "src" / "target" / "tables.json").read_text())
    assert said["minor"] == MINOR
    assert tables[MINOR] == {k: v for k, v in said.items() if k != "minor"}
    # From 3.13 on, the fields the interpreter's _Py_DebugOffsets carries.
    assert (len(said["debug"]) == 24) == (sys.version_info >= (3, 13)), said["debug"]


def layout(pid, *args):
    p = subprocess.run([prof_binary(), "layout", "-p", str(pid), *args], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_the_layout_found_without_pyusdt_is_the_one_it_announces():
    need_bpf(prof_binary())
    with Child([PY, "-m", "pyusdt", SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        announced = json.loads(layout(target.pid, "--json"))
        found = json.loads(layout(target.pid, "--json", "--derive"))
        target.send("go")
    # Every field, the addresses of the runtime, the main interpreter, its
    # GIL and the code type among them.
    assert found == announced
    assert announced["interp_addr"] and announced["gil_addr"]


def test_the_layout_of_a_python_without_pyusdt():
    need_bpf(prof_binary())
    with Child([PY, SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        text = layout(target.pid)
        target.send("go")
    v = sys.version_info
    assert text.startswith(f"process {target.pid} (")
    assert f"): Python {v[0]}.{v[1]}.{v[2]}, pyusdt layout v3 (found without pyusdt)\n" in text


def test_a_python_without_pyusdt_is_recorded_in_every_view_with_exact_frames(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "plain.json"
    with Child([PY, SHAPES, "plain"]) as target:
        target.expect("^waiting$")
        with attach(target.pid, out, "--views", "cpu,offcpu,syscall,wakeup,gil") as rec:
            target.send("go")
            assert target.finish()[0] == 0
            code, _, err = rec.finish()
            assert code == 0, err
    profile = json.loads(out.read_text())
    assert profile["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    chain = ("<module>", "shape_plain")
    # syscall: exactly the three writes, under their function.
    stacks = fold(out, "syscall", count=True, merge=True)
    writes = {tuple(fn(f) for f in s[:-1]): v for s, v in stacks.items()
              if s[-1] == "syscall:write" and fn(s[-2]) == "plain_write"}
    assert writes == {chain + ("plain_write",): 3}, writes
    # offcpu: the 0.3 s sleep under plain_nap, within 5% (then it waits for
    # the GIL, at a futex, as long as a spinner keeps it).
    slept = sum(v for s, v in fold(out, "offcpu", merge=True).items()
                if "plain_nap" in [fn(f) for f in s] and "hrtimer_nanosleep_[k]" in s) / 1e9
    assert 0.3 * 0.95 <= slept <= 0.3 * 1.05, slept
    # cpu: each spinner burns in gil_spinner; together they hold the GIL
    # most of the 1.5 s they run.
    hz = profile["sample_hz"]
    cpu = fold(out, "cpu")
    for name in ("spin-a", "spin-b"):
        mine = per_thread(cpu, name)
        burnt = sum(v for s, v in mine.items() if "gil_spinner" in [fn(f) for f in s]) / hz
        assert burnt >= 0.25, (name, burnt)
    # gil: each spinner waits while the other holds the GIL.
    gil = fold(out, "gil")
    for me, other in (("spin-a", "spin-b"), ("spin-b", "spin-a")):
        mine = per_thread(gil, me)
        waited = sum(mine.values())
        by_other = sum(v for s, v in mine.items()
                       if (holder(s) or "").startswith(f"GIL held by thread {other} ("))
        assert waited >= 0.25e9 and by_other >= 0.8 * waited, (me, waited, by_other)
    # wakeup: the main thread waits 0.5 s or more in Thread.join (the spinners
    # go on that long after it came), woken by a spinner: its exit, or its
    # release of the GIL.
    main = {s: v for s, v in fold(out, "wakeup").items() if s[0].endswith(f"({target.pid})")}
    joined = sum(v for s, v in main.items() if "Thread.join" in [fn(f) for f in s]
                 and any(f.startswith("waker thread spin-") for f in s))
    assert joined >= 0.3e9, main


def test_exact_span_and_probes_say_in_one_line_that_they_need_pyusdt(tmp_path):
    need_bpf(prof_binary())
    with Child([PY, SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        for spec in ("myapp:*", "pyusdt:PY_START"):
            p = subprocess.run([prof_binary(), "trace", "-p", str(target.pid), spec],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert p.returncode == 2, p.stderr
            assert p.stderr == (
                f"pyusdt-prof: no probe matches {spec}: pyusdt's probes and app-defined probes "
                f"need pyusdt, and process {target.pid} runs Python without it: start the "
                "program with `python -m pyusdt app.py` (or `-m module`), or call "
                "`import pyusdt; pyusdt.enable()` in it\n"), p.stderr
        for args, what in ((["--exact"], "record --exact"), (["--span", "x"], "record --span")):
            p = subprocess.run([prof_binary(), "record", "-p", str(target.pid), *args,
                                "-o", str(tmp_path / "x.json")],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert p.returncode == 1, p.stderr
            assert p.stderr == (
                f"pyusdt-prof: {what} needs pyusdt in process {target.pid} (python), which runs "
                "without it: start the program with `python -m pyusdt app.py` (or `-m module`), "
                "or call `import pyusdt; pyusdt.enable()` in it\n"), p.stderr
        target.send("go")


def test_dump_of_a_python_without_pyusdt_shows_its_frames():
    need_bpf(prof_binary())
    with Child([PY, SHAPES, "attach"]) as target:
        target.expect("^waiting$")
        wait_in_syscall(target.pid, 0)  # read
        p = subprocess.run([prof_binary(), "dump", "-p", str(target.pid), "--json"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        target.send("go")
    assert p.returncode == 0, p.stderr
    [proc] = json.loads(p.stdout)
    assert proc["python"].startswith(MINOR) and proc["note"] is None
    [main] = proc["threads"]
    assert [fn(f) for f in main["python"]] == ["outer_before", "shape_attach", "<module>"]
    assert main["state"] == "sleeping" and main["syscall"] == "read"


def test_a_launched_python_without_pyusdt_has_its_subprocesses_recorded(tmp_path):
    """`record --subprocesses -- python app.py`, no pyusdt in it: its
    forked workers (its layout is theirs) and the Python it execs, each
    under its own root, with frames from their first lines."""
    need_bpf(prof_binary())
    out = tmp_path / "fork.json"
    p = subprocess.run([prof_binary(), "record", "--subprocesses", "--views", "cpu,syscall",
                        "-o", str(out), "--", PY, SHAPES, "fork"],
                       capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert p.returncode == 0, p.stderr
    assert "PYUSDT_START_FD" not in p.stderr, p.stderr
    profile = json.loads(out.read_text())
    procs = {int(k): v for k, v in profile["processes"].items()}
    main = profile["pid"]
    assert len(procs) == 4 and all(v["python"] == profile["python"] for v in procs.values()), procs
    assert profile["python"].startswith(MINOR)
    execd = [c for c in procs if "exec_child" in procs[c]["command"]]
    forked = [c for c in procs if c not in execd and c != main]
    assert len(execd) == 1 and len(forked) == 2, procs
    cpu = by_process(fold(out, "cpu", merge=True))
    for pid in forked:
        mine = cpu.get(pid, {})
        spin = sum(v for s, v in mine.items() if [fn(f) for f in s[-2:]] == ["child_spin", "spin_for"])
        # 0.5 s at 99 Hz: about 50 samples on an idle machine.
        assert spin >= 10 and spin >= 0.9 * sum(mine.values()), (pid, mine)
    assert under(cpu[execd[0]], "spin_for") >= 20, cpu[execd[0]]
    calls = by_process(fold(out, "syscall", count=True, merge=True))
    assert under(calls[main], "parent_wait", "syscall:wait4") == 2


def test_a_launched_python_without_pyusdt_is_recorded_from_its_first_line(tmp_path):
    """`record -- python app.py`: the program is held from when its
    interpreter has started until the recorder is attached, as pyusdt's
    handshake holds it: every call, under its frames."""
    need_bpf(prof_binary())
    out = tmp_path / "launched.json"
    p = subprocess.run([prof_binary(), "record", "--views", "syscall", "-o", str(out),
                        "--", PY, SHAPES, "syscalls"],
                       capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert p.returncode == 0, p.stderr
    profile = json.loads(out.read_text())
    assert profile["python"].startswith(MINOR)
    stacks = fold(out, "syscall", count=True, merge=True)
    chains = {tuple(fn(f) for f in s[:-1]): v for s, v in stacks.items()
              if len(s) > 1 and fn(s[-2]) in ("writer", "reader")}
    assert chains == {("<module>", "shape_syscalls", "writer"): 1000,
                      ("<module>", "shape_syscalls", "reader"): 700}, chains
