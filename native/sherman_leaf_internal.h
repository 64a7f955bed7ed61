/* sherman_leaf_internal.h - sherman's leaves, included by kvidx_btree_internal.h when
 * KVDM_SHERMAN is set (the internal nodes, cache, locks, splits and root are shared with chime).
 *
 * A sherman leaf has the internal-node layout: header, then up to ICAP entries {key, value}
 * sorted by key (59 for 8-byte keys in 1 KB, 47 for 32-byte keys in 2 KB). A lookup reads the
 * whole leaf in one READ (1 RTT) and accepts it only if every line carries the same node_ver
 * (then no write was torn into it), then checks the fences (B-link: go right) and binary
 * searches. Every write rewrites the whole leaf with node_ver+1 under the leaf's lock (CAS ||
 * READ leaf, then WRITE leaf || CAS unlock: 2 RTT), so a reader can never mix two versions of
 * an entry: this is what makes it sound where Sherman's 4-bit per-entry versions are not. The
 * price is a 1 KB WRITE per insert where Sherman writes one 18-byte entry. */

/* Read the whole leaf covering key starting at leaf (following siblings), retrying torn
 * reads; with lock != 0 its lock is taken in the same doorbell and held on return. */
static int sh_leaf(CH_T *h, const uint8_t *key, path *p, int lock, uint8_t *pay, int *ver, uint64_t *word,
                   dm_gaddr *out) {
    dm_gaddr leaf = p->leaf;
    uint8_t raw[NODE_BYTES], nv[NODE_LINES], uv[NODE_LINES];
    uint64_t t0 = 0;
    for (unsigned tries = 0;; tries++) {
        kvidx_read rd = {raw, untag(leaf), NODE_BYTES};
        int rc = lock ? dmerr(h, kvidx_lock_and_read(&h->lk, lock_of(leaf), &rd, 1, word)) : submit_reads(h, &rd, 1);
        if (rc != DM_OK) return rc;
        kvidx_unpack(raw, NODE_LINES, pay, nv, uv);
        int v = agree(nv, uv, NODE_LINES);
        int bad = v >= 0 && (pay[H_KIND] != KIND || pay[H_LEVEL] != 0);
        int right = v >= 0 && !bad && above_high(pay, key);
        if (v >= 0 && !bad && !right) {
            *ver = v;
            *out = leaf;
            return DM_OK;
        }
        if (lock && (rc = dmerr(h, kvidx_unlock(&h->lk, lock_of(leaf), *word))) != DM_OK) return rc;
        if (bad) return herr(h, DM_EPROTO, "0x%016llx is not a " NAME " leaf", (unsigned long long)leaf);
        if (right) {
            leaf = untag(get64(pay + H_SIB));
            if (leaf_went_right(h, p)) {
                if ((rc = find_leaf(h, key, p)) != DM_OK) return rc;
                leaf = p->leaf;
            }
            continue;
        }
        if ((rc = torn(h, tries, &t0, leaf)) != DM_OK) return rc;
    }
}

/* 1 if key is in the sorted leaf; *pos = its index or where it would go. */
static int lsearch(const uint8_t *n, const uint8_t *key, int *pos) {
    int lo = 0, hi = nkeys(n);
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (kcmp(cient(n, mid), key) < 0) lo = mid + 1;
        else hi = mid;
    }
    *pos = lo;
    return lo < nkeys(n) && kcmp(cient(n, lo), key) == 0;
}

static int get_one(CH_T *h, const uint8_t *key, uint64_t *val, uint8_t *found) {
    path p;
    int rc = find_leaf(h, key, &p);
    if (rc != DM_OK) return rc;
    uint8_t pay[NODE_PAYLOAD];
    int v, pos;
    dm_gaddr leaf;
    rc = sh_leaf(h, key, &p, 0, pay, &v, NULL, &leaf);
    if (rc != DM_OK) return rc;
    *found = (uint8_t)lsearch(pay, key, &pos);
    *val = *found ? get64(cient(pay, pos) + KB) : 0;
    return DM_OK;
}

