"""kvdm.traces: trace loaders, synthetic generators, trace -> operation mapping, characterisation.

* :mod:`kvdm.traces.loaders`: Mooncake / Bailian JSONL and CSV (gzip transparent) -> :class:`Trace` (CSR).
* :mod:`kvdm.traces.registry`: named traces (``resolve``, ``load``) and ``fetch`` with sha256.
* :mod:`kvdm.traces.generators`: seeded rag / agent / chat / ycsb workloads in the Mooncake format.
* :mod:`kvdm.traces.mapping`: ``map_trace`` -> :class:`OpStream`, what a replay feeds an index.
* :mod:`kvdm.traces.tokens`: prompts synthesised from ``hash_ids``, keyed per chunk (``--tokens``).
* :mod:`kvdm.traces.characterise`: hit ratios, sequentiality, runs test, LRU, reuse, popularity.

Typical use (other folders import from here, never from the modules)::

    from kvdm.traces import load, map_trace
    ops = map_trace(load("conversation"), mapping="paper", key_scheme="sha256", inserts="timed")
"""

from __future__ import annotations

from .characterise import PAPER, RUNS_TEST_VARIANT, compute_stats
from .generators import KINDS, GenConfig, generate
from .loaders import ARRIVALS, FORMATS, Trace, TraceFormatError, TraceOptions, write_mooncake
from .mapping import (
    INSERT_MODES,
    KEY_SCHEMES,
    MAPPINGS,
    OP_GET,
    OP_INSERT,
    OP_NAMES,
    OP_PREFIX,
    OP_RANGE,
    RANGE_SEMANTICS,
    OpStream,
    key_bytes_of,
    map_trace,
)
from .registry import FIXTURE, KNOWN, FetchError, fetch, find, load, search_dirs
from .tokens import VOCAB, token_stream

__all__ = [
    "ARRIVALS", "FIXTURE", "FORMATS", "INSERT_MODES", "KEY_SCHEMES", "KINDS", "KNOWN", "MAPPINGS", "OP_GET",
    "OP_INSERT", "OP_NAMES", "OP_PREFIX", "OP_RANGE", "PAPER", "RANGE_SEMANTICS", "RUNS_TEST_VARIANT", "FetchError",
    "GenConfig", "OpStream", "Trace", "TraceFormatError", "TraceOptions", "VOCAB", "compute_stats", "fetch", "find",
    "generate", "key_bytes_of", "load", "map_trace", "search_dirs", "token_stream", "write_mooncake",
]
