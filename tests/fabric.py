"""Memory nodes of either transport, for the suites that run over both (the transport
conformance suite, the index model and concurrency suites).

A :class:`Fabric` is a transport under test: ``shm`` (regions owned by the test process, the
host's default) or ``verbs`` (memory-node processes serving a registered region on an RDMA
device: SoftRoCE rxe0 in the qemu guest of .ci/rdma-tests). conftest.py's ``fabric`` fixture
hands out one per transport; the verbs one is marked ``rdma`` and skipped where no device
exists. Tests written against a fabric run unchanged over both: they start nodes with
:meth:`Fabric.start_node`, connect with :meth:`Fabric.connect`, run client processes from
:attr:`Fabric.mp` and size their work with :meth:`Fabric.pick`.

A verbs fabric may also put its memory nodes on one device and its clients on another
(:class:`Endpoint`): the guest's two-hosts set-up, where every packet crosses a veth link
(transport/softroce/guest-two-hosts-setup.sh; conftest's ``two_hosts_fabric``).
"""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing as mp
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvdm.transport import DMContext, ShmMemoryNode, TransportConfig, connect, rdma_devices

T = TypeVar("T")


DEVICE = os.environ.get("SOFTROCE_DEV") or (rdma_devices() or ["rxe0"])[0]
GID_INDEX = os.environ.get("SOFTROCE_GID_INDEX")
NO_RDMA = "no RDMA device here (run .ci/rdma-tests: SoftRoCE guest)"
NO_TWO_HOSTS = "no two-hosts set-up here (run .ci/rdma-tests: run-in-guest.sh --two-hosts)"
START_TIMEOUT = 180.0  # seconds for a node to print its URI: interpreter starts are slow under TCG
_serial = itertools.count()


