"""Per-block compute time and output bytes on the device this runs on (``paretopipe profile``).

A profile is what :mod:`paretopipe.predict` needs to predict every split without running it:
for each block ``b`` of the model's decomposition (:func:`paretopipe.splitting.block_graph`),
the time the block takes at the chosen batch size on this device, and the bytes of the tensor it
hands to the next block (the bytes that cross split ``b + 1``).

How a block is timed: the model is built once (seeded random weights, or a checkpoint), each
block becomes its own stage module (``BlockGraph.stage_module(root, b, b + 1)``), and one
*pass* runs the blocks in order on a synthetic batch, timing each block separately (on CUDA the
stream is synchronised around every block). ``warmup`` passes are thrown away; over the next
``repeats`` passes each block gets a median and its spread (IQR, p10, p90, min, max). The whole
unsplit model is timed the same way, so that the sum of block medians can be checked against it
(``fused_compute_s``).

Codecs (version 2): after the timed passes, one more pass hands each boundary's real tensor (the
input, then every block's output, on the CPU as the transports send it) to every codec of
``codecs`` (default: every one this installation has, :func:`paretopipe.codecs.available_codecs`),
``codec_repeats`` times: the bytes it puts on the wire (``ratio`` = wire / raw) and the median and
spread of its encode and decode times, as :class:`paretopipe.codecs.Encoder` and ``Decoder``
measure them in a run. ``paretopipe predict`` uses them to predict a codec's hops.

Profile files are JSON with their own schema (``paretopipe.profile``, version 2; docs/predict.md),
written atomically and never overwritten. Version 1 files (no codec measurements) are still read;
:mod:`paretopipe.predict` refuses them only for a codec other than ``none``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError

SCHEMA = "paretopipe.profile"
SCHEMA_VERSION = 2  # 2: codec ratio and encode/decode time per boundary ("codecs")
SCHEMA_VERSIONS = (1, 2)  # read

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SCHEMA_VERSIONS", "ProfileConfig", "spread", "measure_codecs", "profile_model",
           "write_profile", "read_profile"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProfileConfig:
    model: str
    device: str = "cpu"
    batch_size: int = 8
    input_size: int | None = None
    num_classes: int = 10
    weights: str | None = None
    seed: int = 0
    repeats: int = 20
    warmup: int = 3
    threads: int | None = None
    codecs: tuple[str, ...] | None = None  # None: every available codec
    codec_repeats: int = 5

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.repeats < 3:
            raise ConfigError(f"--repeats must be at least 3 for a median and a spread (got {self.repeats})")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1 (got {self.threads})")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be cpu or cuda[:N] (got {self.device!r})")
        if self.codec_repeats < 1:
            raise ConfigError(f"--codec-repeats must be at least 1 (got {self.codec_repeats})")

    def codec_list(self) -> list[str]:
        """The codecs to measure, checked (an unknown or unavailable one is a ConfigError)."""
        from paretopipe.codecs import available_codecs, parse_codec_list, require_available

        if self.codecs is None:
            return available_codecs()
        chosen = parse_codec_list(list(self.codecs))
        for codec in chosen:
            require_available(codec)
        return [c.name for c in chosen]


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread of timing samples: median, IQR, p10, p90, mean, min, max (seconds)."""
    if not samples:
        raise ValueError("no samples")
    s = sorted(samples)
    return {
        "median": statistics.median(s),
        "iqr": _quantile(s, 0.75) - _quantile(s, 0.25),
        "p10": _quantile(s, 0.10),
        "p90": _quantile(s, 0.90),
        "mean": statistics.fmean(s),
        "min": s[0],
        "max": s[-1],
    }


