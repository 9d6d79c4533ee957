"""Registry of model builders (torchvision), their input sizes, and weight loading.

The six named models are the ones the suite is tuned for; any other torchvision classification
model name works as well (its split points are found from its graph, see
:mod:`paretopipe.splitting`). Weights are either a seeded random initialisation (the default, and
the result files say so) or a state_dict checkpoint loaded with ``weights_only=True``. A checkpoint
that does not fit is an error naming the keys; there is no fallback to random weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEFAULT_NUM_CLASSES = 10
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, known without building it."""

    name: str
    input_size: int
    min_input_size: int
    named: bool  # one of the six models the suite is tuned for


_NAMED: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("mobilenet_v2", 224, 32, True),
        ModelInfo("resnet18", 224, 32, True),
        ModelInfo("resnet50", 224, 32, True),
        ModelInfo("vgg16", 224, 32, True),
        ModelInfo("alexnet", 224, 63, True),
        ModelInfo("inception_v3", 299, 75, True),
    )
}

# Extra constructor arguments, so that every model builds deterministically from a seed and
# in a form that can be cut (auxiliary heads stay in the module, so torchvision-style
# checkpoints still load, but they are not on the eval-mode path).
_BUILD_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": True, "init_weights": True, "transform_input": False},
    "googlenet": {"aux_logits": True, "init_weights": True, "transform_input": False},
}


def model_names() -> list[str]:
    """The six named models, in the order the docs list them."""
    return list(_NAMED)


def _classification_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def get_model_info(name: str) -> ModelInfo:
    """Facts about ``name``; any torchvision classifier is accepted.

    Raises ConfigError listing the valid names for an unknown model.
    """
    if name in _NAMED:
        return _NAMED[name]
    available = _classification_models()
    if name not in available:
        raise ConfigError(
            f"unknown model {name!r}; the named models are {', '.join(_NAMED)}; "
            f"any torchvision classifier also works ({len(available)} available, "
            "see `paretopipe models --all`)"
        )
    # Vision transformers need their native resolution; convnets take anything reasonable.
    size = 224
    min_size = 224 if name.startswith(("vit_", "swin_", "maxvit")) else 32
    return ModelInfo(name, size, min_size, False)


def all_model_names() -> list[str]:
    """Every torchvision classification model name."""
    return _classification_models()


def build_model(
    name: str,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    weights: str | Path | None = None,
    seed: int = DEFAULT_SEED,
) -> torch.nn.Module:
    """Build ``name`` in eval mode: seeded random weights, or a state_dict checkpoint."""
    import torch
    import torchvision.models as tvm

    get_model_info(name)  # validates the name
    if num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1 (got {num_classes})")
    kwargs = dict(_BUILD_KWARGS.get(name, {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as exc:  # a builder that rejects one of our kwargs
            raise ConfigError(f"cannot build {name!r}: {exc}") from exc
    if weights is not None:
        load_checkpoint(model, name, weights)
    return model.eval()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict checkpoint safely (``weights_only=True``).

    Accepts a bare state_dict, or a dict that holds one under ``state_dict`` / ``model`` /
    ``model_state_dict``; strips a ``module.`` prefix left by DataParallel.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read weights file {str(path)!r}: {first}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"weights file {str(path)!r} is not a state_dict (a mapping of names to tensors)"
        )
    state = {}
    for key, value in obj.items():
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def load_checkpoint(model: torch.nn.Module, name: str, path: str | Path) -> None:
    """Load a checkpoint into ``model`` strictly; a mismatch names the keys."""
    state = load_state_dict_file(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch (checkpoint vs model): " + _clip(mismatched))
        if missing:
            parts.append("missing keys: " + _clip(missing))
        if unexpected:
            parts.append("unexpected keys: " + _clip(unexpected))
        hint = ""
        if any(k.split(" ")[0].endswith(("fc.weight", "classifier.6.weight", "classifier.1.weight"))
               for k in mismatched):
            hint = " (does --num-classes match the checkpoint?)"
        raise ConfigError(
            f"weights file {str(path)!r} does not fit {name}: " + "; ".join(parts) + hint
        )
    model.load_state_dict(state, strict=True)


def _clip(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_spec(weights: str | Path | None, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """How the weights were made, for result files and manifests."""
    if weights is None:
        return {"kind": "random", "seed": seed}
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    return {"kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