/* put (del = 0) or delete (del = 1) of one key. */
static int write_one(CH_T *h, const uint8_t *key, uint64_t val, int del, uint8_t *found) {
    path p;
    int rc = find_leaf(h, key, &p);
    if (rc != DM_OK) return rc;
    uint8_t pay[NODE_PAYLOAD + ENTRY]; /* room for one entry over capacity before a split */
    int v, pos;
    uint64_t word;
    dm_gaddr leaf;
    rc = sh_leaf(h, key, &p, 1, pay, &v, &word, &leaf);
    if (rc != DM_OK) return rc;
    int hit = lsearch(pay, key, &pos), k = nkeys(pay);
    if (found) *found = (uint8_t)hit;
    if (del) {
        if (!hit) return dmerr(h, kvidx_unlock(&h->lk, lock_of(leaf), word));
        memmove(ient(pay, pos), ient(pay, pos + 1), (size_t)(k - pos - 1) * ENTRY);
        memset(ient(pay, k - 1), 0, ENTRY);
        set_nkeys(pay, k - 1);
        return write_node_unlock(h, leaf, pay, v, word);
    }
    if (hit) {
        put64(ient(pay, pos) + KB, val);
        return write_node_unlock(h, leaf, pay, v, word);
    }
    if (k >= ICAP && (rc = fill_pool(h)) != DM_OK) { /* allocate before changing anything */
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    memmove(ient(pay, pos + 1), ient(pay, pos), (size_t)(k - pos) * ENTRY);
    memcpy(ient(pay, pos), key, KB);
    put64(ient(pay, pos) + KB, val);
    set_nkeys(pay, ++k);
    if (k <= ICAP) return write_node_unlock(h, leaf, pay, v, word);
    /* split: the upper half moves to a new right sibling */
    dm_gaddr s;
    if ((rc = pool_pop(h, &s)) != DM_OK) {
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return rc;
    }
    h->st.split_entries += (uint64_t)(k - 1);
    h->st.split_capacity += ICAP;
    int m = k / 2;
    uint8_t lp[NODE_PAYLOAD], rp[NODE_PAYLOAD], sep[KB];
    memset(lp, 0, sizeof lp);
    memset(rp, 0, sizeof rp);
    memcpy(sep, cient(pay, m), KB);
    set_header(lp, 0, pay + H_LOW, sep, 0, s);
    memcpy(ient(lp, 0), cient(pay, 0), (size_t)m * ENTRY);
    set_nkeys(lp, m);
    set_header(rp, 0, sep, pay + H_HIGH, pay[H_FLAGS] & F_HIGH_INF, untag(get64(pay + H_SIB)));
    memcpy(ient(rp, 0), cient(pay, m), (size_t)(k - m) * ENTRY);
    set_nkeys(rp, k - m);
    h->st.splits++;
    return publish_split(h, &p, leaf, 0, word, lp, kvidx_next_ver((uint8_t)v), s, rp, sep, is_root_node(pay));
}

#define LEAF_MAX (ICAP + 1)

/* The leaf's entries with cur <= key <= hi (already sorted). */
static int collect_leaf(const uint8_t *pay, const uint8_t *cur, const uint8_t *hi, entry *e) {
    int n = 0, pos;
    lsearch(pay, cur, &pos);
    for (int i = pos; i < nkeys(pay) && kcmp(cient(pay, i), hi) <= 0; i++, n++) {
        memcpy(e[n].key, cient(pay, i), KB);
        e[n].val = get64(cient(pay, i) + KB);
    }
    return n;
}

static int debug_lock_leaf(CH_T *h, const uint8_t *key) {
    path p;
    int rc = find_leaf(h, key, &p);
    if (rc != DM_OK) return rc;
    uint8_t pay[NODE_PAYLOAD];
    int v;
    uint64_t word;
    dm_gaddr leaf;
    rc = sh_leaf(h, key, &p, 1, pay, &v, &word, &leaf);
    if (rc == DM_OK) kvidx_local_forget(&h->lk, lock_of(leaf)); /* as if this process died */
    return rc;
}

/* A lookup reads the whole leaf: one READ. */
#define PROBE_VERBS 1
static uint32_t lookup_bytes(void) { return NODE_BYTES; }

/* Batched lookups: each key's first whole-leaf READ goes into a shared doorbell (get_many). */
typedef struct probe {
    path p;
    long same;            /* >= 0: the probe of the same leaf whose READ serves this one too */
    uint8_t raw[NODE_BYTES];
} probe;

/* A key whose leaf is the previous key's shares its READ (a chain of adjacent blocks). */
static int probe_post(CH_T *h, const uint8_t *key, probe *q, const probe *prev) {
    int rc = batch_find_leaf(h, key, &q->p);
    if (rc != DM_OK) return rc;
    q->same = -1;
    if (prev && untag(prev->p.leaf) == untag(q->p.leaf)) {
        q->same = prev->same >= 0 ? prev->same : (long)(prev - h->probes);
        return DM_OK;
    }
    return dmerr(h, dm_read(h->ctx, q->raw, q->p.leaf, NODE_BYTES));
}

/* 1 if the probe answered; 0 sends the key down the single-key path. */
static int probe_finish(const uint8_t *key, probe *q, const probe *probes, uint64_t *val, uint8_t *found) {
    uint8_t pay[NODE_PAYLOAD], nv[NODE_LINES], uv[NODE_LINES];
    kvidx_unpack(q->same >= 0 ? probes[q->same].raw : q->raw, NODE_LINES, pay, nv, uv);
    if (agree(nv, uv, NODE_LINES) < 0 || pay[H_KIND] != KIND || pay[H_LEVEL] != 0 || above_high(pay, key)) return 0;
    int pos;
    *found = (uint8_t)lsearch(pay, key, &pos);
    *val = *found ? get64(cient(pay, pos) + KB) : 0;
    return 1;
}

/* ---- the leaf interface of batched writes (see kvidx_btree_internal.h) ---- */
#define LEAF_UNIT_WRITES 0 /* every write rewrites the whole leaf with node_ver+1 */

static int leaf_apply(uint8_t *pay, const uint8_t *key, uint64_t val, int del, uint8_t *found, uint32_t *units) {
    int pos, k = nkeys(pay);
    *found = (uint8_t)lsearch(pay, key, &pos);
    *units = ~0u;
    if (*found && del) {
        memmove(ient(pay, pos), ient(pay, pos + 1), (size_t)(k - pos - 1) * ENTRY);
        memset(ient(pay, k - 1), 0, ENTRY);
        set_nkeys(pay, k - 1);
    } else if (*found) {
        put64(ient(pay, pos) + KB, val);
    } else if (!del) {
        if (k >= ICAP) return 0;
        memmove(ient(pay, pos + 1), ient(pay, pos), (size_t)(k - pos) * ENTRY);
        memcpy(ient(pay, pos), key, KB);
        put64(ient(pay, pos) + KB, val);
        set_nkeys(pay, k + 1);
    }
    return 1;
}

static int leaf_entries(const uint8_t *pay, entry *e) {
    int n = nkeys(pay);
    for (int i = 0; i < n; i++) {
        memcpy(e[i].key, cient(pay, i), KB);
        e[i].val = get64(cient(pay, i) + KB);
    }
    return n;
}

static int leaf_build(uint8_t *pay, const entry *e, int n) {
    if (n > ICAP) return 0;
    memset(pay + H_BYTES, 0, NODE_PAYLOAD - H_BYTES);
    for (int i = 0; i < n; i++) {
        memcpy(ient(pay, i), e[i].key, KB);
        put64(ient(pay, i) + KB, e[i].val);
    }
    set_nkeys(pay, n);
    return 1;
}

