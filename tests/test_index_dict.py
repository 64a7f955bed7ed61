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
