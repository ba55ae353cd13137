"""pyusdt-prof trace end to end: a target of known shape
(tests/scripts/traced.py) traced for real under BPF, on the interpreter
this suite runs under, its events checked exactly."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import PER_CALL, TIMEOUT, VARIANTS, Child, need_bpf, prof_binary, pyusdt_child

# One event line: time, thread NAME (TID), what, the rest.
LINE = re.compile(r"^(-?\d+\.\d{6}) (.+) \((\d+)\) (\S+)(.*)$")


class Traced:
    """traced.py behind a guard, and what it said at start."""

    def __init__(self):
        self.child = pyusdt_child("traced.py")
        self.info = json.loads(self.child.readline())

    def do(self, command):
        self.child.send(command)
        assert self.child.readline() == "ok"

    def exit(self):
        self.child.send("exit")
        assert self.child.finish()[0] == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.child.kill()


def start_trace(pid, *args, env=None):
    """`pyusdt-prof trace -p PID ARGS` behind a guard; returns once it says
    it traces (everything attached)."""
    need_bpf(prof_binary())
    t = Child([prof_binary(), "trace", "-p", str(pid), *args], env={**os.environ, **(env or {})})
    line = t.proc.stderr.readline()
    assert line.startswith(f"pyusdt-prof: tracing process {pid} "), line + t.proc.stderr.read()
    return t


def run_trace(workload, *args, env=None):
    """Traces a fresh traced.py with ARGS while `workload(target)` drives
    it, until the target exits; returns (target info, stdout, stderr)."""
    with Traced() as target:
        with start_trace(target.info["pid"], *args, env=env) as t:
            workload(target)
            target.exit()
            code, out, err = t.finish()
            assert code == 0, err
    return target.info, out, err


def read_lines(proc, n, timeout=TIMEOUT):
    """At least n lines of proc's stdout as they come, read from the pipe
    itself (a buffered readline would hide the lines it read ahead)."""
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"fewer than {n} lines within {timeout}s: {buf!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"stdout closed after {buf!r}"
        buf += chunk
    return buf.decode().splitlines()


def events(text):
    """Event lines of text output, each with its indented stack lines
    (leaf first): [(match, [frames])]."""
    out = []
    for line in text.splitlines():
        if line.startswith("        "):
            out[-1][1].append(line.strip())
            continue
        m = LINE.match(line)
        assert m, f"not an event line: {line!r}"
        out.append((m, []))
    return out


@pytest.mark.skipif(not PER_CALL, reason="pyusdt's per-call probes need sys.monitoring (3.12+)")
def test_py_start_names_the_function_exactly_n_times():
    n = 50
    info, out, err = run_trace(lambda t: t.do(f"call {n}"), "pyusdt:PY_START")
    work = [m for m, _ in events(out) if m.group(4) == "pyusdt:PY_START"
            and m.group(5).startswith(' "work" ')]
    assert len(work) == n, out[-2000:]
    for m in work:
        assert int(m.group(3)) == info["pid"]  # the main thread
        args = m.group(5)
        assert re.fullmatch(
            r' "work" %s %d \d+' % (re.escape(json.dumps(info["file"])), info["work_line"]), args
        ), args
    assert re.search(r"^pyusdt-prof: \d+ events, lost 0 \(pyusdt:PY_START\(str,str,int,int\)\)$",
                     err, re.M), err


@pytest.mark.skipif(PER_CALL, reason="3.12+ has sys.monitoring")
def test_without_sys_monitoring_per_call_probes_are_said_to_never_fire():
    info, out, err = run_trace(lambda t: t.do("call 5"), "pyusdt:PY_START")
    assert out == ""
    assert re.search(r"^pyusdt-prof: Python 3\.11\.\d+ has no sys\.monitoring: pyusdt's per-call "
                     r"probes \(PY_START\) never fire there$", err, re.M), err


@pytest.mark.parametrize("variant", VARIANTS)
def test_syscall_writes_carry_their_stacks(variant):
    n = 30
    info, out, err = run_trace(lambda t: t.do(f"write {n}"), "--syscalls", "write", "--stacks",
                               env=variant)
    evs = events(out)
    assert all(m.group(4) == "syscall:write" for m, _ in evs)
    mine = [(m, s) for m, s in evs if any(f.startswith("writer (") for f in s)]
    assert len(mine) == n, out[-2000:]
    for m, stack in mine:
        assert re.fullmatch(r" = 1 <\d+\.\d{6}>", m.group(5)), m.group(5)
        # Leaf first: writer, under the module (the launcher's frames left out).
        assert stack[0] == f"writer ({info['file']}:{info['writer_line']})", stack
        assert stack[-1].startswith("<module> ("), stack
        assert len(stack) == 2, stack
    # The other writes are the target's answers, none under writer.
    assert len(evs) - n >= 1


def test_json_lines_parse_with_root_first_stacks():
    n = 20
    info, out, err = run_trace(lambda t: t.do(f"write {n}"), "--syscalls=write,read", "--stacks",
                               "--json")
    evs = [json.loads(line) for line in out.splitlines()]
    assert evs and all(e["kind"] == "syscall" for e in evs)
    for e in evs:
        assert set(e) == {"kind", "time", "time_ns", "pid", "tid", "thread", "name",
                          "duration_ns", "ret", "stack"}, e
        assert e["pid"] == info["pid"] and e["name"] in ("write", "read")
    writes = [e for e in evs if e["stack"] and e["stack"][-1].startswith("writer (")]
    assert len(writes) == n
    assert all(e["name"] == "write" and e["ret"] == 1 for e in writes)
    assert all(e["stack"][0].startswith("<module> (") for e in writes)
    # The target reads its commands from stdin: under <module>, with what it read.
    reads = [e for e in evs if e["name"] == "read"]
    assert reads and all(e["ret"] >= 0 for e in reads)


def test_an_unknown_probe_is_one_clear_line_and_exit_2():
    need_bpf(prof_binary())
    with Traced() as target:
        pid = target.info["pid"]
        p = subprocess.run([prof_binary(), "trace", "-p", str(pid), "nosuch:probe"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 2
        assert p.stdout == ""
        lines = p.stderr.splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith(
            f"pyusdt-prof: no probe matches nosuch:probe; process {pid} carries "), lines[0]
        assert "pyusdt:PY_START" in lines[0] and "pyusdt:layout" in lines[0]
        assert lines[0].endswith(f"(pyusdt-prof list -p {pid})")
        target.exit()


@pytest.mark.parametrize("args,message", [
    (["--syscalls", "wirte"], "`wirte` is not a syscall"),
    (["--syscalls", "pyusdt:PY_START"], "a probe? put probes before --syscalls"),
    (["my:probe(float)"], "`float` is not an argument type (int or str)"),
    (["a:b:c"], "`a:b:c` is not a probe"),
])
def test_bad_trace_arguments_exit_2(args, message):
    p = subprocess.run([prof_binary(), "trace", "-p", "1", *args], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 2
    assert message in p.stderr, p.stderr


def test_ctrl_c_ends_the_trace_with_a_summary():
    with Traced() as target:
        with start_trace(target.info["pid"], "--syscalls=write") as t:
            target.do("write 5")
            # Each event line is flushed as it happens: read them live.
            live = read_lines(t.proc, 6)
            assert all(LINE.match(x).group(4) == "syscall:write" for x in live), live
            t.proc.send_signal(signal.SIGINT)
            code, out, err = t.finish()
            assert code == 0, err
            assert len(live) + len(out.splitlines()) == int(err.split()[1])
            assert re.search(r"^pyusdt-prof: \d+ events, lost 0 \(syscalls\)$", err, re.M), err
            assert target.child.proc.poll() is None, "the target keeps running"
        target.exit()


PLAIN = """
import os, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
n = int(sys.stdin.readline())
fd = os.open(os.devnull, os.O_WRONLY)
for _ in range(n):
    os.write(fd, b"xy")
