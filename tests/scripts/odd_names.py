"""Names that break line-based formats, for tests/python/test_odd_names.py.

usage: python -m pyusdt odd_names.py ARG...   (an ARG may hold a newline)

A function compiled from a file named ODD_FILE, renamed ODD_NAME (both
with a newline, a tab, an escape character and a ';'), makes 200 one-byte
writes to /dev/null in a thread named ODD_THREAD; then a child process
(os.fork) makes 50 writes and exits at once, with pyusdt's poll thread
alive in it. Exits 0.
"""

import os
import threading

ODD_NAME = "odd\nname;\tx\x1b"
ODD_FILE = "odd\x01file;\n.py"
ODD_THREAD = "odd\nthread;\x7f"
DEVNULL = os.open("/dev/null", os.O_WRONLY)

SOURCE = """
def writes(n, fd):
    for _ in range(n):
        os.write(fd, b"x")
"""


def odd_function():
    scope = {"os": os}
    exec(compile(SOURCE, ODD_FILE, "exec"), scope)
    f = scope["writes"]
    f.__code__ = f.__code__.replace(co_name=ODD_NAME, co_qualname=ODD_NAME)
    return f


def quick_child_writes(n):
    for _ in range(n):
        os.write(DEVNULL, b"y")


def main():
    f = odd_function()
    t = threading.Thread(target=f, args=(200, DEVNULL), name=ODD_THREAD)
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:
        quick_child_writes(50)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


if __name__ == "__main__":
    main()
