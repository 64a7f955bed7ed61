"""Native indexes under concurrency: client processes (each with its own transport context) on
shared memory nodes of every transport (the ``fabric`` fixture: shm here, verbs in the SoftRoCE
guest), with and without tear injection (shm); crash recovery through lock leases; a full
memory node."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from index_helpers import (
    NATIVE_BACKENDS,
    crash_holding_lock,
    encode,
    fill_until_full,
    full_range,
    make_keys,
    open_client,
    reader_proc,
    run_all,
    skip_tear,
    writer_proc,
)

from kvdm.transport import MemoryNodeFull


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_four_writers_lose_nothing(name: str, key_bytes: int, tear: bool, fabric) -> None:
    """4 processes insert disjoint ranges plus one range they all write; nothing is lost and
    every shared key holds a value one of them wrote for it."""
    skip_tear(fabric, tear)
    per, shared = fabric.pick(2500, 600), np.arange(100_001, 100_001 + fabric.pick(600, 200), dtype=np.uint64)
    opts = {"cache_mb": 1.0}
    with fabric.start_node(64 << 20) as node:
        open_client(node.uri, name, key_bytes, **opts).close()  # create before the race
        work = [np.concatenate([np.arange(1 + w * per, 1 + (w + 1) * per, dtype=np.uint64), shared])
                for w in range(4)]
        for w in work:
            np.random.default_rng(len(w)).shuffle(w)
        run_all([fabric.mp.Process(target=writer_proc,
                               args=(node.uri, name, key_bytes, tear, work[w], w + 1, 64, opts))
                 for w in range(4)])
        idx = open_client(node.uri, name, key_bytes, **opts)
        own = np.arange(1, 1 + 4 * per, dtype=np.uint64)
        vals, found = idx.get(make_keys(own, key_bytes))
        assert found.all(), f"{int((~found).sum())} keys lost"
        writer = ((own - 1) // per + 1).astype(np.uint64)
        assert (vals == (own << np.uint64(8)) | writer).all()
        vals, found = idx.get(make_keys(shared, key_bytes))
        assert found.all()
        assert ((vals >> np.uint64(8)) == shared).all()
        assert np.isin(vals & np.uint64(0xFF), [1, 2, 3, 4]).all()
        if idx.ordered:
            lo, hi = full_range(key_bytes)
            keys, _ = idx.range(lo, hi)
            assert len(keys) == 4 * per + len(shared)
        else:  # one delete removes a key for good: no duplicate copy of a shared key survived
            assert idx.delete(make_keys(shared, key_bytes)).all()
            assert not idx.get(make_keys(shared, key_bytes))[1].any()
        idx.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_readers_see_only_written_values(name: str, key_bytes: int, tear: bool, fabric) -> None:
    """2 writers overwrite and extend (splitting leaves) while 2 readers read: a reader finds a
    key absent or holding a value some writer wrote for that key, never anything else."""
    skip_tear(fabric, tear)
    ints = np.arange(1, fabric.pick(6001, 1501), dtype=np.uint64)
    opts = {"cache_mb": 1.0}
    with fabric.start_node(64 << 20) as node:
        seed = open_client(node.uri, name, key_bytes, **opts)
        seed.put(make_keys(ints[::3], key_bytes), encode(ints[::3], 9))
        seed.close()
        out = fabric.mp.Queue()
        procs = [fabric.mp.Process(target=writer_proc,
                               args=(node.uri, name, key_bytes, tear, ints[w::2], w + 1, 32, opts))
                 for w in range(2)]
        procs += [fabric.mp.Process(target=reader_proc,
                                args=(node.uri, name, key_bytes, tear, ints, [1, 2, 9], 4, out, opts))
                  for _ in range(2)]
        run_all(procs)
        results = [out.get(timeout=10) for _ in range(2)]
        for _, bad, seen, _ in results:
            assert bad == 0, f"a reader saw {bad} values no writer wrote"
            assert seen > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_crashed_lock_holder_does_not_hang_others(name: str, key_bytes: int, fabric, fabric_node) -> None:
    """A client dies holding a leaf lock; another's write to that leaf waits for the lease
    (300 ms) at most, takes the lock over and succeeds."""
    idx = open_client(fabric_node.uri, name, key_bytes, lease_ms=300)
    keys = make_keys(np.arange(1, 11, dtype=np.uint64), key_bytes)
    idx.put(keys, np.arange(10, dtype=np.uint64))
    p = fabric.mp.Process(target=crash_holding_lock, args=(fabric_node.uri, name, key_bytes, 5, {"lease_ms": 300}))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    t0 = time.monotonic()
    idx.put(keys[4:5], np.array([555], dtype=np.uint64))
    waited = time.monotonic() - t0
    assert idx.get_one(keys[4]) == 555
    assert idx.counters()["lease_steals"] == 1
    assert waited < 30  # bounded by the lease, not forever
    idx.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_lock_timeout_is_an_error(name: str, fabric_node) -> None:
    """A live lock holder with a long lease: a writer gives up after max_wait_ms with an error
    naming the holder, instead of hanging."""
    from kvdm.index.native import LockTimeout

    holder = open_client(fabric_node.uri, name, 8, lease_ms=60_000)
    keys = make_keys([7], 8)
    holder.put(keys, np.array([1], dtype=np.uint64))
    holder.debug_hold_lock(keys)
    other = open_client(fabric_node.uri, name, 8, max_wait_ms=200)
    with pytest.raises(LockTimeout, match="gave up on lock"):
        other.put(keys, np.array([2], dtype=np.uint64))
    assert other.get_one(keys[0]) == 1  # readers are never blocked
    holder.close()
    other.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_memory_node_full_keeps_index_consistent(name: str, key_bytes: int, fabric) -> None:
    with fabric.start_node(1 << 20) as node:
        ctx = fabric.connect([node.uri], chunk_bytes=16 << 10)
        import kvdm.index as kindex

        idx = kindex.open(name, ctx, key_bytes, cache_mb=1.0)
        done, _ = fill_until_full(idx, key_bytes, 50)
        assert done > 1000
        ints = np.arange(1, done, dtype=np.uint64)
        vals, found = idx.get(make_keys(ints, key_bytes))
        assert found.all() and (vals == ints).all()
        keys = make_keys(ints[:100], key_bytes)
        if idx.ordered:  # still usable: updates in place need no memory
            idx.put(keys, ints[:100] + np.uint64(1))
            assert (idx.get(keys)[0] == ints[:100] + np.uint64(1)).all()
        else:  # race writes a new KV block per update: it succeeds or fails cleanly, key by key
            with contextlib.suppress(MemoryNodeFull):
                idx.put(keys, ints[:100] + np.uint64(1))
            vals, found = idx.get(keys)
            assert found.all() and np.isin(vals - ints[:100], [0, 1]).all()
        if idx.ordered:
            lo, hi = full_range(key_bytes)
            keys, _ = idx.range(lo, hi)
            assert len(keys) >= done - 1
        idx.close()
        ctx.close()
