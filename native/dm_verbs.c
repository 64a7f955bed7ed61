/* dm_verbs.c - verbs backend of dm.h on libibverbs (RC queue pairs to passive memory nodes).
 * Built when rdma-core's headers are present (KVDM_HAVE_VERBS); otherwise attaching a
 * verbs:// node fails with a message saying what to install.
 *
 * URI: verbs://HOST:PORT?dev=rxe0&gid=1&ib_port=1&timeout=30
 *   HOST:PORT  the memory node's TCP connection service (`kvdm memnode serve --transport verbs`)
 *   dev        local RDMA device (default: the first one)
 *   gid        local GID index (default: auto = first RoCE v2 IPv4-mapped GID, else first non-zero)
 *   ib_port    local port number (default 1)
 *   timeout    seconds for the TCP connect + handshake and for any one doorbell (default 30)
 *   sq         send-queue depth cap, 1..DM_MAX_BATCH (default: DM_MAX_BATCH or the device's limit);
 *              longer batches are posted in chunks of this many verbs
 *
 * Connection protocol (v1, all integers little-endian; the memory node's side is
 * transport/verbs_memnode.py, which documents the same layout):
 *   header, 16 bytes: u32 magic 0x5051564b ("KVQP"), u16 version 1, u16 type
 *                     (1 CONNECT client->node, 2 ACCEPT node->client, 3 REJECT node->client),
 *                     u32 body length, u32 reserved 0
 *   QP info, 32 bytes: u32 qpn (24 bit), u32 psn (24 bit), u16 lid, u8 path mtu (ibv_mtu 1..5),
 *                     u8 rd_atomic (client: wanted initiator depth; node: granted responder
 *                     depth, >= 1), u8 gid[16], u32 reserved 0
 *   CONNECT body = QP info (32 bytes)
 *   ACCEPT body  = QP info, u32 node id (0..254), u32 rkey, u64 region size, u64 region base
 *                  address (56 bytes)
 *   REJECT body  = UTF-8 reason, 1..512 bytes
 * The TCP connection stays open while the client is attached: its closing tells the memory
 * node to destroy the client's QP. Nothing else is ever sent on it.
 *
 * Data path: one RC QP per (ctx, node); one PD, CQ and registered staging buffer per (ctx,
 * device), shared by every node attached through that device (found through ctx->nodes, so no
 * global state). post() builds one linked list of work requests, only the last signalled,
 * and rings the doorbell once; WRITE payloads are sent inline when small or copied into the
 * staging buffer; READ data and atomic old values land in the staging buffer and wait()
 * copies them out. A batch longer than the QP's send queue is posted in chunks (each its own
 * signalled list) inside the same dm_submit. */
#define _GNU_SOURCE
#include "dm_internal.h"

#ifndef KVDM_HAVE_VERBS

int dm_verbs_attach(dm_ctx *ctx, const char *uri, dm_node **out) {
    *out = NULL;
    return dm_fail(ctx, DM_ENOSYS,
                   "cannot attach '%s': kvdm was built without rdma-core. Install libibverbs-dev, "
                   "librdmacm-dev and ibverbs-providers (apt-get install ...), then rebuild (pip install -e .)",
                   uri);
}

#else

#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define VP_MAGIC 0x5051564bu
#define VP_VERSION 1
#define VP_CONNECT 1
#define VP_ACCEPT 2
#define VP_REJECT 3
#define VP_HDR_LEN 16
#define VP_QP_LEN 32
#define VP_ACCEPT_LEN (VP_QP_LEN + 24)
#define VP_REJECT_MAX 512

#define VB_MAX_INLINE 256          /* requested inline size; the QP reports what it grants */
#define VB_STAGE_MIN (1u << 20)
#define VB_CQE 4096
#define VB_MAX_RD_ATOMIC 16
#define VB_SLOTS 256               /* QPs per shared device (wr_id owner table) */

typedef struct vb_qpinfo {
    uint32_t qpn, psn;
    uint16_t lid;
    uint8_t mtu, rd_atomic;
    uint8_t gid[16];
} vb_qpinfo;

struct vb_node;

/* Retired staging buffers: replaced while other nodes still had work in flight on them. */
typedef struct vb_stage {
    uint8_t *buf;
    size_t cap;
    struct ibv_mr *mr;
    struct vb_stage *next;
} vb_stage;

/* One per (ctx, device, port, gid index): shared by the ctx's nodes on that device. */
typedef struct vb_dev {
    int refs;
    char name[IBV_SYSFS_NAME_MAX];
    int ib_port, gid_index;
    struct ibv_context *ibctx;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_device_attr attr;
    struct ibv_port_attr port;
    union ibv_gid gid;
    vb_stage stage;          /* current staging buffer */
    vb_stage *retired;
    vb_stage *quarantined;   /* abandoned by a post that failed mid-flight: the device may still
                              * write into them until their QP is destroyed (dev_release frees them) */
    size_t stage_used;       /* bump pointer, reset when nothing is in flight */
    int inflight;            /* nodes with an unfinished post */
    struct vb_node *owners[VB_SLOTS];
    uint16_t gens[VB_SLOTS];
    pid_t pid;               /* the process that opened it: a forked child must not destroy its objects */
} vb_dev;

