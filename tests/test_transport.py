"""The dm.h transport: one conformance suite for every backend, then what only shm has.

The conformance tests take the ``fabric`` fixture (tests/fabric.py), so each runs over shm on
the host and over verbs in the SoftRoCE guest (those are marked rdma: .ci/rdma-tests), with
the memory node in its own process there: read-after-write, CAS/FAA old values, batches in
post order with one RTT and exact bytes, several nodes, disjoint allocations, root slots, exact
sums and CAS-lock mutual exclusion across client processes, a full node, bad input. Verbs
runs smaller work sizes (``fabric.pick``) because the guest is emulated (~17x slower). What
only a network transport has is in test_verbs_rdma.py; below the conformance suite: the shm
backend's own features (latency models, tear injection, regions).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import pytest
from fabric import SPAWN, Fabric, Node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdm.native import lib
from kvdm.transport import (
    AddressError,
    BadRegion,
    DMContext,
    DMError,
    InvalidArgument,
    MemoryNodeFull,
    RegionExists,
    RegionMissing,
    ShmMemoryNode,
    Timeout,
    TransportConfig,
    TransportUnavailable,
    connect,
    gaddr,
    root_gaddr,
)

NODE_SIZE = 64 << 20  # conftest's fabric_node


def u64(data: bytes) -> int:
    return struct.unpack("<Q", data)[0]


# ---- conformance: semantics ------------------------------------------------------------------


def test_attach_reads_the_region_header(fabric_dm: DMContext) -> None:
    assert fabric_dm.node_ids == [0]
    assert fabric_dm.node_size(0) == NODE_SIZE
    g = fabric_dm.alloc(0, 64)
    assert 4096 <= g < NODE_SIZE  # the bump pointer starts after the header


def test_a_streamed_doorbell_returns_every_answer(fabric_dm: DMContext) -> None:
    """dm_submit_streamed executes like dm_submit on every transport (verbs returns when every
    answer is in; shm executes at the ring): READs and CAS old values awaited in post order."""
    g = fabric_dm.alloc(0, 64 * 300)
    with fabric_dm.batch():
        for i in range(300):
            fabric_dm.post_write(g + 64 * i, i.to_bytes(8, "little"))
    reads = [fabric_dm.post_read(g + 64 * i, 8) for i in range(300)]
    cases = [fabric_dm.post_cas(g + 64 * i, i, i + 1000) for i in range(300)]
    fabric_dm.submit(streamed=True)
    for i in range(300):
        fabric_dm.await_answer(i)
        assert reads[i].value == i.to_bytes(8, "little")
        fabric_dm.await_answer(300 + i)
        assert cases[i].value == i
    fabric_dm.await_all()
    assert fabric_dm.read(g + 64 * 299, 8) == (1299).to_bytes(8, "little")


@pytest.mark.parametrize("size", [8, 64, 200, 1000, 1024, 4096, 65536, 1 << 20])
def test_read_after_write(fabric_dm: DMContext, size: int) -> None:
    # sizes around the line size and the verbs backend's inline and staging-buffer paths
    dm = fabric_dm
    g = dm.alloc(0, size)
    payload = os.urandom(size)
    dm.write(g, payload)
    assert dm.read(g, size) == payload
    if size >= 24:
        dm.write(g + 8, b"ABCDEFGH")
        assert dm.read(g, 24) == payload[:8] + b"ABCDEFGH" + payload[16:24]


def test_cas_returns_old_on_success_and_failure(fabric_dm: DMContext) -> None:
    dm = fabric_dm
    g = dm.alloc(0, 64)
    dm.reset_counters()
    assert dm.cas(g, 0, 7) == 0          # success: old value 0
    assert u64(dm.read(g, 8)) == 7
    assert dm.cas(g, 3, 9) == 7          # failure: old value, no swap
    assert u64(dm.read(g, 8)) == 7
    assert dm.cas(g, 7, (1 << 64) - 1) == 7
    assert u64(dm.read(g, 8)) == (1 << 64) - 1
    assert dm.counters()["cas_failed"] == 1


def test_faa_returns_old(fabric_dm: DMContext) -> None:
    dm = fabric_dm
    g = dm.alloc(0, 64)
    assert dm.faa(g, 5) == 0
    assert dm.faa(g, 10) == 5
    assert dm.faa(g, -3) == 15           # two's complement wrap-around, like the NIC
    assert u64(dm.read(g, 8)) == 12


def test_batch_executes_in_post_order_per_node(fabric_dm: DMContext) -> None:
    dm = fabric_dm
    g = dm.alloc(0, 64)
    with dm.batch():
        dm.post_write(g, struct.pack("<Q", 41))
        old = dm.post_cas(g, 41, 42)     # sees the WRITE posted before it
        after = dm.post_read(g, 8)
    assert old.value == 41
    assert u64(after.value) == 42        # type: ignore[arg-type]


def test_several_memory_nodes(fabric: Fabric, fabric_node: Node) -> None:
    with fabric.start_node(1 << 20, node_id=3) as other:
        ctx = fabric.connect([fabric_node.uri, other.uri])
        assert sorted(ctx.node_ids) == [0, 3]
        a, b = ctx.alloc(0, 64), ctx.alloc(3, 64)
        assert a >> 56 == 0 and b >> 56 == 3
        ctx.reset_counters()
        with ctx.batch():
            ctx.post_write(a, b"node-0..")
            ctx.post_write(b, b"node-3..")
        c = ctx.counters()
        assert (c["rtts"], c["doorbells"]) == (1, 2)  # two nodes: two doorbells, one round trip
        assert ctx.read(a, 8) == b"node-0.." and ctx.read(b, 8) == b"node-3.."
        ctx.close()


def test_allocator_chunks_are_disjoint_across_clients(fabric: Fabric, fabric_node: Node) -> None:
    uri = fabric_node.uri
    a, b = fabric.connect([uri], chunk_bytes=4096), fabric.connect([uri], chunk_bytes=4096)
    rounds = fabric.pick(50, 20)
    seen = set()
    for _ in range(rounds):
        for ctx in (a, b):
            g = ctx.alloc(0, 192)
            assert g % 64 == 0
            seen.update(range(g, g + 192, 64))
    assert len(seen) == rounds * 2 * 3   # no line handed out twice
    assert a.alloc(0, 64, align=4096) % 4096 == 0
    a.close()
    b.close()


def test_root_slots_are_cas_words(fabric_dm: DMContext) -> None:
    r = root_gaddr(0, 5)
    assert fabric_dm.cas(r, 0, 0xABC) == 0
    assert fabric_dm.cas(r, 0, 0xDEF) == 0xABC
    with pytest.raises(ValueError, match="root slot"):
        root_gaddr(0, 64)


# ---- conformance: client processes -----------------------------------------------------------


def run_processes(fabric: Fabric, target: object, args_list: list[tuple], timeout: float) -> None:
    """Run target(*args) in one client process per args, all at once; each must exit 0."""
    procs = [fabric.mp.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{target} exited with {p.exitcode}"


def _faa_worker(cfg: TransportConfig, uri: str, g: int, m: int) -> None:
    ctx = connect(cfg, [uri])
    for _ in range(m // 16):
        with ctx.batch():
            for _ in range(16):
                ctx.post_faa(g, 1)
    ctx.close()


def test_concurrent_faa_sums_exactly(fabric: Fabric, fabric_dm: DMContext, fabric_node: Node) -> None:
    k, m = 4, fabric.pick(4000, 1600)
    g = fabric_dm.alloc(0, 64)
    run_processes(fabric, _faa_worker, [(fabric.config(), fabric_node.uri, g, m)] * k,
                  timeout=300)
    assert u64(fabric_dm.read(g, 8)) == k * m


def _lock_worker(cfg: TransportConfig, uri: str, lock: int, counter: int, rounds: int, me: int) -> None:
    # CAS spinlock; the counter is updated with plain READ + WRITE, so lost updates would show
    # if two holders ever overlapped.
    ctx = connect(cfg, [uri])
    for _ in range(rounds):
        while ctx.cas(lock, 0, me) != 0:
            pass
        value = u64(ctx.read(counter, 8))
        ctx.write(counter, struct.pack("<Q", value + 1))
        assert ctx.cas(lock, me, 0) == me
    ctx.close()


def test_cas_lock_mutual_exclusion_across_processes(fabric: Fabric, fabric_dm: DMContext,
                                                    fabric_node: Node) -> None:
    k, rounds = fabric.pick(4, 3), fabric.pick(400, 60)
    lock, counter = fabric_dm.alloc(0, 64), fabric_dm.alloc(0, 64)
    run_processes(fabric, _lock_worker, [(fabric.config(), fabric_node.uri, lock, counter, rounds, i + 1)
                                         for i in range(k)], timeout=300)
    assert u64(fabric_dm.read(counter, 8)) == k * rounds


# ---- conformance: accounting -----------------------------------------------------------------


def test_batch_counts_one_rtt_and_exact_bytes(fabric_dm: DMContext) -> None:
    dm = fabric_dm
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


def test_full_batch_of_large_reads(fabric_dm: DMContext) -> None:
    # DM_MAX_BATCH verbs in one doorbell, 16 MiB of READ results (verbs: the staging buffer grows)
    dm = fabric_dm
    n = lib.DM_MAX_BATCH
    size = (16 << 20) // n
    g = dm.alloc(0, n * size)
    pattern = bytes(range(256)) * (size // 256)
    with dm.batch():
        for i in range(n):
            dm.post_write(g + i * size, pattern[i:] + pattern[:i])
    dm.reset_counters()
    with dm.batch():
        pend = [dm.post_read(g + i * size, size) for i in range(n)]
    assert all(p.value == pattern[i:] + pattern[:i] for i, p in enumerate(pend))
    assert dm.counters()["rtts"] == 1 and dm.counters()["bytes_read"] == n * size


@pytest.mark.parametrize(("op", "size", "counter"),
                         [("read", 128, "reads"), ("write", 64, "writes"), ("cas", 8, "cas"), ("faa", 8, "faa")])
def test_native_loop_accounting(fabric: Fabric, fabric_dm: DMContext, op: str, size: int, counter: str) -> None:
    iters = fabric.pick(1000, 400)
    base = fabric_dm.alloc(0, 1 << 20)
    fabric_dm.reset_counters()
    fabric_dm.bench_loop(op, base, 1 << 20, size, 8, iters)
    c = fabric_dm.counters()
    assert c["rtts"] == c["doorbells"] == iters // 8
    assert c[counter] == iters
    if op == "read":
        assert c["bytes_read"] == iters * size


# ---- conformance: bad input and limits -------------------------------------------------------


def test_bad_addresses_raise(fabric_dm: DMContext) -> None:
    dm = fabric_dm
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


def test_batch_overflow_raises(fabric_dm: DMContext) -> None:
    g = fabric_dm.alloc(0, 64)
    with pytest.raises(DMError, match="batch full"), fabric_dm.batch():
        for _ in range(lib.DM_MAX_BATCH + 1):
            fabric_dm.post_read(g, 8)
    assert fabric_dm.read(g, 8) == b"\0" * 8   # the failed batch was discarded


def test_attaching_a_node_twice_raises(fabric: Fabric, fabric_node: Node) -> None:
    uri = fabric_node.uri
    with pytest.raises(DMError, match="already attached"):
        fabric.connect([uri, uri])


def test_memory_node_full(fabric: Fabric, fabric_node: Node) -> None:
    ctx = fabric.connect([fabric_node.uri], chunk_bytes=1 << 20)
    got = []
    with pytest.raises(MemoryNodeFull, match="memory node 0 is full"):
        for _ in range(10_000):
            got.append(ctx.alloc(0, 1 << 16))
    assert len(got) >= NODE_SIZE // (1 << 16) - 20
    ctx.write(got[0], b"usable!!")      # what was allocated stays usable
    assert ctx.read(got[0], 8) == b"usable!!"
    ctx.close()


@pytest.fixture(scope="module")
def small_dm(fabric: Fabric) -> Iterator[DMContext]:
    """A context on a 1 MiB node shared by a module's worth of hypothesis examples."""
    with fabric.start_node(1 << 20) as node:
        ctx = fabric.connect([node.uri])
        yield ctx
        ctx.close()


