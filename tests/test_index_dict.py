"""The dict backend against the shared conformance suite (and the suite's unordered path)."""

from __future__ import annotations

import pytest
from index_conformance import IndexConformance

from kvdm.index.api import Index
from kvdm.index.dict_index import DictIndex


class TestDictIndex(IndexConformance):
    @pytest.fixture
    def index_factory(self):
        return DictIndex


class _UnorderedDict(DictIndex):
    """A dict that claims no key order and keeps the API's default (refusing) range."""

    name = "unordered-dict"
    ordered = False
    range = Index.range
    range_count = Index.range_count


class TestUnorderedIndex(IndexConformance):
    """An ordered=False backend: range and range_count must raise RangeNotSupported."""

    max_examples = 5

    @pytest.fixture
    def index_factory(self):
        return _UnorderedDict


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unknown option"):
        DictIndex(8, pipeline=3)


def test_range_bounds_near_two_to_the_63() -> None:
    """numpy compares a uint64 array with a Python int through float64, where 2**63-2 == 2**63-1;
    the dict's range must not (found by the conformance model test)."""
    import numpy as np

    d = DictIndex(8)
    d.put(np.array([1, 2**63 - 1], dtype=np.uint64), np.zeros(2, dtype=np.uint64))
    d.delete(np.array([1], dtype=np.uint64))
    assert d.range(1, 2**63 - 2)[0].size == 0
    assert d.range(2**63 - 1, 2**63 - 1)[0].tolist() == [2**63 - 1]
