"""Token-level prefix caching over any index: what an engine (vLLM, LMCache, SGLang) asks.

    from .tokens import TokenIndex
    tix = TokenIndex(kvdm.index.open("chime", ctx, key_bytes=32), chunk_size=256)
    tix.store(prompt, locations)          # one uint64 location per full chunk
    tix.lookup(prompt)                    # -> cached prefix, in tokens
    tix.retrieve_mask(prompt)             # -> torch.BoolTensor, LMCache's retrieve() mask

A prompt is split into chunks of ``chunk_size`` tokens; each chunk is keyed by a hash chained
on every token before it, so a chunk's key names the whole prefix that ends with it, and the
cached part of a prompt is the longest run of leading chunks whose keys are in the index.

Tokens
------
A 1-d sequence of integer token ids: a torch tensor (CPU; a CUDA tensor is copied to the
host), a numpy array or a list of ints. Ids must lie in ``[0, 2**32)``: each is encoded as a
**little-endian uint32** (4 bytes), whatever the input's dtype, so an int64 torch tensor and
a list of the same ids give the same keys. Negative ids, ids >= 2**32, a rank other than 1,
and non-integer dtypes (float, bool, complex, object) are rejected with ``ValueError``
(values, rank) or ``TypeError`` (dtype). torch is optional: everything except
:meth:`TokenIndex.retrieve_mask` (which returns a torch tensor) works without it.

Chunks
------
``n = len(tokens)``, ``C = chunk_size``. Chunk ``i`` is ``tokens[i*C:(i+1)*C]`` for the
``n // C`` full chunks. With ``partial_chunks=True`` a trailing partial chunk
``tokens[(n//C)*C:]`` (1 to C-1 tokens) gets a key too (hashed over its actual tokens, as
LMCache's ``save_unfull_chunk``); with ``partial_chunks=False`` (the default, as vLLM) it has
no key and is never cached.

Chunk keys (``key_scheme``), exactly
------------------------------------
``B_i`` is the byte string of chunk ``i``'s token ids as little-endian uint32.

* ``"sha256"`` (32-byte keys; the index must have ``key_bytes == 32``)::

      h_{-1} = SHA-256(b"kvdm-chunk-v2")             # the 13 ASCII bytes
      h_i    = SHA-256(B_i + h_{i-1})                # the chunk, then its parent's 32-byte digest
      key_i  = h_i                                   # as uint8[32], byte order as digested

  The parent comes last so that the chunk's whole 64-byte SHA-256 blocks do not depend on
  it: ``native/chunkhash.c`` compresses two chunks' blocks as two interleaved streams on the
  CPU's SHA extensions, and only each chunk's final block or two (its tail, the parent, the
  padding) runs in chain order. (Version 1 of these keys put the parent first.)

  The all-zero key is reserved by the index API; a digest of 32 zero bytes (probability
  2**-256) would be stored as 31 zero bytes followed by 0x01 (the chain still uses ``h_i``).

* ``"u64"`` (8-byte keys; ``key_bytes == 8``): the same chain ``h_i``, and
  ``key_i = int.from_bytes(h_i[:8], "little")`` (the digest's first 8 bytes as a
  little-endian uint64), with the two reserved values remapped: 0 -> 1 and
  2**64-1 -> 2**64-2 (the chain still uses ``h_i``).

* ``"vllm-sha256"`` (32-byte keys): vLLM's ``hash_block_tokens`` with its ``sha256`` hash
  function (vLLM >= 0.10, where block hashes are ``bytes``), and extra_keys None::

      NONE_HASH = SHA-256(pickle.dumps(vllm_seed, protocol=5))      # vllm_seed: a str
      h_i       = SHA-256(pickle.dumps((h_{i-1} or NONE_HASH, tuple(int(t) for t in chunk_i), None),
                                       protocol=5))
      key_i     = h_i     (all-zero -> ... 0x01, as for "sha256")

  With ``chunk_size`` equal to vLLM's block size and ``vllm_seed`` equal to the engine's
  ``PYTHONHASHSEED`` (vLLM seeds ``NONE_HASH = sha256(PYTHONHASHSEED)``; unset, it draws a
  random ``NONE_HASH`` per process and nothing can match it), these keys equal vLLM's block
  hashes for requests without LoRA, multi-modal inputs, cache salt or prompt embeddings (those
  set ``extra_keys``, which kvdm does not model). ``pickle.HIGHEST_PROTOCOL`` is 5 on every
  CPython kvdm supports; vLLM's ``sha256_cbor`` (CBOR-encoded) and ``xxhash`` variants are not
  offered. LMCache v1's ``ChunkedTokenDatabase`` with ``pre_caching_hash_algorithm:
  sha256`` chains the same function over 256-token chunks from vLLM's ``NONE_HASH`` and
  hashes the trailing partial chunk (``save_unfull_chunk``), so ``chunk_size=256,
  partial_chunks=True`` reproduces LMCache's chunk hashes (LMCache then wraps each hash in a
  ``CacheEngineKey`` with the model name, world size and worker id; kvdm stores the bare
  hash).

Hashing is one C call per prompt (``native/chunkhash.c``: SHA-256 on the CPU's SHA extensions,
two chunks at a time, else OpenSSL's; the vLLM pickle is written byte for byte in C, for chunks
of up to 8192 tokens, and hashed with OpenSSL); the token ids are converted and range-checked
in one C pass. The common forms (a contiguous numpy integer array, a contiguous CPU torch integer
tensor, a list or tuple of ints) reach that C call through one plain CPython call
(``native/pyext/chunkkeys.c``), which reads them in place; every other form, and every error,
takes the Python path (:func:`int_tokens`). ``kvdm bench tokens`` prints the per-prompt time
beside ``hashlib.sha256`` over the same bytes.

Batches
-------
:meth:`TokenIndex.lookup_many` hashes every prompt, concatenates all the keys and asks the
index in ONE ``index.get`` call, then derives each prompt's prefix from the found flags (the
first miss per prompt). For the native indexes that is one C call whose reads share doorbell
batches (all keys in one doorbell per round trip by default; the ``window`` option caps the
keys per doorbell): e.g. 20 prompts of 31 chunks on chime cost 3 round trips, against 20 for
20 :meth:`lookup` calls. For Redis it is one pipelined exchange per ``pipeline`` keys (open
it with ``pipeline`` >= the key count for a single round trip). The single-prompt :meth:`TokenIndex.lookup` uses
``index.prefix_match`` instead, which lets a backend stop early or use its own prefix
strategy; both give the same answer. :meth:`TokenIndex.store_many` is one ``index.put``.

LMCache's retrieve mask
-----------------------
:meth:`TokenIndex.retrieve_mask` follows LMCache v1 ``LMCacheEngine.retrieve`` /
``ChunkedTokenDatabase.process_tokens``: the result is a CPU ``torch.bool`` tensor of
``len(tokens)``, False everywhere except on the chunks found, in order, starting at the first
chunk the caller wants and stopping at the first missing chunk. The optional ``mask`` marks
the tokens the caller wants retrieved; as in LMCache it must look like ``F...FT...T`` (the
Falses, e.g. tokens already in the engine's own cache, are a prefix) and the number of Falses
must be a multiple of ``chunk_size`` (else ``ValueError``, as LMCache). Chunks inside the
False prefix are hashed (the chain needs them) but not looked up, and stay False in the
result. Differences from LMCache: (1) kvdm only answers from the index (no KV data is moved:
the values are locations for the caller to fetch); (2) LMCache fetches chunk by chunk and stops
at a miss, kvdm asks for the candidate chunks in one ``prefix_match``; (3) LMCache only counts
the mask's Falses and would accept e.g. ``T...TF...F``, kvdm rejects a mask that is not
Falses-then-Trues, and a mask of the wrong length, rank or dtype; (4) kvdm's default is
``partial_chunks=False`` (LMCache's default ``save_unfull_chunk`` is True).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvdm.native import chunkkeys, ffi, lib

from .api import Index, as_values

KEY_SCHEMES = {"sha256": 32, "u64": 8, "vllm-sha256": 32}
CHAIN_SEED = hashlib.sha256(b"kvdm-chunk-v2").digest()  # h_{-1} of the "sha256" and "u64" chains
TOKEN_MAX = 2**32
TORCH_EXTRA = "pip install 'kvdm[torch]' (torch==2.13.0)"


@functools.cache
def _sha_extensions() -> bool:
    """Whether the CPU has the SHA extensions native/chunkhash.c uses (asked once: CPUID traps
    to the hypervisor in a VM)."""
    return bool(lib.kvdm_chunk_accel())


def _torch() -> Any:
    """The torch module, or an ImportError naming the extra to install."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"kvdm.index.tokens.retrieve_mask returns a torch tensor and needs torch: "
                          f"{TORCH_EXTRA}") from exc
    return torch


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


