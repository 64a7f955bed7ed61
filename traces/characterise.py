"""Trace characterisation: the paper's Fig. 1-2 quantities and a few more.

Definitions (block ids, not keys; the Mooncake ids are prefix-chained so this equals any
chained key scheme):

* **hit**: a block reference whose id appeared in an *earlier* request (an infinite cache that
  starts empty and is filled after each request). Per-request hit ratio = hits / blocks.
* **sequential block**: a block in a run of >= 2 consecutive ids (``b[i+1] == b[i] + 1``)
  inside one request; per-request sequential fraction = sequential blocks / blocks.
* **runs test** (Fig. 2b): Wald-Wolfowitz runs test on the non-sequential ids of a request,
  in request order, dichotomised above/below their median (values equal to the median are
  dropped), two-sided p-value from the normal approximation
  ``z = (R - mu) / sigma, mu = 2 n1 n2 / n + 1, sigma^2 = 2 n1 n2 (2 n1 n2 - n) / (n^2 (n - 1))``.
  Requests where it is undefined (fewer than 3 usable ids, or all on one side) get NaN
  and are left out of the share.
* **LRU hit ratio** at capacity C blocks: exact, from per-reference LRU stack distances
  (number of distinct blocks referenced since the previous reference of the same block).
* **reuse time**: trace time (s) between a reference and the previous reference of the same
  block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .loaders import Trace
from .mapping import seen_before

#: reference values quoted by the paper (Zhu et al., CLOUD 2025): key -> (value, trace it is about)
PAPER = {
    "share_hit_ge_50": (0.40, "conversation"),
    "share_hit_gt_80": (0.45, "synthetic"),
    "mean_sequential_fraction": (0.868, "toolagent"),
    "share_runs_p_gt_005": (0.89, "toolagent"),
}
RUNS_TEST_VARIANT = ("Wald-Wolfowitz runs test, runs above/below the median of each request's "
                     "non-sequential ids (ties dropped), two-sided, normal approximation")


def dense_ids(trace: Trace) -> np.ndarray:
    """Block ids remapped to 0..U-1 (U = unique blocks)."""
    return np.unique(trace.blocks, return_inverse=True)[1].reshape(-1).astype(np.int64)


def block_hits(trace: Trace) -> np.ndarray:
    """bool per block reference: infinite-cache hit (id seen in an earlier request)."""
    return seen_before(dense_ids(trace), trace.request_of_block())


def per_request_sum(trace: Trace, values: np.ndarray) -> np.ndarray:
    """Sum of a per-block array over each request (0 for empty requests), float64[R]."""
    sums = np.zeros(trace.n_requests)
    nonempty = trace.lengths > 0
    if values.size:
        sums[nonempty] = np.add.reduceat(values.astype(np.float64), trace.offsets[:-1][nonempty])
    return sums


def per_request_mean(trace: Trace, values: np.ndarray) -> np.ndarray:
    """Mean of a per-block bool/float array over each request (NaN for empty requests)."""
    sums = per_request_sum(trace, values)
    nonempty = trace.lengths > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nonempty, sums / np.maximum(trace.lengths, 1), np.nan)


def sequential_mask(trace: Trace) -> np.ndarray:
    """bool per block reference: part of a run of >= 2 consecutive ids in its request."""
    ids = trace.blocks
    m = ids.shape[0]
    starts = np.zeros(m, dtype=bool)
    starts[trace.offsets[:-1][trace.lengths > 0]] = True
    link = np.zeros(m, dtype=bool)  # link[i]: block i continues block i-1
    link[1:] = (ids[1:] == ids[:-1] + 1) & ~starts[1:]
    seq = link.copy()
    seq[:-1] |= link[1:]
    return seq


def runs_test_p(values: np.ndarray) -> float:
    """Two-sided p-value of the runs test described in the module docstring (NaN if undefined)."""
    med = np.median(values)
    signs = values[values != med] > med
    n = signs.size
    n1 = int(signs.sum())
    n2 = n - n1
    if n < 3 or n1 == 0 or n2 == 0:
        return math.nan
    runs = 1 + int(np.count_nonzero(signs[1:] != signs[:-1]))
    mu = 2.0 * n1 * n2 / n + 1.0
    var = 2.0 * n1 * n2 * (2.0 * n1 * n2 - n) / (n * n * (n - 1.0))
    if var <= 0:
        return math.nan
    return math.erfc(abs(runs - mu) / math.sqrt(var) / math.sqrt(2.0))


def runs_test_pvalues(trace: Trace, seq: np.ndarray | None = None) -> np.ndarray:
    """Per request, the runs-test p-value of its non-sequential ids (NaN where undefined)."""
    seq = sequential_mask(trace) if seq is None else seq
    out = np.full(trace.n_requests, np.nan)
    nonseq = trace.lengths - per_request_sum(trace, seq)
    for r in np.flatnonzero(nonseq >= 3):
        lo, hi = trace.offsets[r], trace.offsets[r + 1]
        out[r] = runs_test_p(trace.blocks[lo:hi][~seq[lo:hi]].astype(np.float64))
    return out


def previous_reference(codes: np.ndarray) -> np.ndarray:
    """For each reference, the index of the previous reference of the same code (-1 if none)."""
    order = np.lexsort((np.arange(codes.size), codes))
    prev = np.full(codes.size, -1, dtype=np.int64)
    same = codes[order[1:]] == codes[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def lru_stack_distances(trace: Trace) -> np.ndarray:
    """Per reference, the LRU stack distance (distinct blocks since its previous reference;
    -1 for a first reference). A cache of C blocks hits exactly where 0 <= distance < C.

    distance(t) = #{j < t : prev[j] <= p} - (p + 1) with p = prev[t]: the references in
    (p, t) whose previous reference is at or before p are first touches of distinct blocks.
    Counted with a Fenwick tree over prev values in one sweep.
    """
    prev = previous_reference(dense_ids(trace))
    n = prev.size
    tree = [0] * (n + 2)
    out = np.full(n, -1, dtype=np.int64)
    pv = (prev + 2).tolist()  # prev -1 -> slot 1
    res = out.tolist()
    for t in range(n):
        p = pv[t]
        if p >= 2:  # query #{j < t: prev[j] + 2 <= p}
            i, s = p, 0
            while i > 0:
                s += tree[i]
                i &= i - 1
            res[t] = s - (p - 1)
        i = p
        while i <= n + 1:
            tree[i] += 1
            i += i & -i
    return np.array(res, dtype=np.int64)


def lru_hit_curve(trace: Trace, capacities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(capacities, hit_ratio)`` of a block-granular LRU cache; default: log-spaced up to the
    number of unique blocks (where it equals the infinite-cache ratio)."""
    dist = lru_stack_distances(trace)
    unique = int(np.count_nonzero(dist < 0))
    if capacities is None:
        capacities = np.unique(np.geomspace(1, max(unique, 1), 40).astype(np.int64))
    reuse = np.sort(dist[dist >= 0])
    hits = np.searchsorted(reuse, capacities, side="left")
    return capacities, hits / max(dist.size, 1)


