/* dm_internal.h - what the transport core shares with its backends (shm, verbs). Not for indexes. */
#ifndef KVDM_DM_INTERNAL_H
#define KVDM_DM_INTERNAL_H

#include "dm.h"

#include <stdarg.h>

enum dm_verb_op { DM_OP_READ = 0, DM_OP_WRITE = 1, DM_OP_CAS = 2, DM_OP_FAA = 3 };

typedef struct dm_verb {
    uint8_t op;
    uint16_t node;     /* memory-node id */
    uint32_t len;      /* READ/WRITE payload; 8 for atomics */
    uint64_t offset;   /* byte offset in the node's region */
    void *local;       /* READ destination */
    const void *src;   /* WRITE source */
    uint64_t compare;  /* CAS expected / FAA addend */
    uint64_t swap;     /* CAS desired */
    uint64_t *old_out; /* CAS/FAA result for the caller (may be NULL) */
    uint64_t result;   /* CAS/FAA old value, filled by the backend before wait() returns */
} dm_verb;

struct dm_node;

typedef struct dm_node_ops {
    const char *name;
    /* Post n verbs (all to this node, in order) and ring the doorbell. May complete them. */
    int (*post)(dm_ctx *ctx, struct dm_node *node, dm_verb *const *verbs, int n);
    /* Wait until everything posted by the last post() has completed. */
    int (*wait)(dm_ctx *ctx, struct dm_node *node);
    void (*detach)(struct dm_node *node);
} dm_node_ops;

typedef struct dm_node {
    unsigned id;
    uint64_t size;
    const dm_node_ops *ops;
    void *impl;
    /* allocator chunk held by this ctx on this node */
    uint64_t chunk_next, chunk_end;
} dm_node;

struct dm_ctx {
    dm_config cfg;
    dm_node *nodes[DM_MAX_NODES + 1];
    int num_nodes;
    dm_verb batch[DM_MAX_BATCH];
    int nbatch;
    dm_counters counters;
    /* the last doorbell submitted with dm_submit_streamed, while its answers are awaited */
    struct {
        int open, n, done;     /* verbs [0, done] known arrived */
        uint64_t start, ret;   /* wall clock when it was rung and when the backend returned */
        uint64_t charged;      /* virtual: stalls charged so far */
        uint64_t arrive[DM_MAX_BATCH]; /* modelled arrival of each answer, ns after the ring */
    } stream;
    uint64_t rng;            /* xorshift64 state (tear order) */
    char err[512];
};

/* Set ctx's error message and return code (so `return dm_fail(ctx, DM_EINVAL, ...)`). */
int dm_fail(dm_ctx *ctx, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

uint64_t dm_rand(dm_ctx *ctx);

/* Backend attach functions: fill *out (allocated with calloc) or fail with ctx error set. */
int dm_shm_attach(dm_ctx *ctx, const char *name, dm_node **out);
int dm_verbs_attach(dm_ctx *ctx, const char *uri, dm_node **out);

#endif
