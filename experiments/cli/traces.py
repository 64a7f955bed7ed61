"""``kvdm traces list|stats|fetch|generate|map``: named traces, characterisation, generators.

:func:`add_trace_options` / :func:`trace_options` / :func:`load_trace_from_args` are the trace
flags every command that reads a trace shares (figures, replay, reproduce).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from kvdm.traces import ARRIVALS, FORMATS, Trace, TraceOptions

from . import UsageError, choices_type, count0, group, positive


def add_trace_options(p: argparse.ArgumentParser, positional: bool = True, trace: bool = True) -> None:
    """The trace argument (NAME or PATH; ``trace=False``: none, the command names its traces
    itself) and the loader flags."""
    if trace and positional:
        p.add_argument("trace", metavar="NAME|PATH",
                       help="a trace file (.jsonl, .csv, optionally gzipped) or a name: conversation, synthetic, "
                       "toolagent, ...")
    elif trace:
        p.add_argument("--trace", default="conversation", metavar="NAME|PATH",
                       help="trace file or name: conversation (default), synthetic, toolagent after "
                       "`kvdm traces fetch`, or a path")
    g = p.add_argument_group("trace loading")
    g.add_argument("--format", type=choices_type(FORMATS, "trace format"), default="auto",
                   help="auto (default: from the first line), mooncake (JSONL, 512-token blocks), bailian "
                   "(Bailian / ServeGen JSONL, 16-token blocks), bailian-csv (the same as CSV)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) malformed lines instead of failing")
    g.add_argument("--limit", type=count0, default=0, metavar="N",
                   help="use only the first N requests (default 0: all)")
    g.add_argument("--strict-order", action="store_true",
                   help="reject a trace whose timestamps are out of order (default: sort them, with a warning)")
    g.add_argument("--arrivals", type=choices_type(ARRIVALS, "arrival model"), default="even",
                   help="a trace without timestamps (ServeGen offline): even (default: one request every 1/R s) "
                   "or poisson (exponential gaps, mean 1/R s, seed 0); recorded with the run")
    g.add_argument("--rate", type=positive, default=1.0, metavar="R",
                   help="requests per second of --arrivals (default 1)")


def trace_options(args: argparse.Namespace) -> TraceOptions:
    """The TraceOptions the :func:`add_trace_options` flags describe."""
    return TraceOptions(format=args.format, skip_bad=args.skip_bad, limit=args.limit,
                        strict_order=args.strict_order, arrivals=args.arrivals, rate=args.rate)


def load_trace_from_args(args: argparse.Namespace) -> Trace:
    """Load the trace named by :func:`add_trace_options` flags (warnings on stderr)."""
    from kvdm.traces import load

    return load(args.trace, trace_options(args))


def register(sub: Any) -> None:
    from kvdm.traces import INSERT_MODES, KEY_SCHEMES, KINDS, MAPPINGS

    g = group(sub, "traces", "KV-cache traces: list, characterise, fetch, generate, map to operations")
    p = g.add_parser("list", help="known trace names and where they resolve")
    p.set_defaults(func=cmd_list)

    p = g.add_parser("stats", help="characterise a trace next to the paper's reference values",
                     description="Requests, blocks, infinite-cache hit fraction, the share of requests "
                     "above the paper's hit-ratio thresholds, sequential fraction (Fig. 2a) and runs-test "
                     "share (Fig. 2b), each beside the value the paper reports.")
    add_trace_options(p)
    p.set_defaults(func=cmd_stats)

    p = g.add_parser("fetch", help="download a public trace into the cache and verify its sha256",
                     description="Download a known trace (needs internet) into the cache folder "
                     "($KVDM_CACHE_DIR/traces or ~/.cache/kvdm/traces); nothing is kept unless "
                     "the sha256 matches.")
    from kvdm.traces import KNOWN

    p.add_argument("name", type=choices_type(tuple(KNOWN), "trace"), help=", ".join(KNOWN))
    p.add_argument("--url", help="download from this URL instead (a mirror, or file:// for an offline copy)")
    p.add_argument("--force", action="store_true", help="download even if a verified copy is cached")
    p.set_defaults(func=cmd_fetch)

    p = g.add_parser("generate", help="write a seeded synthetic trace in the Mooncake format",
                     description="Synthetic workloads (see kvdm.traces.generators): rag, agent, chat, "
                     "ycsb-uniform, ycsb-zipf. Written as Mooncake JSONL (gzip if OUT ends in .gz).")
    p.add_argument("kind", type=choices_type(KINDS, "generator"), help=", ".join(KINDS))
    p.add_argument("--out", required=True, help="output file (.jsonl or .jsonl.gz)")
    from kvdm.traces import GenConfig

    for f in dataclasses.fields(GenConfig):
        if f.name != "kind":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"(default {f.default})")
    p.set_defaults(func=cmd_generate)

    p = g.add_parser("map", help="map a trace to an operation stream and summarise it",
                     description="The operation stream a replay feeds to an index (see "
                     "kvdm.traces.mapping): ops per kind, blocks covered and expected hits.")
    add_trace_options(p)
    p.add_argument("--mapping", type=choices_type(MAPPINGS, "mapping"), default="paper",
                   help="paper (default: runs -> range, others -> get, then insert) or prefix")
    p.add_argument("--keys", type=choices_type(KEY_SCHEMES, "key scheme"), default="sha256",
                   help="key scheme: sha256 (default, 32 B, the paper's), u64 (8 B chained hash), id")
    p.add_argument("--inserts", type=choices_type(INSERT_MODES, "insert mode"), default="timed",
                   help="timed (default), untimed (issued, not measured), none (preload every key)")
    p.add_argument("--out", help="also save the stream as .npz (OpStream.load reads it)")
    p.set_defaults(func=cmd_map)


def cmd_list(args: argparse.Namespace) -> int:
    from kvdm.traces import KNOWN, find, search_dirs

    print("searched, in order: " + ", ".join(map(str, search_dirs())))
    for name, info in KNOWN.items():
        path = find(name)
        where = str(path) if path else f"not present (kvdm traces fetch {name})"
        print(f"{name:13s} {info.description}\n{'':13s} {where}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from kvdm.traces import RUNS_TEST_VARIANT, compute_stats

    t0 = time.perf_counter()
    trace = load_trace_from_args(args)
    load_s = time.perf_counter() - t0
    stats = compute_stats(trace)
    print(f"trace {trace.name}: {trace.source} ({trace.format}, {trace.block_tokens}-token blocks; "
          f"loaded in {load_s * 1000:.0f} ms)")
    print(f"  arrivals: {trace.arrivals}" + (f"; {trace.reordered:,} request(s) were out of timestamp order "
                                             "(sorted)" if trace.reordered else ""))
    rows = [("quantity", "measured", "paper")] + stats.rows()
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for q, m, ref in rows:
        print(f"  {q:<{w0}}  {m:>{w1}}  {ref}".rstrip())
    print(f"  runs test: {RUNS_TEST_VARIANT}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kvdm.traces import FetchError, fetch

    try:
        path = fetch(args.name, url=args.url, force=args.force)
    except FetchError as exc:
        print(f"kvdm: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path} (sha256 verified)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from kvdm.traces import GenConfig, generate, write_mooncake

    cfg = GenConfig(kind=args.kind, **{f.name: getattr(args, f.name) for f in dataclasses.fields(GenConfig)
                                       if f.name != "kind"})
    if not args.out.endswith((".jsonl", ".jsonl.gz")):
        raise UsageError("--out must end in .jsonl or .jsonl.gz")
    trace = generate(cfg)
    write_mooncake(trace, args.out)
    print(f"{args.out}: {trace.n_requests:,} requests, {trace.n_blocks:,} block references "
          f"({cfg.kind}, seed {cfg.seed})")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from kvdm.traces import map_trace

    trace = load_trace_from_args(args)
    t0 = time.perf_counter()
    ops = map_trace(trace, args.mapping, args.keys, args.inserts)
    print(f"trace {trace.name}: {trace.n_requests:,} requests -> {ops.n_ops:,} ops "
          f"(mapping {ops.mapping}, keys {ops.key_scheme} {ops.key_bytes} B, inserts {ops.inserts}; "
          f"{time.perf_counter() - t0:.2f} s)")
    for kind, s in ops.summary().items():
        print(f"  {kind:13s} ops {s['ops']:>9,}  blocks {s['blocks']:>10,}  expected hits "
              f"{s['expected_hits']:>10,}  timed {s['timed']:>9,}")
        if "expected_range_count" in s:
            print(f"  {'':13s} range_count over [lo, hi] (entries the ranges return): "
                  f"{s['expected_range_count']:,}")
    if len(ops.preload_keys):
        print(f"  preload      keys {len(ops.preload_keys):,}")
    if args.out:
        ops.save(args.out)
        print(f"saved {args.out}")
    return 0
