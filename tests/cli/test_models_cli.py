"""The models/splits/verify/shard commands, run as a user runs them."""

from __future__ import annotations

import json

import pytest
import torch

from paretopipe.models import build_model
from tests.conftest import run_cli


def _one_line_error(proc) -> str:
    """A user mistake gives exactly one error line on stderr, no traceback, and a non-zero exit."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("paretopipe: error: ")
    return lines[0]


def test_models_json():
    proc = run_cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"mobilenet_v2", "resnet18", "resnet50", "vgg16", "alexnet", "inception_v3"}
    assert rows["inception_v3"]["input_size"] == 299 and rows["vgg16"]["num_classes"] == 10
    assert rows["vgg16"]["split_points"] >= 32


def test_splits_json_has_the_documented_fields():
    proc = run_cli("splits", "resnet18", "--batch-size", "8", "--json", "--num-classes", "100")
    assert proc.returncode == 0, proc.stderr
    points = json.loads(proc.stdout)
    keys = {"index", "boundary", "shape", "bytes", "params_head", "params_tail", "flops_head", "flops_tail"}
    assert all(keys <= set(p) for p in points)
    assert [p["index"] for p in points] == list(range(len(points)))
    assert points[0]["shape"] == [8, 3, 224, 224] and points[0]["bytes"] == 8 * 3 * 224 * 224 * 4
    assert points[-1]["shape"] == [8, 100]


def test_verify_passes_and_prints_each_split():
    proc = run_cli("verify", "alexnet", "--input-size", "63", "--splits", "0,5,22")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("max abs diff") == 3 and "reproduce the unsplit output" in proc.stdout


def test_shard_command_writes_manifest(tmp_path):
    proc = run_cli("shard", "alexnet", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model"] == "alexnet" and len(manifest["blocks"]) >= 13


def test_unknown_model_is_one_line_listing_valid_names():
    line = _one_line_error(run_cli("splits", "resnet19"))
    assert "resnet18" in line and "mobilenet_v2" in line


def test_out_of_range_split_is_one_line():
    line = _one_line_error(run_cli("verify", "resnet18", "--splits", "3,99"))
    assert "split 99 is out of range for resnet18 (valid: 0..15)" in line


def test_wrong_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save(build_model("resnet18", num_classes=1000).state_dict(), path)
    line = _one_line_error(run_cli("verify", "resnet18", "--weights", str(path), "--splits", "0"))
    assert "fc.weight" in line


@pytest.mark.slow  # four CLI processes, each importing torch
def test_verify_from_shards_and_corrupt_shard_is_one_line(tmp_path):
    out = tmp_path / "s"
    assert run_cli("shard", "alexnet", "--out", str(out), "--seed", "4").returncode == 0
    good = run_cli("verify", "alexnet", "--seed", "4", "--input-size", "63", "--splits", "0,7", "--shards", str(out))
    assert good.returncode == 0, good.stderr
    (out / "block-002.safetensors").write_bytes(b"junk")
    line = _one_line_error(
        run_cli("verify", "alexnet", "--seed", "4", "--input-size", "63", "--splits", "7", "--shards", str(out))
    )
    assert "block-002.safetensors" in line and "corrupt" in line
    line = _one_line_error(run_cli("verify", "alexnet", "--splits", "7", "--shards", str(out)))
    assert "--seed" in line  # shards made with seed 4, verified against seed 0
