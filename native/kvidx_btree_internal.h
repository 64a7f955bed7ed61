/*
 * chime_internal.h - the chime index (B+tree internal nodes over hash-bucketed leaves),
 * written once and compiled per key width: chime_k8.c and chime_k32.c define KVDM_KEY_BYTES
 * and include this file, which names every public function chime_k<width>_<op>.
 *
 * Layout (see /work/shared/notes/index-anchors.md R2/R3; what differs is said here):
 *   A node is 16 units of U lines (U = 1 for 8-byte keys: 1 KB nodes; U = 2 for 32-byte keys:
 *   2 KB nodes), followed by one 64-byte line holding its lock word (never read by lookups).
 *   Every line starts with [node_ver][unit_ver] (kvidx_internal.h); 62 bytes are payload.
 *   Unit 0 is the header: kind, level, flags (HIGH_INF), nkeys, low fence, high fence,
 *   sibling, leftmost child. Leaf units 1..15 are buckets of 3 slots {key, 8-byte value}; a
 *   key lives in bucket h(k) % 15 or the next one (wrapping), so a lookup reads two adjacent
 *   buckets: one 128 B READ for 8-byte keys (256 B for 32-byte keys; two READs on wrap).
 *   Internal nodes hold sorted {separator, child} entries after the header (59 / 47 entries)
 *   and are always read and written whole.
 *   Child pointers carry the child's node_ver in the gaddr tag byte. A tag is only set when
 *   the parent's entry range equals the child's fences at that version; 0 means unverified.
 *   So a leaf read whose node_ver equals the tag proves the leaf covers exactly the parent's
 *   range: a miss is conclusive in one round trip.
 *
 * Writes: bucket writes rewrite one unit (unit_ver+1), under the leaf's lock: CAS(lock) and
 * READ(buckets) in one doorbell, then WRITE(unit) and CAS(unlock) in one doorbell = 2 RTT.
 * Splits allocate every node they may need first (memory-node full leaves the tree intact),
 * write the new right sibling, then the left node with node_ver+1 (B-link order), then insert
 * the separator into the parent; a root split publishes the new root by CAS on the root slot
 * before releasing the old root's lock.
 */
#include "dm.h"
#include "kvidx_internal.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KVDM_SHERMAN
#define KVDM_SHERMAN 0
#endif
#if KVDM_SHERMAN
#define NAME "sherman"
#define KIND_BASE 0x50
#if KVDM_KEY_BYTES == 8
#define CH(x) sherman_k8_##x
#define CH_T sherman_k8
#else
#define CH(x) sherman_k32_##x
#define CH_T sherman_k32
#endif
#else
#define NAME "chime"
#define KIND_BASE 0x40
#if KVDM_KEY_BYTES == 8
#define CH(x) chime_k8_##x
#define CH_T chime_k8
#else
#define CH(x) chime_k32_##x
#define CH_T chime_k32
#endif
#endif
/* chime's leaf versions ride in the parent's child pointers; sherman's change on every write */
#define LEAF_TAGS (!KVDM_SHERMAN)

#if KVDM_KEY_BYTES == 8
#define KB 8
#define BL 1
#elif KVDM_KEY_BYTES == 32
#define KB 32
#define BL 2
#else
#error "KVDM_KEY_BYTES must be 8 or 32"
#endif

#define NUNITS 16
#define UNIT_BYTES (BL * DM_LINE)
#define UNIT_PAYLOAD (BL * KVIDX_LINE_PAYLOAD)
#define NODE_LINES (NUNITS * BL)
#define NODE_BYTES (NODE_LINES * DM_LINE)
#define NODE_PAYLOAD (NODE_LINES * KVIDX_LINE_PAYLOAD)
#define ALLOC_BYTES (NODE_BYTES + DM_LINE)
#define NBUCKETS (NUNITS - 1)
#define ENTRY (KB + 8)
#define SLOTS (UNIT_PAYLOAD / ENTRY)
#define LEAF_CAP (NBUCKETS * SLOTS)

#define H_KIND 0
#define H_LEVEL 1
#define H_FLAGS 2
#define H_N 4
#define H_LOW 8
#define H_HIGH (8 + KB)
#define H_SIB (8 + 2 * KB)
#define H_LEFT (16 + 2 * KB)
#define H_BYTES (24 + 2 * KB)
#define ICAP ((NODE_PAYLOAD - H_BYTES) / ENTRY)
#define F_HIGH_INF 1
#define KIND (KIND_BASE | (KB == 8 ? 1 : 2))
#define MAXH 16
#define POOL_MAX 24

typedef struct CH_T {
    dm_ctx *ctx;
    kvidx_opts o;
    kvidx_stats st;
    kvidx_cache cache;
    kvidx_locker lk;
    dm_gaddr root;
    int root_level;
    unsigned nodes[DM_MAX_NODES + 1];
    int nnodes;
    unsigned rr;
    dm_gaddr pool[POOL_MAX];
    int npool;
    struct probe *probes; /* one per key of a lookup doorbell */
    size_t nprobes;
    int lp_ok;            /* one batch's routing: the level-1 node the last descent went through */
    const uint8_t *lp_node; /* (in the cache, while its gen is lp_gen), and that descent's path, */
    uint64_t lp_gen;      /* whose lo/hi are the keys that reach the node the same way */
    const struct path *lp_range;
    struct bkey *bk;      /* batched writes: the keys, their paths, (leaf, key) order, leaves, locks */
    struct path *bp;
    struct border *bo;
    struct bgroup *bg;
    kvidx_lockreq *bl;
    size_t bcap;
    uint8_t *scan;        /* range prefetch buffer */
    uint8_t *rkeys; /* last range result */
    uint64_t *rvals;
    size_t rn, rcap;
    char err[512];
} CH_T;

typedef struct path {
    dm_gaddr node[MAXH]; /* node[l] = node visited at level l >= 1 */
    dm_gaddr leaf;
    int ver;             /* expected leaf node_ver from the parent, -1 = unknown */
    dm_gaddr parent;
    int root_leaf;       /* the leaf is the root we know of (no parent) */
    unsigned hops;       /* go-rights at the leaf level since the descent */
    int rng_ok, hinf;    /* level-1 node reached without a go-right: the keys [lo, hi) (hinf: no hi) */
    uint8_t lo[KB], hi[KB]; /* every key there takes this same path through the cached nodes */
} path;

typedef struct entry {
    uint8_t key[KB];
    uint64_t val;
} entry;


/* ---- small helpers ---- */

#define KVIDX_HANDLE CH_T
#include "kvidx_handle_internal.h"

static inline int kcmp(const uint8_t *a, const uint8_t *b) {
#if KB == 8
    uint64_t x, y;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    return (x > y) - (x < y);
#else
    return memcmp(a, b, KB);
#endif
}

static int cmp_entry(const void *a, const void *b) { return kcmp(((const entry *)a)->key, ((const entry *)b)->key); }

static inline int nkeys(const uint8_t *n) { return n[H_N] | (n[H_N + 1] << 8); }
static inline void set_nkeys(uint8_t *n, int k) {
    n[H_N] = (uint8_t)k;
    n[H_N + 1] = (uint8_t)(k >> 8);
}
static inline int above_high(const uint8_t *n, const uint8_t *key) {
    return !(n[H_FLAGS] & F_HIGH_INF) && kcmp(key, n + H_HIGH) >= 0;
}
static inline uint8_t *ient(uint8_t *n, int i) { return n + H_BYTES + (size_t)i * ENTRY; }
static inline const uint8_t *cient(const uint8_t *n, int i) { return n + H_BYTES + (size_t)i * ENTRY; }
static inline dm_gaddr lock_of(dm_gaddr g) { return untag(g) + NODE_BYTES; }
static inline int is_root_node(const uint8_t *n) { return kzero(n + H_LOW) && (n[H_FLAGS] & F_HIGH_INF); }


/* A read came back torn: count it, let the writer run, and give up (DM_EPROTO) if the node
 * stays inconsistent for max_wait_ms (a writer that crashed mid-write, or not a chime node). */
static int torn(CH_T *h, unsigned tries, uint64_t *t0, dm_gaddr g) {
    h->st.torn_retry++;
    yield_after(tries);
    if (tries < 64) return DM_OK;
    if (!*t0) *t0 = kvidx_wall_ms();
    else if (kvidx_wall_ms() - *t0 > h->lk.max_wait_ms)
        return herr(h, DM_EPROTO, "node 0x%016llx stayed inconsistent for %u ms (a client crashed mid-write, "
                    "or the root slot holds another index)", (unsigned long long)untag(g), h->lk.max_wait_ms);
    return DM_OK;
}

