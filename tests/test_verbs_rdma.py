"""What only the verbs transport has, over a real RDMA device (SoftRoCE rxe0 in the qemu guest:
.ci/rdma-tests). The semantics every transport shares are the conformance suite in
test_transport.py (which runs over verbs there too); the index suites run over verbs through
the same ``fabric`` fixture.

Here: a `kvdm memnode serve --transport verbs` process started by the CLI serves a client killed
mid-run and a malformed connection without going down; a dead node turns into DM_EIO carrying
the work-completion status text; batches longer than the send queue; URIs with defaults;
`kvdm doctor`; a client refusing bad answers; and the commands end to end over rxe:
`kvdm replay --transport verbs` (its hits equal the dict backend's on the same trace slice) and
`kvdm bench transport --transport verbs` (its figures labelled as emulation ones). Sizes are
small because the guest runs under TCG emulation (~17x slower than the host).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import DEVICE, FORK, NO_RDMA, VerbsNode, fork_verbs_node, rdma_devices, start_verbs_node_cli

from kvdm.native import lib
from kvdm.transport import DMContext, DMError, TransportConfig, connect
from kvdm.transport import verbs_memnode as vm

pytestmark = [pytest.mark.rdma, pytest.mark.skipif(not rdma_devices(), reason=NO_RDMA)]


def u64(data: bytes) -> int:
    return struct.unpack("<Q", data)[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerbsNode]:
    """The one node started through the CLI, exactly as a user does (tens of seconds of
    interpreter start under TCG, so the other tests fork theirs: tests/fabric.py)."""
    mn = start_verbs_node_cli(tmp_path_factory.mktemp("verbs"), 0)
    yield mn
    assert mn.poll() is None, "the memory node died during the tests:\n" + mn.log_text()
    assert mn.stop() == 0


@pytest.fixture
def vdm(node: VerbsNode) -> Iterator[DMContext]:
    ctx = connect(TransportConfig(transport="verbs"), [node.uri])
    yield ctx
    ctx.close()


# ---- the commands end to end over rxe ------------------------------------------------------


def _dict_reference(trace: str, clients: int) -> object:
    """The dict backend's results on the same slice with the same client split, from the replay
    engine's own client loop run in this process (spawning more interpreters costs ~40 s each
    under TCG)."""
    from kvdm.experiments.replay.engine import ReplayConfig, needs_preload, preload, run_client, summarise
    from kvdm.index import IndexSpec, open_spec
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    cfg = ReplayConfig(trace=trace, index=IndexSpec("dict", 8), clients=clients, inserts="none")
    stream = map_trace(load(trace), cfg.mapping, cfg.key_scheme, cfg.inserts)
    assert needs_preload(stream)
    results = []
    for c in range(clients):
        index = open_spec(cfg.index)  # private to each client, preloaded by it, as in a replay
        preload(index, stream)
        results.append(run_client(cfg, c, index, stream, threading.Barrier(1), threading.Event(), queue.SimpleQueue()))
    return summarise(cfg, stream, results)


def test_replay_over_verbs_matches_the_dict_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kvdm replay --transport verbs`: a memory-node process, 2 client processes, chime over
    rxe0 on the fixture's first 100 requests with every key preloaded (--inserts none: the hits
    then do not depend on how the two clients interleave). It finishes, and its hits per op
    equal the dict backend's and the trace's ground truth."""
    from kvdm.experiments.cli import main
    from kvdm.experiments.replay.results import RunResults
    from kvdm.traces.registry import FIXTURE

    trace = tmp_path / "head100.jsonl"
    trace.write_text("".join(Path(FIXTURE).read_text().splitlines(keepends=True)[:100]))
    with fork_verbs_node(tmp_path, 0, 64 << 20) as mn:
        rc = main(["replay", "--transport", "verbs", "--memory-node", mn.uri, "--index", "chime",
                   "--clients", "2", "--inserts", "none", "--trace", str(trace), "--out", str(tmp_path / "run")])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert mn.poll() is None, mn.log_text()
    assert re.search(r"transport +verbs, .*verbs://127\.0\.0\.1", out)
    res = RunResults.read(tmp_path / "run")
    assert res.meta["run"]["requests_done"] == res.meta["trace"]["requests"] == 100
    got = res.rows[res.rows["bin"] == -1].set_index("op")
    ref = _dict_reference(str(trace), 2).rows  # type: ignore[attr-defined]
    ref = ref[ref["bin"] == -1].set_index("op")
    lookups = [op for op in ref.index if op != "insert"]
    assert lookups and sorted(got.index) == sorted(ref.index)
    for op in lookups:
        assert got.loc[op, "ops"] == ref.loc[op, "ops"] > 0
        assert got.loc[op, "hits"] == ref.loc[op, "hits"] == ref.loc[op, "expected_hits"] > 0, op
        assert got.loc[op, "hit_mismatch"] == 0
        assert got.loc[op, "rtts_per_op"] > 0  # the verbs really went over the transport


