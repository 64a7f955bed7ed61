"""``redis``: the paper's baseline, a real redis-server (standalone or cluster) behind the index API.

    idx = kvdm.index.open("redis", key_bytes=8, pipeline=16)             # starts its own server
    idx = kvdm.index.open("redis", url="redis://10.0.0.5:6379", pipeline=1)
    idx = kvdm.index.open("redis", cluster=3, hash_tags=True)             # starts a 3-shard cluster

Data layout
-----------
* A key is stored as a Redis string whose name is the raw key: 8-byte keys big-endian (so byte
  order is numeric order), 32-byte keys as their 32 bytes, after an optional ``namespace``
  prefix. The value is the 8-byte big-endian value.
* ``hash_tags=True`` (cluster) prefixes each name with ``{G}``, G the hex of the key without
  its last byte: keys that differ only in the last byte share a slot. With 8-byte id keys
  that is every aligned block of 256 consecutive ids, so a request's run of consecutive ids
  usually lives on one shard and its MGET / Lua prefix match is one request to one node.
  32-byte hash keys have no such locality: hash tags then only lengthen the names.
* ``range_mode="zset"`` also keeps every key in one sorted set (all scores 0, member = raw
  key) named ``<namespace>kvdm:zset``; in a cluster it lives on one shard.

Operations (``pipeline = d``: commands go out in pipelines of d, each one round trip;
``d = 0``, the default, sends all of an operation's commands in one round trip; ``d = 1`` is one
round trip per command, the paper's unoptimised client)
-----------------------------------------------------------------------------------------
* get: one GET per key. put: one SET per key, plus (zset mode) one ZADD per 1,024 keys.
  delete: (zset mode) one ZREM per 1,024 keys, then one DEL per key (its reply says whether
  the key was present).
* range(lo, hi), two variants:
  - ``zset``: ZRANGE z [lo [hi BYLEX (LIMIT 0 limit), then MGET of the members' values, in
    one EVALSHA of kvdm's script on a standalone server (1 round trip); on a cluster, whose
    keys live on any shard, the two commands (2 round trips). Any key width. range_count is one
    ZLEXCOUNT per range.
  - ``mget``: MGET of every key lo, lo+1, ..., hi (at most 65,536 of them), returning those
    present: 1 round trip, no sorted set to maintain. Only meaningful when keys are ids
    (kvdm's ``id`` key scheme, where a request's run of blocks is a run of consecutive
    integers), hence 8-byte keys only. range_count is one multi-key EXISTS per range.
  The zset and the value keys are written in one pipeline but not atomically: a range that
  races with a put/delete of the same key sees it or not, and skips a member whose value is
  already gone (range_count may still count it).
* prefix_match, two variants:
  - ``pipeline`` (default): EXISTS per key, d per round trip, stopping after the first round
    trip that finds a miss (d = 0: one round trip);
  - ``lua``: one EVALSHA of a script that checks the keys in order and stops at the first
    miss. In a cluster a script may only touch one slot, so the keys are cut into maximal
    runs sharing a slot, one EVALSHA each, d per round trip, stopping after the round trip
    holding the first run that came up short (d = 0: one round trip; with ``hash_tags`` a
    request's run of ids is usually one slot, so one script call).
* In a cluster, redis-py's ``RedisCluster`` keeps the slot map; a pipeline's commands go to
  their shards (written to every shard concerned, then read: about one round trip), multi-key
  commands are split by slot, and commands that meet a moved slot are re-run through the
  cluster client.

Counters: ``rtts`` (round trips: client waits, as the native indexes count them; in a cluster
one wait may span several shards), ``commands``, ``keys`` (keys named by the operations) and
``server_cpu_us``: the servers' ``used_cpu_sys + used_cpu_user`` since the last reset, summed
over shards. Reading it costs an INFO (not counted), so ``counters()`` re-reads it only once
0.1 s or 100 round trips have passed since the last read: exact over a run, but a caller that
asks after every operation (the replay engine) sees each step land on one operation, i.e.
shared among operation kinds in proportion to their round trips on average. It includes
every client of the server and its idle work: with several clients take it once, never sum
it. The pipeline depth is the attribute ``pipeline`` (and in ``describe()``).

The C driver
------------
:meth:`RedisIndex.drive` runs ops of an operation stream in the replay engine's C measuring loop
(native/driver.h) through a hiredis client (native/redis_client.h) that issues exactly the
commands above (same names, values, scripts and pipelining), so Redis is timed like the native
indexes, with no Python inside an op. That client opens its own connection(s) on first use.
Its errors become redis-py's exceptions: ``redis.ConnectionError`` (refused, lost mid-run),
``redis.TimeoutError`` (no reply within ``reply_timeout``), ``redis.ResponseError`` (an error
reply, or a reply kvdm did not write).

Open the index in each process that uses it (a connection is never shared across a fork).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import hiredis
import numpy as np
import redis

from kvdm.native import ffi, lib

from .api import Index, as_keys, as_values
from .native import run_drive, stream_view
from .redis_modes import PREFIX_MODES, RANGE_MODES
from .redis_server import RedisClusterServers, RedisServer, start_servers

#: members per ZADD / ZREM, keys per MGET / EXISTS command
MULTI_KEY_CHUNK = 1024
#: the most keys a ``mget`` range may enumerate
MGET_RANGE_MAX = 1 << 16
#: hash tags group keys that differ only in this many trailing bytes
TAG_SUFFIX_BYTES = 1
_ZSET_NAME = b"kvdm:zset"
#: Redis Cluster's hash slots
SLOTS = 16384
_NO_VALUE = bytes(8)
#: counters() re-reads the servers' CPU time (one INFO) once this much time has passed or
#: this many round trips were made since the last read, so it costs at most ~1% extra
CPU_REFRESH_S = 0.1
CPU_REFRESH_RTTS = 100

# kvdm's one script (one SHA to load and to reload after NOSCRIPT), two uses:
# - no ARGV: a prefix match, how many of KEYS, in order, exist before the first missing one;
# - ARGV lo, hi, limit, prefix: a zset range in one round trip (standalone server): the members of
#   the sorted set KEYS[1] between the BYLEX bounds lo and hi (at most limit, 0 = all) and the
#   values of the keys they name (prefix .. member), MGET in chunks: {members, values}.
_PREFIX_LUA = """
if #ARGV == 0 then
  for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then return i - 1 end
  end
  return #KEYS
