"""Workloads of known shape for the recorder tests.

usage: python -m pyusdt shapes.py SHAPE [ARGS]

Each shape_NAME function below is one workload; its docstring says what
the recorder must find. A shape that waits for the recorder to attach
(-p mode) reads a line from stdin first.
"""

import asyncio
import ctypes
import os
import random
import subprocess
import sys
import threading
import time

libc = ctypes.CDLL(None)


def set_thread_name(name):
    """Names the calling thread for the kernel and for threading alike (the
    threads below are also born with that name, so that no recording can
    see another)."""
    threading.current_thread().name = name
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def writer(fd, n):
    for _ in range(n):
        os.write(fd, b"x")


def reader(fd, n):
    for _ in range(n):
        os.read(fd, 1)


def shape_syscalls():
    """Exactly 1000 write under writer and 700 read under reader."""
    w = os.open("/dev/null", os.O_WRONLY)
    r = os.open("/dev/zero", os.O_RDONLY)
    writer(w, 1000)
    reader(r, 700)


def sleeper(k, t):
    for _ in range(k):
        time.sleep(t)


def shape_sleep():
    """20 sleeps of 25 ms under sleeper: 500 ms off the CPU."""
    sleeper(20, 0.025)


def short_sleeper(k, t):
    for _ in range(k):
        time.sleep(t)


def shape_shortsleeps():
    """4000 sleeps of 100 us under short_sleeper: waits shorter than the
    recorder's default --sample-waits-below (1 ms), so sampled."""
    short_sleeper(4000, 0.0001)


def long_sleeper(t):
    time.sleep(t)


def shape_longsleep():
    """One sleep of 60 s under long_sleeper: longer than any recording of
    it (record -d), which ends with the wait still open. Prints "sleeping"
    first (an attached recording then begins inside the wait)."""
    print("sleeping", flush=True)
    long_sleeper(60)


PIPE_BYTES = 1 << 20
PIPE_CHUNK = 1 << 16


def slow_reader(fd):
    got = 0
    while got < PIPE_BYTES:
        got += len(os.read(fd, PIPE_CHUNK))
        time.sleep(0.005)


def big_write(fd):
    t = time.monotonic_ns()
    os.write(fd, b"x" * PIPE_BYTES)
    return time.monotonic_ns() - t


def shape_pipe():
    """One write of 1 MiB under big_write into a pipe that slow_reader
    empties 64 KiB every 5 ms: one syscall that blocks about 15 times.
    Prints how long the write took, in ns."""
    r, w = os.pipe()
    t = threading.Thread(target=slow_reader, args=(r,), name="reader")
    t.start()
    took = big_write(w)
    t.join()
    print(f"wrote {took}", flush=True)


def holder(lock, held, release):
    with lock:
        held.set()
        release.wait()
        busy_until(time.monotonic() + 0.2)


def busy_until(t):
    while time.monotonic() < t:
        pass


def waiter(lock):
    lock.acquire()
    lock.release()


def shape_lock():
    """waiter blocks about 200 ms in acquire; holder's thread wakes it."""
    lock, held, release = threading.Lock(), threading.Event(), threading.Event()
    h = threading.Thread(target=lambda: (set_thread_name("holder"), holder(lock, held, release)),
                         name="holder")
    h.start()
    held.wait()
    set_thread_name("waiter")
    release.set()
    waiter(lock)
    h.join()


def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def heavy():
    return spin(30_000)


def light():
    return spin(10_000)