def _sync(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda"):
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def measure_codecs(tensor: Any, names: Sequence[str], repeats: int) -> dict[str, dict[str, Any]]:
    """Each codec of ``names`` on ``tensor`` (a float32 tensor, moved to the CPU contiguous as the
    transports send it), ``repeats`` times: wire bytes, ratio (wire / raw), encode and decode
    time (median and spread). Decoding checks what it gets, so a broken codec fails here."""
    import torch

    from paretopipe.codecs import Decoder, Encoder, parse_codec

    t = tensor.detach().to("cpu", torch.float32).contiguous()
    out = torch.empty_like(t)
    raw = t.numel() * t.element_size()
    doc: dict[str, dict[str, Any]] = {}
    for name in names:
        codec = parse_codec(name)
        encoder, decoder = Encoder(codec), Decoder(codec, t.shape)
        enc_s: list[float] = []
        dec_s: list[float] = []
        wire = 0
        for _ in range(repeats):
            enc = encoder.encode(t)
            wire = enc.wire_bytes
            decoder.check_length(wire)
            dec_s.append(decoder.decode(enc.payload, enc.scale, enc.zero_point, out))
            enc_s.append(enc.encode_s)
        doc[codec.name] = {"wire_bytes": wire, "ratio": wire / raw if raw else 1.0,
                           "encode_s": spread(enc_s), "decode_s": spread(dec_s)}
    return doc


def profile_model(cfg: ProfileConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Profile ``cfg.model`` here; returns the profile document (schema ``paretopipe.profile`` v2)."""
    import torch

    from paretopipe.models import build_model, weights_spec
    from paretopipe.environment import environment_info
    from paretopipe.results import utc_now
    from paretopipe.splitting import block_graph, split_points

    cfg.validate()
    codec_names = cfg.codec_list()
    say = progress or (lambda _msg: None)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine (use --device cpu)")
    points = split_points(cfg.model, num_classes=cfg.num_classes, input_size=cfg.input_size,
                          batch_size=cfg.batch_size)  # validates model, input size and batch size
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    graph = block_graph(cfg.model, cfg.num_classes)
    input_size = points[0].shape[-1]
    t_start = time.monotonic()
    say(f"profiling {cfg.model} ({graph.num_blocks} blocks) at batch {cfg.batch_size}, "
        f"{input_size} px on {cfg.device}, {torch.get_num_threads()} thread(s): "
        f"{cfg.warmup} warm-up + {cfg.repeats} timed passes")
    root = build_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights, seed=cfg.seed)
    device = torch.device(cfg.device)
    root = root.to(device)
    blocks = [graph.stage_module(root, b, b + 1) for b in range(graph.num_blocks)]
    sync = _sync(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.randn(*points[0].shape, generator=gen).to(device)

    samples: list[list[float]] = [[] for _ in blocks]
    fused: list[float] = []
    out_bytes: list[int] = [0] * len(blocks)
    out_shapes: list[list[int]] = [[] for _ in blocks]
    with torch.inference_mode():
        for p in range(cfg.warmup + cfg.repeats):
            timed = p >= cfg.warmup
            x = x0
            for b, block in enumerate(blocks):
                sync()
                t0 = time.perf_counter()
                y = block(x).contiguous()
                sync()
                dt = time.perf_counter() - t0
                if timed:
                    samples[b].append(dt)
                if p == 0:
                    out_bytes[b] = y.numel() * y.element_size()
                    out_shapes[b] = list(y.shape)
                x = y
            sync()
            t0 = time.perf_counter()
            root(x0)
            sync()
            if timed:
                fused.append(time.perf_counter() - t0)
            if timed and (p - cfg.warmup + 1) % max(1, cfg.repeats // 4) == 0:
                say(f"  pass {p - cfg.warmup + 1}/{cfg.repeats}")
        # codecs: one more pass, each boundary's real tensor through every codec (after the
        # timed passes, so the block timings are not disturbed by it)
        boundaries: list[dict[str, Any]] = []
        if codec_names:
            say(f"  codecs {', '.join(codec_names)} at {graph.num_blocks + 1} boundaries, "
                f"{cfg.codec_repeats} time(s) each")
            x = x0
            for k in range(graph.num_blocks + 1):
                boundaries.append({"split": k, "raw_bytes": x.numel() * x.element_size(),
                                   "codecs": measure_codecs(x, codec_names, cfg.codec_repeats)})
                if k < graph.num_blocks:
                    x = blocks[k](x).contiguous()

    for b, point in enumerate(points[1:]):
        if out_bytes[b] != point.bytes:  # would mean the decomposition and the model disagree
            raise ConfigError(f"{cfg.model}: block {b} produced {out_bytes[b]} bytes, the split table says "
                              f"{point.bytes}; cannot profile this model")
    block_docs = []
    for b, blk in enumerate(graph.blocks):
        block_docs.append({
            "index": b,
            "name": blk.name,
            "compute_s": spread(samples[b]),
            "output_bytes": out_bytes[b],
            "output_shape": out_shapes[b],
        })
    total_median = sum(d["compute_s"]["median"] for d in block_docs)
    env = environment_info(cfg.device)
    env.pop("index", None)
    env["threads"] = torch.get_num_threads()
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": utc_now(),
        "config": {
            "model": cfg.model,
            "num_classes": cfg.num_classes,
            "input_size": input_size,
            "batch_size": cfg.batch_size,
            "dtype": points[0].dtype,
            "weights": weights_spec(cfg.weights, cfg.seed),
            "device": cfg.device,
            "threads": cfg.threads,
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
        },
        "codecs": {"names": codec_names, "repeats": cfg.codec_repeats, "boundaries": boundaries},
        "host": env,
        "num_blocks": graph.num_blocks,
        "input_bytes": points[0].bytes,
        "input_shape": list(points[0].shape),
        "blocks": block_docs,
        "summary": {
            "sum_block_median_s": total_median,
            "fused_compute_s": spread(fused),
            "wall_s": time.monotonic() - t_start,
        },
    }


# --- files -------------------------------------------------------------------------------------


def write_profile(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temporary file, then a hard link); never overwrite."""
    from paretopipe.results import write_json_exclusive

    path = Path(path)
    if path.exists():
        raise ConfigError(f"profile file {path} already exists; profiles are never overwritten "
                          "(delete it or pick another --out)")
    try:
        return write_json_exclusive(doc, path, what="profile file")
    except OSError as exc:
        raise ConfigError(f"cannot write profile {path}: {exc.strerror or exc}") from None


def _cross_field_problems(doc: dict[str, Any]) -> list[str]:
    """The rules the profile schema cannot state (paretoio/schemas/paretopipe.profile.schema.json)."""
    n = doc["num_blocks"]
    problems = []
    if len(doc["blocks"]) != n:
        problems.append(f"$.blocks: {len(doc['blocks'])} blocks, but num_blocks is {n}")
    bounds = (doc.get("codecs") or {}).get("boundaries") or []
    if bounds and len(bounds) != n + 1:
        problems.append(f"$.codecs.boundaries: {len(bounds)} boundaries, one per split 0..{n} expected")
    names = set(bounds[0]["codecs"]) if bounds else set()
    for k, b in enumerate(bounds):
        if b["split"] != k:
            problems.append(f"$.codecs.boundaries[{k}].split: {b['split']}, expected {k} (in split order)")
        if set(b["codecs"]) != names:
            problems.append(f"$.codecs.boundaries[{k}].codecs: {sorted(b['codecs'])}, not the same codecs as "
                            f"split 0's {sorted(names)}")
    return problems


def read_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a profile file; a ConfigError says what is wrong with it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"profile {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is not a profile file (schema {SCHEMA!r}); make one with `paretopipe profile`")
    if doc.get("schema_version") not in SCHEMA_VERSIONS:
        raise ConfigError(f"profile {path} has schema_version {doc.get('schema_version')!r}; this paretopipe "
                          f"reads {' and '.join(map(str, SCHEMA_VERSIONS))} (re-run `paretopipe profile`)")
    from paretoio.schema import PROFILE_SCHEMA, schema_problems

    problems = schema_problems(doc, PROFILE_SCHEMA) or _cross_field_problems(doc)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"profile {path} is malformed: {'; '.join(problems[:3])}{more}; re-run `paretopipe profile`")
    return doc
