"""Helpers shared by the runtime benchmarks: a local worker process, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def local_worker(*args: str, threads: int | None = 1) -> Iterator[str]:
    """Start `paretopipe stage serve` on a free loopback port; yield its address."""
    from paretopipe.runtime.sweep import free_port, stop_process

    address = f"127.0.0.1:{free_port()}"
    log = tempfile.NamedTemporaryFile(prefix="pp-worker-", suffix=".log", delete=False)  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "paretopipe", "stage", "serve", "--listen", address, *args]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while b"listening on" not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{Path(log.name).read_text()}")
            time.sleep(0.05)
        yield address
    finally:
        stop_process(proc)
        log.close()
        os.unlink(log.name)


def machine() -> str:
    import platform

    from paretopipe.environment import cpu_model

    load = os.getloadavg()
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
