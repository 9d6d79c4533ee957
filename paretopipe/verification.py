"""Proof that a split reproduces the unsplit model: compose its stages and compare outputs.

:func:`verify_splits` builds the stages of each split (in memory, or from shard files) and runs
them on one seeded input next to the unsplit model (`paretopipe verify`, `paretopipe shard
--verify`). A split is only offered when this holds (decision 1 of the design notes).
"""

from __future__ import annotations

from collections.abc import Callable

from paretopipe.errors import ConfigError

#: Largest allowed max |difference| of the logits, relative to max(1, max |logit|).
VERIFY_TOLERANCE = 1e-5


def verify_splits(
    model: str,
    splits: list[int],
    *,
    num_classes: int,
    input_size: int | None,
    weights: str | None,
    seed: int,
    batch_size: int = 2,
    tolerance: float = VERIFY_TOLERANCE,
    shards: str | None = None,
    progress: Callable[[int, float, bool], None] | None = None,
) -> list[tuple[int, float, bool]]:
    """Compose the stages of each split and compare with the unsplit model on one seeded input.

    With ``shards``, the stages are loaded from that shard directory instead of built in memory,
    which proves the shards reproduce the model.
    """
    import torch

    from paretopipe.models import build_model, weights_spec
    from paretopipe.shards import load_stage, read_manifest
    from paretopipe.splitting import _check_input_size, build_stages

    size = _check_input_size(model, input_size)
    if shards is not None:
        manifest = read_manifest(shards)
        expected = {"model": model, "num_classes": num_classes, "weights": weights_spec(weights, seed)}
        found = {k: manifest.get(k) for k in expected}
        if found["weights"] and found["weights"].get("kind") == "file" and expected["weights"]["kind"] == "file":
            found["weights"] = {**found["weights"], "path": expected["weights"]["path"]}
        if found != expected:
            raise ConfigError(
                f"shards in {shards!r} were made for {found}, not {expected}; "
                "pass the same model, --num-classes, --weights and --seed as `paretopipe shard`"
            )
    root = build_model(model, num_classes=num_classes, weights=weights, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, size, size, generator=gen)
    with torch.inference_mode():
        reference = root(x)
        scale = max(1.0, float(reference.abs().max()))
        results = []
        for k in splits:
            if shards is None:
                head, tail = build_stages(model, [k], num_classes=num_classes, root=root)
            else:
                head, tail = (load_stage(shards, [k], i) for i in (0, 1))
            out = tail(head(x))
            diff = float((out - reference).abs().max()) if out.shape == reference.shape else float("inf")
            ok = diff <= tolerance * scale
            results.append((k, diff, ok))
            if progress:
                progress(k, diff, ok)
    return results
