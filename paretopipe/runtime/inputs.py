"""Input batches for the source: synthetic, CIFAR-10 (local python-batches copy) or an image folder.

``--input`` takes ``synthetic``, ``digits`` (scikit-learn's bundled handwritten digits, the
held-out part; :mod:`paretopipe.digits` trains on the rest), ``cifar10:PATH`` or ``folder:PATH``. Nothing is downloaded.
A :class:`Prefetcher` prepares batches on a thread ahead of the pipeline and counts the times
the pipeline had to wait for one (``prefetch_stalls``).
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError
from paretopipe.threads import join, spawn

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
#: Synthetic batches are generated once and reused cyclically (deterministic per seed).
SYNTHETIC_POOL = 8


@dataclass
class Batch:
    batch_id: int
    images: Any  # float32 tensor [B, 3, H, W]
    labels: Any | None  # int64 tensor [B] or None


class InputSource:
    """A deterministic, endless sequence of batches: batch(i) is the same for the same i."""

    has_labels = False

    def __init__(self, spec: str, *, batch_size: int, input_size: int, seed: int) -> None:
        self.spec, self.batch_size, self.input_size, self.seed = spec, batch_size, input_size, seed

    def batch(self, batch_id: int) -> Batch:
        raise NotImplementedError


class SyntheticInput(InputSource):
    """Seeded normal noise. The pool is made up front, so making inputs costs no CPU while the
    pipeline runs."""

    def __init__(self, spec: str, *, batch_size: int, input_size: int, seed: int) -> None:
        import torch

        super().__init__(spec, batch_size=batch_size, input_size=input_size, seed=seed)
        self._pool = [
            torch.randn(batch_size, 3, input_size, input_size,
                        generator=torch.Generator().manual_seed(seed * 1_000_003 + key))
            for key in range(SYNTHETIC_POOL)
        ]

    def batch(self, batch_id: int) -> Batch:
        return Batch(batch_id, self._pool[batch_id % SYNTHETIC_POOL], None)


class _ArrayInput(InputSource):
    """Images held as uint8 HWC-less arrays [N, 3, h, w] plus labels; resized per batch."""

    has_labels = True
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD

    def _setup(self, images: Any, labels: Any) -> None:
        import torch

        self._images, self._labels = images, labels
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std).view(1, 3, 1, 1)

    def batch(self, batch_id: int) -> Batch:
        import torch

        n = self._images.shape[0]
        idx = torch.arange(batch_id * self.batch_size, (batch_id + 1) * self.batch_size) % n
        images, labels = self.take(idx)
        return Batch(batch_id, images, labels)

    def take(self, idx: Any) -> tuple[Any, Any]:
        """The images at `idx` (an index tensor), resized and normalised, and their labels."""
        import torch.nn.functional as F

        x = self._images[idx].float().div_(255.0)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self._mean) / self._std, self._labels[idx]


class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR-10 python batch contains: dicts, lists, bytes and numpy arrays."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")


class Cifar10Input(_ArrayInput):
    """CIFAR-10 in its own python-batches format (``cifar-10-batches-py``), read from disk.

    PATH is that folder (``test_batch`` is used if present, else ``data_batch_*``) or one batch
    file. This is the one place ParetoPipe unpickles anything: a local data file the user names,
    in the format the data set is published in, through an unpickler that admits only numpy
    arrays and plain containers. Network data is never unpickled.
    """

    mean, std = _CIFAR_MEAN, _CIFAR_STD

    def __init__(self, spec: str, *, batch_size: int, input_size: int, seed: int) -> None:
        import numpy as np
        import torch

        super().__init__(spec, batch_size=batch_size, input_size=input_size, seed=seed)
        path = Path(spec.split(":", 1)[1])
        if path.is_dir():
            files = [path / "test_batch"] if (path / "test_batch").is_file() else sorted(path.glob("data_batch_*"))
        else:
            files = [path]
        if not files or not all(f.is_file() for f in files):
            raise ConfigError(f"no CIFAR-10 batch files at {path} (expected the cifar-10-batches-py folder or a batch file)")
        data, labels = [], []
        for f in files:
            try:
                with open(f, "rb") as fh:
                    entry = _CifarUnpickler(fh, encoding="bytes").load()
                data.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(x) for x in entry[b"labels"])
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
                raise ConfigError(f"{f} is not a CIFAR-10 python batch: {exc}") from None
        images = torch.from_numpy(np.concatenate(data))
        if images.shape[0] != len(labels) or not len(labels):
            raise ConfigError(f"CIFAR-10 data at {path}: {images.shape[0]} images but {len(labels)} labels")
        self._setup(images, torch.tensor(labels, dtype=torch.int64))


class FolderInput(_ArrayInput):
    """An ImageFolder-like tree: PATH/<class>/<image>; classes sorted by name are labels 0..C-1.

    Images are decoded once (resized so the shorter side is input_size * 256/224, centre-cropped
    to input_size) and kept as uint8, so batches cost little to make."""

    def __init__(self, spec: str, *, batch_size: int, input_size: int, seed: int) -> None:
        import numpy as np
        import torch
        from PIL import Image, UnidentifiedImageError

        super().__init__(spec, batch_size=batch_size, input_size=input_size, seed=seed)
        root = Path(spec.split(":", 1)[1])
        if not root.is_dir():
            raise ConfigError(f"image folder {root} does not exist")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise ConfigError(f"{root} has no class sub-folders (expected PATH/<class>/<image>)")
        resize = round(input_size * 256 / 224)
        arrays, labels = [], []
        for label, cls in enumerate(classes):
            for f in sorted((root / cls).iterdir()):
                if f.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(f) as im:
                        im = im.convert("RGB")
                        w, h = im.size
                        scale = resize / min(w, h)
                        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                        w, h = im.size
                        left, top = (w - input_size) // 2, (h - input_size) // 2
                        im = im.crop((left, top, left + input_size, top + input_size))
                        arrays.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())
                except (OSError, UnidentifiedImageError) as exc:
                    raise ConfigError(f"cannot read image {f}: {exc}") from None
                labels.append(label)
        if not arrays:
            raise ConfigError(f"no images under {root} (suffixes: {', '.join(sorted(_IMAGE_SUFFIXES))})")
        self._setup(torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64))


#: Every DIGITS_HOLDOUT-th digit image is held out for evaluation (and is what ``--input digits``
#: feeds); :mod:`paretopipe.digits` trains on the rest.
DIGITS_HOLDOUT = 5


def digits_part(part: str) -> tuple[Any, Any]:
    """scikit-learn's bundled digits: uint8 images [N, 3, 8, 8] and int64 labels of ``part``
    ("train" or "test")."""
    import numpy as np
    import torch

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits data set comes with scikit-learn: pip install 'paretopipe[fidelity]' "
                          "(or scikit-learn)") from None
    data = load_digits()
    images = np.clip(data.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    keep = idx % DIGITS_HOLDOUT == 0 if part == "test" else idx % DIGITS_HOLDOUT != 0
    x = torch.from_numpy(np.repeat(images[keep][:, None], 3, axis=1).copy())
    return x, torch.from_numpy(data.target[keep].astype(np.int64))


class DigitsInput(_ArrayInput):
    """``--input digits``: the held-out digits with labels, cycled."""

    def __init__(self, spec: str, *, batch_size: int, input_size: int, seed: int) -> None:
        super().__init__(spec, batch_size=batch_size, input_size=input_size, seed=seed)
        self._setup(*digits_part("test"))


def input_period(spec: str) -> int | None:
    """How many distinct batches an input spec cycles through (synthetic: its pool), else None."""
    return SYNTHETIC_POOL if spec == "synthetic" else None


def open_input(spec: str, *, batch_size: int, input_size: int, seed: int) -> InputSource:
    kind = spec.split(":", 1)[0]
    if spec == "digits":  # scikit-learn's bundled digits, the held-out part
        return DigitsInput(spec, batch_size=batch_size, input_size=input_size, seed=seed)
    kinds = {"synthetic": SyntheticInput, "cifar10": Cifar10Input, "folder": FolderInput}
    if kind not in kinds or (kind != "synthetic" and ":" not in spec) or (kind == "synthetic" and spec != "synthetic"):
        raise ConfigError(f"bad --input {spec!r}: use synthetic, digits, cifar10:PATH or folder:PATH")
    return kinds[kind](spec, batch_size=batch_size, input_size=input_size, seed=seed)


class Prefetcher:
    """Makes batches 0, 1, 2, ... on a thread, `depth` ahead of the consumer."""

    def __init__(self, source: InputSource, *, depth: int) -> None:
        self._source = source
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.stalls = 0
        self.stall_s = 0.0
        self._thread = spawn(self._fill, name="prefetch")

    def _fill(self) -> None:
        batch_id = 0
        try:
            while not self._stop.is_set():
                item = self._source.batch(batch_id)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                batch_id += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            if not self._stop.is_set():
                self._queue.put(exc)

    def next(self, *, count_stall: bool = True) -> Batch:
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            t0 = time.monotonic()
            item = self._queue.get()
            if count_stall:
                self.stalls += 1
                self.stall_s += time.monotonic() - t0
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop making batches and join the thread (within `timeout_s`: one batch in the
        making, then at most one queue wait)."""
        self._stop.set()
        while True:  # make room, so a put in progress ends at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if join([self._thread], timeout_s):
            log.warning("the input prefetch thread did not stop within %.0f s", timeout_s)
