"""The replay engine: a trace's operation stream driven through any index by N client processes.

Requests are dealt round-robin to the clients (request r goes to client r mod N), so each
client keeps trace order among its own requests. Modes:

* ``closed``: every client issues its operations back to back (as fast as it can);
* ``realtime``: request r is issued at its trace timestamp (wall clock since the start);
* ``compressed:X``: at timestamp / X.

An operation's latency is its service time; with latency model ``virtual`` its modelled network
time (``virtual_ns``) replaces the transport's own execution of its verbs (``exec_ns``: on shm the
emulated NIC's work; ``kvdm.transport.virtual_charge``). With the C loop (``--driver auto``, the
default, for the native indexes and Redis) every op is run and timed in C (Redis: a hiredis
client speaking the redis-py path's protocol). With ``--driver python`` the service time is the
backend's own (``Index.last_call_ns``: the C call of a native index, without the Python wrapper,
the numpy result handling and the hit check) where the backend measures it, else the harness's
clock around the whole index call (redis-py, whose client library is part of the cost; dict). Operations
are binned by *trace* time (``bin_min`` minutes, 10 as in the paper); bins that start before
``warmup_min`` are reported but left out of the whole-run rows (bin -1). Each client keeps raw
per-op latencies; the parent builds and merges histograms from them (never percentiles).
Ctrl-C stops the clients after their current request and still writes what was measured.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from kvdm.index import IndexSpec, backend, open_spec, remote_memory
from kvdm.traces import TraceOptions
from kvdm.transport import TransportConfig, connect, memory_nodes, virtual_charge

from ..errors import CommandFailed
from .metrics import Histogram
from .results import RunResults, machine_description, row_key

PROGRESS_EVERY_S = 0.25
START_TIMEOUT_S = 900.0  # clients wait this long at the start barrier for the slowest to be ready


@contextmanager
def backend_session(index: IndexSpec, transport: TransportConfig) -> Iterator[tuple[list[str], IndexSpec]]:
    """What every client of a run shares, for the duration of the block: the memory nodes of a
    remote-memory index (embedded ones unless the config names some), or what the backend's
    session starts (the Redis server(s), unless a URL is given). Yields the node URIs and the
    IndexSpec clients should open."""
    entry = backend(index.name)
    with ExitStack() as stack:
        uris = stack.enter_context(memory_nodes(transport)) if entry.remote_memory else []
        session = entry.session_manager()
        if session is not None:
            index = replace(index, options=stack.enter_context(session(index.options)))
        yield uris, index


def open_client(index: IndexSpec, transport: TransportConfig, uris: list[str]) -> Any:
    """One client's handle on the run's index (a remote-memory index gets its own transport
    context)."""
    return open_spec(index, connect(transport, uris) if remote_memory(index.name) else None)


def parse_mode(mode: str) -> float:
    """Speed-up factor of a mode: 0 for closed loop, 1 for real time, X for compressed:X."""
    if mode == "closed":
        return 0.0
    if mode == "realtime":
        return 1.0
    if mode.startswith("compressed:"):
        try:
            x = float(mode.split(":", 1)[1])
        except ValueError:
            x = -1.0
        if x > 0:
            return x
    raise ValueError(f"unknown mode {mode!r}; valid: closed, realtime, compressed:X (X > 0, e.g. compressed:10)")


@dataclass
class ReplayConfig:
    """Everything a replay needs; stored with its results."""

    trace: str = "conversation"
    index: IndexSpec = field(default_factory=IndexSpec)
    transport: TransportConfig = field(default_factory=TransportConfig)
    clients: int = 1
    mapping: str = "paper"
    key_scheme: str = "id"
    inserts: str = "timed"
    mode: str = "closed"
    duration_s: float = 0.0      # stop after this much wall time (0 = the whole trace)
    warmup_min: float = 0.0
    bin_min: float = 10.0
    name: str = ""
    driver: str = "auto"         # auto: the backend's C loop where it has one (native indexes), else Python
    range_semantics: str = "bounds"  # paper mapping: what a range op over a run asks (kvdm.traces.mapping)
    launcher: str = "local"      # local: client processes on this host; mpi: the ranks of an MPI job (launch_mpi)
    tokens: bool = False         # token level: prompts synthesised from hash_ids, keyed per chunk (kvdm.traces.tokens)
    chunk_tokens: int = 0        # token level: tokens per chunk (0 = the trace's block size)
    trace_options: TraceOptions = field(default_factory=TraceOptions)  # how the trace file is read

    def __post_init__(self) -> None:
        parse_mode(self.mode)
        if self.tokens:
            from kvdm.index import TOKEN_KEY_SCHEMES

            if self.key_scheme not in TOKEN_KEY_SCHEMES:
                raise ValueError(f"--tokens keys chunks by a hash of their tokens: --key-scheme "
                                 f"{' or '.join(TOKEN_KEY_SCHEMES)}, not {self.key_scheme}")
            if self.mapping != "prefix":
                raise ValueError("--tokens replays the engine's view: a prefix match per prompt, then an insert "
                                 "(--mapping prefix), not --mapping " + self.mapping)
            if self.chunk_tokens < 0:
                raise ValueError(f"--tokens: the chunk size must be a count of tokens, got {self.chunk_tokens}")
        if self.clients < 1:
            raise ValueError("--clients must be >= 1")
        if self.bin_min <= 0:
            raise ValueError("--bin-min must be > 0")
        if self.duration_s < 0 or self.warmup_min < 0:
            raise ValueError("--duration and --warmup-min must be >= 0")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r}; valid: {', '.join(LAUNCHERS)}")
        if self.driver not in DRIVERS:
            raise ValueError(f"unknown driver {self.driver!r}; valid: {', '.join(DRIVERS)}")

    def describe(self) -> list[tuple[str, str]]:
        """The config echo every run prints."""
        t = self.transport
        native = remote_memory(self.index.name)
        return [
            ("backend", self.index.name + (f" {self.index.options}" if self.index.options else "")),
            ("transport", t.describe() if native else "n/a (not a remote-memory index)"),
            ("clients", f"{self.clients} {'MPI ranks' if self.launcher == 'mpi' else 'processes'}, measuring loop: "
                        f"{self.driver}"),
            ("trace", self.trace),
            ("mapping", f"{self.mapping}, inserts {self.inserts}"
                        + (f", ranges: {self.range_semantics}" if self.mapping == "paper" else "")),
            ("keys", f"{self.key_scheme} ({self.index.key_bytes} B)"
                     + (f" of {f'{self.chunk_tokens}-token' if self.chunk_tokens else 'block-size'} chunks of "
                        "prompts synthesised from hash_ids" if self.tokens else "")),
            ("mode", self.mode + (f", stop after {self.duration_s:g} s" if self.duration_s else "")),
            ("bins", f"{self.bin_min:g} min of trace time, warm-up {self.warmup_min:g} min"),
        ]


@dataclass
class ClientResult:
    """What one client measured."""

    client: int
    ops: np.ndarray          # int64: stream op indices executed, in order
    latency_ns: np.ndarray   # int64: per executed op
    hits: np.ndarray         # int64: per executed op (-1 = not checked)
    counters: dict[tuple[int, int], dict[str, int]]  # (bin, kind) -> summed counter deltas
    wall_s: float
    requests_done: int
    max_lag_ms: float
    error: str = ""
    started: float = 0.0     # time.time() when it passed the start barrier
    ended: float = 0.0


def load_stream(cfg: ReplayConfig, trace: Any = None) -> Any:
    """The operation stream of ``cfg``'s trace (loaded with ``cfg.trace_options`` unless given)."""
    from kvdm.traces import load, map_trace

    trace = load(cfg.trace, cfg.trace_options) if trace is None else trace
    if cfg.tokens:
        from kvdm.index import ChunkKeys
        from kvdm.traces import token_stream

        keyer = ChunkKeys(cfg.chunk_tokens or trace.block_tokens, cfg.key_scheme, partial_chunks=True)
        stream, info = token_stream(trace, keyer, cfg.inserts)
        stream.tokens = info
        return stream
    return map_trace(trace, cfg.mapping, cfg.key_scheme, cfg.inserts, range_semantics=cfg.range_semantics)


