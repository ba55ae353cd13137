"""pyusdt-prof check: what this machine offers, and whether it can record."""

import json
import os
import subprocess

from conftest import TIMEOUT, need_bpf, prof_binary


def test_check_says_it_can_record_here_and_how():
    need_bpf(prof_binary())
    p = subprocess.run([prof_binary(), "check", "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)
    assert c["ok"] and c["btf"] and c["ringbuf"] and c["missing_capabilities"] == []
    assert c["kernel"] == os.uname().release
    # The programs it would load are the best the kernel has.
    assert c["tp_btf_programs"] == c["tp_btf"] and c["loop_programs"] == c["bpf_loop"]
    text = subprocess.run([prof_binary(), "check"], capture_output=True, text=True,
                          timeout=TIMEOUT, check=True).stdout
    assert text.startswith(f"Linux {c['kernel']}\n")
    assert text.rstrip().endswith("pyusdt-prof can record here")
    # What the environment forces is what a recording loads.
    p = subprocess.run([prof_binary(), "check", "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT, env={**os.environ, "PYUSDT_PROF_RAW_TP": "1",
                                            "PYUSDT_PROF_NO_BPF_LOOP": "1"})
    forced = json.loads(p.stdout)
    assert (forced["tp_btf_programs"], forced["loop_programs"]) == (False, False)


def test_without_privileges_check_says_what_is_missing():
    need_bpf(prof_binary(), "setpriv")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", prof_binary(), "check"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert "privileges           lacks CAP_BPF and CAP_PERFMON" in p.stdout
    assert p.stdout.rstrip().endswith("pyusdt-prof cannot record here")
