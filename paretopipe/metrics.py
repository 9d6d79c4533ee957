"""Per-batch records, resource samplers and the run summary.

- :class:`BatchRecord`: what happened to one counted batch, on the source's clock.
- :class:`ResourceSampler`: CPU % (from the process's CPU time over the session's wall time) and
  peak RSS (sampled) of this process, plus GPU figures through NVML for CUDA stages.
- :func:`summarize`: the ``summary`` section of a result file (docs/results.md).

GPU figures come from ``nvidia-ml-py`` (imported lazily). Without CUDA they are absent; with CUDA
but without ``nvidia-ml-py`` they are absent too and ``gpu_metrics_error`` says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from paretopipe.threads import spawn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRecord:
    """One counted batch. Times on the source's monotonic clock (absolute; made relative on output)."""

    batch_id: int
    send_s: float
    done_s: float
    compute_s: tuple[float, ...]  # per stage, stage 0 = source head
    stage_queue_s: tuple[float, ...]  # per stage: waiting before compute and before sending
    hop_bytes: tuple[int, ...]  # hop i: stage i -> i+1; the last hop returns logits to the source
    hop_transfer_s: tuple[float, ...]
    window_wait_s: float  # the source waiting for a free window slot before this batch
    correct: int | None = None  # top-1 hits in this batch, when labels are known
    # per hop, as hop_bytes (which holds the bytes on the wire): the decoded tensor's bytes, the
    # sender's encode time and the receiver's decode time (codecs; 0 for the raw codec)
    hop_raw_bytes: tuple[int, ...] = ()
    hop_encode_s: tuple[float, ...] = ()
    hop_decode_s: tuple[float, ...] = ()

    @property
    def latency_s(self) -> float:
        return self.done_s - self.send_s

    def to_json(self, t0: float) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "send_s": self.send_s - t0,
            "done_s": self.done_s - t0,
            "latency_s": self.latency_s,
            "queue_wait_s": sum(self.stage_queue_s),
            "compute_s": list(self.compute_s),
            "hops": [_hop(self, i) for i in range(len(self.hop_bytes))],
            "stage_queue_s": list(self.stage_queue_s),
            "window_wait_s": self.window_wait_s,
        }


def _hop(rec: BatchRecord, i: int) -> dict[str, Any]:
    raw = rec.hop_raw_bytes[i] if rec.hop_raw_bytes else rec.hop_bytes[i]
    return {"bytes": rec.hop_bytes[i], "raw_bytes": raw, "transfer_s": rec.hop_transfer_s[i],
            "encode_s": rec.hop_encode_s[i] if rec.hop_encode_s else 0.0,
            "decode_s": rec.hop_decode_s[i] if rec.hop_decode_s else 0.0}


def _hop_summary(records: Sequence[BatchRecord], i: int) -> dict[str, Any]:
    """One hop over the counted batches: mean bytes on the wire (an integer when every batch
    sent the same), raw bytes, their ratio, and the mean transfer, encode and decode times."""
    if not records:
        return {"bytes": None, "raw_bytes": None, "ratio": None, "transfer_s": None, "encode_s": None,
                "decode_s": None}
    hops = [_hop(r, i) for r in records]
    wire = [h["bytes"] for h in hops]
    mean_wire: float | int = wire[0] if len(set(wire)) == 1 else sum(wire) / len(wire)
    raw = hops[0]["raw_bytes"]
    return {
        "bytes": mean_wire, "raw_bytes": raw, "ratio": raw / mean_wire if mean_wire else None,
        "transfer_s": _mean([h["transfer_s"] for h in hops]),
        "encode_s": _mean([h["encode_s"] for h in hops]), "decode_s": _mean([h["decode_s"] for h in hops]),
    }


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def summarize(
    records: Sequence[BatchRecord],
    *,
    batch_size: int,
    num_stages: int,
    stage_stats: Sequence[dict[str, Any]],
    prefetch_stalls: int,
    prefetch_stall_s: float,
    labelled_images: int = 0,
) -> dict[str, Any]:
    """The summary section. Throughput counts counted batches over first send to last completion."""
    n = len(records)
    span = (max(r.done_s for r in records) - min(r.send_s for r in records)) if records else 0.0
    lat = [r.latency_s for r in records]
    compute = [_mean([r.compute_s[i] for r in records]) for i in range(num_stages)]
    hops = [_hop_summary(records, i) for i in range(num_stages)]
    correct = [r.correct for r in records if r.correct is not None]
    return {
        "throughput_img_s": n * batch_size / span if span > 0 else None,
        "throughput_batch_s": n / span if span > 0 else None,
        "latency_s": _stats(lat),
        "latency_per_image_s": _stats([x / batch_size for x in lat]),
        "compute_s": compute,
        "hops": hops,
        "payload_bytes": sum(h["bytes"] for h in hops) if records else None,
        "queue_wait_s": _mean([sum(r.stage_queue_s) for r in records]),
        "stage_queue_s": [_mean([r.stage_queue_s[i] for r in records]) for i in range(num_stages)],
        "window_wait_s": _mean([r.window_wait_s for r in records]),
        "prefetch_stalls": prefetch_stalls,
        "prefetch_stall_s": prefetch_stall_s,
        "accuracy_top1": (sum(correct) / labelled_images) if correct and labelled_images else None,
        "stages": list(stage_stats),
    }


