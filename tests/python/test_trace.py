"""pyusdt-prof trace end to end: a target of known shape
(tests/scripts/traced.py) traced for real under BPF, on the interpreter
this suite runs under, its events checked exactly."""

import json
import os
import re
import select
import signal
import subprocess
import time

import pytest

from conftest import PER_CALL, TIMEOUT, Child, need_bpf, prof_binary, pyusdt_child

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


def start_trace(pid, *args):
    """`pyusdt-prof trace -p PID ARGS` behind a guard; returns once it says
    it traces (everything attached)."""
    need_bpf(prof_binary())
    t = Child([prof_binary(), "trace", "-p", str(pid), *args])
    line = t.proc.stderr.readline()
    assert line.startswith(f"pyusdt-prof: tracing process {pid} "), line + t.proc.stderr.read()
    return t


def run_trace(workload, *args):
    """Traces a fresh traced.py with ARGS while `workload(target)` drives
    it, until the target exits; returns (target info, stdout, stderr)."""
    with Traced() as target:
        with start_trace(target.info["pid"], *args) as t:
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


def test_syscall_writes_carry_their_stacks():
    n = 30
    info, out, err = run_trace(lambda t: t.do(f"write {n}"), "--syscalls", "write", "--stacks")
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
