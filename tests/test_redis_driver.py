"""Redis in the C measuring loop (native/redis_client.c via ``RedisIndex.drive``): the same
hits (the trace's ground truth) and the same protocol costs as the redis-py path, standalone
and on a Redis Cluster; one round trip per request operation by default; hiredis errors as
Python exceptions; and ``--driver auto`` picking the C loop for Redis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from kvdm.experiments.replay.engine import ReplayConfig, replay, use_c_driver
from kvdm.index import IndexSpec
from kvdm.index.redis_index import RedisIndex
from kvdm.index.redis_server import RedisClusterServers, RedisServer
from kvdm.native import lib
from kvdm.traces.mapping import OP_INSERT, OP_PREFIX, map_trace
from kvdm.traces.registry import FIXTURE, load

FIXTURE_TRACE = str(FIXTURE)
SHARDS = 3
#: what both drivers must agree on, per (bin, op) row
SAME = ("ops", "blocks", "hits", "expected_hits", "hit_mismatch", "rtts_per_op", "commands_per_op", "keys_per_op")
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(SHARDS) as c:
        yield c


def _stream(mapping: str, scheme: str, limit: int = 150) -> Any:
    return map_trace(load(FIXTURE_TRACE, limit=limit), mapping, scheme, "timed")


def _flush(servers: list[RedisServer]) -> None:
    for s in servers:
        c = s.client()
        c.flushall()
        c.close()


def _both(stream: Any, mapping: str, scheme: str, options: dict[str, Any],
          servers: list[RedisServer]) -> dict[str, Any]:
    """The replay's rows through each driver, each on the emptied servers with the same key
    names (in a cluster, the namespace decides which names share a slot, so MGET counts)."""
    out = {}
    ns = f"d{next(_names)}:"
    for driver in ("c", "python"):
        _flush(servers)
        opts = {**options, "namespace": ns}
        cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("redis", 32 if scheme == "sha256" else 8, opts),
                           clients=1, mapping=mapping, key_scheme=scheme, driver=driver)
        out[driver] = replay(cfg, stream, quiet=True).rows.set_index(["bin", "op"])
    return out


def _check_same(out: dict[str, Any]) -> None:
    c, py = out["c"], out["python"]
    assert (c["hit_mismatch"] == 0).all() and (c["hits"] == c["expected_hits"]).all()  # the ground truth
    for col in SAME:
        assert c[col].equals(py[col]), (col, c[col], py[col])


@pytest.mark.parametrize(("mapping", "scheme", "options"), [
    ("paper", "id", {}),
    ("paper", "id", {"range_mode": "mget", "pipeline": 4}),
    ("paper", "sha256", {"pipeline": 1}),
    ("prefix", "u64", {}),
    ("prefix", "u64", {"prefix_mode": "lua", "pipeline": 3}),
    ("prefix", "sha256", {"prefix_mode": "lua"}),
    ("prefix", "sha256", {"pipeline": 2}),
])
def test_c_driver_matches_the_ground_truth_and_redis_py(server, mapping, scheme, options) -> None:
    stream = _stream(mapping, scheme)
    _check_same(_both(stream, mapping, scheme, {"url": server.url, **options}, [server]))


@pytest.mark.parametrize(("mapping", "scheme", "options"), [
    ("paper", "id", {"hash_tags": True, "range_mode": "mget"}),
    ("paper", "sha256", {"pipeline": 4}),
    ("prefix", "u64", {"prefix_mode": "lua", "hash_tags": True}),
    ("prefix", "sha256", {"prefix_mode": "lua"}),
    ("prefix", "sha256", {}),
])
def test_c_driver_matches_on_a_cluster(cluster, mapping, scheme, options) -> None:
    stream = _stream(mapping, scheme, limit=100)
    _check_same(_both(stream, mapping, scheme, {"url": cluster.url, "cluster": SHARDS, **options}, cluster.servers))


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_a_request_op_is_one_round_trip_by_default(server, cluster, where) -> None:
    """--mapping prefix with the defaults: each prefix match and each insert of N blocks is one
    round trip (a pipeline), standalone and on a cluster without hash tags."""
    opts = {"url": server.url} if where == "standalone" else {"url": cluster.url, "cluster": SHARDS}
    servers = [server] if where == "standalone" else cluster.servers
    out = _both(_stream("prefix", "sha256", limit=100), "prefix", "sha256", opts, servers)
    whole = out["c"].xs(-1, level="bin")
    assert whole.loc["prefix_match", "rtts_per_op"] == 1.0
    assert whole.loc["insert", "rtts_per_op"] <= 1.0  # an empty insert sends nothing
    _check_same(out)


def test_cluster_lua_prefix_is_one_round_trip_across_slots(cluster) -> None:
    """Without hash tags every key is its own slot run: the runs' scripts still go out in one
    round trip (written to every shard, then read)."""
    keys = np.arange(1, 41, dtype=np.uint64)
    stream = _CallStream.of(OP_PREFIX, keys)
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, prefix_mode="lua", namespace=f"l{next(_names)}:") as idx:
        idx.put(keys[:25], keys[:25])
        idx.reset_counters()
        _, hits, acc = idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)
        assert hits.tolist() == [25] and acc[0, 0] == 1
        assert idx.prefix_match(keys) == 25 and idx.counters()["rtts"] == 2


class _CallStream:
    """A one-op stream over ``keys`` (what ``Index.drive`` takes)."""

    @staticmethod
    def of(kind: int, keys: np.ndarray) -> Any:
        from kvdm.experiments.bench.calls import CallStream as Calls

        bounds = np.zeros(1, np.uint64)
        return Calls(np.array([kind], np.uint8), np.array([0, keys.size], np.int64), keys,
                     np.arange(keys.size, dtype=np.int64), bounds, bounds)


def test_auto_picks_the_c_loop_for_redis_and_python_keeps_redis_py(server) -> None:
    with RedisIndex(8, url=server.url) as idx:
        for driver, c in (("auto", True), ("c", True), ("python", False)):
            cfg = ReplayConfig(trace=FIXTURE_TRACE, index=IndexSpec("redis", 8), driver=driver)
            assert use_c_driver(cfg, idx) is c


def test_counters_fold_into_the_index_counters(server) -> None:
    keys = np.arange(1, 11, dtype=np.uint64)
    with RedisIndex(8, url=server.url, namespace=f"f{next(_names)}:") as idx:
        idx.reset_counters()
        _, hits, acc = idx.drive(_CallStream.of(OP_INSERT, keys), np.array([0]), np.zeros(1, np.int32), 1)
        assert hits.tolist() == [-1]
        c = idx.counters()
        assert (c["rtts"], c["commands"], c["keys"]) == (1, 11, 10)  # 10 SETs and a ZADD in one pipeline
        assert acc[0, :3].tolist() == [1, 11, 10] and idx.counter_names()[:3] == ("rtts", "commands", "keys")
        assert idx.get(keys)[1].all()  # the C client's writes are redis-py's to read


def test_keyslot_matches_redis_py() -> None:
    from redis.crc import key_slot

    rng = np.random.default_rng(5)
    names = [rng.bytes(int(n)) for n in rng.integers(0, 60, 300)]
    names += [b"{" + b"ab" * 3 + b"}x" + n for n in names[:50]] + [b"{}" + n for n in names[:20]] + [b"a{b}c", b"{"]
    for n in names:
        assert lib.kvdm_redis_keyslot(n, len(n)) == key_slot(n), n


# ---- errors: never a crash, always an exception that says what happened -------------------------

def test_a_refused_connection_is_a_clear_error() -> None:
    s = RedisServer().start()
    idx = RedisIndex(8, url=s.url)
    s.stop()
    try:
        with pytest.raises(ConnectionError, match=f"cannot connect to Redis at 127.0.0.1:{s.port}"):
            idx.drive(_CallStream.of(OP_PREFIX, np.arange(1, 5, dtype=np.uint64)), np.array([0]),
                      np.zeros(1, np.int32), 1)
    finally:
        idx.close()


def test_a_server_gone_mid_run_is_a_connection_error_and_the_client_reconnects() -> None:
    keys = np.arange(1, 9, dtype=np.uint64)
    stream = _CallStream.of(OP_PREFIX, keys)
    s = RedisServer().start()
    port = s.port
    idx = RedisIndex(8, url=s.url)
    try:
        idx.put(keys, keys)
        assert idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)[1].tolist() == [8]
        s.stop()
        with pytest.raises(redis.ConnectionError, match=f"redis at 127.0.0.1:{port}") as err:
            idx.drive(stream, np.array([0, 0]), np.zeros(2, np.int32), 1)
        assert "after 0 of 2 ops" in str(err.value)
        with pytest.raises(redis.ConnectionError, match="cannot connect"):  # the next call tries again
            idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)
        s2 = RedisServer(port=port).start()  # a server is back on the port: the client reconnects
        try:
            assert idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)[1].tolist() == [0]
        finally:
            s2.stop()
    finally:
        idx.close()


def test_an_error_reply_is_a_response_error_and_the_stream_stays_in_step(server) -> None:
    ns = f"e{next(_names)}:"
    keys = np.arange(1, 6, dtype=np.uint64)
    with RedisIndex(8, url=server.url, namespace=ns) as idx:
        idx.put(keys, keys)
        c = server.client()
        c.delete(ns.encode() + (3).to_bytes(8, "big"))
        c.lpush(ns.encode() + (3).to_bytes(8, "big"), b"x")  # a list where a value should be: WRONGTYPE
        c.set(ns.encode() + (4).to_bytes(8, "big"), b"short")
        c.close()
        stream = _CallStream.of(0, keys)  # a get of the 5 keys
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)
        c = server.client()
        c.delete(ns.encode() + (3).to_bytes(8, "big"))
        c.close()
        with pytest.raises(redis.ResponseError, match="not 8 bytes long"):
            idx.drive(stream, np.array([0]), np.zeros(1, np.int32), 1)
        prefix = _CallStream.of(OP_PREFIX, keys[:2])
        assert idx.drive(prefix, np.array([0]), np.zeros(1, np.int32), 1)[1].tolist() == [2]  # still in step


def test_a_flushed_script_is_loaded_again(server) -> None:
    keys = np.arange(1, 6, dtype=np.uint64)
    with RedisIndex(8, url=server.url, prefix_mode="lua", namespace=f"s{next(_names)}:") as idx:
        idx.put(keys[:3], keys[:3])
        c = server.client()
        c.script_flush()
        c.close()
        assert idx.drive(_CallStream.of(OP_PREFIX, keys), np.array([0]), np.zeros(1, np.int32), 1)[1].tolist() == [3]


def test_c_driver_follows_a_moved_slot(cluster) -> None:
    from test_redis_cluster import _move_slot, empty_slot_key

    with RedisIndex(8, url=cluster.url, cluster=SHARDS, namespace=f"m{next(_names)}:") as idx:
        k, slot, owner, name = empty_slot_key(idx, cluster)
        idx._c_client()  # the C client takes the slot map now, before the slot moves
        _move_slot(cluster, slot, (owner + 1) % SHARDS)
        try:
            keys = np.array([k, k + 5000, k + 6000], dtype=np.uint64)
            idx.drive(_CallStream.of(OP_INSERT, keys), np.array([0]), np.zeros(1, np.int32), 1)
            _, hits, acc = idx.drive(_CallStream.of(0, keys), np.array([0]), np.zeros(1, np.int32), 1)
            assert hits.tolist() == [3]
            holder = cluster.servers[(owner + 1) % SHARDS].client()
            assert holder.get(name) == (0).to_bytes(8, "big")  # SET followed MOVED to the new shard
            holder.close()
            assert idx.delete(keys).all()  # an emptied slot can move back
        finally:
            _move_slot(cluster, slot, owner)
