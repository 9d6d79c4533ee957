"""Shard round trip, partial loading, and corrupt or missing files."""

from __future__ import annotations

import json

import pytest
import torch

from paretopipe.errors import ShardError
from paretopipe.models import build_model
from paretopipe.shards import load_stage, read_manifest, write_shards
from paretopipe.splitting import build_stages, num_blocks


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards("resnet18", out, seed=5, input_size=64)
    return out


def test_manifest_describes_the_shards(shard_dir):
    manifest = read_manifest(shard_dir)
    assert manifest["model"] == "resnet18" and manifest["num_classes"] == 10
    assert manifest["input_size"] == 64 and manifest["weights"] == {"kind": "random", "seed": 5}
    assert len(manifest["blocks"]) == num_blocks("resnet18")
    assert all(len(b["sha256"]) == 64 for b in manifest["blocks"])
    assert manifest["paretopipe_version"]


@pytest.mark.parametrize("splits", [[0], [6], [15], [3, 9]])
def test_round_trip_matches_the_model(shard_dir, splits):
    root = build_model("resnet18", seed=5)
    expected = build_stages("resnet18", splits, root=root)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        y_ref, y = x, x
        for i, ref_stage in enumerate(expected):
            stage = load_stage(shard_dir, splits, i)
            y_ref, y = ref_stage(y_ref), stage(y)
            torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


def test_stage_loads_only_its_blocks(shard_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    manifest = read_manifest(shard_dir)
    (partial / "manifest.json").write_text(json.dumps(manifest))
    for entry in manifest["blocks"][10:]:
        (partial / entry["file"]).write_bytes((shard_dir / entry["file"]).read_bytes())
    stage = load_stage(partial, [10], 1)  # the tail needs blocks 10.. only
    assert sum(p.numel() for p in stage.parameters()) > 0
    with pytest.raises(ShardError, match=r"block-000\.safetensors.*missing"):
        load_stage(partial, [10], 0)


def test_corrupt_shard_is_named(shard_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in shard_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    target = bad / "block-004.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"block-004\.safetensors.*corrupt"):
        load_stage(bad, [8], 0)
    load_stage(bad, [8], 1)  # the tail does not touch block 4


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ShardError, match="paretopipe shard"):
        read_manifest(tmp_path)