def test_arbitrary_verbs_never_crash(fabric: Fabric, small_dm: DMContext) -> None:
    # Any address/length either works or raises a DMError; the process never dies and the
    # context stays usable.
    @settings(max_examples=fabric.pick(300, 40), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["read", "write", "cas", "faa"]), st.integers(0, 255), st.integers(0, (1 << 64) - 1),
           st.integers(0, 1 << 26))
    def check(verb: str, node: int, offset: int, length: int) -> None:
        g = (node << 56) | (offset & ((1 << 56) - 1))
        try:
            if verb == "read":
                small_dm.read(g, length)
            elif verb == "write":
                small_dm.write(g, b"\0" * min(length, 1 << 20))
            elif verb == "cas":
                small_dm.cas(g, 0, 0)
            else:
                small_dm.faa(g, 0)
        except DMError:
            pass
        assert small_dm.read(small_dm.alloc(0, 64), 8) == b"\0" * 8

    check()


# ---- shm only: latency models ------------------------------------------------------------------


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


def test_a_doorbell_is_charged_the_slower_of_its_bytes_and_its_verbs(shm_node: ShmMemoryNode) -> None:
    """A NIC pipelines the wire and its per-verb work: a doorbell costs the RTT plus the longer
    of the two, so many small verbs are not free (and with --nic-mops 0, they cost bytes only)."""
    g = None
    for mops, want in ((10.0, 2000 + 100 * 100), (1000.0, 2000 + 800), (0.0, 2000 + 800)):
        ctx = connect(TransportConfig(latency_model="virtual", rtt_us=2.0, gbps=8.0, nic_mops=mops), [shm_node.uri])
        g = ctx.alloc(0, 64) if g is None else g
        ctx.reset_counters()
        with ctx.batch():
            for _ in range(100):   # 100 verbs of 8 B: 800 B = 800 ns at 8 Gb/s; 100 ns a verb at 10 Mops
                ctx.post_read(g, 8)
        assert ctx.counters()["rtts"] == 1
        assert ctx.counters()["virtual_ns"] == want, mops
        ctx.close()


