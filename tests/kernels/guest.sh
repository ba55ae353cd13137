#!/bin/sh
# Runs inside a kernel booted by tests/kernels/run: the BPF end-to-end
# subset against the host's checkout (its root is shared read-only), the
# results into $1 (a writable folder shared with the host).
# With "guest" second, it is in a fresh VM: mount what the tests need.
out=$1
cd "$(dirname "$0")/../.." || exit 1
python=$(cat "$out/python")
if [ "${2:-}" = guest ]; then
    # The tests' bounds on hand-over times say where they are wider here.
    export PYUSDT_TEST_EMULATED=1
    # virtme-ng gives the guest a writable /tmp, an overlay over the
    # host's (which may hold this checkout: a tmpfs there would hide it).
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null
    # The hooks a recording turns on stay on (hold.py says why); the
    # guest ends with it.
    mkfifo /tmp/hold.fifo
    "$python" tests/kernels/hold.py > /tmp/hold.fifo 2> "$out/hold.log" &
    read -r held < /tmp/hold.fifo
    echo "${held:-not holding (see hold.log)}" >> "$out/hold.log"
fi
uname -r > "$out/uname"
# The tests' own tmp, pytest's and the profiles go to the guest's /tmp.
export TMPDIR=/tmp HOME=/tmp PYUSDT_REQUIRE_BPF=1
export PYUSDT_PROF="$out/../pyusdt-prof"
# shellcheck disable=SC2046
"$python" -m pytest -q -p no:cacheprovider -o junit_family=xunit1 \
    --junitxml="$out/junit.xml" $(cat "$out/tests") > "$out/pytest.log" 2>&1
echo $? > "$out/rc"
