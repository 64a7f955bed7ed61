/* driver.c - the replay engine's measuring loop in C (see driver.h). */
#include "driver.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define N_DM (sizeof(dm_counters) / 8)
#define N_COUNTERS (N_DM + sizeof(kvidx_stats) / 8)
#define VIRTUAL_AT (offsetof(dm_counters, virtual_ns) / 8)
#define EXEC_AT (offsetof(dm_counters, exec_ns) / 8)
_Static_assert(sizeof(dm_counters) % sizeof(uint64_t) == 0, "dm_counters is read as uint64 words (snapshot)");
_Static_assert(sizeof(kvidx_stats) % sizeof(uint64_t) == 0, "kvidx_stats is read as uint64 words (snapshot)");

size_t kvdm_drive_counters(void) { return N_COUNTERS; }

/* A native index's counters: its transport context's, then the index's own. */
typedef struct native_src {
    const kvidx_ops *ix;
    const void *h;
    dm_ctx *ctx;
} native_src;

static void native_read(const void *src, uint64_t *v) {
    const native_src *ns = src;
    dm_counters d;
    kvidx_stats st;
    dm_get_counters(ns->ctx, &d);
    ns->ix->stats(ns->h, &st);
    memcpy(v, &d, sizeof d);
    memcpy(v + N_DM, &st, sizeof st);
}

/* Key order of the native indexes: 8-byte keys as integers, 32-byte keys bytewise. */
static int key_cmp(const uint8_t *a, const uint8_t *b, size_t kb) {
    if (kb == 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return (x > y) - (x < y);
    }
    return memcmp(a, b, kb);
}

static int sorted_has(const uint8_t *sorted, size_t n, const uint8_t *key, size_t kb) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(sorted + mid * kb, key, kb);
        if (c == 0) return 1;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

typedef struct scratch {
    uint64_t *vals;
    uint8_t *found;
    uint8_t *rkeys;
    uint64_t *rvals;
    size_t rcap;
} scratch;

static int grow_range(scratch *sc, size_t need, size_t kb) {
    if (need <= sc->rcap) return 1;
    size_t cap = need > 2 * sc->rcap ? need : 2 * sc->rcap;
    uint8_t *k = realloc(sc->rkeys, cap * kb);
    if (k) sc->rkeys = k;
    uint64_t *v = realloc(sc->rvals, cap * 8);
    if (v) sc->rvals = v;
    if (!k || !v) return 0;
    sc->rcap = cap;
    return 1;
}

/* One op: returns its hits through *hits, or an error status. */
static int run_op(const kvidx_ops *ix, void *h, const kvdm_stream *s, size_t j, scratch *sc, int64_t *hits,
                  char *err, size_t errlen) {
    size_t kb = s->key_bytes;
    size_t a = (size_t)s->key_offsets[j], m = (size_t)s->key_offsets[j + 1] - a;
    const uint8_t *keys = s->keys + a * kb;
    int rc = DM_OK;
    switch (s->kind[j]) {
    case KVDM_OP_GET: {
        rc = ix->get(h, keys, m, sc->vals, sc->found, NULL);
        if (rc != DM_OK) break;
        int64_t found = 0;
        for (size_t i = 0; i < m; i++) found += sc->found[i];
        *hits = found;
        break;
    }
    case KVDM_OP_PREFIX: {
        size_t matched = 0;
        rc = ix->prefix(h, keys, m, sc->vals, sc->found, &matched);
        *hits = (int64_t)matched;
        break;
    }
    case KVDM_OP_RANGE: {
        size_t count = 0;
        uint64_t limit = s->range_limit && s->range_limit[j] > 0 ? (uint64_t)s->range_limit[j] : 0;
        rc = ix->range(h, s->range_lo + j * kb, s->range_hi + j * kb, limit, &count);
        if (rc != DM_OK) break;
        if (!grow_range(sc, count, kb))
            return dm_fail_buf(err, errlen, DM_ENOMEM, "%s: no memory for a range of %zu entries", ix->name, count);
        if (count) ix->range_fetch(h, sc->rkeys, sc->rvals);  /* copying the result out is part of the query */
        int64_t found = 0;
        for (size_t i = 0; i < m; i++) found += sorted_has(sc->rkeys, count, keys + i * kb, kb);
        *hits = found;
        break;
    }
    case KVDM_OP_INSERT:
        for (size_t i = 0; i < m; i++) sc->vals[i] = (uint64_t)s->key_block[a + i];
        rc = ix->put(h, keys, sc->vals, m, NULL);
        *hits = -1;
        break;
    default:
        return dm_fail_buf(err, errlen, DM_EINVAL, "op %zu has unknown kind %u", j, s->kind[j]);
    }
    if (rc != DM_OK) return dm_fail_buf(err, errlen, rc, "%s", ix->error(h));
    return DM_OK;
}

