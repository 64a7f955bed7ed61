"""kvdm.native: the C code (dm.h transport, its shm and verbs backends, the indexes) and its
cffi binding. ``ffi`` and ``lib`` are the compiled module; ``check`` turns a dm status into an
exception carrying the C error message. ``chunkkeys`` is the token layer's per-prompt entry
point (``_chunkkeys``, a plain CPython extension: see pyext/chunkkeys.c)."""

from __future__ import annotations

try:
    from . import _chunkkeys as chunkkeys
    from ._kvdm_native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "kvdm's native extension is not built; run `pip install -e .` (or `bash .ci/bootstrap`) "
        f"in the kvdm checkout ({exc})"
    ) from exc

__all__ = ["chunkkeys", "ffi", "lib"]
