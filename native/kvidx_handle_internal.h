/*
 * kvidx_handle_internal.h - small helpers every native index implementation shares: error
 * reporting into the handle, key bytes of width KB, per-key latencies and the batch put and
 * delete over the index's own write_one. Include after
 * defining KB and the handle type KVIDX_HANDLE (a struct with `dm_ctx *ctx`, `char err[...]`,
 * its `kvidx_opts o`, and the attached memory nodes `unsigned nodes[]`, `int nnodes`, with
 * `unsigned rr` the round-robin cursor over them).
 */
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"
#include "kvidx_internal.h"

static int herr(KVIDX_HANDLE *h, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int herr(KVIDX_HANDLE *h, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->err, sizeof h->err, fmt, ap);
    va_end(ap);
    return code;
}

/* copy the transport's message for a failed dm call (lock time-outs explain themselves in h->err) */
static int dmerr(KVIDX_HANDLE *h, int rc) {
    if (rc != DM_OK && rc != DM_ETIMEDOUT) snprintf(h->err, sizeof h->err, "%s", dm_last_error(h->ctx));
    return rc;
}

/* A zeroed handle on ctx for options o (checked), knowing the attached memory nodes. */
static int handle_new(dm_ctx *ctx, const kvidx_opts *o, KVIDX_HANDLE **out, char *err, size_t errlen) {
    int rc = kvidx_check_opts(ctx, o, err, errlen);
    if (rc != DM_OK) return rc;
    KVIDX_HANDLE *h = calloc(1, sizeof *h);
    if (!h) return dm_fail_buf(err, errlen, DM_ENOMEM, "out of local memory");
    h->ctx = ctx;
    h->o = *o;
    h->nnodes = (int)kvidx_attached_nodes(ctx, h->nodes);
    *out = h;
    return DM_OK;
}

/* Allocate len bytes on the next memory node (round robin). */
static int alloc_on_next(KVIDX_HANDLE *h, uint64_t len, dm_gaddr *out) {
    unsigned nid = h->nodes[h->rr++ % (unsigned)h->nnodes];
    int rc = dm_alloc(h->ctx, nid, len, DM_LINE, out);
    return rc == DM_OK ? DM_OK : dmerr(h, rc);
}

/* An open that failed: say what was being opened, and why (the handle's message, else the
 * transport's), into the caller's buffer, before the handle is freed. */
static void open_failed(const KVIDX_HANDLE *h, const char *name, char *err, size_t errlen) {
    snprintf(err, errlen, "opening %s (%d-byte keys) at root slot %d: %s", name, KB, h->o.root_slot,
             h->err[0] ? h->err : dm_last_error(h->ctx));
}

static inline int kzero(const uint8_t *a) {
    static const uint8_t z[KB];
    return memcmp(a, z, KB) == 0;
}

static inline uint64_t khash(const uint8_t *k) {
    uint64_t x = 0;
    for (int i = 0; i < KB; i += 8) {
        uint64_t w;
        memcpy(&w, k + i, 8);
        x = kvidx_mix64(x ^ w);
    }
    return x;
}

static inline uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline dm_gaddr untag(dm_gaddr g) { return DM_GADDR_WITH_TAG(g, 0); }

/* let a concurrent writer run once a retry loop has spun a few times */
static void yield_after(unsigned tries) {
    if (tries > 4) sched_yield();
}

/* Per-key latency: wall time plus the time the latency model charged without waiting (model
 * `virtual`; 0 otherwise), so every model reports what it models. */
static uint64_t lat_clock(const KVIDX_HANDLE *h) {
    if (!h->o.add_virtual_ns) return dm_now_ns();
    dm_counters c;
    dm_get_counters(h->ctx, &c);
    return dm_now_ns() + c.virtual_ns;
}
/* around one key's work in a batch call with an optional uint64_t *lat output */
#define LAT_BEGIN uint64_t t0 = lat ? lat_clock(h) : 0
#define LAT_END(i) if (lat) lat[i] = lat_clock(h) - t0

