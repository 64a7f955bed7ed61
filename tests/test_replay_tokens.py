"""Token-level replay: prompts synthesised from hash_ids exactly as documented, and hits equal to
the block-level ground truth on every backend when chunks are blocks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kvdm.index
from kvdm.experiments.replay.engine import ReplayConfig, replay
from kvdm.index import IndexSpec
from kvdm.index.tokens import ChunkKeys, TokenIndex
from kvdm.traces.loaders import Trace
from kvdm.traces.mapping import map_trace
from kvdm.traces.registry import FIXTURE, load
from kvdm.traces.tokens import VOCAB, block_tokens, prompt_length, prompt_tokens, token_stream

FIXTURE_TRACE = str(FIXTURE)
M64 = 2**64 - 1


def ref_mix64(x: int) -> int:
    """splitmix64's finaliser, written out here so the test does not trust the module's."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def test_block_tokens_follow_the_documented_formula():
    ids = np.array([0, 7, 2**40 + 3], dtype=np.int64)
    got = block_tokens(ids, 4).tolist()
    want = [ref_mix64((h * 4 + j + 0x6B76646D746F6B6E) & M64) % VOCAB for h in ids.tolist() for j in range(4)]
    assert got == want
    assert all(0 <= t < VOCAB for t in got)


def test_prompts_share_tokens_where_they_share_block_ids():
    trace = Trace(name="t", offsets=np.array([0, 3, 5, 7]), blocks=np.array([10, 11, 12, 10, 11, 10, 13]),
                  timestamps_ms=np.zeros(3), input_length=np.array([10, 6, 99]),
                  output_length=np.zeros(3, np.int64), block_tokens=4)
    a, b, c = (prompt_tokens(trace, r) for r in range(3))
    assert len(a) == 10 and len(b) == 6       # input_length trims the last block
    assert len(c) == 8                         # 99 disagrees with 2 blocks of 4: all blocks are kept
    assert (a[:6] == b).all() and (a[:4] == c[:4]).all() and (a[4:8] != c[4:8]).any()
    assert prompt_length(3, 9, 4) == 9 and prompt_length(3, 12, 4) == 12
    assert prompt_length(3, 8, 4) == 12  # 8 tokens would leave the third block empty
    assert prompt_length(3, 13, 4) == 12 and prompt_length(3, 0, 4) == 12


def test_token_stream_keys_are_the_token_index_keys():
    """The replay's keys are exactly what TokenIndex computes for the synthesised prompt."""
    trace = load(FIXTURE_TRACE, limit=30)
    stream, info = token_stream(trace, ChunkKeys(256, "sha256", partial_chunks=True), quiet=True)
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=256, partial_chunks=True)
    for r in (0, 5, 29):
        ops = stream.request_ops(r)
        assert stream.kind[ops[0]] == 2  # the prefix match comes first, over every chunk
        assert np.array_equal(stream.op_keys(ops[0]), tix.chunk_keys(prompt_tokens(trace, r)))
        assert info.prompt_tokens[r] == len(prompt_tokens(trace, r))


def test_chunks_equal_blocks_give_the_block_level_ground_truth_on_the_conversation_trace():
    """On the whole conversation trace (the shared copy, else the fixture), at the stream level."""
    trace = load("conversation")
    stream, info = token_stream(trace, ChunkKeys(trace.block_tokens, "u64", partial_chunks=True), quiet=True)
    block = map_trace(trace, "prefix", "id")
    assert stream.summary()["prefix_match"] == block.summary()["prefix_match"]
    pm = stream.kind == 2
    req = np.searchsorted(stream.req_offsets, np.flatnonzero(pm), side="right") - 1
    assert np.array_equal(info.hit_tokens(req, stream.expected_hits[pm]), info.block_hit_tokens[req])
    assert info.length_mismatch == 0


@pytest.mark.parametrize("index", ["dict", "chime", "sherman", "race", "redis"])
def test_token_replay_hits_equal_the_block_level_ground_truth(index: str):
    key_bytes, scheme = (8, "u64") if index == "sherman" else (32, "sha256")
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec(index, key_bytes), clients=1,
                       mapping="prefix", key_scheme=scheme, tokens=True)
    res = replay(cfg, quiet=True)
    tok = res.meta["tokens"]
    whole = res.rows[res.rows["bin"] == -1].set_index("op")
    assert whole["hit_mismatch"].sum() == 0
    assert whole.loc["prefix_match", "hits"] == whole.loc["prefix_match", "expected_hits"] > 0
    assert tok["prompts"] == 400 and tok["chunk_tokens"] == 512
    assert tok["hit_tokens"] == tok["block_truth_hit_tokens"] > 0 and tok["prompts_differing"] == 0
    assert 0 < tok["hit_ratio"] < 1


@pytest.mark.parametrize(("chunk", "scheme"), [(256, "sha256"), (100, "vllm-sha256")])
def test_token_replay_with_another_chunk_size_reports_its_hit_ratio(chunk: int, scheme: str):
    cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("chime", 32), clients=1, mapping="prefix",
                       key_scheme=scheme, tokens=True, chunk_tokens=chunk)
    res = replay(cfg, quiet=True)
    tok = res.meta["tokens"]
    assert res.rows["hit_mismatch"].sum() == 0
    assert tok["chunk_tokens"] == chunk and 0 < tok["hit_tokens"] <= tok["prompt_tokens"]
    if 512 % chunk == 0:  # chunks tile blocks: a cached block is two cached chunks
        assert tok["hit_tokens"] == tok["block_truth_hit_tokens"]
    else:  # a chunk straddling a block boundary is only cached if both blocks are
        assert tok["hit_tokens"] <= tok["block_truth_hit_tokens"]


def test_token_config_errors():
    with pytest.raises(ValueError, match="--mapping prefix"):
        ReplayConfig(mapping="paper", key_scheme="sha256", tokens=True)
    with pytest.raises(ValueError, match="--key-scheme sha256 or u64 or vllm-sha256"):
        ReplayConfig(mapping="prefix", key_scheme="id", tokens=True)


def test_replay_cli_tokens(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--trace", FIXTURE_TRACE,
                          "--tokens", "256", "--index", "chime", "--clients", "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert "token hits" in run.stdout and "chunks of 256 tokens" in run.stdout, run.stdout + run.stderr
    bad = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--tokens", "-3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "-3" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--key-scheme", "vllm-sha256"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "needs --tokens" in bad.stderr
