"""``kvdm bench index``: throughput, latency and protocol costs of one index backend.

Preload ``--keys`` keys from one client, then ``--clients`` processes (spawned, each with its
own transport context attached to the same memory nodes, and its own node cache) warm their
cache and run their share of ``--ops`` operations in batches, starting together. Latencies
are per key: native indexes time every key in C; other backends (dict, redis) time each
batch call and charge it evenly to its keys. Percentiles come from the merged samples of
every client, never from averaged percentiles.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kvdm.experiments.cli import UsageError, choices_type, group
from kvdm.experiments.options import add_transport_options, transport_config
from kvdm.index import IndexSpec, available, open_spec
from kvdm.transport import TransportConfig, connect, memory_nodes, parse_size

OPS = ("get", "put", "mixed")
NATIVE = ("chime", "sherman", "race")
WARMUP_KEYS = 20_000
PRELOAD_BATCH = 65_536


def key_space(numbers: np.ndarray, key_bytes: int, seed: int = 0) -> np.ndarray:
    """Key number -> key, reproducible and distinct: a bijective 64-bit mix of the number (8 B),
    or 32 bytes derived from it (32 B). Never a reserved key."""
    i = np.asarray(numbers, dtype=np.uint64) + np.uint64(1 + (seed << 40))
    with np.errstate(over="ignore"):
        x = (i ^ (i >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        if key_bytes == 8:
            x[(x == 0) | (x == np.uint64(2**64 - 1))] = np.uint64(1) << np.uint64(63)
            return x
        words = np.stack([x, x * np.uint64(0x9E3779B97F4A7C15), x ^ np.uint64(0xD6E8FEB86659FD93), i], axis=1)
    return np.ascontiguousarray(words).view(np.uint8).reshape(-1, 32)


@dataclass
class ClientPlan:
    """What one client process does (picklable)."""

    client: int
    spec: IndexSpec
    transport: TransportConfig
    uris: list[str]
    op: str
    keys: int   # preloaded key numbers are 0..keys-1
    ops: int    # operations this client measures
    batch: int
    seed: int


@dataclass
class ClientResult:
    client: int
    elapsed: float
    lat: dict[str, np.ndarray] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def open_client(spec: IndexSpec, cfg: TransportConfig, uris: list[str]) -> Any:
    """Open the index for one client (native backends get their own transport context)."""
    ctx = connect(cfg, uris) if spec.name in NATIVE else None
    return open_spec(spec, ctx)


def plan_work(plan: ClientPlan) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The client's batches: gets/updates of random preloaded keys, or inserts of new keys
    (client-private key numbers past the preload); ``mixed`` alternates get and put batches."""
    rng = np.random.default_rng(plan.seed * 1000 + plan.client)
    kb = plan.spec.key_bytes
    if plan.op == "put":
        numbers = plan.keys + plan.client * plan.ops + np.arange(plan.ops, dtype=np.uint64)
    else:
        numbers = rng.integers(0, plan.keys, plan.ops).astype(np.uint64)
    keys = key_space(numbers, kb, plan.seed)
    work = []
    for b, s in enumerate(range(0, plan.ops, plan.batch)):
        e = min(plan.ops, s + plan.batch)
        kind = plan.op if plan.op != "mixed" else ("get", "put")[b % 2]
        work.append((kind, keys[s:e], numbers[s:e] + np.uint64(plan.client)))
    return work


