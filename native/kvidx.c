/* kvidx.c - shared helpers of the remote-memory indexes: line metadata, lease locks, node cache. */
#define _GNU_SOURCE
#include "kvidx_internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

uint64_t kvidx_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- lease locks ---- */

#define LEASE_BITS 40
#define LEASE_MASK ((UINT64_C(1) << LEASE_BITS) - 1)

static uint64_t lock_word(const kvidx_locker *lk) {
    return ((uint64_t)lk->owner << LEASE_BITS) | ((kvidx_wall_ms() + lk->lease_ms) & LEASE_MASK);
}

/* The lease word to expect next time: an expired lease (deadline in the past, with 40-bit
 * wrap-around) may be taken over, a live one must be waited for (0). */
static uint64_t takeover_expect(uint64_t old) {
    uint64_t now = kvidx_wall_ms(), deadline = old & LEASE_MASK;
    uint64_t past = ((now & LEASE_MASK) - deadline) & LEASE_MASK;
    return (past > 0 && past < (LEASE_MASK >> 1)) ? old : 0;
}

/* Post CAS(lock: expect -> want) and then the reads it protects (same node: they execute after it). */
static int post_lock(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t expect, uint64_t want, const kvidx_read *reads,
                     int nreads, uint64_t *old) {
    int rc = dm_cas(lk->ctx, lock_addr, expect, want, old);
    for (int i = 0; i < nreads && rc == DM_OK; i++) rc = dm_read(lk->ctx, reads[i].local, reads[i].remote, reads[i].len);
    return rc;
}

static int post_lock_round(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t expect, uint64_t want,
                           const kvidx_read *reads, int nreads, uint64_t *old) {
    int rc = post_lock(lk, lock_addr, expect, want, reads, nreads, old);
    if (rc == DM_OK) return dm_submit(lk->ctx);
    dm_discard(lk->ctx);
    return rc;
}

/* DM_ETIMEDOUT for a lock still held (lease word old) after max_wait_ms, explained in lk->err. */
static int lock_timeout(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t old) {
    return dm_fail_buf(lk->err, lk->errlen, DM_ETIMEDOUT,
                       "gave up on lock 0x%016llx after %u ms: held by client %u (lease word 0x%016llx)",
                       (unsigned long long)lock_addr, lk->max_wait_ms, (unsigned)(old >> LEASE_BITS),
                       (unsigned long long)old);
}

static int remote_lock_and_read(kvidx_locker *lk, dm_gaddr lock_addr, const kvidx_read *reads, int nreads,
                                uint64_t *word) {
    uint64_t start = kvidx_wall_ms(), expect = 0;
    for (unsigned attempt = 0;; attempt++) {
        uint64_t want = lock_word(lk), old = 0;
        int rc = post_lock_round(lk, lock_addr, expect, want, reads, nreads, &old);
        if (rc != DM_OK) return rc;
        if (old == expect) {
            if (expect != 0) lk->st->lease_steals++;
            *word = want;
            return DM_OK;
        }
        lk->st->lock_fail++;
        expect = takeover_expect(old);
        if (kvidx_wall_ms() - start > lk->max_wait_ms) return lock_timeout(lk, lock_addr, old);
        if (attempt > 4) sched_yield(); /* the holder may need this core */
    }
}

int kvidx_post_try_lock(kvidx_locker *lk, dm_gaddr lock_addr, const kvidx_read *rd, uint64_t *word, uint64_t *old) {
    *word = lock_word(lk);
    return post_lock(lk, lock_addr, 0, *word, rd, 1, old);
}

int kvidx_post_release(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word, uint64_t *old_out) {
    return dm_cas(lk->ctx, lock_addr, word, 0, old_out);
}

/* One doorbell (or as many as DM_MAX_BATCH needs) of CAS || READ for req[a..b) not held. The
 * round's locks share one lease deadline (one clock read, not one per lock). */
static int lock_round(kvidx_locker *lk, kvidx_lockreq *req, size_t a, size_t b, uint64_t *old) {
    int rc = DM_OK;
    uint64_t word = lock_word(lk);
    for (size_t i = a; i < b && rc == DM_OK; i++) {
        if (req[i].held) continue;
        if (dm_batch_len(lk->ctx) + 2 > DM_MAX_BATCH) rc = dm_submit(lk->ctx);
        req[i].word = word;
        if (rc == DM_OK) rc = post_lock(lk, req[i].lock, req[i].expect, req[i].word, &req[i].rd, 1, &old[i]);
    }
    if (rc == DM_OK) return dm_submit(lk->ctx);
    dm_discard(lk->ctx);
    return rc;
}

