"""The sweep dimensions and the split grammar (the package doc has the grammar): what a
configuration is and how the options that list its values are read."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import ConfigError

__all__ = ["DIMENSIONS", "Configuration", "parse_splits", "parse_positive_list"]

#: The sweep dimensions of a configuration, in the order labels and run ids name them. A new
#: dimension is a field of :class:`Configuration`, a list in :class:`~paretopipe.plan.SweepSpec` and a name here.
DIMENSIONS = ("splits", "window", "batch_size", "codec")


@dataclass(frozen=True, order=True)
class Configuration:
    """One value of every sweep dimension."""

    splits: tuple[int, ...]
    window: int = 1
    batch_size: int = 8
    codec: str = "none"  # of the tensor crossing each split (paretopipe.codecs)

    @property
    def label(self) -> str:
        """``k=8 w4 b8`` (``k=3,9`` for three stages; `` int8`` added for a codec other than none):
        what tables, plots and logs call it."""
        codec = "" if self.codec == "none" else f" {self.codec}"
        return f"k={','.join(map(str, self.splits))} w{self.window} b{self.batch_size}{codec}"

    def as_dict(self) -> dict[str, Any]:
        return {"splits": list(self.splits), "window": self.window, "batch_size": self.batch_size, "codec": self.codec}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Configuration:
        return cls(splits=tuple(int(k) for k in d["splits"]), window=int(d["window"]),
                   batch_size=int(d["batch_size"]), codec=str(d.get("codec", "none")))


def parse_splits(text: Any, num_blocks: int, devices: int, *, model: str = "MODEL",
                 flag: str = "splits") -> list[tuple[int, ...]]:
    """The split grammar (module doc): ``all`` / ``"0,4,9"`` / ``[0, 4, 9]`` / ``"3:9,4:12"`` ->
    sorted, distinct tuples of ``devices - 1`` split points."""
    if devices < 2:
        raise ConfigError(f"a chain needs at least two devices (a source and a worker), got {devices}")
    hops = devices - 1
    items = [str(x).strip() for x in text] if isinstance(text, (list, tuple)) else \
        [p.strip() for p in str(text).split(",")]
    items = [i for i in items if i]
    if not items:
        raise ConfigError(f"{flag} is empty; use 'all' or a comma list such as 0,4,9")
    points: set[int] = set()
    explicit: set[tuple[int, ...]] = set()
    for item in items:
        if item == "all":
            points.update(range(num_blocks + 1))
            continue
        try:
            values = tuple(int(v) for v in item.split(":"))
        except ValueError:
            raise ConfigError(f"{flag}: {item!r} is not a split point; use all, K or K1:K2 (comma-separated), "
                              f"e.g. 0,4,9") from None
        for k in values:
            if not 0 <= k <= num_blocks:
                raise ConfigError(f"{flag}: split {k} is out of range for {model} (valid: 0..{num_blocks}); "
                                  f"see `paretopipe splits {model}`")
        if len(values) == 1:
            points.add(values[0])
        elif len(values) != hops:
            raise ConfigError(f"{flag}: {item!r} has {len(values)} points but a chain of {devices} devices "
                              f"runs {hops} per run; give {hops} point(s) per K1:K2 item, or a chain of {len(values) + 1} devices")
        elif list(values) != sorted(values):
            raise ConfigError(f"{flag}: {item!r} must be non-decreasing")
        else:
            explicit.add(values)
    return sorted(set(itertools.combinations_with_replacement(sorted(points), hops)) | explicit)


def parse_positive_list(text: Any, flag: str, example: str = "1,4") -> tuple[int, ...]:
    """``"1,4"`` / ``[1, 4]`` / ``4`` -> sorted distinct positive integers (``flag`` names the option)."""
    if isinstance(text, (list, tuple)):
        items = [str(x).strip() for x in text]
    else:
        items = [p.strip() for p in str(text).split(",")]
    items = [i for i in items if i]
    if not items:
        raise ConfigError(f"{flag} is empty; give a comma list of positive integers, e.g. {flag} {example}")
    out = set()
    for item in items:
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or str(value) != item.lstrip("+"):
            raise ConfigError(f"{flag}: {item!r} is not a positive integer; give a comma list such as {example}")
        out.add(value)
    return tuple(sorted(out))
