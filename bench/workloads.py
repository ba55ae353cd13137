"""The workloads of `make bench`, one per argument; each prints one JSON
line: the seconds its timed part took, and for http the requests a
second.

usage: python workloads.py fib|writes|pingpong|http|pyperf BENCH [ARGS]
"""

import json
import os
import subprocess
import sys
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def w_fib():
    fib(15)
    t = time.perf_counter()
    fib(int(os.environ.get("BENCH_FIB", "30")))
    return time.perf_counter() - t


def w_writes():
    fd = os.open("/dev/null", os.O_WRONLY)
    n = int(os.environ.get("BENCH_WRITES", "200000"))
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, b"x")
    return time.perf_counter() - t


def w_pingpong():
    n = int(os.environ.get("BENCH_ROUNDS", "5000"))
    ping, pong = threading.Semaphore(0), threading.Semaphore(0)

    def other():
        for _ in range(n):
            ping.acquire()
            pong.release()

    th = threading.Thread(target=other)
    th.start()
    t = time.perf_counter()
    for _ in range(n):
        ping.release()
        pong.acquire()
    el = time.perf_counter() - t
    th.join()
    return el


CLIENT = r"""
import http.client, sys, threading, time
port, n, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def run(k):
    for _ in range(k):
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
ts = [threading.Thread(target=run, args=(n // conc,)) for _ in range(conc)]
t = time.perf_counter()
for x in ts: x.start()
for x in ts: x.join()
print(time.perf_counter() - t)
"""


def w_http():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = b"hello " * 100

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    n = int(os.environ.get("BENCH_REQUESTS", "2000"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    # The load comes from another, plain process: bounded, 4 at a time.
    out = subprocess.run(["/usr/bin/env", "-u", "PYTHONPATH", sys.executable, "-S", "-c",
                          CLIENT, str(srv.server_address[1]), str(n), "4"],
                         capture_output=True, text=True, check=True).stdout
    srv.shutdown()
    el = float(out)
    return el, n / el


def w_pyperf(bench):
    """A pyperformance benchmark in pyperf's worker mode, in this process."""
    import runpy
    import tempfile

    path = os.path.join(os.environ["BENCH_PYPERFORMANCE"], f"bm_{bench}", "run_benchmark.py")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "o.json")
        sys.argv = [path, "--worker", "-l", os.environ.get("BENCH_LOOPS", "4"), "-w", "1",
                    "-n", "5", "-o", out, "--quiet"]
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            pass
        values = json.load(open(out))["benchmarks"][0]["runs"][-1]["values"]
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "pyperf":
        r = {"seconds": w_pyperf(sys.argv[2])}
    elif what == "http":
        el, rps = w_http()
        r = {"seconds": el, "rps": rps}
    else:
        r = {"seconds": globals()["w_" + what]()}
    print("BENCH " + json.dumps(r), flush=True)
