"""A workload of known shape for `record --span handle_request`.

usage: python -m pyusdt spans.py

Inside span handle_request: 40 calls of handle (the decorator), 5 writes
each under inside; one block nested in itself with 1 write; one block
that raises after 1 write: 202 writes under inside, 42 spans ended.
Outside it: 40 writes under outside, 40 more in span "other", and a
thread that writes 100 times in no span: none of them recorded.
"""

import os
import threading

import pyusdt

DEVNULL = os.open("/dev/null", os.O_WRONLY)


def inside():
    os.write(DEVNULL, b"i")


def outside():
    os.write(DEVNULL, b"o")


@pyusdt.span("handle_request")
def handle(n):
    for _ in range(n):
        inside()


def bystander():
    for _ in range(100):
        outside()


def main():
    t = threading.Thread(target=bystander)
    t.start()
    for _ in range(40):
        handle(5)
        outside()
        with pyusdt.span("other"):
            outside()
    with pyusdt.span("handle_request"):
        with pyusdt.span("handle_request"):
            inside()
    try:
        with pyusdt.span("handle_request"):
            inside()
            raise ValueError("inside a span")
    except ValueError:
        pass
    t.join()


main()
