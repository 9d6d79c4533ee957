"""Predict every split's latency and throughput from profiles, and choose the runs worth measuring.

Pure: no torch, no I/O except :func:`load_profile_files`. Inputs are profiles
(:mod:`paretopipe.profiling`, one per device in chain order) and a :class:`Link`.

The model (docs/predict.md). For a chain of ``S`` stages with split indices ``k_1 <= ... <= k_{S-1}``
(stage ``i`` runs blocks ``[k_i, k_{i+1})`` on device ``i``; ``k_0 = 0``, ``k_S = N``):

* ``c_i`` = the sum of device ``i``'s block medians over its blocks (0 for an empty stage);
* hop ``i`` (``i < S - 1``) carries the tensor crossing ``k_{i+1}`` from device ``i`` to ``i + 1``;
  the last hop returns the logits from the last device to the source (latency is one clock, the source's);
* a hop of ``b`` bytes takes ``t(b) = 8 b / rate + delay + overhead`` (``overhead``: the backend's
  measured per-message cost) and keeps its link busy for ``o(b) = 8 b / rate + overhead``;
* unloaded latency ``L0 = sum(c_i) + sum(t(b_hop))``;
* with at most ``W`` batches in flight the pipeline's period is the slowest resource,
  ``P = max(c_i, o(b_hop))``, and throughput is ``min(1 / P, W / L0)`` batches per second
  (``W = 1``: ``1 / L0``);
* latency under the window follows from Little's law: ``W`` batches in flight at that throughput
  wait ``max(L0, W * P)`` each (``W = 1``: ``L0``), except when the slowest stage is the
  source's own head: the source stamps a batch when it starts its head, so the queue forms
  before the stamp and the latency stays ``L0``.

With a codec ``C`` other than ``none`` (the profile's per-boundary measurements, profile version 2):
a hop between stages carries the wire bytes ``C`` made of the real tensor at that boundary
(``raw x ratio``), the sender's stage also spends ``C``'s encode time (the sender's profile) and
the receiver's stage its decode time (the receiver's profile); the last hop returns the logits
uncoded, as the runtime does. ``none`` adds no codec cost (the raw tensor is sent as it is; the
per-message overhead was measured with it). Fidelity is not predicted: it is measured by runs.

The predicted frontier is the non-dominated set of (latency min, throughput max), computed with
:func:`paretoio.pareto.nondominated_ranks`, the sorting the measured frontier of ``analysis``
uses too. :func:`select` adds each frontier chain's neighbours (one index +-1) and
the two ends (everything on the first device, everything on the last), plus any chain within
``tolerance`` of the frontier.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretoio.files import write_json_atomic
from paretopipe.errors import ConfigError

SCHEMA = "paretopipe.prediction"
SCHEMA_VERSION = 3  # 3: every prediction names its codec; 2: its window and batch size (v1: one of each per file)

#: The runtime's own cost per message (one hop of one batch), in seconds, per backend: framing,
#: thread hand-offs and syscalls on both ends, beyond bytes / rate + delay. Measured with
#: ``benchmarks/bench_predicted_sweep.py --overhead`` on loopback (docs/predict.md records the
#: runs); override with ``paretopipe predict --overhead-ms``.
BACKEND_OVERHEAD_S: dict[str, float] = {
    "tcp": 0.00035,
    "rpc": 0.00108,
}

#: Bytes on the wire per payload byte beyond the payload, for TCP over Ethernet at MTU 1500:
#: each 1448-byte segment (TCP timestamps on) travels as a 1514-byte frame, and the rate caps
#: (tbf) count frames.
TCP_ETHERNET_OVERHEAD = (1514 - 1448) / 1448

STATISTICS = ("median", "mean")

__all__ = ["SCHEMA", "SCHEMA_VERSION", "BACKEND_OVERHEAD_S", "Link", "CodecCost", "DeviceProfile", "Prediction",
           "backend_overhead", "device_profile", "load_profile_files", "chains", "predict_chain",
           "predict_all", "predict_configurations", "select", "select_configurations", "prediction_document",
           "write_prediction"]


@dataclass(frozen=True)
class Link:
    """One network link between consecutive devices (every hop of a chain gets the same one)."""

    delay_s: float = 0.0  # one-way
    rate_bit_s: float | None = None  # None: no cap
    overhead_s: float = 0.0  # the backend's per-message cost
    framing: float = 0.0  # extra wire bytes per payload byte (headers), e.g. TCP_ETHERNET_OVERHEAD

    def __post_init__(self) -> None:
        if not (self.delay_s >= 0 and self.overhead_s >= 0 and self.framing >= 0):
            raise ConfigError("link delay, per-message overhead and framing must be >= 0")
        if self.rate_bit_s is not None and not self.rate_bit_s > 0:
            raise ConfigError("link rate must be > 0 (leave it out for no cap)")

    def serialisation_s(self, nbytes: int) -> float:
        return 0.0 if self.rate_bit_s is None else 8.0 * nbytes * (1.0 + self.framing) / self.rate_bit_s

    def transfer_s(self, nbytes: int) -> float:
        """Time from the send's start to the last byte's arrival: 8 b / rate + delay + overhead."""
        return self.serialisation_s(nbytes) + self.delay_s + self.overhead_s

    def busy_s(self, nbytes: int) -> float:
        """Time the link cannot take the next message: 8 b / rate + overhead (delay pipelines)."""
        return self.serialisation_s(nbytes) + self.overhead_s

    def as_dict(self) -> dict[str, float | None]:
        return {"delay_s": self.delay_s, "rate_bit_s": self.rate_bit_s, "overhead_s": self.overhead_s,
                "framing": self.framing}


@dataclass(frozen=True)
class CodecCost:
    """One codec on the tensor crossing one split, as a profile measured it."""

    wire_bytes: int
    encode_s: float  # on the device that profiled it, as the sender
    decode_s: float  # on the device that profiled it, as the receiver


@dataclass(frozen=True)
class DeviceProfile:
    """What :func:`predict_chain` needs from one profile file."""

    model: str
    num_classes: int
    input_size: int
    batch_size: int
    device: str
    host: str
    block_s: tuple[float, ...]  # median compute per block
    crossing_bytes: tuple[int, ...]  # bytes crossing split k = 0..N (input, then each block's output)
    source: str = ""  # file it came from
    #: codec name -> its cost at split k = 0..N; None: the profile measured no codecs (version 1)
    codecs: Mapping[str, tuple[CodecCost, ...]] | None = None
    schema_version: int = 2

    @property
    def num_blocks(self) -> int:
        return len(self.block_s)

    def codec_costs(self, codec: str) -> tuple[CodecCost, ...]:
        """The codec's cost at every split; a ConfigError names the fix when it was not profiled."""
        where = self.source or self.host
        if self.codecs is None:
            raise ConfigError(f"profile {where} (schema_version {self.schema_version}) has no codec measurements, "
                              f"so codec {codec} cannot be predicted; re-run `paretopipe profile` "
                              "(version 2 measures every codec), or predict --codecs none")
        if codec not in self.codecs:
            raise ConfigError(f"profile {where} did not measure codec {codec} (it has: "
                              f"{', '.join(self.codecs) or 'no codec'}); re-run `paretopipe profile --codecs ...` with it")
        return self.codecs[codec]

    def compute_s(self, start: int, stop: int) -> float:
        return math.fsum(self.block_s[start:stop])


