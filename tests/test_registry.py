"""The backend registry: what each backend needs, asked instead of lists of names, and a
third-party index installed through the kvdm.indexes entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kvdm.index as kindex
from kvdm.traces.registry import FIXTURE


def test_entries_say_what_a_backend_needs() -> None:
    assert kindex.backends(remote_memory=True) == ["chime", "race", "sherman"]
    assert kindex.backends(remote_memory=True, ordered=True) == ["chime", "sherman"]
    assert kindex.backends(per_client=True) == ["dict"]
    assert kindex.backend("redis").session_manager() is not None and kindex.backend("chime").session is None
    assert kindex.remote_memory("race") and not kindex.remote_memory("redis") and not kindex.remote_memory("nosuch")
    with pytest.raises(ValueError, match="unknown index 'nosuch'; valid: chime, dict, race, redis, sherman"):
        kindex.backend("nosuch")


def test_register_in_process() -> None:
    from kvdm.index.dict_index import open_dict

    kindex.register("mydict", open_dict, per_client=True, ordered=False)
    try:
        assert "mydict" in kindex.available() and not kindex.backend("mydict").ordered
        idx = kindex.open("mydict", key_bytes=8)
        idx.put([5], [7])
        assert idx.get([5])[1].all()
    finally:
        kindex._registry.pop("mydict")


TOY = '''
"""A toy third-party index: a sorted list kept in each client process."""
import bisect
import numpy as np
from kvdm.index import Backend
from kvdm.index.api import Index, as_keys, as_values


class Toy(Index):
    name = "toy"

    def __init__(self, key_bytes):
        super().__init__(key_bytes)
        self.keys, self.vals = [], []

    def get(self, keys):
        ks = as_keys(keys, self.key_bytes).tolist()
        vals, found = np.zeros(len(ks), np.uint64), np.zeros(len(ks), bool)
        for i, k in enumerate(ks):
            j = bisect.bisect_left(self.keys, k)
            if j < len(self.keys) and self.keys[j] == k:
                vals[i], found[i] = self.vals[j], True
        return vals, found

    def put(self, keys, values):
        ks = as_keys(keys, self.key_bytes).tolist()
        for k, v in zip(ks, as_values(values, len(ks)).tolist()):
            j = bisect.bisect_left(self.keys, k)
            if j < len(self.keys) and self.keys[j] == k:
                self.vals[j] = v
            else:
                self.keys.insert(j, k)
                self.vals.insert(j, v)

    def delete(self, keys):
        raise NotImplementedError


def open_toy(transport, key_bytes, **options):
    return Toy(key_bytes)


BACKEND = Backend("toy", open_toy, per_client=True, ordered=False, description="a toy")
'''


def test_a_toy_index_from_an_entry_point_replays(tmp_path: Path) -> None:
    (tmp_path / "kvdm_toy").mkdir()
    (tmp_path / "kvdm_toy" / "__init__.py").write_text(textwrap.dedent(TOY))
    dist = tmp_path / "kvdm_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvdm-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kvdm.indexes]\ntoy = kvdm_toy:BACKEND\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "kvdm.experiments", "replay", "--index", "toy", "--trace", str(FIXTURE),
                          "--key-scheme", "u64", "--clients", "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "keeps no key order, so it replays with the prefix mapping" in run.stdout  # the entry's ordered=False
    hits = next(line for line in run.stdout.splitlines() if line.startswith("block hits"))
    assert "; 0 ops differ)" in hits and not hits.startswith("block hits 0 ")
    listed = subprocess.run([sys.executable, "-c", "import kvdm.index; print(kvdm.index.available())"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "'toy'" in listed.stdout
