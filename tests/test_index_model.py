"""Model-based tests of the native indexes against a Python dict (hypothesis state machines).

Two clients with their own transport contexts and node caches share one index, so one
client's splits make the other's cache stale (cache invalidation; for race: the cached
directory). Range rules run only for ordered backends. Small caches and many
keys per step force leaf, internal and root splits within a few steps.
"""

from __future__ import annotations

import bisect

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from index_helpers import NATIVE_BACKENDS, ORDERED_BACKENDS, key_of, make_keys, open_client

import kvdm.index as kindex
from kvdm.transport import TransportConfig, connect

DOMAIN = 6000  # key integers 1..DOMAIN: overlaps make updates and deletes hit


def machine(name: str, key_bytes: int, fabric) -> type[RuleBasedStateMachine]:
    class IndexModel(RuleBasedStateMachine):
        @initialize(cache_mb=st.sampled_from([0.0, 0.01, 4.0]), window=st.sampled_from([1, 8]))
        def setup(self, cache_mb: float, window: int) -> None:
            self.node = fabric.start_node(32 << 20)
            self.clients = [open_client(self.node.uri, name, key_bytes, cache_mb=cache_mb, window=window),
                            open_client(self.node.uri, name, key_bytes, cache_mb=cache_mb)]
            self.model: dict = {}

        def teardown(self) -> None:
            for c in getattr(self, "clients", []):
                c.close()
            if hasattr(self, "node"):
                self.node.destroy()

        def _sorted(self) -> list:
            return sorted(self.model)

        @rule(client=st.integers(0, 1), start=st.integers(1, DOMAIN), n=st.integers(1, 400),
              step=st.integers(1, 7), val=st.integers(0, 2**64 - 1))
        def put(self, client: int, start: int, n: int, step: int, val: int) -> None:
            ints = np.arange(start, start + n * step, step, dtype=np.uint64) % DOMAIN + 1
            keys = make_keys(ints, key_bytes)
            vals = (np.arange(n, dtype=np.uint64) + np.uint64(val)) & np.uint64(2**64 - 1)
            self.clients[client].put(keys, vals)
            for k, v in zip(keys, vals, strict=True):
                self.model[key_of(k, key_bytes)] = int(v)

        @rule(client=st.integers(0, 1), ints=st.lists(st.integers(1, DOMAIN), min_size=1, max_size=60))
        def delete(self, client: int, ints: list[int]) -> None:
            keys = make_keys(ints, key_bytes)
            found = self.clients[client].delete(keys)
            for k, f in zip(keys, found, strict=True):
                kk = key_of(k, key_bytes)
                assert bool(f) == (kk in self.model)
                self.model.pop(kk, None)

        @rule(client=st.integers(0, 1), ints=st.lists(st.integers(1, DOMAIN), min_size=1, max_size=100))
        def get(self, client: int, ints: list[int]) -> None:
            keys = make_keys(ints, key_bytes)
            vals, found = self.clients[client].get(keys)
            for k, v, f in zip(keys, vals, found, strict=True):
                kk = key_of(k, key_bytes)
                assert bool(f) == (kk in self.model), kk
                if f:
                    assert int(v) == self.model[kk]

        @precondition(lambda self: len(self.model) > 0 and name in ORDERED_BACKENDS)
        @rule(client=st.integers(0, 1), a=st.integers(0, 10**9), b=st.integers(0, 10**9),
              limit=st.sampled_from([0, 0, 1, 7]))
        def range(self, client: int, a: int, b: int, limit: int) -> None:
            ks = self._sorted()
            i, j = sorted((a % len(ks), b % len(ks)))
            lo, hi = ks[i], ks[j]
            enc = (lambda k: np.uint64(k)) if key_bytes == 8 else (lambda k: np.frombuffer(k, np.uint8))
            got_k, got_v = self.clients[client].range(enc(lo), enc(hi), limit)
            want = ks[bisect.bisect_left(ks, lo):bisect.bisect_right(ks, hi)]
            if limit:
                want = want[:limit]
            assert [key_of(k, key_bytes) for k in got_k] == want
            assert [int(v) for v in got_v] == [self.model[k] for k in want]
            los, his = np.stack([enc(lo), enc(hi)]), np.stack([enc(hi), enc(hi)])
            counts = self.clients[client].range_count(los, his)
            assert counts.tolist() == [j - i + 1, 1]

        @rule(client=st.integers(0, 1), ints=st.lists(st.integers(1, DOMAIN), min_size=1, max_size=30))
        def prefix_match(self, client: int, ints: list[int]) -> None:
            keys = make_keys(ints, key_bytes)
            want = 0
            for k in keys:
                if key_of(k, key_bytes) not in self.model:
                    break
                want += 1
            assert self.clients[client].prefix_match(keys) == want

        @invariant()
        def counters_sane(self) -> None:
            if hasattr(self, "clients"):
                c = self.clients[0].counters()
                assert c["lease_lost"] == 0

    IndexModel.__name__ = f"{name.capitalize()}K{key_bytes}Model"
    return IndexModel


