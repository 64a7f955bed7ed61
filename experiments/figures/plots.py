"""Figures from stored runs (``results.parquet`` + ``run.json`` directories), without code.

:func:`load_runs` finds runs (a run directory, or any folder holding run directories below it);
:func:`plot_runs` draws one metric of one op type against a chosen axis:

* ``by="bin"``: the metric per time bin of trace time, one line per run (warm-up bins shaded);
* ``by="clients"``: the whole-run metric against the run's client count, one line per series;
* ``by="throughput"``: the whole-run metric against the run's throughput (all op types, ops/s),
  one line per series (a load curve);
* ``by="op"``: grouped bars, one group per op type, one bar per run (``--op`` is ignored).

A *series* groups runs that differ only in clients and mode (the points of one load curve); the
label of a run or series names what differs between the runs being compared (backend, transport,
latency model, ...), so comparing backends, transports or latency models needs no option.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kvdm.experiments.replay.results import RunResults  # noqa: E402
from kvdm.index import remote_memory

#: --metric name -> (results column, axis label)
METRICS = {
    "p50": ("p50_us", "p50 latency (µs)"),
    "p90": ("p90_us", "p90 latency (µs)"),
    "p99": ("p99_us", "p99 latency (µs)"),
    "p999": ("p999_us", "p99.9 latency (µs)"),
    "mean": ("mean_us", "mean latency (µs)"),
    "ops": ("ops_per_s", "throughput (ops/s)"),
    "block-ops": ("block_ops_per_s", "throughput (block-ops/s)"),
    "rtts": ("rtts_per_op", "round trips per op"),
    "bytes": ("bytes_read_per_op", "bytes read per op"),
    "bytes-written": ("bytes_written_per_op", "bytes written per op"),
}
AXES = ("bin", "clients", "throughput", "op")
OPS = ("get", "range", "prefix_match", "insert")
#: config fields that tell runs apart, in label order: (name, getter)
_LABEL_FIELDS: tuple[tuple[str, Any], ...] = (
    ("index", lambda c: c["index"]["name"]),
    ("transport", lambda c: c["transport"]["transport"] if remote_memory(c["index"]["name"]) else "-"),
    ("latency", lambda c: (f"{c['transport']['latency_model']} {c['transport']['rtt_us']:g}us"
                           if remote_memory(c["index"]["name"]) else "-")),
    ("trace", lambda c: Path(str(c["trace"])).name),
    ("keys", lambda c: c["key_scheme"]),
    ("mapping", lambda c: c["mapping"]),
    ("clients", lambda c: f"{c['clients']} clients"),
    ("mode", lambda c: c["mode"]),
)
_SERIES_EXCLUDE = ("clients", "mode")


@dataclass
class Run:
    """A stored run and where it came from."""

    path: Path
    results: RunResults

    @property
    def config(self) -> dict[str, Any]:
        return self.results.meta.get("config", {})

    @property
    def whole(self) -> pd.DataFrame:
        """The whole-run rows (bin -1), indexed by op."""
        rows = self.results.rows
        return rows[rows["bin"] == -1].set_index("op")

    def throughput(self) -> float:
        """Operations per second over the run, every op type (warm-up excluded)."""
        return float(self.whole["ops_per_s"].sum())


@dataclass
class LoadPoint:
    """One point of an open-loop sweep (:func:`plot_rate_sweep`): a backend's run at a pace
    (``x10``, ..., ``unpaced``), the rate the paced trace offered (nan when unpaced), the rate
    the client delivered, and whether that kept up with the offer."""

    backend: str
    pace: str
    run: Run
    offered: float
    achieved: float
    keeps_up: bool


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (the CLI builds
    its parser from this module's constants without paying for, or depending on, matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run under ``paths`` (a run directory, or a folder with run directories below it)."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        dirs = [p] if (p / "results.parquet").exists() else sorted(d.parent for d in p.rglob("results.parquet"))
        if not dirs:
            raise FileNotFoundError(f"{p} holds no kvdm run (no results.parquet in it or below it)")
        found = []
        for d in dirs:
            if not (d / "run.json").exists():
                raise FileNotFoundError(f"{d} has results.parquet but no run.json: not a complete kvdm run")
            found.append(Run(d, RunResults.read(d)))
        # `kvdm bench index --op chain` results have other rows (per chain length): drawn by plot_chain
        replays = [r for r in found if r.results.meta.get("kind", "replay") == "replay"]
        if found and not replays:
            raise FileNotFoundError(f"{p} holds no replay run, only `kvdm bench index --op chain` results (their "
                                    "figure is drawn by that command: --plot)")
        runs += replays
    return runs


def labels(runs: Sequence[Run], exclude: Sequence[str] = (), unique: bool = True) -> list[str]:
    """A label per run naming the config fields that differ between ``runs`` (the backend if none);
    ``unique`` tells runs with equal labels apart by their folder."""
    cfgs = [r.config for r in runs]
    varying = [(n, f) for n, f in _LABEL_FIELDS if n not in exclude and len({f(c) for c in cfgs}) > 1]
    if not varying:
        varying = [_LABEL_FIELDS[0]]
    out = [", ".join(str(f(c)) for _, f in varying if f(c) != "-") or str(varying[0][1](c)) for c in cfgs]
    if not unique:
        return out
    return [lab if out.count(lab) == 1 else f"{lab} ({r.path.name})" for lab, r in zip(out, runs, strict=True)]


def _column(runs: Sequence[Run], metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    col = METRICS[metric][0]
    have = [r for r in runs if col in r.results.rows.columns]
    if not have:
        raise ValueError(f"no run reports {metric} ({col}); e.g. bytes are counted by the native indexes only")
    return col


def _check_op(runs: Sequence[Run], op: str) -> None:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; valid: {', '.join(OPS)}")
    if not any(op in set(r.results.rows["op"]) for r in runs):
        present = sorted({o for r in runs for o in r.results.rows["op"]})
        raise ValueError(f"no run measured {op!r} ops (they have: {', '.join(present) or 'nothing'}); "
                         "range and get come from --mapping paper, prefix_match from --mapping prefix")


def plot_runs(runs: Sequence[Run], metric: str, op: str, by: str, out: str | Path, title: str = "",
              note: str = "", reference: tuple[float, str] | None = None, log_y: bool = False,
              throughput: Callable[[Run], float] | None = None, tag: Callable[[Run], str] | None = None) -> Path:
    """Draw ``metric`` of ``op`` against ``by`` for ``runs`` into the PNG ``out`` (returned).

    ``note`` is printed under the plot (e.g. the latency model); ``reference`` draws a
    horizontal line (value, label), e.g. a number the paper gives. With ``by="throughput"``,
    ``throughput`` gives a run's x (default :meth:`Run.throughput`) and ``tag`` names each point
    (default: N clients or the compression factor).
    """
    if not runs:
        raise ValueError("no runs to plot")
    if by not in AXES:
        raise ValueError(f"unknown --by {by!r}; valid: {', '.join(AXES)}")
    col = _column(runs, metric)
    if by != "op":
        _check_op(runs, op)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ylabel = METRICS[metric][1]
    if by == "bin":
        _by_bin(ax, runs, col, op)
    elif by == "op":
        _by_op(ax, runs, col)
    else:
        _by_load(ax, runs, col, op, by, throughput or Run.throughput, tag or _point_tag)
    if reference is not None:
        ax.axhline(reference[0], color="tab:red", ls="--", lw=1.2, label=reference[1])
    ax.set_ylabel(ylabel if by == "op" else f"{op}: {ylabel}")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{op if by != 'op' else 'per op'} {metric} by {by}", fontsize=10)
    return _save(fig, out, note, 135)


def _save(fig: Any, out: str | Path, note: str, width: int) -> Path:
    """Write the figure to the PNG ``out`` with ``note`` (wrapped at ``width`` characters) in small
    print below the axes; returns the path."""
    bottom = 0.0
    if note:
        lines = [w for line in note.split("\n") for w in textwrap.wrap(line, width)]
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="0.3")
        bottom = 0.01 + 0.028 * len(lines)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _by_bin(ax: Any, runs: Sequence[Run], col: str, op: str) -> None:
    bin_mins = {float(r.config.get("bin_min", 0)) for r in runs}
    if len(bin_mins) > 1:
        raise ValueError(f"runs have different bin widths ({', '.join(f'{b:g}' for b in sorted(bin_mins))} min): "
                         "per-bin figures compare runs binned alike (--bin-min)")
    width = bin_mins.pop() if bin_mins else 10.0
    warm_end = 0.0
    for run, lab in zip(runs, labels(runs), strict=True):
        rows = run.results.rows
        rows = rows[(rows["bin"] >= 0) & (rows["op"] == op)].sort_values("bin_start_min")
        if rows.empty or col not in rows:
            continue
        ax.plot(rows["bin_start_min"], rows[col], marker="o", label=lab)
        warm = rows[rows["warmup"]]
        if not warm.empty:
            warm_end = max(warm_end, float(warm["bin_start_min"].max()) + width)
    if warm_end > 0:  # points sit at bin starts: shade up to just before the first measured bin
        ax.axvspan(-0.05 * width, warm_end - 0.05 * width, color="0.9",
                   label="warm-up (left out of whole-run numbers)")
    ax.set_xlabel("trace time, start of bin (min)")


def _point_tag(run: Run) -> str:
    """A load point's name: N clients (closed loop) or the compression factor."""
    c = run.config
    return f"{c['clients']}c" if c.get("mode") == "closed" else str(c.get("mode", "")).replace("compressed:", "x")


