"""Batched writes of the native indexes under concurrency and failure: writers whose batches
overlap in different orders (no deadlock, nothing lost, nothing invented), a client killed
while holding several leaf locks, a memory node that fills up mid-batch; and the B+tree's
stale root (a handle opened on a one-leaf tree that another client grows)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
from index_helpers import (
    NATIVE_BACKENDS,
    ORDERED_BACKENDS,
    encode,
    fill_until_full,
    full_range,
    make_keys,
    open_client,
    run_all,
    skip_tear,
)

import kvdm.index as kindex


def batch_writer(uri: str, name: str, key_bytes: int, tear: bool, ints: np.ndarray, writer: int, batch: int,
                 seed: int, rounds: int) -> None:
    """Write ints in batches of random composition and order, several rounds."""
    idx = open_client(uri, name, key_bytes, tear, cache_mb=1.0)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        order = rng.permutation(ints)
        for i in range(0, len(order), batch):
            part = order[i:i + batch]
            idx.put(make_keys(part, key_bytes), encode(part, writer))
    idx.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_overlapping_batches_in_different_orders(name: str, key_bytes: int, tear: bool, fabric) -> None:
    """4 writers each write one shared key set (plus keys of their own) in batches of 64, each
    batch in its own random order, twice: no deadlock (the test ends), no lost key, and every
    shared key holds a value one writer wrote for that very key."""
    skip_tear(fabric, tear)
    shared = np.arange(1, fabric.pick(1501, 301), dtype=np.uint64)
    own = fabric.pick(500, 100)
    with fabric.start_node(128 << 20) as node:
        open_client(node.uri, name, key_bytes).close()
        work = [np.concatenate([shared, np.arange(10**6 * (w + 1), 10**6 * (w + 1) + own, dtype=np.uint64)])
                for w in range(4)]
        procs = [fabric.mp.Process(target=batch_writer,
                                   args=(node.uri, name, key_bytes, tear, work[w], w + 1, 64, w, 2))
                 for w in range(4)]
        run_all(procs, 240)
        idx = open_client(node.uri, name, key_bytes)
        allints = np.concatenate(work)
        vals, found = idx.get(make_keys(allints, key_bytes))
        assert found.all(), f"{int((~found).sum())} keys lost"
        assert ((vals >> np.uint64(8)) == allints).all(), "a value that was never written for its key"
        assert np.isin(vals & np.uint64(0xFF), [1, 2, 3, 4]).all()
        for w in range(4):  # a writer's own keys hold its own value
            mine = work[w][len(shared):]
            assert (idx.get(make_keys(mine, key_bytes))[0] & np.uint64(0xFF) == w + 1).all()
        idx.close()


def crash_holding_locks(uri: str, name: str, key_bytes: int, ints: list[int], lease_ms: int) -> None:
    """Take the locks of several leaves (race: subtables) and die without releasing them."""
    idx = open_client(uri, name, key_bytes, lease_ms=lease_ms)
    for i in ints:
        idx.debug_hold_lock(make_keys([i], key_bytes))
    os._exit(0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ORDERED_BACKENDS)
def test_batch_over_several_dead_locks(name: str, fabric, fabric_node) -> None:
    """A client dies holding the locks of 4 leaves; a batch writing into all of them waits at
    most a lease per lock (300 ms), takes each over, and lands whole."""
    ints = np.arange(1, 20001, dtype=np.uint64)
    idx = open_client(fabric_node.uri, name, 8, lease_ms=300)
    idx.put(make_keys(ints, 8), ints)
    victims = [100, 6000, 12000, 18000]
    p = fabric.mp.Process(target=crash_holding_locks, args=(fabric_node.uri, name, 8, victims, 300))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    batch = np.array([v + d for v in victims for d in (0, 1, 2)], dtype=np.uint64)
    idx.reset_counters()
    t0 = time.monotonic()
    idx.put(make_keys(batch, 8), batch + np.uint64(7))
    assert time.monotonic() - t0 < 30
    assert (idx.get(make_keys(batch, 8))[0] == batch + np.uint64(7)).all()
    assert idx.counters()["lease_steals"] == len(victims)
    idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ORDERED_BACKENDS)
def test_batch_that_times_out_on_one_lock_holds_no_other(name: str, fabric_node) -> None:
    """A live client holds one leaf's lock with a long lease; a batch writing into that leaf
    and 29 others gives up after max_wait_ms with an error, having released every lock it had
    taken (those below the busy one in lock order are held while it waits): a third client then
    writes each of the other leaves at once, and the batch wrote nothing anywhere."""
    from kvdm.index.native import LockTimeout

    ints = np.arange(1, 3001, dtype=np.uint64)
    holder = open_client(fabric_node.uri, name, 8, lease_ms=60_000)
    holder.put(make_keys(ints, 8), ints)
    holder.debug_hold_lock(make_keys([1450], 8))
    batch = np.arange(50, 3001, 100, dtype=np.uint64)  # 100 apart: one key a leaf (leaves hold < 64)
    other = open_client(fabric_node.uri, name, 8, max_wait_ms=200)
    with pytest.raises(LockTimeout, match="gave up on lock"):
        other.put(make_keys(batch, 8), batch + np.uint64(7))
    assert (other.get(make_keys(batch, 8))[0] == batch).all()  # nothing written
    third = open_client(fabric_node.uri, name, 8, max_wait_ms=200)
    rest = batch[batch != 1450]
    for k in rest:  # one key (one leaf) at a time: a lock left held would time out
        third.put(make_keys([k], 8), np.array([k + 9], dtype=np.uint64))
    assert (third.get(make_keys(rest, 8))[0] == rest + np.uint64(9)).all()
    for c in (holder, other, third):
        c.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_memory_node_full_mid_batch(name: str, key_bytes: int, fabric) -> None:
    """Batches of 512 until the memory node is full: every key of a finished batch is there,
    a key of the failed batch is absent or holds its value, and the index still works."""
    with fabric.start_node(1 << 20) as node:
        ctx = fabric.connect([node.uri], chunk_bytes=16 << 10)
        idx = kindex.open(name, ctx, key_bytes, cache_mb=1.0)
        done, start = fill_until_full(idx, key_bytes, 512)
        assert done > 1000
        ints = np.arange(1, done, dtype=np.uint64)
        vals, found = idx.get(make_keys(ints, key_bytes))
        assert found.all() and (vals == ints).all()
        failed = np.arange(start, start + 512, dtype=np.uint64)
        vals, found = idx.get(make_keys(failed, key_bytes))
        assert (vals[found] == failed[found]).all()
        assert idx.delete(make_keys(ints[:100], key_bytes)).all()
        assert not idx.get(make_keys(ints[:100], key_bytes))[1].any()
        if idx.ordered:
            lo, hi = full_range(key_bytes)
            keys, _ = idx.range(lo, hi)
            assert len(keys) == len(ints) - 100 + int(found.sum())
        idx.close()
        ctx.close()


def grow(uri: str, name: str, n: int) -> dict[str, Any]:
    idx = open_client(uri, name, 8)
    ints = np.arange(1, n + 1, dtype=np.uint64)
    for i in range(0, n, 1000):
        idx.put(ints[i:i + 1000], ints[i:i + 1000])
    c = idx.counters()
    idx.close()
    return c


@pytest.mark.timeout(120)
@pytest.mark.parametrize("opened_at", [0, 2_000])
@pytest.mark.parametrize("name", ORDERED_BACKENDS)
def test_stale_root_is_refreshed(name: str, opened_at: int, shm_node) -> None:
    """A handle opened while the tree is one leaf (or two levels) keeps its root; another client
    grows the tree past 3 levels. After at most one refresh of the root slot the old handle's
    lookups take at most one go-right each (without the refresh: thousands, for ever)."""
    old = open_client(shm_node.uri, name, 8)
    if opened_at:
        old.put(np.arange(1, opened_at + 1, dtype=np.uint64), np.arange(1, opened_at + 1, dtype=np.uint64))
    old.get(np.array([1], dtype=np.uint64))
    splits_before = old.counters()["root_splits"]
    grown = grow(shm_node.uri, name, 400_000)
    assert splits_before + grown["root_splits"] >= 3  # 4 levels: the root is 3 levels above the leaves
    rng = np.random.default_rng(5)
    probe = rng.integers(1, 400_001, 500).astype(np.uint64)
    old.reset_counters()
    for k in probe:
        assert old.get_one(k) == int(k)
    c = old.counters()
    assert c["stale_root"] <= 2 and c["root_reads"] <= 2
    assert c["go_right"] <= len(probe), c["go_right"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_chime_batches_keep_parent_tags_exact(key_bytes: int, shm_node) -> None:
    """Batched puts re-place overflowing chime leaves (node_ver+1) and move their parents' tags
    by writing only the units holding them, reading only those units when the writer's cached
    parent says where they are. Afterwards every lookup still answers in its one READ: the
    writer's patched cached parents and a fresh client's parents read from memory carry the
    leaves' exact versions (no version mismatch, no second READ)."""
    writer = open_client(shm_node.uri, "chime", key_bytes)
    rng = np.random.default_rng(11)
    ints = np.unique(rng.integers(1, 1 << 40, 60_000, dtype=np.uint64))[:50_000]
    rng.shuffle(ints)
    keys = make_keys(ints, key_bytes)
    writer.put(keys[:20_000], ints[:20_000])
    writer.reset_counters()
    for i in range(20_000, 50_000, 64):  # batches of 64: a few rebuilds each
        writer.put(keys[i:i + 64], ints[i:i + 64])
    c = writer.counters()
    assert c["leaf_rebuilds"] > 100 and c["lease_lost"] == 0, c
    reader = open_client(shm_node.uri, "chime", key_bytes)
    for idx in (writer, reader):
        idx.get(keys[:64])  # caches the internal nodes on the way down
        idx.reset_counters()
        vals, found = idx.get(keys)
        assert found.all() and (vals == ints).all()
        c = idx.counters()
        assert c["version_mismatch"] == 0 and c["go_right"] == 0, c
        assert c["reads"] < 1.1 * len(keys), c  # one READ a key (two for 1 in 15: wrapping buckets)
    writer.close()
    reader.close()
