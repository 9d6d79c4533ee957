"""Block weights on disk: one safetensors file per block plus a checksummed ``manifest.json``.

One push of a model's shard directory to a device serves every split point: a stage loads only
the blocks it runs, checks their sha256 against the manifest, and names any missing or corrupt
file. No pickle: safetensors holds raw tensors and the manifest is JSON.

Layout::

    DIR/manifest.json
    DIR/block-000.safetensors   (state_dict entries of block 0, under the model's own key names)
    DIR/block-001.safetensors
    ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretoio.files import write_atomic, write_json_atomic
from paretopipe import __version__
from paretopipe.errors import ShardError
from paretopipe.models import DEFAULT_NUM_CLASSES, DEFAULT_SEED, file_sha256, get_model_info

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
FORMAT = "paretopipe.shards"
FORMAT_VERSION = 1


def write_shards(
    model: str,
    out_dir: str | Path,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    weights: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    input_size: int | None = None,
) -> Path:
    """Write every block's weights of ``model`` under ``out_dir``; returns the manifest path."""
    from safetensors.torch import save as st_save

    from paretopipe.models import build_model, weights_spec
    from paretopipe.splitting import block_graph

    info = get_model_info(model)
    spec = weights_spec(weights, seed)
    graph = block_graph(model, num_classes)
    root = build_model(model, num_classes=num_classes, weights=weights, seed=seed)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShardError(f"cannot create shard directory {str(out)!r}: {exc.strerror}") from exc
    blocks = []
    for block in graph.blocks:
        stage = graph.stage_module(root, block.index, block.index + 1)
        state = {k: v.detach().contiguous() for k, v in stage.state_dict().items()}
        fname = f"block-{block.index:03d}.safetensors"
        data = st_save(state, metadata={"model": model, "block": str(block.index)})
        write_atomic(out / fname, data)
        blocks.append(
            {
                "index": block.index,
                "name": block.name,
                "file": fname,
                "sha256": file_sha256(out / fname),
                "tensors": len(state),
                "bytes": len(data),
            }
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "num_classes": num_classes,
        "input_size": input_size or info.input_size,
        "weights": spec,
        "paretopipe_version": __version__,
        "num_blocks": graph.num_blocks,
        "blocks": blocks,
    }
    path = out / MANIFEST
    write_json_atomic(path, manifest, indent=2)
    return path


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` in ``shard_dir``."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"no {MANIFEST} in {str(shard_dir)!r}; create shards with `paretopipe shard MODEL --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"shard manifest {str(path)!r} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{str(path)!r} is not a paretopipe shard manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{str(path)!r} has shard format version {manifest.get('format_version')!r}; "
            f"this paretopipe reads version {FORMAT_VERSION}: re-create the shards"
        )
    for key in ("model", "num_classes", "num_blocks", "blocks"):
        if key not in manifest:
            raise ShardError(f"shard manifest {str(path)!r} lacks {key!r}")
    return manifest


def _load_block(shard_dir: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = shard_dir / entry["file"]
    if not path.is_file():
        raise ShardError(f"shard file {str(path)!r} (block {entry['index']}) is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ShardError(
            f"shard file {str(path)!r} (block {entry['index']}) is corrupt: sha256 does not match "
            "the manifest; push the shards again"
        )
    try:
        return st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise ShardError(f"shard file {str(path)!r} cannot be read: {exc}") from exc


def load_stage(
    shard_dir: str | Path,
    splits: Sequence[int],
    stage_index: int,
    *,
    device: str = "cpu",
) -> torch.nn.Module:
    """Build stage ``stage_index`` of the chain ``splits`` from shard files, loading only its blocks."""

    from paretopipe.splitting import _meta_model, block_graph

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    model, num_classes = manifest["model"], int(manifest["num_classes"])
    graph = block_graph(model, num_classes)
    if graph.num_blocks != manifest["num_blocks"] or len(manifest["blocks"]) != graph.num_blocks:
        raise ShardError(
            f"shards in {str(shard_dir)!r} have {manifest['num_blocks']} blocks but {model} has "
            f"{graph.num_blocks} in this paretopipe version; re-create them with `paretopipe shard`"
        )
    bounds = graph.bounds(splits)
    if not 0 <= stage_index < len(bounds):
        from paretopipe.errors import SplitError

        raise SplitError(f"stage {stage_index} does not exist: {len(bounds)} stages for {list(splits)}")
    start, stop = bounds[stage_index]
    state: dict[str, torch.Tensor] = {}
    for entry in manifest["blocks"][start:stop]:
        state.update(_load_block(shard_dir, entry))
    stage = graph.stage_module(_meta_model(model, num_classes), start, stop)
    stage = stage.to_empty(device=device)
    try:
        stage.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ShardError(
            f"shards in {str(shard_dir)!r} do not fit stage {stage_index} of {model}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    leftover = [name for name, _ in stage.named_buffers() if name not in state]
    if leftover:
        raise ShardError(
            f"{model} has buffers that shards do not store ({', '.join(leftover[:3])}); "
            "build this stage from the model instead of from shards"
        )
    return stage.to(device).eval()
