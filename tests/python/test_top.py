"""pyusdt-prof top, driven in tmux (send-keys, capture-pane) against a
program of known shape, with and without pyusdt: heavy does three times
light's work, nap sleeps."""

import re
import shutil
import subprocess
import time

import pytest

from conftest import PY, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary

SHAPES = str(SCRIPTS / "shapes.py")


class Tmux:
    """A detached tmux session of a given size, killed at the end."""

    def __init__(self, name, command, width=120, height=40):
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width),
                        "-y", str(height), command], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, cond, what):
        """Polls the screen until cond(screen) holds."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s = self.screen()
            if cond(s):
                return s
            time.sleep(0.05)
        raise AssertionError(f"the screen never showed {what}:\n{self.screen()}")

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def rows(screen):
    """{function name: CPU%, OFF-CPU, ...} of the table rows, in order."""
    out = []
    for line in screen.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+(?: \S+)?)\s+(\S+(?: \S+)?)\s+(\S+(?: \S+)?)\s+(\d+)\s+(\S+)",
                     line)
        if m:
            out.append((m.group(6), float(m.group(1)), m.group(3)))
    return out


@pytest.mark.parametrize("pyusdt", [["-m", "pyusdt"], []], ids=["pyusdt", "without-pyusdt"])
def test_top_shows_the_work_sorts_and_quits(tmp_path, pyusdt):
    need_bpf(prof_binary(), "tmux")
    done = tmp_path / "exit"
    raw = tmp_path / "raw"
    with Child([PY, *pyusdt, SHAPES, "busy"]) as app:
        app.expect("^ready$")
        cmd = f"{prof_binary()} top -p {app.pid} -F 499 -i 0.5; echo $? > {done}"
        tmux = Tmux(f"pyusdt-top-{app.pid}", cmd)
        try:
            subprocess.run(["tmux", "pipe-pane", "-t", tmux.name, f"cat >> {raw}"], check=True)
            # Self time: spin (under heavy and light) leads the CPU.
            s = tmux.wait_for(lambda s: rows(s) and rows(s)[0][0] == "spin", "spin first")
            assert "sorted by CPU" in s and "self time" in s
            # Short off-CPU waits are sampled, as record samples them.
            assert "off-CPU waits under 1.00 ms sampled" in s
            # Total time: heavy has about three times light's CPU.
            tmux.keys("t")
            s = tmux.wait_for(lambda s: "total time" in s and
                              {"heavy", "light"} <= {r[0] for r in rows(s)}, "heavy and light")

            def share(s):
                r = {name: cpu for name, cpu, _ in rows(s)}
                return r["heavy"] / max(r["heavy"] + r["light"], 1e-9)

            # Over a few refreshes: about 0.75 (within 0.15 per half second).
            shares = []
            for _ in range(3):
                before = s
                s = tmux.wait_for(lambda x: x != before and {"heavy", "light"} <= {r[0] for r in rows(x)},
                                  "a refresh")
                shares.append(share(s))
            assert abs(sorted(shares)[1] - 0.75) <= 0.15, shares
            # Off-CPU, self: nap's sleep leads.
            tmux.keys("t")
            tmux.keys("o")
            s = tmux.wait_for(lambda s: "sorted by off-CPU" in s and "self time" in s
                              and rows(s) and rows(s)[0][0] == "nap", "nap first")
            tmux.keys("q")
            deadline = time.monotonic() + TIMEOUT
            # The shell makes the file, then writes the status into it.
            while not (done.exists() and done.read_text().endswith("\n")) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert done.read_text().strip() == "0"
            # Frames are drawn in place: the screen is cleared at most once.
            assert raw.read_bytes().count(b"\x1b[2J") <= 1
        finally:
            tmux.close()
        assert app.proc.poll() is None, "the program keeps running after top quits"


def test_top_needs_a_terminal():
    need_bpf(prof_binary())
    with Child([PY, "-m", "pyusdt", SHAPES, "busy"]) as app:
        app.expect("^ready$")
        p = subprocess.run([prof_binary(), "top", "-p", str(app.pid)], capture_output=True,
                           text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        assert p.returncode == 1
        assert "top needs a terminal" in p.stderr
