"""USDT probes for Python, and what a profiler needs to read its frames.

A program that runs with ``python -m pyusdt app.py`` (or that calls
:func:`enable`) carries the USDT probes of provider ``pyusdt``:

* the per-call probes ``PY_START``, ``PY_RESUME``, ``PY_RETURN``,
  ``PY_YIELD``, ``CALL``, ``LINE``, ``PY_UNWIND`` and ``PY_THROW``, each fed
  by the ``sys.monitoring`` event of the same name, which is on only while
  a tracer is attached to that probe (Python 3.12 and later);
* ``layout(address, size)``, which announces where this interpreter keeps
  its threads and frames, so that ``pyusdt-prof`` can sample Python stacks
  at no cost per call.

While nothing is attached, nothing runs per Python call: a poll thread
reads the probes' semaphores every ``PYUSDT_CHECK_MSEC`` milliseconds
(default 100).
"""

import atexit
import os

from . import _native
from ._native import LAYOUT_VERSION, PER_CALL_PROBES, TOOL_IDS, layout, status

__all__ = [
    "enable",
    "enabled",
    "layout",
    "status",
    "LAYOUT_VERSION",
    "PER_CALL_PROBES",
    "TOOL_IDS",
]

#: Default poll period, in milliseconds.
DEFAULT_CHECK_MSEC = 100
#: The largest poll period accepted, in milliseconds.
MAX_CHECK_MSEC = 60_000

_hooks = False


def check_msec_from(value, source="check_msec"):
    """Validates a poll period: a whole number of milliseconds, 1 to 60000."""
    text = str(value).strip()
    try:
        ms = int(text, 10)
    except ValueError:
        ms = None
    if isinstance(value, bool) or ms is None or not 1 <= ms <= MAX_CHECK_MSEC:
        raise ValueError(
            f"{source} must be a whole number of milliseconds from 1 to "
            f"{MAX_CHECK_MSEC}, not {value!r}"
        )
    return ms


def enable(check_msec=None):
    """Starts watching for tracers; idempotent.

    ``check_msec`` is how often, in milliseconds, to look for tracers that
    attached or left; it defaults to ``PYUSDT_CHECK_MSEC`` from the
    environment, else 100. Raises ``ValueError`` for a value that is not a
    whole number from 1 to 60000. Returns True if this call started the
    watch, False if it was already running.
    """
    global _hooks
    if check_msec is None:
        env = os.environ.get("PYUSDT_CHECK_MSEC")
        if env is None:
            ms = DEFAULT_CHECK_MSEC
        else:
            ms = check_msec_from(env, "PYUSDT_CHECK_MSEC")
    else:
        ms = check_msec_from(check_msec)
    started = _native._start(ms)
    if not _hooks:
        _hooks = True
        atexit.register(_native._stop)
        # The poll thread stops across a fork so that the program forks as
        # a process with no thread of pyusdt's (CPython 3.12+ warns about
        # forking with threads); parent and child each start it again.
        os.register_at_fork(
            before=_native._before_fork,
            after_in_parent=_native._after_fork_parent,
            after_in_child=_native._after_fork_child,
        )
    return started


def enabled():
    """Whether :func:`enable` runs in this process."""
    return _native.status()["enabled"]

