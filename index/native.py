"""The native remote-memory indexes (C over dm.h): ``chime``, ``sherman`` (ordered B+trees) and
``race`` (one-sided extendible hashing: point operations only).

Each batch call is one C call over the numpy arrays (``ffi.from_buffer``); the C side runs
the protocol, issues the verbs and counts. A handle belongs to one client thread; clients
in other processes open their own handle on their own :class:`~kvdm.transport.DMContext`.

Opening: the first client creates the index (allocates a root and publishes it by CAS into
a root slot of memory node 0), later clients attach to it. Default root slots, one per
backend and key width, from the registry entries (``root_slots``; override with ``root_slot=``
to keep several indexes side by side):

    chime k8: 0, chime k32: 1, sherman k8: 2, sherman k32: 3, race k8: 4, race k32: 5

Options (keyword arguments; anything else is a ValueError listing these):

* ``cache_mb`` (100): compute-side cache of internal nodes, in MB (0 disables it); race always
  caches its whole directory (at most 512 KB) and ignores it;
* ``root_slot``: root slot on memory node 0 (default above);
* ``lease_ms`` (1000): lock lease; a lock held longer (a crashed client) is taken over;
* ``max_wait_ms`` (10000): give up on one lock after this long (TimeoutError);
* ``window`` (0): at most this many keys' first READs per doorbell; 0 = every key of the
  call, split only at the transport's limit of 1,024 verbs per doorbell (``DM_MAX_BATCH``; the
  verbs backend posts it in chunks of the QP's send-queue depth). 1 is the one-key-per-round-trip
  baseline, for writes too (a batched put or delete otherwise locks all its leaves in one doorbell and writes them in
  a second: native/btree_batch.inc, race.inc).
* ``lpm`` ("auto"): how :meth:`~NativeIndex.prefix_match` runs: ``parallel`` (every key in
  one doorbell; exact), ``kary`` (rounds of ``lpm_fanout`` evenly spaced probes; assumes
  presence is prefix-closed, as when engines insert whole chains; exact with ``lpm_exact``),
  ``sequential`` (one key per round trip until the first miss), ``auto`` (parallel, unless a
  cost model over the modelled RTT and bandwidth finds kary cheaper and this handle's parallel
  matches have shown presence to be prefix-closed);
* ``lpm_fanout`` (16) and ``lpm_exact`` (False): kary's probes per round, and verification of
  the matched prefix (one more doorbell); ``lpm_probe_ns`` (150): the client time per probe
  auto's cost model charges (a constant, so a replay's choices do not depend on the machine's
  load; the counter ``lpm_cpu_ns`` shows the measured time);
* ``subtables`` (256) and ``split_reads_kv`` (False), race, read by the client that creates
  the index: start with this many subtables (a power of two, spread over the memory nodes,
  capped at 2^D and 1/16 of the smallest node on each), so a workload of that size never
  splits inside a put; keep no hash bits in the slots, so a split reads every KV block
  (RACE's own protocol, for comparison);
* ``local_locks`` (None): a :class:`LocalLockTable` shared by the handles of several threads
  of this process: they queue on a leaf lock locally and hand the remote lock over (a
  per-key protocol: with a table, writes go key by key).

Reserved keys: 0 and 2**64-1 for 8-byte keys, the all-zero key for 32-byte keys.

race (protocol in native/race.inc): lookups read both combined buckets in one doorbell,
then the fingerprint-matching KV block (2 RTT; a batch shares both doorbells among its lookups);
inserts 2 RTT, updates and deletes 3 RTT; ``range``/``range_count`` raise
RangeNotSupported.

Counters: each index names its own, from its ops table (``kvidx_ops.counters``): chime and
sherman report every field of ``kvidx_stats``; race the ones it counts, with its own names
where it counts something else: ``stale_directory`` (a stale cached directory entry re-read),
``lost_insert_race`` (an insert that dropped its copy to a concurrent insert of the same key:
RACE's duplicate check), ``checksum_retry`` (a KV block whose checksum failed), ``splits``
(subtable splits), ``lock_fail``/``lease_steals`` (subtable split locks).

Every call goes through the index's ops table (``P_ops()``, native/kvidx.h): one generic set of
``kvidx_*`` C entry points serves every index.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from kvdm.native import ffi, lib
from kvdm.transport import DMContext, Timeout, raise_for

from .api import Index, RangeNotSupported, as_keys, as_values

if TYPE_CHECKING:
    from . import Backend

DEFAULTS: dict[str, Any] = {"cache_mb": 100.0, "root_slot": None, "lease_ms": 1000, "max_wait_ms": 10000,
                            "window": 0, "lpm": "auto", "lpm_fanout": 16, "lpm_exact": False, "lpm_probe_ns": 150,
                            "split_reads_kv": False, "subtables": 256, "local_locks": None}
#: prefix-match strategies, in the C enum's order (kvidx.h KVIDX_LPM_*)
LPM_STRATEGIES = ("auto", "parallel", "kary", "sequential")
STAT_FIELDS = tuple(name for name, _ in ffi.typeof("kvidx_stats").fields)
DM_FIELDS = tuple(name for name, _ in ffi.typeof("dm_counters").fields)
# counter_vector reads both structs as uint64 arrays
assert ffi.sizeof("dm_counters") == 8 * len(DM_FIELDS) and ffi.sizeof("kvidx_stats") == 8 * len(STAT_FIELDS)
_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


class LocalLockTable:
    """Sherman's local lock table (HOCL) for the threads of one process: give the same table
    to each thread's handle (``local_locks=``); threads contending on a lock queue locally and
    a releasing thread hands the remote lock to the next one, at most ``max_handover`` times
    in a row. Handles keep their table alive."""

    def __init__(self, max_handover: int = 4) -> None:
        if not 0 <= max_handover < 2**32:
            raise ValueError(f"max_handover must be in 0..2**32-1, got {max_handover}")
        ptr = lib.kvidx_llt_create(max_handover)
        if ptr == ffi.NULL:
            raise MemoryError("cannot allocate a local lock table")
        self.ptr = ffi.gc(ptr, lib.kvidx_llt_destroy)
        self.max_handover = max_handover


LockTimeout = Timeout  # a lock stayed held (and its lease valid) for longer than ``max_wait_ms``


def counter_spec(spec: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    """An ops table's ``counters`` (kvidx.h): the kvidx_stats columns an index reports and its
    names for them (NULL: every field, under its own name)."""
    if spec == ffi.NULL:
        return np.arange(len(STAT_FIELDS)), STAT_FIELDS
    cols, names = [], []
    for item in ffi.string(spec).decode().split():
        field, _, name = item.partition("=")
        cols.append(STAT_FIELDS.index(field))
        names.append(name or field)
    return np.array(cols, dtype=np.int64), tuple(names)


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


def _integer(opts: dict[str, Any], name: str) -> int:
    """Option `name` as an int (an integral float too): a string or fraction names the option."""
    v = opts[name]
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise ValueError(f"option {name} must be an integer, got {v!r}")


def _number(opts: dict[str, Any], name: str) -> float:
    v = opts[name]
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    raise ValueError(f"option {name} must be a number, got {v!r}")


def _flag(opts: dict[str, Any], name: str) -> int:
    """A boolean option: True/False (or 1/0); any other value, the string "false" included, is
    an error rather than a truthy surprise."""
    v = opts[name]
    if isinstance(v, (bool, np.bool_)) or v in (0, 1):
        return int(bool(v))
    raise ValueError(f"option {name} must be True or False, got {v!r}")


def _ptr(arr: np.ndarray | None, ctype: str = "uint8_t *") -> Any:
    return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))


def c_options(backend: Backend, key_bytes: int, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A native index's options, checked (a ValueError names the bad one), merged with DEFAULTS,
    and as the C struct (``kvidx_opts``; its ``add_virtual_ns`` is the transport's to set). It
    needs no transport, so a run checks its options before it starts anything
    (:meth:`kvdm.index.Backend.check_options`)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) for {backend.name}: {', '.join(unknown)}; "
                         f"valid: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    if opts["root_slot"] is None:
        opts["root_slot"] = backend.root_slots[0 if key_bytes == 8 else 1]
    c_opts = ffi.new("kvidx_opts *")
    c_opts.cache_mb = _number(opts, "cache_mb")
    c_opts.root_slot = _integer(opts, "root_slot")
    c_opts.lease_ms = _integer(opts, "lease_ms")
    c_opts.max_wait_ms = _integer(opts, "max_wait_ms")
    window, fanout = _integer(opts, "window"), _integer(opts, "lpm_fanout")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = every key in one doorbell), got {window}")
    if not 1 <= fanout <= 64:
        raise ValueError(f"lpm_fanout must be in 1..64, got {fanout}")
    if opts["lpm"] not in LPM_STRATEGIES:
        raise ValueError(f"unknown lpm strategy {opts['lpm']!r}; valid: {', '.join(LPM_STRATEGIES)}")
    c_opts.window = window
    c_opts.lpm = LPM_STRATEGIES.index(opts["lpm"])
    c_opts.lpm_fanout = fanout
    c_opts.lpm_exact = _flag(opts, "lpm_exact")
    probe_ns = _integer(opts, "lpm_probe_ns")
    if not 1 <= probe_ns <= 10**6:
        raise ValueError(f"lpm_probe_ns must be in 1..1000000, got {probe_ns}")
    c_opts.lpm_probe_ns = probe_ns
    c_opts.split_reads_kv = _flag(opts, "split_reads_kv")
    subtables = _integer(opts, "subtables")
    if not (1 <= subtables <= 1 << 16 and subtables & (subtables - 1) == 0):
        raise ValueError(f"subtables must be a power of two in 1..65536, got {subtables}")
    c_opts.subtables_log2 = subtables.bit_length() - 1
    table = opts["local_locks"]
    if table is not None and not isinstance(table, LocalLockTable):
        raise ValueError(f"local_locks must be a LocalLockTable, got {type(table).__name__}")
    c_opts.local_locks = table.ptr if table is not None else ffi.NULL
    return opts, c_opts


class NativeIndex(Index):
    """A C index over dm.h; see the module docstring for options and root slots."""

    def __init__(self, backend: Backend, transport: DMContext, key_bytes: int = 8, **options: Any) -> None:
        """``backend``: the registry entry (kvdm.index.Backend) of a native index: its name, its C
        template (``native``), its default root slots and whether it keeps order."""
        super().__init__(key_bytes)
        if not isinstance(transport, DMContext) or transport.ptr is None:
            raise ValueError(f"{backend.name} needs a connected kvdm.transport.DMContext, "
                             f"got {type(transport).__name__}")
        opts, c_opts = c_options(backend, key_bytes, options)
        self.name = backend.name
        self.ordered = backend.ordered
        self.options = opts
        self.transport = transport
        accessor = getattr(lib, f"{backend.native}_k{key_bytes}_ops", None)
        if accessor is None:
            raise ValueError(f"index {backend.name!r}: its C template native/{backend.native}.inc is not compiled "
                             "into this build (native/build.py compiles every template with a KVIDX_TEMPLATE line; "
                             "rebuild with pip install -e . --no-build-isolation)")
        self._ops = accessor()
        self._stat_cols, self._stat_names = counter_spec(self._ops.counters)
        self._drive_cols = np.concatenate((np.arange(len(DM_FIELDS)), len(DM_FIELDS) + self._stat_cols))
        c_opts.add_virtual_ns = int(transport.config.latency_model == "virtual")
        out = ffi.new("void **")
        err = ffi.new("char[512]")
        rc = lib.kvidx_open(self._ops, transport.ptr, c_opts, out, err, 512)
        if rc != lib.DM_OK:
            raise_for(rc, ffi.string(err).decode(errors="replace"))
        ops = self._ops
        self._h = ffi.gc(out[0], lambda h: lib.kvidx_close(ops, h))
        # counter snapshots land in these structs; the numpy views read them without copies
        self._dm_snap = ffi.new("dm_counters *")
        self._st_snap = ffi.new("kvidx_stats *")
        self._dm_view = np.frombuffer(ffi.buffer(self._dm_snap), dtype=np.uint64)
        self._st_view = np.frombuffer(ffi.buffer(self._st_snap), dtype=np.uint64)
        self._base = np.zeros(len(DM_FIELDS), np.int64)
        self._base = self._dm_vector()

    # -- plumbing --
    def _live(self) -> Any:
        if self._h is None:
            raise ValueError(f"this {self.name} index handle is closed")
        if self.transport.ptr is None:
            raise ValueError(f"the transport context of this {self.name} index was closed")
        return self._h

    def _call(self, fn: Any, *args: Any) -> int:
        """Run one ``kvidx_*`` entry point on this index, timing it alone (``last_call_ns``);
        returns its status."""
        t0 = time.perf_counter_ns()
        rc = fn(self._ops, *args)
        self.last_call_ns = time.perf_counter_ns() - t0
        return rc

    def _check(self, rc: int) -> None:
        if rc == lib.DM_OK:
            return
        raise_for(rc, ffi.string(lib.kvidx_error(self._ops, self._h)).decode(errors="replace"))

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
        self._check(self._call(lib.kvidx_get, self._live(), _ptr(k), n, _ptr(vals, "uint64_t *"), _ptr(found),
                                   self._lat(lat_ns, n)))
        return vals, found.astype(bool)

    def prefix_match(self, keys: np.ndarray) -> int:
        """Length of the longest present prefix of ``keys``, in one C call with the handle's
        ``lpm`` strategy (parallel: one doorbell for all keys)."""
        return self.prefix_lookup(keys)[0]

    def prefix_lookup(self, keys: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """:meth:`prefix_match` with what it read: ``(matched, values, probed_and_found)``.
        ``values[i]`` is valid where ``found[i]``; every key below ``matched`` is probed except
        under an inexact ``kary`` match, which probes only ``lpm_fanout`` keys a round."""
        k = self._keys(keys, check=False)
        n = k.shape[0]
        vals = np.zeros(n, dtype=np.uint64)
        found = np.zeros(n, dtype=np.uint8)
        matched = ffi.new("size_t *")
        self._check(self._call(lib.kvidx_prefix, self._live(), _ptr(k), n, _ptr(vals, "uint64_t *"), _ptr(found),
                               matched))
        return int(matched[0]), vals, found.astype(bool)

    def put(self, keys: np.ndarray, values: np.ndarray, lat_ns: np.ndarray | None = None) -> None:
        """Insert or update every key, in order."""
        k = self._keys(keys)
        v = as_values(values, k.shape[0])
        self._check(self._call(lib.kvidx_put, self._live(), _ptr(k), _ptr(v, "uint64_t *"), k.shape[0],
                                   self._lat(lat_ns, k.shape[0])))

    def delete(self, keys: np.ndarray, lat_ns: np.ndarray | None = None) -> np.ndarray:
        k = self._keys(keys, check=False)
        found = np.zeros(k.shape[0], dtype=np.uint8)
        self._check(self._call(lib.kvidx_delete, self._live(), _ptr(k), k.shape[0], _ptr(found),
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
        self._check(self._call(lib.kvidx_range, self._live(), _ptr(lo_k), _ptr(hi_k), max(0, int(limit)), count))
        scan_ns = self.last_call_ns or 0
        n = int(count[0])
        keys = np.zeros(n, dtype=np.uint64) if self.key_bytes == 8 else np.zeros((n, 32), dtype=np.uint8)
        vals = np.zeros(n, dtype=np.uint64)
        if n:  # copying the scanned entries out is part of the query
            self._call(lib.kvidx_range_fetch, self._h, _ptr(keys), _ptr(vals, "uint64_t *"))
            self.last_call_ns = scan_ns + (self.last_call_ns or 0)
        return keys, vals

    def range_count(self, los: np.ndarray, his: np.ndarray, lat_ns: np.ndarray | None = None) -> np.ndarray:
        self._ordered_only()
        lo_k, hi_k = self._keys(los, check=False), self._keys(his, check=False)
        if lo_k.shape[0] != hi_k.shape[0]:
            raise ValueError(f"{lo_k.shape[0]} lower bounds but {hi_k.shape[0]} upper bounds")
        counts = np.zeros(lo_k.shape[0], dtype=np.int64)
        self._check(self._call(lib.kvidx_range_count, self._live(), _ptr(lo_k), _ptr(hi_k), lo_k.shape[0],
                                           _ptr(counts, "int64_t *"), self._lat(lat_ns, lo_k.shape[0])))
        return counts

    # -- statistics --
    def _dm_vector(self) -> np.ndarray:
        self._live()
        lib.dm_get_counters(self.transport.ptr, self._dm_snap)
        return self._dm_view.astype(np.int64) - self._base

    def counter_names(self) -> tuple[str, ...]:
        return DM_FIELDS + self._stat_names

    def counter_vector(self) -> np.ndarray:
        """Transport counters since the last reset, then the index's own: two C calls and
        one array, cheap enough to snapshot around every operation."""
        dm = self._dm_vector()
        lib.kvidx_stats_of(self._ops, self._h, self._st_snap)
        return np.concatenate((dm, self._st_view[self._stat_cols].astype(np.int64)))

    def counters(self) -> dict[str, int]:
        """Transport counters since the last reset (``rtts``, ``bytes_read``, ``virtual_ns``,
        ...) plus the index's own (``lock_fail``, ``version_mismatch``, ``go_right``,
        ``cache_hit``, ...; race's under its names, see the module docstring)."""
        return dict(zip(self.counter_names(), self.counter_vector().tolist(), strict=True))

    def reset_counters(self) -> None:
        lib.kvidx_reset_stats(self._ops, self._live())
        self._base = self._base + self._dm_vector()

    # -- the replay engine's C loop --
    def drive(self, stream: Any, op_ids: np.ndarray, groups: np.ndarray, n_groups: int,
              add_virtual: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ops ``op_ids`` of an :class:`~kvdm.traces.mapping.OpStream` in C (driver.h), each
        timed alone. Returns per-op latency (ns, plus the modelled time if ``add_virtual``) and
        hits, and per group (``groups[i]`` for op i) the summed counter deltas as
        int64[n_groups, len(counter_names())]."""
        view = self._stream_view(stream)
        h = self._live()

        def call(ids: Any, grp: Any, n: int, out: Any, err: Any) -> int:
            return lib.kvdm_drive(self._ops, h, self.transport.ptr, view[0], ids, grp, n, n_groups,
                                  int(add_virtual), out, err, 512)

        lat, hits, acc = run_drive(call, op_ids, groups, n_groups, int(lib.kvdm_drive_counters()), raise_for)
        return lat, hits, acc[:, self._drive_cols]

    def _stream_view(self, stream: Any) -> tuple[Any, list[np.ndarray]]:
        """:func:`stream_view` of a stream, built once per stream."""
        cached = getattr(self, "_stream", None)
        if cached is not None and cached[0] is stream:
            return cached[1]
        view = stream_view(stream, self.key_bytes)
        self._stream = (stream, view)
        return view

    def debug_hold_lock(self, key: Any) -> None:
        """Test hook: take the lock of the leaf (race: the subtable) holding ``key`` and never
        release it, what a client that crashed mid-write leaves behind (race also marks the
        subtable's buckets as splitting: a splitter that crashed mid-split)."""
        self._check(lib.kvidx_debug_lock(self._ops, self._live(), _ptr(self._keys(key))))

    def close(self) -> None:
        if self._h is not None:
            ffi.release(self._h)  # runs the close function now
            self._h = None


def stream_view(stream: Any, key_bytes: int) -> tuple[Any, list[np.ndarray]]:
    """The ``kvdm_stream`` struct (driver.h) over an operation stream's arrays, and the arrays it
    borrows (keep them alive with it)."""
    kb = key_bytes
    arrays = {
        "kind": np.ascontiguousarray(stream.kind, np.uint8),
        "key_offsets": np.ascontiguousarray(stream.key_offsets, np.int64),
        "keys": np.ascontiguousarray(stream.keys).view(np.uint8),
        "key_block": np.ascontiguousarray(stream.key_block, np.int64),
        "range_lo": np.ascontiguousarray(stream.range_lo).view(np.uint8),
        "range_hi": np.ascontiguousarray(stream.range_hi).view(np.uint8),
    }
    limit = getattr(stream, "range_limit", None)
    if limit is not None:
        arrays["range_limit"] = np.ascontiguousarray(limit, np.int64)
    n_ops, n_keys = arrays["kind"].size, arrays["key_block"].size
    if arrays["keys"].size != n_keys * kb or arrays["range_lo"].size != n_ops * kb \
            or arrays["range_hi"].size != n_ops * kb or arrays["key_offsets"].size != n_ops + 1:
        raise ValueError(f"the stream's arrays do not fit {kb}-byte keys, {n_ops} ops and {n_keys} keys")
    st = ffi.new("kvdm_stream *")
    for name in ("kind", "keys", "range_lo", "range_hi"):
        setattr(st, name, _ptr(arrays[name]))
    for name in ("key_offsets", "key_block", "range_limit"):
        setattr(st, name, _ptr(arrays.get(name), "int64_t *"))
    st.n_ops, st.n_keys, st.key_bytes = n_ops, n_keys, kb
    return st, list(arrays.values())


def run_drive(call: Any, op_ids: np.ndarray, groups: np.ndarray, n_groups: int, n_counters: int,
              raise_error: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One C measuring-loop call (``call(op_ids, groups, n, out, err) -> status``, over a
    ``kvdm_drive_out`` and a 512-byte error buffer) with its result arrays: per-op latency and
    hits, and int64[n_groups, n_counters] counter sums. A failure goes to ``raise_error(status,
    message)``, the message saying how many ops ran."""
    op_ids = np.ascontiguousarray(op_ids, dtype=np.int64)
    groups = np.ascontiguousarray(groups, dtype=np.int32)
    if op_ids.shape != groups.shape:
        raise ValueError(f"{op_ids.size} op ids but {groups.size} groups")
    n = op_ids.size
    lat = np.zeros(n, np.int64)
    hits = np.zeros(n, np.int64)
    counters = np.zeros((max(n_groups, 1), n_counters), np.uint64)
    out = ffi.new("kvdm_drive_out *")
    out.latency_ns, out.hits = _ptr(lat, "int64_t *"), _ptr(hits, "int64_t *")
    out.counters = _ptr(counters, "uint64_t *")
    err = ffi.new("char[512]")
    rc = call(_ptr(op_ids, "int64_t *"), _ptr(groups, "int32_t *"), n, out, err)
    if rc != lib.DM_OK:
        raise_error(rc, f"{ffi.string(err).decode(errors='replace')} (after {out.done} of {n} ops)")
    return lat, hits, counters.view(np.int64)  # deltas of gauges may be negative

