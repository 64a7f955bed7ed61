"""Trace -> index operation stream, the input of the replay engine.

Key schemes (:data:`KEY_SCHEMES`), for the block at position ``i`` of a request with ids
``b[0..n)``; layouts follow ``kvdm.index.api`` (8 B keys uint64[n], 32 B keys uint8[n, 32]):

* ``id``: ``b[i] + 1`` as uint64 (8 B). The +1 keeps the reserved key 0 free; adjacency is
  kept, so a run of consecutive ids is a dense key interval and a range query over it returns
  exactly the run.
* ``u64``: chained 64-bit hash of the prefix (8 B): ``h[i] = mix64(h[i-1] * GOLDEN + b[i])``
  with ``h[-1] = U64_SEED`` and ``mix64`` the splitmix64 finaliser; the reserved values 0 and
  2**64-1 are remapped to 1 and 2**64-2 (after chaining).
* ``sha256``: the paper's 32 B key, ``k[i] = SHA-256(k[i-1] || le64(b[i]))`` with ``k[-1]`` 32
  zero bytes.

Chained keys identify the whole prefix, as engines' block hashes do; on the Mooncake traces
(whose ids are already prefix-chained) all three schemes give the same hits and misses.

Mappings (:data:`MAPPINGS`), per request, in trace order:

* ``paper``: the request's blocks are cut into maximal runs of consecutive ids
  (``b[i+1] == b[i] + 1``); a run of >= 2 blocks is one ``range`` op, a lone block one
  ``get`` op, in block order. Then one ``insert`` op puts the request's blocks that were
  not in the index (first occurrence in the request, block order). What a range op asks
  is set by the range semantics (:data:`RANGE_SEMANTICS`):

  - ``bounds`` (default): ``[min, max]`` of the run's keys, no limit. **Range over the hash
    schemes does not mean adjacency**: on ``u64``/``sha256`` the interval also holds
    unrelated keys (on conversation with ``sha256`` an 18-block run's interval holds ~69,000
    entries); only ``id`` keeps a run a dense interval.
  - ``scan``: a scan that starts at the run's first key (block order) and returns at most the
    run's length entries (``range_lo`` = that key, ``range_hi`` = the largest key,
    ``range_limit`` = run length): what a B+tree range "over a run" costs when the run is
    adjacent in key space, whatever the key scheme. On ``id`` keys it returns exactly the
    run when all of it is present; on hash schemes it returns the first key and whatever
    follows it in key order, so the op measures the scan's cost, not the run's contents.
* ``prefix``: one ``prefix_match`` op over all the request's keys (what an engine asks before
  prefill), then one ``insert`` op of the suffix from the first miss to the end.

Inserts (:data:`INSERT_MODES`), both mappings: ``timed`` (insert ops issued and measured),
``untimed`` (issued so the index state stays right, but ``timed`` is False: leave them out of
latency statistics), ``none`` (no insert ops; the replay must first put ``preload_keys``,
every key of the trace, so every lookup hits).

The stream (:class:`OpStream`), all numpy, grouped per request:

* requests: ``req_offsets`` int64[R+1] (ops of request r are ``req_offsets[r]:req_offsets[r+1]``),
  ``req_timestamp_ms`` float64[R] (the trace's arrival time);
* ops: ``kind`` uint8[N] (:data:`OP_GET` 0, :data:`OP_RANGE` 1, :data:`OP_PREFIX` 2,
  :data:`OP_INSERT` 3), ``key_offsets`` int64[N+1] (keys of op j are
  ``keys[key_offsets[j]:key_offsets[j+1]]``; ``n_blocks`` = their count), ``range_lo`` /
  ``range_hi`` (key layout, one row per op; zero except for range ops; inclusive bounds),
  ``range_limit`` int64[N] (the most entries a range op returns; 0 = no limit),
  ``expected_hits`` int64[N], ``timed`` bool[N];
* keys: ``keys`` (uint64[K] or uint8[K, 32]), ``key_block`` int64[K] (the index into the
  trace's flat block array of each key, to map results back to blocks).

``expected_hits`` is the infinite-cache ground truth (an index that never evicts and starts
empty, or preloaded in mode ``none``) for the op as issued: ``get``/``range``: how many of the
op's own keys are present (for ``range`` on the ``id`` scheme this equals ``range_count``; on
hash schemes ``range_count`` may be larger, so compare the run's keys among the returned
ones); ``prefix_match``: the longest present prefix (what ``Index.prefix_match`` returns);
``insert``: how many of its keys were already present (0 on prefix-chained keys).
``expected_range_count`` int64[N] is, for ``range`` ops, how many entries
``Index.range(range_lo, range_hi, range_limit)`` must return: every key present in
``[range_lo, range_hi]`` (the run's own and, on hash schemes, unrelated ones; this is
``Index.range_count(lo, hi)`` under ``bounds``), at most ``range_limit`` of them; -1 for other
ops. For ``range`` ops under ``scan``, ``expected_hits`` counts the run's keys among the
returned entries. A replay against the ``dict`` backend must reproduce both exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .loaders import Trace

KEY_SCHEMES = ("id", "u64", "sha256")
MAPPINGS = ("paper", "prefix")
INSERT_MODES = ("timed", "untimed", "none")
RANGE_SEMANTICS = ("bounds", "scan")
OP_GET, OP_RANGE, OP_PREFIX, OP_INSERT = 0, 1, 2, 3
OP_NAMES = ("get", "range", "prefix_match", "insert")

U64_SEED = np.uint64(0x6B76646D5F6B7664)  # "kvdm_kvd"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U64_MAX = np.uint64(2**64 - 1)


def key_bytes_of(scheme: str) -> int:
    """Key width in bytes of a key scheme."""
    _check(scheme, KEY_SCHEMES, "key scheme")
    return 32 if scheme == "sha256" else 8


def _check(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise over uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _positions_by_depth(trace: Trace) -> list[np.ndarray]:
    """For each depth j, the flat indices of the j-th block of every request that long."""
    lengths = trace.lengths
    order = np.argsort(-lengths, kind="stable")
    starts = trace.offsets[:-1][order]
    sorted_len = lengths[order]
    maxlen = int(sorted_len[0]) if sorted_len.size else 0
    # counts[j] = number of requests with length > j
    counts = np.searchsorted(-sorted_len, -(np.arange(maxlen) + 1), side="right")
    return [starts[: counts[j]] + j for j in range(maxlen)]


def block_keys(trace: Trace, scheme: str) -> np.ndarray:
    """The key of every block reference of ``trace`` (flat, in the index API layout)."""
    _check(scheme, KEY_SCHEMES, "key scheme")
    ids = trace.blocks
    if scheme == "id":
        if ids.size and int(ids.max()) >= 2**63:
            raise ValueError("block ids must be < 2**63 for the id key scheme")
        return ids.astype(np.uint64) + np.uint64(1)
    if scheme == "u64":
        h = np.empty(ids.shape[0], dtype=np.uint64)
        uids = ids.astype(np.uint64)
        for j, idx in enumerate(_positions_by_depth(trace)):
            parent = np.full(idx.shape[0], U64_SEED) if j == 0 else h[idx - 1]
            h[idx] = mix64(parent * _GOLDEN + uids[idx])
        h[h == 0] = 1
        h[h == _U64_MAX] = _U64_MAX - np.uint64(1)
        return h
    out = np.empty((ids.shape[0], 32), dtype=np.uint8)
    if out.size == 0:
        return out
    view = memoryview(out).cast("B")
    sha = hashlib.sha256
    zero = bytes(32)
    for r in range(trace.n_requests):
        k = zero
        for i in range(int(trace.offsets[r]), int(trace.offsets[r + 1])):
            k = sha(k + int(ids[i]).to_bytes(8, "little")).digest()
            view[i * 32:(i + 1) * 32] = k
    return out


def key_codes(keys: np.ndarray) -> np.ndarray:
    """Dense int64 identity codes of keys (equal keys, equal codes)."""
    flat = np.ascontiguousarray(keys).view("V32").ravel() if keys.ndim == 2 else keys
    return np.unique(flat, return_inverse=True)[1].reshape(-1).astype(np.int64)


def seen_before(codes: np.ndarray, req_of_block: np.ndarray) -> np.ndarray:
    """bool per reference: its code appeared in an earlier request (infinite-cache hit)."""
    if codes.size == 0:
        return np.zeros(0, dtype=bool)
    _, first = np.unique(codes, return_index=True)
    first_idx = np.empty(int(codes.max()) + 1, dtype=np.int64)
    first_idx[codes[first]] = first
    return req_of_block[first_idx[codes]] < req_of_block


def _range_counts(lo: np.ndarray, hi: np.ndarray, q_req: np.ndarray, first_req: np.ndarray,
                  chunk: int = 256) -> np.ndarray:
    """For each query, #codes c in [lo, hi] with first_req[c] < q_req (codes are key ranks).

    Requests are taken in chunks: codes inserted before the chunk are counted with one prefix
    sum per chunk, those inserted inside it by a small broadcast comparison.
    """
    out = np.zeros(lo.size, dtype=np.int64)
    if lo.size == 0:
        return out
    by_req = np.argsort(first_req, kind="stable")
    fr_sorted = first_req[by_req]
    for start in range(0, int(q_req.max()) + 1, chunk):
        qs = np.flatnonzero((q_req >= start) & (q_req < start + chunk))
        if qs.size == 0:
            continue
        present = np.zeros(first_req.size + 1, dtype=np.int64)
        present[1:] = np.cumsum(first_req < start)
        out[qs] = present[hi[qs] + 1] - present[lo[qs]]
        a, b = np.searchsorted(fr_sorted, [start, start + chunk])
        inner = by_req[a:b]  # codes first seen inside the chunk
        if inner.size:
            c, f = inner[None, :], first_req[inner][None, :]
            hit = (c >= lo[qs, None]) & (c <= hi[qs, None]) & (f < q_req[qs, None])
            out[qs] += hit.sum(axis=1)
    return out


@dataclass
class OpStream:
    """An operation stream (layout in the module docstring)."""

    mapping: str
    key_scheme: str
    inserts: str
    trace_name: str
    req_offsets: np.ndarray
    req_timestamp_ms: np.ndarray
    kind: np.ndarray
    key_offsets: np.ndarray
    keys: np.ndarray
    key_block: np.ndarray
    range_lo: np.ndarray
    range_hi: np.ndarray
    expected_hits: np.ndarray
    expected_range_count: np.ndarray
    timed: np.ndarray
    preload_keys: np.ndarray
    range_limit: np.ndarray | None = None  # None: no limits (streams saved before scan existed)
    range_semantics: str = "bounds"
    tokens: Any = None  # a token-level stream's kvdm.traces.tokens.TokenStreamInfo (not saved)

    def __post_init__(self) -> None:
        if self.range_limit is None:
            self.range_limit = np.zeros(self.kind.shape[0], dtype=np.int64)

    @property
    def key_bytes(self) -> int:
        return key_bytes_of(self.key_scheme)

    @property
    def n_requests(self) -> int:
        return int(self.req_offsets.shape[0] - 1)

    @property
    def n_ops(self) -> int:
        return int(self.kind.shape[0])

    @property
    def n_blocks(self) -> np.ndarray:
        """Blocks (keys) each op covers, int64[n_ops]."""
        return np.diff(self.key_offsets)

    def request_ops(self, r: int) -> range:
        """The op indices of request ``r``."""
        return range(int(self.req_offsets[r]), int(self.req_offsets[r + 1]))

    def op_keys(self, j: int) -> np.ndarray:
        """The keys of op ``j``."""
        return self.keys[self.key_offsets[j]:self.key_offsets[j + 1]]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per op kind: ops, keys covered, expected hits."""
        out = {}
        nb = self.n_blocks
        for code, name in enumerate(OP_NAMES):
            m = self.kind == code
            if m.any():
                out[name] = {"ops": int(m.sum()), "blocks": int(nb[m].sum()),
                             "expected_hits": int(self.expected_hits[m].sum()),
                             "timed": int(self.timed[m].sum())}
                if code == OP_RANGE:
                    out[name]["expected_range_count"] = int(self.expected_range_count[m].sum())
        return out

    _ARRAYS = ("req_offsets", "req_timestamp_ms", "kind", "key_offsets", "keys", "key_block", "range_lo",
               "range_hi", "expected_hits", "expected_range_count", "timed", "preload_keys")
    _OPTIONAL = ("range_limit",)

    def save(self, path: str | Path) -> None:
        """Write the stream as one ``.npz`` (the replay engine can cache streams)."""
        meta = {"mapping": self.mapping, "key_scheme": self.key_scheme, "inserts": self.inserts,
                "trace_name": self.trace_name, "range_semantics": self.range_semantics}
        np.savez(path, meta=np.array(json.dumps(meta)),
                 **{a: getattr(self, a) for a in self._ARRAYS + self._OPTIONAL})

    @classmethod
    def load(cls, path: str | Path) -> OpStream:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            optional = {a: z[a] for a in cls._OPTIONAL if a in z.files}
            return cls(**meta, **{a: z[a] for a in cls._ARRAYS}, **optional)


