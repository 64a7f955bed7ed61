"""Native index API details: options, reserved keys, attach, root slots, protocol costs
(round trips and bytes per operation counted by the transport, not timed)."""

from __future__ import annotations

import numpy as np
import pytest
from index_helpers import make_keys, open_client

import kvdm.index as kindex

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


@pytest.mark.parametrize("key_bytes,lookup_bytes", [(8, 128), (32, 256)])
def test_protocol_costs_on_a_warm_cache(dm, key_bytes: int, lookup_bytes: int) -> None:
    """Lookup: 1 round trip reading two bucket units (a miss too); insert and delete without
    a split: 2 round trips (lock CAS || bucket READ, then WRITE || unlock CAS)."""
    idx = kindex.open("chime", dm, key_bytes, cache_mb=8)
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
    idx.put(keys[:1000], np.ones(1000, dtype=np.uint64))  # updates: never split
    c = idx.counters()
    assert c["rtts"] == 2000 and c["writes"] == 1000 and c["cas"] == 2000
    idx.reset_counters()
    assert idx.delete(keys[:1000]).all()
    assert idx.counters()["rtts"] == 2000
    assert not idx.get(keys[:1000])[1].any()


@pytest.mark.timeout(120)
def test_dense_leaves_split_cleanly(dm) -> None:
    """200k pseudo-random inserts: leaves fill up to where a split must move entries between
    buckets to place them (this once failed with 'no split point fits the buckets')."""
    from kvdm.experiments.cmd_bench_index import make_keys

    idx = kindex.open("chime", dm, 8)
    keys = make_keys(0, 200_000, 8)
    idx.put(keys, np.arange(200_000, dtype=np.uint64))
    vals, found = idx.get(keys)
    assert found.all() and (vals == np.arange(200_000, dtype=np.uint64)).all()
    assert idx.counters()["splits"] > 4000


@pytest.mark.parametrize("key_bytes,leaf_bytes", [(8, 1024), (32, 2048)])
def test_sherman_protocol_costs(dm, key_bytes: int, leaf_bytes: int) -> None:
    """sherman: a lookup is one READ of the whole leaf; a write is lock CAS || leaf READ, then
    leaf WRITE || unlock CAS (2 round trips) when it does not split."""
    idx = kindex.open("sherman", dm, key_bytes, cache_mb=8)
    keys = make_keys(np.arange(1, 5001), key_bytes)
    idx.put(keys, np.arange(5000, dtype=np.uint64))
    idx.get(keys)
    idx.reset_counters()
    assert idx.get(keys)[1].all()
    c = idx.counters()
    assert c["rtts"] == 5000 and c["bytes_read"] == leaf_bytes * 5000 and c["cache_miss"] == 0
    idx.reset_counters()
    idx.put(keys[:500], np.zeros(500, dtype=np.uint64))
    c = idx.counters()
    assert c["rtts"] == 1000 and c["bytes_written"] == 500 * (leaf_bytes + 16)


@pytest.mark.parametrize("name", ["chime", "sherman"])
def test_window_batches_lookups_into_one_doorbell(dm, name: str) -> None:
    idx = kindex.open(name, dm, 8, window=64, root_slot=20)
    keys = make_keys(np.arange(1, 3001), 8)
    idx.put(keys, np.arange(3000, dtype=np.uint64))
    probe = np.concatenate([keys[:600], make_keys(np.arange(90001, 90041), 8)])
    idx.get(probe)
    idx.reset_counters()
    vals, found = idx.get(probe)
    assert found[:600].all() and not found[600:].any() and (vals[:600] == np.arange(600)).all()
    assert idx.counters()["rtts"] == 10  # 640 keys / 64 per doorbell
    with pytest.raises(ValueError, match="window 65 not in 1..64"):
        kindex.open(name, dm, 8, window=65, root_slot=21)


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
    assert c["reads"] >= 10 and c["rtts"] <= 4


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
    assert c["reads"] <= 2.1 * 100 and c["rtts"] <= 1.05 * 100  # (+ a rare cache miss)
