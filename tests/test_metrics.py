"""Latency histograms: C and numpy agree, merging is exact, percentiles are within 1%."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdm.experiments.replay.metrics import BUCKETS, Histogram, bucket_index, bucket_mid
from kvdm.native import ffi, lib


def native_hist(values: np.ndarray) -> object:
    h = ffi.new("kv_hist *")
    lib.kv_hist_reset(h)
    for v in values.tolist():
        lib.kv_hist_record(h, v)
    return h


def test_bucket_function_matches_c_everywhere_that_matters() -> None:
    edges = [0, 1, 127, 128, 129, 255, 256, 257]
    for p in range(8, 64):
        edges += [(1 << p) - 1, 1 << p, (1 << p) + 1]
    rng = np.random.default_rng(1)
    values = np.array(edges + rng.integers(0, 1 << 42, 5000, dtype=np.uint64).tolist(), dtype=np.uint64)
    ours = bucket_index(values)
    theirs = np.array([lib.kv_hist_index(int(v)) for v in values])
    assert np.array_equal(ours, theirs)
    assert ours.max() < BUCKETS
    mids = bucket_mid(np.arange(BUCKETS))
    assert np.allclose(mids, [lib.kv_hist_bucket_mid(i) for i in range(BUCKETS)])


def test_bucket_midpoint_relative_error_below_half_a_percent() -> None:
    rng = np.random.default_rng(2)
    values = np.unique(rng.integers(100, 10**12, 20000, dtype=np.uint64))  # 0.1 us .. 1000 s
    err = np.abs(bucket_mid(bucket_index(values)) - values.astype(np.float64)) / values
    assert err.max() < 0.004


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**10), min_size=1, max_size=300),
       st.lists(st.integers(0, 10**10), min_size=0, max_size=300))
def test_merge_equals_histogram_of_the_union(a: list[int], b: list[int]) -> None:
    ha, hb, hu = Histogram(), Histogram(), Histogram()
    ha.record(a)
    hb.record(b)
    hu.record(a + b)
    merged = ha.merge(hb)
    assert np.array_equal(merged.counts, hu.counts)
    assert (merged.sum_ns, merged.min_ns, merged.max_ns) == (hu.sum_ns, hu.min_ns, hu.max_ns)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_percentiles_within_one_percent_of_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # latencies from 0.1 us to ~1 s, heavy-tailed like real ones
    values = np.clip(rng.lognormal(mean=8.0, sigma=2.0, size=200_000), 100, 1e9).astype(np.uint64)
    h = Histogram()
    h.record(values)
    for q in (1, 50, 90, 99, 99.9, 99.99, 100):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(h.percentile(q) - exact) / exact <= 0.01, q


def test_native_and_numpy_histograms_agree_and_merge() -> None:
    rng = np.random.default_rng(6)
    values = rng.integers(50, 5_000_000, 3000, dtype=np.uint64)
    c = native_hist(values)
    py = Histogram()
    py.record(values)
    assert np.array_equal(Histogram.from_native(c).counts, py.counts)
    for q in (50, 99, 99.9):
        assert lib.kv_hist_percentile(c, q) == pytest.approx(py.percentile(q))
    c2 = native_hist(values[:100])
    lib.kv_hist_merge(c, c2)
    py.record(values[:100])
    assert np.array_equal(Histogram.from_native(c).counts, py.counts)
    assert c.total == 3100 and c.min_ns == values.min() and c.max_ns == values.max()


def test_sparse_round_trip_and_empty() -> None:
    h = Histogram()
    assert np.isnan(h.percentile(50))
    h.record([150, 150, 10**6])
    back = Histogram.from_sparse(h.to_sparse())
    assert np.array_equal(back.counts, h.counts) and back.max_ns == 10**6
    assert h.percentiles_us()["p50"] == pytest.approx(0.15, rel=0.01)
