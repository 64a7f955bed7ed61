"""``kvdm replay``: replay a KV-cache trace against an index and report per-op latency and costs."""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvdm.experiments.replay.engine import (
    DRIVERS,
    LAUNCHERS,
    ReplayConfig,
    load_stream,
    parse_mode,
    replay,
)
from kvdm.experiments.replay.metrics import RETRY_COUNTERS
from kvdm.experiments.replay.results import RunResults
from kvdm.index import LPM_STRATEGIES, TOKEN_KEY_SCHEMES, IndexSpec, available, backend, remote_memory
from kvdm.index import backends as registered
from kvdm.traces import INSERT_MODES as INSERTS
from kvdm.traces import KEY_SCHEMES, MAPPINGS, RANGE_SEMANTICS, key_bytes_of

from . import UsageError, choices_type, count, count0, non_negative, positive
from .options import add_transport_options, transport_config
from .traces import add_trace_options, load_trace_from_args, trace_options

if TYPE_CHECKING:  # imported where the summary is printed: MPI ranks other than 0 never need it
    import pandas as pd


def mode_type(text: str) -> str:
    """argparse type of a replay mode (closed, realtime, compressed:X)."""
    try:
        parse_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_index_options(parser: argparse.ArgumentParser, default: str = "chime") -> None:
    """--index, --cache-mb and the Redis options (shared by replay and reproduce)."""
    g = parser.add_argument_group("index")
    g.add_argument("--index", type=choices_type(available(), "index"), default=default,
                   help=f"index backend: {', '.join(available())} (default {default})")
    g.add_argument("--cache-mb", type=non_negative, default=None,
                   help="compute-side cache budget of the native indexes in MB (backend default if unset)")
    g.add_argument("--lpm", type=choices_type(LPM_STRATEGIES, "LPM strategy"), default=None,
                   help="native indexes: how a prefix match runs: auto (default: parallel, or kary where a cost "
                   "model over the modelled RTT and bandwidth finds it cheaper and presence has proved "
                   "prefix-closed), parallel (every block's lookup in one doorbell), kary (rounds of 16 evenly "
                   "spaced probes; assumes prefix closure), sequential (one block per round trip until the "
                   "first miss); index option lpm")
    g.add_argument("--index-opt", action="append", default=[], metavar="KEY=VALUE", type=parse_index_opt,
                   help="a backend option, repeatable, e.g. window=1 (native indexes: at most 1 lookup per "
                   "doorbell; default 0 = all), lpm=kary, lease_ms=1000; an unknown key lists the valid ones")
    redis_opts = _redis_options_module()
    if redis_opts is not None:
        redis_opts.add_redis_options(parser)


def parse_index_opt(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, bool | int | float | str value): true/false (any case) are
    booleans, so ``lpm_exact=false`` is False and not the truthy string "false"."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if raw.strip().lower() in ("true", "false"):
        return key.strip(), raw.strip().lower() == "true"
    value: Any = raw
    for convert in (int, float):
        try:
            value = convert(raw)
            break
        except ValueError:
            continue
    return key.strip(), value


def _redis_options_module() -> Any:
    try:
        return importlib.import_module("kvdm.experiments.cli.options_redis")
    except ImportError:
        return None


