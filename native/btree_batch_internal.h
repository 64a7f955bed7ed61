/*
 * btree_batch_internal.h - batched writes of the B+trees (chime, sherman): a request's N keys
 * in a constant number of round trips (notes/index-anchors.md R9). Included by
 * kvidx_btree_internal.h after the leaf format; it expects from its includer: the handle CH_T
 * (with the batch buffers bk, bg, bl, bcap), path, entry, find_leaf, write_one and the split
 * machinery (fill_pool, pool_pop, publish_split, insert_parent, write_node_unlock,
 * write_raw_unlock), and the leaf interface leaf_apply, leaf_entries, leaf_build,
 * LEAF_UNIT_WRITES (see the leaf formats).
 *
 * Phases, one doorbell each:
 *   route      the leaf of every key, from the cached internal nodes (no RTT when cached);
 *   lock_all   CAS(lock) || READ(leaf) of every target leaf (kvidx_lock_many: global address
 *              order, optimistic; why that rules out deadlock is in kvidx_internal.h);
 *   write_all  every changed leaf's WRITE || CAS(unlock) (chime: the changed bucket units,
 *              node_ver unchanged; sherman: the whole leaf, node_ver+1).
 * = 2 RTT when uncontended and nothing splits. A leaf that overflows is then rewritten whole
 * (chime: every entry re-placed) or split k ways, one leaf at a time: its k-1 fresh right
 * siblings first, the left leaf with node_ver+1 and its unlock next (B-link order), then one
 * separator insert per sibling: the split rounds. A key whose leaf turned out not to cover it
 * (a split since our cache was filled) is routed again in the next round; a key the batch cannot place (a chime leaf at node_ver 255 that must move, a
 * root leaf that needs more than one split) finishes on the single-key path.
 * Duplicate keys: the last put of a key wins; a delete reports found for the first
 * occurrence (as if the keys were written one by one). A local lock table (handover between
 * threads) is a per-key protocol: with one, writes go key by key, as with window=1 (the
 * one-key-a-time baseline).
 * On an error an unspecified subset of the batch is written; every leaf stays consistent.
 */

#define BATCH_ROUNDS 64 /* a cap; a round that makes no progress after the third ends the loop */
#define BATCH_MAX_WAYS 16 /* most leaves one overflowing leaf is split into in one batch */

typedef struct bkey { /* sorted by key once; its path (cache descent) is h->bp[the same index] */
    uint8_t key[KB];
    uint64_t val;
    size_t idx; /* position in the caller's arrays */
    int state;  /* BK_* */
} bkey;

typedef struct border { /* a pending key in (leaf, key) order: groups are runs of one leaf */
    dm_gaddr leaf;
    size_t k; /* index into bk (key order) */
} border;

enum { BK_PENDING = 0, BK_DONE = 1, BK_SINGLE = 2 };
enum { BG_RELEASE, BG_UNITS, BG_NODE, BG_RESHAPE };
/* BG_NODE with retag: a chime leaf re-placed whole (node_ver+1); its parent's tag moves after write_all */

typedef struct bgroup {
    size_t first, n;  /* its keys: bo[first .. first+n), in key order */
    int what;         /* BG_*: what write_all does with the leaf */
    int ver;          /* the leaf's node_ver */
    uint32_t units;   /* changed units (chime) */
    size_t overflow;  /* the first of its keys that did not fit */
    int retag;        /* BG_NODE: move the parent's tag to the new node_ver */
    int k, ne;        /* BG_RESHAPE: split into k leaves, pieces[] laid out from e[0..ne) */
    uint8_t *pieces;
    entry *e;
    int fold;         /* BG_RESHAPE: the split's leaf writes ride in write_all (see batch_fold_plan) */
    int plocked;      /* the parent's lock: tried in write_all by this group (1), change done (2) */
    long powner;      /* >= 0: the group that tries (and writes) this group's parent */
    uint64_t pword, pold;
    dm_gaddr sib[BATCH_MAX_WAYS]; /* sib[0] = the leaf */
    uint8_t sep[BATCH_MAX_WAYS][KB];
    uint8_t *sraw;    /* fold: k packed leaves (0 = the left one), then the parent's READ */
    uint8_t raw[NODE_BYTES];
    uint8_t pay[NODE_PAYLOAD];
    uint8_t uv[NODE_LINES];
} bgroup;

