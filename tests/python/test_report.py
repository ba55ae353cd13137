"""pyusdt-prof report on real recordings of workloads of known shape:
top functions, the syscall table, latency histograms, as text and JSON."""

import json
import subprocess

import pytest

from conftest import TIMEOUT, prof_binary
from test_record import cpu_truth, fn, record, run_recorded


def report(path, *args):
    p = subprocess.run([prof_binary(), "report", "-i", str(path), *args],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def sections(path, *args):
    doc = json.loads(report(path, "--format", "json", *args))
    assert doc["format"] == "pyusdt-prof report" and doc["version"] == 1
    return doc["sections"]


def test_syscall_table_counts_each_function_exactly(tmp_path):
    code, path = record(tmp_path, "syscalls", views="syscall")
    assert code == 0
    [s] = sections(path, "--limit", "1000")
    assert s["view"] == "syscall" and s["threads"] == "all threads"
    tables = {fn(t["function"]): t for t in s["syscalls"]}
    w, r = tables["writer"], tables["reader"]
    assert [(x["syscall"], x["calls"]) for x in w["rows"]] == [("write", 1000)]
    assert [(x["syscall"], x["calls"]) for x in r["rows"]] == [("read", 700)]
    for row in w["rows"] + r["rows"]:
        assert row["mean_ns"] == row["total_ns"] // row["calls"]
        assert 0 < row["p50_ns"] <= row["p99_ns"]
    hists = {fn(h["function"]): h for h in s["histograms"]}
    assert sum(hists["writer"]["buckets"]) == hists["writer"]["count"] == 1000
    assert sum(hists["reader"]["buckets"]) == 700
    funcs = {fn(f["function"]): f for f in s["by_total"]}
    assert "writer" in {fn(f["function"]) for f in s["by_self"]}
    assert funcs["writer"]["self_value"] == w["total_ns"]
    # Its own syscalls are the two opens.
    own = {fn(t["function"]): t for t in s["syscalls"]}["shape_syscalls"]
    assert [(x["syscall"], x["calls"]) for x in own["rows"]] == [("openat", 2)]
    assert funcs["shape_syscalls"]["self_value"] == own["total_ns"]
    assert funcs["shape_syscalls"]["total_value"] >= w["total_ns"] + r["total_ns"]


def test_offcpu_and_sleep_histograms_put_25ms_sleeps_in_their_bucket(tmp_path):
    code, path = record(tmp_path, "sleep", views="offcpu,syscall")
    assert code == 0
    by_view = {s["view"]: s for s in sections(path)}
    off = {fn(h["function"]): h for h in by_view["offcpu"]["histograms"]}["sleeper"]
    # 20 sleeps of 25 ms: [2^24, 2^25) ns is [16.8 ms, 33.6 ms). On a busy
    # machine the scheduler may also preempt the thread: short waits, in
    # lower buckets; and a woken sleeper may wait for a CPU more than
    # 8.6 ms (CI saw it once in 20): at most one in the next bucket. The
    # kernel does not report every return to the CPU (on 6.18 about one
    # sleep in 1600 comes back with no sched_switch reaching any BPF
    # program, README); the last sleep's, with no departure after it to
    # count it at, is lost (CI saw it once): 19 then, never fewer.
    late = off["buckets"][25] if len(off["buckets"]) > 25 else 0
    assert off["buckets"][24] + late in (19, 20) and late <= 1 and len(off["buckets"]) <= 26, off
    assert sum(off["buckets"]) == off["count"] >= 19
    table = {fn(t["function"]): t for t in by_view["syscall"]["syscalls"]}["sleeper"]
    [row] = [r for r in table["rows"] if r["syscall"] == "clock_nanosleep"]
    assert row["calls"] == 20
    assert 25_000_000 <= row["p50_ns"] < 1 << 25 and row["p50_ns"] <= row["p99_ns"] < 1 << (25 + late)
    text = report(path, "--view", "offcpu")
    assert "waits off the CPU of sleeper (shapes.py:" in text
    bar = [l for l in text.splitlines() if "16.8 ms -> 33.6 ms" in l]
    assert bar and bar[0].rstrip().endswith("|" + "*" * 40 + "|"), text


def test_text_report_shows_the_cpu_shares_in_80_columns(tmp_path):
    p, path = run_recorded(tmp_path, "cpu", "cpu", extra=("-F", "999"))
    assert p.returncode == 0 and path.exists(), p.stderr
    text = report(path)
    assert all(len(l) <= 80 for l in text.splitlines()), text
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[4] in ("heavy", "light", "spin"):
            rows[parts[4]] = (int(parts[0]), int(parts[2]))
    # spin is the leaf (self); heavy and light call it (total).
    heavy, light = rows["heavy"][1], rows["light"][1]
    # Held to the share by the thread's clock (about 0.75), as in
    # test_record's test_cpu_shares_follow_the_work.
    assert abs(heavy / (heavy + light) - cpu_truth(p.stdout)) <= 0.06, text
    assert rows["spin"][0] >= 0.9 * (heavy + light)
    [s] = sections(path)
    profile = json.loads(path.read_text())
    main = next(t for t, n in profile["threads"].items() if int(t) == profile["pid"])
    [one] = sections(path, "--thread", main)
    assert one["threads"].endswith((f"({main})", f"({main}, python)")), one["threads"]
    assert one["total"] == s["total"]  # one thread does all the work


def test_report_names_the_threads_when_one_is_not_found(tmp_path):
    code, path = record(tmp_path, "syscalls", views="syscall")
    assert code == 0
    p = subprocess.run([prof_binary(), "report", "-i", str(path), "--thread", "nope"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert "no thread named or numbered `nope` in this profile; its threads are" in p.stderr
    assert p.stderr.count("\n") == 1
