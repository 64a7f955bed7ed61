/*
 * race_internal.h - the race index (one-sided extendible hashing after RACE, Zuo et al.,
 * ATC'21), written once and compiled per key width: race_k8.c and race_k32.c define
 * KVDM_KEY_BYTES and include this file, which names every public function race_k<width>_<op>.
 *
 * Layout
 *   Root slot -> meta line on memory node 0: [magic][key bytes][D][directory gaddr].
 *   Directory: 2^D 8-byte entries (D fixed at creation: at most 16, and the directory takes at
 *   most 1/16 of node 0). Entry i serves the hashes whose top D bits are i; it holds the
 *   subtable's gaddr with the subtable's local depth (when written) in the tag byte. A
 *   subtable of local depth l and hash prefix p (the top l bits of h1) owns the contiguous
 *   entries [p << (D-l), (p+1) << (D-l)), so a split rewrites one contiguous range (one WRITE).
 *   This is extendible hashing with the directory pre-doubled to depth D (a "global depth"
 *   doubling is never needed; D bounds the number of subtables).
 *   Subtable: 64 groups of 3 buckets of 64 B [main0][overflow][main1], then one line holding
 *   its lock word (never read by lookups). A bucket is one line: word 0 is the header
 *   [kind:8 | flags:8 | local depth:8 | 0:8 | prefix:32], words 1..7 are slots. Combined bucket
 *   (RACE): side 0 of group g = buckets (3g, 3g+1), side 1 = (3g+1, 3g+2): one 128 B READ.
 *   Key k has two candidates: h1 picks group/side of the first, h2 of the second.
 *   Slot: 0 = empty, else a KV block gaddr with the 8-bit fingerprint (bits 8..15 of h1) in the
 *   tag byte. KV blocks are one 64 B line, written once before the slot CAS, never modified:
 *   [key][value][checksum = mix(hash(key) ^ value)] (blocks are always one line, so the slot
 *   needs no length field).
 *
 * Protocol (RTTs with a fresh cached directory)
 *   lookup: READ both combined buckets (1 doorbell); check every bucket header (a header whose
 *     depth/prefix does not own the key means the cached directory entry is stale: re-read the
 *     directory range of that entry and retry); READ the KV blocks whose fingerprint matches
 *     (1 doorbell); a block counts only if its checksum and key match. 2 RTT for a hit, 1 RTT
 *     for a miss without fingerprint match. A batch of lookups shares each doorbell (all keys, up to
 *     DM_MAX_BATCH / 2 keys a doorbell, or the `window` option when set).
 *   put (one key, write_key): WRITE the new KV block together with the bucket READs; READ
 *     matching KV blocks (only if a fingerprint matches); CAS the slot (0 -> new for an insert,
 *     old -> new for an update, other copies -> 0) and, in the same doorbell (same memory node,
 *     so after the CAS), re-READ both combined buckets. Insert of a new key: 2 RTT; update: 3
 *     RTT. The re-read serves two checks: (1) a bucket header that changed means a split started
 *     or finished meanwhile, so the CAS may have hit a copy the splitter already moved: wait for
 *     the split and redo the operation (idempotent); (2) RACE's duplicate check: two clients
 *     that inserted the same key into different empty slots both see both copies; the copy at
 *     the lower address wins, the other is CASed to 0 by its owner (and lookups, updates and
 *     deletes always act on the lowest copy first and clear the others).
 *   delete (one key): find as a lookup, CAS every copy to 0 with the same re-read check.
 *   batched put and delete (write_many; every call, a single key too): the same verbs, one
 *     doorbell per phase for a whole group of keys (up to DM_MAX_BATCH / 3 = 85 keys, 3 verbs
 *     each in phases 1 and 3; fewer with the `window` option), one function per doorbell:
 *       wb_prepare (local): dedupe (a put keeps the last value of a key, a delete acts on its
 *         first occurrence), allocate every KV block of the group (before any CAS: a full
 *         memory node fails the call with nothing of the group published);
 *       wb_read (1 RTT): W(KV block) || R(both combined buckets) for every key;
 *       wb_read_kv (1 RTT, only if a fingerprint matches): R(every matching KV block);
 *       wb_cas (1 RTT): every key's slot CASes, each key's followed by the re-READ of its
 *         buckets; an insert takes an empty slot no other key of the group took;
 *       wb_dup_check (0-2 RTT, rare): R(KV blocks new in the re-read), CAS(our copy -> 0).
 *     A group of fresh inserts costs 2-3 RTT (3 once any of its keys' fingerprints matches), of
 *     updates or deletes 3, whatever its size. A key that meets an anomaly (stale directory,
 *     split under way, both candidates full, a lost CAS, headers changed in the re-read) is
 *     finished afterwards by the single-key path (write_key: idempotent; a put reuses the KV
 *     block it wrote), so every check above holds per key; keys of one group are distinct and
 *     claim distinct empty slots, so their CASes never interfere with each other.
 *   split (both candidates full): lease lock of the subtable (kvidx_lock_and_read: lock CAS
 *     and READ of the first bucket header in one doorbell); allocate the new subtable first
 *     (memory full leaves the index intact); WRITE every header with SPLITTING and READ the subtable (after the marks:
 *     a slot CAS that lands after this READ sees the mark in its re-read and redoes); READ all
 *     KV blocks; WRITE the new subtable (moved slots keep their bucket and position, so they
 *     fit); WRITE the directory range of the new half; WRITE the old subtable's headers with
 *     depth l+1; CAS the moved slots to 0; release. Entries that belong to neither half
 *     (left by an insert redone after a split) are cleared too.
 *   recovery: a client that finds SPLITTING headers takes the subtable lock (an expired lease
 *     is taken over) and finishes the split: if the directory already points at a new half, it
 *     completes the headers and clean-up, otherwise it redoes the split from the start.
 *   Readers never block and never return a value that was not written for the key (key and
 *   checksum of the immutable KV block). No masked atomics: header words are only WRITTEN (by
 *   the lock holder), slots are only CASed.
 */
#include "dm.h"
#include "kvidx_internal.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if KVDM_KEY_BYTES == 8
#define KB 8
#define RC(x) race_k8_##x
#define RC_T race_k8
#elif KVDM_KEY_BYTES == 32
#define KB 32
#define RC(x) race_k32_##x
#define RC_T race_k32
#else
#error "KVDM_KEY_BYTES must be 8 or 32"
#endif

#define NGROUPS 64
#define NBUCKETS (3 * NGROUPS)
#define SLOTS 7
#define ST_BYTES (NBUCKETS * DM_LINE)
#define ST_ALLOC (ST_BYTES + DM_LINE)
#define ST_SLOTS (NBUCKETS * SLOTS)
#define MAX_DEPTH 16
#define KIND (0xA0 | (KB == 8 ? 1 : 2))
#define F_SPLITTING 1
#define META_MAGIC UINT64_C(0x3130454341525644) /* "DVRACE01" */
#define NCAND_SLOTS (4 * SLOTS)                  /* slots seen by one lookup (2 x 2 lines) */
#define VERBS_PER_DOORBELL 240
#define KV_OFF_VAL KB
#define KV_OFF_SUM (KB + 8)

