"""Writes src/target/tables.json: for each interpreter given, the layout
that pyusdt's csrc/layout.c compiled against that interpreter's own
internal headers, and the place of each field in its _Py_DebugOffsets
(3.13+). pyusdt-prof reads them to record a process that runs CPython
without pyusdt (src/target/derive.rs); tests/python/test_plain.py checks
each table against its interpreter.

    python3 pyext/layout_tables.py OUT.json PYTHON [PYTHON...]

Each PYTHON must have this checkout's pyusdt installed (make build).
`make layout-tables` runs it with every interpreter of PYTHONS.
"""

import json
import subprocess
import sys

# What one interpreter says of itself.
ASK = """
import json
from pyusdt import _native as n
F_DEBUG_OFFSETS = 1 << 2
l = dict(n.layout())
v = l["py_version_hex"]
for k in ("magic", "version", "size", "py_version_hex", "address",
          "runtime_addr", "interp_addr", "gil_addr", "code_type_addr"):
    l.pop(k)
l["flags"] &= ~F_DEBUG_OFFSETS
d = dict(n._debug_positions())
size = d.pop("__size__")
print(json.dumps({"minor": f"{v >> 24}.{(v >> 16) & 0xff}", "layout": l,
                  "debug": d, "debug_size": size}))
"""


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, pythons = sys.argv[1], sys.argv[2:]
    tables = {
        "about": "made by `make layout-tables` (pyext/layout_tables.py) from "
        "pyext/csrc/layout.c compiled against each version's headers; "
        "do not edit"
    }
    for py in pythons:
        said = json.loads(subprocess.check_output([py, "-c", ASK], text=True))
        minor = said.pop("minor")
        said["layout"] = dict(sorted(said["layout"].items()))
        tables[minor] = said
    with open(out, "w") as f:
        json.dump(dict(sorted(tables.items())), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
