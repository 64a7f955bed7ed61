"""kvdm.transport: memory nodes, connection bootstrap and transport configuration.

Typical use::

    cfg = TransportConfig()                    # shm, latency model none, 1 embedded node
    with memory_nodes(cfg) as uris:            # starts embedded nodes if cfg names none
        ctx = connect(cfg, uris)               # one DMContext per client thread/process
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import verbs_memnode
from .config import LATENCY_MODELS, TRANSPORTS, TransportConfig, parse_size
from .dm import (
    AddressError,
    BadRegion,
    DMContext,
    DMError,
    InvalidArgument,
    MemoryNodeFull,
    RegionExists,
    RegionMissing,
    Timeout,
    TransportUnavailable,
    gaddr,
    raise_for,
    root_gaddr,
    virtual_charge,
)
from .lifecycle import on_exit, pid_running, stop_on_signals
from .memnode import ShmMemoryNode, clean, embedded_nodes, list_regions
from .verbs_memnode import (
    SYS_IB,
    gid_ipv4,
    gid_text,
    pick_gid,
    pyverbs_enums,
    query_gids,
    rdma_devices,
)


@contextmanager
def memory_nodes(config: TransportConfig) -> Iterator[list[str]]:
    """The memory-node URIs for ``config``: the ones it names, or embedded shm nodes started
    for the duration of the block."""
    if config.memory_nodes:
        yield list(config.memory_nodes)
        return
    if config.transport != "shm":
        raise ValueError(
            f"--transport {config.transport} needs memory nodes started with "
            "`kvdm memnode serve --transport verbs` and given with --memory-node URI"
        )
    with embedded_nodes(config.embedded_nodes, config.node_size) as nodes:
        yield [n.uri for n in nodes]


def connect(config: TransportConfig, uris: list[str]) -> DMContext:
    """A new client context attached to every node in ``uris``."""
    return DMContext(config.with_nodes(uris))


def serve_memory_node(transport: str = "shm", size: int = 4 << 30, node_id: int = 0, name: str | None = None, *,
                      device: str | None = None, gid_index: int | None = None, ib_port: int = 1, port: int = 7471,
                      listen: str = "0.0.0.0") -> int:
    """Run one memory node in the foreground until SIGINT/SIGTERM, then remove it (``kvdm memnode
    serve``). It prints ``memory node N serving URI ...`` on stdout once clients can attach.

    shm: a region named ``kvdm-NAME`` (default: a unique ``kvdm-PID-N``), passive: clients map it.
    verbs: a region registered on ``device`` (default: the first), port ``ib_port``, GID
    ``gid_index`` (default: auto), with the connection handshake on TCP ``listen:port`` (0: any free
    port); ``name`` is not used. Returns the exit status."""
    if transport != "shm":
        args = argparse.Namespace(size=size, node_id=node_id, device=device, ib_port=ib_port, gid_index=gid_index,
                                  port=port, listen=listen)
        return int(verbs_memnode.serve(args) or 0)
    stopped = stop_on_signals()  # before the region exists: a SIGTERM right after the announcement removes it
    node = ShmMemoryNode(size, node_id, name)
    print(f"memory node {node.node_id} serving {node.uri} ({size} bytes, pid {os.getpid()}); "
          "Ctrl-C to stop", flush=True)
    try:
        while not stopped():
            time.sleep(0.2)
    finally:
        node.destroy()
        print(f"memory node {node.name} removed", file=sys.stderr)
    return 0



__all__ = [
    "LATENCY_MODELS", "SYS_IB", "TRANSPORTS", "AddressError", "BadRegion", "DMContext", "DMError", "InvalidArgument",
    "MemoryNodeFull", "RegionExists", "RegionMissing", "ShmMemoryNode", "Timeout", "TransportConfig",
    "TransportUnavailable", "clean", "connect", "embedded_nodes", "gaddr", "gid_ipv4", "gid_text", "list_regions",
    "memory_nodes", "on_exit", "parse_size", "pick_gid", "pid_running", "pyverbs_enums", "query_gids", "raise_for",
    "rdma_devices",
    "root_gaddr", "serve_memory_node", "stop_on_signals", "virtual_charge",
]
