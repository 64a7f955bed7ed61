"""The verbs transport over a real RDMA device (SoftRoCE rxe0 in the qemu guest: .ci/rdma-tests).

The memory nodes are separate `kvdm memnode serve --transport verbs` processes; the clients
are this process and forked children. The conformance tests are the ones the shm transport
passes (read-after-write, CAS/FAA old values, exact sums across processes, CAS-lock mutual
exclusion, one RTT per batch with exact bytes, bad input), plus what only a network transport
has: a client dying mid-run or a malformed connection does not take the node down, and a dead
node turns into DM_EIO carrying the work-completion status text. Sizes are small because the
guest runs under TCG emulation (~17x slower than the host).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdm.native import lib
from kvdm.transport import AddressError, DMContext, DMError, TransportConfig, connect, gaddr
from kvdm.transport import verbs_memnode as vm


def _devices() -> list[str]:
    ib = Path("/sys/class/infiniband")
    return sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []


pytestmark = [
    pytest.mark.rdma,
    pytest.mark.skipif(not _devices(), reason="no RDMA device here (run .ci/rdma-tests: SoftRoCE guest)"),
]

DEVICE = os.environ.get("SOFTROCE_DEV") or (_devices() or ["rxe0"])[0]
GID_INDEX = os.environ.get("SOFTROCE_GID_INDEX")
FORK = mp.get_context("fork")  # no interpreter start per child: they cost seconds under TCG
NODE_SIZE = 64 << 20


def u64(data: bytes) -> int:
    return struct.unpack("<Q", data)[0]


@dataclass
class Memnode:
    """A `kvdm memnode serve --transport verbs` child process."""

    proc: subprocess.Popen[str]
    uri: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def port(self) -> int:
        return int(re.search(r":(\d+)\?", self.uri).group(1))  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)


def start_memnode(tmp: Path, node_id: int) -> Memnode:
    log = tmp / f"memnode-{node_id}.log"
    cmd = [sys.executable, "-m", "kvdm.experiments.cli", "memnode", "serve", "--transport", "verbs",
           "--name", f"verbs-test-{node_id}", "--size", str(NODE_SIZE), "--node-id", str(node_id),
           "--device", DEVICE, "--port", "0", "--listen", "127.0.0.1"]
    if GID_INDEX:
        cmd += ["--gid-index", GID_INDEX]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"serving (verbs://\S+)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"memory node did not start: {line!r}\n{log.read_text()}")
    return Memnode(proc, m.group(1), log)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memnode]:
    mn = start_memnode(tmp_path_factory.mktemp("verbs"), 0)
    yield mn
    assert mn.proc.poll() is None, "the memory node died during the tests:\n" + mn.log_text()
    mn.stop()
    assert mn.proc.returncode == 0


@pytest.fixture
def vdm(node: Memnode) -> Iterator[DMContext]:
    ctx = connect(TransportConfig(transport="verbs"), [node.uri])
    yield ctx
    ctx.close()


# ---- conformance: the shm transport's semantics, over verbs --------------------------------


def test_attach_reads_the_region_header(vdm: DMContext, node: Memnode) -> None:
    assert vdm.node_ids == [0]
    assert vdm.node_size(0) == NODE_SIZE
    g = vdm.alloc(0, 64)
    assert 4096 <= g < NODE_SIZE  # the bump pointer starts after the header


@pytest.mark.parametrize("size", [8, 64, 200, 1000, 4096, 65536, 1 << 20])
def test_read_after_write(vdm: DMContext, size: int) -> None:
    # small writes go inline, larger ones through the staging buffer
    g = vdm.alloc(0, size)
    payload = os.urandom(size)
    vdm.write(g, payload)
    assert vdm.read(g, size) == payload
    if size >= 16:
        vdm.write(g + 8, b"ABCDEFGH")
        assert vdm.read(g, 16) == payload[:8] + b"ABCDEFGH"


def test_cas_returns_old_on_success_and_failure(vdm: DMContext) -> None:
    g = vdm.alloc(0, 64)
    vdm.reset_counters()
    assert vdm.cas(g, 0, 7) == 0
    assert u64(vdm.read(g, 8)) == 7
    assert vdm.cas(g, 3, 9) == 7
    assert u64(vdm.read(g, 8)) == 7
    assert vdm.cas(g, 7, (1 << 64) - 1) == 7
    assert u64(vdm.read(g, 8)) == (1 << 64) - 1
    assert vdm.counters()["cas_failed"] == 1


def test_faa_returns_old(vdm: DMContext) -> None:
    g = vdm.alloc(0, 64)
    assert vdm.faa(g, 5) == 0
    assert vdm.faa(g, 10) == 5
    assert vdm.faa(g, -3) == 15  # two's complement wrap-around
    assert u64(vdm.read(g, 8)) == 12


def test_batch_executes_in_post_order(vdm: DMContext) -> None:
    g = vdm.alloc(0, 64)
    with vdm.batch():
        vdm.post_write(g, struct.pack("<Q", 41))
        old = vdm.post_cas(g, 41, 42)
        after = vdm.post_read(g, 8)
    assert old.value == 41
    assert u64(after.value) == 42  # type: ignore[arg-type]


def test_batch_counts_one_rtt_and_exact_bytes(vdm: DMContext) -> None:
    g = vdm.alloc(0, 4096)
    vdm.reset_counters()
    with vdm.batch():
        vdm.post_read(g, 128)
        vdm.post_read(g + 1024, 1024)
        vdm.post_write(g + 2048, b"x" * 64)
        vdm.post_cas(g + 3072, 0, 1)
        vdm.post_faa(g + 3080, 2)
    c = vdm.counters()
    assert (c["rtts"], c["doorbells"]) == (1, 1)
    assert (c["reads"], c["writes"], c["cas"], c["faa"]) == (2, 1, 1, 1)
    assert c["bytes_read"] == 128 + 1024 + 8 + 8
    assert c["bytes_written"] == 64 + 8 + 8


def test_full_batch_of_large_reads(vdm: DMContext) -> None:
    # DM_MAX_BATCH verbs in one doorbell, 16 MiB of READ results: the staging buffer grows
    n, size = lib.DM_MAX_BATCH, 64 << 10
    g = vdm.alloc(0, n * size)
    pattern = bytes(range(256)) * (size // 256)
    with vdm.batch():
        for i in range(n):
            vdm.post_write(g + i * size, pattern[i:] + pattern[:i])
    vdm.reset_counters()
    with vdm.batch():
        pend = [vdm.post_read(g + i * size, size) for i in range(n)]
    assert all(p.value == pattern[i:] + pattern[:i] for i, p in enumerate(pend))
    assert vdm.counters()["rtts"] == 1 and vdm.counters()["bytes_read"] == n * size


def test_batch_longer_than_the_send_queue_is_posted_in_chunks(node: Memnode) -> None:
    ctx = connect(TransportConfig(transport="verbs"), [node.uri + "&sq=8"])
    g = ctx.alloc(0, 100 * 64)
    with ctx.batch():
        for i in range(100):
            ctx.post_write(g + 64 * i, struct.pack("<Q", i) * 8)
    ctx.reset_counters()
    with ctx.batch():
        olds = [ctx.post_faa(g + 64 * i, 1000) for i in range(50)]
        reads = [ctx.post_read(g + 64 * i, 64) for i in range(100)]
    assert [o.value for o in olds] == list(range(50))
    assert [r.value[8:] for r in reads] == [struct.pack("<Q", i) * 7 for i in range(100)]
    assert [u64(r.value[:8]) for r in reads] == [i + 1000 * (i < 50) for i in range(100)]
    assert ctx.counters()["rtts"] == 1  # still one dm_submit, whatever the chunking
    ctx.close()


def _faa_worker(uri: str, g: int, m: int) -> None:
    ctx = connect(TransportConfig(transport="verbs"), [uri])
    for _ in range(m // 16):
        with ctx.batch():
            for _ in range(16):
                ctx.post_faa(g, 1)
    ctx.close()


def test_concurrent_faa_sums_exactly(vdm: DMContext, node: Memnode) -> None:
    k, m = 4, 1600
    g = vdm.alloc(0, 64)
    procs = [FORK.Process(target=_faa_worker, args=(node.uri, g, m)) for _ in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert u64(vdm.read(g, 8)) == k * m


def _lock_worker(uri: str, lock: int, counter: int, rounds: int, me: int) -> None:
    # CAS spinlock around a plain READ + WRITE increment: overlapping holders lose updates
    ctx = connect(TransportConfig(transport="verbs"), [uri])
    for _ in range(rounds):
        while ctx.cas(lock, 0, me) != 0:
            pass
        value = u64(ctx.read(counter, 8))
        ctx.write(counter, struct.pack("<Q", value + 1))
        if ctx.cas(lock, me, 0) != me:
            os._exit(3)
    ctx.close()


def test_cas_lock_mutual_exclusion_across_processes(vdm: DMContext, node: Memnode) -> None:
    k, rounds = 3, 60
    lock, counter = vdm.alloc(0, 64), vdm.alloc(0, 64)
    procs = [FORK.Process(target=_lock_worker, args=(node.uri, lock, counter, rounds, i + 1))
             for i in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert u64(vdm.read(counter, 8)) == k * rounds


def test_allocations_are_disjoint_across_clients(node: Memnode) -> None:
    cfg = TransportConfig(transport="verbs", chunk_bytes=4096)
    # b takes every default: first device, gid=auto, port 1
    a, b = connect(cfg, [node.uri]), connect(cfg, [f"verbs://127.0.0.1:{node.port}"])
    seen = set()
    for _ in range(20):
        for ctx in (a, b):
            g = ctx.alloc(0, 192)
            seen.update(range(g, g + 192, 64))
    assert len(seen) == 20 * 2 * 3
    a.close()
    b.close()


def test_bad_input_raises_and_leaves_the_context_usable(vdm: DMContext, node: Memnode) -> None:
    g = vdm.alloc(0, 64)
    with pytest.raises(AddressError, match="not 8-byte aligned"):
        vdm.read(g + 4, 8)
    with pytest.raises(AddressError, match="outside node 0"):
        vdm.read(gaddr(0, NODE_SIZE - 8), 16)
    with pytest.raises(AddressError, match="memory node 9 is not attached"):
        vdm.read(gaddr(9, 4096), 8)
    with pytest.raises(AddressError, match="inside the node header"):
        vdm.write(gaddr(0, 0), b"\0" * 8)
    with pytest.raises(DMError, match="length 0"):
        vdm.read(g, 0)
    with pytest.raises(DMError, match="batch full"), vdm.batch():
        for _ in range(lib.DM_MAX_BATCH + 1):
            vdm.post_read(g, 8)
    vdm.write(g, b"still ok")
    assert vdm.read(g, 8) == b"still ok"
    with pytest.raises(DMError, match="already attached"):
        DMContext(uris=[node.uri, node.uri])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["read", "write", "cas", "faa"]), st.integers(0, 3), st.integers(0, (1 << 48) - 1),
       st.integers(0, 1 << 25))
def test_arbitrary_verbs_never_crash(vdm: DMContext, verb: str, nid: int, offset: int, length: int) -> None:
    g = gaddr(nid, offset)
    try:
        if verb == "read":
            vdm.read(g, length)
        elif verb == "write":
            vdm.write(g, b"\0" * min(length, 1 << 20))
        elif verb == "cas":
            vdm.cas(g, 0, 0)
        else:
            vdm.faa(g, 0)
    except DMError:
        pass
    assert vdm.read(vdm.alloc(0, 64), 8) == b"\0" * 8


def test_native_loop_accounting(vdm: DMContext) -> None:
    base = vdm.alloc(0, 1 << 20)
    for op, size in (("read", 64), ("write", 64), ("cas", 8), ("faa", 8)):
        vdm.reset_counters()
        vdm.bench_loop(op, base, 1 << 20, size, 8, 400)
        c = vdm.counters()
        assert c["rtts"] == 50 and c["doorbells"] == 50
        key = {"read": "reads", "write": "writes", "cas": "cas", "faa": "faa"}[op]
        assert c[key] == 400


# ---- what only a network transport has ------------------------------------------------------


def _faa_forever(uri: str, g: int) -> None:
    ctx = connect(TransportConfig(transport="verbs"), [uri])
    ctx.bench_loop("faa", g, 64, 8, 16, 1 << 40)


def test_client_killed_mid_run_does_not_take_the_node_down(vdm: DMContext, node: Memnode) -> None:
    g = vdm.alloc(0, 64)
    child = FORK.Process(target=_faa_forever, args=(node.uri, g))
    child.start()
    deadline = time.monotonic() + 120
    while u64(vdm.read(g, 8)) < 160 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert u64(vdm.read(g, 8)) >= 160, "the child never got going"
    os.kill(child.pid, signal.SIGKILL)  # mid-batch, no clean-up
    child.join(30)
    deadline = time.monotonic() + 30
    while "disconnected" not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"client .* disconnected \(connection closed\); its QP is destroyed", node.log_text())
    assert node.proc.poll() is None
    frozen = u64(vdm.read(g, 8))
    assert vdm.faa(g, 1) == frozen  # the node serves the others, the dead client's QP is gone
    fresh = connect(TransportConfig(transport="verbs"), [node.uri])
    assert u64(fresh.read(g, 8)) == frozen + 1
    fresh.close()


def test_malformed_connection_is_rejected_with_logged_reason(vdm: DMContext, node: Memnode) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as s:
        s.sendall(struct.pack("<IHHII", 0xDEADBEEF, 1, 1, 32, 0) + bytes(32))
        reply = s.recv(4096)
    msg_type, length = vm.decode_header(reply[:16])
    assert msg_type == vm.REJECT and b"bad magic 0xdeadbeef" in reply[16:16 + length]
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as s:
        s.sendall(struct.pack("<IHHII", vm.MAGIC, 1, vm.CONNECT, 1 << 31, 0))
        assert b"oversized message" in s.recv(4096)
    deadline = time.monotonic() + 30
    while "oversized" not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = node.log_text()
    assert "rejected connection from 127.0.0.1" in log and "bad magic 0xdeadbeef" in log
    assert "oversized message" in log
    assert node.proc.poll() is None
    g = vdm.alloc(0, 64)
    vdm.write(g, b"served!!")
    assert vdm.read(g, 8) == b"served!!"


def test_two_nodes_then_one_dies(node: Memnode, tmp_path: Path) -> None:
    other = start_memnode(tmp_path, 1)
    try:
        ctx = connect(TransportConfig(transport="verbs"), [node.uri + "&sq=4", other.uri])
        assert sorted(ctx.node_ids) == [0, 1]
        # node 0's batch goes out in chunks of 4; between its chunks node 1's post replaces the
        # staging buffer, which node 0's later chunks must not be confused by
        small, big = ctx.alloc(0, 512), ctx.alloc(1, 8 << 20)
        pattern, blob0 = os.urandom(512), os.urandom(8 << 20)
        ctx.write(small, pattern)
        ctx.write(big, blob0)
        with ctx.batch():
            parts = [ctx.post_read(small + 64 * i, 64) for i in range(8)]
            whole = ctx.post_read(big, 8 << 20)
        assert b"".join(p.value for p in parts) == pattern  # type: ignore[misc]
        assert whole.value == blob0
        a, b = ctx.alloc(0, 8 << 20), ctx.alloc(1, 8 << 20)
        blob = os.urandom(8 << 20)
        with ctx.batch():  # one RTT, two doorbells, staging shared by both QPs
            ctx.post_write(a, blob)
            ctx.post_write(b, blob[::-1])
        ctx.reset_counters()
        with ctx.batch():
            ra, rb = ctx.post_read(a, 8 << 20), ctx.post_read(b, 8 << 20)
        assert ra.value == blob and rb.value == blob[::-1]
        c = ctx.counters()
        assert (c["rtts"], c["doorbells"]) == (1, 2)

        other.stop(signal.SIGKILL)  # the node vanishes: its QP is gone
        with pytest.raises(DMError, match=r"failed: .*\(work-completion status \d+") as err:
            ctx.read(b, 8)
        assert err.value.code in (lib.DM_EIO, lib.DM_ETIMEDOUT)
        with pytest.raises(DMError, match="unusable after an earlier failure"):
            ctx.read(b, 8)
        assert ctx.read(a, 16) == blob[:16]  # the other node, on the same device and CQ, still works
        ctx.close()
    finally:
        other.stop(signal.SIGKILL)


def test_verb_latencies_emulated(vdm: DMContext) -> None:
    """Times the native verb loop. Under SoftRoCE in the TCG guest these are emulation figures,
    not hardware ones; with KVDM_RDMA_BENCH_OUT set they are written there (.ci/rdma-tests prints
    them). Only the accounting is asserted."""
    base = vdm.alloc(0, 1 << 20)
    lines = [f"verb latencies on {DEVICE} (TCG emulation figures, not hardware ones), us per verb:"]
    for op, size, batch in (("read", 8, 1), ("read", 64, 1), ("read", 1024, 1), ("write", 64, 1),
                            ("write", 1024, 1), ("cas", 8, 1), ("faa", 8, 1), ("read", 64, 16)):
        iters = 1600 if batch > 1 else 800
        vdm.reset_counters()
        ns = vdm.bench_loop(op, base, 1 << 20, size, batch, iters)
        assert vdm.counters()["rtts"] == iters // batch
        per_rtt = ns / (iters // batch) / 1e3
        lines.append(f"  {op:>5} {size:>5} B  batch {batch:>2}: {ns / iters / 1e3:8.1f} us/verb, "
                     f"{per_rtt:8.1f} us/doorbell")
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("KVDM_RDMA_BENCH_OUT")
    if out:
        Path(out).write_text(text + "\n")


def test_doctor_lists_the_device_ports_and_gids(capsys: pytest.CaptureFixture[str]) -> None:
    from kvdm.experiments.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\[ +ok\] RDMA devices: .*{DEVICE}", out)
    assert re.search(r"port 1: ACTIVE", out)
    assert re.search(r"gid \d+: .* RoCE v2 .*<- gid=auto", out)  # what client and node pick by default
    assert "native build: verbs backend built in" in out


def _fake_node(answers: list[bytes]) -> tuple[int, list[bytes]]:
    """A TCP listener that plays a broken memory node: for each client it reads the CONNECT and
    sends the next answer (b"" = hang up). Returns (port, the requests it got)."""
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        with srv:
            for answer in answers:
                conn, _ = srv.accept()
                with conn:
                    conn.settimeout(60)
                    got.append(conn.recv(48, socket.MSG_WAITALL))
                    if answer:
                        conn.sendall(answer)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], got


def test_client_rejects_bad_answers_from_a_node() -> None:
    good_qp = vm.QPInfo(qpn=99, psn=1, lid=0, mtu=3, rd_atomic=1, gid=bytes(10) + b"\xff\xff" + bytes(4))
    bad_region = vm.RegionInfo(node_id=300, rkey=1, size=1 << 20, base=1 << 40)
    cases = [
        (vm.encode_reject("node is full of itself"), "rejected the connection: node is full of itself"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a kvdm verbs memory node"),
        (vm.encode_accept(good_qp, bad_region), r"malformed answer \(node id 300"),
        (vm.encode_header(vm.ACCEPT, 4000), r"malformed answer \(type 2, length 4000\)"),
        (b"", "closed the connection without answering"),
    ]
    port, got = _fake_node([answer for answer, _ in cases])
    for _, message in cases:
        with pytest.raises(DMError, match=message) as err:
            DMContext(uris=[f"verbs://127.0.0.1:{port}?dev={DEVICE}&timeout=60"])
        assert err.value.code == lib.DM_EPROTO
    # every request the client sent was a well-formed CONNECT
    for request in got:
        assert vm.decode_header(request[:16]) == (vm.CONNECT, 32)
        vm.decode_qpinfo(request[16:])
