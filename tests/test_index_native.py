"""Native index API details: options, reserved keys, attach, root slots, protocol costs
(round trips and bytes per operation counted by the transport, not timed)."""

from __future__ import annotations

import numpy as np
import pytest
from index_helpers import make_keys, open_client

import kvdm.index as kindex
from kvdm.native import lib

pytestmark = pytest.mark.timeout(60)


def test_unknown_option_lists_valid_ones(dm) -> None:
    with pytest.raises(ValueError, match="unknown option.*cache_gb.*valid: cache_mb, root_slot, lease_ms"):
        kindex.open("chime", dm, 8, cache_gb=1)


def test_needs_a_transport() -> None:
    with pytest.raises(ValueError, match="needs a connected"):
        kindex.open("chime", None, 8)


@pytest.mark.parametrize("bad", [0, 2**64 - 1])
def test_reserved_8_byte_keys_rejected(dm, bad: int) -> None:
    idx = kindex.open("chime", dm, 8)
    with pytest.raises(ValueError, match="reserved"):
        idx.put(np.array([5, bad], dtype=np.uint64), np.array([1, 2], dtype=np.uint64))
    assert idx.get_one(5) is None  # the batch was rejected before any write


def test_reserved_32_byte_key_rejected(dm) -> None:
    idx = kindex.open("chime", dm, 32)
    with pytest.raises(ValueError, match="all-zero"):
        idx.put(np.zeros((1, 32), np.uint8), np.array([1], dtype=np.uint64))


def test_bad_root_slot(dm) -> None:
    with pytest.raises(ValueError, match="root_slot 64 not in 0..63"):
        kindex.open("chime", dm, 8, root_slot=64)


def test_root_slot_holding_another_index_is_refused(dm) -> None:
    kindex.open("chime", dm, 8).put_one(5, 1)  # slot 0 holds an 8-byte-key chime
    with pytest.raises(Exception, match="not a chime 32-byte-key node"):
        kindex.open("chime", dm, 32, root_slot=0)


@pytest.mark.parametrize(("there", "opened", "why"), [("race", "sherman", "not a sherman 8-byte-key node"),
                                                      ("chime", "race", "holds no race 8-byte-key index")])
def test_refused_open_names_the_index_and_root_slot(dm, there: str, opened: str, why: str) -> None:
    kindex.open(there, dm, 8, root_slot=5).put_one(5, 1)
    with pytest.raises(Exception, match=rf"^opening {opened} \(8-byte keys\) at root slot 5: .*{why}"):
        kindex.open(opened, dm, 8, root_slot=5)


def test_second_client_attaches_to_the_same_index(shm_node) -> None:
    a = open_client(shm_node.uri, "chime", 32)
    keys = make_keys(np.arange(1, 2001), 32)
    a.put(keys, np.arange(2000, dtype=np.uint64))
    b = open_client(shm_node.uri, "chime", 32)
    vals, found = b.get(keys)
    assert found.all() and (vals == np.arange(2000, dtype=np.uint64)).all()
    # separate root slots keep separate indexes on one memory node
    c = open_client(shm_node.uri, "chime", 32, root_slot=9)
    assert not c.get(keys)[1].any()


def test_values_use_all_64_bits(dm) -> None:
    idx = kindex.open("chime", dm, 8)
    idx.put_one(3, 2**64 - 1)
    assert idx.get_one(3) == 2**64 - 1


def put_one_by_one(idx, keys: np.ndarray, vals: np.ndarray) -> None:
    for i in range(len(keys)):
        idx.put(keys[i:i + 1], vals[i:i + 1])