def map_trace(trace: Trace, mapping: str = "paper", key_scheme: str = "id", inserts: str = "timed",
              keys: np.ndarray | None = None, range_semantics: str = "bounds") -> OpStream:
    """Map ``trace`` to an :class:`OpStream` (``keys`` may pass precomputed :func:`block_keys`)."""
    _check(mapping, MAPPINGS, "mapping")
    _check(inserts, INSERT_MODES, "insert mode")
    _check(range_semantics, RANGE_SEMANTICS, "range semantics")
    if keys is None:
        keys = block_keys(trace, key_scheme)
    m = trace.n_blocks
    req = trace.request_of_block()
    codes = key_codes(keys)
    pos = np.arange(m, dtype=np.int64)
    if inserts == "none":
        hit = np.ones(m, dtype=bool)
        _, first = np.unique(codes, return_index=True)
        preload = keys[np.sort(first)]
    else:
        hit = seen_before(codes, req)
        preload = keys[:0]
    is_req_start = np.zeros(m, dtype=bool)
    nonempty = trace.lengths > 0
    is_req_start[trace.offsets[:-1][nonempty]] = True

    if mapping == "paper":
        ids = trace.blocks
        consec_prev = np.zeros(m, dtype=bool)
        consec_prev[1:] = (ids[1:] == ids[:-1] + 1) & ~is_req_start[1:]
        lookup_start = ~consec_prev
        if inserts != "none":
            # a key inserted once per request: its first occurrence, if absent before the request
            _, first = np.unique(codes, return_index=True)
            first_mask = np.zeros(m, dtype=bool)
            first_mask[first] = True
            ins_pos = np.flatnonzero(first_mask & ~hit)
        else:
            ins_pos = pos[:0]
    else:
        lookup_start = is_req_start
        ins_pos = pos[:0]
        leading = np.zeros(m, dtype=np.int64)
        if m:
            # first miss position within each request (its length if none)
            miss_at = np.where(hit, np.iinfo(np.int64).max, pos)
            starts = trace.offsets[:-1][nonempty]
            first_miss = np.minimum(np.minimum.reduceat(miss_at, starts), trace.offsets[1:][nonempty])
            leading_per_req = first_miss - starts
            leading[starts] = leading_per_req
            if inserts != "none":
                fm_of_block = np.repeat(first_miss, trace.lengths[nonempty])
                ins_pos = np.flatnonzero(pos >= fm_of_block)

    # entries (request, phase, block position), phase 0 = lookups, 1 = the request's insert
    e_block = np.concatenate([pos, ins_pos])
    e_phase = np.concatenate([np.zeros(m, np.int8), np.ones(ins_pos.size, np.int8)])
    e_req = np.concatenate([req, req[ins_pos]])
    order = np.lexsort((e_block, e_phase, e_req))
    e_block, e_phase, e_req = e_block[order], e_phase[order], e_req[order]
    n_e = e_block.size
    new_op = np.ones(n_e, dtype=bool)
    if n_e:
        new_op[1:] = (e_req[1:] != e_req[:-1]) | (e_phase[1:] != e_phase[:-1])
        new_op |= (e_phase == 0) & lookup_start[e_block]
    op_first = np.flatnonzero(new_op)
    key_offsets = np.append(op_first, n_e).astype(np.int64)
    n_blocks = np.diff(key_offsets)
    op_phase = e_phase[op_first]
    op_req = e_req[op_first]
    if mapping == "paper":
        kind = np.where(n_blocks >= 2, OP_RANGE, OP_GET).astype(np.uint8)
    else:
        kind = np.full(op_first.size, OP_PREFIX, dtype=np.uint8)
    kind[op_phase == 1] = OP_INSERT

    op_keys = keys[e_block]
    expected = (np.add.reduceat(hit[e_block].astype(np.int64), op_first) if n_e
                else np.zeros(0, np.int64))
    if mapping == "prefix":
        pm = kind == OP_PREFIX
        expected[pm] = leading[e_block[op_first[pm]]]

    range_lo = np.zeros((op_first.size,) + keys.shape[1:], dtype=keys.dtype)
    range_hi = np.zeros_like(range_lo)
    range_limit = np.zeros(op_first.size, dtype=np.int64)
    range_count = np.full(op_first.size, -1, dtype=np.int64)
    rng = np.flatnonzero(kind == OP_RANGE)
    if rng.size:
        _, first = np.unique(codes, return_index=True)
        first_req = req[first] if inserts != "none" else None
        # key_codes ranks keys in key order (numeric for uint64, memcmp for 32 B), so a key
        # interval is a code interval and "present keys in it" a count over codes
        args = (op_keys, codes[e_block], op_first, key_offsets, op_req, rng, first_req)
        if range_semantics == "bounds":
            _bounds_ranges(*args, key_scheme, expected, range_lo, range_hi, range_count)
        else:
            _scan_ranges(*args, expected, range_lo, range_hi, range_limit, range_count)

    timed = (kind != OP_INSERT) | (inserts == "timed")
    req_offsets = np.searchsorted(op_req, np.arange(trace.n_requests + 1), side="left").astype(np.int64)
    return OpStream(mapping=mapping, key_scheme=key_scheme, inserts=inserts, trace_name=trace.name,
                    req_offsets=req_offsets, req_timestamp_ms=trace.timestamps_ms.astype(np.float64),
                    kind=kind, key_offsets=key_offsets, keys=op_keys, key_block=e_block,
                    range_lo=range_lo, range_hi=range_hi, expected_hits=expected.astype(np.int64),
                    expected_range_count=range_count,
                    timed=np.asarray(timed, dtype=bool), preload_keys=preload, range_limit=range_limit,
                    range_semantics=range_semantics)


