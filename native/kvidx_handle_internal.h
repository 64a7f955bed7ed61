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
