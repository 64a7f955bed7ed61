/* kvidx_internal.h - helpers shared by the index implementations (not exposed to Python):
 * line metadata packing, lease locks, the compute-side node cache, hashing, clocks. */
#ifndef KVDM_KVIDX_INTERNAL_H
#define KVDM_KVIDX_INTERNAL_H

#include "dm.h"
#include "kvidx.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- line metadata ----
 * Every 64-byte line of a node starts with two metadata bytes: [node_ver][unit_ver]. A whole-node
 * rewrite (split) gives every line node_ver+1; a unit (bucket) write gives the unit's lines
 * unit_ver+1. A reader that sees one node_ver on every line it read (and one unit_ver on every
 * line of a unit) saw no torn multi-line write. The other 62 bytes are payload. */
#define KVIDX_LINE_META 2
#define KVIDX_LINE_PAYLOAD (DM_LINE - KVIDX_LINE_META)
_Static_assert(KVIDX_LINE_META + KVIDX_LINE_PAYLOAD == DM_LINE, "line metadata and payload make one line");

/* raw (nlines*64 bytes) -> payload (nlines*62 bytes), node_ver and unit_ver of every line.
 * Inline (with pack): every leaf write and read of a batch unpacks and packs a few lines. */
static inline void kvidx_unpack(const uint8_t *raw, int nlines, uint8_t *payload, uint8_t *nver, uint8_t *uver) {
    for (int i = 0; i < nlines; i++) {
        const uint8_t *line = raw + (size_t)i * DM_LINE;
        if (nver) nver[i] = line[0];
        if (uver) uver[i] = line[1];
        if (payload) memcpy(payload + (size_t)i * KVIDX_LINE_PAYLOAD, line + KVIDX_LINE_META, KVIDX_LINE_PAYLOAD);
    }
}
/* payload -> raw with the given node_ver on every line and unit_ver on every line */
static inline void kvidx_pack(uint8_t *raw, int nlines, const uint8_t *payload, uint8_t nver, uint8_t uver) {
    for (int i = 0; i < nlines; i++) {
        uint8_t *line = raw + (size_t)i * DM_LINE;
        line[0] = nver;
        line[1] = uver;
        memcpy(line + KVIDX_LINE_META, payload + (size_t)i * KVIDX_LINE_PAYLOAD, KVIDX_LINE_PAYLOAD);
    }
}
/* Next node version: versions wrap at 256 and skip 0, which marks an unverified parent entry. */
static inline uint8_t kvidx_next_ver(uint8_t v) { return (uint8_t)(v == 255 ? 1 : v + 1); }

