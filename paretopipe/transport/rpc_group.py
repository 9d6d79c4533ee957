"""The torch.distributed.rpc side of the rpc backend: where the group meets, which interface it
uses, whether this torch can run it, and entering and leaving a session's group.

The backend (:mod:`.rpc`) uses this module for everything that touches torch's RPC machinery
beyond ``rpc_async``:

- :class:`RpcOptions` and :func:`apply_cli_options`: the master address and the interfaces
  (MASTER_ADDR / MASTER_PORT, TP_SOCKET_IFNAME / GLOO_SOCKET_IFNAME, or the CLI flags);
- :func:`interface_for_address`: the interface holding the address this process is reached on;
- :func:`require_rpc_support`: a ConfigError naming what is missing when this torch lacks RPC or
  the internals this backend resets;
- :func:`master_store`, :func:`session_store`, :func:`init_rpc`, :func:`leave_rpc`: a
  rendezvous of our own (our timeouts, one store namespace per session) and leaving without
  torch's per-process barrier.

TensorPipe is limited to its TCP transport (``uv``) and ``basic`` channel, so it crosses the
same network path as the TCP backend (on one host it would otherwise switch to shared memory and
bypass any shaped link).
"""

from __future__ import annotations

import contextlib
import ipaddress
import operator
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

from paretopipe.errors import ConfigError, TransportError

#: Environment variables this backend reads.
ENV_MASTER_ADDR, ENV_MASTER_PORT = "MASTER_ADDR", "MASTER_PORT"
ENV_TP_IFNAME, ENV_GLOO_IFNAME = "TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"
_SCHEME = "paretopipe"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RpcOptions:
    """Where the RPC group meets and which interface TensorPipe / Gloo use (None: automatic)."""

    master_addr: str | None = None
    master_port: int | None = None
    tp_ifname: str | None = None
    gloo_ifname: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RpcOptions:
        env = os.environ if environ is None else environ
        port_text = env.get(ENV_MASTER_PORT) or None
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise ConfigError(f"{ENV_MASTER_PORT}={port_text!r} is not a port number (0..65535; 0 = any free port)")
            port = int(port_text) or None
        return cls(master_addr=env.get(ENV_MASTER_ADDR) or None, master_port=port,
                   tp_ifname=env.get(ENV_TP_IFNAME) or None, gloo_ifname=env.get(ENV_GLOO_IFNAME) or None)


def apply_cli_options(*, backend: str, master: str | None = None, ifname: str | None = None) -> None:
    """`--rpc-master HOST[:PORT]` / `--rpc-ifname IFACE`: set the environment this backend reads
    (MASTER_ADDR/MASTER_PORT, TP_SOCKET_IFNAME/GLOO_SOCKET_IFNAME), which processes the command
    starts (a sweep's workers and sources) inherit."""
    if backend != "rpc":
        given = [flag for flag, value in (("--rpc-master", master), ("--rpc-ifname", ifname)) if value]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ConfigError(f"{' and '.join(given)} only {verb} to --backend rpc (got --backend {backend})")
        return
    if master:
        if master.startswith("["):  # [IPv6] or [IPv6]:PORT
            host, _, rest = master[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else ("x" if rest else "")
        elif master.count(":") == 1:
            host, _, port = master.partition(":")
        else:  # a name, IPv4, or a bare IPv6 address
            host, port = master, ""
        if not host or (port and (not port.isdigit() or int(port) > 65535)):
            raise ConfigError(f"--rpc-master {master!r}: expected HOST or HOST:PORT, e.g. 10.0.0.1:29400")
        os.environ[ENV_MASTER_ADDR] = host
        if port:
            os.environ[ENV_MASTER_PORT] = port
    if ifname:
        os.environ[ENV_TP_IFNAME] = os.environ[ENV_GLOO_IFNAME] = ifname


def interface_for_address(address: str) -> str:
    """The network interface holding `address` (exact match first, then the subnet holding it)."""
    import psutil

    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(address, None)[0][4][0])
        except (socket.gaierror, ValueError) as exc:
            raise ConfigError(f"cannot resolve {address!r} to pick a network interface: {exc}") from None
    if ip.is_unspecified:
        raise ConfigError(f"{address} is not one interface's address; set {ENV_TP_IFNAME} (and {ENV_GLOO_IFNAME})")
    subnet_match = None
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                own = ipaddress.ip_address(a.address.split("%")[0])
            except ValueError:
                continue
            if own == ip:
                return name
            if subnet_match is None and a.netmask and own.version == ip.version:
                try:
                    if ip in ipaddress.ip_network(f"{own}/{a.netmask}", strict=False):
                        subnet_match = name
                except ValueError:
                    pass
    if subnet_match is not None:
        return subnet_match
    raise ConfigError(f"no network interface of this host holds {address}; set {ENV_TP_IFNAME} and {ENV_GLOO_IFNAME}")


