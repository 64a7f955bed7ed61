"""Local lock handover (Sherman's HOCL): threads of one process whose handles share a
:class:`LocalLockTable` queue on a leaf lock locally and pass the remote lock on without a
CAS. Threads run for real in parallel (cffi releases the GIL during C calls)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

import numpy as np
import pytest
from index_helpers import encode, make_keys, open_client

import kvdm.index as kindex
from kvdm.index.native import LocalLockTable
from kvdm.transport import ShmMemoryNode, TransportConfig, connect

BACKENDS = ["chime", "sherman"]
HOT = np.arange(1, 25, dtype=np.uint64)  # a few leaves' worth of hot keys
ROUNDS = 40


def hammer(uri: str, name: str, key_bytes: int, threads: int, first_writer: int, table: bool,
           tear: bool = False) -> dict[str, int]:
    """Threads (one handle each, sharing one table when ``table``) update the hot keys and
    insert their own keys; returns their summed counters."""
    shared = LocalLockTable() if table else None
    # window=1: both runs write key by key (handover is a per-key protocol; batches lock all
    # their leaves in one doorbell instead)
    opts: dict[str, Any] = {"cache_mb": 1.0, "local_locks": shared, "window": 1}
    # modelled round trips (spin) keep locks held long enough for threads to meet on them
    cfg = TransportConfig(tear=tear, latency_model="spin", rtt_us=5.0)
    handles = [kindex.open(name, connect(cfg, [uri]), key_bytes, **opts) for _ in range(threads)]
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            w = first_writer + t
            own = own_ints(w)
            # long C calls on the hot keys (the GIL is released while they run)
            hot, hot_vals = make_keys(np.tile(HOT, 8), key_bytes), encode(np.tile(HOT, 8), w)
            parts = [(make_keys(own[r::ROUNDS], key_bytes), encode(own[r::ROUNDS], w)) for r in range(ROUNDS)]
            start.wait()
            for keys, vals in parts:
                handles[t].put(hot, hot_vals)
                handles[t].put(keys, vals)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(120)
    assert not errors, errors
    total: dict[str, int] = {}
    for h in handles:
        for k, v in h.counters().items():
            total[k] = total.get(k, 0) + v
        h.close()
    return total


def own_ints(writer: int) -> np.ndarray:
    return np.arange(1000 * writer, 1000 * writer + 200, dtype=np.uint64)


def hammer_proc(uri: str, name: str, key_bytes: int, threads: int, first_writer: int, out: Any) -> None:
    out.put(hammer(uri, name, key_bytes, threads, first_writer, True))


def check(uri: str, name: str, key_bytes: int, writers: list[int]) -> None:
    idx = open_client(uri, name, key_bytes)
    for w in writers:
        vals, found = idx.get(make_keys(own_ints(w), key_bytes))
        assert found.all(), f"writer {w}: {int((~found).sum())} keys lost"
        assert (vals == encode(own_ints(w), w)).all()
    vals, found = idx.get(make_keys(HOT, key_bytes))
    assert found.all()
    assert ((vals >> np.uint64(8)) == HOT).all()
    assert np.isin(vals & np.uint64(0xFF), writers).all()
    idx.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tear", [False, True])
@pytest.mark.parametrize("name", BACKENDS)
def test_threads_hand_over_and_lose_nothing(name: str, tear: bool) -> None:
    """4 threads on the same hot leaves: handovers happen, nothing is lost, values are ones a
    writer wrote, and the lock CAS count per key drops against the same run without a table."""
    cas_per_key = {}
    for table in (False, True):
        with ShmMemoryNode(64 << 20) as node:
            open_client(node.uri, name, 8).close()
            c = hammer(node.uri, name, 8, 4, 1, table, tear)
            check(node.uri, name, 8, [1, 2, 3, 4])
            cas_per_key[table] = c["cas"] / c["puts"]
            if table:
                assert c["handovers"] > 0 and c["local_waits"] > 0
            else:
                assert c["handovers"] == 0 and c["local_waits"] == 0
    assert cas_per_key[True] < cas_per_key[False], cas_per_key


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", BACKENDS)
def test_threads_of_two_processes(name: str) -> None:
    """Two processes (a table each) of 3 threads on the same hot leaves and 32-byte keys."""
    spawn = mp.get_context("spawn")
    with ShmMemoryNode(64 << 20) as node:
        open_client(node.uri, name, 32).close()
        out = spawn.Queue()
        procs = [spawn.Process(target=hammer_proc, args=(node.uri, name, 32, 3, 1 + 3 * p, out)) for p in range(2)]
        for p in procs:
            p.start()
        results = [out.get(timeout=200) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        check(node.uri, name, 32, list(range(1, 7)))
        assert sum(r["handovers"] for r in results) > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", BACKENDS)
def test_lease_recovery_with_a_table(name: str, shm_node: ShmMemoryNode) -> None:
    """A handle of the table keeps a leaf lock as a crashed client would: another thread's
    handle on the same table takes the lock over once the lease expires."""
    table = LocalLockTable()
    keys = make_keys(np.arange(1, 11, dtype=np.uint64), 8)
    crashed = open_client(shm_node.uri, name, 8, lease_ms=300, local_locks=table)
    crashed.put(keys, np.arange(10, dtype=np.uint64))
    crashed.debug_hold_lock(keys[4:5])
    other = open_client(shm_node.uri, name, 8, lease_ms=300, local_locks=table)
    other.put(keys[4:5], np.array([555], dtype=np.uint64))
    assert other.get_one(keys[4]) == 555
    assert other.counters()["lease_steals"] == 1
    crashed.close()
    other.close()


def test_local_locks_must_be_a_table(shm_node: ShmMemoryNode) -> None:
    with pytest.raises(ValueError, match="LocalLockTable"):
        open_client(shm_node.uri, "sherman", 8, local_locks=object())
    with pytest.raises(ValueError, match="max_handover"):
        LocalLockTable(-1)


def _bench(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "bench", "index", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_threads_and_handover() -> None:
    """`kvdm bench index --threads 2 --handover --hot-keys N` runs and reports lock counters;
    threads on a non-native backend are a usage error."""
    out = _bench("--index", "sherman", "--keys", "4K", "--seconds", "0.3", "--op", "put", "--threads", "2",
                 "--handover", "--hot-keys", "64", "--batch", "8", "--node-size", "64M")
    assert out.returncode == 0, out.stderr
    assert "x 2 thread(s)" in out.stdout
    assert "handovers/key" in out.stdout
    bad = _bench("--index", "dict", "--keys", "4K", "--threads", "2")
    assert bad.returncode == 2 and "native index" in bad.stderr
