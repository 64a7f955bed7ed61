"""redis-server lifecycle: no server outlives its owner (normal exit, Ctrl-C, SIGTERM, SIGKILL),
ports in use are handled, unreachable URLs are named, and the --redis-* options."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import default_sigint

import kvdm.index
from kvdm.experiments.cli import UsageError
from kvdm.experiments.cli.options_redis import add_redis_options, check_redis_flags, redis_options, redis_session
from kvdm.index import redis_server
from kvdm.index.redis_index import RedisIndex, RedisUnavailable
from kvdm.index.redis_server import (
    RedisServer,
    RedisServerError,
    clean_stale_workdirs,
    pid_running,
    started_pids,
)


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind() -> Iterator[None]:
    yield
    assert not any(pid_running(p) for p in started_pids()), "a redis-server was left behind"


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_running(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_running(p)]


def test_stop_ends_the_process_and_removes_its_folder():
    server = RedisServer().start()
    pid, workdir = server.pid, server.workdir
    assert pid_running(pid) and workdir.exists()
    assert server.client().ping()
    server.stop()
    server.stop()  # idempotent
    assert not pid_running(pid) and not workdir.exists()


def test_a_requested_port_in_use_is_a_clear_error(listening):
    with pytest.raises(RedisServerError, match=f"port {listening} .*already in use"):
        RedisServer(port=listening).start()


def test_a_port_taken_after_it_was_chosen_is_retried(listening, monkeypatch):
    """free_port() hands out a port that another program then holds: redis-server fails to bind
    it, and start() tries another port."""
    ports = iter([listening])
    real = redis_server.free_port
    monkeypatch.setattr(redis_server, "free_port", lambda **kw: next(ports, None) or real(**kw))
    with RedisServer() as server:
        assert server.port != listening and server.client().ping()
    assert len(started_pids()) >= 2  # the failed attempt was a real redis-server too


def test_a_server_that_cannot_start_reports_its_log():
    with pytest.raises(RedisServerError, match="exited with status"):
        RedisServer(extra_args=("--no-such-directive", "1")).start()


def test_missing_redis_server_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        RedisServer().start()


@pytest.mark.parametrize("cluster", [0, 3])
def test_a_refused_url_is_named(cluster):
    url = f"redis://127.0.0.1:{closed_port()}"
    with pytest.raises(RedisUnavailable, match=f"cannot connect to Redis at {url}"):
        kvdm.index.open("redis", key_bytes=8, url=url, cluster=cluster, connect_timeout=1.0)
    assert issubclass(RedisUnavailable, ValueError)  # the CLI prints it as a user error


_CHILD = textwrap.dedent("""
    import sys, time
    import kvdm.index
    from kvdm.experiments.cli.options_redis import redis_session
    from kvdm.index import redis_server
    from kvdm.index.redis_server import live_pids
    cluster, owner = int(sys.argv[1]), sys.argv[2]
    if owner == "session":  # what a replay does: servers in the parent, shared by its clients
        session = redis_session({"cluster": cluster})
        options = session.__enter__()
        idx = kvdm.index.open("redis", key_bytes=8, **options)
    else:  # the index starts and owns its servers
        idx = kvdm.index.open("redis", key_bytes=8, cluster=cluster)
    idx.put_one(1, 2)
    print(" ".join(map(str, live_pids())), flush=True)
    print(" ".join(str(s.workdir) for s in redis_server._live.values()), flush=True)
    time.sleep(60)
