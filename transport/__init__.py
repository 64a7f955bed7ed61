"""kvdm.transport: memory nodes, connection bootstrap and transport configuration.

Typical use::

    cfg = TransportConfig()                    # shm, latency model none, 1 embedded node
    with memory_nodes(cfg) as uris:            # starts embedded nodes if cfg names none
        ctx = connect(cfg, uris)               # one DMContext per client thread/process
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
)
from .lifecycle import on_exit, pid_running, stop_on_signals
from .memnode import ShmMemoryNode, clean, embedded_nodes, list_regions
from .verbs_memnode import gid_ipv4, gid_text, pick_gid, pyverbs_enums, query_gids


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



__all__ = [
    "LATENCY_MODELS", "TRANSPORTS", "AddressError", "BadRegion", "DMContext", "DMError", "InvalidArgument",
    "MemoryNodeFull", "RegionExists", "RegionMissing", "ShmMemoryNode", "Timeout", "TransportConfig",
    "TransportUnavailable", "clean", "connect", "embedded_nodes", "gaddr", "gid_ipv4", "gid_text", "list_regions",
    "memory_nodes", "on_exit", "parse_size", "pick_gid", "pid_running", "pyverbs_enums", "query_gids", "raise_for",
    "root_gaddr", "stop_on_signals",
]
