"""Realistic result files for the analysis tests, written per docs/results.md (schema v1), plus
files in the original ParetoPipe format.

The numbers come from a small performance model of a MobileNetV2-like network split between a
Raspberry Pi (stage 0) and a Jetson-class CUDA board (stage 1): compute per block, activation
bytes per split, transfer = 8·bytes/rate + one-way delay, pipelined throughput bounded by the
slowest stage or link.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "mobilenet_v2"
NUM_BLOCKS = 19
SPLITS = (0, 3, 6, 10, 14, 19)
BATCH = 8
WINDOW = 4
REPEATS = 3
# seconds per batch of 8 on the Pi, per block; the CUDA device (a Jetson-class board) is 2x faster
BLOCK_S = (0.020, 0.045, 0.040, 0.035, 0.030, 0.030, 0.028, 0.026, 0.025, 0.024, 0.022, 0.020,
           0.020, 0.018, 0.018, 0.017, 0.016, 0.015, 0.040)
SERVER_SPEEDUP = 2.0
ACTIVATION_BYTES = {0: 4_816_896, 3: 2_408_448, 6: 802_816, 10: 401_408, 14: 602_112, 19: 320}
RESULT_BYTES = 320
CONDITIONS = {  # label -> (one-way delay ms, rate Mbit/s)
    "lan": (0.5, 1000.0),
    "wifi-50mbit": (5.0, 50.0),
}
BACKENDS = {"tcp": (1.0, 0.0), "rpc": (1.25, 0.002)}  # transfer factor, extra seconds per hop


def ideal_point(k: int, condition: str, backend: str) -> dict[str, float]:
    """Noise-free latency/throughput of split k: what the fixture's runs scatter around."""
    delay_ms, rate = CONDITIONS[condition]
    factor, extra = BACKENDS[backend]
    c0 = sum(BLOCK_S[:k])
    c1 = sum(BLOCK_S[k:]) / SERVER_SPEEDUP
    t0 = factor * (8 * ACTIVATION_BYTES[k] / (rate * 1e6) + delay_ms / 1e3) + extra
    t1 = factor * (8 * RESULT_BYTES / (rate * 1e6) + delay_ms / 1e3) + extra
    latency = c0 + t0 + c1 + t1
    bottleneck = max(c0, t0, c1, t1)
    return {"c0": c0, "c1": c1, "t0": t0, "t1": t1, "latency": latency,
            "throughput": 0.95 * BATCH / bottleneck}


