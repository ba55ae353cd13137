"""The pyusdt_prof wheel that make build makes: pip installs the
pyusdt-prof command with it (as py-spy's wheel does), beside the Python
API."""

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, TIMEOUT, prof_binary


def wheel():
    found = sorted((ROOT / "target" / "wheels").glob("pyusdt_prof-*-abi3-*.whl"))
    if not found:
        pytest.skip("no pyusdt_prof wheel: run make build")
    return found[-1]


def test_the_wheel_installs_the_command(tmp_path):
    w = wheel()
    names = zipfile.ZipFile(w).namelist()
    assert any(n.endswith(".data/scripts/pyusdt-prof") for n in names), names
    prefix = tmp_path / "prefix"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-index", "--ignore-installed", "--prefix", str(prefix), str(w)],
                       capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert p.returncode == 0, p.stderr
    command = prefix / "bin" / "pyusdt-prof"
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT, check=True).stdout
    assert version == subprocess.run([prof_binary(), "--version"], capture_output=True,
                                     text=True, timeout=TIMEOUT, check=True).stdout
    assert version.startswith("pyusdt-prof ")
    # The installed command works: its completions, for one.
    bash = subprocess.run([str(command), "completions", "bash"], capture_output=True,
                          text=True, timeout=TIMEOUT, check=True).stdout
    assert "complete -F" in bash and "pyusdt-prof" in bash
