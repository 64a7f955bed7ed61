"""``kvdm bench tokens``: the token layer (:class:`kvdm.index.tokens.TokenIndex`) at prompt scale.

What an engine pays per prompt to ask "how much of this prompt is cached?": hashing the prompt
into chunk keys, then one prefix match, swept over the prompt length and the backends.

* **Workload.** Per prompt length L (``--lengths``) and backend, ``--prompts`` P prompts of L
  random token ids (below 128,256, seeded) are drawn, as int64 numpy arrays, int64 CPU torch
  tensors or lists of ints (``--tokens-as``: what the engine hands over). The first
  ``--cached`` share of each prompt (rounded down to whole chunks) is stored first
  (``TokenIndex.store``: hash + one put), then every prompt is looked up
  (``TokenIndex.lookup``: hash + one prefix match) and its answer checked against what was
  stored (``mismatches``; 0 or the command fails). Then all P prompts are looked up in one
  ``lookup_many`` call (one batch of every prompt's keys).
* **Timing.** Per prompt, in Python: the hashing (``chunk_keys``, the key computation that
  ``lookup``/``store``/``retrieve_mask`` run: reading the ids and the C chain) and the index
  call (native indexes: the C call's own time, with ``--latency-model virtual`` the transport's
  modelled time in place of its execution of the verbs; Redis and others: around the client call). A prompt's latency
  is their sum. prompts/s and tokens/s are 1 / mean of that.
* **Reference.** ``hashlib.sha256`` over each prompt's token bytes (one call, 4 bytes per
  token, the bytes made beforehand), timed the same way: its p50 per prompt beside the hashing
  p50, and its Mtokens/s beside the chain's hashing rate. The chain hashes a little more (each
  chunk also hashes its parent's 32-byte digest and is padded on its own: at 256-token chunks
  17 SHA-256 blocks per 16 of token bytes), so equal rates mean the C chain runs at SHA-256's
  speed.
* **Output.** One table, the rows in ``results.parquet``/``results.csv`` and ``run.json`` in
  ``--out``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kvdm.experiments.replay.engine import backend_session, open_client
from kvdm.experiments.replay.metrics import Histogram
from kvdm.experiments.replay.results import RunResults, machine_description
from kvdm.index import IndexSpec, TokenIndex, remote_memory
from kvdm.traces import VOCAB
from kvdm.transport import TransportConfig, virtual_charge

LENGTHS = (1024, 4096, 16384, 65536, 131072)
TOKEN_FORMS = ("numpy", "torch", "list")
RESULTS_KIND = "bench-tokens"


@dataclass
class TokensConfig:
    """A ``kvdm bench tokens`` run."""

    indexes: list[IndexSpec]
    transport: TransportConfig = field(default_factory=TransportConfig)
    lengths: tuple[int, ...] = LENGTHS
    prompts: int = 32
    chunk: int = 256
    key_scheme: str = "sha256"
    cached: float = 0.5
    seed: int = 1
    out: str = ""
    tokens_as: str = "numpy"

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise ValueError(f"--prompts must be a positive count, got {self.prompts}")
        if not 0.0 <= self.cached <= 1.0:
            raise ValueError(f"--cached must be a share in 0..1, got {self.cached}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"--lengths must be positive token counts, got {self.lengths}")
        if self.tokens_as not in TOKEN_FORMS:
            raise ValueError(f"--tokens-as must be one of {', '.join(TOKEN_FORMS)}, got {self.tokens_as!r}")


def as_form(prompt: np.ndarray, form: str) -> Any:
    """One int64 prompt as the engine would pass it (``TOKEN_FORMS``)."""
    if form == "torch":
        import torch

        return torch.from_numpy(prompt)
    return prompt.tolist() if form == "list" else prompt


@dataclass
class _Timed:
    hash_ns: np.ndarray
    call_ns: np.ndarray
    answers: np.ndarray
    hashlib_ns: np.ndarray  # zeros unless asked for


def _time_prompts(tix: TokenIndex, prompts: list[Any], virtual: bool, call: Any,
                  reference: list[np.ndarray] | None = None) -> _Timed:
    """Hash each prompt, then ``call(keys, i)``; each part timed per prompt. With ``reference``
    (the prompts' ids), ``hashlib.sha256`` over each one's uint32 LE bytes (made beforehand) is
    timed beside its hashing, in the same loop and so in the same state of the caches: first
    on even prompts, second on odd ones."""
    index = tix.index
    names = index.counter_names()
    charge = virtual_charge(names) if virtual else None
    clock = time.perf_counter_ns
    sha256 = hashlib.sha256
    n = len(prompts)
    hash_ns, call_ns, answers, ref_ns = (np.zeros(n, np.int64) for _ in range(4))
    for i, p in enumerate(prompts):
        data = reference[i].astype("<u4").tobytes() if reference is not None else None
        if data is not None and i % 2 == 0:
            t = clock()
            sha256(data).digest()
            ref_ns[i] = clock() - t
        t0 = clock()
        keys = tix.chunk_keys(p)
        t1 = clock()
        if data is not None and i % 2 == 1:
            t = clock()
            sha256(data).digest()
            ref_ns[i] = clock() - t
        v0 = charge(index.counter_vector()) if charge else 0
        index.last_call_ns = None
        t2 = clock()
        answers[i] = call(keys, i)
        elapsed = clock() - t2 if index.last_call_ns is None else index.last_call_ns
        if charge:
            elapsed += charge(index.counter_vector()) - v0
        hash_ns[i], call_ns[i] = t1 - t0, elapsed
    return _Timed(hash_ns, call_ns, answers, ref_ns)


def bench_backend(cfg: TokensConfig, spec: IndexSpec) -> tuple[list[dict[str, Any]], dict[str, Histogram]]:
    """Every prompt length on one backend (its own memory nodes or server for the duration)."""
    rows: list[dict[str, Any]] = []
    hists: dict[str, Histogram] = {}
    virtual = remote_memory(spec.name) and cfg.transport.latency_model == "virtual"
    with backend_session(spec, cfg.transport) as (uris, shared), open_client(shared, cfg.transport, uris) as index:
        tix = TokenIndex(index, chunk_size=cfg.chunk, key_scheme=cfg.key_scheme)
        for n, length in enumerate(cfg.lengths):
            rng = np.random.default_rng([cfg.seed, n])
            ids = [rng.integers(0, VOCAB, length, dtype=np.int64) for _ in range(cfg.prompts)]
            prompts = [as_form(p, cfg.tokens_as) for p in ids]
            stored = int(length * cfg.cached) // cfg.chunk * cfg.chunk
            base = np.uint64(n) << np.uint64(32)

            def put(keys: np.ndarray, i: int, base: np.uint64 = base) -> int:
                index.put(keys, base + np.arange(len(keys), dtype=np.uint64))
                return len(keys)

            store = _time_prompts(tix, [p[:stored] for p in prompts], virtual, put) if stored else None
            look = _time_prompts(tix, prompts, virtual, lambda keys, i: index.prefix_match(keys) if len(keys) else 0,
                                 reference=ids)
            got = np.minimum(look.answers * cfg.chunk, length)
            t = time.perf_counter_ns()
            many = tix.lookup_many(prompts)
            many_ns = time.perf_counter_ns() - t
            ref = look.hashlib_ns
            total = look.hash_ns + look.call_ns
            h = Histogram()
            h.record(total)
            hists[f"{spec.name}/{length}/lookup"] = h
            mean_s = float(total.mean()) / 1e9
            rows.append({
                "index": spec.name, "tokens": length, "prompts": cfg.prompts, "chunks": -(-length // cfg.chunk),
                "prompts_per_s": 1.0 / mean_s, "mtokens_per_s": length / mean_s / 1e6,
                "hash_us_p50": float(np.median(look.hash_ns)) / 1e3,
                "hashlib_us_p50": float(np.median(ref)) / 1e3,
                "lookup_us_p50": float(np.median(look.call_ns)) / 1e3,
                "p50_us": h.percentile(50) / 1e3, "p99_us": h.percentile(99) / 1e3,
                "hash_share": float(look.hash_ns.sum()) / float(total.sum()),
                "hash_mtokens_per_s": length * cfg.prompts / (float(look.hash_ns.sum()) / 1e9) / 1e6,
                "hashlib_mtokens_per_s": length * cfg.prompts / (float(ref.sum()) / 1e9) / 1e6,
                "store_us_p50": float(np.median(store.hash_ns + store.call_ns)) / 1e3 if store else 0.0,
                "batch_prompts_per_s": cfg.prompts / (many_ns / 1e9),
                "cached_tokens": stored,
                "mismatches": int((got != stored).sum()) + sum(1 for m in many if m != stored),
                "virtual_added": virtual,
            })
    return rows, hists


COLUMNS = (("index", "index", "{}"), ("tokens", "tokens", "{:,}"), ("prompts_per_s", "prompts/s", "{:,.0f}"),
           ("mtokens_per_s", "Mtok/s", "{:,.1f}"), ("hash_us_p50", "hash us", "{:,.1f}"),
           ("hashlib_us_p50", "hashlib us", "{:,.1f}"), ("lookup_us_p50", "lookup us", "{:,.1f}"),
           ("p50_us", "p50 us", "{:,.1f}"), ("p99_us", "p99 us", "{:,.1f}"),
           ("hash_mtokens_per_s", "hash Mtok/s", "{:,.0f}"), ("hashlib_mtokens_per_s", "hashlib Mtok/s", "{:,.0f}"),
           ("store_us_p50", "store us", "{:,.1f}"), ("batch_prompts_per_s", "batch prompts/s", "{:,.0f}"),
           ("mismatches", "mismatch", "{}"))


def table(rows: list[dict[str, Any]]) -> str:
    """The printed table."""
    cells = [[title for _, title, _ in COLUMNS]] + [[fmt.format(r[k]) for k, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells)


def echo(cfg: TokensConfig) -> list[str]:
    t = cfg.transport
    return [f"backends {', '.join(s.name for s in cfg.indexes)}; {cfg.prompts} prompts per length, chunks of "
            f"{cfg.chunk} tokens, keys {cfg.key_scheme}, {cfg.cached:.0%} of each prompt stored first, "
            f"token ids as {'int64 ' if cfg.tokens_as != 'list' else ''}{cfg.tokens_as}",
            f"native indexes: {t.describe()}"]


def run_tokens(cfg: TokensConfig, quiet: bool = False) -> RunResults:
    """The sweep; prints the table unless ``quiet``."""
    say = (lambda s: None) if quiet else print
    for line in echo(cfg):
        say(f"# {line}")
    rows: list[dict[str, Any]] = []
    hists: dict[str, Histogram] = {}
    t0 = time.perf_counter()
    for spec in cfg.indexes:
        r, h = bench_backend(cfg, spec)
        rows += r
        hists.update(h)
    say(table(rows))
    say("# per prompt (us: p50): hash = chunk keys (reading the ids + the C SHA-256 chain), lookup = one prefix match "
        "(native: the C call" + (" + modelled transport time" if cfg.transport.latency_model == "virtual" else "")
        + "; redis: around the client call); prompts/s and Mtok/s from their mean sum; batch = one lookup_many "
        "of every prompt; hashlib = hashlib.sha256 over the same token bytes (4 per id), one call per prompt")
    meta = {"kind": RESULTS_KIND, "config": asdict(cfg) | {"echo": echo(cfg)}, "machine": machine_description(),
            "run": {"wall_s": time.perf_counter() - t0}}
    return RunResults(pd.DataFrame(rows), meta, hists)


__all__ = ["LENGTHS", "TOKEN_FORMS", "TokensConfig", "as_form", "run_tokens"]
