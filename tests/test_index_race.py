"""race (one-sided extendible hashing): the shared conformance suite, protocol costs counted
by the transport (round trips and bytes per operation, not timed), concurrent inserts of the
same keys (RACE's duplicate removal) across subtable splits, a splitter that crashed mid-split,
and the range error. The model, 4-writer, reader, lease, lock time-out and memory-full tests
of the native indexes run race too (test_index_model.py, test_index_concurrency.py)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pytest
from index_conformance import IndexConformance
from index_helpers import crash_holding_lock, encode, make_keys, open_client, run_all, writer_proc

import kvdm.index as kindex
from kvdm.index.api import Index, RangeNotSupported
from kvdm.native import lib
from kvdm.transport import MemoryNodeFull, ShmMemoryNode, TransportConfig, connect

SPAWN = mp.get_context("spawn")
LOOKUP_BYTES = 2 * 128 + 64  # two combined buckets, then one KV block
INSERT_BYTES_READ = 2 * (2 * 128) + 8  # buckets before and after the CAS, the CAS's old value
INSERT_BYTES_WRITTEN = 64 + 8  # the KV block and the CAS
# the two split protocols: sorted by the slots' hash bits (default), or by reading every KV block
# (split_reads_kv, RACE's own); the creator's option decides for every client of the index
SPLITS = [pytest.param({}, id="split-by-slot-bits"), pytest.param({"split_reads_kv": True}, id="split-reads-kv")]


def fresh_race(key_bytes: int, **options: Any) -> Index:
    """A race index on its own small memory node, removed when the index is closed. It starts
    from one subtable (unless told otherwise), so a few thousand keys split it many times."""
    node = ShmMemoryNode(8 << 20)
    ctx = connect(TransportConfig(), [node.uri])
    idx = kindex.open("race", ctx, key_bytes, **{"subtables": 1, **options})
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
    fingerprint matches (window=1: one lookup per doorbell, the single-key protocol).
    window=64 shares both doorbells among 64 lookups."""
    idx = kindex.open("race", dm, key_bytes, window=1, subtables=1)
    keys = make_keys(np.arange(1, 5001), key_bytes)
    idx.put(keys, np.arange(5000, dtype=np.uint64))
    assert idx.counters()["splits"] > 0
    idx.reset_counters()
    vals, found = idx.get(keys[:1000])
    assert found.all() and (vals == np.arange(1000)).all()
    c = idx.counters()
    assert c["rtts"] == 2000 and c["stale_directory"] == 0
    # race names the counters it uses for something else than the B+trees do
    assert {"stale_directory", "lost_insert_race", "checksum_retry"} <= set(c)
    assert not {"go_right", "version_mismatch", "torn_retry", "internal_splits"} & set(c)
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
    """The single-key protocol (one key per call, window=1). Insert of a new key without a
    split: WRITE(KV block) with the bucket READs, then CAS + re-read = 2 RTT; a fingerprint that
    matches another key's slot (8-bit fingerprints, ~2% of these inserts) adds one RTT to read
    that KV block. Update: one more RTT to read the old KV block. Delete: 3 RTT, writes nothing
    but the CAS."""
    idx = kindex.open("race", dm, key_bytes, window=1)
    keys = make_keys(np.arange(1, 301), key_bytes)
    idx.put(keys[:1], np.zeros(1, dtype=np.uint64))  # the first put creates the allocator chunk
    n = 299

    def each(op, vals=None):
        for i in range(1, n + 1):
            op(keys[i:i + 1]) if vals is None else op(keys[i:i + 1], vals[i - 1:i])

    idx.reset_counters()
    each(idx.put, np.arange(1, 300, dtype=np.uint64))
    c = idx.counters()
    assert c["splits"] == 0 and c["batch_rounds"] == n and c["batch_deferred"] == 0
    assert c["faa"] == 0 and c["cas"] == n and c["cas_failed"] == 0
    assert 2 * n <= c["rtts"] <= 2 * n + n // 20
    assert c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    assert n * INSERT_BYTES_READ <= c["bytes_read"] <= n * INSERT_BYTES_READ + 2 * 64 * n // 20
    idx.reset_counters()
    each(idx.put, np.arange(1001, 1300, dtype=np.uint64))
    c = idx.counters()
    assert 3 * n <= c["rtts"] <= 3 * n + n // 20 and c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    assert (idx.get(keys[1:])[0] == np.arange(1001, 1300)).all()
    idx.reset_counters()
    each(idx.delete)
    c = idx.counters()
    assert 3 * n <= c["rtts"] <= 3 * n + n // 20 and c["bytes_written"] == 8 * n
    assert c["deletes"] == n and c["cas"] == n
    assert not idx.get(keys[1:])[1].any() and idx.get_one(keys[0]) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_two_writers_of_the_same_keys_leave_one_copy(tear: bool, split: dict[str, bool]) -> None:
    """Two processes insert the same 4000 keys (32-byte) into a fresh index, so subtables split
    under concurrent inserts of the same keys: every key holds a value one of them wrote, and one
    delete removes each key for good (a duplicate copy that two concurrent inserts can leave
    would make the key reappear unless deletes clear every copy)."""
    ints = np.arange(1, 4001, dtype=np.uint64)
    with ShmMemoryNode(32 << 20) as node:
        open_client(node.uri, "race", 32, **split).close()
        procs = [SPAWN.Process(target=writer_proc, args=(node.uri, "race", 32, tear,
                                                          np.random.default_rng(w).permutation(ints), w + 1, 50, {}))
                 for w in range(2)]
        run_all(procs, 100)
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
@pytest.mark.parametrize("split", SPLITS)
def test_crashed_splitter_is_recovered_after_its_lease(shm_node, key_bytes: int, split: dict[str, bool]) -> None:
    """A client dies mid-split (its subtable locked, every bucket marked splitting). Readers are
    not blocked; the next writer to that subtable waits out the lease, takes the lock over,
    finishes the split, and nothing written before is lost."""
    idx = open_client(shm_node.uri, "race", key_bytes, lease_ms=300, **split)
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
@pytest.mark.parametrize("marked", [range(10), range(54, 64)])
@pytest.mark.parametrize("split", SPLITS)
def test_splitter_that_died_half_way_is_recovered(shm_node, dm, marked: range, split: dict[str, bool]) -> None:
    """Raw verbs leave what a splitter that died half way through marking (the first groups
    marked) or unmarking (the last ones still marked) leaves (layout of native/race.inc: a
    group's header is word 0 of its overflow bucket, bucket 3g + 1): some group headers of a
    subtable marked SPLITTING, its lock held with an expired lease. Writers that meet a marked
    header take the lock over, re-mark every group and redo the split; nothing is lost."""
    idx = open_client(shm_node.uri, "race", 8, **split)
    ints = np.arange(1, 4001, dtype=np.uint64)
    idx.put(ints, ints)
    root = _u64(dm.read(128 + 8 * 4, 8))  # root slot 4: race, 8-byte keys
    meta = dm.read(root, 32)
    dirg = _u64(meta, 3)
    sub = _u64(dm.read(dirg, 8)) & ~(0xFF << 48)  # the subtable of directory entry 0
    hdr = _u64(dm.read(sub + 64, 8))  # group 0's header
    mark = (hdr | 1 << 8).to_bytes(8, "little")
    for g in marked:
        dm.write(sub + 64 * (3 * g + 1), mark)
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
    assert all(_u64(dm.read(sub + 64 * (3 * g + 1), 8)) >> 8 & 1 == 0 for g in marked)  # no longer marked
    idx.close()


