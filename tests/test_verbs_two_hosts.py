"""Two RDMA hosts on one wire: the memory node on one rxe device, its clients on another, every
RDMA packet and the TCP handshake crossing a veth link between them (the SoftRoCE guest's
two-hosts set-up: transport/softroce/guest-two-hosts-setup.sh, made by
``run-in-guest.sh --two-hosts``; docs/rdma-two-hosts.md):

    memory node  rxea -- va 10.78.0.1 ===veth=== vb 10.78.0.2 -- rxeb  clients

Over it run: the transport conformance suite (every test of test_transport.py that takes a
fabric, imported here with ``fabric`` bound to the two-hosts one), one index concurrency test,
``kvdm replay --transport verbs`` of the bundled fixture (hits equal to the shm run's), and the
memory node killed mid-run (its clients end with DM_EIO naming the node, within a bound). The
veth's and the rxe devices' packet counters show the traffic crossed the link; the verb
latencies measured across it are written to $KVDM_TWO_HOSTS_OUT (emulation figures).
Everything here skips where the set-up is absent (the host).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import test_index_concurrency as index_concurrency
import test_transport as conformance
from fabric import FORK, NO_TWO_HOSTS, Fabric, VerbsNode, two_hosts

from kvdm.native import lib
from kvdm.transport import DMError, ShmMemoryNode, TransportConfig, connect

if TYPE_CHECKING:
    import pandas as pd

    from kvdm.experiments.replay.engine import ReplayConfig
    from kvdm.experiments.replay.results import RunResults

pytestmark = [pytest.mark.rdma, pytest.mark.skipif(two_hosts() is None, reason=NO_TWO_HOSTS)]


@pytest.fixture(scope="session")
def fabric(two_hosts_fabric: Fabric) -> Fabric:
    """This module's transport under test (overrides conftest's shm/verbs one): nodes on the
    node side's device and address, clients on the client side's device."""
    return two_hosts_fabric


# ---- evidence: the packets cross the veth ------------------------------------------------------

def counters(fabric: Fabric) -> dict[str, int]:
    """Packet counters of both netdevs (the veth ends) and both rxe devices. ib_core serves an
    rxe counter from a cache until a jiffy has passed since the last read (the set-up sets its
    lifespan to 0 ms) and TCG's timer ticks lag, so wait a little first."""
    assert fabric.client is not None and fabric.server.netdev and fabric.client.netdev
    time.sleep(0.1)
    out = {}
    for side in (fabric.server, fabric.client):
        stats = Path(f"/sys/class/net/{side.netdev}/statistics")
        for name in ("rx_packets", "tx_packets"):
            out[f"{side.netdev}.{name}"] = int((stats / name).read_text())
        hw = Path(f"/sys/class/infiniband/{side.device}/ports/1/hw_counters")
        for name in ("sent_pkts", "rcvd_pkts"):
            out[f"{side.device}.{name}"] = int((hw / name).read_text())
    return out


def report_line(text: str) -> None:
    """Print ``text`` and add it to $KVDM_TWO_HOSTS_OUT (which the guest script prints)."""
    print(text)
    dest = os.environ.get("KVDM_TWO_HOSTS_OUT")
    if dest:
        with open(dest, "a") as f:
            f.write(text + "\n")


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def assert_crossed(fabric: Fabric, d: dict[str, int], at_least: int) -> None:
    """At least ``at_least`` packets went each way over the veth, sent and received by the two
    rxe devices (node side: requests in, responses out; client side: the reverse)."""
    assert fabric.client is not None
    srv, cli = fabric.server, fabric.client
    for key in (f"{srv.netdev}.rx_packets", f"{srv.netdev}.tx_packets", f"{cli.netdev}.rx_packets",
                f"{cli.netdev}.tx_packets", f"{srv.device}.rcvd_pkts", f"{srv.device}.sent_pkts",
                f"{cli.device}.rcvd_pkts", f"{cli.device}.sent_pkts"):
        assert d[key] >= at_least, f"{key} +{d[key]} < {at_least}: {d}"


VERBS = [("read64", "read", 64), ("read1k", "read", 1024), ("write64", "write", 64), ("cas", "cas", 8),
         ("faa", "faa", 8)]


