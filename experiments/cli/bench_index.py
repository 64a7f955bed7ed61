"""``kvdm bench index``: point-operation throughput and latency of any index backend, and
(``--op chain``) the engine's view: longest prefix match and chain insert swept over the chain
length N, on one backend or several (see :mod:`kvdm.experiments.bench.chain`).

Preloads ``--keys`` keys (batched puts), then ``--clients`` processes issue ``--op`` operations
for ``--seconds`` each: ``get`` of preloaded keys (uniform), ``put`` of new keys, or ``mixed``
(``--read-ratio`` gets, the rest puts of new keys; with ``--hot-keys N`` puts update the first N
preloaded keys instead, a skewed hot-key workload). ``--threads T`` runs T threads per client
process, each with its own handle and transport context; ``--handover`` gives a process's
threads one shared local lock table (native indexes). Every call carries ``--batch`` keys. With
``--driver auto`` (the default) or ``c``, the calls of native indexes and Redis are generated in
chunks and each is run and timed in C (the C measuring loop; Redis through a hiredis client).
With ``--driver python`` a native index's call is timed around its C call alone
(``Index.last_call_ns``) and Redis around the redis-py call; other backends (dict) always are
timed around the Python call. With ``--latency-model virtual`` the transport's modelled time
replaces its execution of the verbs (native indexes). Prints Mops, p50/p99 per
call, RTTs, verbs and bytes per key, cache hit ratio, retries, and for Redis server CPU per key.

``--op chain``: per chain length N (``--chain-lengths``, default 1,2,4,...,512), ``--chains``
chains of N keys are built and a random prefix of each preloaded (``--matched``); each LPM
strategy (``--lpm-strategies``: native parallel, kary, sequential, auto; Redis lua, pipeline)
then answers one prefix_match per chain, checked against the preloaded truth, and as many fresh
chains are inserted, one put of N keys each. One client, one call at a time (unloaded
latency). ``--backends chime,redis`` (or ``all``) sweeps several backends, each on its own
memory nodes or server. Prints one table (RTTs, READs, bytes read and written per call, p50
and p99 per call, matched length, mismatches), writes results.parquet/.csv and run.json to
``--out`` and the p99-against-N figure to ``--plot``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from kvdm.experiments.bench.calls import CallStream as _CallStream
from kvdm.experiments.bench.calls import keys_of, make_keys
from kvdm.experiments.bench.chain import DEFAULT_CHAINS, MATCHED
from kvdm.experiments.replay.engine import DRIVERS, LAUNCHERS, backend_session, open_client, use_c_driver
from kvdm.experiments.replay.metrics import RETRY_COUNTERS, Histogram
from kvdm.index import IndexSpec, remote_memory
from kvdm.index import backend as backend_entry
from kvdm.index import backends as registered
from kvdm.transport import TransportConfig, parse_size, virtual_charge

from . import CommandFailed, UsageError, choices_type, group
from .options import add_transport_options, transport_config
from .replay import add_index_options, derived_values, index_spec

OPS = ("get", "put", "mixed", "chain")
#: flags of --op chain only (argparse dests; None when not given)
CHAIN_FLAGS = ("chain_lengths", "chains", "lpm_strategies", "backends", "matched", "out", "plot")
PRELOAD_BATCH = 4096




@dataclass
class BenchIndexConfig:
    index: IndexSpec
    transport: TransportConfig
    keys: int
    op: str
    clients: int
    batch: int
    seconds: float
    read_ratio: float
    seed: int = 1000
    driver: str = "auto"
    threads: int = 1
    hot_keys: int = 0
    handover: bool = False


def register(sub: Any) -> None:
    g = group(sub, "bench", "benchmarks that print their figures")
    p = g.add_parser("index", help="point-op throughput and latency of an index backend",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=parse_size, default=parse_size("1M"),
                   help="keys preloaded before measuring (K/M suffixes are powers of 1024; default 1M); "
                   "--op chain: background keys preloaded before the chains")
    p.add_argument("--op", type=choices_type(OPS, "op"), default="get",
                   help="get, put, mixed, or chain (longest prefix match and chain insert swept over the "
                   "chain length; see the chain options); default get")
    p.add_argument("--key-bytes", type=int, choices=(8, 32), default=8, help="key width (default 8)")
    p.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    p.add_argument("--batch", type=int, default=1, help="keys per index call (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="measuring time per client (default 5)")
    p.add_argument("--read-ratio", type=float, default=None, help="share of gets with --op mixed (default 0.5)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the key choice; client c uses seed+c (default 1000)")
    p.add_argument("--driver", type=choices_type(DRIVERS, "driver"), default="auto",
                   help="measuring loop: c (native indexes: calls generated in chunks, each run and timed in C), "
                   "python (one Python call per index call), auto (c where the backend has it; default)")
    p.add_argument("--threads", type=int, default=1, help="threads per client process, a handle each (default 1)")
    p.add_argument("--launcher", type=choices_type(LAUNCHERS, "launcher"), default="local",
                   help="local (client processes on this host; default) or mpi (`mpirun -np N kvdm bench index "
                   "--launcher mpi ...`: each rank is a client, rank 0 preloads and reports; --clients is the "
                   "world size, one thread per rank)")
    p.add_argument("--hot-keys", type=int, default=0,
                   help="puts update keys drawn from the first N preloaded keys (0: insert new keys; default 0)")
    p.add_argument("--handover", action="store_true",
                   help="threads of a process share a local lock table (sherman/chime lock handover)")
    c = p.add_argument_group("chain (with --op chain)")
    c.add_argument("--chain-lengths", metavar="LIST",
                   help="chain lengths N to sweep, comma-separated, each in 1..65536 (default 1,2,4,...,512)")
    c.add_argument("--chains", type=parse_size, metavar="P",
                   help=f"chains per N: LPM calls per strategy, and chain inserts (default {DEFAULT_CHAINS})")
    c.add_argument("--lpm-strategies", metavar="LIST",
                   help="LPM strategies, comma-separated, or all (default): native indexes parallel, kary, "
                   "sequential, auto (index option lpm); redis lua, pipeline (option prefix_mode); each "
                   "backend runs the ones that apply to it")
    c.add_argument("--backends", metavar="LIST",
                   help="sweep these backends one after another instead of --index: comma-separated, or all "
                   "(chime, sherman, race, redis)")
    c.add_argument("--matched", type=choices_type(MATCHED, "matched"),
                   help="preloaded prefix of each chain: random (a length drawn from 0..N, default) or full")
    c.add_argument("--out", metavar="DIR",
                   help="results directory (default results/chain-<time>-<backends>)")
    c.add_argument("--plot", metavar="PNG", help="figure file (default <out>/chain_p99.png)")
    add_index_options(p)
    add_transport_options(p)
    p.set_defaults(func=cmd_bench_index)


def _client(cfg: BenchIndexConfig, uris: list[str], client: int, barrier: Any, out: Any) -> None:
    """One client process: cfg.threads threads, each with its own handle, one result each."""
    spec = cfg.index
    if cfg.handover:
        from kvdm.index import LocalLockTable

        spec = replace(spec, options={**spec.options, "local_locks": LocalLockTable()})

    def run(t: int) -> None:
        who = client * cfg.threads + t
        try:
            index = open_client(spec, cfg.transport, uris)
            out.put(measure(cfg, index, who, barrier))
            index.close()
        except Exception as exc:
            out.put(f"client {client} thread {t}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(cfg.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


class _Workload:
    """A client's calls, drawn in chunks with numpy: gets of preloaded keys (uniform), puts of
    new keys (each client its own) or, with ``hot_keys``, updates of the first preloaded keys."""

    def __init__(self, cfg: BenchIndexConfig, client: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed + client)
        self.next_new = cfg.keys + client * (1 << 40)

    def chunk(self, n: int) -> _CallStream:
        from kvdm.traces import OP_GET, OP_INSERT

        cfg, rng, b, kb = self.cfg, self.rng, self.cfg.batch, self.cfg.index.key_bytes
        is_get = np.full(n, cfg.op == "get") if cfg.op != "mixed" else rng.random(n) < cfg.read_ratio
        n_put = int((~is_get).sum())
        first = rng.integers(0, cfg.keys - b + 1, size=n).astype(np.uint64)
        if cfg.hot_keys:
            first[~is_get] = rng.integers(0, cfg.hot_keys - b + 1, size=n_put).astype(np.uint64)
        else:
            first[~is_get] = np.uint64(self.next_new) + np.arange(n_put, dtype=np.uint64) * np.uint64(b)
            self.next_new += n_put * b
        numbers = (first[:, None] + np.arange(b, dtype=np.uint64)).ravel()
        bounds = np.zeros((n, kb), np.uint8) if kb == 32 else np.zeros(n, np.uint64)
        return _CallStream(np.where(is_get, OP_GET, OP_INSERT).astype(np.uint8),
                           np.arange(0, n * b + 1, b, dtype=np.int64), keys_of(numbers, kb),
                           np.arange(numbers.size, dtype=np.int64), bounds, bounds)


def measure(cfg: BenchIndexConfig, index: Any, client: int, barrier: Any) -> tuple[np.ndarray, dict[str, int], int]:
    """The measuring loop: returns per-call latencies (ns), counter deltas, keys touched."""
    if use_c_driver(cfg, index):
        return _measure_c(cfg, index, client, barrier)
    from kvdm.traces import OP_GET

    work = _Workload(cfg, client)
    virtual = cfg.transport.latency_model == "virtual" and remote_memory(cfg.index.name)
    charge = virtual_charge(index.counter_names()) if virtual else None
    lat: list[int] = []
    barrier.wait()
    before = index.counters()
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cfg.seconds
    keys_done = 0
    while time.perf_counter() < deadline:
        calls = work.chunk(64)
        for i in range(64):
            a, z = calls.key_offsets[i], calls.key_offsets[i + 1]
            keys = calls.keys[a:z]
            v0 = charge(index.counter_vector()) if charge else 0
            index.last_call_ns = None
            t = clock()
            if calls.kind[i] == OP_GET:
                index.get(keys)
            else:
                index.put(keys, calls.key_block[a:z].astype(np.uint64))
            elapsed = clock() - t if index.last_call_ns is None else index.last_call_ns
            if charge:
                elapsed += charge(index.counter_vector()) - v0
            lat.append(elapsed)
            keys_done += cfg.batch
    after = index.counters()
    return np.array(lat, dtype=np.int64), {k: v - before.get(k, 0) for k, v in after.items()}, keys_done


def _measure_c(cfg: BenchIndexConfig, index: Any, client: int, barrier: Any) -> tuple[np.ndarray, dict[str, int], int]:
    """:func:`measure` through the index's C loop (``Index.drive``): each chunk of calls is run
    and timed in C, with no Python per call."""
    work = _Workload(cfg, client)
    virtual = cfg.transport.latency_model == "virtual"
    lats: list[np.ndarray] = []
    total = np.zeros(len(index.counter_names()), np.int64)
    chunk, keys_done = 256, 0
    barrier.wait()
    deadline = time.perf_counter() + cfg.seconds
    while time.perf_counter() < deadline:
        calls = work.chunk(chunk)
        t = time.perf_counter()
        lat, _, acc = index.drive(calls, np.arange(chunk), np.zeros(chunk, np.int32), 1, virtual)
        lats.append(lat)
        total += acc[0]
        keys_done += chunk * cfg.batch
        if time.perf_counter() - t < 0.05 and chunk < 65536:
            chunk *= 2  # fewer, longer C calls once a call is known to be fast
    return np.concatenate(lats), dict(zip(index.counter_names(), total.tolist(), strict=True)), keys_done


def cmd_bench_index(args: argparse.Namespace) -> int:
    if args.op == "chain":
        return cmd_bench_chain(args)
    given = [f"--{d.replace('_', '-')}" for d in CHAIN_FLAGS if getattr(args, d, None) is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only for --op chain")
    args.seconds = 5.0 if args.seconds is None else args.seconds
    args.read_ratio = 0.5 if args.read_ratio is None else args.read_ratio
    if args.clients < 1 or args.batch < 1 or args.seconds <= 0 or args.keys < args.batch:
        raise UsageError("--clients, --batch and --seconds must be positive and --keys >= --batch")
    if not 0 <= args.read_ratio <= 1:
        raise UsageError("--read-ratio must be in [0, 1]")
    if backend_entry(args.index).per_client and args.clients > 1:
        raise UsageError(f"the {args.index} backend lives inside one client process: use --clients 1")
    if args.threads < 1 or (args.hot_keys and not args.batch <= args.hot_keys <= args.keys):
        raise UsageError("--threads must be positive and --hot-keys in [--batch, --keys] (or 0)")
    if (args.threads > 1 or args.handover) and not remote_memory(args.index):
        raise UsageError(f"--threads and --handover need a native index "
                         f"({', '.join(registered(remote_memory=True))})")
    cfg = BenchIndexConfig(index_spec(args, args.key_bytes), transport_config(args), args.keys, args.op,
                           args.clients, args.batch, args.seconds, args.read_ratio, seed=args.seed,
                           threads=args.threads, hot_keys=args.hot_keys, handover=args.handover, driver=args.driver)
    if args.launcher == "mpi":
        got = _run_ranks(cfg, args)
        if got is None:  # a rank other than 0: rank 0 reports
            return 0
        cfg, results = got
    else:
        with _shared(cfg, args) as (cfg, uris, owner):
            results = _run_clients(cfg, uris) if not backend_entry(cfg.index.name).per_client \
                else [_run_inline(cfg, owner)]
    native = remote_memory(cfg.index.name)
    lat = np.concatenate([r[0] for r in results])
    counters: dict[str, int] = {}
    for _, c, _ in results:
        for k, v in c.items():
            counters[k] = counters.get(k, 0) + v
    keys_done = sum(r[2] for r in results)
    hist = Histogram()
    hist.record(lat)
    p = hist.percentiles_us()
    print(f"{'Mops':>8} {'Mkeys/s':>8} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'RTT/key':>8} {'READ/key':>8} "
          f"{'B read/key':>10} {'B wr/key':>9} {'retries/key':>11} {'cache hit %':>11} {'srv CPU us/key':>14}")
    per = {k: v / max(keys_done, 1) for k, v in counters.items()}
    derived = derived_values({f"{k}_per_op": v for k, v in per.items()})
    calls_per_s = lat.size / cfg.seconds / 1e6
    def cell(v: float | None, width: int, digits: int) -> str:  # '-' where the backend does not report it
        return f"{'-' if v is None else f'{v:.{digits}f}':>{width}}"

    print(f"{calls_per_s:>8.3f} {keys_done / cfg.seconds / 1e6:>8.3f} {p['p50']:>8.2f} {p['p99']:>8.2f} "
          f"{p['p99.9']:>9.2f} {cell(per.get('rtts'), 8, 3)} {cell(per.get('reads'), 8, 3)} "
          f"{cell(per.get('bytes_read'), 10, 1)} {cell(per.get('bytes_written'), 9, 1)} "
          f"{derived.get('retries_per_op', 0.0):>11.4f} {cell(derived.get('cache_hit_pct'), 11, 2)} "
          f"{cell(per.get('server_cpu_us'), 14, 2)}")
    c_loop = cfg.driver != "python" and (native or cfg.index.name == "redis")
    clock = "in C (the C loop)" if c_loop else "around the C call" if native else "in Python around the index call"
    if "handovers" in counters:
        print(f"# locks: {per.get('cas', 0):.3f} CAS/key (lock + unlock + failed), {per['lock_fail']:.4f} failed lock "
              f"CAS/key, {per['handovers']:.4f} handovers/key, {per['local_waits']:.4f} local waits/key")
    print(f"# retries counted: {', '.join(c for c in RETRY_COUNTERS if c in counters) or 'none reported'}; "
          f"latency is per call, measured {clock}")
    return 0


@contextmanager
def _shared(cfg: BenchIndexConfig, args: argparse.Namespace) -> Iterator[tuple[BenchIndexConfig, list[str], Any]]:
    """The run's header, its backend session and the preloaded index (the owner handle),
    for the duration of the block: what every launcher's clients share."""
    print(f"# kvdm bench index: {cfg.index.name} {cfg.index.options or ''}, {cfg.keys:,} keys of "
          f"{args.key_bytes} B, op {cfg.op}, {cfg.clients} client(s) x {cfg.threads} thread(s), "
          f"{cfg.batch} key(s)/call, {cfg.seconds:g} s, hot keys {cfg.hot_keys or 'none'}, "
          f"handover {'on' if cfg.handover else 'off'}" + (", MPI ranks" if args.launcher == "mpi" else ""))
    if remote_memory(cfg.index.name):
        print(f"# transport: {cfg.transport.describe()}")
    with backend_session(cfg.index, cfg.transport) as (uris, shared):
        cfg = replace(cfg, index=shared)
        owner = open_client(cfg.index, cfg.transport, uris)
        try:
            t0 = time.perf_counter()
            for i in range(0, cfg.keys, PRELOAD_BATCH):
                n = min(PRELOAD_BATCH, cfg.keys - i)
                owner.put(make_keys(i, n, cfg.index.key_bytes), np.arange(i, i + n, dtype=np.uint64))
            load_s = time.perf_counter() - t0
            print(f"# preload: {cfg.keys:,} keys in {load_s:.2f} s ({cfg.keys / load_s / 1e6:.3f} M keys/s, "
                  f"batches of {PRELOAD_BATCH})")
            yield cfg, uris, owner
        finally:
            owner.close()


