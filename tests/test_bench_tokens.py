"""kvdm bench tokens: the sweep runs on native and Redis backends, checks every answer and prints
the hashing split with its hashlib reference."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvdm.experiments.bench.tokens import TokensConfig, run_tokens
from kvdm.index import IndexSpec


@pytest.mark.parametrize("scheme", ["sha256", "u64"])
def test_sweep_answers_what_was_stored(scheme: str):
    kb = 32 if scheme == "sha256" else 8
    cfg = TokensConfig([IndexSpec("chime", kb), IndexSpec("dict", kb)], lengths=(1000, 4096), prompts=4,
                       chunk=256, key_scheme=scheme, cached=0.5)
    res = run_tokens(cfg, quiet=True)
    rows = res.rows
    assert len(rows) == 4 and (rows["mismatches"] == 0).all()
    assert rows.set_index(["index", "tokens"]).loc[("chime", 1000), "cached_tokens"] == 256  # 500 -> whole chunks
    assert (rows["hash_us_p50"] > 0).all() and (rows["hashlib_mtokens_per_s"] > 0).all()
    assert (rows["hashlib_us_p50"] > 0).all()
    assert (rows["p50_us"] >= rows["hash_us_p50"]).all()


@pytest.mark.parametrize("form", ["torch", "list"])
def test_sweep_takes_the_engines_token_forms(form: str):
    if form == "torch":
        pytest.importorskip("torch")
    cfg = TokensConfig([IndexSpec("dict", 32)], lengths=(1024, 700), prompts=3, tokens_as=form)
    rows = run_tokens(cfg, quiet=True).rows
    assert (rows["mismatches"] == 0).all() and (rows["hashlib_us_p50"] > 0).all()
    with pytest.raises(ValueError, match="--tokens-as"):
        TokensConfig([IndexSpec("dict", 32)], tokens_as="bytes")


def test_cli_prints_the_table_for_chime_and_redis(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "bench", "tokens", "--lengths", "1024,8192",
                          "--prompts", "3", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.split()[:2] == ["chime", "8,192"] for line in lines)
    assert any(line.split()[:2] == ["redis", "1,024"] for line in lines)
    assert "hashlib Mtok/s" in run.stdout and "hashlib us" in run.stdout
    assert (tmp_path / "r" / "results.parquet").exists()


def test_cli_rejects_bad_values():
    for args, msg in ((["--lengths", "0,5"], "--lengths"), (["--backends", "nosuch"], "unknown index"),
                      (["--cached", "2"], "--cached"), (["--prompts", "0"], "--prompts"),
                      (["--tokens-as", "bytes"], "token form")):
        run = subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "bench", "tokens", *args],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and msg in run.stderr and not run.stdout, (args, run.stdout, run.stderr)


def test_hash_ab_prints_kvdm_beside_hashlib(capsys):
    """python -m kvdm.experiments.bench.hash_ab (without --base: no build): every form, each
    measured in its own process."""
    from kvdm.experiments.bench import hash_ab

    assert hash_ab.main(["--lengths", "1024", "--rounds", "1", "--reps", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["tokens", "form", "hashlib", "us", "now", "us", "/hashlib"]
    forms = ["numpy", "list"] + (["torch"] if _has_torch() else [])
    assert sorted(line.split()[1] for line in out[2:]) == sorted(forms)


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
