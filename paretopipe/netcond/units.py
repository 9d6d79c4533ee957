"""Quantities of a network condition: the spellings people write, and the ones ``tc`` takes.

``parse_delay``/``parse_rate``/``parse_loss`` read what a conditions file or a command line
says (``"20ms"``, ``"10mbit"``, ``"0.5%"``, or a bare number in ms, Mbit/s, percent) and raise
:class:`~paretopipe.errors.ConfigError` naming a good spelling; ``fmt_*`` write a value back as
``tc`` wants it, exactly (``"20ms"``, ``"500us"``, ``"10mbit"``).
"""

from __future__ import annotations

import re

from paretopipe.errors import ConfigError

__all__ = ["fmt_ms", "fmt_pct", "fmt_rate", "parse_delay", "parse_loss", "parse_rate"]

_TIME_UNITS = {"us": 1e-3, "usec": 1e-3, "ms": 1.0, "msec": 1.0, "s": 1e3, "sec": 1e3}
_RATE_UNITS = {
    "bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3,
    "bps": 8e-6, "kbps": 8e-3, "mbps": 8.0, "gbps": 8e3,  # tc's "bps" means bytes per second
}


def _parse_quantity(value: str | float | int, units: dict[str, float], what: str,
                    examples: str) -> float:
    """A number with a unit from ``units`` (a bare number is already in the base unit)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in {**units, "": 1.0}:
        raise ConfigError(f"bad {what} {value!r}: write e.g. {examples}")
    return float(match.group(1)) * units.get(match.group(2), 1.0)


def parse_delay(value: str | float | int) -> float:
    """``"20ms"``, ``"0.5ms"``, ``"200us"``, ``"1s"`` or a number of milliseconds -> ms."""
    return _parse_quantity(value, _TIME_UNITS, "time", "20ms, 0.5ms, 200us or 1s")


def parse_rate(value: str | float | int | None) -> float | None:
    """``"10mbit"``, ``"1gbit"``, ``"500kbit"`` or a number of Mbit/s -> Mbit/s (None stays None)."""
    if value is None:
        return None
    return _parse_quantity(value, _RATE_UNITS, "rate", "10mbit, 1gbit or 500kbit")


def parse_loss(value: str | float | int) -> float:
    """``"0.5%"`` or a number -> percent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%?\s*", str(value))
    if not match:
        raise ConfigError(f"bad loss {value!r}: write e.g. 0.5%")
    return float(match.group(1))


def fmt_rate(rate_mbit: float) -> str:
    kbit = round(rate_mbit * 1000)
    if kbit % 1_000_000 == 0:
        return f"{kbit // 1_000_000}gbit"
    if kbit % 1000 == 0:
        return f"{kbit // 1000}mbit"
    return f"{kbit}kbit"


def fmt_ms(ms: float) -> str:
    us = round(ms * 1000)
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


def fmt_pct(pct: float) -> str:
    return f"{pct:g}%"