def _by_load(ax: Any, runs: Sequence[Run], col: str, op: str, by: str, throughput: Callable[[Run], float],
             tag: Callable[[Run], str]) -> None:
    series: dict[str, list[Run]] = {}
    for run, lab in zip(runs, labels(runs, exclude=_SERIES_EXCLUDE, unique=False), strict=True):
        series.setdefault(lab, []).append(run)
    for lab, group in series.items():
        pts = []
        for r in group:
            whole = r.whole
            if op in whole.index and col in whole.columns and not pd.isna(whole.loc[op, col]):
                x = float(r.config.get("clients", 0)) if by == "clients" else throughput(r)
                pts.append((x, float(whole.loc[op, col]), r))
        pts.sort(key=lambda p: p[0])
        if not pts:
            continue
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)[0]
        if by == "throughput":  # name each point: N clients or the compression factor
            for x, y, r in pts:
                ax.annotate(tag(r), (x, y), fontsize=6, color=line.get_color(), xytext=(3, 3),
                            textcoords="offset points")
    xs = [x for line in ax.get_lines() for x in line.get_xdata()]
    if by == "throughput" and xs and min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")  # compressed replays span orders of magnitude of offered load
    ax.set_xlabel("client processes" if by == "clients" else "throughput, all op types (ops/s)")