sys.stdin.readline()
"""


def test_a_process_without_pyusdt_has_syscalls_with_stacks():
    """Its layout found from outside: each write under its frame."""
    n = 25
    with Child([sys.executable, "-c", PLAIN]) as target:
        assert target.readline() == "ready"
        with start_trace(target.pid, "--syscalls=write", "--json", "--stacks") as t:
            target.send(str(n))
            target.send("")
            code, out, err = t.finish()
            assert code == 0, err
    evs = [json.loads(line) for line in out.splitlines()]
    # A frame is named by its code's first line.
    assert [(e["name"], e["ret"], e["stack"]) for e in evs] == \
        [("write", 2, ["<module> (<string>:1)"])] * n, evs[:2]


def test_stacks_of_a_process_that_is_not_python_are_refused():
    with Child(["sleep", "60"]) as target:
        p = subprocess.run([prof_binary(), "trace", "-p", str(target.pid), "--syscalls=write",
                            "--stacks"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert p.stderr == (f"pyusdt-prof: process {target.pid} (sleep) does not run Python: Python "
                        "stacks need it; trace without --stacks\n"), p.stderr


def loaded_programs():
    """Ids of every BPF program loaded now."""
    p = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                       check=True, timeout=TIMEOUT)
    return {prog["id"] for prog in json.loads(p.stdout)}


def programs_of(pid):
    """Ids of the BPF programs process `pid` holds a descriptor of (others
    on this machine may load programs of the same names meanwhile)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except FileNotFoundError:
            continue
    return ids