def _run_ranks(cfg: BenchIndexConfig, args: argparse.Namespace) -> tuple[BenchIndexConfig, list[Any]] | None:
    """The clients as the ranks of an MPI job (launch_mpi.run_ranks): rank 0 sets up and gets
    every rank's result; None on the other ranks."""
    from kvdm.experiments.replay.launch_mpi import run_ranks, world

    size = world().size
    if args.threads != 1 or args.handover or backend_entry(cfg.index.name).per_client:
        raise UsageError("--launcher mpi runs one client (one thread) per rank, on a backend clients share: "
                         "leave out --threads and --handover")
    if args.clients not in (1, size):  # 1 is the flag's default
        raise UsageError(f"--clients {args.clients} with --launcher mpi: the clients are the MPI ranks "
                         f"(mpirun -np {size}); leave --clients out")
    cfg = replace(cfg, clients=size)

    @contextmanager
    def setup() -> Iterator[tuple[BenchIndexConfig, list[str]]]:
        with _shared(cfg, args) as (run_cfg, uris, _):
            yield run_cfg, uris

    def client(payload: tuple[BenchIndexConfig, list[str]], rank: int, start: Any) -> Any:
        run_cfg, uris = payload
        try:
            index = open_client(run_cfg.index, run_cfg.transport, uris)
            try:
                return measure(run_cfg, index, rank, start)
            finally:
                index.close()
        except Exception as exc:
            start.abort()
            return f"rank {rank}: {type(exc).__name__}: {exc}"

    got = run_ranks(setup, client, lambda results: "; ".join(r for r in results if isinstance(r, str)))
    if got is None:
        return None
    (run_cfg, _), results = got
    return run_cfg, results


