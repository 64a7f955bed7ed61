"""The replay engine: exact hits on the dict backend, results files, modes, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from terminal import default_sigint

from kvdm.experiments.replay.engine import ReplayConfig, parse_mode, replay
from kvdm.experiments.replay.results import RunResults
from kvdm.index import IndexSpec
from kvdm.traces.registry import FIXTURE

FIXTURE_TRACE = str(FIXTURE)


@pytest.mark.parametrize(("mapping", "scheme"), [("paper", "id"), ("prefix", "u64"), ("paper", "sha256")])
def test_dict_replay_reproduces_the_trace_hits_exactly(mapping: str, scheme: str) -> None:
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    stream = map_trace(load(FIXTURE_TRACE), mapping, scheme, "timed")
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("dict", 32 if scheme == "sha256" else 8),
                       clients=1, mapping=mapping, key_scheme=scheme)
    res = replay(cfg, stream, quiet=True)
    whole = res.rows[res.rows["bin"] == -1].set_index("op")
    summary = stream.summary()
    for op, s in summary.items():
        assert whole.loc[op, "ops"] == s["ops"]
        assert whole.loc[op, "blocks"] == s["blocks"]
        if op != "insert":
            assert whole.loc[op, "hits"] == s["expected_hits"]
            assert whole.loc[op, "hit_mismatch"] == 0
    assert res.meta["run"]["ops_done"] == stream.n_ops


@pytest.mark.parametrize("index", ["dict", "chime"])
def test_preloaded_replay_hits_every_lookup(index: str) -> None:
    """--inserts none: every key is put first (by each client for the private dict), so every
    lookup hits, as the ground truth says."""
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    stream = map_trace(load(FIXTURE_TRACE, limit=100), "paper", "id", "none")
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec(index, 8), clients=1, inserts="none")
    res = replay(cfg, stream, quiet=True)
    whole = res.rows[res.rows["bin"] == -1]
    assert whole["hits"].sum() == whole["expected_hits"].sum() == whole["blocks"].sum() > 0
    assert whole["hit_mismatch"].sum() == 0


def test_results_round_trip(tmp_path: Path) -> None:
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("dict", 8), clients=2, bin_min=1.0, warmup_min=1.0)
    res = replay(cfg, quiet=True)
    res.write(tmp_path / "run")
    back = RunResults.read(tmp_path / "run")
    numeric = res.rows.select_dtypes("number").columns
    assert np.allclose(back.rows[numeric], res.rows[numeric], equal_nan=True)
    assert (back.rows["op"] == res.rows["op"]).all()
    assert set(back.histograms) == set(res.histograms)
    for k, h in res.histograms.items():
        assert np.array_equal(back.histograms[k].counts, h.counts)
        row = res.rows[(res.rows["bin"].astype(str) + ":" + res.rows["op"]) == k].iloc[0]
        assert row["ops"] == h.total
    assert back.meta["config"]["clients"] == 2
    assert back.meta["machine"]["cores"] >= 1
    # warm-up bins are reported but left out of the whole-run rows
    binned = res.rows[res.rows["bin"] >= 0]
    assert binned["warmup"].any()
    for op in res.rows["op"].unique():
        warm = binned[(binned["op"] == op) & ~binned["warmup"]]["ops"].sum()
        assert res.rows[(res.rows["bin"] == -1) & (res.rows["op"] == op)]["ops"].iloc[0] == warm
    with pytest.raises(FileNotFoundError, match="no kvdm run"):
        RunResults.read(tmp_path)


def test_modes_parse_and_reject() -> None:
    assert parse_mode("closed") == 0 and parse_mode("realtime") == 1 and parse_mode("compressed:60") == 60
    for bad in ("fast", "compressed:", "compressed:-2", "compressed:x"):
        with pytest.raises(ValueError, match="valid: closed, realtime, compressed:X"):
            parse_mode(bad)


def test_compressed_mode_follows_the_trace_clock() -> None:
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    stream = map_trace(load(FIXTURE_TRACE, limit=120), "prefix", "id", "timed")
    span_s = float(stream.req_timestamp_ms[-1]) / 1000.0
    speed = span_s / 2.0  # the slice should take about 2 s
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("dict", 8), mode=f"compressed:{speed}")
    res = replay(cfg, stream, quiet=True)
    assert res.meta["run"]["wall_s"] >= 2.0 * 0.95
    assert res.meta["run"]["requests_done"] == stream.n_requests


def test_ctrl_c_stops_and_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--index", "dict",
                             "--trace", FIXTURE_TRACE, "--mode", "realtime", "--clients", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    time.sleep(6)  # start-up, then a few seconds of real-time replay
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    res = RunResults.read(out)
    assert res.meta["run"]["interrupted"]
    assert 0 < res.meta["run"]["requests_done"] < 400


def test_replay_cli_errors_are_clear() -> None:
    out = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--index", "nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "valid:" in out.stderr and "dict" in out.stderr
    out = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--mode", "warp"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "compressed:X" in out.stderr


def test_virtual_latency_model_adds_the_modelled_round_trips() -> None:
    """With latency model virtual every native op's latency is its C time plus its modelled time
    (RTTs x rtt + bytes / bandwidth): a 1-RTT get at 200 us sits just above 200. A streamed
    doorbell (dm_submit_streamed: B+tree lookups and batches) is charged each answer's arrival
    less the client's own work since the ring, so the modelled time may fall short of RTTs x rtt
    by that work (nanoseconds here), never the latency."""
    from kvdm.transport import TransportConfig

    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("chime", 8), clients=1,
                       transport=TransportConfig(latency_model="virtual", rtt_us=200.0))
    res = replay(cfg, quiet=True)
    whole = res.rows[res.rows["bin"] == -1].set_index("op")
    for op in ("get", "range", "insert"):
        modelled_us = whole.loc[op, "virtual_ns_per_op"] / 1e3
        assert whole.loc[op, "mean_us"] >= 200.0 * whole.loc[op, "rtts_per_op"]
        assert modelled_us >= 0.95 * 200.0 * whole.loc[op, "rtts_per_op"]
        assert whole.loc[op, "mean_us"] >= modelled_us
    assert 200.0 <= whole.loc["get", "p50_us"] < 260.0


def test_c_loop_is_for_native_indexes_only() -> None:
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("dict", 8), clients=1, driver="c")
    with pytest.raises(RuntimeError, match="--driver c: the dict backend has no C loop"):
        replay(cfg, quiet=True)
    with pytest.raises(ValueError, match="unknown driver 'fast'; valid: auto, c, python"):
        ReplayConfig(driver="fast")


def test_unordered_index_refuses_range_mappings_up_front() -> None:
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("race", 8), clients=1, mapping="paper")
    with pytest.raises(ValueError, match="race keeps no key order.*use --mapping prefix"):
        replay(cfg, quiet=True)
    res = replay(ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("race", 8), clients=1, mapping="prefix"), quiet=True)
    whole = res.rows[res.rows["bin"] == -1]
    assert whole["hit_mismatch"].sum() == 0 and whole["hits"].sum() == whole["expected_hits"].sum() > 0
