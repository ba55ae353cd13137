"""pyusdt-prof list: the USDT probes a process carries."""

import subprocess

from conftest import SCRIPTS, TIMEOUT, need_bpf, prof_binary, pyusdt_child


def test_list_shows_the_probes_bpftrace_sees():
    """pyusdt-prof list names the same pyusdt probes as bpftrace -l."""
    need_bpf(prof_binary(), "bpftrace")
    with pyusdt_child(str(SCRIPTS / "controlled.py")) as child:
        child.ask_first()
        out = subprocess.run([prof_binary(), "list", "-p", str(child.pid)], capture_output=True,
                             text=True, timeout=TIMEOUT, check=True).stdout
        ours = {l.split()[0] for l in out.splitlines() if l.startswith("pyusdt:")}
        bt = subprocess.run(["bpftrace", "-l", "usdt:*", "-p", str(child.pid)],
                            capture_output=True, text=True, timeout=TIMEOUT).stdout
        theirs = {":".join(l.split(":")[-2:]) for l in bt.splitlines() if ":pyusdt:" in l}
        assert ours == theirs and "pyusdt:PY_START" in ours and "pyusdt:layout" in ours
        start = next(l for l in out.splitlines() if l.startswith("pyusdt:PY_START "))
        assert "semaphore" in start and "_native" in start