def _present_in(lo: np.ndarray, hi: np.ndarray, q_req: np.ndarray, first_req: np.ndarray | None) -> np.ndarray:
    """Keys present in code interval [lo, hi] when request q_req runs (all of them if preloaded)."""
    if first_req is None:
        return hi - lo + 1
    return _range_counts(lo, hi, q_req, first_req, chunk=64)


def _bounds_ranges(op_keys: np.ndarray, op_codes: np.ndarray, op_first: np.ndarray, key_offsets: np.ndarray,
                   op_req: np.ndarray, rng: np.ndarray, first_req: np.ndarray | None, key_scheme: str,
                   expected: np.ndarray, range_lo: np.ndarray, range_hi: np.ndarray,
                   range_count: np.ndarray) -> None:
    """``bounds``: [min, max] of the run's keys, no limit (fills the range ops' rows in place)."""
    if op_keys.ndim == 1:
        range_lo[rng] = np.minimum.reduceat(op_keys, op_first)[rng]
        range_hi[rng] = np.maximum.reduceat(op_keys, op_first)[rng]
    else:
        for j in rng:
            rows = [bytes(r) for r in op_keys[key_offsets[j]:key_offsets[j + 1]]]
            range_lo[j] = np.frombuffer(min(rows), dtype=np.uint8)
            range_hi[j] = np.frombuffer(max(rows), dtype=np.uint8)
    if key_scheme == "id":  # a run is a dense key interval: the range holds the run only
        range_count[rng] = expected[rng]
        return
    lo_c = np.minimum.reduceat(op_codes, op_first)[rng]
    hi_c = np.maximum.reduceat(op_codes, op_first)[rng]
    range_count[rng] = _present_in(lo_c, hi_c, op_req[rng], first_req)


