"""Memory nodes on the shm backend: create, attach, destroy, clean up after crashes.

A memory node is a POSIX shared-memory region (mode 0600) named ``kvdm-...``; its header
records its size, node id and the pid of the process that owns it. The owner removes it on
normal exit, SIGINT and SIGTERM; a region whose owner died (SIGKILL, power loss) is found
and removed by :func:`clean` (``kvdm memnode clean``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

from kvdm.native import ffi, lib

from .dm import RegionMissing, check_buf
from .lifecycle import on_exit, pid_running

PREFIX = "kvdm-"
SHM_DIR = "/dev/shm"
_counter = 0
_counter_lock = threading.Lock()
_live: dict[str, ShmMemoryNode] = {}


def region_name(name: str | None = None) -> str:
    """Full region name: ``kvdm-NAME``, or a unique ``kvdm-PID-N`` when no name is given."""
    global _counter
    if name is None:
        with _counter_lock:
            _counter += 1
            n = _counter
        return f"{PREFIX}{os.getpid()}-{n}"
    return name if name.startswith(PREFIX) else PREFIX + name


@dataclass
class RegionInfo:
    """What a region's header says about it."""

    name: str
    size: int
    node_id: int
    owner_pid: int

    @property
    def owner_alive(self) -> bool:
        return pid_running(self.owner_pid)


def region_info(name: str) -> RegionInfo:
    """Read a region's header (raises RegionMissing if there is none)."""
    size, nid, pid = ffi.new("uint64_t *"), ffi.new("unsigned *"), ffi.new("uint64_t *")
    err = ffi.new("char[512]")
    check_buf(lib.dm_shm_info(name.encode(), size, nid, pid, err, 512), err)
    return RegionInfo(name, int(size[0]), int(nid[0]), int(pid[0]))


class ShmMemoryNode:
    """A memory node this process owns: created on construction, removed by ``destroy()``,
    at interpreter exit, or on SIGTERM/SIGINT. Child processes never remove it."""

    def __init__(self, size: int, node_id: int = 0, name: str | None = None) -> None:
        self.name = region_name(name)
        self.size = size
        self.node_id = node_id
        self.owner_pid = os.getpid()
        err = ffi.new("char[512]")
        check_buf(lib.dm_shm_create(self.name.encode(), size, node_id, self.owner_pid, err, 512), err)
        _live[self.name] = self
        on_exit(_destroy_all)

    @property
    def uri(self) -> str:
        return f"shm:{self.name}"

    def destroy(self) -> None:
        """Remove the region (clients already attached keep their mapping until they detach)."""
        if _live.pop(self.name, None) is None or os.getpid() != self.owner_pid:
            return
        err = ffi.new("char[512]")
        with suppress(RegionMissing):
            check_buf(lib.dm_shm_destroy(self.name.encode(), err, 512), err)

    def __enter__(self) -> ShmMemoryNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"ShmMemoryNode({self.name!r}, size={self.size}, node_id={self.node_id})"


@contextmanager
def embedded_nodes(count: int, size: int, first_id: int = 0) -> Iterator[list[ShmMemoryNode]]:
    """Start ``count`` memory nodes in this process for the duration of the block."""
    with ExitStack() as stack:
        yield [stack.enter_context(ShmMemoryNode(size, first_id + i)) for i in range(count)]


def _destroy_all() -> None:
    for node in list(_live.values()):
        node.destroy()


def list_regions() -> list[RegionInfo]:
    """Every kvdm region on this machine, with its owner's liveness."""
    out = []
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    for entry in names:
        if not entry.startswith(PREFIX):
            continue
        try:
            out.append(region_info(entry))
        except Exception:
            out.append(RegionInfo(entry, 0, -1, 0))  # unreadable header: treat as orphaned
    return out


def clean(all_regions: bool = False, dry_run: bool = False) -> list[str]:
    """Remove regions whose owner process is gone (or every kvdm region with ``all_regions``).
    Returns the names removed (or that would be, with ``dry_run``)."""
    removed = []
    for info in list_regions():
        if info.owner_alive and not all_regions:
            continue
        removed.append(info.name)
        if not dry_run:
            err = ffi.new("char[512]")
            with suppress(RegionMissing):
                check_buf(lib.dm_shm_destroy(info.name.encode(), err, 512), err)
    return removed
