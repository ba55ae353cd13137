"""pyusdt-prof completions SHELL: completions that a shell takes and that
complete commands, options and values."""

import shutil
import subprocess

import pytest

from conftest import TIMEOUT, prof_binary


def completions(shell):
    p = subprocess.run([prof_binary(), "completions", shell], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def bash_complete(script, *words):
    """COMPREPLY of bash for the command line `words` (the last the one
    being completed), with `script` loaded."""
    program = (f"{script}\n"
               f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
               f"COMP_CWORD={len(words) - 1}; COMP_LINE={' '.join(words)!r}; "
               f"COMP_POINT=${{#COMP_LINE}}\n"
               # The function the script registered for pyusdt-prof.
               "f=$(complete -p pyusdt-prof | sed 's/.*-F \\([^ ]*\\).*/\\1/')\n"
               "$f pyusdt-prof \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


def test_bash_completes_commands_options_and_views():
    script = completions("bash")
    assert bash_complete(script, "pyusdt-prof", "re") == {"record", "report"}
    assert {"--views", "--subprocesses", "--duration"} <= bash_complete(
        script, "pyusdt-prof", "record", "--")
    assert bash_complete(script, "pyusdt-prof", "completions", "f") == {"fish"}


@pytest.mark.parametrize("shell,mark", [("zsh", "#compdef pyusdt-prof"),
                                        ("fish", "complete -c pyusdt-prof")])
def test_other_shells_get_their_own_script(shell, mark):
    text = completions(shell)
    assert mark in text and "record" in text and "views" in text
    if shutil.which(shell):
        p = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert p.returncode == 0, p.stderr


def test_an_unknown_shell_is_refused_with_the_known_ones():
    p = subprocess.run([prof_binary(), "completions", "tcsh"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 2 and "bash" in p.stderr and "zsh" in p.stderr
