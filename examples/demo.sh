#!/usr/bin/env bash
# make demo: run the bundled example app under `python -m pyusdt`, print the
# layout it announces (pyusdt-prof layout) and count its Python calls with
# bpftrace on the pyusdt USDT probes.
set -euo pipefail
PY=${1:?usage: demo.sh PYTHON PYUSDT_PROF}
PROF=${2:?usage: demo.sh PYTHON PYUSDT_PROF}
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: attaching BPF programs needs root; run: sudo make demo" >&2
    exit 1
fi
ext=$("$PY" -c 'import pyusdt._native as n; print(n.__file__)')

out=$(mktemp)
trap 'kill "$app" 2>/dev/null || true; rm -f "$out"' EXIT
"$PY" -m pyusdt examples/demo_app.py --seconds 4 >"$out" &
app=$!
# Ready when the app has said it runs (pyusdt is loaded by then).
until grep -q 'demo app: pid' "$out"; do
    kill -0 "$app" || { cat "$out"; exit 1; }
    sleep 0.05
done
cat "$out"

echo
echo "== pyusdt-prof layout -p $app"
"$PROF" layout -p "$app" | head -12
echo "   ..."

echo
echo "== bpftrace: Python calls per function until the app exits (PY_START)"
BPFTRACE_STRLEN=64 bpftrace -p "$app" -e "
usdt:$ext:pyusdt:PY_START { @calls[str(arg0)] = count(); }
END { print(@calls, 12); clear(@calls); }" 2>/dev/null | grep -v '^Attaching'
wait "$app"
tail -n 1 "$out"