# ---- batched writes: a put or delete of N keys runs as a few doorbells ----


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_batched_put_update_delete_cost_a_few_round_trips(key_bytes: int) -> None:
    """64 fresh keys in one put: W(KV blocks) || R(buckets), R(KV blocks of fingerprint matches),
    CAS(slots) + re-read, and rarely the duplicate check's read: <= 4 RTT for the whole batch.
    An update of the 64 keys: exactly 3 (the old KV blocks are always read); a delete: 3; a
    delete of absent keys: 1 (2 if a fingerprint matches)."""
    idx = fresh_race(key_bytes)
    keys = make_keys(np.arange(1, 66), key_bytes)
    idx.put(keys[:1], np.zeros(1, dtype=np.uint64))  # the first put creates the allocator chunk
    keys = keys[1:]
    n = len(keys)
    idx.reset_counters()
    idx.put(keys, np.arange(1, n + 1, dtype=np.uint64))
    c = idx.counters()
    assert c["rtts"] <= 4 and c["batch_rounds"] == 1 and c["batch_deferred"] == 0
    assert c["puts"] == n and c["cas"] == n and c["cas_failed"] == 0 and c["faa"] == 0
    assert c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    vals, found = idx.get(keys)
    assert found.all() and (vals == np.arange(1, n + 1)).all()
    idx.reset_counters()
    idx.put(keys, np.arange(1001, 1001 + n, dtype=np.uint64))
    c = idx.counters()
    assert c["rtts"] == 3 and c["cas"] == n and c["batch_deferred"] == 0
    assert (idx.get(keys)[0] == np.arange(1001, 1001 + n)).all()
    idx.reset_counters()
    assert idx.delete(keys).all()
    c = idx.counters()
    assert c["rtts"] == 3 and c["cas"] == n and c["deletes"] == n and c["bytes_written"] == 8 * n
    assert not idx.get(keys)[1].any() and idx.get_one(make_keys([1], key_bytes)[0]) == 0
    idx.reset_counters()
    assert not idx.delete(keys).any()
    assert idx.counters()["rtts"] <= 2
    idx.close()