def test_exec_ns_is_the_time_inside_doorbells_when_a_model_is_on(shm_node: ShmMemoryNode) -> None:
    """exec_ns is what `virtual` takes out of a latency (the emulated NIC's work); spin's wait is
    inside its doorbells, so there it covers the modelled time too; none measures nothing."""
    ctxs = {m: connect(TransportConfig(latency_model=m, rtt_us=50.0, gbps=0, nic_mops=0), [shm_node.uri])
            for m in ("none", "spin", "virtual")}
    g = ctxs["none"].alloc(0, 1 << 20)
    for ctx in ctxs.values():
        ctx.reset_counters()
        for _ in range(5):
            ctx.read(g, 1 << 20)
    c = {m: ctx.counters() for m, ctx in ctxs.items()}
    assert c["none"]["exec_ns"] == 0 and c["none"]["virtual_ns"] == 0
    assert c["virtual"]["exec_ns"] > 0 and c["virtual"]["virtual_ns"] == 5 * 50_000
    assert c["spin"]["exec_ns"] >= c["spin"]["virtual_ns"] == 5 * 50_000
    for ctx in ctxs.values():
        ctx.close()


def _streamed_reads(ctx, g: int, n: int) -> list:
    pend = [ctx.post_read(g, 8) for _ in range(n)]
    ctx.submit(streamed=True)
    return pend