static int cmp_bkey_key(const void *a, const void *b) {
    const bkey *x = a, *y = b;
    int c = kcmp(x->key, y->key);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

static int cmp_border(const void *a, const void *b) {
    const border *x = a, *y = b;
    if (x->leaf != y->leaf) return x->leaf < y->leaf ? -1 : 1;
    return (x->k > y->k) - (x->k < y->k);
}

#define GK(g, i) (&h->bk[h->bo[(g)->first + (i)].k]) /* key i of group g */
#define GP(g, i) (&h->bp[h->bo[(g)->first + (i)].k]) /* its path */

static int batch_grow(CH_T *h, size_t nkeys) {
    if (nkeys <= h->bcap) return DM_OK;
    bkey *k = realloc(h->bk, nkeys * sizeof *k);
    if (k) h->bk = k;
    path *p = realloc(h->bp, nkeys * sizeof *p);
    if (p) h->bp = p;
    border *o = realloc(h->bo, nkeys * sizeof *o);
    if (o) h->bo = o;
    bgroup *g = realloc(h->bg, nkeys * sizeof *g);
    if (g) h->bg = g;
    kvidx_lockreq *l = realloc(h->bl, nkeys * sizeof *l);
    if (l) h->bl = l;
    if (!k || !g || !l || !p || !o) return herr(h, DM_ENOMEM, "out of local memory for a batch of %zu keys", nkeys);
    h->bcap = nkeys;
    return DM_OK;
}

/* The batch's keys sorted, one per distinct key (the duplicate rule above); returns how many. */
static size_t batch_keys(CH_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, int del) {
    for (size_t i = 0; i < n; i++) {
        bkey *b = &h->bk[i];
        memcpy(b->key, keys + i * KB, KB);
        b->val = vals ? vals[i] : 0;
        b->idx = i;
        b->state = BK_PENDING;
    }
    int sorted = 1; /* a chain of adjacent blocks often is */
    for (size_t i = 1; i < n && sorted; i++) sorted = cmp_bkey_key(&h->bk[i - 1], &h->bk[i]) < 0;
    if (!sorted) qsort(h->bk, n, sizeof *h->bk, cmp_bkey_key);
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && kcmp(h->bk[j + 1].key, h->bk[i].key) == 0) j++;
        h->bk[m++] = h->bk[del ? i : j];
        i = j + 1;
    }
    return m;
}

/* Phase route: every pending key's leaf; the pending keys sorted by (leaf, key) into groups,
 * each with its lock request (a lock and the READ of the whole leaf). */
static int batch_route(CH_T *h, size_t nk, size_t *ngroups) {
    size_t np = 0;
    int sorted = 1;
    h->lp_ok = 0; /* this round's splits changed the tree: route from the cache again */
    for (size_t i = 0; i < nk; i++) {
        if (h->bk[i].state != BK_PENDING) continue;
        int rc = batch_find_leaf(h, h->bk[i].key, &h->bp[i]);
        if (rc != DM_OK) return rc;
        h->bo[np] = (border){untag(h->bp[i].leaf), i};
        if (np && h->bo[np - 1].leaf > h->bo[np].leaf) sorted = 0;
        np++;
    }
    if (!sorted) qsort(h->bo, np, sizeof *h->bo, cmp_border);
    size_t ng = 0;
    for (size_t i = 0; i < np; i++) {
        dm_gaddr leaf = h->bo[i].leaf;
        if (i == 0 || leaf != h->bo[i - 1].leaf) {
            bgroup *g = &h->bg[ng];
            g->first = i;
            g->n = 0;
            h->bl[ng] = (kvidx_lockreq){.lock = lock_of(leaf), .rd = {g->raw, leaf, NODE_BYTES}};
            ng++;
        }
        h->bg[ng - 1].n++;
    }
    *ngroups = ng;
    return DM_OK;
}

