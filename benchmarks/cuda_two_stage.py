#!/usr/bin/env python
"""Check the CUDA path on any CUDA machine: a two-stage session with the tail on CUDA.

Starts a worker with --device cuda on loopback, runs the source (head on CPU) against it with
--check (logits compared with the unsplit model on CPU), and prints the result summary,
the GPU figures of the CUDA stage, and the host-to-device copy time of the activation from
pinned vs pageable memory. Exits 0 when the session is ok and the check passes, 1 when not,
2 when there is no CUDA device.

Usage: python benchmarks/cuda_two_stage.py [--model resnet18] [--split 5] [--batch-size 8]
       [--input-size 224] [--batches 30] [--window 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _runtime_common import local_worker, machine


def copy_times(shape: tuple[int, ...], repeats: int = 20) -> tuple[float, float]:
    import torch

    out = []
    for pinned in (True, False):
        host = torch.randn(shape).pin_memory() if pinned else torch.randn(shape)
        dev = torch.empty(shape, device="cuda")
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / repeats)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--split", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--window", type=int, default=2)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device visible to torch {torch.__version__}; nothing to check")
        return 2
    from paretopipe.cli.runtime_cmd import format_summary
    from paretopipe.errors import ParetoPipeError
    from paretopipe.runtime.source import RunConfig, run

    print(f"machine: {machine()}; GPU: {torch.cuda.get_device_name(0)}")
    with local_worker("--device", "cuda", threads=None) as address, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cuda.json"
        try:
            doc = run(RunConfig(model=args.model, splits=(args.split,), stages=(address,), out=out,
                                batch_size=args.batch_size, input_size=args.input_size, batches=args.batches,
                                warmup=5, window=args.window, min_batches=1, check=True))
        except ParetoPipeError as exc:
            print(f"FAILED: {exc}")
            return 1
        print(format_summary(doc, out))
        gpu = doc["summary"]["stages"][1]
        print("CUDA stage figures:", json.dumps({k: v for k, v in gpu.items()}, indent=None))
        from paretopipe.splitting import stage_io_shapes

        shape, _ = stage_io_shapes(args.model, (args.split,), 1, batch_size=args.batch_size,
                                   input_size=args.input_size)
        pinned, pageable = copy_times(tuple(shape))
        mb = doc["summary"]["hops"][0]["bytes"] / 1e6
        print(f"host->device copy of the {mb:.2f} MB activation: pinned {pinned * 1e3:.3f} ms, "
              f"pageable {pageable * 1e3:.3f} ms (x{pageable / pinned:.1f})")
        ok = doc["status"] == "ok" and doc["check"]["ok"] and doc["config"]["stages"][1]["device"] == "cuda"
        print("CUDA two-stage check:", "PASSED" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