def plot_rate_sweep(points: Sequence[LoadPoint], op: str, out: str | Path, title: str = "", note: str = "") -> Path:
    """An open-loop sweep per backend against the pace (x1 = real time, ..., unpaced), in two
    panels: the rate delivered beside the rate offered (where the two part is the backend's
    knee; hollow markers: it no longer keeps up), and ``op``'s p99. Written to the PNG ``out``."""
    if not points:
        raise ValueError("no open-loop points to plot")
    paces = list(dict.fromkeys(p.pace for p in sorted(points, key=lambda p: (p.pace == "unpaced", _pace(p.pace)))))
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, backend in enumerate(dict.fromkeys(p.backend for p in points)):
        mine = sorted((p for p in points if p.backend == backend), key=lambda p: paces.index(p.pace))
        x = [paces.index(p.pace) for p in mine]
        color = f"C{i % 10}"
        left.plot(x, [p.achieved for p in mine], color=color, marker="o", label=f"{backend}: delivered")
        offered = [(xi, p.offered) for xi, p in zip(x, mine, strict=True) if not np.isnan(p.offered)]
        if offered:
            left.plot(*zip(*offered, strict=True), color=color, ls=":", lw=1, label=f"{backend}: offered")
        ys = [float(p.run.whole.loc[op, "p99_us"]) if op in p.run.whole.index else np.nan for p in mine]
        right.plot(x, ys, color=color, marker="o", label=backend)
        for ax, vals in ((left, [p.achieved for p in mine]), (right, ys)):
            behind = [(xi, v) for xi, v, p in zip(x, vals, mine, strict=True) if not p.keeps_up]
            if behind:
                ax.plot(*zip(*behind, strict=True), ls="", marker="o", ms=9, mfc="none", color=color)
    for ax, ylabel in ((left, "throughput, all op types (ops/s)"), (right, f"{op}: {METRICS['p99'][1]}")):
        ax.set_xticks(range(len(paces)), paces)
        ax.set_xlabel("pace (trace time / wall time; unpaced: back to back)")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    left.set_title("delivered vs offered (circled: falls behind)", fontsize=10)
    right.set_title(f"{op} p99 (service time)", fontsize=10)
    fig.suptitle(title or f"open-loop sweep: {op}", fontsize=11)
    return _save(fig, out, note, 160)


