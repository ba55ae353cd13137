"""CPU work of known shape: heavy() does three times the work of light(),
and nap() sleeps far longer than both run. Prints "ready", then loops until
stdin closes."""

import select
import sys
import time


def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def heavy():
    return spin(30_000)


def light():
    return spin(10_000)


def nap():
    time.sleep(0.005)


print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    heavy()
    light()
    nap()