@pytest.mark.parametrize("key_bytes,lookup_bytes", [(8, 128), (32, 256)])
def test_protocol_costs_on_a_warm_cache(dm, key_bytes: int, lookup_bytes: int) -> None:
    """One key at a time (window=1): a lookup is 1 round trip reading two bucket units (a miss
    too); insert and delete without a split: 2 round trips (lock CAS || bucket READ, then
    WRITE || unlock CAS)."""
    idx = kindex.open("chime", dm, key_bytes, cache_mb=8, window=1)
    keys = make_keys(np.arange(1, 20001), key_bytes)
    idx.put(keys, np.arange(20000, dtype=np.uint64))
    idx.get(keys)  # warm the cache (and let parents learn every leaf's version)
    idx.reset_counters()
    _, found = idx.get(keys)
    assert found.all()
    c = idx.counters()
    assert c["rtts"] == 20000 and c["cache_miss"] == 0
    assert c["bytes_read"] <= lookup_bytes * 20000 and c["bytes_read"] >= lookup_bytes * 20000 * 0.99
    absent = make_keys(np.arange(50001, 51001), key_bytes)
    idx.reset_counters()
    assert not idx.get(absent)[1].any()
    assert idx.counters()["rtts"] == 1000  # a miss is conclusive in one round trip
    idx.reset_counters()
    put_one_by_one(idx, keys[:1000], np.ones(1000, dtype=np.uint64))  # updates: never split
    c = idx.counters()
    assert c["rtts"] == 2000 and c["writes"] == 1000 and c["cas"] == 2000
    idx.reset_counters()
    assert all(idx.delete(keys[i:i + 1])[0] for i in range(1000))
    assert idx.counters()["rtts"] == 2000
    assert not idx.get(keys[:1000])[1].any()


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_appended_chains_cost_a_few_round_trips_even_when_parents_split(dm, name: str) -> None:
    """Chains of 250 new keys appended at the tree's right edge (as a serving engine's new blocks
    are): each splits its leaf up to 16 ways, and the parent takes every separator of a split in
    one lock round, splitting itself when they overfill it. So no chain costs more than 10 round
    trips, however many of its splits meet a full parent; every key reads back."""
    nxt, worst, internal = 1, 0, 0
    idx = kindex.open(name, dm, 8)
    for n in [25] * 400 + [250] * 60:
        k = np.arange(nxt, nxt + n, dtype=np.uint64)
        nxt += n
        before = idx.counters()
        idx.put(k, k)
        after = idx.counters()
        if n == 250:
            worst = max(worst, after["rtts"] - before["rtts"])
            internal += after["internal_splits"] - before["internal_splits"]
    assert internal >= 2 and worst <= 10
    keys = np.arange(1, nxt, dtype=np.uint64)
    vals, found = idx.get(keys)
    assert found.all() and (vals == keys).all()


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_a_cache_of_a_few_nodes_evicts_and_stays_right(dm, name: str) -> None:
    """cache_mb small enough for a handful of internal nodes: descents evict and refill the
    cache (never more entries than fit), every answer stays right, and a cache big enough for
    the whole tree serves the same lookups without a miss."""
    keys = make_keys(np.arange(1, 60001), 8)
    idx = kindex.open(name, dm, 8, cache_mb=0.008)
    idx.put(keys, np.arange(60000, dtype=np.uint64))
    for _ in range(2):
        vals, found = idx.get(keys[::-7])
        assert found.all() and (vals == np.arange(60000, dtype=np.uint64)[::-7]).all()
    c = idx.counters()
    assert c["cache_evict"] > 0 and 0 < c["cache_entries"] <= 8 and c["cache_miss"] > 20
    big = kindex.open(name, dm, 8, cache_mb=8)
    big.get(keys)
    big.reset_counters()
    vals, found = big.get(keys[::-7])
    assert found.all() and (vals == np.arange(60000, dtype=np.uint64)[::-7]).all()
    assert big.counters()["cache_miss"] == 0 and big.counters()["cache_entries"] > 8


