"""One stage's compute on one batch, on CPU or CUDA, timed the same way everywhere.

CPU: the module runs on the received buffer; the output is made contiguous for sending.
CUDA: the input is copied host-to-device without blocking (from a pinned buffer when the
transport gave one), the output is copied into a pinned host buffer without blocking, and the
stream is synchronised before the clock is read, so the compute time includes both copies.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Protocol

from paretopipe.errors import ConfigError


def check_device(device: str) -> str:
    """The device a stage runs on, checked: cpu, or cuda[:N] when CUDA is available."""
    import torch

    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
        return device
    raise ConfigError(f"--device {device!r}: use cpu or cuda[:N]")


class HostBuffers:
    """Pinned host buffers for CUDA outputs, reused once the sender is done with them."""

    def __init__(self) -> None:
        self._bufs: list[Any] = []
        self._free: queue.Queue[int] = queue.Queue()

    def take(self, like: Any) -> int:
        import torch

        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            self._bufs.append(torch.empty(like.shape, dtype=like.dtype, pin_memory=True))
            slot = len(self._bufs) - 1
        return slot

    def __getitem__(self, slot: int) -> Any:
        return self._bufs[slot]

    def give_back(self, slot: int) -> None:
        if slot >= 0:
            self._free.put(slot)


#: (host output, buffer slot or -1, t_start, t_ready, CPU seconds of this thread)
StepResult = tuple[Any, int, float, float, float]


def compute(module: Any, x: Any, device: str, buffers: HostBuffers) -> StepResult:
    """Run `module` on host tensor `x`.

    Returns (host output, buffer slot or -1, t_start, t_ready, CPU seconds of this thread)."""
    import torch

    cpu0 = time.thread_time()
    t_start = time.monotonic()
    if device.startswith("cuda"):
        y = module(x.to(device, non_blocking=True))
        slot = buffers.take(y)
        out = buffers[slot]
        out.copy_(y, non_blocking=True)
        torch.cuda.current_stream(torch.device(device)).synchronize()
    else:
        out, slot = module(x).contiguous(), -1
        if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            out = out.clone()  # an empty (identity) stage: the input buffer goes back to the pool
    t_ready = time.monotonic()
    return out, slot, t_start, t_ready, time.thread_time() - cpu0


class StageCompute(Protocol):
    """One stage's step on one batch, as the stage loops (worker and source) call it. A plain
    stage computes (:class:`PlainCompute`); a replayed one takes its time from a profile
    (:class:`paretopipe.runtime.replay.ReplayCompute`). The loops do not know which."""

    def __call__(self, x: Any, buffers: HostBuffers, batch_id: int) -> StepResult: ...


class PlainCompute:
    """The stage's module on the batch, timed as it ran."""

    def __init__(self, module: Any, device: str) -> None:
        self.module, self.device = module, device

    def __call__(self, x: Any, buffers: HostBuffers, batch_id: int) -> StepResult:
        return compute(self.module, x, self.device, buffers)
