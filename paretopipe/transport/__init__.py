"""Transports between stages: one interface (:mod:`.base`), several backends.

Backends register here by name and are imported only when used. To add one, write a module
that builds a :class:`~paretopipe.transport.base.Backend` and register a loader below.
"""

from __future__ import annotations

from paretopipe.transport.base import (
    Backend,
    backend_names,
    get_backend,
    register_backend,
)


def _load_tcp() -> Backend:
    from paretopipe.transport import tcp

    return Backend(
        name="tcp",
        description="our own binary framing over TCP (no pickle)",
        source_link=tcp.TcpSourceLink,
        serve=tcp.serve,
    )


register_backend("tcp", _load_tcp)


def _load_rpc() -> Backend:
    from paretopipe.transport import rpc, rpc_group

    rpc_group.require_rpc_support()  # a clear ConfigError on a torch that cannot run it
    return Backend(
        name="rpc",
        description="PyTorch RPC (torch.distributed.rpc over TensorPipe); pickles, trusted networks only",
        source_link=rpc.RpcSourceLink,
        serve=rpc.serve,
    )


register_backend("rpc", _load_rpc)

__all__ = ["Backend", "backend_names", "get_backend", "register_backend"]
