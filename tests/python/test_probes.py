"""The per-call probes, traced for real by bpftrace attached by PID.

Each test runs tests/scripts/known_shape.py under `python -m pyusdt`,
attaches bpftrace to the probes it needs, waits until they are live, and
checks exact counts and arguments.
"""

import ast

import pytest

from conftest import PER_CALL, SCRIPTS, STRLEN, Bpftrace, need_bpf, pyusdt_child, usdt

SCRIPT = SCRIPTS / "known_shape.py"
FILE = str(SCRIPT)
assert len(FILE) < STRLEN, f"move the checkout: bpftrace would cut {FILE} at {STRLEN} bytes"

pytestmark = pytest.mark.skipif(not PER_CALL, reason="per-call probes need Python 3.12+")


def first_line(name):
    tree = ast.parse(SCRIPT.read_text())
    return next(n.lineno for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def trace(shape, program, probes):
    """Runs SHAPE with bpftrace PROGRAM attached; returns bpftrace's maps."""
    need_bpf("bpftrace")
    with pyusdt_child("known_shape.py", shape, ",".join(probes)) as child:
        child.expect("^ready$")
        with Bpftrace(child.pid, program) as bt:
            child.send("go")
            child.expect("^done$")
            code, _, err = child.finish()
            assert code == 0, err
            assert "pyusdt:" not in err, err
            return bt.stop()


def key(name):
    return (name, FILE, str(first_line(name)))


def test_start_and_return_counts_and_arguments():
    maps = trace(
        "calls",
        f"{usdt('PY_START')} {{ @start[str(arg0), str(arg1), arg2] = count(); }}"
        f"{usdt('PY_RETURN')} /str(arg0) == \"work\"/ {{ @ret[str(arg4)] = count(); }}"
        f"{usdt('PY_RETURN')} {{ @return[str(arg0), str(arg1), arg2] = count(); }}",
        ["PY_START", "PY_RETURN"],
    )
    assert maps["start"][key("work")] == 1000
    assert maps["return"][key("work")] == 1000
    assert maps["start"][key("shape_calls")] == 1
    # repr() of each return value: work(i) returns i + 1 for i in 0..999.
    assert maps["ret"] == {(str(i + 1),): 1 for i in range(1000)}


def test_generator_yield_and_resume():
    maps = trace(
        "generator",
        f"{usdt('PY_START')} {{ @start[str(arg0)] = count(); }}"
        f"{usdt('PY_YIELD')} {{ @yield[str(arg0), str(arg1), arg2] = count(); }}"
        f"{usdt('PY_RESUME')} {{ @resume[str(arg0)] = count(); }}"
        f"{usdt('PY_RETURN')} {{ @return[str(arg0)] = count(); }}",
        ["PY_START", "PY_YIELD", "PY_RESUME", "PY_RETURN"],
    )
    assert maps["start"][("counter",)] == 1
    assert maps["yield"][key("counter")] == 50
    # 49 resumes run to the next yield and the 50th runs to the end.
    assert maps["resume"][("counter",)] == 50
    assert maps["return"][("counter",)] == 1


def test_unwind_balances_starts():
    maps = trace(
        "unwind",
        f"{usdt('PY_START')} {{ @start[str(arg0)] = count(); }}"
        f"{usdt('PY_RETURN')} {{ @return[str(arg0)] = count(); }}"
        f"{usdt('PY_UNWIND')} {{ @unwind[str(arg0), str(arg4)] = count(); }}",
        ["PY_START", "PY_RETURN", "PY_UNWIND"],
    )
    for fn in ("level1", "level2", "level3"):
        assert maps["start"][(fn,)] == 100
        assert maps["unwind"][(fn, "ValueError('deep')")] == 100
        assert (fn,) not in maps.get("return", {})
    # shape_unwind itself catches the error and returns.
    assert maps["return"][("shape_unwind",)] == 1
    assert ("shape_unwind", "ValueError('deep')") not in maps["unwind"]


def test_call_names_the_callable():
    maps = trace(
        "call",
        f"{usdt('CALL')} /str(arg0) == \"caller\"/ {{ @call[str(arg0), str(arg1), arg2, str(arg4)] = count(); }}",
        ["CALL"],
    )
    assert maps["call"] == {(*key("caller"), "<built-in function len>"): 200}


def test_line_events():
    line = first_line("liner")
    maps = trace(
        "line",
        f"{usdt('LINE')} /str(arg0) == \"liner\"/ {{ @line[str(arg0), str(arg1), arg2] = count(); }}",
        ["LINE"],
    )
    assert maps["line"] == {("liner", FILE, str(line + k)): 10 for k in (1, 2, 3)}


def test_throw_into_generator():
    maps = trace(
        "throw",
        f"{usdt('PY_THROW')} {{ @throw[str(arg0), str(arg1), arg2, str(arg4)] = count(); }}",
        ["PY_THROW"],
    )
    assert maps["throw"][(*key("catcher"), "ValueError()")] == 20

