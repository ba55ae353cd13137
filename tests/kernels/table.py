"""The kernel x test table of tests/kernels/run, from each kernel's
junit.xml; exits 1 unless every test passed on every kernel."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def results(folder):
    """{test id: "pass" | "FAIL" | "skip"} of one kernel's run, and its
    first failure's message per test."""
    out, why = {}, {}
    xml = folder / "junit.xml"
    if not xml.is_file():
        return out, why
    for case in ET.parse(xml).getroot().iter("testcase"):
        f = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        tid = f"{f}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            out[tid] = "FAIL"
            why[tid] = (bad.get("message") or "").splitlines()[0][:160]
        elif case.find("skipped") is not None:
            message = case.find("skipped").get("message") or ""
            if "redundant:" in message:
                continue  # the same programs as a case that ran
            out[tid] = "skip"
            why[tid] = message[:160]
        else:
            out[tid] = "pass"
    return out, why


def outcome(res, tid):
    """The test's outcome, its parametrized cases taken together: FAIL if
    one failed, skip if one skipped, pass if all passed, none if none ran."""
    got = [r for t, r in res.items() if t == tid or t.startswith(tid + "[")]
    for r in ("FAIL", "skip", "pass"):
        if r in got:
            return r
    return "none"


def main():
    out = Path(sys.argv[1])
    kernels = sys.argv[2:]
    rows = []
    for line in (Path(__file__).parent / "tests.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            view, tid = line.split(": ", 1)
            rows.append((view, tid))
    cols, notes, ok = [], [], True
    for k in kernels:
        f = out / k
        release = (f / "uname").read_text().strip() if (f / "uname").is_file() else "?"
        secs = (f / "seconds").read_text().strip() if (f / "seconds").is_file() else "?"
        res, why = results(f)
        cols.append((f"{k} ({release}, {secs} s)", res))
        for tid, w in why.items():
            notes.append(f"{k}: {tid.split('::')[1]}: {w}")
    width = max(len(f"{v}: {t.split('::')[1]}") for v, t in rows)
    head = "test".ljust(width) + "".join(f"  {c}" for c, _ in cols)
    print(head)
    print("-" * len(head))
    for view, tid in rows:
        cells = []
        for c, res in cols:
            r = outcome(res, tid)
            ok &= r == "pass"
            cells.append(f"  {r.ljust(len(c))}")
        print(f"{view}: {tid.split('::')[1]}".ljust(width) + "".join(cells))
    for n in notes:
        print(n)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
