"""The repeat rule: a count, or ``auto`` (until the 95% confidence interval of latency and of
throughput is within a target of their means; the package doc has the rule)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import ConfigError

__all__ = ["RepeatRule", "relative_ci", "parse_repeats", "REPEATS_SCHEMA", "REPEATS_SCHEMA_VERSION"]

REPEATS_SCHEMA = "paretopipe.repeats"
REPEATS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RepeatRule:
    """``count`` repeats, or (``count`` None) auto: until the 95% CI half-width of latency and of
    throughput is within ``target`` x mean, between ``minimum`` and ``maximum`` repeats."""

    count: int | None = 1
    target: float = 0.05
    minimum: int = 3
    maximum: int = 10

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ConfigError(f"repeats must be at least 1, or auto (got {self.count})")
        if self.count is None:
            if not 0 < self.target < 1:
                raise ConfigError(f"the repeats target must be a fraction in (0, 1), e.g. 0.05 (got {self.target})")
            if not 2 <= self.minimum <= self.maximum:
                raise ConfigError(f"auto repeats need 2 <= minimum <= maximum (got {self.minimum} and "
                                  f"{self.maximum}); a confidence interval needs two runs")

    @property
    def auto(self) -> bool:
        return self.count is None

    @property
    def most(self) -> int:
        """The most runs a configuration can take."""
        return self.maximum if self.count is None else self.count

    def verdict(self, values: Sequence[tuple[float, float]]) -> str | None:
        """For auto: ``"reached"`` (target met with at least ``minimum`` runs), ``"max"`` (``maximum``
        runs, target not met), or None (run another). ``values``: (latency, throughput) per ok run."""
        if self.count is not None:
            return "done" if len(values) >= self.count else None
        n = len(values)
        if n >= self.minimum and all(rel <= self.target for rel in relative_ci(values)):
            return "reached"
        return "max" if n >= self.maximum else None

    def as_dict(self) -> dict[str, Any]:
        if self.count is not None:
            return {"mode": "count", "count": self.count}
        return {"mode": "auto", "target": self.target, "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RepeatRule:
        if d.get("mode") == "auto":
            return cls(count=None, target=float(d["target"]), minimum=int(d["min"]), maximum=int(d["max"]))
        return cls(count=int(d["count"]))


def relative_ci(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """95% CI half-width / |mean| of latency and of throughput over ``values`` (inf below two)."""
    from paretoio.stats import mean_ci95  # SciPy, not pandas: it runs on the source device

    out = []
    for column in zip(*values) if values else ((), ()):
        mean, half, _ = mean_ci95(column)
        out.append(half / abs(mean) if math.isfinite(half) and mean else math.inf)
    return (out[0], out[1])


def parse_repeats(value: Any, *, target: float = 0.05, minimum: int = 3, maximum: int = 10,
                  flag: str = "repeats") -> RepeatRule:
    """``3`` or ``"auto"`` -> a :class:`RepeatRule`."""
    text = str(value).strip().lower()
    if text == "auto":
        return RepeatRule(count=None, target=float(target), minimum=int(minimum), maximum=int(maximum))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is neither a count nor 'auto'; give e.g. {flag} 3 or {flag} auto") from None
    if count < 1:
        raise ConfigError(f"{flag} must be at least 1, or auto (got {count})")
    return RepeatRule(count=count)