/* Position of key in internal node n: the first entry whose separator > key. */
static int search_pos(const uint8_t *n, const uint8_t *key) {
    int lo = 0, hi = nkeys(n);
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (kcmp(cient(n, mid), key) <= 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Child of internal node n for key: the last entry whose separator <= key, else leftmost. */
static dm_gaddr search(const uint8_t *n, const uint8_t *key) {
    int i = search_pos(n, key);
    return i == 0 ? get64(n + H_LEFT) : get64(cient(n, i - 1) + KB);
}

/* Narrow the key range a descent stands for to [lo, hi) (hi NULL: unbounded). */
static void narrow(path *p, const uint8_t *lo, const uint8_t *hi) {
    if (lo && kcmp(lo, p->lo) > 0) memcpy(p->lo, lo, KB);
    if (hi && (p->hinf || kcmp(hi, p->hi) < 0)) {
        memcpy(p->hi, hi, KB);
        p->hinf = 0;
    }
}

/* ---- remote node access ---- */

/* Check that lines agree: one node_ver on all, one unit_ver per unit of BL lines; returns the
 * node_ver or -1 when the read was torn by a concurrent write. */
static int agree(const uint8_t *nv, const uint8_t *uv, int nlines) {
    for (int i = 1; i < nlines; i++)
        if (nv[i] != nv[0] || (i % BL && uv[i] != uv[i - 1])) return -1;
    return nv[0];
}

/* Read a whole node (retrying torn reads); payload gets its decoded content. */
static int fetch_node(CH_T *h, dm_gaddr g, uint8_t *payload, int *ver, uint8_t *uver) {
    uint8_t raw[NODE_BYTES], nv[NODE_LINES], uv[NODE_LINES];
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        int rc = dm_read(h->ctx, raw, untag(g), NODE_BYTES);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        kvidx_unpack(raw, NODE_LINES, payload, nv, uv);
        int v = agree(nv, uv, NODE_LINES);
        if (v < 0 && payload[H_KIND] == KIND) {
            if ((rc = torn(h, tries, &t0, g)) != DM_OK) return rc;
            continue;
        }
        if (payload[H_KIND] != KIND)
            return herr(h, DM_EPROTO, "node 0x%016llx is not a " NAME " %d-byte-key node (kind 0x%02x): does the "
                        "root slot hold another index?", (unsigned long long)untag(g), KB, payload[H_KIND]);
        if (ver) *ver = v;
        if (uver) memcpy(uver, uv, NODE_LINES);
        return DM_OK;
    }
}

static int load_root(CH_T *h) {
    uint64_t w = 0;
    int rc = dm_read(h->ctx, &w, DM_ROOT_GADDR(0, h->o.root_slot), 8);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc != DM_OK) return dmerr(h, rc);
    h->st.root_reads++;
    if (!w) return herr(h, DM_EPROTO, "root slot %d is empty", h->o.root_slot);
    h->root = untag(w);
    h->root_level = (int)DM_GADDR_TAG(w);
    return DM_OK;
}

static int alloc_node(CH_T *h, dm_gaddr *out) { return alloc_on_next(h, ALLOC_BYTES, out); }

/* Make sure the pool holds what a split up to the root can need, before anything changes. */
static int fill_pool(CH_T *h) {
    int need = h->root_level + 3;
    if (need > POOL_MAX) need = POOL_MAX;
    while (h->npool < need) {
        int rc = alloc_node(h, &h->pool[h->npool]);
        if (rc != DM_OK) return rc;
        h->npool++;
    }
    return DM_OK;
}

static int pool_pop(CH_T *h, dm_gaddr *out) {
    if (h->npool > 0) {
        *out = h->pool[--h->npool];
        return DM_OK;
    }
    return alloc_node(h, out);
}

/* ---- descent ---- */

/* A go-right means the cached parent that sent us here predates a split: drop it, so the
 * next descent re-reads it instead of walking the same sibling chain again (for ever). */
static void drop_stale_parent(CH_T *h, dm_gaddr *parent) {
    if (*parent) kvidx_cache_del(&h->cache, *parent);
    *parent = 0;
}

#define STALE_HOPS 4 /* go-rights in one descent (or leaf walk) that make it re-read the root slot */

/* The root we know went stale: another client grew the tree. Re-read the root slot on the
 * next descent instead of walking siblings from the old root for ever. */
static void root_is_stale(CH_T *h) {
    if (h->root_level >= 0) h->st.stale_root++;
    h->root_level = -1;
}

/* A leaf reached by p turned out to end below the key: go right, and forget what sent us
 * there (the cached parent, or the root itself when the leaf was the root). Returns 1 when
 * that was the root: the caller then descends again from the real root (find_leaf) instead of
 * walking the leaf level from its left end. */
static int leaf_went_right(CH_T *h, path *p) {
    h->st.go_right++;
    int stale = p->root_leaf || ++p->hops >= STALE_HOPS; /* a long walk: our root or cache is old */
    if (stale) root_is_stale(h);
    p->root_leaf = 0;
    drop_stale_parent(h, &p->parent);
    return stale;
}


/* Walk from the root to the node at level stop (>= 1) covering key, or to the leaf (stop 0).
 * Internal nodes come from the cache when present. */
static int descend(CH_T *h, const uint8_t *key, int stop, path *p, dm_gaddr *out) {
    uint8_t buf[NODE_PAYLOAD];
    p->ver = -1;
    p->parent = 0;
    dm_gaddr g = h->root;
    int lvl = h->root_level;
    if (lvl < stop) {
        int rc = load_root(h);
        if (rc != DM_OK) return rc;
        g = h->root;
        lvl = h->root_level;
        if (lvl < stop) return herr(h, DM_EPROTO, "the tree has no level %d (root level %d)", stop, lvl);
    }
    unsigned hops = 0, reloaded = 0;
    memset(p->lo, 0, KB);
    p->hinf = 1;
    p->rng_ok = 1;
    for (unsigned steps = 0; lvl > 0; steps++) {
        if (steps > 100000) return herr(h, DM_EPROTO, "descent does not terminate (corrupt sibling chain?)");
        const uint8_t *n = kvidx_cache_get(&h->cache, g);
        if (n) {
            h->st.cache_hit++;
        } else {
            h->st.cache_miss++;
            int rc = fetch_node(h, g, buf, NULL, NULL);
            if (rc != DM_OK) return rc;
            if (buf[H_LEVEL] != lvl)
                return herr(h, DM_EPROTO, "node 0x%016llx has level %d, expected %d", (unsigned long long)g,
                            buf[H_LEVEL], lvl);
            uint8_t *slot = kvidx_cache_put(&h->cache, g);
            if (slot) memcpy(slot, buf, NODE_PAYLOAD);
            n = buf;
        }
        if (above_high(n, key)) { /* B-link: the node split after our parent pointed to it */
            h->st.go_right++;
            p->rng_ok = 0;
            if (g == h->root) root_is_stale(h); /* the root split: reload the slot next time */
            if (lvl + 1 < MAXH) drop_stale_parent(h, &p->node[lvl + 1]);
            g = untag(get64(n + H_SIB));
            if (++hops == STALE_HOPS && !reloaded) { /* walking a long chain: start from the real root */
                root_is_stale(h);
                int rc = load_root(h);
                if (rc != DM_OK) return rc;
                reloaded = 1;
                if (h->root_level >= stop) {
                    g = h->root;
                    lvl = h->root_level;
                }
            }
            continue;
        }
        p->node[lvl] = g;
        narrow(p, n + H_LOW, (n[H_FLAGS] & F_HIGH_INF) ? NULL : n + H_HIGH);
        if (lvl == stop) {
            *out = g;
            return DM_OK;
        }
        int pos = search_pos(n, key);
        dm_gaddr child = pos == 0 ? get64(n + H_LEFT) : get64(cient(n, pos - 1) + KB);
        if (lvl > 1) narrow(p, pos ? cient(n, pos - 1) : NULL, pos < nkeys(n) ? cient(n, pos) : NULL);
        if (lvl == 1) {
            p->leaf = untag(child);
            p->ver = DM_GADDR_TAG(child) ? (int)DM_GADDR_TAG(child) : -1;
            p->parent = g;
            *out = p->leaf;
            return DM_OK;
        }
        g = untag(child);
        lvl--;
    }
    p->leaf = g; /* the root is a leaf */
    p->root_leaf = 1;
    *out = g;
    return DM_OK;
}

