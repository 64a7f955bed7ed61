"""Helpers shared by the native index tests: key generation for both widths and worker
processes (spawned, each with its own transport context) for the concurrency tests."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

import kvdm.index as kindex
from kvdm.transport import TransportConfig, connect

# The native backends every index suite runs (over shm on the host, over verbs in the SoftRoCE
# guest through the `fabric` fixture), and those that keep key order (range queries), from the
# registry: a new remote-memory index joins them by its registry entry.
NATIVE_BACKENDS = kindex.backends(remote_memory=True)
ORDERED_BACKENDS = kindex.backends(remote_memory=True, ordered=True)


def make_keys(ints: Any, key_bytes: int) -> np.ndarray:
    """Distinct non-reserved keys from positive integers: the integers themselves (8 B) or
    their SHA-256 (32 B)."""
    ints = np.asarray(ints, dtype=np.uint64).reshape(-1)
    if key_bytes == 8:
        return ints.copy()
    rows = [hashlib.sha256(int(i).to_bytes(8, "little")).digest() for i in ints]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 32).copy()


def key_of(k: Any, key_bytes: int) -> Any:
    """A hashable, ordered Python form of one key."""
    return int(k) if key_bytes == 8 else bytes(k)


def encode(ints: np.ndarray, writer: int) -> np.ndarray:
    """Value naming its key and its writer, so readers can check they never see garbage."""
    return (np.asarray(ints, dtype=np.uint64) << np.uint64(8)) | np.uint64(writer)


def open_client(uri: str, name: str, key_bytes: int, tear: bool = False, **options: Any) -> Any:
    """A client of index `name` on the node at uri. A race index it creates starts from one
    subtable (unless told otherwise), so the concurrency, crash and fill suites run through
    splits: the default (256 subtables) would hold their keys without one."""
    ctx = connect(TransportConfig(tear=tear), [uri])
    if name == "race":
        options = {"subtables": 1, **options}
    return kindex.open(name, ctx, key_bytes, **options)


def writer_proc(uri: str, name: str, key_bytes: int, tear: bool, ints: np.ndarray, writer: int,
                batch: int, options: dict[str, Any]) -> None:
    """Insert ints (as keys) with values encode(ints, writer), in batches."""
    idx = open_client(uri, name, key_bytes, tear, **options)
    keys = make_keys(ints, key_bytes)
    vals = encode(ints, writer)
    for i in range(0, len(ints), batch):
        idx.put(keys[i:i + batch], vals[i:i + batch])
    idx.close()


def reader_proc(uri: str, name: str, key_bytes: int, tear: bool, ints: np.ndarray, writers: list[int],
                rounds: int, out: Any, options: dict[str, Any]) -> None:
    """Read ints repeatedly; report values that no writer wrote for that key."""
    idx = open_client(uri, name, key_bytes, tear, **options)
    keys = make_keys(ints, key_bytes)
    bad = 0
    seen = 0
    for _ in range(rounds):
        vals, found = idx.get(keys)
        v = vals[found]
        ok = ((v >> np.uint64(8)) == ints[found]) & np.isin(v & np.uint64(0xFF), np.array(writers, np.uint64))
        bad += int((~ok).sum())
        seen += int(found.sum())
    out.put((os.getpid(), bad, seen, idx.counters()))
    idx.close()


def crash_holding_lock(uri: str, name: str, key_bytes: int, key_int: int, options: dict[str, Any]) -> None:
    """Take a leaf lock and die without releasing it."""
    idx = open_client(uri, name, key_bytes, **options)
    idx.debug_hold_lock(make_keys([key_int], key_bytes))
    os._exit(0)


def fill_until_full(idx: Any, key_bytes: int, batch: int) -> tuple[int, int]:
    """Put keys 1, 2, ... (value = the key's integer) in batches of ``batch`` until the memory
    node is full; returns (first key not in a finished batch, first key of the failed batch)."""
    from kvdm.transport import MemoryNodeFull

    done, start = 1, 1
    try:
        for start in range(1, 10**7, batch):
            ints = np.arange(start, start + batch, dtype=np.uint64)
            idx.put(make_keys(ints, key_bytes), ints)
            done = start + batch
    except MemoryNodeFull as exc:
        assert "full" in str(exc)
        return done, start
    raise AssertionError("the memory node never filled up")


def skip_tear(fabric: Any, tear: bool) -> None:
    """Tear injection is a fault model of the shm transport only."""
    if tear and fabric.name != "shm":
        import pytest

        pytest.skip("tear injection is a fault model of the shm transport")


def full_range(key_bytes: int) -> tuple[Any, Any]:
    """The (lo, hi) range bounds that cover every non-reserved key of this width."""
    if key_bytes == 8:
        return np.uint64(1), np.uint64(2**64 - 2)
    return np.zeros(32, np.uint8), np.full(32, 255, np.uint8)


def run_all(procs: list, timeout: float = 150) -> None:
    """Start every client process, wait for each (``timeout`` s), and fail on any that did not
    exit cleanly (a deadlock ends in a time-out)."""
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"client process {p.pid} exited with {p.exitcode} (a deadlock ends in a time-out)"
