"""The unsplit, uncoded model's logits that fidelity and ``--check`` compare a run with.

Every run of a sweep compares its first counted batches with the same reference: the same
model, weights, seed and inputs give the same logits whatever the split, window or codec. A
:class:`ReferenceStore` with a directory keeps them in one file per reference
(``<key>.pt``: the key's fields and one logits tensor per batch id), so each reference batch is
computed once per sweep, not once per run; without a directory it computes every time.

The key holds everything the logits depend on: model, classes, seed, the weights file's
SHA-256, the input spec with its file's size and modification time, input size, batch size
and the torch and paretopipe versions. A file that does not load, or whose stored key is not
the expected one, is named in a warning and replaced; it never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ReferenceStore", "reference_key"]

log = logging.getLogger(__name__)


def _input_identity(spec: str) -> dict[str, Any]:
    """The input spec, and for a spec naming a file or folder its size and modification time."""
    ident: dict[str, Any] = {"spec": spec}
    _, _, rest = spec.partition(":")
    path = Path(rest) if rest else None
    if path is not None and path.exists():
        st = path.stat()
        ident.update(path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return ident


def reference_key(*, model: str, num_classes: int, seed: int, weights: Mapping[str, Any], input_spec: str,
                  input_size: int, batch_size: int) -> dict[str, Any]:
    """What the reference logits depend on (JSON-able; its hash names the file)."""
    import torch

    from paretopipe import __version__

    return {"model": model, "num_classes": num_classes, "seed": seed,
            "weights": weights.get("sha256") or f"random:{weights.get('seed', seed)}",
            "input": _input_identity(input_spec), "input_size": input_size, "batch_size": batch_size,
            "torch": str(torch.__version__), "paretopipe": __version__}


class ReferenceStore:
    """Reference logits by batch id, computed by ``compute(ids)`` and kept in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str] | None, key: Mapping[str, Any],
                 compute: Callable[[list[int]], Mapping[int, Any]]) -> None:
        self.key = dict(key)
        self._compute = compute
        self._memo: dict[int, Any] = {}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(directory) / f"{digest}.pt" if directory is not None else None
        self.computed = 0  # batches computed here (not read from the file)

    def logits(self, batch_ids: Iterable[int]) -> dict[int, Any]:
        ids = sorted(set(batch_ids))
        if self.path is not None and any(b not in self._memo for b in ids):
            self._memo.update({b: t for b, t in self._load().items() if b not in self._memo})
        missing = [b for b in ids if b not in self._memo]
        if missing:
            fresh = self._compute(missing)
            self._memo.update({b: fresh[b] for b in missing})
            self.computed += len(missing)
            if self.path is not None:
                self._save()
        return {b: self._memo[b] for b in ids}

    def _load(self) -> dict[int, Any]:
        import torch

        assert self.path is not None
        if not self.path.is_file():
            return {}
        try:
            doc = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(doc, dict) or doc.get("key") != self.key or not isinstance(doc.get("logits"), dict):
                raise ValueError("its key does not match this run's model, weights and inputs")
            return {int(b): t for b, t in doc["logits"].items()}
        except Exception as exc:  # noqa: BLE001 - any unreadable cache file is recomputed, never fatal
            log.warning("reference cache %s is unusable (%s); computing the reference again and replacing it",
                        self.path, exc)
            return {}

    def _save(self) -> None:
        import io

        import torch

        from paretoio.files import write_atomic

        assert self.path is not None
        buf = io.BytesIO()
        torch.save({"key": self.key, "logits": {int(b): t.detach().cpu() for b, t in self._memo.items()}}, buf)
        try:
            write_atomic(self.path, buf.getvalue())  # makes the folder too
        except OSError as exc:  # a full or read-only disk costs time, not the run
            log.warning("could not keep the reference logits in %s (%s); the next run computes them again",
                        self.path, exc)
