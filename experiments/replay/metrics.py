"""Latency histograms and per-op metrics.

:class:`Histogram` is the numpy twin of ``native/hist.h``: the same log-linear buckets (exact
below 128 ns, then 128 buckets per power of two, so a bucket midpoint is within 0.39% of any
value in it), mergeable by adding counts. Percentiles are computed from merged counts, never
by combining percentiles. A C ``kv_hist`` filled by native code converts with
:meth:`Histogram.from_native`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvdm.native import ffi, lib

# every index's retries, by its own counter names (race: kvidx_ops.counters in native/race.inc):
# the tables sum them into retries per op
RETRY_COUNTERS = ("lock_fail", "version_mismatch", "go_right", "torn_retry", "cas_failed", "stale_directory",
                  "lost_insert_race", "checksum_retry")

SUB_BITS = int(lib.KV_HIST_SUB_BITS)
SUB = 1 << SUB_BITS
MAX_SHIFT = int(lib.KV_HIST_MAX_SHIFT)
BUCKETS = int(lib.KV_HIST_BUCKETS)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def bucket_index(ns: np.ndarray) -> np.ndarray:
    """Bucket of each value (ns, non-negative integers), as ``kv_hist_index`` computes it."""
    v = np.asarray(ns, dtype=np.uint64)
    out = v.astype(np.int64)                       # exact buckets below SUB
    big = v >= SUB
    if big.any():
        vb = v[big]
        msb = np.floor(np.log2(vb.astype(np.float64))).astype(np.int64)
        # float log2 can land one off near powers of two: correct it exactly
        msb -= (np.left_shift(np.uint64(1), msb.astype(np.uint64)) > vb).astype(np.int64)
        msb += (np.left_shift(np.uint64(1), (msb + 1).astype(np.uint64)) <= vb).astype(np.int64) * (msb < 63)
        shift = msb - SUB_BITS
        idx = (shift + 1) * SUB + (np.right_shift(vb, shift.astype(np.uint64)).astype(np.int64) - SUB)
        out[big] = np.where(shift > MAX_SHIFT, BUCKETS - 1, idx)
    return out


def bucket_mid(idx: np.ndarray) -> np.ndarray:
    """Midpoint (ns) of each bucket index."""
    i = np.asarray(idx, dtype=np.int64)
    shift = np.maximum(i // SUB - 1, 0)
    lo = np.where(i < SUB, i, (i % SUB + SUB) << shift).astype(np.float64)
    width = np.where(i < SUB, 1, 1 << shift).astype(np.float64)
    return lo + (width - 1.0) / 2.0


@dataclass
class Histogram:
    """A mergeable latency histogram (values in ns)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(BUCKETS, dtype=np.uint64))
    sum_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def record(self, ns: Any) -> None:
        """Add one value or an array of values (ns)."""
        v = np.atleast_1d(np.asarray(ns, dtype=np.uint64))
        if v.size == 0:
            return
        first = self.total == 0
        np.add.at(self.counts, bucket_index(v), np.uint64(1))
        self.sum_ns += int(v.sum())
        self.min_ns = int(v.min()) if first else min(self.min_ns, int(v.min()))
        self.max_ns = max(self.max_ns, int(v.max()))

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other`` into this histogram; returns self."""
        if other.total:
            self.min_ns = other.min_ns if self.total == 0 else min(self.min_ns, other.min_ns)
            self.max_ns = max(self.max_ns, other.max_ns)
            self.counts += other.counts
            self.sum_ns += other.sum_ns
        return self

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) in ns, as the midpoint of its bucket."""
        total = self.total
        if total == 0:
            return float("nan")
        rank = max(1, int(np.ceil(q / 100.0 * total)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(bucket_mid(np.array([i]))[0])

    def percentiles_us(self, qs: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
        """``{"p50": us, ...}`` for the given percentiles."""
        return {f"p{q:g}": self.percentile(q) / 1e3 for q in qs}

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.total if self.total else float("nan")

    @classmethod
    def from_native(cls, h: Any) -> Histogram:
        """Copy a C ``kv_hist`` (cdata pointer)."""
        counts = np.frombuffer(ffi.buffer(h.counts), dtype=np.uint64).copy()
        return cls(counts, int(h.sum_ns), int(h.min_ns) if h.total else 0, int(h.max_ns))

    def to_sparse(self) -> dict[str, Any]:
        """Compact form for results files: non-empty buckets and their counts."""
        nz = np.flatnonzero(self.counts)
        return {"buckets": nz.tolist(), "counts": self.counts[nz].tolist(), "sum_ns": self.sum_ns,
                "min_ns": self.min_ns, "max_ns": self.max_ns}

    @classmethod
    def from_sparse(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts[np.asarray(d["buckets"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.uint64)
        h.sum_ns, h.min_ns, h.max_ns = int(d["sum_ns"]), int(d["min_ns"]), int(d["max_ns"])
        return h