typedef struct vb_node {
    vb_dev *dev;
    int slot;
    uint16_t gen;
    struct ibv_qp *qp;
    int sock;
    uint32_t rkey;
    uint64_t raddr;
    uint32_t max_wr, max_inline;
    unsigned timeout_ms;
    char peer[272];
    /* the current post */
    dm_verb *verbs[DM_MAX_BATCH];
    uint64_t stage_off[DM_MAX_BATCH];
    uint8_t *stage_base; /* staging buffer this post's offsets refer to (another node's post */
    uint32_t stage_lkey; /* may replace d->stage before this post's later chunks go out) */
    int n, next, chunk_end;
    int busy;            /* a chunk's signalled completion is outstanding */
    int failed;          /* an error completion arrived for this post */
    int broken;          /* QP in error state: every later post fails */
    int peer_gone;       /* the node's TCP connection closed: it exited or crashed */
    char errmsg[320];
    struct ibv_send_wr wr[DM_MAX_BATCH];
    struct ibv_sge sge[DM_MAX_BATCH];
} vb_node;

static const dm_node_ops verbs_ops;

/* ---- little-endian wire helpers ---- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void put_qpinfo(uint8_t *p, const vb_qpinfo *q) {
    memset(p, 0, VP_QP_LEN);
    put32(p, q->qpn);
    put32(p + 4, q->psn);
    put16(p + 8, q->lid);
    p[10] = q->mtu;
    p[11] = q->rd_atomic;
    memcpy(p + 12, q->gid, 16);
}

static int is_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Decode and validate a peer's QP info; NULL or a reason. */
static const char *get_qpinfo(const uint8_t *p, vb_qpinfo *q) {
    q->qpn = get32(p);
    q->psn = get32(p + 4);
    q->lid = get16(p + 8);
    q->mtu = p[10];
    q->rd_atomic = p[11];
    memcpy(q->gid, p + 12, 16);
    if (q->qpn == 0 || q->qpn > 0xffffff) return "QP number not in 1..2^24-1";
    if (q->psn > 0xffffff) return "PSN wider than 24 bits";
    if (q->mtu < IBV_MTU_256 || q->mtu > IBV_MTU_4096) return "path MTU not an ibv_mtu value (1..5)";
    if (q->rd_atomic == 0) return "responder atomic depth 0";
    if (is_zero(q->gid, 16) && q->lid == 0) return "neither a GID nor a LID";
    if (get32(p + 28) != 0) return "reserved field not zero";
    return NULL;
}

/* ---- URI ---- */

typedef struct vb_uri {
    char host[256];
    char port[8];
    char dev[IBV_SYSFS_NAME_MAX];
    int gid_index; /* -1 = auto */
    int ib_port;
    unsigned timeout_ms;
    unsigned max_wr; /* 0 = default */
} vb_uri;

static int parse_int(const char *s, size_t n, long lo, long hi, long *out) {
    if (n == 0 || n > 10) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_uri(dm_ctx *ctx, const char *uri, vb_uri *u) {
    memset(u, 0, sizeof *u);
    u->gid_index = -1;
    u->ib_port = 1;
    u->timeout_ms = 30000;
    const char *p = uri + 8; /* after verbs:// */
    const char *q = strchr(p, '?');
    size_t hostport = q ? (size_t)(q - p) : strlen(p);
    const char *colon;
    const char *hs = p;
    size_t hl;
    if (hostport && p[0] == '[') { /* [IPv6]:port */
        const char *rb = memchr(p, ']', hostport);
        if (!rb || rb + 1 >= p + hostport || rb[1] != ':')
            return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': expected verbs://[ADDR]:PORT", uri);
        hs = p + 1;
        hl = (size_t)(rb - hs);
        colon = rb + 1;
    } else {
        colon = NULL;
        for (const char *c = p; c < p + hostport; c++)
            if (*c == ':') colon = c;
        if (!colon)
            return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': expected verbs://HOST:PORT?dev=D&gid=G", uri);
        hl = (size_t)(colon - p);
    }
    long v;
    size_t pl = (size_t)(p + hostport - colon - 1);
    if (hl == 0 || hl >= sizeof u->host)
        return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': empty or overlong host", uri);
    if (parse_int(colon + 1, pl, 1, 65535, &v))
        return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': port must be 1..65535", uri);
    memcpy(u->host, hs, hl);
    snprintf(u->port, sizeof u->port, "%ld", v);
    while (q && *q) {
        const char *key = q + 1;
        const char *end = strchr(key, '&');
        if (!end) end = key + strlen(key);
        const char *eq = memchr(key, '=', (size_t)(end - key));
        if (!eq)
            return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': query item '%.*s' is not KEY=VALUE", uri,
                           (int)(end - key), key);
        size_t kl = (size_t)(eq - key), vl = (size_t)(end - eq - 1);
        const char *val = eq + 1;
        if (kl == 3 && !memcmp(key, "dev", 3)) {
            if (vl == 0 || vl >= sizeof u->dev)
                return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': dev must be 1..%zu characters", uri,
                               sizeof u->dev - 1);
            memcpy(u->dev, val, vl);
            u->dev[vl] = 0;
        } else if (kl == 3 && !memcmp(key, "gid", 3)) {
            if (vl == 4 && !memcmp(val, "auto", 4)) u->gid_index = -1;
            else if (parse_int(val, vl, 0, 65535, &v))
                return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': gid must be a GID index or 'auto'", uri);
            else u->gid_index = (int)v;
        } else if (kl == 7 && !memcmp(key, "ib_port", 7)) {
            if (parse_int(val, vl, 1, 255, &v))
                return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': ib_port must be 1..255", uri);
            u->ib_port = (int)v;
        } else if (kl == 7 && !memcmp(key, "timeout", 7)) {
            if (parse_int(val, vl, 1, 3600, &v))
                return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': timeout must be 1..3600 seconds", uri);
            u->timeout_ms = (unsigned)v * 1000;
        } else if (kl == 2 && !memcmp(key, "sq", 2)) {
            if (parse_int(val, vl, 1, DM_MAX_BATCH, &v))
                return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': sq must be 1..%d", uri, DM_MAX_BATCH);
            u->max_wr = (unsigned)v;
        } else {
            return dm_fail(ctx, DM_EINVAL, "bad verbs URI '%s': unknown key '%.*s' (valid: dev, gid, ib_port, timeout, sq)",
                           uri, (int)kl, key);
        }
        q = *end ? end : NULL;
    }
    return DM_OK;
}