def backend_overhead(backend: str) -> float:
    try:
        return BACKEND_OVERHEAD_S[backend]
    except KeyError:
        raise ConfigError(f"no measured per-message overhead for backend {backend!r} "
                          f"(known: {', '.join(BACKEND_OVERHEAD_S)}); pass --overhead-ms") from None


def device_profile(doc: Mapping[str, Any], source: str = "", statistic: str = "median") -> DeviceProfile:
    """A :class:`DeviceProfile` from a profile document (``paretopipe.profiling``'s schema).

    ``statistic`` picks each block's time: the median (robust to outliers; the default), or the
    mean (what a CPU-quota'd device averages to when its throttling makes timings bimodal)."""
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown statistic {statistic!r} (use {' or '.join(STATISTICS)})")
    cfg = doc["config"]
    blocks = doc["blocks"]
    version = int(doc.get("schema_version", 1))
    codecs: dict[str, tuple[CodecCost, ...]] | None = None
    if version >= 2:
        bounds = doc["codecs"]["boundaries"]
        names = list(bounds[0]["codecs"]) if bounds else []
        codecs = {n: tuple(CodecCost(int(b["codecs"][n]["wire_bytes"]), float(b["codecs"][n]["encode_s"][statistic]),
                                     float(b["codecs"][n]["decode_s"][statistic])) for b in bounds)
                  for n in names}
    return DeviceProfile(
        model=cfg["model"], num_classes=int(cfg["num_classes"]), input_size=int(cfg["input_size"]),
        batch_size=int(cfg["batch_size"]), device=str(cfg["device"]),
        host=str(doc.get("host", {}).get("hostname", "?")),
        block_s=tuple(float(b["compute_s"][statistic]) for b in blocks),
        crossing_bytes=(int(doc["input_bytes"]), *(int(b["output_bytes"]) for b in blocks)),
        source=source, codecs=codecs, schema_version=version,
    )


