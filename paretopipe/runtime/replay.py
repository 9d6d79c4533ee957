"""Replayed stages: a stage that takes its compute time from a measured profile (issue 24).

A device of the emulated testbed can *replay* a real device: its stage runs through the real
runtime, TCP stack and shaping, but each batch takes the time the profile (``paretopipe
profile``, :mod:`paretopipe.profiling`) recorded for the blocks the stage runs, not the time
the host happens to need:

- **timing** ``median``: the sum of the per-block medians; ``draw``: for each block, a draw from
  the recorded distribution (the piecewise-linear quantile curve through min, p10, median, p90
  and max), seeded by the session's seed, the stage and the batch id, so a batch gets the same
  time whatever order the batches run in.
- **output** ``compute``: the stage computes for real, then waits out the rest of the profiled
  time (the host must be faster than the device replayed); ``stored``: the stage sends the
  activations (or logits) that the unsplit model's first blocks give for the same inputs,
  computed once beforehand and kept (in memory for the worker's life, and in ``cache_dir``
  when the session names one, like the reference logits of :mod:`.reference`), so a GPU
  profile can be replayed on a CPU host and codecs still see real data.

Waiting is a sleep until the batch's deadline, never a spin. A batch whose real work (the
compute, or the look-up) took longer than its profiled time is an **overrun**: it is counted
and the stage reports it (``replay.overruns`` in the result file); the analysis says the host
was too slow to replay the device.

:class:`ReplayCompute` is a :class:`~paretopipe.runtime.compute.StageCompute`: the worker and
the source use it in place of :class:`~paretopipe.runtime.compute.PlainCompute`, and nothing
else of the stage loop changes.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError, StageError
from paretopipe.runtime.compute import HostBuffers, StepResult, compute

__all__ = ["ReplayTiming", "ReplayOutput", "ReplayProfile", "ReplaySetting", "ReplayCompute", "load_replay_profile",
           "stored_outputs"]

log = logging.getLogger(__name__)

#: A stage reports at most this many overrun batch ids (the count itself is exact).
MAX_OVERRUN_IDS = 10_000


class ReplayTiming(str, enum.Enum):
    MEDIAN = "median"
    DRAW = "draw"


class ReplayOutput(str, enum.Enum):
    COMPUTE = "compute"
    STORED = "stored"


def _choice(enum_cls: type[enum.Enum], value: str, option: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r}: use one of {', '.join(m.value for m in enum_cls)}") from None


@dataclass(frozen=True)
class ReplayProfile:
    """A profile file, read and checked, with what names it in a result file."""

    path: str
    sha256: str
    doc: Mapping[str, Any]

    @property
    def num_blocks(self) -> int:
        return int(self.doc["num_blocks"])

    def provenance(self) -> dict[str, Any]:
        """Where this profile's times come from: its host, device, torch, date and checksum."""
        cfg, host = self.doc["config"], self.doc.get("host") or {}
        return {"path": self.path, "sha256": self.sha256, "created_utc": self.doc.get("created_utc"),
                "model": cfg["model"], "batch_size": cfg["batch_size"], "input_size": cfg.get("input_size"),
                "host": host.get("hostname") or host.get("host"), "device": cfg.get("device"),
                "device_name": host.get("device_name"), "cpu_model": host.get("cpu_model"),
                "torch": host.get("torch"), "threads": host.get("threads")}

    def check_fits(self, *, model: str, num_classes: int, input_size: int, batch_size: int, num_blocks: int) -> None:
        """A ConfigError unless this profile times the model, input and batch of the run."""
        cfg = self.doc["config"]
        wanted = {"model": model, "batch size": batch_size, "input size": input_size, "classes": num_classes}
        have = {"model": cfg["model"], "batch size": cfg["batch_size"], "input size": cfg.get("input_size"),
                "classes": cfg.get("num_classes", num_classes)}
        for what, value in wanted.items():
            if have[what] != value:
                raise ConfigError(
                    f"replay profile {self.path} is for {what} {have[what]}, but the run uses {what} {value}; profile "
                    f"this device with `paretopipe profile --model {model} --batch-size {batch_size} "
                    f"--input-size {input_size} --num-classes {num_classes}`")
        indices = sorted(int(b.get("index", i)) for i, b in enumerate(self.doc["blocks"]))
        if self.num_blocks != num_blocks or indices != list(range(num_blocks)):
            missing = sorted(set(range(num_blocks)) - set(indices))
            raise ConfigError(f"replay profile {self.path} has {len(indices)} of {model}'s {num_blocks} blocks"
                              f"{f' (missing {missing[:8]})' if missing else ''}; re-run `paretopipe profile`")

    def block_spread(self, b: int) -> Mapping[str, float]:
        by_index = {int(blk.get("index", i)): blk for i, blk in enumerate(self.doc["blocks"])}
        return by_index[b]["compute_s"]


