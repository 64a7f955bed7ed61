"""Shared fixtures: embedded shm memory nodes and connected transport contexts; ``fabric``
(tests/fabric.py): the same tests over shm on the host and over verbs in the SoftRoCE guest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import NO_RDMA, Fabric, Node, VerbsNode, rdma_devices

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
