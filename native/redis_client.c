/* redis_client.c - the Redis baseline's client in C over hiredis (see redis_client.h). */
#include "redis_client.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define MAX_REDIRECTS 5
#define ZSET_NAME "kvdm:zset"

typedef struct node {
    char *host;
    int port;
    redisContext *c; /* NULL until connected, and after an I/O error (re-made on the next use) */
    int pending;     /* commands written in the current round trip */
} node;

typedef struct bytes {
    char *p;
    size_t len, cap;
} bytes;

/* One round trip: its commands (RESP bytes, back to back), their nodes and, once run, replies. */
typedef struct exchange {
    bytes cmds;
    size_t *off, *len;
    uint32_t *node;
    redisReply **rep;
    size_t n, cap;
} exchange;

struct kvdm_redis {
    kvidx_ops ops;
    node *nodes;
    size_t n_nodes, nodes_cap;
    uint16_t *slot_node; /* NULL = standalone */
    size_t kb;
    uint8_t *ns;
    size_t ns_len;
    int hash_tags, range_mode, prefix_mode;
    size_t pipeline;
    char sha[41];
    char *lua_src;
    struct timeval connect_tv, reply_tv;
    kvdm_redis_stats st;
    char err[512];
    int oom; /* a growth failed while building a command (reported when it ends) */
    /* the command being built */
    bytes body;
    size_t argc;
    long cmd_node;
    exchange x;
    /* scratch of one operation */
    uint8_t *name; /* one key name */
    size_t name_cap;
    uint8_t *raws; /* raw keys (range members, mget ids) */
    size_t raws_cap;
    uint16_t *slots;
    size_t slots_cap;
    size_t *order, *runs; /* keys grouped by slot; command i covers order[runs[2i] .. +runs[2i+1]) */
    size_t order_cap, runs_cap;
    int32_t *slot_rank; /* [KVDM_REDIS_SLOTS] cluster: -1, or a slot's rank of first appearance */
    uint8_t *found;
    uint64_t *vals;
    size_t found_cap, vals_cap;
    /* the last range's result, in key order (kvidx layout) */
    uint8_t *rkeys;
    uint64_t *rvals;
    size_t rcount, rkeys_cap, rvals_cap;
};

