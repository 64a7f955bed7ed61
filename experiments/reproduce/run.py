"""``kvdm reproduce``: every figure of the paper we have data for, the load curves beyond it, and a
report that puts each figure beside the paper's claim.

Steps (each can be left out with ``steps``):

1. ``traces``: Fig. 1a, 1b, 2a, 2b of each trace (:mod:`kvdm.experiments.figures.traces`);
2. ``fig3``: per backend, a replay of the Fig. 3 trace as the paper: ``paper`` mapping, 32 B
   SHA-256 keys, 8 B values, inserts of new blocks issued and timed, 10-minute bins of trace
   time, the first 10 minutes warm-up. By default the replay is *compressed and unloaded*: one
   client issuing operations one at a time, back to back (closed loop), binned by trace time.
   The real-time trace offers ~13 index ops/s, far below what one client serves, so every op of
   the real-time run also finds the system idle: the per-op latencies are the same, measured in
   a minute instead of an hour per backend. ``fig3_mode`` ``realtime`` replays at the trace's
   timestamps, ``compressed:X`` at X times their pace (open loop, 1 client). Measured caveat: on a
   busy machine p50s agree but tails grow when a client idles between requests (cold caches,
   other processes taking the core); the report compares the two from the load-curve runs.
   Range ops use ``range_semantics`` (default ``scan``, see :mod:`kvdm.traces.mapping`). Fig.
   3a/3b (range / get p99 per bin) and the RTT and byte costs per op come from these runs;
3. ``load``: per backend, a closed-loop sweep of client counts and open-loop replays compressed
   by several factors (one client), each capped at ``load_duration_s`` of wall time, drawn as
   p99 against throughput (load curves);
4. ``engine``: per backend, the engine's view (:mod:`kvdm.experiments.bench.chain`, the sweep of
   ``kvdm bench index --op chain``, run in-process): longest prefix match per LPM strategy and
   chain insert, swept over the chain length N, 32 B keys, at the reproduction's transport.
   The full run sweeps N = 1, 2, 4, ..., 512 with that command's defaults (1,000 chains per N,
   1M background keys); ``--quick`` N = 1, 8, 64 with 200 chains and 10,000 background keys.
   Drawn as p99 against N.

With redis among the backends, every Redis run of the reproduction uses one server (started here,
emptied before each run, unless ``redis_options`` names a ``url``; each run then keys its own
namespace), and the ``reference`` step measures on that server redis-benchmark ``-c 1`` and kvdm's
GET through the C loop (hiredis) like for like: the same kind of keys and values, interleaved
rounds, and kvdm's latencies also on redis-benchmark's 8 µs scale (:mod:`.reference`); then
redis-benchmark ``-P 16`` and kvdm's GET through redis-py. A missing ``redis-benchmark`` is
reported, not fatal.

Every run is kept under ``OUT/runs/<name>/`` (results.parquet + run.json; replays for ``kvdm
plot``, the engine step's ``engine-<backend>`` runs are chain-bench results); figures go to
``OUT/figures/``; ``OUT/report.md`` and ``OUT/report.html`` come last.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from kvdm.experiments.bench import chain as bc
from kvdm.experiments.figures.plots import LoadPoint, Run, load_runs, plot_chain, plot_rate_sweep, plot_runs
from kvdm.experiments.replay.engine import ReplayConfig, parse_mode, replay
from kvdm.experiments.replay.results import RunResults
from kvdm.index import IndexSpec, remote_memory
from kvdm.traces import TraceOptions
from kvdm.transport import TransportConfig

from .document import Report
from .reference import redis_reference

STEPS = ("traces", "fig3", "reference", "load", "engine")
#: the paper's Fig. 3 claims (Zhu et al., CLOUD 2025, toolagent trace)
PAPER_REDIS_P99_US = 100.0
PAPER_SHERMAN_RANGE_GAIN = 10.3   # % lower range p99 than CHIME
PAPER_CHIME_GET_GAIN = 5.5        # % lower get p99 than Sherman
#: the engine step's background keys: ``kvdm bench index``'s --keys default (1M)
ENGINE_KEYS = 1 << 20
ENGINE_KEY_BYTES = 32             # as the reproduction's SHA-256 keys (and the token layer's chunk keys)
#: the open-loop sweep of the load curves: real time up to 3000x the trace's pace (then unpaced)
COMPRESS = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
#: an open-loop point keeps up while it delivers at least this share of the rate it is offered
KEEPS_UP = 0.9
#: root slots the reproduction gives its native runs on memory nodes it does not embed (a run per
#: slot, so no run finds an earlier run's index; native/kvidx.h: slots 0..63, 0..5 the defaults)
FIRST_ROOT_SLOT, LAST_ROOT_SLOT = 8, 63


@dataclass
class ReproduceConfig:
    """What ``kvdm reproduce`` runs; the defaults are the full reproduction."""

    out: Path = Path("reproduction")
    quick: bool = False
    traces: tuple[str, ...] = ("conversation", "synthetic")   # Fig. 1-2
    fig3_traces: tuple[str, ...] = ("conversation",)          # Fig. 3 and the load curves (first one)
    backends: tuple[str, ...] = ("chime", "sherman", "redis")
    trace_options: TraceOptions = field(default_factory=TraceOptions)  # how its traces are read (--limit, ...)
    transport: TransportConfig = field(default_factory=lambda: TransportConfig(latency_model="virtual"))
    fig3_mode: str = "closed"         # closed (compressed, unloaded), realtime or compressed:X
    range_semantics: str = "scan"
    warmup_min: float = 10.0
    bin_min: float = 10.0
    clients: tuple[int, ...] = (1, 2, 4)     # closed loop; points beyond the cores are labelled oversubscribed
    compress: tuple[float, ...] = COMPRESS    # open loop; the unpaced point is the closed-loop 1-client run
    load_duration_s: float = 15.0
    cache_mb: float | None = None
    redis_options: dict[str, Any] = field(default_factory=dict)
    steps: tuple[str, ...] = STEPS
    resume: bool = False              # keep runs already under OUT/runs instead of re-running them
    engine_lengths: tuple[int, ...] = bc.CHAIN_LENGTHS  # engine step: chain lengths N
    engine_chains: int = bc.DEFAULT_CHAINS              # engine step: chains per N (LPM calls, chain inserts)
    engine_keys: int = ENGINE_KEYS                      # engine step: background keys per backend
    reference_requests: int = 100_000                  # the Redis reference: requests per run of each side
    reference_rounds: int = 5                           # the Redis reference: interleaved rounds of both sides
    same_substrate: bool = False      # native indexes over verbs on an RDMA device of this host, Redis over TCP here
    verbs_device: str | None = None   # same_substrate: the device of the memory node started here (default: first)
    verbs_gid_index: int | None = None  # same_substrate: its GID index (default: the memory node's auto choice)

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> ReproduceConfig:
        """The CI-sized version: the 400-request fixture, 0.5-minute bins, a small sweep; the engine
        step at N = 1, 8, 64 with 200 chains and 10,000 background keys (about a second per backend)."""
        from kvdm.traces import FIXTURE

        base = {"quick": True, "traces": (str(FIXTURE),), "fig3_traces": (str(FIXTURE),), "warmup_min": 0.5,
                "bin_min": 0.5, "clients": (1, 2), "compress": COMPRESS[:-1], "load_duration_s": 2.0,
                "engine_lengths": (1, 8, 64), "engine_chains": 200, "engine_keys": 10_000,
                "reference_requests": 20_000, "reference_rounds": 3}
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise ValueError(f"unknown step(s) {', '.join(bad)}; valid: {', '.join(STEPS)}")
        if not self.backends:
            raise ValueError("--backends: give at least one backend")
        if any(c < 1 for c in self.clients) or any(x <= 0 for x in self.compress):
            raise ValueError("--clients values must be >= 1 and --compress factors > 0")
        parse_mode(self.fig3_mode)
        if not self.engine_lengths or any(not 1 <= n <= bc.MAX_CHAIN for n in self.engine_lengths):
            raise ValueError(f"engine chain lengths must be integers in 1..{bc.MAX_CHAIN}, got {self.engine_lengths}")
        self.engine_lengths = tuple(sorted(set(self.engine_lengths)))
        if self.engine_chains < 1 or self.engine_keys < 0:
            raise ValueError(f"engine step: chains must be >= 1 and background keys >= 0 (got {self.engine_chains}, "
                             f"{self.engine_keys})")

    def latency_note(self) -> str:
        t = self.transport
        if t.transport == "verbs":
            where = f"an RDMA device of this host ({self.verbs_device})" if self.verbs_device else "RDMA"
            return (f"chime/sherman: verbs transport over {where}, the real network (no latency model); redis: a "
                    "real redis-server on this host over TCP, timed in C (hiredis)")
        model = {"none": "latency model none (memory speed, no network time)",
                 "spin": f"latency model spin (busy-waits {t.network_terms()})",
                 "virtual": f"latency model virtual ({t.network_terms()}, in place of the emulated NIC's "
                            "execution, no waiting)"}[t.latency_model]
        return (f"chime/sherman: {t.transport} transport, {model}; redis: a real redis-server over loopback TCP, "
                "timed in C (hiredis)")

    def mode_note(self) -> str:
        if self.fig3_mode == "realtime":
            return "real-time replay at the trace's timestamps, 1 client"
        if self.fig3_mode != "closed":
            return (f"open-loop replay at {self.fig3_mode.split(':')[1]}x the trace's pace (timestamps / "
                    f"{self.fig3_mode.split(':')[1]}), 1 client")
        return ("compressed, unloaded replay: 1 client, ops one at a time back to back, binned by trace time "
                "(the real-time run offers ~13 ops/s, also unloaded: the same medians; a paced client's tails are "
                "higher, see the report; --realtime or --fig3-mode compressed:X to pace it)")


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Reproduction:
    """Runs the steps of a :class:`ReproduceConfig` and writes the report."""

    def __init__(self, cfg: ReproduceConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.figs = self.out / "figures"
        self.runs_dir = self.out / "runs"
        self.stats: dict[str, Any] = {}            # trace name -> TraceStats
        self.trace_figs: dict[str, list[Path]] = {}
        self.fig3: dict[str, list[Run]] = {}       # trace name -> one run per backend
        self.load: dict[str, list[Run]] = {"closed": [], "compressed": []}
        self.load_figs: list[Path] = []
        self.fig3_figs: dict[str, list[Path]] = {}
        self.engine: dict[str, RunResults] = {}    # backend -> its stored chain-bench run
        self.engine_fig: Path | None = None
        self.timings: list[tuple[str, float]] = []
        self._streams: dict[str, Any] = {}
        self.redis_reference: dict[str, Any] | None = None
        self._redis: dict[str, Any] = dict(cfg.redis_options)  # with the shared server's url while run() runs
        self.transport: TransportConfig = cfg.transport  # with the started memory node's URI while run() runs
        self.memory_node_uri: str = ""                    # the verbs memory node this run started, if any
        self._root_slots = iter(range(FIRST_ROOT_SLOT, LAST_ROOT_SLOT + 1))

    # ---- steps ---------------------------------------------------------------------------
    def run(self) -> tuple[Path, Path]:
        self.figs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if "traces" in self.cfg.steps:
            self._timed("Fig. 1-2 (trace figures)", self.trace_figures)
        with self.memory_node(), self.redis_server():
            if "fig3" in self.cfg.steps:
                self._timed("Fig. 3 replays", self.fig3_runs)
            if "reference" in self.cfg.steps and "redis" in self.cfg.backends:
                self._timed("Redis reference (redis-benchmark)", self.reference_run)
            if "load" in self.cfg.steps:
                self._timed("load curves", self.load_runs)
            if "engine" in self.cfg.steps:
                self._timed("the engine's view", self.engine_runs)
        self.timings.append(("total", time.perf_counter() - t0))
        md, ht = self.write_report()
        log(f"done in {time.perf_counter() - t0:,.0f} s: {md}, {ht}")
        return md, ht

    def _timed(self, what: str, fn: Any) -> None:
        t = time.perf_counter()
        fn()
        self.timings.append((what, time.perf_counter() - t))

    def _trace(self, name: str) -> Any:
        from kvdm.traces import load

        return load(name, self.cfg.trace_options)

    def trace_figures(self) -> None:
        from kvdm.experiments.figures.traces import fig1a, fig1b, fig2a, fig2b
        from kvdm.traces import compute_stats

        for name in self.cfg.traces:
            log(f"trace figures of {name}")
            trace = self._trace(name)
            self.stats[trace.name] = compute_stats(trace)
            self.trace_figs[trace.name] = [f(trace, self.figs) for f in (fig1a, fig1b, fig2a, fig2b)]

    def stream(self, name: str) -> Any:
        """The Fig. 3 operation stream of a trace (mapped once, shared by every run)."""
        if name not in self._streams:
            from kvdm.traces import map_trace

            log(f"mapping {name}: paper mapping, sha256 keys, {self.cfg.range_semantics} ranges")
            self._streams[name] = map_trace(self._trace(name), "paper", "sha256", "timed",
                                            range_semantics=self.cfg.range_semantics)
        return self._streams[name]

    @contextmanager
    def redis_server(self) -> Iterator[None]:
        """The one Redis server (or cluster) every Redis run of the block uses: started here
        unless the options name a url."""
        replays = {"fig3", "reference", "load", "engine"} & set(self.cfg.steps)
        if "redis" not in self.cfg.backends or not replays:
            yield
            return
        from kvdm.index import redis_session

        with redis_session(self.cfg.redis_options) as options:
            self._redis = options
            try:
                yield
            finally:
                self._redis = dict(self.cfg.redis_options)

    @contextmanager
    def memory_node(self) -> Iterator[None]:
        """With ``same_substrate`` and no memory node given: a ``kvdm memnode serve --transport
        verbs`` process on ``verbs_device``, serving every native run of the block."""
        replays = {"fig3", "load", "engine"} & set(self.cfg.steps)
        native = [b for b in self.cfg.backends if remote_memory(b)]
        if not (self.cfg.same_substrate and replays and native) or self.cfg.transport.memory_nodes:
            yield
            return
        with verbs_memory_node(self.cfg.verbs_device, self.cfg.verbs_gid_index, self.cfg.transport.node_size,
                               self.out / "memnode.log") as uri:
            self.memory_node_uri = uri
            self.transport = self.cfg.transport.with_nodes([uri])
            try:
                yield
            finally:
                self.transport = self.cfg.transport

    def _fresh_redis(self) -> None:
        """Empty the shared server before a run when this reproduction owns it."""
        if self.cfg.redis_options.get("url") is None and self._redis.get("url"):
            from kvdm.index import flush_redis as flush

            flush(self._redis["url"], int(self._redis.get("cluster", 0)) > 0)

    def index_spec(self, backend: str, run_name: str = "") -> IndexSpec:
        """A backend's IndexSpec; Redis on the shared server, keyed under the run's namespace."""
        options: dict[str, Any] = {}
        if remote_memory(backend) and self.cfg.cache_mb is not None:
            options["cache_mb"] = self.cfg.cache_mb
        if remote_memory(backend) and self.transport.memory_nodes:
            # a node that outlives one run: each run its own index (a fresh root slot), not an earlier run's
            slot = next(self._root_slots, None)
            if slot is None:
                raise ValueError(f"more native runs than the root slots {FIRST_ROOT_SLOT}..{LAST_ROOT_SLOT} of the "
                                 "memory node: run fewer steps or backends per reproduction")
            options["root_slot"] = slot
        if backend == "redis":
            options.update(self._redis)
            if run_name:
                options["namespace"] = f"{run_name}:"
        return IndexSpec(backend, 32, options)

    def replay_run(self, run_name: str, trace: str, backend: str, role: str, **kw: Any) -> Run:
        """One replay into OUT/runs/run_name (or the stored one with ``resume``)."""
        d = self.runs_dir / run_name
        if self.cfg.resume and (d / "run.json").exists():
            log(f"{run_name}: kept from an earlier run")
            return load_runs([d])[0]
        stream = self.stream(trace)
        if backend == "redis":
            self._fresh_redis()
        rc = ReplayConfig(trace=trace, index=self.index_spec(backend, run_name), transport=self.transport,
                          mapping="paper", key_scheme="sha256", inserts="timed", name=run_name,
                          range_semantics=self.cfg.range_semantics, **kw)
        log(f"{run_name}: {backend}, {rc.clients} client(s), mode {rc.mode}"
            + (f", at most {rc.duration_s:g} s" if rc.duration_s else "") + f" ({stream.n_ops:,} ops in the trace)")
        t = time.perf_counter()
        res = replay(rc, stream)
        res.meta["reproduce"] = {"role": role, "range_semantics": self.cfg.range_semantics,
                                 "latency_note": self.cfg.latency_note(), "wall_s": time.perf_counter() - t,
                                 "offered_ops_s": offered_rate(stream, rc.mode, int(res.meta["run"]["requests_done"]))}
        res.write(d)
        return Run(d, RunResults.read(d))

    def fig3_runs(self) -> None:
        cfg = self.cfg
        mode = cfg.fig3_mode
        suffix = "" if mode == "closed" else "-" + mode.replace("compressed:", "x")
        for trace in cfg.fig3_traces:
            tname = self.stream(trace).trace_name
            runs = [self.replay_run(f"fig3-{tname}-{b}{suffix}", trace, b, "fig3", clients=1, mode=mode,
                                    warmup_min=cfg.warmup_min, bin_min=cfg.bin_min) for b in cfg.backends]
            self.fig3[tname] = runs
            note = (f"{cfg.latency_note()}.\n{cfg.mode_note()}.\n32 B SHA-256 keys, 8 B values; "
                    f"range = {_range_note(cfg.range_semantics)}")
            ref = (PAPER_REDIS_P99_US, "paper: Redis p99 > 100 µs") if "redis" in cfg.backends else None
            tag = f"{tname}{suffix}"
            self.fig3_figs[tname] = [
                plot_runs(runs, "p99", "range", "bin", self.figs / f"fig3a_{tag}.png", reference=ref, log_y=True,
                          title=f"Fig. 3a: range-query p99 per {cfg.bin_min:g}-min bin ({tname})", note=note),
                plot_runs(runs, "p99", "get", "bin", self.figs / f"fig3b_{tag}.png", reference=ref, log_y=True,
                          title=f"Fig. 3b: get p99 per {cfg.bin_min:g}-min bin ({tname})", note=note),
                plot_runs(runs, "rtts", "get", "op", self.figs / f"cost_rtts_{tag}.png",
                          title=f"round trips per op ({tname}, Fig. 3 runs)", note=cfg.latency_note()),
                plot_runs(runs, "bytes", "get", "op", self.figs / f"cost_bytes_{tag}.png", log_y=True,
                          title=f"bytes read per op ({tname}, Fig. 3 runs; redis: not counted)",
                          note=cfg.latency_note()),
            ]

    def load_runs(self) -> None:
        """Per backend: the closed-loop client sweep and the open-loop sweep of paces, up to unpaced.
        The closed-loop 1-client point (also the open-loop sweep's unpaced end) is the Fig. 3 run
        itself when Fig. 3 ran closed loop on this trace: one setup, measured once."""
        cfg = self.cfg
        trace = cfg.fig3_traces[0]
        tname = self.stream(trace).trace_name
        common = {"duration_s": cfg.load_duration_s, "warmup_min": 0.0, "bin_min": cfg.bin_min}
        fig3 = {r.config["index"]["name"]: r for r in self.fig3.get(tname, [])} if cfg.fig3_mode == "closed" else {}
        for b in cfg.backends:
            for c in sorted({1, *cfg.clients}):
                run = fig3.get(b) if c == 1 else None
                self.load["closed"].append(run or self.replay_run(f"closed-{tname}-{b}-c{c}", trace, b, "load-closed",
                                                                  clients=c, mode="closed", **common))
            for x in cfg.compress:
                self.load["compressed"].append(self.replay_run(f"compressed-{tname}-{b}-x{x:g}", trace, b,
                                                               "load-compressed", clients=1,
                                                               mode=f"compressed:{x:g}", **common))
        note = (f"{cfg.latency_note()}.\nEach point at most {cfg.load_duration_s:g} s of wall time from the trace's "
                "start, no warm-up (the 1-client closed-loop point: the Fig. 3 run where it ran closed loop); "
                f"32 B SHA-256 keys; {self.cores} cores")
        for op in ("get", "range"):
            self.load_figs.append(plot_runs(
                self.load["closed"], "p99", op, "throughput", self.figs / f"load_closed_{op}_{tname}.png",
                log_y=True, note=note, throughput=achieved_rate, tag=self.point_tag,
                title=f"load curve, closed loop ({', '.join(map(str, sorted({1, *cfg.clients})))} clients): "
                      f"{op} p99 ({tname})"))
            self.load_figs.append(plot_rate_sweep(
                self.open_loop_points(), op, self.figs / f"load_open_{op}_{tname}.png", note=note,
                title=f"load curve, open loop from real time (x1) to unpaced, 1 client: {op} ({tname})"))

    @property
    def cores(self) -> int:
        """The cores this process may run on."""
        return len(os.sched_getaffinity(0))

    def oversubscribed(self, run: Run) -> bool:
        """Whether a run had more busy processes than cores: its clients, and the redis-server this
        reproduction started (it serves on this machine too)."""
        local_server = run.config["index"]["name"] == "redis" and self.cfg.redis_options.get("url") is None
        return int(run.config["clients"]) + int(local_server) > self.cores

    def point_tag(self, run: Run) -> str:
        """A load point's name on the figures: N clients (oversubscribed ones say so), the pace, or unpaced."""
        c = run.config
        if c["mode"] != "closed":
            return "x" + str(c["mode"]).split(":", 1)[1]
        return f"{c['clients']}c" + (" oversubscribed" if self.oversubscribed(run) else "")

    def open_loop_points(self) -> list[LoadPoint]:
        """Each backend's open-loop sweep, slowest pace first, ending with the unpaced (closed-loop,
        1-client) run."""
        points = []
        for b in self.cfg.backends:
            paced = sorted((r for r in self.load["compressed"] if r.config["index"]["name"] == b),
                           key=lambda r: parse_mode(r.config["mode"]))
            unpaced = [r for r in self.load["closed"] if r.config["index"]["name"] == b and r.config["clients"] == 1]
            for r in paced + unpaced[:1]:
                got = r.results.meta.get("reproduce", {}).get("offered_ops_s")
                offered, achieved = math.nan if got is None else float(got), achieved_rate(r)
                points.append(LoadPoint(b, self.point_tag(r) if r in paced else "unpaced", r, offered, achieved,
                                        math.isnan(offered) or achieved >= KEEPS_UP * offered))
        return points

    def chain_spec(self, backend: str) -> IndexSpec:
        """A backend's IndexSpec for the engine step, as ``kvdm bench index --op chain`` sets it up:
        Redis at its best protocol (each call's commands in one round trip unless --redis-pipeline
        says otherwise; its prefix mode is swept as LPM strategies)."""
        spec = replace(self.index_spec(backend, f"engine-{backend}"), key_bytes=ENGINE_KEY_BYTES)
        if backend == "redis":
            options = {k: v for k, v in spec.options.items() if k != "prefix_mode"}
            options.setdefault("range_mode", "zset")  # mget needs 8-byte id keys
            spec = replace(spec, options=options)
        return spec

    def chain_config(self, backends: tuple[str, ...], out: Path) -> bc.ChainConfig:
        """The engine step's sweep of ``backends`` into ``out``."""
        cfg = self.cfg
        specs = [self.chain_spec(b) for b in backends]
        from kvdm.experiments.replay.notes import redis_note

        red = next((s for s in specs if s.name == "redis"), None)
        notes = [redis_note(red.options)] if red is not None else []
        # memory or a server that outlives the run may hold an earlier run's chains: number ours apart
        kept = bool(self.transport.memory_nodes) or any(s.options.get("url") for s in specs if s.name == "redis")
        return bc.ChainConfig(specs, self.transport, cfg.engine_lengths, bc.ALL_STRATEGIES, cfg.engine_chains,
                              cfg.engine_keys, "random", out=str(out), notes=notes,
                              key_base=bc.fresh_key_base() if kept else bc.CHAIN_KEY_BASE)

    def engine_run(self, backend: str) -> RunResults:
        """One backend's chain sweep into OUT/runs/engine-<backend> (or the stored one with ``resume``)."""
        d = self.runs_dir / f"engine-{backend}"
        if self.cfg.resume and (d / "run.json").exists():
            log(f"engine-{backend}: kept from an earlier run")
            return RunResults.read(d)
        cc = self.chain_config((backend,), d)
        if backend == "redis":
            self._fresh_redis()
        log(f"engine-{backend}: LPM ({', '.join(bc.strategies_for(backend, cc.strategies))}) and chain insert, "
            f"N = {', '.join(map(str, cc.lengths))}, {cc.chains:,} chains per N, {cc.keys:,} background keys")
        t = time.perf_counter()
        res = bc.run_chain(cc, quiet=True)
        res.meta["reproduce"] = {"role": "engine", "latency_note": self.cfg.latency_note(),
                                 "wall_s": time.perf_counter() - t}
        res.write(d)
        bad = res.rows[res.rows["mismatches"] > 0]
        if not bad.empty:
            log(f"engine-{backend}: WARNING: {int(bad['mismatches'].sum())} prefix matches differ from the "
                "preloaded truth (see the report)")
        return RunResults.read(d)

    def engine_runs(self) -> None:
        for b in self.cfg.backends:
            self.engine[b] = self.engine_run(b)
        self.draw_engine()

    def draw_engine(self) -> None:
        """The engine figure from the stored runs (p99 per call against N, LPM and insert panels)."""
        rows = pd.concat([r.rows for r in self.engine.values()], ignore_index=True)
        first = next(iter(self.engine.values())).meta["config"]
        native = [b for b in self.engine if remote_memory(b)]
        t = self.engine[native[0]].meta["config"]["transport"] if native else None
        merged = bc.ChainConfig([IndexSpec(b, ENGINE_KEY_BYTES, {}) for b in self.engine],
                                TransportConfig(**t) if t else self.cfg.transport, chains=first["chains"],
                                keys=first["keys"], matched=first["matched"])
        note = bc.figure_note(merged) + f"; {ENGINE_KEY_BYTES} B keys"
        if "redis" in self.engine:
            note += "\nredis: a real redis-server over this machine's loopback TCP (not the modelled RTT)"
        self.engine_fig = plot_chain(rows, self.figs / "engine_chain_p99.png", note=note,
                                     title="the engine's view: p99 per call against chain length N "
                                           "(longest prefix match per strategy; chain insert)")

    def reference_run(self) -> None:
        """The Redis reference on the shared server (OUT/runs/redis-reference.json; kept with ``resume``)."""
        path = self.runs_dir / "redis-reference.json"
        if self.cfg.resume and path.exists():
            log("redis reference: kept from an earlier run")
            self.redis_reference = json.loads(path.read_text())
            return
        self._fresh_redis()
        cfg = self.cfg
        log(f"redis reference: redis-benchmark -c 1 and kvdm's C loop, GET of the same kind of keys, "
            f"{cfg.reference_rounds} interleaved rounds of {cfg.reference_requests:,} requests each; then "
            "redis-benchmark -P 16 and kvdm through redis-py, on the Fig. 3 server")
        self.redis_reference = redis_reference(self._redis, cfg.reference_requests, cfg.reference_rounds)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.redis_reference, indent=1))

    # ---- report --------------------------------------------------------------------------
    def write_report(self) -> tuple[Path, Path]:
        from .report import build_report

        rep: Report = build_report(self)
        return rep.write(self.out)


