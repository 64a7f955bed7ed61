"""Every ``kvdm`` error is one ``kvdm: error: ...`` line, exit status 2, no usage dump, and no run
output before it (issue 15); and the snags around it: race's default mapping, reproduce's
output folder, bench index's '-' cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvdm.experiments.cli import main
from kvdm.traces.registry import FIXTURE

FIXTURES = FIXTURE.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (status, stdout, stderr); argparse's exits count as statuses."""
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail as a usage error: its message (asserting the shape)."""
    status, out, err = run(capsys, *argv)
    assert status == 2, (status, out, err)
    assert out == "", out  # no run output (header, config echo) before the error
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvdm: error: "), err
    return lines[0].removeprefix("kvdm: error: ")


@pytest.fixture
def garbage(tmp_path: Path) -> dict[str, Path]:
    files = {"garbage": "hello, this is not a trace\n", "empty": "", "schema": '{"prompt": "hi", "id": 3}\n'}
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    return {name: tmp_path / f"{name}.jsonl" for name in files}


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "index", "--keys", "-5"], "--keys must be a positive count or size"),
    (["bench", "index", "--keys", "abc"], "got abc"),
    (["replay", "--index", "nosuch"], "--index: unknown index 'nosuch'; valid: chime, dict, race, redis, sherman"),
    (["memnode", "serve", "--size", "-1G"], "--size must be a positive count or size"),
    (["memnode", "serve", "--node-id", "300"], "--node-id must be an integer in 0..254, got 300"),
    (["replay", "--duration", "-1"], "--duration must be a number >= 0, got -1"),
    (["replay", "--clients", "0"], "--clients must be a positive count, got 0"),
    (["replay", "--bin-min", "nan"], "--bin-min must be a finite number, got nan"),
    (["replay", "--rate", "0"], "--rate must be a positive number, got 0"),
    (["replay", "--limit", "-2"], "--limit must be a count >= 0, got -2"),
    (["replay", "--format", "parquet"], "--format: unknown trace format 'parquet'; valid: auto, mooncake, bailian"),
    (["traces", "stats", str(FIXTURE), "--arrivals", "bursty"], "valid: even, poisson"),
    (["reproduce", "--load-duration", "0"], "--load-duration must be a positive number, got 0"),
    (["bench", "transport", "--iters", "x"], "--iters must be an integer, got 'x'"),
    (["nosuch"], "unknown command 'nosuch' for kvdm; valid: bench, "),
    (["replay", "--index", "chime", "--index-opt", "window=abc"], "option window must be an integer, got 'abc'"),
    (["bench", "index", "--index", "sherman", "--index-opt", "cache_gb=1"], "unknown option(s) for sherman: cache_gb"),
    (["replay", "--index", "race", "--index-opt", "subtables=3"], "subtables must be a power of two in 1..65536"),
    (["replay", "--index", "chime", "--index-opt", "lpm_exact=maybe"], "option lpm_exact must be True or False"),
])
def test_bad_flags_are_one_line(capsys, argv, message):
    assert message in one_error(capsys, *argv)


def test_bad_traces_fail_before_the_header(capsys, garbage):
    assert one_error(capsys, "replay", "--trace", "/nonexistent.jsonl") == "trace file not found: /nonexistent.jsonl"
    assert "unknown trace format: line 1 is neither JSON" in one_error(capsys, "replay", "--trace",
                                                                       str(garbage["garbage"]))
    assert "no requests in the file" in one_error(capsys, "replay", "--trace", str(garbage["empty"]))
    msg = one_error(capsys, "replay", "--trace", str(garbage["schema"]))
    assert "unknown trace format" in msg and "'prompt', 'id'" in msg
    for name in garbage.values():
        assert str(name) in one_error(capsys, "traces", "stats", str(name))


def test_race_with_the_paper_mapping_is_refused_before_the_header(capsys):
    msg = one_error(capsys, "replay", "--index", "race", "--mapping", "paper", "--trace", str(FIXTURE))
    assert "race keeps no key order" in msg and "--mapping prefix" in msg


def test_subprocess_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "replay", "--trace", "/nonexistent.jsonl"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "kvdm: error: trace file not found: /nonexistent.jsonl\n"


def test_race_replays_with_the_prefix_mapping_and_says_so(capsys, tmp_path):
    """The default mapping on race, on a ServeGen CSV without timestamps: Poisson arrivals recorded."""
    out_dir = tmp_path / "run"
    status, out, err = run(capsys, "replay", "--index", "race", "--clients", "1", "--trace",
                           str(FIXTURES / "servegen_offline.csv"), "--arrivals", "poisson", "--rate", "4",
                           "--out", str(out_dir))
    assert status == 0, err
    notes = [line for line in out.splitlines() if "keeps no key order" in line]
    assert len(notes) == 1 and "prefix mapping" in notes[0]
    assert "#   arrivals   poisson at 4 requests/s (seed 0): the trace has no timestamps" in out
    meta = json.loads((out_dir / "run.json").read_text())
    assert meta["config"]["mapping"] == "prefix"
    assert meta["config"]["trace_options"]["arrivals"] == "poisson" and meta["config"]["trace_options"]["rate"] == 4
    assert meta["trace"]["format"] == "bailian-csv" and meta["trace"]["arrivals"].startswith("poisson at 4")


def test_reproduce_race_names_the_flag_and_leaves_no_folder(capsys, tmp_path):
    out = tmp_path / "reproduction"
    msg = one_error(capsys, "reproduce", "--quick", "--backends", "chime,race", "--out", str(out))
    assert "race keeps no key order" in msg and "--steps engine" in msg
    assert "no trace named 'nosuch'" in one_error(capsys, "reproduce", "--quick", "--traces", "nosuch",
                                                  "--out", str(out))
    assert not out.exists()


def test_reproduce_failure_removes_the_folder_it_created(capsys, tmp_path, monkeypatch):
    import kvdm.experiments.reproduce.run as rp

    def fail(cfg):
        (cfg.out / "figures").mkdir(parents=True)
        raise ValueError("boom")

    monkeypatch.setattr(rp, "reproduce", fail)
    out = tmp_path / "new"
    assert one_error(capsys, "reproduce", "--quick", "--steps", "engine", "--out", str(out)) == "boom"
    assert not out.exists()
    kept = tmp_path / "kept"
    (kept / "runs" / "fig3-a").mkdir(parents=True)
    (kept / "runs" / "fig3-a" / "run.json").write_text("{}")
    one_error(capsys, "reproduce", "--quick", "--steps", "engine", "--out", str(kept))
    assert (kept / "runs" / "fig3-a" / "run.json").exists()  # an earlier folder is never removed


def test_bench_index_prints_dashes_not_nan(capsys):
    status, out, err = run(capsys, "bench", "index", "--index", "chime", "--keys", "2000", "--seconds", "0.2",
                           "--clients", "1")
    assert status == 0, err
    row = out.splitlines()[[i for i, line in enumerate(out.splitlines()) if line.lstrip().startswith("Mops")][0] + 1]
    assert "nan" not in out and row.split()[-1] == "-"  # server CPU: a Redis-only column


def test_a_reader_that_leaves_early_is_not_an_error():
    """`kvdm traces stats ... | head -1`: the closed pipe ends the command quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "kvdm.experiments.cli", "traces", "stats", str(FIXTURE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_index_opt_reads_true_and_false_as_booleans():
    """--index-opt lpm_exact=false must turn verification off, not pass the truthy string."""
    from kvdm.experiments.cli.replay import parse_index_opt
    assert parse_index_opt("lpm_exact=false") == ("lpm_exact", False)
    assert parse_index_opt("split_reads_kv=True") == ("split_reads_kv", True)
    assert parse_index_opt("window=8") == ("window", 8) and parse_index_opt("cache_mb=0.5") == ("cache_mb", 0.5)
