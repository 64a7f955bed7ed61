"""kvdm.index.tokens: chunk keys recomputed with plain hashlib, lookup/store/retrieve_mask
semantics (LMCache's), batched forms, input validation, on dict, chime (shm) and a real
redis-server; and the module without torch."""

from __future__ import annotations

import builtins
import hashlib
import importlib
import itertools
import pickle
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import kvdm.index
from kvdm.index.redis_index import RedisIndex
from kvdm.index.redis_server import RedisServer, pid_running, started_pids
from kvdm.index.tokens import ChunkKeys, TokenIndex, as_tokens

_names = itertools.count()


# -- expected keys, written out with hashlib only --
def ref_sha256_chain(tokens: list[int], chunk: int, partial: bool = False) -> list[bytes]:
    n_full = len(tokens) // chunk
    ends = [(i + 1) * chunk for i in range(n_full)]
    if partial and len(tokens) % chunk:
        ends.append(len(tokens))
    out, prev, start = [], hashlib.sha256(b"kvdm-chunk-v2").digest(), 0
    for end in ends:
        data = b"".join(t.to_bytes(4, "little") for t in tokens[start:end])
        prev = hashlib.sha256(data + prev).digest()
        out.append(prev)
        start = end
    return out


def ref_u64(tokens: list[int], chunk: int, partial: bool = False) -> list[int]:
    out = []
    for d in ref_sha256_chain(tokens, chunk, partial):
        v = int.from_bytes(d[:8], "little")
        out.append(1 if v == 0 else 2**64 - 2 if v == 2**64 - 1 else v)
    return out


def ref_vllm(tokens: list[int], block: int, seed: str = "0", partial: bool = False) -> list[bytes]:
    """vLLM's hash_block_tokens with its sha256 (pickle protocol 5); LMCache's trailing partial
    chunk too when ``partial``."""
    parent = hashlib.sha256(pickle.dumps(seed, protocol=pickle.HIGHEST_PROTOCOL)).digest()
    out = []
    for i in range(-(-len(tokens) // block) if partial else len(tokens) // block):
        blk = tuple(tokens[i * block:(i + 1) * block])
        parent = hashlib.sha256(pickle.dumps((parent, blk, None), protocol=pickle.HIGHEST_PROTOCOL)).digest()
        out.append(parent)
    return out


PROMPTS = [
    [],
    [5],
    list(range(16)),
    list(range(100, 137)),
    [0, 2**31 - 1, 2**31, 2**32 - 1] * 5,
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"n{len(p)}")
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_sha256_keys_match_hashlib(prompt, chunk):
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=chunk)
    got = tix.chunk_keys(np.array(prompt, dtype=np.int64))
    assert got.dtype == np.uint8 and got.shape == (len(prompt) // chunk, 32)
    assert [bytes(r) for r in got] == ref_sha256_chain(prompt, chunk)
    tixp = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=chunk, partial_chunks=True)
    assert [bytes(r) for r in tixp.chunk_keys(prompt)] == ref_sha256_chain(prompt, chunk, partial=True)


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"n{len(p)}")
def test_u64_keys_match_hashlib(prompt):
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=8), chunk_size=4, key_scheme="u64")
    got = tix.chunk_keys(prompt)
    assert got.dtype == np.uint64
    assert got.tolist() == ref_u64(prompt, 4)
    tixp = TokenIndex(kvdm.index.open("dict", key_bytes=8), chunk_size=4, partial_chunks=True)
    assert tixp.chunk_keys(prompt).tolist() == ref_u64(prompt, 4, partial=True)


def test_known_vector():
    """A fixed vector, so a change of the encoding shows even if the reference drifted too."""
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=2)
    keys = tix.chunk_keys([1, 2, 3, 4])
    seed = hashlib.sha256(b"kvdm-chunk-v2").digest()
    first = hashlib.sha256(bytes([1, 0, 0, 0, 2, 0, 0, 0]) + seed).digest()
    second = hashlib.sha256(bytes([3, 0, 0, 0, 4, 0, 0, 0]) + first).digest()
    assert bytes(keys[0]) == first and bytes(keys[1]) == second
    assert bytes(keys[1]).hex()[:16] == "8644653d1a1487bc"


