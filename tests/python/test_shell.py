"""Python programs started by a process that is not a pyusdt Python (a
shell), recorded with --subprocesses: launched (`-- bash run.sh`) and
attached (`-p` of the shell, with a child it started before), each
program, with or without pyusdt, under its own process root with exact
counts."""

import json
import subprocess

from conftest import PY, SCRIPTS, TIMEOUT, Child, need_bpf, prof_binary
from test_record import fold, fn

SCRIPT = str(SCRIPTS / "run_pythons.sh")


def by_process(stacks):
    """{(process root, leaf Python function, last frame): value}."""
    out = {}
    for s, v in stacks.items():
        python = [f for f in s[2:] if " (" in f and not f.endswith("_[k]")]
        key = (s[0], fn(python[-1]) if python else None, s[-1])
        out[key] = out.get(key, 0) + v
    return out


def test_a_launched_shell_has_each_python_program_recorded(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "shell.json"
    p = subprocess.run([prof_binary(), "record", "--subprocesses", "--views", "syscall",
                        "-o", str(out), "--", "bash", SCRIPT, PY, "syscalls"],
                       capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("done\n"), p.stdout
    profile = json.loads(out.read_text())
    shell = profile["pid"]
    procs = profile["processes"]
    assert procs[str(shell)]["command"][0] == "bash" and procs[str(shell)]["python"] == ""
    children = sorted(int(k) for k in procs if int(k) != shell)
    assert len(children) == 3 and all(procs[str(c)]["ppid"] == shell for c in children)
    # The last runs without pyusdt: its layout is found as its interpreter
    # starts, before its first line.
    assert all(procs[str(c)]["python"] for c in children), procs
    counts = by_process(fold(out, "syscall", count=True))
    for c in children:
        # Every call of the program, under its frames, from its first line.
        mine = {k[1:]: v for k, v in counts.items() if k[0].endswith(f"({c})")}
        assert mine[("writer", "syscall:write")] == 1000, (c, mine)
        assert mine[("reader", "syscall:read")] == 700, (c, mine)


def test_an_attached_shell_has_its_running_and_new_python_programs_recorded(tmp_path):
    need_bpf(prof_binary())
    out = tmp_path / "attached.json"
    with Child(["bash", SCRIPT, PY, "adopt"]) as shell:
        shell.expect("^ready$")
        with Child([prof_binary(), "record", "-p", str(shell.pid), "--subprocesses",
                    "--views", "cpu", "-o", str(out)]) as rec:
            line = rec.proc.stderr.readline()
            assert "pyusdt-prof: recording process" in line, line + rec.proc.stderr.read()
            shell.send("go")
            shell.expect("^done$")
            assert shell.finish()[0] == 0
            code, _, err = rec.finish()
            assert code == 0, err
    profile = json.loads(out.read_text())
    procs = profile["processes"]
    spinners = [int(k) for k, p in procs.items()
                if p["command"][-1] in ("exec_child", "exec_after_line", "exec_plain")]
    # With pyusdt and without: one started before the recorder attached,
    # one after.
    assert len(spinners) == 4 and all(procs[str(s)]["python"] for s in spinners), procs
    samples = fold(out, "cpu")
    for pid in spinners:
        spun = sum(v for s, v in samples.items()
                   if s[0].endswith(f"({pid})") and any(fn(f) == "exec_spin" for f in s))
        # 0.6 s at 99 Hz is about 59 samples, the first tick or so of them
        # before its layout comes (frames need it).
        assert spun >= 20, (pid, samples)