typedef struct probe {
    uint64_t h1, h2;
    dm_gaddr st;            /* subtable read (from the cached directory) */
    int b[2];               /* first bucket of each combined bucket */
    uint64_t line[2][2][8]; /* [candidate][line][word] */
    int stale_depth;        /* probe_check: depth of the header that disowned the key */
    int nm;                 /* fingerprint matches, by ascending slot address */
    dm_gaddr maddr[NCAND_SLOTS];
    uint64_t mword[NCAND_SLOTS];
    uint8_t kv[NCAND_SLOTS][DM_LINE];
} probe;

/* One key of a batched write (write_many): its state through the phases. */
typedef struct wkey {
    const uint8_t *key;
    uint64_t val, h1;
    size_t i;                /* position in the call */
    dm_gaddr kvg;            /* put: the new KV block (written in wb_read) */
    uint64_t neww;           /* put: its slot word */
    dm_gaddr mine;           /* insert: the empty slot claimed */
    uint64_t hdr[4];         /* the four bucket headers of the first read */
    uint64_t old[NCAND_SLOTS + 1], expect[NCAND_SLOTS + 1]; /* the slot CASes */
    int ncas, hit;
    uint8_t state, found;    /* W_*; delete: the key was present */
    uint8_t blk[DM_LINE];    /* put: the KV block's bytes */
} wkey;

#define WB_KEYS (DM_MAX_BATCH / 3) /* keys of a write group: <= 3 verbs each in wb_read and wb_cas */
#define WB_HASH 256                /* open-addressing tables of one group (> 2 * WB_KEYS) */

typedef struct RC_T {
    dm_ctx *ctx;
    kvidx_opts o;
    kvidx_stats st;
    kvidx_locker lk;
    dm_gaddr dirg;
    int D;
    uint64_t *dir; /* cached directory, 2^D entries */
    unsigned nodes[DM_MAX_NODES + 1];
    int nnodes;
    unsigned rr;
    probe *probes; /* one per key of a doorbell (at least one) */
    uint8_t *slow; /* per probe: finish on the single-key path */
    size_t nprobes;
    uint64_t *sbuf; /* split: the subtable read, then the new half's image */
    uint8_t *skv;   /* split: KV blocks of every slot */
    int *sclear;    /* split: slots to clear */
    wkey *wk;       /* batched writes: the keys of one group */
    int16_t wdedup[WB_HASH];  /* group: key -> index in wk (dedupe) */
    dm_gaddr waddr[WB_HASH];  /* group: empty slots claimed (never twice in one batch) ... */
    uint64_t wword[WB_HASH];  /* ... and the word each gets */
    char err[512];
} RC_T;

/* ---- small helpers ---- */

#define KVIDX_HANDLE RC_T
#include "kvidx_handle_internal.h"
/* race batches its writes (write_many); the shared key-by-key loops are not used here */
static int put_each(RC_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat) __attribute__((unused));
static int delete_each(RC_T *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat) __attribute__((unused));
static int probes_for(RC_T *h, size_t m);
static inline uint64_t kv_sum(uint64_t h1, uint64_t val) { return kvidx_mix64(h1 ^ val ^ UINT64_C(0x5ace5ace5ace5ace)); }
static inline unsigned fp_of(uint64_t h1) { return (unsigned)(h1 >> 8) & 0xff; }
static inline uint64_t h2_of(uint64_t h1) { return kvidx_mix64(h1 ^ UINT64_C(0x9e3779b97f4a7c15)); }
static inline uint32_t prefix_of(uint64_t h1, int depth) { return depth ? (uint32_t)(h1 >> (64 - depth)) : 0; }
static inline size_t dir_index(const RC_T *h, uint64_t h1) { return (size_t)prefix_of(h1, h->D); }
static inline uint64_t mkhdr(int depth, uint32_t prefix, int flags) {
    return (uint64_t)KIND | ((uint64_t)flags << 8) | ((uint64_t)depth << 16) | ((uint64_t)prefix << 32);
}
static inline int hdr_kind(uint64_t w) { return (int)(w & 0xff); }
static inline int hdr_flags(uint64_t w) { return (int)(w >> 8) & 0xff; }
static inline int hdr_depth(uint64_t w) { return (int)(w >> 16) & 0xff; }
static inline uint32_t hdr_prefix(uint64_t w) { return (uint32_t)(w >> 32); }
static inline int owns(uint64_t hdr, uint64_t h1) { return prefix_of(h1, hdr_depth(hdr)) == hdr_prefix(hdr); }
/* first bucket of the combined bucket chosen by hash x */
static inline int cbucket(uint64_t x) { return 3 * (int)(x % NGROUPS) + (int)((x >> 6) & 1); }
static inline dm_gaddr bucket_addr(dm_gaddr st, int b) { return untag(st) + (uint64_t)b * DM_LINE; }
static inline dm_gaddr lock_of(dm_gaddr st) { return untag(st) + ST_BYTES; }


/* Give up after many retries (a crashed writer mid-split that nobody can recover, or a root slot
 * that holds another index): tries count the retries of one operation. */
static int too_many(RC_T *h, unsigned tries, uint64_t *t0, const char *what) {
    yield_after(tries);
    if (tries < 64) return DM_OK;
    if (!*t0) *t0 = kvidx_wall_ms();
    else if (kvidx_wall_ms() - *t0 > h->lk.max_wait_ms + h->lk.lease_ms)
        return herr(h, DM_EPROTO, "race: %s did not settle within %u ms", what, h->lk.max_wait_ms + h->lk.lease_ms);
    return DM_OK;
}

/* ---- directory ---- */

/* Re-read the directory entries of the hash-prefix block that holds h1 at local depth `depth`
 * (the depth in the header that said our cached entry is stale: the split that produced that
 * header rewrote entries inside this block only). Small for deep subtables (2^(D-depth)
 * entries); remote tags are not used since a split leaves the tags of the half it keeps as they
 * were. */
static int refresh_dir(RC_T *h, uint64_t h1, int depth) {
    if (depth < 0 || depth > h->D) depth = 0;
    size_t i = dir_index(h, h1), n = (size_t)1 << (h->D - depth), start = i & ~(n - 1);
    int rc = dm_read(h->ctx, h->dir + start, h->dirg + start * 8, (uint32_t)(n * 8));
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    h->st.root_reads++;
    h->st.version_mismatch++;
    h->st.cache_miss++;
    return dmerr(h, rc);
}

/* ---- probes: read both combined buckets, then the fingerprint-matching KV blocks ---- */

static int probe_post_h1(RC_T *h, uint64_t h1, probe *q) {
    q->h1 = h1;
    q->h2 = h2_of(q->h1);
    q->st = untag(h->dir[dir_index(h, q->h1)]);
    q->b[0] = cbucket(q->h1);
    q->b[1] = cbucket(q->h2);
    h->st.cache_hit++;
    int rc = dm_read(h->ctx, q->line[0], bucket_addr(q->st, q->b[0]), 2 * DM_LINE);
    if (rc == DM_OK) rc = dm_read(h->ctx, q->line[1], bucket_addr(q->st, q->b[1]), 2 * DM_LINE);
    return dmerr(h, rc);
}

static int probe_post(RC_T *h, const uint8_t *key, probe *q) { return probe_post_h1(h, khash(key), q); }

