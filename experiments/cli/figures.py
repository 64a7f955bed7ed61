"""``kvdm figures fig1a|fig1b|fig2a|fig2b|lru|reuse|popularity|all``: trace figures (PNG + CSV)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from . import group
from .traces import add_trace_options, load_trace_from_args

_HELP = {
    "fig1a": "Fig. 1a: CDF of per-request block hit ratio (unbounded cache)",
    "fig1b": "Fig. 1b: block id against time",
    "fig2a": "Fig. 2a: per-request fraction of sequential blocks over time, with its mean",
    "fig2b": "Fig. 2b: Wald-Wolfowitz runs-test p-values of the non-sequential ids",
    "lru": "LRU block hit ratio against cache capacity (blocks)",
    "reuse": "block reuse-time distribution (CDF, s)",
    "popularity": "block popularity: share of references to the top-k blocks",
    "all": "every trace figure above",
}


def register(sub: Any) -> None:
    g = group(sub, "figures", "figures: PNG with the plotted numbers as CSV beside it")
    for name, text in _HELP.items():
        p = g.add_parser(name, help=text,
                         description=text + ". Writes <fig>_<trace>.png and .csv into --out.")
        add_trace_options(p, positional=False)
        p.add_argument("--out", default="figures", help="output folder (default ./figures)")
        p.set_defaults(func=cmd_figure, figure=name)


def cmd_figure(args: argparse.Namespace) -> int:
    from kvdm.experiments.figures.traces import FIGURES

    trace = load_trace_from_args(args)
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    for name in names:
        t0 = time.perf_counter()
        png = FIGURES[name](trace, Path(args.out))
        print(f"{png} (+ .csv, {time.perf_counter() - t0:.1f} s)")
    return 0