def test_a_streamed_doorbell_is_charged_answer_by_answer(shm_node: ShmMemoryNode) -> None:
    """dm_submit_streamed: answer i arrives at RTT + the cost of verbs [0, i] (here 1 ms + 1 us a
    verb), awaited in steps of 16 verbs; only what the client waits for beyond its own time
    since the ring is charged. Awaiting at once costs the whole doorbell (minus the caller's
    own microseconds); a client busy longer than the model pays nothing; plain submit is
    unchanged."""
    cfg = TransportConfig(latency_model="virtual", rtt_us=1000.0, gbps=0, nic_mops=1.0)
    ctx = connect(cfg, [shm_node.uri])
    g = ctx.alloc(0, 64)
    ctx.write(g, (7).to_bytes(8, "little"))
    ctx.reset_counters()
    with ctx.batch():
        for _ in range(100):
            ctx.post_read(g, 8)
    assert ctx.counters()["virtual_ns"] == 1_000_000 + 100 * 1000
    ctx.reset_counters()
    pend = _streamed_reads(ctx, g, 100)
    ctx.await_answer(0)                  # the first step: verbs 0..15 arrive by 1,016 us
    assert all(p.value == (7).to_bytes(8, "little") for p in pend)
    time.sleep(0.02)                     # the client's own work covers the rest (verb 99 at 1,100 us)
    assert 900_000 < ctx.counters()["virtual_ns"] <= 1_016_000
    ctx.reset_counters()
    _streamed_reads(ctx, g, 100)
    ctx.await_answer(0)
    ctx.await_all()                      # at once: the whole doorbell
    assert 1_000_000 < ctx.counters()["virtual_ns"] <= 1_100_000
    ctx.reset_counters()
    _streamed_reads(ctx, g, 100)
    time.sleep(0.02)                     # 20 ms of the client's own work covers 1.1 ms of NIC
    ctx.await_all()
    assert ctx.counters()["virtual_ns"] == 0 and ctx.counters()["rtts"] == 1
    ctx.reset_counters()
    _streamed_reads(ctx, g, 100)
    ctx.read(g, 8)                       # the next doorbell waits for the last one first
    assert 2_000_000 < ctx.counters()["virtual_ns"] <= 2_100_000 + 1000
    ctx.reset_counters()
    _streamed_reads(ctx, g, 100)         # and so does reading the counters (a latency read)
    assert 1_000_000 < ctx.counters()["virtual_ns"] <= 1_100_000
    ctx.close()


