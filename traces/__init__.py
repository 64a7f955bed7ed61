"""kvdm.traces: trace loaders, synthetic generators, trace -> operation mapping, characterisation.

* :mod:`kvdm.traces.loaders`: Mooncake / Bailian JSONL (gzip transparent) -> :class:`Trace` (CSR).
* :mod:`kvdm.traces.registry`: named traces (``resolve``, ``load``) and ``fetch`` with sha256.
* :mod:`kvdm.traces.generators`: seeded rag / agent / chat / ycsb workloads in the Mooncake format.
* :mod:`kvdm.traces.mapping`: ``map_trace`` -> :class:`OpStream`, what a replay feeds an index.
* :mod:`kvdm.traces.characterise`: hit ratios, sequentiality, runs test, LRU, reuse, popularity.

Typical use::

    from .registry import load
    from .mapping import map_trace
    ops = map_trace(load("conversation"), mapping="paper", key_scheme="sha256", inserts="timed")
"""
