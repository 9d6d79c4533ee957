"""Fidelity: how far a run's logits are from the unsplit, uncoded model's on the same inputs.

:func:`compare` takes the logits a run returned and the reference logits, batch by batch, and
gives :class:`Fidelity`: top-1 agreement (the share of images whose top class is the same),
the largest absolute difference of any logit, and the relative L2 error
``||run - ref||_2 / ||ref||_2`` over all kept logits; with labels also both top-1 accuracies.

Agreement only means something when the reference's predictions vary: a model with random
weights often predicts one class for every input, and then any codec "agrees" 100%. When the
reference predicts fewer than :data:`MIN_DISTINCT_CLASSES` distinct classes, agreement is not
reported (None) and ``degenerate`` says why and what to use instead (trained weights, e.g.
``paretopipe train-digits``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Fidelity", "MIN_DISTINCT_CLASSES", "compare"]

#: Fewer distinct reference top-1 classes than this over the compared images: degenerate.
MIN_DISTINCT_CLASSES = 2


@dataclass(frozen=True)
class Fidelity:
    batches: int
    images: int
    agreement_top1: float | None  # None when the reference is degenerate
    max_abs_error: float
    rel_l2_error: float
    reference_classes: int  # distinct top-1 classes the reference predicted
    degenerate: str | None
    accuracy_top1: float | None = None
    reference_accuracy_top1: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(logits: Sequence[Any], reference: Sequence[Any], *, labels: Sequence[Any] | None = None) -> Fidelity:
    """`logits[i]` and `reference[i]`: [B, C] tensors of batch i; `labels[i]`: [B] int64 or None."""
    import torch

    if len(logits) != len(reference) or not logits:
        raise ValueError(f"compare needs as many run batches as reference batches, at least one "
                         f"(got {len(logits)} and {len(reference)})")
    run = torch.cat([t.detach().float().reshape(t.shape[0], -1) for t in logits])
    ref = torch.cat([t.detach().float().reshape(t.shape[0], -1) for t in reference])
    if run.shape != ref.shape:
        raise ValueError(f"run logits {tuple(run.shape)} and reference logits {tuple(ref.shape)} differ in shape")
    top_run, top_ref = run.argmax(dim=1), ref.argmax(dim=1)
    classes = int(torch.unique(top_ref).numel())
    diff = run - ref
    ref_norm = float(torch.linalg.vector_norm(ref))
    rel = float(torch.linalg.vector_norm(diff)) / ref_norm if ref_norm > 0 else (0.0 if not diff.any() else math.inf)
    degenerate = None
    agreement: float | None = float((top_run == top_ref).float().mean())
    if classes < MIN_DISTINCT_CLASSES:
        degenerate = (f"the unsplit model predicts class {int(top_ref[0])} for all {ref.shape[0]} compared images, so "
                      f"top-1 agreement would be meaningless; use trained weights whose predictions vary "
                      f"(e.g. `paretopipe train-digits`, then --weights and --input digits)")
        agreement = None
    acc = ref_acc = None
    if labels is not None:
        y = torch.cat([torch.as_tensor(lab).reshape(-1) for lab in labels])
        if y.numel() == run.shape[0]:
            acc = float((top_run == y).float().mean())
            ref_acc = float((top_ref == y).float().mean())
    return Fidelity(
        batches=len(logits), images=int(run.shape[0]), agreement_top1=agreement,
        max_abs_error=float(diff.abs().max()), rel_l2_error=rel, reference_classes=classes, degenerate=degenerate,
        accuracy_top1=acc, reference_accuracy_top1=ref_acc,
    )
