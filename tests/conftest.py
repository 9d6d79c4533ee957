"""Shared test fixtures and markers; stage workers as real processes on loopback, stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from paretopipe.polling import poll_until
from paretopipe.runtime.sweep import free_port, stop_process

REPO = Path(__file__).resolve().parent.parent

# the marker check (a test over 10 s not marked slow fails), in both tiers
pytest_plugins = ["tests.slow_marker_check"]


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m paretopipe ARGS` in a subprocess, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "paretopipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so that `-m "not slow"` sees the added marks
def pytest_collection_modifyitems(config, items):
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, tc, cgroups)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none visible")
    for item in items:
        if "root" in item.keywords:
            # a root test brings up or shares a testbed (namespaces, a VM): never in the fast tier
            item.add_marker(pytest.mark.slow)
        if "root" in item.keywords and not is_root:
            item.add_marker(skip_root)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@dataclass
class Worker:
    proc: subprocess.Popen
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> str:
        poll_until(lambda: text in self.log() or self.proc.poll() is not None, timeout)
        log = self.log()
        if text not in log:
            raise AssertionError(f"worker log never said {text!r}:\n{log}")
        return log

    def stop(self) -> None:
        stop_process(self.proc)


class WorkerFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.workers: list[Worker] = []

    def __call__(self, *args: str, env: dict[str, str] | None = None, wait: bool = True,
                 port: int | None = None, threads: int | None = 1) -> Worker:
        """A worker process on loopback; `threads=None` leaves its thread count to the defaults."""
        address = f"127.0.0.1:{port or free_port()}"
        log_path = self.tmp / f"worker-{len(self.workers)}-{address.replace(':', '_')}.log"
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "paretopipe", "stage", "serve", "--listen", address,
                 *(["--threads", str(threads)] if threads else []), *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=REPO,
            )
        worker = Worker(proc, address, log_path)
        self.workers.append(worker)
        if wait:
            worker.wait_log("listening on")
        return worker

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture
def start_worker(tmp_path):
    factory = WorkerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def shared_workers(tmp_path_factory):
    """Two plain workers shared by the happy-path tests of a module."""
    factory = WorkerFactory(tmp_path_factory.mktemp("workers"))
    try:
        workers = factory(wait=False), factory(wait=False)
        for w in workers:
            w.wait_log("listening on")
        yield workers
    finally:
        factory.stop_all()
