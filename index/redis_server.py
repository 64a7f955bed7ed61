"""Local redis-server processes that kvdm starts, owns and always stops.

kvdm runs Debian's ``redis-server`` itself unless the user gives ``--redis-url``:

* :class:`RedisServer`: one server on a free loopback port, persistence off (``--save ""
  --appendonly no``), its working directory and log in a private temporary folder. ``start()``
  returns once the server answers PING.
* :class:`RedisClusterServers`: N such servers in cluster mode, joined into one cluster by
  kvdm itself (CLUSTER SET-CONFIG-EPOCH / ADDSLOTSRANGE / MEET: the 16384 slots split evenly,
  one primary per shard, no replicas), returned once every node reports ``cluster_state:ok``.
* :func:`serving`: a context manager over either, yielding the URL clients connect to.

No process is left behind: a server is stopped by ``stop()``, at interpreter exit, on SIGTERM
(a handler is installed if none was) and on Ctrl-C (KeyboardInterrupt unwinds through
``atexit``). Each server also gets ``PR_SET_PDEATHSIG`` so that even a SIGKILLed owner takes
its servers with it, and runs in its own session so that a terminal's Ctrl-C reaches only the
owner, which then shuts the server down in order. Forked children never stop their parent's
servers. The folders a SIGKILLed owner leaves in the temporary directory are removed by the
next kvdm process that starts a server (:func:`clean_stale_workdirs`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvdm.transport import on_exit, pid_running

HOST = "127.0.0.1"
SLOTS = 16384
#: a cluster node also listens on port + 10000 (the cluster bus)
BUS_OFFSET = 10000
_PR_SET_PDEATHSIG = 1
#: a server's folder is ``<tmp>/kvdm-redis-<owner pid>-<random>``
WORKDIR_PREFIX = "kvdm-redis-"
_START_ATTEMPTS = 5


class RedisServerError(RuntimeError):
    """A local redis-server could not be started or joined into a cluster."""


def redis_server_binary() -> str:
    """Path of ``redis-server`` (error with the install hint when it is missing)."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError("redis-server not found on PATH; install it with "
                               "`sudo apt-get install redis-server` (or run .ci/bootstrap)")
    return path


def port_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST, cluster: bool = False) -> int:
    """A currently free port (and, for cluster mode, a free bus port beside it). Another
    process may still take it before redis-server binds it: :meth:`RedisServer.start` retries."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not cluster or (port + BUS_OFFSET < 65536 and port_free(port + BUS_OFFSET, host)):
            return port
    raise RedisServerError("found no free loopback port pair for a cluster node")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the owner dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: atexit and signal handlers still apply
        pass


_live: dict[int, RedisServer] = {}
_started: list[int] = []
_live_lock = threading.Lock()
_cleanup_installed = False


def stop_all() -> None:
    """Stop every server this process started (what exit and SIGTERM do)."""
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        server.stop()


def clean_stale_workdirs() -> list[str]:
    """Remove the working folders of servers whose owner died without cleaning up (SIGKILL:
    the server itself went with its owner, PR_SET_PDEATHSIG). Returns what was removed."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int(path.name[len(WORKDIR_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if owner != os.getpid() and not pid_running(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _install_cleanup() -> None:
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    clean_stale_workdirs()
    on_exit(stop_all)


def live_pids() -> list[int]:
    """PIDs of the servers this process started and has not stopped yet."""
    with _live_lock:
        return [s.pid for s in _live.values() if s.pid is not None]


def started_pids() -> list[int]:
    """PIDs of every server this process ever started (stopped ones included)."""
    with _live_lock:
        return list(_started)


