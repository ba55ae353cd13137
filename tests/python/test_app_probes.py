"""App-defined probes (pyusdt.Probe) and spans (pyusdt.span), seen by
bpftrace and pyusdt-prof list. None of this needs sys.monitoring: it runs
on every interpreter."""

import json
import os
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import pyusdt
from conftest import TIMEOUT, Bpftrace, need_bpf, prof_binary, pyusdt_child, usdt


@pytest.fixture
def probe_dir(tmp_path):
    d = tmp_path / "probes"
    d.mkdir()
    return d


def app(probe_dir, **env):
    return pyusdt_child("app_probes.py", env={"PYUSDT_PROBE_DIR": str(probe_dir), **env})


def sections(path):
    """{name: bytes} of an ELF64 little-endian file's sections."""
    b = Path(path).read_bytes()
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)

    def header(i):
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", b, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = header(shstrndx)
    out = {}
    for i in range(1, shnum):
        name, off, size = header(i)
        end = b.index(b"\0", stroff + name)
        out[b[stroff + name:end].decode()] = b[off:off + size]
    return out


def test_declaring_checks_names_and_types_and_untraced_fire_ignores_arguments(probe_dir, monkeypatch):
    monkeypatch.setenv("PYUSDT_PROBE_DIR", str(probe_dir))
    with pytest.raises(TypeError, match="at most 6"):
        pyusdt.Probe("t", "seven", *([int] * 7))
    with pytest.raises(TypeError, match="int or str, not <class 'float'>"):
        pyusdt.Probe("t", "f", float)
    for bad in ["", "a-b", "9x", "x" * 65, "a:b"]:
        with pytest.raises(ValueError):
            pyusdt.Probe(bad, "p")
        with pytest.raises(ValueError):
            pyusdt.Probe("t", bad)
    p = pyusdt.Probe("inproc", "p", int, str)
    assert repr(p) == 'pyusdt.Probe("inproc", "p", int, str)'
    assert (p.provider, p.name, p.argtypes, p.path) == ("inproc", "p", (int, str), None)
    # Not traced: neither the count nor the types are looked at.
    assert p.fire() is None and p.fire("wrong", 1, 2) is None
    assert p.enabled is False
    assert p.path.startswith(str(probe_dir / f"pyusdt-probes-{os.getpid()}-inproc-"))
    assert Path(p.path).exists()
    entry = [a for a in pyusdt.status()["app_probes"] if a["provider"] == "inproc"]
    assert entry == [{"provider": "inproc", "name": "p", "args": ["int", "str"],
                      "semaphore": 0, "file": p.path}]
    s = pyusdt.status()["semaphores"]
    assert (s["span_begin"], s["span_end"]) == (0, 0)


def test_bpftrace_lists_the_app_probes_and_the_objects_carry_their_argtypes(probe_dir):
    need_bpf("bpftrace")
    with app(probe_dir) as c:
        first = c.ask_first()
        assert len(first["files"]) == 1
        path = first["files"][0]
        assert path == str(probe_dir / f"pyusdt-probes-{c.pid}-myapp-0.so")
        out = subprocess.run(["bpftrace", "-l", "usdt:*", "-p", str(c.pid)], capture_output=True,
                             text=True, timeout=TIMEOUT, check=True).stdout
        ours = sorted(l.split(":", 1)[1] for l in out.splitlines() if ":myapp:" in l)
        assert ours == [f"/proc/{c.pid}/root{path}:myapp:{n}" for n in ["six", "start_loop", "tick"]] \
            or ours == [f"{path}:myapp:{n}" for n in ["six", "start_loop", "tick"]]
        assert any(l.endswith(":pyusdt:span_begin") for l in out.splitlines())
        assert any(l.endswith(":pyusdt:span_end") for l in out.splitlines())
        s = sections(path)
        assert s[".pyusdt.argtypes"].decode() == (
            "myapp:start_loop:int,str\nmyapp:tick:\nmyapp:six:int,str,int,str,int,str\n")
        assert len(s[".probes"]) == 6 and s[".stapsdt.base"] == b"\0"
        later = c.ask("declare other late -")["path"]
        assert sections(later)[".pyusdt.argtypes"] == b"other:late:\n"
        c.send("exit")
        assert c.finish()[0] == 0