def load_replay_profile(path: str | Path) -> ReplayProfile:
    """Read a profile for replay; a file that is not a profile is a ConfigError naming it."""
    from paretopipe.profiling import read_profile

    doc = read_profile(path)  # a file that is not a profile: a ConfigError naming it
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return ReplayProfile(path=str(Path(path).resolve()), sha256=digest, doc=doc)


@dataclass(frozen=True)
class ReplaySetting:
    """What a device replays: a profile, how to time it, how to produce the output."""

    profile: ReplayProfile
    timing: ReplayTiming = ReplayTiming.MEDIAN
    output: ReplayOutput = ReplayOutput.COMPUTE

    @classmethod
    def from_options(cls, path: str, timing: str = "median", output: str = "compute") -> ReplaySetting:
        chosen = _choice(ReplayTiming, timing, "--replay-timing"), _choice(ReplayOutput, output, "--replay-output")
        return cls(load_replay_profile(path), *chosen)

    def describe(self, blocks: tuple[int, int]) -> dict[str, Any]:
        """The stage's replay section (StageInfo.replay; config.stages[i].replay of the result)."""
        return {"profile": self.profile.provenance(), "timing": self.timing.value, "output": self.output.value,
                "blocks": list(blocks), "median_s": sum(self.profile.block_spread(b)["median"]
                                                        for b in range(*blocks))}


def _draw(spread: Mapping[str, float], u: float) -> float:
    """The quantile ``u`` of the piecewise-linear curve through the recorded quantiles."""
    knots = [(q, spread[k]) for q, k in ((0.0, "min"), (0.1, "p10"), (0.5, "median"), (0.9, "p90"), (1.0, "max"))
             if k in spread]
    for (q0, v0), (q1, v1) in zip(knots, knots[1:]):
        if u <= q1:
            return v0 + (v1 - v0) * (u - q0) / (q1 - q0)
    return knots[-1][1]


class ReplayCompute:
    """A stage step that takes the profile's time for blocks ``[a, b)`` (see the module doc)."""

    def __init__(self, setting: ReplaySetting, *, blocks: tuple[int, int], stage_index: int, seed: int,
                 module: Any = None, device: str = "cpu", outputs: Mapping[int, Any] | None = None,
                 period: int | None = None) -> None:
        if setting.output == ReplayOutput.STORED and outputs is None:
            raise StageError("stored replay output needs the stored activations")
        self.setting = setting
        self.blocks = blocks
        self.stage_index = stage_index
        self.seed = seed
        self.module = module
        self.device = device
        self.outputs = outputs
        self.period = period
        self._spreads = [setting.profile.block_spread(b) for b in range(*blocks)]
        self._median = sum(s["median"] for s in self._spreads)
        self.batches = 0
        self.overruns = 0
        self.overrun_s = 0.0  # summed real time beyond the profiled time
        self.overrun_ids: list[int] = []  # the batches that overran (the source skips warm-up ones)

    def budget(self, batch_id: int) -> float:
        """The profiled seconds of batch ``batch_id`` on this stage."""
        if self.setting.timing == ReplayTiming.MEDIAN:
            return self._median
        digest = hashlib.sha256(f"{self.seed}:{self.stage_index}:{batch_id}".encode()).digest()
        rng = random.Random(digest)
        return sum(_draw(s, rng.random()) for s in self._spreads)

    def _stored(self, batch_id: int) -> Any:
        assert self.outputs is not None
        key = batch_id % self.period if self.period else batch_id
        try:
            return self.outputs[key]
        except KeyError:
            raise StageError(f"stage {self.stage_index}: no stored output for batch {batch_id} (stored: "
                             f"{len(self.outputs)} batches); stored replay output needs --batches N or synthetic "
                             "inputs, so that the batches are known beforehand") from None

    def __call__(self, x: Any, buffers: HostBuffers, batch_id: int) -> StepResult:
        cpu0 = time.thread_time()
        t_start = time.monotonic()
        if self.setting.output == ReplayOutput.STORED:
            out, slot = self._stored(batch_id), -1
        else:
            out, slot, _, _, _ = compute(self.module, x, self.device, buffers)
        cpu = time.thread_time() - cpu0
        deadline = t_start + self.budget(batch_id)
        late = time.monotonic() - deadline
        self.batches += 1
        if late > 0:
            self.overruns += 1
            self.overrun_s += late
            if len(self.overrun_ids) < MAX_OVERRUN_IDS:
                self.overrun_ids.append(batch_id)
        else:
            time.sleep(-late)  # a sleep until the deadline: waiting threads do not spin
        return out, slot, t_start, time.monotonic(), cpu

    def stats(self) -> dict[str, Any]:
        """What the stage reports at the end of the session (its STATS ``replay`` entry)."""
        return {"batches": self.batches, "overruns": self.overruns, "overrun_s": self.overrun_s,
                "overrun_batch_ids": list(self.overrun_ids)}


