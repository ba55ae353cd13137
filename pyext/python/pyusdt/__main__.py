"""python -m pyusdt: run a program with the pyusdt probes.

The program sees what it would see under plain ``python``: ``sys.argv``,
``sys.path[0]``, its ``__main__`` module and ``__file__``, stdin, its exit
code, and on an uncaught exception the same traceback and exit status.
"""

import importlib.machinery
import io
import os
import runpy
import sys
import time
import types

USAGE = """\
usage: python -m pyusdt [--check-msec N] script.py [args ...]
       python -m pyusdt [--check-msec N] -m module [args ...]
       python -m pyusdt [--check-msec N] -c command [args ...]

Runs a Python program with the pyusdt USDT probes (provider "pyusdt"), so
that pyusdt-prof or bpftrace can trace it. Nothing runs per Python call
until a tracer attaches.

options:
  --check-msec N  how often to look for tracers, in milliseconds (1-60000;
                  default: $PYUSDT_CHECK_MSEC, else 100)
  -h, --help      show this help and exit

examples:
  python -m pyusdt app.py --port 8000
  python -m pyusdt -m http.server 8000
  sudo pyusdt-prof record -p "$(pgrep -f 'pyusdt app.py')"
"""


def _usage_error(message):
    sys.stderr.write(USAGE.split("\n\n")[0] + "\n")
    sys.stderr.write(f"python -m pyusdt: error: {message}\n")
    sys.exit(2)


def _parse(argv):
    check_msec = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
        if arg == "--check-msec" or arg.startswith("--check-msec="):
            if "=" in arg:
                check_msec = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                check_msec = argv[i]
            else:
                _usage_error("--check-msec needs a value")
            i += 1
            continue
        if arg in ("-m", "-c"):
            if i + 1 >= len(argv):
                _usage_error(f"argument {arg} needs a value")
            return check_msec, arg, argv[i + 1], argv[i + 2 :]
        if arg.startswith("-") and arg != "-":
            _usage_error(f"unknown option {arg}")
        return check_msec, "script", arg, argv[i + 1 :]
    _usage_error("give a script, -m module or -c command to run")


def _fresh_main():
    """A __main__ module like the one the interpreter makes at start-up
    (3.14 evaluates annotations lazily: its __main__ has no
    __annotations__ until a program writes one)."""
    main = types.ModuleType("__main__")
    main.__dict__.update(
        {
            "__builtins__": sys.modules["builtins"],
            "__loader__": importlib.machinery.BuiltinImporter,
            "__spec__": None,
            "__package__": None,
        }
    )
    if sys.version_info < (3, 14):
        main.__annotations__ = {}
    sys.modules["__main__"] = main
    return main


def _run_script(path, args):
    sys.argv[:] = [path, *args]
    if not os.path.isfile(path):
        if os.path.exists(path):
            # A directory or a zip file with a __main__.py: what the
            # interpreter does for `python DIR` is to put it first on the
            # path and run __main__ from there.
            if not sys.flags.safe_path:
                sys.path[0] = os.path.abspath(path)
            _fresh_main()
            _go()
            runpy._run_module_as_main("__main__", alter_argv=False)
            return
        sys.stderr.write(
            f"{sys.orig_argv[0]}: can't open file {os.path.abspath(path)!r}: "
            f"[Errno 2] No such file or directory\n"
        )
        sys.exit(2)
    full = os.path.abspath(path)
    if not sys.flags.safe_path:
        sys.path[0] = os.path.dirname(os.path.realpath(path))
    with io.open_code(full) as f:
        source = f.read()
    code = compile(source, full, "exec", dont_inherit=True)
    main = _fresh_main()
    main.__dict__.update(
        {
            "__file__": full,
            "__loader__": importlib.machinery.SourceFileLoader("__main__", full),
        }
    )
    if sys.version_info < (3, 15):
        # Gone from modules in 3.15.
        main.__cached__ = None
    _go()
    exec(code, main.__dict__)


def _run_module(name, args):
    sys.argv[:] = ["-m", *args]
    _fresh_main()
    _go()
    runpy._run_module_as_main(name, alter_argv=True)


