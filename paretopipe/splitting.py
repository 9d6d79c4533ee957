"""Split points of a model and the stage modules for a chosen split. No I/O.

How a model is cut:

1. The model is traced with ``torch.fx`` (on the ``meta`` device: no weights, no compute).
2. Every compute node is given a *block key*: the module path of the code that runs it, cut at
   the first module that is not a plain container. ``features.7.conv.0`` becomes ``features.7``
   (``features`` is an ``nn.Sequential``), ``layer3.1.conv2`` becomes ``layer3.1``. Functional
   calls in the model's own ``forward`` (``torch.flatten``) are blocks of their own.
3. Consecutive nodes with the same key form a segment; a boundary between two segments is a
   *split point* when exactly one tensor crosses it (nothing else computed before it is used
   after it). Segments between two split points are merged into one block.
4. Split index ``k`` means "blocks ``[0, k)`` run on the first device": ``k = 0`` sends the raw
   input, ``k = N`` keeps everything local and sends the logits.

A stage is a ``torch.fx.GraphModule`` over the original model's submodules, so its state_dict
keys are the model's own keys, which is what the shard files store.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from paretopipe.errors import ConfigError, SplitError
from paretopipe.models import DEFAULT_NUM_CLASSES, DEFAULT_SEED, get_model_info

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    import torch.fx as fx


@dataclass(frozen=True)
class Block:
    """A run of graph nodes between two consecutive split points."""

    index: int
    name: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class SplitPoint:
    """One place to cut: blocks ``[0, index)`` on the first device."""

    index: int
    boundary: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    params_head: int
    params_tail: int
    flops_head: int
    flops_tail: int

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "boundary": self.boundary,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.bytes,
            "params_head": self.params_head,
            "params_tail": self.params_tail,
            "flops_head": self.flops_head,
            "flops_tail": self.flops_tail,
        }


class BlockGraph:
    """A traced model cut into blocks. Built from a meta-device model: structure only."""

    def __init__(self, name: str, traced: fx.GraphModule, blocks: list[Block], crossing: list[str]):
        self.name = name
        self.traced = traced
        self.blocks = blocks
        self.crossing = crossing  # node name of the tensor crossing at k = 0..N
        self._nodes = {n.name: n for n in traced.graph.nodes}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check_splits(self, splits: Sequence[int]) -> list[int]:
        n = self.num_blocks
        result = []
        for k in splits:
            if isinstance(k, bool) or not isinstance(k, int):
                raise SplitError(f"split {k!r} is not an integer; see `paretopipe splits {self.name}`")
            if not 0 <= k <= n:
                raise SplitError(
                    f"split {k} is out of range for {self.name} (valid: 0..{n}); "
                    f"see `paretopipe splits {self.name}`"
                )
            result.append(k)
        if any(b < a for a, b in zip(result, result[1:])):
            raise SplitError(
                f"split indices must not decrease along the device chain (got {list(splits)})"
            )
        return result

    def bounds(self, splits: Sequence[int]) -> list[tuple[int, int]]:
        """Block ranges ``[a, b)`` of each stage for these split indices."""
        ks = [0, *self.check_splits(splits), self.num_blocks]
        return list(zip(ks, ks[1:]))

    def stage_graph(self, start: int, stop: int) -> fx.Graph:
        """The graph of blocks ``[start, stop)``: one tensor in, one tensor out."""
        import torch.fx as fx

        graph = fx.Graph()
        env: dict[str, fx.Node] = {}
        first = self._nodes[self.crossing[start]]
        env[first.name] = graph.placeholder("x")

        def lookup(node: fx.Node) -> fx.Node:
            if node.name not in env:
                if node.op != "get_attr":  # cannot happen for a valid cut
                    raise SplitError(f"{self.name}: value {node.name} crosses a split point")
                env[node.name] = graph.node_copy(node, lookup)
            return env[node.name]

        for block in self.blocks[start:stop]:
            for name in block.nodes:
                node = self._nodes[name]
                env[name] = graph.node_copy(node, lookup)
        graph.output(env[self.crossing[stop]])
        graph.lint()
        return graph

    def stage_module(self, root: torch.nn.Module, start: int, stop: int) -> fx.GraphModule:
        import torch.fx as fx

        module = fx.GraphModule(root, self.stage_graph(start, stop), class_name=f"Stage_{start}_{stop}")
        return module.eval()


# --- decomposition -----------------------------------------------------------------------------

_CONTAINERS: tuple[type, ...] = ()


def _containers() -> tuple[type, ...]:
    global _CONTAINERS
    if not _CONTAINERS:
        import torch.nn as nn

        _CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return _CONTAINERS


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return str(path)
    return ""


def _block_key(root: torch.nn.Module, node: fx.Node) -> str:
    path = _module_path(node)
    if not path:
        return node.name  # a functional call in the model's own forward
    parts = path.split(".")
    module = root
    for i, part in enumerate(parts):
        module = getattr(module, part)
        if type(module) not in _containers():
            return ".".join(parts[: i + 1])
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _decompose(name: str, model: torch.nn.Module, sample: torch.Tensor) -> BlockGraph:
    import torch.fx as fx

    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:
        raise SplitError(
            f"cannot cut {name}: torch.fx could not trace its graph ({_first_line(exc)}); "
            "models with data-dependent control flow have no static split points"
        ) from exc
    _propagate(traced, sample, SplitError, f"cannot cut {name}: shape propagation failed at input {tuple(sample.shape)}")

    nodes = list(traced.graph.nodes)
    by_name = {n.name: n for n in nodes}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1]
    if len(placeholders) != 1:
        raise SplitError(f"cannot cut {name}: its forward takes {len(placeholders)} inputs, not one")
    result = output.args[0]
    if not isinstance(result, fx.Node) or not isinstance(result.meta.get("tensor_meta"), _tensor_meta_type()):
        raise SplitError(f"cannot cut {name}: its forward does not return a single tensor in eval mode")

    compute = [n for n in nodes if n.op in ("call_module", "call_function", "call_method")]
    if not compute:
        raise SplitError(f"cannot cut {name}: its graph has no operations")
    position = {n.name: i for i, n in enumerate(compute)}
    keys = [_block_key(model, n) for n in compute]

    # A key that appears twice with others in between holds everything between together.
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_seen.setdefault(key, i)
        last_seen[key] = i
    spanned = [0] * (len(compute) + 1)
    for key in first_seen:
        spanned[first_seen[key] + 1] += 1
        spanned[last_seen[key] + 1] -= 1
    open_intervals = 0
    held = []  # held[i]: the gap after compute[i] lies inside some key's span
    for i in range(len(compute)):
        open_intervals += spanned[i + 1]
        held.append(open_intervals > 0)

    # Last use (as a compute position, or len(compute) for the output) of every value.
    last_use: dict[str, int] = {}
    for n in nodes:
        if n.op == "get_attr":
            continue
        uses = [position.get(u.name, len(compute)) for u in n.users]
        last_use[n.name] = max(uses) if uses else -1
    defined_at = {placeholders[0].name: -1, **position}

    def crossing_after(i: int) -> list[str]:
        return [v for v, d in defined_at.items() if d <= i < last_use.get(v, -1)]

    cuts = []  # gap indices i: cut after compute[i]
    for i in range(len(compute) - 1):
        if keys[i] == keys[i + 1] or held[i]:
            continue
        live = crossing_after(i)
        if len(live) == 1 and isinstance(
            by_name[live[0]].meta.get("tensor_meta"), _tensor_meta_type()
        ):
            cuts.append(i)

    blocks: list[Block] = []
    crossing = [placeholders[0].name]
    start = 0
    for stop in [*(c + 1 for c in cuts), len(compute)]:
        seg_keys = list(dict.fromkeys(keys[start:stop]))
        label = seg_keys[0] if len(seg_keys) == 1 else f"{seg_keys[0]}..{seg_keys[-1]}"
        blocks.append(Block(len(blocks), label, tuple(n.name for n in compute[start:stop])))
        crossing.append(crossing_after(stop - 1)[0] if stop < len(compute) else result.name)
        start = stop
    return BlockGraph(name, traced, blocks, crossing)


def _propagate(traced: fx.GraphModule, sample: torch.Tensor, error: type[Exception], what: str) -> None:
    """Record every node's output shape and dtype (``node.meta["tensor_meta"]``)."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.inference_mode(False), torch.no_grad():
            ShapeProp(traced).propagate(sample)
    except Exception as exc:
        raise error(f"{what}: {_first_line(exc)}") from exc


