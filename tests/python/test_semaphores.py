"""Zero cost while idle: semaphores, sys.monitoring and the tool id follow
the tracers that come and go."""

import sys

import pytest

from conftest import PER_CALL, Bpftrace, need_bpf, pyusdt_child, usdt

ALL = ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE", "PY_UNWIND", "PY_THROW"]


def assert_idle(s):
    assert s["enabled"] is True
    assert s["semaphores"] == {**{p: 0 for p in ALL}, "layout": 0, "calls": 0,
                               "span_begin": 0, "span_end": 0, "thread": 0}
    assert s["active"] == []
    assert s["tool_id"] is None
    assert all(v == 0 for v in s["events"].values())
    assert all(v is None for v in s["tools"].values())


def test_idle_process_has_no_events():
    with pyusdt_child("controlled.py") as c:
        assert_idle(c.ask_first())
        assert_idle(c.ask("call 1000"))
        c.send("exit")
        assert c.finish()[0] == 0


@pytest.mark.skipif(not PER_CALL, reason="sys.monitoring needs Python 3.12+")
def test_only_the_attached_probe_is_on_and_off_again_after_detach():
    need_bpf("bpftrace")
    with pyusdt_child("controlled.py") as c:
        assert_idle(c.ask_first())
        with Bpftrace(c.pid, f"{usdt('PY_START')} {{ @[str(arg0)] = count(); }}") as bt:
            s = c.ask("wait PY_START")
            assert s["semaphores"]["PY_START"] == 1
            assert all(s["semaphores"][p] == 0 for p in ALL if p != "PY_START")
            tool = s["tool_id"]
            assert tool in (3, 4)
            assert s["tools"][str(tool)] == "pyusdt"
            assert s["events"][str(tool)] == sys.monitoring.events.PY_START
            s = c.ask("call 250")
            # PY_START carries no value: no repr() was computed.
            assert s["reprs"] == 0
            maps = bt.stop()
        assert maps[""][("work",)] == 250
        assert_idle(c.ask("wait -"))
        c.send("exit")
        assert c.finish()[0] == 0


@pytest.mark.skipif(not PER_CALL, reason="sys.monitoring needs Python 3.12+")
def test_taken_tool_ids_are_left_alone():
    """A program that holds tool ids 3 and 4 keeps them: pyusdt says so once
    and fires no per-call probe."""
    need_bpf("bpftrace")
    with pyusdt_child("controlled.py", env={"CONTROLLED_TAKE_TOOLS": "1"}) as c:
        s = c.ask_first()
        assert s["tools"] == {"4": "other", "3": "other"}
        with Bpftrace(c.pid, f"{usdt('PY_START')} {{ @[str(arg0)] = count(); }}") as bt:
            s = c.ask("wait-unavailable")
            assert s["per_call_unavailable"] is True
            assert s["tool_id"] is None
            c.ask("call 10")
            maps = bt.stop()
        assert maps == {}
        c.send("exit")
        code, _, err = c.finish()
        assert code == 0
        assert err.count("\n") == 1 and "tool ids [4, 3] are all taken" in err, err


@pytest.mark.skipif(PER_CALL, reason="Python 3.11 only")
def test_per_call_probes_absent_on_311_with_one_line():
    need_bpf("bpftrace")
    with pyusdt_child("controlled.py") as c:
        c.ask_first()
        with Bpftrace(c.pid, f"{usdt('PY_START')} {{ @[str(arg0)] = count(); }}") as bt:
            s = c.ask("wait-unavailable")
            assert s["per_call_unavailable"] is True
            c.ask("call 10")
            maps = bt.stop()
        assert maps == {}
        c.send("exit")
        code, _, err = c.finish()
        assert code == 0
        assert err == (
            "pyusdt: the per-call probes (PY_START) need Python 3.12 or later and this is "
            "3.11; the layout announcement (sampled profiling) works\n"
        )


@pytest.mark.skipif(not PER_CALL, reason="sys.monitoring needs Python 3.12+")
def test_repr_is_computed_only_while_a_value_probe_is_attached():
    need_bpf("bpftrace")
    with pyusdt_child("controlled.py") as c:
        c.ask_first()
        assert c.ask("call 100")["reprs"] == 0
        ret = f"{usdt('PY_RETURN')} /str(arg0) == \"work\"/ {{ @[str(arg4)] = count(); }}"
        with Bpftrace(c.pid, ret) as bt:
            c.ask("wait PY_RETURN")
            before = c.ask("status")["reprs"]
            after = c.ask("call 300")["reprs"]
            maps = bt.stop()
        assert after - before == 300
        assert maps[""] == {("Value()",): 300}
        assert c.ask("wait -")["reprs"] == after
        assert c.ask("call 100")["reprs"] == after
        c.send("exit")
        assert c.finish()[0] == 0


@pytest.mark.skipif(not PER_CALL, reason="sys.monitoring needs Python 3.12+")
def test_a_failing_callback_turns_its_probe_off_and_never_reaches_the_program():
    need_bpf("bpftrace")
    with pyusdt_child("controlled.py") as c:
        c.ask_first()
        with Bpftrace(c.pid, f"{usdt('PY_START')} {{ @[str(arg0)] = count(); }}") as bt:
            c.ask("wait PY_START")
            c.ask("fault PY_START")
            s = c.ask("call 5")
            assert s["disabled"] == ["PY_START"]
            assert s["active"] == []
            assert s["semaphores"]["PY_START"] == 1
            s = c.ask("call 5")
            bt.stop()
        c.send("exit")
        code, out, err = c.finish()
        # Every command was answered and the program ended normally.
        assert code == 0 and out == ""
        assert err == (
            "pyusdt: probe PY_START is off after an error in its callback: "
            "RuntimeError: injected fault\n"
        )