static int find_leaf(CH_T *h, const uint8_t *key, path *p) {
    if (!h->root || h->root_level < 0) {
        int rc = load_root(h);
        if (rc != DM_OK) return rc;
    }
    dm_gaddr g;
    memset(p, 0, sizeof *p);
    return descend(h, key, 0, p, &g);
}

/* find_leaf for the keys of one lookup batch: a key inside the level-1 node the previous key
 * went through is routed by a copy of that node (what the cache held at that moment), without
 * probing the cache or descending: a request's chain of adjacent blocks costs one descent. */
static int batch_find_leaf(CH_T *h, const uint8_t *key, path *p) {
    const path *r = h->lp_range;
    if (h->lp_ok && h->cache.gen == h->lp_gen && kcmp(key, r->lo) >= 0 && (r->hinf || kcmp(key, r->hi) < 0)) {
        dm_gaddr child = search(h->lp_node, key);
        int top = h->root_level > 0 && h->root_level < MAXH ? h->root_level : MAXH - 1;
        memcpy(p->node, r->node, (size_t)(top + 1) * sizeof p->node[0]); /* a split's separators climb it */
        p->parent = r->parent;
        p->leaf = untag(child);
        p->ver = DM_GADDR_TAG(child) ? (int)DM_GADDR_TAG(child) : -1;
        p->root_leaf = 0;
        p->hops = 0;
        p->rng_ok = 0;
        return DM_OK;
    }
    int rc = find_leaf(h, key, p);
    h->lp_node = rc == DM_OK && p->parent && p->rng_ok ? kvidx_cache_get(&h->cache, p->parent) : NULL;
    h->lp_ok = h->lp_node != NULL;
    h->lp_gen = h->cache.gen;
    h->lp_range = p; /* the caller keeps p until its batch's routing is done */
    return rc;
}

static int submit_reads(CH_T *h, const kvidx_read *rd, int n) {
    int rc = DM_OK;
    for (int i = 0; i < n && rc == DM_OK; i++) rc = dm_read(h->ctx, rd[i].local, rd[i].remote, rd[i].len);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    return dmerr(h, rc);
}

#if !KVDM_SHERMAN
/* ---- leaf bucket reads ---- */

typedef struct leafread {
    uint8_t raw[3][UNIT_BYTES]; /* header, bucket b1, bucket b2 */
    uint8_t pay[3][UNIT_PAYLOAD];
    uint8_t nv[3][BL], uv[3][BL];
    int b[2];
} leafread;

static void buckets_of(const uint8_t *key, int b[2]) {
    b[0] = (int)(khash(key) % NBUCKETS);
    b[1] = (b[0] + 1) % NBUCKETS;
}

static dm_gaddr unit_addr(dm_gaddr leaf, int unit) { return untag(leaf) + (uint64_t)unit * UNIT_BYTES; }

/* The READs of the two buckets (one verb when adjacent) and optionally the header. */
static int leaf_reads(dm_gaddr leaf, leafread *r, int with_hdr, kvidx_read *out) {
    int n = 0;
    if (with_hdr) out[n++] = (kvidx_read){r->raw[0], unit_addr(leaf, 0), UNIT_BYTES};
    if (r->b[1] == r->b[0] + 1) {
        out[n++] = (kvidx_read){r->raw[1], unit_addr(leaf, 1 + r->b[0]), 2 * UNIT_BYTES};
    } else {
        out[n++] = (kvidx_read){r->raw[1], unit_addr(leaf, 1 + r->b[0]), UNIT_BYTES};
        out[n++] = (kvidx_read){r->raw[2], unit_addr(leaf, 1 + r->b[1]), UNIT_BYTES};
    }
    return n;
}

/* Decode what was read; returns the common node_ver or -1 if torn. */
static int leaf_decode(leafread *r, int with_hdr) {
    int v = -1;
    for (int u = with_hdr ? 0 : 1; u < 3; u++) {
        kvidx_unpack(r->raw[u], BL, r->pay[u], r->nv[u], r->uv[u]);
        int w = agree(r->nv[u], r->uv[u], BL);
        if (w < 0 || (v >= 0 && w != v)) return -1;
        v = w;
    }
    return v;
}

/* Slot of key in the two buckets: returns 1..2 (bucket) and *slot, or 0. */
static int scan(const leafread *r, const uint8_t *key, int *slot) {
    for (int u = 1; u < 3; u++)
        for (int s = 0; s < SLOTS; s++)
            if (kcmp(r->pay[u] + s * ENTRY, key) == 0) {
                *slot = s;
                return u;
            }
    return 0;
}

/* ---- lookup ---- */

static int get_one(CH_T *h, const uint8_t *key, uint64_t *val, uint8_t *found) {
    path p;
    int rc = find_leaf(h, key, &p);
    if (rc != DM_OK) return rc;
    dm_gaddr leaf = p.leaf;
    int exp = p.ver;
    leafread r;
    buckets_of(key, r.b);
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        int hdr = exp < 0;
        kvidx_read rd[3];
        rc = submit_reads(h, rd, leaf_reads(leaf, &r, hdr, rd));
        if (rc != DM_OK) return rc;
        int v = leaf_decode(&r, hdr);
        if (v < 0) {
            if ((rc = torn(h, tries, &t0, leaf)) != DM_OK) return rc;
            continue;
        }
        if (!hdr && v != exp) {
            /* split since the parent entry was written (or in flight): re-read with the header */
            h->st.version_mismatch++;
            if (p.parent) kvidx_cache_del(&h->cache, p.parent);
            p.parent = 0;
            exp = -1;
            continue;
        }
        if (hdr) {
            if (r.pay[0][H_KIND] != KIND || r.pay[0][H_LEVEL] != 0)
                return herr(h, DM_EPROTO, "0x%016llx is not a " NAME " leaf", (unsigned long long)leaf);
            if (above_high(r.pay[0], key)) {
                leaf = untag(get64(r.pay[0] + H_SIB));
                if (leaf_went_right(h, &p)) {
                    if ((rc = find_leaf(h, key, &p)) != DM_OK) return rc;
                    leaf = p.leaf;
                    exp = p.ver;
                }
                continue;
            }
        }
        int slot, u = scan(&r, key, &slot);
        *found = u != 0;
        *val = u ? get64(r.pay[u] + slot * ENTRY + KB) : 0;
        return DM_OK;
    }
}

/* ---- writes ---- */

/* Lock the leaf covering key with its buckets read in the same doorbell; follows the B-link
 * chain when the leaf split. On return the lock is held, r is decoded and r->pay[0] holds the
 * header when *have_hdr. */
static int lock_leaf(CH_T *h, const uint8_t *key, path *p, leafread *r, dm_gaddr *leaf_out, uint64_t *word,
                     int *ver) {
    dm_gaddr leaf = p->leaf;
    int exp = p->ver;
    uint64_t t0 = 0;
    buckets_of(key, r->b);
    for (unsigned tries = 0;; tries++) {
        int hdr = exp < 0;
        kvidx_read rd[3];
        int n = leaf_reads(leaf, r, hdr, rd);
        int rc = kvidx_lock_and_read(&h->lk, lock_of(leaf), rd, n, word);
        if (rc != DM_OK) return dmerr(h, rc);
        int v = leaf_decode(r, hdr);
        if (v >= 0 && !hdr && v != exp) {
            h->st.version_mismatch++;
            if (p->parent) kvidx_cache_del(&h->cache, p->parent);
            p->parent = 0;
            /* under the lock the leaf is stable: read its header and check the fences */
            kvidx_read hd = {r->raw[0], unit_addr(leaf, 0), UNIT_BYTES};
            rc = submit_reads(h, &hd, 1);
            if (rc != DM_OK) return rc;
            v = leaf_decode(r, 1);
            hdr = 1;
        }
        if (v < 0) { /* only if a lease was taken over mid-write: drop the lock and retry */
            rc = kvidx_unlock(&h->lk, lock_of(leaf), *word);
            if (rc != DM_OK) return dmerr(h, rc);
            if ((rc = torn(h, tries, &t0, leaf)) != DM_OK) return rc;
            continue;
        }
        if (hdr && above_high(r->pay[0], key)) {
            int stale = leaf_went_right(h, p);
            rc = kvidx_unlock(&h->lk, lock_of(leaf), *word);
            if (rc != DM_OK) return dmerr(h, rc);
            leaf = untag(get64(r->pay[0] + H_SIB));
            exp = -1;
            if (stale) {
                if ((rc = find_leaf(h, key, p)) != DM_OK) return rc;
                leaf = p->leaf;
                exp = p->ver;
            }
            continue;
        }
        *leaf_out = leaf;
        *ver = v;
        return DM_OK;
    }
}