def make_run(k: int, condition: str, backend: str, repeat: int, rng: np.random.Generator,
             sweep_id: str = "mobilenet_v2-20261126T221000Z") -> dict[str, Any]:
    """One schema-v1 run document with seeded multiplicative noise (about 3%)."""
    ideal = ideal_point(k, condition, backend)

    def noisy(v: float) -> float:
        return float(v * rng.lognormal(0.0, 0.03))

    c0, c1, t0, t1 = (noisy(ideal[n]) for n in ("c0", "c1", "t0", "t1"))
    queue = noisy(0.001)
    latency = c0 + c1 + t0 + t1 + queue
    throughput = noisy(ideal["throughput"])
    counted = 50
    lat = rng.normal(latency, 0.05 * latency, counted).clip(min=latency * 0.5)
    batches = []
    send = 0.0
    for i, value in enumerate(lat):
        batches.append({"batch_id": 5 + i, "send_s": round(send, 6),
                        "done_s": round(send + value, 6),
                        "latency_s": float(value), "queue_wait_s": queue, "compute_s": [c0, c1],
                        "hops": [{"bytes": ACTIVATION_BYTES[k], "transfer_s": t0},
                                 {"bytes": RESULT_BYTES, "transfer_s": t1}]})
        send += BATCH / throughput
    duration = counted * BATCH / throughput
    delay_ms, rate = CONDITIONS[condition]
    run_id = f"{MODEL}-s{k}-{backend}-{condition}-b{BATCH}-w{WINDOW}-r{repeat}"
    pct = {q: float(np.percentile(lat, q)) for q in (50, 90, 99)}
    energy = noisy(80.0) * duration * 0.3
    return {
        "schema": "paretopipe.run",
        "schema_version": 1,
        "run_id": run_id,
        "sweep_id": sweep_id,
        "created_utc": "2026-11-26T22:10:00Z",
        "status": "ok",
        "error": None,
        "config": {
            "model": MODEL, "num_classes": 10, "input_size": 224,
            "weights": {"kind": "random", "seed": 0},
            "splits": [k], "num_blocks": NUM_BLOCKS, "backend": backend,
            "batch_size": BATCH, "window": WINDOW, "warmup": 5, "batches": counted,
            "duration_s": None, "min_batches": 20, "min_duration_s": 0.0,
            "input": "synthetic", "seed": 0, "threads": None, "repeat": repeat,
            "stages": [
                {"index": 0, "host": "pi1", "device": "cpu", "address": None, "blocks": [0, k]},
                {"index": 1, "host": "jetson1", "device": "cuda", "address": "10.77.0.12:29500",
                 "blocks": [k, NUM_BLOCKS]},
            ],
            "network": {
                "label": condition,
                "configured": {"delay_ms": delay_ms, "jitter_ms": 0.0, "loss_pct": 0.0,
                               "rate_mbit": rate},
                "measured": {"rtt_ms": 2 * delay_ms + 0.1, "rate_mbit": 0.93 * rate},
                "extra": {},
            },
        },
        "environment": {"stages": [
            {"index": i, "hostname": h, "cpu_model": "test", "cores": 4, "python": "3.11.7",
             "torch": "2.14.1", "torchvision": "0.29.1", "paretopipe": "0.1.0", "device": d,
             "device_name": None, "commit": "abc1234"}
            for i, (h, d) in enumerate((("pi1", "cpu"), ("jetson1", "cuda")))]},
        "batches": batches,
        "summary": {
            "throughput_img_s": throughput,
            "throughput_batch_s": throughput / BATCH,
            "latency_s": {"mean": latency, "p50": pct[50], "p90": pct[90], "p99": pct[99]},
            "latency_per_image_s": {"mean": latency / BATCH, "p50": pct[50] / BATCH,
                                    "p90": pct[90] / BATCH, "p99": pct[99] / BATCH},
            "compute_s": [c0, c1],
            "hops": [{"bytes": ACTIVATION_BYTES[k], "transfer_s": t0},
                     {"bytes": RESULT_BYTES, "transfer_s": t1}],
            "payload_bytes": ACTIVATION_BYTES[k] + RESULT_BYTES,
            "queue_wait_s": queue,
            "prefetch_stalls": 0,
            "accuracy_top1": None,
            "stages": [
                {"index": 0, "cpu_percent": noisy(95.0), "peak_rss_bytes": 412_000_000},
                {"index": 1, "cpu_percent": noisy(110.0), "peak_rss_bytes": 1_512_000_000,
                 "gpu_util_percent": 20.0, "gpu_mem_bytes": 1.2e9, "power_w": 80.0,
                 "energy_j": energy},
            ],
        },
        "validity": {"warmup_batches": 5, "counted_batches": counted, "duration_s": duration,
                     "min_batches": 20, "min_duration_s": 0.0, "min_batches_met": True,
                     "min_duration_met": True, "valid": True},
    }


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def write_sweep(root: Path, seed: int = 0) -> dict[str, Any]:
    """Two conditions x two backends x six splits x three repeats, one failed run and one
    corrupt file, under ``root/<sweep-id>/``. Returns what was written."""
    rng = np.random.default_rng(seed)
    sweep = root / "mobilenet_v2-20261126T221000Z"
    ok = []
    for condition in CONDITIONS:
        for backend in BACKENDS:
            for k in SPLITS:
                for r in range(REPEATS):
                    doc = make_run(k, condition, backend, r, rng)
                    ok.append(write_json(sweep / f"{doc['run_id']}.json", doc))
    failed_doc = make_run(6, "wifi-50mbit", "rpc", 3, rng)
    failed_doc.update(status="failed", error="stage 1 at 10.77.0.12:29500 stopped answering")
    failed = write_json(sweep / f"{failed_doc['run_id']}.json", failed_doc)
    corrupt = sweep / f"{MODEL}-s3-tcp-lan-b8-w4-r9.json"
    corrupt.write_text('{"schema": "paretopipe.run", "schema_version": 1, "run_id": "tr',
                       encoding="utf-8")
    return {"ok": ok, "failed": failed, "corrupt": corrupt, "sweep_dir": sweep}


