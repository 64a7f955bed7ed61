"""Trace -> operation stream: coverage, key layouts, and exact replay against the dict index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdm.index.api import as_keys
from kvdm.index.dict_index import DictIndex
from kvdm.traces.characterise import block_hits, per_request_sum
from kvdm.traces.generators import PrefixIds
from kvdm.traces.loaders import Trace, load_trace
from kvdm.traces.mapping import (
    INSERT_MODES,
    KEY_SCHEMES,
    OP_GET,
    OP_INSERT,
    OP_PREFIX,
    OP_RANGE,
    RANGE_SEMANTICS,
    OpStream,
    block_keys,
    key_codes,
    map_trace,
    seen_before,
)
from kvdm.traces.registry import FIXTURE

# request lists over a small id space, so runs, repeats and duplicates inside a request happen
requests_st = st.lists(st.lists(st.integers(0, 12), max_size=9), min_size=1, max_size=12)


def replay(ops: OpStream) -> np.ndarray:
    """Issue every op against the dict index; what each returned, in expected_hits' terms."""
    idx = DictIndex(ops.key_bytes)
    if len(ops.preload_keys):
        idx.put(ops.preload_keys, np.arange(len(ops.preload_keys), dtype=np.uint64))
    got = np.zeros(ops.n_ops, dtype=np.int64)
    for j in range(ops.n_ops):
        keys = as_keys(ops.op_keys(j), ops.key_bytes)
        kind = ops.kind[j]
        if kind == OP_PREFIX:
            got[j] = idx.prefix_match(keys)
        elif kind == OP_RANGE:
            limit = int(ops.range_limit[j])
            returned, _ = idx.range(ops.range_lo[j], ops.range_hi[j], limit)
            assert len(returned) == ops.expected_range_count[j]
            got[j] = len({k.tobytes() for k in returned} & {k.tobytes() for k in keys})  # the run's keys returned
            if ops.range_semantics == "bounds":
                assert limit == 0
                assert idx.range_count(ops.range_lo[j:j + 1], ops.range_hi[j:j + 1])[0] == len(returned)
                assert got[j] == idx.get(keys)[1].sum()  # [min, max] holds every present key of the run
                if ops.key_scheme == "id":  # a run is a dense interval: the range is exactly the run
                    assert len(returned) == got[j]
            else:
                assert limit == len(keys) and len(returned) <= limit
                assert returned[:1].tobytes() == keys[:1].tobytes() or not idx.get(keys[:1])[1][0]
        else:
            got[j] = int(idx.get(keys)[1].sum())
            assert ops.expected_range_count[j] == -1
            if kind == OP_INSERT:
                idx.put(keys, np.full(len(keys), j, dtype=np.uint64))
    return got


def check_structure(trace: Trace, ops: OpStream, keys: np.ndarray) -> None:
    req = trace.request_of_block()
    assert ops.req_offsets[0] == 0 and ops.req_offsets[-1] == ops.n_ops
    assert np.all(np.diff(ops.req_offsets) >= 0) and ops.key_offsets[-1] == len(ops.keys)
    op_req = np.repeat(np.arange(trace.n_requests), np.diff(ops.req_offsets))
    assert all(op_req[j] == r for r in range(trace.n_requests) for j in ops.request_ops(r))
    key_op = np.repeat(np.arange(ops.n_ops), ops.n_blocks)
    assert np.array_equal(req[ops.key_block], op_req[key_op])  # every key belongs to its op's request
    assert np.array_equal(ops.keys, keys[ops.key_block])
    lookups = ops.kind[key_op] != OP_INSERT
    # every block of every request is covered exactly once by the lookups, in order
    assert np.array_equal(ops.key_block[lookups], np.arange(trace.n_blocks))
    assert np.all(ops.n_blocks >= 1)
    for j in range(ops.n_ops):
        blocks = trace.blocks[ops.key_block[ops.key_offsets[j]:ops.key_offsets[j + 1]]]
        if ops.kind[j] == OP_RANGE:
            assert len(blocks) >= 2 and np.all(np.diff(blocks) == 1)
        elif ops.kind[j] == OP_GET:
            assert len(blocks) == 1
    if ops.mapping == "paper":
        # lookups are maximal runs: two neighbouring lookup ops of one request never continue a run
        firsts = ops.key_block[ops.key_offsets[:-1]][ops.kind != OP_INSERT]
        for b in firsts:
            assert b == 0 or req[b] != req[b - 1] or trace.blocks[b] != trace.blocks[b - 1] + 1
    assert np.all(ops.timed[ops.kind != OP_INSERT])
    assert np.all(ops.timed[ops.kind == OP_INSERT] == (ops.inserts == "timed"))


@settings(max_examples=80, deadline=None)
@given(requests_st, st.sampled_from(KEY_SCHEMES), st.sampled_from(("paper", "prefix")),
       st.sampled_from(INSERT_MODES), st.sampled_from(RANGE_SEMANTICS))
