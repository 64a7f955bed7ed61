"""kvdm.experiments.bench: the benchmarks that are more than a loop: the engine's view of an index
(``chain``: LPM and chain insert swept over the chain length) and the token layer (``tokens``;
``hash_ab``: its chunk keys per prompt against hashlib and an earlier revision)."""