def test_handshake_and_every_verb_cross_the_link(fabric: Fabric) -> None:
    """The TCP handshake comes from the client side's address over the veth; each verb kind at
    batch 1 moves at least one packet per verb each way through both rxe devices and both veth
    ends. Prints (and writes to $KVDM_TWO_HOSTS_OUT) the per-verb latency across the link."""
    n = 300
    with fabric.start_node(16 << 20) as node:
        assert isinstance(node, VerbsNode)
        before = counters(fabric)
        ctx = fabric.connect([node.uri])
        d = delta(before, counters(fabric))
        # node side gets SYN, ACK, CONNECT and the header READ; client side SYN-ACK, ACCEPT and the READ's response
        assert d[f"{fabric.server.netdev}.rx_packets"] >= 4 and d[f"{fabric.client.netdev}.rx_packets"] >= 3, d
        deadline = time.monotonic() + 30
        while "connected" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert re.search(rf"client {re.escape(fabric.client.ip)}:\d+ connected", node.log_text())
        base = ctx.alloc(0, 1 << 16)
        rows = []
        for label, op, length in VERBS:
            before = counters(fabric)
            ns = ctx.bench_loop(op, base, 1 << 16, length, 1, n)
            d = delta(before, counters(fabric))
            assert_crossed(fabric, d, n)
            rows.append(f"{label:8} {ns / n / 1e3:9.1f} {d[f'{fabric.server.netdev}.rx_packets']:>9} "
                        f"{d[f'{fabric.client.netdev}.rx_packets']:>9}")
        ctx.close()
    report = "\n".join([
        f"# EMULATION FIGURES, not hardware ones: {fabric.client.device} ({fabric.client.netdev} "
        f"{fabric.client.ip}) -> {fabric.server.device} ({fabric.server.netdev} {fabric.server.ip}) over a veth "
        f"pair, both software RDMA (rxe) in one TCG guest; {n} verbs per kind at batch 1",
        f"{'verb':8} {'us/verb':>9} {'node rx':>9} {'client rx':>9}", *rows])
    print(report)
    dest = os.environ.get("KVDM_TWO_HOSTS_OUT")
    if dest:
        Path(dest).write_text(report + "\n")


# ---- the transport conformance suite across the link -----------------------------------------

FABRIC_FIXTURES = {"fabric", "fabric_dm", "fabric_node", "small_dm"}
small_dm = conformance.small_dm  # the hypothesis test's node, built from this module's fabric
CONFORMANCE = sorted(name for name, fn in vars(conformance).items()
                     if name.startswith("test_") and callable(fn)
                     and FABRIC_FIXTURES & set(inspect.signature(fn).parameters))
globals().update({name: getattr(conformance, name) for name in CONFORMANCE})


def test_the_whole_conformance_suite_is_imported() -> None:
    assert {"test_read_after_write", "test_concurrent_faa_sums_exactly", "test_arbitrary_verbs_never_crash",
            "test_cas_lock_mutual_exclusion_across_processes", "test_memory_node_full"} <= set(CONFORMANCE)
    assert not {"test_spin_model_waits_per_round_trip", "test_region_errors"} & set(CONFORMANCE)  # shm only


# ---- an index under concurrency across the link ------------------------------------------------

@pytest.mark.timeout(600)
def test_index_writers_lose_nothing_across_the_link(fabric: Fabric) -> None:
    """test_index_concurrency's four writers on chime (8-byte keys), across the link."""
    before = counters(fabric)
    index_concurrency.test_four_writers_lose_nothing("chime", 8, False, fabric)
    assert_crossed(fabric, delta(before, counters(fabric)), 1000)


# ---- kvdm replay across the link, local clients and MPI ranks ----------------------------------

CLIENTS = 2
REPLAY_ARGS = ["--index", "chime", "--mapping", "prefix", "--inserts", "none"]  # + --trace FIXTURE
# Open MPI's own traffic (start-up, broadcast, gather) stays on shared memory and loopback TCP:
# pml ob1 with btl self,vader, never the pml/osc ucx or btl openib components that would probe
# the guest's rxe devices, and the run-time's out-of-band TCP on lo only (not the veth).
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "pml", "ob1", "--mca", "btl", "self,vader",
          "--mca", "osc", "^ucx", "--mca", "oob_tcp_if_include", "lo"]