def test_a_killed_trace_leaves_nothing_attached():
    need_bpf(prof_binary(), "bpftool")
    with Traced() as target:
        with start_trace(target.info["pid"], "pyusdt:PY_START", "pyusdt:layout",
                         "--syscalls", "--stacks") as t:
            ours = programs_of(t.pid)
            assert len(ours) >= 4 and ours <= loaded_programs()
            target.child.send("status")
            assert set(json.loads(target.child.readline())["semaphores"].values()) != {0}
            t.proc.kill()
            t.proc.wait()
        # The kernel frees a program once its last descriptor is gone,
        # which it does after the process has died, not with it.
        deadline = time.monotonic() + TIMEOUT
        while ours & loaded_programs():
            assert time.monotonic() < deadline, ours & loaded_programs()
            time.sleep(0.05)
        target.child.send("status")
        assert set(json.loads(target.child.readline())["semaphores"].values()) == {0}
        target.exit()


def test_a_closed_pipe_ends_the_trace_quietly():
    with Traced() as target:
        with start_trace(target.info["pid"], "--syscalls=write") as t:
            t.proc.stdout.close()
            target.do("write 3")
            code, _, err = t.finish()
            assert code == 0, err
            assert re.search(r"^pyusdt-prof: 1 events, lost 0 \(syscalls\)$", err, re.M), err
        target.exit()


def needs(info, what):
    if not info[what]:
        pytest.skip(f"this pyusdt has no {what.replace('_', ' ')}")


def test_app_probe_args_are_exact_with_types_from_its_file():
    n = 100
    with Traced() as target:
        needs(target.info, "app_probes")
        with start_trace(target.info["pid"], "myapp:tick") as t:
            target.do(f"tick {n}")
            target.exit()
            code, out, err = t.finish()
            assert code == 0, err
    got = [m.group(4) + m.group(5) for m, _ in events(out)]
    assert got == [f'myapp:tick {i} "tick-{i}"' for i in range(n)]
    # The types came from the probe's .pyusdt.argtypes section.
    assert re.search(r"^pyusdt-prof: 100 events, lost 0 \(myapp:tick\(int,str\)\)$", err,
                     re.M), err


def test_a_probe_storm_is_counted_exactly_delivered_or_lost():
    n = 200_000
    with Traced() as target:
        needs(target.info, "app_probes")
        with start_trace(target.info["pid"], "myapp:tick") as t:
            target.do(f"tick {n}")
            target.exit()
            code, out, err = t.finish(timeout=TIMEOUT * 4)
            assert code == 0, err
    m = re.search(r"^pyusdt-prof: (\d+) events, lost (\d+) ", err, re.M)
    assert m, err
    delivered, lost = int(m.group(1)), int(m.group(2))
    lines = out.splitlines()
    assert delivered == len(lines)
    assert delivered + lost == n
    # What arrived arrived whole and in order.
    ticks = []
    for line in lines:
        tick = re.search(r' myapp:tick (\d+) "tick-(\d+)"$', line)
        assert tick and tick.group(1) == tick.group(2), line
        ticks.append(int(tick.group(1)))
    assert ticks == sorted(set(ticks))


def test_spans_pair_begin_and_end_by_id():
    n = 10
    with Traced() as target:
        needs(target.info, "spans")
        with start_trace(target.info["pid"], "pyusdt:span_*", "--json", "--stacks") as t:
            target.do(f"span {n}")
            target.exit()
            code, out, err = t.finish()
            assert code == 0, err
    evs = [json.loads(line) for line in out.splitlines()]
    assert all(set(e) == {"kind", "time", "time_ns", "pid", "tid", "thread", "provider", "name",
                          "args", "stack"} and e["kind"] == "probe"
               and e["provider"] == "pyusdt" for e in evs), evs[:1]
    assert [(e["name"], e["args"][0]) for e in evs] == [
        ("span_begin", "outer"), ("span_begin", "inner"), ("span_end", "inner"),
        ("span_end", "outer")] * n
    ids = [e["args"][1] for e in evs]
    for i in range(n):
        outer, inner, inner_end, outer_end = ids[4 * i: 4 * i + 4]
        assert outer == outer_end and inner == inner_end and outer != inner
    assert len(set(ids)) == 2 * n
    assert all(any(f.startswith("spans (") for f in e["stack"]) for e in evs)
