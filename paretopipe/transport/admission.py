"""Which not-yet-identified connections a worker entertains: fairness under junk connections.

A connection is *pending* from the moment the worker accepts it until it has identified itself
(authenticated and sent HELLO or JOIN). Pending connections cost a thread each, so there is a
bound on them; the question is who pays when a client (a port scanner, a wedged program, a
flood) holds many open. The rules, and why (docs/protocol.md, "Admission"):

1. **Per peer address**: at most ``per_peer`` pending connections from one IP address. More are
   refused at once with ``too_many_pending`` and a ``retry_after_s`` hint: the peer that floods
   waits, nobody else does. A legitimate source from the same address retries (it is told why).
2. **Total**: at most ``total`` pending connections. When a new connection from an address
   under its own cap finds them all taken, the oldest pending connection of the address with
   the most pending ones is dropped (``evicted``) to make room, so junk from a few addresses
   cannot fill the table against a newcomer.
3. **Deadlines from accept, not per receive**: AUTH must be complete within ``auth_timeout_s``
   (a source answers the CHALLENGE at once, so silence and a byte a second both fail it), and
   the whole preamble (pings, HELLO or JOIN) within ``preamble_timeout_s`` (a handshake that
   authenticates and then stops). A per-receive timeout alone lets a byte every second keep a
   slot forever.

This module is the bookkeeping alone (no sockets touched, a clock passed in) so that it can be
tested on its own; :class:`paretopipe.transport.control.ControlServer` acts on its decisions.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from paretopipe.transport.wire import RefusalCode


@dataclass(frozen=True)
class Limits:
    total: int = 32
    per_peer: int = 8
    auth_timeout_s: float = 3.0
    preamble_timeout_s: float = 10.0


@dataclass(eq=False)
class Pending:
    """One pending connection. ``dropped`` is set (code, reason) once the table gave up on it:
    the connection's own thread then tells the peer and closes it."""

    host: str  # the peer's IP address
    peer: str  # host:port, for the logs
    t_accept: float
    auth_deadline: float
    deadline: float
    sock: Any = None  # what the server shuts to wake the connection's thread
    authenticated: bool = False
    dropped: tuple[RefusalCode, str] | None = field(default=None)


@dataclass(frozen=True)
class Admission:
    """What to do with a newly accepted connection: `entry` to serve it (None: refuse it with
    `code`, `reason`, `retry_after_s`), and the connections evicted to make room."""

    entry: Pending | None
    evicted: tuple[Pending, ...] = ()
    code: RefusalCode | None = None
    reason: str = ""
    retry_after_s: float | None = None


class PendingTable:
    """The pending connections of one worker and the rules above; thread-safe."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._entries: list[Pending] = []  # in order of arrival

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def admit(self, host: str, peer: str, now: float, sock: Any = None) -> Admission:
        lim = self.limits
        with self._lock:
            mine = [e for e in self._entries if e.host == host]
            if len(mine) >= lim.per_peer:
                # the slot that frees first: the oldest of this peer's, at its deadline
                free_at = min(e.auth_deadline if not e.authenticated else e.deadline for e in mine)
                return Admission(None, code=RefusalCode.TOO_MANY_PENDING, retry_after_s=max(0.05, free_at - now),
                                 reason=f"too many connections from {host} are waiting to identify themselves "
                                        f"({len(mine)}, the limit per address is {lim.per_peer}); retry shortly")
            evicted: list[Pending] = []
            while len(self._entries) >= lim.total:
                counts = Counter(e.host for e in self._entries)
                heaviest = max(counts.values())
                victim = next(e for e in self._entries if counts[e.host] == heaviest)
                self._drop(victim, RefusalCode.EVICTED,
                           f"dropped to make room for another peer: {lim.total} connections were waiting to "
                           f"identify themselves, {heaviest} of them from {victim.host}")
                evicted.append(victim)
            entry = Pending(host, peer, now, now + lim.auth_timeout_s, now + lim.preamble_timeout_s, sock)
            self._entries.append(entry)
            return Admission(entry, tuple(evicted))

    def authenticated(self, entry: Pending) -> None:
        with self._lock:
            entry.authenticated = True

    def identified(self, entry: Pending) -> bool:
        """The connection said HELLO or JOIN: it leaves the table. False if it was dropped first."""
        with self._lock:
            if entry.dropped is not None:
                return False
            self._remove(entry)
            return True

    def leave(self, entry: Pending) -> None:
        """The connection's thread is done with it (refused, failed or closed)."""
        with self._lock:
            self._remove(entry)

    def expire(self, now: float) -> list[Pending]:
        """Drop and return the connections past their deadline."""
        lim = self.limits
        out: list[Pending] = []
        with self._lock:
            for e in list(self._entries):
                if not e.authenticated and now >= e.auth_deadline:
                    self._drop(e, RefusalCode.TIMEOUT, f"no complete AUTH within {lim.auth_timeout_s:g} s of connecting")
                elif now >= e.deadline:
                    self._drop(e, RefusalCode.TIMEOUT,
                               f"no HELLO or JOIN within {lim.preamble_timeout_s:g} s of connecting")
                else:
                    continue
                out.append(e)
        return out

    def _drop(self, entry: Pending, code: RefusalCode, reason: str) -> None:
        entry.dropped = (code, reason)
        self._remove(entry)

    def _remove(self, entry: Pending) -> None:
        if entry in self._entries:
            self._entries.remove(entry)