@pytest.mark.parametrize("chunk", [1, 3, 15, 16, 17, 32, 100, 256, 1000])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 255, 256, 257, 1023, 2047, 4097])
def test_sha_extensions_and_openssl_give_the_same_keys(chunk, n):
    """Two compression paths (two interleaved SHA-extension streams with the tails done apart,
    and OpenSSL's blocks) against hashlib, over chunk and prompt sizes that put the tail at
    every interesting length (0, < 24 and >= 24 bytes beside the 32-byte parent, two blocks)."""
    prompt = np.random.default_rng(chunk * 10_000 + n).integers(0, 2**32, n).tolist()
    want = ref_sha256_chain(prompt, chunk, partial=True)
    small = [t % 2**31 for t in prompt]
    want_small = ref_sha256_chain(small, chunk, partial=True)
    for accel in (True, False):
        keyer = ChunkKeys(chunk, "sha256", partial_chunks=True, accel=accel)
        assert [bytes(r) for r in keyer.keys(as_tokens(prompt))] == want, accel
        # int64 and int32 ids are read in place by the SHA-extension path (no conversion pass)
        assert [bytes(r) for r in keyer.keys(np.array(prompt, np.int64))] == want, accel
        assert [bytes(r) for r in keyer.keys(np.array(small, np.int32))] == want_small, accel


@pytest.mark.parametrize("dtype", ["i8", "u8", "i4"])
@pytest.mark.parametrize("at", [0, 3, 15, 16, 255, 256, 300, 511, 700, 1023, 1029])
def test_a_bad_id_anywhere_is_named(dtype, at):
    """An id out of range in a chunk's whole blocks (either interleaved stream), in its tail or
    in the partial last chunk: the error names it, on either compression path."""
    ids = np.random.default_rng(at).integers(0, 2**31, 1030).astype(dtype)
    bad = {"i8": -3, "u8": 2**32 + 5, "i4": -(2**31)}[dtype]
    ids[at] = bad
    for accel in (True, False):
        keyer = ChunkKeys(256, "sha256", partial_chunks=True, accel=accel)
        with pytest.raises(ValueError, match=f"got {bad} at position {at}$"):
            keyer.keys(ids)


@pytest.mark.parametrize("seed", ["0", "42"])
def test_vllm_scheme_matches_hash_block_tokens(seed):
    prompt = list(range(1000, 1050))
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=16, key_scheme="vllm-sha256",
                     vllm_seed=seed)
    assert [bytes(r) for r in tix.chunk_keys(np.array(prompt, dtype=np.int32))] == ref_vllm(prompt, 16, seed)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 16, 256])
def test_vllm_scheme_every_pickle_form(chunk):
    """The C encoder writes pickle's bytes itself: every int opcode (BININT1/2, BININT, LONG1 at
    the boundaries), every tuple form (1, 2, 3 and MARK...TUPLE) and a partial last chunk."""
    edges = [0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]
    rng = np.random.default_rng(chunk)
    prompt = edges + rng.integers(0, 2**32, 600).tolist() + edges[::-1] + [7]
    for partial in (False, True):
        tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=chunk, key_scheme="vllm-sha256",
                         partial_chunks=partial, vllm_seed="7")
        assert [bytes(r) for r in tix.chunk_keys(prompt)] == ref_vllm(prompt, chunk, "7", partial)


def test_vllm_scheme_chunk_limit():
    with pytest.raises(ValueError, match="up to 8192 tokens"):
        TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=8193, key_scheme="vllm-sha256")


