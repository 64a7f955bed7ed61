"""The dm.h transport over shm: verb semantics, accounting, latency models, tearing, bad input."""

from __future__ import annotations

import multiprocessing as mp
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdm.transport import (
    AddressError,
    DMContext,
    DMError,
    MemoryNodeFull,
    RegionExists,
    RegionMissing,
    ShmMemoryNode,
    TransportConfig,
    TransportUnavailable,
    connect,
    gaddr,
    root_gaddr,
)

SPAWN = mp.get_context("spawn")


def u64(data: bytes) -> int:
    return struct.unpack("<Q", data)[0]


# ---- semantics -------------------------------------------------------------------------------


def test_read_after_write(dm: DMContext) -> None:
    g = dm.alloc(0, 1024)
    payload = bytes(range(256)) * 4
    dm.write(g, payload)
    assert dm.read(g, 1024) == payload
    dm.write(g + 8, b"ABCDEFGH")
    assert dm.read(g, 24) == payload[:8] + b"ABCDEFGH" + payload[16:24]


def test_cas_returns_old_on_success_and_failure(dm: DMContext) -> None:
    g = dm.alloc(0, 64)
    assert dm.cas(g, 0, 7) == 0          # success: old value 0
    assert u64(dm.read(g, 8)) == 7
    assert dm.cas(g, 3, 9) == 7          # failure: old value, no swap
    assert u64(dm.read(g, 8)) == 7
    assert dm.counters()["cas_failed"] == 1


def test_faa_returns_old(dm: DMContext) -> None:
    g = dm.alloc(0, 64)
    assert dm.faa(g, 5) == 0
    assert dm.faa(g, 10) == 5
    assert dm.faa(g, -3) == 15           # two's complement wrap-around, like the NIC
    assert u64(dm.read(g, 8)) == 12


def test_batch_executes_in_post_order_per_node(dm: DMContext) -> None:
    g = dm.alloc(0, 64)
    with dm.batch():
        dm.post_write(g, struct.pack("<Q", 41))
        old = dm.post_cas(g, 41, 42)     # sees the WRITE posted before it
        after = dm.post_read(g, 8)
    assert old.value == 41
    assert u64(after.value) == 42        # type: ignore[arg-type]


def test_several_memory_nodes(shm_node: ShmMemoryNode) -> None:
    with ShmMemoryNode(1 << 20, node_id=3) as other:
        ctx = connect(TransportConfig(), [shm_node.uri, other.uri])
        assert sorted(ctx.node_ids) == [0, 3]
        a, b = ctx.alloc(0, 64), ctx.alloc(3, 64)
        assert a >> 56 == 0 and b >> 56 == 3
        with ctx.batch():
            ctx.post_write(a, b"node-0..")
            ctx.post_write(b, b"node-3..")
        assert ctx.read(a, 8) == b"node-0.." and ctx.read(b, 8) == b"node-3.."
        c = ctx.counters()
        assert c["doorbells"] - c["rtts"] == 1  # the two-node batch rang two doorbells in one RTT
        ctx.close()


def test_allocator_chunks_are_disjoint_across_clients(shm_node: ShmMemoryNode) -> None:
    cfg = TransportConfig(chunk_bytes=4096)
    a, b = connect(cfg, [shm_node.uri]), connect(cfg, [shm_node.uri])
    seen = set()
    for _ in range(50):
        for ctx in (a, b):
            g = ctx.alloc(0, 192)
            assert g % 64 == 0
            seen.update(range(g, g + 192, 64))
    assert len(seen) == 50 * 2 * 3      # no line handed out twice
    assert a.alloc(0, 64, align=4096) % 4096 == 0


def test_root_slots_are_cas_words(dm: DMContext) -> None:
    r = root_gaddr(0, 5)
    assert dm.cas(r, 0, 0xABC) == 0
    assert dm.cas(r, 0, 0xDEF) == 0xABC
    with pytest.raises(ValueError, match="root slot"):
        root_gaddr(0, 64)


# ---- multi-process ---------------------------------------------------------------------------


