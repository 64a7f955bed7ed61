"""The ``--redis-*`` command-line options (for ``kvdm replay``, ``kvdm bench index``, ...),
defined once, and what they turn into: options of the ``redis`` index backend.

A command uses them like this::

    add_redis_options(parser)
    ...
    check_redis_flags(args, args.index)               # --redis-* with another index: error
    if args.index == "redis":
        spec = IndexSpec("redis", key_bytes, redis_options(args))  # every client shares the server

Without ``--redis-url``, :func:`redis_options` starts the local server(s) in the calling
process (stopped when it exits, also on Ctrl-C), so that all client processes share them; the
options carry the URL. For a scoped lifetime instead::

    with redis_session(redis_options(args, start_local=False)) as options:
        ...
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from typing import Any

from kvdm.index import PREFIX_MODES, RANGE_MODES

from . import UsageError, choices_type

# The Redis client library is imported only where a server is started or a session entered:
# commands that merely offer these flags (every replay, every MPI rank) skip its ~100 modules.

#: argparse dest -> backend option
_FLAG_OPTIONS = {
    "redis_url": "url",
    "redis_pipeline": "pipeline",
    "redis_cluster": "cluster",
    "redis_range": "range_mode",
    "redis_prefix": "prefix_mode",
    "redis_hash_tags": "hash_tags",
}


def _int_at_least(low: int, what: str) -> Any:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{what} must be an integer >= {low}, got {value!r}")
        return n

    parse.__name__ = what
    return parse


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """--redis-url, --redis-pipeline, --redis-cluster, --redis-range, --redis-prefix, --redis-hash-tags
    (each defaults to None so a command can tell which were given)."""
    g = parser.add_argument_group("redis (with --index redis)")
    g.add_argument("--redis-url", metavar="URL",
                   help="use this Redis server (redis://HOST:PORT[/DB]) instead of starting a local "
                   "redis-server on a free loopback port; with --redis-cluster, a node of that cluster")
    g.add_argument("--redis-pipeline", type=_int_at_least(0, "pipeline depth"), metavar="N",
                   help="at most N commands per round trip (default 0: all of an operation's commands in one "
                   "round trip; 1: one round trip per key, the paper's unoptimised client)")
    g.add_argument("--redis-cluster", type=_int_at_least(0, "cluster shard count"), metavar="N",
                   help="start N local shards as a Redis Cluster and use the cluster client "
                   "(default 0: one standalone server)")
    g.add_argument("--redis-range", type=choices_type(RANGE_MODES, "redis range mode"),
                   help="range queries: zset (ZRANGE BYLEX over a sorted set of the keys, then MGET; "
                   "default) or mget (MGET of every id between lo and hi; 8-byte id keys only)")
    g.add_argument("--redis-prefix", type=choices_type(PREFIX_MODES, "redis prefix mode"),
                   help="prefix_match: pipeline (pipelined EXISTS, stop after the round trip holding the "
                   "first miss; default) or lua (a server-side script per slot run, stopping at the first miss)")
    g.add_argument("--redis-hash-tags", action="store_true", default=None,
                   help="cluster: key names carry a hash tag of all but their last byte, so runs of "
                   "consecutive ids share a slot (one shard per request's run)")


def given_redis_flags(args: argparse.Namespace) -> list[str]:
    """The --redis-* flags the user gave."""
    return [f"--{dest.replace('_', '-')}" for dest in _FLAG_OPTIONS if getattr(args, dest, None) is not None]


def check_redis_flags(args: argparse.Namespace, index_name: str) -> None:
    """Reject --redis-* flags given with another index (they would silently do nothing)."""
    flags = given_redis_flags(args)
    if flags and index_name != "redis":
        raise UsageError(f"{', '.join(flags)} only apply to --index redis (the index is {index_name})")


def redis_options(args: argparse.Namespace, start_local: bool = True) -> dict[str, Any]:
    """Backend options (``kvdm.index.open("redis", key_bytes, **options)``) of the given flags;
    flags not given keep the backend's defaults.

    Without ``--redis-url`` and with ``start_local`` (the default), the local server(s) are
    started here, owned by the calling process until it exits (atexit, SIGTERM, Ctrl-C; see
    kvdm.index.redis_server), and the options carry their URL: every client process opened
    from them shares the same data. ``start_local=False`` leaves ``url`` unset (then use
    :func:`redis_session` for a scoped lifetime, or let each index start its own server)."""
    given = {dest: getattr(args, dest, None) for dest in _FLAG_OPTIONS}
    options = {_FLAG_OPTIONS[dest]: v for dest, v in given.items() if v is not None}
    if start_local and options.get("url") is None:
        from kvdm.index import start_redis_servers

        options["url"] = start_redis_servers(int(options.get("cluster", 0))).url
    return options


def redis_session(options: dict[str, Any]) -> AbstractContextManager[dict[str, Any]]:
    """The redis backend's run session (kvdm.index.redis_session, index/redis_server.py)."""
    from kvdm.index import redis_session as session

    return session(options)
