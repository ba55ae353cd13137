"""`python -m pyusdt PROGRAM` gives the program what `python PROGRAM` does:
argv, sys.path[0], __main__, __file__, stdin, exit status, tracebacks,
SystemExit and Ctrl-C. Each case runs both ways and compares stdout,
stderr and the exit status exactly."""

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import PY, TIMEOUT, wait_in_syscall

CLOCK_NANOSLEEP = 230  # x86_64

INTROSPECT = '''
import atexit, pickle, sys
m = sys.modules["__main__"]
class Point:
    def __init__(self, x): self.x = x
print("argv", sys.argv)
print("path0", sys.path[0])
print("name", __name__, "file", globals().get("__file__"), "package", __package__)
print("spec", getattr(__spec__, "name", None), "loader", type(__loader__).__name__)
print("cached", globals().get("__cached__", "<unset>"), "doc", __doc__)
print("main is me", m.__dict__ is globals(), "builtins", type(__builtins__).__name__)
print("globals", sorted(globals()))
print("pickled", pickle.loads(pickle.dumps(Point(7))).x)
print("stdin", repr(sys.stdin.read()))
atexit.register(print, "atexit ran")
print("buffered, no newline", end="")
'''

FILES = {
    "app/intro.py": INTROSPECT,
    "app/exit3.py": "import sys\nprint('bye')\nsys.exit(3)\n",
    "app/exitmsg.py": "raise SystemExit('fatal: no config')\n",
    "app/chain.py": textwrap.dedent(
        """\
        def inner():
            raise ValueError("inner")

        def outer():
            try:
                inner()
            except ValueError as e:
                raise KeyError("outer") from e

        outer()
        """
    ),
    "app/kbint.py": "def f():\n    raise KeyboardInterrupt\nf()\n",
    "app/syntax.py": "def f(:\n    pass\n",
    "app/hook.py": textwrap.dedent(
        """\
        import sys
        def hook(t, v, tb):
            n = 0
            while tb is not None:
                n, tb = n + 1, tb.tb_next
            print("hook", t.__name__, v, "frames", n)
        sys.excepthook = hook
        def f():
            1 / 0
        f()
        """
    ),
    "app/pkg/__init__.py": "",
    "app/pkg/__main__.py": INTROSPECT,
    "app/pkg/mod.py": INTROSPECT,
    "app/pkg/boom.py": "def f():\n    raise RuntimeError('in module')\nf()\n",
    "app/dirapp/__main__.py": INTROSPECT,
}

