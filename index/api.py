"""The index API every backend implements (native C indexes, Redis, dict).

Keys and values
---------------
* ``key_bytes == 8``: keys are a ``numpy.uint64`` array of shape ``(n,)``; they order as
  unsigned integers. 0 and 2**64-1 are reserved (empty and +infinity in the native layouts).
* ``key_bytes == 32``: keys are a ``numpy.uint8`` array of shape ``(n, 32)``; they order as
  byte strings (memcmp). An all-zero key is reserved.
* Values are ``numpy.uint64`` (a KV-cache block location), shape ``(n,)``.

Every operation is batched: one call per batch, the backend does the per-key work (in C for
the native indexes, in one pipeline for Redis). Range bounds are inclusive on both ends.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEY_WIDTHS = (8, 32)


class RangeNotSupported(NotImplementedError):
    """The backend keeps no key order (e.g. hash indexes)."""


def as_keys(keys: Any, key_bytes: int) -> np.ndarray:
    """Validate and normalise a key batch to the layout described in the module docstring."""
    if key_bytes == 8:
        arr = np.ascontiguousarray(keys, dtype=np.uint64)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"8-byte keys must be a 1-d uint64 array, got shape {arr.shape}")
        return arr
    if key_bytes == 32:
        arr = np.ascontiguousarray(keys, dtype=np.uint8)
        if arr.ndim == 1 and arr.shape[0] == 32:
            arr = arr.reshape(1, 32)
        if arr.ndim != 2 or arr.shape[1] != 32:
            raise ValueError(f"32-byte keys must be a (n, 32) uint8 array, got shape {arr.shape}")
        return arr
    raise ValueError(f"unsupported key width {key_bytes}; valid: {', '.join(map(str, KEY_WIDTHS))}")


def as_values(values: Any, n: int) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{n} keys but {arr.shape[0]} values")
    return arr


@dataclass
class IndexSpec:
    """Everything needed to open an index, picklable so client processes can open their own.

    ``options`` are backend-specific (e.g. ``cache_mb`` for native indexes, ``redis_url`` and
    ``pipeline`` for Redis); unknown options are an error in the backend's factory.
    """

    name: str = "chime"
    key_bytes: int = 8
    options: dict[str, Any] = field(default_factory=dict)


class Index(abc.ABC):
    """A KV-cache metadata index: key (block hash) -> value (block location)."""

    #: registry name of the backend
    name: str = "?"
    #: whether ``range`` is supported
    ordered: bool = True
    #: Time (ns) the most recent data call spent in the backend itself, for backends that can
    #: measure it apart from their Python wrapper (the native indexes time the C call); None
    #: where the wrapper is part of the cost (Redis: the client library) or no such split exists.
    #: Replay reports this instead of its own clock so µs-scale latencies are not the harness's.
    last_call_ns: int | None = None

    def __init__(self, key_bytes: int = 8) -> None:
        if key_bytes not in KEY_WIDTHS:
            raise ValueError(f"unsupported key width {key_bytes}; valid: {', '.join(map(str, KEY_WIDTHS))}")
        self.key_bytes = key_bytes

    # -- operations (batched) --
    @abc.abstractmethod
    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Look up every key: returns ``(values uint64[n], found bool[n])``."""

    @abc.abstractmethod
    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert or update every key (in order; a later duplicate wins)."""

    @abc.abstractmethod
    def delete(self, keys: np.ndarray) -> np.ndarray:
        """Delete every key: returns ``bool[n]``, True where the key was present."""

    def range(self, lo: Any, hi: Any, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Entries with ``lo <= key <= hi`` in key order (at most ``limit`` if > 0):
        returns ``(keys, values)`` in the key layout of this index."""
        raise RangeNotSupported(f"range queries are not supported by {self.name} (it keeps no key order)")

    def range_count(self, los: np.ndarray, his: np.ndarray) -> np.ndarray:
        """Batched range: for each ``(lo[i], hi[i])`` the number of entries found (int64[n])."""
        los = as_keys(los, self.key_bytes)
        his = as_keys(his, self.key_bytes)
        return np.array([len(self.range(lo, hi)[0]) for lo, hi in zip(los, his, strict=True)], dtype=np.int64)

    def prefix_match(self, keys: np.ndarray) -> int:
        """Length of the longest prefix of ``keys`` that is present (what an engine asks
        before prefill)."""
        _, found = self.get(keys)
        misses = np.flatnonzero(~found)
        return int(misses[0]) if misses.size else int(found.size)

    # -- statistics --
    def counters(self) -> dict[str, int]:
        """Cumulative counters since the last reset (RTTs, verbs, bytes, retries, cache, ...)."""
        return {}

    def reset_counters(self) -> None:
        """Zero the counters."""

    def counter_names(self) -> tuple[str, ...]:
        """The names of :meth:`counter_vector`'s entries (fixed for the life of the handle)."""
        if not hasattr(self, "_counter_names"):
            self._counter_names = tuple(self.counters())
        return self._counter_names

    def counter_vector(self) -> np.ndarray:
        """:meth:`counters` as an int64 array in :meth:`counter_names` order: what a per-op
        measuring loop snapshots (backends override it when they can do it without a dict)."""
        c = self.counters()
        return np.array([c.get(n, 0) for n in self.counter_names()], dtype=np.int64)

    # -- lifecycle --
    def close(self) -> None:
        """Release connections (the data stays where the backend keeps it)."""

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conveniences (not for the data path) --
    def get_one(self, key: Any) -> int | None:
        values, found = self.get(as_keys(key, self.key_bytes))
        return int(values[0]) if found[0] else None

    def put_one(self, key: Any, value: int) -> None:
        self.put(as_keys(key, self.key_bytes), np.array([value], dtype=np.uint64))
