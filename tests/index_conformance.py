"""Backend-agnostic conformance suite for the index API (index/api.py).

Every backend runs the same checks:

* a hypothesis model test (:func:`model_test`): a RuleBasedStateMachine drives a fresh index
  and a Python dict side by side with batched get / put / delete / range / range_count /
  prefix_match over a small key universe (so duplicate keys in a batch, overwrites and
  deletes of present keys happen often), for 8- and 32-byte keys. The universe holds keys
  whose byte order differs from their little-endian order (255/256, 0x7f/0x80 bytes), so a
  backend that orders keys wrongly fails. ``range`` is checked only if ``index.ordered``;
  otherwise range and range_count must raise RangeNotSupported naming the backend.
* prefix_match edge cases (:func:`check_prefix_match_edges`): empty input, all present,
  first missing, a gap in the middle (keys after the gap are present but do not count),
  duplicates, and a miss at every position of a 40-key prefix (crossing pipeline and batch
  boundaries).
* key order (:func:`check_key_order`) and :func:`check_range_unsupported`.

Use it from a test module by subclassing :class:`IndexConformance` and providing a fixture
``index_factory`` that returns ``f(key_bytes) -> fresh, empty Index``::

    class TestMyIndex(IndexConformance):
        @pytest.fixture
        def index_factory(self):
            return lambda key_bytes: kvdm.index.open("mine", key_bytes=key_bytes)

or call the functions directly. Each index the suite opens is closed by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from kvdm.index.api import KEY_WIDTHS, Index, RangeNotSupported

IndexFactory = Callable[[int], Index]
Key = Any  # int for 8-byte keys, bytes for 32-byte keys

MAX_KEY8 = 2**64 - 2  # 2**64 - 1 is reserved (+infinity); so is 0
#: how far past ``lo`` a "narrow" range bound reaches
NARROW_SPAN = 48


def key_universe(key_bytes: int) -> list[Key]:
    """A small set of keys (about 50): a dense run of ids plus keys at byte boundaries and
    the extremes, so collisions, runs and ordering mistakes all show up."""
    if key_bytes == 8:
        spread = [255, 256, 257, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, MAX_KEY8]
        return list(range(1, 41)) + spread
    keys = []
    for first in (0x00, 0x01, 0x7F, 0x80, 0xFF):
        for mid in (0x00, 0x80):
            for last in (0x00, 0x01, 0x7F, 0x80, 0xFF):
                k = bytes([first]) + bytes(15) + bytes([mid]) + bytes(14) + bytes([last])
                if any(k):
                    keys.append(k)
    return keys


def bound_universe(key_bytes: int) -> list[Key]:
    """Range bounds: the key universe plus neighbours that are never keys."""
    keys = key_universe(key_bytes)
    if key_bytes == 8:
        return sorted({min(max(k + d, 1), MAX_KEY8) for k in keys for d in (-1, 0, 1)})
    extra = [k[:16] + bytes([0x40]) + k[17:] for k in keys[::3]]
    return sorted(set(keys) | set(extra))


def to_array(keys: list[Key], key_bytes: int) -> np.ndarray:
    """Keys in the API layout (uint64[n] or uint8[n, 32])."""
    if key_bytes == 8:
        return np.array(keys, dtype=np.uint64).reshape(-1)
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32).copy()


def from_array(arr: np.ndarray, key_bytes: int) -> list[Key]:
    """The inverse of :func:`to_array` (checks the layout on the way)."""
    if key_bytes == 8:
        assert arr.dtype == np.uint64 and arr.ndim == 1, \
            f"8-byte keys must be uint64[n], got {arr.dtype}{arr.shape}"
        return [int(k) for k in arr]
    assert arr.dtype == np.uint8 and arr.ndim == 2 and arr.shape[1] == 32, \
        f"32-byte keys must be uint8[n, 32], got {arr.dtype}{arr.shape}"
    return [bytes(r) for r in arr]


def expected_range(model: dict[Key, int], lo: Key, hi: Key, limit: int = 0) -> list[tuple[Key, int]]:
    """What range(lo, hi, limit) must return for ``model``."""
    out = sorted((k, v) for k, v in model.items() if lo <= k <= hi)
    return out[:limit] if limit > 0 else out


def expected_prefix(model: dict[Key, int], keys: list[Key]) -> int:
    for i, k in enumerate(keys):
        if k not in model:
            return i
    return len(keys)


def span_too_wide(lo: Key, hi: Key, key_bytes: int, max_range_span: int | None) -> bool:
    """Whether a backend that enumerates ranges (``max_range_span``) must refuse [lo, hi]."""
    return max_range_span is not None and key_bytes == 8 and hi - lo + 1 > max_range_span


def check_range_unsupported(index: Index, lo: Key, hi: Key) -> None:
    """An unordered index must refuse range and range_count with a clear RangeNotSupported."""
    kb = index.key_bytes
    with pytest.raises(RangeNotSupported) as exc:
        index.range(to_array([lo], kb), to_array([hi], kb))
    assert index.name in str(exc.value) and "range" in str(exc.value), f"unclear message: {exc.value}"
    with pytest.raises(RangeNotSupported):
        index.range_count(to_array([lo], kb), to_array([hi], kb))


def _check_range(index: Index, model: dict[Key, int], lo: Key, hi: Key, limit: int,
                 max_range_span: int | None) -> None:
    kb = index.key_bytes
    if not index.ordered:
        check_range_unsupported(index, lo, hi)
        return
    if span_too_wide(lo, hi, kb, max_range_span):
        with pytest.raises(ValueError, match="range"):
            index.range(to_array([lo], kb), to_array([hi], kb), limit)
        return
    keys, values = index.range(to_array([lo], kb), to_array([hi], kb), limit)
    assert values.dtype == np.uint64 and values.shape == (len(keys),)
    got = list(zip(from_array(keys, kb), (int(v) for v in values), strict=True))
    assert got == expected_range(model, lo, hi, limit), f"range({lo!r}, {hi!r}, limit={limit})"


def make_model_machine(factory: IndexFactory, key_bytes: int,
                       max_range_span: int | None = None) -> type[RuleBasedStateMachine]:
    """The model-test state machine for one backend and key width (see the module docstring).
    ``max_range_span``: the backend refuses (ValueError) 8-byte ranges wider than this."""
    universe = key_universe(key_bytes)
    bounds = bound_universe(key_bytes)
    keys_st = st.lists(st.sampled_from(universe), max_size=8)
    value_st = st.integers(0, 2**64 - 1)

    def narrow_hi(lo: Key, delta: int) -> Key:
        return min(lo + delta, MAX_KEY8) if key_bytes == 8 else lo

    # (lo, hi): either both from the bound universe, or hi a little past lo (id runs)
    pair_st = st.one_of(
        st.tuples(st.sampled_from(bounds), st.sampled_from(bounds)),
        st.builds(lambda lo, d: (lo, narrow_hi(lo, d)), st.sampled_from(bounds), st.integers(0, NARROW_SPAN)),
    )

    class IndexModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.index = factory(key_bytes)
            self.model: dict[Key, int] = {}

        def teardown(self) -> None:
            self.index.close()

        def _some_keys(self, data: st.DataObject) -> list[Key]:
            """Mostly present keys first (so hits and long prefixes happen), then any."""
            present = sorted(self.model)
            head = data.draw(st.lists(st.sampled_from(present), max_size=6)) if present else []
            return head + data.draw(keys_st)

        @rule(items=st.lists(st.tuples(st.sampled_from(universe), value_st), max_size=10))
        def put(self, items: list[tuple[Key, int]]) -> None:
            keys = [k for k, _ in items]
            self.index.put(to_array(keys, key_bytes), np.array([v for _, v in items], dtype=np.uint64))
            for k, v in items:  # in order: a later duplicate wins
                self.model[k] = v

        @rule(data=st.data())
        def get(self, data: st.DataObject) -> None:
            keys = self._some_keys(data)
            values, found = self.index.get(to_array(keys, key_bytes))
            assert values.dtype == np.uint64 and values.shape == (len(keys),)
            assert found.dtype == np.bool_ and found.shape == (len(keys),)
            for k, v, f in zip(keys, values, found, strict=True):
                assert bool(f) == (k in self.model), f"get({k!r}): found={bool(f)}"
                if f:
                    assert int(v) == self.model[k], f"get({k!r}) = {int(v)}, expected {self.model[k]}"

        @rule(data=st.data())
        def delete(self, data: st.DataObject) -> None:
            keys = self._some_keys(data)
            present = self.index.delete(to_array(keys, key_bytes))
            assert present.dtype == np.bool_ and present.shape == (len(keys),)
            expected = [self.model.pop(k, None) is not None for k in keys]
            assert present.tolist() == expected, f"delete({keys!r})"

        @rule(pair=pair_st, limit=st.sampled_from([0, 0, 1, 3]))
        def range(self, pair: tuple[Key, Key], limit: int) -> None:
            _check_range(self.index, self.model, pair[0], pair[1], limit, max_range_span)

        @rule(pairs=st.lists(pair_st, min_size=1, max_size=4))
        def range_count(self, pairs: list[tuple[Key, Key]]) -> None:
            if not self.index.ordered or any(span_too_wide(a, b, key_bytes, max_range_span)
                                             for a, b in pairs):
                return  # refusals are checked by the range rule
            los = to_array([a for a, _ in pairs], key_bytes)
            his = to_array([b for _, b in pairs], key_bytes)
            counts = self.index.range_count(los, his)
            expected = [len(expected_range(self.model, a, b)) for a, b in pairs]
            assert np.asarray(counts).tolist() == expected, f"range_count({pairs!r})"

        @rule(data=st.data())
        def prefix_match(self, data: st.DataObject) -> None:
            keys = self._some_keys(data)
            got = self.index.prefix_match(to_array(keys, key_bytes))
            assert got == expected_prefix(self.model, keys), f"prefix_match({keys!r})"

        @rule()
        def everything(self) -> None:
            values, found = self.index.get(to_array(universe, key_bytes))
            got = {k: int(v) for k, v, f in zip(universe, values, found, strict=True) if f}
            assert got == self.model

    IndexModel.__name__ = f"IndexModel{key_bytes}"
    return IndexModel


def model_test(factory: IndexFactory, key_bytes: int, *, max_examples: int = 15, steps: int = 25,
               max_range_span: int | None = None) -> None:
    """Run the model test; raises (with hypothesis' shrunk failing sequence) on a mismatch."""
    machine = make_model_machine(factory, key_bytes, max_range_span)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))