@pytest.mark.timeout(60)
def test_window_bounds_the_keys_of_a_write_doorbell() -> None:
    """window=8: a put of 64 keys runs 8 segments one after another (each its 2 doorbells);
    window=0 (the default) one pipelined segment of up to 512 keys."""
    idx = fresh_race(8, window=8)
    idx.put_one(1, 1)
    idx.reset_counters()
    idx.put(np.arange(2, 66, dtype=np.uint64), np.arange(2, 66, dtype=np.uint64))
    c = idx.counters()
    assert c["batch_rounds"] == 8 and 16 <= c["rtts"] <= 32
    idx.close()
    idx = fresh_race(8)
    idx.put_one(1, 1)
    idx.reset_counters()
    idx.put(np.arange(2, 202, dtype=np.uint64), np.arange(2, 202, dtype=np.uint64))
    c = idx.counters()
    # 5 verbs a key, DM_MAX_BATCH a doorbell (+1 if a fingerprint matches)
    assert c["batch_rounds"] == 1 and c["rtts"] <= max(-(-(5 * 200 + 1) // lib.DM_MAX_BATCH), 2) + 1
    assert (idx.get(np.arange(2, 202, dtype=np.uint64))[0] == np.arange(2, 202)).all()
    idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 64, 85, 86, 142, 153, 154, 246, 600])