@contextlib.contextmanager
def _interface_env(tp_ifname: str, gloo_ifname: str) -> Iterator[None]:
    """TensorPipe and Gloo read their interface from the environment while RPC initialises."""
    saved = {k: os.environ.get(k) for k in (ENV_TP_IFNAME, ENV_GLOO_IFNAME)}
    os.environ[ENV_TP_IFNAME], os.environ[ENV_GLOO_IFNAME] = tp_ifname, gloo_ifname
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- rendezvous
#
# torch's tcp:// rendezvous waits up to 30 minutes for missing ranks and a master store it makes
# outlives rpc.shutdown in the process, so the port cannot be bound again. We make the store
# ourselves (with our timeouts, one per session namespace) and hand it to init_rpc through a
# rendezvous scheme of our own.

_PENDING_STORES: dict[str, Any] = {}
_MASTER_STORES: dict[tuple[str, int], Any] = {}
_REGISTERED = False
RPC_LOCK = threading.Lock()  # one RPC group per process at a time


def _rendezvous_handler(url: str, timeout: Any = None, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    yield _PENDING_STORES.pop(query["key"]), int(query["rank"]), int(query["world_size"])
    raise TransportError("the RPC group cannot re-rendezvous; start a new session")


#: What this backend uses of torch.distributed.rpc beyond its public API (see init_rpc and
#: _rpc_initialised); torch 2.11 and 2.14, which this backend has run with, have them.
_TORCH_INTERNALS = ("_init_counter_lock", "_init_counter", "api._all_gather_sequence_id", "api._is_current_rpc_agent_set")


def require_rpc_support() -> None:
    """ConfigError, naming what is missing, unless this torch can run the rpc backend."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.rpc.is_available()):
        raise ConfigError(f"this torch ({torch.__version__}) was built without torch.distributed.rpc; "
                          "use --backend tcp, or a torch build with distributed support")
    from torch.distributed import rpc

    missing = []
    for name in _TORCH_INTERNALS:
        try:
            operator.attrgetter(name)(rpc)
        except AttributeError:
            missing.append(f"rpc.{name}")
    if missing:
        raise ConfigError(f"the rpc backend needs torch.distributed.rpc internals that this torch ({torch.__version__}) "
                          f"lacks: {', '.join(missing)}; use --backend tcp, or a torch that has them (2.11 and 2.14 do)")


def _register_scheme() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from torch.distributed.rendezvous import register_rendezvous_handler

        register_rendezvous_handler(_SCHEME, _rendezvous_handler)
        _REGISTERED = True


def master_store(host: str, port: int | None, timeout_s: float) -> Any:
    """The TCPStore this source hosts for its RPC group; reused per (host, port) in this process."""
    import torch.distributed as dist

    key = (host, port or 0)
    if port and key in _MASTER_STORES:
        store = _MASTER_STORES[key]
        store.set_timeout(timedelta(seconds=timeout_s))
        return store
    try:
        store = dist.TCPStore(host, port or 0, None, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:
        text = str(exc)
        if "EADDRINUSE" in text or "already in use" in text:
            raise ConfigError(f"RPC master port {port} on {host} is already in use; set {ENV_MASTER_PORT} to a free "
                              f"port (or unset it to pick one)") from None
        raise ConfigError(f"cannot host the RPC master on {host}:{port or 0}: {text.splitlines()[0]}") from None
    _MASTER_STORES[(host, int(store.port))] = store
    return store


def session_store(store: Any, session_id: int) -> Any:
    import torch.distributed as dist

    return dist.PrefixStore(f"paretopipe/{session_id}", store)


def init_rpc(name: str, rank: int, world_size: int, store: Any, *, session_id: int, timeout_s: float,
              tp_ifname: str, gloo_ifname: str) -> None:
    from torch.distributed import rpc

    _register_scheme()
    key = f"{session_id}-{rank}"
    _PENDING_STORES[key] = store
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"{_SCHEME}://rendezvous?key={key}", rpc_timeout=timeout_s,
        _transports=["uv"], _channels=["basic"],
    )
    # torch numbers a process's init_rpc calls (a store key prefix) and its all-gathers (used while
    # initialising) per process, so a long-lived worker and a fresh source would disagree. Every
    # session has its own store namespace, so all members can start both counts at 0 and agree.
    with rpc._init_counter_lock:
        rpc._init_counter = 0
    rpc.api._all_gather_sequence_id.clear()
    try:
        with _interface_env(tp_ifname, gloo_ifname), warnings.catch_warnings():
            # torch's own RPC start-up uses a Gloo group in a way torch itself deprecates
            warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
            rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=opts)
    finally:
        _PENDING_STORES.pop(key, None)


def leave_rpc() -> str | None:
    """Leave the RPC group locally; returns the reason when torch complained.

    Not ``rpc.shutdown(graceful=True)``: its barrier counts calls per process in C++, so a
    long-lived worker and a fresh source disagree and wait for the timeout. Our control channel
    is the barrier instead: a stage leaves after its last send was acknowledged and it has sent
    STATS, and the source leaves once every stage's STATS arrived, so no call is in flight."""
    from torch.distributed import rpc

    if not _rpc_initialised():
        return None
    try:
        rpc.shutdown(graceful=False)
    except Exception as exc:  # noqa: BLE001 - RPC raises plain RuntimeErrors
        return first_line(exc)
    return None


def _rpc_initialised() -> bool:
    from torch.distributed.rpc import api

    return bool(api._is_current_rpc_agent_set())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
