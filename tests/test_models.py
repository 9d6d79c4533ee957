"""Weights: seeded random init, or a checkpoint that must fit."""

from __future__ import annotations

import pytest
import torch

from paretopipe.errors import ConfigError
from paretopipe.models import build_model, get_model_info, model_names, weights_spec


def test_named_models_and_sizes():
    assert model_names() == ["mobilenet_v2", "resnet18", "resnet50", "vgg16", "alexnet", "inception_v3"]
    assert get_model_info("inception_v3").input_size == 299
    assert get_model_info("resnet18").input_size == 224


def test_seeded_random_init_is_reproducible():
    a = build_model("resnet18", seed=3).state_dict()
    b = build_model("resnet18", seed=3).state_dict()
    c = build_model("resnet18", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_checkpoint_round_trip(tmp_path):
    src = build_model("resnet18", seed=9)
    path = tmp_path / "ck.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    loaded = build_model("resnet18", weights=path, seed=0)
    assert torch.equal(loaded.state_dict()["fc.weight"], src.state_dict()["fc.weight"])
    spec = weights_spec(path)
    assert spec["kind"] == "file" and len(spec["sha256"]) == 64
    assert weights_spec(None, 5) == {"kind": "random", "seed": 5}


def test_wrong_checkpoint_names_mismatched_keys(tmp_path):
    path = tmp_path / "imagenet.pt"
    torch.save(build_model("resnet18", num_classes=1000).state_dict(), path)
    with pytest.raises(ConfigError, match=r"fc\.weight \(1000, 512\) vs \(10, 512\).*--num-classes"):
        build_model("resnet18", weights=path)
    other = tmp_path / "mobilenet.pt"
    torch.save(build_model("mobilenet_v2").state_dict(), other)
    with pytest.raises(ConfigError, match="missing keys: .*unexpected keys"):
        build_model("resnet18", weights=other)


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="cannot read weights file .*garbage.pt"):
        build_model("resnet18", weights=path)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(ConfigError, match="cannot read weights file"):
        build_model("resnet18", weights=path)
