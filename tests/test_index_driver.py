"""The C measuring loop of the replay engine (native/driver.c, ``NativeIndex.drive``): the
same hits and protocol costs as the Python loop, and malformed input rejected before any op
runs. Named test_index_* so the AddressSanitizer job runs it."""

from __future__ import annotations

import numpy as np
import pytest

from kvdm.experiments.replay.engine import ReplayConfig, replay
from kvdm.index import IndexSpec
from kvdm.traces.registry import FIXTURE

FIXTURE_TRACE = str(FIXTURE)


@pytest.mark.parametrize(("index", "mapping", "scheme"),
                         [("chime", "paper", "id"), ("sherman", "prefix", "u64"), ("chime", "paper", "sha256")])
def test_c_loop_matches_the_python_loop(index: str, mapping: str, scheme: str) -> None:
    """The C measuring loop runs the same ops with the same hits and the same protocol costs
    as the op-by-op Python loop (one client: the index evolves identically)."""
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    stream = map_trace(load(FIXTURE_TRACE, limit=150), mapping, scheme, "timed")
    out = {}
    for driver in ("c", "python"):
        cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec(index, 32 if scheme == "sha256" else 8), clients=1,
                           mapping=mapping, key_scheme=scheme, driver=driver)
        out[driver] = replay(cfg, stream, quiet=True).rows.set_index(["bin", "op"])
    c, py = out["c"], out["python"]
    for col in ("ops", "blocks", "hits", "hit_mismatch", "rtts_per_op", "reads_per_op", "bytes_read_per_op",
                "bytes_written_per_op", "splits_per_op"):
        assert c[col].equals(py[col]), col
    assert (c["hit_mismatch"] == 0).all()


def test_c_loop_rejects_a_malformed_stream_without_running(dm) -> None:
    from kvdm.index import open as open_index
    from kvdm.traces.mapping import map_trace
    from kvdm.traces.registry import load

    stream = map_trace(load(FIXTURE_TRACE, limit=20), "paper", "id", "timed")
    idx = open_index("chime", dm, 8)
    with pytest.raises(ValueError, match=r"op id 99999 at 1 is not in 0\.\."):
        idx.drive(stream, np.array([0, 99999]), np.zeros(2, np.int32), 1, False)
    with pytest.raises(ValueError, match=r"group 3 at 0 is not in 0\.\.1"):
        idx.drive(stream, np.array([0]), np.array([3], np.int32), 1, False)
    assert idx.counters()["rtts"] == 0  # nothing ran
    wide = map_trace(load(FIXTURE_TRACE, limit=5), "paper", "sha256", "timed")
    with pytest.raises(ValueError, match="do not fit 8-byte keys"):
        idx.drive(wide, np.array([0]), np.zeros(1, np.int32), 1, False)