/* Everything is checked before the first op runs, so bad input never reaches an index. */
static int validate(const kvidx_ops *ix, const kvdm_stream *s, const int64_t *op_ids, const int32_t *groups,
                    size_t n, size_t n_groups, size_t *max_keys, char *err, size_t errlen) {
    if (s->key_bytes != ix->key_bytes)
        return dm_fail_buf(err, errlen, DM_EINVAL, "the stream has %zu-byte keys but %s takes %zu-byte keys",
                           s->key_bytes, ix->name, ix->key_bytes);
    *max_keys = 1;
    for (size_t i = 0; i < n; i++) {
        if (op_ids[i] < 0 || (size_t)op_ids[i] >= s->n_ops)
            return dm_fail_buf(err, errlen, DM_EINVAL, "op id %lld at %zu is not in 0..%zu", (long long)op_ids[i], i,
                               s->n_ops);
        if (groups[i] < 0 || (size_t)groups[i] >= n_groups)
            return dm_fail_buf(err, errlen, DM_EINVAL, "group %d at %zu is not in 0..%zu", groups[i], i, n_groups);
        size_t j = (size_t)op_ids[i];
        int64_t a = s->key_offsets[j], b = s->key_offsets[j + 1];
        if (a < 0 || b < a || (size_t)b > s->n_keys)
            return dm_fail_buf(err, errlen, DM_EINVAL, "op %zu has keys %lld..%lld outside 0..%zu", j, (long long)a,
                               (long long)b, s->n_keys);
        if ((size_t)(b - a) > *max_keys) *max_keys = (size_t)(b - a);
    }
    return DM_OK;
}

int kvdm_drive(const kvidx_ops *ix, void *h, dm_ctx *ctx, const kvdm_stream *s, const int64_t *op_ids,
               const int32_t *groups, size_t n, size_t n_groups, int add_virtual_ns, kvdm_drive_out *out,
               char *err, size_t errlen) {
    out->done = 0;
    if (!ix || !h || !ctx) return dm_fail_buf(err, errlen, DM_EINVAL, "kvdm_drive: no index or transport");
    native_src src = {ix, h, ctx};
    kvdm_counter_src cs = {native_read, &src, N_COUNTERS, VIRTUAL_AT, EXEC_AT};
    return kvdm_drive_with(ix, h, &cs, s, op_ids, groups, n, n_groups, add_virtual_ns, out, err, errlen);
}

int kvdm_drive_with(const kvidx_ops *ix, void *h, const kvdm_counter_src *cs, const kvdm_stream *s,
                    const int64_t *op_ids, const int32_t *groups, size_t n, size_t n_groups, int add_virtual_ns,
                    kvdm_drive_out *out, char *err, size_t errlen) {
    out->done = 0;
    if (!ix || !h || !cs || !cs->read || !cs->n)
        return dm_fail_buf(err, errlen, DM_EINVAL, "kvdm_drive: no index or counters");
    size_t max_keys = 1; /* set by validate; initialised for GCC 12's -Wmaybe-uninitialized */
    int rc = validate(ix, s, op_ids, groups, n, n_groups, &max_keys, err, errlen);
    if (rc != DM_OK) return rc;
    size_t nc = cs->n;
    int with_virtual = add_virtual_ns && cs->virtual_at < nc && cs->exec_at < nc;
    scratch sc = {malloc(max_keys * 8), malloc(max_keys), NULL, NULL, 0};
    uint64_t *before = malloc(2 * nc * sizeof *before);
    if (!sc.vals || !sc.found || !before) {
        free(sc.vals);
        free(sc.found);
        free(before);
        return dm_fail_buf(err, errlen, DM_ENOMEM, "kvdm_drive: no memory for %zu keys", max_keys);
    }
    uint64_t *after = before + nc;
    cs->read(cs->src, before);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = dm_now_ns();
        rc = run_op(ix, h, s, (size_t)op_ids[i], &sc, &out->hits[i], err, errlen);
        uint64_t t1 = dm_now_ns();
        if (rc != DM_OK) break;
        cs->read(cs->src, after);
        uint64_t *acc = out->counters + (size_t)groups[i] * nc;
        for (size_t c = 0; c < nc; c++) acc[c] += after[c] - before[c];
        /* `virtual`: the doorbells' execution (shm: the emulated NIC) is replaced by their modelled time */
        uint64_t modelled = with_virtual ? (after[cs->virtual_at] - before[cs->virtual_at]) -
                                               (after[cs->exec_at] - before[cs->exec_at])
                                         : 0;
        out->latency_ns[i] = (int64_t)(t1 - t0 + modelled);
        memcpy(before, after, nc * sizeof *before);
        out->done = i + 1;
    }
    free(before);
    free(sc.vals);
    free(sc.found);
    free(sc.rkeys);
    free(sc.rvals);
    return rc;
}