def _op_hits(index: Any, stream: Any, j: int, kind: int, keys: np.ndarray) -> int:
    """Run op j against ``index``; returns the hits it saw (-1 for inserts)."""
    from kvdm.traces import OP_GET, OP_INSERT, OP_PREFIX, OP_RANGE

    if kind == OP_GET:
        return int(index.get(keys)[1].sum())
    if kind == OP_PREFIX:
        return int(index.prefix_match(keys))
    if kind == OP_RANGE:
        got, _ = index.range(stream.range_lo[j], stream.range_hi[j], int(stream.range_limit[j]))
        if keys.ndim == 1:
            return int(np.isin(keys, got).sum())
        view = np.dtype((np.void, keys.shape[1]))
        return int(np.isin(keys.view(view).ravel(), got.view(view).ravel()).sum())
    if kind == OP_INSERT:
        index.put(keys, stream.key_block[stream.key_offsets[j]:stream.key_offsets[j + 1]].astype(np.uint64))
        return -1
    raise ValueError(f"unknown op kind {kind}")


def _client_main(cfg: ReplayConfig, client: int, uris: list[str], stream: Any, start: Any,
                 stop: Any, progress: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    results.put(client_run(cfg, client, uris, stream, start, stop, progress))


def client_run(cfg: ReplayConfig, client: int, uris: list[str], stream: Any, start: Any, stop: Any,
               progress: Any) -> ClientResult:
    """One client, start to end: open the index, run its share, close; a failure becomes the
    result's ``error`` (and releases the others from ``start``). Any launcher's client body."""
    try:
        index = open_client(cfg.index, cfg.transport, uris)
        if needs_preload(stream) and backend(cfg.index.name).per_client:
            preload(index, stream)  # a private index must be filled by its own client
        res = run_client(cfg, client, index, stream, start, stop, progress)
        index.close()
        return res
    except Exception as exc:  # reported by the parent with the client's number
        start.abort()  # release the others from the start barrier
        error = "another client failed before the start" if isinstance(exc, threading.BrokenBarrierError) \
            else f"{type(exc).__name__}: {exc}"
        return ClientResult(client, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), {}, 0.0, 0,
                            0.0, error=error)


