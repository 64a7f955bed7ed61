"""kvdm replay --launcher mpi: `mpirun -np 3` over shm gives the local 3-client run's op counts and
(where the answer does not depend on timing) its hits; failures end every rank."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kvdm.traces.registry import FIXTURE

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None,
                                reason="no mpirun (bash .ci/bootstrap installs Open MPI)")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader"]
KVDM = [sys.executable, "-m", "kvdm.experiments.cli"]


def replay(out: Path, *extra: str, ranks: int = 0) -> subprocess.CompletedProcess[str]:
    cmd = KVDM + ["replay", "--trace", str(FIXTURE), "--out", str(out), *extra]
    if ranks:
        cmd = MPIRUN + ["-np", str(ranks)] + cmd + ["--launcher", "mpi"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def whole(out: Path) -> pd.DataFrame:
    rows = pd.read_parquet(out / "results.parquet")
    return rows[rows["bin"] == -1].set_index("op")


@pytest.mark.parametrize(("index", "extra"), [("chime", ["--mapping", "prefix", "--inserts", "none"]),
                                              ("sherman", ["--inserts", "none"]),
                                              ("chime", [])])
def test_three_ranks_equal_three_local_clients(tmp_path: Path, index: str, extra: list[str]) -> None:
    args = ["--index", index, *extra]
    mpi = replay(tmp_path / "mpi", *args, ranks=3)
    assert mpi.returncode == 0, mpi.stdout + mpi.stderr
    local = replay(tmp_path / "local", *args, "--clients", "3")
    assert local.returncode == 0, local.stdout + local.stderr
    a, b = whole(tmp_path / "mpi"), whole(tmp_path / "local")
    assert list(a.index) == list(b.index)
    for col in ("ops", "blocks", "expected_hits"):
        assert (a[col] == b[col]).all(), col
    if "none" in extra:  # every key preloaded: the hits do not depend on how the clients interleave
        assert (a["hits"] == b["hits"]).all() and (a["hit_mismatch"] == 0).all()
    meta = json.loads((tmp_path / "mpi" / "run.json").read_text())
    assert meta["config"]["clients"] == 3 and meta["config"]["launcher"] == "mpi"
    assert meta["run"]["requests_done"] == 400
    assert "3 MPI ranks" in mpi.stdout and mpi.stdout.count("# kvdm replay") == 1  # rank 0 alone reports


def test_a_set_up_failure_ends_every_rank(tmp_path: Path) -> None:
    run = subprocess.run(MPIRUN + ["-np", "2"] + KVDM + ["replay", "--launcher", "mpi", "--trace",
                                                         str(tmp_path / "missing.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "kvdm: error: trace file not found" in run.stderr
    assert "rank 1: rank 0 could not set the run up" in run.stderr


def test_clients_must_match_the_world(tmp_path: Path) -> None:
    run = replay(tmp_path / "x", "--clients", "3", ranks=2)
    assert run.returncode != 0 and "--clients 3 with --launcher mpi" in run.stderr


def test_bench_index_on_ranks() -> None:
    """kvdm bench index --launcher mpi: each rank a client, rank 0 preloads and reports."""
    run = subprocess.run(MPIRUN + ["-np", "2"] + KVDM + ["bench", "index", "--launcher", "mpi", "--index", "sherman",
                                                         "--keys", "20000", "--seconds", "0.5", "--batch", "8"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("# kvdm bench index") == 1 and "2 client(s) x 1 thread(s)" in run.stdout
    header = next(i for i, line in enumerate(run.stdout.splitlines()) if line.lstrip().startswith("Mops"))
    row = run.stdout.splitlines()[header + 1].split()
    assert float(row[1]) > 0 and abs(float(row[6]) - 1.0) < 0.2  # Mkeys/s; READ/key: one leaf read per get
    bad = subprocess.run(MPIRUN + ["-np", "2"] + KVDM + ["bench", "index", "--launcher", "mpi", "--threads", "2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "one client (one thread) per rank" in bad.stderr



def test_a_rank_imports_neither_pandas_nor_redis() -> None:
    """What a replay or bench rank (other than 0) imports, and a spawned local client too: the
    command's own CLI module, the engine, the launcher; not pandas, pyarrow or the Redis client,
    which rank 0 alone needs for the results (each costs tens of seconds of interpreter start in
    the SoftRoCE guest, where the ranks run over verbs)."""
    code = """if True:
        import sys
        from kvdm.experiments.cli import build_parser
        from kvdm.experiments.cli.replay import config_from_args
        config_from_args(build_parser("replay").parse_args(["replay", "--launcher", "mpi", "--index", "chime"]))
        build_parser("bench", "index").parse_args(["bench", "index", "--launcher", "mpi"])
        import kvdm.experiments.cli.bench_index, kvdm.experiments.replay.launch_mpi
        from kvdm.experiments.replay.engine import client_run
        print(sorted(m for m in ("pandas", "pyarrow", "redis", "matplotlib", "torch") if m in sys.modules))
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