/* WRITE one bucket unit (unit_ver+1) and release the lock in the same doorbell. */
static int write_unit_unlock(CH_T *h, dm_gaddr leaf, leafread *r, int u, int ver, uint64_t word) {
    uint8_t raw[UNIT_BYTES];
    kvidx_pack(raw, BL, r->pay[u], (uint8_t)ver, (uint8_t)(r->uv[u][0] + 1));
    uint64_t old = 0;
    int rc = dm_write(h->ctx, unit_addr(leaf, 1 + r->b[u - 1]), raw, UNIT_BYTES);
    if (rc == DM_OK) rc = kvidx_post_unlock(&h->lk, lock_of(leaf), word, &old);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    if (rc == DM_OK && old != word) h->st.lease_lost++;
    return dmerr(h, rc);
}


#endif /* chime leaves */

#if !KVDM_SHERMAN
/* Place entries into a fresh leaf payload, each in one of its two buckets. A maximum
 * bipartite matching (augmenting paths that move earlier entries to their other bucket), so
 * it fails only when no placement exists; returns 0 then. */
typedef struct placer {
    int kb[LEAF_CAP + 1][2];
    int occ[NBUCKETS][SLOTS];
    int fill[NBUCKETS];
    int vis[NBUCKETS];
} placer;

static int augment(placer *pl, int k) {
    int b0 = pl->kb[k][0], b1 = pl->kb[k][1]; /* the emptier bucket first: keeps room in both */
    if (!pl->vis[b0] && !pl->vis[b1] && pl->fill[b1] < pl->fill[b0] && pl->fill[b1] < SLOTS) {
        pl->vis[b1] = 1;
        pl->occ[b1][pl->fill[b1]++] = k;
        return 1;
    }
    for (int t = 0; t < 2; t++) {
        int c = pl->kb[k][t];
        if (pl->vis[c]) continue;
        pl->vis[c] = 1;
        if (pl->fill[c] < SLOTS) {
            pl->occ[c][pl->fill[c]++] = k;
            return 1;
        }
        for (int s = 0; s < SLOTS; s++)
            if (augment(pl, pl->occ[c][s])) { /* that entry moved to its other bucket */
                pl->occ[c][s] = k;
                return 1;
            }
    }
    return 0;
}

static int place(uint8_t *pay, const entry *e, int n) {
    placer pl;
    if (n > LEAF_CAP) return 0;
    memset(pl.fill, 0, sizeof pl.fill);
    for (int i = 0; i < n; i++) {
        buckets_of(e[i].key, pl.kb[i]);
        memset(pl.vis, 0, sizeof pl.vis);
        if (!augment(&pl, i)) return 0;
    }
    for (int c = 0; c < NBUCKETS; c++)
        for (int s = 0; s < pl.fill[c]; s++) {
            uint8_t *sl = pay + (size_t)(1 + c) * UNIT_PAYLOAD + (size_t)s * ENTRY;
            memcpy(sl, e[pl.occ[c][s]].key, KB);
            put64(sl + KB, e[pl.occ[c][s]].val);
        }
    return 1;
}

#endif

static void set_header(uint8_t *pay, int level, const uint8_t *low, const uint8_t *high, int high_inf,
                       dm_gaddr sib) {
    pay[H_KIND] = KIND;
    pay[H_LEVEL] = (uint8_t)level;
    pay[H_FLAGS] = high_inf ? F_HIGH_INF : 0;
    memcpy(pay + H_LOW, low, KB);
    if (high_inf) memset(pay + H_HIGH, 0, KB);
    else memcpy(pay + H_HIGH, high, KB);
    put64(pay + H_SIB, sib);
}

/* Lock node g and read it in the same doorbell: pay gets its payload, *v its version (< 0 if
 * the lines disagree: torn by a writer whose lease we took over). */
static int lock_read_node(CH_T *h, dm_gaddr g, uint8_t *pay, uint64_t *word, int *v) {
    uint8_t raw[NODE_BYTES], nv[NODE_LINES], uv[NODE_LINES];
    kvidx_read rd = {raw, untag(g), NODE_BYTES};
    int rc = kvidx_lock_and_read(&h->lk, lock_of(g), &rd, 1, word);
    if (rc != DM_OK) return dmerr(h, rc);
    kvidx_unpack(raw, NODE_LINES, pay, nv, uv);
    *v = agree(nv, uv, NODE_LINES);
    return DM_OK;
}

/* Write a locked node's new payload (next version) and release its lock in the same doorbell. */
/* Write locked node g's packed bytes and release its lock in one doorbell. A fresh node (a
 * split's sibling, a relocation's copy; fresh_raw NULL: none) that g's new bytes point to is
 * written first: in the same doorbell on the same memory node (one QP executes in post order),
 * else one round trip earlier. */
static int write_raw_unlock(CH_T *h, dm_gaddr fresh, const uint8_t *fresh_raw, dm_gaddr g, const uint8_t *raw,
                            uint64_t word) {
    uint64_t old = 0;
    int rc = fresh_raw ? dm_write(h->ctx, fresh, fresh_raw, NODE_BYTES) : DM_OK;
    if (rc == DM_OK && fresh_raw && DM_GADDR_NODE(fresh) != DM_GADDR_NODE(g)) rc = dm_submit(h->ctx);
    if (rc == DM_OK) rc = dm_write(h->ctx, g, raw, NODE_BYTES);
    if (rc == DM_OK) rc = kvidx_post_unlock(&h->lk, lock_of(g), word, &old);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    if (rc == DM_OK && old != word) h->st.lease_lost++;
    return dmerr(h, rc);
}

static int write_node_unlock(CH_T *h, dm_gaddr g, const uint8_t *pay, int v, uint64_t word) {
    uint8_t out[NODE_BYTES];
    kvidx_pack(out, NODE_LINES, pay, kvidx_next_ver((uint8_t)v), 0);
    return write_raw_unlock(h, 0, NULL, g, out, word);
}

/* write_node_unlock for an internal node, then refresh our cached copy. */
static int write_internal_unlock(CH_T *h, dm_gaddr g, const uint8_t *n, int v, uint64_t word) {
    int rc = write_node_unlock(h, g, n, v, word);
    if (rc != DM_OK) return rc;
    uint8_t *c = kvidx_cache_put(&h->cache, g);
    if (c) memcpy(c, n, NODE_PAYLOAD);
    return DM_OK;
}

static int insert_parent(CH_T *h, path *p, int lvl, const uint8_t *sep, dm_gaddr left, uint8_t lver,
                         dm_gaddr right, uint8_t rver, const uint8_t *rhigh, int rhigh_inf);

/* Publish a split of node g (locked with word) at level lvl: right half rp goes to the new
 * node s, the left half lp (new node_ver nv) replaces g, then the parent learns sep. */