def test_a_streamed_doorbell_under_spin_and_without_a_model(shm_node: ShmMemoryNode) -> None:
    """spin waits for each awaited answer in wall time from the ring (so a streamed doorbell
    awaited at once lasts its modelled time, and that wait counts in exec_ns); without a model
    awaiting costs nothing and nothing is counted."""
    spin = connect(TransportConfig(latency_model="spin", rtt_us=2000.0, gbps=0, nic_mops=1.0), [shm_node.uri])
    g = spin.alloc(0, 64)
    spin.reset_counters()
    t0 = time.perf_counter()
    _streamed_reads(spin, g, 100)
    spin.await_answer(0)
    assert time.perf_counter() - t0 >= 2016e-6
    spin.await_all()
    assert time.perf_counter() - t0 >= 2100e-6
    c = spin.counters()
    assert c["virtual_ns"] == 2_000_000 + 100 * 1000 and c["exec_ns"] >= 2_000_000
    none = connect(TransportConfig(), [shm_node.uri])
    pend = _streamed_reads(none, g, 100)
    none.await_answer(5)
    none.await_all()
    assert len({p.value for p in pend}) == 1
    assert none.counters()["virtual_ns"] == 0 and none.counters()["exec_ns"] == 0
    spin.close()
    none.close()


# ---- shm only: tearing -------------------------------------------------------------------------


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


# ---- shm only: regions and configuration -------------------------------------------------------


