"""``kvdm reproduce --quick`` end to end: every figure, every run folder, the report in both formats."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from kvdm.experiments.figures.plots import load_runs
from kvdm.experiments.replay.results import RunResults

FIGURES = ("fig1a", "fig1b", "fig2a", "fig2b", "fig3a", "fig3b", "cost_rtts", "cost_bytes", "load_closed_get",
           "load_closed_range", "load_open_get", "load_open_range", "engine_chain")
#: --quick's open-loop paces (x1 real time .. x1000), then the unpaced point
QUICK_PACES = ("x1", "x10", "x30", "x100", "x300", "x1000", "unpaced")


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
    # every run is stored for `kvdm plot`: 3 Fig. 3 runs (each also the 1-client closed-loop point), then per
    # backend a 2-client closed-loop run and 6 paced ones (the engine step's chain-bench runs are not replays:
    # `kvdm plot` skips them)
    runs = load_runs([out / "runs"])
    assert len(runs) == 3 + 3 * (1 + 6)
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
    assert f"get p99 is {p99:,.1f} µs" in md
    for name in FIGURES:
        assert re.search(rf"\(figures/{name}_[^)]+\.png\)", md), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)  # self-contained
    assert isinstance(fig3["chime"].results.rows, pd.DataFrame)
    assert fig3["redis"].config["driver"] == "auto" and "measuring loop: auto" in fig3["redis"].results.meta[
        "config"]["echo"]["clients"]
    _check_engine(out, md)
    _check_redis_reference(out, md, fig3["redis"])
    _check_loose_ends(md, fig3, runs)
    _check_load_curves(md, fig3, runs)


def _section(md: str, title: str) -> str:
    return md.split(title, 1)[1].split("\n#", 1)[0]


def _check_loose_ends(md: str, fig3: dict[str, Any], runs: list[Any]) -> None:
    """Quick mode claims only what it measured; the wall times are the runs' own; every claim row
    says which is lower, by how much, and whether that agrees with the paper."""
    intro = md.split("\n## ", 1)[0]
    assert "QUICK version" in intro and "the first 400 requests of the conversation trace" in intro
    assert "synthetic" not in intro  # quick mode does not use it
    assert "Traces: conversation_head400 (Fig. 1-2, Fig. 3, the load curves)" in intro
    assert "is not used here" in intro  # toolagent
    trace_part = _section(md, "## Fig. 1-2")
    assert "agree within 3 points" not in trace_part and "no whole trace of those was characterised" in trace_part
    assert re.search(r"Wall time: (\d+ min )?\d+(\.\d)? s in all \(Fig\. 1-2", intro)  # over a minute on a busy box
    for r in fig3.values():  # the wall column: the replay's clients, then with its set-up
        wall, total = r.results.meta["run"]["wall_s"], r.results.meta["reproduce"]["wall_s"]
        assert 0 < wall < total
        assert f" | {wall:,.2f} / {total:,.2f} s |" in md
    claims = _section(md, "### Against the paper's claims")
    for op, pair in (("range", "Sherman|CHIME"), ("get", "CHIME|Sherman")):
        m = re.search(rf"\| ({pair})'s {op} p99 is (\d+\.\d)% lower than ({pair})'s \(([\d.,]+) vs ([\d.,]+) µs\) "
                      r"\| (agrees|disagrees)", claims)
        assert m and m.group(1) != m.group(3), claims
        lo, hi = (fig3[m.group(k).lower()].whole.loc[op, "p99_us"] for k in (1, 3))
        assert lo < hi and m.group(2) == f"{(hi - lo) / hi * 100:.1f}"
        assert (m.group(6) == "agrees") == (m.group(1) == ("Sherman" if op == "range" else "CHIME"))
    assert "'s -" not in claims and "'s +" not in claims
    assert re.search(r"Redis's get p99 is [\d.,]+ µs and its range p99 [\d.,]+ µs: .* 100 µs \| (agrees|disagrees)",
                     claims)


def _check_load_curves(md: str, fig3: dict[str, Any], runs: list[Any]) -> None:
    """Each backend's open-loop sweep runs from real time to unpaced (>= 6 points), its rates
    offered and delivered in the table; the closed-loop 1-client point is the Fig. 3 run, measured once."""
    closed = _section(md, "### Closed loop: client sweep")
    table = _section(md, "### Open loop: from real time to unpaced")
    for b, r in fig3.items():
        assert f"| {b} | 1 | " in closed and closed.count(f"| {b} | ") == 2
        assert re.search(rf"\| {b} \| 1 \| [\d,]+ \| {r.whole.loc['get', 'p99_us']:,.1f} \| .* \| the Fig\. 3 run \|",
                         closed)
        paces = re.findall(rf"^\| {b} \| (x\d+|unpaced) \|", table, re.M)
        assert tuple(paces) == QUICK_PACES, paces
        paced = {x.config["mode"]: x for x in runs if x.config["index"]["name"] == b and x.config["mode"] != "closed"}
        assert sorted(paced) == sorted(f"compressed:{p[1:]}" for p in QUICK_PACES[:-1])
        for mode, x in paced.items():
            offered = x.results.meta["reproduce"]["offered_ops_s"]
            row = re.search(rf"^\| {b} \| x{mode.split(':')[1]} \| ([\d,]+) \| ([\d,]+) \| (yes|no)", table, re.M)
            assert row and row.group(1) == f"{offered:,.0f}", (row, offered)
        assert re.search(rf"(^|\. ){b} (keeps up|falls behind)", table, re.M)  # the knee, in words


def test_claim_rows_read_plainly() -> None:
    """Which is lower, by how much (of the higher), and whether that agrees with the paper."""
    from kvdm.experiments.reproduce.report import lower_claim

    assert lower_claim("range", ("sherman", 9.0), ("chime", 10.0), 10.3) == [
        "Sherman's range p99 is 10.0% lower than CHIME's (9.0 vs 10.0 µs)",
        "agrees: Sherman lower, as in the paper (10.0% here, 10.3% there)"]
    assert lower_claim("get", ("chime", 5.7), ("sherman", 5.4), 5.5) == [
        "Sherman's get p99 is 5.3% lower than CHIME's (5.4 vs 5.7 µs)",
        "disagrees: the paper has CHIME 5.5% lower, here Sherman is 5.3% lower"]


def test_the_report_names_the_traces_it_used(tmp_path: Path) -> None:
    """toolagent is said to be used when it is (the snag: the report always said it was absent)."""
    from types import SimpleNamespace

    from kvdm.experiments.reproduce.report import traces_note
    from kvdm.experiments.reproduce.run import ReproduceConfig

    used = traces_note(SimpleNamespace(cfg=ReproduceConfig(traces=("toolagent", "conversation"),
                                                           fig3_traces=("toolagent",))))
    assert "Traces: toolagent (Fig. 1-2, Fig. 3, the load curves); conversation (Fig. 1-2)." in used
    assert "toolagent) is used, so its numbers" in used and "not used" not in used
    partly = traces_note(SimpleNamespace(cfg=ReproduceConfig(traces=("toolagent",), fig3_traces=("conversation",))))
    assert "is used, though not for Fig. 3" in partly
    absent = traces_note(SimpleNamespace(cfg=ReproduceConfig()))
    assert "conversation (Fig. 1-2, Fig. 3, the load curves); synthetic (Fig. 1-2)" in absent
    assert "toolagent) is not used here" in absent


def test_offered_rate_is_the_paced_trace_over_the_requests_done() -> None:
    """An open-loop point's offered rate: the ops of the requests it got through over their due times."""
    from types import SimpleNamespace

    import numpy as np

    from kvdm.experiments.reproduce.run import offered_rate

    stream = SimpleNamespace(req_offsets=np.array([0, 3, 5, 9, 10]), req_timestamp_ms=np.array([0.0, 1000, 2000, 4000]))
    assert offered_rate(stream, "compressed:10", 3) == 9 / 0.2  # 9 ops due over 2 s of trace / 10
    assert offered_rate(stream, "compressed:1", 4) == 10 / 4.0
    assert offered_rate(stream, "closed", 4) is None and offered_rate(stream, "compressed:10", 1) is None