/* ---- device (shared per ctx) ---- */

static int is_v4_mapped(const uint8_t *g) {
    static const uint8_t pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(g, pre, 12) == 0;
}

/* First RoCE v2 IPv4-mapped GID, else first RoCE v2, else first non-zero. */
static int pick_gid(struct ibv_context *c, int port, int tbl_len) {
    int best = -1, rank = 0;
    for (int i = 0; i < tbl_len; i++) {
        struct ibv_gid_entry e;
        if (ibv_query_gid_ex(c, (uint32_t)port, (uint32_t)i, &e, 0)) continue;
        if (is_zero(e.gid.raw, 16)) continue;
        int r = 1 + (e.gid_type == IBV_GID_TYPE_ROCE_V2) * 2 + is_v4_mapped(e.gid.raw);
        if (r > rank) {
            rank = r;
            best = i;
        }
    }
    return best;
}

/* A context inherited across fork() shares the parent's uverbs file: destroying its QPs, CQ,
 * MRs or PD from the child would destroy the parent's, under the parent's feet. The child only
 * frees its own copy of the memory. */
static int inherited(const vb_dev *d) { return d->pid != getpid(); }

static void stage_free(vb_stage *s, int destroy) {
    /* A buffer whose MR could not be deregistered stays pinned and reachable by the device:
     * leak it rather than hand it back to malloc. */
    if (!(s->mr && destroy && ibv_dereg_mr(s->mr))) free(s->buf);
    memset(s, 0, sizeof *s);
}

static void stage_free_list(vb_stage **list, int destroy) {
    while (*list) {
        vb_stage *r = *list;
        *list = r->next;
        stage_free(r, destroy);
        free(r);
    }
}

/* A post that failed with verbs possibly still in flight (flushed, but their completions not
 * drained) gives up its staging buffer: nothing is staged in it again, and it is freed only once
 * every QP of the device is destroyed. */
static void quarantine_stage(vb_dev *d, const uint8_t *base) {
    vb_stage *found = NULL;
    if (d->stage.buf == base) {
        found = malloc(sizeof *found);
        if (found) *found = d->stage;
        memset(&d->stage, 0, sizeof d->stage); /* without memory for the list entry: leaked */
        d->stage_used = 0;
    } else {
        for (vb_stage **r = &d->retired; *r; r = &(*r)->next)
            if ((*r)->buf == base) {
                found = *r;
                *r = found->next;
                break;
            }
    }
    if (found) {
        found->next = d->quarantined;
        d->quarantined = found;
    }
}

static void dev_release(vb_dev *d) {
    if (!d || --d->refs > 0) return;
    int destroy = !inherited(d);
    stage_free(&d->stage, destroy);
    stage_free_list(&d->retired, destroy);
    stage_free_list(&d->quarantined, destroy);
    if (destroy) {
        if (d->cq) ibv_destroy_cq(d->cq);
        if (d->pd) ibv_dealloc_pd(d->pd);
        if (d->ibctx) ibv_close_device(d->ibctx);
    }
    free(d);
}

