"""The paper's access-pattern figures (Fig. 1-2) and three more, as PNG + CSV pairs.

Each ``fig_*`` function takes a loaded trace and an output folder, writes ``<name>_<trace>.png``
and the plotted numbers as ``<name>_<trace>.csv`` beside it, and returns the PNG path. The
quantities are defined in :mod:`kvdm.traces.characterise`.
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402

from kvdm.traces import Trace  # noqa: E402
from kvdm.traces import characterise as ch  # noqa: E402

PAPER_COLOR = "tab:red"


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _save(fig: plt.Figure, out: Path, name: str, trace: Trace, bottom: float = 0.0) -> Path:
    png = out / f"{name}_{trace.name}.png"
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def _paths(out: Path, name: str, trace: Trace) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}_{trace.name}.csv"


def _minutes(trace: Trace) -> np.ndarray:
    return (trace.timestamps_ms - trace.timestamps_ms.min()) / 60_000.0


def fig1a(trace: Trace, out: Path) -> Path:
    """Fig. 1a: CDF of the per-request block hit ratio (infinite cache)."""
    hits = ch.block_hits(trace)
    ratio = ch.per_request_mean(trace, hits)
    nhits = ch.per_request_sum(trace, hits)
    _write_csv(_paths(out, "fig1a", trace), ["request", "time_s", "blocks", "hits", "hit_ratio"],
               ((i, trace.timestamps_ms[i] / 1000, int(trace.lengths[i]), int(nhits[i]), f"{ratio[i]:.6f}")
                for i in range(trace.n_requests)))
    valid = np.sort(ratio[~np.isnan(ratio)]) * 100
    fig, ax = plt.subplots(figsize=(7, 4.5))
    y = np.arange(1, valid.size + 1) / max(valid.size, 1)
    ax.step(valid, y, where="post", label=f"{trace.name} (block hit fraction {hits.mean() * 100:.1f}%)")
    refs = {"conversation": (50.0, "share_hit_ge_50", ">="), "synthetic": (80.0, "share_hit_gt_80", ">")}
    for name, (x, key, op) in refs.items():
        measured = np.mean(valid >= x) if op == ">=" else np.mean(valid > x)
        ax.axvline(x, color="0.6", lw=0.8, ls=":")
        if trace.name == name:
            ref = ch.PAPER[key][0]
            ax.plot([x], [1 - ref], "o", color=PAPER_COLOR, ms=8,
                    label=f"paper: ~{ref * 100:.0f}% of requests {op} {x:.0f}%")
            ax.plot([x], [1 - measured], "x", color="k", ms=8,
                    label=f"measured: {measured * 100:.1f}% of requests {op} {x:.0f}%")
    ax.set_xlabel("per-request block hit ratio (%)")
    ax.set_ylabel("fraction of requests (CDF)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Fig. 1a: CDF of per-request hit ratio, unbounded cache ({trace.name}, "
                 f"{trace.n_requests:,} requests)", fontsize=10)
    return _save(fig, out, "fig1a", trace)


def fig1b(trace: Trace, out: Path) -> Path:
    """Fig. 1b: every block reference's id against its request's arrival time."""
    hits = ch.block_hits(trace)
    req = trace.request_of_block()
    t_min = _minutes(trace)[req]
    _write_csv(_paths(out, "fig1b", trace), ["time_s", "request", "block_id", "hit"],
               zip((t_min * 60).round(3).tolist(), req.tolist(), trace.blocks.tolist(),
                   hits.astype(int).tolist(), strict=True))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(t_min[~hits], trace.blocks[~hits], s=0.3, c="0.55", lw=0, rasterized=True,
               label=f"first reference ({(~hits).sum():,})")
    ax.scatter(t_min[hits], trace.blocks[hits], s=0.3, c="tab:blue", lw=0, rasterized=True,
               label=f"re-reference = hit ({hits.sum():,})")
    ax.set_xlabel("request arrival time (min)")
    ax.set_ylabel("block id")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, markerscale=15)
    ax.set_title(f"Fig. 1b: block ids over time ({trace.name}, {trace.n_blocks:,} block references)",
                 fontsize=10)
    return _save(fig, out, "fig1b", trace)


def fig2a(trace: Trace, out: Path) -> Path:
    """Fig. 2a: per-request fraction of sequential blocks over time, with its mean."""
    seq = ch.sequential_mask(trace)
    frac = ch.per_request_mean(trace, seq)
    nseq = ch.per_request_sum(trace, seq)
    t = _minutes(trace)
    _write_csv(_paths(out, "fig2a", trace), ["request", "time_s", "blocks", "sequential_blocks",
                                             "sequential_fraction"],
               ((i, t[i] * 60, int(trace.lengths[i]), int(nseq[i]), f"{frac[i]:.6f}")
                for i in range(trace.n_requests)))
    mean = float(np.nanmean(frac)) * 100
    ref, about = ch.PAPER["mean_sequential_fraction"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(t, frac * 100, s=2, alpha=0.35, lw=0, rasterized=True, label="one request")
    ax.axhline(mean, color="k", lw=1.2, label=f"mean, measured: {mean:.1f}%")
    ax.axhline(ref * 100, color=PAPER_COLOR, lw=1.2, ls="--",
               label=f"mean, paper ({about}): {ref * 100:.1f}%")
    ax.set_xlabel("request arrival time (min)")
    ax.set_ylabel("sequential blocks in the request (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0.01, 0.08), fontsize=8, markerscale=4)
    ax.set_title(f"Fig. 2a: fraction of blocks in runs of >= 2 consecutive ids ({trace.name})", fontsize=10)
    return _save(fig, out, "fig2a", trace)


def fig2b(trace: Trace, out: Path) -> Path:
    """Fig. 2b: runs-test p-values of each request's non-sequential ids over time."""
    seq = ch.sequential_mask(trace)
    pvals = ch.runs_test_pvalues(trace, seq)
    nonseq = trace.lengths - ch.per_request_sum(trace, seq)
    t = _minutes(trace)
    tested = ~np.isnan(pvals)
    _write_csv(_paths(out, "fig2b", trace), ["request", "time_s", "non_sequential_blocks", "p_value"],
               ((i, t[i] * 60, int(nonseq[i]), f"{pvals[i]:.6g}") for i in np.flatnonzero(tested)))
    ref, about = ch.PAPER["share_runs_p_gt_005"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    if tested.any():
        share = float(np.mean(pvals[tested] > 0.05)) * 100
        ax.scatter(t[tested], pvals[tested], s=4, alpha=0.5, lw=0, label="one request")
        summary = (f"p > 0.05: measured {share:.1f}% of {tested.sum():,} tested requests; "
                   f"paper ({about}) {ref * 100:.0f}%")
    else:
        summary = (f"no request has >= 3 usable non-sequential ids: test undefined "
                   f"(paper ({about}): {ref * 100:.0f}% with p > 0.05)")
    ax.axhline(0.05, color=PAPER_COLOR, lw=1.2, ls="--", label="p = 0.05")
    ax.set_xlabel("request arrival time (min)")
    ax.set_ylabel("runs-test p-value")
    ax.set_ylim(-0.02, 1.02)
    if t.size:
        ax.set_xlim(t.min() - 0.5, t.max() + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    ax.set_title(f"Fig. 2b: randomness of non-sequential block ids ({trace.name})\n{summary}", fontsize=9)
    fig.text(0.01, 0.01, textwrap.fill("Test: " + ch.RUNS_TEST_VARIANT + ".", 130), fontsize=7, color="0.3")
    return _save(fig, out, "fig2b", trace, bottom=0.06)


def fig_lru(trace: Trace, out: Path) -> Path:
    """LRU block hit ratio against cache capacity in blocks."""
    caps, ratio = ch.lru_hit_curve(trace)
    _write_csv(_paths(out, "lru", trace), ["capacity_blocks", "hit_ratio"],
               zip(caps.tolist(), np.round(ratio, 6).tolist(), strict=True))
    inf = float(ch.block_hits(trace).mean()) * 100
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogx(caps, ratio * 100, "o-", ms=3, label="LRU")
    ax.axhline(inf, color="k", ls="--", lw=1, label=f"unbounded cache: {inf:.1f}%")
    ax.set_xlabel(f"cache capacity (blocks of {trace.block_tokens} tokens, log scale)")
    ax.set_ylabel("block hit ratio (%)")
    ax.set_ylim(0, max(inf * 1.15, 1))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"LRU hit ratio vs capacity ({trace.name}, {trace.n_blocks:,} block references)",
                 fontsize=10)
    return _save(fig, out, "lru", trace)


def fig_reuse(trace: Trace, out: Path) -> Path:
    """Distribution (CDF) of block reuse times in trace time."""
    reuse = np.sort(ch.reuse_times_s(trace))
    q = np.array([0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100])
    vals = np.percentile(reuse, q) if reuse.size else np.full(q.size, np.nan)
    _write_csv(_paths(out, "reuse", trace), ["percentile", "reuse_time_s"],
               zip(q.tolist(), np.round(vals, 3).tolist(), strict=True))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if reuse.size:
        zero = float(np.mean(reuse <= 0)) * 100
        pos = reuse[reuse > 0]
        y = (np.arange(1, pos.size + 1) + (reuse.size - pos.size)) / reuse.size
        ax.semilogx(pos, y, label=f"{reuse.size:,} re-references ({zero:.1f}% at 0 s: same arrival time)")
        ax.axvline(float(np.median(reuse)) if np.median(reuse) > 0 else pos[0], color="0.5", ls=":",
                   label=f"median {np.median(reuse):.1f} s")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("reuse time: time since the block's previous reference (s, log scale)")
    ax.set_ylabel("fraction of re-references (CDF)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"Block reuse-time distribution ({trace.name})", fontsize=10)
    return _save(fig, out, "reuse", trace)


def fig_popularity(trace: Trace, out: Path) -> Path:
    """Block popularity: share of references that go to the top-k most referenced blocks."""
    counts = ch.popularity(trace)
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    ranks = np.arange(1, counts.size + 1)
    # the curve at ~300 log-spaced ranks (plus the last), not one row per block
    at = np.unique(np.geomspace(1, max(counts.size, 1), 300).astype(np.int64)) - 1
    _write_csv(_paths(out, "popularity", trace), ["rank", "top_percent_of_blocks", "references",
                                                  "cumulative_share"],
               zip((at + 1).tolist(), np.round((at + 1) / counts.size * 100, 6).tolist(), counts[at].tolist(),
                   np.round(cum[at], 6).tolist(), strict=True))
    once = float(np.mean(counts == 1)) * 100
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogx(ranks / counts.size * 100, cum * 100, label=f"{counts.size:,} unique blocks "
                f"({once:.1f}% referenced once)")
    for pct in (1, 10):
        k = max(int(counts.size * pct / 100), 1)
        ax.plot([pct], [cum[k - 1] * 100], "o", color="k", ms=4)
        ax.annotate(f"top {pct}%: {cum[k - 1] * 100:.1f}% of refs", (pct, cum[k - 1] * 100),
                    textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=8)
    ax.set_xlabel("most referenced blocks (% of unique blocks, log scale)")
    ax.set_ylabel("share of block references (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Block popularity: top-k share ({trace.name}, {trace.n_blocks:,} references)", fontsize=10)
    return _save(fig, out, "popularity", trace)


FIGURES: dict[str, Callable[[Trace, Path], Path]] = {
    "fig1a": fig1a, "fig1b": fig1b, "fig2a": fig2a, "fig2b": fig2b,
    "lru": fig_lru, "reuse": fig_reuse, "popularity": fig_popularity,
}
