"""The backend-neutral interface between the stage runners and a transport (either backend).

The runners in :mod:`paretopipe.runtime` never touch sockets or RPC. They see two small
interfaces and the plain data classes below:

``SourceLink`` (what ``paretopipe run`` drives, one per session)
    ``open(plan)``        connect every stage, authenticate, hand each its :class:`SessionSpec`,
                          collect their :class:`StageInfo` answers, and check that the tensor each
                          stage produces is the tensor the next one expects (shape *and* dtype;
                          a mismatch raises StageError naming both sides).
    ``send(batch_id, tensor)``  push the head's output into the chain (CPU tensor, contiguous);
                          returns the source-clock time the send started.
    ``recv(timeout)``     the next :class:`ResultBatch` from the last stage; raises StageError
                          naming the failed stage when one dies or reports an error.
    ``finish()``          end the session on every stage; returns each stage's stats dict.
    ``close()``           drop everything (idempotent; used on failure).

``StageLink`` (what a worker's stage loop sees, one per session)
    ``recv()``            the next :class:`InBatch` (its tensor lives in a buffer the link owns),
                          or ``None`` when the session ended normally.
    ``release(batch)``    give the input buffer back once the stage is done reading it.
    ``send(batch_id, tensor, records, t_ready)``  forward the output (a CPU tensor) to the next
                          stage or back to the source; ``records`` ends with this stage's record,
                          whose queue time the link extends by the wait from ``t_ready`` (output
                          ready) to the start of the send. Returns the send time.

A backend is registered with :func:`register_backend` under a name (``tcp``, ``rpc``):
it supplies ``source_link()`` and ``serve(...)``, which runs a worker that calls back into a
backend-neutral :class:`StageHandler` (``prepare(spec) -> StageInfo`` then
``run(link) -> stats``). The CLI takes its ``--backend`` choices from :func:`backend_names`.

Timing conventions, shared by all backends: every time is a ``time.monotonic()`` value of the
clock that stamped it. A stage's record holds its compute time, its queue time (waiting before
compute and before sending), the bytes of its incoming tensor and the transfer time of its
incoming hop, corrected for the clock offset between the two ends measured at connect time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from paretopipe.errors import ConfigError, ProtocolError

__all__ = [
    "Backend",
    "InBatch",
    "ResultBatch",
    "SessionPlan",
    "SessionSpec",
    "SourceLink",
    "StageHandler",
    "StageInfo",
    "StageLink",
    "StageRecord",
    "backend_names",
    "get_backend",
    "register_backend",
]


@dataclass(frozen=True)
class StageRecord:
    """What one stage did to one batch; stages append theirs as the batch travels.

    The ``_in`` fields describe the hop the batch arrived on: its bytes on the wire, the raw
    (decoded) bytes, the sender's encode time and this stage's decode time. Each backend carries
    records its own way (:mod:`.wire` packs them into a frame, :mod:`.rpc` sends the tuples)."""

    compute_s: float
    queue_s: float
    transfer_in_s: float
    bytes_in: int
    raw_in: int = 0
    encode_in_s: float = 0.0
    decode_in_s: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, int, int, float, float]:
        return (self.compute_s, self.queue_s, self.transfer_in_s, self.bytes_in, self.raw_in,
                self.encode_in_s, self.decode_in_s)


@dataclass(frozen=True)
class SessionSpec:
    """What the source tells one stage at the start of a session (travels as JSON)."""

    session_id: int
    model: str
    num_classes: int
    input_size: int
    splits: tuple[int, ...]
    stage_index: int  # 1..num_stages-1 (stage 0 is the source)
    num_stages: int
    batch_size: int
    dtype: str
    weights: dict[str, Any]
    next_address: str | None  # None: return the result to the source
    window: int
    timeout_s: float
    threads: int | None = None
    seed: int = 0
    codec: str = "none"  # what crosses every split (paretopipe.codecs); the logits return uncoded
    run_id: str | None = None  # the source's run (its result file's name): a busy worker names it
    # for replayed stages with stored output (paretopipe.runtime.replay): the source's inputs,
    # how many batch ids it sends (None: for a duration) and where the sweep keeps such tensors
    input: str = "synthetic"
    total_batches: int | None = None
    cache_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["splits"] = list(self.splits)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SessionSpec:
        try:
            spec = cls(
                session_id=int(obj["session_id"]), model=str(obj["model"]),
                num_classes=int(obj["num_classes"]), input_size=int(obj["input_size"]),
                splits=tuple(int(k) for k in obj["splits"]), stage_index=int(obj["stage_index"]),
                num_stages=int(obj["num_stages"]), batch_size=int(obj["batch_size"]),
                dtype=str(obj["dtype"]), weights=dict(obj["weights"]),
                next_address=None if obj.get("next_address") is None else str(obj["next_address"]),
                window=int(obj["window"]), timeout_s=float(obj["timeout_s"]),
                threads=None if obj.get("threads") is None else int(obj["threads"]),
                seed=int(obj.get("seed", 0)), codec=str(obj.get("codec", "none")),
                run_id=None if obj.get("run_id") is None else str(obj["run_id"])[:200],
                input=str(obj.get("input", "synthetic")),
                total_batches=None if obj.get("total_batches") is None else int(obj["total_batches"]),
                cache_dir=None if obj.get("cache_dir") is None else str(obj["cache_dir"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed session spec: {exc!r}") from None
        if not 1 <= spec.stage_index < spec.num_stages or len(spec.splits) != spec.num_stages - 1:
            raise ProtocolError(f"stage index {spec.stage_index} does not fit {spec.num_stages} stages / splits {spec.splits}")
        if spec.batch_size < 1 or spec.window < 1 or spec.timeout_s <= 0:
            raise ProtocolError("batch size, window and timeout must be positive")
        return spec


@dataclass(frozen=True)
class StageInfo:
    """A stage's answer to the handshake."""

    index: int
    address: str | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str
    device: str
    environment: dict[str, Any] = field(default_factory=dict)
    blocks: tuple[int, int] = (0, 0)
    replay: dict[str, Any] | None = None  # a replayed stage: its profile and how it replays it

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["in_shape"], out["out_shape"], out["blocks"] = list(self.in_shape), list(self.out_shape), list(self.blocks)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, address: str | None) -> StageInfo:
        try:
            return cls(
                index=int(obj["index"]), address=address,
                in_shape=tuple(int(d) for d in obj["in_shape"]),
                out_shape=tuple(int(d) for d in obj["out_shape"]), dtype=str(obj["dtype"]),
                device=str(obj["device"]), environment=dict(obj.get("environment") or {}),
                blocks=tuple(int(b) for b in obj.get("blocks", (0, 0))),  # type: ignore[arg-type]
                replay=dict(obj["replay"]) if obj.get("replay") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed READY answer: {exc!r}") from None


@dataclass
class InBatch:
    """A batch a stage received. ``tensor`` is a CPU view of a link-owned buffer."""

    batch_id: int
    tensor: Any
    records: list[StageRecord]
    transfer_in_s: float
    bytes_in: int
    t_arrived: float  # when it was received and decoded, ready for compute
    slot: int = -1  # buffer slot, for release()
    raw_bytes: int = 0  # the decoded tensor's bytes (bytes_in: what crossed the wire)
    encode_s: float = 0.0  # the sender's encode time
    decode_s: float = 0.0  # this side's decode time


@dataclass
class ResultBatch:
    """Logits back at the source, with what every stage and hop did to them."""

    batch_id: int
    logits: Any
    records: list[StageRecord]  # stages 1..N-1, in order
    return_transfer_s: float
    return_bytes: int
    t_done: float
    return_raw_bytes: int = 0
    return_encode_s: float = 0.0
    return_decode_s: float = 0.0


@dataclass(frozen=True)
class SessionPlan:
    """Everything the source link needs to open a session."""

    addresses: tuple[str, ...]  # stage 1..N-1
    spec: SessionSpec  # template: stage_index / next_address are filled in per stage
    head_out_shape: tuple[int, ...]  # what the source sends
    logits_shape: tuple[int, ...]  # what the source expects back
    token: bytes | None
    connect_timeout_s: float
    # intra-op threads per stage 1..N-1 (None: the worker's own default); empty: spec.threads
    stage_threads: tuple[int | None, ...] = ()
    source_address: str | None = None  # the local address the source connects from (None: the system's choice)

    def stage_spec(self, idx: int) -> SessionSpec:
        """The spec stage `idx` is told: its index, its successor and its thread count."""
        n = self.spec.num_stages
        threads = self.stage_threads[idx - 1] if self.stage_threads else self.spec.threads
        return replace(self.spec, stage_index=idx, next_address=self.addresses[idx] if idx < n - 1 else None,
                       threads=threads)


class SourceLink(abc.ABC):
    @abc.abstractmethod
    def open(self, plan: SessionPlan) -> list[StageInfo]: ...

    @abc.abstractmethod
    def send(self, batch_id: int, tensor: Any) -> float: ...

    @abc.abstractmethod
    def recv(self, timeout: float) -> ResultBatch: ...

    @abc.abstractmethod
    def finish(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class StageLink(abc.ABC):
    spec: SessionSpec

    @abc.abstractmethod
    def recv(self) -> InBatch | None: ...

    @abc.abstractmethod
    def release(self, batch: InBatch) -> None: ...

    @abc.abstractmethod
    def send(self, batch_id: int, tensor: Any, records: Sequence[StageRecord], t_ready: float) -> float: ...


class StageHandler(Protocol):
    """The backend-neutral worker logic a backend's server calls into."""

    def prepare(self, spec: SessionSpec) -> StageInfo: ...

    def run(self, link: StageLink) -> dict[str, Any]: ...

    @property
    def pin_memory(self) -> bool: ...


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    source_link: Callable[[], SourceLink]
    serve: Callable[..., None]


_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, loader: Callable[[], Backend]) -> None:
    """Register a backend by name; `loader` imports it lazily (so --help stays fast)."""
    _BACKENDS[name] = loader


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        loader = _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r} (available: {', '.join(backend_names())})") from None
    return loader()
