"""``--launcher mpi``: a run's clients as the ranks of an MPI job (``mpirun -np N kvdm replay ...``).

Researchers on RDMA clusters start multi-host jobs with MPI, so kvdm runs under it rather than
bringing a launcher of its own. Every rank is one client; the world size is the client count.

* **Rank 0** reads and maps the trace, opens the run's shared backend as a local run does
  (memory nodes given by ``--memory-node`` URIs, or embedded shm ones it starts for the run;
  the Redis server likewise) and broadcasts the operation stream, the memory-node URIs
  and the backend's options. It is also client 0.
* **Every rank** opens the index and runs the requests ``r`` with ``r mod N == rank``, exactly
  as local client ``rank`` would, in the same measuring loop (:func:`replay.client_run`).
* **Rank 0 merges** the ranks' results with the local path's code (:func:`replay.summarise`):
  one results file, the same rows, histograms and counters as a local run of N clients.

:func:`run_ranks` is the skeleton (set-up on rank 0, a client on every rank, the verdict
broadcast), :func:`replay_mpi` the replay on it.

Failures never leave a rank waiting: rank 0 broadcasts a set-up error to the others; the start
barrier is an all-reduce that tells every rank whether all of them opened the index; the final
status is broadcast, so all ranks exit alike. SIGINT (mpirun forwards Ctrl-C) stops each rank
after its current chunk of requests, and rank 0 still writes what was measured.

Embedded shm memory nodes only reach ranks on rank 0's host; across hosts, give verbs memory
nodes (``--transport verbs --memory-node verbs://HOST:PORT``, started with ``kvdm memnode
serve``). A Redis server rank 0 starts listens on loopback: across hosts, give ``--redis-url``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace
from typing import Any

from ..errors import CommandFailed, UsageError
from .engine import (
    ClientResult,
    Progress,
    ReplayConfig,
    client_errors,
    client_run,
    shared_backend,
    summarise,
)
from .results import RunResults


def world() -> Any:
    """MPI.COMM_WORLD, or a UsageError that says how to get MPI."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise UsageError("--launcher mpi needs mpi4py on an MPI library (Debian: apt-get install openmpi-bin "
                         f"python3-mpi4py; `bash .ci/bootstrap` installs both): {exc}") from None
    return MPI.COMM_WORLD


class _StartBarrier:
    """The start barrier across ranks: an all-reduce of "I am ready", so a rank that failed to
    open the index (``abort``) releases the others with BrokenBarrierError instead of a hang."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.passed = False

    def _vote(self, ready: int) -> bool:
        from mpi4py import MPI

        self.passed = True
        return bool(self.comm.allreduce(ready, op=MPI.MIN))

    def wait(self, timeout: float | None = None) -> None:
        if not self._vote(1):
            raise threading.BrokenBarrierError

    def abort(self) -> None:
        if not self.passed:  # after the start the others are past it: nothing to release
            self._vote(0)


class _RankProgress:
    """Progress of rank 0's own share, shown as the local launcher shows all clients'."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.prog = Progress(total, 1, time.time()) if not quiet else None

    def put(self, item: tuple[int, int, int, float]) -> None:
        if self.prog is not None:
            self.prog.update(0, *item[1:])
            self.prog.show()


class _SetUpFailed(str):
    """What rank 0 broadcasts instead of the shared payload when its set-up failed."""


def run_ranks(setup: Callable[[], AbstractContextManager[Any]], client: Callable[[Any, int, Any], Any],
              judge: Callable[[list[Any]], str]) -> tuple[Any, list[Any]] | None:
    """The MPI skeleton of a run: ``setup()`` (rank 0 only) is a context that yields the payload
    every rank needs (picklable) and stays open while the clients run; ``client(payload, rank,
    start)`` runs on every rank (``start``: the start barrier, with ``wait`` and ``abort``);
    ``judge(results)`` (rank 0) returns "" or what failed, which every rank then raises.
    Returns (payload, every rank's result in rank order) on rank 0, None on the others."""
    comm = world()
    rank = comm.rank
    if rank != 0:
        payload = comm.bcast(None, root=0)
        if isinstance(payload, _SetUpFailed):
            raise CommandFailed(f"rank {rank}: rank 0 could not set the run up: {payload}")
        comm.gather(client(payload, rank, _StartBarrier(comm)), root=0)
        status = comm.bcast(None, root=0)
        if status:
            raise CommandFailed(f"rank {rank}: {status}")
        return None
    with ExitStack() as stack:
        try:
            payload = stack.enter_context(setup())
        except BaseException as exc:
            comm.bcast(_SetUpFailed(str(exc) or type(exc).__name__), root=0)  # the other ranks wait for it
            raise
        comm.bcast(payload, root=0)
        results = comm.gather(client(payload, 0, _StartBarrier(comm)), root=0)
    status = judge(results)
    comm.bcast(status, root=0)
    if status:
        raise CommandFailed(status)
    return payload, results


def replay_mpi(cfg: ReplayConfig, prepare: Callable[[], Any], quiet: bool = False) -> RunResults | None:
    """Run ``cfg`` with the ranks of MPI.COMM_WORLD as its clients. ``prepare`` runs on rank 0
    only, before anything is shared, and returns the operation stream (it may print). Returns
    the merged results on rank 0, None on the other ranks; raises on every rank if the run
    failed."""
    cfg = replace(cfg, clients=world().size)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    @contextmanager
    def setup() -> Iterator[tuple[ReplayConfig, list[str], Any]]:
        stream = prepare()
        with shared_backend(cfg, stream, quiet) as (run_cfg, uris):
            yield run_cfg, uris, stream

    def client(payload: tuple[ReplayConfig, list[str], Any], rank: int, start: Any) -> ClientResult:
        run_cfg, uris, stream = payload
        share = -(-stream.n_requests // run_cfg.clients)
        return client_run(run_cfg, rank, uris, stream, start, stop, _RankProgress(share, quiet or rank != 0))

    got = run_ranks(setup, client, client_errors)
    if got is None:
        return None
    (run_cfg, _, stream), collected = got
    if not quiet:
        done = sum(c.requests_done for c in collected)
        print(f"[replay] {run_cfg.clients} MPI ranks: {done:,}/{stream.n_requests:,} requests", file=sys.stderr)
    return summarise(run_cfg, stream, collected, interrupted=stop.is_set())


__all__ = ["replay_mpi", "run_ranks", "world"]