@dataclass
class LinkRun:
    """A replay across the link: its results, what it printed, the packets that crossed, the
    memory node's log."""

    res: RunResults
    out: str
    crossed: dict[str, int]
    node_log: str

    def whole(self) -> pd.DataFrame:
        """The whole-run row of each op."""
        return self.res.rows[self.res.rows["bin"] == -1].set_index("op")


def replay_across(fabric: Fabric, out: Path, run: Callable[[str, Path], tuple[int, str]]) -> LinkRun:
    """``run(node_uri, out)`` -> (exit status, output) against a fresh memory node on the node
    side, its clients attached from the client side."""
    from kvdm.experiments.replay.results import RunResults

    with fabric.start_node(64 << 20) as node:
        before = counters(fabric)
        rc, text = run(node.uri, out)
        crossed = delta(before, counters(fabric))
        assert rc == 0, text
        assert isinstance(node, VerbsNode) and node.poll() is None, node.log_text()
        log = node.log_text()
    assert re.search(rf"transport +verbs, .*verbs://{re.escape(fabric.server.ip)}:", text), text
    return LinkRun(RunResults.read(out), text, crossed, log)


@pytest.fixture(scope="module")
def local_replay(fabric: Fabric, tmp_path_factory: pytest.TempPathFactory) -> LinkRun:
    """`kvdm replay --transport verbs --memory-node verbs://<node ip>:PORT?dev=<client device>`
    of the bundled fixture, 2 local client processes: run once, checked against shm below and
    the reference of the MPI run."""
    from kvdm.experiments.cli import main
    from kvdm.traces.registry import FIXTURE

    def run(uri: str, out: Path) -> tuple[int, str]:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            rc = main(["replay", "--transport", "verbs", "--memory-node", uri, "--clients", str(CLIENTS),
                       *REPLAY_ARGS, "--trace", str(FIXTURE), "--out", str(out)])
        return rc, text.getvalue()

    return replay_across(fabric, tmp_path_factory.mktemp("replay") / "local", run)


def shm_reference(cfg: ReplayConfig) -> RunResults:
    """The same replay over an shm node, its clients run one after the other in this process
    (with --inserts none the hits do not depend on how the clients interleave; spawning a
    client interpreter costs tens of seconds under TCG)."""
    from kvdm.experiments.replay.engine import load_stream, open_client, preload, run_client, summarise

    stream = load_stream(cfg)
    with ShmMemoryNode(64 << 20) as node:
        index = open_client(cfg.index, cfg.transport, [node.uri])
        preload(index, stream)
        results = [run_client(cfg, c, index, stream, threading.Barrier(1), threading.Event(), queue.SimpleQueue())
                   for c in range(cfg.clients)]
        index.close()
    return summarise(cfg, stream, results)


@pytest.mark.timeout(900)
def test_replay_across_the_link_matches_shm(fabric: Fabric, local_replay: LinkRun) -> None:
    """The local replay across the link (2 client processes, chime, prefix mapping, every key
    preloaded) finishes, and its hits and op counts per op equal the shm run's and the trace's
    ground truth."""
    from kvdm.experiments.replay.engine import ReplayConfig
    from kvdm.index import IndexSpec
    from kvdm.traces.registry import FIXTURE

    res = local_replay.res
    assert res.meta["run"]["requests_done"] == res.meta["trace"]["requests"] == 400
    got = local_replay.whole()
    ref = shm_reference(ReplayConfig(trace=str(FIXTURE), index=IndexSpec("chime", 8), clients=CLIENTS,
                                     mapping="prefix", inserts="none")).rows
    ref = ref[ref["bin"] == -1].set_index("op")
    assert sorted(got.index) == sorted(ref.index) and len(ref.index) > 0
    for op in ref.index:
        assert got.loc[op, "ops"] == ref.loc[op, "ops"] > 0, op
        assert got.loc[op, "hits"] == ref.loc[op, "hits"] == ref.loc[op, "expected_hits"], op
        assert got.loc[op, "hit_mismatch"] == 0
    rtts = int((got["rtts_per_op"] * got["ops"]).sum())
    assert_crossed(fabric, local_replay.crossed, rtts)  # at least one packet each way per round trip


