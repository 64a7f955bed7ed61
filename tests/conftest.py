"""Shared fixtures: embedded shm memory nodes and connected transport contexts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
