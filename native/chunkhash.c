/* chunkhash.c - chunk-key chains over a prompt's tokens (see chunkhash.h). */
#define OPENSSL_API_COMPAT 0x10101000L /* SHA256_Transform & co.: no provider lookup per block */
#include "chunkhash.h"

#include <openssl/sha.h>
#include <stdlib.h>
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

/* --- SHA-256 compression: x86 SHA extensions (one or two interleaved streams), else OpenSSL's --- */

static const uint32_t SHA256_IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* Where the chain reads a chunk's message from. SRC_LE32: its uint32 little-endian bytes (what
 * kvdm_chunk_keys takes). SRC_I32, SRC_X64: the caller's int32, or int64/uint64, ids in place,
 * each range-checked on the way ([0, 2^32)), which saves kvdm_prompt_keys a conversion pass (~10%
 * of a prompt's time); with the SHA extensions only. A 64-byte block is 16 ids: SRC_BLOCK bytes. */
enum { SRC_LE32, SRC_I32, SRC_X64 };
#define SRC_BLOCK(kind) ((kind) == SRC_X64 ? 128 : 64)

static void compress_openssl(uint32_t st[8], const uint8_t *d, size_t nb) {
    SHA256_CTX c;
    for (int i = 0; i < 8; i++) c.h[i] = st[i];
    for (; nb; nb--, d += 64) SHA256_Transform(&c, d);
    for (int i = 0; i < 8; i++) st[i] = c.h[i];
}

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

int kvdm_chunk_accel(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1; /* CPUID.7.0:EBX.SHA */
}

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define SHANI __attribute__((target("sha,ssse3,sse4.1")))
#define BSWAP_MASK _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL)

/* The state as the SHA instructions want it: ABEF and CDGH. */
SHANI static void shani_load(const uint32_t st[8], __m128i *abef, __m128i *cdgh) {
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B);
    *abef = _mm_alignr_epi8(dcba, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, dcba, 0xF0);
}

SHANI static void shani_store(uint32_t st[8], __m128i abef, __m128i cdgh) {
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&st[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&st[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* Message word group g (4 words, byte-swapped for the SHA instructions) of the block at d, as
 * read from a source of that kind (see SRC_LE32): for the caller's ids the range check rides
 * along, the out-of-range bits OR-ed into *acc (the SHA unit's latency leaves room for it). */
SHANI static inline __attribute__((always_inline)) __m128i message(int kind, const uint8_t *d, int g, __m128i *acc) {
    if (kind == SRC_X64) { /* ids 4g..4g+3: their low halves are the words, their high halves must be 0 */
        __m128 lo = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(d + 32 * g)));
        __m128 hi = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(d + 32 * g + 16)));
        *acc = _mm_or_si128(*acc, _mm_castps_si128(_mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))));
        return _mm_shuffle_epi8(_mm_castps_si128(_mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))), BSWAP_MASK);
    }
    __m128i w = _mm_loadu_si128((const __m128i *)(d + 16 * g));
    if (kind == SRC_I32) *acc = _mm_or_si128(*acc, w); /* the sign bits must be 0 */
    return _mm_shuffle_epi8(w, BSWAP_MASK);
}

/* whether the ids OR-ed into acc were all in range */
SHANI static inline __attribute__((always_inline)) int acc_bad(int kind, __m128i acc) {
    if (kind == SRC_X64) return !_mm_testz_si128(acc, acc);
    if (kind == SRC_I32) return _mm_movemask_ps(_mm_castsi128_ps(acc)) != 0;
    return 0;
}

/* 4 rounds of group g on one stream; m[] holds the message schedule's last four groups; msg is
 * the group's words, evaluated for g < 4 only. */
#define SHANI_GROUP(g, msg, m, s0, s1)                                                                    \
    do {                                                                                                \
        if ((g) < 4) {                                                                                  \
            m[g] = (msg);                                                                               \
        } else {                                                                                        \
            __m128i t_ = _mm_sha256msg1_epu32(m[(g) & 3], m[((g) + 1) & 3]);                            \
            t_ = _mm_add_epi32(t_, _mm_alignr_epi8(m[((g) + 3) & 3], m[((g) + 2) & 3], 4));             \
            m[(g) & 3] = _mm_sha256msg2_epu32(t_, m[((g) + 3) & 3]);                                    \
        }                                                                                               \
        __m128i w_ = _mm_add_epi32(m[(g) & 3], _mm_loadu_si128((const __m128i *)&SHA256_K[4 * (g)])); \
        s1 = _mm_sha256rnds2_epu32(s1, s0, w_);                                                         \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(w_, 0x0E));                                \
    } while (0)

