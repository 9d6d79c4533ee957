"""What a run of the source is configured with (``paretopipe run``'s options, a sweep's template)
and the checks of it that need no model and no connection: :class:`RunConfig`. The source that
runs it is :mod:`paretopipe.runtime.source`, which re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError

__all__ = ["RunConfig", "FIDELITY_BATCHES"]

#: Counted batches whose logits the source compares with the unsplit, uncoded model (fidelity).
FIDELITY_BATCHES = 16


@dataclass(frozen=True)
class RunConfig:
    model: str
    splits: tuple[int, ...]
    stages: tuple[str, ...]
    out: Path
    batch_size: int = 8
    window: int = 1
    batches: int | None = 50
    duration_s: float | None = None
    warmup: int = 5
    min_batches: int = 20
    min_duration_s: float = 0.0
    input: str = "synthetic"
    num_classes: int = 10
    input_size: int | None = None
    weights: str | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    token_file: str | None = None
    connect_timeout_s: float = 60.0
    source_address: str | None = None  # connect to the workers from this local address
    timeout_s: float = 60.0
    backend: str = "tcp"
    network_label: str = "none"
    network: dict[str, Any] = field(default_factory=dict)  # configured / measured / extra
    sweep_id: str | None = None
    repeat: int = 0
    run_id: str | None = None
    check: bool = False
    codec: str = "none"
    fidelity_batches: int = FIDELITY_BATCHES
    reference_cache: str | None = None  # a folder keeping the reference logits across runs
    replay: str | None = None  # a profile the head stage replays (paretopipe.runtime.replay)
    replay_timing: str = "median"
    replay_output: str = "compute"

    def validate(self) -> None:
        """Check a complete run configuration."""
        self.validate_settings()
        if not self.splits:
            raise ConfigError("give at least one --split (k: blocks [0, k) run on the source)")
        if list(self.splits) != sorted(self.splits):
            raise ConfigError(f"--split values must be non-decreasing, got {list(self.splits)}")
        if len(self.stages) != len(self.splits):
            raise ConfigError(f"{len(self.splits)} split(s) make {len(self.splits) + 1} stages: --stages needs "
                              f"{len(self.splits)} HOST:PORT address(es) (stage 0 is this source), got {len(self.stages)}")

    def validate_settings(self) -> None:
        """Check the settings that do not depend on the chain (also used for sweep templates)."""
        from paretopipe.codecs import parse_codec

        if self.check and parse_codec(self.codec).lossy:
            raise ConfigError(f"--check compares the logits exactly, which the lossy codec {self.codec} cannot "
                              f"reproduce; the result file's summary.fidelity reports how far they differ")
        if (self.batches is None) == (self.duration_s is None):
            raise ConfigError("give exactly one of --batches N or --duration S")
        for name, value, low in (("--batch-size", self.batch_size, 1), ("--window", self.window, 1),
                                 ("--warmup", self.warmup, 0), ("--min-batches", self.min_batches, 0),
                                 ("--batches", self.batches if self.batches is not None else 1, 1)):
            if value < low:
                raise ConfigError(f"{name} must be at least {low} (got {value})")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration must be positive (got {self.duration_s})")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("--timeout and --connect-timeout must be positive")
        from paretopipe.codecs import parse_codec, require_available

        require_available(parse_codec(self.codec))  # an unknown name lists the valid ones
        if self.fidelity_batches < 0:
            raise ConfigError(f"--fidelity-batches must be at least 0 (got {self.fidelity_batches})")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1 (got {self.threads})")
        extra = set(self.network) - {"configured", "measured", "extra"}
        if extra:
            raise ConfigError(f"--network-json keys must be configured/measured/extra, got {sorted(extra)}")
        from paretopipe.transport import get_backend

        get_backend(self.backend)  # an unknown name, or a torch that cannot run it: ConfigError
