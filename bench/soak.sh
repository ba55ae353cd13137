#!/usr/bin/env bash
# make soak: record the demo app (all views) for SOAK_SECONDS (default
# 600) and print the recorder's resident memory every 30 s, so that a
# recorder whose memory grows with the length of a recording shows.
set -euo pipefail
PY=${1:?usage: soak.sh PYTHON PYUSDT_PROF}
PROF=${2:?usage: soak.sh PYTHON PYUSDT_PROF}
SECS=${SOAK_SECONDS:-600}
STEP=${SOAK_STEP:-30}
cd "$(dirname "$0")/.."
mkdir -p build
"$PROF" record -d "$SECS" --views all -o build/soak.json -- \
    "$PY" -m pyusdt examples/demo_app.py --seconds "$((SECS + 5))" >/dev/null 2>build/soak.err &
rec=$!
trap 'kill "$rec" 2>/dev/null || true' EXIT
printf '%8s %12s\n' "seconds" "RSS (KiB)"
for ((t = 0; t <= SECS; t += STEP)); do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$rec/status" 2>/dev/null || echo "-")
    printf '%8d %12s\n' "$t" "$rss"
    [ "$t" -lt "$SECS" ] && sleep "$STEP"
done
wait "$rec"
tail -n 1 build/soak.err
