/*
 * kvidx.h - what every remote-memory index (chime, sherman, race) shares with Python:
 * the open options, the per-handle statistics and the ops table every index is reached through.
 * This header is also the cffi declarations (native/build.py reads it, preprocessor lines
 * dropped): keep everything outside #define lines declarations cffi can parse. Each index is a
 * template, native/<name>.inc (chime.inc and sherman.inc: btree_core.inc with a leaf format;
 * race.inc), marked by KVIDX_TEMPLATE(<name>) below; native/build.py finds the templates and
 * compiles each once per key width, as <name>_k8 and <name>_k32.
 */
#ifndef KVDM_KVIDX_H
#define KVDM_KVIDX_H

#include <stddef.h>
#include <stdint.h>

#include "dm.h"

/* Options of an index handle (one per client thread; not thread-safe). */
typedef struct kvidx_opts {
    double cache_mb;      /* compute-side cache of internal nodes (0 = no cache) */
    int root_slot;        /* root slot on memory node 0 holding this index's root (0..63) */
    uint32_t lease_ms;    /* lock lease: a lock older than this may be taken over */
    uint32_t max_wait_ms; /* give up (DM_ETIMEDOUT) after waiting this long for one lock */
    uint32_t window;      /* at most this many keys' first READs per doorbell; 0 (default) = all keys of
                           * a call, chunked only at the transport's limit (DM_MAX_BATCH verbs) */
    int add_virtual_ns;   /* latency model `virtual`: add the modelled time to per-key latencies */
    uint32_t lpm;         /* prefix-match strategy: KVIDX_LPM_* (0 = auto) */
    uint32_t lpm_fanout;  /* kary: probes per round (B >= 1; 0 = 16) */
    int lpm_exact;        /* kary: verify the matched prefix (one more doorbell) */
    uint32_t lpm_probe_ns; /* auto: the client time one probe costs in the cost model (0 = 150 ns) */
    int split_reads_kv;   /* race, at creation: slots carry no hash bits, so a split reads every KV block
                           * and clears what moved by CAS (RACE's own protocol; for comparison) */
    int subtables_log2;   /* race, at creation: start with 2^this subtables (the directory's depth
                           * caps it), so an index sized for its keys never splits on the way */
    struct kvidx_llt *local_locks; /* NULL, or a local lock table shared by handles of one process */
} kvidx_opts;

/* Longest-prefix-match strategies (notes/index-anchors.md R9):
 *   AUTO       a cost model picks parallel or kary per call (see kvidx_handle.inc);
 *   PARALLEL   every key's lookup in one doorbell (exact; chunked at DM_MAX_BATCH verbs);
 *   KARY       rounds of lpm_fanout evenly spaced probes, assuming presence is prefix-closed
 *              (engines insert whole chains and evict tails first); exact with lpm_exact;
 *   SEQUENTIAL one key per round trip until the first miss (the literature's baseline). */
enum { KVIDX_LPM_AUTO = 0, KVIDX_LPM_PARALLEL = 1, KVIDX_LPM_KARY = 2, KVIDX_LPM_SEQUENTIAL = 3 };

/* Cumulative counters of one handle (transport counters come from dm_get_counters). */
typedef struct kvidx_stats {
    uint64_t gets, puts, deletes, ranges; /* keys (gets/puts/deletes) and range calls */
    uint64_t found;            /* gets that hit */
    uint64_t lock_fail;        /* lock CAS attempts that found the lock held */
    uint64_t version_mismatch; /* leaf version != the one in the (cached) parent */
    uint64_t torn_retry;       /* re-reads because lines disagreed (torn by a concurrent write) */
    uint64_t go_right;         /* sibling reads (B-link) */
    uint64_t cache_hit, cache_miss; /* internal-node accesses served locally / remotely */
    uint64_t cache_evict, cache_invalidate;
    uint64_t cache_bytes, cache_entries;
    uint64_t splits, internal_splits, root_splits;
    uint64_t lease_steals;     /* expired locks taken over */
    uint64_t lease_lost;       /* our lock was taken over before we released it */
    uint64_t root_reads;       /* root-slot reads (open, root changed) */
    uint64_t handovers;        /* remote locks received from another local thread (no CAS) */
    uint64_t local_waits;      /* lock acquisitions that queued behind a local thread */
    uint64_t split_entries, split_capacity; /* leaf entries / slots summed over leaf splits */
    uint64_t leaf_rebuilds;    /* chime leaves re-placed whole (displacement) instead of split */
    uint64_t leaf_relocations; /* chime leaves moved to a fresh node instead of wrapping node_ver */
    uint64_t stale_root;       /* descents that found the cached root outdated and re-read the root slot */
    uint64_t lpm_calls;        /* prefix matches */
    uint64_t lpm_parallel, lpm_kary, lpm_sequential; /* ... by the strategy that ran (auto's pick) */
    uint64_t lpm_probes;       /* keys looked up by prefix matches */
    uint64_t lpm_unclosed;     /* parallel matches that found a key present after the first miss */
    uint64_t lpm_cpu_ns;       /* local time prefix matches took, modelled waits excluded */
    uint64_t lpm_reads, lpm_bytes; /* READs posted and bytes read by prefix matches (auto's input) */
    uint64_t batch_rounds;     /* lock-all rounds of batched writes (1 per batch when uncontended) */
    uint64_t batch_deferred;   /* keys of batched writes finished by the single-key path (split, full) */
} kvidx_stats;