/* Phase lock_all: groups are formed in leaf order, so their requests are sorted already. */
static int batch_lock_all(CH_T *h, size_t ng) {
    h->st.batch_rounds++;
    return dmerr(h, kvidx_lock_many(&h->lk, h->bl, ng));
}

static int batch_reshape_plan(CH_T *h, bgroup *g);
static int batch_post_fold(CH_T *h, size_t gi, kvidx_lockreq *lr);
static int batch_post_parent(CH_T *h, size_t gi);

/* What to do with one locked leaf: its keys applied to the payload, or sent on. */
static int batch_plan(CH_T *h, bgroup *g, int del, uint8_t *found) {
    uint8_t nv[NODE_LINES];
    kvidx_unpack(g->raw, NODE_LINES, g->pay, nv, g->uv);
    g->ver = agree(nv, g->uv, NODE_LINES);
    g->what = BG_RELEASE;
    g->units = 0;
    g->retag = 0;
    g->fold = 0;
    g->plocked = 0;
    g->powner = -1;
    g->pieces = NULL;
    g->e = NULL;
    g->sraw = NULL;
    path *p0 = GP(g, 0);
    if (g->ver < 0) { /* torn under our lock: a lease we took over was mid-write; route again */
        h->st.torn_retry++;
        return DM_OK;
    }
    if (g->pay[H_KIND] != KIND || g->pay[H_LEVEL] != 0)
        return herr(h, DM_EPROTO, "0x%016llx is not a " NAME " leaf", (unsigned long long)h->bo[g->first].leaf);
    if (p0->ver >= 0 && p0->ver != g->ver) { /* the parent's tag is stale: re-read it next time */
        h->st.version_mismatch++;
        drop_stale_parent(h, &p0->parent);
    }
    int changed = 0;
    for (size_t i = 0; i < g->n; i++) {
        bkey *b = GK(g, i);
        if (kcmp(b->key, g->pay + H_LOW) < 0 || above_high(g->pay, b->key)) {
            leaf_went_right(h, GP(g, i)); /* no longer this leaf's key: route it again */
            continue;
        }
        uint8_t f = 0;
        if (!leaf_apply(g->pay, b->key, b->val, del, &f, &g->units)) {
            g->overflow = i;
            return batch_reshape_plan(h, g);
        }
        if (found) found[b->idx] = f;
        changed |= !del || f;
        b->state = BK_DONE;
    }
    if (changed) g->what = LEAF_UNIT_WRITES ? BG_UNITS : BG_NODE;
    return DM_OK;
}

/* Phase write_all, one leaf: post its WRITE (changed units or the whole leaf) and unlock. */
static int batch_post_write(CH_T *h, bgroup *g, kvidx_lockreq *lr) {
    int rc = make_room(h, 2);
    if (rc != DM_OK) return rc;
    dm_gaddr leaf = untag(lr->rd.remote);
    if (g->what == BG_NODE) {
        kvidx_pack(g->raw, NODE_LINES, g->pay, kvidx_next_ver((uint8_t)g->ver), 0);
        rc = dm_write(h->ctx, leaf, g->raw, NODE_BYTES);
    } else if (g->what == BG_UNITS) {
        int lo = __builtin_ctz(g->units), hi = 31 - __builtin_clz(g->units);
        for (int u = lo; u <= hi; u++) { /* unchanged units in between are written as they were */
            uint8_t uv = (uint8_t)(g->uv[u * BL] + ((g->units >> u) & 1));
            kvidx_pack(g->raw + (size_t)u * UNIT_BYTES, BL, g->pay + (size_t)u * UNIT_PAYLOAD, (uint8_t)g->ver, uv);
        }
        rc = dm_write(h->ctx, leaf + (uint64_t)lo * UNIT_BYTES, g->raw + (size_t)lo * UNIT_BYTES,
                      (uint32_t)(hi - lo + 1) * UNIT_BYTES);
    }
    lr->expect = lr->word; /* the release's old value lands here */
    if (rc == DM_OK) rc = kvidx_post_release(&h->lk, lr->lock, lr->word, &lr->expect);
    if (rc == DM_OK && g->what == BG_NODE && g->retag) { /* a re-placed chime leaf: its parent's tag */
        if (!GP(g, 0)->node[1]) {
            g->retag = 0; /* the root leaf: no parent, no tag */
        } else if ((g->sraw = malloc(NODE_BYTES))) {
            g->k = 0;
            return batch_post_parent(h, (size_t)(g - h->bg));
        } else {
            return herr(h, DM_ENOMEM, "out of local memory");
        }
    }
    return dmerr(h, rc);
}