CODECS = {  # name -> (size ratio at the split, top-1 agreement, encode + decode s per batch)
    "none": (1.0, 1.0, 0.0),
    "fp16": (2.0, 1.0, 0.0008),
    "int8": (4.0, 0.9875, 0.0015),
}
CODEC_CONDITION = "wan-10mbit"
CODEC_RATE_MBIT = 10.0


def make_codec_run(k: int, codec: str, repeat: int, rng: np.random.Generator,
                   sweep_id: str = "mobilenet_v2-codecs-20261201T090000Z") -> dict[str, Any]:
    """One schema-v1 run with ``codec`` at split k on a 10 Mbit/s link: the activation crosses
    ``ratio`` times smaller, the sender encodes and the receiver decodes, and ``summary.fidelity``
    says how far the logits are from the unsplit model's (agreement slightly noisy, as measured
    on 160 images; k = 19, where only the logits cross, agrees exactly)."""
    ratio, agreement, codec_s = CODECS[codec] if k < NUM_BLOCKS else (1.0, 1.0, 0.0)
    doc = make_run(k, "lan", "tcp", repeat, rng, sweep_id=sweep_id)
    c0, c1 = doc["summary"]["compute_s"]
    wire = max(1, round(ACTIVATION_BYTES[k] / ratio))
    t0 = 8 * wire / (CODEC_RATE_MBIT * 1e6) * float(rng.lognormal(0.0, 0.03)) + 0.002
    t1 = 8 * RESULT_BYTES / (CODEC_RATE_MBIT * 1e6) + 0.002
    latency = c0 + c1 + t0 + t1 + codec_s + doc["summary"]["queue_wait_s"]
    throughput = BATCH / latency  # window 1
    hops = [{"bytes": wire, "raw_bytes": ACTIVATION_BYTES[k], "transfer_s": t0,
             "encode_s": codec_s / 2, "decode_s": codec_s / 2},
            {"bytes": RESULT_BYTES, "raw_bytes": RESULT_BYTES, "transfer_s": t1,
             "encode_s": 0.0, "decode_s": 0.0}]
    agree = min(1.0, agreement + (float(rng.integers(-1, 2)) / 160 if agreement < 1.0 else 0.0))
    lossy = codec != "none" and k < NUM_BLOCKS
    doc["run_id"] = f"{MODEL}-s{k}-tcp-{CODEC_CONDITION}-{codec}-b{BATCH}-w1-r{repeat}"
    config = doc["config"]
    config.update(codec=codec, window=1, weights={"kind": "file", "path": "mnv2-digits.pt"},
                  input="digits", input_size=32)
    config["network"].update(label=CODEC_CONDITION,
                             configured={"delay_ms": 1.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                                         "rate_mbit": CODEC_RATE_MBIT},
                             measured={"rtt_ms": 2.1, "rate_mbit": 9.6})
    for b in doc["batches"]:
        b.update(latency_s=latency, done_s=b["send_s"] + latency, compute_s=[c0, c1], hops=hops)
    doc["summary"].update(
        throughput_img_s=throughput, throughput_batch_s=throughput / BATCH,
        latency_s={"mean": latency, "p50": latency, "p90": latency, "p99": latency},
        latency_per_image_s={q: latency / BATCH for q in ("mean", "p50", "p90", "p99")},
        hops=[{**h, "ratio": h["raw_bytes"] / h["bytes"]} for h in hops],
        payload_bytes=wire + RESULT_BYTES,
        fidelity={"batches": 20, "images": 160, "agreement_top1": agree,
                  "max_abs_error": 0.04 * ratio if lossy else 0.0,
                  "rel_l2_error": 0.002 * ratio if lossy else 0.0, "reference_classes": 10,
                  "degenerate": None, "accuracy_top1": None, "reference_accuracy_top1": None})
    return doc


