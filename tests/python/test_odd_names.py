"""Names from the program that break line-based formats (newlines, tabs,
';', escape and delete characters in a function, its file, a thread and
the command line) come out escaped in folded text, reports, SVG and every
export; and pyusdt's poll thread is in no view, in a parent nor in a
child that exits at once. Recorded for real under BPF."""

import json
import re
import subprocess
import xml.etree.ElementTree as ET

from conftest import PY, SCRIPTS, TIMEOUT, need_bpf, prof_binary
from test_record import fold

VIEWS = ("cpu", "offcpu", "syscall", "wakeup")
# As the profile names it: control characters escaped; in folded text
# (and so the SVG) ';' is made ':' too.
NAME = r"odd\nname;\tx\x1b (odd\x01file;\n.py:2)"
FUNCTION = NAME.replace(";", ":")
THREAD = r"thread odd\nthread:\x7f ("
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def record_odd(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "odd.json"
    p = subprocess.run(
        [prof_binary(), "record", "--subprocesses", "--views", ",".join(VIEWS), "-o", str(out),
         "--", PY, "-m", "pyusdt", str(SCRIPTS / "odd_names.py"), "arg\nwith newline"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert p.returncode == 0, p.stderr
    return out


def strings(doc):
    """Every string in a JSON document."""
    if isinstance(doc, str):
        return [doc]
    items = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else []
    return [s for d in items for s in strings(d)]


def run(*args):
    p = subprocess.run([prof_binary(), *args], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_odd_names_are_escaped_in_every_format_and_the_poll_thread_is_nowhere(tmp_path):
    out = record_odd(tmp_path)
    profile = json.loads(out.read_text())
    parent = profile["pid"]
    [child] = [int(p) for p in profile["processes"] if int(p) != parent]
    for view in VIEWS:
        text = run("fold", "-i", str(out), "--view", view)
        for line in text.splitlines():
            stack, value = line.rsplit(" ", 1)
            assert int(value) > 0 and not CONTROL.search(line), repr(line)
            frames = stack.split(";")
            assert frames[0].startswith("process ") and r"arg\nwit" in frames[0], frames
            assert frames[0].endswith((f"({parent})", f"({child})")), frames
            # pyusdt's poll thread is instrumentation: never a thread (nor
            # a waker) here.
            assert "pyusdt-poll" not in stack and not frames[1].startswith("thread ? ("), frames
    writes = fold(out, "syscall", count=True)
    odd = [(s, n) for s, n in writes.items() if s[-1] == "syscall:write" and s[-2] == FUNCTION]
    assert len(odd) == 1 and odd[0][1] == 200, writes
    assert odd[0][0][1].startswith(THREAD), odd
    quick = {s: n for s, n in writes.items()
             if s[-1] == "syscall:write" and s[-2].startswith("quick_child_writes (")}
    assert list(quick.values()) == [50] and next(iter(quick))[0].endswith(f"({child})"), quick
    # A report, a flamegraph and every export stay well formed.
    report = run("report", "-i", str(out), "--view", "syscall", "--limit", "1000")
    assert NAME in report and not CONTROL.search(report)
    svg = tmp_path / "odd.svg"
    run("flame", "-i", str(out), "--view", "syscall", str(svg))
    titles = [t.text for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}title")]
    assert any(FUNCTION in (t or "") for t in titles), titles[:5]
    for fmt, suffix in (("speedscope", "json"), ("chrome", "json"), ("pprof", "pb.gz")):
        exported = tmp_path / f"odd.{fmt}.{suffix}"
        run("export", "-i", str(out), "--format", fmt, "-o", str(exported))
        if suffix == "json":
            doc = json.loads(exported.read_text())
            assert NAME in strings(doc) or any(NAME in t for t in strings(doc)), fmt
