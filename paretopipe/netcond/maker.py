"""Synthetic traces, seeded: ``paretopipe trace make KIND --out FILE --seed N``.

Kinds (all segments tables of ``step_s`` pieces, looping at ``duration_s``):

- ``steps``: alternate between ``high`` and ``low`` every ``step_s`` (seed unused: no chance);
- ``walk``: a random walk of the rate in log space, reflected at ``low`` and ``high``;
- ``walk-away``: walking away from an access point and back: the rate falls with distance
  (log-distance path loss mapped to rate, with seeded fading) to ``low`` at half time, then
  recovers to ``high``;
- ``outage``: ``high`` with short drops to ``outage_mbit`` (near zero) at seeded times.

The same arguments and seed give the same bytes (NumPy's PCG64 stream and exact CSV text);
:data:`SHIPPED` lists the traces under ``paretopipe/data/traces`` and how each was made, and
:func:`shipped_text` makes them again (the tests compare byte for byte).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import ConfigError
from paretopipe.netcond.traces import MIN_STEP_S, Segment, write_segments_csv

__all__ = ["KINDS", "SHIPPED", "TraceSpec", "make_text", "shipped_dir", "shipped_text"]

KINDS = ("steps", "walk", "walk-away", "outage")


@dataclass(frozen=True)
class TraceSpec:
    """What to make. Rates in Mbit/s, times in s, delay in ms (one-way, constant)."""

    kind: str
    seed: int = 0
    duration_s: float = 60.0
    step_s: float = 1.0
    low_mbit: float = 2.0
    high_mbit: float = 50.0
    delay_ms: float = 5.0
    outage_mbit: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown trace kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if self.step_s < MIN_STEP_S:
            raise ConfigError(f"--step {self.step_s:g} s is shorter than the {MIN_STEP_S:g} s "
                              "steps the replay can follow")
        if self.duration_s < 2 * self.step_s:
            raise ConfigError("--duration must be at least two steps")
        if abs(self.duration_s / self.step_s - round(self.duration_s / self.step_s)) > 1e-9:
            raise ConfigError(f"--duration {self.duration_s:g} s is not a whole number of "
                              f"--step {self.step_s:g} s")
        if not 0 < self.low_mbit < self.high_mbit:
            raise ConfigError("rates must satisfy 0 < --low < --high")
        if not 0 <= self.outage_mbit < self.low_mbit:
            raise ConfigError("--outage-rate must be in [0, --low)")
        if self.delay_ms < 0:
            raise ConfigError("--delay must be >= 0")

    def command(self) -> str:
        """The command line that makes this trace (written into its header)."""
        args = ["paretopipe", "trace", "make", self.kind, "--seed", str(self.seed),
                "--duration", f"{self.duration_s:g}", "--step", f"{self.step_s:g}",
                "--low", f"{self.low_mbit:g}", "--high", f"{self.high_mbit:g}",
                "--delay", f"{self.delay_ms:g}"]
        if self.kind == "outage":
            args += ["--outage-rate", f"{self.outage_mbit:g}"]
        return shlex.join(args)


def _rates(spec: TraceSpec) -> list[float]:
    import numpy as np

    n = round(spec.duration_s / spec.step_s)
    rng = np.random.default_rng(spec.seed)
    lo, hi = math.log(spec.low_mbit), math.log(spec.high_mbit)
    if spec.kind == "steps":
        return [spec.high_mbit if k % 2 == 0 else spec.low_mbit for k in range(n)]
    if spec.kind == "walk":
        x = (lo + hi) / 2
        out = []
        for step in rng.normal(0.0, (hi - lo) / 8, size=n):
            out.append(math.exp(x))
            x += float(step)
            while not lo <= x <= hi:  # reflect at the bounds
                x = 2 * lo - x if x < lo else 2 * hi - x
        return out
    if spec.kind == "walk-away":
        # distance 1 -> 10 -> 1 (units of the near distance); path-loss exponent 3 in dB,
        # mapped linearly in log-rate from high (near) to low (far), plus 2 dB of seeded fading
        fade = rng.normal(0.0, 2.0, size=n)
        out = []
        for k in range(n):
            phase = k / max(n - 1, 1)
            distance = 1 + 9 * (1 - abs(2 * phase - 1))
            loss_db = 30 * math.log10(distance) + float(fade[k])
            share = min(max(loss_db / 30, 0.0), 1.0)
            out.append(math.exp(hi - share * (hi - lo)))
        return out
    # outage: about one drop per 10 s, each one or two steps long
    out = [spec.high_mbit] * n
    k = 1
    while k < n:
        k += int(rng.integers(max(1, round(5 / spec.step_s)), max(2, round(15 / spec.step_s))))
        if k >= n:
            break
        for j in range(k, min(n, k + int(rng.integers(1, 3)))):
            out[j] = spec.outage_mbit
    return out


def make_text(spec: TraceSpec) -> str:
    """The segments CSV of ``spec``, exact to the byte (rates rounded to whole kbit/s)."""
    segments: list[Segment] = []
    for k, rate in enumerate(_rates(spec)):
        kbit = round(rate * 1000)
        if segments and round(segments[-1].rate_mbit * 1000) == kbit:  # type: ignore[operator]
            continue
        segments.append(Segment(t_s=round(k * spec.step_s, 6), rate_mbit=kbit / 1000,
                                delay_ms=spec.delay_ms))
    header = f"made by: {spec.command()}\nsynthetic ({spec.kind}), ParetoPipe; not a measured link"
    return write_segments_csv(segments, spec.duration_s, header)


#: the traces shipped under paretopipe/data/traces, and how each was made
SHIPPED: dict[str, TraceSpec] = {
    "steps-2-50.csv": TraceSpec("steps", seed=0, duration_s=20, step_s=10, low_mbit=2, high_mbit=50),
    "steps-short.csv": TraceSpec("steps", seed=0, duration_s=4, step_s=2, low_mbit=5, high_mbit=50),
    "walk.csv": TraceSpec("walk", seed=1, duration_s=60, step_s=1, low_mbit=2, high_mbit=50),
    "walk-away.csv": TraceSpec("walk-away", seed=2, duration_s=60, step_s=1, low_mbit=1, high_mbit=50),
    "outage.csv": TraceSpec("outage", seed=3, duration_s=60, step_s=0.5, low_mbit=1, high_mbit=20),
}


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "traces"


def shipped_text(name: str) -> str:
    if name not in SHIPPED:
        raise ConfigError(f"no shipped trace {name!r} (shipped: {', '.join(SHIPPED)})")
    return make_text(SHIPPED[name])