int kvidx_release_held(kvidx_locker *lk, kvidx_lockreq *req, size_t a, size_t n) {
    int rc = DM_OK;
    uint64_t old;
    for (size_t i = a; i < n && rc == DM_OK; i++) {
        if (!req[i].held) continue;
        if (dm_batch_len(lk->ctx) + 1 > DM_MAX_BATCH) rc = dm_submit(lk->ctx);
        if (rc == DM_OK) rc = dm_cas(lk->ctx, req[i].lock, req[i].word, 0, &old);
        req[i].held = 0;
    }
    if (rc == DM_OK) return dm_submit(lk->ctx);
    dm_discard(lk->ctx);
    return rc;
}

int kvidx_lock_many(kvidx_locker *lk, kvidx_lockreq *req, size_t n) {
    uint64_t start = kvidx_wall_ms(), *old = malloc((n ? n : 1) * sizeof *old);
    if (!old) return dm_fail_buf(lk->err, lk->errlen, DM_ENOMEM, "out of local memory for %zu locks", n);
    for (size_t i = 0; i < n; i++) req[i].held = 0, req[i].expect = 0;
    size_t first = 0; /* req[0..first) are held */
    int single = 0, rc = DM_OK;
    for (unsigned attempt = 0; first < n; attempt++) {
        /* every lock not yet held, or only the lowest one while it is contended */
        size_t end = single ? first + 1 : n, f = end;
        if ((rc = lock_round(lk, req, first, end, old)) != DM_OK) break;
        for (size_t i = first; i < end; i++) {
            req[i].held = old[i] == req[i].expect;
            if (req[i].held && req[i].expect) lk->st->lease_steals++;
            if (!req[i].held && f == end) f = i;
        }
        if (f == end) {
            first = end;
            single = 0;
            continue;
        }
        lk->st->lock_fail++;
        if ((rc = kvidx_release_held(lk, req, f + 1, n)) != DM_OK) break;
        first = f;
        single = 1;
        req[f].expect = takeover_expect(old[f]);
        if (kvidx_wall_ms() - start > lk->max_wait_ms) {
            rc = lock_timeout(lk, req[f].lock, old[f]);
            break;
        }
        if (attempt > 4) sched_yield(); /* the holder may need this core */
    }
    if (rc != DM_OK) kvidx_release_held(lk, req, 0, n);
    free(old);
    return rc;
}

/* ---- local lock table (handover between the threads of one process) ---- */

#define LLT_SLOTS 4096
#define LLT_SPINS 64

typedef struct llt_slot {
    pthread_mutex_t m;
    pthread_cond_t cv;
    int held;        /* a local thread owns the slot (and the remote lock it is working on) */
    int waiters;     /* local threads queued on the slot */
    dm_gaddr addr;   /* remote lock left held for the next local holder (0 = none) */
    uint64_t word;   /* its lock word */
    uint32_t chain;  /* consecutive handovers of the current remote acquisition */
} llt_slot;

struct kvidx_llt {
    uint32_t max_handover;
    llt_slot s[LLT_SLOTS];
};

kvidx_llt *kvidx_llt_create(uint32_t max_handover) {
    kvidx_llt *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->max_handover = max_handover;
    for (int i = 0; i < LLT_SLOTS; i++) {
        pthread_mutex_init(&t->s[i].m, NULL);
        pthread_cond_init(&t->s[i].cv, NULL);
    }
    return t;
}

void kvidx_llt_destroy(kvidx_llt *t) {
    if (!t) return;
    for (int i = 0; i < LLT_SLOTS; i++) {
        pthread_mutex_destroy(&t->s[i].m);
        pthread_cond_destroy(&t->s[i].cv);
    }
    free(t);
}

static llt_slot *slot_of(const kvidx_locker *lk, dm_gaddr lock_addr) {
    return &lk->llt->s[kvidx_mix64(lock_addr) % LLT_SLOTS];
}