SETTINGS = settings(max_examples=40, stateful_step_count=40, deadline=None,
                    suppress_health_check=list(HealthCheck))
VERBS_SETTINGS = settings(SETTINGS, max_examples=3, stateful_step_count=12)  # under TCG emulation


@pytest.mark.timeout(240)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_model(name: str, key_bytes: int, fabric) -> None:
    m = machine(name, key_bytes, fabric)
    m.TestCase.settings = fabric.pick(SETTINGS, VERBS_SETTINGS)
    m.TestCase().runTest()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", NATIVE_BACKENDS)
def test_stale_cache_after_other_client_splits(name: str, key_bytes: int, shm_node) -> None:
    """Client B caches the tree, client A splits it many times; B still answers right and
    notices (version mismatch / go-right) instead of trusting its stale cache."""
    a = open_client(shm_node.uri, name, key_bytes)
    b = open_client(shm_node.uri, name, key_bytes)
    first = make_keys(np.arange(1, 3001), key_bytes)
    a.put(first, np.arange(3000, dtype=np.uint64))
    assert b.get(first)[1].all()  # warms B's cache
    b.reset_counters()
    more = make_keys(np.arange(3001, 20001), key_bytes)
    a.put(more, np.arange(3000, 20000, dtype=np.uint64))
    vals, found = b.get(np.concatenate([first, more]))
    assert found.all() and (vals == np.arange(20000, dtype=np.uint64)).all()
    c = b.counters()
    noticed = c["stale_directory"] if name == "race" else c["version_mismatch"] + c["go_right"]
    assert noticed > 0
    absent = make_keys(np.arange(30001, 30501), key_bytes)
    assert not b.get(absent)[1].any()
    a.close()
    b.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_bytes", [8, 32])
@pytest.mark.parametrize("name", ORDERED_BACKENDS)
def test_btree_batches_are_charged_answer_by_answer(name: str, key_bytes: int, shm_node) -> None:
    """Under `virtual`, a B+tree's batched get, put and prefix match read their doorbells'
    answers as they arrive (streamed doorbells): the modelled time they add is below what the
    same doorbells cost charged whole (each doorbell's RTT plus its verbs at nic_mops, the NIC
    slower here than the client's work on an answer), yet each op's latency still covers every
    round trip it rang."""
    rtt_ns, mops = 2000, 1.0  # 1 us a verb
    ctx = connect(TransportConfig(latency_model="virtual", rtt_us=rtt_ns / 1000, gbps=0, nic_mops=mops),
                  [shm_node.uri])
    idx = kindex.open(name, ctx, key_bytes)
    try:
        ints = np.unique(np.random.default_rng(7).integers(1, 1 << 40, 4000, dtype=np.uint64))[:3400]
        np.random.default_rng(8).shuffle(ints)
        keys = make_keys(ints, key_bytes)
        idx.put(keys[:3000], np.arange(3000, dtype=np.uint64))  # several leaves under a cached root
        fresh, old = keys[3000:], keys[:400]
        lat = np.zeros(400, np.uint64)
        ops = {"put": lambda: idx.put(fresh, np.arange(400, dtype=np.uint64), lat_ns=lat),
               "get": lambda: idx.get(old, lat_ns=lat),
               "prefix_match": lambda: idx.prefix_match(old)}
        for op, call in ops.items():
            idx.reset_counters()
            lat[:] = 0
            got = call()
            c = idx.counters()
            if op == "get":
                assert got[1].all()
            if op == "prefix_match":
                assert got == 400
            verbs = c["reads"] + c["writes"] + c["cas"] + c["faa"]
            whole = c["rtts"] * rtt_ns + verbs * 1000 / mops  # every doorbell charged at once
            assert c["rtts"] >= 1 and verbs >= 300, (op, c)
            assert c["virtual_ns"] < whole, (op, c["virtual_ns"], whole)
            if op != "prefix_match":  # (no per-key latencies)
                assert int(lat.min()) >= c["rtts"] * rtt_ns, (op, int(lat.min()), c["rtts"])
    finally:
        idx.close()
        ctx.close()
