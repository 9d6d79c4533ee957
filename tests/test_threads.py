"""paretopipe.threads: threads are joined, and none of ours meets interpreter shutdown.

A daemon thread inside torch code when the interpreter finalizes aborts the process with
"terminate called without an active exception" (pytorch/pytorch#38228): that is how a run that
wrote an ok result used to exit with SIGABRT. These run a real torch loop in a child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

BUSY = textwrap.dedent("""
    import sys, threading, torch
    from paretopipe.threads import exit_code, running, spawn

    stop = threading.Event()

    def loop():
        a = torch.randn(200, 200)
        while not stop.is_set() or {forever}:
            a @ a

    spawn(loop, name="busy")
    {before_exit}
    sys.exit(exit_code(3, timeout_s=0.5))
""")


def _child(**fmt: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BUSY.format(**fmt)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, check=False)


def test_a_thread_still_in_torch_code_cannot_abort_the_exit():
    proc = _child(forever="True", before_exit="")
    assert proc.returncode == 3, proc.stderr  # the command's own status, not SIGABRT
    assert "terminate called" not in proc.stderr
    assert "threads still running after 0.5 s at exit: busy" in proc.stderr


def test_joined_threads_exit_normally():
    proc = _child(forever="False", before_exit="stop.set()")
    assert proc.returncode == 3, proc.stderr
    assert "threads still running" not in proc.stderr and "terminate called" not in proc.stderr
