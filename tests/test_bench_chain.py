"""`kvdm bench index --op chain`: the engine's view (longest prefix match and chain insert swept
over the chain length) prints, stores and draws real figures, on native indexes and Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

LENGTHS = (1, 4, 32)
NATIVE = ("parallel", "kary", "sequential", "auto")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "bench", "index", "--op", "chain", *args],
                          capture_output=True, text=True, timeout=300)


def _printed(stdout: str) -> dict[tuple[str, str, str, int], list[str]]:
    """The table's rows by (backend, strategy, op, N)."""
    lines = [line.split() for line in stdout.splitlines() if line and not line.startswith("#")]
    assert lines[0][:5] == ["backend", "strategy", "op", "N", "calls"]
    return {(r[0], r[1], r[2], int(r[3])): r for r in lines[1:]}


@pytest.fixture(scope="module")
def native_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame, Path]:
    """chime and race in one invocation, at a modelled 2 us RTT."""
    out = tmp_path_factory.mktemp("chain")
    proc = _bench("--backends", "chime,race", "--chain-lengths", ",".join(map(str, LENGTHS)), "--chains", "200",
                  "--keys", "20K", "--node-size", "64M", "--latency-model", "virtual", "--rtt-us", "2",
                  "--out", str(out / "run"), "--plot", str(out / "fig.png"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout, pd.read_csv(out / "run" / "results.csv"), out


def test_native_rows_are_complete_and_exact(native_run: tuple[str, pd.DataFrame, Path]) -> None:
    stdout, rows, out = native_run
    # per backend: every strategy at every N, and a chain insert at every N
    assert len(rows) == 2 * (len(NATIVE) + 1) * len(LENGTHS)
    for backend in ("chime", "race"):
        mine = rows[rows["index"] == backend]
        lpm = mine[mine["op"] == "prefix_match"]
        assert set(zip(lpm["strategy"], lpm["chain_len"], strict=True)) == {(s, n) for s in NATIVE for n in LENGTHS}
        assert sorted(mine[mine["op"] == "insert"]["chain_len"]) == list(LENGTHS)
    assert (rows["calls"] == 200).all() and (rows["mismatches"] == 0).all()
    lpm = rows[rows["op"] == "prefix_match"]
    assert (lpm["matched_per_op"] == lpm["expected_matched_per_op"]).all()
    assert lpm[lpm["chain_len"] == 32]["matched_per_op"].between(8, 24).all()  # random prefixes: 0..N, mean N/2
    assert (rows["p99_us"] >= rows["p50_us"]).all() and (rows["p50_us"] > 0).all()
    # the modelled time is in the latency: at least one 2 us round trip per call
    assert (rows["p50_us"] >= 2.0).all()
    assert "measured in C (the C loop), the transport's modelled time in place of its execution" in stdout
    assert (out / "fig.png").stat().st_size > 10_000


def _at(rows: pd.DataFrame, backend: str, strategy: str, n: int, col: str = "rtts_per_op") -> float:
    r = rows[(rows["index"] == backend) & (rows["strategy"] == strategy) & (rows["chain_len"] == n)
             & (rows["op"] == "prefix_match")]
    assert len(r) == 1
    return float(r[col].iloc[0])


def test_chime_parallel_lpm_is_one_doorbell(native_run: tuple[str, pd.DataFrame, Path]) -> None:
    stdout, rows, _ = native_run
    assert float(_printed(stdout)[("chime", "parallel", "LPM", 32)][5]) == pytest.approx(
        _at(rows, "chime", "parallel", 32), abs=0.01)
    # every key of the chain in one doorbell; retries (a stale cached parent re-read) cost extra round trips
    assert _at(rows, "chime", "parallel", 32) < 2, \
        f"retries/op {_at(rows, 'chime', 'parallel', 32, 'retries_per_op')}, version mismatches/op " \
        f"{_at(rows, 'chime', 'parallel', 32, 'version_mismatch_per_op')}"


def test_native_round_trips_follow_the_strategy(native_run: tuple[str, pd.DataFrame, Path]) -> None:
    stdout, rows, _ = native_run
    table = _printed(stdout)

    def at(backend: str, strategy: str, n: int, col: str = "rtts_per_op") -> float:
        return _at(rows, backend, strategy, n, col)

    # parallel: every key of the chain in one doorbell (race: 2 RTT a lookup, both doorbells shared)
    assert at("race", "parallel", 32) < 3
    assert float(table[("race", "parallel", "LPM", 32)][5]) == pytest.approx(at("race", "parallel", 32), abs=0.01)
    assert at("chime", "parallel", 32) < at("chime", "sequential", 32) / 4
    # sequential: a round trip per probed key, so it grows with the matched length
    for backend in ("chime", "race"):
        seq = [at(backend, "sequential", n) for n in LENGTHS]
        matched = [at(backend, "sequential", n, "matched_per_op") for n in LENGTHS]
        assert seq[0] < seq[1] < seq[2]
        assert all(r >= m for r, m in zip(seq, matched, strict=True))
        assert seq[2] > 4 * at(backend, "parallel", 32)
    inserts = rows[rows["op"] == "insert"]
    assert (inserts["rtts_per_op"] >= 1).all() and (inserts["bytes_written_per_op"] > 0).all()


def test_kvdm_plot_leaves_chain_results_alone(native_run: tuple[str, pd.DataFrame, Path]) -> None:
    from kvdm.experiments.figures.plots import load_runs

    with pytest.raises(FileNotFoundError, match="bench index --op chain"):
        load_runs([native_run[2] / "run"])


def test_redis_chain_is_one_round_trip_per_call(tmp_path: Path) -> None:
    proc = _bench("--index", "redis", "--chain-lengths", "1,16", "--chains", "50", "--keys", "1K", "--matched", "full",
                  "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = pd.read_csv(tmp_path / "results.csv")
    assert sorted(zip(rows["strategy"], rows["op"], rows["chain_len"], strict=True)) == [
        ("lua", "prefix_match", 1), ("lua", "prefix_match", 16), ("pipeline", "insert", 1),
        ("pipeline", "insert", 16), ("pipeline", "prefix_match", 1), ("pipeline", "prefix_match", 16)]
    # Lua LPM, and every call's commands in one pipeline (the default): every call is one round trip
    assert (rows["rtts_per_op"] == 1.0).all()
    lpm = rows[rows["op"] == "prefix_match"]
    assert (lpm["matched_per_op"] == lpm["chain_len"]).all() and (rows["mismatches"] == 0).all()
    assert "redis: latency per call measured in C (the C loop)" in proc.stdout  # hiredis in the C loop
    assert (tmp_path / "chain_p99.png").exists()


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI in-process; it must refuse ``args`` as a usage error (status 2): its message."""
    from kvdm.experiments.cli import main

    try:
        status = main(["bench", "index", *args])
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    assert status == 2
    return capsys.readouterr().err


def test_bad_values_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, "--op", "chain", "--lpm-strategies", "parallel,fast")
    assert "unknown strategy 'fast'" in err and "valid: parallel, kary, sequential, auto, lua, pipeline" in err
    assert "item 3 ('x')" in _error(capsys, "--op", "chain", "--chain-lengths", "1,8,x")
    assert "its strategies: lua, pipeline" in _error(capsys, "--op", "chain", "--index", "redis",
                                                     "--lpm-strategies", "kary")
    assert "--clients: not used by --op chain" in _error(capsys, "--op", "chain", "--clients", "2")
    assert "unknown index 'memcached'" in _error(capsys, "--op", "chain", "--backends", "chime,memcached")
    assert "valid: random, full" in _error(capsys, "--op", "chain", "--matched", "half")
    assert "--chain-lengths: only for --op chain" in _error(capsys, "--index", "dict", "--chain-lengths", "4")


def test_every_chain_flag_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    from kvdm.experiments.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "index", "--help"])
    text = capsys.readouterr().out
    for flag in ("--chain-lengths", "--chains", "--lpm-strategies", "--backends", "--matched", "--out", "--plot"):
        assert flag in text
    assert "chain (longest prefix match and chain insert" in " ".join(text.split())