@pytest.mark.parametrize("name", ["chime", "sherman"])
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_batches_cost_a_constant_number_of_round_trips(dm, name: str, key_bytes: int) -> None:
    """A batch of lookups shares one doorbell per DM_MAX_BATCH verbs; a batched update or
    delete is one lock-all doorbell (lock CAS || leaf READ per leaf) and one write-all doorbell
    (WRITE || unlock CAS per leaf), each split only at DM_MAX_BATCH verbs."""
    idx = kindex.open(name, dm, key_bytes, cache_mb=8)
    keys = make_keys(np.arange(1, 20001), key_bytes)
    idx.put(keys, np.arange(20000, dtype=np.uint64))
    idx.get(keys)
    for n in (1, 16, 64):
        idx.reset_counters()
        vals, found = idx.get(keys[:n])
        assert found.all() and (vals == np.arange(n)).all()
        assert idx.counters()["rtts"] == 1
    idx.reset_counters()
    idx.put(keys[100:164], np.full(64, 7, dtype=np.uint64))  # updates: no split
    c = idx.counters()
    assert c["rtts"] == 2 and c["batch_rounds"] == 1 and c["lock_fail"] == 0
    assert idx.get(keys[100:164])[0].tolist() == [7] * 64
    idx.reset_counters()
    assert idx.delete(keys[100:164]).all()
    assert idx.counters()["rtts"] == 2
    assert not idx.get(keys[100:164])[1].any()
    assert idx.get(keys[164:200])[1].all()


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_batched_inserts_that_split_stay_in_one_lock_round(dm, name: str) -> None:
    """Batches of 64 new keys into full leaves: a leaf whose keys do not fit is read whole under
    the lock lock_all took and re-placed or split in the same round (chime reads only a key's
    buckets first), so every batch takes one lock round and at most 4 round trips (lock_all,
    read_whole, write_all, parents) besides the allocator's FAA, unless an internal node splits;
    2 when nothing splits."""
    from kvdm.experiments.bench.calls import make_keys as numbered_keys

    idx = kindex.open(name, dm, 8, cache_mb=8)
    idx.put(numbered_keys(0, 50_000, 8), np.arange(50_000, dtype=np.uint64))
    reshaped = 0
    for b in range(400):
        idx.reset_counters()
        idx.put(numbered_keys(50_000 + 64 * b, 64, 8), np.arange(64, dtype=np.uint64))
        c = idx.counters()
        assert c["batch_rounds"] == 1 and c["batch_deferred"] == 0
        if not (c["splits"] or c["leaf_rebuilds"]):
            assert c["rtts"] == 2
        elif not c["internal_splits"]:
            assert c["rtts"] - c["faa"] <= 4
            reshaped += 1
    assert reshaped >= 10
    keys = numbered_keys(0, 50_000 + 64 * 400, 8)
    vals, found = idx.get(keys)
    assert found.all() and (vals[:50_000] == np.arange(50_000, dtype=np.uint64)).all()
    assert (vals[50_000:] == np.tile(np.arange(64, dtype=np.uint64), 400)).all()


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_chains_routed_through_a_stale_cache(dm, shm_node, name: str) -> None:
    """Runs of adjacent keys are routed by one descent per leaf (a key inside the range its
    predecessor's path holds for copies that path): after another client split every leaf and
    internal node our cache knows, chained gets, puts and prefix matches still find every key,
    as each leaf read checks the range it was routed by."""
    from kvdm.transport import TransportConfig, connect

    odd = np.arange(1, 40001, 2, dtype=np.uint64)
    a = kindex.open(name, dm, 8, cache_mb=8)
    a.put(odd, odd * 3)
    assert a.get(odd)[1].all()  # the cache now holds the tree of the odd keys
    other = connect(TransportConfig(), [shm_node.uri])
    b = kindex.open(name, other, 8, cache_mb=8)
    b.put(odd + 1, (odd + 1) * 3)  # every leaf splits (sherman's and chime's hold fewer than 60)
    keys = np.arange(1, 40001, dtype=np.uint64)
    for chain in (8, 64, 500):
        for start in range(0, 40000, 2000):
            vals, found = a.get(keys[start:start + chain])
            assert found.all() and (vals == keys[start:start + chain] * 3).all()
    a.put(keys[100:700], keys[100:700] * 5)
    vals, found = b.get(keys[:1000])
    assert found.all() and (vals[100:700] == keys[100:700] * 5).all() and (vals[:100] == keys[:100] * 3).all()
    assert a.prefix_match(keys[3000:3400]) == 400
    assert a.prefix_match(np.concatenate([keys[3000:3100], [10**9], keys[3100:3200]])) == 100
    b.close()
    other.close()


