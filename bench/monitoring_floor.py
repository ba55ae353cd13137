"""Runs one of bench/workloads.py's workloads with sys.monitoring's frame
events on (those `record --exact` turns on: PY_START, PY_RESUME,
PY_RETURN, PY_YIELD, PY_UNWIND, PY_THROW), each calling a C callback of
bench/monitoring_floor.c: `noop`, `clock` or `tsc`. What is left of `--exact`'s
price above these is pyusdt's ring and the BPF program's drain.

usage: python monitoring_floor.py DIR noop|clock|tsc WORKLOAD_ARGS...
(DIR holds the built monitoring_floor module; Python 3.12+)
"""

import runpy
import sys

directory, mode = sys.argv[1], sys.argv[2]
sys.path.insert(0, directory)
import monitoring_floor  # noqa: E402

callback = getattr(monitoring_floor, mode)
mon = sys.monitoring
tool = next(t for t in range(6) if mon.get_tool(t) is None)
mon.use_tool_id(tool, "bench")
events = 0
for name in ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "PY_UNWIND", "PY_THROW"):
    ev = getattr(mon.events, name)
    mon.register_callback(tool, ev, callback)
    events |= ev
mon.set_events(tool, events)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
