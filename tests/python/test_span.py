"""record --span NAME: only what threads do inside pyusdt.span(NAME) is
recorded, and the report gives the spans' count and durations."""

import json
import subprocess

from conftest import PY, SCRIPTS, TIMEOUT, need_bpf, prof_binary
from test_record import fold, under

SPANS = str(SCRIPTS / "spans.py")


def record_span(tmp_path, *extra):
    need_bpf(prof_binary())
    out = tmp_path / "span.json"
    p = subprocess.run(
        [prof_binary(), "record", "--views", "syscall,cpu", "--span", "handle_request",
         "-o", str(out), *extra, "--", PY, "-m", "pyusdt", SPANS],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert p.returncode == 0, p.stderr
    return out


def test_only_what_happens_inside_the_span_is_recorded(tmp_path):
    path = record_span(tmp_path)
    writes = fold(path, "syscall", count=True, merge=True)
    assert under(writes, "inside", "syscall:write") == 202
    assert under(writes, "outside") == 0
    assert under(writes, "bystander") == 0
    # Every write recorded is under handle's span, in inside.
    assert all(s[-1] != "syscall:write" or "inside (" in s[-2] for s in writes), writes
    rep = json.loads(subprocess.run(
        [prof_binary(), "report", "-i", str(path), "--format", "json"],
        capture_output=True, text=True, check=True).stdout)
    span = rep["span"]
    assert span["name"] == "handle_request"
    assert span["count"] == 42
    assert sum(span["hist"]) == 42
    assert span["total_ns"] > 0
    text = subprocess.run([prof_binary(), "report", "-i", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert "span handle_request: 42 ended" in text
    # Within 80 columns, but for the header's command line.
    assert max(len(line) for line in text.splitlines()[1:]) <= 80
    # pyusdt's decorator adds no frame of its own.
    assert not any("__init__.py" in f for s in writes for f in s)


def test_span_refuses_exact_and_bad_names(tmp_path):
    need_bpf(prof_binary())
    for extra, message in ((["--span", "handle_request", "--exact"],
                            "record --span does not combine with --exact"),
                           (["--span", "x" * 64], "a span name of 1 to 63 bytes")):
        args = [prof_binary(), "record", *extra,
                "-o", str(tmp_path / "x.json"), "--", PY, "-m", "pyusdt", SPANS]
        p = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT * 2)
        assert p.returncode != 0
        assert message in p.stderr, p.stderr
