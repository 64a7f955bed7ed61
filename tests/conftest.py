"""Shared fixtures: embedded shm memory nodes and connected transport contexts; ``fabric``
(tests/fabric.py): the same tests over shm on the host and over verbs in the SoftRoCE guest;
``two_hosts_fabric``: verbs with the memory nodes on one rxe device and the clients on another,
across a veth link (the guest's two-hosts set-up; test_verbs_two_hosts.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import NO_RDMA, NO_TWO_HOSTS, Fabric, Node, VerbsNode, rdma_devices, two_hosts

from kvdm.transport import DMContext, ShmMemoryNode, TransportConfig, connect

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


@pytest.fixture
def shm_node() -> Iterator[ShmMemoryNode]:
    """One 64 MiB memory node owned by the test process (removed afterwards)."""
    with ShmMemoryNode(64 << 20, node_id=0) as node:
        yield node


@pytest.fixture
def dm(shm_node: ShmMemoryNode) -> Iterator[DMContext]:
    """A client context attached to ``shm_node``."""
    ctx = connect(TransportConfig(), [shm_node.uri])
    yield ctx
    ctx.close()


VERBS = pytest.param("verbs", marks=[pytest.mark.rdma, pytest.mark.skipif(not rdma_devices(), reason=NO_RDMA)])


@pytest.fixture(scope="session", params=["shm", VERBS])
def fabric(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Fabric:
    """The transport under test: shm, and verbs (marked rdma: it runs in the SoftRoCE guest)."""
    return Fabric(request.param, tmp_path_factory.mktemp(f"fabric-{request.param}"))


@pytest.fixture(scope="session")
def two_hosts_fabric(tmp_path_factory: pytest.TempPathFactory) -> Fabric:
    """Verbs with memory nodes served on the node side's device and address and clients attached
    from the client side's device (skips where run-in-guest.sh --two-hosts did not set them up)."""
    sides = two_hosts()
    if sides is None:
        pytest.skip(NO_TWO_HOSTS)
    server, client = sides
    return Fabric("verbs", tmp_path_factory.mktemp("fabric-two-hosts"), server, client)


@pytest.fixture
def fabric_node(fabric: Fabric) -> Iterator[Node]:
    """A fresh 64 MiB memory node of ``fabric``; a verbs node must survive the test."""
    node = fabric.start_node(64 << 20)
    try:
        yield node
        if isinstance(node, VerbsNode):
            assert node.poll() is None, "the memory node died during the test:\n" + node.log_text()
    finally:
        node.destroy()
    if isinstance(node, VerbsNode):
        assert node.returncode == 0, "the memory node did not stop cleanly:\n" + node.log_text()


@pytest.fixture
def fabric_dm(fabric: Fabric, fabric_node: Node) -> Iterator[DMContext]:
    """A client context attached to ``fabric_node``."""
    ctx = fabric.connect([fabric_node.uri])
    yield ctx
    ctx.close()


@pytest.fixture
def shared_traces() -> Path:
    """../shared/traces (skips the test where the folder is absent)."""
    if not (SHARED_TRACES / "conversation_trace.jsonl").exists():
        pytest.skip(f"{SHARED_TRACES} not present")
    return SHARED_TRACES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A test run must leave no region of its own behind (children included).
    leftovers = [f for f in os.listdir("/dev/shm") if f.startswith(f"kvdm-{os.getpid()}-")]
    assert not leftovers, f"memory-node regions left behind: {leftovers}"
