"""Characterisation, generators, and the traces/figures CLI."""

from __future__ import annotations

import csv
import math
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdm.experiments.cli import main
from kvdm.traces import characterise as ch
from kvdm.traces.generators import KINDS, GenConfig, generate
from kvdm.traces.loaders import Trace, load_trace
from kvdm.traces.registry import FIXTURE


def test_hits_and_sequential_small():
    t = Trace.from_lists([[1, 2, 3, 9], [1, 2, 7, 5, 6], [], [3, 4]])
    assert ch.block_hits(t).tolist() == [False] * 4 + [True, True, False, False, False] + [True, False]
    assert ch.sequential_mask(t).tolist() == [True, True, True, False, True, True, False, True, True,
                                              True, True]
    ratio = ch.per_request_mean(t, ch.block_hits(t))
    assert ratio[0] == 0 and ratio[1] == pytest.approx(0.4) and math.isnan(ratio[2]) and ratio[3] == 0.5
    # a run never continues across requests: [.., 9] then [10] are two requests
    t2 = Trace.from_lists([[8, 9], [10]])
    assert ch.sequential_mask(t2).tolist() == [True, True, False]


def test_runs_test_p_hand_computed():
    # signs -+-+-+ : R = 6, n1 = n2 = 3, mu = 4, var = 1.2
    p = ch.runs_test_p(np.array([1, 5, 2, 6, 3, 7], dtype=float))
    assert p == pytest.approx(math.erfc(2 / math.sqrt(1.2) / math.sqrt(2)))
    assert p == pytest.approx(0.0679, abs=1e-4)
    assert math.isnan(ch.runs_test_p(np.array([1.0, 2.0])))  # too few
    assert math.isnan(ch.runs_test_p(np.array([3.0, 3.0, 3.0, 3.0])))  # all ties
    t = Trace.from_lists([[1, 5, 2, 6, 3, 7], [1, 2, 3]])
    p_req = ch.runs_test_pvalues(t)
    assert p_req[0] == pytest.approx(p) and math.isnan(p_req[1])


def lru_brute(trace: Trace, capacity: int) -> float:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for b in trace.blocks.tolist():
        if b in cache:
            hits += 1
            cache.move_to_end(b)
        else:
            cache[b] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / trace.n_blocks


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=8), min_size=1, max_size=15))
def test_lru_curve_matches_simulation(reqs):
    t = Trace.from_lists(reqs)
    caps, ratio = ch.lru_hit_curve(t, np.array([1, 2, 3, 5, 8, 100]))
    for c, r in zip(caps, ratio, strict=True):
        assert r == pytest.approx(lru_brute(t, int(c)))


def test_lru_reuse_popularity_fixture():
    t = load_trace(FIXTURE)
    caps, ratio = ch.lru_hit_curve(t)
    assert np.all(np.diff(ratio) >= 0)
    assert ratio[-1] == pytest.approx(ch.block_hits(t).mean())  # at full capacity: the unbounded cache
    reuse = ch.reuse_times_s(t)
    assert reuse.size == ch.block_hits(t).sum() and reuse.min() >= 0
    pop = ch.popularity(t)
    assert pop.sum() == t.n_blocks and pop[0] == t.n_requests  # block 0 starts every request
    assert np.all(np.diff(pop) <= 0)


@pytest.mark.parametrize("kind", KINDS)
def test_generators(kind, tmp_path):
    cfg = GenConfig(kind=kind, requests=300, seed=7, keys=1000)
    t = generate(cfg)
    again = generate(cfg)
    assert np.array_equal(t.blocks, again.blocks) and np.array_equal(t.timestamps_ms, again.timestamps_ms)
    other = generate(GenConfig(kind=kind, requests=300, seed=8, keys=1000))
    assert not np.array_equal(other.blocks, t.blocks)
    assert t.n_requests == 300 and np.all(np.diff(t.timestamps_ms) >= 0) and t.timestamps_ms[0] == 0
    assert np.all(np.ceil(t.input_length / 512) == t.lengths)
    if not kind.startswith("ycsb"):
        # prefix-chained like Mooncake: no block seen before comes after a new one in a request
        hits = ch.block_hits(t)
        for r in range(t.n_requests):
            h = hits[t.offsets[r]:t.offsets[r + 1]]
            assert not np.any(h[1:] & ~h[:-1])
    path = tmp_path / f"{kind}.jsonl.gz"
    assert main(["traces", "generate", kind, "--out", str(path), "--requests", "300", "--seed", "7",
                 "--keys", "1000"]) == 0
    assert np.array_equal(load_trace(path).blocks, t.blocks)


def test_generator_shapes():
    chat = ch.compute_stats(generate(GenConfig(kind="chat", requests=2000)))
    rag = ch.compute_stats(generate(GenConfig(kind="rag", requests=2000)))
    assert chat.hit_fraction > 0.6 > rag.hit_fraction  # turns extend each other; RAG reuse stops early
    uni = ch.compute_stats(generate(GenConfig(kind="ycsb-uniform", requests=5000, keys=10_000)))
    zipf = ch.compute_stats(generate(GenConfig(kind="ycsb-zipf", requests=5000, keys=10_000)))
    assert zipf.hit_fraction > uni.hit_fraction + 0.2
    with pytest.raises(ValueError, match="valid: rag, agent"):
        GenConfig(kind="nope")


def test_stats_cli(capsys):
    assert main(["traces", "stats", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    stats = ch.compute_stats(load_trace(FIXTURE))
    assert f"{stats.requests:,}" in out and "~40.0% (on conversation)" in out
    assert "~86.8% (on toolagent)" in out
    assert "Wald-Wolfowitz" in out and f"{stats.hit_fraction * 100:.1f}%" in out


def test_map_cli(tmp_path, capsys):
    out = tmp_path / "ops.npz"
    argv = ["traces", "map", str(FIXTURE), "--keys", "id", "--mapping", "prefix", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "prefix_match" in text and out.exists()


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    assert main(["traces", "stats", str(bad)]) == 2
    assert "line 1: missing field" in capsys.readouterr().err
    assert main(["traces", "stats", str(bad), "--skip-bad"]) == 2
    assert "no requests" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["traces", "map", str(FIXTURE), "--keys", "md5"])
    assert "valid: id, u64, sha256" in capsys.readouterr().err


def test_figures_all(tmp_path, capsys):
    assert main(["figures", "all", "--trace", str(FIXTURE), "--out", str(tmp_path), "--limit", "200"]) == 0
    names = ["fig1a", "fig1b", "fig2a", "fig2b", "lru", "reuse", "popularity"]
    for n in names:
        png = tmp_path / f"{n}_conversation_head400.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n
        with (tmp_path / f"{n}_conversation_head400.csv").open() as fh:
            rows = list(csv.reader(fh))
        assert len(rows) >= 2 or n == "fig2b", n
    with (tmp_path / "fig1a_conversation_head400.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 200 and sum(int(r["blocks"]) for r in rows) == load_trace(FIXTURE, limit=200).n_blocks