/* Hash the keys of a batch and prefetch their directory entries (a directory of 2^16 entries
 * does not stay in the cache): the probe_post_h1 calls that follow find them loaded. */
static void probe_prefetch(RC_T *h, const uint8_t *keys, size_t m, probe *qs) {
    for (size_t j = 0; j < m; j++) {
        qs[j].h1 = khash(keys + j * KB);
        __builtin_prefetch(&h->dir[dir_index(h, qs[j].h1)]);
    }
}

enum { P_OK = 0, P_STALE = 1, P_SPLITTING = 2, P_BAD = 3 };

/* Check the four bucket headers: P_STALE if one does not own the key (stale directory; its
 * depth goes to q->stale_depth), P_SPLITTING if a split is in progress, P_BAD if the line is
 * no race bucket of this width. */
static int probe_check(probe *q) {
    int r = P_OK;
    for (int c = 0; c < 2; c++)
        for (int l = 0; l < 2; l++) {
            uint64_t hd = q->line[c][l][0];
            if (hdr_kind(hd) != KIND) return P_BAD;
            if (!owns(hd, q->h1)) {
                q->stale_depth = hdr_depth(hd);
                return P_STALE;
            }
            if (hdr_flags(hd) & F_SPLITTING) r = P_SPLITTING;
        }
    return r;
}

static dm_gaddr slot_addr(const probe *q, int c, int l, int s) {
    return bucket_addr(q->st, q->b[c] + l) + 8 * (uint64_t)(s + 1);
}

/* Collect the fingerprint matches (each slot once, ascending address). */
static void probe_collect(probe *q) {
    const uint64_t tagmask = UINT64_C(0xff) << DM_OFFSET_BITS, want = (uint64_t)fp_of(q->h1) << DM_OFFSET_BITS;
    uint32_t hits = 0; /* bit 7*(2c+l)+s: slot s of line l of candidate c matches (no branch per slot) */
    for (int c = 0; c < 2; c++)
        for (int l = 0; l < 2; l++)
            for (int s = 0; s < SLOTS; s++) {
                uint64_t w = q->line[c][l][s + 1];
                hits |= (uint32_t)((w != 0) & ((w & tagmask) == want)) << (SLOTS * (2 * c + l) + s);
            }
    q->nm = 0;
    for (; hits; hits &= hits - 1) {
        int bit = __builtin_ctz(hits), c = bit / (2 * SLOTS), l = bit / SLOTS % 2, s = bit % SLOTS;
        uint64_t w = q->line[c][l][s + 1];
        dm_gaddr a = slot_addr(q, c, l, s);
        int i = q->nm, dup = 0;
        for (int j = 0; j < q->nm; j++) dup |= q->maddr[j] == a; /* the two candidates may share lines */
        if (dup) continue;
        while (i > 0 && q->maddr[i - 1] > a) {
            q->maddr[i] = q->maddr[i - 1];
            q->mword[i] = q->mword[i - 1];
            i--;
        }
        q->maddr[i] = a;
        q->mword[i] = w;
        q->nm++;
    }
}

/* Post the READs of the matches' KV blocks (submitting early only if the batch fills up). */
static int probe_post_reads(RC_T *h, probe *q) {
    int rc = DM_OK;
    for (int j = 0; j < q->nm && rc == DM_OK; j++) {
        if (dm_batch_len(h->ctx) >= VERBS_PER_DOORBELL) rc = dm_submit(h->ctx);
        if (rc == DM_OK) rc = dm_read(h->ctx, q->kv[j], untag(q->mword[j]), DM_LINE);
    }
    return dmerr(h, rc);
}

static int probe_post_kv(RC_T *h, probe *q) {
    probe_collect(q);
    return probe_post_reads(h, q);
}

/* Whether match j's KV block holds key (checksum verified: a block is immutable once its slot
 * is published, so a mismatch means the slot does not point at a KV block of this index). */
static int kv_is(RC_T *h, const probe *q, int j, const uint8_t *key) {
    const uint8_t *kv = q->kv[j];
    if (memcmp(kv, key, KB) != 0) return 0;
    if (get64(kv + KV_OFF_SUM) != kv_sum(q->h1, get64(kv + KV_OFF_VAL))) {
        h->st.torn_retry++;
        return 0;
    }
    return 1;
}

/* first match holding key, or -1 */
static int probe_hit(RC_T *h, const probe *q, const uint8_t *key) {
    for (int j = 0; j < q->nm; j++)
        if (kv_is(h, q, j, key)) return j;
    return -1;
}

/* ---- lookups ---- */

static int get_one(RC_T *h, const uint8_t *key, uint64_t *val, uint8_t *found) {
    probe *q = &h->probes[0];
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        int rc = probe_post(h, key, q);
        if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
        if (rc != DM_OK) return rc;
        int c = probe_check(q);
        if (c == P_BAD)
            return herr(h, DM_EPROTO, "subtable 0x%016llx holds no race %d-byte-key bucket (header 0x%016llx)",
                        (unsigned long long)q->st, KB, (unsigned long long)q->line[0][0][0]);
        if (c == P_STALE) {
            if ((rc = refresh_dir(h, q->h1, q->stale_depth)) != DM_OK || (rc = too_many(h, tries, &t0, "directory")) != DM_OK)
                return rc;
            continue;
        }
        if ((rc = probe_post_kv(h, q)) == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
        if (rc != DM_OK) return rc;
        int j = probe_hit(h, q, key);
        *found = j >= 0;
        *val = j >= 0 ? get64(q->kv[j] + KV_OFF_VAL) : 0;
        return DM_OK;
    }
}

/* ---- allocation ---- */

/* ---- split ---- */

/* Post CAS(slot -> 0) for the listed slots in doorbells of VERBS_PER_DOORBELL, the last one
 * carrying the unlock (same memory node: it executes after them). */
static int clear_and_unlock(RC_T *h, dm_gaddr st, const int *idx, int n, uint64_t word) {
    int rc = DM_OK;
    for (int i = 0; i < n && rc == DM_OK; i++) {
        if (dm_batch_len(h->ctx) >= VERBS_PER_DOORBELL) rc = dm_submit(h->ctx);
        int b = idx[i] / SLOTS, s = idx[i] % SLOTS;
        if (rc == DM_OK)
            rc = dm_cas(h->ctx, bucket_addr(st, b) + 8 * (uint64_t)(s + 1), h->sbuf[b * 8 + s + 1], 0, NULL);
    }
    uint64_t old = 0;
    if (rc == DM_OK) rc = kvidx_post_unlock(&h->lk, lock_of(st), word, &old);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc == DM_OK && old != word) h->st.lease_lost++;
    if (rc != DM_OK) dm_discard(h->ctx);
    return dmerr(h, rc);
}

static int unlock_only(RC_T *h, dm_gaddr st, uint64_t word) { return dmerr(h, kvidx_unlock(&h->lk, lock_of(st), word)); }

/* Split subtable st (its buckets said local depth `depth`), or finish a split that a crashed
 * client left half done. Returns DM_OK when the caller should simply retry its operation. */