def reuse_times_s(trace: Trace) -> np.ndarray:
    """Trace time (s) from each re-reference back to the previous reference of its block."""
    prev = previous_reference(dense_ids(trace))
    req = trace.request_of_block()
    t = np.flatnonzero(prev >= 0)
    ts = trace.timestamps_ms
    return (ts[req[t]] - ts[req[prev[t]]]) / 1000.0


def popularity(trace: Trace) -> np.ndarray:
    """Reference count of every unique block, most popular first."""
    return np.sort(np.bincount(dense_ids(trace)))[::-1]


@dataclass
class TraceStats:
    """The numbers ``kvdm traces stats`` prints."""

    name: str
    requests: int
    block_refs: int
    unique_blocks: int
    hit_fraction: float
    share_hit_ge_50: float
    share_hit_gt_80: float
    mean_sequential_fraction: float
    share_runs_p_gt_005: float
    runs_tested: int
    span_s: float
    blocks_per_request_mean: float
    blocks_per_request_p99: float
    length_mismatches: int = 0  # requests with ceil(input_length / block_tokens) != blocks
    block_tokens: int = 512

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, measured, paper) rows; paper is '' where the paper gives no value."""
        def paper(key: str) -> str:
            value, about = PAPER[key]
            note = "" if about == self.name else f" (on {about})"
            return f"~{value * 100:.1f}%{note}"

        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:.1f}%"

        return [
            ("requests", f"{self.requests:,}", ""),
            ("block references", f"{self.block_refs:,}", ""),
            ("unique blocks", f"{self.unique_blocks:,}", ""),
            ("time span", f"{self.span_s:,.1f} s", ""),
            ("blocks/request mean, p99",
             f"{self.blocks_per_request_mean:.2f}, {self.blocks_per_request_p99:.0f}", ""),
            (f"input_length != blocks x {self.block_tokens} tokens", f"{self.length_mismatches:,} requests", ""),
            ("infinite-cache block hit fraction", pct(self.hit_fraction * 100), ""),
            ("requests with hit ratio >= 50%", pct(self.share_hit_ge_50 * 100), paper("share_hit_ge_50")),
            ("requests with hit ratio > 80%", pct(self.share_hit_gt_80 * 100), paper("share_hit_gt_80")),
            ("mean sequential fraction (Fig. 2a)", pct(self.mean_sequential_fraction * 100),
             paper("mean_sequential_fraction")),
            (f"runs-test p > 0.05 (Fig. 2b; {self.runs_tested:,} requests tested)",
             pct(self.share_runs_p_gt_005 * 100), paper("share_runs_p_gt_005")),
        ]


def compute_stats(trace: Trace) -> TraceStats:
    """Every number of :class:`TraceStats` for ``trace``."""
    hits = block_hits(trace)
    ratio = per_request_mean(trace, hits)
    seq = sequential_mask(trace)
    seq_frac = per_request_mean(trace, seq)
    pvals = runs_test_pvalues(trace, seq)
    tested = pvals[~np.isnan(pvals)]
    valid = ratio[~np.isnan(ratio)]
    lengths = trace.lengths
    return TraceStats(
        name=trace.name, requests=trace.n_requests, block_refs=trace.n_blocks,
        unique_blocks=int(np.unique(trace.blocks).size),
        hit_fraction=float(hits.mean()) if hits.size else 0.0,
        share_hit_ge_50=float(np.mean(valid >= 0.5)) if valid.size else 0.0,
        share_hit_gt_80=float(np.mean(valid > 0.8)) if valid.size else 0.0,
        mean_sequential_fraction=float(np.nanmean(seq_frac)) if valid.size else 0.0,
        share_runs_p_gt_005=float(np.mean(tested > 0.05)) if tested.size else math.nan,
        runs_tested=int(tested.size),
        span_s=float(trace.timestamps_ms.max() - trace.timestamps_ms.min()) / 1000.0,
        blocks_per_request_mean=float(lengths.mean()),
        blocks_per_request_p99=float(np.percentile(lengths, 99)),
        length_mismatches=trace.length_mismatches(), block_tokens=trace.block_tokens,
    )