def run_client(plan: ClientPlan, barrier: Any, out: Any) -> None:
    """One client process: open, warm the cache, wait for the others, measure."""
    idx = open_client(plan.spec, plan.transport, plan.uris)
    timed = "lat_ns" in inspect.signature(idx.get).parameters
    rng = np.random.default_rng(plan.seed + 7 * plan.client)
    warm = rng.integers(0, plan.keys, min(WARMUP_KEYS, plan.keys))
    idx.get(key_space(warm, plan.spec.key_bytes, plan.seed))
    work = plan_work(plan)
    lat = {k: np.zeros(plan.ops, dtype=np.uint64) for k in ("get", "put")}
    used = {"get": 0, "put": 0}
    idx.reset_counters()
    barrier.wait()
    t0 = time.perf_counter()
    for kind, keys, vals in work:
        n = len(vals)
        dst = lat[kind][used[kind]:used[kind] + n]
        kw = {"lat_ns": dst} if timed else {}
        b0 = time.perf_counter_ns()
        if kind == "get":
            idx.get(keys, **kw)
        else:
            idx.put(keys, vals, **kw)
        if not timed:
            dst[:] = (time.perf_counter_ns() - b0) // max(1, n)
        used[kind] += n
    elapsed = time.perf_counter() - t0
    out.put(ClientResult(plan.client, elapsed, {k: v[:used[k]] for k, v in lat.items() if used[k]},
                         idx.counters()))
    idx.close()


def preload(spec: IndexSpec, cfg: TransportConfig, uris: list[str], keys: int, seed: int) -> float:
    """Insert key numbers 0..keys-1 from one client; returns seconds taken."""
    idx = open_client(spec, cfg, uris)
    t0 = time.perf_counter()
    for s in range(0, keys, PRELOAD_BATCH):
        numbers = np.arange(s, min(keys, s + PRELOAD_BATCH), dtype=np.uint64)
        idx.put(key_space(numbers, spec.key_bytes, seed), numbers)
    took = time.perf_counter() - t0
    idx.close()
    return took


def summarize(results: list[ClientResult], op: str) -> list[str]:
    """Report lines: per op type Mops and latency percentiles, then per-op protocol costs."""
    elapsed = max(r.elapsed for r in results)
    counters: dict[str, int] = {}
    for r in results:
        for k, v in r.counters.items():
            counters[k] = counters.get(k, 0) + int(v)
    total = sum(len(v) for r in results for v in r.lat.values())
    lines = [f"{'op':<6}{'ops':>10}{'Mops':>9}{'p50 us':>9}{'p90 us':>9}{'p99 us':>9}{'p99.9 us':>10}"]
    for kind in ("get", "put"):
        samples = [r.lat[kind] for r in results if kind in r.lat]
        if not samples:
            continue
        lat = np.concatenate(samples).astype(np.float64) / 1000.0
        p = np.percentile(lat, [50, 90, 99, 99.9])
        lines.append(f"{kind:<6}{len(lat):>10}{len(lat) / elapsed / 1e6:>9.3f}"
                     f"{p[0]:>9.2f}{p[1]:>9.2f}{p[2]:>9.2f}{p[3]:>10.2f}")
    lines.append(f"{'all':<6}{total:>10}{total / elapsed / 1e6:>9.3f}   "
                 f"(wall {elapsed:.2f} s, slowest client)")
    if not counters or total == 0:
        return lines
    per = {k: v / total for k, v in counters.items()}
    hits, misses = counters.get("cache_hit", 0), counters.get("cache_miss", 0)
    retries = sum(counters.get(k, 0) for k in ("lock_fail", "version_mismatch", "torn_retry", "go_right"))
    if "rtts" in counters:
        lines.append(f"per op: {per['rtts']:.3f} RTTs, {per['reads']:.3f} READ, {per['writes']:.3f} WRITE, "
                     f"{per['cas']:.3f} CAS, {per.get('faa', 0):.4f} FAA; "
                     f"{per['bytes_read']:.1f} B read, {per['bytes_written']:.1f} B written")
    if hits + misses:
        lines.append(f"cache: hit ratio {hits / (hits + misses):.4f} ({hits} hits, {misses} misses), "
                     f"{counters.get('cache_bytes', 0) / len(results) / 2**20:.1f} MB per client")
    if "lock_fail" in counters:
        lines.append(f"retries: {retries / total:.4f} per op (lock CAS failures {counters['lock_fail']}, "
                     f"version mismatches {counters['version_mismatch']}, "
                     f"torn re-reads {counters['torn_retry']}, "
                     f"go-right reads {counters['go_right']}); splits {counters.get('splits', 0)}, "
                     f"lease take-overs {counters.get('lease_steals', 0)}")
    return lines