def shape_cpu():
    """heavy does three times light's work, for 3 s, with a sleep of about
    1 ms between rounds (most of the time is work: over a thousand samples
    at 999 Hz on any machine). The sleep varies so that the rounds do not
    lock in phase with the sampler's 1 ms period, which would sample the
    same points of heavy and light again and again; and the thread's timer
    slack is 1 ns, not 50 us, lest the kernel defer each wake-up to the
    sampler's next tick (heavy, first after it, would be sampled too
    often: 0.77 for a truth of 0.75). Prints the CPU time each took, as the
    thread's clock measured it: the truth the samples are held to."""
    PR_SET_TIMERSLACK = 29
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    rng = random.Random(7)
    end = time.monotonic() + 3
    took = {"heavy": 0, "light": 0}
    while time.monotonic() < end:
        for work in (heavy, light):
            start = time.thread_time_ns()
            work()
            took[work.__name__] += time.thread_time_ns() - start
        time.sleep(rng.uniform(0.0005, 0.0015))
    print(f"heavy {took['heavy']} light {took['light']}", flush=True)


def contended_spin(seconds):
    """Spins for `seconds` of wall time, with a syscall under getppid_now
    after every 2,000 additions (about 3% of the time)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spin(2_000)
        getppid_now()


def getppid_now():
    return os.getppid()


def shape_preempted():
    """Pinned to one CPU beside a child process that spins there:
    contended_spin runs 1 s of wall time, about half of it off the CPU,
    preempted in user mode in spin (outside a syscall: its waits' stacks
    are read as it leaves). A wait read later, at the exit of the next
    syscall, would land under getppid_now."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import os; os.sched_setaffinity(0, {{{cpu}}}); print(flush=True)\n"
         "while True: pass"],
        stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # pinned, and about to spin
        contended_spin(1.0)
    finally:
        child.kill()
        child.wait()


def short_lived():
    set_thread_name("short")
    spin(200_000)


def shape_threads():
    """A thread that lives well under 50 ms, named short, does CPU work and
    a syscall; the main thread keeps busy around it."""
    busy_until(time.monotonic() + 0.3)
    t = threading.Thread(target=short_lived, name="short")
    t.start()
    t.join()
    busy_until(time.monotonic() + 0.3)


def recurse(n):
    if n == 0:
        os.write(DEVNULL, b"r")
        return
    recurse(n - 1)


def gen():
    yield os.write(DEVNULL, b"g")


async def coro_inner():
    os.write(DEVNULL, b"a")
    await asyncio.sleep(0)


async def coro_outer():
    await coro_inner()


def raiser():
    try:
        raise ValueError("x")
    finally:
        os.write(DEVNULL, b"e")


def catcher():
    try:
        raiser()
    except ValueError:
        pass


DEVNULL = os.open("/dev/null", os.O_WRONLY)


def shape_stacks():
    """One write each under recursion 200 deep, a generator, a coroutine
    under asyncio.run, and a finally block during unwinding."""
    recurse(200)
    list(gen())
    asyncio.run(coro_outer())
    catcher()


def shape_attach():
    """Waits for a line on stdin (the recorder has attached), then writes
    once from deep inside frames entered before that."""
    outer_before()


def outer_before():
    sys.stdout.write("waiting\n")
    sys.stdout.flush()
    sys.stdin.readline()
    os.write(DEVNULL, b"late")


def serve_once():
    os.write(DEVNULL, b"s")
    spin(2_000)
    time.sleep(0.001)


def shape_serve():
    """Prints "waiting" and waits for a line on stdin (the recorder has
    attached), then calls serve_once until stdin has another line or
    closes, printing "tick" every 100 calls: a long-running target for
    attach tests."""
    import select

    sys.stdout.write("waiting\n")
    sys.stdout.flush()
    sys.stdin.readline()
    n = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        serve_once()
        n += 1
        if n % 100 == 0:
            sys.stdout.write("tick\n")
            sys.stdout.flush()


def deep(n):
    if n == 0:
        os.write(DEVNULL, b"d")
        return
    deep(n - 1)


def shape_deep():
    """One write under recursion 10,000 deep."""
    sys.setrecursionlimit(20_000)
    deep(10_000)


def one_write():
    os.write(DEVNULL, b"t")


def shape_many_threads():
    """10,000 threads, one after another, each one write in one_write."""
    for _ in range(10_000):
        t = threading.Thread(target=one_write)
        t.start()
        t.join()


