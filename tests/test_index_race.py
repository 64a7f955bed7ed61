"""race (one-sided extendible hashing): the shared conformance suite, protocol costs counted
by the transport (round trips and bytes per operation, not timed), concurrent inserts of the
same keys (RACE's duplicate removal) across subtable splits, a splitter that crashed mid-split,
and the range error. The model, 4-writer, reader, lease, lock time-out and memory-full tests
of the native indexes run race too (test_index_model.py, test_index_concurrency.py)."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pytest
from index_conformance import IndexConformance
from index_helpers import crash_holding_lock, encode, make_keys, open_client, writer_proc

import kvdm.index as kindex
from kvdm.index.api import Index, RangeNotSupported
from kvdm.transport import ShmMemoryNode, TransportConfig, connect

SPAWN = mp.get_context("spawn")
LOOKUP_BYTES = 2 * 128 + 64  # two combined buckets, then one KV block
INSERT_BYTES_READ = 2 * (2 * 128) + 8  # buckets before and after the CAS, the CAS's old value
INSERT_BYTES_WRITTEN = 64 + 8  # the KV block and the CAS


def fresh_race(key_bytes: int, **options: Any) -> Index:
    """A race index on its own small memory node, removed when the index is closed."""
    node = ShmMemoryNode(8 << 20)
    ctx = connect(TransportConfig(), [node.uri])
    idx = kindex.open("race", ctx, key_bytes, **options)
    close = idx.close

    def close_all() -> None:
        close()
        ctx.close()
        node.destroy()

    idx.close = close_all  # type: ignore[method-assign]
    return idx


class TestRaceConformance(IndexConformance):
    """The backend-agnostic suite (unordered path: range must raise RangeNotSupported)."""

    max_examples = 10

    @pytest.fixture
    def index_factory(self):
        return lambda key_bytes: fresh_race(key_bytes, window=8)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_lookup_costs_two_round_trips(dm, key_bytes: int) -> None:
    """A hit reads both combined buckets in one doorbell, then the KV block: 2 RTT, 320 B (a
    fingerprint collision adds a KV block in the same doorbell); a miss costs 1 RTT unless a
    fingerprint matches. window=64 shares both doorbells among 64 lookups."""
    idx = kindex.open("race", dm, key_bytes)
    keys = make_keys(np.arange(1, 5001), key_bytes)
    idx.put(keys, np.arange(5000, dtype=np.uint64))
    assert idx.counters()["splits"] > 0
    idx.reset_counters()
    vals, found = idx.get(keys[:1000])
    assert found.all() and (vals == np.arange(1000)).all()
    c = idx.counters()
    assert c["rtts"] == 2000 and c["version_mismatch"] == 0
    assert 1000 * LOOKUP_BYTES <= c["bytes_read"] <= 1000 * LOOKUP_BYTES + 64 * 100
    idx.reset_counters()
    assert not idx.get(make_keys(np.arange(90_001, 91_001), key_bytes))[1].any()
    c = idx.counters()
    assert 1000 <= c["rtts"] < 1300
    assert c["bytes_read"] < 1000 * 256 + 64 * 300
    wide = kindex.open("race", dm, key_bytes, window=64)
    wide.reset_counters()
    assert wide.get(keys[:1024])[1].all()
    assert wide.counters()["rtts"] == 2 * 1024 // 64


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_insert_and_update_costs(dm, key_bytes: int) -> None:
    """Insert of a new key without a split: WRITE(KV block) with the bucket READs, then CAS +
    re-read = 2 RTT; a fingerprint that matches another key's slot (8-bit fingerprints, ~2% of
    these inserts) adds one RTT to read that KV block. Update: one more RTT to read the old KV
    block. Delete: 3 RTT, writes nothing but the CAS."""
    idx = kindex.open("race", dm, key_bytes)
    keys = make_keys(np.arange(1, 301), key_bytes)
    idx.put(keys[:1], np.zeros(1, dtype=np.uint64))  # the first put creates the allocator chunk
    idx.reset_counters()
    idx.put(keys[1:], np.arange(1, 300, dtype=np.uint64))
    c = idx.counters()
    n = 299
    assert c["splits"] == 0
    assert c["faa"] == 0 and c["cas"] == n and c["cas_failed"] == 0
    assert 2 * n <= c["rtts"] <= 2 * n + n // 20
    assert c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    assert n * INSERT_BYTES_READ <= c["bytes_read"] <= n * INSERT_BYTES_READ + 2 * 64 * n // 20
    idx.reset_counters()
    idx.put(keys[1:], np.arange(1001, 1300, dtype=np.uint64))
    c = idx.counters()
    assert 3 * n <= c["rtts"] <= 3 * n + n // 20 and c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    assert (idx.get(keys[1:])[0] == np.arange(1001, 1300)).all()
    idx.reset_counters()
    assert idx.delete(keys[1:]).all()
    c = idx.counters()
    assert 3 * n <= c["rtts"] <= 3 * n + n // 20 and c["bytes_written"] == 8 * n
    assert not idx.get(keys[1:])[1].any() and idx.get_one(keys[0]) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tear", [False, True])
def test_two_writers_of_the_same_keys_leave_one_copy(tear: bool) -> None:
    """Two processes insert the same 4000 keys (32-byte) into a fresh index, so subtables split
    under concurrent inserts of the same keys: every key holds a value one of them wrote, and one
    delete removes each key for good (a duplicate copy that two concurrent inserts can leave
    would make the key reappear unless deletes clear every copy)."""
    ints = np.arange(1, 4001, dtype=np.uint64)
    with ShmMemoryNode(32 << 20) as node:
        open_client(node.uri, "race", 32).close()
        procs = [SPAWN.Process(target=writer_proc, args=(node.uri, "race", 32, tear,
                                                          np.random.default_rng(w).permutation(ints), w + 1, 50, {}))
                 for w in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(100)
            assert p.exitcode == 0
        idx = open_client(node.uri, "race", 32)
        keys = make_keys(ints, 32)
        vals, found = idx.get(keys)
        assert found.all()
        assert ((vals >> np.uint64(8)) == ints).all() and np.isin(vals & np.uint64(0xFF), [1, 2]).all()
        assert idx.delete(keys).all()
        assert not idx.get(keys)[1].any()
        idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_crashed_splitter_is_recovered_after_its_lease(shm_node, key_bytes: int) -> None:
    """A client dies mid-split (its subtable locked, every bucket marked splitting). Readers are
    not blocked; the next writer to that subtable waits out the lease, takes the lock over,
    finishes the split, and nothing written before is lost."""
    idx = open_client(shm_node.uri, "race", key_bytes, lease_ms=300)
    ints = np.arange(1, 3001, dtype=np.uint64)
    keys = make_keys(ints, key_bytes)
    idx.put(keys, encode(ints, 1))
    p = SPAWN.Process(target=crash_holding_lock, args=(shm_node.uri, "race", key_bytes, 5, {"lease_ms": 300}))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    vals, found = idx.get(keys)  # readers go on during the crashed split
    assert found.all() and (vals == encode(ints, 1)).all()
    splits = idx.counters()["splits"]
    t0 = time.monotonic()
    idx.put(keys[4:5], np.array([555], dtype=np.uint64))
    assert time.monotonic() - t0 < 30  # bounded by the lease, not forever
    c = idx.counters()
    assert c["lease_steals"] == 1 and c["splits"] == splits + 1
    assert idx.get_one(keys[4]) == 555
    more = make_keys(np.arange(3001, 6001), key_bytes)
    idx.put(more, np.arange(3000, dtype=np.uint64))
    vals, found = idx.get(np.concatenate([keys, more]))
    assert found.all() and vals[4] == 555 and (vals[5:3000] == encode(ints[5:], 1)).all()
    idx.close()


def test_range_is_refused_with_a_clear_error(dm) -> None:
    idx = kindex.open("race", dm, 8)
    idx.put_one(5, 1)
    msg = r"range queries are not supported by race \(a hash index\); use chime or sherman"
    with pytest.raises(RangeNotSupported, match=msg):
        idx.range(np.uint64(1), np.uint64(10))
    with pytest.raises(RangeNotSupported, match=msg):
        idx.range_count(np.array([1], np.uint64), np.array([10], np.uint64))
    assert not idx.ordered and idx.get_one(5) == 1


def test_root_slot_holding_another_index_is_refused(dm) -> None:
    kindex.open("chime", dm, 8, root_slot=7).put_one(5, 1)
    with pytest.raises(Exception, match="holds no race 8-byte-key index"):
        kindex.open("race", dm, 8, root_slot=7)
    kindex.open("race", dm, 8).put_one(5, 1)  # root slot 4
    with pytest.raises(Exception, match="holds no race 32-byte-key index"):
        kindex.open("race", dm, 32, root_slot=4)


def _u64(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[8 * i:8 * i + 8], "little")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("marked", [range(10), range(182, 192)])
def test_splitter_that_died_half_way_is_recovered(shm_node, dm, marked: range) -> None:
    """Raw verbs leave what a splitter that died half way through marking (the first buckets
    marked) or unmarking (the last ones still marked) leaves (layout of native/race_internal.h):
    some buckets of a subtable marked SPLITTING, its lock held with an expired lease. Writers
    that meet a marked bucket take the lock over, re-mark every bucket and redo the split;
    nothing is lost."""
    idx = open_client(shm_node.uri, "race", 8)
    ints = np.arange(1, 4001, dtype=np.uint64)
    idx.put(ints, ints)
    root = _u64(dm.read(128 + 8 * 4, 8))  # root slot 4: race, 8-byte keys
    meta = dm.read(root, 32)
    dirg = _u64(meta, 3)
    sub = _u64(dm.read(dirg, 8)) & ~(0xFF << 48)  # the subtable of directory entry 0
    hdr = _u64(dm.read(sub, 8))
    mark = (hdr | 1 << 8).to_bytes(8, "little")
    for b in marked:
        dm.write(sub + 64 * b, mark)
    expired = (7 << 40) | ((int(time.time() * 1000) - 60_000) & ((1 << 40) - 1))
    assert dm.cas(sub + 192 * 64, 0, expired) == 0
    before = idx.counters()["splits"]
    more = np.arange(4001, 12001, dtype=np.uint64)
    idx.put(more, more)
    c = idx.counters()
    assert c["lease_steals"] == 1 and c["splits"] > before
    both = np.concatenate([ints, more])
    vals, found = idx.get(both)
    assert found.all() and (vals == both).all()
    assert all(_u64(dm.read(sub + 64 * b, 8)) >> 8 & 1 == 0 for b in marked)  # no longer marked
    idx.close()
