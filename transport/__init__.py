"""kvdm.transport: memory nodes, connection bootstrap and transport configuration.

Typical use::

    cfg = TransportConfig()                    # shm, latency model none, 1 embedded node
    with memory_nodes(cfg) as uris:            # starts embedded nodes if cfg names none
        ctx = connect(cfg, uris)               # one DMContext per client thread/process
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    root_gaddr,
)
from .memnode import ShmMemoryNode, embedded_nodes


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


# The rest of the public face, imported on first use (PEP 562), so importing kvdm.transport stays cheap
# and other folders import from here, never from its modules.
_LAZY: dict[str, str] = {
    "ShmMemoryNode": ".memnode",
    "clean": ".memnode",
    "gid_ipv4": ".verbs_memnode",
    "gid_text": ".verbs_memnode",
    "list_regions": ".memnode",
    "on_exit": ".lifecycle",
    "pick_gid": ".verbs_memnode",
    "pid_running": ".lifecycle",
    "pyverbs_enums": ".verbs_memnode",
    "query_gids": ".verbs_memnode",
    "raise_for": ".dm",
    "stop_on_signals": ".lifecycle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = module.partition(":")  # ".module" or ".module:its_name"
    value = getattr(importlib.import_module(module, __name__), attr or name)
    globals()[name] = value
    return value


__all__ = [
    "LATENCY_MODELS", "TRANSPORTS", "AddressError", "BadRegion", "DMContext", "DMError", "InvalidArgument",
    "MemoryNodeFull", "RegionExists", "RegionMissing", "ShmMemoryNode", "Timeout", "TransportConfig",
    "TransportUnavailable", "connect", "embedded_nodes", "gaddr", "memory_nodes", "parse_size", "root_gaddr", *_LAZY,
]
