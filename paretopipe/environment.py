"""Where a run ran: the machine, its software and its cores, for result and profile files.

:func:`environment_info` is one stage's entry in a result file's ``environment.stages``
(docs/results.md); :func:`host_label` names the device in ``config.stages``.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from paretopipe import __version__


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (x86 "model name", Arm "Model"/"Hardware")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The short commit of the paretopipe checkout this runs from, or None (an installed wheel)."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def host_label() -> str:
    """The name this device goes by in result files.

    ``PARETOPIPE_DEVICE`` when set (the emulated testbed's sshd sets it to ``pi1``, ``gpu``, ...,
    since its devices share one hostname; set it on real devices to name them), else the hostname.
    """
    return os.environ.get("PARETOPIPE_DEVICE") or socket.gethostname()


def environment_info(device: str, *, index: int = 0) -> dict[str, Any]:
    """This machine and its software, for the ``environment.stages`` section."""
    import torch
    import torchvision

    from paretopipe.runtime.cores import boot_id, usable_cpus

    device_name = None
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    return {
        "index": index,
        "hostname": socket.gethostname(),
        "host": host_label(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "paretopipe": __version__,
        "device": device,
        "device_name": device_name,
        "commit": git_commit(),
        "boot_id": boot_id(),
        "usable_cpus": usable_cpus(),
    }