static int batch_write_all(CH_T *h, size_t ng) {
    int rc = DM_OK;
    for (size_t i = 0; i < ng && rc == DM_OK; i++) {
        bgroup *g = &h->bg[i];
        if (g->what != BG_RESHAPE) rc = batch_post_write(h, g, &h->bl[i]);
        else if (g->fold) rc = batch_post_fold(h, i, &h->bl[i]);
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    for (size_t i = 0; i < ng && rc == DM_OK; i++)
        if ((h->bg[i].what != BG_RESHAPE || h->bg[i].fold) && h->bl[i].expect != h->bl[i].word) h->st.lease_lost++;
    return rc;
}

/* A split that is not folded (a root leaf, or new leaves on other memory nodes), one round
 * trip at a time: the k-1 fresh right siblings (each submitted before the left leaf names it),
 * then the leaf itself (node_ver nv) with its unlock, then the parent learns each separator.
 * A root leaf splits in two (publish_split grows the root). Headers: batch_fold_plan. */
static int batch_split(CH_T *h, bgroup *g, uint64_t word, int was_root) {
    path *p = GP(g, 0);
    dm_gaddr leaf = g->sib[0];
    uint8_t nv = kvidx_next_ver((uint8_t)g->ver), *pieces = g->pieces;
    int k = g->k, rc = DM_OK;
    if (k == 2) return publish_split(h, p, leaf, 0, word, pieces, nv, g->sib[1], pieces + NODE_PAYLOAD, g->sep[1], was_root);
    uint8_t raw[NODE_BYTES];
    for (int j = k - 1; j >= 1 && rc == DM_OK; j--) {
        kvidx_pack(raw, NODE_LINES, pieces + (size_t)j * NODE_PAYLOAD, 1, 0);
        rc = dm_write(h->ctx, g->sib[j], raw, NODE_BYTES);
        if (rc == DM_OK) rc = dm_submit(h->ctx); /* the raw buffer is reused */
    }
    if (rc != DM_OK) {
        dm_discard(h->ctx);
        kvidx_unlock(&h->lk, lock_of(leaf), word);
        return dmerr(h, rc);
    }
    kvidx_pack(raw, NODE_LINES, pieces, nv, 0);
    if ((rc = write_raw_unlock(h, 0, NULL, leaf, raw, word)) != DM_OK) return rc;
    for (int j = 1; j < k && rc == DM_OK; j++) {
        const uint8_t *pc = pieces + (size_t)j * NODE_PAYLOAD;
        rc = insert_parent(h, p, 1, g->sep[j], g->sib[j - 1], j == 1 ? nv : 1, g->sib[j], 1, pc + H_HIGH,
                           pc[H_FLAGS] & F_HIGH_INF);
    }
    return rc;
}

/* Lay entries e[0..n) out as k leaves for the smallest k (1 = rewrite in place) up to `most`;
 * 0 if none fits. pieces: room for BATCH_MAX_WAYS payloads. */
static int batch_layout(const uint8_t *old, const entry *e, int n, int most, uint8_t *pieces) {
    for (int k = 1; k <= most; k++) {
        int ok = 1;
        for (int j = 0; j < k && ok; j++) {
            uint8_t *pc = pieces + (size_t)j * NODE_PAYLOAD;
            int a = (int)((int64_t)n * j / k), b = (int)((int64_t)n * (j + 1) / k);
            if (k > 1) memset(pc, 0, NODE_PAYLOAD);
            else memcpy(pc, old, NODE_PAYLOAD); /* an in-place rewrite keeps the header */
            ok = (b > a || k == 1) && leaf_build(pc, e + a, b - a);
        }
        if (ok) return k;
    }
    return 0;
}

/* A split whose new leaves live on the leaf's memory node, below a cached parent, is folded
 * into the batch's doorbells: write_all carries the fresh right siblings, then the left leaf
 * (node_ver+1) and its unlock (one QP: executed in that order, so B-link order holds), and the
 * try of the parent's lock with its READ; one more doorbell (batch_parents) writes every parent
 * and unlocks it. A split thus costs 1 RTT on top of the batch's 2 instead of 3. Its nodes are allocated here,
 * before anything is written (a full memory node leaves the tree as it was). */
static int batch_fold_plan(CH_T *h, bgroup *g, int was_root) {
    dm_gaddr leaf = h->bo[g->first].leaf;
    const uint8_t *old = g->pay;
    g->sib[0] = leaf;
    int rc = fill_pool(h);
    for (int j = 1; j < g->k && rc == DM_OK; j++) rc = pool_pop(h, &g->sib[j]);
    if (rc != DM_OK) return rc;
    for (int j = 1; j < g->k; j++) memcpy(g->sep[j], g->e[(int64_t)g->ne * j / g->k].key, KB);
    for (int j = 0; j < g->k; j++) {
        uint8_t *pc = g->pieces + (size_t)j * NODE_PAYLOAD;
        int last = j == g->k - 1;
        set_header(pc, 0, j ? g->sep[j] : old + H_LOW, last ? old + H_HIGH : g->sep[j + 1],
                   last && (old[H_FLAGS] & F_HIGH_INF), last ? untag(get64(old + H_SIB)) : g->sib[j + 1]);
    }
    h->st.splits += (uint64_t)(g->k - 1);
    h->st.split_entries += (uint64_t)g->ne;
    h->st.split_capacity += (uint64_t)(g->k - 1) * (KVDM_SHERMAN ? ICAP : LEAF_CAP);
    g->fold = !was_root && GP(g, 0)->node[1];
    for (int j = 1; j < g->k; j++) g->fold &= DM_GADDR_NODE(g->sib[j]) == DM_GADDR_NODE(leaf);
    if (!g->fold) return DM_OK;
    if (!(g->sraw = malloc((size_t)(g->k + 1) * NODE_BYTES))) return herr(h, DM_ENOMEM, "out of local memory");
    for (int j = 0; j < g->k; j++)
        kvidx_pack(g->sraw + (size_t)j * NODE_BYTES, NODE_LINES, g->pieces + (size_t)j * NODE_PAYLOAD,
                   j ? 1 : kvidx_next_ver((uint8_t)g->ver), 0);
    return DM_OK;
}

/* write_all, for a group whose parent must change (a folded split's separators, a re-placed
 * chime leaf's tag): the try of the parent's lock || its READ, into g->sraw after the k
 * leaves, unless an earlier group of the batch tries that parent already (that one falls back
 * rides along: its change goes into the same parent write). */
static int batch_post_parent(CH_T *h, size_t gi) {
    bgroup *g = &h->bg[gi];
    dm_gaddr par = untag(GP(g, 0)->node[1]);
    for (size_t i = 0; i < gi; i++)
        if (h->bg[i].plocked && untag(GP(&h->bg[i], 0)->node[1]) == par) {
            g->powner = (long)i; /* that group's parent write carries this group's change too */
            return DM_OK;
        }
    kvidx_read rd = {g->sraw + (size_t)g->k * NODE_BYTES, par, NODE_BYTES};
    int rc = make_room(h, 2);
    if (rc == DM_OK) rc = kvidx_post_try_lock(&h->lk, lock_of(par), &rd, &g->pword, &g->pold);
    g->plocked = rc == DM_OK;
    return dmerr(h, rc);
}

/* write_all for a folded split: siblings, left leaf, unlock, then the parent's lock try. */
static int batch_post_fold(CH_T *h, size_t gi, kvidx_lockreq *lr) {
    bgroup *g = &h->bg[gi];
    int rc = make_room(h, g->k + 1);
    for (int j = g->k - 1; j >= 0 && rc == DM_OK; j--)
        rc = dm_write(h->ctx, g->sib[j], g->sraw + (size_t)j * NODE_BYTES, NODE_BYTES);
    lr->expect = lr->word;
    if (rc == DM_OK) rc = kvidx_post_release(&h->lk, lr->lock, lr->word, &lr->expect);
    return rc == DM_OK ? batch_post_parent(h, gi) : dmerr(h, rc);
}

/* A parent read under its lock: apply a folded split's separators or move a re-placed leaf's
 * tag; 0 when it cannot be done here (the parent split or moved on since we cached it). */
static int batch_parent_apply(bgroup *g, uint8_t *n, dm_gaddr leaf) {
    if (g->k == 0) { /* retag: the tag moves only if it certified the old version */
        uint8_t *ptr = untag(get64(n + H_LEFT)) == leaf ? n + H_LEFT : NULL;
        for (int e = 0; !ptr && e < nkeys(n); e++)
            if (untag(get64(ient(n, e) + KB)) == leaf) ptr = ient(n, e) + KB;
        if (!ptr) return 0;
        if (DM_GADDR_TAG(get64(ptr)) == (unsigned)g->ver)
            put64(ptr, DM_GADDR_WITH_TAG(leaf, kvidx_next_ver((uint8_t)g->ver)));
        return 1;
    }
    if (kcmp(g->sep[1], n + H_LOW) < 0 || above_high(n, g->sep[g->k - 1]) || nkeys(n) + g->k - 1 > ICAP) return 0;
    uint8_t lnv = kvidx_next_ver((uint8_t)g->ver);
    for (int j = 1; j < g->k; j++) {
        const uint8_t *pc = g->pieces + (size_t)j * NODE_PAYLOAD;
        parent_add(n, 1, g->sep[j], g->sib[j - 1], j == 1 ? lnv : 1, g->sib[j], 1, pc + H_HIGH, pc[H_FLAGS] & F_HIGH_INF);
    }
    return 1;
}

/* After write_all: every parent whose lock write_all took is changed and unlocked in one
 * doorbell (WRITE || unlock); the groups that could not have theirs fall back to insert_parent
 * (separators) or retag_parent (tags), which lock and walk right as needed. */
static int batch_parents(CH_T *h, size_t ng) {
    int rc = DM_OK;
    uint8_t n[NODE_PAYLOAD + ENTRY];
    for (size_t i = 0; i < ng && rc == DM_OK; i++) {
        bgroup *g = &h->bg[i];
        if (g->plocked != 1) continue;
        if (g->pold != 0) { /* someone holds the parent: fall back */
            h->st.lock_fail++;
            g->plocked = 0;
            continue;
        }
        dm_gaddr par = untag(GP(g, 0)->node[1]);
        uint8_t *praw = g->sraw + (size_t)g->k * NODE_BYTES, nv[NODE_LINES], uv[NODE_LINES];
        kvidx_unpack(praw, NODE_LINES, n, nv, uv);
        int v = agree(nv, uv, NODE_LINES);
        int ok = v >= 0 && n[H_KIND] == KIND && n[H_LEVEL] == 1;
        for (size_t j = i; ok && j < ng; j++) { /* this group's change, then those riding along */
            bgroup *o = &h->bg[j];
            if (j != i && o->powner != (long)i) continue;
            if (batch_parent_apply(o, n, h->bo[o->first].leaf)) o->plocked = 2;
        }
        ok = ok && g->plocked == 2;
        rc = make_room(h, 2);
        if (ok && rc == DM_OK) {
            kvidx_pack(praw, NODE_LINES, n, kvidx_next_ver((uint8_t)v), 0);
            rc = dm_write(h->ctx, par, praw, NODE_BYTES);
            uint8_t *c = rc == DM_OK ? kvidx_cache_put(&h->cache, par) : NULL;
            if (c) memcpy(c, n, NODE_PAYLOAD);
        }
        if (!ok) /* released below; every change of this parent goes the one-parent way */
            for (size_t j = i; j < ng; j++)
                if (j == i || h->bg[j].powner == (long)i) h->bg[j].plocked = 0;
        uint64_t old = 0;
        if (rc == DM_OK) rc = kvidx_post_release(&h->lk, lock_of(par), g->pword, &old);
        rc = dmerr(h, rc);
    }
    if (rc == DM_OK) rc = dmerr(h, dm_submit(h->ctx));
    else dm_discard(h->ctx);
    for (size_t i = 0; i < ng && rc == DM_OK; i++) {
        bgroup *g = &h->bg[i];
        int folded = g->what == BG_RESHAPE && g->fold, retag = g->what == BG_NODE && g->retag;
        if ((!folded && !retag) || g->plocked == 2) continue;
        dm_gaddr leaf = h->bo[g->first].leaf;
        uint8_t lnv = kvidx_next_ver((uint8_t)g->ver);
        for (int j = 1; folded && j < g->k && rc == DM_OK; j++) {
            const uint8_t *pc = g->pieces + (size_t)j * NODE_PAYLOAD;
            rc = insert_parent(h, GP(g, 0), 1, g->sep[j], g->sib[j - 1], j == 1 ? lnv : 1, g->sib[j], 1,
                               pc + H_HIGH, pc[H_FLAGS] & F_HIGH_INF);
        }
#if LEAF_TAGS
        if (retag) rc = retag_parent(h, GP(g, 0), GK(g, 0)->key, leaf, (uint8_t)g->ver, leaf, lnv);
#endif
        (void)leaf;
    }
    return rc;
}

/* A locked leaf whose keys did not all fit (no RTT: decided on what lock_all read): rewrite it
 * whole (BG_NODE with retag: chime re-places every entry), or split it into up to
 * BATCH_MAX_WAYS leaves (BG_RESHAPE; a root leaf: two, publish_split grows the root). When even
 * that cannot take every remaining key it takes those it can (a prefix in key order) and the
 * others are routed again next round, to the leaves the split made. A chime leaf at node_ver
 * 255 must move first: its keys go the single-key way (relocate_leaf), the leaf released. */
static int batch_reshape_plan(CH_T *h, bgroup *g) {
    entry *e = malloc((size_t)(LEAF_MAX + g->n) * sizeof *e);
    uint8_t *pieces = malloc((size_t)BATCH_MAX_WAYS * NODE_PAYLOAD);
    if (!e || !pieces) {
        free(e);
        free(pieces);
        return herr(h, DM_ENOMEM, "out of local memory to split a leaf");
    }
    const uint8_t *old = g->pay; /* the leaf with the keys before the overflow applied */
    int old_n = leaf_entries(old, e), was_root = is_root_node(old);
    qsort(e, (size_t)old_n, sizeof *e, cmp_entry);
    int most = was_root ? 2 : BATCH_MAX_WAYS;
    size_t rest = 0; /* the keys not applied inside the leaf's fences, moved up in key order */
    for (size_t i = g->overflow; i < g->n; i++) {
        bkey *b = GK(g, i);
        if (kcmp(b->key, old + H_LOW) < 0 || above_high(old, b->key)) {
            leaf_went_right(h, GP(g, i));
            continue;
        }
        border t = h->bo[g->first + i];
        h->bo[g->first + i] = h->bo[g->first + g->overflow + rest];
        h->bo[g->first + g->overflow + rest++] = t;
    }
    size_t take = rest, cap = (size_t)most * LEAF_CAP * 3 / 4;
    if (take + (size_t)old_n > cap) take = cap > (size_t)old_n ? cap - (size_t)old_n : 1;
    int n = 0, k = 0;
    for (;; take /= 2) {
        n = old_n;
        for (size_t i = 0; i < take; i++) {
            bkey *b = GK(g, g->overflow + i);
            entry *hit = bsearch(b->key, e, (size_t)old_n, sizeof *e, cmp_entry);
            if (hit) {
                hit->val = b->val;
            } else {
                memcpy(e[n].key, b->key, KB);
                e[n++].val = b->val;
            }
        }
        qsort(e, (size_t)n, sizeof *e, cmp_entry);
        if (LEAF_TAGS && g->ver == 255 && !was_root) break;
        if ((k = batch_layout(old, e, n, most, pieces)) || take == 0) break;
        old_n = leaf_entries(old, e); /* start over from the leaf's own entries */
        qsort(e, (size_t)old_n, sizeof *e, cmp_entry);
    }
    if (k == 0) {
        for (size_t i = 0; i < g->n; i++) GK(g, i)->state = BK_SINGLE;
        g->what = BG_RELEASE;
    } else {
        for (size_t i = 0; i < take; i++) GK(g, g->overflow + i)->state = BK_DONE;
    }
    if (k == 1) {
        h->st.leaf_rebuilds++;
        memcpy(g->pay, pieces, NODE_PAYLOAD);
        g->what = BG_NODE;
        g->retag = LEAF_TAGS;
    }
    if (k >= 2) {
        g->what = BG_RESHAPE;
        g->k = k;
        g->ne = n;
        g->pieces = pieces;
        g->e = e;
        return batch_fold_plan(h, g, was_root);
    }
    free(pieces);
    free(e);
    return DM_OK;
}

static void batch_free_plan(bgroup *g) {
    free(g->pieces);
    free(g->e);
    free(g->sraw);
    g->pieces = NULL;
    g->e = NULL;
    g->sraw = NULL;
}

/* Split a BG_RESHAPE leaf that write_all did not carry (owns its lock). */
static int batch_reshape(CH_T *h, bgroup *g, kvidx_lockreq *lr) {
    return g->fold ? DM_OK : batch_split(h, g, lr->word, is_root_node(g->pay));
}

/* put (del 0) or delete (del 1, found[] set) of n keys. */
static int write_many(CH_T *h, const uint8_t *keys, const uint64_t *vals, size_t n, int del, uint8_t *found,
                      uint64_t *lat) {
    if (h->lk.llt || n < 2 || h->o.window == 1) /* handover, or the one-key-a-time baseline */
        return del ? delete_each(h, keys, n, found, lat) : put_each(h, keys, vals, n, lat);
    for (size_t i = 0; i < n && !del; i++)
        if (kzero(keys + i * KB)) return herr(h, DM_EINVAL, "key %zu is the reserved all-zero key", i);
    LAT_BEGIN;
    int rc = batch_grow(h, n);
    if (rc != DM_OK) return rc;
    if (found) memset(found, 0, n);
    size_t nk = batch_keys(h, keys, vals, n, del);
    /* rounds while keys are pending and the last round placed some (or split their leaves) */
    size_t done = 0;
    for (int round = 0; round < BATCH_ROUNDS && rc == DM_OK; round++) {
        size_t ng = 0;
        uint64_t splits = h->st.splits + h->st.root_splits;
        if ((rc = batch_route(h, nk, &ng)) != DM_OK || ng == 0) break;
        if ((rc = batch_lock_all(h, ng)) != DM_OK) break;
        for (size_t i = 0; i < ng; i++) {
            bgroup *g = &h->bg[i];
            int prc = rc == DM_OK ? batch_plan(h, g, del, found) : DM_OK;
            if (prc != DM_OK || rc != DM_OK) { /* an error: release every lock, write nothing */
                batch_free_plan(g);
                g->what = BG_RELEASE;
            }
            if (prc != DM_OK) rc = prc;
        }
        int wrc = batch_write_all(h, ng);
        if (rc == DM_OK) rc = wrc;
        if (rc == DM_OK) rc = batch_parents(h, ng);
        for (size_t i = 0; i < ng; i++) { /* the split rounds of the splits not folded */
            if (h->bg[i].what == BG_RESHAPE && rc == DM_OK) rc = batch_reshape(h, &h->bg[i], &h->bl[i]);
            batch_free_plan(&h->bg[i]);
        }
        size_t now = 0;
        for (size_t i = 0; i < nk; i++) now += h->bk[i].state != BK_PENDING;
        if (now == done && splits == h->st.splits + h->st.root_splits && round >= 3) break;
        done = now;
    }
    for (size_t i = 0; i < nk && rc == DM_OK; i++) {
        bkey *b = &h->bk[i];
        if (b->state == BK_DONE) continue;
        uint8_t f = 0;
        h->st.batch_deferred++;
        rc = write_one(h, b->key, b->val, del, &f);
        if (found) found[b->idx] = f;
    }
    if (rc != DM_OK) return rc;
    if (del) h->st.deletes += n;
    else h->st.puts += n;
    for (size_t i = 0; lat && i < n; i++) lat[i] = lat_clock(h) - t0;
    return DM_OK;
}
