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

import importlib
from typing import Any

# The public face, imported on first use (PEP 562), so importing kvdm.traces stays cheap.
_LAZY: dict[str, str] = {
    "ARRIVALS": ".loaders",
    "FIXTURE": ".registry",
    "FORMATS": ".loaders",
    "FetchError": ".registry",
    "GenConfig": ".generators",
    "INSERT_MODES": ".mapping",
    "KEY_SCHEMES": ".mapping",
    "KINDS": ".generators",
    "KNOWN": ".registry",
    "MAPPINGS": ".mapping",
    "OP_GET": ".mapping",
    "OP_INSERT": ".mapping",
    "OP_NAMES": ".mapping",
    "OP_PREFIX": ".mapping",
    "OP_RANGE": ".mapping",
    "OpStream": ".mapping",
    "PAPER": ".characterise",
    "RANGE_SEMANTICS": ".mapping",
    "RUNS_TEST_VARIANT": ".characterise",
    "Trace": ".loaders",
    "TraceFormatError": ".loaders",
    "TraceOptions": ".loaders",
    "VOCAB": ".tokens",
    "compute_stats": ".characterise",
    "fetch": ".registry",
    "find": ".registry",
    "generate": ".generators",
    "key_bytes_of": ".mapping",
    "load": ".registry",
    "map_trace": ".mapping",
    "search_dirs": ".registry",
    "token_stream": ".tokens",
    "write_mooncake": ".loaders",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = module.partition(":")  # ".module" or ".module:its_name"
    value = getattr(importlib.import_module(module, __name__), attr or name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