def index_spec(args: argparse.Namespace, key_bytes: int) -> IndexSpec:
    """The IndexSpec the index options describe."""
    options: dict[str, Any] = {}
    if remote_memory(args.index) and args.cache_mb is not None:
        options["cache_mb"] = args.cache_mb
    options.update(dict(getattr(args, "index_opt", [])))
    if getattr(args, "lpm", None) is not None:
        if not remote_memory(args.index):
            raise ValueError(f"--lpm applies to the native indexes ({', '.join(registered(remote_memory=True))}), "
                             f"not {args.index}"
                             + ("; Redis prefix matches: --redis-prefix pipeline|lua" if args.index == "redis" else ""))
        options["lpm"] = args.lpm
    redis_opts = _redis_options_module()
    if redis_opts is not None:
        redis_opts.check_redis_flags(args, args.index)
        if args.index == "redis":
            options.update(redis_opts.redis_options(args, start_local=False))  # replay() scopes the server
    backend(args.index).check_options(key_bytes, options)  # a bad value fails before the run prints
    return IndexSpec(args.index, key_bytes, options)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="replay a trace against an index (the main job)",
        description="Replay a KV-cache trace's index operations through N client processes and print "
        "per-op throughput, latency percentiles, RTTs, verbs and bytes per op. With no flags: the "
        "conversation trace on chime over an embedded shm memory node, closed loop.")
    add_trace_options(p, positional=False)
    p.add_argument("--clients", type=count, default=None,
                   help="client processes (default 2; with --launcher mpi: the MPI world size)")
    p.add_argument("--launcher", type=choices_type(LAUNCHERS, "launcher"), default="local",
                   help="local (client processes on this host; default) or mpi (run as `mpirun -np N kvdm replay "
                   "--launcher mpi ...`: each rank is a client, rank 0 reads the trace, shares the backend and "
                   "writes the merged results; see docs)")
    p.add_argument("--mapping", type=choices_type(MAPPINGS, "mapping"), default=None,
                   help="paper (runs -> range queries, other blocks -> gets, then inserts) or prefix "
                   "(longest-prefix match, then insert the missing blocks); default paper (prefix with --tokens, and "
                   "on an index that keeps no key order: race)")
    p.add_argument("--key-scheme", type=choices_type(REPLAY_KEY_SCHEMES, "key scheme"), default=None,
                   help="id (integer id, 8 B: runs stay adjacent), u64 (chained 64-bit hash), "
                   "sha256 (32 B, the paper's key); with --tokens: sha256 (32 B chain over the chunk's tokens), "
                   "u64 (its first 8 B) or vllm-sha256 (vLLM's block hash); default id (sha256 with --tokens)")
    p.add_argument("--tokens", type=count0, nargs="?", const=0, default=None, metavar="CHUNK",
                   help="token level: synthesise each request's prompt from its hash_ids, key it in chunks of "
                   "CHUNK tokens (default: the trace's block size, whose hits then equal the block-level ground "
                   "truth) with kvdm.index.tokens, and replay the engine's view over those keys; prints the "
                   "token hit ratio")
    p.add_argument("--inserts", type=choices_type(INSERTS, "insert mode"), default="timed",
                   help="timed (issued and measured), untimed (issued, not in statistics), none (preload "
                   "every key first); default timed")
    p.add_argument("--mode", type=mode_type, default="closed",
                   help="closed (as fast as the clients can), realtime (trace timestamps), compressed:X "
                   "(timestamps / X); default closed")
    p.add_argument("--duration", type=non_negative, default=0.0,
                   help="stop after S seconds of wall time (default: the whole trace)")
    p.add_argument("--warmup-min", type=non_negative, default=0.0,
                   help="minutes of trace time excluded from the whole-run figures (the paper uses 10)")
    p.add_argument("--bin-min", type=positive, default=10.0, help="minutes of trace time per bin (default 10)")
    p.add_argument("--out", default=None, help="results directory (default results/run-<time>-<index>)")
    p.add_argument("--range-semantics", type=choices_type(RANGE_SEMANTICS, "range semantics"), default="bounds",
                   help="paper mapping: what a range op over a run asks: bounds ([min, max] of the run's keys; "
                   "on hash keys this spans unrelated keys) or scan (from the run's first key, at most the run's "
                   "length entries: what a B+tree range over an adjacent run costs); default bounds")
    p.add_argument("--driver", type=choices_type(DRIVERS, "driver"), default="auto",
                   help="measuring loop: c (native indexes: each op run and timed in C, no Python per op), "
                   "python (op by op from Python: what bounds the harness), auto (c where the backend has "
                   "it; default)")
    add_index_options(p)
    add_transport_options(p)
    p.set_defaults(func=cmd_replay)


REPLAY_KEY_SCHEMES = KEY_SCHEMES + tuple(k for k in TOKEN_KEY_SCHEMES if k not in KEY_SCHEMES)


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    tokens = args.tokens is not None
    key_scheme = args.key_scheme or ("sha256" if tokens else "id")
    if key_scheme in TOKEN_KEY_SCHEMES and key_scheme not in KEY_SCHEMES and not tokens:
        raise ValueError(f"--key-scheme {key_scheme} keys token chunks: it needs --tokens")
    key_bytes = TOKEN_KEY_SCHEMES[key_scheme] if tokens else key_bytes_of(key_scheme)
    return ReplayConfig(
        trace=args.trace, index=index_spec(args, key_bytes), transport=transport_config(args),
        clients=args.clients or 2, launcher=args.launcher,
        mapping=args.mapping or ("prefix" if tokens or not keeps_order(args.index) else "paper"),
        key_scheme=key_scheme, trace_options=trace_options(args),
        tokens=tokens, chunk_tokens=args.tokens or 0, inserts=args.inserts,
        mode=args.mode, duration_s=args.duration, warmup_min=args.warmup_min, bin_min=args.bin_min,
        driver=args.driver, range_semantics=args.range_semantics,
        name=args.out or f"results/run-{time.strftime('%Y%m%d-%H%M%S')}-{args.index}",
    )


def derived_values(per: dict[str, float]) -> dict[str, float]:
    """Retries per op (lock CAS failures, version mismatches, go-right reads, torn re-reads) and the
    compute-side cache hit ratio, where the backend reports them, from one row's
    ``<counter>_per_op`` values (missing values count as absent; no pandas needed, so a bench's
    MPI rank 0 reports without importing it)."""
    out: dict[str, float] = {}
    retry = [v for c in RETRY_COUNTERS if (v := per.get(f"{c}_per_op")) is not None and v == v]  # v == v: not NaN
    if retry:
        out["retries_per_op"] = float(sum(retry))
    hit, miss = per.get("cache_hit_per_op"), per.get("cache_miss_per_op")
    if hit is not None and miss is not None:
        looked = hit + miss
        out["cache_hit_pct"] = float(100 * hit / looked) if looked > 0 else 100.0
    return out


