"""A target driven line by line on stdin, for the semaphore tests.

Commands (one per line), each answered with one JSON line:
  status          pyusdt.status() plus sys.monitoring.get_events() of
                  every tool id pyusdt may use
  wait A,B|-      wait until exactly probes A, B (or none) are active
  wait-unavailable  wait until pyusdt has found it cannot fire per-call
                  probes here
  layout          pyusdt.layout()
  call N          call work() N times (it returns a Value, whose repr()
                  calls are counted in "reprs")
  fault PROBE     make PROBE's next callback fail
  exit            exit 0
"""

import json
import os
import sys
import time

import pyusdt

if os.environ.get("CONTROLLED_TAKE_TOOLS"):
    for tool in pyusdt.TOOL_IDS:
        sys.monitoring.use_tool_id(tool, "other")


REPRS = 0


class Value:
    def __repr__(self):
        global REPRS
        REPRS += 1
        return "Value()"


def work():
    return Value()


def snapshot():
    s = pyusdt.status()
    mon = getattr(sys, "monitoring", None)
    s["events"] = {str(t): mon.get_events(t) for t in pyusdt.TOOL_IDS} if mon else {}
    s["tools"] = {str(t): mon.get_tool(t) for t in pyusdt.TOOL_IDS} if mon else {}
    s["reprs"] = REPRS
    return s


print(json.dumps(snapshot()), flush=True)
while line := sys.stdin.readline():
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "status":
        pass
    elif cmd == "layout":
        print(json.dumps(pyusdt.layout()), flush=True)
        continue
    elif cmd == "wait":
        want = [] if arg == "-" else arg.split(",")
        while sorted(pyusdt.status()["active"]) != sorted(want):
            time.sleep(0.005)
    elif cmd == "wait-unavailable":
        while not pyusdt.status()["per_call_unavailable"]:
            time.sleep(0.005)
    elif cmd == "call":
        for _ in range(int(arg)):
            work()
    elif cmd == "fault":
        pyusdt._native._inject_fault(arg)
    elif cmd == "exit":
        break
    print(json.dumps(snapshot()), flush=True)