@contextlib.contextmanager
def opened(factory: IndexFactory, key_bytes: int) -> Iterator[Index]:
    index = factory(key_bytes)
    try:
        yield index
    finally:
        index.close()


def check_prefix_match_edges(index: Index) -> None:
    """prefix_match edge cases on an empty index (it is filled here)."""
    kb = index.key_bytes
    keys = key_universe(kb)[:40]
    stored, absent = keys[:36], keys[36:40]
    assert index.prefix_match(to_array([], kb)) == 0, "empty input"
    assert index.prefix_match(to_array(stored[:5], kb)) == 0, "nothing stored yet"
    index.put(to_array(stored, kb), np.arange(1, len(stored) + 1, dtype=np.uint64))
    assert index.prefix_match(to_array(stored, kb)) == len(stored), "all present"
    assert index.prefix_match(to_array(stored[:1], kb)) == 1, "one present"
    assert index.prefix_match(to_array([absent[0]] + stored[:5], kb)) == 0, "first missing"
    assert index.prefix_match(to_array(stored[:3] + [absent[0]] + stored[3:8], kb)) == 3, "gap in the middle"
    assert index.prefix_match(to_array(stored[:5] + absent[:2], kb)) == 5, "missing tail"
    assert index.prefix_match(to_array([stored[0]] * 3 + stored[1:3], kb)) == 5, "duplicates"
    # a miss at each position of a long prefix (crosses pipeline / batch boundaries)
    for pos in (0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 35):
        probe = stored[:pos] + [absent[1]] + stored[pos:]
        assert index.prefix_match(to_array(probe, kb)) == pos, f"miss at position {pos}"
    index.delete(to_array(stored[10:11], kb))
    assert index.prefix_match(to_array(stored, kb)) == 10, "miss left by a delete"


