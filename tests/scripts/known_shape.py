"""Workloads of known shape for the per-call probe tests.

usage: python -m pyusdt known_shape.py SHAPE PROBE[,PROBE...]

Prints "ready", waits until pyusdt has turned on the events of every named
probe (a tracer attached to them) and for "go" on stdin (the test has seen
the tracer's probes live), runs shape_SHAPE once, prints "done".
"""

import sys
import time

import pyusdt

N = 1000


def work(i):
    return i + 1


def counter(n):
    for i in range(n):
        yield i


def level3():
    raise ValueError("deep")


def level2():
    level3()


def level1():
    level2()


def caller(items):
    total = 0
    for x in items:
        total += len(x)
    return total


def liner():
    a = 1
    b = 2
    return a + b


def catcher():
    while True:
        try:
            yield
        except ValueError:
            pass


def shape_calls():
    for i in range(N):
        work(i)


def shape_generator():
    for _ in counter(50):
        pass


def shape_unwind():
    for _ in range(100):
        try:
            level1()
        except ValueError:
            pass


def shape_call():
    caller([[1]] * 200)


def shape_line():
    for _ in range(10):
        liner()


def shape_throw():
    g = catcher()
    next(g)
    for _ in range(20):
        g.throw(ValueError)


if __name__ == "__main__":
    shape, wanted = sys.argv[1], set(sys.argv[2].split(","))
    print("ready", flush=True)
    while not wanted <= set(pyusdt.status()["active"]):
        time.sleep(0.005)
    assert sys.stdin.readline() == "go\n"
    globals()["shape_" + shape]()
    print("done", flush=True)
