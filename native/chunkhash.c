/* chunkhash.c - chunk-key chains over a prompt's tokens (see chunkhash.h). */
#define OPENSSL_API_COMPAT 0x10101000L /* SHA256_Init & co.: no provider lookup per chunk */
#include "chunkhash.h"

#include <openssl/sha.h>
#include <string.h>

size_t kvdm_chunk_count(size_t n_tokens, size_t chunk, int partial) {
    if (chunk == 0) return 0;
    return n_tokens / chunk + (partial && n_tokens % chunk ? 1 : 0);
}

#define TOKENS_TO_U32(T, bad)                                          \
    do {                                                               \
        const T *src = in;                                             \
        for (size_t i = 0; i < n; i++) {                               \
            T v = src[i];                                              \
            if (bad) return (int64_t)i;                                \
            uint32_t u = (uint32_t)v;                                  \
            out[4 * i] = (uint8_t)u;                                   \
            out[4 * i + 1] = (uint8_t)(u >> 8);                        \
            out[4 * i + 2] = (uint8_t)(u >> 16);                       \
            out[4 * i + 3] = (uint8_t)(u >> 24);                       \
        }                                                              \
        return -1;                                                     \
    } while (0)

int64_t kvdm_tokens_to_u32le(const void *in, int elem_bytes, int is_signed, size_t n, uint8_t *out) {
    switch (elem_bytes * (is_signed ? -1 : 1)) {
    case 1: TOKENS_TO_U32(uint8_t, 0);
    case -1: TOKENS_TO_U32(int8_t, v < 0);
    case 2: TOKENS_TO_U32(uint16_t, 0);
    case -2: TOKENS_TO_U32(int16_t, v < 0);
    case 4: TOKENS_TO_U32(uint32_t, 0);
    case -4: TOKENS_TO_U32(int32_t, v < 0);
    case 8: TOKENS_TO_U32(uint64_t, v >> 32);
    case -8: TOKENS_TO_U32(int64_t, (uint64_t)v >> 32);
    }
    return -2;
}

static uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* pickle protocol 5 of (parent: bytes[32], tuple(ints), None), as CPython's C pickler writes it:
 * PROTO 5, FRAME, SHORT_BINBYTES, MEMOIZE, the tuple, MEMOIZE, NONE, TUPLE3, MEMOIZE, STOP.
 * Returns its length; buf holds 11 + 34 + 3 + 5 * n + 6 bytes. */
static size_t vllm_pickle(uint8_t *buf, const uint8_t parent[32], const uint8_t *tok, size_t n) {
    uint8_t *p = buf + 11; /* after PROTO 5 and FRAME <u64> */
    *p++ = 'C';
    *p++ = 32;
    memcpy(p, parent, 32);
    p += 32;
    *p++ = 0x94;
    if (n == 0) {
        *p++ = ')'; /* EMPTY_TUPLE: not memoized */
    } else {
        if (n > 3) *p++ = '(';
        for (size_t i = 0; i < n; i++) {
            uint32_t t = load_le32(tok + 4 * i);
            if (t < 0x100) {
                *p++ = 'K';
                *p++ = (uint8_t)t;
            } else if (t < 0x10000) {
                *p++ = 'M';
                *p++ = (uint8_t)t;
                *p++ = (uint8_t)(t >> 8);
            } else if (t < 0x80000000u) {
                *p++ = 'J';
                memcpy(p, tok + 4 * i, 4);
                p += 4;
            } else { /* LONG1: 5 bytes, two's complement, sign byte 0 */
                *p++ = 0x8a;
                *p++ = 5;
                memcpy(p, tok + 4 * i, 4);
                p[4] = 0;
                p += 5;
            }
        }
        *p++ = n == 1 ? 0x85 : n == 2 ? 0x86 : n == 3 ? 0x87 : 't';
        *p++ = 0x94;
    }
    *p++ = 'N';
    *p++ = 0x87;
    *p++ = 0x94;
    *p++ = '.';
    uint64_t frame = (uint64_t)(p - buf) - 11;
    buf[0] = 0x80;
    buf[1] = 5;
    buf[2] = 0x95;
    for (int i = 0; i < 8; i++) buf[3 + i] = (uint8_t)(frame >> (8 * i));
    return (size_t)(p - buf);
}

int64_t kvdm_chunk_chain(int scheme, const uint8_t *seed, size_t seed_len, const uint8_t *tokens_le,
                         size_t n_tokens, size_t chunk, int partial, uint8_t *out, size_t out_chunks) {
    size_t n = kvdm_chunk_count(n_tokens, chunk, partial);
    if (chunk == 0 || n > out_chunks || (n && !out) || (n_tokens && !tokens_le) || (seed_len && !seed))
        return -1;
    if (scheme == KVDM_CHUNK_SHA256) {
        SHA256_CTX ctx;
        for (size_t i = 0; i < n; i++) {
            size_t len = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
            if (!SHA256_Init(&ctx)) return -2;
            if (i == 0 ? !SHA256_Update(&ctx, seed, seed_len) : !SHA256_Update(&ctx, out + 32 * (i - 1), 32))
                return -2;
            if (!SHA256_Update(&ctx, tokens_le + 4 * i * chunk, 4 * len) || !SHA256_Final(out + 32 * i, &ctx))
                return -2;
        }
        return (int64_t)n;
    }
    if (scheme == KVDM_CHUNK_VLLM) {
        if (seed_len != 32 || chunk > KVDM_CHUNK_VLLM_MAX) return -1;
        uint8_t buf[11 + 34 + 3 + 5 * KVDM_CHUNK_VLLM_MAX + 6];
        for (size_t i = 0; i < n; i++) {
            size_t len = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
            size_t size = vllm_pickle(buf, i ? out + 32 * (i - 1) : seed, tokens_le + 4 * i * chunk, len);
            if (!SHA256(buf, size, out + 32 * i)) return -2;
        }
        return (int64_t)n;
    }
    return -1;
}