@dataclass
class RedisServer:
    """One local redis-server on ``HOST`` (port 0 = pick a free one).

    ``extra_args`` are appended to the command line as ``--name value`` pairs, e.g.
    ``("--maxmemory", "1gb")``.
    """

    port: int = 0
    cluster: bool = False
    extra_args: tuple[str, ...] = ()
    start_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.owner_pid = os.getpid()

    # -- lifecycle --
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. A port taken between choosing it
        and binding it is retried with another; an explicitly requested port that is in use
        is an error naming it."""
        if self.proc is not None:
            raise RedisServerError(f"redis-server on port {self.port} already started")
        binary = redis_server_binary()
        requested = self.port
        if requested and not port_free(requested):
            raise RedisServerError(f"cannot start redis-server: port {requested} on {HOST} is already in use")
        last = ""
        for _ in range(_START_ATTEMPTS):
            self.port = requested or free_port(cluster=self.cluster)
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except _AddressInUse as exc:
                last = str(exc)
                self.stop()
                if requested:
                    break
            except BaseException:
                self.stop()
                raise
        raise RedisServerError(f"cannot start redis-server: {last}")

    def _spawn(self, binary: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        cmd = [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(self.workdir),
               "--logfile", str(self.workdir / "redis.log")]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"]
        cmd += list(self.extra_args)
        # early errors (bad config) go to stderr, before the log file is open
        with open(self.workdir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        with _live_lock:
            _live[self.proc.pid] = self
            _started.append(self.proc.pid)
        _install_cleanup()

    def _log_tail(self) -> str:
        parts = []
        for name in ("stderr.log", "redis.log"):
            if self.workdir is not None and (self.workdir / name).exists():
                parts.append((self.workdir / name).read_text(errors="replace"))
        lines = [ln for ln in "\n".join(parts).splitlines() if ln.strip()]
        return "\n".join(lines[-5:])

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            return
        tail = self._log_tail()
        if "Address already in use" in tail:
            raise _AddressInUse(f"port {self.port} on {HOST} is already in use")
        raise RedisServerError(f"redis-server on port {self.port} exited with status "
                               f"{self.proc.returncode}: {tail}")

    def _answers(self, client: redis.Redis) -> bool:
        """Whether our process (not some other program on the port) answers."""
        try:
            info = client.info("server")
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ResponseError):
            return False
        return self.proc is not None and int(info.get("process_id", -1)) == self.proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))
        try:
            while True:
                self._check_alive()
                if self._answers(client):
                    return
                if time.monotonic() > deadline:
                    self._check_alive()
                    raise RedisServerError(f"redis-server on port {self.port} did not answer within "
                                           f"{self.start_timeout:g} s: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its folder.
        Idempotent; a no-op in a forked child."""
        if os.getpid() != self.owner_pid:
            return
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with _live_lock:
                _live.pop(proc.pid, None)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain client connected to this server."""
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _AddressInUse(RedisServerError):
    pass


class RedisClusterServers:
    """``shards`` local cluster-mode servers joined into one Redis Cluster (primaries only)."""

    def __init__(self, shards: int, start_timeout: float = 20.0) -> None:
        if shards < 1:
            raise ValueError(f"a Redis cluster needs at least 1 shard, got {shards}")
        self.shards = shards
        self.start_timeout = start_timeout
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        """URL of the first node (the cluster client discovers the others)."""
        return self.servers[0].url

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.pid is not None]

    def start(self) -> RedisClusterServers:
        try:
            for _ in range(self.shards):
                self.servers.append(RedisServer(cluster=True).start())
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self) -> None:
        clients = [s.client(socket_timeout=5.0) for s in self.servers]
        try:
            bounds = [SLOTS * i // self.shards for i in range(self.shards + 1)]
            for i, c in enumerate(clients):
                # distinct epochs up front, as redis-cli does, so no epoch collision to resolve
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", HOST, self.servers[0].port)
            deadline = time.monotonic() + self.start_timeout
            while True:
                infos = [_cluster_info(c) for c in clients]
                if all(i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == self.shards
                       and int(i.get("cluster_slots_ok", 0)) == SLOTS for i in infos):
                    return
                if time.monotonic() > deadline:
                    raise RedisServerError(f"the {self.shards}-shard cluster did not form within "
                                           f"{self.start_timeout:g} s: {infos}")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers = []

    def __enter__(self) -> RedisClusterServers:
        return self.start() if not self.servers else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if isinstance(raw, dict):  # a parsed reply (depends on the redis-py version)
        return {str(k): str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def start_servers(cluster: int = 0) -> RedisServer | RedisClusterServers:
    """Start one standalone server (``cluster == 0``) or an N-shard cluster; the caller stops
    it (``stop()``), or exit does."""
    return RedisClusterServers(cluster).start() if cluster else RedisServer().start()


@contextmanager
def serving(cluster: int = 0) -> Iterator[str]:
    """Run local server(s) for the duration of the block; yields the URL to connect to."""
    servers = start_servers(cluster)
    try:
        yield servers.url
    finally:
        servers.stop()


def flush(url: str, cluster: bool = False) -> None:
    """FLUSHALL on the server at ``url`` (every primary of a cluster): for servers kvdm owns,
    so that each run starts from an empty server as if it had started its own."""
    if cluster:
        client: Any = redis.RedisCluster.from_url(url)
        try:
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        finally:
            client.close()
        return
    plain = redis.Redis.from_url(url)
    try:
        plain.flushall()
    finally:
        plain.close()


@contextmanager
def session(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The redis backend's run session (its registry entry): ``options`` ready for any number of
    client processes: unchanged when they name a ``url``; otherwise with the URL of local
    server(s) started here (``cluster`` shards, or one standalone server), stopped when the
    block ends."""
    if options.get("url") is not None:
        yield dict(options)
        return
    servers = start_servers(int(options.get("cluster", 0)))
    try:
        yield {**options, "url": servers.url}
    finally:
        servers.stop()

