"""kvdm.index: one Python API over every index backend, and the backend registry.

    idx = kvdm.index.open("chime", transport=ctx, key_bytes=32, cache_mb=100)
    values, found = idx.get(keys)

A backend is a factory ``f(transport, key_bytes, **options) -> Index`` registered under a
name; adding one is one module plus one line in ``_BUILTIN`` (a native index also needs its C and
a few names in experiments/: docs/extending.md, "Adding an index").
Backends are imported lazily so that e.g. Redis is not needed to use the native indexes.
"""

from __future__ import annotations

import importlib
from typing import Any

from .api import KEY_WIDTHS, Index, IndexSpec, RangeNotSupported, as_keys, as_values

# name -> "module:factory" (imported on first use)
_BUILTIN: dict[str, str] = {
    "chime": "kvdm.index.native:open_chime",
    "sherman": "kvdm.index.native:open_sherman",
    "race": "kvdm.index.native:open_race",
    "redis": "kvdm.index.redis_index:open_redis",
    "dict": "kvdm.index.dict_index:open_dict",
}
_registry: dict[str, Any] = {}


def register(name: str, factory: Any) -> None:
    """Register a backend factory ``f(transport, key_bytes, **options) -> Index``."""
    _registry[name] = factory


def available() -> list[str]:
    """Names of every known backend."""
    return sorted(set(_BUILTIN) | set(_registry))


def _factory(name: str) -> Any:
    if name in _registry:
        return _registry[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown index {name!r}; valid: {', '.join(available())}")
    module, attr = _BUILTIN[name].split(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"index backend {name!r} is not available in this build: {exc}") from exc
    _registry[name] = factory
    return factory


def open(name: str, transport: Any = None, key_bytes: int = 8, **options: Any) -> Index:  # noqa: A001
    """Open backend ``name``. ``transport`` is a connected DMContext for native indexes (ignored
    by others)."""
    if key_bytes not in KEY_WIDTHS:
        raise ValueError(f"unsupported key width {key_bytes}; valid: {', '.join(map(str, KEY_WIDTHS))}")
    return _factory(name)(transport, key_bytes, **options)


def open_spec(spec: IndexSpec, transport: Any = None) -> Index:
    """Open the index an :class:`IndexSpec` describes."""
    return open(spec.name, transport, spec.key_bytes, **spec.options)


__all__ = [
    "KEY_WIDTHS", "Index", "IndexSpec", "RangeNotSupported", "as_keys", "as_values", "available",
    "open", "open_spec", "register",
]