def test_input_forms_give_the_same_keys():
    torch = pytest.importorskip("torch")
    prompt = list(range(7, 40))
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=8)
    want = tix.chunk_keys(prompt)
    for form in (np.array(prompt, np.uint32), np.array(prompt, np.int64), np.array(prompt, np.uint16),
                 torch.tensor(prompt), torch.tensor(prompt, dtype=torch.int32), tuple(prompt)):
        assert np.array_equal(tix.chunk_keys(form), want), type(form)


def test_scheme_width_mismatch_and_bad_options():
    with pytest.raises(ValueError, match="32-byte keys.*key_bytes=8"):
        TokenIndex(kvdm.index.open("dict", key_bytes=8), key_scheme="sha256")
    with pytest.raises(ValueError, match="8-byte keys.*key_bytes=32"):
        TokenIndex(kvdm.index.open("dict", key_bytes=32), key_scheme="u64")
    with pytest.raises(ValueError, match="unknown key_scheme"):
        TokenIndex(kvdm.index.open("dict", key_bytes=32), key_scheme="md5")
    with pytest.raises(ValueError, match="chunk_size"):
        TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=0)
    assert TokenIndex(kvdm.index.open("dict", key_bytes=8)).key_scheme == "u64"
    assert TokenIndex(kvdm.index.open("dict", key_bytes=32)).key_scheme == "sha256"


