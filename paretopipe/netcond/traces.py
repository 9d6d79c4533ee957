"""Links that move: network conditions read from a trace, on the run's clock.

Two file formats, one model (:class:`Trace`, a piecewise-constant list of :class:`Segment`):

- **Mahimahi packet-delivery traces** (:func:`read_mahimahi`): one integer millisecond
  timestamp per line, each line one opportunity to deliver a 1500-byte packet; several lines
  with the same timestamp are several opportunities in that millisecond. Timestamps never
  decrease, and the trace loops at its end with the last timestamp as its period, as
  Mahimahi's ``LinkQueue`` does (a file holding the single line ``1`` is 12 Mbit/s forever).
  The opportunities are counted in bins of ``bin_s`` (default :data:`MIN_STEP_S`) to give the
  capacity of each bin; equal neighbouring bins merge into one segment.
- **Segments tables** (:func:`read_segments`), CSV or YAML, columns ``t_s, rate, delay, jitter,
  loss`` in the units the constant conditions accept (``10mbit``, ``20ms``, ``0.5%``, or bare
  numbers in Mbit/s, ms, percent). Each row holds from its ``t_s`` until the next row's. A last
  row with only ``t_s`` ends the trace, which then loops; without it the last row holds for
  the rest of the run. An empty ``rate`` is unlimited; ``0`` is an outage. Lines starting with
  ``#`` are comments. YAML::

      segments:
        - {t_s: 0, rate: 50mbit, delay: 5ms}
        - {t_s: 10, rate: 2mbit, delay: 5ms}
      end_s: 20                          # optional: the trace loops at 20 s
      gilbert_elliott: {p: 1%, r: 30%}   # optional burst loss (netem's gemodel p r 1-h 1-k)

Bad files are refused with one line naming the file and the line: a negative or unordered
timestamp, an empty trace, a rate of zero for the whole trace, a unit it does not know, and a
segment shorter than :data:`MIN_STEP_S`, the shortest step the replay can follow. A trace
longer than the run is fine: :meth:`Trace.part_used` says which part a run saw.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import ConfigError
from paretopipe.netcond.units import fmt_rate, parse_delay, parse_loss, parse_rate

__all__ = [
    "MAHIMAHI_PACKET_BYTES",
    "MIN_STEP_S",
    "GilbertElliott",
    "Segment",
    "Trace",
    "read_mahimahi",
    "read_segments",
    "read_trace",
    "trace_records",
    "write_mahimahi",
    "write_segments_csv",
]

#: bytes one Mahimahi delivery opportunity carries (one line of the trace)
MAHIMAHI_PACKET_BYTES = 1500
#: the shortest segment replay follows: ``tc qdisc change`` of every shaped qdisc of a hop
#: (egress and ifb, both devices) from one scheduler thread takes a few ms per command, so
#: steps below 100 ms would be smeared by the changes themselves
MIN_STEP_S = 0.1
_COLUMNS = ("t_s", "rate", "delay", "jitter", "loss")


@dataclass(frozen=True)
class Segment:
    """One piece of a trace: from ``t_s`` on, until the next segment. ``rate_mbit=None`` is
    unlimited, ``0`` an outage; delay and jitter are one-way, as in a constant condition."""

    t_s: float
    rate_mbit: float | None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    line: int = 0  # where in its file it came from (0: made, not read)


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst loss (netem's ``gemodel``): ``p`` good->bad, ``r`` bad->good per packet,
    ``h`` delivered in bad (default 0), ``k`` delivered in good (default 100), all percent."""

    p_pct: float
    r_pct: float
    h_pct: float = 0.0
    k_pct: float = 100.0

    def __post_init__(self) -> None:
        for name in ("p_pct", "r_pct", "h_pct", "k_pct"):
            if not 0 <= getattr(self, name) <= 100:
                raise ConfigError(f"gilbert_elliott {name[0]} must be in [0, 100] %")
        if self.p_pct + self.r_pct == 0:
            raise ConfigError("gilbert_elliott p and r cannot both be 0 (the chain never moves)")

    @property
    def mean_loss_pct(self) -> float:
        """Long-run loss: the stationary share of each state times its loss."""
        bad = self.p_pct / (self.p_pct + self.r_pct)
        return (1 - bad) * (100 - self.k_pct) + bad * (100 - self.h_pct)