static int dev_open(dm_ctx *ctx, const char *uri, const vb_uri *u, vb_dev **out) {
    /* reuse the device another node of this ctx already opened */
    for (int i = 0; i <= DM_MAX_NODES; i++) {
        dm_node *n = ctx->nodes[i];
        if (!n || n->ops != &verbs_ops) continue;
        vb_dev *d = ((vb_node *)n->impl)->dev;
        if ((u->dev[0] == 0 || strcmp(d->name, u->dev) == 0) && d->ib_port == u->ib_port &&
            (u->gid_index < 0 || u->gid_index == d->gid_index)) {
            d->refs++;
            *out = d;
            return DM_OK;
        }
    }
    int num = 0;
    struct ibv_device **list = ibv_get_device_list(&num);
    if (!list || num == 0) {
        if (list) ibv_free_device_list(list);
        return dm_fail(ctx, DM_ENOENT,
                       "cannot attach '%s': no RDMA device on this machine (load rdma_rxe for SoftRoCE, or run in "
                       "the SoftRoCE guest: transport/softroce/run-in-guest.sh; `kvdm doctor` says what is missing)",
                       uri);
    }
    struct ibv_device *dev = NULL;
    char names[256] = "";
    for (int i = 0; i < num; i++) {
        const char *nm = ibv_get_device_name(list[i]);
        if (!dev && (u->dev[0] == 0 || strcmp(nm, u->dev) == 0)) dev = list[i];
        size_t l = strlen(names);
        snprintf(names + l, sizeof names - l, "%s%s", l ? ", " : "", nm);
    }
    if (!dev) {
        ibv_free_device_list(list);
        return dm_fail(ctx, DM_ENOENT, "RDMA device '%s' not found (available: %s)", u->dev, names);
    }
    vb_dev *d = calloc(1, sizeof *d);
    if (!d) {
        ibv_free_device_list(list);
        return dm_fail(ctx, DM_ENOMEM, "out of local memory opening an RDMA device");
    }
    d->pid = getpid();
    d->refs = 1;
    snprintf(d->name, sizeof d->name, "%s", ibv_get_device_name(dev));
    d->ib_port = u->ib_port;
    d->ibctx = ibv_open_device(dev);
    ibv_free_device_list(list);
    int rc = DM_EIO;
    if (!d->ibctx) {
        dm_fail(ctx, DM_EIO, "ibv_open_device(%s): %s", d->name, strerror(errno));
        goto fail;
    }
    if (ibv_query_device(d->ibctx, &d->attr)) {
        dm_fail(ctx, DM_EIO, "ibv_query_device(%s) failed", d->name);
        goto fail;
    }
    if (u->ib_port > d->attr.phys_port_cnt || ibv_query_port(d->ibctx, (uint8_t)u->ib_port, &d->port)) {
        rc = dm_fail(ctx, DM_EINVAL, "device %s has no port %d (it has %u)", d->name, u->ib_port,
                     d->attr.phys_port_cnt);
        goto fail;
    }
    if (d->port.state != IBV_PORT_ACTIVE) {
        dm_fail(ctx, DM_EIO, "port %d of %s is %s, not ACTIVE", u->ib_port, d->name,
                ibv_port_state_str(d->port.state));
        goto fail;
    }
    d->gid_index = u->gid_index >= 0 ? u->gid_index : pick_gid(d->ibctx, u->ib_port, d->port.gid_tbl_len);
    if (d->gid_index < 0 || d->gid_index >= d->port.gid_tbl_len ||
        ibv_query_gid(d->ibctx, (uint8_t)u->ib_port, d->gid_index, &d->gid)) {
        rc = dm_fail(ctx, DM_EINVAL, "device %s port %d: GID index %d is not valid (table of %d)", d->name,
                     u->ib_port, d->gid_index, d->port.gid_tbl_len);
        goto fail;
    }
    if (is_zero(d->gid.raw, 16) && d->port.link_layer == IBV_LINK_LAYER_ETHERNET) {
        rc = dm_fail(ctx, DM_EINVAL, "device %s port %d: GID index %d is empty (RoCE needs a GID; see `kvdm doctor`)",
                     d->name, u->ib_port, d->gid_index);
        goto fail;
    }
    d->pd = ibv_alloc_pd(d->ibctx);
    if (!d->pd) {
        dm_fail(ctx, DM_EIO, "ibv_alloc_pd(%s): %s", d->name, strerror(errno));
        goto fail;
    }
    int cqe = d->attr.max_cqe > 0 && d->attr.max_cqe < VB_CQE ? d->attr.max_cqe : VB_CQE;
    d->cq = ibv_create_cq(d->ibctx, cqe, NULL, NULL, 0);
    if (!d->cq) {
        dm_fail(ctx, DM_EIO, "ibv_create_cq(%s, %d): %s", d->name, cqe, strerror(errno));
        goto fail;
    }
    *out = d;
    return DM_OK;
fail:
    dev_release(d);
    return rc;
}

/* Make room for `need` staging bytes for this post; *off gets their offset in d->stage. */
static int stage_take(dm_ctx *ctx, vb_dev *d, size_t need, size_t *off) {
    if (d->inflight == 0) {
        d->stage_used = 0;
        stage_free_list(&d->retired, 1);
    }
    if (d->stage.buf && d->stage_used + need <= d->stage.cap) {
        *off = d->stage_used;
        d->stage_used += need;
        return DM_OK;
    }
    size_t cap = d->stage.cap ? d->stage.cap * 2 : VB_STAGE_MIN;
    while (cap < need) cap *= 2;
    vb_stage fresh = {0};
    if (posix_memalign((void **)&fresh.buf, 4096, cap))
        return dm_fail(ctx, DM_ENOMEM, "out of local memory for a %zu-byte verbs staging buffer", cap);
    fresh.cap = cap;
    fresh.mr = ibv_reg_mr(d->pd, fresh.buf, cap, IBV_ACCESS_LOCAL_WRITE);
    if (!fresh.mr) {
        int e = errno;
        free(fresh.buf);
        return dm_fail(ctx, e == ENOMEM ? DM_ENOMEM : DM_EIO,
                       "registering a %zu-byte staging buffer on %s: %s (raise `ulimit -l`?)", cap, d->name,
                       strerror(e));
    }
    if (d->stage.buf) {
        if (d->inflight) { /* other nodes' work still points into the old buffer */
            vb_stage *r = malloc(sizeof *r);
            if (!r) {
                stage_free(&fresh, 1);
                return dm_fail(ctx, DM_ENOMEM, "out of local memory");
            }
            *r = d->stage;
            r->next = d->retired;
            d->retired = r;
        } else {
            stage_free(&d->stage, 1);
        }
    }
    d->stage = fresh;
    d->stage_used = need;
    *off = 0;
    return DM_OK;
}

/* ---- posting and completion ---- */

static uint64_t wr_id(const vb_node *vn, int last) {
    return (uint64_t)vn->slot | ((uint64_t)vn->gen << 16) | (last ? 0 : (UINT64_C(1) << 63));
}

static void set_broken(vb_node *vn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_broken(vb_node *vn, const char *fmt, ...) {
    if (!vn->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vn->errmsg, sizeof vn->errmsg, fmt, ap);
        va_end(ap);
    }
    vn->failed = 1;
    vn->broken = 1;
}

