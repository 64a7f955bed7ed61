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


# --- checks on timestamps, lengths and order (issue 15) ---

def _moon(ts, il=600, ol=5, ids=(0, 1)) -> str:
    return json.dumps({"timestamp": ts, "input_length": il, "output_length": ol, "hash_ids": list(ids)})


@pytest.mark.parametrize("line,message", [
    (_moon(-1), "timestamp must be finite and >= 0, got -1"),
    ('{"timestamp": NaN, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}', "got nan"),
    ('{"timestamp": Infinity, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}', "got inf"),
    (_moon(3, il=-600), "field 'input_length' must be >= 0, got -600"),
    (_moon(3, ol=-1), "field 'output_length' must be >= 0, got -1"),
])
def test_bad_timestamps_and_lengths_are_rejected(tmp_path, line, message):
    path = _write(tmp_path / "t.jsonl", [GOOD, line, GOOD])
    with pytest.raises(TraceFormatError) as exc:
        load_trace(path)
    assert f"{path}: line 2: " in str(exc.value) and message in str(exc.value)
    assert load_trace(path, skip_bad=True).skipped_lines == 1


def test_bailian_negative_timestamp_and_length(tmp_path):
    rec = {"chat_id": 1, "timestamp": 1.0, "input_length": 32, "hash_ids": [1, 2]}
    path = _write(tmp_path / "b.jsonl", [json.dumps(rec), json.dumps({**rec, "timestamp": -0.5}),
                                         json.dumps({**rec, "input_length": -3})])
    with pytest.raises(TraceFormatError, match="line 2: timestamp must be finite and >= 0, got -0.5"):
        load_trace(path)
    assert load_trace(path, skip_bad=True).skipped_lines == 2


def test_unsorted_timestamps_are_sorted_and_counted(tmp_path, capsys):
    path = _write(tmp_path / "u.jsonl", [_moon(10, ids=[1]), _moon(0, ids=[2, 3]), _moon(30, ids=[4]),
                                         _moon(20, il=1, ids=[5]), _moon(5, ids=[6])])
    t = load_trace(path)
    assert t.reordered == 3  # lines 2, 4 and 5 come before a timestamp already seen
    assert t.timestamps_ms.tolist() == [0, 5, 10, 20, 30]
    assert [t.request(i).tolist() for i in range(5)] == [[2, 3], [6], [1], [5], [4]]
    assert t.input_length.tolist() == [600, 600, 600, 1, 600]
    with pytest.raises(TraceFormatError, match=r"u.jsonl: line 2: timestamp earlier than a previous line's \(3 "):
        load_trace(path, strict_order=True)
    registry.load(path)
    assert "kvdm: warning: 3 request(s) out of timestamp order" in capsys.readouterr().err


def test_length_mismatch_is_counted(tmp_path, capsys):
    # 600 tokens = 2 blocks of 512: right; 513 = 2: right; 1 = 1 block, not 2; 2000 = 4, not 2
    path = _write(tmp_path / "m.jsonl", [_moon(0), _moon(1, il=513), _moon(2, il=1), _moon(3, il=2000)])
    t = load_trace(path)
    assert t.length_mismatches() == 2
    assert compute_stats(t).length_mismatches == 2
    assert main(["traces", "stats", str(path)]) == 0
    assert "input_length != blocks x 512 tokens 2 requests" in " ".join(capsys.readouterr().out.split())


# --- the Bailian / ServeGen family ---

SERVEGEN_JSONL = registry.FIXTURE.parent / "servegen_offline.jsonl"
SERVEGEN_CSV = registry.FIXTURE.parent / "servegen_offline.csv"
BAILIAN_CSV = registry.FIXTURE.parent / "bailian_timed.csv"