/* Leave the slot of lock_addr, handing the remote lock (word) to the next local holder. */
static void llt_exit(kvidx_locker *lk, dm_gaddr lock_addr, int handover, uint64_t word) {
    llt_slot *s = slot_of(lk, lock_addr);
    pthread_mutex_lock(&s->m);
    if (handover) {
        s->addr = lock_addr;
        s->word = word;
        s->chain++;
    } else {
        s->chain = 0;
    }
    s->held = 0;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->m);
}

/* Queue for the slot of lock_addr (at most max_wait_ms). *handed = 1 when the previous local
 * holder left that very lock held for us, its word in *word. A lock of another address left
 * in the slot (hash collision) is released first. */
static int llt_enter(kvidx_locker *lk, dm_gaddr lock_addr, int *handed, uint64_t *word) {
    llt_slot *s = slot_of(lk, lock_addr);
    pthread_mutex_lock(&s->m);
    if (s->held) {
        lk->st->local_waits++;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        uint64_t ns = (uint64_t)dl.tv_nsec + (uint64_t)lk->max_wait_ms * 1000000u;
        dl.tv_sec += (time_t)(ns / 1000000000u);
        dl.tv_nsec = (long)(ns % 1000000000u);
        s->waiters++;
        /* a holder keeps the slot for a round trip or two: yield a while before sleeping */
        for (int spin = 0; s->held && spin < LLT_SPINS; spin++) {
            pthread_mutex_unlock(&s->m);
            sched_yield();
            pthread_mutex_lock(&s->m);
        }
        int e = 0;
        while (s->held && e != ETIMEDOUT) e = pthread_cond_timedwait(&s->cv, &s->m, &dl);
        s->waiters--;
        if (s->held) {
            pthread_mutex_unlock(&s->m);
            return dm_fail_buf(lk->err, lk->errlen, DM_ETIMEDOUT,
                               "gave up on lock 0x%016llx after %u ms: a thread of this process holds it",
                               (unsigned long long)lock_addr, lk->max_wait_ms);
        }
    }
    s->held = 1;
    dm_gaddr pending = s->addr;
    uint64_t pword = s->word;
    s->addr = 0;
    *handed = pending == lock_addr;
    if (*handed) *word = pword;
    else s->chain = 0;
    pthread_mutex_unlock(&s->m);
    if (pending && !*handed) {
        uint64_t old = 0;
        int rc = dm_cas(lk->ctx, pending, pword, 0, &old);
        if (rc == DM_OK) rc = dm_submit(lk->ctx);
        if (rc != DM_OK) {
            llt_exit(lk, lock_addr, 0, 0);
            return rc;
        }
    }
    return DM_OK;
}

/* Hand over only to a waiter, at most max_handover times in a row, and only with at least
 * half a lease left (the next holder must finish before the lease expires). */
static int llt_should_hand(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word) {
    llt_slot *s = slot_of(lk, lock_addr);
    uint64_t left = ((word & LEASE_MASK) - (kvidx_wall_ms() & LEASE_MASK)) & LEASE_MASK;
    pthread_mutex_lock(&s->m);
    int hand = s->waiters > 0 && s->chain < lk->llt->max_handover && left < (LEASE_MASK >> 1) &&
               left > lk->lease_ms / 2;
    pthread_mutex_unlock(&s->m);
    return hand;
}

int kvidx_lock_and_read(kvidx_locker *lk, dm_gaddr lock_addr, const kvidx_read *reads, int nreads, uint64_t *word) {
    if (!lk->llt) return remote_lock_and_read(lk, lock_addr, reads, nreads, word);
    int handed = 0;
    int rc = llt_enter(lk, lock_addr, &handed, word);
    if (rc != DM_OK) return rc;
    if (!handed) {
        rc = remote_lock_and_read(lk, lock_addr, reads, nreads, word);
        if (rc != DM_OK) llt_exit(lk, lock_addr, 0, 0);
        return rc;
    }
    /* the lock came from a local thread whose writes completed: read the protected lines */
    lk->st->handovers++;
    for (int i = 0; i < nreads && rc == DM_OK; i++) rc = dm_read(lk->ctx, reads[i].local, reads[i].remote, reads[i].len);
    if (rc == DM_OK) rc = dm_submit(lk->ctx);
    else dm_discard(lk->ctx);
    if (rc != DM_OK) {
        uint64_t old = 0;
        if (dm_cas(lk->ctx, lock_addr, *word, 0, &old) == DM_OK) dm_submit(lk->ctx);
        llt_exit(lk, lock_addr, 0, 0);
    }
    return rc;
}