class VerbsNode:
    """A verbs memory node in its own process, serving ``uri`` until :meth:`stop`; its log
    (stderr) goes to ``log``."""

    def __init__(self, uri: str, log: Path, pid: int, proc: subprocess.Popen[str] | None = None) -> None:
        self.uri, self.log, self.pid, self._proc = uri, log, pid, proc
        self.returncode: int | None = None

    @property
    def port(self) -> int:
        return int(re.search(r":(\d+)\?", self.uri).group(1))  # type: ignore[union-attr]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def poll(self) -> int | None:
        """The exit status once the process has ended, else None."""
        if self.returncode is None:
            if self._proc is not None:
                self.returncode = self._proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` (if still running) and reap the process; returns its exit status."""
        if self.poll() is None:
            os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while self.poll() is None:
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def destroy(self) -> None:
        """Stop the node (the name ShmMemoryNode uses)."""
        self.stop()

    def __enter__(self) -> VerbsNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Endpoint:
    """One side of a verbs connection: an RDMA device, its GID index and its IP address (with
    the netdev carrying it, whose packet counters show what crossed the link)."""

    device: str
    gid_index: int | None
    ip: str
    netdev: str | None = None

    def query(self) -> str:
        """The device part of a verbs URI for a client on this side."""
        return f"dev={self.device}" + (f"&gid={self.gid_index}" if self.gid_index is not None else "")


LOCAL = Endpoint(DEVICE, int(GID_INDEX) if GID_INDEX else None, "127.0.0.1")


def two_hosts() -> tuple[Endpoint, Endpoint] | None:
    """(memory-node side, client side) of the guest's two-hosts set-up, from the TWOHOST_*
    variables guest-two-hosts-setup.sh exports; None where it was not made."""
    def side(name: str) -> Endpoint:
        env = {k: os.environ[f"TWOHOST_{name}_{k}"] for k in ("DEV", "GID", "IP", "NETDEV")}
        return Endpoint(env["DEV"], int(env["GID"]), env["IP"], env["NETDEV"])

    try:
        return side("SRV"), side("CLI")
    except KeyError:
        return None


def client_uri(uri: str, client: Endpoint) -> str:
    """A node's URI (as it prints it: its own device) with ``client``'s device and GID instead."""
    return uri.split("?", 1)[0] + "?" + client.query() + "&ib_port=1"


def _await_uri(stream: Any, what: str, log: Path, kill: Any) -> str:
    ready, _, _ = select.select([stream], [], [], START_TIMEOUT)
    line = stream.readline() if ready else ""
    m = re.search(r"serving (verbs://\S+)", line)
    if not m:
        kill()
        raise AssertionError(f"{what} did not start: {line!r}\n{log.read_text(errors='replace')}")
    return m.group(1)


def serve_args(node_id: int, size: int) -> list[str]:
    """`kvdm memnode serve` arguments for a verbs node on this machine's test device."""
    args = ["--transport", "verbs", "--size", str(size),
            "--node-id", str(node_id), "--device", DEVICE, "--port", "0", "--listen", "127.0.0.1"]
    return args + (["--gid-index", GID_INDEX] if GID_INDEX else [])


def start_verbs_node_cli(tmp: Path, node_id: int = 0, size: int = 64 << 20) -> VerbsNode:
    """``kvdm memnode serve --transport verbs`` as a child process, exactly as a user runs it
    (a fresh interpreter importing the whole CLI: tens of seconds under TCG)."""
    log = tmp / f"memnode-{node_id}-{next(_serial)}.log"
    cmd = [sys.executable, "-m", "kvdm.experiments.cli", "memnode", "serve", *serve_args(node_id, size)]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None

    def kill() -> None:
        proc.kill()
        proc.wait()

    uri = _await_uri(proc.stdout, f"`{' '.join(cmd[2:])}`", log, kill)
    return VerbsNode(uri, log, proc.pid, proc)


def fork_verbs_node(tmp: Path, node_id: int = 0, size: int = 64 << 20, server: Endpoint = LOCAL,
                    client: Endpoint | None = None) -> VerbsNode:
    """The same memory node (``kvdm memnode serve``'s own ``serve``), forked from this process: no interpreter
    start, so cheap enough for a fresh node per test under TCG. The child closes every
    descriptor it inherited, so it holds no client connection or device handle of ours.
    It serves on ``server``'s device, GID and address; with ``client`` the returned URI names
    that side's device and GID, so clients attach from there."""
    from kvdm.transport import serve_memory_node

    log = tmp / f"memnode-{node_id}-{next(_serial)}.log"
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the node; never returns into the test process
        code = 70
        try:
            # What the test process left for its GC (a DMContext, ...) is never finalized here: it
            # would close descriptor numbers that closerange() frees and the node then reuses.
            gc.freeze()
            os.dup2(w, 1)
            os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (lives until _exit)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # serve() installs its own stop handlers
            logging.getLogger().handlers.clear()  # pytest's (their files are closed): serve() sets its own
            code = serve_memory_node("verbs", size, node_id, device=server.device, gid_index=server.gid_index,
                                     port=0, listen=server.ip)
        except BaseException:  # noqa: BLE001 (reported in the node's log, then exit)
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with open(r) as out:
        uri = _await_uri(out, f"forked memory node {node_id}", log,
                         lambda: (os.kill(pid, signal.SIGKILL), os.waitpid(pid, 0)))
    return VerbsNode(client_uri(uri, client) if client else uri, log, pid)


Node = ShmMemoryNode | VerbsNode  # what Fabric.start_node returns: both have .uri and .destroy()

FORK = mp.get_context("fork")    # no interpreter start per child: each costs seconds under TCG
SPAWN = mp.get_context("spawn")  # fresh children, as the host suites always had


@dataclass
class Fabric:
    """One transport under test: how to start memory nodes, connect clients and run client
    processes over it, and how much work its tests can afford."""

    name: str  # "shm" or "verbs"
    tmp: Path  # logs of verbs memory nodes
    server: Endpoint = LOCAL  # verbs: where memory nodes serve
    client: Endpoint | None = None  # verbs: where clients attach from (None: the node's device)

    @property
    def mp(self) -> Any:
        """The multiprocessing context for client processes."""
        return SPAWN if self.name == "shm" else FORK

    def pick(self, shm: T, verbs: T) -> T:
        """A work size: the host's full one, or a reduced one for verbs under emulation."""
        return shm if self.name == "shm" else verbs

    def start_node(self, size: int = 64 << 20, node_id: int = 0) -> Node:
        """A fresh memory node (a context manager; ``destroy()`` stops it)."""
        if self.name == "shm":
            return ShmMemoryNode(size, node_id=node_id)
        return fork_verbs_node(self.tmp, node_id, size, self.server, self.client)

    def config(self, **options: Any) -> TransportConfig:
        return TransportConfig(transport=self.name, **options)

    def connect(self, uris: list[str], **options: Any) -> DMContext:
        """A client context on ``uris``; ``options`` are TransportConfig fields."""
        return connect(self.config(**options), uris)