DRIVERS = ("auto", "c", "python")
LAUNCHERS = ("local", "mpi")
CHUNK_REQUESTS = 128  # closed loop: requests per measuring call (stop, deadline and progress are checked between)


def ops_of_requests(stream: Any, reqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The op ids of requests ``reqs`` in order, each op's request, and after each request how
    many of those ops it completes (the cumulative count)."""
    starts, ends = stream.req_offsets[reqs], stream.req_offsets[reqs + 1]
    lengths = (ends - starts).astype(np.int64)
    done_after = np.cumsum(lengths)
    first = done_after - lengths
    op_req = np.repeat(reqs, lengths)
    op_ids = np.arange(int(done_after[-1]) if lengths.size else 0, dtype=np.int64) - np.repeat(first, lengths) \
        + np.repeat(starts, lengths)
    return op_ids, op_req, done_after


def use_c_driver(cfg: Any, index: Any) -> bool:
    """Whether a client runs its ops through the backend's C loop (``cfg.driver``; any config
    with ``driver`` and ``index``)."""
    has = callable(getattr(index, "drive", None))
    if cfg.driver == "c" and not has:
        raise ValueError(f"--driver c: the {cfg.index.name} backend has no C loop (the native indexes and "
                         "Redis have one); use --driver auto or python")
    return has and cfg.driver != "python"


class _Measure:
    """Runs ops and accumulates per-(bin, kind) counter sums, through the backend's C loop
    (``Index.drive``) or op by op in Python."""

    def __init__(self, cfg: ReplayConfig, index: Any, stream: Any) -> None:
        self.index, self.stream = index, stream
        self.c_loop = use_c_driver(cfg, index)
        self.virtual = cfg.transport.latency_model == "virtual" and remote_memory(cfg.index.name)
        self.names = index.counter_names()
        self.charge = virtual_charge(self.names) if self.virtual else None
        self.sums: dict[tuple[int, int], np.ndarray] = {}
        self.prev = index.counter_vector()

    def _add(self, key: tuple[int, int], delta: np.ndarray) -> None:
        acc = self.sums.get(key)
        if acc is None:
            self.sums[key] = delta.copy()
        else:
            acc += delta

    def run(self, op_ids: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latency (ns) and hits of each op."""
        kinds = self.stream.kind[op_ids].astype(np.int64)
        if self.c_loop:
            uniq, groups = np.unique(bins * 4 + kinds, return_inverse=True)
            lat, hits, acc = self.index.drive(self.stream, op_ids, groups, len(uniq), self.virtual)
            for g, u in enumerate(uniq.tolist()):
                self._add((u // 4, u % 4), acc[g])
            return lat, hits
        return self._run_python(op_ids, bins, kinds)

    def _run_python(self, op_ids: np.ndarray, bins: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index, stream = self.index, self.stream
        lat = np.empty(op_ids.size, np.int64)
        hits = np.empty(op_ids.size, np.int64)
        clock = time.perf_counter_ns
        for i, (j, b, kind) in enumerate(zip(op_ids.tolist(), bins.tolist(), kinds.tolist(), strict=True)):
            keys = stream.keys[stream.key_offsets[j]:stream.key_offsets[j + 1]]
            index.last_call_ns = None
            t_start = clock()
            h = _op_hits(index, stream, j, kind, keys)
            elapsed = clock() - t_start
            if index.last_call_ns is not None:  # the backend's own time, without the harness
                elapsed = index.last_call_ns
            cur = index.counter_vector()
            delta = cur - self.prev
            self.prev = cur
            if self.charge:
                elapsed += self.charge(delta)
            self._add((b, kind), delta)
            lat[i], hits[i] = elapsed, h
        return lat, hits

    def counters(self) -> dict[tuple[int, int], dict[str, int]]:
        return {key: dict(zip(self.names, v.tolist(), strict=True)) for key, v in self.sums.items()}


def run_client(cfg: ReplayConfig, client: int, index: Any, stream: Any, start: Any, stop: Any,
               progress: Any) -> ClientResult:
    """Execute this client's share of the stream; the measuring loop. ``start`` is a barrier
    shared by the clients (``start.wait()`` returns when all are ready), so their loads
    overlap. Closed loop runs CHUNK_REQUESTS requests per call; timed modes wait for each
    request's due time."""
    speed = parse_mode(cfg.mode)
    measure = _Measure(cfg, index, stream)
    reqs = np.arange(client, stream.n_requests, cfg.clients)
    all_ops, all_req, req_end = ops_of_requests(stream, reqs)
    req_bin = (stream.req_timestamp_ms // (cfg.bin_min * 60_000.0)).astype(np.int64)
    lat = np.empty(all_ops.size, np.int64)
    hits = np.empty(all_ops.size, np.int64)
    done = 0
    max_lag = 0.0
    last_report = 0.0
    start.wait(START_TIMEOUT_S)
    started = time.time()
    t0 = time.perf_counter()
    deadline = t0 + cfg.duration_s if cfg.duration_s > 0 else float("inf")
    requests_done = 0
    step = 1 if speed > 0 else CHUNK_REQUESTS
    while requests_done < reqs.size and not stop.is_set():
        now = time.perf_counter()
        if now >= deadline:
            break
        if speed > 0:
            due = t0 + float(stream.req_timestamp_ms[reqs[requests_done]]) / 1000.0 / speed
            if due > now and stop.wait(due - now):
                break
            max_lag = max(max_lag, (time.perf_counter() - due) * 1e3)
        upto = min(requests_done + step, reqs.size)
        end = int(req_end[upto - 1])
        op_ids = all_ops[done:end]
        lat[done:end], hits[done:end] = measure.run(op_ids, req_bin[all_req[done:end]])
        done, requests_done = end, upto
        now = time.perf_counter()
        if now - last_report >= PROGRESS_EVERY_S:
            last_report = now
            window = lat[max(0, done - 2000):done]
            p99 = float(np.percentile(window, 99)) if window.size else 0.0
            progress.put((client, requests_done, done, p99))
    wall = time.perf_counter() - t0
    progress.put((client, requests_done, done, 0.0))
    return ClientResult(client, all_ops[:done], lat[:done], hits[:done], measure.counters(), wall, requests_done,
                        max_lag, started=started, ended=time.time())


class Progress:
    """One status line on stderr: requests done, ops/s, recent p99."""

    def __init__(self, total_requests: int, clients: int, start_at: float) -> None:
        self.total = total_requests
        self.start_at = start_at  # wall-clock time the clients begin
        self.reqs = [0] * clients
        self.ops = [0] * clients
        self.p99 = [0.0] * clients
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0

    def update(self, client: int, reqs: int, ops: int, p99: float) -> None:
        self.reqs[client], self.ops[client] = reqs, ops
        if p99:
            self.p99[client] = p99

    def show(self, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and not self.tty and now - self.last_line < 5.0:
            return
        self.last_line = now
        el = time.time() - self.start_at
        if el <= 0:
            return
        line = (f"[replay] {sum(self.reqs):,}/{self.total:,} requests  {sum(self.ops) / el:,.0f} ops/s  "
                f"recent p99 {max(self.p99) / 1e3:,.1f} us  {el:,.0f} s")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line + end, file=sys.stderr, end="", flush=True)


@contextmanager
def shared_backend(cfg: ReplayConfig, stream: Any, quiet: bool = False) -> Iterator[tuple[ReplayConfig, list[str]]]:
    """What the clients of a run share, ready for them for the duration of the block: the
    backend session (memory nodes, Redis), the index created (a native index's root exists
    before any client attaches), the keys preloaded for ``--inserts none``. Yields the config
    with the session's IndexSpec and the memory-node URIs. Used by every launcher."""
    if stream.key_bytes != cfg.index.key_bytes:
        raise ValueError(f"key scheme {cfg.key_scheme} has {stream.key_bytes} B keys but the index was opened "
                         f"for {cfg.index.key_bytes} B")
    if backend(cfg.index.name).per_client and cfg.clients > 1 and not quiet:
        print(f"kvdm: note: the {cfg.index.name} backend is private to each client process: with several "
              "clients each sees only its own inserts", file=sys.stderr)
    with backend_session(cfg.index, cfg.transport) as (uris, shared):
        cfg = replace(cfg, index=shared)
        owner = None
        entry = backend(cfg.index.name)
        if entry.remote_memory:  # create the index (and its root) before the clients attach to it
            owner = open_client(cfg.index, cfg.transport, uris)
            from kvdm.traces import OP_RANGE

            if not owner.ordered and bool((stream.kind == OP_RANGE).any()):
                owner.close()
                raise ValueError(f"{cfg.index.name} keeps no key order, but the {cfg.mapping} mapping issues range "
                                 "queries: use --mapping prefix, or an ordered index (chime, sherman)")
        elif not entry.per_client:
            open_spec(cfg.index).close()  # fail early (e.g. an unreachable server)
        try:
            if needs_preload(stream) and not entry.per_client:
                with open_client(cfg.index, cfg.transport, uris) as index:
                    preload(index, stream)
            yield cfg, uris
        finally:
            if owner is not None:
                owner.close()


class LocalReplay:
    """A replay whose clients are processes on this host, phase by phase:

    1. ``shared_backend``: the backend session, the index created, the preload;
    2. :meth:`start_clients`: one spawned process per client, held at a start barrier;
    3. :meth:`collect`: their results, with progress; Ctrl-C stops them after their current
       chunk of requests and keeps what they measured;
    4. :meth:`stop_clients`: join them (terminate a straggler);
    5. ``finish``: the merged results (or what failed).

    ``kvdm.experiments.replay.launch_mpi`` runs the same phases with MPI ranks as the clients."""

    def __init__(self, cfg: ReplayConfig, stream: Any = None, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.stream = load_stream(cfg) if stream is None else stream
        self.mpc = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.interrupted = False

    def run(self) -> RunResults:
        """Every phase; returns the results (the caller writes them)."""
        with shared_backend(self.cfg, self.stream, self.quiet) as (cfg, uris):
            self.start_clients(cfg, uris)
            try:
                collected = self.collect(cfg)
            finally:
                self.stop_clients()
        return finish(cfg, self.stream, collected, self.interrupted)

    def start_clients(self, cfg: ReplayConfig, uris: list[str]) -> None:
        mpc = self.mpc
        self.stop, self.progress_q, self.results_q = mpc.Event(), mpc.Queue(), mpc.Queue()
        self.start = mpc.Barrier(cfg.clients)
        self.prog = Progress(self.stream.n_requests, cfg.clients, time.time())
        self.procs = [mpc.Process(target=_client_main, daemon=True,
                                  args=(cfg, c, uris, self.stream, self.start, self.stop, self.progress_q,
                                        self.results_q)) for c in range(cfg.clients)]
        for p in self.procs:
            p.start()

    def collect(self, cfg: ReplayConfig) -> list[ClientResult]:
        """Every client's result (those that reported, after Ctrl-C), showing progress."""
        collected: list[ClientResult] = []
        try:
            while len(collected) < cfg.clients:
                self._show()
                try:
                    collected.append(self.results_q.get(timeout=0.2))
                except queue.Empty:
                    if any(p.exitcode for p in self.procs):
                        self.start.abort()  # a client crashed: do not keep the others at the start barrier
                    if not any(p.is_alive() for p in self.procs) and self.results_q.empty():
                        raise CommandFailed("a replay client died without reporting (see its error above)") from None
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.set()
            self.start.abort()
            print("\nkvdm: interrupted: stopping the clients and writing what was measured", file=sys.stderr)
            while len(collected) < cfg.clients:
                try:
                    collected.append(self.results_q.get(timeout=30))
                except queue.Empty:
                    break
        self._show(final=True)
        return collected

    def _show(self, final: bool = False) -> None:
        _drain(self.progress_q, self.prog)
        if not self.quiet:
            self.prog.show(final=final)

    def stop_clients(self) -> None:
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


def replay(cfg: ReplayConfig, stream: Any = None, quiet: bool = False) -> RunResults:
    """Run a replay with its clients as local processes (:class:`LocalReplay`) and return its
    results (the caller writes them)."""
    return LocalReplay(cfg, stream, quiet).run()


def client_errors(collected: list[ClientResult]) -> str:
    """"" when every client ran, else the failures, by client number."""
    errors = [f"client {c.client}: {c.error}" for c in sorted(collected, key=lambda c: c.client) if c.error]
    return "replay failed: " + "; ".join(errors) if errors else ""


def finish(cfg: ReplayConfig, stream: Any, collected: list[ClientResult], interrupted: bool) -> RunResults:
    """The run's results from every client's, or CommandFailed naming the clients that failed."""
    errors = client_errors(collected)
    if errors:
        raise CommandFailed(errors)
    return summarise(cfg, stream, collected, interrupted)


def _drain(q: Any, prog: Progress) -> None:
    while True:
        try:
            prog.update(*q.get_nowait())
        except queue.Empty:
            return


def needs_preload(stream: Any) -> bool:
    """Whether the stream issues no inserts and expects every key to be present beforehand."""
    return bool(stream.preload_keys.size) and stream.inserts == "none"


def preload(index: Any, stream: Any) -> None:
    """Put every key of the stream (``--inserts none``)."""
    keys = stream.preload_keys
    for i in range(0, len(keys), 4096):
        chunk = keys[i:i + 4096]
        index.put(chunk, np.arange(i, i + len(chunk), dtype=np.uint64))


def summarise(cfg: ReplayConfig, stream: Any, clients: list[ClientResult], interrupted: bool = False) -> RunResults:
    """Merge the clients' measurements into per-(bin, op) rows and histograms."""
    from kvdm.traces import OP_NAMES

    ops = np.concatenate([c.ops for c in clients]) if clients else np.zeros(0, np.int64)
    lat = np.concatenate([c.latency_ns for c in clients]) if clients else np.zeros(0, np.int64)
    hits = np.concatenate([c.hits for c in clients]) if clients else np.zeros(0, np.int64)
    # rates over the span from the first start to the last end, whatever the clients' overlap
    ran = [c for c in clients if c.ended]
    wall = (max(c.ended for c in ran) - min(c.started for c in ran)) if ran else 0.0
    wall = wall or 1e-9
    start_skew = (max(c.started for c in ran) - min(c.started for c in ran)) if ran else 0.0
    # share of the clients' time spent inside index ops: the rest is the harness (meaningless
    # when latencies carry modelled time that was never waited for)
    busy = sum(c.wall_s for c in ran)
    in_ops_share = None if cfg.transport.latency_model == "virtual" or not busy else float(lat.sum()) / 1e9 / busy
    req_of_op = np.repeat(np.arange(stream.n_requests), np.diff(stream.req_offsets))
    ts = stream.req_timestamp_ms[req_of_op[ops]]
    bin_ms = cfg.bin_min * 60_000.0
    bins = (ts // bin_ms).astype(np.int64)
    kinds = stream.kind[ops].astype(np.int64)
    timed = stream.timed[ops]
    blocks = np.diff(stream.key_offsets)[ops]
    expected = stream.expected_hits[ops]
    warmup_ms = cfg.warmup_min * 60_000.0
    warm = bins * bin_ms < warmup_ms
    counter_sums: dict[tuple[int, int], dict[str, int]] = {}
    for c in clients:
        for key, d in c.counters.items():
            add_counts(counter_sums.setdefault(key, {}), d)
    rows: list[dict[str, Any]] = []
    hists: dict[str, Histogram] = {}
    groups = [(int(b), int(k)) for b, k in sorted(set(zip(bins.tolist(), kinds.tolist(), strict=True)))]
    for b, k in groups + [(-1, k) for k in sorted(set(kinds.tolist()))]:
        if b >= 0:
            m = (bins == b) & (kinds == k) & timed
            cnt = counter_sums.get((b, k), {})
        else:  # the whole measured period: every bin but the warm-up ones
            m = (~warm) & (kinds == k) & timed
            cnt = {}
            for (bb, kind), d in counter_sums.items():
                if kind == k and not bb * bin_ms < warmup_ms:
                    add_counts(cnt, d)
        n = int(m.sum())
        if n == 0:
            continue
        h = Histogram()
        h.record(lat[m])
        hists[row_key(b, OP_NAMES[k])] = h
        checked = m & (hits >= 0)
        n_blocks = int(blocks[m].sum())
        row = {
            "run": cfg.name, "index": cfg.index.name, "bin": b,
            "bin_start_min": b * cfg.bin_min if b >= 0 else -1.0,
            "warmup": bool(b >= 0 and b * bin_ms < warmup_ms), "op": OP_NAMES[k],
            "ops": n, "blocks": n_blocks,
            "p50_us": h.percentile(50) / 1e3, "p90_us": h.percentile(90) / 1e3,
            "p99_us": h.percentile(99) / 1e3, "p999_us": h.percentile(99.9) / 1e3,
            "mean_us": h.mean_ns / 1e3, "max_us": h.max_ns / 1e3,
            "ops_per_s": n / wall, "block_ops_per_s": n_blocks / wall,  # over the whole run's wall time
            "hits": int(hits[checked].sum()), "expected_hits": int(expected[checked].sum()),
            "hit_mismatch": int((hits[checked] != expected[checked]).sum()),
        }
        for kk, v in sorted(cnt.items()):
            row[f"{kk}_per_op"] = v / n
        rows.append(row)
    import pandas as pd  # not at the top: a client process never needs it (results.py says why)

    df = pd.DataFrame(rows)
    meta: dict[str, Any] = {
        "config": _config_dict(cfg),
        "machine": machine_description(),
        "trace": {"name": cfg.trace, "requests": stream.n_requests, "ops": stream.n_ops,
                  "summary": stream.summary()},
        "run": {"wall_s": wall, "start_skew_s": start_skew, "in_ops_share": in_ops_share,
                "requests_done": sum(c.requests_done for c in clients),
                "ops_done": int(ops.size), "interrupted": interrupted,
                "max_lag_ms": max((c.max_lag_ms for c in clients), default=0.0), "pid": os.getpid()},
    }
    if stream.tokens is not None:
        meta["tokens"] = token_summary(stream, ops, hits, req_of_op)
    return RunResults(df, meta, hists)


def token_summary(stream: Any, ops: np.ndarray, hits: np.ndarray, req_of_op: np.ndarray) -> dict[str, Any]:
    """A token-level run's hits in tokens, over the requests whose prefix match ran, beside the
    block-level ground truth of the same requests (equal when chunks are blocks)."""
    from kvdm.traces import OP_PREFIX

    info = stream.tokens
    pm = stream.kind[ops] == OP_PREFIX
    req = req_of_op[ops[pm]]
    got = info.hit_tokens(req, hits[pm])
    truth = info.block_hit_tokens[req]
    prompt = int(info.prompt_tokens[req].sum())
    return {"chunk_tokens": info.chunk, "key_scheme": info.key_scheme, "block_tokens": info.block,
            "prompts": int(req.size), "prompt_tokens": prompt, "hit_tokens": int(got.sum()),
            "hit_ratio": float(got.sum()) / prompt if prompt else 0.0,
            "block_truth_hit_tokens": int(truth.sum()), "prompts_differing": int((got != truth).sum()),
            "length_mismatch": info.length_mismatch, "hash_s": info.hash_s}


def add_counts(acc: dict[str, int], delta: dict[str, int]) -> None:
    """Add counter values into ``acc``."""
    for k, v in delta.items():
        acc[k] = acc.get(k, 0) + v


def _config_dict(cfg: ReplayConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["echo"] = dict(cfg.describe())
    return d