static int split(RC_T *h, dm_gaddr st, int depth) {
    st = untag(st);
    uint64_t word, last[8];
    /* Marks and unmarks go bucket 0 first, in one doorbell (executed in order): a split that
     * died half way left the first bucket marked (while marking) or the last (while unmarking). */
    kvidx_read rd[2] = {{h->sbuf, st, DM_LINE}, {last, bucket_addr(st, NBUCKETS - 1), DM_LINE}};
    int rc = kvidx_lock_and_read(&h->lk, lock_of(st), rd, 2, &word);
    if (rc != DM_OK) return dmerr(h, rc);
    uint64_t hd = (hdr_flags(last[0]) & F_SPLITTING) ? last[0] : h->sbuf[0];
    if (hdr_kind(hd) != KIND) {
        unlock_only(h, st, word);
        return herr(h, DM_EPROTO, "subtable 0x%016llx is not a race subtable", (unsigned long long)st);
    }
    int l = hdr_depth(hd), resume = (hdr_flags(hd) & F_SPLITTING) != 0;
    if (!resume && l != depth) return unlock_only(h, st, word); /* someone split it already */
    if (!resume && depth < 0) return unlock_only(h, st, word);  /* helping: the split is done */
    if (l >= h->D) {
        unlock_only(h, st, word);
        return herr(h, DM_ENOMEM, "race: subtable 0x%016llx is full at the maximum depth %d (the directory "
                    "has 2^%d entries)", (unsigned long long)st, h->D, h->D);
    }
    uint32_t p = hdr_prefix(hd), left = p << 1, right = (p << 1) | 1;
    size_t half = (size_t)1 << (h->D - l - 1), rstart = (size_t)right * half, lstart = (size_t)left * half;
    dm_gaddr nst = DM_NULL;
    if (resume) { /* a split was left half done: did it publish the new half already? */
        uint64_t e = 0;
        rc = dm_read(h->ctx, &e, h->dirg + rstart * 8, 8);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        if (untag(e) != st && (int)DM_GADDR_TAG(e) == l + 1) nst = untag(e);
    }
    int fresh = nst == DM_NULL;
    if (fresh && (rc = alloc_on_next(h, ST_ALLOC, &nst)) != DM_OK) {
        unlock_only(h, st, word);
        return rc;
    }
    /* Mark every bucket (again, if a dead splitter marked only some), then read the subtable:
     * the READ executes after the marks. A published new half means every bucket is marked. */
    uint64_t mark = mkhdr(l, p, F_SPLITTING);
    for (int b = 0; fresh && b < NBUCKETS && rc == DM_OK; b++) rc = dm_write(h->ctx, bucket_addr(st, b), &mark, 8);
    if (rc == DM_OK) rc = dm_read(h->ctx, h->sbuf, st, ST_BYTES);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    if (rc != DM_OK) return dmerr(h, rc);
    /* read every KV block */
    for (int i = 0; i < ST_SLOTS && rc == DM_OK; i++) {
        uint64_t w = h->sbuf[(i / SLOTS) * 8 + i % SLOTS + 1];
        if (!w) continue;
        if (dm_batch_len(h->ctx) >= VERBS_PER_DOORBELL) rc = dm_submit(h->ctx);
        if (rc == DM_OK) rc = dm_read(h->ctx, h->skv + (size_t)i * DM_LINE, untag(w), DM_LINE);
    }
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc != DM_OK) {
        dm_discard(h->ctx);
        return dmerr(h, rc);
    }
    /* classify: stays, moves to the new half, or belongs to neither (garbage of a redone insert) */
    uint64_t *img = h->sbuf + ST_BYTES / 8;
    int *clear = h->sclear, nclear = 0;
    uint64_t rh = mkhdr(l + 1, right, 0);
    for (int b = 0; b < NBUCKETS; b++) {
        memset(img + b * 8, 0, DM_LINE);
        img[b * 8] = rh;
    }
    for (int i = 0; i < ST_SLOTS; i++) {
        int b = i / SLOTS, s = i % SLOTS;
        uint64_t w = h->sbuf[b * 8 + s + 1];
        if (!w) continue;
        const uint8_t *kv = h->skv + (size_t)i * DM_LINE;
        uint64_t h1 = khash(kv);
        if (get64(kv + KV_OFF_SUM) != kv_sum(h1, get64(kv + KV_OFF_VAL))) continue; /* not ours: leave it */
        uint32_t np = prefix_of(h1, l + 1);
        if (prefix_of(h1, l) != p) clear[nclear++] = i;
        else if (np == right) {
            img[b * 8 + s + 1] = w;
            clear[nclear++] = i;
        }
    }
    if (fresh) { /* write the new half, then publish it in the directory */
        for (int i = 0; i < (int)half; i++) h->dir[rstart + (size_t)i] = DM_GADDR_WITH_TAG(nst, l + 1);
        rc = dm_write(h->ctx, nst, img, ST_BYTES);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        if (rc == DM_OK) rc = dm_write(h->ctx, h->dirg + rstart * 8, h->dir + rstart, (uint32_t)(half * 8));
        if (rc == DM_OK) rc = dm_submit(h->ctx);
    } else {
        for (size_t i = 0; i < half; i++) h->dir[rstart + i] = DM_GADDR_WITH_TAG(nst, l + 1);
    }
    for (size_t i = 0; i < half; i++) h->dir[lstart + i] = DM_GADDR_WITH_TAG(st, l + 1);
    /* the old subtable keeps the left half: new headers, then clear what moved, then unlock */
    uint64_t lh = mkhdr(l + 1, left, 0);
    for (int b = 0; b < NBUCKETS && rc == DM_OK; b++) rc = dm_write(h->ctx, bucket_addr(st, b), &lh, 8);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc == DM_OK) rc = clear_and_unlock(h, st, clear, nclear, word);
    else dm_discard(h->ctx);
    if (rc == DM_OK) h->st.splits++;
    return dmerr(h, rc);
}

/* ---- writes ---- */

/* The KV block of (key, val) into blk[DM_LINE]; returns its slot word for block address kvg. */
static uint64_t kv_block(uint8_t *blk, const uint8_t *key, uint64_t h1, uint64_t val, dm_gaddr kvg) {
    memset(blk, 0, DM_LINE);
    memcpy(blk, key, KB);
    put64(blk + KV_OFF_VAL, val);
    put64(blk + KV_OFF_SUM, kv_sum(h1, val));
    return DM_GADDR_WITH_TAG(kvg, fp_of(h1));
}

/* Put (del = 0) or delete (del = 1) one key. A put whose KV block a batch already wrote passes
 * its address as kvg (DM_NULL: allocate and write one here). */