def derived_columns(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """:func:`derived_values` of each row of a results table, as columns."""
    import pandas as pd

    table = pd.DataFrame([derived_values(r) for r in rows.to_dict("records")], index=rows.index)
    return {c: table[c] for c in table.columns}


def print_summary(res: RunResults) -> None:
    """The per-op table of the whole measured period."""
    import pandas as pd

    rows = res.rows[res.rows["bin"] == -1] if len(res.rows) else res.rows
    if rows.empty:
        print("no operations measured")
        return
    cols = {"op": "op", "ops": "ops", "ops_per_s": "ops/s", "block_ops_per_s": "block-ops/s", "p50_us": "p50 us",
            "p90_us": "p90 us", "p99_us": "p99 us", "p999_us": "p99.9 us", "rtts_per_op": "RTT/op",
            "reads_per_op": "READ/op", "writes_per_op": "WRITE/op", "cas_per_op": "CAS/op", "faa_per_op": "FAA/op",
            "bytes_read_per_op": "B read/op", "bytes_written_per_op": "B written/op",
            "retries_per_op": "retries/op", "cache_hit_pct": "cache hit %",
            "server_cpu_us_per_op": "server CPU us/op"}
    rows = rows.assign(**derived_columns(rows))
    show = rows[[c for c in cols if c in rows.columns]].rename(columns=cols)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:,.2f}".format):
        print(show.to_string(index=False))
    hits, expected = int(rows["hits"].sum()), int(rows["expected_hits"].sum())
    mism = int(rows["hit_mismatch"].sum())
    print(f"{'chunk' if 'tokens' in res.meta else 'block'} hits {hits:,} (infinite-cache ground truth {expected:,}; "
          f"{mism} ops differ)")
    tok = res.meta.get("tokens")
    if tok:
        same = "equal" if tok["block_truth_hit_tokens"] == tok["hit_tokens"] and not tok["prompts_differing"] \
            else f"{tok['prompts_differing']:,} prompts differ"
        print(f"token hits {tok['hit_tokens']:,} of {tok['prompt_tokens']:,} prompt tokens "
              f"({100 * tok['hit_ratio']:.2f}%) in {tok['prompts']:,} prompts, chunks of {tok['chunk_tokens']} tokens; "
              f"block-level ground truth {tok['block_truth_hit_tokens']:,} tokens ({same}); "
              f"prompts synthesised and keyed in {tok['hash_s']:.1f} s")
    run = res.meta.get("run", {})
    if run.get("in_ops_share") is not None:
        skew_ms = 1e3 * run.get("start_skew_s", 0.0)
        print(f"clients spent {100 * run['in_ops_share']:.1f}% of their time inside index ops (the rest is the "
              f"harness); run span {run['wall_s']:.2f} s, clients started {skew_ms:.1f} ms apart")


def keeps_order(index: str) -> bool:
    """Whether a backend keeps its keys in order (serves range queries), from the registry."""
    return backend(index).ordered


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    loaded: list[Any] = []

    def prepare() -> Any:
        """Read, check and map the trace, then print the header: its errors come alone."""
        from kvdm.traces import OP_RANGE

        trace = load_trace_from_args(args)
        stream = load_stream(cfg, trace)
        if not keeps_order(cfg.index.name) and bool((stream.kind == OP_RANGE).any()):
            raise UsageError(f"{cfg.index.name} keeps no key order, but the {cfg.mapping} mapping issues range "
                             "queries: use --mapping prefix (the default for this index), or an ordered index "
                             "(chime, sherman)")
        print("# kvdm replay")
        for k, v in cfg.describe():
            print(f"#   {k:<10} {v}")
        print(f"#   {'arrivals':<10} {trace.arrivals}")
        if args.mapping is None and args.tokens is None and not keeps_order(cfg.index.name):
            print(f"#   note: {cfg.index.name} keeps no key order, so it replays with the prefix mapping (the paper "
                  "mapping's range queries need an ordered index)")
        loaded.append(trace)
        return stream

    if cfg.launcher == "mpi":
        from kvdm.experiments.replay.launch_mpi import replay_mpi, world

        size = world().size
        if args.clients is not None and args.clients != size:
            raise UsageError(f"--clients {args.clients} with --launcher mpi: the clients are the MPI ranks "
                             f"(mpirun -np {size}); leave --clients out")
        cfg = replace(cfg, clients=size)
        res = replay_mpi(cfg, prepare)
        if res is None:  # a rank other than 0: rank 0 reports
            return 0
    else:
        res = replay(cfg, prepare())
    trace = loaded[0]
    res.meta["trace"].update(source=trace.source, format=trace.format, arrivals=trace.arrivals,
                             reordered=trace.reordered, skipped_lines=trace.skipped_lines,
                             length_mismatches=trace.length_mismatches())
    print_summary(res)
    if res.meta["run"]["interrupted"]:
        print("# interrupted: the figures cover what ran before Ctrl-C")
    path = res.write(cfg.name)
    print(f"# results: {path}/results.parquet (+ .csv, run.json)")
    return 130 if res.meta["run"]["interrupted"] else 0