def counts(rows: pd.DataFrame) -> list[str]:
    """The columns that count (ops, blocks, hits, every backend counter per op), not the ones
    that time (latencies, rates, CPU or modelled nanoseconds)."""
    return [c for c in rows.columns if rows[c].dtype.kind in "iuf"
            and not c.endswith(("_us", "_per_s", "_ns_per_op")) and c not in ("bin", "bin_start_min")]


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun (bash .ci/bootstrap installs Open MPI)")
def test_mpi_ranks_across_the_link_equal_the_local_run(fabric: Fabric, local_replay: LinkRun, tmp_path: Path) -> None:
    """`mpirun -np 2 kvdm replay --launcher mpi --transport verbs --memory-node verbs://<node
    ip>:PORT?dev=<client device>`: both ranks attach from the client side's device, rank 0
    preloads and merges; the results equal the local 2-client run's in every count (ops, blocks,
    hits, and each backend counter per op: round trips, verbs, bytes, cache hits), and the hits
    equal the trace's ground truth. Two ranks, started in parallel: each is a fresh interpreter,
    the dearest thing in the guest (docs/cluster.md)."""
    from kvdm.traces.registry import FIXTURE

    def run(uri: str, out: Path) -> tuple[int, str]:
        cmd = MPIRUN + ["-np", str(CLIENTS), sys.executable, "-m", "kvdm.experiments.cli", "replay", "--launcher",
                        "mpi", "--transport", "verbs", "--memory-node", uri, *REPLAY_ARGS, "--trace", str(FIXTURE),
                        "--out", str(out)]
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=840)
        report_line(f"# mpirun -np {CLIENTS} kvdm replay --launcher mpi across the link (fixture, chime): "
                    f"{time.monotonic() - t0:.1f} s wall, TCG (interpreter starts, preload, run, rank 0's results)")
        return done.returncode, done.stdout + done.stderr

    mpi = replay_across(fabric, tmp_path / "mpi", run)
    assert mpi.out.count("# kvdm replay") == 1 and f"{CLIENTS} MPI ranks" in mpi.out, mpi.out  # rank 0 reports
    meta = mpi.res.meta
    assert meta["config"]["launcher"] == "mpi" and meta["config"]["clients"] == CLIENTS
    assert meta["run"]["requests_done"] == 400
    # every connection to the node came from the client side (rank 0's preload, each rank's client)
    peers = re.findall(r"client (\S+):\d+ connected", mpi.node_log)
    assert len(peers) >= CLIENTS and set(peers) == {fabric.client.ip}, mpi.node_log
    got, ref = mpi.whole(), local_replay.whole()
    assert list(got.index) == list(ref.index) and len(ref.index) > 0
    cols = counts(ref)
    assert {"ops", "blocks", "hits", "expected_hits", "rtts_per_op", "reads_per_op"} <= set(cols)
    for op in ref.index:
        differ = {c: (got.loc[op, c], ref.loc[op, c]) for c in cols if got.loc[op, c] != ref.loc[op, c]}
        assert not differ, f"{op}: mpi vs local {differ}"
        assert got.loc[op, "hits"] == got.loc[op, "expected_hits"] and got.loc[op, "hit_mismatch"] == 0, op
    rtts = int((got["rtts_per_op"] * got["ops"]).sum())
    assert_crossed(fabric, mpi.crossed, rtts)


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun (bash .ci/bootstrap installs Open MPI)")
def test_mpi_bench_index_across_the_link(fabric: Fabric) -> None:
    """`mpirun -np 2 kvdm bench index --launcher mpi --transport verbs` on chime across the link:
    one report for two clients (rank 0 preloads and merges), every get call of 8 keys one round
    trip with about one READ per key, at least one packet each way per call, and every
    connection from the client side."""
    seconds, batch = 1.0, 8
    with fabric.start_node(64 << 20) as node:
        before = counters(fabric)
        cmd = MPIRUN + ["-np", str(CLIENTS), sys.executable, "-m", "kvdm.experiments.cli", "bench", "index",
                        "--launcher", "mpi", "--transport", "verbs", "--memory-node", node.uri, "--index", "chime",
                        "--keys", "2000", "--seconds", str(seconds), "--batch", str(batch)]
        t0 = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
        report_line(f"# mpirun -np {CLIENTS} kvdm bench index --launcher mpi across the link (chime, 2,000 keys, "
                    f"{seconds:g} s): {time.monotonic() - t0:.1f} s wall, TCG")
        crossed = delta(before, counters(fabric))
        assert run.returncode == 0, run.stdout + run.stderr
        assert isinstance(node, VerbsNode) and node.poll() is None, node.log_text()
        log = node.log_text()
    out = run.stdout
    assert out.count("# kvdm bench index") == 1 and f"{CLIENTS} client(s) x 1 thread(s)" in out, out
    assert re.search(rf"# transport: verbs.*verbs://{re.escape(fabric.server.ip)}:", out), out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Mops"))
    row = lines[head + 1].split()  # Mops, Mkeys/s, p50, p99, p99.9 us, RTT/key, READ/key, ...
    mops, rtt_per_key, read_per_key = float(row[0]), float(row[5]), float(row[6])
    assert mops > 0 and abs(rtt_per_key * batch - 1) < 0.01, out  # a get call: one doorbell, one round trip
    assert abs(read_per_key - 1) < 0.2, out  # about one leaf READ per key
    peers = re.findall(r"client (\S+):\d+ connected", log)
    assert len(peers) >= CLIENTS and set(peers) == {fabric.client.ip}, log
    assert_crossed(fabric, crossed, int(0.9 * mops * 1e6 * seconds))