/* nb blocks from d, a source of that kind; *bad set when one of its ids is out of range */
SHANI static inline __attribute__((always_inline)) void compress_shani_src(int kind, uint32_t st[8], const uint8_t *d,
                                                                          size_t nb, int *bad) {
    __m128i s0, s1, acc = _mm_setzero_si128();
    shani_load(st, &s0, &s1);
    for (; nb; nb--, d += SRC_BLOCK(kind)) {
        __m128i a0 = s0, a1 = s1, m[4];
        _Pragma("GCC unroll 16") for (int g = 0; g < 16; g++) SHANI_GROUP(g, message(kind, d, g, &acc), m, s0, s1);
        s0 = _mm_add_epi32(s0, a0);
        s1 = _mm_add_epi32(s1, a1);
    }
    shani_store(st, s0, s1);
    *bad |= acc_bad(kind, acc);
}

/* Two independent streams of nb blocks each, interleaved: the SHA unit's latency, not its
 * throughput, bounds one stream, so two run in not much more than the time of one. */
SHANI static inline __attribute__((always_inline)) void compress_shani_x2_src(int kind, uint32_t st[8],
                                                                             const uint8_t *d, uint32_t su[8],
                                                                             const uint8_t *e, size_t nb, int *bad) {
    __m128i s0, s1, u0, u1, acc = _mm_setzero_si128();
    shani_load(st, &s0, &s1);
    shani_load(su, &u0, &u1);
    for (; nb; nb--, d += SRC_BLOCK(kind), e += SRC_BLOCK(kind)) {
        __m128i a0 = s0, a1 = s1, b0 = u0, b1 = u1, m[4], n[4];
        _Pragma("GCC unroll 16") for (int g = 0; g < 16; g++) {
            SHANI_GROUP(g, message(kind, d, g, &acc), m, s0, s1);
            SHANI_GROUP(g, message(kind, e, g, &acc), n, u0, u1);
        }
        s0 = _mm_add_epi32(s0, a0);
        s1 = _mm_add_epi32(s1, a1);
        u0 = _mm_add_epi32(u0, b0);
        u1 = _mm_add_epi32(u1, b1);
    }
    shani_store(st, s0, s1);
    shani_store(su, u0, u1);
    *bad |= acc_bad(kind, acc);
}

/* The two above for each kind of source, as calls (the kind a constant in each). */
SHANI static void compress_shani(int kind, uint32_t st[8], const uint8_t *d, size_t nb, int *bad) {
    if (kind == SRC_X64) compress_shani_src(SRC_X64, st, d, nb, bad);
    else if (kind == SRC_I32) compress_shani_src(SRC_I32, st, d, nb, bad);
    else compress_shani_src(SRC_LE32, st, d, nb, bad);
}

/* Two independent streams of nb blocks each, interleaved: the SHA unit's latency, not its
 * throughput, bounds one stream, so two run in not much more than the time of one. */
SHANI static void compress_shani_x2(int kind, uint32_t st[8], const uint8_t *d, uint32_t su[8], const uint8_t *e,
                                    size_t nb, int *bad) {
    if (kind == SRC_X64) compress_shani_x2_src(SRC_X64, st, d, su, e, nb, bad);
    else if (kind == SRC_I32) compress_shani_x2_src(SRC_I32, st, d, su, e, nb, bad);
    else compress_shani_x2_src(SRC_LE32, st, d, su, e, nb, bad);
}
#else
int kvdm_chunk_accel(void) { return 0; }
/* never called here: accel is always 0 (kvdm_chunk_accel), and only SRC_LE32 goes without it */
static void compress_shani(int kind, uint32_t st[8], const uint8_t *d, size_t nb, int *bad) {
    compress_openssl(st, d, nb);
}
static void compress_shani_x2(int kind, uint32_t st[8], const uint8_t *d, uint32_t su[8], const uint8_t *e,
                              size_t nb, int *bad) {
    compress_openssl(st, d, nb);
    compress_openssl(su, e, nb);
}
#endif

/* nb blocks of a source of that kind (SRC_LE32 only without accel) */
static void compress(int accel, int kind, uint32_t st[8], const uint8_t *d, size_t nb, int *bad) {
    if (accel) compress_shani(kind, st, d, nb, bad);
    else compress_openssl(st, d, nb);
}