end
local members
if tonumber(ARGV[3]) > 0 then
  members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'BYLEX', 'LIMIT', 0, ARGV[3])
else
  members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'BYLEX')
end
local values = {}
for i = 1, #members, 1024 do
  local names = {}
  for j = i, math.min(i + 1023, #members) do names[#names + 1] = ARGV[4] .. members[j] end
  local got = redis.call('MGET', unpack(names))
  for j = 1, #got do values[#values + 1] = got[j] end
end
return {members, values}
"""


class RedisUnavailable(ConnectionError, ValueError):
    """The Redis server at the given URL cannot be reached (a ValueError so the CLI prints it
    as a user error)."""


@dataclass
class RedisOptions:
    """Options of the ``redis`` backend (``kvdm.index.open("redis", key_bytes, **options)``).

    ``url``: connect to this server (``redis://host:port[/db]``); None starts a local server
    (or ``cluster`` shards) owned by the index and stopped by ``close()``.
    ``cluster``: shards to start when ``url`` is None; with a ``url``, any value > 0 means the
    URL is a cluster node and the cluster client is used. ``pipeline``: commands per round
    trip, 0 (the default) = all of an operation's commands in one round trip, 1 = the paper's
    one round trip per command. ``range_mode``: ``zset`` or ``mget``; ``prefix_mode``: ``pipeline`` or
    ``lua`` (see the module docstring). ``hash_tags``: group keys into slots by all but their
    last byte. ``namespace``: a prefix for every Redis key name, so several indexes can
    share a server. ``connect_timeout``: seconds to connect; ``reply_timeout``: seconds to
    wait for a reply (then the call fails; both clients).
    """

    url: str | None = None
    cluster: int = 0
    pipeline: int = 0
    range_mode: str = "zset"
    prefix_mode: str = "pipeline"
    hash_tags: bool = False
    namespace: str = ""
    connect_timeout: float = 5.0
    reply_timeout: float = 30.0

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> RedisOptions:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) for redis: {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**options)

    def validate(self, key_bytes: int) -> None:
        if not isinstance(self.pipeline, int) or isinstance(self.pipeline, bool) or self.pipeline < 0:
            raise ValueError(f"redis pipeline depth must be an integer >= 0 (0 = all of an operation's commands "
                             f"in one round trip), got {self.pipeline!r}")
        if not self.connect_timeout > 0 or not self.reply_timeout > 0:
            raise ValueError(f"redis timeouts must be > 0 s, got connect {self.connect_timeout!r}, "
                             f"reply {self.reply_timeout!r}")
        if not isinstance(self.cluster, int) or self.cluster < 0:
            raise ValueError(f"redis cluster shard count must be an integer >= 0, got {self.cluster!r}")
        if self.range_mode not in RANGE_MODES:
            raise ValueError(f"unknown redis range mode {self.range_mode!r}; "
                             f"valid: {', '.join(RANGE_MODES)}")
        if self.prefix_mode not in PREFIX_MODES:
            raise ValueError(f"unknown redis prefix mode {self.prefix_mode!r}; "
                             f"valid: {', '.join(PREFIX_MODES)}")
        if self.range_mode == "mget" and key_bytes != 8:
            raise ValueError("redis range mode 'mget' needs 8-byte id keys (it fetches every key between "
                             f"lo and hi); with {key_bytes}-byte keys use range mode 'zset'")
        if "{" in self.namespace or "}" in self.namespace:
            raise ValueError(f"redis namespace {self.namespace!r} must not contain '{{' or '}}' (hash tags)")


class _StandaloneWire:
    """Commands to one server over one redis-py connection (hiredis parser): packed with
    hiredis, sent in one write, replies read in order. Skipping redis-py's pipeline and
    reply-callback machinery roughly triples client throughput at depth 16, so the figures
    measure Redis rather than Python."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn = self._pool.get_connection()

    def exchange(self, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
        conn = self._conn
        try:
            conn.send_packed_command([b"".join(map(hiredis.pack_command, cmds))], check_health=False)
            return [conn.read_response() for _ in cmds]
        except BaseException:
            conn.disconnect()  # replies may be pending: never reuse a stream out of step
            raise

    def close(self) -> None:
        self._pool.release(self._conn)


class _ClusterWire:
    """Commands to a Redis Cluster: routed by slot with redis-py's slot map, packed with
    hiredis, written to every shard concerned (one connection each) before any reply is read,
    so one exchange costs about one round trip however many shards it spans. A command that
    meets a moved slot (MOVED/ASK/TRYAGAIN/CLUSTERDOWN: not executed) reloads the slot map
    and is re-run through redis-py's cluster client, which follows redirections."""

    # MovedError is an AskError
    _REDIRECTED = (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                   redis.exceptions.ClusterDownError)

    def __init__(self, client: redis.RedisCluster) -> None:
        self._client = client
        self._conns: dict[str, Any] = {}

    def _connection(self, node: Any) -> Any:
        conn = self._conns.get(node.name)
        if conn is None:
            conn = self._client.get_redis_connection(node).connection_pool.get_connection()
            self._conns[node.name] = conn
        return conn

    def _node(self, cmd: tuple[Any, ...]) -> Any:
        # every command kvdm sends has its (single-slot) keys at a fixed place
        key = cmd[3] if cmd[0] == "EVALSHA" else cmd[1]
        return self._client.nodes_manager.get_node_from_slot(self._client.keyslot(key))

    def exchange(self, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, c in enumerate(cmds):
            node = self._node(c)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        out: list[Any] = [None] * len(cmds)
        redo: list[int] = []
        error: Exception | None = None
        try:
            sent = []
            for node, idx in by_node.values():
                conn = self._connection(node)
                payload = b"".join(hiredis.pack_command(cmds[i]) for i in idx)
                conn.send_packed_command([payload], check_health=False)
                sent.append((conn, idx))
            for conn, idx in sent:
                for i in idx:
                    try:
                        out[i] = conn.read_response()
                    except self._REDIRECTED:
                        redo.append(i)
                    except redis.ResponseError as exc:  # an error reply: the stream stays in step
                        error = error or exc
        except BaseException:
            self._disconnect()  # replies may be pending: never reuse a stream out of step
            raise
        if error is not None:
            raise error
        if redo:
            self._client.nodes_manager.initialize()
            for i in redo:
                out[i] = self._client.execute_command(*cmds[i])
        return out

    def _disconnect(self) -> None:
        for conn in self._conns.values():
            conn.disconnect()

    def close(self) -> None:
        for name, conn in self._conns.items():
            node = self._client.get_node(node_name=name)
            if node is not None and node.redis_connection is not None:
                node.redis_connection.connection_pool.release(conn)
        self._conns.clear()


class RedisIndex(Index):
    """The index API over redis-server (see the module docstring for layout and costs)."""

    name = "redis"
    ordered = True

    def __init__(self, key_bytes: int = 8, **options: Any) -> None:
        super().__init__(key_bytes)
        opts = RedisOptions.from_dict(options)
        opts.validate(key_bytes)
        self.options = opts
        self.pipeline = opts.pipeline
        self.range_mode = opts.range_mode
        self.prefix_mode = opts.prefix_mode
        self.hash_tags = opts.hash_tags
        self._ns = opts.namespace.encode()
        self._zset = self._ns + _ZSET_NAME
        self._servers: RedisServer | RedisClusterServers | None = None
        self._client: Any = None
        self._wire: _StandaloneWire | _ClusterWire | None = None
        self._c: Any = None  # the C client of drive(), opened on first use
        try:
            if opts.url is None:
                self._servers = start_servers(opts.cluster)
                self.url = self._servers.url
            else:
                self.url = opts.url
            self.cluster = opts.cluster > 0
            self._client = self._connect()
            self.shards = len(self._client.get_primaries()) if self.cluster else 1
            self._wire = _ClusterWire(self._client) if self.cluster else _StandaloneWire(self._client)
            self._prefix_sha = self._load_script()
            self._cpu_base = self._cpu_seen = 0.0
            self.reset_counters()
        except BaseException:
            self.close()
            raise

    # -- connection --
    def _connect(self) -> Any:
        kw = {"socket_connect_timeout": self.options.connect_timeout, "socket_timeout": self.options.reply_timeout}
        try:
            if self.cluster:
                client = redis.RedisCluster.from_url(self.url, **kw)
            else:
                client = redis.Redis.from_url(self.url, **kw)
            client.ping()
            clustered = not self.cluster and int(client.info("cluster").get("cluster_enabled", 0))
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, ValueError) as exc:
            raise RedisUnavailable(f"cannot connect to Redis at {self.url}: {exc}") from exc
        if clustered:  # a plain client would meet MOVED replies for most keys
            client.close()
            raise ValueError(f"the Redis server at {self.url} is a cluster node: use the cluster client "
                             "(option cluster > 0, --redis-cluster N)")
        return client

    def _load_script(self) -> str:
        """SCRIPT LOAD the prefix-match script (on every primary in a cluster); its SHA1."""
        sha = self._client.script_load(_PREFIX_LUA)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    def describe(self) -> dict[str, Any]:
        """The settings a results file records (URL, shards, pipeline depth, variants)."""
        return {"url": self.url, "cluster": self.cluster, "shards": self.shards, "pipeline": self.pipeline,
                "range_mode": self.range_mode, "prefix_mode": self.prefix_mode, "hash_tags": self.hash_tags}

    # -- key and value encoding --
    def _raw(self, keys: np.ndarray) -> list[bytes]:
        """Each key's raw bytes, in key order (8-byte keys big-endian)."""
        kb = self.key_bytes
        buf = keys.astype(">u8").tobytes() if kb == 8 else keys.tobytes()
        return [buf[i:i + kb] for i in range(0, len(buf), kb)]

    def _names(self, raw: Sequence[bytes]) -> list[bytes]:
        """Redis key names of raw keys."""
        ns = self._ns
        if self.hash_tags:
            cut = self.key_bytes - TAG_SUFFIX_BYTES
            return [b"{" + r[:cut].hex().encode() + b"}" + ns + r for r in raw]
        return [ns + r for r in raw] if ns else list(raw)

    @staticmethod
    def _decode(replies: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        found = np.fromiter((r is not None for r in replies), dtype=bool, count=len(replies))
        buf = b"".join(_NO_VALUE if r is None else r for r in replies)
        if len(buf) != 8 * len(replies):
            raise ValueError("a Redis value is not 8 bytes long: the namespace holds keys kvdm did not write")
        return np.frombuffer(buf, dtype=">u8").astype(np.uint64), found

    # -- command execution --
    def _chunks(self, cmds: Sequence[tuple[Any, ...]]) -> Iterator[list[Any]]:
        """Run ``cmds`` in order, ``pipeline`` per round trip (0: all in one); yields each round
        trip's replies (so a caller may stop early)."""
        d = self.pipeline or len(cmds) or 1
        exchange = self._wire.exchange
        for i in range(0, len(cmds), d):
            part = cmds[i:i + d]
            self._rtts += 1
            self._commands += len(part)
            yield exchange(part)

    def _run(self, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
        out: list[Any] = []
        for replies in self._chunks(cmds):
            out.extend(replies)
        return out

    def _split(self, command: str, names: Sequence[bytes]) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
        """One multi-key command over ``names`` as commands of at most MULTI_KEY_CHUNK keys,
        each within one slot in a cluster; also returns which names each command covers."""
        if self.cluster:
            by_slot: dict[int, list[int]] = {}
            keyslot = self._client.keyslot
            for i, n in enumerate(names):
                by_slot.setdefault(keyslot(n), []).append(i)
            groups = list(by_slot.values())
        else:
            groups = [list(range(len(names)))]
        cmds, cover = [], []
        for g in groups:
            for j in range(0, len(g), MULTI_KEY_CHUNK):
                idx = g[j:j + MULTI_KEY_CHUNK]
                cmds.append((command, *(names[i] for i in idx)))
                cover.append(idx)
        return cmds, cover

    def _mget(self, names: Sequence[bytes]) -> list[bytes | None]:
        cmds, cover = self._split("MGET", names)
        out: list[bytes | None] = [None] * len(names)
        for idx, replies in zip(cover, self._run(cmds), strict=True):
            for i, r in zip(idx, replies, strict=True):
                out[i] = r
        return out

    def _zset_cmds(self, command: str, raw: Sequence[bytes]) -> list[tuple[Any, ...]]:
        """ZADD/ZREM of ``raw`` as members of the sorted set, MULTI_KEY_CHUNK per command."""
        if self.range_mode != "zset":
            return []
        out = []
        for i in range(0, len(raw), MULTI_KEY_CHUNK):
            part = raw[i:i + MULTI_KEY_CHUNK]
            if command == "ZADD":
                args: list[Any] = []
                for r in part:
                    args += (0, r)
                out.append(("ZADD", self._zset, *args))
            else:
                out.append(("ZREM", self._zset, *part))
        return out

    # -- operations --
    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = as_keys(keys, self.key_bytes)
        self._keys += len(keys)
        names = self._names(self._raw(keys))
        return self._decode(self._run([("GET", n) for n in names]))

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = as_keys(keys, self.key_bytes)
        values = as_values(values, len(keys))
        if not len(keys):
            return
        self._keys += len(keys)
        raw = self._raw(keys)
        vbuf = values.astype(">u8").tobytes()
        names = self._names(raw)
        cmds: list[tuple[Any, ...]] = [("SET", n, vbuf[8 * i:8 * i + 8]) for i, n in enumerate(names)]
        # values first, then the index entry: a range never lists a key it cannot read
        self._run(cmds + self._zset_cmds("ZADD", raw))

    def delete(self, keys: np.ndarray) -> np.ndarray:
        keys = as_keys(keys, self.key_bytes)
        self._keys += len(keys)
        raw = self._raw(keys)
        zcmds = self._zset_cmds("ZREM", raw)
        replies = self._run(zcmds + [("DEL", n) for n in self._names(raw)])
        return np.array(replies[len(zcmds):], dtype=np.int64).astype(bool).reshape(-1)

    def _bounds(self, lo: Any, hi: Any) -> tuple[bytes, bytes]:
        raw = self._raw(as_keys(lo, self.key_bytes)) + self._raw(as_keys(hi, self.key_bytes))
        if len(raw) != 2:
            raise ValueError("range bounds must be single keys")
        return raw[0], raw[1]

    def _span(self, lo: bytes, hi: bytes) -> range:
        """The ids a ``mget`` range enumerates (error past MGET_RANGE_MAX)."""
        a, b = int.from_bytes(lo, "big"), int.from_bytes(hi, "big")
        if b - a + 1 > MGET_RANGE_MAX:
            raise ValueError(f"range [{a}, {b}] spans {b - a + 1} keys; range mode 'mget' fetches every "
                             f"key of the span and allows at most {MGET_RANGE_MAX}: use range mode 'zset'")
        return range(a, b + 1)

    def range(self, lo: Any, hi: Any, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        lo_b, hi_b = self._bounds(lo, hi)
        if self.range_mode == "zset" and not self.cluster:  # one round trip: the script's range
            members, replies = self._range_lua(lo_b, hi_b, max(0, int(limit)))
            self._keys += len(members)
            values, found = self._decode(replies)
            raw = [m for m, f in zip(members, found, strict=True) if f]
            return self._layout(raw), values[found]
        if self.range_mode == "zset":  # a cluster: the members' keys live on any shard
            cmd: tuple[Any, ...] = ("ZRANGE", self._zset, b"[" + lo_b, b"[" + hi_b, "BYLEX")
            if limit > 0:
                cmd += ("LIMIT", 0, limit)
            members = self._run([cmd])[0]
            self._keys += len(members)
            if not members:
                return self._layout([]), np.zeros(0, np.uint64)
            values, found = self._decode(self._mget(self._names(members)))
            raw = [m for m, f in zip(members, found, strict=True) if f]
            return self._layout(raw), values[found]
        span = self._span(lo_b, hi_b)
        self._keys += len(span)
        ids = np.arange(span.start, span.stop, dtype=np.uint64) if len(span) else np.zeros(0, np.uint64)
        values, found = self._decode(self._mget(self._names(self._raw(ids))))
        ids, values = ids[found], values[found]
        if limit > 0:
            ids, values = ids[:limit], values[:limit]
        return ids, values

    def range_count(self, los: np.ndarray, his: np.ndarray) -> np.ndarray:
        los = as_keys(los, self.key_bytes)
        his = as_keys(his, self.key_bytes)
        if len(los) != len(his):
            raise ValueError(f"{len(los)} lower bounds but {len(his)} upper bounds")
        pairs = list(zip(self._raw(los), self._raw(his), strict=True))
        if self.range_mode == "zset":
            self._keys += 2 * len(pairs)
            replies = self._run([("ZLEXCOUNT", self._zset, b"[" + a, b"[" + b) for a, b in pairs])
            return np.array(replies, dtype=np.int64).reshape(-1)
        cmds: list[tuple[Any, ...]] = []
        owner: list[int] = []
        for i, (a, b) in enumerate(pairs):
            span = self._span(a, b)
            self._keys += len(span)
            if len(span):
                part, _ = self._split("EXISTS", self._names(self._raw(np.arange(span.start, span.stop,
                                                                                dtype=np.uint64))))
                cmds += part
                owner += [i] * len(part)
        counts = np.zeros(len(pairs), dtype=np.int64)
        for i, n in zip(owner, self._run(cmds), strict=True):
            counts[i] += int(n)
        return counts

    def prefix_match(self, keys: np.ndarray) -> int:
        keys = as_keys(keys, self.key_bytes)
        if not len(keys):
            return 0
        names = self._names(self._raw(keys))
        if self.prefix_mode == "lua":
            return self._prefix_lua(names)
        matched = 0
        for replies in self._chunks([("EXISTS", n) for n in names]):
            for r in replies:
                self._keys += 1
                if not r:
                    return matched
                matched += 1
        return matched

    def _range_lua(self, lo: bytes, hi: bytes, limit: int) -> tuple[list[bytes], list[bytes | None]]:
        """The script's zset range: (members, their values or None), one round trip."""
        cmd = ("EVALSHA", self._prefix_sha, 1, self._zset, b"[" + lo, b"[" + hi, limit, self._ns)
        try:
            members, values = self._run([cmd])[0]
        except redis.exceptions.NoScriptError:  # the server lost it (restart, SCRIPT FLUSH)
            self._prefix_sha = self._load_script()
            members, values = self._run([(cmd[0], self._prefix_sha, *cmd[2:])])[0]
        return list(members), list(values)

    def _prefix_lua(self, names: list[bytes]) -> int:
        try:
            return self._prefix_lua_runs(names)
        except redis.exceptions.NoScriptError:  # the server lost it (restart, SCRIPT FLUSH)
            self._prefix_sha = self._load_script()
            return self._prefix_lua_runs(names)

    def _prefix_lua_runs(self, names: list[bytes]) -> int:
        runs = [names]
        if self.cluster:  # a script touches one slot: cut into maximal same-slot runs
            slots = [self._client.keyslot(n) for n in names]
            runs, start = [], 0
            for i in range(1, len(names) + 1):
                if i == len(names) or slots[i] != slots[start]:
                    runs.append(names[start:i])
                    start = i
        matched, at = 0, 0
        for replies in self._chunks([("EVALSHA", self._prefix_sha, len(run), *run) for run in runs]):
            for n in map(int, replies):
                run = runs[at]
                at += 1
                self._keys += len(run)
                matched += n
                if n < len(run):
                    return matched
        return matched

    def _layout(self, raw: Sequence[bytes]) -> np.ndarray:
        """Raw keys back to this index's key layout."""
        kb = self.key_bytes
        buf = b"".join(raw)
        if kb == 8:
            return np.frombuffer(buf, dtype=">u8").astype(np.uint64)
        return np.frombuffer(buf, dtype=np.uint8).reshape(-1, 32).copy()

    # -- statistics --
    def _server_cpu(self) -> float:
        """Seconds of CPU the server(s) used so far (user + system, summed over shards)."""
        info = self._client.info("cpu", target_nodes=redis.RedisCluster.PRIMARIES) if self.cluster \
            else self._client.info("cpu")
        per_node = info.values() if self.cluster else [info]
        return sum(float(i["used_cpu_sys"]) + float(i["used_cpu_user"]) for i in per_node)

    def _server_cpu_now(self) -> float | None:
        """:meth:`_server_cpu`, or None when the server cannot say (gone: the C client reports it)."""
        try:
            return self._server_cpu()
        except (redis.RedisError, OSError):
            return None

    def counters(self) -> dict[str, int]:
        """``rtts``, ``commands``, ``keys`` and ``server_cpu_us``. The server CPU costs an INFO
        round trip (not counted), so it is re-read only after CPU_REFRESH_S or CPU_REFRESH_RTTS
        round trips since the last read: a caller that asks after every operation (the replay
        engine) sees it advance in steps, exact over a run up to the last few round trips."""
        now = time.monotonic()
        if now - self._cpu_read_at >= CPU_REFRESH_S or self._rtts - self._cpu_read_rtts >= CPU_REFRESH_RTTS:
            self._cpu_seen, self._cpu_read_at, self._cpu_read_rtts = self._server_cpu(), now, self._rtts
        return {
            "rtts": self._rtts,
            "commands": self._commands,
            "keys": self._keys,
            "server_cpu_us": int(round((self._cpu_seen - self._cpu_base) * 1e6)),
        }

    def reset_counters(self) -> None:
        self._rtts = self._commands = self._keys = 0
        self._cpu_base = self._cpu_seen = self._server_cpu()
        self._cpu_read_at, self._cpu_read_rtts = time.monotonic(), 0

    # -- the replay engine's C loop --
    def _c_client(self) -> Any:
        """The hiredis client of :meth:`drive` (opened on first use, with this index's settings
        and, in a cluster, the client's current slot map)."""
        if self._c is not None:
            return self._c
        if self._client is None:
            raise ValueError("this redis index is closed")
        if self.cluster:
            primaries = self._client.get_primaries()
            where = {n.name: i for i, n in enumerate(primaries)}
            slot_node = np.zeros(SLOTS, np.uint16)
            for slot, nodes in self._client.nodes_manager.slots_cache.items():
                slot_node[slot] = where[nodes[0].name]
            nodes = [(n.host, int(n.port)) for n in primaries]
        else:
            kw = self._client.connection_pool.connection_kwargs
            nodes, slot_node = [(str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379)))], None
            if int(kw.get("db", 0) or 0) or kw.get("password") or kw.get("username"):
                raise ValueError(f"the C driver connects without AUTH or SELECT: {self.url} needs them; "
                                 "use --driver python")
        keep = [ffi.new("char[]", h.encode()) for h, _ in nodes]
        o = ffi.new("kvdm_redis_opts *")
        hosts = ffi.new("char *[]", keep)
        ports = ffi.new("int[]", [p for _, p in nodes])
        o.hosts, o.ports, o.n_nodes = hosts, ports, len(nodes)
        o.slot_node = ffi.NULL if slot_node is None else ffi.cast("uint16_t *", ffi.from_buffer(slot_node))
        ns = ffi.new("uint8_t[]", self._ns or b"\0")
        o.key_bytes, o.ns, o.ns_len = self.key_bytes, ns, len(self._ns)
        o.hash_tags = int(self.hash_tags)
        o.range_mode = RANGE_MODES.index(self.range_mode)
        o.prefix_mode = PREFIX_MODES.index(self.prefix_mode)
        o.pipeline = self.pipeline
        sha, src = ffi.new("char[]", self._prefix_sha.encode()), ffi.new("char[]", _PREFIX_LUA.encode())
        o.lua_sha, o.lua_src = sha, src
        o.connect_timeout_s, o.reply_timeout_s = self.options.connect_timeout, self.options.reply_timeout
        out = ffi.new("kvdm_redis **")
        err = ffi.new("char[512]")
        rc = lib.kvdm_redis_open(o, out, err, 512)
        if rc != lib.DM_OK:
            msg = ffi.string(err).decode(errors="replace")
            if rc == lib.DM_EINVAL:
                raise ValueError(msg)
            raise RedisUnavailable(msg)
        self._c = ffi.gc(out[0], lib.kvdm_redis_close)
        return self._c

    @staticmethod
    def _raise_c(rc: int, msg: str) -> None:
        """A C client's failure as the exception redis-py would raise."""
        if rc == lib.DM_EINVAL:
            raise ValueError(msg)
        if rc == lib.DM_ENOMEM:
            raise MemoryError(msg)
        if rc == lib.DM_ETIMEDOUT:
            raise redis.exceptions.TimeoutError(msg)
        if rc == lib.DM_EIO:
            raise redis.exceptions.ConnectionError(msg)
        raise redis.exceptions.ResponseError(msg)

    def drive(self, stream: Any, op_ids: np.ndarray, groups: np.ndarray, n_groups: int,
              add_virtual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ops ``op_ids`` of an :class:`~kvdm.traces.mapping.OpStream` through the C client in
        the replay engine's C loop (driver.h), each op timed alone in C. Returns per-op latency
        (ns) and hits, and per group (``groups[i]`` for op i) the summed deltas of
        :meth:`counters` as int64[n_groups, 4]: the servers' CPU time over the call is shared
        among the groups in proportion to their round trips. ``add_virtual`` is ignored (Redis
        has no modelled time)."""
        c = self._c_client()
        cached = getattr(self, "_stream", None)
        if cached is None or cached[0] is not stream:
            cached = (stream, stream_view(stream, self.key_bytes))
            self._stream = cached
        view = cached[1]

        def call(ids: Any, grp: Any, n: int, out: Any, err: Any) -> int:
            return lib.kvdm_redis_drive(c, view[0], ids, grp, n, n_groups, out, err, 512)

        cpu0 = self._server_cpu_now()
        try:
            lat, hits, acc = run_drive(call, op_ids, groups, n_groups, int(lib.kvdm_redis_counters()), self._raise_c)
        finally:
            st = ffi.new("kvdm_redis_stats *")
            lib.kvdm_redis_get_stats(c, st)
            seen = getattr(self, "_c_seen", (0, 0, 0))
            self._c_seen = (st.rtts, st.commands, st.keys)
            self._rtts += st.rtts - seen[0]
            self._commands += st.commands - seen[1]
            self._keys += st.keys - seen[2]
        cpu1 = self._server_cpu_now()
        cpu_us = 0
        if cpu0 is not None and cpu1 is not None:
            self._cpu_seen, self._cpu_read_at, self._cpu_read_rtts = cpu1, time.monotonic(), self._rtts
            cpu_us = int(round((cpu1 - cpu0) * 1e6))
        rtts = acc[:, 0].astype(np.float64)
        share = np.diff(np.round(np.concatenate(([0.0], np.cumsum(rtts))) * cpu_us / max(rtts.sum(), 1.0)))
        return lat, hits, np.column_stack((acc, share.astype(np.int64)))

    # -- lifecycle --
    def close(self) -> None:
        """Close the connections and stop the server(s) this index started (their data goes)."""
        c, self._c = self._c, None
        if c is not None:
            ffi.release(c)
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        servers, self._servers = self._servers, None
        if servers is not None:
            servers.stop()


def open_redis(transport: Any, key_bytes: int, **options: Any) -> RedisIndex:
    """Registry factory (the transport is unused: Redis has its own network path). See
    :class:`RedisOptions` for the options."""
    return RedisIndex(key_bytes, **options)