/* Post verbs [next, next+k) as one linked list, only the last one signalled. */
static int post_chunk(dm_ctx *ctx, vb_node *vn) {
    int k = vn->n - vn->next;
    if (k > (int)vn->max_wr) k = (int)vn->max_wr;
    uint32_t lkey = vn->stage_lkey;
    for (int j = 0; j < k; j++) {
        int i = vn->next + j;
        dm_verb *v = vn->verbs[i];
        struct ibv_send_wr *w = &vn->wr[j];
        struct ibv_sge *s = &vn->sge[j];
        memset(w, 0, sizeof *w);
        w->sg_list = s;
        w->num_sge = 1;
        w->next = j + 1 < k ? &vn->wr[j + 1] : NULL;
        w->wr_id = wr_id(vn, j + 1 == k);
        w->send_flags = j + 1 == k ? IBV_SEND_SIGNALED : 0;
        s->addr = (uintptr_t)(vn->stage_base + vn->stage_off[i]);
        s->length = v->len;
        s->lkey = lkey;
        uint64_t raddr = vn->raddr + v->offset;
        switch (v->op) {
        case DM_OP_READ:
            w->opcode = IBV_WR_RDMA_READ;
            w->wr.rdma.remote_addr = raddr;
            w->wr.rdma.rkey = vn->rkey;
            break;
        case DM_OP_WRITE:
            w->opcode = IBV_WR_RDMA_WRITE;
            w->wr.rdma.remote_addr = raddr;
            w->wr.rdma.rkey = vn->rkey;
            if (v->len <= vn->max_inline) { /* the payload is copied at post time */
                w->send_flags |= IBV_SEND_INLINE;
                s->addr = (uintptr_t)v->src;
            }
            break;
        case DM_OP_CAS:
        case DM_OP_FAA:
            w->opcode = v->op == DM_OP_CAS ? IBV_WR_ATOMIC_CMP_AND_SWP : IBV_WR_ATOMIC_FETCH_AND_ADD;
            w->wr.atomic.remote_addr = raddr;
            w->wr.atomic.rkey = vn->rkey;
            w->wr.atomic.compare_add = v->compare;
            w->wr.atomic.swap = v->swap;
            s->length = 8;
            break;
        }
    }
    struct ibv_send_wr *bad = NULL;
    int e = ibv_post_send(vn->qp, &vn->wr[0], &bad);
    if (e) {
        /* ibv_post_send posted nothing from `bad` on; if bad is not the first, earlier WRs are
         * in flight unsignalled: the QP is then unusable for a clean completion. */
        int idx = bad ? (int)(bad - vn->wr) : 0;
        if (idx > 0) { /* stop the part that went out; its staging buffer is not reused */
            struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
            ibv_modify_qp(vn->qp, &a, IBV_QP_STATE);
            quarantine_stage(vn->dev, vn->stage_base);
            set_broken(vn, "ibv_post_send to %s failed at verb %d: %s", vn->peer, vn->next + idx, strerror(e));
        }
        return dm_fail(ctx, DM_EIO, "ibv_post_send to memory node %s failed at verb %d of %d: %s", vn->peer,
                       vn->next + idx, vn->n, strerror(e));
    }
    vn->chunk_end = vn->next + k;
    vn->busy = 1;
    return DM_OK;
}

static const char *op_name(int op) {
    switch (op) {
    case IBV_WC_RDMA_READ: return "READ";
    case IBV_WC_RDMA_WRITE: return "WRITE";
    case IBV_WC_COMP_SWAP: return "CAS";
    case IBV_WC_FETCH_ADD: return "FAA";
    default: return "verb";
    }
}

/* Poll the device's CQ once and dispatch completions to their nodes. Returns the count. */
static int poll_dev(vb_dev *d) {
    struct ibv_wc wc[16];
    int got = ibv_poll_cq(d->cq, 16, wc);
    for (int i = 0; i < got; i++) {
        unsigned slot = (unsigned)(wc[i].wr_id & 0xffff);
        uint16_t gen = (uint16_t)(wc[i].wr_id >> 16);
        int last = !(wc[i].wr_id >> 63);
        vb_node *vn = slot < VB_SLOTS ? d->owners[slot] : NULL;
        if (!vn || vn->gen != gen) continue; /* a completion of a QP that is gone */
        if (wc[i].status != IBV_WC_SUCCESS)
            set_broken(vn, "%s to memory node %s failed: %s (work-completion status %d, vendor error 0x%x)%s",
                       wc[i].status == IBV_WC_WR_FLUSH_ERR ? "verb" : op_name(wc[i].opcode), vn->peer,
                       ibv_wc_status_str(wc[i].status), (int)wc[i].status, wc[i].vendor_err,
                       vn->peer_gone ? "; the memory node closed its connection (it exited or crashed)" : "");
        if (last) vn->busy = 0;
    }
    return got;
}

static int vb_post(dm_ctx *ctx, dm_node *node, dm_verb *const *verbs, int n) {
    vb_node *vn = node->impl;
    vb_dev *d = vn->dev;
    if (vn->broken)
        return dm_fail(ctx, DM_EIO, "memory node %s is unusable after an earlier failure: %s", vn->peer, vn->errmsg);
    size_t need = 0;
    for (int i = 0; i < n; i++) {
        const dm_verb *v = verbs[i];
        if (!(v->op == DM_OP_WRITE && v->len <= vn->max_inline)) need += ((size_t)v->len + 7) & ~(size_t)7;
    }
    size_t off = 0;
    int rc = stage_take(ctx, d, need ? need : 8, &off);
    if (rc) return rc;
    vn->stage_base = d->stage.buf;
    vn->stage_lkey = d->stage.mr->lkey;
    for (int i = 0; i < n; i++) {
        dm_verb *v = verbs[i];
        vn->verbs[i] = v;
        vn->stage_off[i] = off;
        if (v->op == DM_OP_WRITE && v->len <= vn->max_inline) continue;
        if (v->op == DM_OP_WRITE) memcpy(d->stage.buf + off, v->src, v->len);
        off += ((size_t)v->len + 7) & ~(size_t)7;
    }
    vn->n = n;
    vn->next = 0;
    vn->failed = 0;
    rc = post_chunk(ctx, vn);
    if (rc == DM_OK) d->inflight++;
    return rc;
}