def write_codec_sweep(root: Path, seed: int = 0, repeats: int = 2) -> list[Path]:
    """Every split of SPLITS with every codec of CODECS (k = 19 with none only), ``repeats``
    repeats each, under ``root/<sweep-id>/``; returns the files."""
    rng = np.random.default_rng(seed)
    written = []
    for k in SPLITS:
        for codec in CODECS if k < NUM_BLOCKS else ("none",):
            for r in range(repeats):
                doc = make_codec_run(k, codec, r, rng)
                written.append(write_json(root / doc["sweep_id"] / f"{doc['run_id']}.json", doc))
    return written


def legacy_doc(model: str, k: int, delay_ms: float, latency: float, throughput: float,
               size: int, part1: float = 0.1, part2: float = 0.05, net: float = 0.02
               ) -> dict[str, Any]:
    """A file in the original ParetoPipe's ``{model}_split_{k}_metrics.json`` format."""
    return {
        "model_name": model,
        "split_index": k,
        "static_network_delay_ms": delay_ms,
        "system_inference_throughput_imgs_per_s": throughput,
        "average_metrics_per_batch": {
            "part1_inference_time_s": part1,
            "part2_inference_time_s": part2,
            "network_time_s": net,
            "end_to_end_latency_s": latency,
            "intermediate_data_size_bytes": size,
            "network_throughput_mbps": 8 * size / net / 1e6 if net else math.nan,
        },
    }


RPC_CSV_HEADER = ("split_block", "run", "status", "start_time", "end_time", "output_file", "error")


def write_rpc_session(root: Path, model: str = "mobilenetv2", splits: tuple[int, ...] = (3, 10, 17),
                      runs: int = 3, failed: frozenset[tuple[int, int]] = frozenset(),
                      seed: int = 0) -> Path:
    """A session folder as upstream's RPC tester (RPC_PyTorch/automated_split_tester.py) leaves
    it: ``split_test_results.csv`` (one row per split and run, status success/failed) and
    ``consolidated_metrics.json`` (``results: {split: {runN: metrics}}``, split keys strings as
    ``json.dump`` writes int keys), plus ``consolidated_metrics_averaged.json``. Its metrics:
    throughput from the log, latency = batch 8 / throughput (upstream's pipelined formula), the
    static 0.094 ms delay it writes, worker CPU/memory per rank. Returns the session folder."""
    rng = np.random.default_rng(seed)
    session = root / "metrics" / "session_20250801_101500"
    session.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    rows = []
    for k in splits:
        for run in range(1, runs + 1):
            ok = (k, run) not in failed
            rows.append([k, run, "success" if ok else "failed", "2025-08-01 10:15:00",
                         "2025-08-01 10:17:00", f"{session}/split_{k}/run_{run}/output.log",
                         "" if ok else "Orchestrator timed out"])
            throughput = float(13.85 * (0.6 + 0.04 * k) * rng.lognormal(0, 0.03))
            doc = legacy_doc(model, k, 0.094, latency=8 / throughput, throughput=throughput,
                             size=int(8 * 32 * 56 * 56 * 4 / (1 + k)), part1=0.01 * k,
                             part2=0.01 * (19 - k), net=0.004)
            doc["worker_metrics"] = {f"rank{r}": {"avg_cpu_usage_percent": 50.0 + r,
                                                  "avg_memory_usage_mb": 400.0} for r in range(3)}
            results.setdefault(k, {})[f"run{run}"] = doc
    with (session / "split_test_results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(RPC_CSV_HEADER)
        writer.writerows(rows)
    consolidated = {"session_id": "20250801_101500", "timestamp": "2025-08-01T10:40:00",
                    "configuration": {"model": model, "dataset": "cifar10", "batch_size": 8,
                                      "num_samples": 100, "pipelining": True, "world_size": 3},
                    "device_mapping": {"rank0": "orchestrator (local)", "rank1": "master-pi",
                                       "rank2": "core-pi"},
                    "results": results}
    (session / "consolidated_metrics.json").write_text(json.dumps(consolidated, indent=2))
    averaged = {**consolidated, "results": {k: runs_[next(iter(runs_))]
                                            for k, runs_ in results.items()}}
    (session / "consolidated_metrics_averaged.json").write_text(json.dumps(averaged, indent=2))
    return session