def test_a_region_header_with_a_bad_node_id_is_a_bad_region() -> None:
    node = ShmMemoryNode(1 << 20, node_id=3)
    try:
        with open(f"/dev/shm/{node.name}", "r+b") as f:
            f.seek(16)  # DM_HDR_NODE_ID (dm.h)
            f.write(struct.pack("<Q", 999))
        with pytest.raises(BadRegion, match=r"bad region header: node id 999 is outside 0\.\.\d+"):
            DMContext(uris=[node.uri])
    finally:
        node.destroy()


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
    import stat

    mode = os.stat(f"/dev/shm/{shm_node.name}").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_one_error_table_maps_every_status() -> None:
    """Each C status has its exception class, subclassing the builtin a caller would catch."""
    from kvdm.transport.dm import raise_for

    cases = [(lib.DM_EINVAL, InvalidArgument, ValueError), (lib.DM_ETIMEDOUT, Timeout, TimeoutError),
             (lib.DM_ENOMEM, MemoryNodeFull, MemoryError), (lib.DM_ERANGE, AddressError, ValueError),
             (lib.DM_EEXIST, RegionExists, FileExistsError), (lib.DM_ENOENT, RegionMissing, FileNotFoundError),
             (lib.DM_EPROTO, BadRegion, ValueError), (lib.DM_ENOSYS, TransportUnavailable, DMError),
             (lib.DM_EIO, DMError, DMError)]
    for code, cls, builtin in cases:
        with pytest.raises(cls, match="boom") as err:
            raise_for(code, "boom")
        assert isinstance(err.value, builtin) and isinstance(err.value, DMError) and err.value.code == code
    raise_for(lib.DM_OK, "not raised")


def test_the_transport_comes_from_the_uris(shm_node: ShmMemoryNode) -> None:
    assert TransportConfig().transport == "shm"  # embedded nodes
    assert TransportConfig(memory_nodes=["verbs://10.0.0.1:7471?dev=rxe0&gid=1"]).transport == "verbs"
    assert TransportConfig(memory_nodes=[shm_node.uri]).transport == "shm"
    with pytest.raises(ValueError, match="--transport shm disagrees with the memory node 'verbs://"):
        TransportConfig(transport="shm", memory_nodes=["verbs://10.0.0.1:7471"])
    with pytest.raises(ValueError, match="--transport verbs disagrees"):
        TransportConfig(transport="verbs", memory_nodes=[shm_node.uri])
    with pytest.raises(ValueError, match="different transports"):
        TransportConfig(memory_nodes=[shm_node.uri, "verbs://10.0.0.1:7471"])
    auto = TransportConfig(tear=True)  # no URIs yet: connecting gives it the nodes' transport
    assert auto.with_nodes([shm_node.uri]).transport == "shm"
    assert TransportConfig().with_nodes(["verbs://h:1"]).transport == "verbs"
    assert TransportConfig(transport="shm").memory_nodes == []  # an explicit transport stays as given:
    with pytest.raises(ValueError, match="disagrees"):
        TransportConfig(transport="shm").with_nodes(["verbs://h:1"])


def test_latency_models_and_tearing_are_the_shm_networks() -> None:
    for opts, flag in (({"latency_model": "virtual"}, "--latency-model virtual"), ({"tear": True}, "--tear")):
        with pytest.raises(ValueError, match=f"{flag} is the shm transport's model"):
            TransportConfig(memory_nodes=["verbs://10.0.0.1:7471"], **opts)


def test_cli_labels_the_run_by_its_uris() -> None:
    import argparse

    from kvdm.experiments.cli.options import add_transport_options, transport_config

    p = argparse.ArgumentParser()
    add_transport_options(p)
    assert transport_config(p.parse_args(["--memory-node", "verbs://h:7471"])).transport == "verbs"
    assert transport_config(p.parse_args([])).transport == "shm"
    with pytest.raises(ValueError, match="disagrees"):
        transport_config(p.parse_args(["--transport", "shm", "--memory-node", "verbs://h:7471"]))
