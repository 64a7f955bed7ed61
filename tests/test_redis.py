"""The redis backend against a real standalone redis-server: the shared conformance suite in
several configurations, the stored layout, the range variants and the counters."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from index_conformance import IndexConformance

import kvdm.index
from kvdm.index.redis_index import MGET_RANGE_MAX, RedisIndex
from kvdm.index.redis_server import RedisServer, pid_running, started_pids

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One local server for the module; every index gets its own namespace on it."""
    with RedisServer() as s:
        yield s
    assert not any(pid_running(p) for p in started_pids()), "a redis-server was left behind"


def opener(server: RedisServer, **options: object):
    def open_fresh(key_bytes: int) -> RedisIndex:
        return RedisIndex(key_bytes, url=server.url, namespace=f"t{next(_names)}:", **options)

    return open_fresh


class TestRedisDefaults(IndexConformance):
    """The defaults: every call's commands in one round trip, zset ranges, pipelined-EXISTS
    prefix match."""

    @pytest.fixture
    def index_factory(self, server):
        return opener(server)


class TestRedisUnpipelined(IndexConformance):
    """pipeline 1 (one round trip per command, the paper's client), zset ranges."""

    @pytest.fixture
    def index_factory(self, server):
        return opener(server, pipeline=1)


class TestRedisPipelinedLua(IndexConformance):
    """pipeline 8, zset ranges, Lua prefix match."""

    @pytest.fixture
    def index_factory(self, server):
        return opener(server, pipeline=8, prefix_mode="lua")


class TestRedisMgetRange(IndexConformance):
    """pipeline 3, ranges as MGET of every id in [lo, hi] (8-byte keys only)."""

    key_widths = (8,)
    max_range_span = MGET_RANGE_MAX

    @pytest.fixture
    def index_factory(self, server):
        return opener(server, pipeline=3, range_mode="mget")


def test_stored_layout_is_raw_big_endian(server):
    """8-byte keys are stored as 8 big-endian bytes (byte order == numeric order), values as
    8 big-endian bytes; the sorted set holds the raw keys."""
    with RedisIndex(8, url=server.url, namespace="layout8:") as idx:
        idx.put(np.array([256, 1], dtype=np.uint64), np.array([7, 2**64 - 1], dtype=np.uint64))
        c = server.client()
        assert c.get(b"layout8:" + (256).to_bytes(8, "big")) == (7).to_bytes(8, "big")
        assert c.get(b"layout8:" + (1).to_bytes(8, "big")) == b"\xff" * 8
        assert c.zrange(b"layout8:kvdm:zset", 0, -1) == [(1).to_bytes(8, "big"), (256).to_bytes(8, "big")]
        c.close()
    key = bytes(range(1, 33))
    with RedisIndex(32, url=server.url, namespace="layout32:") as idx:
        idx.put(np.frombuffer(key, np.uint8).reshape(1, 32), np.array([5], dtype=np.uint64))
        c = server.client()
        assert c.get(b"layout32:" + key) == (5).to_bytes(8, "big")
        c.close()


def test_mget_range_mode_needs_8_byte_keys(server):
    with pytest.raises(ValueError, match="8-byte id keys.*range mode 'zset'"):
        RedisIndex(32, url=server.url, range_mode="mget")


def test_mget_range_refuses_a_huge_span(server):
    with RedisIndex(8, url=server.url, range_mode="mget", namespace="span:") as idx:
        with pytest.raises(ValueError, match=f"at most {MGET_RANGE_MAX}"):
            idx.range(1, 1 + MGET_RANGE_MAX)
        assert len(idx.range(1, MGET_RANGE_MAX)[0]) == 0  # the largest allowed span works


def test_mget_mode_keeps_no_sorted_set(server):
    with RedisIndex(8, url=server.url, range_mode="mget", namespace="nozset:") as idx:
        idx.put(np.arange(1, 5, dtype=np.uint64), np.arange(4, dtype=np.uint64))
        c = server.client()
        assert not c.exists(b"nozset:kvdm:zset")
        c.close()
        assert idx.range(2, 3)[0].tolist() == [2, 3]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("pipeline", -1, "pipeline depth"),
    ("reply_timeout", 0, "timeouts must be > 0"),
    ("range_mode", "btree", "valid: zset, mget"),
    ("prefix_mode", "magic", "valid: pipeline, lua"),
    ("namespace", "{x}", "hash tags"),
    ("pipelin", 4, "unknown option.*pipelin"),
])
def test_bad_options_are_clear_errors(server, option, value, message):
    with pytest.raises(ValueError, match=message):
        kvdm.index.open("redis", key_bytes=8, url=server.url, **{option: value})


