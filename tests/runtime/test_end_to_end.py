"""Whole sessions on loopback: real worker processes, the source in-process."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from paretopipe.cli import main as cli_main
from paretopipe.errors import ConfigError, StageError
from paretopipe.results import read_result, validate_result
from paretopipe.runtime.source import RunConfig, run

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1, "connect_timeout_s": 30,
         "timeout_s": 30}


def _cfg(tmp_path: Path, name: str, **kw) -> RunConfig:
    opts = {**SMALL, "batches": 3, **kw}
    return RunConfig(out=tmp_path / f"{name}.json", **opts)


def test_two_stages_match_unsplit_model_and_file_follows_schema(shared_workers, tmp_path):
    w1, _ = shared_workers
    doc = run(_cfg(tmp_path, "two", model="resnet18", splits=(5,), stages=(w1.address,), check=True,
                   network_label="lan", network={"configured": {"delay_ms": 1.0}, "measured": None, "extra": {"k": 1}}))
    assert doc["status"] == "ok"
    assert doc["check"]["ok"] and doc["check"]["max_abs_diff"] <= 1e-5 and doc["check"]["batches"] == 3
    on_disk = read_result(tmp_path / "two.json")
    assert validate_result(on_disk) == []
    assert on_disk["run_id"] == "resnet18-s5-tcp-lan-b2-w1-r0"
    cfg = on_disk["config"]
    assert cfg["splits"] == [5] and cfg["num_blocks"] == 15 and cfg["input_size"] == 64
    assert cfg["stages"][1]["address"] == w1.address and cfg["stages"][1]["blocks"] == [5, 15]
    assert cfg["network"] == {"label": "lan", "configured": {"delay_ms": 1.0}, "measured": None, "extra": {"k": 1}}
    assert cfg["weights"] == {"kind": "random", "seed": 0}
    batches = on_disk["batches"]
    assert [b["batch_id"] for b in batches] == [1, 2, 3]  # warm-up batch 0 excluded
    assert batches[0]["send_s"] == 0.0
    for b in batches:
        assert b["done_s"] > b["send_s"] and b["latency_s"] > 0
        assert len(b["compute_s"]) == 2 and all(c > 0 for c in b["compute_s"])
        # hop 0 carries resnet18's activation after block 5 (64px input), hop 1 the logits back
        assert [h["bytes"] for h in b["hops"]] == [2 * 64 * 16 * 16 * 4, 2 * 10 * 4]
        # one machine, one clock: the offset-corrected transfer times must come out positive
        assert all(0 < h["transfer_s"] < b["latency_s"] for h in b["hops"])
        parts = sum(b["compute_s"]) + sum(h["transfer_s"] for h in b["hops"]) + b["queue_wait_s"]
        assert parts <= b["latency_s"] * 1.05  # the parts cannot add up to more than the whole
    summary = on_disk["summary"]
    assert summary["throughput_img_s"] > 0 and summary["payload_bytes"] == 2 * 64 * 16 * 16 * 4 + 80
    assert summary["accuracy_top1"] is None  # no labels
    stages = summary["stages"]
    assert [s["index"] for s in stages] == [0, 1]
    assert all(s["peak_rss_bytes"] > 0 and s["cpu_percent"] is not None for s in stages)
    assert "gpu_util_percent" not in stages[1]  # CPU stage: no GPU fields
    env = on_disk["environment"]["stages"]
    assert len(env) == 2 and env[1]["torch"] == torch.__version__ and env[1]["cores"] >= 1
    assert on_disk["validity"]["counted_batches"] == 3 and on_disk["validity"]["valid"]
    # host contention over the loop: both stages share this kernel, so they are the run's own CPU
    cont = summary["contention"]
    assert cont["wall_s"] > 0 and cont["host_busy_cpu_s"] >= 0 and cont["run_cpu_s"] > 0
    assert cont["others_cpu_s"] == max(cont["host_busy_cpu_s"] - cont["run_cpu_s"], 0.0)
    assert isinstance(cont["contended"], bool) and (cont["reason"] is None) != cont["contended"]


def test_three_stages_pipelined_match_unsplit_model(shared_workers, tmp_path):
    w1, w2 = shared_workers
    doc = run(_cfg(tmp_path, "three", model="mobilenet_v2", splits=(4, 12), stages=(w1.address, w2.address),
                   window=3, batches=6, check=True))
    assert doc["check"]["ok"], doc["check"]
    assert validate_result(doc) == []
    assert len(doc["batches"]) == 6 and all(len(b["hops"]) == 3 for b in doc["batches"])
    assert doc["config"]["stages"][2]["blocks"] == [12, 23]


def test_duration_mode(shared_workers, tmp_path):
    w1, _ = shared_workers
    doc = run(_cfg(tmp_path, "dur", model="resnet18", splits=(5,), stages=(w1.address,), batches=None,
                   duration_s=1.0, window=2, min_duration_s=0.5))
    assert doc["config"]["batches"] is None and doc["config"]["duration_s"] == 1.0
    v = doc["validity"]
    assert v["counted_batches"] == len(doc["batches"]) >= 1
    assert v["duration_s"] >= 0.5 and v["min_duration_met"]


def test_stage_is_cached_between_sessions(shared_workers, tmp_path):
    w1, _ = shared_workers
    for i in range(2):
        run(_cfg(tmp_path, f"cache{i}", model="resnet18", splits=(7,), stages=(w1.address,), batches=1))
    assert "stage 1 of resnet18 reused from the previous session" in w1.log()


def test_end_splits_run_everything_on_one_side(shared_workers, tmp_path):
    w1, _ = shared_workers
    for k in (0, 15):  # everything offloaded; everything local (the worker is the identity)
        doc = run(_cfg(tmp_path, f"end{k}", model="resnet18", splits=(k,), stages=(w1.address,), batches=2, check=True))
        assert doc["check"]["ok"]


def test_cli_run_refuses_existing_out_before_any_work(tmp_path, capsys):
    out = tmp_path / "taken.json"
    out.write_text("{}")
    rc = cli_main(["run", "--model", "resnet18", "--split", "5", "--stages", "127.0.0.1:1", "--out", str(out)])
    assert rc != 0
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_stages_must_match_splits(tmp_path):
    with pytest.raises(ConfigError, match="2 stages"):
        run(_cfg(tmp_path, "bad", model="resnet18", splits=(5,), stages=("127.0.0.1:1", "127.0.0.1:2")))


def test_worker_may_start_after_the_source(start_worker, tmp_path):
    from paretopipe.runtime.sweep import free_port

    port = free_port()
    timer = threading.Timer(1.0, lambda: start_worker(port=port, wait=False))
    timer.start()
    try:
        doc = run(_cfg(tmp_path, "late", model="resnet18", splits=(5,), stages=(f"127.0.0.1:{port}",), batches=1))
    finally:
        timer.join()
    assert doc["status"] == "ok"


def test_token_auth(start_worker, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    worker = start_worker("--token-file", str(token))
    doc = run(_cfg(tmp_path, "tok", model="resnet18", splits=(5,), stages=(worker.address,), batches=1,
                   token_file=str(token)))
    assert doc["status"] == "ok"
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    with pytest.raises(StageError, match="refused our token"):
        run(_cfg(tmp_path, "tok-wrong", model="resnet18", splits=(5,), stages=(worker.address,), batches=1,
                 token_file=str(wrong)))
    with pytest.raises(StageError, match="requires a token"):
        run(_cfg(tmp_path, "tok-none", model="resnet18", splits=(5,), stages=(worker.address,), batches=1))
    log = worker.wait_log("wrong token")
    assert "authentication failed" in log
    # still serving
    doc = run(_cfg(tmp_path, "tok2", model="resnet18", splits=(5,), stages=(worker.address,), batches=1,
                   token_file=str(token)))
    assert doc["status"] == "ok"


def _write_cifar_batch(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, size=n)]
    with open(path, "wb") as fh:  # the data set's own python-batches format
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                     b"filenames": [b"img%d.png" % i for i in range(n)]}, fh)
    return data, labels


def test_cifar10_input_with_trained_weights_reports_accuracy(shared_workers, tmp_path):
    from paretopipe.models import build_model
    from paretopipe.runtime.inputs import open_input

    w1, _ = shared_workers
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_cifar_batch(folder / "test_batch", 10)
    ckpt = tmp_path / "weights.pt"
    torch.save(build_model("resnet18", num_classes=10, seed=3).state_dict(), ckpt)
    cfg = _cfg(tmp_path, "cifar", model="resnet18", splits=(5,), stages=(w1.address,), batches=4,
               input=f"cifar10:{folder}", weights=str(ckpt), check=True)
    doc = run(cfg)
    assert doc["config"]["weights"]["kind"] == "file" and len(doc["config"]["weights"]["sha256"]) == 64
    # expected accuracy from the unsplit model on the same (wrapping) batches 1..4
    model = build_model("resnet18", num_classes=10, weights=ckpt)
    src = open_input(f"cifar10:{folder}", batch_size=2, input_size=64, seed=0)
    hits = 0
    with torch.inference_mode():
        for i in range(1, 5):
            b = src.batch(i)
            hits += int((model(b.images).argmax(1) == b.labels).sum())
    assert doc["summary"]["accuracy_top1"] == pytest.approx(hits / 8)
    assert doc["check"]["ok"]


def test_cifar10_reader_rejects_foreign_pickles(tmp_path):
    from paretopipe.runtime.inputs import open_input

    bad = tmp_path / "evil"
    with open(bad, "wb") as fh:
        pickle.dump({b"data": threading.Lock}, fh)  # would import an arbitrary global
    with pytest.raises(ConfigError, match="not a CIFAR-10 python batch"):
        open_input(f"cifar10:{bad}", batch_size=2, input_size=32, seed=0)


def test_folder_input(tmp_path):
    from PIL import Image

    from paretopipe.runtime.inputs import open_input

    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40 + i * 10, 30), color).save(tmp_path / cls / f"{i}.png")
    src = open_input(f"folder:{tmp_path}", batch_size=3, input_size=24, seed=0)
    b = src.batch(0)
    assert tuple(b.images.shape) == (3, 3, 24, 24) and b.labels.tolist() == [0, 0, 1]
    assert src.batch(1).labels.tolist() == [1, 0, 0]  # wraps around
    with pytest.raises(ConfigError):
        open_input("folder:/nonexistent", batch_size=1, input_size=24, seed=0)
    with pytest.raises(ConfigError, match="synthetic, digits, cifar10:PATH or folder:PATH"):
        open_input("imagenet", batch_size=1, input_size=24, seed=0)


def test_network_json_from_cli(shared_workers, tmp_path):
    w1, _ = shared_workers
    net = tmp_path / "net.json"
    net.write_text(json.dumps({"configured": {"rate_mbit": 5}, "measured": {"rtt_ms": 0.1}, "extra": {"via": "tbf"}}))
    out = tmp_path / "cli.json"
    rc = cli_main(["run", "--model", "resnet18", "--split", "5", "--stages", w1.address, "--batches", "2",
                   "--warmup", "0", "--input-size", "64", "--batch-size", "2", "--threads", "1",
                   "--network-label", "slow", "--network-json", f"@{net}", "--sweep-id", "sw1", "--repeat", "2",
                   "--out", str(out)])
    assert rc == 0
    doc = read_result(out)
    assert doc["sweep_id"] == "sw1" and doc["config"]["repeat"] == 2
    assert doc["config"]["network"]["measured"] == {"rtt_ms": 0.1}
    assert not doc["validity"]["valid"] and not doc["validity"]["min_batches_met"]  # 2 < default 20
