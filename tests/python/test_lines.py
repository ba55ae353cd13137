"""record --lines: every Python frame named by the line it is at, checked
against the lines of a workload of known shape, on this interpreter."""

import json
import subprocess

from conftest import SCRIPTS, TIMEOUT, prof_binary
from test_record import fold, record

SHAPES = SCRIPTS / "shapes.py"


def line_of(marker):
    """The line of shapes.py marked `# line: MARKER`."""
    for n, text in enumerate(SHAPES.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# line: {marker}"):
            return n
    raise AssertionError(f"no line marked {marker}")


def at(function, marker):
    return f"{function} ({SHAPES}:{line_of(marker)})"


def test_lines_name_exactly_the_lines_of_a_known_shape(tmp_path):
    code, path = record(tmp_path, "lines", views="syscall,cpu", extra=("--lines", "-F", "999"))
    assert code == 0
    calls = fold(path, "syscall", count=True, merge=True)
    # Each write under its own line, under the line that called it.
    for marker in ("write-a", "write-b"):
        chain = (at("shape_lines", "call-writes"), at("line_writes", marker), "syscall:write")
        assert sum(v for s, v in calls.items() if s[-3:] == chain) == 300, marker
    assert sum(v for s, v in calls.items() if any(f.startswith("line_writes (") for f in s)) == 600
    cpu = fold(path, "cpu", merge=True)
    work = {s: v for s, v in cpu.items() if any(f.startswith("line_work (") for f in s)}
    total = sum(work.values())
    on_lines = sum(v for s, v in work.items()
                   if at("line_work", "sum") in s or at("line_work", "sorted") in s)
    assert total > 300 and on_lines >= 0.9 * total, (on_lines, total)
    assert all(at("shape_lines", "call-work") in s for s in work)
    assert sum(v for s, v in work.items() if at("line_work", "sum") in s) > 0.1 * total
    assert sum(v for s, v in work.items() if at("line_work", "sorted") in s) > 0.1 * total


def test_readers_fold_lines_back_into_functions(tmp_path):
    code, path = record(tmp_path, "lines", views="syscall", extra=("--lines",))
    assert code == 0
    args = [prof_binary(), "fold", "-i", str(path), "--view", "syscall", "--count",
            "--merge-threads", "--functions"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    first = f"line_writes ({SHAPES}:{line_of('write-a') - 2})"
    rows = [l for l in out.splitlines() if first in l and l.rsplit(" ", 1)[0].endswith("syscall:write")]
    assert len(rows) == 1 and rows[0].endswith(" 600"), rows
    report = subprocess.run([prof_binary(), "report", "-i", str(path), "--format", "json",
                             "--functions", "-n", "1000"],
                            capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    tables = {t["function"]: t for t in json.loads(report)["sections"][0]["syscalls"]}
    assert tables[first]["calls"] == 600
    report = subprocess.run([prof_binary(), "report", "-i", str(path), "--format", "json",
                             "-n", "1000"],
                            capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    tables = {t["function"]: t for t in json.loads(report)["sections"][0]["syscalls"]}
    assert tables[at("line_writes", "write-a")]["calls"] == 300
    assert tables[at("line_writes", "write-b")]["calls"] == 300
    svg = tmp_path / "lines.svg"
    subprocess.run([prof_binary(), "flame", str(svg), "-i", str(path), "--view", "syscall"],
                   capture_output=True, check=True, timeout=TIMEOUT)
    assert f"line_writes ({SHAPES}:{line_of('write-b')})" in svg.read_text()
    ss = tmp_path / "lines.speedscope.json"
    subprocess.run([prof_binary(), "export", "-i", str(path), "--format", "speedscope",
                    "-o", str(ss)], capture_output=True, check=True, timeout=TIMEOUT)
    frames = {f["name"]: f for f in json.loads(ss.read_text())["shared"]["frames"]}
    assert frames[at("line_writes", "write-a")]["line"] == line_of("write-a")
    assert frames[at("line_writes", "write-b")]["line"] == line_of("write-b")


def test_lines_in_every_view_drop_no_names_and_never_fall_back_to_the_def_line(tmp_path):
    # The scheduler views name code objects where allocating may fail: the
    # line tables are preallocated under --lines, so none is dropped (it
    # was 29-45 a recording of this shape) and no frame falls back to the
    # line of its `def`.
    code, path = record(tmp_path, "threads", views="cpu,offcpu,syscall,wakeup",
                        extra=("--lines",))
    assert code == 0
    profile = json.loads(path.read_text())
    assert profile["walk_errors"]["code name map full"] == 0, profile["walk_errors"]
    source = SHAPES.read_text().splitlines()
    seen = 0
    for view in ("cpu", "offcpu", "syscall", "wakeup"):
        for stack in fold(path, view, merge=True):
            for frame in stack:
                if f" ({SHAPES}:" in frame:
                    line = int(frame.rsplit(":", 1)[1].rstrip(")"))
                    # A function's frame on its own `def` line fell back;
                    # the module's on a `def` line runs that statement (a
                    # cpu sample as the script starts: CI saw it once).
                    name = frame.split(" (", 1)[0].rsplit(".", 1)[-1]
                    own_def = f"def {name}("
                    assert not source[line - 1].lstrip().startswith(own_def), (view, frame)
                    seen += 1
    assert seen > 0