def test_counters_round_trips_follow_the_pipeline_depth(server):
    keys = np.arange(1, 41, dtype=np.uint64)
    for depth, rtts in ((1, 40), (16, 3), (64, 1), (0, 1)):
        with RedisIndex(8, url=server.url, pipeline=depth, namespace=f"rt{depth}:") as idx:
            idx.put(keys, keys)
            idx.reset_counters()
            values, found = idx.get(keys)
            c = idx.counters()
            assert found.all() and values.tolist() == keys.tolist()
            assert (c["rtts"], c["commands"], c["keys"]) == (rtts, 40, 40)
            assert idx.pipeline == depth and idx.describe()["pipeline"] == depth


def test_prefix_match_round_trips(server):
    keys = np.arange(1, 33, dtype=np.uint64)
    with RedisIndex(8, url=server.url, pipeline=4, namespace="pm:") as pipe, \
            RedisIndex(8, url=server.url, prefix_mode="lua", namespace="pm:") as lua:
        pipe.put(keys[:10], keys[:10])
        pipe.reset_counters()
        assert pipe.prefix_match(keys) == 10
        assert pipe.counters()["rtts"] == 3  # stops after the round trip holding the miss
        lua.reset_counters()
        assert lua.prefix_match(keys) == 10
        assert lua.counters()["rtts"] == 1


@pytest.mark.parametrize("key_bytes", [8, 32])
def test_a_zset_range_is_one_round_trip(server, key_bytes):
    """Standalone: the script's range (ZRANGE BYLEX, then MGET of the members, server side) in
    one EVALSHA, through redis-py and through the C client alike, limit included; a server that
    lost the script gets it again."""
    from kvdm.experiments.bench.calls import CallStream as Calls  # an op stream the C loop takes
    from kvdm.traces import OP_RANGE

    ints = np.arange(1, 3001, dtype=np.uint64)
    keys = ints if key_bytes == 8 else np.stack([np.frombuffer(int(i).to_bytes(32, "big"), np.uint8) for i in ints])
    with RedisIndex(key_bytes, url=server.url, namespace=f"zr{key_bytes}:") as idx:
        idx.put(keys, ints)
        idx.delete(keys[10:20])  # members whose keys are gone are not returned
        for limit, want in ((0, 2990), (100, 100)):
            idx.reset_counters()
            got, vals = idx.range(keys[0], keys[-1], limit)
            assert len(got) == want and (vals == np.concatenate([ints[:10], ints[20:]])[:want]).all()
            assert idx.counters()["rtts"] == 1
        idx._client.script_flush()
        assert len(idx.range(keys[0], keys[99])[0]) == 90
        # the C loop: one range op over [keys[0], keys[99]] (the op lists its own keys: the hits)
        stream = Calls(np.array([OP_RANGE], np.uint8), np.array([0, 100], np.int64), keys[:100],
                       np.arange(100, dtype=np.int64), keys[:1].copy(), keys[99:100].copy())
        _, hits, acc = idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)
        assert hits.tolist() == [90] and acc[0][idx.counter_names().index("rtts")] == 1


def test_server_cpu_is_measured(server):
    with RedisIndex(8, url=server.url, pipeline=1, namespace="cpu:") as idx:
        keys = np.arange(1, 3001, dtype=np.uint64)
        idx.put(keys, keys)
        idx.reset_counters()
        assert idx.counters()["server_cpu_us"] == 0
        idx.get(keys)
        assert idx.counters()["server_cpu_us"] > 0


def test_zset_range_skips_members_whose_value_vanished(server):
    """A member left in the sorted set without its value (a racing delete) is not returned."""
    with RedisIndex(8, url=server.url, namespace="race:") as idx:
        idx.put(np.array([1, 2, 3], dtype=np.uint64), np.array([10, 20, 30], dtype=np.uint64))
        c = server.client()
        c.delete(b"race:" + (2).to_bytes(8, "big"))
        c.close()
        keys, values = idx.range(1, 3)
        assert keys.tolist() == [1, 3] and values.tolist() == [10, 30]


def test_namespaces_are_isolated(server):
    with RedisIndex(8, url=server.url, namespace="a:") as a, \
            RedisIndex(8, url=server.url, namespace="b:") as b:
        a.put(np.array([5], dtype=np.uint64), np.array([1], dtype=np.uint64))
        assert b.get_one(5) is None and a.get_one(5) == 1
        assert len(b.range(1, 10)[0]) == 0


def test_an_index_without_url_owns_its_server():
    with kvdm.index.open("redis", key_bytes=8) as idx:
        pid = idx._servers.pid
        assert pid_running(pid)
        idx.put_one(3, 4)
        assert idx.get_one(3) == 4
    assert not pid_running(pid)
