"""Writing a file so that a reader never sees half of it: the one atomic writer of the project.

Both packages write through here: ``analysis`` its tables and reports, ``paretopipe`` its result
files, shard manifests, predictions and testbed state.

The data goes to a temporary file in the target's folder, is flushed to disk, and then takes
the target's name in one step: ``os.replace`` (a newer version replaces the old one), or with
``exclusive`` ``os.link``, which fails with :class:`FileExistsError` when the name is taken, so
a file that must never be overwritten is not. Either way the temporary name is gone afterwards.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: PathLike, data: str | bytes, *, exclusive: bool = False) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically, making its folder if needed. With
    `exclusive`, raise FileExistsError instead of replacing a file that is already there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and fails if the name exists: never overwrites
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json_atomic(path: PathLike, doc: Any, *, exclusive: bool = False, indent: int = 1) -> Path:
    """`doc` as JSON (no NaN or infinity: they are not JSON), one trailing newline, atomically."""
    return write_atomic(path, json.dumps(doc, indent=indent, allow_nan=False) + "\n", exclusive=exclusive)
