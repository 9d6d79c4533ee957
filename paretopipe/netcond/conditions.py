"""What a network condition is, and the named conditions of a YAML file.

A :class:`Condition` is one-way delay, jitter, random loss and a rate, checked when it is made,
or a trace (:mod:`paretopipe.netcond.traces`) on the run's clock. :func:`load_conditions` reads a
table of them (default: the packaged ``data/conditions.yml``); a trace condition is
``name: {trace: FILE}`` (a segments table, ``.csv``/``.yml``) or ``name: {mahimahi: FILE,
delay: .., jitter: .., loss: ..}``, the file relative to the conditions file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from paretopipe.configfile import read_yaml_mapping
from paretopipe.errors import ConfigError
from paretopipe.netcond.units import fmt_rate, parse_delay, parse_loss, parse_rate

__all__ = ["Condition", "default_conditions_path", "load_conditions", "require_constant"]


@dataclass(frozen=True)
class Condition:
    """A network condition. ``delay_ms``/``jitter_ms`` are one-way; ``rate_mbit=None`` = unlimited.

    With ``trace_file`` the condition moves: :meth:`trace` reads it (``trace_format``
    ``"segments"`` or ``"mahimahi"``; for Mahimahi the constants here are its delay, jitter and
    loss, as ``mm-delay``/``mm-loss`` stacked around ``mm-link``).
    """

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    trace_file: str | None = None
    trace_format: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"condition name {self.name!r}: use letters, digits, '-', '_', '.'")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ConfigError(f"condition {self.name}: delay and jitter must be >= 0")
        if self.jitter_ms > self.delay_ms:
            raise ConfigError(
                f"condition {self.name}: jitter {self.jitter_ms:g} ms exceeds delay "
                f"{self.delay_ms:g} ms; packets cannot arrive before they are sent"
            )
        if not 0 <= self.loss_pct < 100:
            raise ConfigError(f"condition {self.name}: loss must be in [0, 100) %")
        if self.rate_mbit is not None and self.rate_mbit <= 0:
            raise ConfigError(f"condition {self.name}: rate must be > 0 (leave it out: unlimited)")
        if self.trace_file is not None:
            if self.trace_format not in ("segments", "mahimahi"):
                raise ConfigError(f"condition {self.name}: trace_format must be segments or mahimahi")
            if self.rate_mbit is not None:
                raise ConfigError(f"condition {self.name}: a trace gives the rate; drop 'rate'")
            if self.trace_format == "segments" and (self.has_delay or self.loss_pct):
                raise ConfigError(f"condition {self.name}: a segments table carries its own "
                                  "delay, jitter and loss; drop them from the condition")

    @property
    def is_trace(self) -> bool:
        return self.trace_file is not None

    def trace(self):  # -> paretopipe.netcond.traces.Trace
        """The condition's trace, read and checked (ConfigError naming file and line)."""
        from paretopipe.netcond.traces import read_mahimahi, read_segments

        if self.trace_file is None:
            raise ConfigError(f"condition {self.name} is constant, not a trace")
        if self.trace_format == "mahimahi":
            return read_mahimahi(self.trace_file, delay_ms=self.delay_ms,
                                 jitter_ms=self.jitter_ms, loss_pct=self.loss_pct)
        return read_segments(self.trace_file)

    @property
    def has_delay(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    @property
    def is_null(self) -> bool:
        return (not self.has_delay and self.loss_pct == 0 and self.rate_mbit is None
                and self.trace_file is None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.trace_file is not None:
            extra = ""
            if self.has_delay or self.loss_pct:
                extra = f", {self.delay_ms:g} ms ±{self.jitter_ms:g} ms, {self.loss_pct:g}% loss"
            return f"{self.name} ({self.trace().describe()}{extra})"
        parts = []
        if self.rate_mbit is not None:
            parts.append(fmt_rate(self.rate_mbit))
        if self.has_delay:
            parts.append(f"{self.delay_ms:g} ms" + (f" ±{self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% loss")
        return f"{self.name} ({', '.join(parts) or 'unshaped'})"


def recorded_condition(configured: dict, name: str | None = None) -> Condition:
    """The condition a result file's ``network.configured`` record describes; ``name`` stands in
    when the record leaves it out (the netem role's records do: it is the run's label)."""
    known = {f.name for f in dataclasses.fields(Condition)} - {"name"}
    return Condition(name=configured.get("name") or name, **{k: v for k, v in configured.items() if k in known})


def default_conditions_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "conditions.yml"


def load_conditions(path: str | Path | None = None) -> dict[str, Condition]:
    """Named conditions from a YAML file (default: the packaged ``data/conditions.yml``)."""
    file = Path(path) if path is not None else default_conditions_path()
    table = read_yaml_mapping(file, "conditions").get("conditions")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{file}: expected a mapping 'conditions: {{name: {{rate, delay, ...}}}}'")
    out: dict[str, Condition] = {}
    for name, spec in table.items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{file}: condition {name!r} must be a mapping")
        unknown = set(spec) - {"delay", "jitter", "loss", "rate", "description", "trace", "mahimahi"}
        if unknown:
            raise ConfigError(
                f"{file}: condition {name!r} has unknown keys {sorted(unknown)} "
                "(allowed: delay, jitter, loss, rate, description; or trace / mahimahi: FILE)"
            )
        if "trace" in spec and "mahimahi" in spec:
            raise ConfigError(f"{file}: condition {name!r}: give trace (a segments table) or "
                              "mahimahi (a delivery trace), not both")
        trace_file = trace_format = None
        for key, fmt in (("trace", "segments"), ("mahimahi", "mahimahi")):
            if key in spec:
                trace_file = str((file.parent / str(spec[key])).resolve())
                trace_format = fmt
        try:
            cond = Condition(
                name=str(name),
                delay_ms=parse_delay(spec.get("delay", 0)),
                jitter_ms=parse_delay(spec.get("jitter", 0)),
                loss_pct=parse_loss(spec.get("loss", 0)),
                rate_mbit=parse_rate(spec.get("rate")),
                trace_file=trace_file,
                trace_format=trace_format,
            )
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        if cond.is_trace:
            cond.trace()  # refuse a bad trace file now, naming its line
        out[str(name)] = cond
    return out


def require_constant(cond: Condition, what: str) -> None:
    """Refuse a trace condition where only constants can be applied (nothing is shaped yet)."""
    if cond.is_trace:
        raise ConfigError(
            f"condition {cond.name} is a trace ({cond.trace_file}); {what} applies constant "
            "conditions only: trace replay is implemented on the emulated testbed (`paretopipe "
            "testbed shape`, and the sweep there), not on real NICs; pick a constant condition, "
            "e.g. one of the trace's rates")