def load_profile_files(paths: Sequence[str | os.PathLike[str]], statistic: str = "median") -> list[DeviceProfile]:
    """Read profiles (one per device, in chain order) and check that they describe one setup."""
    from paretopipe.profiling import read_profile

    if not paths:
        raise ConfigError("give at least one profile (--profiles P1.json[,P2.json...])")
    profiles = [device_profile(read_profile(p), str(p), statistic) for p in paths]
    first = profiles[0]
    for p in profiles[1:]:
        for what in ("model", "num_classes", "input_size", "batch_size"):
            if getattr(p, what) != getattr(first, what):
                raise ConfigError(f"profiles disagree on {what}: {first.source} has {getattr(first, what)}, "
                                  f"{p.source} has {getattr(p, what)}; profile every device with the same settings")
        if p.crossing_bytes != first.crossing_bytes:
            raise ConfigError(f"profiles {first.source} and {p.source} disagree on block output bytes")
    return profiles


def chains(num_blocks: int, stages: int) -> list[tuple[int, ...]]:
    """Every split tuple of a ``stages``-device chain: non-decreasing indices in ``0..num_blocks``."""
    if stages < 2:
        raise ConfigError(f"a chain needs at least 2 devices (got {stages})")
    return list(itertools.combinations_with_replacement(range(num_blocks + 1), stages - 1))


#: A configuration: (splits, window, batch size, codec).
Config = tuple[tuple[int, ...], int, int, str]