@dataclass
class _Gpu:
    handle: Any
    nvml: Any
    energy_start_mj: int | None
    util: list[float] = field(default_factory=list)
    mem: list[float] = field(default_factory=list)
    power: list[float] = field(default_factory=list)


class ResourceSampler:
    """Samples this process (and, for CUDA, its GPU) from start() to stop()."""

    def __init__(self, *, device: str = "cpu", interval_s: float = 0.1) -> None:
        self._device = device
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_rss = 0
        self._gpu: _Gpu | None = None
        self._gpu_error: str | None = None

    def start(self) -> ResourceSampler:
        import psutil

        self._proc = psutil.Process(os.getpid())
        if self._device.startswith("cuda"):
            self._gpu = self._open_nvml()  # first: nvmlInit takes a while, and the energy
            # counter's start should be read together with the clock's
        self._cpu0 = self._cpu_time()
        self._t0 = time.monotonic()
        self._peak_rss = self._proc.memory_info().rss
        self._thread = spawn(self._loop, name="resource-sampler")
        return self

    def _cpu_time(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def _open_nvml(self) -> _Gpu | None:
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            self._gpu_error = "nvidia-ml-py is not installed (pip install 'paretopipe[gpu]')"
            log.warning("GPU figures unavailable: %s", self._gpu_error)
            return None
        try:
            import torch

            pynvml.nvmlInit()
            index = torch.device(self._device).index
            index = torch.cuda.current_device() if index is None else index
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                energy = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except pynvml.NVMLError:
                energy = None
            return _Gpu(handle, pynvml, energy)
        except Exception as exc:  # noqa: BLE001 - NVML/CUDA raise assorted types; reported, never hidden
            self._gpu_error = f"NVML failed: {exc}"
            log.warning("GPU figures unavailable: %s", self._gpu_error)
            return None

    def _sample(self) -> None:
        try:
            self._peak_rss = max(self._peak_rss, self._proc.memory_info().rss)
        except Exception:  # noqa: BLE001, S110 - process info can vanish at exit; the last peak stands
            pass
        gpu = self._gpu
        if gpu is not None:
            try:
                gpu.util.append(float(gpu.nvml.nvmlDeviceGetUtilizationRates(gpu.handle).gpu))
                gpu.mem.append(float(gpu.nvml.nvmlDeviceGetMemoryInfo(gpu.handle).used))
                gpu.power.append(gpu.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0)
            except gpu.nvml.NVMLError as exc:
                self._gpu_error = f"NVML sample failed: {exc}"

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> dict[str, Any]:
        """Stop sampling; return the stage's figures for the summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not hasattr(self, "_proc"):  # never started
            return {}
        self._sample()
        wall = time.monotonic() - self._t0
        out: dict[str, Any] = {
            "cpu_percent": 100.0 * (self._cpu_time() - self._cpu0) / wall if wall > 0 else None,
            "peak_rss_bytes": int(self._peak_rss),
            "wall_s": wall,
        }
        gpu = self._gpu
        if gpu is not None:
            out["gpu_util_percent"] = _mean(gpu.util)
            out["gpu_mem_bytes"] = max(gpu.mem) if gpu.mem else None
            out["power_w"] = _mean(gpu.power)
            energy = None
            if gpu.energy_start_mj is not None:
                try:
                    energy = (int(gpu.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) - gpu.energy_start_mj) / 1000.0
                except gpu.nvml.NVMLError:
                    energy = None
            if energy is None and gpu.power:
                energy = _mean(gpu.power) * wall  # type: ignore[operator]
                out["energy_method"] = "mean power x wall time"
            out["energy_j"] = energy
        if self._device.startswith("cuda") and self._gpu_error:
            out["gpu_metrics_error"] = self._gpu_error
        return out


#: a run is measured under contention when other processes used more than this share of the
#: host's cores during it, CPU steal exceeded this share of its CPU time, or the 1-minute load
#: average exceeded the host's cores (paretoio/schemas: ``summary.contention``; docs/results.md)
CONTENTION_OTHERS_SHARE = 0.25
CONTENTION_STEAL_SHARE = 0.05


class HostContention:
    """What else the host did while a run measured: load average, CPU steal (/proc/stat, through
    psutil) and the CPU time of the host's processes, from :meth:`start` to :meth:`stop`.

    :meth:`stop` gives the host's busy CPU seconds; :func:`contention_summary` takes the run's own
    stages on this kernel off them to give the other processes' share."""

    def start(self) -> HostContention:
        import psutil

        self._t0 = time.monotonic()
        self._cpu0 = psutil.cpu_times()
        self._load0 = os.getloadavg()[0]
        return self

    def stop(self) -> dict[str, Any]:
        import psutil

        if not hasattr(self, "_t0"):
            return {}
        wall = time.monotonic() - self._t0
        cpu1 = psutil.cpu_times()
        d = {f: getattr(cpu1, f) - getattr(self._cpu0, f) for f in cpu1._fields}
        # guest time is already inside user on Linux; idle and iowait are not busy
        busy = sum(v for f, v in d.items() if f not in ("idle", "iowait", "guest", "guest_nice", "steal"))
        total = sum(v for f, v in d.items() if f not in ("guest", "guest_nice"))
        steal = d.get("steal", 0.0)
        return {"wall_s": wall, "cores": psutil.cpu_count() or 1, "host_busy_cpu_s": busy,
                "steal_fraction": steal / total if total > 0 else 0.0,
                "loadavg_1m": [self._load0, os.getloadavg()[0]]}


def contention_summary(host: dict[str, Any], stages: Sequence[dict[str, Any]], envs: Sequence[dict[str, Any]],
                       ) -> dict[str, Any] | None:
    """``summary.contention`` of a run: :class:`HostContention`'s figures, the CPU seconds of
    processes other than the run's stages on this kernel (stages whose ``boot_id`` is the
    source's), and whether the run was measured under contention and why."""
    if not host:
        return None
    me = envs[0].get("boot_id") if envs else None
    same = {int(e.get("index", -1)) for e in envs if me is not None and e.get("boot_id") == me}
    own = 0.0
    for s in stages:
        if int(s.get("index", -1)) in same and s.get("cpu_percent") is not None and s.get("wall_s") is not None:
            own += float(s["cpu_percent"]) / 100.0 * float(s["wall_s"])
    others = max(host["host_busy_cpu_s"] - own, 0.0)
    share = others / (host["wall_s"] * host["cores"]) if host["wall_s"] > 0 else 0.0
    why = []
    if share > CONTENTION_OTHERS_SHARE:
        why.append(f"other processes used {share:.0%} of the host's {host['cores']} core(s)")
    if host["steal_fraction"] > CONTENTION_STEAL_SHARE:
        why.append(f"CPU steal {host['steal_fraction']:.0%}")
    if max(host["loadavg_1m"]) > host["cores"]:
        why.append(f"load average {max(host['loadavg_1m']):.1f} over {host['cores']} core(s)")
    return {**host, "run_cpu_s": own, "others_cpu_s": others, "others_core_share": share,
            "contended": bool(why), "reason": "; ".join(why) or None}
