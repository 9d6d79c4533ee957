"""Trained weights without a download: scikit-learn's bundled handwritten digits.

Random-weight models often predict one class for every input, which makes fidelity figures
(top-1 agreement) meaningless. scikit-learn ships a small labelled data set in its wheel
(``sklearn.datasets.load_digits``: 1,797 8x8 grey images of the digits 0-9), so a model can be
trained here, offline, in a minute or two on a CPU. ``--input digits`` feeds the held-out images
(every fifth, never trained on) with their labels; :func:`train` writes a state_dict that
``--weights`` loads. Images are upscaled to the model's input size, grey copied to 3 channels,
normalised as every other input. The data set itself and ``--input digits`` live in
:mod:`paretopipe.runtime.inputs` (:func:`~paretopipe.runtime.inputs.digits_part`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from paretopipe.errors import ConfigError
from paretopipe.runtime.inputs import DigitsInput, _ArrayInput, digits_part

log = logging.getLogger("paretopipe.digits")


def train(model: str, out: str | Path, *, input_size: int = 32, epochs: int = 6, batch_size: int = 64,
          seed: int = 0, num_classes: int = 10) -> dict[str, float]:
    """Train `model` on the digits' training part; write its state_dict to `out` (torch.save of
    tensors only, which ``--weights`` reads with weights_only=True). Returns train time and the
    held-out top-1 accuracy."""
    import torch

    from paretopipe.models import build_model

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists; pick another --out (weights are never overwritten)")
    if num_classes < 10:
        raise ConfigError(f"the digits have 10 classes; --num-classes {num_classes} is too few")
    net = build_model(model, num_classes=num_classes, seed=seed).train()
    train_src = _ArrayInput("digits-train", batch_size=batch_size, input_size=input_size, seed=seed)
    train_src._setup(*digits_part("train"))
    n = train_src._images.shape[0]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    steps = (n + batch_size - 1) // batch_size
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = train_src.take(idx)
            loss = torch.nn.functional.cross_entropy(net(batch[0]), batch[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        log.info("epoch %d/%d: mean loss %.3f", epoch + 1, epochs, total / steps)
    net.eval()
    test = DigitsInput("digits", batch_size=batch_size, input_size=input_size, seed=seed)
    m = test._images.shape[0]
    correct = 0
    with torch.inference_mode():
        for start in range(0, m, batch_size):
            x, y = test.take(torch.arange(start, min(m, start + batch_size)))
            correct += int((net(x).argmax(1) == y).sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out)
    return {"train_s": time.monotonic() - t0, "test_accuracy": correct / m, "test_images": m}

