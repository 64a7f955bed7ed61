"""``kvdm bench index`` end to end (small sizes): it runs, prints what it promises, and rejects
bad flags with the valid values."""

from __future__ import annotations

import numpy as np
import pytest
from kvdm.experiments.cli import main
from kvdm.experiments.cmd_bench_index import key_space

pytestmark = pytest.mark.timeout(120)


def test_key_space_is_distinct_and_avoids_reserved_keys() -> None:
    k8 = key_space(np.arange(200_000), 8)
    assert len(np.unique(k8)) == 200_000 and not ((k8 == 0) | (k8 == np.uint64(2**64 - 1))).any()
    k32 = key_space(np.arange(1000), 32)
    assert k32.shape == (1000, 32) and len({bytes(r) for r in k32}) == 1000


@pytest.mark.parametrize("op", ["get", "put", "mixed"])
def test_bench_chime_two_clients(op: str, capsys) -> None:
    assert main(["bench", "index", "--index", "chime", "--keys", "5000", "--op", op, "--clients", "2",
                 "--node-size", "64M", "--key-bytes", "32"]) == 0
    out = capsys.readouterr().out
    assert "per op:" in out and "RTTs" in out and "p99 us" in out and "cache: hit ratio" in out
    if op != "put":
        assert "get " in out
        assert "per op: 1.000 RTTs" in out or op == "mixed"


def test_bench_dict(capsys) -> None:
    assert main(["bench", "index", "--index", "dict", "--keys", "2000", "--op", "mixed"]) == 0
    assert "put " in capsys.readouterr().out


def test_bench_rejects_unknown_index(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "index", "--index", "btree9"])
    assert "valid: " in capsys.readouterr().err
