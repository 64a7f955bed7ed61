/* dm_core.c - transport core: contexts, batches, validation, counters, latency model, allocator. */
#define _GNU_SOURCE
#include "dm_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t dm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dm_fail(dm_ctx *ctx, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
    va_end(ap);
    return code;
}

int dm_fail_buf(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

uint64_t dm_rand(dm_ctx *ctx) {
    uint64_t x = ctx->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return ctx->rng = x;
}

const char *dm_last_error(const dm_ctx *ctx) { return ctx ? ctx->err : "no context"; }

int dm_ctx_create(const dm_config *cfg, dm_ctx **out, char *err, size_t errlen) {
    *out = NULL;
    dm_config c = {0};
    if (cfg) c = *cfg;
    if (c.latency_model < DM_LAT_NONE || c.latency_model > DM_LAT_VIRTUAL)
        return dm_fail_buf(err, errlen, DM_EINVAL, "unknown latency model %d (valid: 0 none, 1 spin, 2 virtual)",
                           c.latency_model);
    if (!(c.rtt_us >= 0) || !(c.gbps >= 0) || !(c.nic_mops >= 0))
        return dm_fail_buf(err, errlen, DM_EINVAL, "rtt_us, gbps and nic_mops must be >= 0 (got %g, %g, %g)", c.rtt_us,
                           c.gbps, c.nic_mops);
    if (c.chunk_bytes == 0) c.chunk_bytes = 1u << 20;
    if (c.chunk_bytes % DM_LINE)
        return dm_fail_buf(err, errlen, DM_EINVAL, "chunk_bytes must be a multiple of %d", DM_LINE);
    dm_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return dm_fail_buf(err, errlen, DM_ENOMEM, "out of local memory for a dm context");
    ctx->cfg = c;
    ctx->rng = c.seed ? c.seed : (dm_now_ns() ^ (uint64_t)(uintptr_t)ctx) | 1;
    *out = ctx;
    return DM_OK;
}

void dm_get_config(const dm_ctx *ctx, dm_config *out) { *out = ctx->cfg; }

void dm_ctx_destroy(dm_ctx *ctx) {
    if (!ctx) return;
    for (int i = 0; i <= DM_MAX_NODES; i++)
        if (ctx->nodes[i]) ctx->nodes[i]->ops->detach(ctx->nodes[i]);
    free(ctx);
}

int dm_attach(dm_ctx *ctx, const char *uri, unsigned *node_id_out) {
    if (!uri) return dm_fail(ctx, DM_EINVAL, "memory-node URI is NULL");
    dm_node *node = NULL;
    int rc;
    if (strncmp(uri, "shm:", 4) == 0)
        rc = dm_shm_attach(ctx, uri + 4, &node);
    else if (strncmp(uri, "verbs://", 8) == 0)
        rc = dm_verbs_attach(ctx, uri, &node);
    else
        return dm_fail(ctx, DM_EINVAL, "unknown memory-node URI '%s' (valid: shm:NAME, verbs://HOST:PORT?dev=D&gid=G)", uri);
    if (rc != DM_OK) return rc;
    if (node->id > DM_MAX_NODES || ctx->nodes[node->id]) {
        unsigned id = node->id;
        node->ops->detach(node);
        if (id > DM_MAX_NODES) /* the header says so: not a kvdm region, or a damaged one */
            return dm_fail(ctx, DM_EPROTO, "memory node '%s' has a bad region header: node id %u is outside 0..%d",
                           uri, id, DM_MAX_NODES);
        return dm_fail(ctx, DM_EEXIST, "memory node id %u (from '%s') is already attached to this context", id, uri);
    }
    ctx->nodes[node->id] = node;
    ctx->num_nodes++;
    if (node_id_out) *node_id_out = node->id;
    return DM_OK;
}

uint64_t dm_node_size(const dm_ctx *ctx, unsigned node_id) {
    return node_id <= DM_MAX_NODES && ctx->nodes[node_id] ? ctx->nodes[node_id]->size : 0;
}

int dm_num_nodes(const dm_ctx *ctx) { return ctx->num_nodes; }

/* ---- posting ---- */

static const char *const VERB_NAME[] = {"READ", "WRITE", "CAS", "FAA"};

/* Why a verb for [o, o+len) on node nid cannot be posted (DM_OK if it can). Cold: post runs
 * target_ok first and comes here only when that fails, for the message. */
static int __attribute__((noinline, cold)) check_target(dm_ctx *ctx, int op, uint32_t len, dm_gaddr g) {
    const char *verb = VERB_NAME[op];
    unsigned nid = DM_GADDR_NODE(g);
    uint64_t o = DM_GADDR_OFFSET(g);
    if (nid > DM_MAX_NODES || !ctx->nodes[nid])
        return dm_fail(ctx, DM_ENODE, "%s: memory node %u is not attached (address 0x%016llx)", verb, nid,
                       (unsigned long long)g);
    if (o % 8)
        return dm_fail(ctx, DM_EALIGN, "%s: address 0x%016llx (node %u offset %llu) is not 8-byte aligned", verb,
                       (unsigned long long)g, nid, (unsigned long long)o);
    uint64_t size = ctx->nodes[nid]->size;
    /* the header is off limits, but for the allocator's FAA word */
    if (o < DM_HDR_ROOTS && !(op == DM_OP_FAA && o == DM_HDR_ALLOC))
        return dm_fail(ctx, DM_ERANGE, "%s: offset %llu on node %u is inside the node header", verb,
                       (unsigned long long)o, nid);
    if (o >= size || len > size - o)
        return dm_fail(ctx, DM_ERANGE, "%s: [%llu, +%llu) is outside node %u's region of %llu bytes", verb,
                       (unsigned long long)o, (unsigned long long)len, nid, (unsigned long long)size);
    if (ctx->nbatch >= DM_MAX_BATCH)
        return dm_fail(ctx, DM_EBATCH, "%s: batch full (%d verbs); call dm_submit first", verb, DM_MAX_BATCH);
    return DM_OK;
}

/* Whether check_target would pass: the same tests as one branch-light expression, so a post
 * inlines into dm_read & co. without the error paths' calls and spills. */
static inline int target_ok(const dm_ctx *ctx, int op, uint32_t len, dm_gaddr g) {
    unsigned nid = DM_GADDR_NODE(g);
    uint64_t o = DM_GADDR_OFFSET(g);
    const dm_node *n = nid <= DM_MAX_NODES ? ctx->nodes[nid] : NULL;
    return n != NULL && !(o % 8) && (o >= DM_HDR_ROOTS || (op == DM_OP_FAA && o == DM_HDR_ALLOC)) &&
           o < n->size && len <= n->size - o && ctx->nbatch < DM_MAX_BATCH;
}

/* Validate a verb and append it to the batch; a failed post leaves the batch as it was. The
 * fields are stored straight into the batch slot: building a dm_verb and copying it made every
 * post reload its narrow fields as wide words (a store-forwarding stall, ~20 ns a verb). */
static inline __attribute__((always_inline)) int post(dm_ctx *ctx, int op, uint32_t len, dm_gaddr g, void *local,
                                                      const void *src, uint64_t compare, uint64_t swap,
                                                      uint64_t *old_out) {
    if (__builtin_expect(!target_ok(ctx, op, len, g), 0)) {
        int rc = check_target(ctx, op, len, g);
        return rc != DM_OK ? rc : dm_fail(ctx, DM_EPROTO, "%s: verb rejected", VERB_NAME[op]); /* not reached */
    }
    dm_verb *v = &ctx->batch[ctx->nbatch++];
    v->op = (uint8_t)op;
    v->node = (uint16_t)DM_GADDR_NODE(g);
    v->len = len;
    v->offset = DM_GADDR_OFFSET(g);
    v->local = local;
    v->src = src;
    v->compare = compare;
    v->swap = swap;
    v->old_out = old_out;
    v->result = 0;
    return DM_OK;
}

static int __attribute__((noinline, cold)) xfer_fail(dm_ctx *ctx, int op, uint32_t len, const void *buf) {
    if (len == 0 || len > DM_MAX_XFER)
        return dm_fail(ctx, DM_EINVAL, "%s: length %u not in 1..%u", VERB_NAME[op], len, DM_MAX_XFER);
    if (!buf) return dm_fail(ctx, DM_EINVAL, "%s: local buffer is NULL", VERB_NAME[op]);
    return DM_OK;
}

static inline int check_xfer(dm_ctx *ctx, int op, uint32_t len, const void *buf) {
    return __builtin_expect(len - 1 < DM_MAX_XFER && buf, 1) ? DM_OK : xfer_fail(ctx, op, len, buf);
}

int dm_read(dm_ctx *ctx, void *local, dm_gaddr remote, uint32_t len) {
    int rc = check_xfer(ctx, DM_OP_READ, len, local);
    return rc != DM_OK ? rc : post(ctx, DM_OP_READ, len, remote, local, NULL, 0, 0, NULL);
}

int dm_write(dm_ctx *ctx, dm_gaddr remote, const void *local, uint32_t len) {
    int rc = check_xfer(ctx, DM_OP_WRITE, len, local);
    return rc != DM_OK ? rc : post(ctx, DM_OP_WRITE, len, remote, NULL, local, 0, 0, NULL);
}

int dm_cas(dm_ctx *ctx, dm_gaddr remote, uint64_t expected, uint64_t desired, uint64_t *old_out) {
    return post(ctx, DM_OP_CAS, 8, remote, NULL, NULL, expected, desired, old_out);
}

int dm_faa(dm_ctx *ctx, dm_gaddr remote, uint64_t add, uint64_t *old_out) {
    return post(ctx, DM_OP_FAA, 8, remote, NULL, NULL, add, 0, old_out);
}

static unsigned verb_node(const dm_verb *v) { return v->node; }

void dm_discard(dm_ctx *ctx) { ctx->nbatch = 0; }
int dm_batch_len(const dm_ctx *ctx) { return ctx->nbatch; }

/* Answers are awaited in steps of DM_AWAIT_STEP verbs (a real client signals one WQE in so
 * many), so the clock is read once a step, not once an answer. */
#define DM_AWAIT_STEP 16

/* Modelled arrival of verb i's answer, ns after the ring: the RTT plus the longer of the bytes
 * of verbs [0, i] at gbps and their count at nic_mops (the doorbell's cost, dm.h, for its first
 * i + 1 verbs: a NIC sends and answers in post order). */
static double arrival_ns(const dm_config *cfg, uint64_t bytes, int verbs) {
    double wire = cfg->gbps > 0 ? (double)bytes * 8.0 / cfg->gbps : 0;
    double nic = cfg->nic_mops > 0 ? (double)verbs * 1000.0 / cfg->nic_mops : 0;
    return cfg->rtt_us * 1000.0 + (wire > nic ? wire : nic);
}

static uint64_t verb_bytes(const dm_verb *v) { return v->op == DM_OP_READ || v->op == DM_OP_WRITE ? v->len : 16; }

static void spin_until(uint64_t until) {
    while (dm_now_ns() < until) __builtin_ia32_pause();
}

/* Execute verbs[0..n) as one round trip: one post list per node (post order kept), then wait.
 * streamed: the latency model is not charged here but answer by answer (dm_await). */
static int run_verbs(dm_ctx *ctx, dm_verb *verbs, int n, int streamed) {
    if (ctx->stream.open) dm_await_all(ctx); /* one doorbell in flight: the last one has landed */
    if (n == 0) return DM_OK;
    if (n <= DM_AWAIT_STEP) streamed = 0; /* one await step: charged whole, as it would be */
    uint64_t start = ctx->cfg.latency_model != DM_LAT_NONE ? dm_now_ns() : 0;
    dm_verb *lists[DM_MAX_BATCH];
    unsigned touched[DM_MAX_BATCH];
    int ntouched = 0;
    uint64_t bytes = 0;
    /* node order = order of first appearance; the per-node sublist keeps post order */
    for (int i = 0; i < n; i++) {
        unsigned nid = verb_node(&verbs[i]);
        int seen = 0;
        for (int t = 0; t < ntouched; t++) seen |= touched[t] == nid;
        if (!seen) touched[ntouched++] = nid;
    }
    int rc = DM_OK;
    int posted = 0;
    for (int t = 0; t < ntouched && rc == DM_OK; t++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (verb_node(&verbs[i]) == touched[t]) lists[m++] = &verbs[i];
        dm_node *node = ctx->nodes[touched[t]];
        rc = node->ops->post(ctx, node, lists, m);
        if (rc == DM_OK) posted = t + 1;
    }
    for (int t = 0; t < posted; t++) {
        dm_node *node = ctx->nodes[touched[t]];
        int w = node->ops->wait(ctx, node);
        if (rc == DM_OK) rc = w;
    }
    if (rc != DM_OK) return rc;
    dm_counters *c = &ctx->counters;
    c->rtts++;
    c->doorbells += (uint64_t)ntouched;
    for (int i = 0; i < n; i++) {
        const dm_verb *v = &verbs[i];
        switch (v->op) {
        case DM_OP_READ: c->reads++; c->bytes_read += v->len; bytes += v->len; break;
        case DM_OP_WRITE: c->writes++; c->bytes_written += v->len; bytes += v->len; break;
        case DM_OP_CAS:
            c->cas++;
            c->cas_failed += v->result != v->compare;
            c->bytes_read += 8; c->bytes_written += 8; bytes += 16;
            break;
        case DM_OP_FAA: c->faa++; c->bytes_read += 8; c->bytes_written += 8; bytes += 16; break;
        }
        if (v->old_out) *v->old_out = v->result;
    }
    if (ctx->cfg.latency_model != DM_LAT_NONE) {
        if (streamed) { /* each answer's arrival, for dm_await; computed inside the exec window */
            uint64_t cum = 0;
            for (int i = 0; i < n; i++) {
                cum += verb_bytes(&verbs[i]);
                ctx->stream.arrive[i] = (uint64_t)arrival_ns(&ctx->cfg, cum, i + 1);
            }
            if (ctx->cfg.latency_model == DM_LAT_SPIN) c->virtual_ns += ctx->stream.arrive[n - 1];
            uint64_t now = dm_now_ns();
            c->exec_ns += now - start;
            ctx->stream.open = 1;
            ctx->stream.n = n;
            ctx->stream.done = -1;
            ctx->stream.start = start;
            ctx->stream.ret = now;
            ctx->stream.charged = 0;
            return DM_OK;
        }
        uint64_t ns = (uint64_t)arrival_ns(&ctx->cfg, bytes, n);
        c->virtual_ns += ns;
        if (ctx->cfg.latency_model == DM_LAT_SPIN) spin_until(start + ns);
        c->exec_ns += dm_now_ns() - start;
    }
    return DM_OK;
}

int dm_submit(dm_ctx *ctx) {
    int n = ctx->nbatch;
    ctx->nbatch = 0;
    return run_verbs(ctx, ctx->batch, n, 0);
}

int dm_submit_streamed(dm_ctx *ctx) {
    int n = ctx->nbatch;
    ctx->nbatch = 0;
    return run_verbs(ctx, ctx->batch, n, 1);
}

void dm_await(dm_ctx *ctx, int verb) {
    if (!ctx->stream.open || verb <= ctx->stream.done) return;
    int last = verb | (DM_AWAIT_STEP - 1);
    if (last >= ctx->stream.n) last = ctx->stream.n - 1;
    uint64_t now = dm_now_ns(), due = ctx->stream.arrive[last];
    if (ctx->cfg.latency_model == DM_LAT_SPIN) { /* in wall time from the ring, as dm_submit */
        uint64_t until = ctx->stream.start + due;
        if (now < until) {
            spin_until(until);
            uint64_t t = dm_now_ns();
            ctx->counters.exec_ns += t - now;
            now = t;
        }
        due = now - ctx->stream.start;
    } else { /* virtual: the client's own time since the backend returned, plus stalls so far */
        uint64_t at = now - ctx->stream.ret + ctx->stream.charged;
        if (due > at) {
            ctx->counters.virtual_ns += due - at;
            ctx->stream.charged += due - at;
        }
        due = at > due ? at : due;
    }
    int k = last;
    while (k + 1 < ctx->stream.n && ctx->stream.arrive[k + 1] <= due) k++;
    ctx->stream.done = k;
    if (k + 1 >= ctx->stream.n) ctx->stream.open = 0;
}

void dm_await_all(dm_ctx *ctx) {
    if (ctx->stream.open) dm_await(ctx, ctx->stream.n - 1);
}

/* ---- allocator ---- */

int dm_alloc(dm_ctx *ctx, unsigned node_id, uint64_t len, uint64_t align, dm_gaddr *out) {
    if (node_id > DM_MAX_NODES || !ctx->nodes[node_id])
        return dm_fail(ctx, DM_ENODE, "alloc: memory node %u is not attached", node_id);
    if (len == 0) return dm_fail(ctx, DM_EINVAL, "alloc: length 0");
    if (align < DM_LINE) align = DM_LINE;
    if (align & (align - 1)) return dm_fail(ctx, DM_EINVAL, "alloc: alignment %llu is not a power of two",
                                            (unsigned long long)align);
    dm_node *node = ctx->nodes[node_id];
    len = (len + DM_LINE - 1) & ~(uint64_t)(DM_LINE - 1);
    uint64_t at = (node->chunk_next + align - 1) & ~(align - 1);
    if (node->chunk_end && at + len <= node->chunk_end) {
        node->chunk_next = at + len;
        *out = DM_GADDR(node_id, at);
        return DM_OK;
    }
    uint64_t want = ctx->cfg.chunk_bytes;
    /* larger than a chunk: a range of its own, and the current chunk stays for small ones */
    int own_range = want < len + align;
    if (own_range) want = (len + align + DM_LINE - 1) & ~(uint64_t)(DM_LINE - 1);
    /* The FAA runs as its own round trip; verbs already posted stay in the batch. */
    uint64_t old = 0;
    int pending = ctx->nbatch;
    if (pending >= DM_MAX_BATCH) return dm_fail(ctx, DM_EBATCH, "alloc: batch full; submit first");
    int rc = dm_faa(ctx, DM_GADDR(node_id, DM_HDR_ALLOC), want, &old);
    if (rc) return rc;
    ctx->nbatch = pending;
    rc = run_verbs(ctx, &ctx->batch[pending], 1, 0);
    if (rc) return rc;
    uint64_t end = old + want < node->size ? old + want : node->size;
    at = (old + align - 1) & ~(align - 1);
    if (old >= node->size || at + len > end)
        return dm_fail(ctx, DM_ENOMEM,
                       "memory node %u is full: %llu bytes requested, region is %llu bytes and %llu are free "
                       "(start the node with a larger --size)",
                       node_id, (unsigned long long)len, (unsigned long long)node->size,
                       (unsigned long long)(old < node->size ? node->size - old : 0));
    if (!own_range) {
        node->chunk_next = at + len;
        node->chunk_end = end;
    }
    *out = DM_GADDR(node_id, at);
    return DM_OK;
}

/* ---- counters ---- */

void dm_get_counters(dm_ctx *ctx, dm_counters *out) {
    dm_await_all(ctx); /* a latency read after an op includes all of its last doorbell */
    *out = ctx->counters;
}
void dm_reset_counters(dm_ctx *ctx) { memset(&ctx->counters, 0, sizeof ctx->counters); }

/* ---- benchmark loop ---- */

int dm_bench_loop(dm_ctx *ctx, int op, dm_gaddr base, uint64_t span, uint32_t len, uint32_t batch, uint64_t iters,
                  uint64_t seed, uint64_t *elapsed_ns) {
    if (op < DM_BENCH_READ || op > DM_BENCH_FAA) return dm_fail(ctx, DM_EINVAL, "bench: unknown op %d", op);
    if (op >= DM_BENCH_CAS) len = 8;
    if (batch == 0 || batch > DM_MAX_BATCH)
        return dm_fail(ctx, DM_EINVAL, "bench: batch %u not in 1..%d", batch, DM_MAX_BATCH);
    uint64_t stride = (len + DM_LINE - 1) & ~(uint64_t)(DM_LINE - 1);
    uint64_t slots = span / stride;
    if (slots == 0) return dm_fail(ctx, DM_EINVAL, "bench: span %llu smaller than one %u-byte object",
                                   (unsigned long long)span, len);
    uint8_t *buf = aligned_alloc(64, (size_t)batch * stride);
    uint64_t *olds = calloc(batch, sizeof *olds);
    if (!buf || !olds) {
        free(buf);
        free(olds);
        return dm_fail(ctx, DM_ENOMEM, "bench: out of local memory");
    }
    memset(buf, 0x5a, (size_t)batch * stride);
    uint64_t x = seed | 1;
    int rc = DM_OK;
    uint64_t t0 = dm_now_ns();
    for (uint64_t done = 0; done < iters && rc == DM_OK;) {
        uint32_t k = (uint32_t)(iters - done < batch ? iters - done : batch);
        for (uint32_t j = 0; j < k && rc == DM_OK; j++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            dm_gaddr g = base + (x % slots) * stride;
            uint8_t *lb = buf + (size_t)j * stride;
            switch (op) {
            case DM_BENCH_READ: rc = dm_read(ctx, lb, g, len); break;
            case DM_BENCH_WRITE: rc = dm_write(ctx, g, lb, len); break;
            case DM_BENCH_CAS: rc = dm_cas(ctx, g, olds[j], olds[j] + 1, &olds[j]); break;
            default: rc = dm_faa(ctx, g, 1, &olds[j]); break;
            }
        }
        if (rc == DM_OK) rc = dm_submit(ctx);
        else dm_discard(ctx);
        done += k;
    }
    *elapsed_ns = dm_now_ns() - t0;
    free(buf);
    free(olds);
    return rc;
}
