"""Results files of a run: one row per (time bin, op type) in Parquet and CSV, the full config and
machine description in JSON, and each row's latency histogram so runs can be re-merged later.

Layout of ``DIR``::

    results.parquet   rows: run, index, bin, bin_start_min, warmup, op, ops, blocks, p50/p90/p99/p999/mean/max
                      _us, ops_per_s, block_ops_per_s, hits, expected_hits, hit_mismatch, then every
                      backend counter as <name>_per_op; bin -1 = the whole measured period (warm-up excluded)
    results.csv       the same rows
    run.json          {"config": ..., "machine": ..., "trace": ..., "histograms": {row_key: sparse}}
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import Histogram

# pandas is imported where rows are written or read, not here: a client process (an MPI rank, a
# spawned local client) imports this module but never needs pandas, whose import alone takes
# about 45 s under the SoftRoCE guest's TCG emulation (docs/cluster.md).
if TYPE_CHECKING:
    import pandas as pd


def machine_description() -> dict[str, Any]:
    """What this run ran on (CPU, cores, memory, OS, Python, kvdm commit)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    commit = ""
    try:
        src = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "os": platform.platform(),
            "python": platform.python_version(), "kvdm_commit": commit}


@dataclass
class RunResults:
    """A run's rows, histograms and metadata."""

    rows: pd.DataFrame
    meta: dict[str, Any]
    histograms: dict[str, Histogram] = field(default_factory=dict)

    def write(self, out: str | Path) -> Path:
        """Write the run into directory ``out`` (created)."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        self.rows.to_parquet(d / "results.parquet", index=False)
        self.rows.to_csv(d / "results.csv", index=False)
        meta = dict(self.meta)
        meta["histograms"] = {k: h.to_sparse() for k, h in self.histograms.items()}
        (d / "run.json").write_text(json.dumps(meta, indent=1, default=str))
        return d

    @classmethod
    def read(cls, out: str | Path) -> RunResults:
        import pandas as pd

        d = Path(out)
        if not (d / "results.parquet").exists():
            raise FileNotFoundError(f"{d} holds no kvdm run (no results.parquet)")
        rows = pd.read_parquet(d / "results.parquet")
        meta = json.loads((d / "run.json").read_text())
        hists = {k: Histogram.from_sparse(v) for k, v in meta.pop("histograms", {}).items()}
        return cls(rows, meta, hists)


def row_key(bin_index: int, op: str) -> str:
    """Key of a row's histogram in run.json."""
    return f"{bin_index}:{op}"