def check_key_order(index: Index) -> None:
    """Range results come in key order: numeric for 8-byte keys (255 < 256 although its
    little-endian bytes sort after), unsigned bytewise for 32-byte keys (0x7f < 0x80)."""
    kb = index.key_bytes
    if not index.ordered:
        return
    if kb == 8:
        keys, lo, hi = [257, 255, 256, 254], 250, 260
    else:
        keys = [bytes([0x01]) + bytes(30) + bytes([b]) for b in (0x80, 0x7F, 0xFF, 0x01)]
        lo, hi = keys[3], keys[2]
    index.put(to_array(keys, kb), np.arange(len(keys), dtype=np.uint64))
    got, values = index.range(to_array([lo], kb), to_array([hi], kb))
    assert from_array(got, kb) == sorted(keys)
    assert [int(v) for v in values] == [keys.index(k) for k in sorted(keys)]


class IndexConformance:
    """pytest mixin: subclass it as ``TestSomething`` and define a fixture ``index_factory``
    returning ``f(key_bytes) -> fresh, empty Index``. Class attributes tune the run."""

    #: key widths the backend supports (others are skipped with a reason)
    key_widths: tuple[int, ...] = KEY_WIDTHS
    #: hypothesis examples and steps per example for the model test
    max_examples: int = 15
    steps: int = 25
    #: the backend refuses 8-byte ranges wider than this (None: no limit)
    max_range_span: int | None = None

    def _width(self, key_bytes: int) -> None:
        if key_bytes not in self.key_widths:
            pytest.skip(f"{key_bytes}-byte keys are not supported by this configuration")

    @pytest.mark.parametrize("key_bytes", KEY_WIDTHS)
    def test_model(self, index_factory: IndexFactory, key_bytes: int) -> None:
        self._width(key_bytes)
        model_test(index_factory, key_bytes, max_examples=self.max_examples, steps=self.steps,
                   max_range_span=self.max_range_span)

    @pytest.mark.parametrize("key_bytes", KEY_WIDTHS)
    def test_prefix_match_edges(self, index_factory: IndexFactory, key_bytes: int) -> None:
        self._width(key_bytes)
        with opened(index_factory, key_bytes) as index:
            check_prefix_match_edges(index)

    @pytest.mark.parametrize("key_bytes", KEY_WIDTHS)
    def test_key_order(self, index_factory: IndexFactory, key_bytes: int) -> None:
        self._width(key_bytes)
        with opened(index_factory, key_bytes) as index:
            check_key_order(index)

    @pytest.mark.parametrize("key_bytes", KEY_WIDTHS)
    def test_range_unsupported(self, index_factory: IndexFactory, key_bytes: int) -> None:
        self._width(key_bytes)
        with opened(index_factory, key_bytes) as index:
            if index.ordered:
                pytest.skip("ordered backend: range is checked by the model test")
            u = key_universe(key_bytes)
            index.put(to_array(u[:3], key_bytes), np.arange(3, dtype=np.uint64))
            check_range_unsupported(index, u[0], u[2])