@pytest.mark.parametrize("name", ["chime", "sherman", "race"])
def test_batch_duplicates_act_in_order(dm, name: str) -> None:
    """A later duplicate of a key in one put wins; a delete finds a key once."""
    idx = kindex.open(name, dm, 8)
    keys = np.array([5, 9, 5, 7, 9, 5], dtype=np.uint64)
    idx.put(keys, np.array([1, 2, 3, 4, 5, 6], dtype=np.uint64))
    assert [idx.get_one(k) for k in (5, 7, 9)] == [6, 4, 5]
    assert idx.delete(np.array([7, 5, 7, 11], dtype=np.uint64)).tolist() == [True, True, False, False]
    assert [idx.get_one(k) for k in (5, 7, 9)] == [None, None, 5]


@pytest.mark.timeout(120)
def test_dense_leaves_split_cleanly(dm) -> None:
    """200k pseudo-random inserts: leaves fill up to where a split must move entries between
    buckets to place them (this once failed with 'no split point fits the buckets')."""
    from kvdm.experiments.bench.calls import make_keys

    idx = kindex.open("chime", dm, 8)
    keys = make_keys(0, 200_000, 8)
    idx.put(keys, np.arange(200_000, dtype=np.uint64))
    vals, found = idx.get(keys)
    assert found.all() and (vals == np.arange(200_000, dtype=np.uint64)).all()
    assert idx.counters()["splits"] > 4000