def one_nap():
    time.sleep(0.001)


def churn_thread():
    one_write()
    one_nap()


def shape_churn():
    """3,000 threads, 100 at a time with a pause of 0.2 s between rounds
    (about 7 s in all), each one write in one_write and one 1 ms sleep in
    one_nap: keys for every view's count map, of threads that exit."""
    for _ in range(30):
        threads = [threading.Thread(target=churn_thread) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.2)


def storm_writes(seconds, counts, i):
    fd = os.open("/dev/null", os.O_WRONLY)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for _ in range(500):
            os.write(fd, b"x")
        n += 500
    counts[i] = n


def shape_storm():
    """Four threads (STORM_THREADS) write 1 byte to /dev/null as fast as
    they can for 2 s; prints how many writes they made."""
    n = int(os.environ.get("STORM_THREADS", "4"))
    counts = [0] * n
    threads = [threading.Thread(target=storm_writes, args=(2, counts, i)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("writes", sum(counts), flush=True)


def spin_for(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def child_spin():
    spin_for(0.5)


def parent_wait(pids):
    for pid in pids:
        os.waitpid(pid, 0)


def exec_spin():
    spin_for(0.6)


def shape_fork():
    """Forks two workers that each spin 0.5 s in child_spin (the parent
    waits in parent_wait), then runs `python -m pyusdt shapes.py
    exec_child`, a new program that spins 0.6 s in exec_spin once a
    recorder has asked it for its layout."""
    import subprocess

    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            child_spin()
            os._exit(0)
        pids.append(pid)
    parent_wait(pids)
    subprocess.run([sys.executable, "-m", "pyusdt", __file__, "exec_child"], check=True)


def shape_exec_child():
    """Waits until a recorder asks for its layout, then spins. (A child
    that a recorder follows, PYUSDT_FOLLOWED_BY, has waited for that in
    `python -m pyusdt` already.)"""
    from pyusdt import _native

    if os.environ.get("PYUSDT_FOLLOWED_BY"):
        exec_spin()
        return
    deadline = time.monotonic() + 10
    while not _native.status()["semaphores"]["layout"] and time.monotonic() < deadline:
        time.sleep(0.001)
    exec_spin()


def shape_exec_after_line():
    """For a Python without pyusdt that a shell started before the
    recorder attached: reads a line from stdin (the recorder is there),
    then spins 0.6 s in exec_spin."""
    sys.stdin.readline()
    exec_spin()


def shape_exec_plain():
    """For a Python without pyusdt: spins 0.6 s in exec_spin at once."""
    exec_spin()


def first_function():
    os.write(DEVNULL, b"first")


def shape_exit():
    """Its first function writes at once; exits 7."""
    first_function()
    sys.exit(7)


def nap(seconds=0.02):
    time.sleep(seconds)


def shape_busy():
    """Until killed: heavy (three times light's work) and light, ten times
    each, and nap (sleeps about 20 ms), in a loop; prints `ready` first.
    The sleep varies, so that the rounds do not lock in phase with a
    sampler (see shape_cpu)."""
    rng = random.Random(7)
    print("ready", flush=True)
    while True:
        # Ten of each a round: enough samples in each of top's half-second
        # refreshes for a share within 0.15 (about 70 at 499 Hz on 3.14,
        # whose spin is quick; two rounds' worth would be a dozen).
        for _ in range(10):
            heavy()
            light()
        nap(rng.uniform(0.015, 0.025))


def burn_for(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spin(2_000)


def gil_spinner(name, seconds, clocks=None, until=None):
    """Burns the CPU in Python for `seconds` as thread `name`, and then on
    until `until()` holds, if given; with `clocks`, appends (name, start,
    end) to it."""
    start = time.monotonic()
    set_thread_name(name)
    burn_for(seconds)
    while until is not None and not until():
        spin(2_000)
    if clocks is not None:
        clocks.append((name, start, time.monotonic()))


def shape_gil_pair():
    """Two threads, spin-a and spin-b, each burn the CPU in Python for 2 s:
    each holds the GIL about half the time and waits the other half.
    Prints when each one began and ended: `NAME START END` (seconds of the
    monotonic clock)."""
    clocks = []
    ts = [threading.Thread(target=gil_spinner, args=(n, 2.0, clocks), name=n) for n in ("spin-a", "spin-b")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for name, start, end in clocks:
        print(name, start, end, flush=True)


def io_call(fd):
    # Releases the GIL for the syscall; takes it back after.
    os.read(fd, 1)


def io_loop(fd, stop, made):
    set_thread_name("io")
    cpu = time.thread_time()
    while not stop.is_set():
        io_call(fd)
        made[0] += 1
    made[1] = time.thread_time() - cpu


def shape_gil_io():
    """Thread cpu burns in Python for 1.5 s; thread io meanwhile does short
    blocking reads (one byte of /dev/zero each, in io_call), and each time
    waits for the GIL after the read; prints how many reads it made and
    the CPU time io used (seconds): `reads N cpu S`."""
    fd = os.open("/dev/zero", os.O_RDONLY)
    stop, made = threading.Event(), [0, 0.0]
    io = threading.Thread(target=io_loop, args=(fd, stop, made), name="io")
    cpu = threading.Thread(target=gil_spinner, args=("cpu", 1.5), name="cpu")
    cpu.start()
    io.start()
    cpu.join()
    stop.set()
    io.join()
    print("reads", made[0], "cpu", made[1], flush=True)


WORDS = [str(i * 7919 % 1000) for i in range(2000)]


def line_writes(fd, n):
    for _ in range(n):
        os.write(fd, b"a")  # line: write-a
        os.write(fd, b"bb")  # line: write-b


def line_work(n):
    total = 0
    for _ in range(n):
        total += sum(range(3000))  # line: sum
        total += len(sorted(WORDS))  # line: sorted
    return total


def shape_lines():
    """300 writes on each of two lines of line_writes, then 1.5 s of
    line_work, whose time goes to two lines (a sum and a sort)."""
    fd = os.open("/dev/null", os.O_WRONLY)
    line_writes(fd, 300)  # line: call-writes
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        line_work(20)  # line: call-work


def hot_a():
    x = 0
    for i in range(20_000):
        x += i
    return x


def hot_b():
    x = 0
    for i in range(20_000):
        x += i
    return x


def shape_hot():
    """For 1.5 s, calls hot_a nine times for each hot_b; with the argument
    `b`, the other way round."""
    first, second = (hot_b, hot_a) if sys.argv[2:] == ["b"] else (hot_a, hot_b)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        for _ in range(9):
            first()
        second()


def plain_nap():
    time.sleep(0.3)


def plain_write():
    os.write(DEVNULL, b"p")


def shape_plain():
    """For a process that runs without pyusdt: prints "waiting" and waits
    for a line on stdin (the recorder has attached); then threads spin-a
    and spin-b burn the CPU in Python (each waits for the GIL while the
    other holds it) while the main thread sleeps 0.3 s in plain_nap, writes
    three times in plain_write and joins them (woken by their exits). The
    spinners burn for 1.5 s, and on until 0.5 s after the main thread came to
    join them: however long it waited for the GIL before, it waits 0.5 s
    in Thread.join."""
    sys.stdout.write("waiting\n")
    sys.stdout.flush()
    sys.stdin.readline()
    joining = []

    def joined_long_enough():
        return bool(joining) and time.monotonic() >= joining[0] + 0.5

    ts = [threading.Thread(target=gil_spinner, args=(n, 1.5, None, joined_long_enough), name=n)
          for n in ("spin-a", "spin-b")]
    for t in ts:
        t.start()
    plain_nap()
    for _ in range(3):
        plain_write()
    joining.append(time.monotonic())
    for t in ts:
        t.join()

if __name__ == "__main__":
    globals()["shape_" + sys.argv[1]]()