def test_bench_transport_over_verbs_labels_emulation_figures(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`kvdm bench transport --transport verbs` against a memory-node process: one client
    process, every verb kind, batches 1 and 16. The figures are printed labelled as emulation
    ones (rxe is software RDMA, the guest CPU is TCG); with KVDM_RDMA_BENCH_OUT set they are
    also written there (.ci/rdma-tests prints them). Only the accounting is asserted."""
    from kvdm.experiments.cli import main

    with fork_verbs_node(tmp_path, 0, 64 << 20) as mn:
        rc = main(["bench", "transport", "--transport", "verbs", "--memory-node", mn.uri, "--clients", "1",
                   "--verbs", "read64,read1k,write64,cas,faa", "--batches", "1,16", "--iters", "800"])
        out = capsys.readouterr().out
        assert rc == 0, out
    print(out)
    note = re.search(r"^# EMULATION FIGURES, not hardware ones: (.*)$", out, re.M)
    assert note and f"{DEVICE} is software RDMA" in note.group(1)
    rows = [line.split() for line in out.splitlines() if line and not line.startswith(("#", "clients"))]
    want = {"read64": "64.0", "read1k": "1024.0", "write64": "64.0", "cas": "16.0", "faa": "16.0"}
    assert [(r[1], r[2]) for r in rows] == [(v, b) for v in want for b in ("1", "16")]
    for r in rows:
        assert r[5] == ("1.0000" if r[2] == "1" else "0.0625") and r[6] == want[r[1]]
        assert float(r[3].replace(",", "")) > 0
    dest = os.environ.get("KVDM_RDMA_BENCH_OUT")
    if dest:
        Path(dest).write_text(out)


# ---- what only a network transport has ------------------------------------------------------


def test_batch_longer_than_the_send_queue_is_posted_in_chunks(node: VerbsNode) -> None:
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


def test_uri_defaults_reach_the_same_node(node: VerbsNode) -> None:
    cfg = TransportConfig(transport="verbs", chunk_bytes=4096)
    # b takes every default: first device, gid=auto, port 1
    a, b = connect(cfg, [node.uri]), connect(cfg, [f"verbs://127.0.0.1:{node.port}"])
    seen = set()
    for _ in range(20):
        for ctx in (a, b):
            g = ctx.alloc(0, 192)
            seen.update(range(g, g + 192, 64))
    assert len(seen) == 20 * 2 * 3
    g = a.alloc(0, 64)
    a.write(g, b"from a..")
    assert b.read(g, 8) == b"from a.."
    a.close()
    b.close()


def _faa_forever(uri: str, g: int) -> None:
    ctx = connect(TransportConfig(transport="verbs"), [uri])
    ctx.bench_loop("faa", g, 64, 8, 16, 1 << 40)


def test_client_killed_mid_run_does_not_take_the_node_down(vdm: DMContext, node: VerbsNode) -> None:
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
    assert node.poll() is None
    frozen = u64(vdm.read(g, 8))
    assert vdm.faa(g, 1) == frozen  # the node serves the others, the dead client's QP is gone
    fresh = connect(TransportConfig(transport="verbs"), [node.uri])
    assert u64(fresh.read(g, 8)) == frozen + 1
    fresh.close()


def test_malformed_connection_is_rejected_with_logged_reason(vdm: DMContext, node: VerbsNode) -> None:
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
    assert node.poll() is None
    g = vdm.alloc(0, 64)
    vdm.write(g, b"served!!")
    assert vdm.read(g, 8) == b"served!!"


def test_two_nodes_then_one_dies(node: VerbsNode, tmp_path: Path) -> None:
    other = fork_verbs_node(tmp_path, 1)
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
