"""kvdm.index: one Python API over every index backend, and the backend registry.

    idx = kvdm.index.open("chime", transport=ctx, key_bytes=32, cache_mb=100)
    values, found = idx.get(keys)

The registry says everything the rest of kvdm needs to know about a backend (:class:`Backend`):
its factory ``f(transport, key_bytes, **options) -> Index``, whether it lives in remote memory
(memory nodes, and a transport context per client), keeps key order, lives inside each client
process, and how a run's session starts and stops its server. The replay engine, the benches,
the plots and the reproduction ask it (:func:`backend`, :func:`backends`) instead of keeping
lists of names. Factories are imported lazily, so e.g. Redis is not needed to use the native
indexes.

Adding a backend: a line in ``_BUILTIN`` here (a native index: ``native="<name>"``, its C
template ``native/<name>.inc``, and its default ``root_slots``; see docs/extending.md); or,
from another package, an entry point in the group ``kvdm.indexes``
whose object is a :class:`Backend` (or a bare factory, with the defaults), found in every
process, the replay's spawned clients included::

    [project.entry-points."kvdm.indexes"]
    toy = "toy_pkg:BACKEND"          # BACKEND = kvdm.index.Backend("toy", "toy_pkg:open_toy")

:func:`register` adds one in this process only (its clients are spawned and would not see it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .api import KEY_WIDTHS, Index, IndexSpec, RangeNotSupported, as_keys, as_values

ENTRY_POINT_GROUP = "kvdm.indexes"


@dataclass(frozen=True)
class Backend:
    """A registered index backend and what it needs.

    ``factory``: ``"module:attr"`` (imported on first use) or the callable itself;
    ``remote_memory``: a remote-memory index (memory nodes for the run, a transport context per
    client, the transport's modelled time, the C loop's counters);
    ``ordered``: keeps key order (range queries);
    ``per_client``: lives inside each client process (each client fills its own);
    ``session``: ``"module:attr"`` of a context manager ``session(options) -> options`` that a
    run enters once to start what every client shares (a server) and leaves to stop it;
    ``description``: one line for listings;
    ``native``: the name of a native index's C template, ``native/<native>.inc``, compiled into
    kvdm's extension as ``<native>_k8``/``<native>_k32`` (native/build.py): the entry then needs
    no factory (:class:`kvdm.index.native.NativeIndex` opens it) and is a remote-memory index;
    ``root_slots``: a native index's default root slots on memory node 0 for 8- and 32-byte keys
    (0..63, one pair per native index; ``root_slot=`` overrides them per handle)."""

    name: str
    factory: Any = None
    remote_memory: bool = False
    ordered: bool = True
    per_client: bool = False
    session: str | None = None
    description: str = ""
    native: str | None = None
    root_slots: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.native is not None:
            object.__setattr__(self, "remote_memory", True)  # a native index lives in remote memory
            if self.root_slots is None or len(self.root_slots) != 2:
                raise ValueError(f"native index {self.name!r} needs root_slots=(8-byte keys' slot, 32-byte keys')")
        elif self.factory is None:
            raise ValueError(f"index backend {self.name!r} needs a factory (or native= for a native index)")

    def check_options(self, key_bytes: int, options: dict[str, Any]) -> None:
        """Raise ValueError (naming the option) for options this backend would refuse, before a
        run starts anything: a native index checks all of them here; other backends check
        theirs when they open."""
        if self.native is not None and self.factory is None:
            from .native import c_options
            c_options(self, key_bytes, options)

    def open(self, transport: Any, key_bytes: int, **options: Any) -> Index:
        if self.native is not None and self.factory is None:
            from .native import NativeIndex

            return NativeIndex(self, transport, key_bytes, **options)
        factory = _load(self.factory, self.name) if isinstance(self.factory, str) else self.factory
        return factory(transport, key_bytes, **options)

    def session_manager(self) -> Any:
        """The session context manager, or None."""
        return _load(self.session, self.name) if self.session else None


_BUILTIN: dict[str, Backend] = {b.name: b for b in (
    Backend("chime", native="chime", root_slots=(0, 1),
            description="B+tree, hash-bucketed leaves (CHIME, SOSP'24)"),
    Backend("sherman", native="sherman", root_slots=(2, 3),
            description="B+tree, sorted leaves (Sherman, SIGMOD'22)"),
    Backend("race", native="race", root_slots=(4, 5), ordered=False,
            description="one-sided extendible hashing (RACE, ATC'21): point operations"),
    Backend("redis", "kvdm.index.redis_index:open_redis", session="kvdm.index.redis_server:session",
            description="a real redis-server (or Cluster) over TCP: the baseline"),
    Backend("dict", "kvdm.index.dict_index:open_dict", per_client=True,
            description="a Python dict inside each client: the reference for hits"),
)}
_registry: dict[str, Backend] = {}
_plugins: dict[str, Backend] | None = None


def _load(target: str, name: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"index backend {name!r} is not available in this build: {exc}") from exc


def _entry_points() -> dict[str, Backend]:
    """Backends other packages declare in the ``kvdm.indexes`` entry-point group (read once)."""
    global _plugins
    if _plugins is None:
        found: dict[str, Backend] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break kvdm: it is named when asked for
                found[ep.name] = Backend(ep.name, _broken(ep.name, exc))
                continue
            found[ep.name] = obj if isinstance(obj, Backend) else Backend(ep.name, obj)
        _plugins = found
    return _plugins


def _broken(name: str, exc: Exception) -> Any:
    def factory(*_: Any, **__: Any) -> Index:
        raise ValueError(f"index backend {name!r} (entry point {ENTRY_POINT_GROUP}) failed to load: {exc}")

    return factory


def register(name: str, factory: Any, **capabilities: Any) -> None:
    """Register a backend in this process: ``factory(transport, key_bytes, **options)`` and the
    :class:`Backend` fields (``ordered=False``, ...)."""
    _registry[name] = Backend(name, factory, **capabilities)


def _all() -> dict[str, Backend]:
    return {**_BUILTIN, **_entry_points(), **_registry}


def available() -> list[str]:
    """Names of every known backend."""
    return sorted(_all())


def backend(name: str) -> Backend:
    """The registry entry of ``name`` (ValueError listing the valid names)."""
    found = _all().get(name)
    if found is None:
        raise ValueError(f"unknown index {name!r}; valid: {', '.join(available())}")
    return found


def backends(**capabilities: Any) -> list[str]:
    """Names of the backends whose entries have these field values, e.g.
    ``backends(remote_memory=True)``."""
    return sorted(n for n, b in _all().items() if all(getattr(b, k) == v for k, v in capabilities.items()))


def remote_memory(name: str) -> bool:
    """Whether ``name`` is a remote-memory index (False for a name the registry does not know)."""
    found = _all().get(name)
    return bool(found and found.remote_memory)


def open(name: str, transport: Any = None, key_bytes: int = 8, **options: Any) -> Index:  # noqa: A001
    """Open backend ``name``. ``transport`` is a connected DMContext for remote-memory indexes
    (ignored by others)."""
    if key_bytes not in KEY_WIDTHS:
        raise ValueError(f"unsupported key width {key_bytes}; valid: {', '.join(map(str, KEY_WIDTHS))}")
    return backend(name).open(transport, key_bytes, **options)


def open_spec(spec: IndexSpec, transport: Any = None) -> Index:
    """Open the index an :class:`IndexSpec` describes."""
    return open(spec.name, transport, spec.key_bytes, **spec.options)


# The rest of the public face, imported on first use (PEP 562), so importing kvdm.index stays cheap
# and other folders import from here, never from its modules.
_LAZY: dict[str, str] = {
    "ChunkKeys": ".tokens",
    "NATIVE_OPTIONS": ".native:DEFAULTS",
    "TOKEN_KEY_SCHEMES": ".tokens:KEY_SCHEMES",
    "LPM_STRATEGIES": ".native",
    "LocalLockTable": ".native",
    "PREFIX_MODES": ".redis_modes",
    "RANGE_MODES": ".redis_modes",
    "RedisIndex": ".redis_index",
    "RedisOptions": ".redis_index",
    "TokenIndex": ".tokens",
    "flush_redis": ".redis_server:flush",
    "redis_session": ".redis_server:session",
    "start_redis_servers": ".redis_server:start_servers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = module.partition(":")  # ".module" or ".module:its_name"
    value = getattr(importlib.import_module(module, __name__), attr or name)
    globals()[name] = value
    return value


__all__ = [
    "ENTRY_POINT_GROUP", "KEY_WIDTHS", "Backend", "Index", "IndexSpec", "RangeNotSupported", "as_keys",
    "as_values", "available", "backend", "backends", "open", "open_spec", "register", "remote_memory", *_LAZY,
]