def cmd_bench_index(args: argparse.Namespace) -> int:
    cfg = transport_config(args)
    options: dict[str, Any] = {}
    for item in args.opt:
        if "=" not in item:
            raise UsageError(f"--opt {item!r}: use KEY=VALUE")
        k, v = item.split("=", 1)
        options[k] = float(v) if k == "cache_mb" else int(v) if v.lstrip("-").isdigit() else v
    if args.index in NATIVE:
        options.setdefault("cache_mb", args.cache_mb)
    if args.clients < 1 or args.keys < 1 or args.batch < 1:
        raise UsageError("--clients, --keys and --batch must be >= 1")
    ops = args.ops if args.ops else args.keys
    per_client = max(1, ops // args.clients)
    spec = IndexSpec(args.index, args.key_bytes, options)
    print(f"bench index: {args.index}, {args.key_bytes} B keys, {args.keys} keys preloaded, op {args.op}, "
          f"{args.clients} client(s) x {per_client} ops, batch {args.batch}, options {options}")
    print(f"transport: {cfg.describe()}" + (f", node size {cfg.node_size}" if not cfg.memory_nodes else ""))
    if args.index == "dict" and args.clients > 1:
        print("note: dict is in-process, so each client has its own dict (preload goes to none of them)")
    with memory_nodes(cfg) as uris:
        took = preload(spec, cfg, uris, args.keys, args.seed)
        print(f"preload: {args.keys} keys in {took:.2f} s ({args.keys / took / 1e6:.3f} Mops, one client)")
        spawn = mp.get_context("spawn")
        barrier, out = spawn.Barrier(args.clients), spawn.Queue()
        plans = [ClientPlan(c, spec, cfg, uris, args.op, args.keys, per_client, args.batch, args.seed)
                 for c in range(args.clients)]
        procs = [spawn.Process(target=run_client, args=(plan, barrier, out)) for plan in plans]
        for p in procs:
            p.start()
        results = []
        try:
            while len(results) < args.clients:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise UsageError("a client process failed (see its traceback above)")
                try:
                    results.append(out.get(timeout=1))
                except Exception:  # queue.Empty: keep waiting while clients run
                    continue
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    for line in summarize(results, args.op):
        print(line)
    return 0


def register(sub: Any) -> None:
    g = group(sub, "bench", "benchmarks (transport, indexes)")
    p = g.add_parser("index", help="throughput, latency and protocol costs of an index backend",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=choices_type(available(), "index"), default="chime",
                   help=f"backend: {', '.join(available())} (default chime)")
    p.add_argument("--keys", type=parse_size, default=parse_size("1M"),
                   help="keys to preload (K/M suffixes are x1024: 1M = 1048576; default 1M)")
    p.add_argument("--ops", type=parse_size, default=0, help="operations measured in total (default: --keys)")
    p.add_argument("--op", type=choices_type(OPS, "operation"), default="get",
                   help="get (lookups of preloaded keys), put (inserts of new keys), mixed (alternate get "
                   "and update batches)")
    p.add_argument("--key-bytes", type=int, choices=(8, 32), default=8, help="key width: 8 or 32 (default 8)")
    p.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    p.add_argument("--cache-mb", type=float, default=100.0,
                   help="native indexes: compute-side cache of internal nodes per client, MB (default 100)")
    p.add_argument("--batch", type=int, default=1024, help="keys per index call (default 1024)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra backend option (e.g. lease_ms=500, root_slot=9); repeatable")
    p.add_argument("--seed", type=int, default=1, help="key-space and workload seed (default 1)")
    add_transport_options(p)
    p.set_defaults(func=cmd_bench_index)
