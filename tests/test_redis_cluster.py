"""The redis backend against a real 3-shard Redis Cluster started by kvdm: the conformance
suite through redis-py's cluster client, keys spread over the shards, hash tags."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from index_conformance import IndexConformance, check_prefix_match_edges

from kvdm.index.redis_index import MGET_RANGE_MAX, RedisIndex
from kvdm.index.redis_server import RedisClusterServers, pid_running, started_pids

SHARDS = 3
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(SHARDS) as c:
        yield c
    assert not any(pid_running(p) for p in started_pids()), "a redis-server was left behind"


def opener(cluster: RedisClusterServers, **options: object):
    def open_fresh(key_bytes: int) -> RedisIndex:
        ns = f"c{next(_names)}:"
        return RedisIndex(key_bytes, url=cluster.url, cluster=SHARDS, namespace=ns, **options)

    return open_fresh


class TestClusterPipelined(IndexConformance):
    """Cluster client, pipeline 4 (a round trip fans out to the shards), zset ranges."""

    max_examples = 10

    @pytest.fixture
    def index_factory(self, cluster):
        return opener(cluster, pipeline=4)


class TestClusterHashTagsLua(IndexConformance):
    """Hash tags, zset ranges, Lua prefix match cut into same-slot runs."""

    max_examples = 8

    @pytest.fixture
    def index_factory(self, cluster):
        return opener(cluster, pipeline=2, hash_tags=True, prefix_mode="lua")


class TestClusterMgetRange(IndexConformance):
    """Hash tags, MGET ranges split by slot (8-byte keys only), unpipelined."""

    key_widths = (8,)
    max_range_span = MGET_RANGE_MAX
    max_examples = 8

    @pytest.fixture
    def index_factory(self, cluster):
        return opener(cluster, hash_tags=True, range_mode="mget")


def _keys_per_shard(cluster: RedisClusterServers) -> list[int]:
    out = []
    for s in cluster.servers:
        c = s.client()
        out.append(int(c.dbsize()))
        c.close()
    return out


def test_cluster_has_three_primaries_with_all_slots(cluster):
    with RedisIndex(8, url=cluster.url, cluster=SHARDS) as idx:
        assert idx.shards == SHARDS and idx.describe()["cluster"]
        slots = idx._client.cluster_slots()
        covered = sum(int(hi) - int(lo) + 1 for lo, hi in slots)
        assert covered == 16384


def test_keys_spread_across_shards_and_batches_stay_correct():
    """On a fresh cluster: 3,000 keys land on every shard, and batched get/delete over all of
    them (each pipeline touching several shards) return the right answer for every key."""
    with RedisClusterServers(SHARDS) as fresh, \
            RedisIndex(8, url=fresh.url, cluster=SHARDS, pipeline=64, range_mode="mget") as idx:
        keys = np.arange(1, 3001, dtype=np.uint64)
        idx.put(keys, keys * 3)
        per_shard = _keys_per_shard(fresh)
        assert sum(per_shard) == 3000 and min(per_shard) > 500, per_shard
        probe = np.concatenate([keys[::7], np.arange(5000, 5100, dtype=np.uint64)])
        values, found = idx.get(probe)
        assert found.tolist() == [int(k) <= 3000 for k in probe]
        assert (values[found] == probe[found] * 3).all()
        gone = idx.delete(keys[::2])
        assert gone.all() and not idx.delete(keys[::2]).any()
        assert idx.range_count(np.array([1]), np.array([3000]))[0] == 1500
        assert sum(_keys_per_shard(fresh)) == 1500


def test_hash_tags_put_a_run_of_ids_in_one_slot(cluster):
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, hash_tags=True, namespace="ht:") as idx:
        names = idx._names(idx._raw(np.arange(256, 512, dtype=np.uint64)))
        assert len({idx._client.keyslot(n) for n in names}) == 1  # ids 256..511: one tag
        other = idx._names(idx._raw(np.array([512], dtype=np.uint64)))
        assert names[0].startswith(b"{") and other[0] != names[0]


def test_lua_prefix_match_without_hash_tags_crosses_slots(cluster):
    """Without hash tags each key is its own slot run; the answer is still the prefix."""
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, prefix_mode="lua", namespace="luax:") as idx:
        check_prefix_match_edges(idx)


def test_lua_prefix_match_with_hash_tags_is_one_round_trip(cluster):
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, prefix_mode="lua", hash_tags=True,
                    namespace="lua1:") as idx:
        keys = np.arange(1, 101, dtype=np.uint64)  # one tag group: ids 0..255
        idx.put(keys[:60], keys[:60])
        idx.reset_counters()
        assert idx.prefix_match(keys) == 60
        assert idx.counters()["rtts"] == 1


def test_a_standalone_url_with_cluster_option_is_a_clear_error():
    from kvdm.index.redis_server import RedisServer

    with RedisServer() as plain, pytest.raises(ValueError, match=plain.url):
        RedisIndex(8, url=plain.url, cluster=SHARDS)


def test_a_cluster_url_without_cluster_option_is_a_clear_error(cluster):
    with pytest.raises(ValueError, match=f"{cluster.url} is a cluster node.*--redis-cluster"):
        RedisIndex(8, url=cluster.url)


def test_server_cpu_sums_the_shards(cluster):
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, pipeline=1, namespace="cpu:") as idx:
        keys = np.arange(1, 2001, dtype=np.uint64)
        idx.reset_counters()
        idx.put(keys, keys)
        assert idx.counters()["server_cpu_us"] > 0


def test_cluster_client_reaches_every_shard(cluster):
    rc = redis.RedisCluster.from_url(cluster.url)
    try:
        assert len(rc.get_primaries()) == SHARDS
    finally:
        rc.close()


def _move_slot(cluster: RedisClusterServers, slot: int, to: int) -> None:
    """Give ``slot`` (empty) to shard ``to`` on every node, as a resharding would."""
    clients = [s.client() for s in cluster.servers]
    try:
        target = clients[to].execute_command("CLUSTER", "MYID")
        for c in [clients[to]] + clients[:to] + clients[to + 1:]:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)
    finally:
        for c in clients:
            c.close()


def empty_slot_key(idx, cluster) -> tuple[int, int, int, bytes]:
    """A key whose slot holds nothing yet (so it can move), its slot, the shard owning it and
    the key's Redis name."""
    ports = [s.port for s in cluster.servers]
    for k in range(1, 1000):
        name = idx._names(idx._raw(np.array([k], dtype=np.uint64)))[0]
        slot = idx._client.keyslot(name)
        owner = ports.index(idx._client.nodes_manager.get_node_from_slot(slot).port)
        probe = cluster.servers[owner].client()
        empty = probe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        probe.close()
        if empty:
            return k, slot, owner, name
    raise AssertionError("no empty slot among the first 999 keys")


def test_a_moved_slot_is_followed(cluster):
    """The index's slot map goes stale (the slot moves to another shard after it connected):
    MOVED replies are followed and every batched op still gives the right answer."""
    with RedisIndex(8, url=cluster.url, cluster=SHARDS, pipeline=4, namespace="mv:") as idx:
        k, slot, owner, name = empty_slot_key(idx, cluster)
        ports = [s.port for s in cluster.servers]
        to = (owner + 1) % SHARDS
        _move_slot(cluster, slot, to)
        try:
            keys = np.array([k, k + 5000, k + 6000], dtype=np.uint64)
            idx.put(keys, keys + 1)
            values, found = idx.get(keys)
            assert found.all() and values.tolist() == (keys + 1).tolist()
            assert idx._client.nodes_manager.get_node_from_slot(slot).port == ports[to]  # map reloaded
            holder = cluster.servers[to].client()
            assert holder.get(name) == int(k + 1).to_bytes(8, "big")  # it really lives on the new shard
            holder.close()
            assert idx.delete(keys).all()
        finally:
            _move_slot(cluster, slot, owner)
