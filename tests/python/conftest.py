"""Shared helpers for the Python-side tests.

Each test runs under one interpreter: the one pytest runs in (the Makefile
runs the suite once per interpreter in PYTHONS). Children are started
behind guards that kill them when the test ends, pass or fail.

Tests that need root and BPF (bpftrace, pyusdt-prof) skip with the reason
when they cannot run, unless PYUSDT_REQUIRE_BPF=1, which turns the skip
into a failure (CI sets it).
"""

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"
PY = sys.executable
PER_CALL = sys.version_info >= (3, 12)
REQUIRE_BPF = os.environ.get("PYUSDT_REQUIRE_BPF") == "1"
# In a kernel guest of tests/kernels/run: an emulated machine (QEMU's TCG)
# whose two CPUs are threads of the host's two cores.
EMULATED = os.environ.get("PYUSDT_TEST_EMULATED") == "1"
# How long any one wait may take before the test fails (not a sleep: the
# waits below return as soon as their condition holds).
TIMEOUT = 30.0
# bpftrace's str() length: two of them in a map key must fit its 512-byte
# BPF stack.
STRLEN = 96


def _kernel():
    """What `pyusdt-prof check --json` says of this machine; {} if it
    cannot say (no binary yet, or no privileges)."""
    p = os.environ.get("PYUSDT_PROF") or str(ROOT / "target" / "release" / "pyusdt-prof")
    try:
        out = subprocess.run([p, "check", "--json"], capture_output=True, text=True,
                             timeout=60).stdout
        return json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


KERNEL = _kernel()


def _variant(env, name, same_as=None):
    """A case of VARIANTS; skipped where this kernel would load the very
    programs of another case (`same_as`), since it lacks what tells them
    apart."""
    marks = []
    if same_as is not None:
        marks = [pytest.mark.skipif(True, reason=f"redundant: the programs of {same_as} "
                                                 "on this kernel")]
    return pytest.param(env, id=name, marks=marks)


# The recorder's program variants (src/bpf/kernel.rs), each forced on a
# kernel that has them all, so that every variant is tested on every
# kernel: tp_btf or raw_tp (kernels without tp_btf), with bpf_loop or with
# bounded loops (kernels before 5.17, without bpf_loop). On a kernel
# without one of those, the forced variant is the one it loads anyway.
_no_loop = KERNEL.get("bpf_loop") is False
_no_btf = KERNEL.get("tp_btf") is False
VARIANTS = [
    _variant({}, "tp_btf"),
    _variant({"PYUSDT_PROF_RAW_TP": "1"}, "raw_tp", "tp_btf" if _no_btf else None),
    _variant({"PYUSDT_PROF_NO_BPF_LOOP": "1"}, "bounded", "tp_btf" if _no_loop else None),
    _variant({"PYUSDT_PROF_RAW_TP": "1", "PYUSDT_PROF_NO_BPF_LOOP": "1"}, "bounded_raw_tp",
             "raw_tp" if _no_loop else ("bounded" if _no_btf else None)),
]

# Where the offcpu and wakeup views read a kept wait's stacks (`check`'s
# offcpu_stacks): at the thread's return where the kernel has kprobes,
# else at every departure; with --offcpu-stacks-at syscall-exit, at the
# exit of the syscall the thread left in where the kernel can tell a
# syscall (tp_btf and bpf_task_pt_regs). The other ways forced, where the
# kernel has them.
WALK_AT = KERNEL.get("offcpu_stacks")
_SYS_EXIT = bool(KERNEL.get("offcpu_stacks_at_syscall_exit"))
AT_DEPARTURE = _variant({"PYUSDT_PROF_WALK_AT_DEPARTURE": "1"}, "at_departure",
                        "tp_btf" if WALK_AT == "departure" else None)
AT_SYS_EXIT = _variant({"PYUSDT_PROF_WALK_AT_SYS_EXIT": "1"}, "at_sys_exit",
                       None if _SYS_EXIT else "at_departure")


def walk_at(variant):
    """Where `variant` (a case of the ways above, or {}) reads the stacks."""
    if "PYUSDT_PROF_WALK_AT_DEPARTURE" in variant:
        return "departure"
    if "PYUSDT_PROF_WALK_AT_SYS_EXIT" in variant:
        return "syscall exit" if _SYS_EXIT else "departure"
    return WALK_AT


def need_bpf(*tools):
    """Skips (or, with PYUSDT_REQUIRE_BPF=1, fails) unless this process can
    load BPF programs and each tool exists."""
    why = None
    if os.geteuid() != 0:
        why = "needs root for BPF"
    for t in tools:
        if why is None and not (shutil.which(t) or Path(t).is_file()):
            why = f"needs {t}"
    if why is not None:
        if REQUIRE_BPF:
            pytest.fail(f"PYUSDT_REQUIRE_BPF=1 but this test {why}")
        pytest.skip(why)


