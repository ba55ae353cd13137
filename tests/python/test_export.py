"""pyusdt-prof export and diff on real recordings: each format is read by
an independent reader (the protobuf library for pprof, speedscope itself
in headless Chromium when it is installed) and checked for the frames and
weights of a workload of known shape."""

import gzip
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import PY, ROOT, TIMEOUT, need_bpf, prof_binary
from test_record import cpu_truth, fold, fn, record, run_recorded

DATA = ROOT / "tests" / "python" / "data"


@pytest.fixture(scope="module")
def cpu_recording(tmp_path_factory):
    """One recording of the cpu shape (heavy does three times light's
    work) with every view, shared by the export tests: its path, and
    heavy's share of the CPU time by its thread's clock, to which the
    samples are held (as in test_record's test_cpu_shares_follow_the_work)."""
    tmp = tmp_path_factory.mktemp("export")
    p, path = run_recorded(tmp, "cpu", "cpu,offcpu,syscall,wakeup", extra=("-F", "999"))
    assert p.returncode == 0 and path.exists(), p.stderr
    return path, cpu_truth(p.stdout)


@pytest.fixture(scope="module")
def cpu_profile(cpu_recording):
    return cpu_recording[0]


@pytest.fixture(scope="module")
def truth(cpu_recording):
    return cpu_recording[1]


