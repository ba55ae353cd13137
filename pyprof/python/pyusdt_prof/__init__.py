"""pyusdt_prof: the pyusdt-prof recorder for Python scripts and notebooks.

Record a running Python process (one that runs pyusdt: ``python -m pyusdt
app.py``) from Python, as root::

    import pyusdt_prof

    with pyusdt_prof.Recording(pid, views=("cpu", "syscall")) as rec:
        ...                       # the target runs; rec.progress() for live figures
    profile = rec.profile
    profile.top("cpu", by="self", limit=10)    # [{"function", "self_value", "total_value"}]
    profile.folded("syscall")                  # {"frame;frame;frame": weight}
    profile.histograms("syscall")              # log2 buckets per function and syscall
    profile.report()                           # what `pyusdt-prof report --format json` prints
    profile.save("app.json")                   # for `pyusdt-prof flame/report/export`
    pyusdt_prof.load("app.json")

Live events (app probe hits, syscalls with their Python stacks)::

    for event in pyusdt_prof.trace(pid, syscalls=["write"], stacks=True):
        print(event["name"], event["stack"])

Everything a Profile returns is plain Python data (lists, dicts, ints,
strings), computed by the same code as the ``pyusdt-prof`` command's
readers.
"""

from ._native import VIEWS, Profile, Recording, __version__, load

__all__ = ["VIEWS", "Profile", "Recording", "load", "__version__"]

try:
    from ._native import Trace, trace  # noqa: F401

    __all__ += ["Trace", "trace"]
except ImportError:  # a build without the trace library
    pass