/* Every entry point of one index at one key width, behind an untyped handle, so generic C (the
 * replay driver, driver.h) and Python (through the kvidx_* calls below) run any index from its
 * P##_ops() table alone. */
typedef struct kvidx_ops {
    const char *name;
    size_t key_bytes;
    /* The kvidx_stats fields this index reports, space separated: "field", or "field=name" when
     * it counts something else there under its own name (race: go_right=lost_insert_race); NULL
     * = every field under its own name. */
    const char *counters;
    int (*open)(dm_ctx *ctx, const kvidx_opts *opts, void **out, char *err, size_t errlen);
    void (*close)(void *h);
    const char *(*error)(const void *h);
    int (*get)(void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat_ns);
    int (*put)(void *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns);
    int (*delete)(void *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns);
    int (*prefix)(void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched);
    int (*range)(void *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count);
    void (*range_fetch)(const void *h, uint8_t *keys, uint64_t *vals);
    int (*range_count)(void *h, const uint8_t *los, const uint8_t *his, size_t n, int64_t *counts,
                       uint64_t *lat_ns);
    void (*stats)(const void *h, kvidx_stats *out);
    void (*reset_stats)(void *h);
    int (*debug_lock)(void *h, const uint8_t *key);
} kvidx_ops;

/* Python's calls into any index: the ops table's entry point, called directly (cffi calls these
 * without going through a function pointer of its own). Same contracts as the P##_ functions. */
int kvidx_open(const kvidx_ops *ix, dm_ctx *ctx, const kvidx_opts *opts, void **out, char *err, size_t errlen);
void kvidx_close(const kvidx_ops *ix, void *h);
const char *kvidx_error(const kvidx_ops *ix, const void *h);
int kvidx_get(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,
              uint64_t *lat_ns);
int kvidx_put(const kvidx_ops *ix, void *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns);
int kvidx_delete(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns);
int kvidx_prefix(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,
                 size_t *matched);
int kvidx_range(const kvidx_ops *ix, void *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count);
void kvidx_range_fetch(const kvidx_ops *ix, const void *h, uint8_t *keys, uint64_t *vals);
int kvidx_range_count(const kvidx_ops *ix, void *h, const uint8_t *los, const uint8_t *his, size_t n,
                      int64_t *counts, uint64_t *lat_ns);
void kvidx_stats_of(const kvidx_ops *ix, const void *h, kvidx_stats *out);
void kvidx_reset_stats(const kvidx_ops *ix, void *h);
int kvidx_debug_lock(const kvidx_ops *ix, void *h, const uint8_t *key);

/* Local lock table (Sherman's HOCL): threads of one process whose handles share a table queue
 * locally on a lock (slots indexed by a hash of its address) and a releasing thread hands the
 * still-held remote lock to the next local waiter, at most max_handover times in a row (then it
 * releases it, so other processes get their turn). The caller owns the table: destroy it only
 * after closing every handle using it. NULL when out of memory. */
typedef struct kvidx_llt kvidx_llt;
kvidx_llt *kvidx_llt_create(uint32_t max_handover);
void kvidx_llt_destroy(kvidx_llt *t);

/* The C API of one index compiled for one key width (P = chime_k8, sherman_k32, ...).
 * One handle per client thread. Keys: k8 = uint64 array, k32 = 32-byte rows; values uint64.
 * Every call returns DM_OK or a dm_status with P_error(h) saying why. */
#define KVIDX_DECLARE(P)                                                                                  \
    typedef struct P P;                                                                                   \
    int P##_open(dm_ctx *ctx, const kvidx_opts *opts, P **out, char *err, size_t errlen);                 \
    void P##_close(P *h);                                                                                 \
    const char *P##_error(const P *h);                                                                    \
    int P##_get(P *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat_ns);   \
    int P##_put(P *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns);             \
    int P##_delete(P *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns);                \
    /* longest present prefix of keys[0..n) -> *matched; found[i]/vals[i] for the keys probed  \
     * (found 0 = absent or not probed; every key < *matched is probed unless kary inexact) */ \
    int P##_prefix(P *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched); \
    int P##_range(P *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count);             \
    void P##_range_fetch(const P *h, uint8_t *keys, uint64_t *vals);                                      \
    int P##_range_count(P *h, const uint8_t *los, const uint8_t *his, size_t n, int64_t *counts,          \
                        uint64_t *lat_ns);                                                                \
    void P##_stats(const P *h, kvidx_stats *out);                                                         \
    void P##_reset_stats(P *h);                                                                           \
    int P##_debug_lock(P *h, const uint8_t *key); /* test hook: take a leaf lock, never release */   \
    const kvidx_ops *P##_ops(void);

