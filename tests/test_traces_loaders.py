"""Trace loaders: the shared Mooncake traces' numbers, bad input, gzip, Bailian, registry, fetch."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kvdm.experiments.cli import main
from kvdm.traces import registry
from kvdm.traces.characterise import PAPER, compute_stats
from kvdm.traces.loaders import Trace, TraceFormatError, load_trace, write_mooncake

FIXTURE = registry.FIXTURE


@pytest.mark.parametrize(
    "name,requests,refs,unique,hit",
    [("conversation", 12_031, 288_500, 182_790, 0.366), ("synthetic", 3_993, 121_877, 43_924, 0.640)],
)
def test_shared_trace_numbers(shared_traces: Path, name, requests, refs, unique, hit):
    trace = load_trace(shared_traces / f"{name}_trace.jsonl")
    stats = compute_stats(trace)
    assert (stats.requests, stats.block_refs, stats.unique_blocks) == (requests, refs, unique)
    assert abs(stats.hit_fraction - hit) <= 0.001
    assert trace.offsets[-1] == refs and trace.blocks.dtype == np.int64
    # the paper's text numbers, within 3 points
    if name == "conversation":
        assert abs(stats.share_hit_ge_50 - PAPER["share_hit_ge_50"][0]) <= 0.03
    else:
        assert abs(stats.share_hit_gt_80 - PAPER["share_hit_gt_80"][0]) <= 0.03


def test_fixture_is_head_of_conversation(shared_traces: Path):
    head = (shared_traces / "conversation_trace.jsonl").read_bytes().split(b"\n")[:400]
    assert FIXTURE.read_bytes() == b"\n".join(head) + b"\n"


def test_fixture_layout():
    t = load_trace(FIXTURE)
    assert t.n_requests == 400 and t.format == "mooncake" and t.block_tokens == 512
    assert t.request(3).tolist() == [0, 42, 43, 44, 45]  # line 4, quoted in the shared README
    assert t.input_length[3] == 2290 and t.output_length[3] == 316 and t.timestamps_ms[3] == 0
    assert np.all(np.diff(t.offsets) == t.lengths)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]})


@pytest.mark.parametrize(
    "bad,message",
    [
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": [1, 2', "line 2"),
        ('{"timestamp": 1, "input_length": 3, "hash_ids": [1]}', "missing field 'output_length'"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": [1.5]}', "integers"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": ["7"]}', "integers"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": [true]}', "integers"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": [-1]}', "integers"),
        ('{"timestamp": "1", "input_length": 3, "output_length": 1, "hash_ids": [1]}',
         "'timestamp' must be a number"),
        ('[1, 2, 3]', "JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "t.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(TraceFormatError) as exc:
        load_trace(path)
    assert str(path) in str(exc.value) and "line 2" in str(exc.value) and message in str(exc.value)
    skipped = load_trace(path, skip_bad=True)
    assert skipped.n_requests == 2 and skipped.skipped_lines == 1


def test_empty_and_blank_files(tmp_path):
    for text in ("", "\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(text)
        with pytest.raises(TraceFormatError, match="no requests"):
            load_trace(path)
    path = _write(tmp_path / "blank.jsonl", ["", GOOD, "   ", GOOD])
    assert load_trace(path).n_requests == 2
    bad_only = _write(tmp_path / "bad.jsonl", ["{", "nope"])
    with pytest.raises(TraceFormatError, match="2 malformed"):
        load_trace(bad_only, skip_bad=True)


def test_gzip_transparent(tmp_path):
    plain = load_trace(FIXTURE)
    gz = tmp_path / "conv.jsonl.gz"
    gz.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    misnamed = tmp_path / "conv_gz_really.jsonl"  # detected by magic bytes, not by name
    misnamed.write_bytes(gz.read_bytes())
    for p in (gz, misnamed):
        t = load_trace(p)
        assert np.array_equal(t.blocks, plain.blocks) and np.array_equal(t.offsets, plain.offsets)
    truncated = tmp_path / "trunc.jsonl.gz"
    truncated.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])
    with pytest.raises(TraceFormatError, match="trunc.jsonl.gz"):
        load_trace(truncated)


def test_write_mooncake_round_trip(tmp_path):
    t = load_trace(FIXTURE)
    for name in ("out.jsonl", "out.jsonl.gz"):
        write_mooncake(t, tmp_path / name)
        u = load_trace(tmp_path / name)
        for a in ("offsets", "blocks", "timestamps_ms", "input_length", "output_length"):
            assert np.array_equal(getattr(t, a), getattr(u, a)), a
    assert (tmp_path / "out.jsonl").read_bytes() == FIXTURE.read_bytes()


def test_bailian_loader(tmp_path):
    recs = [
        {"chat_id": 10, "parent_chat_id": -1, "timestamp": 1.5, "input_length": 40, "output_length": 7,
         "type": "text", "turn": 1, "hash_ids": [5, 6, 7]},
        {"chat_id": 11, "parent_chat_id": 10, "timestamp": 2.25, "input_length": 70, "output_length": 3,
         "type": "text", "turn": 2, "hash_ids": [5, 6, 7, 8, 9]},
        {"chat_id": 12, "timestamp": 3, "hash_ids": []},
    ]
    path = _write(tmp_path / "bailian.jsonl", [json.dumps(r) for r in recs])
    t = load_trace(path)
    assert t.format == "bailian" and t.block_tokens == 16
    assert t.timestamps_ms.tolist() == [1500.0, 2250.0, 3000.0]
    assert t.meta["chat_id"].tolist() == [10, 11, 12] and t.meta["parent_chat_id"].tolist() == [-1, 10, -1]
    assert t.meta["turn"].tolist() == [1, 2, -1] and t.lengths.tolist() == [3, 5, 0]
    assert compute_stats(t).hit_fraction == pytest.approx(3 / 8)
    bad = _write(tmp_path / "bad.jsonl", [json.dumps(recs[0]), json.dumps({"chat_id": 1, "hash_ids": [1]})])
    with pytest.raises(TraceFormatError, match="line 2: missing field 'timestamp'"):
        load_trace(bad)
    with pytest.raises(TraceFormatError, match="line 3: missing field 'input_length'"):
        load_trace(path, format="mooncake")


def test_from_lists_and_head():
    t = Trace.from_lists([[1, 2], [], [2, 3, 4]])
    assert t.n_requests == 3 and t.lengths.tolist() == [2, 0, 3]
    assert t.head(2).blocks.tolist() == [1, 2] and t.request_of_block().tolist() == [0, 0, 2, 2, 2]


# --- registry ---

@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared folder, an empty cache and no KVDM_TRACE_DIR: only what the test puts there."""
    monkeypatch.setattr(registry, "shared_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setenv("KVDM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KVDM_TRACE_DIR", raising=False)
    return tmp_path


def test_resolution_order(isolated, monkeypatch, capsys):
    # nothing anywhere: conversation falls back to the fixture, with a warning on stderr
    assert registry.resolve("conversation") == FIXTURE
    assert "bundled fixture" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="kvdm traces fetch toolagent"):
        registry.resolve("toolagent")
    with pytest.raises(FileNotFoundError, match="known names"):
        registry.resolve("nosuchtrace")
    with pytest.raises(FileNotFoundError, match="trace file not found"):
        registry.resolve(str(isolated / "missing.jsonl"))
    # the cache, then $KVDM_TRACE_DIR which comes first
    cache = registry.cache_dir()
    cache.mkdir(parents=True)
    (cache / "conversation_trace.jsonl").write_bytes(FIXTURE.read_bytes())
    assert registry.resolve("conversation") == cache / "conversation_trace.jsonl"
    tdir = isolated / "tdir"
    tdir.mkdir()
    (tdir / "conversation.jsonl.gz").write_bytes(gzip.compress(FIXTURE.read_bytes()))
    monkeypatch.setenv("KVDM_TRACE_DIR", str(tdir))
    assert registry.resolve("conversation") == tdir / "conversation.jsonl.gz"
    assert registry.load("conversation").name == "conversation"
    # an explicit path wins over everything
    assert registry.resolve(str(FIXTURE)) == FIXTURE