def test_same_substrate_is_refused_without_an_rdma_device(capsys: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """On a host without RDMA: one line naming what is missing, and nothing written."""
    from kvdm.experiments.cli import main
    from kvdm.experiments.cli import reproduce as cmd_reproduce

    out = tmp_path / "repro"
    monkeypatch.setattr(cmd_reproduce, "rdma_devices", lambda: [])
    assert main(["reproduce", "--quick", "--same-substrate", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvdm: error: --same-substrate needs an RDMA device") and \
        "/sys/class/infiniband" in err[0]
    monkeypatch.setattr(cmd_reproduce, "rdma_devices", lambda: ["rxe0"])
    for argv, msg in ((["--same-substrate", "--verbs-device", "mlx5_0"], "no such RDMA device here (have: rxe0)"),
                      (["--same-substrate", "--latency-model", "virtual"], "--latency-model virtual is the shm"),
                      (["--verbs-device", "rxe0"], "only apply with --same-substrate")):
        assert main(["reproduce", "--quick", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not out.exists()


def _check_redis_reference(out: Path, md: str, fig3_redis: Any) -> None:
    """redis-benchmark ran on the server the Redis runs used, GET for GET like kvdm's C loop (the same
    kind of keys, interleaved rounds, kvdm's latencies also on redis-benchmark's scale), and the
    report quotes both (or says that redis-benchmark is absent)."""
    from kvdm.experiments.reproduce.reference import hdr_bucket

    ref = json.loads((out / "runs" / "redis-reference.json").read_text())
    section = md.split("# Redis reference: redis-benchmark on the same server", 1)[1].split("\n# ", 1)[0]
    get1 = ref["benchmarks"]["GET, 1 client"]
    assert get1["command"].startswith("redis-benchmark -h 127.0.0.1 -p ") and " -c 1 -n 20000 " in get1["command"]
    assert get1["command"].endswith(f"-r 10000 GET {ref['benchmark_key']}")
    assert len(ref["benchmark_key"].replace("__rand_int__", "0" * 12)) == ref["key_name_bytes"] == 42
    assert f":{get1['command'].split(' -p ')[1].split()[0]}" in ref["url"]  # the same server
    assert [r["first"] for r in ref["rounds"]] == ["redis-benchmark", "kvdm", "redis-benchmark"]  # --quick: 3
    assert ref["kvdm_c"]["hits"] == ref["kvdm_c"]["calls"] == 3 * 20_000  # every GET found its preloaded key
    for r in ref["rounds"]:
        same = r["kvdm_c"]["p50_rb_scale_us"]
        assert hdr_bucket(int(same)) == (int(same) - 7, int(same))  # a bucket's top, as redis-benchmark prints
    assert f"{ref['kvdm_c']['p50_us']:,.1f}" in section
    if shutil.which("redis-benchmark") is None:
        assert "redis-benchmark not found on PATH" in section
    else:
        assert get1["p50_us"] > 0 and get1["rps"] > 0 and get1["p50_bucket_us"][1] == get1["p50_us"]
        assert f"against redis-benchmark's {get1['p50_us']:,.1f} µs (-c 1), a ratio of {ref['ratio_c']:.2f}" in section
    assert f"The Fig. 3 replay's get p50 is {fig3_redis.whole.loc['get', 'p50_us']:,.1f} µs" in section


def test_redis_benchmark_scale_is_its_histogram() -> None:
    """kvdm's latencies on redis-benchmark's scale: a microsecond clock, 8 µs buckets below 16,384 µs
    (HdrHistogram with lowest value 10 µs, 3 significant figures), the bucket's top printed."""
    import numpy as np

    from kvdm.experiments.reproduce.reference import hdr_bucket, redis_benchmark_scale

    assert hdr_bucket(0) == (0, 7) and hdr_bucket(20) == (16, 23) and hdr_bucket(23) == (16, 23)
    assert hdr_bucket(24) == (24, 31) and hdr_bucket(16383) == (16376, 16383) and hdr_bucket(16384) == (16384, 16399)
    assert redis_benchmark_scale(np.full(1000, 18_600)) == 23.0
    assert redis_benchmark_scale(np.full(1000, 24_000)) == 31.0
    # nearest rank round(q% * n): the 3rd of 5 values at p50
    assert redis_benchmark_scale(np.array([10_000] * 3 + [30_000] * 2)) == 15.0
    assert redis_benchmark_scale(np.array([10_000] * 2 + [30_000] * 3)) == 31.0


def test_redis_benchmark_csv_is_parsed() -> None:
    """Both forms of redis-benchmark --csv: with latency columns (Redis 7) and rps only (older)."""
    from kvdm.experiments.reproduce.reference import parse_redis_benchmark_csv

    new = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
           '"max_latency_ms"\n"GET","17182.13","0.054","0.016","0.055","0.111","0.183","1.639"\n')
    got = parse_redis_benchmark_csv(new)["GET"]
    assert got["rps"] == 17182.13 and abs(got["p50_us"] - 55.0) < 1e-9 and abs(got["p99_us"] - 183.0) < 1e-9
    assert parse_redis_benchmark_csv('"GET","80000.00"\n') == {"GET": {"rps": 80000.0}}
    assert parse_redis_benchmark_csv("") == {}


def test_a_missing_redis_benchmark_is_reported_not_fatal(monkeypatch: Any) -> None:
    from kvdm.experiments.reproduce import reference as reproduce

    monkeypatch.setenv("PATH", "/nonexistent")
    res = reproduce.run_redis_benchmark("redis://127.0.0.1:1", False, 10)
    assert res["error"].startswith("redis-benchmark not found on PATH")


def _check_engine(out: Path, md: str) -> None:
    """The engine step: a chain-bench run per backend (quick sweep N = 1, 8, 64), exact prefix
    matches, and a report section whose numbers are the stored runs' own."""
    assert "## The engine's view: a request's prefix match and insert" in md
    section = md.split("## The engine's view", 1)[1].split("\n## ", 1)[0]
    for backend in ("chime", "sherman", "redis"):
        res = RunResults.read(out / "runs" / f"engine-{backend}")
        assert res.meta["kind"] == "bench-chain" and res.meta["reproduce"]["role"] == "engine"
        assert res.meta["config"]["transport"]["latency_model"] == "virtual"
        rows = res.rows
        assert sorted(rows["chain_len"].unique()) == [1, 8, 64]
        assert (rows["mismatches"] == 0).all() and (rows["calls"] == 200).all()
        assert set(rows["op"]) == {"prefix_match", "insert"}
        for r in rows.itertuples():
            op = "LPM" if r.op == "prefix_match" else "insert"
            # the table row (backend, op, strategy, N, RTT/op, ..., p99) comes from the parquet
            assert f"| {backend} | {op} | {r.strategy} | {r.chain_len} | {r.rtts_per_op:,.2f} |" in section, r
            assert f" {r.p99_us:,.2f} |" in section
    chime = RunResults.read(out / "runs" / "engine-chime").rows
    par = chime[(chime["op"] == "prefix_match") & (chime["strategy"] == "parallel")].set_index("chain_len")
    assert par.loc[64, "rtts_per_op"] < 2  # one doorbell (a rare stale-cache retry aside)
    # the findings quote the parallel LPM's RTT/op and p99 at the sweep's ends
    assert f"{par.loc[1, 'rtts_per_op']:,.2f} → {par.loc[64, 'rtts_per_op']:,.2f} RTT/op on chime" in section
    assert f"{par.loc[64, 'p99_us']:,.2f} µs" in section
    assert "both sides are timed in the same C loop, but Redis's network is this VM's loopback TCP, while the " \
           "native indexes run at the modelled network" in section
    assert "issue 14" in section
    assert re.search(r"\(figures/engine_chain_p99\.png\)", section)


def test_a_verbs_memory_node_that_cannot_start_is_reported(tmp_path: Path) -> None:
    """--same-substrate's node (the `kvdm memnode serve` code in a forked child): when it cannot
    serve, the error names the command and the node's own last words."""
    import pytest

    from kvdm.experiments.reproduce.run import verbs_memory_node

    log = tmp_path / "memnode.log"
    want = r"did not start \(`kvdm memnode serve --transport verbs .*--device nosuch0`, exit status 1\)"
    with pytest.raises(RuntimeError, match=want + r": \w+"), verbs_memory_node("nosuch0", None, 1 << 20, log):
        pass
    assert log.read_text().strip()


def test_reproduce_reads_its_traces_with_the_trace_flags(tmp_path: Path, capsys: Any) -> None:
    """--format, --skip-bad and --limit reach every trace reproduce reads: a malformed line is
    an error naming file and line before anything is written, and --skip-bad skips it."""
    from kvdm.experiments.cli import build_parser, main
    from kvdm.experiments.cli.reproduce import check_inputs, config_from_args
    from kvdm.traces import FIXTURE

    bad = tmp_path / "bad.jsonl"
    lines = Path(FIXTURE).read_text().splitlines(keepends=True)[:50]
    bad.write_text("".join(lines[:10]) + "{not json\n" + "".join(lines[10:]))
    out = tmp_path / "out"
    assert main(["reproduce", "--quick", "--steps", "traces", "--traces", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 11" in err and not out.exists()
    args = build_parser().parse_args(["reproduce", "--quick", "--steps", "traces", "--traces", str(bad), "--skip-bad",
                                      "--limit", "20", "--format", "mooncake", "--out", str(out)])
    cfg = config_from_args(args)
    assert cfg.trace_options.skip_bad and cfg.trace_options.limit == 20 and cfg.trace_options.format == "mooncake"
    check_inputs(cfg)  # the malformed line is skipped now
