"""``kvdm reproduce``: regenerate the paper's figures, the load curves, and a report (see
:mod:`kvdm.experiments.reproduce.run`)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from kvdm.transport import rdma_devices

from . import UsageError, choices_type, count0, non_negative, positive
from .options import add_transport_options, transport_config
from .options_redis import add_redis_options, given_redis_flags, redis_options
from .replay import keeps_order, mode_type
from .traces import add_trace_options, trace_options


def _csv(kind: Any, what: str) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list, got {text!r}") from None

    parse.__name__ = what
    return parse


def register(sub: Any) -> None:
    from kvdm.experiments.reproduce.run import STEPS
    from kvdm.traces import RANGE_SEMANTICS

    p = sub.add_parser(
        "reproduce", help="regenerate the paper's figures (Fig. 1-3), load curves and a report",
        description="One command for every figure of the paper we have data for: Fig. 1a/1b/2a/2b of each "
        "trace, Fig. 3a/3b (range and get p99 per 10-minute bin for chime, sherman, redis: 32 B SHA-256 keys, "
        "8 B values, 10 min warm-up, shm transport with a latency model printed on the figure), plus load "
        "curves (closed-loop client sweep, compressed open-loop replays), RTT/byte costs per op, and the engine's "
        "view (step engine: the sweep of `kvdm bench index --op chain`, longest prefix match per strategy and "
        "chain insert against the chain length N = 1..512, per backend, drawn as p99 against N). Fig. 3 "
        "uses a compressed, unloaded replay by default (1 client, ops back to back, binned by trace time: the "
        "same latencies as the 59-minute real-time run); --realtime replays at the trace's timestamps. Writes "
        "OUT/figures/*.png (+ .csv for trace figures), OUT/runs/<run>/ (for `kvdm plot`), OUT/report.md "
        "and OUT/report.html. The latency model defaults to virtual here (RTT 2 us, 100 Gb/s), none over verbs "
        "(--same-substrate, or a verbs:// --memory-node).")
    p.add_argument("--out", default="reproduction", help="output folder (default ./reproduction)")
    p.add_argument("--quick", action="store_true",
                   help="small version (the 400-request conversation fixture, 0.5-min bins, clients 1,2, "
                   "paces x1..x1000, 2 s per load point; engine step at N = 1,8,64 with 200 chains and 10,000 "
                   "background keys): about a minute, what CI runs; explicit flags override")
    p.add_argument("--traces", type=_csv(str, "trace list"), default=None, metavar="A,B",
                   help="traces for Fig. 1-2 (default conversation,synthetic)")
    p.add_argument("--fig3-traces", type=_csv(str, "trace list"), default=None, metavar="A,B",
                   help="traces replayed for Fig. 3; the first also drives the load curves (default conversation)")
    p.add_argument("--backends", type=_csv(str, "backend list"), default=None, metavar="A,B",
                   help="index backends for Fig. 3, the load curves and the engine step (default "
                   "chime,sherman,redis; dict runs too; race keeps no key order: only with --steps engine)")
    add_trace_options(p, trace=False)  # --format, --skip-bad, --limit (of each trace), ...
    p.add_argument("--realtime", action="store_true",
                   help="Fig. 3 at the trace's own timestamps (the full conversation trace takes 59 min per "
                   "backend); the same as --fig3-mode realtime")
    p.add_argument("--fig3-mode", type=mode_type, default=None, metavar="MODE",
                   help="Fig. 3 replay mode: closed (default: compressed and unloaded, 1 client, ops back to "
                   "back), realtime, or compressed:X (open loop at X times the trace's pace)")
    p.add_argument("--range-semantics", type=choices_type(RANGE_SEMANTICS, "range semantics"), default="scan",
                   help="scan (default: from the run's first key, at most run-length entries) or bounds "
                   "([min, max] of the run's keys: ~69,000 entries per range on SHA-256 keys, very slow)")
    p.add_argument("--warmup-min", type=non_negative, default=None, help="warm-up minutes of trace time (default 10)")
    p.add_argument("--bin-min", type=positive, default=None, help="minutes of trace time per bin (default 10)")
    p.add_argument("--clients", type=_csv(int, "client counts"), default=None, metavar="1,2,4",
                   help="closed-loop client sweep of the load curves (default 1,2,4; 1 always runs; points with "
                   "more busy processes than cores are labelled oversubscribed)")
    p.add_argument("--compress", type=_csv(float, "compression factors"), default=None, metavar="1,10,100",
                   help="open-loop paces of the load curves, the trace's timestamps divided by each (default "
                   "1,10,30,100,300,1000,3000); the sweep ends unpaced (the closed-loop 1-client run)")
    p.add_argument("--load-duration", type=positive, default=None, metavar="S",
                   help="wall seconds per load-curve point (default 15)")
    p.add_argument("--steps", type=_csv(str, "steps"), default=STEPS, metavar="A,B",
                   help=f"steps to run: {', '.join(STEPS)} (default all)")
    p.add_argument("--resume", action="store_true", help="keep runs already under OUT/runs instead of re-running")
    p.add_argument("--cache-mb", type=non_negative, default=None,
                   help="compute-side cache budget of the native indexes in MB (backend default if unset)")
    same = p.add_argument_group("same substrate (where an RDMA device exists, e.g. the SoftRoCE guest)")
    same.add_argument("--same-substrate", action="store_true",
                   help="both sides on this host's kernel and network: the native indexes over verbs (a memory "
                   "node `kvdm memnode serve --transport verbs` started here on --verbs-device, or the verbs "
                   "--memory-node given), Redis a server on this host over TCP; no latency model; the report "
                   "labels emulation (SoftRoCE, TCG) and states the ratio between the two sides")
    same.add_argument("--verbs-device", default=None, metavar="DEV",
                   help="--same-substrate: RDMA device of the memory node started here (default: the first one)")
    same.add_argument("--verbs-gid-index", type=count0, default=None, metavar="N",
                   help="--same-substrate: its GID index (default: the memory node's choice, the first RoCE v2 "
                   "IPv4 GID)")
    add_transport_options(p)
    p.set_defaults(latency_model=None)  # virtual, or none over verbs (resolved in config_from_args)
    add_redis_options(p)
    p.set_defaults(func=cmd_reproduce)


def config_from_args(args: argparse.Namespace) -> Any:
    from kvdm.experiments.reproduce.run import ReproduceConfig
    from kvdm.index import available

    given = {k: v for k, v in {
        "traces": args.traces, "fig3_traces": args.fig3_traces, "backends": args.backends,
        "warmup_min": args.warmup_min, "bin_min": args.bin_min, "clients": args.clients,
        "compress": args.compress, "load_duration_s": args.load_duration}.items() if v is not None}
    for b in given.get("backends", ()):
        if b not in available():
            raise UsageError(f"unknown backend {b!r}; valid: {', '.join(available())}")
    if given_redis_flags(args) and "redis" not in given.get("backends", ("redis",)):
        raise UsageError(f"{', '.join(given_redis_flags(args))} only apply when redis is among --backends")
    if args.realtime and args.fig3_mode not in (None, "realtime"):
        raise UsageError(f"--realtime and --fig3-mode {args.fig3_mode} contradict each other")
    substrate = same_substrate(args)
    common = {"out": Path(args.out), "trace_options": trace_options(args),
              "fig3_mode": "realtime" if args.realtime else (args.fig3_mode or "closed"),
              "range_semantics": args.range_semantics, "transport": transport_config(args),
              "cache_mb": args.cache_mb, "redis_options": redis_options(args, start_local=False),
              "steps": tuple(args.steps), "resume": args.resume, **substrate, **given}
    return ReproduceConfig.quick_defaults(**common) if args.quick else ReproduceConfig(**common)


def same_substrate(args: argparse.Namespace) -> dict[str, Any]:
    """The latency model (virtual by default; none over verbs, where the network is real) and,
    with --same-substrate, the verbs transport and its device: refused in one line where there is
    no RDMA device, or not the one named."""
    verbs_nodes = any(u.startswith("verbs://") for u in args.memory_node)
    if not args.same_substrate:
        if args.verbs_device is not None or args.verbs_gid_index is not None:
            raise UsageError("--verbs-device and --verbs-gid-index only apply with --same-substrate")
        if args.latency_model is None:
            args.latency_model = "none" if verbs_nodes or args.transport == "verbs" else "virtual"
        return {}
    if args.latency_model not in (None, "none"):
        raise UsageError(f"--same-substrate runs over verbs, whose network is real: --latency-model "
                         f"{args.latency_model} is the shm transport's model; leave it out")
    if args.transport == "shm" or (args.memory_node and not verbs_nodes):
        raise UsageError("--same-substrate runs the native indexes over verbs: give no --transport shm and no "
                         "shm --memory-node")
    args.latency_model, args.transport = "none", "verbs"
    if verbs_nodes:
        return {"same_substrate": True}
    devices = rdma_devices()
    if not devices:
        raise UsageError("--same-substrate needs an RDMA device, and this machine has none (/sys/class/infiniband "
                         "is empty or absent): run it where one exists, e.g. the SoftRoCE guest of .ci/rdma-tests")
    if args.verbs_device is not None and args.verbs_device not in devices:
        raise UsageError(f"--verbs-device {args.verbs_device}: no such RDMA device here (have: {', '.join(devices)})")
    return {"same_substrate": True, "verbs_device": args.verbs_device or devices[0],
            "verbs_gid_index": args.verbs_gid_index}


def check_inputs(cfg: Any) -> None:
    """What would fail mid-run, checked before anything is written: backends that cannot run a
    step, and every trace (found, and readable)."""
    from kvdm.traces import load

    replays = [s for s in ("fig3", "load") if s in cfg.steps]
    unordered = [b for b in cfg.backends if not keeps_order(b)]
    if unordered and replays:
        raise UsageError(f"{', '.join(unordered)} keeps no key order, so it cannot run the {' and '.join(replays)} "
                         "step(s): the paper mapping issues range queries; leave it out of --backends, or give "
                         "--steps engine (the engine step runs it)")
    names = (cfg.traces if "traces" in cfg.steps else ()) + (cfg.fig3_traces if replays else ())
    for name in dict.fromkeys(names):
        load(name, cfg.trace_options, warn=False)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kvdm.experiments.reproduce.run import reproduce

    cfg = config_from_args(args)
    check_inputs(cfg)
    existed = cfg.out.exists()
    try:
        md, ht = reproduce(cfg)
    except BaseException:
        # a folder this run created and left without a finished replay (nothing --resume could keep) goes
        if not existed and not any(cfg.out.glob("runs/*/run.json")):
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    print(f"report: {md}\nreport: {ht}")
    return 0
