"""What the benchmarks feed an index: numbered keys spread over the key space, and calls as an
operation stream the C measuring loop runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def make_keys(start: int, count: int, key_bytes: int) -> np.ndarray:
    """Keys number start..start+count: distinct, spread over the key space, never reserved."""
    return keys_of(np.arange(start, start + count, dtype=np.uint64), key_bytes)


def keys_of(i: np.ndarray, key_bytes: int) -> np.ndarray:
    """The keys numbered ``i`` (any uint64 array), as :func:`make_keys` numbers them."""
    count = i.size
    with np.errstate(over="ignore"):
        x = (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(31)
    x = np.where((x == 0) | (x == np.uint64(2**64 - 1)), i + np.uint64(1), x)  # reserved values
    if key_bytes == 8:
        return x
    keys = np.zeros((count, 32), dtype=np.uint8)
    keys[:, :8] = x.astype(">u8").view(np.uint8).reshape(-1, 8)
    keys[:, 24:] = i.astype(">u8").view(np.uint8).reshape(-1, 8)  # keeps keys distinct
    return keys


@dataclass
class CallStream:
    """Bench calls as an operation stream (what the C loop runs): op i = one call of ``batch`` keys."""

    kind: np.ndarray
    key_offsets: np.ndarray
    keys: np.ndarray
    key_block: np.ndarray
    range_lo: np.ndarray
    range_hi: np.ndarray


__all__ = ["CallStream", "keys_of", "make_keys"]
