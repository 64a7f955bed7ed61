/*
 * redis_client.h - the Redis baseline's client in C (hiredis), so the replay engine's measuring
 * loop (driver.h) runs and times Redis operations exactly as it does the native indexes'.
 *
 * It speaks the protocol of kvdm.index.redis_index (that module's docstring is the spec), byte
 * for byte: the same key names (8-byte keys big-endian, 32-byte keys raw, after an optional
 * "{hex of all but the last byte}" hash tag and the namespace), the same 8-byte big-endian
 * values, the same commands per operation and the same pipelining (at most `pipeline` commands
 * per round trip; 0 = all of an operation's commands in one):
 *
 *   get     GET per key
 *   put     SET per key, then (zset range mode) ZADD <ns>kvdm:zset 0 raw ... per 1,024 keys
 *   range   zset: ZRANGE <zset> [lo [hi BYLEX [LIMIT 0 limit], then MGET of the members' names;
 *           mget: MGET of every id lo..hi (8-byte keys, at most 65,536 ids); MGETs are cut per
 *           1,024 names and, in a cluster, per slot
 *   prefix  pipeline: EXISTS per key, stopping after the round trip that holds the first miss;
 *           lua: EVALSHA of the prefix script per run of keys sharing a slot (one run when
 *           standalone), stopping after the round trip holding the first short run
 *
 * Cluster: the caller hands over the primaries and the slot map (slot -> node); a round trip's
 * commands are written to every node concerned before any reply is read (one wait, one RTT).
 * MOVED updates the map and re-sends the command, ASK re-sends it after ASKING, NOSCRIPT loads
 * the script and re-sends (each such retry is counted as a round trip).
 *
 * Errors never crash: every call returns DM_OK or a status with kvdm_redis_error() saying why:
 * DM_EIO (connection refused, lost, I/O error: the connection is dropped and re-made on the
 * next call), DM_ETIMEDOUT (no reply within reply_timeout_s), DM_EPROTO (an error reply, or a
 * reply kvdm did not expect, e.g. a value that is not 8 bytes), DM_EINVAL, DM_ENOMEM.
 * A handle belongs to one thread; it holds no global state.
 */
#ifndef KVDM_REDIS_CLIENT_H
#define KVDM_REDIS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "dm.h"
#include "driver.h"
#include "kvidx.h"

enum { KVDM_REDIS_RANGE_ZSET = 0, KVDM_REDIS_RANGE_MGET = 1 };
enum { KVDM_REDIS_PREFIX_PIPELINE = 0, KVDM_REDIS_PREFIX_LUA = 1 };
enum { KVDM_REDIS_SLOTS = 16384, KVDM_REDIS_MULTI_KEY_CHUNK = 1024, KVDM_REDIS_MGET_RANGE_MAX = 1 << 16 };

typedef struct kvdm_redis_opts {
    const char *const *hosts;   /* [n_nodes] the server, or a cluster's primaries */
    const int *ports;           /* [n_nodes] */
    size_t n_nodes;
    const uint16_t *slot_node;  /* [KVDM_REDIS_SLOTS] cluster: the node serving each slot; NULL = standalone */
    size_t key_bytes;           /* 8 or 32 */
    const uint8_t *ns;          /* namespace prefixed to every name (may be NULL when ns_len is 0) */
    size_t ns_len;
    int hash_tags;              /* names start with "{hex of all but the last key byte}" */
    int range_mode;             /* KVDM_REDIS_RANGE_* */
    int prefix_mode;            /* KVDM_REDIS_PREFIX_* */
    size_t pipeline;            /* commands per round trip; 0 = all of an operation's commands */
    const char *lua_sha;        /* SHA1 (40 hex) of lua_src, the prefix script */
    const char *lua_src;
    double connect_timeout_s, reply_timeout_s;
} kvdm_redis_opts;

/* Cumulative counters of a handle, as kvdm.index.redis_index counts them. */
typedef struct kvdm_redis_stats {
    uint64_t rtts;     /* round trips: client waits (one may span several cluster nodes) */
    uint64_t commands; /* commands sent */
    uint64_t keys;     /* keys named by the operations */
} kvdm_redis_stats;

typedef struct kvdm_redis kvdm_redis;

/* Connects to every node (DM_EIO naming the node when one cannot be reached). */
int kvdm_redis_open(const kvdm_redis_opts *opts, kvdm_redis **out, char *err, size_t errlen);
void kvdm_redis_close(kvdm_redis *r);
const char *kvdm_redis_error(const kvdm_redis *r);
void kvdm_redis_get_stats(const kvdm_redis *r, kvdm_redis_stats *out);
/* The handle's data path behind kvidx_ops (get, put, range, prefix, range_fetch). */
const kvidx_ops *kvdm_redis_ops(const kvdm_redis *r);
/* Words of counters kvdm_redis_drive reports per group: kvdm_redis_stats' fields, in order. */
size_t kvdm_redis_counters(void);
/* kvdm_drive (driver.h) over this handle: out->counters holds n_groups * kvdm_redis_counters(). */
int kvdm_redis_drive(kvdm_redis *r, const kvdm_stream *s, const int64_t *op_ids, const int32_t *groups, size_t n,
                     size_t n_groups, kvdm_drive_out *out, char *err, size_t errlen);
/* Redis Cluster's slot of a key name (CRC16 of the name, or of its first non-empty {hash tag}). */
uint16_t kvdm_redis_keyslot(const uint8_t *name, size_t len);

#endif /* KVDM_REDIS_CLIENT_H */
