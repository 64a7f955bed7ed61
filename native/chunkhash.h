/* chunkhash.h - the token layer's chunk keys (kvdm.index.tokens): a prompt's token ids cut into
 * chunks, each keyed by a SHA-256 chained over every chunk before it. One C call per prompt, so
 * hashing costs what SHA-256 costs (OpenSSL's, SHA-NI where the CPU has it) and not a Python
 * call per chunk. The exact definitions are in index/tokens.py's docstring; tests recompute them
 * with hashlib and pickle.
 *
 * Tokens arrive as their little-endian uint32 bytes (4 * n_tokens bytes). Chunk i is tokens
 * [i*chunk, (i+1)*chunk); a trailing partial chunk is keyed only when `partial` is non-zero.
 */
#ifndef KVDM_CHUNKHASH_H
#define KVDM_CHUNKHASH_H

#include <stddef.h>
#include <stdint.h>

/* h_i = SHA-256(B_i || h_{i-1}), h_{-1} = seed (32 bytes), B_i the chunk's uint32 LE bytes. The
 * parent comes last so that B_i's whole 64-byte blocks do not wait for it: two chunks' blocks are
 * compressed as two interleaved streams (x86 SHA extensions), and only the final block or two of
 * each chunk is sequential. */
#define KVDM_CHUNK_SHA256 0
/* vLLM's hash_block_tokens with sha256: h_i = SHA-256(pickle.dumps((h_{i-1}, tuple(chunk_i),
 * None), protocol=5)), h_{-1} = seed (vLLM's 32-byte NONE_HASH). Chunks up to
 * KVDM_CHUNK_VLLM_MAX tokens (one pickle frame). */
#define KVDM_CHUNK_VLLM 1
#define KVDM_CHUNK_VLLM_MAX 8192

/* Token ids of any integer width (elem_bytes 1, 2, 4 or 8, signed or not, native byte order) to
 * their uint32 little-endian bytes, checked in the same pass. Returns -1 when all of the n ids
 * lie in [0, 2^32), else the position of the first that does not (out is then incomplete), or
 * -2 for an unsupported elem_bytes. */
int64_t kvdm_tokens_to_u32le(const void *in, int elem_bytes, int is_signed, size_t n, uint8_t *out);

/* 1 when this CPU has the SHA extensions (and SSSE3, SSE4.1) kvdm_chunk_keys can use, else 0. */
int kvdm_chunk_accel(void);

/* Number of keyed chunks of a prompt of n_tokens. */
size_t kvdm_chunk_count(size_t n_tokens, size_t chunk, int partial);

/* Writes the prompt's chunk keys to out, which holds out_chunks of them: key_bytes 32 (the
 * digest; all-zero, reserved by the index API, becomes 31 zero bytes and 0x01) or 8 (the
 * digest's first 8 bytes as a little-endian uint64, stored as the host's uint64; 0 -> 1 and
 * 2^64-1 -> 2^64-2). The chain always runs on the digests. accel: 1 to use the SHA extensions,
 * only where kvdm_chunk_accel() returned 1 (the caller asks once: CPUID is a trap to the
 * hypervisor in a VM, ~15 us), 0 for OpenSSL's compression only (same keys; tests compare them). Returns the number written, or -1 on bad arguments (unknown scheme, chunk 0,
 * key_bytes not 8 or 32, out too small, a vLLM chunk over KVDM_CHUNK_VLLM_MAX tokens or a seed
 * that is not 32 bytes), or -2 when OpenSSL fails. */
int64_t kvdm_chunk_keys(int scheme, const uint8_t *seed, size_t seed_len, const uint8_t *tokens_le,
                        size_t n_tokens, size_t chunk, int partial, int key_bytes, int accel, uint8_t *out,
                        size_t out_chunks);

/* kvdm_chunk_keys over token ids of any integer width (as kvdm_tokens_to_u32le takes them): one
 * call per prompt. uint32 ids are hashed as they are; int64, uint64 and int32 ids are read in
 * place by the SHA-extension path of the "sha256" chain (range-checked as they are loaded);
 * others are converted first (on the stack up to 4096 tokens). Returns what kvdm_chunk_keys
 * returns, or -3 with *bad the position of the first id outside [0, 2^32), or -4 when out of
 * memory. */
int64_t kvdm_prompt_keys(int scheme, const uint8_t *seed, size_t seed_len, const void *tokens, int elem_bytes,
                         int is_signed, size_t n_tokens, size_t chunk, int partial, int key_bytes, int accel,
                         uint8_t *out, size_t out_chunks, int64_t *bad);

#endif