CASES = {
    "script": (["app/intro.py", "a", "--flag", "b c"], "some input\n"),
    "script_from_its_dir": (["intro.py", "x"], "", "app"),
    "exit_code": (["app/exit3.py"], ""),
    "systemexit_message": (["app/exitmsg.py"], ""),
    "uncaught_chained_exception": (["app/chain.py"], ""),
    "keyboardinterrupt": (["app/kbint.py"], ""),
    "syntax_error": (["app/syntax.py"], ""),
    "excepthook": (["app/hook.py"], ""),
    "missing_script": (["app/nope.py"], ""),
    "directory": (["app/dirapp", "d"], "in"),
    "module": (["-m", "pkg.mod", "one", "two"], "xyz", "app"),
    "package": (["-m", "pkg", "p"], "", "app"),
    "module_exception": (["-m", "pkg.boom"], "", "app"),
    "missing_module": (["-m", "nosuchmodule_xyz"], "", "app"),
    "command": (["-c", "import sys; print(sys.argv, repr(sys.path[0]), __name__)", "q"], ""),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    for name, text in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def run(argv, stdin, cwd):
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_plain_python(tree, case):
    args, stdin, *sub = CASES[case]
    cwd = tree / sub[0] if sub else tree
    plain = run([PY, *args], stdin, cwd)
    ours = run([PY, "-m", "pyusdt", *args], stdin, cwd)
    assert ours == plain
    # Each case shows what it is about, so that a parity of two broken runs
    # cannot pass unnoticed.
    code, out, err = plain
    expect = {
        "script": lambda: code == 0 and "stdin 'some input\\n'" in out and "atexit ran" in out,
        "exit_code": lambda: code == 3,
        "systemexit_message": lambda: code == 1 and err == "fatal: no config\n",
        "uncaught_chained_exception": lambda: code == 1 and "direct cause" in err,
        "keyboardinterrupt": lambda: code == -signal.SIGINT and "KeyboardInterrupt" in err,
        "syntax_error": lambda: code == 1 and "SyntaxError" in err,
        "excepthook": lambda: code == 1 and "hook ZeroDivisionError division by zero frames 2" in out,
        "missing_script": lambda: code == 2 and "can't open file" in err,
        "module_exception": lambda: code == 1 and "<frozen runpy>" in err,
        "missing_module": lambda: code == 1 and "No module named nosuchmodule_xyz" in err,
    }.get(case, lambda: code == 0)
    assert expect(), plain


def wait_in_sleep(pid):
    """Returns once the main thread of `pid` is inside clock_nanosleep, so
    that SIGINT lands in time.sleep and not a line before it."""
    wait_in_syscall(pid, CLOCK_NANOSLEEP)


def test_ctrl_c_while_blocked(tree):
    """SIGINT while the program blocks: same traceback, and the process
    dies of SIGINT after a normal shutdown, as plain python does. (A sleep
    blocks here because it is interrupted at one place every time; a text
    read may be interrupted in the read or in its decoder.)"""
    script = tree / "app" / "block.py"
    script.write_text(
        "import atexit, time\natexit.register(print, 'atexit ran')\n"
        "print('ready', flush=True)\ntime.sleep(600)\n"
    )
    results = []
    for argv in ([PY, str(script)], [PY, "-m", "pyusdt", str(script)]):
        # A runner started in the background hands its children SIGINT
        # ignored, and Python keeps an ignored SIGINT ignored: start them
        # as a terminal would.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert p.stdout.readline() == "ready\n"
            wait_in_sleep(p.pid)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            p.kill()
            p.wait()
        results.append((p.returncode, out, err))
    assert results[1] == results[0]
    assert results[0][0] == -signal.SIGINT
    assert results[0][1] == "atexit ran\n"
    assert results[0][2].endswith("KeyboardInterrupt\n")


def test_bad_check_msec_is_refused_before_the_program_runs(tree):
    for bad in ("0", "abc", "60001", "1.5"):
        env = dict(os.environ, PYUSDT_CHECK_MSEC=bad)
        p = subprocess.run([PY, "-m", "pyusdt", str(tree / "app" / "exit3.py")],
                           capture_output=True, text=True, env=env, timeout=TIMEOUT)
        assert p.returncode == 2
        assert p.stdout == ""
        assert (
            "PYUSDT_CHECK_MSEC must be a whole number of milliseconds from 1 to 60000, "
            f"not {bad!r}" in p.stderr
        )
    p = subprocess.run([PY, "-m", "pyusdt", "--check-msec", "25", "-c",
                        "import pyusdt; print(pyusdt.status()['check_msec'])"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert (p.returncode, p.stdout) == (0, "25\n")


def test_usage():
    p = subprocess.run([PY, "-m", "pyusdt"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2
    assert "give a script, -m module or -c command to run" in p.stderr
    p = subprocess.run([PY, "-m", "pyusdt", "--help"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0 and "python -m pyusdt -m http.server 8000" in p.stdout


def test_enable_is_idempotent_and_validated():
    code = textwrap.dedent(
        """\
        import pyusdt
        print(pyusdt.enabled(), pyusdt.enable(), pyusdt.enable(), pyusdt.enable(50), pyusdt.enabled())
        for bad in (0, -1, 60001, "x", True, 2.5):
            try:
                pyusdt.enable(bad)
            except ValueError as e:
                print("refused", e)
        """
    )
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "False True False False True"
    assert len(lines) == 7 and all(line.startswith("refused check_msec must be") for line in lines[1:])


def test_start_handshake_holds_the_program_until_the_recorder_says_go(tree):
    """PYUSDT_START_FD: the program starts only once a byte arrives on the
    pipe, and the layout is announced while it waits; the variable is not
    passed on to the program."""
    r, w = os.pipe()
    env = dict(os.environ, PYUSDT_START_FD=str(r))
    code = "import os, sys; print('started', os.environ.get('PYUSDT_START_FD'), flush=True)"
    p = subprocess.Popen([PY, "-m", "pyusdt", "-c", code], env=env, pass_fds=(r,),
                         stdout=subprocess.PIPE, text=True)
    os.close(r)
    try:
        # While it waits, pyusdt is loaded and enabled: its poll thread runs.
        deadline = time.monotonic() + TIMEOUT
        while not any(t.is_dir() and (t / "comm").read_text() == "pyusdt-poll\n"
                      for t in Path(f"/proc/{p.pid}/task").iterdir()):
            assert time.monotonic() < deadline, "no poll thread"
            time.sleep(0.005)
        assert p.poll() is None
        os.write(w, b"g")
        out, _ = p.communicate(timeout=TIMEOUT)
    finally:
        os.close(w)
        p.kill()
        p.wait()
    assert (p.returncode, out) == (0, "started None\n")


def test_start_handshake_is_for_the_process_the_recorder_started(tree):
    """A Python that a launched program runs (a shell's, a plain Python's)
    inherits PYUSDT_START_FD but is not the recorder's child: it starts at
    once, silently, and passes neither variable on."""
    r, w = os.pipe()
    env = dict(os.environ, PYUSDT_START_FD=str(r), PYUSDT_RECORDER="1")
    code = "import os; print('ran', os.environ.get('PYUSDT_START_FD'), os.environ.get('PYUSDT_RECORDER'))"
    try:
        p = subprocess.run([PY, "-m", "pyusdt", "-c", code], env=env, pass_fds=(r,),
                           capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        os.close(r)
        os.close(w)
    assert (p.returncode, p.stdout, p.stderr) == (0, "ran None None\n", "")


def test_start_handshake_survives_a_recorder_that_died(tree):
    r, w = os.pipe()
    os.close(w)
    env = dict(os.environ, PYUSDT_START_FD=str(r))
    p = subprocess.run([PY, "-m", "pyusdt", "-c", "print('ran')"], env=env, pass_fds=(r,),
                       capture_output=True, text=True, timeout=TIMEOUT)
    os.close(r)
    assert (p.returncode, p.stdout, p.stderr) == (0, "ran\n", "")