static int publish_split(CH_T *h, path *p, dm_gaddr g, int lvl, uint64_t word, uint8_t *lp, uint8_t nv,
                         dm_gaddr s, uint8_t *rp, const uint8_t *sep, int was_root) {
    uint8_t lraw[NODE_BYTES], rraw[NODE_BYTES];
    uint8_t rhigh[KB];
    int rhigh_inf = rp[H_FLAGS] & F_HIGH_INF;
    memcpy(rhigh, rp + H_HIGH, KB);
    kvidx_pack(rraw, NODE_LINES, rp, 1, 0);
    kvidx_pack(lraw, NODE_LINES, lp, nv, 0);
    int rc;
    if (was_root) {
        dm_gaddr nr;
        rc = pool_pop(h, &nr);
        if (rc != DM_OK) goto fail_unlock;
        uint8_t np[NODE_PAYLOAD], nraw[NODE_BYTES];
        memset(np, 0, sizeof np);
        static const uint8_t zero[KB];
        set_header(np, lvl + 1, zero, NULL, 1, 0);
        put64(np + H_LEFT, DM_GADDR_WITH_TAG(g, lvl == 0 && LEAF_TAGS ? nv : 0));
        memcpy(ient(np, 0), sep, KB);
        put64(ient(np, 0) + KB, DM_GADDR_WITH_TAG(s, lvl == 0 && LEAF_TAGS ? 1 : 0));
        set_nkeys(np, 1);
        kvidx_pack(nraw, NODE_LINES, np, 1, 0);
        rc = dm_write(h->ctx, s, rraw, NODE_BYTES);
        if (rc == DM_OK) rc = dm_write(h->ctx, nr, nraw, NODE_BYTES);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        else dm_discard(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        uint64_t prev = 0;
        rc = dm_cas(h->ctx, DM_ROOT_GADDR(0, h->o.root_slot), DM_GADDR_WITH_TAG(g, lvl),
                    DM_GADDR_WITH_TAG(nr, lvl + 1), &prev);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        if ((rc = write_raw_unlock(h, 0, NULL, g, lraw, word)) != DM_OK) return rc;
        if (prev == DM_GADDR_WITH_TAG(g, lvl)) {
            h->st.root_splits++;
            h->root = nr;
            h->root_level = lvl + 1;
            uint8_t *c = kvidx_cache_put(&h->cache, nr);
            if (c) memcpy(c, np, NODE_PAYLOAD);
            return DM_OK;
        }
        /* someone else replaced the root (cannot happen while we hold its lock): fall back */
    } else {
        if ((rc = write_raw_unlock(h, s, rraw, g, lraw, word)) != DM_OK) return rc;
    }
    if (lvl > 0) { /* our copies of the two internal nodes are exact */
        uint8_t *c = kvidx_cache_put(&h->cache, g);
        if (c) memcpy(c, lp, NODE_PAYLOAD);
        c = kvidx_cache_put(&h->cache, s);
        if (c) memcpy(c, rp, NODE_PAYLOAD);
    }
    return insert_parent(h, p, lvl + 1, sep, g, nv, s, 1, rhigh, rhigh_inf);

fail_unlock:
    kvidx_unlock(&h->lk, lock_of(g), word);
    return rc;
}

/* Add separator sep -> right (child version rver, high fence rhigh) to the level-lvl node
 * payload n (room for one entry over capacity), after left (version lver): the child tags
 * become exact where the fences say so. Returns the new entry count (> ICAP: split it). */
static int parent_add(uint8_t *n, int lvl, const uint8_t *sep, dm_gaddr left, uint8_t lver, dm_gaddr right,
                      uint8_t rver, const uint8_t *rhigh, int rhigh_inf) {
    int k = nkeys(n), i = 0;
    while (i < k && kcmp(cient(n, i), sep) < 0) i++;
    /* the left neighbour's range now ends at sep: its tag may become its new version */
    uint8_t *lptr = i == 0 ? n + H_LEFT : ient(n, i - 1) + KB;
    if (i < k && kcmp(cient(n, i), sep) == 0) { /* already there (cannot happen): refresh */
        put64(ient(n, i) + KB, DM_GADDR_WITH_TAG(right, 0));
    } else {
        memmove(ient(n, i + 1), ient(n, i), (size_t)(k - i) * ENTRY);
        memcpy(ient(n, i), sep, KB);
        /* the right child's tag is valid only if the next separator is its high fence */
        int next_inf = i + 1 >= k + 1 ? (n[H_FLAGS] & F_HIGH_INF) : 0;
        const uint8_t *next = i + 1 >= k + 1 ? n + H_HIGH : cient(n, i + 1);
        int exact = lvl == 1 && LEAF_TAGS && (next_inf ? rhigh_inf : (!rhigh_inf && kcmp(next, rhigh) == 0));
        put64(ient(n, i) + KB, DM_GADDR_WITH_TAG(right, exact ? rver : 0));
        set_nkeys(n, ++k);
    }
    if (lvl == 1 && LEAF_TAGS && untag(get64(lptr)) == untag(left)) put64(lptr, DM_GADDR_WITH_TAG(left, lver));
    return k;
}

/* Insert separator sep -> right into the level-lvl node covering it; fix the child tags. */
static int insert_parent(CH_T *h, path *p, int lvl, const uint8_t *sep, dm_gaddr left, uint8_t lver,
                         dm_gaddr right, uint8_t rver, const uint8_t *rhigh, int rhigh_inf) {
    dm_gaddr g = lvl < MAXH ? p->node[lvl] : 0;
    if (!g) {
        path q;
        memset(&q, 0, sizeof q);
        int rc = descend(h, sep, lvl, &q, &g);
        if (rc != DM_OK) return rc;
    }
    uint8_t n[NODE_PAYLOAD + ENTRY]; /* room for one entry over capacity before a split */
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        uint64_t word;
        int v, rc = lock_read_node(h, g, n, &word, &v);
        if (rc != DM_OK) return rc;
        if (v < 0 || n[H_KIND] != KIND || n[H_LEVEL] != lvl) {
            rc = kvidx_unlock(&h->lk, lock_of(g), word);
            if (rc != DM_OK) return dmerr(h, rc);
            if (v >= 0) return herr(h, DM_EPROTO, "node 0x%016llx: expected a level-%d " NAME " node",
                                    (unsigned long long)g, lvl);
            if ((rc = torn(h, tries, &t0, g)) != DM_OK) return rc;
            continue;
        }
        if (above_high(n, sep)) {
            h->st.go_right++;
            rc = kvidx_unlock(&h->lk, lock_of(g), word);
            if (rc != DM_OK) return dmerr(h, rc);
            g = untag(get64(n + H_SIB));
            continue;
        }
        int k = parent_add(n, lvl, sep, left, lver, right, rver, rhigh, rhigh_inf);
        if (k <= ICAP) {
            return write_internal_unlock(h, g, n, v, word);
        }
        /* full: split this internal node (k == ICAP + 1 entries held in a larger buffer) */
        rc = fill_pool(h);
        dm_gaddr s = 0;
        if (rc == DM_OK) rc = pool_pop(h, &s);
        if (rc != DM_OK) {
            kvidx_unlock(&h->lk, lock_of(g), word);
            return rc;
        }
        h->st.internal_splits++;
        int m = k / 2;
        uint8_t lp[NODE_PAYLOAD], rp[NODE_PAYLOAD], push[KB];
        memset(lp, 0, sizeof lp);
        memset(rp, 0, sizeof rp);
        memcpy(push, cient(n, m), KB);
        set_header(lp, lvl, n + H_LOW, push, 0, s);
        memcpy(lp + H_LEFT, n + H_LEFT, 8);
        memcpy(ient(lp, 0), cient(n, 0), (size_t)m * ENTRY);
        set_nkeys(lp, m);
        set_header(rp, lvl, push, n + H_HIGH, n[H_FLAGS] & F_HIGH_INF, untag(get64(n + H_SIB)));
        memcpy(rp + H_LEFT, cient(n, m) + KB, 8);
        memcpy(ient(rp, 0), cient(n, m + 1), (size_t)(k - m - 1) * ENTRY);
        set_nkeys(rp, k - m - 1);
        return publish_split(h, p, g, lvl, word, lp, kvidx_next_ver((uint8_t)v), s, rp, push, is_root_node(n));
    }
}

#if !KVDM_SHERMAN
/* Leaf (node_ver ov) was rewritten with the same fences as node to (node_ver nv; to == leaf
 * for an in-place rewrite): move the parent's child pointer along so that lookups keep
 * answering in one READ. The tag moves only if it was ov (exact for these fences); a tag that
 * moved on (a split published meanwhile) stays, or becomes 0 (unverified) when the leaf moved. */
static int retag_parent(CH_T *h, const path *p, const uint8_t *key, dm_gaddr leaf, uint8_t ov, dm_gaddr to,
                        uint8_t nv) {
    dm_gaddr g = p->node[1];
    if (!g) return DM_OK; /* the leaf is the root */
    uint8_t n[NODE_PAYLOAD];
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        uint64_t word;
        int v, rc = lock_read_node(h, g, n, &word, &v);
        if (rc != DM_OK) return rc;
        int ok = v >= 0 && n[H_KIND] == KIND && n[H_LEVEL] == 1;
        if (!ok || above_high(n, key)) {
            if ((rc = kvidx_unlock(&h->lk, lock_of(g), word)) != DM_OK) return dmerr(h, rc);
            if (v >= 0 && !ok) return DM_OK; /* the tree changed shape under us: leave it */
            if (v < 0) {
                if ((rc = torn(h, tries, &t0, g)) != DM_OK) return rc;
            } else {
                h->st.go_right++;
                g = untag(get64(n + H_SIB));
            }
            continue;
        }
        uint8_t *ptr = NULL;
        if (untag(get64(n + H_LEFT)) == untag(leaf)) ptr = n + H_LEFT;
        for (int i = 0; !ptr && i < nkeys(n); i++)
            if (untag(get64(ient(n, i) + KB)) == untag(leaf)) ptr = ient(n, i) + KB;
        int exact = ptr && DM_GADDR_TAG(get64(ptr)) == ov;
        if (!ptr || (!exact && to == leaf)) return dmerr(h, kvidx_unlock(&h->lk, lock_of(g), word));
        put64(ptr, DM_GADDR_WITH_TAG(to, exact ? nv : 0));
        return write_internal_unlock(h, g, n, v, word);
    }
}