_torch_named = False


def _name_torch_to_c() -> bool:
    """Tell the C fast path torch.Tensor and its integer dtypes, once (kvdm never imports torch:
    the first tensor a caller passes means it is there). True when it did so now."""
    global _torch_named
    if _torch_named:
        return False
    torch = sys.modules["torch"]
    ints = {torch.int8: (1, True), torch.uint8: (1, False), torch.int16: (2, True), torch.int32: (4, True),
            torch.int64: (8, True)}
    for name, size in (("uint16", 2), ("uint32", 4), ("uint64", 8)):  # torch >= 2.3
        if isinstance(getattr(torch, name, None), torch.dtype):
            ints[getattr(torch, name)] = (size, False)
    chunkkeys.use_torch(torch.Tensor, ints)
    _torch_named = True
    return True


def int_tokens(tokens: Any) -> np.ndarray:
    """Validate one prompt's token ids up to their values: a 1-d, contiguous, aligned,
    native-order integer ndarray, as given where it already is one (the ids' range is checked
    where they are converted, in C). See the module docstring for what is accepted."""
    if type(tokens) is np.ndarray:  # the fast path: no torch or list check
        arr = tokens
    elif _is_torch_tensor(tokens):
        t = tokens
        if t.is_floating_point() or t.is_complex() or t.dtype == sys.modules["torch"].bool:
            raise TypeError(f"token ids must have an integer dtype, got torch tensor of {t.dtype}")
        arr = t.detach().cpu().numpy()
    elif isinstance(tokens, np.ndarray):
        arr = np.asarray(tokens)  # a subclass (memmap, masked array): its data as a plain ndarray
    elif isinstance(tokens, (list, tuple, range)):
        arr = np.asarray(tokens) if len(tokens) else np.zeros(0, dtype=np.int64)
    else:
        raise TypeError(f"token ids must be a torch tensor, a numpy array or a list of ints, "
                        f"got {type(tokens).__name__}")
    if arr.dtype.kind == "O" and arr.ndim == 1 and all(type(x) is int for x in arr):
        raise ValueError(f"token ids must lie in [0, 2**32), got {max(arr)}" if min(arr) >= 0
                         else f"token ids must be non-negative, got {min(arr)}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token ids must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"token ids must be 1-d (one prompt), got shape {tuple(arr.shape)}")
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        arr = np.require(arr, requirements=("C", "A"))
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _length(tokens: Any) -> int:
    """The number of ids of a prompt already keyed (so 1-d): len() costs ~0.4 us on a tensor."""
    shape = getattr(tokens, "shape", None)
    return int(shape[0]) if shape is not None else len(tokens)


def _bad_token(arr: np.ndarray, at: int) -> ValueError:
    v = int(arr[at])
    return ValueError(f"token ids must be non-negative, got {v} at position {at}" if v < 0 else
                      f"token ids must lie in [0, 2**32), got {v} at position {at}")


def as_tokens(tokens: Any) -> np.ndarray:
    """Validate one prompt's token ids and return them as a 1-d ``<u4`` (little-endian uint32)
    array (see the module docstring for what is accepted)."""
    src = int_tokens(tokens)
    out = np.empty(src.shape[0], dtype="<u4")
    bad = lib.kvdm_tokens_to_u32le(ffi.from_buffer(src), src.dtype.itemsize, src.dtype.kind == "i",
                                   src.shape[0], ffi.from_buffer(out))
    if bad >= 0:
        raise _bad_token(src, bad)
    return out


class ChunkKeys:
    """The chunk-key function alone (no index): ``key_scheme`` (see the module docstring),
    ``chunk_size``, ``partial_chunks`` and, for ``"vllm-sha256"``, ``vllm_seed``. Used by
    :class:`TokenIndex` and by the token-level replay, which keys a whole trace up front."""

    def __init__(self, chunk_size: int = 256, key_scheme: str = "sha256", partial_chunks: bool = False,
                 vllm_seed: str = "0", accel: bool = True) -> None:
        if key_scheme not in KEY_SCHEMES:
            raise ValueError(f"unknown key_scheme {key_scheme!r}; valid: {', '.join(KEY_SCHEMES)}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if not isinstance(vllm_seed, str):
            raise TypeError(f"vllm_seed must be a str (vLLM hashes the PYTHONHASHSEED string), got {vllm_seed!r}")
        self.chunk_size = int(chunk_size)
        self.key_scheme = key_scheme
        self.partial_chunks = bool(partial_chunks)
        self.key_bytes = KEY_SCHEMES[key_scheme]
        self.accel = bool(accel) and _sha_extensions()  # False: OpenSSL only (the same keys)
        if key_scheme == "vllm-sha256":
            if self.chunk_size > lib.KVDM_CHUNK_VLLM_MAX:
                raise ValueError(f"key_scheme 'vllm-sha256' supports chunks of up to {lib.KVDM_CHUNK_VLLM_MAX} "
                                 f"tokens, got {self.chunk_size}")
            self._scheme = lib.KVDM_CHUNK_VLLM
            self._seed = hashlib.sha256(pickle.dumps(vllm_seed, protocol=5)).digest()  # vLLM's NONE_HASH
        else:
            self._scheme, self._seed = lib.KVDM_CHUNK_SHA256, CHAIN_SEED
        # the C entry point, parameters bound: .keys(tokens) -> keys, or None for the Python path
        self._fast = chunkkeys.Keyer(self._scheme, self._seed, self.chunk_size, self.partial_chunks,
                                     self.key_bytes, self.accel)

    def num_chunks(self, n_tokens: int) -> int:
        """How many keyed chunks a prompt of ``n_tokens`` has."""
        full, rest = divmod(n_tokens, self.chunk_size)
        return full + (1 if rest and self.partial_chunks else 0)

    def keys(self, tokens: Any) -> np.ndarray:
        """The chunk keys of a prompt (any accepted form, :func:`int_tokens`): ``uint8[n, 32]`` or
        ``uint64[n]``, in one C call that also converts and range-checks the ids
        (native/chunkhash.c, which also remaps the reserved keys). A contiguous numpy or CPU
        torch integer array and a list or tuple of ints in range go straight to C
        (native/pyext/chunkkeys.c); everything else, errors included, through :func:`int_tokens`."""
        keys = self._fast.keys(tokens)
        return keys if keys is not None else self._keys_checked(tokens)

    def _keys_checked(self, tokens: Any) -> np.ndarray:
        """:meth:`keys` of what the C fast path left: the first torch tensor (C learns torch's
        types then), the other forms, and the errors."""
        if _is_torch_tensor(tokens) and _name_torch_to_c():
            keys = self._fast.keys(tokens)
            if keys is not None:
                return keys
        return self.keys_of(int_tokens(tokens))

    def keys_of(self, arr: np.ndarray) -> np.ndarray:
        """:meth:`keys` of a prompt :func:`int_tokens` already validated."""
        keys = self._fast.keys(arr)
        if keys is None:  # an id out of range: as_tokens says which
            as_tokens(arr)
            raise TypeError(f"keys_of takes what int_tokens returns (a 1-d contiguous aligned native-order "
                            f"integer ndarray), got {type(arr).__name__}")
        return keys


class TokenIndex:
    """Token-level prefix lookups and stores over any :class:`kvdm.index.api.Index`.

    ``key_scheme``: ``"sha256"`` (32-byte keys), ``"u64"`` (8-byte keys) or ``"vllm-sha256"``
    (32-byte, vLLM/LMCache-compatible, seeded by ``vllm_seed``); its width must match
    ``index.key_bytes`` (ValueError otherwise). None (the default) picks ``"sha256"`` for a
    32-byte index and ``"u64"`` for an 8-byte one. The index's values are the chunks' locations (uint64)."""

    def __init__(self, index: Index, chunk_size: int = 256, key_scheme: str | None = None,
                 partial_chunks: bool = False, vllm_seed: str = "0") -> None:
        if key_scheme is None:
            key_scheme = "u64" if index.key_bytes == 8 else "sha256"
        self.keyer = ChunkKeys(chunk_size, key_scheme, partial_chunks, vllm_seed)
        if index.key_bytes != self.keyer.key_bytes:
            raise ValueError(f"key_scheme {key_scheme!r} makes {self.keyer.key_bytes}-byte keys but the index has "
                             f"key_bytes={index.key_bytes}; open it with key_bytes={self.keyer.key_bytes}")
        self.index = index
        self.chunk_size = self.keyer.chunk_size
        self.key_scheme = key_scheme
        self.partial_chunks = self.keyer.partial_chunks
        self.key_bytes = self.keyer.key_bytes

    # -- keys --
    def num_chunks(self, n_tokens: int) -> int:
        """How many keyed chunks a prompt of ``n_tokens`` has."""
        return self.keyer.num_chunks(n_tokens)

    def chunk_keys(self, tokens: Any) -> np.ndarray:
        """The keys of the prompt's chunks, in order: ``uint8[n, 32]`` or ``uint64[n]``."""
        return self.keyer.keys(tokens)

    # -- one prompt --
    def _tokens_of(self, matched: int, n_keys: int, tokens: Any) -> int:
        """The tokens of ``matched`` leading chunks of ``tokens`` (keyed, so 1-d), which has
        ``n_keys`` keys: only a matched partial last chunk is shorter than chunk_size."""
        if self.partial_chunks and matched == n_keys:
            return min(matched * self.chunk_size, _length(tokens))
        return matched * self.chunk_size

    def lookup(self, tokens: Any) -> int:
        """The cached prefix of the prompt, in tokens (whole chunks, capped at its length)."""
        keys = self.keyer.keys(tokens)
        if not len(keys):
            return 0
        return self._tokens_of(self.index.prefix_match(keys), len(keys), tokens)

    def store(self, tokens: Any, locations: Any) -> None:
        """Record the prompt's chunks: ``locations`` (uint64, one per keyed chunk, see
        :meth:`num_chunks`) become the values of the chunk keys."""
        keys = self.chunk_keys(tokens)
        values = self._locations(locations, len(keys))
        if len(keys):
            self.index.put(keys, values)

    def retrieve_mask(self, tokens: Any, mask: Any = None) -> Any:
        """LMCache's ``retrieve`` answer: a CPU ``torch.bool`` tensor, True on the tokens of the
        cached chunks from the first wanted chunk to the first miss (module docstring)."""
        torch = _torch()
        keys = self.keyer.keys(tokens)
        n = _length(tokens)
        skip = self._mask_skip(mask, n, torch)
        ret = torch.zeros(n, dtype=torch.bool)
        first = skip // self.chunk_size
        if first < len(keys):
            matched = self.index.prefix_match(keys[first:])
            ret[skip:self._tokens_of(first + matched, len(keys), tokens)] = True
        return ret

    def _mask_skip(self, mask: Any, n: int, torch: Any) -> int:
        """The number of leading Falses of an LMCache-style ``F...FT...T`` mask (0 if None)."""
        if mask is None:
            return 0
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"mask must be boolean, got {m.dtype}")
        if m.ndim != 1 or m.shape[0] != n:
            raise ValueError(f"mask must be 1-d with one entry per token ({n}), got shape {tuple(m.shape)}")
        skip = n - int(m.sum())
        if m[:skip].any() or not m[skip:].all():
            raise ValueError("mask must be Falses then Trues (F...FT...T): LMCache retrieves a suffix")
        if skip % self.chunk_size:
            raise ValueError(f"the number of Falses in the mask ({skip}) is not a multiple of the "
                             f"chunk size ({self.chunk_size})")
        return skip

    # -- many prompts, one index call --
    def lookup_many(self, prompts: Sequence[Any]) -> list[int]:
        """:meth:`lookup` for every prompt, with every prompt's keys in ONE ``index.get``."""
        keys = [self.keyer.keys(p) for p in prompts]
        counts = [len(k) for k in keys]
        total = sum(counts)
        if not total:
            return [0] * len(keys)
        _, found = self.index.get(np.concatenate(keys))
        out = []
        start = 0
        for p, c in zip(prompts, counts, strict=True):
            misses = np.flatnonzero(~found[start:start + c])
            matched = int(misses[0]) if misses.size else c
            out.append(self._tokens_of(matched, c, p))
            start += c
        return out

    def store_many(self, prompts: Sequence[Any], locations: Sequence[Any]) -> None:
        """:meth:`store` for every prompt (``locations[i]`` for ``prompts[i]``), in ONE
        ``index.put`` (in prompt order: a later duplicate key wins)."""
        if len(prompts) != len(locations):
            raise ValueError(f"{len(prompts)} prompts but {len(locations)} location arrays")
        keys = [self.keyer.keys(p) for p in prompts]
        values = [self._locations(v, len(k)) for k, v in zip(keys, locations, strict=True)]
        if sum(len(k) for k in keys):
            self.index.put(np.concatenate(keys), np.concatenate(values))

    def _locations(self, locations: Any, n: int) -> np.ndarray:
        arr = np.asarray(locations)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"locations must be integers (uint64), got {arr.dtype}")
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            raise ValueError("locations must be non-negative (uint64)")
        if arr.ndim > 1:
            raise ValueError(f"locations must be 1-d (one per chunk), got shape {arr.shape}")
        if arr.reshape(-1).shape[0] != n:
            raise ValueError(f"the prompt has {n} keyed chunks but {arr.reshape(-1).shape[0]} locations were given")
        return as_values(arr.astype(np.uint64), n)


__all__ = ["KEY_SCHEMES", "ChunkKeys", "TokenIndex", "as_tokens", "int_tokens"]
