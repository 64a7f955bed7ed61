"""``kvdm reproduce --same-substrate`` where an RDMA device exists (SoftRoCE rxe0 in the qemu
guest: .ci/rdma-tests): both sides on one kernel and network, the native index over verbs on a
memory node the command starts itself (`kvdm memnode serve --transport verbs`), Redis a server in
the same guest over TCP. A tiny version (200 requests of the fixture, chime and redis, the Fig. 3
step only): the guest runs under TCG, ~10x slower than the host. Skipped where there is no RDMA
device; there the command refuses (tests/test_reproduce.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fabric import DEVICE, GID_INDEX, NO_RDMA, rdma_devices

pytestmark = [pytest.mark.rdma, pytest.mark.skipif(not rdma_devices(), reason=NO_RDMA)]


def test_reproduce_same_substrate_labels_emulation_and_states_the_ratio(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from kvdm.experiments.cli import main
    from kvdm.experiments.figures.plots import load_runs

    out = tmp_path / "repro"
    t0 = time.perf_counter()
    rc = main(["reproduce", "--quick", "--same-substrate", "--verbs-device", DEVICE, "--limit", "200",
               "--backends", "chime,redis", "--steps", "fig3", "--warmup-min", "0", "--node-size", "64M",
               "--out", str(out)] + (["--verbs-gid-index", GID_INDEX] if GID_INDEX else []))
    wall = time.perf_counter() - t0
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    md = (out / "report.md").read_text()
    # both sides ran: chime over verbs on the node the command started (and stopped), redis over TCP
    runs = {r.config["index"]["name"]: r for r in load_runs([out / "runs"])}
    assert set(runs) == {"chime", "redis"}
    t = runs["chime"].config["transport"]
    assert t["transport"] == "verbs" and t["latency_model"] == "none"
    assert t["memory_nodes"][0].startswith("verbs://127.0.0.1:") and f"dev={DEVICE}" in t["memory_nodes"][0]
    assert "memory node 0 stopped" in (out / "memnode.log").read_text()
    for r in runs.values():
        whole = r.whole
        assert {"get", "range", "insert"} <= set(whole.index)
        assert whole["hit_mismatch"].sum() == 0  # one client: hits exactly the ground truth, over verbs too
    assert runs["chime"].whole.loc["get", "rtts_per_op"] > 0  # the verbs went over the transport
    # labelled as emulation, with the ratio between the two sides
    label = re.search(r"EMULATION \(([^)]*)\), not hardware: ([^\n]*)", md)
    assert label and "SoftRoCE" in label.group(1) and f"{DEVICE} is software RDMA" in label.group(2), md[:2000]
    ratio = re.search(r"Ratio redis/native on the same substrate: Redis's latency is get p50 ([\d,.]+)x "
                      r"\(p99 ([\d,.]+)x\) chime's[^\n]*", md)
    assert ratio, md
    want = runs["redis"].whole.loc["get", "p50_us"] / runs["chime"].whole.loc["get", "p50_us"]
    assert ratio.group(1) == f"{want:,.2f}"
    steps = re.search(r"Wall time: [^\n]*", md)
    print(f"{ratio.group(0)}\n[{wall:.0f} s in this guest; {steps.group(0) if steps else ''}]")
    print("\n".join(line for line in printed.err.splitlines() if line.startswith("[reproduce")))