def stored_outputs(*, model: str, num_classes: int, weights: Mapping[str, Any], seed: int, input_spec: str,
                   input_size: int, batch_size: int, boundary: int, batch_ids: list[int],
                   cache_dir: str | None, memo: dict[str, Any]) -> dict[int, Any]:
    """The tensor that crosses split ``boundary`` (the logits at the last block) for each batch
    of ``batch_ids``, on the same inputs as the source's: blocks ``[0, boundary)`` of the
    unsplit model. Computed once, then kept in ``memo`` (the worker's, across sessions) and in
    ``cache_dir`` (one file per boundary, keyed like the reference logits)."""
    import torch

    from paretopipe.runtime.inputs import open_input
    from paretopipe.runtime.reference import ReferenceStore, reference_key

    key = {**reference_key(model=model, num_classes=num_classes, seed=seed, weights=weights, input_spec=input_spec,
                           input_size=input_size, batch_size=batch_size),
           "what": "replay activations", "boundary": boundary}
    ident = repr(sorted(key.items()))
    store = memo.get(ident)
    if store is None:
        def make(ids: list[int]) -> dict[int, Any]:
            from paretopipe.splitting import build_stages

            path = weights.get("path") if weights.get("kind") == "file" else None
            head = build_stages(model, (boundary,), num_classes=num_classes, weights=path,
                                seed=int(weights.get("seed", seed)))[0]
            inputs = open_input(input_spec, batch_size=batch_size, input_size=input_size, seed=seed)
            with torch.inference_mode():
                return {b: head(inputs.batch(b).images).contiguous() for b in ids}

        store = memo[ident] = ReferenceStore(cache_dir, key, make)
    t0 = time.monotonic()
    out = store.logits(batch_ids)
    if store.computed:
        log.info("replay: stored outputs at split %d for %d batches ready in %.2f s", boundary, len(batch_ids),
                 time.monotonic() - t0)
    return out


#: What the analysis says of a run with overruns.
TOO_SLOW = "the host was too slow to replay this device"


def replay_section(stage_docs: Mapping[int, Mapping[str, Any] | None], stage_stats: list[dict[str, Any]], *,
                   warmup: int) -> dict[str, Any] | None:
    """A result file's ``replay`` section from each replayed stage's description (its READY
    answer; the source's own for stage 0) and its end-of-session stats; None when no stage
    replayed (a measured run). Overruns count the counted batches only (ids >= ``warmup``);
    None where the stage sent no stats (the run failed first)."""
    stats = {int(s.get("index", -1)): s.get("replay") or {} for s in stage_stats}
    stages = []
    for idx in sorted(i for i, doc in stage_docs.items() if doc):
        own = stats.get(idx, {})
        ids = own.get("overrun_batch_ids")
        counted = None if ids is None else sum(1 for b in ids if b >= warmup)
        stages.append({"index": idx, **dict(stage_docs[idx]), "batches": own.get("batches"),
                       "overruns": counted, "overrun_s": own.get("overrun_s")})
    if not stages:
        return None
    overruns = sum(s["overruns"] or 0 for s in stages)
    return {"replayed": True, "stages": stages, "overruns": overruns,
            "note": TOO_SLOW if overruns else None}


def parse_replay_map(text: str, *, example: str = "pi1=pi4.json,gpu=server.json") -> dict[str, str]:
    """``--replay DEVICE=PROFILE[,...]`` as {device: profile path}; a malformed item is a ConfigError."""
    chosen: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--replay {item!r}: use DEVICE=PROFILE, e.g. --replay {example}")
        if name.strip() in chosen:
            raise ConfigError(f"--replay names device {name.strip()} twice")
        chosen[name.strip()] = path.strip()
    if not chosen:
        raise ConfigError(f"--replay needs DEVICE=PROFILE, e.g. --replay {example}")
    return chosen


def check_chain_replay(entries: list[Any], *, chain: list[str], model: str, num_classes: int,
                       input_size: int | None, batch_sizes: tuple[int, ...], num_blocks: int) -> list[dict[str, Any]]:
    """A sweep's replayed devices, checked before it starts: ``entries[i]`` is what chain device
    ``i`` replays (``{profile, timing, output}``, or empty). Each profile must time this sweep's
    model, input size and every batch size; else a ConfigError names the device and the fix.
    Returns the entries, ``{}`` for a device that does not replay."""
    from paretopipe.models import get_model_info

    size = input_size or get_model_info(model).input_size
    out: list[dict[str, Any]] = []
    for name, entry in zip(chain, list(entries) + [{}] * (len(chain) - len(entries))):
        if not entry:
            out.append({})
            continue
        setting = ReplaySetting.from_options(str(entry["profile"]), str(entry.get("timing", "median")),
                                             str(entry.get("output", "compute")))
        for batch in batch_sizes:
            try:
                setting.profile.check_fits(model=model, num_classes=num_classes, input_size=size, batch_size=batch,
                                           num_blocks=num_blocks)
            except ConfigError as exc:
                raise ConfigError(f"device {name}: {exc}") from None
        out.append({"profile": setting.profile.path, "timing": setting.timing.value, "output": setting.output.value})
    return out