def test_stream_invariants_and_exact_replay(reqs, scheme, mapping, inserts, semantics):
    trace = Trace.from_lists(reqs)
    keys = block_keys(trace, scheme)
    ops = map_trace(trace, mapping, scheme, inserts, keys=keys, range_semantics=semantics)
    check_structure(trace, ops, keys)
    assert np.array_equal(replay(ops), ops.expected_hits)
    hits = seen_before(key_codes(keys), trace.request_of_block())
    exact_runs = semantics == "bounds" or scheme == "id"  # a range returns every present key of its run
    if inserts == "none":
        if exact_runs:
            assert np.array_equal(ops.expected_hits[ops.kind != OP_PREFIX], ops.n_blocks[ops.kind != OP_PREFIX])
    elif mapping == "paper":
        # inserts put exactly the keys absent before the request, once each
        ins = ops.kind[np.repeat(np.arange(ops.n_ops), ops.n_blocks)] == OP_INSERT
        assert len(np.unique(key_codes(ops.keys[ins]))) == ins.sum() == len(np.unique(key_codes(keys)))
        assert not hits[ops.key_block[ins]].any()
        if exact_runs:
            assert ops.expected_hits[ops.kind != OP_INSERT].sum() == hits.sum()


@settings(max_examples=60, deadline=None)
@given(requests_st, st.sampled_from(("u64", "sha256")))
def test_prefix_reproduces_trace_hits_on_chained_keys(reqs, scheme):
    """With chained keys a key identifies its whole prefix, so the longest-prefix lookups and
    the suffix inserts give exactly the trace's per-request hits and misses."""
    trace = Trace.from_lists(reqs)
    keys = block_keys(trace, scheme)
    hits = seen_before(key_codes(keys), trace.request_of_block())
    ops = map_trace(trace, "prefix", scheme, "timed", keys=keys)
    prefix = ops.kind == OP_PREFIX
    nonempty = trace.lengths > 0
    assert np.array_equal(ops.expected_hits[prefix], per_request_sum(trace, hits)[nonempty])
    inserted = ops.n_blocks[ops.kind == OP_INSERT]
    misses = (trace.lengths - per_request_sum(trace, hits))[nonempty]
    assert np.array_equal(inserted, misses[misses > 0])
    assert np.array_equal(replay(ops), ops.expected_hits)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=6), min_size=1, max_size=10))
def test_prefix_chained_ids_all_schemes_agree(contents):
    """On Mooncake-style ids (prefix-chained) the three key schemes give the same ground truth."""
    chain = PrefixIds()
    trace = Trace.from_lists([chain.chain(c) for c in contents])
    ref = block_hits(trace)
    for mapping in ("paper", "prefix"):
        streams = [map_trace(trace, mapping, s) for s in KEY_SCHEMES]
        for s in streams:
            assert np.array_equal(s.expected_hits, streams[0].expected_hits)
            assert np.array_equal(s.kind, streams[0].kind)
    assert streams[0].expected_hits[streams[0].kind == OP_PREFIX].sum() == ref.sum()


def test_key_layouts():
    trace = load_trace(FIXTURE)
    ids = block_keys(trace, "id")
    assert ids.dtype == np.uint64 and ids.shape == (trace.n_blocks,)
    assert np.array_equal(ids, trace.blocks.astype(np.uint64) + 1) and ids.min() >= 1
    u64 = block_keys(trace, "u64")
    assert u64.dtype == np.uint64 and u64.shape == (trace.n_blocks,)
    assert not np.isin(u64, np.array([0, 2**64 - 1], dtype=np.uint64)).any()
    sha = block_keys(trace, "sha256")
    assert sha.dtype == np.uint8 and sha.shape == (trace.n_blocks, 32) and sha.any(axis=1).all()
    # one unique key per unique prefix, and the API accepts the layouts as they are
    n_unique = len(np.unique(trace.blocks))
    assert len(np.unique(u64)) == n_unique == len(np.unique(key_codes(sha)))
    assert as_keys(sha, 32) is not None and as_keys(u64, 8) is not None
    # chaining: block 0 (first of every request) has the same key everywhere
    assert len(set(u64[trace.offsets[:-1]].tolist())) == 1
    import hashlib

    first = hashlib.sha256(bytes(32) + (0).to_bytes(8, "little")).digest()
    assert bytes(sha[0]) == first


