/*
 * kvidx.h - what every remote-memory index (chime, sherman, race) shares with Python:
 * the open options and the per-handle statistics. The index implementations live in
 * <name>_internal.h, compiled once per key width by <name>_k8.c and <name>_k32.c.
 */
#ifndef KVDM_KVIDX_H
#define KVDM_KVIDX_H

#include <stdint.h>

/* Options of an index handle (one per client thread; not thread-safe). */
typedef struct kvidx_opts {
    double cache_mb;      /* compute-side cache of internal nodes (0 = no cache) */
    int root_slot;        /* root slot on memory node 0 holding this index's root (0..63) */
    uint32_t lease_ms;    /* lock lease: a lock older than this may be taken over */
    uint32_t max_wait_ms; /* give up (DM_ETIMEDOUT) after waiting this long for one lock */
} kvidx_opts;

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
} kvidx_stats;

#endif /* KVDM_KVIDX_H */