# ---- the memory node dies mid-run -----------------------------------------------------------------

def _work_until_failure(uri: str, g: int, kind: str, report: Any) -> None:
    """A client that works until the transport fails, then reports (code, message)."""
    from kvdm import index as kindex

    ctx = connect(TransportConfig(transport="verbs"), [uri])
    try:
        if kind == "bench":  # the native verb loop: FAA on the shared counter
            ctx.bench_loop("faa", g, 64, 8, 8, 1 << 40)
        else:  # an index: batched gets, bumping the counter between them
            idx = kindex.open("chime", ctx, 8)
            keys = np.arange(1, 65, dtype=np.uint64)
            idx.put(keys, keys)
            while True:
                idx.get(keys)
                ctx.faa(g, 1)
        outcome: tuple[int, str] | None = None
    except DMError as exc:
        outcome = (exc.code, str(exc))
    report.put(outcome)


@pytest.mark.timeout(300)
def test_memory_node_killed_mid_run_ends_its_clients_with_eio(fabric: Fabric) -> None:
    """Two client processes (the native FAA loop, and chime gets) work across the link; the
    memory-node process is SIGKILLed mid-run. Both end within 60 s with DM_EIO whose message
    names the node and says it closed its connection (exited or crashed): no hang."""
    node = fabric.start_node(16 << 20)
    assert isinstance(node, VerbsNode)
    procs: list[Any] = []
    try:
        ctx = fabric.connect([node.uri])
        g = ctx.alloc(0, 64)
        report = FORK.SimpleQueue()
        procs += [FORK.Process(target=_work_until_failure, args=(node.uri, g, kind, report))
                  for kind in ("bench", "index")]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 180
        while ctx.faa(g, 0) < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ctx.faa(g, 0) >= 2000, "the clients never got going"
        ctx.close()
        node.stop(signal.SIGKILL)
        killed = time.monotonic()
        outcomes = []
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"a client did not end cleanly within 60 s (exit code {p.exitcode})"
            outcomes.append(report.get())
        took = time.monotonic() - killed
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
        node.stop(signal.SIGKILL)
    peer = re.escape(node.uri.split("//")[1].split("?")[0])
    for outcome in outcomes:
        assert outcome is not None, "a client's work returned instead of failing"
        code, message = outcome
        assert code == lib.DM_EIO, outcome
        assert re.search(rf"memory node {peer}.*closed its connection \(it exited or crashed\)", message), message
    assert took < 60