@dataclass(frozen=True)
class Trace:
    """A piecewise-constant link on the run's clock, ``t = 0`` when measurement starts.

    ``end_s`` is where the trace ends and loops (``None``: the last segment holds forever).
    """

    source: str
    kind: str  # "mahimahi" or "segments"
    segments: tuple[Segment, ...]
    end_s: float | None
    gilbert_elliott: GilbertElliott | None = None

    def _local(self, t_s: float) -> float:
        if t_s < 0:
            raise ValueError(f"trace time {t_s} is before the trace starts")
        return math.fmod(t_s, self.end_s) if self.end_s is not None else t_s

    def index_at(self, t_s: float) -> int:
        """Which segment holds at run time ``t_s`` (looping at ``end_s``)."""
        local = self._local(t_s)
        lo, hi = 0, len(self.segments) - 1
        while lo < hi:  # last segment whose start <= local
            mid = (lo + hi + 1) // 2
            if self.segments[mid].t_s <= local:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def at(self, t_s: float) -> Segment:
        return self.segments[self.index_at(t_s)]

    def capacity_mbit(self, t_s: float) -> float | None:
        return self.at(t_s).rate_mbit

    def boundaries(self, until_s: float) -> list[tuple[float, Segment]]:
        """Every segment start in ``[0, until_s)``, loops unrolled: the replay's schedule."""
        out: list[tuple[float, Segment]] = []
        base = 0.0
        while base < until_s:
            for seg in self.segments:
                if base + seg.t_s >= until_s:
                    return out
                out.append((base + seg.t_s, seg))
            if self.end_s is None:
                break
            base += self.end_s
        return out

    def part_used(self, run_s: float) -> str:
        """Which part of the trace a run of ``run_s`` seconds saw, in words."""
        if self.end_s is None:
            last = self.index_at(run_s) + 1
            return (f"0-{run_s:g} s of {self.source}: segments 1-{last} of {len(self.segments)}"
                    + (" (the last one held to the end)" if last == len(self.segments) else ""))
        if run_s <= self.end_s:
            return (f"0-{run_s:g} s of the {self.end_s:g} s trace {self.source} "
                    f"(segments 1-{self.index_at(run_s) + 1} of {len(self.segments)})")
        return f"all of the {self.end_s:g} s trace {self.source}, looped {run_s / self.end_s:.2f} times"

    def describe(self) -> str:
        rates = [s.rate_mbit for s in self.segments]
        finite = [r for r in rates if r is not None]
        span = (f"{fmt_rate(min(finite))}..{fmt_rate(max(finite))}" if finite else "unlimited")
        if finite and None in rates:
            span += " and unlimited"
        length = f"{self.end_s:g} s, looping" if self.end_s is not None else "open-ended"
        return f"trace {self.source} ({self.kind}, {len(self.segments)} segments, {length}, {span})"


def _fail(file: Path, line: int, msg: str) -> ConfigError:
    return ConfigError(f"{file}:{line}: {msg}")


def _checked(file: Path, segments: list[Segment], end_s: float | None, end_line: int,
             kind: str, ge: GilbertElliott | None, min_step_s: float) -> Trace:
    """The common checks of both formats, then the :class:`Trace`."""
    if not segments:
        raise _fail(file, max(end_line, 1), "the trace is empty: give at least one segment")
    if segments[0].t_s != 0:
        raise _fail(file, segments[0].line, f"the first segment starts at {segments[0].t_s:g} s; "
                    "a trace starts at t_s 0 (when measurement starts)")
    ends = [s.t_s for s in segments[1:]] + ([end_s] if end_s is not None else [])
    for seg, nxt in zip(segments, ends):
        if len(segments) > 1 and nxt - seg.t_s < min_step_s - 1e-9:  # one segment never steps
            raise _fail(file, seg.line, f"segment at {seg.t_s:g} s lasts {nxt - seg.t_s:g} s; "
                        f"the replay follows steps of {min_step_s:g} s or longer (merge it with a "
                        "neighbour)")
    if all(s.rate_mbit == 0 for s in segments):
        raise _fail(file, segments[0].line, "the rate is 0 for the whole trace: nothing would "
                    "ever be delivered")
    for seg in segments:
        if seg.jitter_ms > seg.delay_ms:
            raise _fail(file, seg.line, f"jitter {seg.jitter_ms:g} ms exceeds delay "
                        f"{seg.delay_ms:g} ms")
        if not 0 <= seg.loss_pct < 100:
            raise _fail(file, seg.line, "loss must be in [0, 100) %")
    return Trace(source=str(file), kind=kind, segments=tuple(segments), end_s=end_s,
                 gilbert_elliott=ge)


