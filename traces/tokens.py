"""Token-level traces: prompts synthesised from a trace's ``hash_ids``, keyed as an engine keys them.

The public KV-cache traces carry block ids, not prompts. To run the token layer
(:mod:`kvdm.index.tokens`) on them, each request's prompt is made up from its ids, exactly:

* block id ``h`` (trace block size ``B``) becomes the ``B`` tokens
  ``t_j = mix64(h * B + j + TOKEN_SEED) mod VOCAB`` for ``j = 0..B-1``, in uint64 wrapping
  arithmetic, ``mix64`` the splitmix64 finaliser (:func:`kvdm.traces.mapping.mix64`),
  ``TOKEN_SEED`` = 0x6B76646D746F6B6E ("kvdmtokn"), ``VOCAB`` = 128,256 (Llama 3's vocabulary);
* a request's prompt is its blocks' tokens in order, trimmed to ``input_length`` when that lies
  in ``((n-1)*B, n*B]`` for its ``n`` blocks (the last block is then partial); otherwise the
  trace disagrees with itself and the prompt keeps all ``n*B`` tokens (counted in
  ``TokenStreamInfo.length_mismatch``).

Equal ids give equal tokens, so two prompts share a token prefix exactly where they share a
block-id prefix (up to a shared last block of different fill). The prompts are cut into chunks
of ``chunk`` tokens and keyed by :class:`kvdm.index.tokens.ChunkKeys` (the trailing partial
chunk is keyed too, as LMCache's ``save_unfull_chunk``, so with ``chunk == B`` a request has as
many chunks as blocks); the replay then runs the engine's view over those keys (the ``prefix``
mapping: one prefix match per request, then one insert of the chunks from the first miss).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from kvdm.index import ChunkKeys

from .loaders import Trace
from .mapping import OP_PREFIX, OpStream, key_codes, map_trace, mix64

TOKEN_SEED = np.uint64(0x6B76646D746F6B6E)  # "kvdmtokn"
VOCAB = 128_256
PROGRESS_EVERY_S = 2.0


def block_tokens(ids: np.ndarray, block: int) -> np.ndarray:
    """The synthetic tokens of the blocks ``ids``, in order: uint32[len(ids) * block]."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64)[:, None] * np.uint64(block) + np.arange(block, dtype=np.uint64) + TOKEN_SEED
        return (mix64(x.ravel()) % np.uint64(VOCAB)).astype("<u4")


def prompt_length(n_blocks: int, input_length: int, block: int) -> int:
    """The prompt's token count: ``input_length`` where it fits the block count, else all blocks."""
    return int(input_length) if (n_blocks - 1) * block < input_length <= n_blocks * block else n_blocks * block


def prompt_tokens(trace: Trace, r: int) -> np.ndarray:
    """Request ``r``'s synthetic prompt (uint32 token ids)."""
    ids = trace.request(r)
    b = trace.block_tokens
    return block_tokens(ids, b)[:prompt_length(len(ids), int(trace.input_length[r]), b)]


@dataclass
class TokenStreamInfo:
    """What the token-level stream was built from, and the block-level answer to compare with."""

    chunk: int
    key_scheme: str
    block: int
    prompt_tokens: np.ndarray        # int64[R]: each request's prompt length in tokens
    block_hit_tokens: np.ndarray     # int64[R]: the block-level ground truth (leading cached blocks), in tokens
    length_mismatch: int             # requests whose input_length disagrees with their block count
    hash_s: float                    # wall time of synthesising and keying the prompts

    def hit_tokens(self, req: np.ndarray, matched_chunks: np.ndarray) -> np.ndarray:
        """Tokens covered by ``matched_chunks`` leading chunks of requests ``req``."""
        return np.minimum(matched_chunks * self.chunk, self.prompt_tokens[req])


def token_stream(trace: Trace, keyer: ChunkKeys, inserts: str = "timed",
                 quiet: bool = False) -> tuple[OpStream, TokenStreamInfo]:
    """The engine's view of ``trace`` at token level: synthesise every prompt, key its chunks
    with ``keyer`` (which must key partial chunks) and map it with the ``prefix`` mapping."""
    if not keyer.partial_chunks:
        raise ValueError("the token-level replay keys the trailing partial chunk (the traces count partial blocks)")
    b = trace.block_tokens
    lengths = trace.lengths
    n_tokens = np.array([prompt_length(int(n), int(L), b) for n, L in zip(lengths, trace.input_length, strict=True)],
                        dtype=np.int64)
    counts = np.array([keyer.num_chunks(int(n)) for n in n_tokens], dtype=np.int64)
    width = keyer.key_bytes
    keys = np.empty((int(counts.sum()), 32), np.uint8) if width == 32 else np.empty(int(counts.sum()), np.uint64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    t0 = last = time.perf_counter()
    for r in range(trace.n_requests):
        keys[offsets[r]:offsets[r + 1]] = keyer.keys(prompt_tokens(trace, r))
        now = time.perf_counter()
        if not quiet and now - last >= PROGRESS_EVERY_S:
            last = now
            print(f"[tokens] keyed {r + 1:,}/{trace.n_requests:,} prompts", file=sys.stderr, flush=True)
    hash_s = time.perf_counter() - t0
    chunks = Trace(name=trace.name, offsets=offsets, blocks=key_codes(keys), timestamps_ms=trace.timestamps_ms,
                   input_length=n_tokens, output_length=trace.output_length, block_tokens=keyer.chunk_size,
                   source=trace.source, format=trace.format)
    stream = map_trace(chunks, "prefix", "sha256" if width == 32 else "u64", inserts, keys=keys)
    block_level = map_trace(trace, "prefix", "id", inserts)
    info = TokenStreamInfo(chunk=keyer.chunk_size, key_scheme=keyer.key_scheme, block=b, prompt_tokens=n_tokens,
                           block_hit_tokens=np.minimum(_leading_hits(block_level) * b, n_tokens),
                           length_mismatch=trace.length_mismatches(), hash_s=hash_s)
    return stream, info


def _leading_hits(stream: OpStream) -> np.ndarray:
    """Per request, the expected prefix match of a prefix-mapped stream (0 for a request without one)."""
    out = np.zeros(stream.n_requests, np.int64)
    pm = np.flatnonzero(stream.kind == OP_PREFIX)
    req = np.searchsorted(stream.req_offsets, pm, side="right") - 1
    out[req] = stream.expected_hits[pm]
    return out


__all__ = ["TOKEN_SEED", "VOCAB", "TokenStreamInfo", "block_tokens", "prompt_length", "prompt_tokens",
           "token_stream"]
