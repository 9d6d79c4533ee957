"""Every split point composes to the unsplit model; the reported bytes are the real ones."""

from __future__ import annotations

import pytest
import torch

from paretopipe.errors import ConfigError, SplitError
from paretopipe.models import build_model
from paretopipe.splitting import block_graph, build_stages, num_blocks, split_points, stage_io_shapes

# Small inputs keep CI fast; each is at or above the architecture's minimum.
NAMED = {
    "mobilenet_v2": 32,
    "resnet18": 32,
    "resnet50": 32,
    "vgg16": 32,
    "alexnet": 63,
    "inception_v3": 75,
}
# Interior split points of the original ParetoPipe, which we must at least match.
ORIGINAL_INTERIOR = {
    "mobilenet_v2": 18,
    "resnet18": 8,
    "resnet50": 16,
    "vgg16": 30,
    "alexnet": 12,
    "inception_v3": 19,
}
OTHERS = {"squeezenet1_1": 64, "shufflenet_v2_x0_5": 64, "densenet121": 64, "efficientnet_b0": 64, "regnet_y_400mf": 64}


def _compose(stages, x):
    for stage in stages:
        x = stage(x)
    return x


def _check_every_split(model: str, size: int) -> None:
    root = build_model(model, seed=1)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        reference = root(x)
        for k in range(num_blocks(model) + 1):
            out = _compose(build_stages(model, [k], root=root), x)
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-5, msg=f"{model} split {k}")


@pytest.mark.parametrize("model", sorted(NAMED))
def test_named_model_every_split_composes(model):
    _check_every_split(model, NAMED[model])


@pytest.mark.parametrize("model", sorted(OTHERS))
def test_other_torchvision_classifiers_every_split_composes(model):
    assert num_blocks(model) >= 3
    _check_every_split(model, OTHERS[model])


@pytest.mark.parametrize("model", sorted(ORIGINAL_INTERIOR))
def test_at_least_as_many_interior_points_as_the_original(model):
    assert num_blocks(model) - 1 >= ORIGINAL_INTERIOR[model]


def test_boundaries_use_module_paths():
    names = [p.boundary for p in split_points("resnet18")]
    assert names[0] == "input"
    assert "layer3.1" in names and names[-1] == "fc"
    vgg = [p.boundary for p in split_points("vgg16")]
    assert "features.7" in vgg
    mobilenet = [p.boundary for p in split_points("mobilenet_v2")]
    assert "features.17" in mobilenet


@pytest.mark.parametrize("model,size,batch", [("resnet18", 64, 3), ("mobilenet_v2", 64, 2), ("alexnet", 96, 4)])
def test_reported_bytes_and_shapes_equal_real_tensors(model, size, batch):
    root = build_model(model)
    points = split_points(model, input_size=size, batch_size=batch)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        for p in points:
            head, _tail = build_stages(model, [p.index], root=root)
            out = head(x)
            assert tuple(out.shape) == p.shape, p
            assert out.numel() * out.element_size() == p.bytes, p
            assert str(out.dtype) == f"torch.{p.dtype}"


def test_params_and_flops_are_split_consistently():
    points = split_points("resnet18", input_size=64)
    total_params = sum(p.numel() for p in build_model("resnet18").parameters())
    for p in points:
        assert p.params_head + p.params_tail == total_params
        assert p.flops_head + p.flops_tail == points[0].flops_tail
    assert points[0].params_head == 0 and points[-1].params_tail == 0
    heads = [p.flops_head for p in points]
    assert heads == sorted(heads) and heads[-1] > 0


def test_three_stage_chain_composes():
    root = build_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    stages = build_stages("resnet18", [3, 9], root=root)
    assert len(stages) == 3
    with torch.inference_mode():
        torch.testing.assert_close(_compose(stages, x), root(x), rtol=0, atol=1e-5)
    shapes = [stage_io_shapes("resnet18", [3, 9], i, batch_size=1, input_size=64) for i in range(3)]
    assert shapes[0][0] == (1, 3, 64, 64) and shapes[2][1] == (1, 10)
    assert shapes[0][1] == shapes[1][0] and shapes[1][1] == shapes[2][0]


def test_out_of_range_and_decreasing_splits_are_errors():
    n = num_blocks("resnet18")
    with pytest.raises(SplitError, match=rf"valid: 0\.\.{n}"):
        build_stages("resnet18", [n + 1])
    with pytest.raises(SplitError, match="must not decrease"):
        block_graph("resnet18").bounds([5, 2])


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="mobilenet_v2, resnet18"):
        split_points("resnet19")


def test_input_too_small_is_an_error():
    with pytest.raises(ConfigError, match="minimum 75"):
        split_points("inception_v3", input_size=64)


def test_model_that_cannot_be_cut_says_why(monkeypatch):
    import torch.fx

    def refuse(*_a, **_k):
        raise torch.fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")

    block_graph.cache_clear()
    monkeypatch.setattr(torch.fx, "symbolic_trace", refuse)
    try:
        with pytest.raises(SplitError, match="could not trace.*control flow"):
            block_graph("alexnet")
    finally:
        block_graph.cache_clear()