def achieved_rate(run: Run) -> float:
    """Ops per second a run delivered: every op it executed over its wall time (warm-up included,
    unlike the whole-period rows, so a run with warm-up bins compares with one without)."""
    r = run.results.meta["run"]
    return float(r["ops_done"]) / max(float(r["wall_s"]), 1e-9)


def offered_rate(stream: Any, mode: str, requests_done: int) -> float | None:
    """The op rate an open-loop replay in ``mode`` offered over the requests it got through: their
    ops over their due times (trace time / the pace); None for closed loop, which sets its own pace."""
    speed = parse_mode(mode)
    if speed == 0 or requests_done < 2:
        return None
    ops = int(stream.req_offsets[requests_done] - stream.req_offsets[0])
    span_s = float(stream.req_timestamp_ms[requests_done - 1] - stream.req_timestamp_ms[0]) / 1e3 / speed
    return ops / span_s if span_s > 0 else None


@contextmanager
def verbs_memory_node(device: str | None, gid_index: int | None, size: int, log_path: Path) -> Iterator[str]:
    """A verbs memory node for the block: ``kvdm memnode serve --transport verbs`` on ``device``
    (loopback handshake, any free port; its stderr into ``log_path``), run in a child forked from
    this process (the command's own code, :func:`kvdm.transport.serve_memory_node`, without a
    second interpreter start: tens of seconds under TCG). Yields its URI; stops it with SIGTERM
    after."""
    from kvdm.transport import serve_memory_node

    shown = f"kvdm memnode serve --transport verbs --size {size} --port 0 --listen 127.0.0.1" + (
        f" --device {device}" if device else "") + (f" --gid-index {gid_index}" if gid_index is not None else "")
    log(f"starting a verbs memory node: {shown}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the node: serves until SIGTERM, never returns into the reproduction
        code = 70
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (lives until _exit)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            code = serve_memory_node("verbs", size, device=device, gid_index=gid_index, port=0, listen="127.0.0.1")
        except BaseException:  # noqa: BLE001 (whatever stops the node goes to its log)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    out = os.fdopen(r)  # open until the node stops: it may still write to its stdout
    try:
        line = out.readline()  # the node prints its URI when it serves (or exits)
        m = re.search(r"serving (verbs://\S+)", line)
        if m is None:
            _, status = os.waitpid(pid, 0)
            pid = 0
            why = log_path.read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the verbs memory node did not start (`{shown}`, exit status "
                               f"{os.waitstatus_to_exitcode(status)}): {why[-1] if why else repr(line)}")
        log(f"memory node serving {m.group(1)} (pid {pid})")
        yield m.group(1)
    finally:
        if pid:
            _stop(pid)
        out.close()


def _stop(pid: int, timeout_s: float = 60.0) -> None:
    """SIGTERM a child of ours and reap it (SIGKILL after ``timeout_s``)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _range_note(semantics: str) -> str:
    if semantics == "scan":
        return "a scan from the run's first key returning at most the run's length entries"
    return "[min, max] of the run's keys, unlimited (on SHA-256 keys ~69,000 entries for an 18-block run)"


def reproduce(cfg: ReproduceConfig) -> tuple[Path, Path]:
    """Run a reproduction; returns the paths of report.md and report.html."""
    return Reproduction(cfg).run()