static int fail(kvdm_redis *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(kvdm_redis *r, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    return code;
}

/* Grow *p (elements of size elem) to hold need; 0 when out of memory. */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t c = need > 2 * *cap ? need : 2 * *cap;
    void *q = realloc(*p, c * elem);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

static void put_bytes(kvdm_redis *r, bytes *b, const void *p, size_t n) {
    if (!grow((void **)&b->p, &b->cap, b->len + n, 1)) {
        r->oom = 1;
        return;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* ---- key names and slots ---------------------------------------------------------------- */

static const uint16_t crc16_tab[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a, 0xb16b,
    0xc18c, 0xd1ad, 0xe1ce, 0xf1ef, 0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de, 0x2462, 0x3443, 0x0420, 0x1401,
    0x64e6, 0x74c7, 0x44a4, 0x5485, 0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4, 0xb75b, 0xa77a, 0x9719, 0x8738,
    0xf7df, 0xe7fe, 0xd79d, 0xc7bc, 0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b, 0x5af5, 0x4ad4, 0x7ab7, 0x6a96,
    0x1a71, 0x0a50, 0x3a33, 0x2a12, 0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41, 0xedae, 0xfd8f, 0xcdec, 0xddcd,
    0xad2a, 0xbd0b, 0x8d68, 0x9d49, 0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78, 0x9188, 0x81a9, 0xb1ca, 0xa1eb,
    0xd10c, 0xc12d, 0xf14e, 0xe16f, 0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e, 0x02b1, 0x1290, 0x22f3, 0x32d2,
    0x4235, 0x5214, 0x6277, 0x7256, 0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405, 0xa7db, 0xb7fa, 0x8799, 0x97b8,
    0xe75f, 0xf77e, 0xc71d, 0xd73c, 0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab, 0x5844, 0x4865, 0x7806, 0x6827,
    0x18c0, 0x08e1, 0x3882, 0x28a3, 0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92, 0xfd2e, 0xed0f, 0xdd6c, 0xcd4d,
    0xbdaa, 0xad8b, 0x9de8, 0x8dc9, 0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8, 0x6e17, 0x7e36, 0x4e55, 0x5e74,
    0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static uint16_t crc16(const uint8_t *p, size_t n) {
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) crc = (uint16_t)(crc << 8) ^ crc16_tab[((crc >> 8) ^ p[i]) & 0xff];
    return crc;
}

uint16_t kvdm_redis_keyslot(const uint8_t *name, size_t len) {
    const uint8_t *open = memchr(name, '{', len);
    if (open) {
        size_t start = (size_t)(open - name) + 1;
        const uint8_t *close = memchr(name + start, '}', len - start);
        if (close && close > name + start) return crc16(name + start, (size_t)(close - name - start)) & 16383;
    }
    return crc16(name, len) & 16383;
}

/* A key's raw bytes (8-byte keys big-endian) from the kvidx layout (8-byte keys native uint64). */
static void raw_of(size_t kb, const uint8_t *key, uint8_t *raw) {
    if (kb != 8) {
        memcpy(raw, key, kb);
        return;
    }
    uint64_t v;
    memcpy(&v, key, 8);
    for (int i = 7; i >= 0; i--, v >>= 8) raw[i] = (uint8_t)v;
}

/* raw_of's inverse. */
static void layout_of(size_t kb, const uint8_t *raw, uint8_t *key) {
    if (kb != 8) {
        memcpy(key, raw, kb);
        return;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | raw[i];
    memcpy(key, &v, 8);
}

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* The Redis name of a raw key into r->name (sized at open); returns its length. */
static size_t name_of(kvdm_redis *r, const uint8_t *raw) {
    static const char hex[] = "0123456789abcdef";
    uint8_t *o = r->name;
    if (r->hash_tags) {
        *o++ = '{';
        for (size_t i = 0; i + 1 < r->kb; i++) {
            *o++ = (uint8_t)hex[raw[i] >> 4];
            *o++ = (uint8_t)hex[raw[i] & 15];
        }
        *o++ = '}';
    }
    if (r->ns_len) memcpy(o, r->ns, r->ns_len);
    o += r->ns_len;
    memcpy(o, raw, r->kb);
    return (size_t)(o + r->kb - r->name);
}

static uint32_t node_of(const kvdm_redis *r, const uint8_t *name, size_t len) {
    return r->slot_node ? r->slot_node[kvdm_redis_keyslot(name, len)] : 0;
}

/* ---- building commands --------------------------------------------------------------------- */

static void cmd_begin(kvdm_redis *r) {
    r->body.len = 0;
    r->argc = 0;
    r->cmd_node = -1;
}

static void arg(kvdm_redis *r, const void *p, size_t n) {
    char hdr[32];
    int h = snprintf(hdr, sizeof hdr, "$%zu\r\n", n);
    put_bytes(r, &r->body, hdr, (size_t)h);
    put_bytes(r, &r->body, p, n);
    put_bytes(r, &r->body, "\r\n", 2);
    r->argc++;
}

static void arg_str(kvdm_redis *r, const char *s) { arg(r, s, strlen(s)); }

static void arg_u64(kvdm_redis *r, uint64_t v) {
    char s[24];
    int n = snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    arg(r, s, (size_t)n);
}

/* A key argument: the command goes to the node of its first key. */
static void arg_key(kvdm_redis *r, const uint8_t *name, size_t len) {
    if (r->cmd_node < 0) r->cmd_node = (long)node_of(r, name, len);
    arg(r, name, len);
}

static void arg_raw_key(kvdm_redis *r, const uint8_t *raw) { arg_key(r, r->name, name_of(r, raw)); }

static void arg_zset(kvdm_redis *r) {
    size_t n = r->ns_len + sizeof ZSET_NAME - 1;
    if (r->ns_len) memcpy(r->name, r->ns, r->ns_len);
    memcpy(r->name + r->ns_len, ZSET_NAME, sizeof ZSET_NAME - 1);
    arg_key(r, r->name, n);
}

/* Ends the command and adds it to the round trip being built. */
static int cmd_end(kvdm_redis *r) {
    exchange *x = &r->x;
    if (!r->oom && x->n == x->cap) {
        size_t c = x->cap ? 2 * x->cap : 64;
        size_t *off = realloc(x->off, c * sizeof *off);
        if (off) x->off = off;
        size_t *len = realloc(x->len, c * sizeof *len);
        if (len) x->len = len;
        uint32_t *nd = realloc(x->node, c * sizeof *nd);
        if (nd) x->node = nd;
        redisReply **rep = realloc(x->rep, c * sizeof *rep);
        if (rep) x->rep = rep;
        if (off && len && nd && rep) x->cap = c;
        else r->oom = 1;
    }
    char hdr[32];
    int h = snprintf(hdr, sizeof hdr, "*%zu\r\n", r->argc);
    size_t at = x->cmds.len;
    put_bytes(r, &x->cmds, hdr, (size_t)h);
    put_bytes(r, &x->cmds, r->body.p, r->body.len);
    if (r->oom) {
        r->oom = 0;
        return fail(r, DM_ENOMEM, "redis: out of memory building a command");
    }
    x->off[x->n] = at;
    x->len[x->n] = x->cmds.len - at;
    x->node[x->n] = r->cmd_node < 0 ? 0 : (uint32_t)r->cmd_node;
    x->rep[x->n] = NULL;
    x->n++;
    return DM_OK;
}

/* ---- connections and round trips ---------------------------------------------------------- */

static void drop(kvdm_redis *r, size_t i) {
    if (r->nodes[i].c) redisFree(r->nodes[i].c);
    r->nodes[i].c = NULL;
    r->nodes[i].pending = 0;
}

/* An I/O error on node i: every connection with replies due is out of step, so all go. */
static int io_fail(kvdm_redis *r, size_t i, int saved_errno) {
    node *nd = &r->nodes[i];
    int code = nd->c && nd->c->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)
                   ? DM_ETIMEDOUT
                   : DM_EIO;
    if (code == DM_ETIMEDOUT)
        fail(r, code, "redis at %s:%d: no reply within %ld.%03ld s (connection dropped)", nd->host, nd->port,
             (long)r->reply_tv.tv_sec, (long)r->reply_tv.tv_usec / 1000);
    else
        fail(r, code, "redis at %s:%d: %s (connection dropped; the next call reconnects)", nd->host, nd->port,
             nd->c && nd->c->errstr[0] ? nd->c->errstr : "connection lost");
    for (size_t k = 0; k < r->n_nodes; k++) drop(r, k);
    return code;
}

static int connect_node(kvdm_redis *r, size_t i) {
    node *nd = &r->nodes[i];
    if (nd->c) return DM_OK;
    redisContext *c = redisConnectWithTimeout(nd->host, nd->port, r->connect_tv);
    if (!c || c->err) {
        int rc = fail(r, DM_EIO, "cannot connect to Redis at %s:%d: %s", nd->host, nd->port,
                      c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return rc;
    }
    if (redisSetTimeout(c, r->reply_tv) != REDIS_OK) {
        int rc = fail(r, DM_EIO, "redis at %s:%d: cannot set the reply timeout: %s", nd->host, nd->port, c->errstr);
        redisFree(c);
        return rc;
    }
    nd->c = c;
    return DM_OK;
}

static void x_clear(kvdm_redis *r) {
    exchange *x = &r->x;
    for (size_t i = 0; i < x->n; i++)
        if (x->rep[i]) freeReplyObject(x->rep[i]);
    x->n = 0;
    x->cmds.len = 0;
}

static int append(kvdm_redis *r, uint32_t n, const char *cmd, size_t len) {
    int rc = connect_node(r, n);
    if (rc != DM_OK) return rc;
    if (redisAppendFormattedCommand(r->nodes[n].c, cmd, len) != REDIS_OK) return io_fail(r, n, errno);
    r->nodes[n].pending++;
    return DM_OK;
}

/* Write every node's pending commands out (before any reply is read: one wait for all). */
static int flush_all(kvdm_redis *r) {
    for (size_t k = 0; k < r->n_nodes; k++) {
        node *nd = &r->nodes[k];
        if (!nd->pending || !nd->c) continue;
        int done = 0;
        while (!done)
            if (redisBufferWrite(nd->c, &done) != REDIS_OK) return io_fail(r, k, errno);
    }
    return DM_OK;
}

static int read_reply(kvdm_redis *r, uint32_t n, redisReply **out) {
    void *rep = NULL;
    if (redisGetReply(r->nodes[n].c, &rep) != REDIS_OK || !rep) return io_fail(r, n, errno);
    r->nodes[n].pending--;
    *out = rep;
    return DM_OK;
}

static int find_node(kvdm_redis *r, const char *host, int port, uint32_t *out) {
    for (size_t i = 0; i < r->n_nodes; i++)
        if (r->nodes[i].port == port && !strcmp(r->nodes[i].host, host)) {
            *out = (uint32_t)i;
            return DM_OK;
        }
    if (!grow((void **)&r->nodes, &r->nodes_cap, r->n_nodes + 1, sizeof *r->nodes))
        return fail(r, DM_ENOMEM, "redis: out of memory adding cluster node %s:%d", host, port);
    node *nd = &r->nodes[r->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->host = strdup(host);
    nd->port = port;
    if (!nd->host) return fail(r, DM_ENOMEM, "redis: out of memory adding cluster node %s:%d", host, port);
    *out = (uint32_t)r->n_nodes++;
    return DM_OK;
}

/* Re-run command i of the round trip alone on node n (after ASKING when asking), with the
 * script loaded first when load_script: what a MOVED, ASK or NOSCRIPT reply asks for. */
static int resend(kvdm_redis *r, size_t i, uint32_t n, int asking, int load_script) {
    exchange *x = &r->x;
    static const char ask_cmd[] = "*1\r\n$6\r\nASKING\r\n";
    int rc = DM_OK;
    if (load_script) {
        cmd_begin(r);
        arg_str(r, "SCRIPT");
        arg_str(r, "LOAD");
        arg_str(r, r->lua_src);
        char hdr[32];
        int h = snprintf(hdr, sizeof hdr, "*%zu\r\n", r->argc);
        if (r->oom) return fail(r, DM_ENOMEM, "redis: out of memory building SCRIPT LOAD");
        rc = append(r, n, hdr, (size_t)h);
        if (rc == DM_OK) rc = append(r, n, r->body.p, r->body.len);
        if (rc == DM_OK) r->nodes[n].pending--; /* the header and the body are one command */
    }
    if (rc == DM_OK && asking) rc = append(r, n, ask_cmd, sizeof ask_cmd - 1);
    if (rc == DM_OK) rc = append(r, n, x->cmds.p + x->off[i], x->len[i]);
    if (rc == DM_OK) rc = flush_all(r);
    r->st.rtts++;
    r->st.commands += 1 + (asking != 0) + (load_script != 0);
    for (int extra = (asking != 0) + (load_script != 0); rc == DM_OK && extra > 0; extra--) {
        redisReply *pre = NULL;
        rc = read_reply(r, n, &pre);
        if (rc == DM_OK && pre->type == REDIS_REPLY_ERROR)
            rc = fail(r, DM_EPROTO, "redis at %s:%d: %s", r->nodes[n].host, r->nodes[n].port, pre->str);
        if (pre) freeReplyObject(pre);
        if (rc != DM_OK) { /* the command's own reply is still due: keep the stream in step */
            redisReply *rest = NULL;
            if (r->nodes[n].c && r->nodes[n].pending && read_reply(r, n, &rest) == DM_OK) freeReplyObject(rest);
            return rc;
        }
    }
    if (rc != DM_OK) return rc;
    freeReplyObject(x->rep[i]);
    x->rep[i] = NULL;
    x->node[i] = n;
    return read_reply(r, n, &x->rep[i]);
}

static int starts(const redisReply *rep, const char *prefix) {
    size_t n = strlen(prefix);
    return rep->type == REDIS_REPLY_ERROR && rep->len >= n && !memcmp(rep->str, prefix, n);
}

/* A MOVED/ASK reply's slot and address: "MOVED 3999 127.0.0.1:6381". */
static int redirect_target(kvdm_redis *r, const redisReply *rep, long *slot, uint32_t *n) {
    char host[256];
    const char *sp = strchr(rep->str, ' ');
    const char *colon = strrchr(rep->str, ':');
    char *end = NULL;
    *slot = sp ? strtol(sp + 1, &end, 10) : -1;
    if (!sp || !colon || !end || *end != ' ' || *slot < 0 || *slot >= KVDM_REDIS_SLOTS ||
        (size_t)(colon - end - 1) >= sizeof host)
        return fail(r, DM_EPROTO, "redis: cannot parse the redirection %s", rep->str);
    memcpy(host, end + 1, (size_t)(colon - end - 1));
    host[colon - end - 1] = '\0';
    return find_node(r, host, atoi(colon + 1), n);
}

/* Send the round trip built since x_clear (every node's commands written before any reply is
 * read: one wait), read every reply, and follow MOVED, ASK and NOSCRIPT replies. */
static int x_run(kvdm_redis *r) {
    exchange *x = &r->x;
    int rc = DM_OK;
    for (size_t i = 0; i < x->n && rc == DM_OK; i++) rc = append(r, x->node[i], x->cmds.p + x->off[i], x->len[i]);
    if (rc == DM_OK) rc = flush_all(r);
    r->st.rtts++;
    r->st.commands += x->n;
    for (size_t i = 0; i < x->n && rc == DM_OK; i++) rc = read_reply(r, x->node[i], &x->rep[i]);
    for (size_t i = 0; i < x->n && rc == DM_OK; i++) {
        for (int hop = 0; rc == DM_OK && hop < MAX_REDIRECTS; hop++) {
            redisReply *rep = x->rep[i];
            if (starts(rep, "NOSCRIPT")) {
                rc = resend(r, i, x->node[i], 0, 1);
            } else if (r->slot_node && (starts(rep, "MOVED ") || starts(rep, "ASK "))) {
                long slot;
                uint32_t n;
                int moved = starts(rep, "MOVED ");
                rc = redirect_target(r, rep, &slot, &n);
                if (rc != DM_OK) break;
                if (moved) r->slot_node[slot] = (uint16_t)n;
                rc = resend(r, i, n, !moved, 0);
            } else {
                break;
            }
        }
    }
    return rc;
}

typedef int (*build_fn)(kvdm_redis *r, void *a, size_t i);
/* Consumes reply i: DM_OK to go on, STOP to ignore the rest, or an error status. */
typedef int (*take_fn)(kvdm_redis *r, void *a, size_t i, const redisReply *rep);
#define STOP 1

/* Commands 0..n (built by build), `pipeline` per round trip, each reply passed to take; stops
 * after the round trip in which take said STOP. An error reply anywhere fails the call (after
 * every reply of its round trip was read, so the connection stays in step). */
static int run_cmds(kvdm_redis *r, size_t n, build_fn build, take_fn take, void *a) {
    size_t d = r->pipeline ? r->pipeline : (n ? n : 1);
    int rc = DM_OK;
    for (size_t i = 0; i < n; i += d) {
        size_t m = n - i < d ? n - i : d;
        x_clear(r);
        for (size_t k = 0; k < m && rc == DM_OK; k++) {
            cmd_begin(r);
            rc = build(r, a, i + k);
            if (rc == DM_OK) rc = cmd_end(r);
        }
        if (rc == DM_OK) rc = x_run(r);
        for (size_t k = 0; k < r->x.n && rc == DM_OK; k++)
            if (r->x.rep[k]->type == REDIS_REPLY_ERROR)
                rc = fail(r, DM_EPROTO, "redis error reply: %s", r->x.rep[k]->str);
        int stop = 0;
        for (size_t k = 0; k < r->x.n && rc == DM_OK && !stop; k++) {
            rc = take(r, a, i + k, r->x.rep[k]);
            if (rc == STOP) stop = 1, rc = DM_OK;
        }
        x_clear(r);
        if (rc != DM_OK || stop) break;
    }
    return rc;
}

static int unexpected(kvdm_redis *r, const char *what, const redisReply *rep) {
    return fail(r, DM_EPROTO, "redis: unexpected reply type %d to %s", rep->type, what);
}

/* A GET/MGET value: *found and *val, or an error when it is not kvdm's 8 bytes. */
static int value_of(kvdm_redis *r, const redisReply *rep, uint8_t *found, uint64_t *val) {
    if (rep->type == REDIS_REPLY_NIL) {
        *found = 0;
        *val = 0;
        return DM_OK;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len != 8)
        return fail(r, DM_EPROTO, "a Redis value is not 8 bytes long: the namespace holds keys kvdm did not write");
    *found = 1;
    *val = be64((const uint8_t *)rep->str);
    return DM_OK;
}

/* ---- get, put, prefix ------------------------------------------------------------------------ */

typedef struct keys_arg {
    const uint8_t *keys; /* kvidx layout */
    const uint64_t *vals_in;
    uint64_t *vals;
    uint8_t *found;
    size_t n;
    size_t matched;
} keys_arg;

static void arg_key_at(kvdm_redis *r, const keys_arg *k, size_t i) {
    uint8_t raw[32];
    raw_of(r->kb, k->keys + i * r->kb, raw);
    arg_raw_key(r, raw);
}

static int build_key_cmd(kvdm_redis *r, const char *cmd, void *a, size_t i) {
    arg_str(r, cmd);
    arg_key_at(r, a, i);
    return DM_OK;
}

static int build_get(kvdm_redis *r, void *a, size_t i) { return build_key_cmd(r, "GET", a, i); }

static int take_get(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    keys_arg *k = a;
    return value_of(r, rep, &k->found[i], &k->vals[i]);
}

static int redis_get(void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, uint64_t *lat_ns) {
    kvdm_redis *r = h;
    keys_arg k = {keys, NULL, vals, found, n, 0};
    r->st.keys += n;
    return run_cmds(r, n, build_get, take_get, &k);
}

static int build_put(kvdm_redis *r, void *a, size_t i) {
    keys_arg *k = a;
    if (i < k->n) {
        uint8_t v[8];
        put_be64(v, k->vals_in[i]);
        arg_str(r, "SET");
        arg_key_at(r, k, i);
        arg(r, v, 8);
        return DM_OK;
    }
    /* values first, then the sorted set's entries: a range never lists a key it cannot read */
    size_t a0 = (i - k->n) * KVDM_REDIS_MULTI_KEY_CHUNK;
    size_t a1 = a0 + KVDM_REDIS_MULTI_KEY_CHUNK < k->n ? a0 + KVDM_REDIS_MULTI_KEY_CHUNK : k->n;
    arg_str(r, "ZADD");
    arg_zset(r);
    for (size_t j = a0; j < a1; j++) {
        uint8_t raw[32];
        raw_of(r->kb, k->keys + j * r->kb, raw);
        arg(r, "0", 1);
        arg(r, raw, r->kb);
    }
    return DM_OK;
}

static int take_nothing(kvdm_redis *r, void *a, size_t i, const redisReply *rep) { return DM_OK; }

static int redis_put(void *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns) {
    kvdm_redis *r = h;
    if (!n) return DM_OK;
    keys_arg k = {keys, vals, NULL, NULL, n, 0};
    size_t zadds = r->range_mode == KVDM_REDIS_RANGE_ZSET ? (n + KVDM_REDIS_MULTI_KEY_CHUNK - 1) / KVDM_REDIS_MULTI_KEY_CHUNK : 0;
    r->st.keys += n;
    return run_cmds(r, n + zadds, build_put, take_nothing, &k);
}

static int build_exists(kvdm_redis *r, void *a, size_t i) { return build_key_cmd(r, "EXISTS", a, i); }

static int take_exists(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    keys_arg *k = a;
    if (rep->type != REDIS_REPLY_INTEGER) return unexpected(r, "EXISTS", rep);
    r->st.keys++;
    if (!rep->integer) return STOP;
    k->found[i] = 1;
    k->matched++;
    return DM_OK;
}

/* Lua prefix match: command i is the EVALSHA of run i, keys runs[2i] .. + runs[2i+1]. */
static int build_evalsha(kvdm_redis *r, void *a, size_t i) {
    keys_arg *k = a;
    size_t first = r->runs[2 * i], len = r->runs[2 * i + 1];
    arg_str(r, "EVALSHA");
    arg(r, r->sha, 40);
    arg_u64(r, len);
    for (size_t j = first; j < first + len; j++) arg_key_at(r, k, j);
    return DM_OK;
}

static int take_evalsha(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    keys_arg *k = a;
    size_t first = r->runs[2 * i], len = r->runs[2 * i + 1];
    if (rep->type != REDIS_REPLY_INTEGER || rep->integer < 0 || (uint64_t)rep->integer > len)
        return unexpected(r, "EVALSHA (prefix script)", rep);
    r->st.keys += len;
    for (size_t j = first; j < first + (size_t)rep->integer; j++) k->found[j] = 1;
    k->matched += (size_t)rep->integer;
    return (size_t)rep->integer < len ? STOP : DM_OK;
}

/* Maximal runs of consecutive keys sharing a slot (one run when standalone) into r->runs;
 * returns how many, or 0 when out of memory (n > 0). */
static size_t slot_runs(kvdm_redis *r, const uint8_t *keys, size_t n) {
    if (!grow((void **)&r->runs, &r->runs_cap, 2 * n, sizeof *r->runs)) return 0;
    if (!r->slot_node) {
        r->runs[0] = 0;
        r->runs[1] = n;
        return 1;
    }
    size_t runs = 0;
    long prev = -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t raw[32];
        raw_of(r->kb, keys + i * r->kb, raw);
        long slot = kvdm_redis_keyslot(r->name, name_of(r, raw));
        if (slot != prev) {
            r->runs[2 * runs] = i;
            r->runs[2 * runs + 1] = 0;
            runs++;
            prev = slot;
        }
        r->runs[2 * runs - 1]++;
    }
    return runs;
}

static int redis_prefix(void *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found, size_t *matched) {
    kvdm_redis *r = h;
    keys_arg k = {keys, NULL, vals, found, n, 0};
    *matched = 0;
    if (!n) return DM_OK;
    memset(found, 0, n);
    int rc;
    if (r->prefix_mode == KVDM_REDIS_PREFIX_LUA) {
        size_t runs = slot_runs(r, keys, n);
        if (!runs) return fail(r, DM_ENOMEM, "redis: out of memory for %zu keys", n);
        rc = run_cmds(r, runs, build_evalsha, take_evalsha, &k);
    } else {
        rc = run_cmds(r, n, build_exists, take_exists, &k);
    }
    *matched = k.matched;
    return rc;
}

/* ---- range ----------------------------------------------------------------------------------- */

/* MGET of the names of raw keys r->raws[0..n): cut per slot (cluster; in order of first
 * appearance) and per MULTI_KEY_CHUNK names, `pipeline` commands per round trip; fills
 * r->found / r->vals per key. */
static int build_mget(kvdm_redis *r, void *a, size_t i) {
    size_t first = r->runs[2 * i], len = r->runs[2 * i + 1];
    arg_str(r, "MGET");
    for (size_t j = first; j < first + len; j++) arg_raw_key(r, r->raws + r->order[j] * r->kb);
    return DM_OK;
}

static int take_mget(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    size_t first = r->runs[2 * i], len = r->runs[2 * i + 1];
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != len) return unexpected(r, "MGET", rep);
    for (size_t j = 0; j < len; j++) {
        size_t at = r->order[first + j];
        int rc = value_of(r, rep->element[j], &r->found[at], &r->vals[at]);
        if (rc != DM_OK) return rc;
    }
    return DM_OK;
}

static int mget_raws(kvdm_redis *r, size_t n) {
    if (!n) return DM_OK;
    if (!grow((void **)&r->order, &r->order_cap, n, sizeof *r->order) ||
        !grow((void **)&r->slots, &r->slots_cap, n, sizeof *r->slots) ||
        !grow((void **)&r->runs, &r->runs_cap, 2 * (n + n / KVDM_REDIS_MULTI_KEY_CHUNK + 1), sizeof *r->runs) ||
        !grow((void **)&r->found, &r->found_cap, n, 1) || !grow((void **)&r->vals, &r->vals_cap, n, 8))
        return fail(r, DM_ENOMEM, "redis: out of memory for an MGET of %zu keys", n);
    size_t groups = 0, cmds = 0;
    if (!r->slot_node) {
        for (size_t i = 0; i < n; i++) r->order[i] = i;
        groups = 1;
    } else { /* a counting sort by slot rank, stable within a slot */
        for (size_t i = 0; i < n; i++) {
            uint16_t s = kvdm_redis_keyslot(r->name, name_of(r, r->raws + i * r->kb));
            r->slots[i] = s;
            if (r->slot_rank[s] < 0) r->slot_rank[s] = (int32_t)groups++;
        }
        /* group g's keys start at runs[2g] (counts first, then offsets) */
        for (size_t g = 0; g < groups; g++) r->runs[2 * g + 1] = 0;
        for (size_t i = 0; i < n; i++) r->runs[2 * (size_t)r->slot_rank[r->slots[i]] + 1]++;
        for (size_t g = 0, at = 0; g < groups; g++) r->runs[2 * g] = at, at += r->runs[2 * g + 1];
        for (size_t i = 0; i < n; i++) {
            size_t g = (size_t)r->slot_rank[r->slots[i]];
            r->order[r->runs[2 * g]++] = i;
        }
        for (size_t i = 0; i < n; i++) r->slot_rank[r->slots[i]] = -1;
        for (size_t g = 0, at = 0; g < groups; g++) r->runs[2 * g] = at, at += r->runs[2 * g + 1];
    }
    /* the commands: each group cut per MULTI_KEY_CHUNK, in place from the last group down */
    size_t total = 0;
    for (size_t g = 0; g < groups; g++) {
        size_t len = r->slot_node ? r->runs[2 * g + 1] : n;
        total += (len + KVDM_REDIS_MULTI_KEY_CHUNK - 1) / KVDM_REDIS_MULTI_KEY_CHUNK;
    }
    cmds = total;
    for (size_t g = groups; g-- > 0;) {
        size_t start = r->slot_node ? r->runs[2 * g] : 0, len = r->slot_node ? r->runs[2 * g + 1] : n;
        size_t pieces = (len + KVDM_REDIS_MULTI_KEY_CHUNK - 1) / KVDM_REDIS_MULTI_KEY_CHUNK;
        for (size_t p = pieces; p-- > 0;) {
            size_t c = --total;
            size_t a0 = p * KVDM_REDIS_MULTI_KEY_CHUNK;
            r->runs[2 * c] = start + a0;
            r->runs[2 * c + 1] = len - a0 < KVDM_REDIS_MULTI_KEY_CHUNK ? len - a0 : KVDM_REDIS_MULTI_KEY_CHUNK;
        }
    }
    return run_cmds(r, cmds, build_mget, take_mget, NULL);
}

/* The range result: raw keys r->raws[0..n) whose value was found, in order, at most limit of
 * them when limit > 0, into r->rkeys (kvidx layout) / r->rvals. */
static int keep_found(kvdm_redis *r, size_t n, uint64_t limit) {
    r->rcount = 0;
    if (!grow((void **)&r->rkeys, &r->rkeys_cap, n ? n : 1, r->kb) ||
        !grow((void **)&r->rvals, &r->rvals_cap, n ? n : 1, 8))
        return fail(r, DM_ENOMEM, "redis: out of memory for a range of %zu keys", n);
    for (size_t i = 0; i < n && (!limit || r->rcount < limit); i++) {
        if (!r->found[i]) continue;
        layout_of(r->kb, r->raws + i * r->kb, r->rkeys + r->rcount * r->kb);
        r->rvals[r->rcount++] = r->vals[i];
    }
    return DM_OK;
}

typedef struct range_arg {
    const uint8_t *lo, *hi; /* raw */
    uint64_t limit;
    size_t members;
} range_arg;

/* The sorted set and the range's BYLEX bounds [lo [hi. */
static void arg_zset_bounds(kvdm_redis *r, const range_arg *q) {
    uint8_t b[33];
    arg_zset(r);
    b[0] = '[';
    memcpy(b + 1, q->lo, r->kb);
    arg(r, b, r->kb + 1);
    memcpy(b + 1, q->hi, r->kb);
    arg(r, b, r->kb + 1);
}

static int build_zrange(kvdm_redis *r, void *a, size_t i) {
    range_arg *q = a;
    arg_str(r, "ZRANGE");
    arg_zset_bounds(r, q);
    arg_str(r, "BYLEX");
    if (q->limit) {
        arg_str(r, "LIMIT");
        arg_str(r, "0");
        arg_u64(r, q->limit);
    }
    return DM_OK;
}

/* The members (raw keys) into r->raws. */
static int take_zrange(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    range_arg *q = a;
    if (rep->type != REDIS_REPLY_ARRAY) return unexpected(r, "ZRANGE", rep);
    if (!grow((void **)&r->raws, &r->raws_cap, rep->elements ? rep->elements : 1, r->kb))
        return fail(r, DM_ENOMEM, "redis: out of memory for a range of %zu keys", rep->elements);
    for (size_t j = 0; j < rep->elements; j++) {
        const redisReply *m = rep->element[j];
        if (m->type != REDIS_REPLY_STRING || m->len != r->kb)
            return fail(r, DM_EPROTO, "a member of the sorted set is not a %zu-byte key: the namespace holds keys "
                        "kvdm did not write", r->kb);
        memcpy(r->raws + j * r->kb, m->str, r->kb);
    }
    q->members = rep->elements;
    return DM_OK;
}

/* A standalone server's zset range in one round trip: EVALSHA of the script's range (ZRANGE
 * BYLEX, then MGET of the members' names in chunks) -> {members, values} (redis_index.py). */
static int build_range_lua(kvdm_redis *r, void *a, size_t i) {
    range_arg *q = a;
    arg_str(r, "EVALSHA");
    arg(r, r->sha, 40);
    arg_str(r, "1");
    arg_zset_bounds(r, q);
    arg_u64(r, q->limit);
    arg(r, r->ns_len ? (const void *)r->ns : (const void *)"", r->ns_len);
    return DM_OK;
}

/* The members into r->raws, their values into r->vals / r->found (what mget_raws gives). */
static int take_range_lua(kvdm_redis *r, void *a, size_t i, const redisReply *rep) {
    range_arg *q = a;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_ARRAY ||
        rep->element[1]->type != REDIS_REPLY_ARRAY || rep->element[0]->elements != rep->element[1]->elements)
        return unexpected(r, "EVALSHA (range script)", rep);
    int rc = take_zrange(r, a, i, rep->element[0]);
    size_t n = q->members;
    if (rc != DM_OK) return rc;
    if (!grow((void **)&r->found, &r->found_cap, n ? n : 1, 1) || !grow((void **)&r->vals, &r->vals_cap, n ? n : 1, 8))
        return fail(r, DM_ENOMEM, "redis: out of memory for a range of %zu keys", n);
    for (size_t j = 0; j < n && rc == DM_OK; j++) rc = value_of(r, rep->element[1]->element[j], &r->found[j], &r->vals[j]);
    return rc;
}

static int redis_range(void *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count) {
    kvdm_redis *r = h;
    uint8_t lo_raw[32], hi_raw[32];
    raw_of(r->kb, lo, lo_raw);
    raw_of(r->kb, hi, hi_raw);
    *count = r->rcount = 0;
    size_t n;
    if (r->range_mode == KVDM_REDIS_RANGE_ZSET && !r->slot_node) { /* standalone: one round trip */
        range_arg q = {lo_raw, hi_raw, limit, 0};
        int rc = run_cmds(r, 1, build_range_lua, take_range_lua, &q);
        if (rc != DM_OK) return rc;
        r->st.keys += q.members;
        rc = keep_found(r, q.members, 0);
        *count = r->rcount;
        return rc;
    }
    if (r->range_mode == KVDM_REDIS_RANGE_ZSET) {
        range_arg q = {lo_raw, hi_raw, limit, 0};
        int rc = run_cmds(r, 1, build_zrange, take_zrange, &q);
        if (rc != DM_OK) return rc;
        n = q.members;
        r->st.keys += n;
        limit = 0; /* ZRANGE applied it */
    } else { /* mget: every id lo..hi */
        uint64_t a = be64(lo_raw), b = be64(hi_raw);
        n = b < a ? 0 : (size_t)(b - a) + 1;
        if (b >= a && b - a >= KVDM_REDIS_MGET_RANGE_MAX)
            return fail(r, DM_EINVAL, "range [%llu, %llu] spans %llu keys; range mode 'mget' fetches every key of "
                        "the span and allows at most %d: use range mode 'zset'", (unsigned long long)a,
                        (unsigned long long)b, (unsigned long long)(b - a + 1), KVDM_REDIS_MGET_RANGE_MAX);
        if (!grow((void **)&r->raws, &r->raws_cap, n ? n : 1, 8))
            return fail(r, DM_ENOMEM, "redis: out of memory for a range of %zu keys", n);
        for (size_t i = 0; i < n; i++) put_be64(r->raws + 8 * i, a + i);
        r->st.keys += n;
    }
    if (!n) return DM_OK;
    int rc = mget_raws(r, n);
    if (rc == DM_OK) rc = keep_found(r, n, limit);
    *count = r->rcount;
    return rc;
}

static void redis_range_fetch(const void *h, uint8_t *keys, uint64_t *vals) {
    const kvdm_redis *r = h;
    memcpy(keys, r->rkeys, r->rcount * r->kb);
    memcpy(vals, r->rvals, r->rcount * 8);
}

/* kvidx_stats has no Redis counters (kvdm_redis_get_stats has them): all zero. */
static void redis_kvidx_stats(const void *h, kvidx_stats *out) { memset(out, 0, sizeof *out); }

static const char *redis_error(const void *h) { return ((const kvdm_redis *)h)->err; }

/* ---- the handle ------------------------------------------------------------------------------ */

const char *kvdm_redis_error(const kvdm_redis *r) { return r->err; }

void kvdm_redis_get_stats(const kvdm_redis *r, kvdm_redis_stats *out) { *out = r->st; }

const kvidx_ops *kvdm_redis_ops(const kvdm_redis *r) { return &r->ops; }

size_t kvdm_redis_counters(void) { return sizeof(kvdm_redis_stats) / sizeof(uint64_t); }
_Static_assert(sizeof(kvdm_redis_stats) % sizeof(uint64_t) == 0, "kvdm_redis_stats is read as uint64 words");

static void stats_read(const void *src, uint64_t *v) { memcpy(v, &((const kvdm_redis *)src)->st, sizeof(kvdm_redis_stats)); }

int kvdm_redis_drive(kvdm_redis *r, const kvdm_stream *s, const int64_t *op_ids, const int32_t *groups, size_t n,
                     size_t n_groups, kvdm_drive_out *out, char *err, size_t errlen) {
    if (!r) {
        out->done = 0;
        return dm_fail_buf(err, errlen, DM_EINVAL, "kvdm_redis_drive: no handle");
    }
    kvdm_counter_src cs = {stats_read, r, kvdm_redis_counters(), (size_t)-1, (size_t)-1};
    return kvdm_drive_with(&r->ops, r, &cs, s, op_ids, groups, n, n_groups, 0, out, err, errlen);
}

static struct timeval tv_of(double s) {
    if (!(s > 0)) s = 0.001;
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

void kvdm_redis_close(kvdm_redis *r) {
    if (!r) return;
    x_clear(r);
    for (size_t i = 0; i < r->n_nodes; i++) {
        drop(r, i);
        free(r->nodes[i].host);
    }
    free(r->nodes);
    free(r->slot_node);
    free(r->ns);
    free(r->lua_src);
    free(r->body.p);
    free(r->x.cmds.p);
    free(r->x.off);
    free(r->x.len);
    free(r->x.node);
    free(r->x.rep);
    free(r->name);
    free(r->raws);
    free(r->slots);
    free(r->order);
    free(r->runs);
    free(r->slot_rank);
    free(r->found);
    free(r->vals);
    free(r->rkeys);
    free(r->rvals);
    free(r);
}

static int check_opts(const kvdm_redis_opts *o, char *err, size_t errlen) {
    if (!o || !o->hosts || !o->ports || !o->n_nodes)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis: no server given");
    if (o->key_bytes != 8 && o->key_bytes != 32)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis: key width %zu (valid: 8, 32)", o->key_bytes);
    if (o->range_mode != KVDM_REDIS_RANGE_ZSET && o->range_mode != KVDM_REDIS_RANGE_MGET)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis: unknown range mode %d", o->range_mode);
    if (o->range_mode == KVDM_REDIS_RANGE_MGET && o->key_bytes != 8)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis range mode 'mget' needs 8-byte id keys");
    if (o->prefix_mode != KVDM_REDIS_PREFIX_PIPELINE && o->prefix_mode != KVDM_REDIS_PREFIX_LUA)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis: unknown prefix mode %d", o->prefix_mode);
    if (!o->lua_sha || strlen(o->lua_sha) != 40 || !o->lua_src)
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis: the prefix script and its 40-hex SHA1 are required");
    if (o->ns_len && !o->ns) return dm_fail_buf(err, errlen, DM_EINVAL, "redis: namespace length without bytes");
    if (o->ns_len && (memchr(o->ns, '{', o->ns_len) || memchr(o->ns, '}', o->ns_len)))
        return dm_fail_buf(err, errlen, DM_EINVAL, "redis namespace must not contain '{' or '}' (hash tags)");
    for (size_t i = 0; i < o->n_nodes; i++)
        if (!o->hosts[i] || o->ports[i] <= 0 || o->ports[i] > 65535)
            return dm_fail_buf(err, errlen, DM_EINVAL, "redis: node %zu has no host or a bad port", i);
    if (o->slot_node)
        for (size_t s = 0; s < KVDM_REDIS_SLOTS; s++)
            if (o->slot_node[s] >= o->n_nodes)
                return dm_fail_buf(err, errlen, DM_EINVAL, "redis: slot %zu maps to node %u of %zu", s,
                                   o->slot_node[s], o->n_nodes);
    return DM_OK;
}

int kvdm_redis_open(const kvdm_redis_opts *o, kvdm_redis **out, char *err, size_t errlen) {
    *out = NULL;
    int rc = check_opts(o, err, errlen);
    if (rc != DM_OK) return rc;
    kvdm_redis *r = calloc(1, sizeof *r);
    if (!r) return dm_fail_buf(err, errlen, DM_ENOMEM, "redis: out of memory for a client handle");
    r->ops = (kvidx_ops){.name = "redis", .key_bytes = o->key_bytes, .get = redis_get, .put = redis_put,
                         .range = redis_range, .prefix = redis_prefix, .range_fetch = redis_range_fetch,
                         .stats = redis_kvidx_stats, .error = redis_error};
    r->kb = o->key_bytes;
    r->hash_tags = o->hash_tags;
    r->range_mode = o->range_mode;
    r->prefix_mode = o->prefix_mode;
    r->pipeline = o->pipeline;
    memcpy(r->sha, o->lua_sha, 40);
    r->connect_tv = tv_of(o->connect_timeout_s);
    r->reply_tv = tv_of(o->reply_timeout_s);
    r->ns_len = o->ns_len;
    r->name_cap = 2 + 2 * r->kb + o->ns_len + r->kb + sizeof ZSET_NAME;
    r->nodes = calloc(o->n_nodes, sizeof *r->nodes);
    r->nodes_cap = o->n_nodes;
    r->ns = malloc(o->ns_len ? o->ns_len : 1);
    r->lua_src = strdup(o->lua_src);
    r->name = malloc(r->name_cap);
    int ok = r->nodes && r->ns && r->lua_src && r->name;
    if (ok && o->slot_node) {
        r->slot_node = malloc(KVDM_REDIS_SLOTS * sizeof *r->slot_node);
        r->slot_rank = malloc(KVDM_REDIS_SLOTS * sizeof *r->slot_rank);
        ok = r->slot_node && r->slot_rank;
        if (ok) {
            memcpy(r->slot_node, o->slot_node, KVDM_REDIS_SLOTS * sizeof *r->slot_node);
            for (size_t s = 0; s < KVDM_REDIS_SLOTS; s++) r->slot_rank[s] = -1;
        }
    }
    for (size_t i = 0; ok && i < o->n_nodes; i++) {
        r->nodes[i].host = strdup(o->hosts[i]);
        r->nodes[i].port = o->ports[i];
        ok = r->nodes[i].host != NULL;
        r->n_nodes = i + 1;
    }
    if (!ok) {
        kvdm_redis_close(r);
        return dm_fail_buf(err, errlen, DM_ENOMEM, "redis: out of memory for a client handle");
    }
    if (o->ns_len) memcpy(r->ns, o->ns, o->ns_len);
    for (size_t i = 0; i < r->n_nodes; i++) {
        rc = connect_node(r, i);
        if (rc != DM_OK) {
            dm_fail_buf(err, errlen, rc, "%s", r->err);
            kvdm_redis_close(r);
            return rc;
        }
    }
    *out = r;
    return DM_OK;
}