def read_mahimahi(path: str | Path, *, bin_s: float = MIN_STEP_S, delay_ms: float = 0.0,
                  jitter_ms: float = 0.0, loss_pct: float = 0.0,
                  min_step_s: float = MIN_STEP_S) -> Trace:
    """A Mahimahi packet-delivery trace as segments of ``bin_s`` (delay/jitter/loss: constant,
    as a Mahimahi shell stacks ``mm-delay`` and ``mm-loss`` around ``mm-link``)."""
    file = Path(path)
    if bin_s < min_step_s:
        raise ConfigError(f"{file}: bin {bin_s:g} s is shorter than the {min_step_s:g} s steps "
                          "the replay can follow")
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read trace file {file}: {exc.strerror}") from exc
    stamps: list[int] = []
    last_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        last_line = number
        item = raw.strip()
        if not item:
            continue
        if not item.isdigit():
            raise _fail(file, number, f"{item!r} is not a timestamp: a Mahimahi trace has one "
                        "non-negative integer millisecond per line")
        value = int(item)
        if stamps and value < stamps[-1]:
            raise _fail(file, number, f"timestamp {value} ms comes after {stamps[-1]} ms; "
                        "timestamps must not decrease")
        stamps.append(value)
    if not stamps:
        raise _fail(file, max(last_line, 1), "the trace is empty: give one millisecond per line")
    period_ms = stamps[-1]
    if period_ms == 0:
        raise _fail(file, last_line, "the trace lasts 0 ms (its last timestamp is its period); "
                    "Mahimahi refuses it too")
    bin_ms = bin_s * 1000
    nbins = math.ceil(period_ms / bin_ms - 1e-9)
    counts = [0] * nbins
    for stamp in stamps:  # a packet at ms t is one delivered in (t-1, t]; 0 is the period
        counts[min(int(((stamp - 1) % period_ms) // bin_ms), nbins - 1)] += 1
    widths = [min(bin_ms, period_ms - k * bin_ms) for k in range(nbins)]
    if nbins > 1 and widths[-1] < min_step_s * 1000 - 1e-6:  # fold a short last bin back
        counts[-2] += counts.pop()
        widths[-2] += widths.pop()
        nbins -= 1
    segments: list[Segment] = []
    for k in range(nbins):
        rate = counts[k] * MAHIMAHI_PACKET_BYTES * 8 / (widths[k] / 1000) / 1e6
        if segments and segments[-1].rate_mbit == rate:
            continue
        segments.append(Segment(t_s=k * bin_s, rate_mbit=rate, delay_ms=delay_ms,
                                jitter_ms=jitter_ms, loss_pct=loss_pct, line=1))
    return _checked(file, segments, period_ms / 1000, last_line, "mahimahi", None, min_step_s)


def _segment(file: Path, line: int, row: dict) -> Segment | None:
    """One row (None: an end row, only ``t_s``); units as the constant conditions take them."""
    unknown = set(row) - set(_COLUMNS)
    if unknown:
        raise _fail(file, line, f"unknown column(s) {sorted(unknown)} (columns: {', '.join(_COLUMNS)})")

    def cell(name: str):
        value = row.get(name)
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    if cell("t_s") is None:
        raise _fail(file, line, "missing t_s (seconds from the start of the trace)")
    try:
        t_s = float(cell("t_s"))
    except (TypeError, ValueError):
        raise _fail(file, line, f"t_s {row['t_s']!r} is not a number of seconds") from None
    if not math.isfinite(t_s) or t_s < 0:
        raise _fail(file, line, f"t_s {t_s:g} is negative; a trace starts at 0")
    if all(cell(c) is None for c in _COLUMNS[1:]):
        return None
    try:
        return Segment(t_s=t_s, rate_mbit=None if cell("rate") is None else parse_rate(cell("rate")),
                       delay_ms=parse_delay(cell("delay") or 0),
                       jitter_ms=parse_delay(cell("jitter") or 0),
                       loss_pct=parse_loss(cell("loss") or 0), line=line)
    except ConfigError as exc:
        raise _fail(file, line, str(exc)) from None


def _rows_csv(file: Path, text: str) -> list[tuple[int, dict]]:
    lines = [(n, raw) for n, raw in enumerate(text.splitlines(), start=1)
             if raw.strip() and not raw.lstrip().startswith("#")]
    if not lines:
        return []
    reader = csv.reader([raw for _, raw in lines], skipinitialspace=True)
    header = [h.strip() for h in next(reader)]
    if "t_s" not in header:
        raise _fail(file, lines[0][0], f"the first line must name the columns ({', '.join(_COLUMNS)})")
    out = []
    for (number, _), cells in zip(lines[1:], reader):
        if len(cells) > len(header) and not any(c.strip() for c in cells[len(header):]):
            cells = cells[:len(header)]  # trailing empty cells, as in an end row "30,,,,"
        if len(cells) > len(header):
            raise _fail(file, number, f"{len(cells)} cells for {len(header)} columns")
        out.append((number, dict(zip(header, (c.strip() for c in cells)))))
    return out


def _rows_yaml(file: Path, text: str) -> tuple[list[tuple[int, dict]], dict, dict[str, int]]:
    import yaml

    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"trace file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ConfigError(f"{file}:1: expected 'segments: [{{t_s, rate, delay, jitter, loss}}, ...]'")
    unknown = set(data) - {"segments", "end_s", "gilbert_elliott", "description"}
    if unknown:
        raise ConfigError(f"{file}:1: unknown keys {sorted(unknown)} "
                          "(allowed: segments, end_s, gilbert_elliott, description)")
    lines = {key.value: key.start_mark.line + 1 for key, _ in root.value}
    seq = next(value for key, value in root.value if key.value == "segments")
    rows = []
    for node, row in zip(seq.value, data["segments"]):
        if not isinstance(row, dict):
            raise _fail(file, node.start_mark.line + 1, "a segment is a mapping {t_s, rate, ...}")
        rows.append((node.start_mark.line + 1, row))
    return rows, data, lines


def _gilbert_elliott(spec: object, where: str) -> GilbertElliott | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not {"p", "r"} <= set(spec) or set(spec) - {"p", "r", "h", "k"}:
        raise ConfigError(f"{where}: gilbert_elliott takes {{p, r[, h, k]}} in percent, "
                          "e.g. {p: 1%, r: 30%}")
    try:
        return GilbertElliott(p_pct=parse_loss(spec["p"]), r_pct=parse_loss(spec["r"]),
                              h_pct=parse_loss(spec.get("h", 0)), k_pct=parse_loss(spec.get("k", 100)))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_segments(path: str | Path, *, min_step_s: float = MIN_STEP_S) -> Trace:
    """A segments table, CSV (``.csv``) or YAML (``.yml``/``.yaml``)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read trace file {file}: {exc.strerror}") from exc
    last_line = len(text.splitlines())
    ge_spec: object = None
    ge_where = str(file)
    end_s: float | None = None
    end_line = last_line
    if file.suffix.lower() in (".yml", ".yaml"):
        rows, data, lines = _rows_yaml(file, text)
        if data.get("gilbert_elliott") is not None:
            ge_spec, ge_where = data["gilbert_elliott"], f"{file}:{lines['gilbert_elliott']}"
        if data.get("end_s") is not None:
            end_line = lines["end_s"]
            try:
                end_s = float(data["end_s"])
            except (TypeError, ValueError):
                raise _fail(file, end_line, f"end_s {data['end_s']!r} is not a number of seconds") from None
    elif file.suffix.lower() == ".csv":
        rows = _rows_csv(file, text)
    else:
        raise ConfigError(f"{file}: unknown trace format {file.suffix!r}: a segments table is "
                          ".csv, .yml or .yaml; a Mahimahi trace is named with `mahimahi:`")
    segments: list[Segment] = []
    for position, (line, row) in enumerate(rows):
        seg = _segment(file, line, {str(k): v for k, v in row.items()})
        previous = segments[-1].t_s if segments else None
        t_s = seg.t_s if seg is not None else float(row["t_s"])
        if previous is not None and t_s <= previous:
            raise _fail(file, line, f"t_s {t_s:g} is not after the previous row's {previous:g}; "
                        "rows must be in increasing time")
        if seg is None:
            if position != len(rows) - 1:
                raise _fail(file, line, "a row with only t_s ends the trace; it must be the last row")
            if end_s is not None:
                raise _fail(file, line, "the trace's end is given twice (end row and end_s)")
            end_s, end_line = t_s, line
            continue
        segments.append(seg)
    if end_s is not None and segments and end_s <= segments[-1].t_s:
        raise _fail(file, end_line, f"end_s {end_s:g} is not after the last segment's "
                    f"{segments[-1].t_s:g} s")
    return _checked(file, segments, end_s, end_line, "segments",
                    _gilbert_elliott(ge_spec, ge_where), min_step_s)


def read_trace(path: str | Path, *, fmt: str | None = None, **mahimahi_constants: float) -> Trace:
    """Either format: ``fmt`` ``"mahimahi"`` or ``"segments"``; by default ``.csv``/``.yml``/
    ``.yaml`` are segments tables and anything else (Mahimahi's own names: ``.up``, ``.down``,
    no suffix) a Mahimahi trace."""
    file = Path(path)
    if fmt is None:
        fmt = "segments" if file.suffix.lower() in (".csv", ".yml", ".yaml") else "mahimahi"
    if fmt == "mahimahi":
        return read_mahimahi(file, **mahimahi_constants)
    if fmt == "segments":
        if mahimahi_constants:
            raise ConfigError(f"{file}: a segments table carries its own delay, jitter and loss; "
                              f"drop {', '.join(sorted(mahimahi_constants))} from the condition")
        return read_segments(file)
    raise ConfigError(f"unknown trace format {fmt!r} (mahimahi or segments)")


def write_segments_csv(segments: list[Segment], end_s: float | None, header: str = "") -> str:
    """The CSV text of a segments table (exact, so made traces regenerate byte for byte)."""
    out = [f"# {line}" for line in header.splitlines()]
    out.append(",".join(_COLUMNS))
    for seg in segments:
        rate = "" if seg.rate_mbit is None else fmt_rate(seg.rate_mbit)
        out.append(f"{seg.t_s:g},{rate},{seg.delay_ms:g}ms,{seg.jitter_ms:g}ms,{seg.loss_pct:g}%")
    if end_s is not None:
        out.append(f"{end_s:g},,,,")
    return "\n".join(out) + "\n"


def write_mahimahi(trace: Trace, period_s: float | None = None) -> str:
    """A Mahimahi trace (one integer ms per line) delivering ``trace``'s rates, as Mahimahi's
    own traces are written: opportunities spread over each millisecond by the running total of
    1500-byte packets the rate allows. Unlimited segments cannot be written."""
    period = period_s if period_s is not None else trace.end_s
    if period is None:
        raise ConfigError("an open-ended trace needs a period to be written as Mahimahi")
    lines: list[str] = []
    total = 0.0
    sent = 0
    for ms in range(1, round(period * 1000) + 1):
        rate = trace.capacity_mbit((ms - 1) / 1000)
        if rate is None:
            raise ConfigError("an unlimited segment has no Mahimahi form")
        total += rate * 1e6 / 8 / 1000 / MAHIMAHI_PACKET_BYTES
        due = math.floor(total + 1e-9)
        lines.extend([str(ms)] * (due - sent))
        sent = due
    if not lines:
        raise ConfigError("the trace delivers nothing over its period")
    # Mahimahi's period is the last timestamp: the last opportunity moves to the period's end
    lines[-1] = str(round(period * 1000))
    return "\n".join(lines) + "\n"


def _percentiles(values: list[float]) -> dict | None:
    import numpy as np

    if not values:
        return None
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def trace_records(trace: Trace, batches: list[dict]) -> tuple[list[dict], dict]:
    """Each batch on the trace's clock, and the summary under the trace (pure).

    ``batches`` are a result file's records, whose ``send_s``/``done_s`` count from the first
    counted batch's send: that instant is the trace's t = 0 (measurement starts after warm-up,
    so every run of a configuration sees the same link at the same batch). Each batch gets
    ``trace_send_s``, ``trace_recv_s`` (on the trace's clock, loops unrolled),
    ``trace_segment`` (index of the segment it was sent in) and ``trace_capacity_mbit`` (that
    segment's rate; null = unlimited). The summary gives latency p50/p95/p99 over the whole run
    and per segment (batches by the segment they were sent in, loops merged).
    """
    out = []
    by_segment: dict[int, list[float]] = {}
    for b in batches:
        index = trace.index_at(max(0.0, b["send_s"]))
        out.append({**b, "trace_send_s": b["send_s"], "trace_recv_s": b["done_s"],
                    "trace_segment": index, "trace_capacity_mbit": trace.segments[index].rate_mbit})
        by_segment.setdefault(index, []).append(b["latency_s"])
    run_s = max((b["done_s"] for b in batches), default=0.0)
    summary = {
        "source": trace.source, "kind": trace.kind, "end_s": trace.end_s,
        "clock": "t = 0 at the first counted batch's send (after warm-up)",
        "part_used": trace.part_used(run_s),
        "latency_s": _percentiles([b["latency_s"] for b in batches]),
        "segments": [{"index": i, "t_s": seg.t_s, "rate_mbit": seg.rate_mbit,
                      "batches": len(by_segment.get(i, [])),
                      "latency_s": _percentiles(by_segment.get(i, []))}
                     for i, seg in enumerate(trace.segments)],
    }
    return out, summary
