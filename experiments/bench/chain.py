"""``kvdm bench index --op chain``: the engine's view of an index, swept over the chain length N.

A serving engine asks two questions per request: "how long is the cached prefix of these N
chained block keys?" (longest prefix match, LPM: ``Index.prefix_match``, one call) and "store
these N new blocks" (chain insert: ``Index.put`` of the N keys, one call). For every chain
length N of ``--chain-lengths`` and every backend of the run this measures both:

* **Workload.** ``--keys`` background keys are preloaded once per backend (so the index has a
  realistic size). Then, per N, ``--chains`` P fresh chains of N distinct keys are built and a
  prefix of each is preloaded: with ``--matched random`` (default) a length drawn uniformly from
  0..N per chain, with ``--matched full`` the whole chain. Presence is prefix-closed, as when an
  engine inserts whole chains, so every strategy (kary included) must answer exactly: the
  matched length of each call is checked against the preloaded truth (``mismatch``; 0 or the
  command fails). Each LPM strategy's handle first runs the P calls once untimed (warm-up: its
  compute-side cache learns the routes to these chains' leaves, fresh after the preload's
  splits; auto's planner sees the matches), then once timed: a steady-state, warm-cache LPM.
  Chain insert puts P further fresh chains of N keys, one call per chain.
* **Strategies.** Native indexes (chime, sherman, race): each LPM strategy of
  ``--lpm-strategies`` on its own handle (index option ``lpm``): ``parallel`` (every key in one
  doorbell), ``kary`` (rounds of ``lpm_fanout`` probes), ``sequential`` (one key per round trip
  until the first miss), ``auto`` (a cost model picks). Redis: ``lua`` (one EVALSHA of a
  script that stops at the first miss: one round trip) and ``pipeline`` (pipelined EXISTS); its
  inserts are one pipeline of SETs. Redis sends all of a call's commands in one round trip
  (its default pipeline depth 0); 8-byte keys use range mode ``mget`` (a put is SETs only,
  no sorted set to maintain). Other backends (``dict``, third-party) run their own
  ``prefix_match`` (strategy ``-``).
* **Timing.** Native indexes: each call is timed in C (the replay engine's C loop,
  ``--driver auto|c``) or around the C call (``Index.last_call_ns``, ``--driver python``); with
  ``--latency-model virtual`` the transport's modelled time of the call (``virtual_ns``)
  replaces its execution of the verbs (``exec_ns``). Redis is timed the same way: in C through
  a hiredis client (``--driver auto|c``), or around the redis-py call (``--driver python``);
  other backends in Python around the call.
  Counters are deltas of ``Index.counters()`` over the timed calls, per call: ``rtts`` (Redis: its round trips),
  ``reads``, ``bytes_read``, ``bytes_written``, and retries (lock CAS failures, version
  mismatches, go-right reads, torn re-reads).
* **Output.** One table (backend, strategy, op, N, then per call RTTs, READs, bytes read and
  written, p50 and p99 latency, mean matched length and mismatches); the rows in
  ``results.parquet``/``results.csv`` with ``run.json`` (config, machine, histograms) in
  ``--out``; the p99-against-N figure (LPM and chain insert panels) at ``--plot`` (default
  ``<out>/chain_p99.png``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kvdm.experiments.replay.engine import backend_session, open_client, use_c_driver
from kvdm.experiments.replay.metrics import RETRY_COUNTERS, Histogram
from kvdm.experiments.replay.results import RunResults, machine_description
from kvdm.index import IndexSpec, remote_memory
from kvdm.index import backend as backend_entry
from kvdm.transport import TransportConfig, virtual_charge

CHAIN_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: ``--backends all``
NATIVE_STRATEGIES = ("parallel", "kary", "sequential", "auto")
REDIS_STRATEGIES = ("lua", "pipeline")
ALL_STRATEGIES = NATIVE_STRATEGIES + REDIS_STRATEGIES
MATCHED = ("random", "full")
MAX_CHAIN = 1 << 16
DEFAULT_CHAINS = 1000
PRELOAD_BATCH = 4096
#: results kind in run.json: ``kvdm plot`` (replay runs) tells these apart
RESULTS_KIND = "bench-chain"
OP_LPM, OP_INSERT = "prefix_match", "insert"
#: chain keys are numbered from here (background keys from 0): on memory nodes or a Redis server
#: that outlive the run, :func:`fresh_key_base` picks a random base instead, so chains of an
#: earlier run (present in full) are never mistaken for this run's partly preloaded ones
CHAIN_KEY_BASE = 1 << 40


def fresh_key_base() -> int:
    """A random chain-key base (one of 2**20 spaces of 2**40 numbers above CHAIN_KEY_BASE)."""
    import secrets

    return CHAIN_KEY_BASE + (secrets.randbelow(1 << 20) + 1 << 40)


def parse_lengths(text: str) -> tuple[int, ...]:
    """``--chain-lengths`` ("1,8,64"): distinct chain lengths in 1..MAX_CHAIN, sorted; a bad
    item is named."""
    items = [t.strip() for t in text.split(",")]
    out: list[int] = []
    for pos, item in enumerate(items, 1):
        try:
            n = int(item)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_CHAIN:
            raise ValueError(f"--chain-lengths: item {pos} ({item!r}) is not an integer in 1..{MAX_CHAIN}")
        out.append(n)
    return tuple(sorted(set(out)))


def parse_strategies(text: str) -> tuple[str, ...]:
    """``--lpm-strategies`` ("parallel,kary" or "all"): valid names in the given order."""
    if text.strip() == "all":
        return ALL_STRATEGIES
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if item not in ALL_STRATEGIES:
            raise ValueError(f"--lpm-strategies: unknown strategy {item!r}; valid: {', '.join(ALL_STRATEGIES)} "
                             f"(native indexes: {', '.join(NATIVE_STRATEGIES)}; redis: {', '.join(REDIS_STRATEGIES)}) "
                             "or all")
        if item not in out:
            out.append(item)
    return tuple(out)


def all_backends(valid: Sequence[str]) -> tuple[str, ...]:
    """``--backends all``: every backend of ``valid`` that clients share (not one that lives
    inside each client, as dict)."""
    return tuple(b for b in valid if not backend_entry(b).per_client)


def parse_backends(text: str, valid: Sequence[str]) -> tuple[str, ...]:
    """``--backends`` ("chime,redis", or "all": :func:`all_backends`)."""
    if text.strip() == "all":
        return all_backends(valid)
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if item not in valid:
            raise ValueError(f"--backends: unknown index {item!r}; valid: {', '.join(valid)} or all "
                             f"({', '.join(all_backends(valid))})")
        if item not in out:
            out.append(item)
    return tuple(out)


def strategies_for(backend: str, strategies: Sequence[str]) -> tuple[str, ...]:
    """The LPM strategies of ``strategies`` that apply to ``backend`` (``-``: its own)."""
    if remote_memory(backend):
        own = NATIVE_STRATEGIES
    elif backend == "redis":
        own = REDIS_STRATEGIES
    else:
        return ("-",)
    chosen = tuple(s for s in strategies if s in own)
    if not chosen:
        raise ValueError(f"--lpm-strategies {','.join(strategies)} has no strategy for {backend}; "
                         f"its strategies: {', '.join(own)}")
    return chosen


@dataclass
class ChainConfig:
    """Everything a chain sweep needs; stored with its results."""

    indexes: list[IndexSpec]
    transport: TransportConfig
    lengths: tuple[int, ...] = CHAIN_LENGTHS
    strategies: tuple[str, ...] = ALL_STRATEGIES
    chains: int = DEFAULT_CHAINS
    keys: int = 0
    matched: str = "random"
    seed: int = 1000
    driver: str = "auto"
    out: str = ""
    plot: str | None = None
    notes: list[str] = field(default_factory=list)
    #: number of the first chain key (keys are ``keys_of(number)``; background keys are 0..keys-1)
    key_base: int = CHAIN_KEY_BASE

    def echo(self) -> list[str]:
        kb = {s.key_bytes for s in self.indexes}.pop() if self.indexes else 8
        lpm = "; ".join(f"{s.name}: {', '.join(strategies_for(s.name, self.strategies))}" for s in self.indexes)
        return [
            f"backends {', '.join(s.name for s in self.indexes)}; LPM strategies {lpm}",
            f"chain lengths N {', '.join(map(str, self.lengths))}; {self.chains:,} chains per N (LPM calls per "
            f"strategy, and chain inserts); preloaded prefix per chain: {self.matched}",
            f"{self.keys:,} background keys of {kb} B; seed {self.seed}; driver {self.driver}",
            f"transport (native indexes): {self.transport.describe()}",
            *self.notes,
        ]


@dataclass
class _Timed:
    """What one batch of timed calls measured."""

    lat_ns: np.ndarray
    matched: np.ndarray | None
    counters: dict[str, int]
    clock: str


def _call_stream(kind: int, keys: np.ndarray, n: int, calls: int) -> Any:
    from .calls import CallStream as _CallStream

    kb = 32 if keys.ndim == 2 else 8
    bounds = np.zeros((calls, kb), np.uint8) if kb == 32 else np.zeros(calls, np.uint64)
    return _CallStream(np.full(calls, kind, np.uint8), np.arange(0, calls * n + 1, n, dtype=np.int64), keys,
                       np.arange(calls * n, dtype=np.int64), bounds, bounds)


def time_calls(cfg: ChainConfig, index: Any, op: str, keys: np.ndarray, n: int) -> _Timed:
    """Run one call per chain of ``n`` keys (``keys`` holds the chains back to back): LPM or
    chain insert, each call timed as the module docstring says."""
    from kvdm.traces import OP_INSERT as K_INSERT
    from kvdm.traces import OP_PREFIX

    calls = keys.shape[0] // n
    native = remote_memory(index.name)
    virtual = native and cfg.transport.latency_model == "virtual"
    if use_c_driver(cfg, index):  # native indexes and Redis (a hiredis client in the same C loop)
        stream = _call_stream(OP_PREFIX if op == OP_LPM else K_INSERT, keys, n, calls)
        lat, hits, acc = index.drive(stream, np.arange(calls, dtype=np.int64), np.zeros(calls, np.int32), 1,
                                     virtual)
        counters = dict(zip(index.counter_names(), acc[0].tolist(), strict=True))
        return _Timed(lat, hits if op == OP_LPM else None, counters, "in C (the C loop)")
    names = index.counter_names()
    charge = virtual_charge(names) if virtual else None
    values = np.arange(n, dtype=np.uint64)
    lat = np.zeros(calls, np.int64)
    matched = np.zeros(calls, np.int64)
    clock = time.perf_counter_ns
    before = index.counter_vector()
    for c in range(calls):
        k = keys[c * n:(c + 1) * n]
        v0 = charge(index.counter_vector()) if charge else 0
        index.last_call_ns = None
        t = clock()
        if op == OP_LPM:
            matched[c] = index.prefix_match(k)
        else:
            index.put(k, values)
        elapsed = clock() - t if index.last_call_ns is None else index.last_call_ns
        if charge:
            elapsed += charge(index.counter_vector()) - v0
        lat[c] = elapsed
    delta = index.counter_vector() - before
    how = "around the C call" if native else "in Python around the client call"
    return _Timed(lat, matched if op == OP_LPM else None, dict(zip(names, delta.tolist(), strict=True)), how)


def _row(cfg: ChainConfig, backend: str, strategy: str, op: str, n: int, timed: _Timed,
         truth: np.ndarray | None) -> tuple[dict[str, Any], Histogram]:
    calls = timed.lat_ns.size
    h = Histogram()
    h.record(timed.lat_ns)
    row: dict[str, Any] = {
        "run": cfg.out, "index": backend, "strategy": strategy, "op": op, "chain_len": n, "calls": calls,
        "keys": calls * n,
        "p50_us": h.percentile(50) / 1e3, "p90_us": h.percentile(90) / 1e3, "p99_us": h.percentile(99) / 1e3,
        "p999_us": h.percentile(99.9) / 1e3, "mean_us": h.mean_ns / 1e3, "max_us": h.max_ns / 1e3,
        "matched_per_op": float(timed.matched.mean()) if timed.matched is not None else np.nan,
        "expected_matched_per_op": float(truth.mean()) if truth is not None else np.nan,
        "mismatches": int((timed.matched != truth).sum()) if timed.matched is not None else 0,
        "timed": timed.clock,
        "virtual_added": remote_memory(backend) and cfg.transport.latency_model == "virtual",
    }
    for k, v in sorted(timed.counters.items()):
        row[f"{k}_per_op"] = v / max(calls, 1)
    retries = [c for c in RETRY_COUNTERS if c in timed.counters]
    row["retries_per_op"] = sum(timed.counters[c] for c in retries) / max(calls, 1) if retries else np.nan
    return row, h


def _strategy_spec(spec: IndexSpec, strategy: str) -> IndexSpec:
    if remote_memory(spec.name):
        return replace(spec, options={**spec.options, "lpm": strategy})
    if spec.name == "redis":
        return replace(spec, options={**spec.options, "prefix_mode": strategy})
    return spec


def _chain_keys(numbers: np.ndarray, key_bytes: int) -> np.ndarray:
    from .calls import keys_of

    return keys_of(numbers, key_bytes)


def bench_backend(cfg: ChainConfig, spec: IndexSpec,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Histogram]]:
    """The sweep on one backend (its own memory nodes or Redis server): rows and histograms."""
    from .calls import make_keys

    rows: list[dict[str, Any]] = []
    hists: dict[str, Histogram] = {}
    kb, p = spec.key_bytes, cfg.chains
    strategies = strategies_for(spec.name, cfg.strategies)
    rng = np.random.default_rng(cfg.seed)
    with backend_session(spec, cfg.transport) as (uris, shared):
        owner = open_client(shared, cfg.transport, uris)
        handles: dict[str, Any] = {}
        try:
            for i in range(0, cfg.keys, PRELOAD_BATCH):
                m = min(PRELOAD_BATCH, cfg.keys - i)
                owner.put(make_keys(i, m, kb), np.arange(i, i + m, dtype=np.uint64))
            for s in strategies:  # dict and third-party backends: the owner (a dict lives in its handle)
                handles[s] = open_client(_strategy_spec(shared, s), cfg.transport, uris) if s != "-" else owner
            next_number = cfg.key_base
            for n in cfg.lengths:
                numbers = np.arange(next_number, next_number + p * n, dtype=np.uint64)
                next_number += p * n
                keys = _chain_keys(numbers, kb)
                truth = rng.integers(0, n + 1, size=p) if cfg.matched == "random" else np.full(p, n)
                present = np.flatnonzero((np.arange(p * n) % n) < np.repeat(truth, n))
                for i in range(0, present.size, PRELOAD_BATCH):
                    sel = present[i:i + PRELOAD_BATCH]
                    owner.put(keys[sel], sel.astype(np.uint64))
                for s, h in handles.items():
                    time_calls(cfg, h, OP_LPM, keys, n)  # warm-up
                    row, hist = _row(cfg, spec.name, s, OP_LPM, n, time_calls(cfg, h, OP_LPM, keys, n), truth)
                    rows.append(row)
                    hists[f"{spec.name}:{s}:{OP_LPM}:{n}"] = hist
                    if on_row:
                        on_row(row)
                fresh = _chain_keys(np.arange(next_number, next_number + p * n, dtype=np.uint64), kb)
                next_number += p * n
                how = "pipeline" if spec.name == "redis" else "-"
                row, hist = _row(cfg, spec.name, how, OP_INSERT, n, time_calls(cfg, owner, OP_INSERT, fresh, n), None)
                rows.append(row)
                hists[f"{spec.name}:{how}:{OP_INSERT}:{n}"] = hist
                if on_row:
                    on_row(row)
        finally:
            for h in handles.values():
                if h is not owner:
                    h.close()
            owner.close()
    return rows, hists


#: table columns: (results column, header, width, format)
TABLE = (
    ("index", "backend", 8, "s"), ("strategy", "strategy", 10, "s"), ("op", "op", 6, "s"),
    ("chain_len", "N", 5, "d"), ("calls", "calls", 6, "d"), ("rtts_per_op", "RTT/op", 8, ".2f"),
    ("reads_per_op", "READ/op", 8, ".1f"), ("bytes_read_per_op", "B read/op", 10, ",.0f"),
    ("bytes_written_per_op", "B wr/op", 9, ",.0f"), ("retries_per_op", "retry/op", 8, ".2f"),
    ("p50_us", "p50 us", 9, ",.2f"),
    ("p99_us", "p99 us", 9, ",.2f"), ("matched_per_op", "matched", 8, ".1f"), ("mismatches", "mismatch", 8, "d"),
)


def table_header() -> str:
    return " ".join(f"{h:<{w}}" if f == "s" else f"{h:>{w}}" for _, h, w, f in TABLE)


def table_line(row: dict[str, Any]) -> str:
    cells = []
    for col, _, w, f in TABLE:
        v = row.get(col, np.nan)
        if col == "op":
            v = "LPM" if v == OP_LPM else v
        if f == "s":
            cells.append(f"{v!s:<{w}}")
        elif col in ("matched_per_op", "mismatches") and row["op"] != OP_LPM:
            cells.append(f"{'-':>{w}}")
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            cells.append(f"{'n/a':>{w}}")
        else:
            cells.append(f"{v:>{w}{f}}")
    return " ".join(cells)


def run_chain(cfg: ChainConfig, quiet: bool = False) -> RunResults:
    """The sweep on every backend of ``cfg``: prints the table (unless ``quiet``), returns the rows."""
    say = (lambda s: None) if quiet else print
    for line in cfg.echo():
        say(f"# {line}")
    say(table_header())
    rows: list[dict[str, Any]] = []
    hists: dict[str, Histogram] = {}
    t0 = time.perf_counter()
    clocks: dict[str, str] = {}
    for spec in cfg.indexes:
        r, h = bench_backend(cfg, spec)
        order = {s: i for i, s in enumerate(cfg.strategies)}
        r.sort(key=lambda x: (x["op"] != OP_LPM, order.get(x["strategy"], -1), x["chain_len"]))
        for row in r:
            say(table_line(row))
            clocks[row["index"]] = row["timed"]
        rows += r
        hists.update(h)
    wall = time.perf_counter() - t0
    say(f"# retry/op: {', '.join(RETRY_COUNTERS)} per call (native indexes; every counter per call is in the "
        "results file)")
    for backend, how in clocks.items():
        extra = ", the transport's modelled time in place of its execution" if remote_memory(backend) and \
            cfg.transport.latency_model == "virtual" else ""
        say(f"# {backend}: latency per call measured {how}{extra}")
    meta = {"kind": RESULTS_KIND, "config": _config_dict(cfg), "machine": machine_description(),
            "run": {"wall_s": wall}}
    import pandas as pd  # here: `kvdm bench index` imports this module, and its clients never need pandas

    return RunResults(pd.DataFrame(rows), meta, hists)


def _config_dict(cfg: ChainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["indexes"] = [{"name": s.name, "key_bytes": s.key_bytes,
                     "options": {k: v for k, v in s.options.items() if k != "local_locks"}} for s in cfg.indexes]
    d["echo"] = cfg.echo()
    return d


def figure_note(cfg: ChainConfig) -> str:
    t = cfg.transport
    native = [s.name for s in cfg.indexes if remote_memory(s.name)]
    parts = []
    if native:
        parts.append(f"native ({', '.join(native)}): {t.transport}, latency model {t.latency_model}"
                     + (f" {t.rtt_us:g} us RTT (modelled, not waited)" if t.latency_model == "virtual" else
                        f" {t.rtt_us:g} us RTT" if t.latency_model == "spin" else "") + ", timed in C")
    if any(s.name == "redis" for s in cfg.indexes):
        parts.append("redis: timed " + ("around the redis-py call" if cfg.driver == "python" else "in C (hiredis)"))
    if any(not remote_memory(s.name) and s.name != "redis" for s in cfg.indexes):
        parts.append("other: timed in Python around the call")
    parts.append(f"{cfg.chains:,} calls per point; preloaded prefix {cfg.matched}; {cfg.keys:,} background keys")
    return "; ".join(parts)


def write(res: RunResults, cfg: ChainConfig) -> tuple[Path, Path]:
    """Results into ``cfg.out`` and the figure at ``cfg.plot`` (default ``<out>/chain_p99.png``)."""
    from kvdm.experiments.figures.plots import plot_chain

    out = res.write(cfg.out)
    fig = plot_chain(res.rows, cfg.plot or out / "chain_p99.png", note=figure_note(cfg))
    return out, fig