/* SHA-256 of (the whole blocks already folded into st: done bytes) || tail || parent, into h. */
static void finish_with_parent(int accel, uint32_t st[8], uint64_t done, const uint8_t *tail, size_t tail_len,
                               const uint8_t parent[32], uint8_t h[32]) {
    uint8_t buf[128] = {0}; /* tail_len < 64: tail, parent, 0x80, length: at most two blocks */
    size_t len = tail_len + 32;
    memcpy(buf, tail, tail_len);
    memcpy(buf + tail_len, parent, 32);
    buf[len] = 0x80;
    size_t total = len + 9 <= 64 ? 64 : 128;
    uint64_t bits = (done + len) * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    int ignored = 0; /* buf holds bytes: SRC_LE32 */
    compress(accel, SRC_LE32, st, buf, total / 64, &ignored);
    for (int i = 0; i < 8; i++) {
        h[4 * i] = (uint8_t)(st[i] >> 24);
        h[4 * i + 1] = (uint8_t)(st[i] >> 16);
        h[4 * i + 2] = (uint8_t)(st[i] >> 8);
        h[4 * i + 3] = (uint8_t)st[i];
    }
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

/* The tail of a chunk (n < 16 ids at src, a source of that kind) as uint32 LE bytes: src
 * itself for SRC_LE32, else converted into buf, *bad set when an id is out of range. */
static const uint8_t *tail_bytes(int kind, const uint8_t *src, size_t n, uint8_t buf[64], int *bad) {
    if (kind == SRC_LE32) return src;
    for (size_t j = 0; j < n; j++) {
        uint64_t v;
        if (kind == SRC_X64) {
            memcpy(&v, src + 8 * j, 8);
        } else {
            int32_t x;
            memcpy(&x, src + 4 * j, 4);
            v = (uint64_t)(int64_t)x;
        }
        *bad |= (v >> 32) != 0;
        store_le32(buf + 4 * j, (uint32_t)v);
    }
    return buf;
}

/* The "sha256" chain of n chunks over n_tokens ids at tokens (a source of that kind). h_i =
 * SHA-256(B_i || h_{i-1}): B_i's whole blocks do not depend on the chain, so two chunks' blocks
 * run as two interleaved streams; only the last block or two (the tail of B_i, h_{i-1},
 * padding) wait for the previous key. Returns 1 when an id was out of range (out is then
 * meaningless), else 0. */
static inline __attribute__((always_inline)) int sha256_chain(int kind, const uint8_t *seed, const uint8_t *tokens,
                                                             size_t n_tokens, size_t chunk, size_t n, int key_bytes,
                                                             int accel, uint8_t *out) {
    const size_t id_bytes = kind == SRC_X64 ? 8 : 4;
    const uint8_t *parent = seed;
    uint8_t h[32], tail[64]; /* h: h_{i-1} (the chain runs on digests, the keys may be remapped) */
    uint32_t st[2][8];
    int bad = 0;
    for (size_t i = 0; i < n; i += 2) {
        size_t len0 = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
        size_t len1 = i + 1 < n ? ((i + 2) * chunk <= n_tokens ? chunk : n_tokens - (i + 1) * chunk) : 0;
        const uint8_t *b0 = tokens + id_bytes * i * chunk, *b1 = b0 + id_bytes * chunk;
        size_t nb0 = len0 / 16, nb1 = len1 / 16, both = nb1 < nb0 ? nb1 : nb0;
        memcpy(st[0], SHA256_IV, 32);
        memcpy(st[1], SHA256_IV, 32);
        if (accel && both) compress_shani_x2(kind, st[0], b0, st[1], b1, both, &bad);
        else both = 0;
        compress(accel, kind, st[0], b0 + SRC_BLOCK(kind) * both, nb0 - both, &bad);
        finish_with_parent(accel, st[0], 64 * nb0, tail_bytes(kind, b0 + SRC_BLOCK(kind) * nb0, len0 % 16, tail, &bad),
                           4 * (len0 % 16), parent, h);
        put_key(out + (size_t)key_bytes * i, h, key_bytes);
        if (i + 1 < n) { /* finish_with_parent reads its parent before it writes h */
            compress(accel, kind, st[1], b1 + SRC_BLOCK(kind) * both, nb1 - both, &bad);
            finish_with_parent(accel, st[1], 64 * nb1,
                               tail_bytes(kind, b1 + SRC_BLOCK(kind) * nb1, len1 % 16, tail, &bad), 4 * (len1 % 16),
                               h, h);
            put_key(out + (size_t)key_bytes * (i + 1), h, key_bytes);
        }
        parent = h;
    }
    return bad;
}

/* The arguments' check of kvdm_chunk_keys; the number of keys, or -1. */
static int64_t check_args(int scheme, const uint8_t *seed, size_t seed_len, const void *tokens, size_t n_tokens,
                          size_t chunk, int partial, int key_bytes, int accel, const uint8_t *out, size_t out_chunks) {
    size_t n = kvdm_chunk_count(n_tokens, chunk, partial);
    if (chunk == 0 || n > out_chunks || (n && !out) || (n_tokens && !tokens) || (seed_len && !seed) ||
        (key_bytes != 8 && key_bytes != 32) || seed_len != 32 || accel < 0 ||
        (scheme != KVDM_CHUNK_SHA256 && scheme != KVDM_CHUNK_VLLM) ||
        (scheme == KVDM_CHUNK_VLLM && chunk > KVDM_CHUNK_VLLM_MAX))
        return -1;
    return (int64_t)n;
}

int64_t kvdm_chunk_keys(int scheme, const uint8_t *seed, size_t seed_len, const uint8_t *tokens_le,
                        size_t n_tokens, size_t chunk, int partial, int key_bytes, int accel, uint8_t *out,
                        size_t out_chunks) {
    int64_t checked =
        check_args(scheme, seed, seed_len, tokens_le, n_tokens, chunk, partial, key_bytes, accel, out, out_chunks);
    if (checked < 0) return -1;
    size_t n = (size_t)checked;
    if (scheme == KVDM_CHUNK_SHA256) {
        sha256_chain(SRC_LE32, seed, tokens_le, n_tokens, chunk, n, key_bytes, accel, out);
        return (int64_t)n;
    }
    /* KVDM_CHUNK_VLLM (check_args lets no other scheme through) */
    uint8_t buf[11 + 34 + 3 + 5 * KVDM_CHUNK_VLLM_MAX + 6], h[32];
    for (size_t i = 0; i < n; i++) {
        size_t len = (i + 1) * chunk <= n_tokens ? chunk : n_tokens - i * chunk;
        size_t size = vllm_pickle(buf, i ? h : seed, tokens_le + 4 * i * chunk, len);
        if (!SHA256(buf, size, h)) return -2;
        put_key(out + (size_t)key_bytes * i, h, key_bytes);
    }
    return (int64_t)n;
}

#define PROMPT_STACK_TOKENS 4096 /* prompts up to this long are converted on the stack */

int64_t kvdm_prompt_keys(int scheme, const uint8_t *seed, size_t seed_len, const void *tokens, int elem_bytes,
                         int is_signed, size_t n_tokens, size_t chunk, int partial, int key_bytes, int accel,
                         uint8_t *out, size_t out_chunks, int64_t *bad) {
    *bad = -1;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (elem_bytes == 4 && !is_signed) /* already uint32 LE: every id in range */
        return kvdm_chunk_keys(scheme, seed, seed_len, tokens, n_tokens, chunk, partial, key_bytes, accel, out,
                               out_chunks);
#if defined(__x86_64__) || defined(__i386__)
    if (scheme == KVDM_CHUNK_SHA256 && accel && (elem_bytes == 8 || (elem_bytes == 4 && is_signed))) {
        /* the SHA extensions read the ids in place (SRC_I32, SRC_X64): no conversion pass */
        int64_t n = check_args(scheme, seed, seed_len, tokens, n_tokens, chunk, partial, key_bytes, accel, out,
                               out_chunks);
        if (n < 0) return -1;
        int out_of_range = elem_bytes == 8
                               ? sha256_chain(SRC_X64, seed, tokens, n_tokens, chunk, (size_t)n, key_bytes, accel, out)
                               : sha256_chain(SRC_I32, seed, tokens, n_tokens, chunk, (size_t)n, key_bytes, accel, out);
        if (!out_of_range) return n;
        /* which id: the conversion pass says (an error, so its time does not matter) */
        uint8_t *scratch = malloc(4 * n_tokens);
        if (!scratch) return -4;
        *bad = kvdm_tokens_to_u32le(tokens, elem_bytes, is_signed, n_tokens, scratch);
        free(scratch);
        return *bad >= 0 ? -3 : -1;
    }
#endif
#endif
    uint8_t stack[4 * PROMPT_STACK_TOKENS];
    uint8_t *le = n_tokens <= PROMPT_STACK_TOKENS ? stack : malloc(4 * n_tokens);
    if (!le) return -4;
    int64_t rc = kvdm_tokens_to_u32le(tokens, elem_bytes, is_signed, n_tokens, le);
    if (rc >= 0) {
        *bad = rc;
        rc = -3;
    } else if (rc == -1) {
        rc = kvdm_chunk_keys(scheme, seed, seed_len, le, n_tokens, chunk, partial, key_bytes, accel, out, out_chunks);
    } else {
        rc = -1; /* an element size it does not convert */
    }
    if (le != stack) free(le);
    return rc;
}
