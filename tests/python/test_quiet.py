"""What pyusdt may do inside a program: no file or socket of its own, one
thread (the poll thread), and forked workers that keep working."""

import subprocess
import textwrap

from conftest import PY, TIMEOUT

SNAPSHOT = textwrap.dedent(
    """\
    import os, sys, threading
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass  # the listing's own descriptor, closed by now
    fds = sorted("pipe" if f.startswith("pipe:") else f for f in fds)
    tasks = sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                   for t in os.listdir("/proc/self/task"))
    print(fds)
    print(tasks)
    """
)


def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    return p.stdout.splitlines()


def test_no_file_or_socket_and_only_the_poll_thread():
    plain_fds, plain_tasks = run([PY, "-c", SNAPSHOT])
    ours_fds, ours_tasks = run([PY, "-m", "pyusdt", "-c", SNAPSHOT])
    # The listing itself opens /proc/self/fd: the same in both.
    assert ours_fds == plain_fds
    assert eval(ours_tasks) == sorted(eval(plain_tasks) + ["pyusdt-poll"])


FORKS = textwrap.dedent(
    """\
    import multiprocessing as mp, os, threading, time

    def square(x):
        return x * x

    if __name__ == "__main__":
        mp.set_start_method("fork")
        pool = mp.Pool(3)
        print(sum(pool.map(square, range(100))))
        helpers = [t.native_id for t in threading.enumerate()
                   if t is not threading.main_thread()]
        pool.close()
        pool.join()
        # The pool's own threads are joined, but the kernel may count them
        # a moment longer, and CPython would warn of them at the fork,
        # with or without pyusdt: wait until they are gone.
        deadline = time.monotonic() + 10
        while (any(os.path.exists(f"/proc/self/task/{t}") for t in helpers)
               and time.monotonic() < deadline):
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:
            import pyusdt
            print("child enabled", pyusdt.enabled(), flush=True)
            os._exit(3)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_forked_workers_keep_working(tmp_path):
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    plain = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    ours = subprocess.run([PY, "-m", "pyusdt", str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert ours.returncode == plain.returncode == 0
    # No "multi-threaded, use of fork() may lead to deadlocks" warning:
    # pyusdt's thread is stopped across each fork.
    assert ours.stderr == plain.stderr == ""
    # The forked child has its own poll thread under pyusdt.
    assert plain.stdout.splitlines()[0] == ours.stdout.splitlines()[0] == "328350"
    assert ours.stdout.splitlines()[1:] == ["child enabled True", "child exit 3"]
