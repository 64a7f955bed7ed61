"""``kvdm plot RESULTS...``: a figure from stored runs (see :mod:`kvdm.experiments.figures.plots`)."""

from __future__ import annotations

import argparse
from typing import Any

from . import UsageError, choices_type


def register(sub: Any) -> None:
    from kvdm.experiments.figures.plots import AXES, METRICS, OPS

    p = sub.add_parser(
        "plot", help="a figure from stored runs (compare backends, transports, latency models)",
        description="Draw one metric of one op type from runs written by `kvdm replay --out` or "
        "`kvdm reproduce` (a run folder, or any folder with run folders below it). Lines and bars are "
        "labelled by what differs between the runs (backend, transport, latency model, trace, keys, ...).")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="run folders, or folders holding run folders")
    p.add_argument("--metric", type=choices_type(tuple(METRICS), "metric"), default="p99",
                   help=f"what to plot: {', '.join(METRICS)} (default p99)")
    p.add_argument("--op", type=choices_type(OPS, "op"), default="get",
                   help=f"op type: {', '.join(OPS)} (default get; ignored with --by op)")
    p.add_argument("--by", type=choices_type(AXES, "axis"), default="bin",
                   help="x axis: bin (per time bin, a line per run), clients (whole run against client count), "
                   "throughput (whole run against ops/s: load curves), op (bars per op type, one per run); "
                   "default bin")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--title", default="", help="figure title (default: metric, op and axis)")
    p.add_argument("--log", action="store_true", help="logarithmic y axis")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from kvdm.experiments.figures.plots import load_runs, plot_runs

    try:
        runs = load_runs(args.results)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    path = plot_runs(runs, args.metric, args.op, args.by, args.out, title=args.title, log_y=args.log)
    print(f"{path} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0