int kvidx_post_unlock(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word, uint64_t *old_out) {
    if (!lk->llt) return dm_cas(lk->ctx, lock_addr, word, 0, old_out);
    int hand = llt_should_hand(lk, lock_addr, word);
    int rc = hand ? DM_OK : dm_cas(lk->ctx, lock_addr, word, 0, old_out);
    if (rc == DM_OK) rc = dm_submit(lk->ctx); /* the writes land before anyone local goes on */
    if (rc == DM_OK && hand) *old_out = word;
    llt_exit(lk, lock_addr, rc == DM_OK && hand, word);
    return rc;
}

void kvidx_local_forget(kvidx_locker *lk, dm_gaddr lock_addr) {
    if (lk->llt) llt_exit(lk, lock_addr, 0, 0);
}

int kvidx_unlock(kvidx_locker *lk, dm_gaddr lock_addr, uint64_t word) {
    uint64_t old = 0;
    int rc = kvidx_post_unlock(lk, lock_addr, word, &old);
    if (rc == DM_OK) rc = dm_submit(lk->ctx);
    if (rc == DM_OK && old != word) lk->st->lease_lost++;
    return rc;
}

/* ---- node cache ----
 * An index (open addressing, keys -> pool slots, at most half full, grown as entries come) over
 * a pool of node-sized slots handed out from its front (freed ones first): the nodes a run
 * really caches sit together in a few pages, so a descent's cache probes and node reads stay in
 * the CPU caches and TLB, whatever cache_mb reserves. */

struct kvidx_cache_ent {
    uint64_t key; /* 0 = empty */
    uint32_t slot, hits;
};

#define CACHE_MIN_TABLE 64
#define HUGE_PAGE ((size_t)2 << 20)