/* Both buckets of key are full in the locked leaf. Hopscotch-style displacement first: re-place
 * every entry (each still within its two buckets, so lookups stay one READ) with the new key
 * by a maximum matching and rewrite the leaf whole with node_ver+1 (readers see the new
 * version, never a half-moved entry), then move the parent's tag along. Only when no placement
 * exists does the leaf split. */
#define LEAF_MOVED 1 /* write_one: the leaf moved to a fresh node (version wrap); start again */

/* The locked leaf (payload old) is at node_ver 255: its next version would wrap to 1, a tag
 * that a parent copy cached long ago may still carry for other fences. Move it instead: copy
 * it to a fresh node (its versions start over at an address no parent ever named), retire the
 * old node (node_ver 0, which no tag carries; an empty range whose sibling is the copy, so
 * every reader and writer goes right), then point the parent at the copy. */
static int relocate_leaf(CH_T *h, const path *p, dm_gaddr leaf, uint64_t word, const uint8_t *key,
                         const uint8_t *old) {
    dm_gaddr s;
    int rc = pool_pop(h, &s);
    if (rc != DM_OK) {
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    uint8_t raw[NODE_BYTES], dead[NODE_PAYLOAD], draw[NODE_BYTES];
    kvidx_pack(raw, NODE_LINES, old, 1, 0);
    memset(dead, 0, sizeof dead);
    set_header(dead, 0, old + H_LOW, old + H_LOW, 0, s);
    kvidx_pack(draw, NODE_LINES, dead, 0, 0);
    if ((rc = write_raw_unlock(h, s, raw, leaf, draw, word)) != DM_OK) return rc;
    h->st.leaf_relocations++;
    rc = retag_parent(h, p, key, leaf, 255, s, 1);
    return rc == DM_OK ? LEAF_MOVED : rc;
}

static int leaf_full(CH_T *h, path *p, dm_gaddr leaf, uint64_t word, const uint8_t *key, uint64_t val) {
    uint8_t old[NODE_PAYLOAD];
    int v;
    int rc = fetch_node(h, leaf, old, &v, NULL);
    if (rc != DM_OK) {
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    if (v == 255 && p->node[1]) return relocate_leaf(h, p, leaf, word, key, old); /* the root leaf has no tag */
    entry e[LEAF_CAP + 1];
    int n = 0;
    for (int u = 1; u < NUNITS; u++)
        for (int s = 0; s < SLOTS; s++) {
            const uint8_t *sl = old + (size_t)u * UNIT_PAYLOAD + (size_t)s * ENTRY;
            if (kzero(sl)) continue;
            memcpy(e[n].key, sl, KB);
            e[n].val = get64(sl + KB);
            n++;
        }
    memcpy(e[n].key, key, KB);
    e[n].val = val;
    n++;
    uint8_t lp[NODE_PAYLOAD], rp[NODE_PAYLOAD];
    memset(lp, 0, sizeof lp);
    memcpy(lp, old, UNIT_PAYLOAD); /* the header unit */
    if (place(lp, e, n)) {
        uint8_t nv = kvidx_next_ver((uint8_t)v);
        if ((rc = write_node_unlock(h, leaf, lp, v, word)) != DM_OK) return rc;
        h->st.leaf_rebuilds++;
        return retag_parent(h, p, key, leaf, (uint8_t)v, leaf, nv);
    }
    if ((rc = fill_pool(h)) != DM_OK) { /* allocate first: a full memory node leaves the leaf intact */
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    h->st.split_entries += (uint64_t)(n - 1);
    h->st.split_capacity += LEAF_CAP;
    qsort(e, (size_t)n, sizeof e[0], cmp_entry);
    int m = -1;
    for (int d = 0; d < n && m < 0; d++) {
        int cand = n / 2 + ((d & 1) ? -(d + 1) / 2 : d / 2);
        if (cand < 1 || cand >= n) continue;
        memset(lp, 0, sizeof lp);
        memset(rp, 0, sizeof rp);
        if (place(lp, e, cand) && place(rp, e + cand, n - cand)) m = cand;
    }
    if (m < 0) {
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return herr(h, DM_EPROTO, "cannot split leaf 0x%016llx: no split point fits the buckets",
                    (unsigned long long)leaf);
    }
    dm_gaddr s;
    rc = pool_pop(h, &s);
    if (rc != DM_OK) {
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    set_header(lp, 0, old + H_LOW, e[m].key, 0, s);
    set_header(rp, 0, e[m].key, old + H_HIGH, old[H_FLAGS] & F_HIGH_INF, untag(get64(old + H_SIB)));
    h->st.splits++;
    return publish_split(h, p, leaf, 0, word, lp, kvidx_next_ver((uint8_t)v), s, rp, e[m].key, is_root_node(old));
}

/* Descend to the leaf covering key and lock it (lock CAS || leaf READ). */
static int find_and_lock_leaf(CH_T *h, const uint8_t *key, path *p, leafread *r, dm_gaddr *leaf, uint64_t *word,
                              int *ver) {
    int rc = find_leaf(h, key, p);
    return rc != DM_OK ? rc : lock_leaf(h, key, p, r, leaf, word, ver);
}

/* put (del = 0) or delete (del = 1) of one key; LEAF_MOVED asks to start again. */
static int write_once(CH_T *h, const uint8_t *key, uint64_t val, int del, uint8_t *found) {
    path p;
    leafread r;
    dm_gaddr leaf;
    uint64_t word;
    int ver;
    int rc = find_and_lock_leaf(h, key, &p, &r, &leaf, &word, &ver);
    if (rc != DM_OK) return rc;
    int slot, u = scan(&r, key, &slot);
    if (found) *found = u != 0;
    if (del) {
        if (!u) return dmerr(h, kvidx_unlock(&h->lk, lock_of(leaf), word));
        memset(r.pay[u] + slot * ENTRY, 0, ENTRY);
        return write_unit_unlock(h, leaf, &r, u, ver, word);
    }
    if (!u) { /* a free slot in the emptier bucket */
        int fill[3] = {0, 0, 0}, free_slot[3] = {-1, -1, -1};
        for (int b = 1; b < 3; b++)
            for (int s = SLOTS - 1; s >= 0; s--) {
                if (kzero(r.pay[b] + s * ENTRY)) free_slot[b] = s;
                else fill[b]++;
            }
        if (r.b[0] == r.b[1]) fill[2] = SLOTS; /* one bucket only (cannot happen with 15) */
        u = free_slot[1] >= 0 && (free_slot[2] < 0 || fill[1] <= fill[2]) ? 1 : (free_slot[2] >= 0 ? 2 : 0);
        if (!u) return leaf_full(h, &p, leaf, word, key, val);
        slot = free_slot[u];
        memcpy(r.pay[u] + slot * ENTRY, key, KB);
    }
    put64(r.pay[u] + slot * ENTRY + KB, val);
    return write_unit_unlock(h, leaf, &r, u, ver, word);
}

static int write_one(CH_T *h, const uint8_t *key, uint64_t val, int del, uint8_t *found) {
    int rc;
    while ((rc = write_once(h, key, val, del, found)) == LEAF_MOVED) {}
    return rc;
}

/* The leaf's entries with cur <= key <= hi, sorted. */
static int collect_leaf(const uint8_t *pay, const uint8_t *cur, const uint8_t *hi, entry *e) {
    int n = 0;
    for (int u = 1; u < NUNITS; u++)
        for (int s = 0; s < SLOTS; s++) {
            const uint8_t *sl = pay + (size_t)u * UNIT_PAYLOAD + (size_t)s * ENTRY;
            if (kzero(sl) || kcmp(sl, cur) < 0 || kcmp(sl, hi) > 0) continue;
            memcpy(e[n].key, sl, KB);
            e[n].val = get64(sl + KB);
            n++;
        }
    qsort(e, (size_t)n, sizeof e[0], cmp_entry);
    return n;
}

/* Test hook body: lock the leaf covering key and return holding it. */
static int debug_lock_leaf(CH_T *h, const uint8_t *key) {
    path p;
    leafread r;
    dm_gaddr leaf;
    uint64_t word;
    int ver;
    int rc = find_and_lock_leaf(h, key, &p, &r, &leaf, &word, &ver);
    if (rc == DM_OK) kvidx_local_forget(&h->lk, lock_of(leaf)); /* as if this process died */
    return rc;
}
#define LEAF_MAX LEAF_CAP

/* A lookup posts the bucket READ (two on a wrap) and, with no version from the parent, the
 * header READ; with a cached parent it reads the two buckets. */
#define PROBE_VERBS 3
static uint32_t lookup_bytes(void) { return 2 * UNIT_BYTES; }

/* Batched lookups: each key's first attempt goes into a shared doorbell (get_many). */
typedef struct probe {
    path p;
    leafread r;
    int hdr;
} probe;

static int probe_post(CH_T *h, const uint8_t *key, probe *q, const probe *prev) {
    (void)prev;
    int rc = batch_find_leaf(h, key, &q->p);
    if (rc != DM_OK) return rc;
    q->hdr = q->p.ver < 0;
    buckets_of(key, q->r.b);
    kvidx_read rd[3];
    int n = leaf_reads(q->p.leaf, &q->r, q->hdr, rd);
    for (int i = 0; i < n && rc == DM_OK; i++) rc = dm_read(h->ctx, rd[i].local, rd[i].remote, rd[i].len);
    return dmerr(h, rc);
}

/* 1 if the probe answered; 0 sends the key down the single-key path (it retries, counts). */
static int probe_finish(const uint8_t *key, probe *q, const probe *probes, uint64_t *val, uint8_t *found) {
    (void)probes;
    int v = leaf_decode(&q->r, q->hdr);
    if (v < 0 || (!q->hdr && v != q->p.ver)) return 0;
    if (q->hdr && (q->r.pay[0][H_KIND] != KIND || q->r.pay[0][H_LEVEL] != 0 || above_high(q->r.pay[0], key)))
        return 0;
    int slot, u = scan(&q->r, key, &slot);
    *found = u != 0;
    *val = u ? get64(q->r.pay[u] + slot * ENTRY + KB) : 0;
    return 1;
}
/* ---- the leaf interface of batched writes (sherman_leaf_internal.h has the same) ----
 * leaf_apply   apply one key's put/delete to a locked leaf's payload in place; 0 = no room
 *              (its two buckets are full); *units collects the units it changed;
 * leaf_entries every entry of a leaf payload;
 * leaf_build   a leaf payload (header kept) holding sorted entries e[0..n); 0 = they do not fit. */
#define LEAF_UNIT_WRITES 1 /* a batch writes the changed bucket units, node_ver unchanged */

static int leaf_apply(uint8_t *pay, const uint8_t *key, uint64_t val, int del, uint8_t *found, uint32_t *units) {
    int b[2], best = -1, best_slot = -1, best_fill = SLOTS + 1;
    buckets_of(key, b);
    for (int t = 0; t < 2; t++) {
        uint8_t *u = pay + (size_t)(1 + b[t]) * UNIT_PAYLOAD;
        int fill = 0, free_slot = -1;
        for (int s = 0; s < SLOTS; s++) {
            uint8_t *sl = u + s * ENTRY;
            if (kcmp(sl, key) == 0) {
                *found = 1;
                if (del) memset(sl, 0, ENTRY);
                else put64(sl + KB, val);
                *units |= 1u << (1 + b[t]);
                return 1;
            }
            if (kzero(sl)) {
                if (free_slot < 0) free_slot = s;
            } else {
                fill++;
            }
        }
        if (free_slot >= 0 && fill < best_fill) best = b[t], best_slot = free_slot, best_fill = fill;
    }
    *found = 0;
    if (del) return 1;
    if (best < 0) return 0;
    uint8_t *sl = pay + (size_t)(1 + best) * UNIT_PAYLOAD + (size_t)best_slot * ENTRY;
    memcpy(sl, key, KB);
    put64(sl + KB, val);
    *units |= 1u << (1 + best);
    return 1;
}

static int leaf_entries(const uint8_t *pay, entry *e) {
    int n = 0;
    for (int u = 1; u < NUNITS; u++)
        for (int s = 0; s < SLOTS; s++) {
            const uint8_t *sl = pay + (size_t)u * UNIT_PAYLOAD + (size_t)s * ENTRY;
            if (kzero(sl)) continue;
            memcpy(e[n].key, sl, KB);
            e[n++].val = get64(sl + KB);
        }
    return n;
}

static int leaf_build(uint8_t *pay, const entry *e, int n) {
    memset(pay + UNIT_PAYLOAD, 0, NODE_PAYLOAD - UNIT_PAYLOAD);
    return place(pay, e, n);
}

#else
#include "sherman_leaf_internal.h"
#endif
#include "btree_batch_internal.h"

/* ---- range ---- */

static int range_grow(CH_T *h, size_t need) {
    if (need <= h->rcap) return DM_OK;
    size_t cap = h->rcap ? h->rcap : 256;
    while (cap < need) cap *= 2;
    uint8_t *k = realloc(h->rkeys, cap * KB);
    if (k) h->rkeys = k;
    uint64_t *v = realloc(h->rvals, cap * 8);
    if (v) h->rvals = v;
    if (!k || !v) return herr(h, DM_ENOMEM, "out of local memory for %zu range results", cap);
    h->rcap = cap;
    return DM_OK;
}

/* Append the entries of leaf payload pay in [cur, hi]; 1 when the scan is complete. */
static int range_take(CH_T *h, const uint8_t *pay, const uint8_t *cur, const uint8_t *hi, uint64_t limit,
                      int *rc) {
    entry e[LEAF_MAX];
    int n = collect_leaf(pay, cur, hi, e);
    if ((*rc = range_grow(h, h->rn + (size_t)n)) != DM_OK) return 1;
    for (int i = 0; i < n && (!limit || h->rn < limit); i++) {
        memcpy(h->rkeys + h->rn * KB, e[i].key, KB);
        h->rvals[h->rn++] = e[i].val;
    }
    return (limit && h->rn >= limit) || (pay[H_FLAGS] & F_HIGH_INF) || kcmp(pay + H_HIGH, hi) > 0;
}

#define SCAN_PREFETCH 32
#define SCAN_LEAF_CAP (KVDM_SHERMAN ? ICAP : LEAF_CAP) /* entries a full leaf holds */

/* Read the leaves the cached parent of cur lists up to hi (starting with leaf g) in one
 * doorbell and take each whose lines agree and that starts exactly where the scan stands
 * (B-link: a leaf owns [low, high) at its version). Returns 1 when the scan is complete;
 * otherwise *g and cur say where to go on. */
static int range_prefetch(CH_T *h, const path *p, dm_gaddr *g, uint8_t *cur, const uint8_t *hi, uint64_t limit,
                          int *rc) {
    const uint8_t *par = p->parent ? kvidx_cache_get(&h->cache, p->parent) : NULL;
    if (!par) return 0;
    dm_gaddr list[SCAN_PREFETCH];
    int k = nkeys(par), pos = 0, nl = 0;
    while (pos < k && kcmp(cient(par, pos), cur) <= 0) pos++; /* child pos-1 (or leftmost) holds cur */
    list[nl++] = *g;
    int most = SCAN_PREFETCH;
    if (limit) { /* a limited scan needs the leaves its remaining entries fill at half occupancy, no more */
        uint64_t half = SCAN_LEAF_CAP / 2 > 0 ? SCAN_LEAF_CAP / 2 : 1, left = limit > h->rn ? limit - h->rn : 0;
        uint64_t need = 1 + (left + half - 1) / half;
        if (need < (uint64_t)most) most = (int)need;
    }
    for (; pos < k && nl < most && kcmp(cient(par, pos), hi) <= 0; pos++)
        list[nl++] = untag(get64(cient(par, pos) + KB));
    if (nl < 2) return 0;
    if (!h->scan && !(h->scan = malloc((size_t)SCAN_PREFETCH * NODE_BYTES))) {
        *rc = herr(h, DM_ENOMEM, "out of local memory for range prefetch");
        return 1;
    }
    for (int i = 0; i < nl && *rc == DM_OK; i++) *rc = dm_read(h->ctx, h->scan + (size_t)i * NODE_BYTES, list[i], NODE_BYTES);
    if (*rc == DM_OK) *rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    if (*rc != DM_OK) {
        dmerr(h, *rc);
        return 1;
    }
    uint8_t pay[NODE_PAYLOAD], nv[NODE_LINES], uv[NODE_LINES];
    for (int i = 0; i < nl; i++) {
        kvidx_unpack(h->scan + (size_t)i * NODE_BYTES, NODE_LINES, pay, nv, uv);
        if (untag(list[i]) != untag(*g) || agree(nv, uv, NODE_LINES) < 0 || pay[H_KIND] != KIND ||
            pay[H_LEVEL] != 0 || above_high(pay, cur) || (i > 0 && kcmp(pay + H_LOW, cur) != 0))
            return 0; /* the caller reads this one on its own */
        if (range_take(h, pay, cur, hi, limit, rc)) return 1;
        memcpy(cur, pay + H_HIGH, KB);
        *g = untag(get64(pay + H_SIB));
    }
    return 0;
}

/* Scan [lo, hi]: batches of leaves listed by cached parents, one leaf at a time (following
 * sibling pointers) where that is not possible. */
static int range_scan(CH_T *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit) {
    h->rn = 0;
    if (kcmp(lo, hi) > 0) return DM_OK;
    uint8_t cur[KB], pay[NODE_PAYLOAD];
    memcpy(cur, lo, KB);
    path p;
    int rc = find_leaf(h, cur, &p);
    if (rc != DM_OK) return rc;
    dm_gaddr g = p.leaf;
    for (;;) {
        if (range_prefetch(h, &p, &g, cur, hi, limit, &rc)) return rc;
        rc = fetch_node(h, g, pay, NULL, NULL);
        if (rc != DM_OK) return rc;
        if (pay[H_LEVEL] != 0) return herr(h, DM_EPROTO, "range: 0x%016llx is not a leaf", (unsigned long long)g);
        if (above_high(pay, cur)) {
            g = untag(get64(pay + H_SIB));
            if (leaf_went_right(h, &p)) {
                if ((rc = find_leaf(h, cur, &p)) != DM_OK) return rc;
                g = p.leaf;
            }
            continue;
        }
        if (range_take(h, pay, cur, hi, limit, &rc)) return rc;
        memcpy(cur, pay + H_HIGH, KB);
        g = untag(get64(pay + H_SIB));
        p.parent = 0;
        if (h->cache.slots) { /* the next leaf's parent is probably cached: batch again */
            if ((rc = find_leaf(h, cur, &p)) != DM_OK) return rc;
            g = p.leaf;
        }
    }
}

/* ---- public API ---- */

int CH(open)(dm_ctx *ctx, const kvidx_opts *o, CH_T **out, char *err, size_t errlen) {
    *out = NULL;
    CH_T *h = NULL;
    int rc0 = handle_new(ctx, o, &h, err, errlen);
    if (rc0 != DM_OK) return rc0;
    h->rr = kvidx_locker_init(&h->lk, ctx, &h->st, o, h, h->err, sizeof h->err, o->local_locks);
    int rc = kvidx_cache_init(&h->cache, o->cache_mb, NODE_PAYLOAD, &h->st);
    if (rc != DM_OK) {
        kvidx_cache_free(&h->cache);
        free(h);
        return dm_fail_buf(err, errlen, rc, "cannot allocate a %g MB node cache", o->cache_mb);
    }
    /* create the index (a root leaf, published by CAS) unless someone did already */
    uint64_t w = 0;
    rc = dm_read(ctx, &w, DM_ROOT_GADDR(0, o->root_slot), 8);
    if (rc == DM_OK) rc = dm_submit(ctx);
    if (rc == DM_OK && !w) {
        dm_gaddr g;
        rc = alloc_node(h, &g);
        if (rc == DM_OK) {
            uint8_t pay[NODE_PAYLOAD], raw[NODE_BYTES];
            static const uint8_t zero[KB];
            memset(pay, 0, sizeof pay);
            set_header(pay, 0, zero, NULL, 1, 0);
            kvidx_pack(raw, NODE_LINES, pay, 1, 0);
            rc = dm_write(ctx, g, raw, NODE_BYTES);
            if (rc == DM_OK) rc = dm_submit(ctx);
            if (rc == DM_OK) rc = dm_cas(ctx, DM_ROOT_GADDR(0, o->root_slot), 0, DM_GADDR_WITH_TAG(g, 0), &w);
            if (rc == DM_OK) rc = dm_submit(ctx);
        }
    }
    if (rc == DM_OK) rc = load_root(h);
    if (rc == DM_OK) {
        uint8_t pay[NODE_PAYLOAD];
        rc = fetch_node(h, h->root, pay, NULL, NULL);
    }
    if (rc != DM_OK) {
        open_failed(h, NAME, err, errlen);
        CH(close)(h);
        return rc;
    }
    *out = h;
    return DM_OK;
}

void CH(close)(CH_T *h) {
    if (!h) return;
    kvidx_cache_free(&h->cache);
    free(h->probes);
    free(h->bk);
    free(h->bp);
    free(h->bo);
    free(h->bg);
    free(h->bl);
    free(h->scan);
    free(h->rkeys);
    free(h->rvals);
    free(h);
}

const char *CH(error)(const CH_T *h) { return h->err; }


/* Room for m probes; allocated before any READ is posted into them. */
static int probes_for(CH_T *h, size_t m) {
    if (m <= h->nprobes) return DM_OK;
    struct probe *p = realloc(h->probes, m * sizeof *p);
    if (!p) return herr(h, DM_ENOMEM, "out of local memory for %zu lookups", m);
    h->probes = p;
    h->nprobes = m;
    return DM_OK;
}

/* Batched lookups: every key's first READ(s) go into one doorbell, split only where the
 * transport's limit (DM_MAX_BATCH verbs) or the `window` option says; the keys whose read
 * needs a retry or a go-right finish one by one. Each key's latency is its doorbell's. */
static int get_many(CH_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat) {
    size_t per = keys_per_doorbell(h, n);
    if (per > DM_MAX_BATCH) per = DM_MAX_BATCH;
    int rc = probes_for(h, per);
    if (rc != DM_OK) return rc;
    for (size_t s = 0; s < n;) {
        LAT_BEGIN;
        size_t m = 0;
        h->lp_ok = 0; /* lp_range points into the probes, which this doorbell reuses */
        while (s + m < n && m < per && rc == DM_OK && dm_batch_len(h->ctx) + PROBE_VERBS <= DM_MAX_BATCH) {
            rc = probe_post(h, keys + (s + m) * KB, &h->probes[m], m ? &h->probes[m - 1] : NULL);
            m++;
        }
        if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
        else dm_discard(h->ctx);
        for (size_t j = 0; j < m && rc == DM_OK; j++) {
            size_t i = s + j;
            if (!probe_finish(keys + i * KB, &h->probes[j], h->probes, &vals[i], &found[i]))
                rc = get_one(h, keys + i * KB, &vals[i], &found[i]);
            h->st.gets++;
            h->st.found += found[i];
        }
        if (rc != DM_OK) return rc;
        for (size_t j = 0; lat && j < m; j++) lat[s + j] = lat_clock(h) - t0;
        s += m;
    }
    return DM_OK;
}

int CH(get)(CH_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat) {
    return get_many(h, keys, n, vals, found, lat);
}

int CH(prefix)(CH_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched) {
    return prefix_match(h, keys, n, vals, found, matched);
}

int CH(put)(CH_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat) {
    return write_many(h, keys, vals, n, 0, NULL, lat);
}

int CH(delete)(CH_T *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat) {
    return write_many(h, keys, NULL, n, 1, found, lat);
}

int CH(range)(CH_T *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count) {
    h->st.ranges++;
    int rc = range_scan(h, lo, hi, limit);
    *count = h->rn;
    return rc;
}

void CH(range_fetch)(const CH_T *h, uint8_t *keys, uint64_t *vals) {
    memcpy(keys, h->rkeys, h->rn * KB);
    memcpy(vals, h->rvals, h->rn * 8);
}

int CH(range_count)(CH_T *h, const uint8_t *los, const uint8_t *his, size_t n, int64_t *counts, uint64_t *lat) {
    for (size_t i = 0; i < n; i++) {
        LAT_BEGIN;
        h->st.ranges++;
        int rc = range_scan(h, los + i * KB, his + i * KB, 0);
        if (rc != DM_OK) return rc;
        counts[i] = (int64_t)h->rn;
        LAT_END(i);
    }
    return DM_OK;
}

void CH(stats)(const CH_T *h, kvidx_stats *out) { *out = h->st; }
void CH(reset_stats)(CH_T *h) {
    memset(&h->st, 0, sizeof h->st);
    h->st.cache_entries = h->cache.n;
    h->st.cache_bytes = h->cache.n * h->cache.slot;
}

/* Test hook: take the lock of the leaf covering key and keep it (as a client that crashed). */
int CH(debug_lock)(CH_T *h, const uint8_t *key) { return debug_lock_leaf(h, key); }

KVIDX_DEFINE_OPS(CH_T, KB)