def _run_command(command, args):
    sys.argv[:] = ["-c", *args]
    if not sys.flags.safe_path:
        sys.path[0] = ""
    main = _fresh_main()
    code = compile(command, "<string>", "exec", dont_inherit=True)
    _go()
    exec(code, main.__dict__)


def _uncaught(exc):
    """Reports an uncaught exception as the interpreter would, without our
    own frames, then lets the interpreter end the process as it would."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:
        sys.__excepthook__(type(exc), exc, tb)
    # The interpreter must still see the exception to set the exit status
    # (1, or death by SIGINT for KeyboardInterrupt) after a normal
    # shutdown; it has been printed already.
    sys.excepthook = lambda *args: None


# Launched by a recorder that is attached now (see _wait_for_recorder).
_recorded = False


def _go():
    """Just before the program's first line: a recorder that launched us
    is attached, so turn on the per-call events it asked for now, not at
    the poll thread's next tick; its first call is then seen, and none of
    ours before it."""
    if _recorded:
        import pyusdt

        pyusdt._native._hold(False)
        pyusdt._native._reconcile()


def _start_fd():
    """PYUSDT_START_FD, if the recorder (PYUSDT_RECORDER, its pid) started
    this very process: not a Python program that a program it started (a
    shell, a Python without pyusdt) runs, which inherits the environment.
    Neither is passed on to our own children."""
    fd = os.environ.pop("PYUSDT_START_FD", None)
    by = os.environ.pop("PYUSDT_RECORDER", None)
    if by is not None and by != str(os.getppid()):
        return None
    return fd


def _wait_for_recorder(fd):
    """The start handshake of `pyusdt-prof record -- CMD`.

    The recorder starts us with PYUSDT_START_FD naming the read end of a
    pipe. pyusdt is enabled already, so the poll thread announces the
    layout while we block here; the recorder writes one byte once every
    probe and sampler is attached, and only then does the program start,
    so that nothing it does goes unrecorded. If the recorder dies first,
    the pipe closes and the program starts all the same.
    """
    if fd is None:
        return False
    try:
        fd = int(fd)
        os.read(fd, 1)
        os.close(fd)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"pyusdt: PYUSDT_START_FD={fd!r} is not a readable pipe ({e}); "
                         "starting without waiting for the recorder\n")
        return False
    return True


def _wait_until_followed():
    """The start handshake of a child that `pyusdt-prof record
    --subprocesses` follows (a shell's Python programs, and theirs).

    The recorder puts its pid in PYUSDT_FOLLOWED_BY, which children
    inherit. A process it did not start itself waits here, before the
    program's first line, until the recorder has its layout: the recorder
    asks (the layout probe's semaphore rises) and stops asking once it has
    it (the semaphore falls), within a tick or two of both poll threads.
    Not once the recorder is gone, and at most 10 s.
    """
    try:
        by = int(os.environ.get("PYUSDT_FOLLOWED_BY", ""))
    except ValueError:
        return
    if os.getppid() == by:
        return  # the program the recorder started: PYUSDT_START_FD holds it
    from pyusdt import _native

    deadline = time.monotonic() + 10
    asked = False
    while time.monotonic() < deadline:
        if _native.status()["semaphores"]["layout"]:
            asked = True
        elif asked:
            return
        try:
            os.kill(by, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.001)


def main():
    check_msec, kind, what, args = _parse(sys.argv[1:])
    import pyusdt

    start_fd = _start_fd()
    if start_fd is not None:
        # Per-call events wait for _go: the recorder attaches while we
        # block below, and the poll thread may notice it before the
        # program's first line.
        pyusdt._native._hold(True)
    try:
        pyusdt.enable(check_msec)
    except ValueError as e:
        _usage_error(str(e))
    global _recorded
    _recorded = _wait_for_recorder(start_fd)
    _wait_until_followed()
    if not _recorded:
        pyusdt._native._hold(False)
    run = {"script": _run_script, "-m": _run_module, "-c": _run_command}[kind]
    try:
        run(what, args)
    except SystemExit:
        raise
    except BaseException as e:
        _uncaught(e)
        raise


if __name__ == "__main__":
    main()