/* One key's insert/update (del 0) or delete (del 1, *found set): each index defines it. */
static int write_one(KVIDX_HANDLE *h, const uint8_t *key, uint64_t val, int del, uint8_t *found);

/* The batch put: key by key, in order, each timed into lat (optional). */
static int put_each(KVIDX_HANDLE *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat) {
    for (size_t i = 0; i < n; i++) {
        LAT_BEGIN;
        if (kzero(keys + i * KB)) return herr(h, DM_EINVAL, "key %zu is the reserved all-zero key", i);
        int rc = write_one(h, keys + i * KB, vals[i], 0, NULL);
        if (rc != DM_OK) return rc;
        LAT_END(i);
        h->st.puts++;
    }
    return DM_OK;
}

/* The batch delete: found[i] says whether key i was present. */
static int delete_each(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat) {
    for (size_t i = 0; i < n; i++) {
        LAT_BEGIN;
        int rc = write_one(h, keys + i * KB, 0, 1, &found[i]);
        if (rc != DM_OK) return rc;
        LAT_END(i);
        h->st.deletes++;
    }
    return DM_OK;
}

/* ---- doorbells ---- */

/* Submit what is posted when `more` verbs would not fit into this doorbell: the only reason a
 * batch is ever split is the transport's limit of DM_MAX_BATCH verbs per dm_submit (the send
 * queue depth of the verbs backend's queue pairs). */
static int make_room(KVIDX_HANDLE *h, int more) {
    if (dm_batch_len(h->ctx) + more <= DM_MAX_BATCH) return DM_OK;
    return dmerr(h, dm_submit(h->ctx));
}

/* The most keys whose first READs share one doorbell: the `window` option, 0 = unbounded. */
static size_t keys_per_doorbell(const KVIDX_HANDLE *h, size_t n) {
    return h->o.window && h->o.window < n ? h->o.window : (n ? n : 1);
}

/* ---- longest prefix match (notes/index-anchors.md R9), over the index's batched lookup ----
 * The includer defines get_many (every key's first READ in as few doorbells as the transport
 * allows) and lookup_bytes (the bytes one cache-hit lookup reads: the cost model's input). */
static int get_many(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat);
static uint32_t lookup_bytes(void);

#define KARY_MAX_FANOUT 64
#define KARY_DEFAULT_FANOUT 16

static uint32_t kary_fanout(const KVIDX_HANDLE *h) {
    uint32_t b = h->o.lpm_fanout ? h->o.lpm_fanout : KARY_DEFAULT_FANOUT;
    return b > KARY_MAX_FANOUT ? KARY_MAX_FANOUT : b;
}

/* Rounds a k-ary search over n keys takes with b probes per round: (b+1)^r >= n+1. */
static unsigned kary_rounds(size_t n, uint32_t b) {
    unsigned r = 0;
    for (double span = 1; span < (double)n + 1; span *= (double)b + 1) r++;
    return r ? r : 1;
}

/* Round trips and bytes are what a prefix match costs; the model charges each the configured
 * RTT and bandwidth (2 µs and 100 Gb/s when unset, a ConnectX-6's order of magnitude). */
static double lpm_cost_ns(const KVIDX_HANDLE *h, double rtts, double bytes) {
    dm_config c;
    dm_get_config(h->ctx, &c);
    double rtt = c.rtt_us > 0 ? c.rtt_us * 1000.0 : 2000.0, gbps = c.gbps > 0 ? c.gbps : 100.0;
    return rtts * rtt + bytes * 8.0 / gbps;
}

/* auto: kary only when the model says it is cheaper than one parallel match AND this handle's
 * parallel matches have shown presence to be prefix-closed (kary's assumption): at least 32
 * samples, none unclosed. Every 64th match runs parallel regardless, to keep measuring. */
