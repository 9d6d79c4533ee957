"""What a source link hears from its stages, and which stage to blame when a session fails.

Backends feed a :class:`StageEvents` from their per-connection reader threads (results, a
stage's STATS or ERROR, a connection's EOF) and take from it in ``recv`` and ``finish``.
When something fails, :meth:`StageEvents.failure` waits a short grace period for the other
stages' reports and names the root cause: a stage whose connection died without reporting an
error (its process is gone) beats stages that only report losing a neighbour.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from paretopipe.errors import StageError, TransportError
from paretopipe.transport.wire import FrameReader, Header, MsgType, PeerClosed, parse_json

Event = tuple[str, int, Any]  # (kind: result|stats|error|eof, stage index, payload)

#: How long failure() waits for more reports before naming the root cause.
GRACE_S = 0.5


class StageEvents:
    def __init__(self) -> None:
        self._queue: queue.Queue[Event] = queue.Queue()
        self.closed = False

    def put(self, kind: str, idx: int, item: Any) -> None:
        self._queue.put((kind, idx, item))

    def get(self, timeout: float) -> Event:
        """The next event; raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)

    def on_control(self, idx: int, hdr: Header, reader: FrameReader) -> bool:
        """Turn a STATS or ERROR frame into an event; False for any other frame."""
        if hdr.msg_type == MsgType.STATS:
            self.put("stats", idx, parse_json(reader.small_payload(hdr), hdr.msg_type))
        elif hdr.msg_type == MsgType.ERROR:
            obj = parse_json(reader.small_payload(hdr), hdr.msg_type)
            self.put("error", idx, str(obj.get("message", obj)))
        else:
            return False
        return True

    def on_reader_exit(self, idx: int, exc: BaseException) -> None:
        """A reader thread ended with `exc`; ignored once the link is closed."""
        if self.closed:
            return
        if isinstance(exc, PeerClosed):
            self.put("eof", idx, f"connection closed ({exc}); did the worker die?")
        elif isinstance(exc, (TransportError, OSError)):
            self.put("error", idx, str(exc))

    def failure(self, first: Event, address: Callable[[int], str | None]) -> StageError:
        """The root cause among `first` and the failures that arrive within GRACE_S."""
        events = [first]
        grace_end = time.monotonic() + GRACE_S
        while (left := grace_end - time.monotonic()) > 0:
            try:
                events.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        failures = [e for e in events if e[0] in ("error", "eof")]
        if not failures:
            return StageError(str(first[2]))
        reported = {idx for kind, idx, _ in failures if kind == "error"}
        dead = sorted(idx for kind, idx, _ in failures if kind == "eof" and idx not in reported)
        if dead:
            _, idx, msg = next(e for e in failures if e[0] == "eof" and e[1] == dead[0])
        else:
            _, idx, msg = failures[0]
        return StageError(f"stage {idx} ({address(idx) or '?'}) failed: {msg}")

    def wait_stats(self, idx: int, stats: dict[int, dict[str, Any]], *, timeout: float, name: str,
                   address: Callable[[int], str | None]) -> None:
        """Collect events into `stats` until stage `idx` has reported; late results are dropped and
        the EOF of a stage that already reported is expected."""
        while idx not in stats:
            try:
                kind, i, item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise StageError(f"{name} did not report its stats within {timeout:g} s") from None
            if kind == "stats":
                stats[i] = item
            elif kind == "eof" and i in stats:
                continue
            elif kind != "result":
                raise self.failure((kind, i, item), address)