def test_input_validation():
    with pytest.raises(ValueError, match="non-negative"):
        as_tokens([1, -2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        as_tokens(np.array([1, -2], np.int32))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        as_tokens([2**32])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        as_tokens([2**70, 1])
    with pytest.raises(ValueError, match="1-d"):
        as_tokens(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="integer dtype.*float"):
        as_tokens(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer dtype.*float"):
        as_tokens([1.5, 2])
    with pytest.raises(TypeError, match="integer dtype.*bool"):
        as_tokens(np.array([True, False]))
    with pytest.raises(TypeError, match="torch tensor, a numpy array or a list"):
        as_tokens("hello")
    assert as_tokens([]).shape == (0,)
    with pytest.raises(ValueError, match="got -1 at position 2"):
        as_tokens(np.array([0, 1, -1, -5], np.int8))
    with pytest.raises(ValueError, match=r"got 4294967296 at position 1"):
        as_tokens(np.array([7, 2**32], np.uint64))


@pytest.mark.parametrize("dtype", ["i1", "u1", "<i2", ">u2", "<i4", ">i4", "<u4", ">i8", "<u8", "u8"])
def test_every_integer_dtype_encodes_the_same(dtype):
    ids = [0, 1, 2, 100, 127]
    assert as_tokens(np.array(ids, dtype=dtype)).tobytes() == b"".join(i.to_bytes(4, "little") for i in ids)
    assert as_tokens(np.array(ids, dtype=dtype)[::2]).tolist() == ids[::2]  # a strided view


def test_torch_input_validation():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="integer dtype.*float"):
        as_tokens(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer dtype.*bool"):
        as_tokens(torch.tensor([True]))
    with pytest.raises(ValueError, match="1-d"):
        as_tokens(torch.zeros((1, 4), dtype=torch.int64))
    with pytest.raises(ValueError, match="non-negative"):
        as_tokens(torch.tensor([3, -1]))


# -- the C fast path (native/pyext/chunkkeys.c) and the Python path give the same keys and errors --
def _forms(ids: list[int]) -> Iterator[tuple[str, object]]:
    """Every way a caller may pass ``ids``: the ones the C fast path reads in place, and the
    ones it leaves to the Python path (strided, byte-swapped, unaligned, subclasses, ...)."""
    for dt in ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"):
        if max(ids, default=0) < 2 ** (8 * np.dtype(dt).itemsize - (dt[0] == "i")):
            yield dt, np.array(ids, dt)
            yield f"{dt} swapped", np.array(ids, np.dtype(dt).newbyteorder(">"))
    a = np.array(ids, np.int64)
    yield "strided", np.repeat(a, 2)[::2]
    raw = np.zeros(8 * len(ids) + 1, np.uint8)
    unaligned = raw[1:].view(np.int64)
    unaligned[:] = a
    yield "unaligned", unaligned
    yield "masked array", np.ma.masked_array(a)
    yield "list", list(ids)
    yield "tuple", tuple(ids)
    yield "list of numpy ints", [np.int64(i) for i in ids]
    torch = sys.modules.get("torch")
    if torch is not None:
        yield "torch int64", torch.tensor(ids, dtype=torch.int64)
        yield "torch strided", torch.tensor(ids, dtype=torch.int64).repeat_interleave(2)[::2]
        yield "torch parameter", torch.nn.Parameter(torch.tensor(ids, dtype=torch.int64), requires_grad=False)
        for name in ("int32", "int16", "uint8", "uint16", "uint32", "uint64"):
            dt = getattr(torch, name, None)
            if dt is not None and max(ids, default=0) <= min(torch.iinfo(dt).max, 2**32 - 1):
                yield f"torch {name}", torch.tensor(ids, dtype=torch.int64).to(dt)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 1000, 4097, 9000])
def test_every_form_gives_the_hashlib_keys(n):
    """Lengths across the C path's stack/heap (4,096) and GIL-release (8,192) thresholds (torch
    forms where torch is installed)."""
    ids = np.random.default_rng(n).integers(0, 2**32, n).tolist()
    small = [i % 200 for i in ids]  # fits every dtype
    for prompt in (ids, small):
        for chunk, partial in ((256, False), (100, True)):
            want = ref_sha256_chain(prompt, chunk, partial)
            keyer = ChunkKeys(chunk, "sha256", partial_chunks=partial)
            for name, form in _forms(prompt):
                assert [bytes(r) for r in keyer.keys(form)] == want, name
    u64 = ChunkKeys(64, "u64", partial_chunks=True)
    for name, form in _forms(small):
        assert u64.keys(form).tolist() == ref_u64(small, 64, partial=True), name


def test_common_forms_skip_the_python_path(monkeypatch):
    """The forms an engine passes (contiguous numpy and CPU torch integer arrays, lists of ints)
    are hashed without int_tokens: what keeps a short prompt's keys faster than hashlib."""
    torch = pytest.importorskip("torch")
    import kvdm.index.tokens as tokens_mod

    keyer = ChunkKeys(4)
    keyer.keys(torch.arange(8))  # the first tensor names torch's types to C
    monkeypatch.setattr(tokens_mod, "int_tokens", lambda t: pytest.fail(f"Python path for {type(t)}"))
    want = ref_sha256_chain(list(range(8)), 4)
    for form in (np.arange(8), np.arange(8, dtype=np.uint32), list(range(8)), torch.arange(8),
                 torch.arange(8, dtype=torch.int32)):
        assert [bytes(r) for r in keyer.keys(form)] == want, form


def test_tensor_getters_by_name(monkeypatch):
    """Where a tensor type's getters are not C descriptors, the C path asks them by name (a
    stand-in type here: Python properties and methods over a numpy array)."""
    import kvdm.index.tokens as tokens_mod
    from kvdm.native import chunkkeys

    class Ids:
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        dtype = property(lambda self: "int64")
        is_cpu = property(lambda self: True)
        shape = property(lambda self: tuple(self.a.shape))

        def is_contiguous(self) -> bool:
            return bool(self.a.flags.c_contiguous)

        def is_neg(self) -> bool:
            return False

        def data_ptr(self) -> int:
            return self.a.ctypes.data

    a = np.arange(40, dtype=np.int64)
    keyer = ChunkKeys(8)
    try:
        chunkkeys.use_torch(Ids, {"int64": (8, True)})
        assert [bytes(r) for r in keyer._fast.keys(Ids(a))] == ref_sha256_chain(list(range(40)), 8)
        assert keyer._fast.keys(Ids(a[::2])) is None  # not contiguous: the Python path decides
    finally:  # torch's own types again, for the tests after this one
        monkeypatch.setattr(tokens_mod, "_torch_named", False)
        if "torch" in sys.modules:
            tokens_mod._name_torch_to_c()


BAD_PROMPTS = [  # (form, error, message) for every entry point, fast path or not
    ([1, -2, 3], ValueError, "non-negative, got -2 at position 1"),
    ([1, 2, 3, 4, 5, -6, 7, 8, 9], ValueError, "non-negative, got -6 at position 5"),  # in C's 4-id steps
    ([0] * 6 + [2**40, 1], ValueError, r"\[0, 2\*\*32\), got 1099511627776 at position 6"),
    ([1, 2, 3, 4.5, 5], TypeError, "integer dtype.*float"),
    (np.array([1, 5, -7], np.int64), ValueError, "non-negative, got -7 at position 2"),
    (np.array([0, 1, -1, -5], np.int8), ValueError, "got -1 at position 2"),
    ([2**32], ValueError, r"\[0, 2\*\*32\), got 4294967296 at position 0"),
    ([3, 2**70], ValueError, r"\[0, 2\*\*32\)"),
    (np.array([7, 2**32], np.uint64), ValueError, "got 4294967296 at position 1"),
    (np.array([7, 2**40], np.int64), ValueError, "got 1099511627776 at position 1"),
    (np.zeros((2, 3), np.int64), ValueError, "1-d"),
    (np.array(5), ValueError, "1-d"),
    (np.array([1.0, 2.0]), TypeError, "integer dtype.*float"),
    ([1.5, 2], TypeError, "integer dtype.*float"),
    (np.array([True, False]), TypeError, "integer dtype.*bool"),
    ([True, False], TypeError, "integer dtype.*bool"),
    ("hello", TypeError, "torch tensor, a numpy array or a list"),
]


def _bad_prompts() -> list[tuple[object, type, str]]:
    torch = sys.modules.get("torch")
    if torch is None:
        return BAD_PROMPTS
    return BAD_PROMPTS + [
        (torch.tensor([3, -1]), ValueError, "non-negative, got -1 at position 1"),
        (torch.tensor([3, 2**32 + 1]), ValueError, "got 4294967297 at position 1"),
        (torch.tensor([1.0, 2.0]), TypeError, "integer dtype.*float"),
        (torch.tensor([True]), TypeError, "integer dtype.*bool"),
        (torch.zeros((1, 4), dtype=torch.int64), ValueError, "1-d"),
        (torch.zeros((), dtype=torch.int64), ValueError, "1-d"),
    ]


@pytest.mark.parametrize("key_scheme", ["sha256", "u64", "vllm-sha256"])
def test_bad_tokens_fail_alike_on_every_entry_point(key_scheme):
    idx = kvdm.index.open("dict", key_bytes=8 if key_scheme == "u64" else 32)
    tix = TokenIndex(idx, chunk_size=1, key_scheme=key_scheme)
    calls = [("as_tokens", as_tokens), ("keys", tix.keyer.keys), ("chunk_keys", tix.chunk_keys), ("lookup", tix.lookup),
             ("store", lambda p: tix.store(p, [1] * 8)), ("lookup_many", lambda p: tix.lookup_many([p])),
             ("store_many", lambda p: tix.store_many([p], [[1] * 8]))]
    if "torch" in sys.modules:
        calls.append(("retrieve_mask", tix.retrieve_mask))
    for form, error, msg in _bad_prompts():
        for name, call in calls:
            with pytest.raises(error, match=msg):
                call(form)
                pytest.fail(f"{name} accepted {form!r}")
    assert idx.get(tix.chunk_keys([1, 2]))[1].tolist() == [False, False]  # nothing was stored


# -- semantics over every backend --
@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s
    assert not any(pid_running(p) for p in started_pids()), "a redis-server was left behind"


@pytest.fixture(params=["dict", "chime", "redis"])
def open_index(request):
    opened = []

    def opener(key_bytes: int):
        if request.param == "dict":
            idx = kvdm.index.open("dict", key_bytes=key_bytes)
        elif request.param == "chime":
            idx = kvdm.index.open("chime", request.getfixturevalue("dm"), key_bytes)
        else:
            server = request.getfixturevalue("redis_server")
            idx = RedisIndex(key_bytes, url=server.url, namespace=f"tok{next(_names)}:", pipeline=8)
        opened.append(idx)
        return idx

    yield opener
    for idx in opened:
        idx.close()


def _prompt(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, n, dtype=np.int64)


@pytest.mark.parametrize("key_bytes", [8, 32])
def test_lookup_store_prefix(open_index, key_bytes):
    tix = TokenIndex(open_index(key_bytes), chunk_size=16)
    p = _prompt(1, 100)                      # 6 full chunks + 4 tokens
    assert tix.num_chunks(100) == 6
    assert tix.lookup(p) == 0
    tix.store(p[:64], np.arange(10, 14, dtype=np.uint64))
    assert tix.lookup(p) == 64
    assert tix.lookup(p[:64]) == 64
    assert tix.lookup(p[:70]) == 64
    assert tix.lookup(p[:40]) == 32          # capped at whole chunks of the shorter prompt
    keys = tix.chunk_keys(p)
    values, found = tix.index.get(keys)
    assert found.tolist() == [True] * 4 + [False] * 2 and values[:4].tolist() == [10, 11, 12, 13]
    # a gap: chunk 4 missing, chunk 5 present -> the prefix stops at the first miss
    tix.index.put(keys[5:6], np.array([99], dtype=np.uint64))
    assert tix.lookup(p) == 64
    # a different first token changes every key
    q = p.copy()
    q[0] += 1
    assert tix.lookup(q) == 0
    tix.store(p, np.arange(6))
    assert tix.lookup(p) == 96               # the 4-token tail is never cached by default


def test_partial_chunks(open_index):
    tix = TokenIndex(open_index(32), chunk_size=16, partial_chunks=True)
    p = _prompt(2, 100)
    assert tix.num_chunks(100) == 7
    with pytest.raises(ValueError, match="7 keyed chunks but 6"):
        tix.store(p, np.arange(6))
    tix.store(p, np.arange(7))
    assert tix.lookup(p) == 100
    # the partial chunk's key covers exactly its tokens: a longer prompt does not match it
    assert tix.lookup(np.concatenate([p, [1, 2]])) == 96
    assert tix.lookup(p[:96]) == 96
    assert tix.lookup(p[:98]) == 96


def test_retrieve_mask(open_index):
    torch = pytest.importorskip("torch")
    tix = TokenIndex(open_index(32), chunk_size=4)
    p = torch.tensor(_prompt(3, 18))         # 4 full chunks + 2 tokens
    m = tix.retrieve_mask(p)
    assert m.dtype == torch.bool and m.device.type == "cpu" and m.shape == (18,) and not m.any()
    tix.store(p[:12], [1, 2, 3])
    assert tix.retrieve_mask(p).tolist() == [True] * 12 + [False] * 6
    # a mask: the caller already has the first chunk; chunks found from chunk 1 on
    want = torch.tensor([False] * 4 + [True] * 14)
    assert tix.retrieve_mask(p, want).tolist() == [False] * 4 + [True] * 8 + [False] * 6
    # the first wanted chunk is missing -> nothing, even though later chunks are present
    keys = tix.chunk_keys(p)
    tix.index.delete(keys[1:2])
    assert tix.retrieve_mask(p, want).tolist() == [False] * 18
    assert tix.retrieve_mask(p).tolist() == [True] * 4 + [False] * 14
    # a mask beyond every keyed chunk, numpy and list masks
    tail = np.array([False] * 16 + [True] * 2)
    assert tix.retrieve_mask(p, tail).tolist() == [False] * 18
    assert tix.retrieve_mask(p.tolist(), [True] * 18).tolist() == [True] * 4 + [False] * 14


def test_retrieve_mask_partial_chunk():
    pytest.importorskip("torch")
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=4, partial_chunks=True)
    p = list(range(10))
    tix.store(p, [1, 2, 3])
    assert tix.retrieve_mask(p).tolist() == [True] * 10
    assert tix.lookup(p) == 10


