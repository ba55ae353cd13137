#!/usr/bin/env bash
# make demo / make flamegraphs: record the bundled example app with
# pyusdt-prof (all four views) and draw each view into flamegraphs/.
set -euo pipefail
PY=${1:?usage: demo.sh PYTHON PYUSDT_PROF}
PROF=${2:?usage: demo.sh PYTHON PYUSDT_PROF}
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: recording loads BPF programs and needs root; run: sudo make demo" >&2
    exit 1
fi
mkdir -p build flamegraphs
"$PROF" record -F 499 --views cpu,offcpu,syscall,wakeup -o build/demo.json -- \
    "$PY" -m pyusdt examples/demo_app.py --seconds 4
for view in cpu offcpu syscall wakeup; do
    "$PROF" flame "flamegraphs/demo-$view.svg" -i build/demo.json --view "$view"
done
# The differential graph: the same app with crunch's fib two levels deeper.
"$PROF" record -F 499 --views cpu -o build/demo-fib20.json -- \
    "$PY" -m pyusdt examples/demo_app.py --seconds 4 --fib 20
"$PROF" diff build/demo.json build/demo-fib20.json --view cpu --normalize \
    -o flamegraphs/demo-diff-cpu.svg
"$PROF" report -i build/demo.json --view syscall --limit 3 > flamegraphs/demo-report.txt
# The GIL: a threaded app recorded with the gil view beside the cpu view,
# with lines.
"$PROF" record -F 499 --views cpu,gil --lines -o build/gil.json -- \
    "$PY" -m pyusdt examples/gil_app.py --seconds 3
for view in cpu gil; do
    "$PROF" flame "flamegraphs/gil-$view.svg" -i build/gil.json --view "$view"
done
"$PROF" report -i build/gil.json --view gil --thread fetch --limit 3 > flamegraphs/gil-report.txt
# Every call: the demo app under --exact (the calls view), and its report.
"$PROF" record --exact -o build/demo-exact.json -- \
    "$PY" -m pyusdt examples/demo_app.py --seconds 2
"$PROF" flame flamegraphs/demo-calls.svg -i build/demo-exact.json --view calls
"$PROF" report -i build/demo-exact.json --view calls --limit 5 > flamegraphs/demo-calls-report.txt
echo
echo "== the five hottest stacks of the syscall view (calls), merged over threads"
"$PROF" fold -i build/demo.json --view syscall --count --merge-threads |
    awk '{ n = $NF; $NF = ""; printf "%8d  %s\n", n, $0 }' | sort -rn | awk 'NR <= 5' | cut -c1-160
echo
echo "open flamegraphs/demo-{cpu,offcpu,syscall,wakeup,diff-cpu,calls}.svg and gil-{cpu,gil}.svg in a browser;"
echo "flamegraphs/demo-report.txt is the syscall view's report"