def _run_inline(cfg: BenchIndexConfig, index: Any) -> tuple[np.ndarray, dict[str, int], int]:
    class _NoBarrier:
        def wait(self) -> None:
            return None

    return measure(cfg, index, 0, _NoBarrier())


def _run_clients(cfg: BenchIndexConfig, uris: list[str]) -> list[tuple[np.ndarray, dict[str, int], int]]:
    mpc = mp.get_context("spawn")
    barrier, out = mpc.Barrier(cfg.clients * cfg.threads), mpc.Queue()
    procs = [mpc.Process(target=_client, args=(cfg, uris, c, barrier, out), daemon=True) for c in range(cfg.clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=cfg.seconds + 300) for _ in range(cfg.clients * cfg.threads)]
    for p in procs:
        p.join(30)
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise RuntimeError("; ".join(errors))
    return results


def chain_config(args: argparse.Namespace) -> Any:
    """The :class:`~kvdm.experiments.bench.chain.ChainConfig` of ``--op chain``'s flags (UsageError
    for flags that do not apply or bad values)."""
    from kvdm.experiments.bench import chain as bc
    from kvdm.index import available

    not_chain = [flag for flag, bad in (("--clients", args.clients != 1), ("--threads", args.threads != 1),
                                        ("--batch", args.batch != 1), ("--handover", args.handover),
                                        ("--hot-keys", args.hot_keys != 0), ("--seconds", args.seconds is not None),
                                        ("--read-ratio", args.read_ratio is not None)) if bad]
    if not_chain:
        raise UsageError(f"{', '.join(not_chain)}: not used by --op chain (one client, one call per chain at a "
                         "time; size the run with --chains and --chain-lengths)")
    try:
        lengths = bc.parse_lengths(args.chain_lengths) if args.chain_lengths is not None else bc.CHAIN_LENGTHS
        strategies = bc.parse_strategies(args.lpm_strategies) if args.lpm_strategies is not None \
            else bc.ALL_STRATEGIES
        backends = bc.parse_backends(args.backends, available()) if args.backends is not None \
            else (args.index,)
        for b in backends:
            bc.strategies_for(b, strategies)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    chains = DEFAULT_CHAINS if args.chains is None else args.chains
    if chains < 1:
        raise UsageError(f"--chains must be >= 1, got {chains}")
    if args.keys < 0:
        raise UsageError(f"--keys must be >= 0, got {args.keys}")
    opts = dict(args.index_opt)
    if "lpm" in opts or getattr(args, "lpm", None) is not None or getattr(args, "redis_prefix", None) is not None:
        raise UsageError("--op chain sweeps the LPM strategy itself: choose them with --lpm-strategies "
                         "(not --lpm, --index-opt lpm=... or --redis-prefix)")
    specs = [backend_spec(args, b, opts, len(backends) > 1) for b in backends]
    if len(backends) > 1:
        from kvdm.index import NATIVE_OPTIONS, RedisOptions

        known = set(NATIVE_OPTIONS) - {"local_locks"} if any(remote_memory(b) for b in backends) else set()
        known |= {f.name for f in fields(RedisOptions)} if "redis" in backends else set()
        unknown = sorted(set(opts) - known)
        if unknown:
            raise UsageError(f"--index-opt {', '.join(unknown)}: no backend of --backends {','.join(backends)} "
                             f"takes it (each option goes to the backends that know it: {', '.join(sorted(known))})")
    from kvdm.experiments.replay.notes import redis_note

    red = next((s for s in specs if s.name == "redis"), None)
    notes = [redis_note(red.options, args.driver)] if red is not None else []
    out = args.out or f"results/chain-{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(backends)}"
    # memory that outlives the run may hold an earlier run's chains: number this run's chains apart
    kept = bool(args.memory_node) or any(s.options.get("url") for s in specs if s.name == "redis")
    return bc.ChainConfig(specs, transport_config(args), lengths, strategies, chains, args.keys,
                          args.matched or "random", args.seed, args.driver, out, args.plot, notes,
                          bc.fresh_key_base() if kept else bc.CHAIN_KEY_BASE)