static int write_key(RC_T *h, const uint8_t *key, uint64_t val, int del, uint8_t *found, dm_gaddr kvg) {
    probe *q = &h->probes[0];
    uint64_t h1 = khash(key), t0 = 0, neww = 0;
    uint8_t blk[DM_LINE];
    int wrote = del || kvg != DM_NULL, any = 0;
    if (!del) {
        if (kvg == DM_NULL) {
            int rc = alloc_on_next(h, DM_LINE, &kvg);
            if (rc != DM_OK) return rc;
        }
        neww = kv_block(blk, key, h1, val, kvg);
    }
    for (unsigned tries = 0;; tries++) {
        int rc = probe_post(h, key, q);
        if (rc == DM_OK && !wrote) rc = dm_write(h->ctx, kvg, blk, DM_LINE);
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        else dm_discard(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        wrote = 1;
        if (tries && (rc = too_many(h, tries, &t0, "a write")) != DM_OK) return rc;
        int c = probe_check(q);
        if (c == P_BAD) return herr(h, DM_EPROTO, "subtable 0x%016llx holds no race bucket", (unsigned long long)q->st);
        if (c == P_STALE) {
            if ((rc = refresh_dir(h, q->h1, q->stale_depth)) != DM_OK) return rc;
            continue;
        }
        if (c == P_SPLITTING) { /* help: wait for (or recover) the split, then retry */
            if ((rc = split(h, q->st, -1)) != DM_OK) return rc;
            continue;
        }
        if ((rc = probe_post_kv(h, q)) == DM_OK && q->nm) rc = dm_submit(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        int hit = probe_hit(h, q, key);
        uint64_t hdr[4] = {q->line[0][0][0], q->line[0][1][0], q->line[1][0][0], q->line[1][1][0]};
        dm_gaddr mine = DM_NULL;
        if (del) {
            if (hit < 0) {
                *found = (uint8_t)any;
                return DM_OK;
            }
        } else if (hit < 0) { /* insert: an empty slot, in the emptier candidate first */
            int cnt[2] = {0, 0};
            for (int cc = 0; cc < 2; cc++)
                for (int l = 0; l < 2; l++)
                    for (int s = 0; s < SLOTS; s++) cnt[cc] += q->line[cc][l][s + 1] == 0;
            int first = cnt[1] > cnt[0];
            for (int k = 0; k < 2 && mine == DM_NULL; k++) {
                int cc = k ? !first : first;
                for (int l = 0; l < 2 && mine == DM_NULL; l++)
                    for (int s = 0; s < SLOTS && mine == DM_NULL; s++)
                        if (!q->line[cc][l][s + 1]) mine = slot_addr(q, cc, l, s);
            }
            if (mine == DM_NULL) { /* both candidates full: split the subtable */
                if ((rc = split(h, q->st, hdr_depth(hdr[0]))) != DM_OK) return rc;
                continue;
            }
        }
        /* CAS: the first copy gets the new word (or 0), other copies 0; then re-read */
        uint64_t old[NCAND_SLOTS + 1], expect[NCAND_SLOTS + 1];
        int ncas = 0;
        if (mine != DM_NULL) {
            expect[ncas] = 0;
            rc = dm_cas(h->ctx, mine, 0, neww, &old[ncas++]);
        }
        for (int j = 0; j < q->nm && rc == DM_OK; j++) {
            if (!kv_is(h, q, j, key)) continue;
            uint64_t to = (j == hit && !del) ? neww : 0;
            if (q->mword[j] == to) continue;
            expect[ncas] = q->mword[j];
            rc = dm_cas(h->ctx, q->maddr[j], q->mword[j], to, &old[ncas++]);
        }
        dm_gaddr known[NCAND_SLOTS];
        int nknown = q->nm;
        memcpy(known, q->maddr, sizeof(dm_gaddr) * (size_t)nknown);
        if (rc == DM_OK) rc = probe_post(h, key, q); /* re-read, ordered after the CASes */
        if (rc == DM_OK) rc = dm_submit(h->ctx);
        else dm_discard(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        int changed = q->line[0][0][0] != hdr[0] || q->line[0][1][0] != hdr[1] || q->line[1][0][0] != hdr[2] ||
                      q->line[1][1][0] != hdr[3];
        if (changed) continue; /* a split raced with the CASes: redo (idempotent) */
        int failed = 0;
        for (int i = 0; i < ncas; i++) failed |= old[i] != expect[i];
        if (del) any = 1;
        if (failed) continue; /* a concurrent writer changed a slot we acted on: redo */
        if (del) {
            *found = 1;
            return DM_OK;
        }
        if (mine == DM_NULL) return DM_OK;
        /* RACE's duplicate check: fingerprint matches that appeared since the first read */
        probe_collect(q);
        int n = 0;
        for (int j = 0; j < q->nm; j++) {
            int old_match = q->maddr[j] == mine;
            for (int k = 0; k < nknown; k++) old_match |= known[k] == q->maddr[j];
            if (old_match) continue;
            q->maddr[n] = q->maddr[j];
            q->mword[n++] = q->mword[j];
        }
        q->nm = n;
        if (!n) return DM_OK;
        if ((rc = probe_post_reads(h, q)) == DM_OK) rc = dm_submit(h->ctx);
        if (rc != DM_OK) return dmerr(h, rc);
        int first = probe_hit(h, q, key);
        if (first >= 0 && q->maddr[first] < mine) { /* a lower copy wins: drop ours */
            rc = dm_cas(h->ctx, mine, neww, 0, NULL);
            if (rc == DM_OK) rc = dm_submit(h->ctx);
            if (rc != DM_OK) return dmerr(h, rc);
            h->st.go_right++; /* counted as a retry: the put lost a race to a concurrent put */
        }
        return DM_OK;
    }
}

static int write_one(RC_T *h, const uint8_t *key, uint64_t val, int del, uint8_t *found) {
    return write_key(h, key, val, del, found, DM_NULL);
}

/* ---- batched writes: put and delete of many keys in a few doorbells ----
 * write_many cuts a call into groups of up to WB_KEYS keys (fewer with the `window` option) and
 * runs each group through the phases below, one function per doorbell (see the header comment;
 * make_room splits a doorbell only where fingerprint collisions or duplicate copies push it past
 * DM_MAX_BATCH verbs):
 *   wb_prepare    local                                                0 RTT (+1 FAA per allocator chunk)
 *   wb_read       W(KV block) || R(both combined buckets), every key    1 RTT
 *   wb_read_kv    R(every fingerprint-matching KV block)                0-1 RTT
 *   wb_cas        CAS(slots), then re-R(both combined buckets), every key   1 RTT
 *   wb_dup_check  R(KV blocks new in the re-read), then CAS(ours -> 0)  0-2 RTT (rare)
 *   fallback      write_key for each key that met an anomaly            2-3 RTT each (+ split) */

enum { W_LIVE = 0, W_SKIP, W_SLOW, W_DONE };

static inline unsigned wb_bucket(uint64_t x) { return (unsigned)kvidx_mix64(x) & (WB_HASH - 1); }

/* Claim empty slot a for word (0 if a key of this group claimed it already). */
static int wb_take(RC_T *h, dm_gaddr a, uint64_t word) {
    for (unsigned b = wb_bucket(a);; b = (b + 1) & (WB_HASH - 1)) {
        if (h->waddr[b] == a) return 0;
        if (!h->waddr[b]) {
            h->waddr[b] = a;
            h->wword[b] = word;
            return 1;
        }
    }
}

/* Whether slot a holds word because a key of this group inserted it there (a sibling's block). */
static int wb_sibling(const RC_T *h, dm_gaddr a, uint64_t word) {
    for (unsigned b = wb_bucket(a); h->waddr[b]; b = (b + 1) & (WB_HASH - 1))
        if (h->waddr[b] == a) return h->wword[b] == word;
    return 0;
}

/* An empty slot for an insert, in the emptier candidate first (as write_key), not claimed by
 * another key of the group; DM_NULL when none is left. */
static dm_gaddr wb_claim(RC_T *h, const probe *q, uint64_t word) {
    int cnt[2] = {0, 0};
    for (int c = 0; c < 2; c++)
        for (int l = 0; l < 2; l++)
            for (int s = 0; s < SLOTS; s++) cnt[c] += q->line[c][l][s + 1] == 0;
    int first = cnt[1] > cnt[0];
    for (int k = 0; k < 2; k++) {
        int c = k ? !first : first;
        for (int l = 0; l < 2; l++)
            for (int s = 0; s < SLOTS; s++)
                if (!q->line[c][l][s + 1] && wb_take(h, slot_addr(q, c, l, s), word)) return slot_addr(q, c, l, s);
    }
    return DM_NULL;
}

/* Local (0 RTT): the group keys[s, s+m): check and dedupe them (a put keeps the last copy of a
 * key: a later duplicate wins; a delete the first: later duplicates find the key gone), then
 * allocate every KV block before any slot CAS is posted, so a full memory node fails the group
 * with nothing of it published. */
static int wb_prepare(RC_T *h, const uint8_t *keys, const uint64_t *vals, size_t s, size_t m, int del) {
    for (size_t j = 0; j < m && !del; j++)
        if (kzero(keys + (s + j) * KB)) return herr(h, DM_EINVAL, "key %zu is the reserved all-zero key", s + j);
    for (int b = 0; b < WB_HASH; b++) h->wdedup[b] = -1;
    memset(h->waddr, 0, sizeof h->waddr);
    for (size_t k = 0; k < m; k++) {
        size_t j = del ? k : m - 1 - k;
        wkey *x = &h->wk[j];
        x->i = s + j;
        x->key = keys + x->i * KB;
        x->val = del ? 0 : vals[x->i];
        x->h1 = khash(x->key);
        __builtin_prefetch(&h->dir[dir_index(h, x->h1)]); /* for wb_read (see probe_prefetch) */
        x->state = W_LIVE;
        x->found = 0;
        x->kvg = x->mine = DM_NULL;
        x->neww = 0;
        x->ncas = 0;
        x->hit = -1;
        for (unsigned b = (unsigned)x->h1 & (WB_HASH - 1);; b = (b + 1) & (WB_HASH - 1)) {
            int o = h->wdedup[b];
            if (o < 0) {
                h->wdedup[b] = (int16_t)j;
                break;
            }
            if (h->wk[o].h1 == x->h1 && memcmp(h->wk[o].key, x->key, KB) == 0) {
                x->state = W_SKIP;
                break;
            }
        }
    }
    for (size_t j = 0; j < m && !del; j++) {
        wkey *x = &h->wk[j];
        if (x->state == W_SKIP) continue;
        int rc = alloc_on_next(h, DM_LINE, &x->kvg);
        if (rc != DM_OK) return rc;
        x->neww = kv_block(x->blk, x->key, x->h1, x->val, x->kvg);
    }
    return DM_OK;
}

/* Doorbell 1 (1 RTT): every key's KV block WRITE (puts) with the READs of its two combined
 * buckets. A key whose headers say stale directory, split under way or no race bucket goes to
 * the single-key path (its KV block is written: the fallback reuses it). */
static int wb_read(RC_T *h, size_t m, int del) {
    int rc = DM_OK;
    for (size_t j = 0; j < m && rc == DM_OK; j++) {
        wkey *x = &h->wk[j];
        if (x->state != W_LIVE) continue;
        rc = make_room(h, 3);
        if (rc == DM_OK && !del) rc = dmerr(h, dm_write(h->ctx, x->kvg, x->blk, DM_LINE));
        if (rc == DM_OK) rc = probe_post_h1(h, x->h1, &h->probes[j]);
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    if (rc != DM_OK) return rc;
    h->st.batch_rounds++;
    for (size_t j = 0; j < m; j++) {
        wkey *x = &h->wk[j];
        probe *q = &h->probes[j];
        if (x->state != W_LIVE) continue;
        if (probe_check(q) != P_OK) {
            x->state = W_SLOW;
            continue;
        }
        x->hdr[0] = q->line[0][0][0], x->hdr[1] = q->line[0][1][0];
        x->hdr[2] = q->line[1][0][0], x->hdr[3] = q->line[1][1][0];
        probe_collect(q);
    }
    return DM_OK;
}

/* Doorbell 2 (1 RTT, none when no fingerprint matches): every key's fingerprint-matching KV
 * blocks. */
static int wb_read_kv(RC_T *h, size_t m) {
    int rc = DM_OK;
    for (size_t j = 0; j < m && rc == DM_OK; j++) {
        probe *q = &h->probes[j];
        if (h->wk[j].state != W_LIVE) continue;
        for (int k = 0; k < q->nm && rc == DM_OK; k++)
            if ((rc = make_room(h, 1)) == DM_OK) rc = dmerr(h, dm_read(h->ctx, q->kv[k], untag(q->mword[k]), DM_LINE));
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    return rc;
}

/* Doorbell 3 (1 RTT): every key's slot CASes (insert: 0 -> new in a claimed empty slot; update:
 * old -> new on the first copy, other copies -> 0; delete: every copy -> 0), each followed by
 * the re-READ of the key's combined buckets (same memory node: executed after the CASes). A key
 * whose headers changed (a split raced with its CASes) or whose CAS lost goes to the single-key
 * path; so does an insert that found no empty slot (both candidates full: split). */
static int wb_cas(RC_T *h, size_t m, int del) {
    int rc = DM_OK;
    for (size_t j = 0; j < m && rc == DM_OK; j++) {
        wkey *x = &h->wk[j];
        probe *q = &h->probes[j];
        if (x->state != W_LIVE) continue;
        x->hit = probe_hit(h, q, x->key);
        if (x->hit < 0 && del) { /* absent */
            x->state = W_DONE;
            continue;
        }
        if (x->hit < 0 && (x->mine = wb_claim(h, q, x->neww)) == DM_NULL) {
            x->state = W_SLOW;
            continue;
        }
        dm_gaddr at[NCAND_SLOTS + 1];
        uint64_t to[NCAND_SLOTS + 1];
        int n = 0;
        if (x->mine != DM_NULL) at[n] = x->mine, x->expect[n] = 0, to[n++] = x->neww;
        for (int k = 0; k < q->nm; k++) {
            if (!kv_is(h, q, k, x->key)) continue;
            uint64_t t = (k == x->hit && !del) ? x->neww : 0;
            if (q->mword[k] == t) continue;
            at[n] = q->maddr[k], x->expect[n] = q->mword[k], to[n++] = t;
        }
        x->ncas = n;
        rc = make_room(h, n + 2);
        for (int k = 0; k < n && rc == DM_OK; k++) rc = dmerr(h, dm_cas(h->ctx, at[k], x->expect[k], to[k], &x->old[k]));
        if (rc == DM_OK) rc = probe_post_h1(h, x->h1, q); /* re-read, ordered after the CASes */
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    if (rc != DM_OK) return rc;
    for (size_t j = 0; j < m; j++) {
        wkey *x = &h->wk[j];
        probe *q = &h->probes[j];
        if (x->state != W_LIVE) continue;
        if (q->line[0][0][0] != x->hdr[0] || q->line[0][1][0] != x->hdr[1] || q->line[1][0][0] != x->hdr[2] ||
            q->line[1][1][0] != x->hdr[3]) {
            x->state = W_SLOW; /* a split raced with the CASes: redo on the single-key path */
            continue;
        }
        int failed = 0;
        for (int k = 0; k < x->ncas; k++) failed |= x->old[k] != x->expect[k];
        if (del) x->found = 1;
        if (failed) x->state = W_SLOW; /* a concurrent writer changed a slot we acted on */
        else if (del || x->mine == DM_NULL) x->state = W_DONE;
    }
    return DM_OK;
}

/* Doorbells 4 and 5 (only when needed): RACE's duplicate check for the inserts. Fingerprint
 * matches that appeared since the first read (other than the slots this group's own inserts
 * filled) are READ in one doorbell; an insert that finds its key at a lower address drops its
 * own copy: CAS(ours -> 0), all such in one more doorbell. */
static int wb_dup_check(RC_T *h, size_t m) {
    int rc = DM_OK, drops = 0;
    for (size_t j = 0; j < m && rc == DM_OK; j++) {
        wkey *x = &h->wk[j];
        probe *q = &h->probes[j];
        if (x->state != W_LIVE) continue;
        dm_gaddr known[NCAND_SLOTS];
        int nknown = q->nm, n = 0;
        memcpy(known, q->maddr, sizeof(dm_gaddr) * (size_t)nknown);
        probe_collect(q);
        for (int k = 0; k < q->nm; k++) {
            int old_match = q->maddr[k] == x->mine || wb_sibling(h, q->maddr[k], q->mword[k]);
            for (int i = 0; i < nknown && !old_match; i++) old_match = known[i] == q->maddr[k];
            if (old_match) continue;
            q->maddr[n] = q->maddr[k];
            q->mword[n++] = q->mword[k];
        }
        q->nm = n;
        if (!n) x->state = W_DONE;
        for (int k = 0; k < n && rc == DM_OK; k++)
            if ((rc = make_room(h, 1)) == DM_OK) rc = dmerr(h, dm_read(h->ctx, q->kv[k], untag(q->mword[k]), DM_LINE));
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    for (size_t j = 0; j < m && rc == DM_OK; j++) {
        wkey *x = &h->wk[j];
        probe *q = &h->probes[j];
        if (x->state != W_LIVE) continue;
        x->state = W_DONE;
        int first = probe_hit(h, q, x->key);
        if (first < 0 || q->maddr[first] > x->mine) continue;
        if ((rc = make_room(h, 1)) == DM_OK) rc = dmerr(h, dm_cas(h->ctx, x->mine, x->neww, 0, NULL));
        h->st.go_right++; /* counted as a retry: the put lost a race to a concurrent put */
        drops++;
    }
    if (rc == DM_OK && drops) rc = dmerr(h, dm_submit(h->ctx));
    else if (rc != DM_OK) dm_discard(h->ctx);
    return rc;
}

/* Put (del = 0) or delete (del = 1) keys[0, n) in groups (see above). Each key's latency is
 * its group's, from the group's start to the end of its batched phases or of its fallback. */
static int write_many(RC_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, int del, uint8_t *found,
                      uint64_t *lat) {
    size_t per = keys_per_doorbell(h, n);
    if (per > WB_KEYS) per = WB_KEYS;
    int rc = probes_for(h, per);
    if (rc == DM_OK && !h->wk && !(h->wk = malloc(WB_KEYS * sizeof *h->wk)))
        rc = herr(h, DM_ENOMEM, "out of local memory");
    for (size_t s = 0; s < n && rc == DM_OK; s += per) {
        size_t m = n - s < per ? n - s : per;
        LAT_BEGIN;
        if ((rc = wb_prepare(h, keys, vals, s, m, del)) != DM_OK || (rc = wb_read(h, m, del)) != DM_OK ||
            (rc = wb_read_kv(h, m)) != DM_OK || (rc = wb_cas(h, m, del)) != DM_OK || (rc = wb_dup_check(h, m)) != DM_OK)
            return rc;
        uint64_t t1 = lat ? lat_clock(h) : 0;
        for (size_t j = 0; j < m && rc == DM_OK; j++) { /* the fallback, key by key */
            wkey *x = &h->wk[j];
            if (x->state == W_SLOW) {
                uint8_t f = 0;
                rc = write_key(h, x->key, x->val, del, del ? &f : NULL, x->kvg);
                x->found |= f;
                h->st.batch_deferred++;
                if (lat) lat[x->i] = lat_clock(h) - t0;
            } else if (lat) {
                lat[x->i] = t1 - t0;
            }
            if (del) found[x->i] = x->found;
        }
        if (del) h->st.deletes += m;
        else h->st.puts += m;
    }
    return rc;
}

/* Test hook: what a splitter that crashed after marking leaves behind: the subtable of key
 * locked (never released) and every bucket header marked SPLITTING. */
static int debug_crash_split(RC_T *h, const uint8_t *key) {
    uint64_t h1 = khash(key), word;
    dm_gaddr st = untag(h->dir[dir_index(h, h1)]);
    kvidx_read rd = {h->sbuf, st, DM_LINE};
    int rc = kvidx_lock_and_read(&h->lk, lock_of(st), &rd, 1, &word);
    if (rc != DM_OK) return dmerr(h, rc);
    uint64_t mark = mkhdr(hdr_depth(h->sbuf[0]), hdr_prefix(h->sbuf[0]), F_SPLITTING);
    for (int b = 0; b < NBUCKETS && rc == DM_OK; b++) rc = dm_write(h->ctx, bucket_addr(st, b), &mark, 8);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    else dm_discard(h->ctx);
    return dmerr(h, rc);
}

/* ---- public API ---- */

/* Directory depth for a node 0 of `size` bytes: at most MAX_DEPTH, at most size/16 bytes. */
static int depth_for(uint64_t size) {
    int d = MAX_DEPTH;
    while (d > 4 && ((uint64_t)8 << d) > size / 16) d--;
    return d;
}

/* Create the index (meta, directory, one subtable of depth 0) and publish it by CAS. */
static int create(RC_T *h, uint64_t *w) {
    int D = depth_for(dm_node_size(h->ctx, 0));
    size_t n = (size_t)1 << D;
    dm_gaddr meta, dirg, st;
    int rc = dm_alloc(h->ctx, 0, DM_LINE, DM_LINE, &meta);
    if (rc == DM_OK) rc = dm_alloc(h->ctx, 0, n * 8, DM_LINE, &dirg);
    if (rc == DM_OK) rc = dm_alloc(h->ctx, 0, ST_ALLOC, DM_LINE, &st);
    if (rc != DM_OK) return dmerr(h, rc);
    uint64_t *dir = malloc(n * 8), *img = h->sbuf, m[8] = {META_MAGIC, KB, (uint64_t)D, dirg, 0, 0, 0, 0};
    if (!dir) return herr(h, DM_ENOMEM, "out of local memory");
    for (size_t i = 0; i < n; i++) dir[i] = DM_GADDR_WITH_TAG(st, 0);
    memset(img, 0, ST_BYTES);
    for (int b = 0; b < NBUCKETS; b++) img[b * 8] = mkhdr(0, 0, 0);
    rc = dm_write(h->ctx, st, img, ST_BYTES);
    if (rc == DM_OK) rc = dm_write(h->ctx, dirg, dir, (uint32_t)(n * 8));
    if (rc == DM_OK) rc = dm_write(h->ctx, meta, m, sizeof m);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc == DM_OK) rc = dm_cas(h->ctx, DM_ROOT_GADDR(0, h->o.root_slot), 0, meta, w);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc == DM_OK && *w == 0) *w = meta; /* ours won */
    free(dir);
    return dmerr(h, rc);
}

/* Read the meta line and the whole directory (the client's cached copy). */
static int attach(RC_T *h, uint64_t w) {
    uint64_t m[8];
    int rc = dm_read(h->ctx, m, untag(w), sizeof m);
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    if (rc != DM_OK) return dmerr(h, rc);
    if (m[0] != META_MAGIC || m[1] != KB || m[2] < 1 || m[2] > MAX_DEPTH)
        return herr(h, DM_EPROTO, "root slot %d holds no race %d-byte-key index (does it hold another index?)",
                    h->o.root_slot, KB);
    h->D = (int)m[2];
    h->dirg = untag(m[3]);
    if (!(h->dir = malloc((size_t)8 << h->D))) return herr(h, DM_ENOMEM, "out of local memory");
    rc = dm_read(h->ctx, h->dir, h->dirg, (uint32_t)(8u << h->D));
    if (rc == DM_OK) rc = dm_submit(h->ctx);
    h->st.root_reads++;
    return dmerr(h, rc);
}

int RC(open)(dm_ctx *ctx, const kvidx_opts *o, RC_T **out, char *err, size_t errlen) {
    *out = NULL;
    RC_T *h = NULL;
    int rc0 = handle_new(ctx, o, &h, err, errlen);
    if (rc0 != DM_OK) return rc0;
    /* no local lock table: race locks only for splits, which are rare */
    h->rr = kvidx_locker_init(&h->lk, ctx, &h->st, o, h, h->err, sizeof h->err, NULL);
    probes_for(h, 1);
    h->sbuf = malloc(2 * ST_BYTES);
    h->skv = malloc((size_t)ST_SLOTS * DM_LINE);
    h->sclear = malloc(sizeof(int) * ST_SLOTS);
    int rc = h->probes && h->sbuf && h->skv && h->sclear ? DM_OK : herr(h, DM_ENOMEM, "out of local memory");
    uint64_t w = 0;
    if (rc == DM_OK) rc = dmerr(h, dm_read(ctx, &w, DM_ROOT_GADDR(0, o->root_slot), 8));
    if (rc == DM_OK) rc = dmerr(h, dm_submit(ctx));
    if (rc == DM_OK && !w) rc = create(h, &w);
    if (rc == DM_OK) rc = attach(h, w);
    if (rc != DM_OK) {
        open_failed(h, "race", err, errlen);
        RC(close)(h);
        return rc;
    }
    *out = h;
    return DM_OK;
}

void RC(close)(RC_T *h) {
    if (!h) return;
    free(h->dir);
    free(h->probes);
    free(h->slow);
    free(h->sbuf);
    free(h->skv);
    free(h->sclear);
    free(h->wk);
    free(h);
}

const char *RC(error)(const RC_T *h) { return h->err; }


/* Room for m probes (the lookups of one doorbell). */
static int probes_for(RC_T *h, size_t m) {
    if (m <= h->nprobes) return DM_OK;
    probe *p = realloc(h->probes, m * sizeof *p);
    uint8_t *s = realloc(h->slow, m);
    if (p) h->probes = p;
    if (s) h->slow = s;
    if (!p || !s) return herr(h, DM_ENOMEM, "out of local memory for %zu lookups", m);
    h->nprobes = m;
    return DM_OK;
}

/* Batched lookups: one doorbell reads every key's two combined buckets (2 READs a key, so
 * DM_MAX_BATCH / 2 keys a doorbell), one more reads every fingerprint-matching KV block; keys
 * with a stale directory entry finish one by one. Each key's latency is its doorbell's. */
static int get_many(RC_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat) {
    size_t per = keys_per_doorbell(h, n);
    if (per > DM_MAX_BATCH / 2) per = DM_MAX_BATCH / 2;
    int rc = probes_for(h, per);
    if (rc != DM_OK) return rc;
    for (size_t s = 0; s < n; s += per) {
        size_t m = n - s < per ? n - s : per;
        LAT_BEGIN;
        probe_prefetch(h, keys + s * KB, m, h->probes);
        for (size_t j = 0; j < m && rc == DM_OK; j++) rc = probe_post_h1(h, h->probes[j].h1, &h->probes[j]);
        if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
        else dm_discard(h->ctx);
        for (size_t j = 0; j < m && rc == DM_OK; j++) {
            int c = probe_check(&h->probes[j]);
            h->slow[j] = c == P_STALE || c == P_BAD;
            if (!h->slow[j]) rc = probe_post_kv(h, &h->probes[j]);
        }
        if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
        else dm_discard(h->ctx);
        for (size_t j = 0; j < m && rc == DM_OK; j++) {
            size_t i = s + j;
            if (h->slow[j]) {
                rc = get_one(h, keys + i * KB, &vals[i], &found[i]);
            } else {
                int hit = probe_hit(h, &h->probes[j], keys + i * KB);
                found[i] = hit >= 0;
                vals[i] = hit >= 0 ? get64(h->probes[j].kv[hit] + KV_OFF_VAL) : 0;
            }
            h->st.gets++;
            h->st.found += found[i];
        }
        if (rc != DM_OK) return rc;
        for (size_t j = 0; lat && j < m; j++) lat[s + j] = lat_clock(h) - t0;
    }
    return DM_OK;
}

/* a hit reads both combined buckets and one KV block */
static uint32_t lookup_bytes(void) { return 4 * DM_LINE + DM_LINE; }

int RC(get)(RC_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat) {
    return get_many(h, keys, n, vals, found, lat);
}

int RC(prefix)(RC_T *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched) {
    return prefix_match(h, keys, n, vals, found, matched);
}

int RC(put)(RC_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat) {
    return write_many(h, keys, vals, n, 0, NULL, lat);
}

int RC(delete)(RC_T *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat) {
    return write_many(h, keys, NULL, n, 1, found, lat);
}

#define NO_RANGE "range queries are not supported by race (a hash index); use chime or sherman"

int RC(range)(RC_T *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count) {
    (void)lo, (void)hi, (void)limit;
    *count = 0;
    return herr(h, DM_EINVAL, NO_RANGE);
}

void RC(range_fetch)(const RC_T *h, uint8_t *keys, uint64_t *vals) { (void)h, (void)keys, (void)vals; }

int RC(range_count)(RC_T *h, const uint8_t *los, const uint8_t *his, size_t n, int64_t *counts, uint64_t *lat) {
    (void)los, (void)his, (void)n, (void)counts, (void)lat;
    return herr(h, DM_EINVAL, NO_RANGE);
}

void RC(stats)(const RC_T *h, kvidx_stats *out) { *out = h->st; }
void RC(reset_stats)(RC_T *h) {
    memset(&h->st, 0, sizeof h->st);
    h->st.cache_bytes = (uint64_t)8 << h->D;
    h->st.cache_entries = (uint64_t)1 << h->D;
}

int RC(debug_lock)(RC_T *h, const uint8_t *key) { return debug_crash_split(h, key); }

KVIDX_DEFINE_OPS(RC_T, KB)