def test_pipelined_put_packs_its_doorbells(n: int) -> None:
    """A put of n fresh keys (no split): 2 READs a key, then CAS + 2 re-READs, and one WRITE of
    all KV blocks, packed DM_MAX_BATCH verbs a doorbell with the READs first: the fewest doorbells those
    verbs fit in, and never fewer than 1 + the CAS doorbells (a key's CAS follows its READs).
    600 keys are two segments (512 + 88), each pipelined on its own."""
    idx = fresh_race(8)
    idx.put_one(1 << 40, 1)  # the first put creates the allocator chunk
    keys = np.arange(1, n + 1, dtype=np.uint64)
    idx.reset_counters()
    idx.put(keys, keys * np.uint64(3))
    c = idx.counters()
    assert c["splits"] == 0 and c["cas"] == n and c["faa"] == 0 and c["batch_deferred"] == 0

    def doorbells(m: int) -> int:
        b = lib.DM_MAX_BATCH
        return max(-(-(5 * m + 1) // b), 1 + -(-(3 * m) // b))

    want = sum(doorbells(min(512, n - s)) for s in range(0, n, 512))
    assert want <= c["rtts"] <= want + 1  # +1: a fingerprint that matches costs a KV read
    assert c["writes"] == -(-n // 512) and c["bytes_written"] == n * INSERT_BYTES_WRITTEN
    assert (idx.get(keys)[0] == keys * np.uint64(3)).all()
    idx.close()


@pytest.mark.parametrize("key_bytes", [8, 32])
def test_duplicate_keys_in_a_batch(key_bytes: int) -> None:
    """In order, a later duplicate wins: a put keeps the last value of a key; a delete reports
    found for the first occurrence of a present key only (as one key at a time would)."""
    idx = fresh_race(key_bytes)
    k = make_keys(np.arange(1, 10), key_bytes)
    idx.put(k[[0, 1, 0, 2, 0]], np.array([10, 20, 11, 30, 12], dtype=np.uint64))
    assert idx.counters()["puts"] == 5
    assert (idx.get(k[:3])[0] == [12, 20, 30]).all()
    idx.put(k[[1, 1, 3, 1]], np.array([21, 22, 40, 23], dtype=np.uint64))  # updates and an insert
    assert (idx.get(k[:4])[0] == [12, 23, 30, 40]).all()
    found = idx.delete(k[[0, 1, 0, 8, 8, 2, 1]])
    assert found.tolist() == [True, True, False, False, False, True, False]
    assert idx.get(k[:4])[1].tolist() == [False, False, False, True]
    idx.put(k[[5] * 200], np.arange(200, dtype=np.uint64))  # duplicates across write groups
    assert idx.get_one(k[5]) == 199
    assert idx.delete(k[[5] * 200]).tolist() == [True] + [False] * 199
    idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("split", SPLITS)
def test_batched_puts_that_split_subtables(key_bytes: int, split: dict[str, bool]) -> None:
    """20k keys in batches of 512 into a fresh index (one subtable): splits by the slots' hash
    bits run inside the write pipeline (the keys of a full subtable wait for its split, then go
    on in the same pass), RACE's (reading every KV block) between passes (the keys redone in a
    batch); every key reads back, every update lands, every delete removes its key."""
    idx = fresh_race(key_bytes, **split)
    ints = np.arange(1, 20_001, dtype=np.uint64)
    keys = make_keys(ints, key_bytes)
    for i in range(0, len(ints), 512):
        idx.put(keys[i:i + 512], ints[i:i + 512])
    c = idx.counters()
    segments = -(-len(ints) // 512)  # each runs the pipeline once, plus once per batch of fixes
    assert c["splits"] >= 8 and c["batch_deferred"] < len(ints) // 10 and c["puts"] == len(ints)
    if split:
        assert c["batch_deferred"] > 0 and segments < c["batch_rounds"] <= 4 * segments
    else:
        assert segments <= c["batch_rounds"] <= segments + 4
        assert c["rtts"] <= 12 * segments + 3 * c["splits"]  # 11 doorbells for 512 keys, 3 a split
    vals, found = idx.get(keys)
    assert found.all() and (vals == ints).all()
    for i in range(0, len(ints), 512):
        idx.put(keys[i:i + 512], ints[i:i + 512] + np.uint64(7))
    vals, found = idx.get(keys)
    assert found.all() and (vals == ints + np.uint64(7)).all()
    gone = np.zeros(len(ints), dtype=bool)
    for i in range(0, len(ints), 1024):
        assert idx.delete(keys[i:i + 1024:2]).all()
        gone[i:i + 1024:2] = True
    assert (idx.get(keys)[1] == ~gone).all()
    idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_split_by_slot_bits_reads_no_kv_block_and_reuses_moved_slots(key_bytes: int) -> None:
    """Keys put one by one into two fresh indexes, one per split protocol. The layouts are the
    same (same splits, same slots: a slot a split left behind is free, as a cleared one), but a
    split by the slots' hash bits runs inside the put (the READ that found both candidates full;
    lock; marks + subtable READ; new half, directory, headers and unlock with the key's second
    READ; its CAS: 5 round trips), reads the subtable once, writes 64 marks and 64 headers, and
    CASes no slot, where RACE's reads every KV block and clears the moved slots."""
    ints = np.arange(1, 3001, dtype=np.uint64)
    keys = make_keys(ints, key_bytes)
    costs = {}
    for name, opts in (("bits", {}), ("kv", {"split_reads_kv": True})):
        idx = fresh_race(key_bytes, **opts)
        split_rtts, split_cas, split_read, split_writes = [], [], [], []
        for i in range(len(ints)):
            before = idx.counters()
            idx.put(keys[i:i + 1], ints[i:i + 1])
            after = idx.counters()
            if after["splits"] > before["splits"]:
                assert after["splits"] == before["splits"] + 1
                split_rtts.append(after["rtts"] - before["rtts"])
                split_cas.append(after["cas"] - before["cas"])
                split_read.append(after["bytes_read"] - before["bytes_read"])
                split_writes.append(after["writes"] - before["writes"])
        vals, found = idx.get(keys)
        assert found.all() and (vals == ints).all()
        costs[name] = (idx.counters()["splits"], split_rtts, split_cas, split_read, split_writes)
        idx.close()
    splits, rtts, cas, read, writes = costs["bits"]
    assert splits >= 2 and splits == costs["kv"][0]
    assert max(rtts) <= 6 and max(cas) <= 4  # 5, +1 if a fingerprint matches
    assert max(writes) == 1 + 64 + 1 + 1 + 64  # KV block, marks, new half, directory, headers
    assert max(read) < 192 * 64 + 4096  # the subtable once (12 KB), no KV block
    _, kv_rtts, kv_cas, kv_read, _ = costs["kv"]
    assert min(kv_rtts) >= max(rtts) + 4  # 1,344 KV blocks are 6 doorbells of reads
    assert min(kv_read) >= max(read) + 1000 * 64 and min(kv_cas) > 100  # a full subtable: > 1,000 KV blocks


def test_per_key_latencies_of_a_batched_put(dm) -> None:
    idx = kindex.open("race", dm, 8)
    lat = np.zeros(64, dtype=np.uint64)
    idx.put(np.arange(1, 65, dtype=np.uint64), np.arange(64, dtype=np.uint64), lat_ns=lat)
    assert (lat > 0).all()
    lat[:] = 0
    idx.delete(np.arange(1, 65, dtype=np.uint64), lat_ns=lat)
    assert (lat > 0).all()


@pytest.mark.timeout(60)
def test_memory_node_full_mid_batch_publishes_nothing_half_done() -> None:
    """KV blocks are allocated for a whole group before any slot CAS: a full memory node fails
    the put cleanly; every key the index holds afterwards has the value written for it, the keys
    of the calls that returned are all there, and updates succeed or fail cleanly."""
    with ShmMemoryNode(1 << 20) as node:
        ctx = connect(TransportConfig(chunk_bytes=16 << 10), [node.uri])
        idx = kindex.open("race", ctx, 8)
        done = 1
        with pytest.raises(MemoryNodeFull, match="full"):
            for start in range(1, 10**6, 200):
                ints = np.arange(start, start + 200, dtype=np.uint64)
                idx.put(ints, ints * np.uint64(3))
                done = start + 200
        assert done > 1000
        ints = np.arange(1, done + 200, dtype=np.uint64)
        vals, found = idx.get(ints)
        assert found[:done - 1].all() and (vals[found] == ints[found] * np.uint64(3)).all()
        with contextlib.suppress(MemoryNodeFull):
            idx.put(ints[:300], ints[:300] * np.uint64(3) + np.uint64(1))
        vals, found = idx.get(ints[:300])
        assert found.all() and np.isin(vals - ints[:300] * np.uint64(3), [0, 1]).all()
        idx.close()
        ctx.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("split", SPLITS)
def test_four_batch_writers_of_overlapping_keys(key_bytes: int, split: dict[str, bool]) -> None:
    """4 processes (a transport context and handle each) put batches of 128 over overlapping key
    sets, each in its own order, into a fresh index (so subtables split under them): every key
    holds a value one of its writers wrote for it, and one delete removes it for good (no
    duplicate copy survived the batched inserts)."""
    shared = np.arange(1, 1501, dtype=np.uint64)
    work = [np.random.default_rng(w).permutation(np.concatenate(
        [shared, np.arange(10_001 + 1000 * w, 10_001 + 1000 * w + 700, dtype=np.uint64),
         np.arange(50_001 + 500 * (w % 2), 50_001 + 500 * (w % 2) + 400, dtype=np.uint64)]))
        for w in range(4)]
    with ShmMemoryNode(32 << 20) as node:
        open_client(node.uri, "race", key_bytes, **split).close()
        procs = [SPAWN.Process(target=writer_proc, args=(node.uri, "race", key_bytes, False, work[w], w + 1, 128, {}))
                 for w in range(4)]
        run_all(procs, 100)
        idx = open_client(node.uri, "race", key_bytes)
        everything = np.unique(np.concatenate(work))
        keys = make_keys(everything, key_bytes)
        vals, found = idx.get(keys)
        assert found.all(), f"{int((~found).sum())} keys lost"
        assert ((vals >> np.uint64(8)) == everything).all()
        writers = vals & np.uint64(0xFF)
        for w in range(4):  # the value's writer wrote that key
            mine = writers == w + 1
            assert np.isin(everything[mine], work[w]).all()
        assert idx.delete(keys).all()
        assert not idx.get(keys)[1].any()
        idx.close()


def _writer_on(uris: list[str], key_bytes: int, tear: bool, ints: np.ndarray, writer: int, batch: int) -> None:
    ctx = connect(TransportConfig(tear=tear), uris)
    idx = kindex.open("race", ctx, key_bytes)
    keys, vals = make_keys(ints, key_bytes), encode(ints, writer)
    rng = np.random.default_rng(writer)
    i = 0
    while i < len(ints):  # batches of varying size: the split jobs meet every pipeline phase
        n = int(rng.integers(1, 2 * batch))
        idx.put(keys[i:i + n], vals[i:i + n])
        i += n
    idx.close()
    ctx.close()


def _reader_on(uris: list[str], key_bytes: int, ints: np.ndarray, writers: list[int], rounds: int, out: Any) -> None:
    ctx = connect(TransportConfig(), uris)
    idx = kindex.open("race", ctx, key_bytes)
    keys = make_keys(ints, key_bytes)
    bad = 0
    for _ in range(rounds):
        for i in range(0, len(ints), 200):
            vals, found = idx.get(keys[i:i + 200])
            v, k = vals[found], ints[i:i + 200][found]
            bad += int((((v >> np.uint64(8)) != k) | ~np.isin(v & np.uint64(0xFF), writers)).sum())
    out.put(bad)
    idx.close()
    ctx.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_batch_writers_split_across_two_memory_nodes(key_bytes: int, tear: bool) -> None:
    """4 writers put batches of 1 to 300 keys over overlapping key sets into a fresh index on two
    memory nodes (subtables, KV blocks and new halves spread over both, so a split's
    publication takes more than one doorbell and runs inside the pipelines of several clients at
    once), a reader reads meanwhile: no reader sees a value never written for its key, every
    key holds a value one of its writers wrote, and one delete removes each for good."""
    shared = np.arange(1, 3001, dtype=np.uint64)
    work = [np.random.default_rng(w).permutation(np.concatenate(
        [shared, np.arange(100_001 + 10_000 * w, 100_001 + 10_000 * w + 2000, dtype=np.uint64)])) for w in range(4)]
    with ShmMemoryNode(48 << 20) as n0, ShmMemoryNode(48 << 20, node_id=1) as n1:
        uris = [n0.uri, n1.uri]
        ctx = connect(TransportConfig(), uris)
        kindex.open("race", ctx, key_bytes).close()
        out = SPAWN.Queue()
        procs = [SPAWN.Process(target=_writer_on, args=(uris, key_bytes, tear, work[w], w + 1, 150)) for w in range(4)]
        procs.append(SPAWN.Process(target=_reader_on, args=(uris, key_bytes, shared, [1, 2, 3, 4], 6, out)))
        run_all(procs, 200)
        assert out.get(timeout=10) == 0
        idx = kindex.open("race", ctx, key_bytes)
        assert idx.counters()["stale_directory"] >= 0
        everything = np.unique(np.concatenate(work))
        keys = make_keys(everything, key_bytes)
        vals, found = idx.get(keys)
        assert found.all(), f"{int((~found).sum())} keys lost"
        assert ((vals >> np.uint64(8)) == everything).all()
        for w in range(4):
            assert np.isin(everything[(vals & np.uint64(0xFF)) == w + 1], work[w]).all()
        assert idx.delete(keys).all()
        assert not idx.get(keys)[1].any()
        idx.close()
        ctx.close()


# ---- prefix match: a k-ary search whose rounds read buckets only ----

M64 = (1 << 64) - 1


def _mix64(x: int) -> int:  # kvidx_mix64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def _fp_and_bucket(key: int) -> tuple[int, int]:
    """An 8-byte key's fingerprint and first candidate's first bucket (layout of native/race.inc)."""
    h1 = _mix64(key)
    return (h1 >> 8) & 0xFF, 3 * (h1 % 64) + ((h1 >> 6) & 1)


def _kary_rounds(n: int, b: int = 16) -> int:
    r, span = 0, 1
    while span < n + 1:
        r, span = r + 1, span * (b + 1)
    return max(r, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
def test_kary_rounds_read_buckets_and_one_doorbell_verifies(key_bytes: int) -> None:
    """lpm=kary on prefix-closed chains: each round READs only its probes' buckets (a present
    probe: a slot's fingerprint and hash bits match), the KV blocks of the present ones ride in
    the next round's doorbell or one last one: at most rounds + 1 RTT (3 for a 167-key chain,
    lpm_kary's 4), and the length is the true one, with found/vals right where found."""
    idx = fresh_race(key_bytes, lpm="kary")
    base = 1
    for n in (1, 2, 16, 17, 40, 167, 300):
        for cached in sorted({0, 1, n // 3, n - 1, n}):
            ints = np.arange(base, base + n, dtype=np.uint64)
            base += n
            keys = make_keys(ints, key_bytes)
            if cached:
                idx.put(keys[:cached], ints[:cached] * np.uint64(5))
            idx.reset_counters()
            matched, vals, found = idx.prefix_lookup(keys)
            c = idx.counters()
            assert matched == cached, (n, cached)
            assert not found[cached:].any() and (vals[found] == ints[found] * np.uint64(5)).all()
            assert c["lpm_kary"] == 1 and c["rtts"] <= _kary_rounds(n) + 1, (n, cached, c["rtts"])
            if n == 167 and 0 < cached < n:
                assert c["rtts"] == 3
            assert c["bytes_read"] <= _kary_rounds(n) * 16 * (256 + 64) + 256  # buckets and a KV block a probe
    idx.close()


@pytest.mark.timeout(60)
def test_kary_fingerprint_collision_starts_over_with_lookups() -> None:
    """A probe whose buckets hold another key's matching fingerprint looks present; when it
    decided the search, its KV block (read one doorbell later) gives it away and the search
    starts over with lookups that read KV blocks: the length stays the true one. Planted with
    split_reads_kv (slots carry no hash bits: the fingerprint alone matches): chain key 21
    (probed at length 22 in round 1) is absent and a decoy with its fingerprint sits in its
    first candidate."""
    idx = fresh_race(8, lpm="kary", split_reads_kv=True)
    chain = [1_000_000 + i for i in range(40)]
    fp, bucket = _fp_and_bucket(chain[21])
    decoy = next(k for k in range(10**7, 10**7 + 10**6) if _fp_and_bucket(k) == (fp, bucket))
    idx.put(np.array(chain[:20] + [decoy], dtype=np.uint64), np.arange(21, dtype=np.uint64))
    idx.reset_counters()
    assert idx.prefix_match(np.array(chain, dtype=np.uint64)) == 20
    assert idx.counters()["rtts"] > 3  # the bucket rounds (2) and the verify, then lpm_kary's own
    plain = fresh_race(8, lpm="kary", split_reads_kv=True)
    plain.put(np.array(chain[:20], dtype=np.uint64), np.arange(20, dtype=np.uint64))
    plain.reset_counters()
    assert plain.prefix_match(np.array(chain, dtype=np.uint64)) == 20 and plain.counters()["rtts"] <= 3
    idx.close()
    plain.close()


def test_the_first_subtables_are_spread_over_the_memory_nodes() -> None:
    """An index created on two memory nodes places its 256 first subtables round-robin, as splits
    place theirs: each node's bump pointer (read by an FAA of 0) has moved past its 128, and the
    keys of a put land in both."""
    from kvdm.transport import gaddr
    nodes = [ShmMemoryNode(64 << 20, node_id=i) for i in range(2)]
    ctx = connect(TransportConfig(), [n.uri for n in nodes])
    try:
        used = [ctx.faa(gaddr(i, lib.DM_HDR_ALLOC), 0) for i in range(2)]
        idx = kindex.open("race", ctx, 8)
        subtable = 193 * 64  # 192 bucket lines and the lock line
        grown = [ctx.faa(gaddr(i, lib.DM_HDR_ALLOC), 0) - used[i] for i in range(2)]
        assert all(g >= 128 * subtable for g in grown), grown
        keys = np.arange(1, 20_001, dtype=np.uint64)
        idx.put(keys, keys * np.uint64(3))
        vals, found = idx.get(keys)
        assert found.all() and (vals == keys * np.uint64(3)).all()
        assert idx.counters()["splits"] == 0
        idx.close()
    finally:
        ctx.close()
        for n in nodes:
            n.destroy()