def test_bpftrace_sees_exactly_what_the_program_passed(probe_dir):
    need_bpf("bpftrace")
    with app(probe_dir) as c:
        c.ask_first()
        prog = ('usdt:*:myapp:start_loop { @args[(int64)arg0, str(arg1)] = count(); } '
                'usdt:*:myapp:tick { @ticks = count(); } '
                'usdt:*:myapp:six { @ints[(int64)arg0, (int64)arg2, (int64)arg4] = count(); '
                '@strs[str(arg1), str(arg3)] = count(); @last[str(arg5)] = count(); } ')
        with Bpftrace(c.pid, prog) as bt:
            assert c.ask("status")["enabled"] == {
                "myapp:start_loop": True, "myapp:tick": True, "myapp:six": True}
            c.ask("loop 100")
            c.ask("six")
            bad = c.ask("bad")["errors"]
            c.send("exit")
            assert c.finish()[0] == 0
            maps = bt.maps()
        assert maps == {
            "args": {(str(i), f"item{i}"): 1 for i in range(100)},
            "ticks": {(): 100},
            "ints": {("-1", str(2**63 - 1), str(-(2**63))): 1},
            "strs": {("a", "caf\u00e9 \u2603"): 1},
            "last": {("",): 1},
        }
        assert bad == [
            "TypeError: probe myapp:start_loop takes 2 arguments (int, str), 1 given",
            "TypeError: probe myapp:start_loop takes 2 arguments (int, str), 3 given",
            "TypeError: probe myapp:start_loop argument 1 must be int, not str",
            "TypeError: probe myapp:start_loop argument 2 must be str, not int",
            "OverflowError: Python int too large to convert to C long",
        ]


def test_a_probe_declared_later_lives_in_a_new_object_and_works(probe_dir):
    need_bpf("bpftrace")
    with app(probe_dir) as c:
        first = c.ask_first()["files"][0]
        one = 'usdt:*:myapp:start_loop { @first[arg0, str(arg1)] = count(); } '
        with Bpftrace(c.pid, one) as bt1:
            # Declared after myapp's object was loaded and a tracer attached
            # to it: another provider, and another probe of the same one.
            other = c.ask("declare other late int,str")["path"]
            again = c.ask("declare myapp again int")["path"]
            assert len({first, other, again}) == 3
            assert other == str(probe_dir / f"pyusdt-probes-{c.pid}-other-1.so")
            assert again == str(probe_dir / f"pyusdt-probes-{c.pid}-myapp-2.so")
            two = ('usdt:*:other:late { @late[arg0, str(arg1)] = count(); } '
                   'usdt:*:myapp:again { @again[arg0] = count(); } ')
            with Bpftrace(c.pid, two) as bt2:
                c.ask("fire other:late 41 hello")
                c.ask("fire myapp:again -5")
                c.ask("fire myapp:again -5")
                c.ask("loop 3")
                late = bt2.stop()
            c.ask("loop 2")
            early = bt1.stop()
        assert late == {"late": {("41", "hello"): 1}, "again": {("-5",): 2}}
        assert early == {"first": {("0", "item0"): 2, ("1", "item1"): 2, ("2", "item2"): 1}}
        c.send("exit")
        assert c.finish()[0] == 0


def test_enabled_follows_the_tracer(probe_dir):
    need_bpf("bpftrace")
    with app(probe_dir) as c:
        first = c.ask_first()
        assert first["status"]["app_probes"][0]["semaphore"] == 0
        assert c.ask("status")["enabled"] == {
            "myapp:start_loop": False, "myapp:tick": False, "myapp:six": False}
        with Bpftrace(c.pid, 'usdt:*:myapp:tick { @ticks = count(); } ') as bt:
            s = c.ask("status")
            assert s["enabled"] == {
                "myapp:start_loop": False, "myapp:tick": True, "myapp:six": False}
            sems = {a["name"]: a["semaphore"] for a in s["status"]["app_probes"]}
            assert sems == {"start_loop": 0, "tick": 1, "six": 0}
            c.ask("loop 10")
            assert bt.stop() == {"ticks": {(): 10}}
        assert c.ask("wait myapp:tick 0") == {"enabled": False}
        assert c.ask("status")["enabled"]["myapp:tick"] is False
        c.send("exit")
        assert c.finish()[0] == 0


