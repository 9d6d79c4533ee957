"""Shared test fixtures and markers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m paretopipe ARGS` in a subprocess, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "paretopipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
    )


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
        if "root" in item.keywords and not is_root:
            item.add_marker(skip_root)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