/* True when the memory node closed our TCP connection (it never sends after ACCEPT). */
static int peer_closed(vb_node *vn) {
    struct pollfd p = {.fd = vn->sock, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return 0;
    char c;
    ssize_t k = recv(vn->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

#define VB_SOCK_CHECK_NS 10000000u /* while waiting, look at the node's connection every 10 ms */

static int vb_wait(dm_ctx *ctx, dm_node *node) {
    vb_node *vn = node->impl;
    vb_dev *d = vn->dev;
    int rc = DM_OK;
    for (;;) {
        uint64_t t0 = dm_now_ns(), next_check = t0 + VB_SOCK_CHECK_NS;
        unsigned spins = 0;
        while (vn->busy) {
            if (poll_dev(d) == 0 && ++spins % 1024 == 0) {
                uint64_t now = dm_now_ns();
                if (!vn->peer_gone && now >= next_check) {
                    /* A dead node's QP is gone; real RNICs report that only after their retries
                     * (rxe on loopback never does), so flush our QP: the outstanding verbs then
                     * complete with an error status. */
                    next_check = now + VB_SOCK_CHECK_NS;
                    if (peer_closed(vn)) {
                        vn->peer_gone = 1;
                        struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
                        ibv_modify_qp(vn->qp, &a, IBV_QP_STATE);
                    }
                }
                if (now - t0 > (uint64_t)vn->timeout_ms * 1000000u) {
                    /* Flush the QP and give up; the device may still be using the staging buffer. */
                    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
                    ibv_modify_qp(vn->qp, &a, IBV_QP_STATE);
                    quarantine_stage(d, vn->stage_base);
                    set_broken(vn, "no completion from memory node %s within %u ms", vn->peer, vn->timeout_ms);
                    vn->busy = 0;
                    rc = DM_ETIMEDOUT;
                }
                if (spins % 4096 == 0) sched_yield();
            }
        }
        if (vn->failed) break;
        /* copy out this chunk's results */
        for (int i = vn->next; i < vn->chunk_end; i++) {
            dm_verb *v = vn->verbs[i];
            const uint8_t *src = vn->stage_base + vn->stage_off[i];
            if (v->op == DM_OP_READ) memcpy(v->local, src, v->len);
            else if (v->op != DM_OP_WRITE) memcpy(&v->result, src, 8);
        }
        vn->next = vn->chunk_end;
        if (vn->next >= vn->n) break;
        int prc = post_chunk(ctx, vn);
        if (prc) {
            rc = prc;
            vn->failed = 1;
            break;
        }
    }
    d->inflight--;
    if (vn->failed && rc == DM_OK) rc = DM_EIO;
    if (rc != DM_OK && vn->errmsg[0]) dm_fail(ctx, rc, "%s", vn->errmsg);
    return rc;
}

static void vb_detach(dm_node *node) {
    vb_node *vn = node->impl;
    if (vn) {
        if (vn->qp && !(vn->dev && inherited(vn->dev))) ibv_destroy_qp(vn->qp);
        if (vn->sock >= 0) close(vn->sock);
        if (vn->dev) {
            if (vn->slot >= 0) vn->dev->owners[vn->slot] = NULL;
            dev_release(vn->dev);
        }
        free(vn);
    }
    free(node);
}

static const dm_node_ops verbs_ops = {"verbs", vb_post, vb_wait, vb_detach};

/* ---- TCP handshake ---- */

static int io_wait(int fd, short ev, uint64_t deadline) {
    for (;;) {
        uint64_t now = dm_now_ns();
        if (now >= deadline) return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

/* Send (out) or receive n bytes over fd by `deadline`: 0, -errno, or 1 when the peer closed
 * before n bytes arrived. */
static int xfer_all(int fd, uint8_t *buf, size_t n, uint64_t deadline, int out) {
    while (n) {
        int w = io_wait(fd, out ? POLLOUT : POLLIN, deadline);
        if (w) return w;
        ssize_t k = out ? send(fd, buf, n, MSG_NOSIGNAL) : recv(fd, buf, n, 0);
        if (k == 0 && !out) return 1;
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return -errno;
        }
        buf += k;
        n -= (size_t)k;
    }
    return 0;
}

static int tcp_connect(dm_ctx *ctx, const vb_uri *u, uint64_t deadline, int *out) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(u->host, u->port, &hints, &res);
    if (g) return dm_fail(ctx, DM_ENOENT, "memory node %s:%s: cannot resolve host: %s", u->host, u->port, gai_strerror(g));
    int err = ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
            (errno == EINPROGRESS && io_wait(fd, POLLOUT, deadline) == 0)) {
            socklen_t sl = sizeof err;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err == 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                freeaddrinfo(res);
                *out = fd;
                return DM_OK;
            }
        } else {
            err = errno == EINPROGRESS ? ETIMEDOUT : errno;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return dm_fail(ctx, err == ETIMEDOUT ? DM_ETIMEDOUT : DM_ENOENT,
                   "cannot connect to memory node %s:%s: %s (is `kvdm memnode serve --transport verbs` running "
                   "there?)", u->host, u->port, strerror(err));
}

/* Exchange QP info; fills the remote info and region parameters. */
static int handshake(dm_ctx *ctx, vb_node *vn, const vb_qpinfo *mine, uint64_t deadline, vb_qpinfo *theirs,
                     unsigned *node_id, uint64_t *size) {
    uint8_t msg[VP_HDR_LEN + VP_ACCEPT_LEN];
    memset(msg, 0, VP_HDR_LEN);
    put32(msg, VP_MAGIC);
    put16(msg + 4, VP_VERSION);
    put16(msg + 6, VP_CONNECT);
    put32(msg + 8, VP_QP_LEN);
    put_qpinfo(msg + VP_HDR_LEN, mine);
    int r = xfer_all(vn->sock, msg, VP_HDR_LEN + VP_QP_LEN, deadline, 1);
    if (r) return dm_fail(ctx, r == -ETIMEDOUT ? DM_ETIMEDOUT : DM_EIO, "sending the connect request to %s: %s",
                          vn->peer, strerror(-r));
    r = xfer_all(vn->sock, msg, VP_HDR_LEN, deadline, 0);
    if (r) return dm_fail(ctx, r == -ETIMEDOUT ? DM_ETIMEDOUT : DM_EPROTO, "memory node %s: %s", vn->peer,
                          r == 1 ? "closed the connection without answering" : strerror(-r));
    uint32_t magic = get32(msg), blen = get32(msg + 8);
    uint16_t ver = get16(msg + 4), type = get16(msg + 6);
    if (magic != VP_MAGIC)
        return dm_fail(ctx, DM_EPROTO, "memory node %s: not a kvdm verbs memory node (magic 0x%08x)", vn->peer, magic);
    if (ver != VP_VERSION)
        return dm_fail(ctx, DM_EPROTO, "memory node %s speaks protocol version %u, this client %u", vn->peer, ver,
                       VP_VERSION);
    if (type == VP_REJECT) {
        char reason[VP_REJECT_MAX + 1];
        if (blen == 0 || blen > VP_REJECT_MAX)
            return dm_fail(ctx, DM_EPROTO, "memory node %s rejected the connection (reason of bad length %u)", vn->peer,
                           blen);
        r = xfer_all(vn->sock, (uint8_t *)reason, blen, deadline, 0);
        if (r) return dm_fail(ctx, DM_EPROTO, "memory node %s rejected the connection (reason unreadable)", vn->peer);
        for (uint32_t i = 0; i < blen; i++)
            if ((unsigned char)reason[i] < 0x20) reason[i] = '?';
        reason[blen] = 0;
        return dm_fail(ctx, DM_EPROTO, "memory node %s rejected the connection: %s", vn->peer, reason);
    }
    if (type != VP_ACCEPT || blen != VP_ACCEPT_LEN || get32(msg + 12) != 0)
        return dm_fail(ctx, DM_EPROTO, "memory node %s: malformed answer (type %u, length %u)", vn->peer, type, blen);
    r = xfer_all(vn->sock, msg, VP_ACCEPT_LEN, deadline, 0);
    if (r) return dm_fail(ctx, DM_EPROTO, "memory node %s: truncated answer", vn->peer);
    const char *why = get_qpinfo(msg, theirs);
    if (why) return dm_fail(ctx, DM_EPROTO, "memory node %s: malformed answer: %s", vn->peer, why);
    *node_id = get32(msg + VP_QP_LEN);
    vn->rkey = get32(msg + VP_QP_LEN + 4);
    *size = get64(msg + VP_QP_LEN + 8);
    vn->raddr = get64(msg + VP_QP_LEN + 16);
    if (*node_id > DM_MAX_NODES - 1 || *size < DM_HDR_BYTES || *size > DM_OFFSET_MASK || vn->raddr == 0 ||
        vn->raddr % 8 || vn->raddr + *size < vn->raddr)
        return dm_fail(ctx, DM_EPROTO, "memory node %s: malformed answer (node id %u, size %llu, base 0x%llx)",
                       vn->peer, *node_id, (unsigned long long)*size, (unsigned long long)vn->raddr);
    return DM_OK;
}

static int qp_connect(dm_ctx *ctx, vb_node *vn, const vb_qpinfo *mine, const vb_qpinfo *theirs) {
    vb_dev *d = vn->dev;
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = theirs->mtu < mine->mtu ? (enum ibv_mtu)theirs->mtu : (enum ibv_mtu)mine->mtu;
    a.dest_qp_num = theirs->qpn;
    a.rq_psn = theirs->psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.port_num = (uint8_t)d->ib_port;
    a.ah_attr.dlid = theirs->lid;
    if (!is_zero(theirs->gid, 16)) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, theirs->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)d->gid_index;
        a.ah_attr.grh.hop_limit = 64;
    }
    int e = ibv_modify_qp(vn->qp, &a,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    if (e) return dm_fail(ctx, DM_EIO, "moving the QP to %s to RTR: %s", vn->peer, strerror(e));
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;  /* 4.096 us * 2^14 = 67 ms per try */
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = mine->psn;
    unsigned rd = d->attr.max_qp_init_rd_atom;
    if (rd > theirs->rd_atomic) rd = theirs->rd_atomic;
    if (rd > VB_MAX_RD_ATOMIC) rd = VB_MAX_RD_ATOMIC;
    a.max_rd_atomic = (uint8_t)(rd ? rd : 1);
    e = ibv_modify_qp(vn->qp, &a,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC);
    if (e) return dm_fail(ctx, DM_EIO, "moving the QP to %s to RTS: %s", vn->peer, strerror(e));
    return DM_OK;
}

static int create_qp(dm_ctx *ctx, vb_node *vn, unsigned max_wr) {
    vb_dev *d = vn->dev;
    uint32_t wr = max_wr ? max_wr : DM_MAX_BATCH;
    if (d->attr.max_qp_wr > 0 && (uint32_t)d->attr.max_qp_wr < wr) wr = (uint32_t)d->attr.max_qp_wr;
    struct ibv_qp_init_attr ia = {.send_cq = d->cq, .recv_cq = d->cq, .qp_type = IBV_QPT_RC, .sq_sig_all = 0};
    ia.cap.max_send_wr = wr;
    ia.cap.max_recv_wr = 1;
    ia.cap.max_send_sge = 1;
    ia.cap.max_recv_sge = 1;
    ia.cap.max_inline_data = VB_MAX_INLINE;
    vn->qp = ibv_create_qp(d->pd, &ia);
    if (!vn->qp) { /* some devices have no inline data */
        ia.cap.max_inline_data = 0;
        vn->qp = ibv_create_qp(d->pd, &ia);
    }
    if (!vn->qp) return dm_fail(ctx, DM_EIO, "ibv_create_qp on %s: %s", d->name, strerror(errno));
    vn->max_wr = ia.cap.max_send_wr < wr ? ia.cap.max_send_wr : wr;
    if (vn->max_wr == 0) vn->max_wr = 1;
    vn->max_inline = ia.cap.max_inline_data;
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = (uint8_t)d->ib_port,
                            .qp_access_flags = 0};
    int e = ibv_modify_qp(vn->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (e) return dm_fail(ctx, DM_EIO, "moving a QP on %s to INIT: %s", d->name, strerror(e));
    return DM_OK;
}

/* Read the region header over the new QP and check it matches what the handshake said. */
static int verify_header(dm_ctx *ctx, dm_node *node, unsigned node_id) {
    uint64_t hdr[8];
    dm_verb v = {.op = DM_OP_READ, .node = (uint16_t)node_id, .len = sizeof hdr, .offset = 0, .local = hdr};
    dm_verb *list[1] = {&v};
    int rc = vb_post(ctx, node, list, 1);
    if (rc == DM_OK) rc = vb_wait(ctx, node);
    if (rc) return rc;
    vb_node *vn = node->impl;
    if (hdr[DM_HDR_MAGIC / 8] != DM_MAGIC || hdr[DM_HDR_SIZE_OFF / 8] != node->size ||
        hdr[DM_HDR_NODE_ID / 8] != node_id)
        return dm_fail(ctx, DM_EPROTO,
                       "memory node %s: region header does not match the handshake (magic %016llx, size %llu, id %llu)",
                       vn->peer, (unsigned long long)hdr[0], (unsigned long long)hdr[DM_HDR_SIZE_OFF / 8],
                       (unsigned long long)hdr[DM_HDR_NODE_ID / 8]);
    return DM_OK;
}

int dm_verbs_attach(dm_ctx *ctx, const char *uri, dm_node **out) {
    *out = NULL;
    vb_uri u;
    int rc = parse_uri(ctx, uri, &u);
    if (rc) return rc;
    dm_node *node = calloc(1, sizeof *node);
    vb_node *vn = calloc(1, sizeof *vn);
    if (!node || !vn) {
        free(node);
        free(vn);
        return dm_fail(ctx, DM_ENOMEM, "out of local memory attaching '%s'", uri);
    }
    vn->sock = -1;
    vn->slot = -1;
    vn->timeout_ms = u.timeout_ms;
    snprintf(vn->peer, sizeof vn->peer, "%s:%s", u.host, u.port);
    node->ops = &verbs_ops;
    node->impl = vn;
    rc = dev_open(ctx, uri, &u, &vn->dev);
    if (rc) goto fail;
    vb_dev *d = vn->dev;
    for (int s = 0; s < VB_SLOTS && vn->slot < 0; s++)
        if (!d->owners[s]) vn->slot = s;
    if (vn->slot < 0) {
        rc = dm_fail(ctx, DM_ENOMEM, "too many memory nodes on device %s (%d)", d->name, VB_SLOTS);
        goto fail;
    }
    vn->gen = ++d->gens[vn->slot];
    d->owners[vn->slot] = vn;
    rc = create_qp(ctx, vn, u.max_wr);
    if (rc) goto fail;
    vb_qpinfo mine = {.qpn = vn->qp->qp_num, .lid = d->port.lid, .mtu = (uint8_t)d->port.active_mtu};
    mine.psn = (uint32_t)(dm_rand(ctx) & 0xffffff);
    unsigned rd = d->attr.max_qp_init_rd_atom;
    mine.rd_atomic = (uint8_t)(rd == 0 ? 1 : rd > VB_MAX_RD_ATOMIC ? VB_MAX_RD_ATOMIC : rd);
    memcpy(mine.gid, d->gid.raw, 16);
    uint64_t deadline = dm_now_ns() + (uint64_t)u.timeout_ms * 1000000u;
    rc = tcp_connect(ctx, &u, deadline, &vn->sock);
    if (rc) goto fail;
    vb_qpinfo theirs;
    unsigned node_id = 0;
    rc = handshake(ctx, vn, &mine, deadline, &theirs, &node_id, &node->size);
    if (rc) goto fail;
    rc = qp_connect(ctx, vn, &mine, &theirs);
    if (rc) goto fail;
    node->id = node_id;
    rc = verify_header(ctx, node, node_id);
    if (rc) goto fail;
    *out = node;
    return DM_OK;
fail:
    vb_detach(node);
    return rc;
}

#endif /* KVDM_HAVE_VERBS */
