#!/bin/bash
# A shell that starts Python programs, for tests/python/test_shell.py.
#
# usage: run_pythons.sh PYTHON syscalls
#          `PYTHON -m pyusdt shapes.py syscalls` twice, one after the other
#          (each: 1000 writes under writer, 700 reads under reader), then
#          `PYTHON shapes.py syscalls` (no pyusdt)
#        run_pythons.sh PYTHON adopt
#          starts `PYTHON -m pyusdt shapes.py exec_child` in the background
#          (it spins 0.6 s in exec_spin once a recorder asks for its
#          layout) and `PYTHON shapes.py exec_after_line` (no pyusdt: it
#          spins once a line comes down a fifo), prints "ready", waits for
#          a line on stdin, sends the fifo its line, runs
#          `PYTHON -m pyusdt shapes.py exec_child` and `PYTHON shapes.py
#          exec_plain` (spins at once) in the foreground, and waits for the
#          first two
set -eu
py=$1
shapes=$(dirname "$0")/shapes.py
case $2 in
syscalls)
    "$py" -m pyusdt "$shapes" syscalls
    "$py" -m pyusdt "$shapes" syscalls
    "$py" "$shapes" syscalls
    ;;
adopt)
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    "$py" -m pyusdt "$shapes" exec_child &
    first=$!
    "$py" "$shapes" exec_after_line <"$fifo" &
    plain=$!
    exec 3>"$fifo"
    rm -f "$fifo"
    echo ready
    read -r _
    echo go >&3
    exec 3>&-
    "$py" -m pyusdt "$shapes" exec_child
    "$py" "$shapes" exec_plain
    wait "$first" "$plain"
    ;;
esac
echo done