def _tensor_meta_type() -> type:
    from torch.fx.passes.shape_prop import TensorMetadata

    return TensorMetadata


def _meta_model(name: str, num_classes: int) -> torch.nn.Module:
    import torch

    from paretopipe.models import build_model

    # Structure only: never inference tensors (a caller may be inside inference_mode), no grads.
    with torch.inference_mode(False):
        try:
            with torch.device("meta"):
                model = build_model(name, num_classes=num_classes)
        except NotImplementedError:
            # A few builders read tensor values while initialising (regnet); those get a real
            # (seeded, CPU) model: slower, same structure.
            model = build_model(name, num_classes=num_classes)
    return model.requires_grad_(False)


def _sample(model: torch.nn.Module, *shape: int) -> torch.Tensor:
    import torch

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.inference_mode(False):
        return torch.zeros(*shape, device=device)


@functools.lru_cache(maxsize=32)
def block_graph(name: str, num_classes: int = DEFAULT_NUM_CLASSES) -> BlockGraph:
    """The block decomposition of ``name`` (cached; structure only, no weights)."""

    info = get_model_info(name)
    size = max(info.min_input_size, 64)
    model = _meta_model(name, num_classes)
    sample = _sample(model, 2, 3, size, size)
    return _decompose(name, model, sample)


def num_blocks(model: str, *, num_classes: int = DEFAULT_NUM_CLASSES) -> int:
    """N, the number of blocks: split indices range over ``0..N``."""
    return block_graph(model, num_classes).num_blocks


