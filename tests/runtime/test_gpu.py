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


def test_rpc_backend_with_cuda_tail_gives_the_tcp_logits(start_worker):
    """The RPC backend carries the host copy of a CUDA stage's output as the TCP backend does:
    the same split, inputs and GPU give the same logits, bit for bit, and the unsplit CPU
    model's within rounding."""
    import torch

    from paretopipe.splitting import build_stages

    from .test_rpc import _logits_over

    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]
    out = {b: _logits_over(b, (start_worker("--device", "cuda", "--backend", b).address,), inputs, (5,))
           for b in ("tcp", "rpc")}
    reference = build_stages("resnet18", (), num_classes=10, seed=0)[0]
    with torch.inference_mode():
        for a, b, x in zip(out["tcp"], out["rpc"], inputs, strict=True):
            assert torch.equal(a, b)
            assert torch.allclose(a, reference(x), atol=1e-2)