static int lpm_pick(KVIDX_HANDLE *h, size_t n) {
    uint32_t b = kary_fanout(h);
    unsigned r = kary_rounds(n, b);
    double per_key = lookup_bytes();
    double verbs = (double)n * 1.2; /* a lookup posts one READ, two on a bucket wrap */
    double par = lpm_cost_ns(h, (double)(size_t)((verbs + DM_MAX_BATCH - 1) / DM_MAX_BATCH), (double)n * per_key);
    double kary = lpm_cost_ns(h, r, (double)r * b * per_key);
    int closed = h->st.lpm_parallel >= 32 && h->st.lpm_unclosed == 0;
    if (kary < par && closed && h->st.lpm_calls % 64 != 63) return KVIDX_LPM_KARY;
    return KVIDX_LPM_PARALLEL;
}

static int lpm_parallel(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *m) {
    int rc = get_many(h, keys, n, vals, found, NULL);
    if (rc != DM_OK) return rc;
    size_t i = 0;
    while (i < n && found[i]) i++;
    *m = i;
    for (size_t j = i; j < n; j++)
        if (found[j]) {
            h->st.lpm_unclosed++;
            break;
        }
    h->st.lpm_parallel++;
    h->st.lpm_probes += n;
    return DM_OK;
}

static int lpm_sequential(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *m) {
    size_t i = 0;
    for (; i < n; i++) {
        int rc = get_many(h, keys + i * KB, 1, vals + i, found + i, NULL);
        h->st.lpm_probes++;
        if (rc != DM_OK) return rc;
        if (!found[i]) break;
    }
    *m = i;
    h->st.lpm_sequential++;
    return DM_OK;
}

/* k-ary search: [lo, hi] brackets the match length; each round probes up to B lengths evenly
 * spaced in (lo, hi] (length p present <=> key p-1 found) in one doorbell. */
static int lpm_kary(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *m) {
    uint32_t b = kary_fanout(h);
    uint8_t pk[KARY_MAX_FANOUT * KB], pf[KARY_MAX_FANOUT];
    uint64_t pv[KARY_MAX_FANOUT];
    size_t pos[KARY_MAX_FANOUT], lo = 0, hi = n;
    while (lo < hi) {
        size_t span = hi - lo, np = span <= b ? span : b;
        for (size_t j = 0; j < np; j++) {
            pos[j] = span <= b ? lo + j + 1 : lo + ((j + 1) * span + b) / (b + 1); /* a length in (lo, hi] */
            memcpy(pk + j * KB, keys + (pos[j] - 1) * KB, KB);
        }
        int rc = get_many(h, pk, np, pv, pf, NULL);
        if (rc != DM_OK) return rc;
        h->st.lpm_probes += np;
        size_t new_lo = lo, new_hi = hi;
        for (size_t j = 0; j < np; j++) {
            found[pos[j] - 1] = pf[j];
            vals[pos[j] - 1] = pv[j];
            if (pf[j]) new_lo = pos[j];
            else {
                new_hi = pos[j] - 1;
                break; /* prefix-closed: nothing beyond the first miss counts */
            }
        }
        if (new_hi < new_lo) new_lo = new_hi;
        lo = new_lo;
        hi = new_hi;
    }
    *m = lo;
    if (h->o.lpm_exact && lo) { /* verify: every key of the matched prefix, in one doorbell */
        int rc = get_many(h, keys, lo, vals, found, NULL);
        if (rc != DM_OK) return rc;
        h->st.lpm_probes += lo;
        size_t i = 0;
        while (i < lo && found[i]) i++;
        *m = i;
    }
    h->st.lpm_kary++;
    return DM_OK;
}

/* The public prefix match of every index. */
static int prefix_match(KVIDX_HANDLE *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,
                        size_t *matched) {
    *matched = 0;
    if (!n) return DM_OK;
    memset(found, 0, n);
    memset(vals, 0, n * sizeof *vals);
    int s = h->o.lpm == KVIDX_LPM_AUTO ? lpm_pick(h, n) : (int)h->o.lpm;
    int rc = s == KVIDX_LPM_KARY ? lpm_kary(h, keys, n, vals, found, matched)
             : s == KVIDX_LPM_SEQUENTIAL ? lpm_sequential(h, keys, n, vals, found, matched)
             : lpm_parallel(h, keys, n, vals, found, matched);
    h->st.lpm_calls++;
    return rc;
}