# --- shapes, bytes, parameters and FLOPs ------------------------------------------------------------


def _check_input_size(model: str, input_size: int | None) -> int:
    info = get_model_info(model)
    size = info.input_size if input_size is None else input_size
    if size < info.min_input_size:
        raise ConfigError(
            f"input size {size} is too small for {model} (minimum {info.min_input_size})"
        )
    return size


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1 (got {batch_size})")
    return batch_size


@functools.lru_cache(maxsize=64)
def _profile_blocks(
    model: str, num_classes: int, input_size: int, batch_size: int
) -> tuple[list[tuple[tuple[int, ...], str, int]], list[int], list[frozenset[str]]]:
    """Per crossing: (shape, dtype, bytes); per block: FLOPs and parameter names."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    graph = block_graph(model, num_classes)
    meta_model = _meta_model(model, num_classes)
    x = _sample(meta_model, batch_size, 3, input_size, input_size)
    traced = graph.traced
    _propagate(traced, x, ConfigError, f"{model} cannot run at input size {input_size}")
    by_name = {n.name: n for n in traced.graph.nodes}
    crossings = []
    for name in graph.crossing:
        meta = by_name[name].meta["tensor_meta"]
        shape = tuple(int(d) for d in meta.shape)
        elem = torch.empty((), dtype=meta.dtype).element_size()
        numel = 1
        for d in shape:
            numel *= d
        crossings.append((shape, str(meta.dtype).removeprefix("torch."), numel * elem))
    flops: list[int] = []
    params: list[frozenset[str]] = []
    for b in range(graph.num_blocks):
        stage = graph.stage_module(meta_model, b, b + 1)
        shape, _, _ = crossings[b]
        with torch.inference_mode(False), torch.no_grad(), FlopCounterMode(display=False) as counter:
            stage(_sample(meta_model, *shape))
        flops.append(int(counter.get_total_flops()))
        params.append(frozenset(name for name, _ in stage.named_parameters()))
    return crossings, flops, params


def split_points(
    model: str,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    input_size: int | None = None,
    batch_size: int = 1,
) -> list[SplitPoint]:
    """Every split point ``k = 0..N`` of ``model``, with what crosses and what each side holds."""
    size = _check_input_size(model, input_size)
    _check_batch_size(batch_size)
    graph = block_graph(model, num_classes)
    crossings, flops, params = _profile_blocks(model, num_classes, size, batch_size)
    sizes = _param_sizes(model, num_classes)
    points = []
    n = graph.num_blocks
    for k in range(n + 1):
        head = frozenset().union(*params[:k]) if k else frozenset()
        tail = frozenset().union(*params[k:]) if k < n else frozenset()
        shape, dtype, nbytes = crossings[k]
        points.append(
            SplitPoint(
                index=k,
                boundary="input" if k == 0 else graph.blocks[k - 1].name,
                shape=shape,
                dtype=dtype,
                bytes=nbytes,
                params_head=sum(sizes[p] for p in head),
                params_tail=sum(sizes[p] for p in tail),
                flops_head=sum(flops[:k]),
                flops_tail=sum(flops[k:]),
            )
        )
    return points


@functools.lru_cache(maxsize=32)
def _param_sizes(model: str, num_classes: int) -> dict[str, int]:
    return {name: p.numel() for name, p in _meta_model(model, num_classes).named_parameters()}


def block_names(model: str, *, num_classes: int = DEFAULT_NUM_CLASSES) -> list[str]:
    return [b.name for b in block_graph(model, num_classes).blocks]


def stage_io_shapes(
    model: str,
    splits: Sequence[int],
    stage_index: int,
    *,
    batch_size: int,
    input_size: int | None = None,
    num_classes: int = DEFAULT_NUM_CLASSES,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output shapes of one stage of a chain."""
    size = _check_input_size(model, input_size)
    _check_batch_size(batch_size)
    bounds = block_graph(model, num_classes).bounds(splits)
    if not 0 <= stage_index < len(bounds):
        raise SplitError(
            f"stage {stage_index} does not exist: {len(bounds)} stages for splits {list(splits)}"
        )
    crossings, _, _ = _profile_blocks(model, num_classes, size, batch_size)
    start, stop = bounds[stage_index]
    return crossings[start][0], crossings[stop][0]


def build_stages(
    model: str,
    splits: Sequence[int],
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    weights: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    root: torch.nn.Module | None = None,
) -> list[torch.nn.Module]:
    """The ``len(splits) + 1`` stage modules of a device chain, in eval mode.

    Stage ``i`` maps the tensor crossing at ``splits[i-1]`` (the raw input for stage 0) to the
    tensor crossing at ``splits[i]`` (the logits for the last stage). ``root`` reuses an
    already-built model instead of building one from ``weights``/``seed``.
    """
    from paretopipe.models import build_model

    graph = block_graph(model, num_classes)
    bounds = graph.bounds(splits)
    if root is None:
        root = build_model(model, num_classes=num_classes, weights=weights, seed=seed)
    return [graph.stage_module(root, a, b) for a, b in bounds]
