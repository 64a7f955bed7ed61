"""The native remote-memory indexes (C over dm.h): ``chime``, ``sherman`` (ordered B+trees) and
``race`` (one-sided extendible hashing: point operations only).

Each batch call is one C call over the numpy arrays (``ffi.from_buffer``); the C side runs
the protocol, issues the verbs and counts. A handle belongs to one client thread; clients
in other processes open their own handle on their own :class:`~kvdm.transport.DMContext`.

Opening: the first client creates the index (allocates a root and publishes it by CAS into
a root slot of memory node 0), later clients attach to it. Default root slots, one per
backend and key width (override with ``root_slot=`` to keep several indexes side by side):

    chime k8: 0, chime k32: 1, sherman k8: 2, sherman k32: 3, race k8: 4, race k32: 5

Options (keyword arguments; anything else is a ValueError listing these):

* ``cache_mb`` (100): compute-side cache of internal nodes, in MB (0 disables it); race always
  caches its whole directory (at most 512 KB) and ignores it;
* ``root_slot``: root slot on memory node 0 (default above);
* ``lease_ms`` (1000): lock lease; a lock held longer (a crashed client) is taken over;
* ``max_wait_ms`` (10000): give up on one lock after this long (TimeoutError);
* ``window`` (1): lookups whose first READs share one doorbell (1..64): a batch of N keys
  then costs about N/window round trips (what a prefix match of chained block keys wants);
  each key's latency is its group's.

Reserved keys: 0 and 2**64-1 for 8-byte keys, the all-zero key for 32-byte keys.

race (protocol in native/race_internal.h): lookups read both combined buckets in one doorbell,
then the fingerprint-matching KV block (2 RTT; ``window`` shares both doorbells among a group
of lookups); inserts 2 RTT, updates and deletes 3 RTT; ``range``/``range_count`` raise
RangeNotSupported. Its counters reuse the shared names: ``splits`` (subtable splits),
``version_mismatch`` and ``root_reads`` (stale cached directory entries re-read),
``lock_fail``/``lease_steals`` (subtable split locks), ``torn_retry`` (a KV block whose
checksum failed), ``go_right`` (an insert that dropped its copy to a concurrent insert of the
same key: RACE's duplicate check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kvdm.index.api import Index, RangeNotSupported, as_keys, as_values
from kvdm.native import ffi, lib
from kvdm.transport.dm import DMContext, DMError, raise_for

DEFAULTS: dict[str, Any] = {"cache_mb": 100.0, "root_slot": None, "lease_ms": 1000, "max_wait_ms": 10000,
                            "window": 1}
STAT_FIELDS = tuple(name for name, _ in ffi.typeof("kvidx_stats").fields)
DM_FIELDS = ("rtts", "doorbells", "reads", "writes", "cas", "faa", "cas_failed", "bytes_read",
             "bytes_written", "torn_lines")
_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


class LockTimeout(DMError, TimeoutError):
    """A lock stayed held (and its lease valid) for longer than ``max_wait_ms``."""


@dataclass(frozen=True)
class Backend:
    """A native index family: its C prefix, default root slots and whether it keeps order."""

    name: str
    prefix: str
    slots: tuple[int, int]
    ordered: bool = True


CHIME = Backend("chime", "chime", (0, 1))
SHERMAN = Backend("sherman", "sherman", (2, 3))
RACE = Backend("race", "race", (4, 5), ordered=False)


def check_keys(keys: np.ndarray, key_bytes: int) -> None:
    """Reject reserved keys (vectorised, never per key in Python)."""
    if key_bytes == 8:
        bad = (keys == 0) | (keys == _U64_MAX)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"key {int(keys[i])} at position {i} is reserved (0 and 2**64-1 are)")
    elif keys.shape[0] and (~keys.any(axis=1)).any():
        i = int(np.flatnonzero(~keys.any(axis=1))[0])
        raise ValueError(f"key at position {i} is the reserved all-zero 32-byte key")


def _ptr(arr: np.ndarray | None, ctype: str = "uint8_t *") -> Any:
    return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))


class NativeIndex(Index):
    """A C index over dm.h; see the module docstring for options and root slots."""

    def __init__(self, backend: Backend, transport: DMContext, key_bytes: int = 8, **options: Any) -> None:
        super().__init__(key_bytes)
        if not isinstance(transport, DMContext) or transport.ptr is None:
            raise ValueError(f"{backend.name} needs a connected kvdm.transport.DMContext, "
                             f"got {type(transport).__name__}")
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown option(s) for {backend.name}: {', '.join(unknown)}; "
                             f"valid: {', '.join(DEFAULTS)}")
        opts = {**DEFAULTS, **options}
        if opts["root_slot"] is None:
            opts["root_slot"] = backend.slots[0 if key_bytes == 8 else 1]
        self.name = backend.name
        self.ordered = backend.ordered
        self.options = opts
        self.transport = transport
        self._f = f"{backend.prefix}_k{key_bytes}_"
        c_opts = ffi.new("kvidx_opts *")
        c_opts.cache_mb = float(opts["cache_mb"])
        c_opts.root_slot = int(opts["root_slot"])
        c_opts.lease_ms = int(opts["lease_ms"])
        c_opts.max_wait_ms = int(opts["max_wait_ms"])
        c_opts.window = int(opts["window"])
        c_opts.add_virtual_ns = int(transport.config.latency_model == "virtual")
        out = ffi.new(f"{backend.prefix}_k{key_bytes} **")
        err = ffi.new("char[512]")
        rc = self._c("open")(transport.ptr, c_opts, out, err, 512)
        if rc != lib.DM_OK:
            msg = ffi.string(err).decode(errors="replace")
            if rc == lib.DM_EINVAL:
                raise ValueError(msg)
            raise_for(rc, msg)
        self._h = ffi.gc(out[0], self._c("close"))
        self._base = self._dm_counters()

    # -- plumbing --
    def _c(self, op: str) -> Any:
        return getattr(lib, self._f + op)

    def _live(self) -> Any:
        if self._h is None:
            raise ValueError(f"this {self.name} index handle is closed")
        if self.transport.ptr is None:
            raise ValueError(f"the transport context of this {self.name} index was closed")
        return self._h

    def _check(self, rc: int) -> None:
        if rc == lib.DM_OK:
            return
        msg = ffi.string(self._c("error")(self._h)).decode(errors="replace")
        if rc == lib.DM_ETIMEDOUT:
            raise LockTimeout(rc, msg)
        if rc == lib.DM_EINVAL:
            raise ValueError(msg)
        raise_for(rc, msg)

    def _keys(self, keys: Any, check: bool = True) -> np.ndarray:
        arr = as_keys(keys, self.key_bytes)
        if check:
            check_keys(arr, self.key_bytes)
        return arr

    @staticmethod
    def _lat(lat_ns: np.ndarray | None, n: int) -> Any:
        if lat_ns is None:
            return ffi.NULL
        if lat_ns.dtype != np.uint64 or lat_ns.shape[0] < n or not lat_ns.flags.c_contiguous:
            raise ValueError("lat_ns must be a contiguous uint64 array with one slot per key")
        return _ptr(lat_ns, "uint64_t *")

    # -- operations --
    def get(self, keys: np.ndarray, lat_ns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Look up every key; ``lat_ns`` (optional uint64[n]) receives per-key latencies."""
        k = self._keys(keys, check=False)
        n = k.shape[0]
        vals = np.zeros(n, dtype=np.uint64)
        found = np.zeros(n, dtype=np.uint8)
        self._check(self._c("get")(self._live(), _ptr(k), n, _ptr(vals, "uint64_t *"), _ptr(found),
                                   self._lat(lat_ns, n)))
        return vals, found.astype(bool)

    def put(self, keys: np.ndarray, values: np.ndarray, lat_ns: np.ndarray | None = None) -> None:
        """Insert or update every key, in order."""
        k = self._keys(keys)
        v = as_values(values, k.shape[0])
        self._check(self._c("put")(self._live(), _ptr(k), _ptr(v, "uint64_t *"), k.shape[0],
                                   self._lat(lat_ns, k.shape[0])))

    def delete(self, keys: np.ndarray, lat_ns: np.ndarray | None = None) -> np.ndarray:
        k = self._keys(keys, check=False)
        found = np.zeros(k.shape[0], dtype=np.uint8)
        self._check(self._c("delete")(self._live(), _ptr(k), k.shape[0], _ptr(found),
                                      self._lat(lat_ns, k.shape[0])))
        return found.astype(bool)

    def _ordered_only(self) -> None:
        if not self.ordered:
            raise RangeNotSupported(f"range queries are not supported by {self.name} (a hash index); "
                                    "use chime or sherman")

    def range(self, lo: Any, hi: Any, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        self._ordered_only()
        lo_k, hi_k = self._keys(lo, check=False), self._keys(hi, check=False)
        count = ffi.new("size_t *")
        self._check(self._c("range")(self._live(), _ptr(lo_k), _ptr(hi_k), max(0, int(limit)), count))
        n = int(count[0])
        keys = np.zeros(n, dtype=np.uint64) if self.key_bytes == 8 else np.zeros((n, 32), dtype=np.uint8)
        vals = np.zeros(n, dtype=np.uint64)
        if n:
            self._c("range_fetch")(self._h, _ptr(keys), _ptr(vals, "uint64_t *"))
        return keys, vals

    def range_count(self, los: np.ndarray, his: np.ndarray, lat_ns: np.ndarray | None = None) -> np.ndarray:
        self._ordered_only()
        lo_k, hi_k = self._keys(los, check=False), self._keys(his, check=False)
        if lo_k.shape[0] != hi_k.shape[0]:
            raise ValueError(f"{lo_k.shape[0]} lower bounds but {hi_k.shape[0]} upper bounds")
        counts = np.zeros(lo_k.shape[0], dtype=np.int64)
        self._check(self._c("range_count")(self._live(), _ptr(lo_k), _ptr(hi_k), lo_k.shape[0],
                                           _ptr(counts, "int64_t *"), self._lat(lat_ns, lo_k.shape[0])))
        return counts

    # -- statistics --
    def _dm_counters(self) -> dict[str, int]:
        c = self.transport.counters()
        return {k: c[k] for k in DM_FIELDS}

    def counters(self) -> dict[str, int]:
        """Transport counters since the last reset (``rtts``, ``bytes_read``, ...) plus the
        index's own (``lock_fail``, ``version_mismatch``, ``go_right``, ``cache_hit``, ...)."""
        now = self._dm_counters()
        out = {k: now[k] - self._base[k] for k in DM_FIELDS}
        st = ffi.new("kvidx_stats *")
        self._c("stats")(self._live(), st)
        out.update({name: int(getattr(st, name)) for name in STAT_FIELDS})
        return out

    def reset_counters(self) -> None:
        self._c("reset_stats")(self._live())
        self._base = self._dm_counters()

    def debug_hold_lock(self, key: Any) -> None:
        """Test hook: take the lock of the leaf (race: the subtable) holding ``key`` and never
        release it, what a client that crashed mid-write leaves behind (race also marks the
        subtable's buckets as splitting: a splitter that crashed mid-split)."""
        self._check(self._c("debug_lock")(self._live(), _ptr(self._keys(key))))

    def close(self) -> None:
        if self._h is not None:
            ffi.release(self._h)  # runs the close function now
            self._h = None


def open_chime(transport: DMContext, key_bytes: int, **options: Any) -> NativeIndex:
    """Registry factory for ``chime``."""
    return NativeIndex(CHIME, transport, key_bytes, **options)


def open_sherman(transport: DMContext, key_bytes: int, **options: Any) -> NativeIndex:
    """Registry factory for ``sherman``."""
    return NativeIndex(SHERMAN, transport, key_bytes, **options)


def open_race(transport: DMContext, key_bytes: int, **options: Any) -> NativeIndex:
    """Registry factory for ``race`` (one-sided extendible hashing; no range queries)."""
    return NativeIndex(RACE, transport, key_bytes, **options)
