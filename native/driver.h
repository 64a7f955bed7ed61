/*
 * driver.h - the replay engine's measuring loop in C. It runs operations of an operation
 * stream (the arrays of kvdm.traces.mapping.OpStream) against one index handle (a native index,
 * or the Redis client of redis_client.h) and times each operation with nothing of Python inside it, so µs-scale latencies and closed-loop
 * throughputs are the index's, not the harness's.
 */
#ifndef KVDM_DRIVER_H
#define KVDM_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "dm.h"
#include "kvidx.h"

/* Operation kinds, as in kvdm.traces.mapping. */
enum { KVDM_OP_GET = 0, KVDM_OP_RANGE = 1, KVDM_OP_PREFIX = 2, KVDM_OP_INSERT = 3 };

/* An operation stream's arrays, borrowed for the call. */
typedef struct kvdm_stream {
    const uint8_t *kind;        /* [n_ops] */
    const int64_t *key_offsets; /* [n_ops + 1]: keys of op j are keys[key_offsets[j] .. key_offsets[j+1]) */
    const uint8_t *keys;        /* [n_keys * key_bytes] */
    const int64_t *key_block;   /* [n_keys]: the value an insert stores with each key */
    const uint8_t *range_lo;    /* [n_ops * key_bytes]: inclusive bounds of range ops */
    const uint8_t *range_hi;
    const int64_t *range_limit; /* [n_ops] or NULL: a range op returns at most this many entries (0 = all) */
    size_t n_ops, n_keys, key_bytes;
} kvdm_stream;

/* What a run measured. counters: per group, the summed per-op deltas of the transport's
 * dm_counters followed by the index's kvidx_stats (kvdm_drive_counters() values each). */
typedef struct kvdm_drive_out {
    int64_t *latency_ns; /* [n]: wall time of the op (add_virtual_ns: with modelled network time, see kvdm_counter_src) */
    int64_t *hits;       /* [n]: get/range: the op's keys found; prefix: matched length; insert: -1 */
    uint64_t *counters;  /* [n_groups * kvdm_drive_counters()] */
    size_t done;         /* ops completed: n, unless an error stopped the run there */
} kvdm_drive_out;

size_t kvdm_drive_counters(void);

/* Run ops op_ids[0..n) in order; op i's counters go to group groups[i] (< n_groups). Returns
 * DM_OK, DM_EINVAL for a malformed stream (nothing run), or the index's error (out->done ops
 * ran); err says why. */
int kvdm_drive(const kvidx_ops *ix, void *h, dm_ctx *ctx, const kvdm_stream *s, const int64_t *op_ids,
               const int32_t *groups, size_t n, size_t n_groups, int add_virtual_ns, kvdm_drive_out *out,
               char *err, size_t errlen);

/* Where the loop reads a backend's cumulative counters before and after each op: read(src, v)
 * fills v[0..n) (uint64 words); word virtual_at holds modelled time and word exec_at the time
 * spent executing doorbells (with add_virtual_ns an op's latency is its wall time minus its
 * exec_at delta plus its virtual_at delta: latency model `virtual`, see dm.h), or both are >= n
 * when there are none. kvdm_drive reads the transport's
 * dm_counters and then the index's kvidx_stats; a backend without a transport (the Redis
 * client, redis_client.h) gives its own. */
typedef struct kvdm_counter_src {
    void (*read)(const void *src, uint64_t *v);
    const void *src;
    size_t n, virtual_at, exec_at;
} kvdm_counter_src;

/* kvdm_drive over any backend behind kvidx_ops (its stats member is not used): out->counters
 * holds n_groups * cs->n words. */
int kvdm_drive_with(const kvidx_ops *ix, void *h, const kvdm_counter_src *cs, const kvdm_stream *s,
                    const int64_t *op_ids, const int32_t *groups, size_t n, size_t n_groups, int add_virtual_ns,
                    kvdm_drive_out *out, char *err, size_t errlen);

#endif /* KVDM_DRIVER_H */