def run_processes(target: object, args_list: list[tuple], timeout: float) -> None:
    """Run target(*args) in one spawned process per args, all at once; each must exit 0."""
    procs = [SPAWN.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{target} exited with {p.exitcode}"


def _faa_worker(uri: str, g: int, m: int) -> None:
    ctx = connect(TransportConfig(), [uri])
    for _ in range(m // 16):
        with ctx.batch():
            for _ in range(16):
                ctx.post_faa(g, 1)


def test_concurrent_faa_sums_exactly(dm: DMContext, shm_node: ShmMemoryNode) -> None:
    k, m = 4, 4000
    g = dm.alloc(0, 64)
    run_processes(_faa_worker, [(shm_node.uri, g, m)] * k, timeout=60)
    assert u64(dm.read(g, 8)) == k * m


def _lock_worker(uri: str, lock: int, counter: int, rounds: int, me: int) -> None:
    # CAS spinlock; the counter is updated with plain READ + WRITE, so lost updates would show
    # if two holders ever overlapped.
    ctx = connect(TransportConfig(), [uri])
    for _ in range(rounds):
        while ctx.cas(lock, 0, me) != 0:
            pass
        value = u64(ctx.read(counter, 8))
        ctx.write(counter, struct.pack("<Q", value + 1))
        assert ctx.cas(lock, me, 0) == me


def test_cas_lock_mutual_exclusion_across_processes(dm: DMContext, shm_node: ShmMemoryNode) -> None:
    k, rounds = 4, 400
    lock, counter = dm.alloc(0, 64), dm.alloc(0, 64)
    run_processes(_lock_worker, [(shm_node.uri, lock, counter, rounds, i + 1) for i in range(k)], timeout=120)
    assert u64(dm.read(counter, 8)) == k * rounds


# ---- accounting and latency models ------------------------------------------------------------


def test_batch_counts_one_rtt_and_exact_bytes(dm: DMContext) -> None:
    g = dm.alloc(0, 4096)
    dm.reset_counters()
    with dm.batch():
        dm.post_read(g, 128)
        dm.post_read(g + 1024, 1024)
        dm.post_write(g + 2048, b"x" * 64)
        dm.post_cas(g + 3072, 0, 1)
        dm.post_faa(g + 3080, 2)
    c = dm.counters()
    assert (c["rtts"], c["doorbells"]) == (1, 1)
    assert (c["reads"], c["writes"], c["cas"], c["faa"]) == (2, 1, 1, 1)
    assert c["bytes_read"] == 128 + 1024 + 8 + 8
    assert c["bytes_written"] == 64 + 8 + 8
    dm.submit()                          # an empty batch is no round trip
    assert dm.counters()["rtts"] == 1


def test_native_loop_accounting(dm: DMContext) -> None:
    base = dm.alloc(0, 1 << 20)
    dm.reset_counters()
    dm.bench_loop("read", base, 1 << 20, 128, 8, 1000)
    c = dm.counters()
    assert c["rtts"] == 125 and c["reads"] == 1000 and c["bytes_read"] == 128_000


def test_spin_model_waits_per_round_trip(shm_node: ShmMemoryNode) -> None:
    ctx = connect(TransportConfig(latency_model="spin", rtt_us=200.0, gbps=0), [shm_node.uri])
    g = ctx.alloc(0, 64)
    t0 = time.perf_counter()
    for _ in range(20):
        ctx.read(g, 8)
    assert time.perf_counter() - t0 >= 20 * 200e-6
    assert ctx.counters()["virtual_ns"] >= 20 * 200_000


def test_virtual_model_adds_rtt_and_bandwidth_without_waiting(shm_node: ShmMemoryNode) -> None:
    ctx = connect(TransportConfig(latency_model="virtual", rtt_us=2.0, gbps=8.0), [shm_node.uri])
    g = ctx.alloc(0, 1024)
    ctx.reset_counters()
    ctx.read(g, 1000)                    # 2 us + 1000 B * 8 bit / 8 Gb/s = 3 us
    assert ctx.counters()["virtual_ns"] == 3000
    none = connect(TransportConfig(), [shm_node.uri])
    none.read(g, 1000)
    assert none.counters()["virtual_ns"] == 0


# ---- tearing ---------------------------------------------------------------------------------


def _rewriter(uri: str, g: int, seconds: float) -> None:
    ctx = connect(TransportConfig(tear=True), [uri])
    deadline = time.monotonic() + seconds
    generation = 1
    while time.monotonic() < deadline:
        # every 8-byte word of line i carries (generation, line): a torn line mixes generations
        ctx.write(g, b"".join(struct.pack("<II", generation, i) * 8 for i in range(16)))
        generation += 1


def test_tear_injection_mixes_lines_but_never_tears_one(dm: DMContext, shm_node: ShmMemoryNode) -> None:
    g = dm.alloc(0, 1024)
    writer = SPAWN.Process(target=_rewriter, args=(shm_node.uri, g, 30.0))
    writer.start()
    try:
        mixed = reads = 0
        deadline = time.monotonic() + 25
        while mixed < 20 and time.monotonic() < deadline:
            data = dm.read(g, 1024)
            words = struct.unpack("<256I", data)
            gens = []
            for line in range(16):
                lw = words[line * 16:(line + 1) * 16]
                gen = lw[0]
                assert all(lw[j] == gen for j in range(0, 16, 2)), f"torn 64 B line {line}: {lw}"
                assert all(lw[j] == (line if gen else 0) for j in range(1, 16, 2))
                gens.append(gen)
            reads += 1
            mixed += len(set(gens)) > 1
        assert mixed >= 20, f"only {mixed} of {reads} reads saw a mix of old and new lines"
    finally:
        writer.terminate()
        writer.join()


def test_tear_counter_counts_injected_transfers(shm_node: ShmMemoryNode) -> None:
    ctx = connect(TransportConfig(tear=True), [shm_node.uri])
    g = ctx.alloc(0, 1024)
    ctx.read(g, 64)                      # one line: nothing to tear
    ctx.read(g, 1024)
    ctx.write(g, b"y" * 256)
    assert ctx.counters()["torn_lines"] == 2
    assert ctx.read(g, 256) == b"y" * 256


# ---- bad input -------------------------------------------------------------------------------


def test_bad_addresses_raise(dm: DMContext) -> None:
    g = dm.alloc(0, 64)
    size = dm.node_size(0)
    with pytest.raises(AddressError, match="not 8-byte aligned"):
        dm.read(g + 4, 8)
    with pytest.raises(AddressError, match="outside node 0"):
        dm.read(gaddr(0, size - 8), 16)
    with pytest.raises(AddressError, match="outside node 0"):
        dm.write(gaddr(0, size + 4096), b"x" * 8)
    with pytest.raises(AddressError, match="memory node 9 is not attached"):
        dm.read(gaddr(9, 4096), 8)
    with pytest.raises(AddressError, match="CAS.*not 8-byte aligned"):
        dm.cas(g + 4, 0, 1)
    with pytest.raises(AddressError, match="FAA.*not 8-byte aligned"):
        dm.faa(g + 1, 1)
    with pytest.raises(AddressError, match="inside the node header"):
        dm.write(gaddr(0, 0), b"\0" * 8)
    with pytest.raises(DMError, match="length 0"):
        dm.read(g, 0)
    # a failed post leaves the batch usable
    dm.write(g, b"still ok")
    assert dm.read(g, 8) == b"still ok"


def test_batch_overflow_raises(dm: DMContext) -> None:
    g = dm.alloc(0, 64)
    with pytest.raises(DMError, match="batch full"), dm.batch():
        for _ in range(1000):
            dm.post_read(g, 8)
    assert dm.read(g, 8) == b"\0" * 8   # the failed batch was discarded


def test_memory_node_full(shm_node: ShmMemoryNode) -> None:
    ctx = connect(TransportConfig(chunk_bytes=1 << 20), [shm_node.uri])
    got = []
    with pytest.raises(MemoryNodeFull, match="memory node 0 is full"):
        for _ in range(10_000):
            got.append(ctx.alloc(0, 1 << 16))
    assert len(got) >= (64 << 20) // (1 << 16) - 20
    ctx.write(got[0], b"usable!!")      # what was allocated stays usable
    assert ctx.read(got[0], 8) == b"usable!!"


def test_region_errors(shm_node: ShmMemoryNode) -> None:
    with pytest.raises(RegionExists, match="already exists"):
        ShmMemoryNode(1 << 20, name=shm_node.name)
    with pytest.raises(RegionMissing, match="cannot attach memory node 'kvdm-no-such-node'"):
        DMContext(uris=["shm:kvdm-no-such-node"])
    with pytest.raises(MemoryNodeFull, match="does not fit|larger than physical memory"):
        ShmMemoryNode(1 << 46)
    with pytest.raises(DMError, match="multiple of 4096"):
        ShmMemoryNode(12345)
    with pytest.raises(DMError, match="name 'kvdm-bad/name' has '/'"):
        ShmMemoryNode(1 << 20, name="bad/name")
    with pytest.raises(DMError, match="unknown memory-node URI"):
        DMContext(uris=["tcp://x"])
    with pytest.raises(DMError, match="already attached"):
        DMContext(uris=[shm_node.uri, shm_node.uri])


def test_unknown_config_values_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: none, spin, virtual"):
        TransportConfig(latency_model="fast")
    with pytest.raises(ValueError, match="valid: shm, verbs"):
        TransportConfig(transport="tcp")


def test_verbs_uri_without_rdma_core_is_a_clear_error() -> None:
    from kvdm.native.build import have_verbs

    try:
        DMContext(uris=["verbs://127.0.0.1:1?dev=rxe0&gid=1"])
    except TransportUnavailable as exc:
        assert not have_verbs() or "rdma-core" in str(exc)
        assert "libibverbs-dev" in str(exc)
    except DMError as exc:              # built with verbs: nothing listens on port 1
        assert "127.0.0.1:1" in str(exc)


def test_region_is_private_to_its_user(shm_node: ShmMemoryNode) -> None:
    import os
    import stat

    mode = os.stat(f"/dev/shm/{shm_node.name}").st_mode
    assert stat.S_IMODE(mode) == 0o600


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["read", "write", "cas", "faa"]), st.integers(0, 255), st.integers(0, (1 << 64) - 1),
       st.integers(0, 1 << 26))
def test_arbitrary_verbs_never_crash(shared_dm: DMContext, verb: str, node: int, offset: int, length: int) -> None:
    # Any address/length either works or raises a DMError; the process never dies.
    g = (node << 56) | (offset & ((1 << 56) - 1))
    try:
        if verb == "read":
            shared_dm.read(g, length)
        elif verb == "write":
            shared_dm.write(g, b"\0" * min(length, 1 << 20))
        elif verb == "cas":
            shared_dm.cas(g, 0, 0)
        else:
            shared_dm.faa(g, 0)
    except DMError:
        pass
    assert shared_dm.read(shared_dm.alloc(0, 64), 8) == b"\0" * 8


@pytest.fixture(scope="module")
def shared_dm() -> Iterator[DMContext]:
    with ShmMemoryNode(1 << 20, node_id=0) as node:
        ctx = connect(TransportConfig(), [node.uri])
        yield ctx
        ctx.close()
