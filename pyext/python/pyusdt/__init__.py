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

The application can add probes of its own (neither needs :func:`enable`):

* :class:`Probe` declares a USDT probe of its own provider with typed
  arguments::

      start_loop = pyusdt.Probe("myapp", "start_loop", int, str)
      if start_loop.enabled:
          start_loop.fire(i, name)

  Probes of one provider declared before its first use share one small
  shared object, generated at the first ``enabled``, ``fire()`` or
  ``load()`` of any of them and loaded with ``dlopen`` from
  ``$PYUSDT_PROBE_DIR`` (else ``$XDG_RUNTIME_DIR``, else ``/tmp``) as
  ``pyusdt-probes-PID-PROVIDER-SEQ.so``; a probe declared later gets a new
  object. The files are removed at interpreter exit (and those of dead
  processes whenever a new one is made). Each object carries a
  non-allocated section ``.pyusdt.argtypes`` of UTF-8 lines
  ``provider:name:type,type,...\n`` (types ``int`` or ``str``; empty after
  the second colon for a probe without arguments), so that a tracer knows
  which arguments are strings. A forked child fires the probes its parent
  loaded (against its own semaphores); tracers reach them in the child
  through the parent's file while it exists.
* :class:`span` brackets a block (``with pyusdt.span("handle_request"):``)
  or each call of a function (``@pyusdt.span("handle_request")``) with
  the static probes ``pyusdt:span_begin(name, id)`` and
  ``pyusdt:span_end(name, id)``; ``id`` is unique per span in the process.
"""

import atexit
import functools
import os

from . import _native
from ._native import (
    LAYOUT_VERSION,
    MAX_PROBE_ARGS,
    PER_CALL_PROBES,
    TOOL_IDS,
    Probe,
    layout,
    span,
    status,
)

__all__ = [
    "enable",
    "enabled",
    "layout",
    "status",
    "Probe",
    "span",
    "MAX_PROBE_ARGS",
    "LAYOUT_VERSION",
    "PER_CALL_PROBES",
    "TOOL_IDS",
]

#: Default poll period, in milliseconds.
DEFAULT_CHECK_MSEC = 100
#: The largest poll period accepted, in milliseconds.
MAX_CHECK_MSEC = 60_000

_hooks = False

# The generated probe objects' files go at interpreter exit.
atexit.register(_native._remove_probe_files)


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
            after_in_child=_after_fork_child,
        )
        _note_thread_names()
    return started


def _after_fork_child():
    _native._after_fork_child()
    # The child has one thread, the one that forked, under a new kernel
    # thread id (threading keeps the parent's in its _native_id).
    import threading

    _native._threads_forget()
    _native._thread_named(threading.get_native_id(), threading.current_thread()._name)


def _tell_threads():
    """Notes the name of every thread threading has started."""
    import threading

    for t in list(threading._active.values()):
        if getattr(t, "_native_id", None) is not None:
            _native._thread_named(t._native_id, t._name)


def _note_thread_names():
    """Notes each thread's Python name as it starts and whenever it is
    renamed, for a tracer of ``pyusdt:thread`` (the kernel's name of a
    thread is ``python`` before 3.14): wraps ``Thread._set_native_id``,
    which every thread calls as it starts, and the ``name`` setter. Once
    per thread, never per call."""
    import threading

    cls = threading.Thread
    set_native_id = cls.__dict__.get("_set_native_id")
    prop = cls.__dict__.get("name")
    if set_native_id is None or not isinstance(prop, property):
        return

    def _set_native_id(self):
        set_native_id(self)
        _native._thread_named(self._native_id, self._name)

    def _set_name(self, name):
        prop.fset(self, name)
        if getattr(self, "_native_id", None) is not None:
            _native._thread_named(self._native_id, self._name)

    _set_native_id.__wrapped__ = set_native_id
    cls._set_native_id = _set_native_id
    cls.name = property(prop.fget, _set_name, prop.fdel, prop.__doc__)
    _tell_threads()


def enabled():
    """Whether :func:`enable` runs in this process."""
    return _native.status()["enabled"]



def _span_wrap(name, func):
    """``@span(name)``: each call of ``func`` in a fresh span (generators
    and coroutines: from their first step to their end)."""
    # inspect takes ~15 ms to import: only programs that decorate pay it,
    # not every start of python -m pyusdt.
    import inspect

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def wrapper(*args, **kwargs):
            with span(name):
                return await func(*args, **kwargs)

    elif inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with span(name):
                return (yield from func(*args, **kwargs))

    else:

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with span(name):
                return func(*args, **kwargs)

    return wrapper