@pytest.mark.parametrize("key_bytes,leaf_bytes", [(8, 1024), (32, 2048)])
def test_sherman_protocol_costs(dm, key_bytes: int, leaf_bytes: int) -> None:
    """sherman, one key at a time: a lookup is one READ of the whole leaf; a write is lock CAS
    || leaf READ, then leaf WRITE || unlock CAS (2 round trips) when it does not split."""
    idx = kindex.open("sherman", dm, key_bytes, cache_mb=8, window=1)
    keys = make_keys(np.arange(1, 5001), key_bytes)
    idx.put(keys, np.arange(5000, dtype=np.uint64))
    idx.get(keys)
    idx.reset_counters()
    assert idx.get(keys)[1].all()
    c = idx.counters()
    assert c["rtts"] == 5000 and c["bytes_read"] == leaf_bytes * 5000 and c["cache_miss"] == 0
    idx.reset_counters()
    put_one_by_one(idx, keys[:500], np.zeros(500, dtype=np.uint64))
    c = idx.counters()
    assert c["rtts"] == 1000 and c["bytes_written"] == 500 * (leaf_bytes + 16)


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_window_caps_lookups_per_doorbell(dm, name: str) -> None:
    """The default puts all 640 lookups into as few doorbells as DM_MAX_BATCH verbs a doorbell
    allow (one READ each, a retry aside); window=64 caps a doorbell at 64 lookups."""
    keys = make_keys(np.arange(1, 3001), 8)
    probe = np.concatenate([keys[:600], make_keys(np.arange(90001, 90041), 8)])
    fewest = -(-640 // lib.DM_MAX_BATCH)
    for window, rtts in ((0, (fewest, fewest + 1)), (64, (10, 10))):
        idx = kindex.open(name, dm, 8, window=window, root_slot=20)
        idx.put(keys, np.arange(3000, dtype=np.uint64))
        idx.get(probe)
        idx.reset_counters()
        vals, found = idx.get(probe)
        assert found[:600].all() and not found[600:].any() and (vals[:600] == np.arange(600)).all()
        assert rtts[0] <= idx.counters()["rtts"] <= rtts[1]
    with pytest.raises(ValueError, match="window must be >= 0"):
        kindex.open(name, dm, 8, window=-1, root_slot=21)


@pytest.mark.parametrize("name", ["chime", "sherman", "race"])
def test_prefix_match_strategies(dm, name: str) -> None:
    """parallel: one doorbell for the chain; sequential: one per matched key plus the miss;
    kary: (B+1)^r >= N+1 rounds of B probes; every strategy finds the same length on a
    prefix-closed chain, and exact kary verifies it."""
    keys = make_keys(np.arange(1, 201), 8)
    idx = kindex.open(name, dm, 8, root_slot=40)
    idx.put(keys[:137], np.arange(137, dtype=np.uint64))
    # race: a hit is 2 round trips; its 200 lookups pipeline into ceil(400 / DM_MAX_BATCH) + 1 doorbells
    par = (1, 1) if name != "race" else (-(-400 // lib.DM_MAX_BATCH) + 1,) * 2
    for lpm, exact, rtts in (("parallel", False, par), ("sequential", False, (138, 138 * par[1])),
                             ("kary", False, (2, 2 * par[1])), ("kary", True, (3, 2 * par[1] + par[1])),
                             ("auto", False, par)):
        h = kindex.open(name, dm, 8, root_slot=40, lpm=lpm, lpm_exact=exact, lpm_fanout=16)
        h.get(keys)  # warm the cache
        h.reset_counters()
        matched, vals, found = h.prefix_lookup(keys)
        assert matched == 137, lpm
        assert (vals[found] == np.flatnonzero(found)).all()
        c = h.counters()
        assert rtts[0] <= c["rtts"] <= rtts[1], (lpm, exact, c["rtts"])
        assert c["lpm_calls"] == 1
        if lpm != "kary" or exact:
            assert found[:137].all()
        assert h.prefix_match(keys[137:]) == 0 and h.prefix_match(keys[:0]) == 0
    with pytest.raises(ValueError, match="unknown lpm strategy 'binary'; valid: auto, parallel, kary, sequential"):
        kindex.open(name, dm, 8, root_slot=40, lpm="binary")


def test_prefix_match_parallel_is_exact_where_kary_assumes(dm) -> None:
    """A chain with a hole: parallel and sequential stop at the hole; inexact kary may not
    (it assumes prefix closure), exact kary does."""
    keys = make_keys(np.arange(1, 101), 8)
    idx = kindex.open("chime", dm, 8, root_slot=41)
    present = np.r_[0:40, 41:100]
    idx.put(keys[present], present.astype(np.uint64))
    for lpm, exact in (("parallel", False), ("sequential", False), ("kary", True)):
        assert kindex.open("chime", dm, 8, root_slot=41, lpm=lpm, lpm_exact=exact).prefix_match(keys) == 40
    par = kindex.open("chime", dm, 8, root_slot=41, lpm="parallel")
    par.prefix_match(keys)
    assert par.counters()["lpm_unclosed"] == 1


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_range_prefetches_the_leaves_of_the_cached_parent(dm, name: str) -> None:
    """A range over a dozen or more leaves reads them in a few doorbells (one per cached parent
    it crosses, plus one leaf read at each parent boundary), not one round trip per leaf."""
    idx = kindex.open(name, dm, 8, root_slot=30)
    keys = np.arange(1, 20001, dtype=np.uint64)
    idx.put(keys, keys)
    idx.get(keys)
    idx.reset_counters()
    got, vals = idx.range(np.uint64(5000), np.uint64(5400))
    assert (got == np.arange(5000, 5401)).all() and (vals == got).all()
    c = idx.counters()
    assert c["reads"] >= 8 and c["rtts"] <= 4  # 401 keys fill 8-14 leaves (batched splits fill them to 3/4)


def test_virtual_latency_model_adds_modelled_time(shm_node) -> None:
    """With latency model virtual, per-key latencies include the modelled round trips (one
    5 us RTT per warm lookup), which nothing waited for."""
    from kvdm.transport import TransportConfig, connect

    ctx = connect(TransportConfig(latency_model="virtual", rtt_us=5.0), [shm_node.uri])
    idx = kindex.open("chime", ctx, 8)
    keys = np.arange(1, 101, dtype=np.uint64)
    idx.put(keys, keys)
    idx.get(keys)
    lat = np.zeros(100, dtype=np.uint64)
    idx.get(keys, lat_ns=lat)
    assert (lat >= 5000).all()


def test_virtual_latency_model_replaces_the_emulated_nics_work(shm_node) -> None:
    """`virtual` reports a client's own time plus the modelled network, not the shm transport's
    copying: with tear injection (each line copied slowly) and nothing modelled, a get's
    latency under `virtual` is far below its wall time, which `spin` reports."""
    from kvdm.transport import TransportConfig, connect

    keys = np.arange(1, 401, dtype=np.uint64)
    medians = {}
    for model in ("spin", "virtual"):
        ctx = connect(TransportConfig(latency_model=model, rtt_us=0.0, gbps=0, nic_mops=0, tear=True),
                      [shm_node.uri])
        idx = kindex.open("chime", ctx, 8)
        if model == "spin":
            idx.put(keys, keys)
        lat = np.zeros(1, dtype=np.uint64)
        got = []
        for i in range(keys.size):
            idx.get(keys[i:i + 1], lat_ns=lat)
            got.append(int(lat[0]))
        medians[model] = float(np.median(got))
        assert ctx.counters()["exec_ns"] > 0
        idx.close()
        ctx.close()
    assert medians["virtual"] < medians["spin"] / 4, medians


def test_closed_handle_is_an_error_not_a_crash(dm) -> None:
    idx = kindex.open("chime", dm, 8)
    idx.close()
    idx.close()
    with pytest.raises(ValueError, match="closed"):
        idx.get(np.array([1], dtype=np.uint64))


def test_closed_transport_is_an_error_not_a_crash(shm_node) -> None:
    from kvdm.transport import TransportConfig, connect

    ctx = connect(TransportConfig(), [shm_node.uri])
    idx = kindex.open("chime", ctx, 8)
    ctx.close()
    with pytest.raises(ValueError, match="transport context .* was closed"):
        idx.put_one(5, 1)
    with pytest.raises(ValueError, match="needs a connected"):
        kindex.open("chime", ctx, 8)


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_last_call_ns_times_the_c_call_alone(dm, name: str) -> None:
    import time

    idx = kindex.open(name, dm, 8, root_slot=9)
    keys = make_keys(np.arange(1, 2001), 8)
    idx.put(keys, keys)
    for call in (lambda: idx.get(keys), lambda: idx.put(keys[:5], keys[:5]), lambda: idx.range(keys.min(), keys.max()),
                 lambda: idx.delete(keys[:3])):
        idx.last_call_ns = None
        t0 = time.perf_counter_ns()
        call()
        around = time.perf_counter_ns() - t0
        assert idx.last_call_ns is not None and 0 < idx.last_call_ns <= around
    assert kindex.open("dict", None, 8).last_call_ns is None  # measured by the caller instead


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_stale_cache_is_repaired_after_other_clients_split(shm_node, name: str) -> None:
    """A client whose cached internal nodes predate another client's splits goes right once,
    drops the stale parent and is back at one READ per lookup (it used to walk the sibling
    chain on every lookup: thousands of READs each)."""
    a, b = open_client(shm_node.uri, name, 8), open_client(shm_node.uri, name, 8)
    keys = make_keys(np.arange(1, 60_001), 8)
    a.put(keys[:2000], keys[:2000])
    a.get(keys[:2000])  # a caches the small tree
    for i in range(2000, keys.size, 512):
        b.put(keys[i:i + 512], keys[i:i + 512])
    probe = keys[::29]
    a.get(probe)  # repairs its cache
    a.reset_counters()
    vals, found = a.get(probe)
    assert found.all() and (vals == probe).all()
    c = a.counters()
    assert c["go_right"] == 0 and c["cache_miss"] == 0
    assert c["reads"] <= 1.1 * probe.size


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_limited_range_prefetches_only_the_leaves_it_can_need(dm, name: str) -> None:
    """A scan limited to 18 entries reads the leaves 18 entries fill at half occupancy (2),
    not every leaf its cached parent lists (it read ~16 x 2 KB on SHA-256 keys), still in one
    round trip."""
    idx = kindex.open(name, dm, 32, root_slot=11)
    keys = make_keys(np.arange(1, 20_001), 32)
    idx.put(keys, np.arange(keys.shape[0], dtype=np.uint64))
    idx.get(keys[:500])  # warm the cache of internal nodes
    hi = np.full(32, 255, np.uint8)
    idx.reset_counters()
    for k in keys[:100]:
        got, _ = idx.range(k, hi, 18)
        assert got.shape[0] == 18 and bytes(got[0]) == bytes(k)
    c = idx.counters()
    assert c["reads"] <= 2.1 * 100 and c["rtts"] <= 1.1 * 100  # (+ a scan crossing a parent's end)
