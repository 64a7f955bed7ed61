"""Seeded synthetic workloads, produced as Mooncake-format traces (512-token blocks).

Every generator builds each prompt as a sequence of *content* blocks and names them the way
Mooncake's ``hash_ids`` do: a block's id identifies its whole prefix (a trie over content),
so two requests share ids exactly as far as their prompts are equal from the start.
Arrivals are a Poisson process at ``rate`` requests/s.

Kinds (:data:`KINDS`):

* ``rag``: a shared system prompt (``system_blocks``), then ``docs_per_request`` documents
  (``doc_blocks`` each) drawn from ``docs`` in random order, then ``query_blocks`` new blocks.
  Reuse stops at the first document that differs in position: what prefix caching gives RAG.
* ``agent``: a long shared tool prompt (``tool_blocks``) + the session's history; each step
  appends 1..2*``step_blocks`` new blocks. ``sessions`` sessions run interleaved; a session ends
  after a geometric number of steps (mean ``mean_turns``) and a new one takes its place.
* ``chat``: multi-turn chat, the same process with a short system prompt (``system_blocks``):
  each turn extends the previous prompt by the previous answer and the new message.
* ``ycsb-uniform`` / ``ycsb-zipf``: ``blocks_per_request`` point keys per request over
  ``keys`` keys, uniform or scrambled Zipf(``theta``) as in YCSB; the ids are the keys
  themselves (no prefix chaining), to compare with the Sherman/CHIME point workloads.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from .loaders import Trace

KINDS = ("rag", "agent", "chat", "ycsb-uniform", "ycsb-zipf")
BLOCK_TOKENS = 512


@dataclass
class GenConfig:
    """Parameters of every generator (each kind reads the ones it documents)."""

    kind: str = "chat"
    requests: int = 1000
    seed: int = 0
    rate: float = 1.0
    system_blocks: int = 2
    docs: int = 200
    doc_blocks: int = 4
    docs_per_request: int = 3
    query_blocks: int = 1
    tool_blocks: int = 32
    sessions: int = 50
    step_blocks: int = 2
    mean_turns: float = 8.0
    keys: int = 100_000
    theta: float = 0.99
    blocks_per_request: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown generator {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.requests < 1 or self.rate <= 0:
            raise ValueError("requests must be >= 1 and rate > 0")


class PrefixIds:
    """Assigns dense ids to prefixes: the id of a block is keyed by (parent id, content)."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, Hashable], int] = {}

    def chain(self, contents: list[Hashable]) -> list[int]:
        out = []
        parent = -1
        for c in contents:
            parent = self._ids.setdefault((parent, c), len(self._ids))
            out.append(parent)
        return out


def _rag(cfg: GenConfig, rng: np.random.Generator) -> list[list[Hashable]]:
    system = [("sys", i) for i in range(cfg.system_blocks)]
    prompts = []
    for r in range(cfg.requests):
        docs = rng.choice(cfg.docs, size=min(cfg.docs_per_request, cfg.docs), replace=False)
        body = [("doc", int(d), c) for d in docs for c in range(cfg.doc_blocks)]
        prompts.append(system + body + [("q", r, k) for k in range(cfg.query_blocks)])
    return prompts


def _sessions(cfg: GenConfig, rng: np.random.Generator, shared: int) -> list[list[Hashable]]:
    prefix = [("shared", i) for i in range(shared)]
    history: list[list[Hashable]] = [[] for _ in range(cfg.sessions)]
    turns_left = rng.geometric(1.0 / max(cfg.mean_turns, 1.0), size=cfg.sessions)
    session_id = list(range(cfg.sessions))
    next_session = cfg.sessions
    prompts = []
    for _ in range(cfg.requests):
        s = int(rng.integers(cfg.sessions))
        if turns_left[s] == 0:
            history[s] = []
            turns_left[s] = rng.geometric(1.0 / max(cfg.mean_turns, 1.0))
            session_id[s] = next_session
            next_session += 1
        step = int(rng.integers(1, 2 * cfg.step_blocks + 1))
        history[s] = history[s] + [("s", session_id[s], len(history[s]) + k) for k in range(step)]
        turns_left[s] -= 1
        prompts.append(prefix + history[s])
    return prompts


def _ycsb(cfg: GenConfig, rng: np.random.Generator) -> list[list[int]]:
    n = cfg.requests * cfg.blocks_per_request
    if cfg.kind == "ycsb-uniform":
        keys = rng.integers(cfg.keys, size=n)
    else:
        weights = 1.0 / np.arange(1, cfg.keys + 1, dtype=np.float64) ** cfg.theta
        cdf = np.cumsum(weights)
        ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        keys = rng.permutation(cfg.keys)[np.minimum(ranks, cfg.keys - 1)]  # scrambled: hot keys spread out
    return keys.reshape(cfg.requests, cfg.blocks_per_request).tolist()


def generate(cfg: GenConfig) -> Trace:
    """Generate the trace described by ``cfg`` (deterministic for a given seed)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.kind.startswith("ycsb"):
        ids = _ycsb(cfg, rng)
    else:
        if cfg.kind == "rag":
            prompts = _rag(cfg, rng)
        else:
            prompts = _sessions(cfg, rng, cfg.tool_blocks if cfg.kind == "agent" else cfg.system_blocks)
        chain = PrefixIds()
        ids = [chain.chain(p) for p in prompts]
    ts = np.floor(np.cumsum(rng.exponential(1000.0 / cfg.rate, size=cfg.requests)))
    trace = Trace.from_lists(ids, timestamps_ms=ts - ts[0], name=cfg.kind, block_tokens=BLOCK_TOKENS)
    # the last block is partial, as in the Mooncake traces: len(hash_ids) == ceil(input / 512)
    trace.input_length = np.maximum(trace.lengths * BLOCK_TOKENS - rng.integers(0, BLOCK_TOKENS,
                                                                                size=cfg.requests), 1)
    trace.output_length = rng.integers(1, 513, size=cfg.requests)
    return trace