def test_default_shared_dir_is_beside_checkout():
    import kvdm.traces

    assert registry.shared_dir() == Path(kvdm.traces.__file__).resolve().parents[2] / "shared" / "traces"


def _info(tmp_path: Path, sha: str) -> registry.TraceInfo:
    return registry.TraceInfo("fix", "fix_trace.jsonl", "http://127.0.0.1:1/unreachable", sha, "fixture")


def test_fetch_success_and_cache(tmp_path):
    sha = registry.sha256_file(FIXTURE)
    info = _info(tmp_path, sha)
    dest = registry.fetch(info, url=FIXTURE.as_uri(), dest_dir=tmp_path / "c")
    assert dest == tmp_path / "c" / "fix_trace.jsonl" and dest.read_bytes() == FIXTURE.read_bytes()
    # a verified cached copy is used without touching the (unreachable) network
    assert registry.fetch(info, dest_dir=tmp_path / "c") == dest
    assert os.listdir(tmp_path / "c") == ["fix_trace.jsonl"]


def test_fetch_failures_leave_nothing(tmp_path):
    info = _info(tmp_path, "0" * 64)
    with pytest.raises(registry.FetchError, match="checksum mismatch") as exc:
        registry.fetch(info, url=FIXTURE.as_uri(), dest_dir=tmp_path / "c")
    assert "expected sha256 " + "0" * 64 in str(exc.value)
    assert os.listdir(tmp_path / "c") == []
    with pytest.raises(registry.FetchError, match="download of fix from http://127.0.0.1:1/unreachable fail"):
        registry.fetch(info, dest_dir=tmp_path / "c", timeout=5)
    with pytest.raises(registry.FetchError, match="failed"):
        registry.fetch(info, url=(tmp_path / "absent.jsonl").as_uri(), dest_dir=tmp_path / "c")
    assert os.listdir(tmp_path / "c") == []
    with pytest.raises(ValueError, match="fetchable: toolagent"):
        registry.fetch("nope")


def test_fetch_cli(isolated, capsys):
    sha = "48a2db1a13d3bc05e6330140c64f604ba366df20d3c9e128b5c35a01c1fa5f71"
    assert registry.KNOWN["toolagent"].sha256 == sha
    assert main(["traces", "fetch", "toolagent", "--url", FIXTURE.as_uri()]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch for toolagent" in err and "discarded" in err
    cache = registry.cache_dir()
    assert not cache.exists() or os.listdir(cache) == []
    assert main(["traces", "fetch", "toolagent", "--url", "http://127.0.0.1:1/x"]) == 1
    assert "download of toolagent" in capsys.readouterr().err
    assert main(["traces", "list"]) == 0
    assert "kvdm traces fetch toolagent" in capsys.readouterr().out