def export(path, fmt, *extra):
    out = path.with_suffix("." + fmt)
    p = subprocess.run(
        [prof_binary(), "export", "-i", str(path), "--format", fmt, "-o", str(out), *extra],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    return out


def cpu_shares(stacks):
    """(heavy, light) summed over stacks given as lists of frame names."""
    heavy = sum(v for s, v in stacks if any(fn(f) == "heavy" for f in s))
    light = sum(v for s, v in stacks if any(fn(f) == "light" for f in s))
    return heavy, light


def test_folded_export_is_fold(cpu_profile):
    out = export(cpu_profile, "folded", "--view", "offcpu")
    lines = out.read_text().splitlines()
    ours = {tuple(l.rsplit(" ", 1)[0].split(";")): int(l.rsplit(" ", 1)[1]) for l in lines}
    assert ours == fold(cpu_profile, "offcpu")


def test_speedscope_export_has_a_profile_per_view_and_thread(cpu_profile, truth):
    out = export(cpu_profile, "speedscope")
    doc = json.loads(out.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    profile = json.loads(cpu_profile.read_text())
    threads = {int(t) for t in profile["threads"]}
    names = [p["name"] for p in doc["profiles"]]
    assert {n.split(":")[0] for n in names} == {"cpu", "offcpu", "syscall", "wakeup"}
    cpu = [p for p in doc["profiles"] if p["name"].startswith("cpu: ")]
    # `cpu: thread NAME (TID)`, or `(TID, KERNEL NAME)` beside a Python name.
    tids = {int(re.search(r"\((\d+)(, [^()]*)?\)$", p["name"]).group(1)) for p in cpu}
    assert tids <= threads
    stacks = []
    for p in cpu:
        assert p["type"] == "sampled" and p["unit"] == "none"
        assert len(p["samples"]) == len(p["weights"])
        assert p["endValue"] == sum(p["weights"])
        stacks += [([frames[i]["name"] for i in s], w) for s, w in zip(p["samples"], p["weights"])]
    heavy, light = cpu_shares(stacks)
    assert abs(heavy / (heavy + light) - truth) <= 0.06
    heavy_frame = next(f for f in frames if fn(f["name"]) == "heavy")
    assert heavy_frame["file"].endswith("shapes.py") and heavy_frame["line"] > 0


def test_speedscope_opens_it(cpu_profile):
    """The real speedscope, in headless Chromium, shows our frames."""
    script = ROOT / "tests" / "web" / "speedscope_frames.mjs"
    ready = (ROOT / "tests" / "web" / "node_modules").is_dir() and os.path.exists("/usr/bin/chromium")
    if not ready and os.environ.get("PYUSDT_IN_SID"):
        # The export is the recorder's, whatever the target's Python: the
        # suite checks it in the browser under the machine's interpreters.
        pytest.skip("speedscope and chromium live on the machine, not in the sid chroot")
    if not ready:
        if os.environ.get("CI") == "true":
            pytest.fail("speedscope is not installed: make deps-web")
        pytest.skip("needs speedscope and chromium: make deps-web")
    out = export(cpu_profile, "speedscope", "--view", "cpu")
    p = subprocess.run(["node", str(script), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert any(p.startswith("cpu: thread ") for p in shown["profiles"]), shown
    names = {fn(f) for f in shown["frames"]}
    assert {"heavy", "light", "spin", "shape_cpu"} <= names, shown


def test_chrome_trace_nests_and_sums(cpu_profile, truth):
    out = export(cpu_profile, "chrome")
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(procs.values()) == sorted(
        ["cpu view (none)", "offcpu view (nanoseconds)", "syscall view (nanoseconds)",
         "wakeup view (nanoseconds)"])
    complete = [e for e in events if e["ph"] == "X"]
    for e in complete:
        assert {"name", "ts", "dur", "pid", "tid", "cat"} <= set(e)
        assert e["dur"] >= 0 and e["ts"] >= 0
    # Children lie inside their parent on each track.
    cpu_pid = next(p for p, n in procs.items() if n.startswith("cpu "))
    by_track = {}
    for e in complete:
        by_track.setdefault((e["pid"], e["tid"]), []).append(e)
    eps = 1e-6
    for evs in by_track.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_ = []
        for e in evs:
            while open_ and e["ts"] >= open_[-1]["ts"] + open_[-1]["dur"] - eps:
                open_.pop()
            if open_:
                assert e["ts"] + e["dur"] <= open_[-1]["ts"] + open_[-1]["dur"] + eps
            open_.append(e)
    # A cpu sample lasts one period: 1/999 s.
    heavy = sum(e["dur"] for e in complete if e["pid"] == cpu_pid and fn(e["name"]) == "heavy")
    light = sum(e["dur"] for e in complete if e["pid"] == cpu_pid and fn(e["name"]) == "light")
    assert abs(heavy / (heavy + light) - truth) <= 0.06
    stacks = fold(cpu_profile, "cpu", merge=True)
    samples = sum(v for s, v in stacks.items() if any(fn(f) == "heavy" for f in s))
    assert heavy == pytest.approx(samples * 1e6 / 999, rel=1e-6)


def load_pprof_module(tmp_path):
    from grpc_tools import protoc

    rc = protoc.main(["protoc", f"-I{DATA}", f"--python_out={tmp_path}", str(DATA / "profile.proto")])
    assert rc == 0
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module("profile_pb2")
    finally:
        sys.path.remove(str(tmp_path))


def test_pprof_export_reads_back_with_protobuf(cpu_profile, truth, tmp_path):
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools: make deps")
    pb = load_pprof_module(tmp_path)
    out = export(cpu_profile, "pprof")
    prof = pb.Profile()
    prof.ParseFromString(gzip.decompress(out.read_bytes()))
    st = prof.string_table
    assert st[0] == ""
    types = [(st[t.type], st[t.unit]) for t in prof.sample_type]
    kinds = [v["kind"] for v in json.loads(cpu_profile.read_text())["views"]]
    assert sorted(kinds) == ["cpu", "offcpu", "syscall", "wakeup"]
    assert types == [(k, "count" if k == "cpu" else "nanoseconds") for k in kinds]
    assert prof.period == 1_000_000_000 // 999
    funcs = {f.id: f for f in prof.function}
    locs = {l.id: l for l in prof.location}
    profile = json.loads(cpu_profile.read_text())
    # A thread's pprof name is its Python name where it has one.
    threads = {int(t): n for t, n in profile["threads"].items()}
    threads.update({int(t): n for t, n in profile.get("python_threads", {}).items()})
    stacks = []
    cpu = kinds.index("cpu")
    for s in prof.sample:
        assert len(s.value) == 4
        assert sum(1 for v in s.value if v) == 1
        labels = {st[l.key]: (st[l.str] if l.str else l.num) for l in s.label}
        assert threads[labels["tid"]] == labels["thread"]
        names = [st[funcs[locs[i].line[0].function_id].name] for i in reversed(s.location_id)]
        if s.value[cpu]:
            stacks.append((names, s.value[cpu]))
    heavy, light = cpu_shares([([n + " (x:1)" for n in names], v) for names, v in stacks])
    assert abs(heavy / (heavy + light) - truth) <= 0.06
    heavy_fn = next(f for f in prof.function if st[f.name] == "heavy")
    assert st[heavy_fn.filename].endswith("shapes.py") and heavy_fn.start_line > 0
    # Every cpu sample of the profile is in the export, none twice.
    assert sum(v for _, v in stacks) == sum(fold(cpu_profile, "cpu", merge=True).values())


def test_diff_shows_the_hot_function_that_changed(tmp_path):
    need_bpf(prof_binary())
    before_dir, after_dir = tmp_path / "a", tmp_path / "b"
    before_dir.mkdir()
    after_dir.mkdir()
    _, before = record(before_dir, "hot", views="cpu", extra=("-F", "499"))
    # The same shape with the roles swapped: hot_b is now the hot one.
    need_bpf(prof_binary())
    after = after_dir / "hot.json"
    p = subprocess.run(
        [prof_binary(), "record", "--views", "cpu", "-F", "499", "-o", str(after),
         "--", PY, "-m", "pyusdt", str(ROOT / "tests" / "scripts" / "shapes.py"), "hot", "b"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert p.returncode == 0, p.stderr
    svg = tmp_path / "diff.svg"
    p = subprocess.run(
        [prof_binary(), "diff", str(before), str(after), "-o", str(svg), "--normalize"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    text = svg.read_text()
    assert "Differential cpu view" in text

    def fill(name):
        at = text.index(f"<title>{name} (")
        rest = text[at:]
        start = rest.index('fill="') + len('fill="')
        return rest[start:rest.index('"', start)]

    b = next(f for f in json.loads(after.read_text())["frames"] if fn(f) == "hot_b")
    a = next(f for f in json.loads(after.read_text())["frames"] if fn(f) == "hot_a")
    red, blue = fill(b), fill(a)
    # hot_b grew from about a tenth to nine tenths: red (full red, less
    # green and blue); hot_a shrank: blue.
    r, g, bl = map(int, red[4:-1].split(","))
    assert r == 255 and g < 200 and bl < 200, red
    r, g, bl = map(int, blue[4:-1].split(","))
    assert bl == 255 and r < 200 and g < 200, blue


@pytest.mark.parametrize("args, message", [
    (["--format", "svg"], "is not a format; the formats are speedscope, chrome, pprof, folded"),
    (["--format", "folded", "--view", "cpu,offcpu"], "folded stacks hold one view"),
    (["--format", "pprof", "--view", "lock"], "is not a view"),
    (["--format", "pprof", "--view", "gil"], "this profile has no gil view"),
])
def test_bad_export_arguments_get_one_clear_line(cpu_profile, args, message, tmp_path):
    out = tmp_path / "x"
    p = subprocess.run([prof_binary(), "export", "-i", str(cpu_profile), "-o", str(out), *args],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert f"write {out}" not in p.stderr, p.stderr
    assert not out.exists()