def _pace(tag: str) -> float:
    """The factor of a pace tag (``x300`` -> 300; anything else sorts last)."""
    try:
        return float(tag.lstrip("x"))
    except ValueError:
        return float("inf")


def _by_op(ax: Any, runs: Sequence[Run], col: str) -> None:
    ops = [o for o in OPS if any(o in r.whole.index for r in runs)]
    width = 0.8 / len(runs)
    x = np.arange(len(ops))
    for i, (run, lab) in enumerate(zip(runs, labels(runs), strict=True)):
        whole = run.whole
        vals = [float(whole.loc[o, col]) if o in whole.index and col in whole.columns else np.nan for o in ops]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, np.nan_to_num(vals), width, label=lab)
        for b, v in zip(bars, vals, strict=True):
            text = "n/a" if np.isnan(v) else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, ops)
    ax.set_xlabel("op type")


#: plot_chain's panels: (op in the rows, panel title)
CHAIN_PANELS = (("prefix_match", "longest prefix match (one call per chain)"),
                ("insert", "chain insert (one put of N keys)"))


#: one line style and marker per prefix-match strategy (the color says the backend)
CHAIN_STYLES = {"parallel": ("-", "o"), "kary": ("--", "s"), "sequential": (":", "v"), "auto": ("-.", "D"),
                "lua": ("-", "o"), "pipeline": ("--", "s"), "-": ("-", "o")}


def chain_color(rows: pd.DataFrame, backend: str) -> str:
    """The backend's color: the same in both panels (its position among the rows' backends)."""
    backends = list(dict.fromkeys(rows["index"]))
    return f"C{backends.index(backend) % 10}"


def plot_chain(rows: pd.DataFrame, out: str | Path, metric: str = "p99", title: str = "", note: str = "") -> Path:
    """The ``kvdm bench index --op chain`` figure: ``metric`` (default p99 latency per call) against
    the chain length N (log2 axis), one line per backend and LPM strategy, in two panels (LPM,
    chain insert); written to the PNG ``out`` (returned). ``rows`` are that command's results rows
    (index, strategy, op, chain_len, <metric column>)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    col = METRICS[metric][0]
    need = {"index", "strategy", "op", "chain_len", col}
    if rows.empty or not need <= set(rows.columns):
        raise ValueError(f"no chain-bench rows to plot (need columns {', '.join(sorted(need))})")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, (op, panel) in zip(axes, CHAIN_PANELS, strict=True):
        part = rows[rows["op"] == op]
        for (backend, strategy), g in part.groupby(["index", "strategy"], sort=False):
            g = g.sort_values("chain_len")
            label = backend if strategy == "-" else f"{backend} {strategy}"
            color, (style, marker) = chain_color(rows, backend), CHAIN_STYLES.get(strategy, ("-", "o"))
            ax.plot(g["chain_len"], g[col], marker=marker, ms=3.5, ls=style, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        lengths = sorted(int(n) for n in rows["chain_len"].unique())
        ax.set_xticks(lengths, [str(n) for n in lengths], fontsize=7 if len(lengths) > 8 else 9)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("chain length N (blocks per call)")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if not part.empty:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel(f"{METRICS[metric][1]} per call")
    fig.suptitle(title or f"the engine's view: {metric} latency per call against chain length", fontsize=11)
    return _save(fig, out, note, 160)