def test_retrieve_mask_errors():
    torch = pytest.importorskip("torch")
    tix = TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=4)
    p = list(range(8))
    with pytest.raises(ValueError, match="multiple of the chunk size"):
        tix.retrieve_mask(p, torch.tensor([False] * 2 + [True] * 6))
    with pytest.raises(ValueError, match=r"F\.\.\.FT\.\.\.T"):
        tix.retrieve_mask(p, torch.tensor([True] * 4 + [False] * 4))
    with pytest.raises(ValueError, match="one entry per token"):
        tix.retrieve_mask(p, torch.ones(7, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        tix.retrieve_mask(p, torch.ones(8, dtype=torch.int64))


@pytest.mark.parametrize("key_bytes", [8, 32])
def test_batched_forms_equal_one_by_one(open_index, key_bytes):
    a = TokenIndex(open_index(key_bytes), chunk_size=8)
    b = TokenIndex(open_index(key_bytes), chunk_size=8)
    base = _prompt(4, 64)
    prompts = [base, base[:30], np.concatenate([base[:24], _prompt(5, 40)]), _prompt(6, 50), [], base[:7]]
    locs = [np.arange(a.num_chunks(len(p)), dtype=np.uint64) + 100 * i for i, p in enumerate(prompts)]
    stored = [0, 3, 5]
    for i in stored:
        a.store(prompts[i], locs[i])
    b.store_many([prompts[i] for i in stored], [locs[i] for i in stored])
    one = [a.lookup(p) for p in prompts]
    assert a.lookup_many(prompts) == one == b.lookup_many(prompts) == [b.lookup(p) for p in prompts]
    assert one == [64, 24, 24, 48, 0, 0]
    assert np.array_equal(a.index.get(a.chunk_keys(base))[0], b.index.get(b.chunk_keys(base))[0])
    assert a.lookup_many([]) == []


def test_lookup_many_is_one_get(monkeypatch):
    idx = kvdm.index.open("dict", key_bytes=8)
    tix = TokenIndex(idx, chunk_size=4)
    calls = []
    real = idx.get
    monkeypatch.setattr(idx, "get", lambda keys: calls.append(len(keys)) or real(keys))
    tix.lookup_many([list(range(8)), list(range(12)), list(range(3))])
    assert calls == [5]


def test_lookup_many_shares_round_trips_on_chime(dm):
    """20 prompts in one batch take fewer round trips than 20 one-prompt lookups."""
    idx = kvdm.index.open("chime", dm, 32)
    tix = TokenIndex(idx, chunk_size=16)
    prompts = [_prompt(100 + i, 500) for i in range(20)]
    tix.store_many(prompts, [np.arange(31) for _ in prompts])
    idx.reset_counters()
    assert tix.lookup_many(prompts) == [496] * 20
    many = idx.counters()["rtts"]
    idx.reset_counters()
    assert [tix.lookup(p) for p in prompts] == [496] * 20
    assert many < idx.counters()["rtts"]
    idx.close()


def test_without_torch(monkeypatch):
    """numpy and list inputs work without torch; retrieve_mask names the extra to install."""
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(kvdm.index, "tokens", sys.modules["kvdm.index.tokens"], raising=False)
    monkeypatch.delitem(sys.modules, "kvdm.index.tokens", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    tokens = importlib.import_module("kvdm.index.tokens")
    tix = tokens.TokenIndex(kvdm.index.open("dict", key_bytes=32), chunk_size=4)
    p = np.arange(10, dtype=np.int64)
    tix.store(p, [1, 2])
    assert tix.lookup(p) == 8 and tix.lookup(list(range(10))) == 8
    assert tix.lookup_many([p, p[:4]]) == [8, 4]
    with pytest.raises(ImportError, match=r"kvdm\[torch\].*torch==2\.13\.0"):
        tix.retrieve_mask(p)
