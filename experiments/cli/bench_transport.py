"""``kvdm bench transport``: native verb loops (no Python per verb) over the dm.h transport.

For every (clients, verb, size, batch) it prints verbs/s, ns per verb and the counters per
verb, which must show the accounting: RTTs per verb = 1/batch, bytes per verb = the size.
Each client count runs all its cases in the same client processes. Over verbs on a software
RDMA device (SoftRoCE rdma_rxe, siw) or on a CPU emulated by qemu TCG the figures are
labelled EMULATION FIGURES: they check behaviour, they are not hardware latencies.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kvdm.experiments.replay.notes import emulation_note
from kvdm.transport import TransportConfig, connect, memory_nodes, parse_size

from . import UsageError, group
from .options import add_transport_options, transport_config

# name -> (dm bench op, bytes)
VERBS: dict[str, tuple[str, int]] = {
    "read64": ("read", 64),
    "read128": ("read", 128),
    "read1k": ("read", 1024),
    "write64": ("write", 64),
    "cas": ("cas", 8),
    "faa": ("faa", 8),
}


@dataclass
class BenchCase:
    """One measured configuration."""

    verb: str
    batch: int
    clients: int
    iters: int
    span: int


@dataclass
class BenchResult:
    case: BenchCase
    verbs_per_s: float
    ns_per_verb: float       # per client: elapsed / verbs it issued
    rtts_per_verb: float
    bytes_per_verb: float
    virtual_us_per_rtt: float


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _verb_list(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [n for n in names if n not in VERBS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown verb(s) {', '.join(bad) or text!r}; valid: {', '.join(VERBS)}")
    return names


def register(sub: Any) -> None:
    g = group(sub, "bench", "benchmarks that print their figures")
    p = g.add_parser("transport", help="verbs/s and ns/verb of the one-sided transport",
                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbs", type=_verb_list, default=list(VERBS),
                   help=f"comma-separated verbs to measure (default all: {','.join(VERBS)})")
    p.add_argument("--batches", type=_int_list, default=[1, 8, 32], help="verbs per doorbell (default 1,8,32)")
    p.add_argument("--clients", type=_int_list, default=[1, 2],
                   help="client processes running at once (default 1,2)")
    p.add_argument("--iters", type=int, default=2_000_000, help="verbs per client per case (default 2M)")
    p.add_argument("--span", type=parse_size, default=parse_size("1M"),
                   help="bytes of remote memory the random addresses cover (default 1M; a span that "
                   "fits in the CPU cache measures software overhead, a large one memory latency)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="instead of --iters, calibrate each case to run about this long")
    add_transport_options(p)
    p.set_defaults(func=cmd_bench_transport)


def _client(cfg: TransportConfig, uris: list[str], base: int, cases: list[BenchCase], seed: int,
            barrier: Any, out: Any) -> None:
    ctx = connect(cfg, uris)
    for i, case in enumerate(cases):
        op, size = VERBS[case.verb]
        barrier.wait()
        elapsed = ctx.bench_loop(op, base, case.span, size, case.batch, case.iters, seed)
        out.put((i, elapsed, ctx.counters()))
        ctx.reset_counters()
    ctx.close()


def _next_result(out: Any, procs: list[Any]) -> tuple[int, int, dict[str, int]]:
    while True:
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or all(p.exitcode is not None for p in procs):
                raise RuntimeError(f"a bench client exited (status {dead[0] if dead else 0}) "
                                   "before reporting") from None


def run_cases(cfg: TransportConfig, uris: list[str], base: int, cases: list[BenchCase]) -> Iterator[BenchResult]:
    """Run ``cases`` (all with the same client count) one after the other in the same client
    processes, started once (a process start costs seconds under emulation); every client
    starts each case together. Yields each case's result as it completes."""
    clients = cases[0].clients
    mpc = mp.get_context("spawn")
    barrier, out = mpc.Barrier(clients), mpc.Queue()
    procs = [mpc.Process(target=_client, args=(cfg, uris, base, cases, 7919 * (i + 1), barrier, out))
             for i in range(clients)]
    for p in procs:
        p.start()
    try:
        for i, case in enumerate(cases):
            results = [_next_result(out, procs) for _ in procs]
            assert all(r[0] == i for r in results), "bench clients out of step"
            total = case.iters * case.clients
            slowest = max(e for _, e, _ in results)
            counters = {k: sum(c[k] for _, _, c in results) for k in results[0][2]}
            yield BenchResult(
                case=case,
                verbs_per_s=total / (slowest / 1e9),
                ns_per_verb=sum(e for _, e, _ in results) / total,
                rtts_per_verb=counters["rtts"] / total,
                bytes_per_verb=(counters["bytes_read"] + counters["bytes_written"]) / total,
                virtual_us_per_rtt=counters["virtual_ns"] / max(counters["rtts"], 1) / 1e3,
            )
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()


def _calibrate(cfg: TransportConfig, uris: list[str], base: int, case: BenchCase, seconds: float) -> int:
    ctx = connect(cfg, uris)
    op, size = VERBS[case.verb]
    iters = 10_000
    elapsed = ctx.bench_loop(op, base, case.span, size, case.batch, iters)
    return max(1000, int(iters * seconds * 1e9 / max(elapsed, 1)))


def cmd_bench_transport(args: argparse.Namespace) -> int:
    cfg = transport_config(args)
    if args.iters < 1:
        raise UsageError("--iters must be >= 1")
    print(f"# kvdm bench transport: {cfg.describe()}; {args.span} bytes span")
    with memory_nodes(cfg) as uris:
        note = emulation_note(cfg, uris)
        if note:
            print(note)
        setup = connect(cfg, uris)
        base = setup.alloc(setup.node_ids[0], args.span, 4096)
        header = (f"{'clients':>7} {'verb':>8} {'batch':>5} {'verbs/s':>12} {'ns/verb':>9} "
                  f"{'RTT/verb':>9} {'B/verb':>7}")
        if cfg.latency_model != "none":
            header += f" {'model us/RTT':>12}"
        print(header)
        for clients in args.clients:
            cases = [BenchCase(verb, batch, clients, args.iters, args.span)
                     for verb in args.verbs for batch in args.batches]
            if args.seconds > 0:
                for case in cases:
                    case.iters = _calibrate(cfg, uris, base, case, args.seconds)
            for r in run_cases(cfg, uris, base, cases):
                line = (f"{clients:>7} {r.case.verb:>8} {r.case.batch:>5} {r.verbs_per_s:>12,.0f} "
                        f"{r.ns_per_verb:>9.1f} {r.rtts_per_verb:>9.4f} {r.bytes_per_verb:>7.1f}")
                if cfg.latency_model != "none":
                    line += f" {r.virtual_us_per_rtt:>12.2f}"
                print(line, flush=True)
        setup.close()
    print("# ns/verb is per client (elapsed / verbs it issued); verbs/s sums all clients",
          file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    return 0
