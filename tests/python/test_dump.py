"""pyusdt-prof dump: every thread of a live process now (a napper, a
reader, a spinner that keeps the GIL and a main thread waiting for it, and
a child without pyusdt, whose layout it finds itself), checked exactly against what each one does."""

import json
import os
import signal
import subprocess
import time

from conftest import SCRIPTS, TIMEOUT, need_bpf, prof_binary, pyusdt_child

SCRIPT = SCRIPTS / "dumpme.py"


def line_of(marker):
    for n, text in enumerate(SCRIPT.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# line: {marker}"):
            return n
    raise AssertionError(marker)


def dump(pid, *args):
    p = subprocess.run([prof_binary(), "dump", "-p", str(pid), *args], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def settled(doc):
    """Whether every thread of dumpme.py is where it stays."""
    threads = {t["name"]: t for t in doc[0]["threads"]}
    return (threads.get("spinner", {}).get("gil") == "holds"
            and threads["MainThread"]["gil"] == "waits"
            and threads["napper"]["syscall"] == "clock_nanosleep"
            and threads["reader"]["syscall"] == "read")


def test_dump_says_where_every_thread_is_and_who_holds_the_gil():
    need_bpf(prof_binary())
    with pyusdt_child("dumpme.py") as target:
        napper, reader, child = map(int, target.expect(r"^ready (\d+) (\d+) (\d+)$").groups())
        try:
            check_dump(target, napper, reader, child)
        finally:
            os.kill(child, signal.SIGKILL)


def check_dump(target, napper, reader, child):
    """dump of dumpme.py once every thread is where it stays."""
    # The spinner starts after "ready": dump until it holds the GIL.
    deadline = time.monotonic() + TIMEOUT
    while not settled(doc := json.loads(dump(target.pid, "--json", "--subprocesses"))):
        assert time.monotonic() < deadline, doc
    parent, kid = doc
    assert parent["pid"] == target.pid and parent["python"] and parent["note"] is None
    threads = {t["name"]: t for t in parent["threads"]}
    # pyusdt's poll thread is not the program's.
    assert set(threads) == {"MainThread", "napper", "reader", "spinner"}, threads
    leaf = {n: t["python"][0].split(" (")[0] for n, t in threads.items()}
    assert leaf == {"MainThread": "Condition.wait", "napper": "nap",
                    "reader": "wait_for_input", "spinner": "spin"}, leaf
    assert f"main ({SCRIPT}:{line_of('start')})" in threads["MainThread"]["python"]
    assert threads["napper"]["tid"] == napper and threads["reader"]["tid"] == reader
    assert threads["MainThread"]["tid"] == target.pid
    assert [t["gil"] for t in (threads["napper"], threads["reader"])] == [None, None]
    assert threads["MainThread"]["syscall"] == "futex"
    for name in ("MainThread", "napper", "reader"):
        assert threads[name]["state"] == "sleeping", threads[name]
    assert threads["spinner"]["state"] == "running" and threads["spinner"]["kernel"] == []
    assert any("nanosleep" in k for k in threads["napper"]["kernel"]), threads["napper"]
    assert any("pipe_read" in k for k in threads["reader"]["kernel"]), threads["reader"]
    assert any("futex" in k for k in threads["MainThread"]["kernel"])
    # The child runs Python without pyusdt: its frames all the same.
    assert kid["pid"] == child and kid["python"] == parent["python"] and kid["note"] is None
    [k] = kid["threads"]
    assert k["syscall"] == "clock_nanosleep" and k["python"] == ["<module> (<string>:1)"], k
    assert k["gil"] is None
    # As text: a block per thread, innermost frame first.
    text = dump(target.pid)
    assert text.startswith(f"Process {target.pid}: ")
    assert f"Thread napper ({napper}" in text and "): sleeping in clock_nanosleep\n    nap (" in text
    assert "running, holds the GIL\n    spin (" in text
    assert "sleeping in futex, waits for the GIL\n    Condition.wait (" in text


def test_dump_of_no_process_says_so():
    p = subprocess.run([prof_binary(), "dump", "-p", "999999999"], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 1 and "no process with PID 999999999" in p.stderr, p.stderr