def _scan_ranges(op_keys: np.ndarray, op_codes: np.ndarray, op_first: np.ndarray, key_offsets: np.ndarray,
                 op_req: np.ndarray, rng: np.ndarray, first_req: np.ndarray | None, expected: np.ndarray,
                 range_lo: np.ndarray, range_hi: np.ndarray, range_limit: np.ndarray,
                 range_count: np.ndarray) -> None:
    """``scan``: from the run's first key, at most run-length entries (fills rows in place).

    A run key ``c`` is returned iff it is present, ``c >= first`` and at most ``limit`` present
    keys lie in ``[first, c]``; the op returns ``min(limit, present keys >= first)`` entries.
    """
    n_codes = int(op_codes.max()) + 1
    range_lo[rng] = op_keys[op_first[rng]]
    range_hi[rng] = np.iinfo(np.uint64).max if op_keys.ndim == 1 else 0xFF
    limit = np.diff(key_offsets)[rng]
    range_limit[rng] = limit
    c0, q = op_codes[op_first[rng]], op_req[rng]
    range_count[rng] = np.minimum(limit, _present_in(c0, np.full(rng.size, n_codes - 1), q, first_req))
    # every key of every range op, with its op's start code, request and limit
    owner = np.repeat(np.arange(rng.size), limit)
    entry = np.concatenate([np.arange(key_offsets[j], key_offsets[j + 1]) for j in rng])
    c = op_codes[entry]
    cand = c >= c0[owner]
    if first_req is not None:
        cand &= first_req[c] < q[owner]
    idx = np.flatnonzero(cand)
    hit = np.zeros(c.size, dtype=bool)
    hit[idx] = _present_in(c0[owner[idx]], c[idx], q[owner[idx]], first_req) <= limit[owner[idx]]
    expected[rng] = np.bincount(owner, weights=hit, minlength=rng.size).astype(np.int64)