def test_spans_begin_and_end_in_pairs_nested_and_through_exceptions(probe_dir):
    need_bpf("bpftrace")
    with app(probe_dir) as c:
        c.ask_first()
        prog = (f'{usdt("span_begin")} {{ @b[str(arg0), arg1] = nsecs; }} '
                f'{usdt("span_end")} {{ @e[str(arg0), arg1] = nsecs; }} ')
        with Bpftrace(c.pid, prog) as bt:
            s = c.ask("status")["status"]["semaphores"]
            assert (s["span_begin"], s["span_end"]) == (1, 1)
            c.ask("spans")
            c.send("exit")
            assert c.finish()[0] == 0
            maps = bt.maps()
        begins, ends = maps["b"], maps["e"]
        # Every span that began ended, with its name and id, ids unique.
        assert set(begins) == set(ends) and len(begins) == 30
        assert sorted(int(i) for _, i in begins) == list(range(1, 31))
        assert Counter(name for name, _ in begins) == {
            "outer": 10, "inner": 10, "raises": 3, "decorated": 4, "generator": 1, "same": 2}
        by_id = {int(i): (name, begins[(name, i)], ends[(name, i)]) for name, i in begins}
        # Nested: each inner (and the inner "same") begins after and ends
        # before the span it is in, whose id comes just before its own.
        nested = [i for i, (name, _, _) in by_id.items() if name == "inner"]
        nested += [max(i for i, (name, _, _) in by_id.items() if name == "same")]
        assert len(nested) == 11
        for i in nested:
            outer, inner = by_id[i - 1], by_id[i]
            assert outer[0] in ("outer", "same")
            assert outer[1] <= inner[1] <= inner[2] <= outer[2]


def test_untraced_spans_fire_nothing_and_decorate_like_the_function(probe_dir):
    calls = []

    @pyusdt.span("plain")
    def f(a, b=2):
        """doc"""
        calls.append((a, b))
        return a + b

    assert f(1) == 3 and f.__name__ == "f" and f.__doc__ == "doc"
    with pyusdt.span("x") as s:
        assert repr(s) == "pyusdt.span('x')"
    with pytest.raises(KeyError):
        with pyusdt.span("y"):
            raise KeyError("through")
    assert calls == [(1, 2)]


def test_list_shows_the_app_probes(probe_dir):
    need_bpf(prof_binary())
    with app(probe_dir) as c:
        path = c.ask_first()["files"][0]
        out = subprocess.run([prof_binary(), "list", "-p", str(c.pid)], capture_output=True,
                             text=True, timeout=TIMEOUT, check=True).stdout
        mine = sorted(l.split()[0] for l in out.splitlines() if l.startswith("myapp:"))
        assert mine == ["myapp:six", "myapp:start_loop", "myapp:tick"]
        line = next(l for l in out.splitlines() if l.startswith("myapp:start_loop "))
        assert "-8@%rdi 8@%rsi" in line and "semaphore" in line and path in line
        assert any(l.startswith("pyusdt:span_begin ") for l in out.splitlines())
        c.send("exit")
        assert c.finish()[0] == 0


def test_files_are_removed_at_exit_and_stale_ones_when_a_new_one_is_made(probe_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = probe_dir / f"pyusdt-probes-{dead.pid}-gone-0.so"
    stale.write_bytes(b"")
    alive = probe_dir / f"pyusdt-probes-{os.getpid()}-mine-0.so"
    alive.write_bytes(b"")
    with app(probe_dir) as c:
        files = c.ask_first()["files"]
        assert [Path(f).exists() for f in files] == [True]
        assert not stale.exists() and alive.exists()
        c.send("exit")
        assert c.finish()[0] == 0
    assert [Path(f).exists() for f in files] == [False]
    assert sorted(p.name for p in probe_dir.iterdir()) == [alive.name]


def test_a_tracer_attached_to_a_forked_child_sees_the_inherited_probes(probe_dir, tmp_path):
    need_bpf("bpftrace")
    go = tmp_path / "go"
    with app(probe_dir) as c:
        c.ask_first()
        c.send(f"fork-traced {go}")
        child = json.loads(c.readline())["child_pid"]
        prog = 'usdt:*:myapp:start_loop { @[(int64)arg0, str(arg1)] = count(); } '
        with Bpftrace(child, prog) as bt:
            go.write_text("")
            assert json.loads(c.readline()) == {"status": 0}
            maps = bt.maps()
        assert maps == {"": {(str(i), "child"): 1 for i in range(50)}}
        c.send("exit")
        assert c.finish()[0] == 0


def test_a_forked_child_fires_inherited_probes_and_removes_only_its_own_files(probe_dir):
    with app(probe_dir) as c:
        files = c.ask_first()["files"]
        c.send("fork")
        child = json.loads(c.readline())
        parent = json.loads(c.readline())
        assert child["inherited"] == files[0] and child["enabled"] is False
        assert [Path(f).name.startswith(f"pyusdt-probes-{child['child_pid']}-child-")
                for f in child["child_files"]] == [True]
        assert parent == {"status": 0, "files_exist": [True]}
        assert not Path(child["child_files"][0]).exists()
        c.send("exit")
        assert c.finish()[0] == 0
    assert list(probe_dir.iterdir()) == []