int kvidx_cache_init(kvidx_cache *c, double mb, size_t blob, kvidx_stats *st) {
    memset(c, 0, sizeof *c);
    c->st = st;
    c->blob = blob;
    c->slot = (blob + DM_LINE - 1) & ~(size_t)(DM_LINE - 1);
    c->rng = 0x9e3779b97f4a7c15ull;
    if (mb <= 0) return DM_OK;
    double cap = mb * 1048576.0 / (double)c->slot;
    if (cap < 1) return DM_OK;
    c->cap = cap > (double)UINT32_MAX ? UINT32_MAX : (size_t)cap;
    c->mask = CACHE_MIN_TABLE - 1;
    c->tbl = calloc(CACHE_MIN_TABLE, sizeof *c->tbl);
    c->free_slots = malloc(c->cap * sizeof *c->free_slots);
    /* reserved; pages are touched as slots are handed out. Line-aligned: a 992-byte node spans
     * 16 lines, not 17 */
    size_t bytes = (c->cap * c->slot + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    c->slots = aligned_alloc(HUGE_PAGE, bytes);
    /* a descent touches a node per level: on 4 KB pages each is a TLB miss and a page walk */
    if (c->slots) (void)madvise(c->slots, bytes, MADV_HUGEPAGE);
    if (c->tbl && c->free_slots && c->slots) return DM_OK;
    kvidx_cache_free(c);
    return DM_ENOMEM;
}

void kvidx_cache_free(kvidx_cache *c) {
    free(c->slots);
    free(c->tbl);
    free(c->free_slots);
    c->slots = NULL;
    c->tbl = NULL;
    c->free_slots = NULL;
}

static size_t home(const kvidx_cache *c, uint64_t key) { return (size_t)kvidx_mix64(key) & c->mask; }
static void *slot_at(const kvidx_cache *c, uint32_t slot) { return c->slots + (size_t)slot * c->slot; }

/* key's entry, or the empty one where it would go, probing from entry i */
static size_t find_from(const kvidx_cache *c, uint64_t key, size_t i) {
    while (c->tbl[i].key && c->tbl[i].key != key) i = (i + 1) & c->mask;
    return i;
}

static size_t find(const kvidx_cache *c, uint64_t key) { return find_from(c, key, home(c, key)); }

/* the node at entry i (counting the hit), NULL if i is empty */
static void *hit_at(kvidx_cache *c, size_t i) {
    struct kvidx_cache_ent *e = &c->tbl[i];
    if (!e->key) return NULL;
    e->hits++;
    return slot_at(c, e->slot);
}

void *kvidx_cache_get(kvidx_cache *c, dm_gaddr key) {
    if (!c->slots) return NULL;
    return hit_at(c, find(c, DM_GADDR_WITH_TAG(key, 0)));
}

void kvidx_cache_get_many(kvidx_cache *c, const dm_gaddr *keys, size_t n, const uint8_t **out) {
    if (!c->slots || n > KVIDX_CACHE_GROUP) {
        for (size_t i = 0; i < n; i++) out[i] = kvidx_cache_get(c, keys[i]);
        return;
    }
    size_t at[KVIDX_CACHE_GROUP];
    for (size_t i = 0; i < n; i++) { /* the index entries first (a key repeating its predecessor: no probe) */
        at[i] = home(c, DM_GADDR_WITH_TAG(keys[i], 0));
        kvidx_touch(&c->tbl[at[i]]);
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t key = DM_GADDR_WITH_TAG(keys[i], 0);
        at[i] = i && key == DM_GADDR_WITH_TAG(keys[i - 1], 0) ? at[i - 1] : find_from(c, key, at[i]);
        out[i] = hit_at(c, at[i]);
    }
}

static void remove_at(kvidx_cache *c, size_t i) {
    c->free_slots[c->nfree++] = c->tbl[i].slot;
    c->n--;
    /* backward-shift deletion keeps probe sequences intact without tombstones */
    for (size_t j = i;;) {
        c->tbl[i].key = 0;
        for (;;) {
            j = (j + 1) & c->mask;
            if (!c->tbl[j].key) return;
            size_t h = home(c, c->tbl[j].key);
            if (i <= j ? (i < h && h <= j) : (i < h || h <= j)) continue;
            break;
        }
        c->tbl[i] = c->tbl[j];
        i = j;
    }
}

void kvidx_cache_del(kvidx_cache *c, dm_gaddr key) {
    if (!c->slots) return;
    c->gen++;
    key = DM_GADDR_WITH_TAG(key, 0);
    size_t i = find(c, key);
    if (c->tbl[i].key) {
        remove_at(c, i);
        c->st->cache_invalidate++;
        c->st->cache_entries = c->n;
        c->st->cache_bytes = c->n * c->slot;
    }
}

static size_t random_victim(kvidx_cache *c) {
    for (;;) {
        c->rng ^= c->rng << 13;
        c->rng ^= c->rng >> 7;
        c->rng ^= c->rng << 17;
        size_t i = (size_t)c->rng & c->mask;
        if (c->tbl[i].key) return i;
    }
}

/* Double the index (keeping it at most half full); 0 when out of memory (the cache stays as is). */
static int grow(kvidx_cache *c) {
    size_t size = 2 * (c->mask + 1);
    struct kvidx_cache_ent *old = c->tbl, *tbl = calloc(size, sizeof *tbl);
    if (!tbl) return 0;
    size_t old_size = c->mask + 1;
    c->tbl = tbl;
    c->mask = size - 1;
    for (size_t i = 0; i < old_size; i++)
        if (old[i].key) c->tbl[find(c, old[i].key)] = old[i];
    free(old);
    return 1;
}

void *kvidx_cache_put(kvidx_cache *c, dm_gaddr key) {
    if (!c->slots) return NULL;
    c->gen++;
    key = DM_GADDR_WITH_TAG(key, 0);
    size_t i = find(c, key);
    if (c->tbl[i].key) return slot_at(c, c->tbl[i].slot);
    if (c->n >= c->cap) {
        size_t a = random_victim(c), b = random_victim(c);
        remove_at(c, c->tbl[a].hits <= c->tbl[b].hits ? a : b);
        c->st->cache_evict++;
    } else if (2 * (c->n + 1) > c->mask + 1 && !grow(c)) {
        return NULL;
    }
    i = find(c, key);
    uint32_t slot = c->nfree ? c->free_slots[--c->nfree] : (uint32_t)c->used++;
    c->tbl[i] = (struct kvidx_cache_ent){key, slot, 0};
    c->n++;
    c->st->cache_entries = c->n;
    c->st->cache_bytes = c->n * c->slot;
    return slot_at(c, slot);
}

/* ---- opening a handle ---- */

int kvidx_check_opts(dm_ctx *ctx, const kvidx_opts *o, char *err, size_t errlen) {
    if (o->root_slot < 0 || o->root_slot >= DM_NUM_ROOTS)
        return dm_fail_buf(err, errlen, DM_EINVAL, "root_slot %d not in 0..%d", o->root_slot, DM_NUM_ROOTS - 1);
    if (o->cache_mb < 0) return dm_fail_buf(err, errlen, DM_EINVAL, "cache_mb must be >= 0 (got %g)", o->cache_mb);
    if (o->lease_ms < 1) return dm_fail_buf(err, errlen, DM_EINVAL, "lease_ms must be >= 1");
    if (o->lpm > KVIDX_LPM_SEQUENTIAL)
        return dm_fail_buf(err, errlen, DM_EINVAL, "lpm strategy %u not in 0..%d (auto, parallel, kary, sequential)",
                           o->lpm, KVIDX_LPM_SEQUENTIAL);
    if (dm_node_size(ctx, 0) == 0)
        return dm_fail_buf(err, errlen, DM_ENODE, "memory node 0 is not attached (it holds the root slots)");
    return DM_OK;
}

unsigned kvidx_attached_nodes(dm_ctx *ctx, unsigned *nodes) {
    unsigned n = 0;
    for (unsigned id = 0; id <= DM_MAX_NODES; id++)
        if (dm_node_size(ctx, id)) nodes[n++] = id;
    return n;
}

uint32_t kvidx_locker_init(kvidx_locker *lk, dm_ctx *ctx, kvidx_stats *st, const kvidx_opts *o, const void *seed,
                           char *err, size_t errlen, kvidx_llt *llt) {
    uint32_t owner = (uint32_t)(kvidx_mix64((uint64_t)getpid() ^ dm_now_ns() ^ (uintptr_t)seed) & 0xffffff);
    if (!owner) owner = 1;
    *lk = (kvidx_locker){ctx, st, owner, o->lease_ms, o->max_wait_ms ? o->max_wait_ms : 10000, err, errlen, llt};
    return owner;
}

/* ---- Python's calls through an index's ops table (kvidx.h) ---- */

int kvidx_open(const kvidx_ops *ix, dm_ctx *ctx, const kvidx_opts *opts, void **out, char *err, size_t errlen) {
    return ix->open(ctx, opts, out, err, errlen);
}
void kvidx_close(const kvidx_ops *ix, void *h) { ix->close(h); }
const char *kvidx_error(const kvidx_ops *ix, const void *h) { return ix->error(h); }
int kvidx_get(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,
              uint64_t *lat_ns) {
    return ix->get(h, keys, n, vals, found, lat_ns);
}
int kvidx_put(const kvidx_ops *ix, void *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns) {
    return ix->put(h, keys, vals, n, lat_ns);
}
int kvidx_delete(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns) {
    return ix->delete(h, keys, n, found, lat_ns);
}
int kvidx_prefix(const kvidx_ops *ix, void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,
                 size_t *matched) {
    return ix->prefix(h, keys, n, vals, found, matched);
}
int kvidx_range(const kvidx_ops *ix, void *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count) {
    return ix->range(h, lo, hi, limit, count);
}
void kvidx_range_fetch(const kvidx_ops *ix, const void *h, uint8_t *keys, uint64_t *vals) {
    ix->range_fetch(h, keys, vals);
}
int kvidx_range_count(const kvidx_ops *ix, void *h, const uint8_t *los, const uint8_t *his, size_t n,
                      int64_t *counts, uint64_t *lat_ns) {
    return ix->range_count(h, los, his, n, counts, lat_ns);
}
void kvidx_stats_of(const kvidx_ops *ix, const void *h, kvidx_stats *out) { ix->stats(h, out); }
void kvidx_reset_stats(const kvidx_ops *ix, void *h) { ix->reset_stats(h); }
int kvidx_debug_lock(const kvidx_ops *ix, void *h, const uint8_t *key) { return ix->debug_lock(h, key); }