/* ---- time and hashing ---- */
uint64_t kvidx_wall_ms(void);
static inline uint64_t kvidx_mix64(uint64_t x) {
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

/* ---- lease locks ----
 * A lock is an 8-byte CAS-only word: 0 = free, else [24-bit owner | 40-bit lease deadline in
 * wall-clock ms]. Acquire = CAS(0 -> mine) posted with the reads it protects (one doorbell);
 * release = CAS(mine -> 0) posted with the data writes (same memory node, so ordered after
 * them). A waiter that finds a lock whose deadline has passed takes it over with
 * CAS(old -> mine): a crashed holder delays the others by at most one lease. */
#define KVIDX_MAX_LOCK_READS 4
typedef struct kvidx_read {
    void *local;
    dm_gaddr remote;
    uint32_t len;
} kvidx_read;

typedef struct kvidx_locker {
    dm_ctx *ctx;
    kvidx_stats *st;
    uint32_t owner;       /* 24-bit non-zero client id */
    uint32_t lease_ms, max_wait_ms;
    char *err;            /* where a lock time-out is explained (the handle's error buffer) */
    size_t errlen;
    kvidx_llt *llt;       /* local lock table shared with other threads' handles, or NULL */
} kvidx_locker;

/* ---- opening a handle ---- */

/* Check the options every index takes; DM_OK, or DM_EINVAL / DM_ENODE explained in err. */
int kvidx_check_opts(dm_ctx *ctx, const kvidx_opts *o, char *err, size_t errlen);
/* Fill nodes[] with the ids of the attached memory nodes (room for DM_MAX_NODES + 1); returns
 * how many. */
unsigned kvidx_attached_nodes(dm_ctx *ctx, unsigned *nodes);
/* A handle's locker with a fresh 24-bit non-zero owner id (returned; seed: the handle's
 * address), reporting time-outs into err. llt may be NULL. */
uint32_t kvidx_locker_init(kvidx_locker *lk, dm_ctx *ctx, kvidx_stats *st, const kvidx_opts *o, const void *seed,
                           char *err, size_t errlen, kvidx_llt *llt);


/* Acquire the lock at lock_addr and, in the same doorbell(s), perform the reads. On success
 * returns DM_OK with *word the value now in the lock (needed by kvidx_post_unlock). A lock
 * not obtained within max_wait_ms is DM_ETIMEDOUT, explained in lk->err. */
int kvidx_lock_and_read(kvidx_locker *lk, dm_gaddr lock_addr, const kvidx_read *reads, int nreads,
                        uint64_t *word);
/* Post the release CAS (the caller submits it, normally together with its writes). With a
 * local lock table this submits the caller's posted writes itself: then either hands the
 * remote lock to a local waiter (no CAS; *old_out = word) or releases it, and frees the local
 * slot; the caller's own dm_submit then has nothing left to send. */
int kvidx_post_unlock(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word, uint64_t *old_out);
/* Many locks, each with the read it protects (a batch's leaves). The caller sorts the requests
 * by lock address, ascending and distinct: that global order is what rules out deadlock.
 * Round 1 posts every lock CAS with its READ in one doorbell (chunked at DM_MAX_BATCH verbs).
 * If some failed, the locks above the lowest failed one are released again (they were taken
 * optimistically), the lowest failed one is retried alone (lease takeover as for one lock)
 * and, once held, the rest are tried together again. A client thus only ever waits for a lock
 * while holding lower ones, never higher: no cycle of waiters can form. Uncontended: 1 RTT.
 * Remote locks only: a local lock table is not consulted (batched writers do not use one).
 * On success every req is held (word set, its READ done under it); on DM_ETIMEDOUT or a
 * transport error none is held. */
typedef struct kvidx_lockreq {
    dm_gaddr lock;
    kvidx_read rd;
    uint64_t word;   /* the lock word held */
    uint64_t expect; /* internal: 0, or an expired lease word to take over */
    int held;
} kvidx_lockreq;
int kvidx_lock_many(kvidx_locker *lk, kvidx_lockreq *req, size_t n);
/* Release every held req[i], a <= i < n, and mark it not held (one doorbell; CAS failures
 * mean a lost lease). */
int kvidx_release_held(kvidx_locker *lk, kvidx_lockreq *req, size_t a, size_t n);
/* Post one try of a lock (CAS 0 -> a fresh word, returned in *word) and the read it protects;
 * after the submit the lock is held iff *old == 0 (a lock taken this way is released with
 * kvidx_post_release). */
int kvidx_post_try_lock(kvidx_locker *lk, dm_gaddr lock_addr, const kvidx_read *rd, uint64_t *word, uint64_t *old);
/* Post the release of a lock taken by kvidx_lock_many (a CAS; submit with the writes). */
int kvidx_post_release(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word, uint64_t *old_out);

/* Leave the local slot of a lock kept held remotely (test hook: a crashed client). */
void kvidx_local_forget(kvidx_locker *lk, dm_gaddr lock_addr);
/* Release now (one RTT), counting a lost lease. */
int kvidx_unlock(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word);

/* ---- compute-side cache of internal nodes ----
 * Open addressing keyed by a node's untagged global address; entries hold a fixed-size blob
 * (the decoded node). A budget in bytes bounds it; when full, the less used of two random
 * entries is evicted. Pointers returned by get/put are valid until the next put or del. */
typedef struct kvidx_cache {
    size_t blob, slot, cap, mask, n; /* slot: bytes a node takes in the pool; mask: the index's */
    uint64_t gen; /* bumped by every put and del: a pointer from get is valid while gen is unchanged */
    uint8_t *slots;                 /* the pool: cap slots, handed out from the front */
    struct kvidx_cache_ent *tbl;    /* the index: key -> slot, at most half full */
    uint32_t *free_slots;           /* pool slots freed by evictions and deletes */
    size_t nfree, used;             /* used: pool slots ever handed out */
    uint64_t rng;
    kvidx_stats *st;
} kvidx_cache;

int kvidx_cache_init(kvidx_cache *c, double mb, size_t blob, kvidx_stats *st);
void kvidx_cache_free(kvidx_cache *c);
void *kvidx_cache_get(kvidx_cache *c, dm_gaddr key);
/* kvidx_cache_get of keys[0..n) at once (n <= KVIDX_CACHE_GROUP): the index probes of all of
 * them overlap instead of each waiting for its own. out[i] is NULL for a key not cached. */
#define KVIDX_CACHE_GROUP 64
void kvidx_cache_get_many(kvidx_cache *c, const dm_gaddr *keys, size_t n, const uint8_t **out);

/* A load whose value nobody uses: it starts the line's cache miss and stays in the load queue
 * until the line arrives. Prefetch instructions are dropped once the core's miss buffers are
 * full, which a batch's lookups do at once. */
static inline void kvidx_touch(const void *p) { (void)*(const volatile uint8_t *)p; }
/* Slot for key (existing or new, evicting if full); NULL when the cache is disabled. */
void *kvidx_cache_put(kvidx_cache *c, dm_gaddr key);
void kvidx_cache_del(kvidx_cache *c, dm_gaddr key);

#endif