def backend_spec(args: argparse.Namespace, backend: str, opts: dict[str, Any], several: bool) -> IndexSpec:
    """One backend's IndexSpec for a bench that sweeps backends (the chain bench, ``kvdm bench
    tokens``): --cache-mb and the --index-opt options it takes (with several backends: only
    those it knows), Redis at its best protocol unless flags say otherwise."""
    from . import options_redis

    options: dict[str, Any] = {}
    if remote_memory(backend):
        from kvdm.index import NATIVE_OPTIONS

        if args.cache_mb is not None:
            options["cache_mb"] = args.cache_mb
        options.update({k: v for k, v in opts.items() if not several or k in NATIVE_OPTIONS})
    elif backend == "redis":
        from kvdm.index import RedisOptions

        options.update({k: v for k, v in opts.items() if not several or k in {f.name for f in fields(RedisOptions)}})
        options.update(options_redis.redis_options(args, start_local=False))
        options.setdefault("range_mode", "mget" if args.key_bytes == 8 else "zset")
    else:
        options.update(opts if not several else {})
    return IndexSpec(backend, args.key_bytes, options)


def cmd_bench_chain(args: argparse.Namespace) -> int:
    """``kvdm bench index --op chain``."""
    from kvdm.experiments.bench import chain as bc

    from .options_redis import given_redis_flags

    redis_flags = given_redis_flags(args)
    backends = bc.parse_backends(args.backends, available_indexes()) if args.backends is not None \
        else (args.index,)
    if redis_flags and "redis" not in backends:
        raise UsageError(f"{', '.join(redis_flags)}: only for the redis backend (the run has "
                         f"{', '.join(backends)})")
    cfg = chain_config(args)
    print("# kvdm bench index --op chain")
    res = bc.run_chain(cfg)
    out, fig = bc.write(res, cfg)
    print(f"# results: {out}/results.parquet (+ .csv, run.json); figure: {fig}")
    bad = res.rows[res.rows["mismatches"] > 0]
    if not bad.empty:
        where = ", ".join(f"{r.index} {r.strategy} N={r.chain_len}: {r.mismatches}" for r in bad.itertuples())
        raise CommandFailed(f"prefix matches that differ from the preloaded truth (presence is prefix-closed, so "
                            f"every strategy must be exact): {where}")
    return 0


def available_indexes() -> list[str]:
    from kvdm.index import available

    return available()
