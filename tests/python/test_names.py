"""Python thread names (threading's, whole) in every view, report, the
exports and the API, for a thread started before the recorder attached and
renamed while it records; recorded for real under BPF."""

import json
import subprocess
import sys

from conftest import PY, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary, pyusdt_child
from test_record import fold, fn

FIRST = "napper-with-a-long-name ☕"
RENAMED = "renamed-napper-with-a-longer-name ✓"


def label(name, tid, kernel):
    """The label the readers give the napper: its Python name, with the
    kernel's beside the id where it is not the Python name cut to 15 bytes
    (3.14+ sets it so)."""
    if sys.version_info >= (3, 14):
        assert kernel == name.encode()[:15].decode(), kernel
        return f"{name} ({tid})"
    assert kernel == "python", kernel
    return f"{name} ({tid}, python)"


def record_napper(tmp_path, renamed, kname=None):
    """Attaches to names.py once its napper runs, has it write 300 times
    (and take the name RENAMED if `renamed`, and the kernel name `kname`
    if given); returns (napper tid, profile path)."""
    need_bpf(prof_binary())
    out = tmp_path / "names.json"
    with pyusdt_child("names.py") as target:
        tid = int(target.expect(r"^ready (\d+)$").group(1))
        with Child([prof_binary(), "record", "-p", str(target.pid), "-o", str(out),
                    "--views", "cpu,offcpu,syscall,wakeup"]) as rec:
            line = rec.proc.stderr.readline()
            assert "pyusdt-prof: recording process" in line, line
            target.send("write 300")
            target.expect("^done$")
            if renamed:
                target.send(f"rename {RENAMED}")
                target.expect("^done$")
            if kname:
                target.send(f"kname {kname}")
                target.expect("^done$")
            target.send("exit")
            assert target.finish()[0] == 0
            code, _, err = rec.finish()
            assert code == 0, err
    return tid, out


def test_a_thread_is_named_by_python_in_every_view_and_reader(tmp_path):
    tid, out = record_napper(tmp_path, renamed=False)
    profile = json.loads(out.read_text())
    assert profile["python_threads"][str(tid)] == FIRST
    me = label(FIRST, tid, profile["threads"][str(tid)])
    root = f"thread {me}"
    # syscall: the napper's 300 writes, exactly, under its name.
    writes = {s: n for s, n in fold(out, "syscall", count=True).items()
              if s[-1] == "syscall:write" and fn(s[-2]) == "napper_writes"}
    assert list(writes.values()) == [300] and next(iter(writes))[0] == root, writes
    # offcpu: it waits for orders under its name; wakeup: it wakes the main
    # thread (its answers), named as the waker.
    assert any(s[0] == root and any(fn(f) == "napper" for f in s) for s in fold(out, "offcpu"))
    wakes = fold(out, "wakeup")
    assert any(f"waker thread {me}" in s for s in wakes), [[f for f in s if f.startswith("waker")] for s in wakes]
    # report: picked by its Python name or its kernel name, titled by its label.
    for pick in (FIRST, str(tid)):
        p = subprocess.run([prof_binary(), "report", "-i", str(out), "--view", "syscall",
                            "--thread", pick, "--format", "json"],
                           capture_output=True, text=True, timeout=TIMEOUT, check=True)
        [section] = json.loads(p.stdout)["sections"]
        assert section["threads"] == root, section["threads"]
    # The exports: speedscope profiles are named by thread.
    sp = tmp_path / "names.speedscope.json"
    subprocess.run([prof_binary(), "export", "-i", str(out), "--format", "speedscope",
                    "-o", str(sp)], capture_output=True, check=True, timeout=TIMEOUT)
    names = [p["name"] for p in json.loads(sp.read_text())["profiles"]]
    assert f"syscall: {root}" in names, names
    # The API.
    code = ("import sys, pyusdt_prof; p = pyusdt_prof.load(sys.argv[1]); "
            "print(p.python_threads[int(sys.argv[2])]); print(p.thread_label(int(sys.argv[2])))")
    api = subprocess.run([PY, "-c", code, str(out), str(tid)], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout.splitlines()
    assert api == [FIRST, me], api


def test_a_thread_renamed_while_recorded_has_its_last_name(tmp_path):
    tid, out = record_napper(tmp_path, renamed=True)
    profile = json.loads(out.read_text())
    assert profile["python_threads"][str(tid)] == RENAMED
    me = label(RENAMED, tid, profile["threads"][str(tid)])
    roots = {s[0] for s in fold(out, "syscall", count=True)}
    assert f"thread {me}" in roots, roots


def test_a_thread_has_the_kernel_name_it_exited_with(tmp_path):
    """The napper takes another kernel name after its writes, and exits
    with its process before the recording ends: the profile has the name
    it had as it exited (noted then), beside its Python name."""
    tid, out = record_napper(tmp_path, renamed=False, kname="last-kname")
    profile = json.loads(out.read_text())
    assert profile["threads"][str(tid)] == "last-kname", profile["threads"]
    assert profile["python_threads"][str(tid)] == FIRST
    roots = {s[0] for s in fold(out, "syscall", count=True)}
    assert f"thread {FIRST} ({tid}, last-kname)" in roots, roots


FORKS = """\
import os, sys, time
import pyusdt

def child_spin():
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass

pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        # Born with no tracer: pyusdt:thread's semaphore is 0 until the
        # recorder attaches to this child, then 1.
        first = pyusdt.status()["semaphores"]["thread"]
        deadline = time.monotonic() + 10
        while not pyusdt.status()["semaphores"]["thread"] and time.monotonic() < deadline:
            time.sleep(0.001)
        later = pyusdt.status()["semaphores"]["thread"]
        os.write(1, f"child {os.getpid()} {first} {later}\\n".encode())  # one write: no interleaving
        child_spin()
        sys.exit(0)  # at exit, pyusdt tells the names once more
    pids.append(pid)
print("statuses", [os.waitpid(p, 0)[1] for p in pids], flush=True)
"""


def test_forked_children_start_untraced_and_are_named_once_recorded(tmp_path):
    need_bpf(prof_binary())
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    out = tmp_path / "forks.json"
    p = subprocess.run([prof_binary(), "record", "--subprocesses", "--views", "cpu", "-o", str(out),
                        "--", PY, "-m", "pyusdt", str(script)],
                       capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "statuses [0, 0]" in lines, p.stdout
    children = {}
    for line in lines:
        if line.startswith("child "):
            pid, first, later = map(int, line.split()[1:])
            children[pid] = (first, later)
    assert len(children) == 2, p.stdout
    # The parent's count (its recorder listens) is not the child's.
    assert set(children.values()) == {(0, 1)}, children
    roots = {s[1] for s in fold(out, "cpu")}
    for pid in children:
        assert f"thread MainThread ({pid}, python)" in roots, roots