def test_hash_range_bounds_cover_run():
    trace = Trace.from_lists([[5, 6, 7, 9]])
    for scheme in ("u64", "sha256"):
        ops = map_trace(trace, "paper", scheme)
        j = int(np.flatnonzero(ops.kind == OP_RANGE)[0])
        k = ops.op_keys(j)
        rows = [bytes(np.asarray(x).view(np.uint8)) if scheme == "sha256" else int(x) for x in k]
        lo = bytes(ops.range_lo[j]) if scheme == "sha256" else int(ops.range_lo[j])
        hi = bytes(ops.range_hi[j]) if scheme == "sha256" else int(ops.range_hi[j])
        assert lo == min(rows) and hi == max(rows)
    ops = map_trace(trace, "paper", "id")
    assert ops.kind.tolist() == [OP_RANGE, OP_GET, OP_INSERT]
    assert (int(ops.range_lo[0]), int(ops.range_hi[0])) == (6, 8) and ops.n_blocks.tolist() == [3, 1, 4]


def test_conversation_ground_truth(shared_traces: Path):
    trace = load_trace(shared_traces / "conversation_trace.jsonl")
    paper = map_trace(trace, "paper", "id")
    s = paper.summary()
    assert s["get"]["blocks"] + s["range"]["blocks"] == 288_500
    assert s["get"]["expected_hits"] + s["range"]["expected_hits"] == int(block_hits(trace).sum())
    assert s["insert"]["blocks"] == 182_790
    prefix = map_trace(trace, "prefix", "u64")
    assert prefix.summary()["prefix_match"]["expected_hits"] == int(block_hits(trace).sum())


@pytest.mark.parametrize("scheme", KEY_SCHEMES)
@pytest.mark.parametrize("semantics", RANGE_SEMANTICS)
def test_fixture_exact_replay(scheme, semantics):
    """The real trace's head, replayed op by op on the dict index, range counts included."""
    ops = map_trace(load_trace(FIXTURE), "paper", scheme, range_semantics=semantics)
    assert np.array_equal(replay(ops), ops.expected_hits)
    ranges = ops.kind == OP_RANGE
    if scheme == "id":
        assert np.array_equal(ops.expected_range_count[ranges], ops.expected_hits[ranges])
    elif semantics == "bounds":  # hash order scatters a run: its [min, max] interval holds many unrelated keys
        assert ops.expected_range_count[ranges].sum() > 10 * ops.expected_hits[ranges].sum()
    else:  # a scan returns at most the run's length, mostly keys that follow the run's first one
        assert np.all(ops.expected_range_count[ranges] <= ops.n_blocks[ranges])
        assert ops.expected_hits[ranges].sum() < ops.expected_range_count[ranges].sum()
    bounds = map_trace(load_trace(FIXTURE), "paper", scheme)
    assert np.array_equal(bounds.kind, ops.kind)  # the semantics changes what a range asks, not the ops


def test_scan_range_starts_at_the_runs_first_key():
    trace = Trace.from_lists([[5, 6, 7, 9], [5, 6, 7]])
    for scheme in KEY_SCHEMES:
        ops = map_trace(trace, "paper", scheme, range_semantics="scan")
        rng = np.flatnonzero(ops.kind == OP_RANGE)
        assert ops.range_limit[rng].tolist() == [3, 3] and ops.range_limit[ops.kind != OP_RANGE].sum() == 0
        for j in rng:
            assert ops.range_lo[j].tobytes() == ops.op_keys(j)[0].tobytes()
            assert ops.range_hi[j].tobytes() == b"\xff" * (32 if scheme == "sha256" else 8)
        assert ops.expected_hits[rng[0]] == ops.expected_range_count[rng[0]] == 0  # an empty index
        if scheme == "id":  # the second request's scan returns exactly its run, inserted by the first
            assert ops.expected_hits[rng[1]] == ops.expected_range_count[rng[1]] == 3
        else:  # hash order: the scan starts at the run's first key (present) and goes on in key order
            assert 1 <= ops.expected_hits[rng[1]] <= ops.expected_range_count[rng[1]] <= 3


def test_save_load_round_trip(tmp_path):
    trace = load_trace(FIXTURE)
    for scheme, semantics in (("id", "bounds"), ("sha256", "scan")):
        ops = map_trace(trace, "paper", scheme, "untimed", range_semantics=semantics)
        ops.save(tmp_path / "ops.npz")
        back = OpStream.load(tmp_path / "ops.npz")
        assert (back.mapping, back.key_scheme, back.inserts, back.key_bytes, back.range_semantics) == (
            "paper", scheme, "untimed", ops.key_bytes, semantics)
        for a in OpStream._ARRAYS + OpStream._OPTIONAL:
            assert np.array_equal(getattr(back, a), getattr(ops, a)), a


def test_bad_options():
    trace = Trace.from_lists([[1]])
    with pytest.raises(ValueError, match="valid: paper, prefix"):
        map_trace(trace, "lru")
    with pytest.raises(ValueError, match="valid: id, u64, sha256"):
        map_trace(trace, "paper", "md5")
    with pytest.raises(ValueError, match="valid: timed, untimed, none"):
        map_trace(trace, "paper", "id", "sometimes")
    with pytest.raises(ValueError, match="valid: bounds, scan"):
        map_trace(trace, "paper", "id", range_semantics="all")