@dataclass(frozen=True)
class Prediction:
    splits: tuple[int, ...]
    compute_s: tuple[float, ...]  # per stage
    hop_bytes: tuple[int, ...]  # per hop; the last returns the logits to the source
    hop_transfer_s: tuple[float, ...]
    latency_unloaded_s: float
    latency_s: float  # under the window (Little's law)
    throughput_batch_s: float  # as a run of the given length reports it (steady state without one)
    throughput_steady_batch_s: float
    batch_size: int
    bottleneck: str  # "stage I", "hop I" or "window"
    rank: int = -1  # non-dominated rank; 0 = on the predicted frontier
    window: int = 1
    codec: str = "none"
    hop_raw_bytes: tuple[int, ...] = ()  # per hop, before the codec (= hop_bytes for none)
    encode_s: tuple[float, ...] = ()  # per hop, on the sender (0 for none and the last hop)
    decode_s: tuple[float, ...] = ()  # per hop, on the receiver

    @property
    def configuration(self) -> Config:
        """(splits, window, batch size, codec): what a sweep runs (paretopipe.plan.Configuration)."""
        return self.splits, self.window, self.batch_size, self.codec

    @property
    def throughput_img_s(self) -> float:
        return self.throughput_batch_s * self.batch_size

    @property
    def on_frontier(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "splits": list(self.splits),
            "window": self.window,
            "batch_size": self.batch_size,
            "codec": self.codec,
            "latency_s": self.latency_s,
            "latency_unloaded_s": self.latency_unloaded_s,
            "throughput_img_s": self.throughput_img_s,
            "throughput_batch_s": self.throughput_batch_s,
            "throughput_steady_img_s": self.throughput_steady_batch_s * self.batch_size,
            "compute_s": list(self.compute_s),
            "hops": [{"bytes": b, "raw_bytes": r, "transfer_s": t, "encode_s": e, "decode_s": d}
                     for b, r, t, e, d in zip(self.hop_bytes, self.hop_raw_bytes or self.hop_bytes, self.hop_transfer_s,
                                              self.encode_s or [0.0] * len(self.hop_bytes),
                                              self.decode_s or [0.0] * len(self.hop_bytes))],
            "bottleneck": self.bottleneck,
            "rank": self.rank,
            "on_frontier": self.on_frontier,
        }


def _profiles_for(profiles: Sequence[DeviceProfile], stages: int) -> list[DeviceProfile]:
    if len(profiles) == 1:
        return list(profiles) * stages
    if len(profiles) != stages:
        raise ConfigError(f"{len(profiles)} profiles for a {stages}-device chain: give one per device "
                          "in chain order, or one for all")
    return list(profiles)


def predict_chain(profiles: Sequence[DeviceProfile], splits: Sequence[int], link: Link,
                  window: int = 1, batches: int | None = None, codec: str = "none") -> Prediction:
    """Latency and throughput of one chain (``len(splits) + 1`` devices) with ``codec`` on every
    hop between stages (the logits return uncoded).

    Throughput is the steady state's unless ``batches`` is given: then it is what a run of that
    many counted batches reports (first send to last completion)."""
    if window < 1:
        raise ConfigError(f"--window must be at least 1 (got {window})")
    if batches is not None and batches < 1:
        raise ConfigError(f"--batches must be at least 1 (got {batches})")
    stages = len(splits) + 1
    devs = _profiles_for(profiles, stages)
    n = devs[0].num_blocks
    ks = [0, *splits, n]
    if any(b < a for a, b in zip(ks, ks[1:])) or not all(0 <= k <= n for k in splits):
        raise ConfigError(f"splits {list(splits)} must be non-decreasing within 0..{n}")
    compute = tuple(devs[i].compute_s(ks[i], ks[i + 1]) for i in range(stages))
    crossing = devs[0].crossing_bytes
    raw_bytes = tuple(crossing[k] for k in [*splits, n])
    encode = [0.0] * stages  # per hop; the last (logits to the source) is never coded
    decode = [0.0] * stages
    hop_bytes = list(raw_bytes)
    if codec != "none":
        for i, k in enumerate(splits):
            sent, got = devs[i].codec_costs(codec)[k], devs[i + 1].codec_costs(codec)[k]
            hop_bytes[i], encode[i], decode[i] = sent.wire_bytes, sent.encode_s, got.decode_s
    transfer = tuple(link.transfer_s(b) for b in hop_bytes)
    # a stage's busy time: its blocks, decoding what it receives, encoding what it sends
    stage_busy = [compute[i] + encode[i] + (decode[i - 1] if i > 0 else 0.0) for i in range(stages)]
    latency0 = math.fsum(stage_busy) + math.fsum(transfer)
    busy = [(c, f"stage {i}") for i, c in enumerate(stage_busy)]
    busy += [(link.busy_s(b), f"hop {i}") for i, b in enumerate(hop_bytes)]
    period, bottleneck = max(busy, key=lambda cb: cb[0])
    if period <= 0 and latency0 <= 0:
        raise ConfigError("every stage and hop takes zero time: the profiles hold no timings")
    if window * period >= latency0:
        throughput = 1.0 / period
        # Batches queue in front of the slowest stage. Downstream of the source that queue is in
        # flight, so W batches share it (Little's law). The source stamps a batch's send time
        # when it starts the batch's head, so when the head is the slowest stage the queue
        # forms before the stamp and each batch still takes L0.
        latency = latency0 if bottleneck == "stage 0" else window * period
    else:
        throughput = window / latency0
        latency = latency0
        bottleneck = "window"
    steady = throughput
    if batches is not None:
        # what the runtime reports: n batches over first send to last completion, i.e.
        # (n - 1) periods plus one latency (docs/results.md); equals 1 / latency for W = 1
        throughput = batches / ((batches - 1) / steady + latency)
    return Prediction(splits=tuple(splits), compute_s=compute, hop_bytes=tuple(hop_bytes), hop_transfer_s=transfer,
                      latency_unloaded_s=latency0, latency_s=latency, throughput_batch_s=throughput,
                      throughput_steady_batch_s=steady, batch_size=devs[0].batch_size, bottleneck=bottleneck,
                      window=window, codec=codec, hop_raw_bytes=raw_bytes, encode_s=tuple(encode),
                      decode_s=tuple(decode))