def prof_binary():
    """The pyusdt-prof binary under test."""
    p = os.environ.get("PYUSDT_PROF") or str(ROOT / "target" / "release" / "pyusdt-prof")
    return p


def extension_path():
    import pyusdt._native

    return pyusdt._native.__file__


class Child:
    """A child process with line-based stdin/stdout, killed on exit."""

    def __init__(self, argv, env=None, **kw):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **kw,
        )
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.lines = []

    @property
    def pid(self):
        return self.proc.pid

    def readline(self, timeout=TIMEOUT):
        """The next stdout line; fails the test if none comes in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._sel.select(deadline - time.monotonic()):
                line = self.proc.stdout.readline()
                if line == "":
                    raise AssertionError(
                        f"{self.argv[0]} closed stdout (exit {self.proc.poll()}); "
                        f"stderr: {self.proc.stderr.read()}"
                    )
                self.lines.append(line)
                return line.rstrip("\n")
        raise AssertionError(f"no output from {self.argv} within {timeout}s")

    def expect(self, pattern, timeout=TIMEOUT):
        """Reads lines until one matches `pattern`; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            m = re.search(pattern, line)
            if m:
                return m

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, command):
        """Sends a command to a tests/scripts/controlled.py child and
        returns its JSON answer."""
        self.send(command)
        return json.loads(self.readline())

    def ask_first(self):
        """The JSON line a controlled.py child prints at start."""
        return json.loads(self.readline())

    def finish(self, timeout=TIMEOUT):
        """Waits for exit; returns (returncode, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=TIMEOUT)
        except (ValueError, OSError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def pyusdt_child(script, *args, env=None, **kw):
    """`python -m pyusdt tests/scripts/SCRIPT ARGS` behind a guard."""
    e = dict(os.environ)
    e.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        e.update(env)
    return Child([PY, "-m", "pyusdt", str(SCRIPTS / script), *map(str, args)], env=e, **kw)


# A probe bpftrace attaches last: pyusdt fires `layout` on every poll tick
# while it is attached, so its first hit proves bpftrace running and every
# probe before it live. (A tracer raises a probe's semaphore before its
# program is attached, so "the events are on" is not enough.)
SYNC_PROBE = (
    'usdt:*:pyusdt:layout { if (@synced == 0) { @synced = 1; printf("synced\\n"); } }'
)


class Bpftrace(Child):
    """bpftrace attached to `pid`, running `program`; ready once it has
    said it attached its probes, and with `sync` once they are live."""

    def __init__(self, pid, program, sync=True):
        env = dict(os.environ, BPFTRACE_STRLEN=str(STRLEN))
        if sync:
            program += SYNC_PROBE
        super().__init__(["bpftrace", "-p", str(pid), "-e", program], env=env)
        if sync:
            self.expect(r"^synced$")
        else:
            # Only bpftrace before 0.20 says it on stdout (later ones say
            # "Attached N probes" on stderr): sync where it can be.
            self.expect(r"^Attaching \d+ probe")

    def stop(self):
        """Detaches (as Ctrl-C does) and returns its printed maps.

        bpftrace 0.17 notices SIGINT only when it interrupts its wait for
        events (epoll_wait, 100 ms at a time); one that lands between two
        waits is lost and bpftrace runs on. So the signal is sent again
        every half second until bpftrace ends."""
        deadline = time.monotonic() + TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        return self.maps()

    def maps(self, timeout=TIMEOUT):
        """Waits for bpftrace to end (it ends with its target) and parses
        the maps it printed: {map: {key tuple: value}}."""
        _, out, err = self.finish(timeout)
        return parse_maps(out)


def parse_maps(text):
    maps = {}
    for line in text.splitlines():
        m = re.match(r"^@(\w*)\[(.*)\]: (-?\d+)$", line)
        if m:
            key = tuple(k.strip() for k in m.group(2).split(", "))
            maps.setdefault(m.group(1), {})[key] = int(m.group(3))
            continue
        m = re.match(r"^@(\w*): (-?\d+)$", line)
        if m:
            maps.setdefault(m.group(1), {})[()] = int(m.group(2))
    maps.pop("synced", None)
    return maps


def usdt(probe):
    """A bpftrace probe spec for pyusdt:PROBE in the process traced: any of
    its files (the extension is the one that has pyusdt's probes). With a
    pid, bpftrace 0.27 attaches a spec that names the file twice, and
    counts each hit twice."""
    return f"usdt:*:pyusdt:{probe}"


def wait_in_syscall(pid, nr):
    """Returns once the main thread of `pid` is inside syscall number `nr`
    (/proc/PID/syscall): blocked there, not a line before it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == str(nr):
                return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never entered syscall {nr}")