def test_servegen_jsonl_without_timestamps():
    t = load_trace(SERVEGEN_JSONL)
    assert t.format == "bailian" and t.block_tokens == 16 and t.n_requests == 12
    assert t.arrivals == "even at 1 requests/s: the trace has no timestamps"
    assert t.timestamps_ms.tolist() == [1000.0 * i for i in range(12)]
    assert t.meta["request_id"][0] == "req-0000" and t.meta["type"][2] == "image" and t.meta["images"][2] == 1
    assert t.meta["chat_id"].tolist() == [-1] * 12 and t.request(0).tolist() == [0, 1, 2, 3, 100, 101]
    assert t.length_mismatches() == 0
    fast = load_trace(SERVEGEN_JSONL, rate=4.0)
    assert fast.timestamps_ms[-1] == 11 * 250.0
    p1, p2 = (load_trace(SERVEGEN_JSONL, arrivals="poisson", rate=10.0) for _ in range(2))
    assert np.array_equal(p1.timestamps_ms, p2.timestamps_ms) and p1.timestamps_ms[0] == 0  # seeded
    assert np.all(np.diff(p1.timestamps_ms) > 0) and p1.arrivals.startswith("poisson at 10 requests/s (seed 0)")
    assert not np.array_equal(p1.timestamps_ms, load_trace(SERVEGEN_JSONL, arrivals="poisson", rate=10.0,
                                                           seed=1).timestamps_ms)


def test_servegen_csv_matches_the_jsonl():
    a, b = load_trace(SERVEGEN_JSONL), load_trace(SERVEGEN_CSV)
    assert b.format == "bailian-csv" and b.name == "servegen_offline"
    for attr in ("offsets", "blocks", "timestamps_ms", "input_length", "output_length"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
    for k in ("request_id", "type", "images"):
        assert a.meta[k].tolist() == b.meta[k].tolist(), k


def test_bailian_csv_with_timestamps():
    t = load_trace(BAILIAN_CSV)
    assert t.format == "bailian-csv" and t.arrivals == "trace timestamps" and t.reordered == 0
    assert t.timestamps_ms[0] == 744.0 and np.all(np.diff(t.timestamps_ms) > 0)
    assert t.meta["chat_id"].tolist() == list(range(12)) and t.meta["parent_chat_id"][4] == 0
    assert np.array_equal(t.blocks, load_trace(SERVEGEN_JSONL).blocks)


def test_csv_errors_name_the_line(tmp_path):
    head = "request_id,input_length,hash_ids"
    path = _write(tmp_path / "s.csv", [head, 'a,32,"[1, 2]"', "b,32", "c,-5,1 2", "d,x,1", 'e,16,"[1, -2]"'])
    for line, message in ((3, "expected 3 CSV columns"), (4, "'input_length' must be >= 0"),
                          (5, "'input_length' must be an integer"), (6, "non-negative 63-bit integers")):
        bad = _write(tmp_path / "one.csv", [head, 'a,32,"[1, 2]"', path.read_text().splitlines()[line - 1]])
        with pytest.raises(TraceFormatError, match=f"one.csv: line 3: .*{message}"):
            load_trace(bad)
    assert load_trace(path, skip_bad=True).skipped_lines == 4


def test_auto_detection_tells_the_formats_apart(tmp_path):
    from kvdm.traces.loaders import detect_format

    assert detect_format(FIXTURE) == "mooncake"
    assert detect_format(SERVEGEN_JSONL) == "bailian" and detect_format(SERVEGEN_CSV) == "bailian-csv"
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(gzip.compress(SERVEGEN_CSV.read_bytes()))
    assert load_trace(gz).format == "bailian-csv"
    for text, message in (("id,prompt\n1,hi\n", "unknown trace format: line 1 is neither JSON"),
                          ('{"prompt": "hi"}\n', "unknown trace format: line 1 is a JSON object with fields 'prompt'")):
        path = tmp_path / "x.trace"
        path.write_text(text)
        with pytest.raises(TraceFormatError, match=message):
            load_trace(path)
    with pytest.raises(ValueError, match="valid: auto, mooncake, bailian, bailian-csv"):
        load_trace(FIXTURE, format="parquet")