def _ranked(preds: list[Prediction]) -> list[Prediction]:
    import numpy as np

    from paretoio.pareto import nondominated_ranks

    values = np.array([[p.latency_s, p.throughput_batch_s] for p in preds], dtype=float)
    ranks = nondominated_ranks(values, ["min", "max"])
    return [dataclasses.replace(p, rank=int(r)) for p, r in zip(preds, ranks)]


def predict_all(profiles: Sequence[DeviceProfile], link: Link, *, window: int = 1, stages: int | None = None,
                candidates: Iterable[Sequence[int]] | None = None, batches: int | None = None) -> list[Prediction]:
    """Every chain (or the given candidates), ranked: ``rank == 0`` is the predicted frontier."""
    if stages is None:
        stages = max(2, len(profiles))
    _profiles_for(profiles, stages)
    todo = list(candidates) if candidates is not None else chains(profiles[0].num_blocks, stages)
    return _ranked([predict_chain(profiles, ks, link, window, batches) for ks in todo])


def predict_configurations(profile_sets: Sequence[Sequence[DeviceProfile]], link: Link, *,
                           windows: Sequence[int] = (1,), stages: int | None = None,
                           batches: int | None = None, codecs: Sequence[str] = ("none",)) -> list[Prediction]:
    """Every (split, window, batch size, codec) configuration, ranked together (one frontier per
    group): one profile set per batch size (each set: one profile per device, in chain order),
    every window and codec for each."""
    if not profile_sets:
        raise ConfigError("give at least one set of profiles")
    sizes = [s[0].batch_size for s in profile_sets]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"two profile sets have the same batch size ({sorted(sizes)}); give one set per batch size")
    first = profile_sets[0][0]
    for s in profile_sets[1:]:
        if (s[0].model, s[0].num_classes, s[0].input_size) != (first.model, first.num_classes, first.input_size):
            raise ConfigError(f"profile sets disagree on the model: {first.source} and {s[0].source}; profile every "
                              "batch size of the same model and input size")
    preds: list[Prediction] = []
    for profiles in profile_sets:
        n_stages = stages if stages is not None else max(2, len(profiles))
        _profiles_for(profiles, n_stages)
        for c in codecs:
            if c != "none":
                for p in profiles:
                    p.codec_costs(c)  # one clear error before predicting anything
            for w in windows:
                preds += [predict_chain(profiles, ks, link, w, batches, c)
                          for ks in chains(profiles[0].num_blocks, n_stages)]
    return _ranked(preds)


