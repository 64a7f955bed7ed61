"""``dict``: an in-process index, the no-network lower bound of what a replay costs.

Each client process has its own dict, so it is only meaningful with one client (or as a
per-client cache bound); the replay engine says so when asked for more.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from .api import Index, as_keys, as_values


class DictIndex(Index):
    name = "dict"
    ordered = True
    DELTA_MAX = 2048

    def __init__(self, key_bytes: int = 8, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown option(s) for dict: {', '.join(sorted(options))}")
        super().__init__(key_bytes)
        self._data: dict[Any, int] = {}
        # Range support: a sorted array of keys plus a sorted list of the keys inserted since it
        # was built; the array is rebuilt when the list passes DELTA_MAX keys, or after a delete.
        self._key_dtype = np.dtype(np.uint64) if key_bytes == 8 else np.dtype("S32")
        self._base = np.empty(0, dtype=self._key_dtype)
        self._delta: list[Any] = []
        self._stale = False
        self._ops = {"get": 0, "put": 0, "delete": 0, "range": 0}

    def _k(self, keys: np.ndarray) -> list[Any]:
        return keys.tolist() if self.key_bytes == 8 else [bytes(k) for k in keys]

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ks = self._k(as_keys(keys, self.key_bytes))
        self._ops["get"] += len(ks)
        data = self._data
        values = np.fromiter((data.get(k, 0) for k in ks), dtype=np.uint64, count=len(ks))
        found = np.fromiter((k in data for k in ks), dtype=bool, count=len(ks))
        return values, found

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        ks = self._k(as_keys(keys, self.key_bytes))
        vs = as_values(values, len(ks)).tolist()
        self._ops["put"] += len(ks)
        data = self._data
        for k in dict.fromkeys(ks):
            if k not in data:
                bisect.insort(self._delta, k)
        data.update(zip(ks, vs, strict=True))

    def delete(self, keys: np.ndarray) -> np.ndarray:
        ks = self._k(as_keys(keys, self.key_bytes))
        self._ops["delete"] += len(ks)
        out = np.fromiter((self._data.pop(k, None) is not None for k in ks), dtype=bool, count=len(ks))
        if out.any():
            self._stale = True
        return out

    def range(self, lo: Any, hi: Any, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        lo_k, hi_k = self._k(as_keys(lo, self.key_bytes))[0], self._k(as_keys(hi, self.key_bytes))[0]
        self._ops["range"] += 1
        if self._stale or len(self._delta) > self.DELTA_MAX:
            self._base = np.sort(np.array(list(self._data), dtype=self._key_dtype))
            self._delta, self._stale = [], False
        base = self._base
        # bounds in the array's own dtype: a Python int would be compared through float64
        lo_a, hi_a = np.array(lo_k, dtype=self._key_dtype), np.array(hi_k, dtype=self._key_dtype)
        ks = base[np.searchsorted(base, lo_a, "left"):np.searchsorted(base, hi_a, "right")].tolist()
        if self.key_bytes == 32:  # numpy's S32 drops trailing zero bytes (the order is unaffected)
            ks = [k.ljust(32, b"\0") for k in ks]
        d = self._delta
        extra = d[bisect.bisect_left(d, lo_k):bisect.bisect_right(d, hi_k)]
        if extra:
            ks = sorted(ks + extra)
        if limit > 0:
            ks = ks[:limit]
        values = np.fromiter((self._data[k] for k in ks), dtype=np.uint64, count=len(ks))
        if self.key_bytes == 8:
            return np.array(ks, dtype=np.uint64), values
        arr = np.frombuffer(b"".join(ks), dtype=np.uint8).reshape(-1, 32) if ks else np.zeros((0, 32), np.uint8)
        return arr, values

    def counters(self) -> dict[str, int]:
        return {f"{k}_keys": v for k, v in self._ops.items()}

    def reset_counters(self) -> None:
        self._ops = dict.fromkeys(self._ops, 0)


def open_dict(transport: Any, key_bytes: int, **options: Any) -> DictIndex:
    """Registry factory (the transport is unused: the dict lives in this process)."""
    return DictIndex(key_bytes, **options)
