"""``kvdm plot``: figures from stored runs along every axis, and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvdm.experiments.figures.plots import labels, load_runs, plot_runs
from kvdm.experiments.replay.engine import ReplayConfig, replay
from kvdm.index import IndexSpec
from kvdm.traces.registry import FIXTURE


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three stored dict runs of the fixture's head: 1 and 2 clients at 0.5-min bins, one at 1-min bins."""
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    root = tmp_path_factory.mktemp("runs")
    stream = map_trace(load(str(FIXTURE), limit=150), "paper", "id", "timed")
    for name, clients, bin_min in (("a", 1, 0.5), ("b", 2, 0.5), ("c", 1, 1.0)):
        cfg = ReplayConfig(trace=str(FIXTURE), index=IndexSpec("dict", 8), clients=clients, bin_min=bin_min,
                           warmup_min=0.5, name=name)
        replay(cfg, stream, quiet=True).write(root / ("bin1" if bin_min == 1.0 else "bin05") / name)
    return root


def kvdm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "plot", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("metric", "op", "by"), [("p99", "get", "bin"), ("p50", "range", "clients"),
                                                  ("p99", "get", "throughput"), ("ops", "get", "op")])
def test_plot_every_axis(runs: Path, tmp_path: Path, metric: str, op: str, by: str) -> None:
    out = tmp_path / "f.png"
    proc = kvdm(str(runs / "bin05"), "--metric", metric, "--op", op, "--by", by, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "(2 runs)" in proc.stdout and out.stat().st_size > 5_000


def test_labels_name_what_differs(runs: Path) -> None:
    found = load_runs([runs / "bin05"])
    assert labels(found) == ["1 clients", "2 clients"]
    assert labels(found, exclude=("clients",), unique=False) == ["dict", "dict"]  # one series
    assert labels([found[0], found[1]], exclude=("clients",)) == ["dict (a)", "dict (b)"]  # equal labels: folders


def test_plot_errors(runs: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "f.png")
    proc = kvdm(str(tmp_path / "missing"), "--out", out)
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = kvdm(str(tmp_path / "empty"), "--out", out)
    assert proc.returncode == 2 and "holds no kvdm run" in proc.stderr
    proc = kvdm(str(runs), "--metric", "latency", "--out", out)
    assert proc.returncode == 2 and "valid: p50, p90, p99" in proc.stderr
    proc = kvdm(str(runs), "--by", "bin", "--out", out)  # 0.5- and 1-min bins together
    assert proc.returncode == 2 and "different bin widths" in proc.stderr
    proc = kvdm(str(runs / "bin05"), "--op", "prefix_match", "--out", out)
    assert proc.returncode == 2 and "no run measured 'prefix_match' ops" in proc.stderr
    with pytest.raises(ValueError, match="no run reports bytes"):  # the dict counts no bytes
        plot_runs(load_runs([runs / "bin05"]), "bytes", "get", "op", out)
    assert not Path(out).exists()