def _near_frontier(p: Prediction, frontier: Sequence[Prediction], tolerance: float) -> bool:
    """No frontier point beats ``p`` by more than ``tolerance`` (relative) in both objectives."""
    return not any(f.latency_s * (1 + tolerance) < p.latency_s
                   and f.throughput_batch_s > p.throughput_batch_s * (1 + tolerance) for f in frontier)


def select_configurations(preds: Sequence[Prediction], num_blocks: int, *, tolerance: float = 0.0
                          ) -> list[Config]:
    """The (splits, window, batch size, codec) configurations to measure: the predicted frontier,
    those within ``tolerance`` of it, each of those's neighbours (one split index moved by one,
    same window, batch size and codec) and the two ends at every window, batch size and codec.
    Sorted."""
    if tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 (got {tolerance})")
    if not preds:
        return []
    known = {p.configuration for p in preds}
    frontier = [p for p in preds if p.on_frontier]
    core = {p.configuration for p in preds
            if p.on_frontier or (tolerance > 0 and _near_frontier(p, frontier, tolerance))}
    chosen = set(core)
    for ks, w, b, c in core:
        for i in range(len(ks)):
            for step in (-1, 1):
                moved = list(ks)
                moved[i] += step
                nb = (tuple(moved), w, b, c)
                if nb in known:
                    chosen.add(nb)
    width = len(preds[0].splits)
    for _, w, b, c in known:
        for end in ((num_blocks,) * width, (0,) * width):
            if (end, w, b, c) in known:
                chosen.add((end, w, b, c))
    return sorted(chosen)


def select(preds: Sequence[Prediction], num_blocks: int, *, tolerance: float = 0.0) -> list[tuple[int, ...]]:
    """:func:`select_configurations` for predictions of one window, batch size and codec: the splits."""
    if len({(p.window, p.batch_size, p.codec) for p in preds}) > 1:
        raise ConfigError("predictions of several windows, batch sizes or codecs: use select_configurations")
    return [ks for ks, _, _, _ in select_configurations(preds, num_blocks, tolerance=tolerance)]


def _config_dict(c: Config) -> dict[str, Any]:
    return {"splits": list(c[0]), "window": c[1], "batch_size": c[2], "codec": c[3]}


def prediction_document(preds: Sequence[Prediction], profiles: Sequence[DeviceProfile], link: Link, *,
                        backend: str, condition: str, selected: Sequence[Config],
                        tolerance: float, created_utc: str, batches: int | None = None,
                        statistic: str = "median") -> dict[str, Any]:
    """The prediction file (schema ``paretopipe.prediction`` v3; docs/predict.md). ``profiles``:
    every profile used (all batch sizes); ``selected``: configurations (splits, window, batch, codec)."""
    first = profiles[0]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": created_utc,
        "config": {
            "model": first.model, "num_classes": first.num_classes, "input_size": first.input_size,
            "batch_sizes": sorted({p.batch_size for p in preds}), "windows": sorted({p.window for p in preds}),
            "codecs": sorted({p.codec for p in preds}),
            "backend": backend,
            "network": {"label": condition, **link.as_dict()},
            "num_blocks": first.num_blocks, "stages": len(preds[0].splits) + 1 if preds else None,
            "profiles": [{"path": p.source, "host": p.host, "device": p.device, "batch_size": p.batch_size}
                         for p in profiles],
            "tolerance": tolerance, "batches": batches, "statistic": statistic,
        },
        "predictions": [p.as_dict() for p in preds],
        "frontier": [_config_dict(p.configuration) for p in preds if p.on_frontier],
        "selected": [_config_dict(c) for c in selected],
    }


def write_prediction(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (replaces an older prediction of the same name)."""
    path = Path(path)
    try:
        write_json_atomic(path, doc)
    except OSError as exc:
        raise ConfigError(f"cannot write prediction {path}: {exc.strerror or exc}") from None
    return path