/* The marker of an index template, native/<name>.inc, placed once before its definitions:
 * native/build.py finds the templates by it (the name must be the file's) and compiles each in two
 * generated translation units, KVDM_KEY_BYTES 8 and 32, after including this header. It declares
 * the API of that width, P = <name>_k8 or <name>_k32 (KVIDX_PREFIX), so the template's definitions
 * are checked against it; the template defines every P##_ function and ends with KVIDX_DEFINE_OPS. */
#define KVIDX_TEMPLATE(name) KVIDX_DECLARE_X(KVIDX_PREFIX(name))
#define KVIDX_PREFIX(name) KVIDX_CAT3(name, _k, KVDM_KEY_BYTES)
#define KVIDX_CAT3(a, b, c) KVIDX_CAT3_(a, b, c)
#define KVIDX_CAT3_(a, b, c) a##b##c
#define KVIDX_DECLARE_X(P) KVIDX_DECLARE(P) /* P expanded first (KVIDX_DECLARE pastes it) */

/* Defines P##_ops() from the P##_ functions (place once, in the file that defines them; P may
 * be a macro naming the prefix; COUNTERS: kvidx_ops.counters). */
#define KVIDX_DEFINE_OPS(P, KEYB, COUNTERS) KVIDX_DEFINE_OPS_(P, KEYB, COUNTERS)
#define KVIDX_DEFINE_OPS_(P, KEYB, COUNTERS)                                                              \
    static int P##_ops_open(dm_ctx *c, const kvidx_opts *o, void **out, char *e, size_t el) {             \
        P *h = NULL;                                                                                      \
        int rc = P##_open(c, o, &h, e, el);                                                               \
        *out = h;                                                                                         \
        return rc;                                                                                        \
    }                                                                                                     \
    static void P##_ops_close(void *h) { P##_close((P *)h); }                                             \
    static const char *P##_ops_error(const void *h) { return P##_error((const P *)h); }                   \
    static int P##_ops_get(void *h, const uint8_t *k, size_t n, uint64_t *v, uint8_t *f, uint64_t *l) {   \
        return P##_get((P *)h, k, n, v, f, l);                                                            \
    }                                                                                                     \
    static int P##_ops_put(void *h, const uint8_t *k, const uint64_t *v, size_t n, uint64_t *l) {         \
        return P##_put((P *)h, k, v, n, l);                                                               \
    }                                                                                                     \
    static int P##_ops_delete(void *h, const uint8_t *k, size_t n, uint8_t *f, uint64_t *l) {             \
        return P##_delete((P *)h, k, n, f, l);                                                            \
    }                                                                                                     \
    static int P##_ops_prefix(void *h, const uint8_t *k, size_t n, uint64_t *v, uint8_t *f, size_t *m) {  \
        return P##_prefix((P *)h, k, n, v, f, m);                                                         \
    }                                                                                                     \
    static int P##_ops_range(void *h, const uint8_t *lo, const uint8_t *hi, uint64_t lim, size_t *c) {    \
        return P##_range((P *)h, lo, hi, lim, c);                                                         \
    }                                                                                                     \
    static void P##_ops_fetch(const void *h, uint8_t *k, uint64_t *v) { P##_range_fetch((const P *)h, k, v); } \
    static int P##_ops_count(void *h, const uint8_t *lo, const uint8_t *hi, size_t n, int64_t *c, uint64_t *l) { \
        return P##_range_count((P *)h, lo, hi, n, c, l);                                                  \
    }                                                                                                     \
    static void P##_ops_stats(const void *h, kvidx_stats *o) { P##_stats((const P *)h, o); }              \
    static void P##_ops_reset(void *h) { P##_reset_stats((P *)h); }                                       \
    static int P##_ops_debug_lock(void *h, const uint8_t *k) { return P##_debug_lock((P *)h, k); }        \
    static const kvidx_ops P##_ops_table = {                                                              \
        .name = #P, .key_bytes = KEYB, .counters = COUNTERS, .open = P##_ops_open, .close = P##_ops_close, \
        .error = P##_ops_error, .get = P##_ops_get, .put = P##_ops_put, .delete = P##_ops_delete,         \
        .prefix = P##_ops_prefix, .range = P##_ops_range, .range_fetch = P##_ops_fetch,                   \
        .range_count = P##_ops_count, .stats = P##_ops_stats, .reset_stats = P##_ops_reset,              \
        .debug_lock = P##_ops_debug_lock};                                                                \
    const kvidx_ops *P##_ops(void) { return &P##_ops_table; }

#endif /* KVDM_KVIDX_H */
