"""``kvdm reproduce --quick`` end to end: every figure, every run folder, the report in both formats."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from kvdm.experiments.plots import load_runs

FIGURES = ("fig1a", "fig1b", "fig2a", "fig2b", "fig3a", "fig3b", "cost_rtts", "cost_bytes", "load_closed_get",
           "load_closed_range", "load_compressed_get", "load_compressed_range")


def test_reproduce_quick_writes_every_figure_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    proc = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "reproduce", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[reproduce" in proc.stderr  # progress on the long steps
    figs = out / "figures"
    for name in FIGURES:
        pngs = list(figs.glob(f"{name}_*.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000, name
    # every run is stored for `kvdm plot`: 3 Fig. 3 runs, 2 closed-loop and 2 compressed per backend
    runs = load_runs([out / "runs"])
    assert len(runs) == 3 + 3 * (2 + 2)
    fig3 = {r.config["index"]["name"]: r for r in runs if r.path.name.startswith("fig3-")}
    assert set(fig3) == {"chime", "sherman", "redis"}
    for r in fig3.values():
        assert r.config["key_scheme"] == "sha256" and r.config["index"]["key_bytes"] == 32
        assert r.results.meta["reproduce"]["range_semantics"] == "scan"
        whole = r.whole
        assert {"get", "range", "insert"} <= set(whole.index)
        assert whole["hit_mismatch"].sum() == 0  # one client: hits exactly the ground truth
        bins = r.results.rows[r.results.rows["bin"] >= 0]
        assert bins["warmup"].any() and (~bins["warmup"]).any()
    assert fig3["chime"].config["transport"]["latency_model"] == "virtual"
    md = (out / "report.md").read_text()
    for claim in ("Redis p99 > 100 µs", "Sherman 10.3% better than CHIME on range p99",
                  "CHIME 5.5% better than Sherman on get p99", "86.8%", "89.0%", "toolagent", "virtual",
                  "Range semantics"):
        assert claim in md, claim
    # the Fig. 3 numbers in the report are the runs' own
    p99 = fig3["redis"].whole.loc["get", "p99_us"]
    assert f"get p99 {p99:,.1f} µs" in md
    for name in FIGURES:
        assert re.search(rf"\(figures/{name}_[^)]+\.png\)", md), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)  # self-contained
    assert isinstance(fig3["chime"].results.rows, pd.DataFrame)
