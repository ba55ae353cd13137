"""The layout announcement: its offsets are proven by walking this very
process's threads and frames with them, and what BPF receives through
pyusdt:layout equals pyusdt.layout()."""

import ctypes
import json
import subprocess
import sys
import threading

import pytest

import pyusdt
from conftest import PY, need_bpf, prof_binary, pyusdt_child

F_CFRAME = 1 << 0
F_DEBUG_OFFSETS = 1 << 2
F_PER_CALL_PROBES = 1 << 3


class L:
    """Attribute access to the layout dict."""

    def __init__(self):
        self.__dict__.update(pyusdt.layout())


def u64(a):
    return ctypes.c_uint64.from_address(a).value


def u32(a):
    return ctypes.c_uint32.from_address(a).value


def i32(a):
    return ctypes.c_int32.from_address(a).value


def u8(a):
    return ctypes.c_uint8.from_address(a).value


def read_str(lay, addr):
    """A str object's text, read through the layout alone."""
    state = u32(addr + lay.unicode_state)
    kind = (state >> lay.unicode_kind_shift) & 7
    length = ctypes.c_int64.from_address(addr + lay.unicode_length).value
    assert state >> lay.unicode_compact_bit & 1, "names are compact strings"
    if state >> lay.unicode_ascii_bit & 1:
        return ctypes.string_at(addr + lay.unicode_ascii_data, length).decode("ascii")
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return ctypes.string_at(addr + lay.unicode_compact_data, length * kind).decode(codec)


def read_bytes(lay, addr):
    size = ctypes.c_int64.from_address(addr + lay.bytes_size).value
    return ctypes.string_at(addr + lay.bytes_data, size)


def my_tstate(lay):
    tid = threading.get_native_id()
    t = u64(lay.interp_addr + lay.interp_threads_head)
    while t:
        if u64(t + lay.tstate_native_thread_id) == tid:
            return t
        t = u64(t + lay.tstate_next)
    raise AssertionError(f"thread {tid} not in the interpreter's thread list")


def walk(lay):
    """(code address, frame address) of each Python frame of this thread,
    innermost first, skipping the interpreter's shim frames."""
    t = my_tstate(lay)
    if lay.flags & F_CFRAME:
        f = u64(u64(t + lay.tstate_cframe) + lay.current_frame)
    else:
        f = u64(t + lay.current_frame)
    out = []
    while f:
        code = u64(f + lay.frame_code)
        if u8(f + lay.frame_owner) != lay.owner_cstack and u64(code + lay.object_type) == lay.code_type_addr:
            out.append((code, f))
        f = u64(f + lay.frame_previous)
    return out


def python_frames():
    f = sys._getframe(1)
    out = []
    while f is not None:
        out.append(f.f_code)
        f = f.f_back
    return out


def check_walk():
    lay = L()
    walked = walk(lay)
    # The walk read the current frame from inside u64(), called by walk().
    codes = [u64.__code__, walk.__code__, *python_frames()]
    assert [c for c, _ in walked] == [id(c) for c in codes]
    for i, ((addr, frame), code) in enumerate(zip(walked, codes)):
        assert read_str(lay, u64(addr + lay.code_qualname)) == code.co_qualname
        assert read_str(lay, u64(addr + lay.code_name)) == code.co_name
        assert read_str(lay, u64(addr + lay.code_filename)) == code.co_filename
        assert i32(addr + lay.code_firstlineno) == code.co_firstlineno
        assert read_bytes(lay, u64(addr + lay.code_linetable)) == code.co_linetable
        if i < 2:
            continue  # u64() and walk() have returned: their frames are gone
        instr = u64(frame + lay.frame_instr)
        first = addr + lay.code_adaptive
        assert first - 2 <= instr <= first + len(code.co_code), "instruction inside the code"
    return len(walked)


def fünf():
    return check_walk()


def 関数():
    return fünf()


def test_layout_header():
    lay = L()
    assert lay.magic == 0x594C544453555950
    assert lay.version == pyusdt.LAYOUT_VERSION == 3
    assert lay.py_version_hex == sys.hexversion
    assert lay.size == pyusdt._native._layout_offsets()["__size__"][1]
    assert bool(lay.flags & F_CFRAME) == (sys.version_info < (3, 13))
    assert bool(lay.flags & F_PER_CALL_PROBES) == (sys.version_info >= (3, 12))
    if sys.version_info >= (3, 13):
        assert lay.flags & F_DEBUG_OFFSETS, "offsets agree with _Py_DebugOffsets"


def test_offsets_walk_this_threads_frames():
    # ascii, latin-1 and UCS-2 qualnames on the way
    assert 関数() > 3


def test_offsets_walk_another_threads_frames():
    got = []
    t = threading.Thread(target=lambda: got.append(関数()), name="walker")
    t.start()
    t.join()
    assert got and got[0] >= 3


def test_gil_offsets_name_the_holder():
    lay = L()
    # We hold the GIL, so it is locked and we were its last holder.
    assert i32(lay.gil_addr + lay.gil_locked) == 1
    assert u64(lay.gil_addr + lay.gil_last_holder) == my_tstate(lay)
    before = u64(lay.gil_addr + lay.gil_switch_number)
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    assert u64(lay.gil_addr + lay.gil_switch_number) > before


def test_runtime_lists_the_main_interpreter():
    lay = L()
    head = u64(lay.runtime_addr + lay.runtime_interpreters_head)
    found = []
    while head:
        found.append(head)
        head = u64(head + lay.interp_next)
    assert lay.interp_addr in found
    assert u64(my_tstate(lay) + lay.tstate_interp) == lay.interp_addr
    assert u64(my_tstate(lay) + lay.tstate_thread_id) == threading.get_ident()


def test_bpf_receives_the_announced_layout():
    need_bpf(prof_binary())
    with pyusdt_child("controlled.py") as c:
        c.ask_first()
        expected = c.ask("layout")
        out = subprocess.run(
            [prof_binary(), "layout", "-p", str(c.pid), "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        expected.pop("address")
        assert got == expected
        # A second tracer right after the first still gets it.
        again = subprocess.run(
            [prof_binary(), "layout", "-p", str(c.pid), "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert json.loads(again.stdout) == expected, again.stderr


def layout_of_waiting_child(code, *args):
    """Runs `python -c code` (which prints "up" and waits) and
    `pyusdt-prof layout` on it; returns pyusdt-prof's CompletedProcess."""
    need_bpf(prof_binary())
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "up\n"
        return subprocess.run([prof_binary(), "layout", "-p", str(p.pid), *args],
                              capture_output=True, text=True, timeout=60)
    finally:
        p.kill()
        p.wait()


def test_layout_of_python_without_pyusdt_is_found_without_it():
    out = layout_of_waiting_child("import sys; print('up', flush=True); sys.stdin.read()")
    assert out.returncode == 0, out.stderr
    assert "(found without pyusdt)\n" in out.stdout.splitlines(True)[0], out.stdout


def test_layout_of_pyusdt_not_enabled_says_so():
    out = layout_of_waiting_child(
        "import pyusdt, sys; print('up', flush=True); sys.stdin.read()", "--timeout", "0.3"
    )
    assert out.returncode == 1
    assert "did not announce its layout within 0.3s: pyusdt is loaded but not enabled" in out.stderr
