"""CUDA stages (skipped without a CUDA device): pinned buffers, non-blocking copies, GPU figures."""

from __future__ import annotations

import pytest

from paretopipe.runtime.source import RunConfig, run

pytestmark = pytest.mark.gpu


def test_two_stage_session_with_cuda_tail(start_worker, tmp_path):
    worker = start_worker("--device", "cuda")
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "gpu.json",
                        batch_size=4, input_size=64, batches=5, warmup=2, min_batches=1, threads=1, check=True))
    assert doc["status"] == "ok"
    assert doc["check"]["ok"], doc["check"]  # GPU kernels differ from CPU ones in rounding only
    assert doc["config"]["stages"][1]["device"] == "cuda"
    assert doc["environment"]["stages"][1]["device_name"]
    gpu_stage = doc["summary"]["stages"][1]
    assert "gpu_util_percent" in gpu_stage or "gpu_metrics_error" in gpu_stage


def test_cuda_head_on_the_source(start_worker, tmp_path):
    worker = start_worker()
    doc = run(RunConfig(model="mobilenet_v2", splits=(7,), stages=(worker.address,), out=tmp_path / "gpuhead.json",
                        batch_size=4, input_size=64, batches=3, warmup=1, min_batches=1, threads=1, device="cuda",
                        check=True))
    assert doc["status"] == "ok" and doc["check"]["ok"], doc["check"]
