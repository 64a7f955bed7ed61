"""`kvdm bench index`: runs on every reachable backend and prints its accounting."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kvdm.experiments.bench.calls import make_keys


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvdm.experiments.cli", "bench", "index", *args],
                          capture_output=True, text=True, timeout=300)


def test_keys_are_distinct_and_never_reserved() -> None:
    k8 = make_keys(0, 100_000, 8)
    assert len(np.unique(k8)) == 100_000 and not np.isin(k8, [0, 2**64 - 1]).any()
    k32 = make_keys(0, 5000, 32)
    assert len(np.unique(k32, axis=0)) == 5000 and k32.any(axis=1).all()
    assert np.array_equal(make_keys(10, 5, 8), k8[10:15])


@pytest.mark.parametrize("index", ["dict", "redis", "chime"])
def test_bench_index_prints_its_figures(index: str) -> None:
    out = _bench("--index", index, "--keys", "2000", "--seconds", "0.5", "--op", "mixed",
                 "--node-size", "64M")
    assert out.returncode == 0, out.stderr
    header, row = [line for line in out.stdout.splitlines() if not line.startswith("#")][:2]
    assert header.split()[:4] == ["Mops", "Mkeys/s", "p50", "us"]
    values = row.split()
    assert float(values[0]) > 0 and float(values[2]) > 0
    if index != "dict":
        assert float(values[5]) >= 1.0  # at least one round trip per key


def test_bench_index_rejects_bad_values() -> None:
    out = _bench("--index", "dict", "--op", "scan")
    assert out.returncode == 2 and "valid: get, put, mixed" in out.stderr
    out = _bench("--index", "dict", "--clients", "2", "--keys", "1000", "--seconds", "0.2")
    assert out.returncode == 2 and "--clients 1" in out.stderr


@pytest.mark.parametrize(("index", "op", "rtt"), [("chime", "get", 1.0), ("sherman", "get", 1.0), ("race", "get", 2.0)])
def test_c_loop_counts_the_protocol_per_key(index: str, op: str, rtt: float) -> None:
    """The C loop (default for native indexes) runs the calls it reports: exact round trips
    per key of a warm-cache lookup, over both key widths' generator."""
    for key_bytes in ("8", "32"):
        out = _bench("--index", index, "--keys", "3000", "--seconds", "0.3", "--op", op, "--key-bytes", key_bytes,
                     "--node-size", "64M", "--driver", "c")
        assert out.returncode == 0, out.stderr
        assert "measured in C" in out.stdout
        row = [line for line in out.stdout.splitlines() if not line.startswith("#")][1].split()
        assert float(row[0]) > 0 and abs(float(row[5]) - rtt) < 0.02


def test_keys_of_numbers_the_keys_as_make_keys() -> None:
    from kvdm.experiments.bench.calls import keys_of

    nums = np.array([7, 3, 99], dtype=np.uint64)
    for kb in (8, 32):
        assert np.array_equal(keys_of(nums, kb)[1], make_keys(3, 1, kb)[0])
