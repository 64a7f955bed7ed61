/* chunkhash.c - chunk-key chains over a prompt's tokens (see chunkhash.h). */
#define OPENSSL_API_COMPAT 0x10101000L /* SHA256_Init & co.: no provider lookup per chunk */
#include "chunkhash.h"

#include <openssl/sha.h>
#include <string.h>

size_t kvdm_chunk_count(size_t n_tokens, size_t chunk, int partial) {
    if (chunk == 0) return 0;
    return n_tokens / chunk + (partial && n_tokens % chunk ? 1 : 0);
}

/* One pass, no branch per id: convert, OR the out-of-range bits together, and look for the first
 * bad id only when there is one (the error path). */
#define TOKENS_TO_U32(T, out_of_range)                                  \
    do {                                                                \
        const T *restrict src = in;                                     \
        uint8_t *restrict dst = out;                                    \
        uint64_t bad = 0;                                               \
        for (size_t i = 0; i < n; i++) {                                \
            T v = src[i];                                               \
            bad |= (uint64_t)(out_of_range);                            \
            store_le32(dst + 4 * i, (uint32_t)v);                       \
        }                                                               \
        if (!bad) return -1;                                            \
        for (size_t i = 0; i < n; i++) {                                \
            T v = src[i];                                               \
            (void)v;                                                    \
            if (out_of_range) return (int64_t)i;                        \
        }                                                               \
        return -1;                                                      \
    } while (0)

static inline void store_le32(uint8_t *p, uint32_t v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 4);
#else
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
#endif
}

/* -O3: the build's -O2 leaves these loops scalar (3x slower than numpy's astype) */
__attribute__((optimize("O3"))) int64_t kvdm_tokens_to_u32le(const void *in, int elem_bytes, int is_signed, size_t n,
                                                             uint8_t *out) {
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

/* The key of digest h: h itself for 32-byte keys (all-zero is reserved: ...01), or its first 8
 * bytes as a little-endian uint64 (0 and 2^64-1 are reserved: 1 and 2^64-2). */
static void put_key(uint8_t *out, const uint8_t h[32], int key_bytes) {
    if (key_bytes == 32) {
        static const uint8_t zero[32];
        memcpy(out, h, 32);
        if (!memcmp(h, zero, 32)) out[31] = 1;
        return;
    }
    uint64_t k = 0;
    for (int i = 7; i >= 0; i--) k = k << 8 | h[i];
    if (k == 0) k = 1;
    if (k == UINT64_MAX) k = UINT64_MAX - 1;
    memcpy(out, &k, 8); /* the key array is the host's uint64 */
}

int64_t kvdm_chunk_keys(int scheme, const uint8_t *seed, size_t seed_len, const uint8_t *tokens_le,
                        size_t n_tokens, size_t chunk, int partial, int key_bytes, uint8_t *out,
                        size_t out_chunks) {
    size_t n = kvdm_chunk_count(n_tokens, chunk, partial);
    if (chunk == 0 || n > out_chunks || (n && !out) || (n_tokens && !tokens_le) || (seed_len && !seed) ||
        (key_bytes != 8 && key_bytes != 32))
        return -1;
    uint8_t h[32]; /* h_{i-1}: the chain runs on digests, the keys may be remapped */
    if (scheme == KVDM_CHUNK_SHA256) {
        SHA256_CTX ctx;
        for (size_t i = 0; i < n; i++) {
            size_t len = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
            if (!SHA256_Init(&ctx) || !SHA256_Update(&ctx, i ? h : seed, i ? 32 : seed_len) ||
                !SHA256_Update(&ctx, tokens_le + 4 * i * chunk, 4 * len) || !SHA256_Final(h, &ctx))
                return -2;
            put_key(out + (size_t)key_bytes * i, h, key_bytes);
        }
        return (int64_t)n;
    }
    if (scheme == KVDM_CHUNK_VLLM) {
        if (seed_len != 32 || chunk > KVDM_CHUNK_VLLM_MAX) return -1;
        uint8_t buf[11 + 34 + 3 + 5 * KVDM_CHUNK_VLLM_MAX + 6];
        for (size_t i = 0; i < n; i++) {
            size_t len = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
            size_t size = vllm_pickle(buf, i ? h : seed, tokens_le + 4 * i * chunk, len);
            if (!SHA256(buf, size, h)) return -2;
            put_key(out + (size_t)key_bytes * i, h, key_bytes);
        }
        return (int64_t)n;
    }
    return -1;
}