""")


def _run_child(cluster: int, owner: str) -> tuple[subprocess.Popen[str], list[int], list[Path]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(cluster), owner], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint)
    line = child.stdout.readline()
    if not line:
        child.wait(10)
        pytest.fail(f"child failed: {child.stderr.read()}")
    pids = [int(p) for p in line.split()]
    workdirs = [Path(p) for p in child.stdout.readline().split()]
    assert len(pids) == len(workdirs) == max(cluster, 1) and all(pid_running(p) for p in pids)
    return child, pids, workdirs


@pytest.mark.parametrize(("how", "cluster", "owner"), [
    ("ctrl-c", 0, "index"), ("ctrl-c", 3, "index"), ("ctrl-c", 0, "session"), ("sigterm", 0, "session"),
    ("sigkill", 0, "index"),
])
def test_no_server_outlives_its_owner(how, cluster, owner):
    """A process running the backend (its own servers) is stopped by Ctrl-C (SIGINT to its
    process group, as a terminal sends), SIGTERM or SIGKILL: its servers go too."""
    child, pids, workdirs = _run_child(cluster, owner)
    try:
        if how == "ctrl-c":
            os.killpg(child.pid, signal.SIGINT)
        elif how == "sigterm":
            child.send_signal(signal.SIGTERM)
        else:
            child.kill()  # no cleanup code runs: PR_SET_PDEATHSIG takes the server down
        child.wait(20)
        left = wait_gone(pids)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert not left, f"redis-server(s) {left} outlived their owner ({how})"
    if how == "sigkill":  # no code of the owner ran: the next server start removes its folders
        assert all(w.exists() for w in workdirs)
        removed = clean_stale_workdirs()
        assert all(str(w) in removed for w in workdirs)
    assert not any(w.exists() for w in workdirs)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", default="redis")
    add_redis_options(parser)
    return parser.parse_args(argv)


def test_flags_become_backend_options():
    args = _parse("--redis-url", "redis://h:1", "--redis-pipeline", "16", "--redis-cluster", "3",
                  "--redis-range", "mget", "--redis-prefix", "lua", "--redis-hash-tags")
    assert redis_options(args) == {"url": "redis://h:1", "pipeline": 16, "cluster": 3, "range_mode": "mget",
                                   "prefix_mode": "lua", "hash_tags": True}
    assert redis_options(_parse(), start_local=False) == {}  # backend defaults apply


def test_options_without_url_start_a_server_the_process_owns():
    """What kvdm replay does: options built once in the parent, opened by every client."""
    options = redis_options(_parse("--redis-pipeline", "2"))
    pid = started_pids()[-1]
    try:
        assert options["url"].startswith("redis://127.0.0.1:") and pid_running(pid)
        with RedisIndex(8, **options) as a, RedisIndex(8, **options) as b:
            a.put_one(9, 10)
            assert b.get_one(9) == 10
    finally:
        redis_server._live[pid].stop()  # only this one: other modules' servers may be running
    assert not pid_running(pid)


@pytest.mark.parametrize(("argv", "message"), [
    (["--redis-range", "btree"], "unknown redis range mode 'btree'; valid: zset, mget"),
    (["--redis-prefix", "x"], "valid: pipeline, lua"),
    (["--redis-pipeline", "-1"], "pipeline depth must be an integer >= 0"),
    (["--redis-cluster", "-1"], "cluster shard count must be an integer >= 0"),
])
def test_bad_flag_values_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert message in capsys.readouterr().err


def test_redis_flags_with_another_index_are_an_error():
    with pytest.raises(UsageError, match="--redis-pipeline only apply to --index redis"):
        check_redis_flags(_parse("--redis-pipeline", "4"), "chime")
    check_redis_flags(_parse(), "chime")
    check_redis_flags(_parse("--redis-pipeline", "4"), "redis")


def test_session_starts_shared_servers_and_stops_them():
    with redis_session(redis_options(_parse("--redis-pipeline", "4"), start_local=False)) as options:
        assert options["url"].startswith("redis://127.0.0.1:") and options["pipeline"] == 4
        before = len(started_pids())
        with RedisIndex(8, **options) as a, RedisIndex(8, **options) as b:  # two clients, one server
            a.put_one(9, 10)
            assert b.get_one(9) == 10
        assert len(started_pids()) == before
        pid = started_pids()[-1]
        assert pid_running(pid)
    assert not pid_running(pid)


def test_session_with_a_url_starts_nothing():
    before = len(started_pids())
    with RedisServer() as s, redis_session({"url": s.url}) as options:
        assert options == {"url": s.url}
    assert len(started_pids()) == before + 1
