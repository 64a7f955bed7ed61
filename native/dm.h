/*
 * dm.h - the one-sided-verbs transport: the only thing an index sees of the network.
 *
 * Model (what real RDMA promises, and no more):
 *   - remote memory lives on memory nodes; a global address (dm_gaddr) names a byte in one;
 *   - verbs: READ, WRITE (any length, 8-byte aligned address), CAS and FAA (8 bytes, 8-byte
 *     aligned); no masked atomics;
 *   - a READ or WRITE is atomic only per aligned 64-byte line: larger transfers may be seen
 *     half-applied, line by line, in any order (the shm backend can inject exactly that);
 *   - an 8-byte atomic is atomic only against other atomics: never WRITE a word you CAS;
 *   - verbs posted to one memory node execute in post order (one RC queue pair per node);
 *     verbs to different nodes have no order;
 *   - post several verbs, then dm_submit() once: that is one doorbell per node touched and
 *     one round trip (RTT). Results (READ data, CAS/FAA old values) are valid only after
 *     dm_submit() returns DM_OK. Local buffers may be any memory and must stay valid until
 *     then.
 *
 * A dm_ctx is one client thread's handle: its connections to the memory nodes, its open
 * batch, its counters and its last error. It is not thread-safe; use one per thread. There is
 * no global state: everything lives in the ctx.
 *
 * Every function returns DM_OK (0) or a negative dm_status; dm_last_error(ctx) then holds a
 * message naming what was wrong. A failed post leaves the batch as it was.
 */
#ifndef KVDM_DM_H
#define KVDM_DM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- global addresses ------------------------------------------------------------------ */

/* [ 8-bit memory-node id | 8 bits free for the caller | 48-bit byte offset ].
 * The transport ignores the middle byte (DM_GADDR_TAG), so an index may keep a version or
 * tag there in pointers it stores; dm_* calls mask it off. */
typedef uint64_t dm_gaddr;

#define DM_OFFSET_BITS 48
#define DM_OFFSET_MASK ((UINT64_C(1) << DM_OFFSET_BITS) - 1)
#define DM_GADDR(node, off) ((((uint64_t)(node)) << 56) | ((uint64_t)(off) & DM_OFFSET_MASK))
#define DM_GADDR_NODE(g) ((unsigned)((uint64_t)(g) >> 56))
#define DM_GADDR_OFFSET(g) ((uint64_t)(g) & DM_OFFSET_MASK)
#define DM_GADDR_TAG(g) ((unsigned)(((uint64_t)(g) >> DM_OFFSET_BITS) & 0xff))
#define DM_GADDR_WITH_TAG(g, tag) \
    (((uint64_t)(g) & ~(UINT64_C(0xff) << DM_OFFSET_BITS)) | ((uint64_t)((tag) & 0xff) << DM_OFFSET_BITS))
#define DM_NULL ((dm_gaddr)0) /* offset 0 is the node header: never a valid object */

#define DM_LINE 64            /* the unit of READ/WRITE atomicity */
#define DM_MAX_NODES 255
#define DM_MAX_BATCH 1024     /* verbs per dm_submit() (verbs posts it in chunks of the QP's send-queue depth) */
#define DM_MAX_XFER (1u << 24) /* bytes per READ/WRITE */

/* ---- memory-node region layout (shared by every backend and by memory-node servers) ---- */

#define DM_MAGIC UINT64_C(0x31304e4d4d44564b) /* "KVDMMN01" little-endian */
#define DM_HDR_MAGIC 0       /* u64 DM_MAGIC */
#define DM_HDR_SIZE_OFF 8    /* u64 region size in bytes */
#define DM_HDR_NODE_ID 16    /* u64 memory-node id */
#define DM_HDR_OWNER_PID 24  /* u64 pid of the serving process (shm), for crash clean-up */
#define DM_HDR_ALLOC 64      /* u64 bump pointer, advanced by FAA only (own line) */
#define DM_HDR_ROOTS 128     /* DM_NUM_ROOTS u64 root slots, CAS only, for indexes to find their roots */
#define DM_NUM_ROOTS 64
#define DM_HDR_BYTES 4096    /* first allocatable offset */

/* Address of root slot i on a node: an 8-byte word indexes CAS from 0 to publish a root. */
#define DM_ROOT_GADDR(node, i) DM_GADDR((node), DM_HDR_ROOTS + 8 * (uint64_t)(i))

/* ---- status codes ---------------------------------------------------------------------- */

typedef enum dm_status {
    DM_OK = 0,
    DM_EINVAL = -1,    /* bad argument (length 0, too large, unknown option, ...) */
    DM_ENOMEM = -2,    /* memory node full, or local allocation failed */
    DM_ENODE = -3,     /* unknown memory node id */
    DM_EALIGN = -4,    /* misaligned address */
    DM_ERANGE = -5,    /* address outside the node's region */
    DM_EBATCH = -6,    /* batch full (DM_MAX_BATCH) */
    DM_EIO = -7,       /* a verb failed to complete (verbs work-completion error, ...) */
    DM_EEXIST = -8,    /* region already exists */
    DM_ENOENT = -9,    /* region / node / device not found */
    DM_ENOSYS = -10,   /* transport not built in (e.g. verbs without rdma-core) */
    DM_ETIMEDOUT = -11,
    DM_EPROTO = -12,   /* malformed message from a peer, bad region header */
} dm_status;

/* ---- configuration --------------------------------------------------------------------- */

/* The modelled time of one doorbell (spin and virtual): rtt_us, plus the longer of its bytes
 * at gbps and its verbs at nic_mops (a NIC pipelines the two; the slower stage bounds it). */
typedef enum dm_latency_model {
    DM_LAT_NONE = 0,    /* raw speed */
    DM_LAT_SPIN = 1,    /* each submit busy-waits its modelled time from its start */
    DM_LAT_VIRTUAL = 2, /* no waiting: latencies take virtual_ns in place of exec_ns (below) */
} dm_latency_model;

typedef struct dm_config {
    int latency_model;   /* dm_latency_model; applies to the shm backend only */
    double rtt_us;       /* modelled round trip per submit */
    double gbps;         /* modelled link bandwidth (0 = infinite) */
    int tear;            /* shm: apply READ/WRITE > 64 B line by line in random order */
    uint64_t seed;       /* for tear order; 0 = seeded from the clock */
    uint32_t chunk_bytes;/* allocator: bytes taken from a node per FAA (0 = 1 MiB) */
    double nic_mops;     /* modelled NIC message rate, million verbs/s (0 = no per-verb term) */
} dm_config;

/* ---- counters ---------------------------------------------------------------------------- */

typedef struct dm_counters {
    uint64_t rtts;          /* dm_submit() calls that carried at least one verb */
    uint64_t doorbells;     /* per-node post lists rung (>= rtts when batches span nodes) */
    uint64_t reads, writes, cas, faa;
    uint64_t cas_failed;    /* CAS whose old value != expected */
    uint64_t bytes_read;    /* READ payload + 8 per CAS/FAA */
    uint64_t bytes_written; /* WRITE payload + 8 per CAS/FAA */
    uint64_t virtual_ns;    /* modelled time (latency model virtual or spin) */
    uint64_t torn_lines;    /* shm tear injection: READs/WRITEs applied out of line order */
    uint64_t exec_ns;       /* time inside doorbells, post to completion (spin's wait included),
                             * with a latency model on: on shm the emulated NIC's work, which
                             * `virtual` replaces by the modelled time (latency = wall - exec_ns
                             * + virtual_ns) */
} dm_counters;

typedef struct dm_ctx dm_ctx;

/* ---- context lifecycle ------------------------------------------------------------------- */

/* cfg may be NULL (defaults). On failure *out is NULL and err (if given) holds the reason. */
int dm_ctx_create(const dm_config *cfg, dm_ctx **out, char *err, size_t errlen);
void dm_ctx_destroy(dm_ctx *ctx);
/* The configuration the ctx was created with (defaults filled in): indexes read the modelled
 * RTT and bandwidth from it to choose between protocols. */
void dm_get_config(const dm_ctx *ctx, dm_config *out);
const char *dm_last_error(const dm_ctx *ctx);

/* Attach a memory node by URI and learn its id (from the region header):
 *   "shm:NAME"                 POSIX shared memory region NAME (see dm_shm_create)
 *   "verbs://HOST:PORT?dev=rxe0&gid=1&ib_port=1"   a verbs memory node (if built in)
 * Attaching two nodes with the same id is DM_EEXIST. */
int dm_attach(dm_ctx *ctx, const char *uri, unsigned *node_id_out);
/* Region size of an attached node (0 if unknown). */
uint64_t dm_node_size(const dm_ctx *ctx, unsigned node_id);
int dm_num_nodes(const dm_ctx *ctx);

/* Format an error message into a caller's buffer (NULL-safe) and return code: the same
 * reporting convention for code that fails before it has a ctx (creation, option checks). */
int dm_fail_buf(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- verbs --------------------------------------------------------------------------------- */

int dm_read(dm_ctx *ctx, void *local, dm_gaddr remote, uint32_t len);
int dm_write(dm_ctx *ctx, dm_gaddr remote, const void *local, uint32_t len);
int dm_cas(dm_ctx *ctx, dm_gaddr remote, uint64_t expected, uint64_t desired, uint64_t *old_out);
int dm_faa(dm_ctx *ctx, dm_gaddr remote, uint64_t add, uint64_t *old_out);
/* Ring the doorbell(s) and wait for every posted verb: one RTT. An empty batch is a no-op. */
int dm_submit(dm_ctx *ctx);
/* dm_submit for a client that reads the answers in post order as they arrive: with a latency
 * model the doorbell is charged answer by answer, so the client's work on early answers
 * overlaps the NIC still delivering later ones (a real client polls its CQ the same way).
 * Before touching verb i's answer (0 = the first verb of the batch) call dm_await(ctx, i);
 * dm_await_all() before the op returns. The next submit and dm_get_counters await the rest.
 * Without a latency model (and on verbs, whose backend returns when every answer is in)
 * dm_await costs nothing. */
int dm_submit_streamed(dm_ctx *ctx);
void dm_await(dm_ctx *ctx, int verb);
void dm_await_all(dm_ctx *ctx);
/* Drop posted verbs that were not submitted. */
void dm_discard(dm_ctx *ctx);
int dm_batch_len(const dm_ctx *ctx);

/* ---- remote allocation (bump allocator; memory nodes stay passive) ------------------------ */

/* Allocate len bytes on node, 64-byte aligned (align may be a larger power of two).
 * The ctx takes chunk_bytes at a time from the node's DM_HDR_ALLOC word with one FAA
 * (one RTT, counted); allocations inside a chunk are local. DM_ENOMEM when the node is full,
 * with a message naming node, size and what is left. There is no free: space is reclaimed by
 * destroying the region (as Sherman and CHIME). */
int dm_alloc(dm_ctx *ctx, unsigned node_id, uint64_t len, uint64_t align, dm_gaddr *out);

/* ---- counters ------------------------------------------------------------------------------- */

void dm_get_counters(dm_ctx *ctx, dm_counters *out);
void dm_reset_counters(dm_ctx *ctx);

/* ---- shm memory nodes (the region's owner side) -------------------------------------------- */

/* Create POSIX shm region NAME (mode 0600, exclusive) of size bytes, write its header, and
 * leave it mapped nowhere. Fails with DM_EEXIST if it exists, DM_ENOMEM if size exceeds what
 * /dev/shm or physical memory can hold, DM_EINVAL for a bad name or size. */
int dm_shm_create(const char *name, uint64_t size, unsigned node_id, uint64_t owner_pid,
                  char *err, size_t errlen);
/* Remove region NAME (its memory is freed once every client has detached). */
int dm_shm_destroy(const char *name, char *err, size_t errlen);
/* Read NAME's header: size, node id, owner pid (any pointer may be NULL). */
int dm_shm_info(const char *name, uint64_t *size, unsigned *node_id, uint64_t *owner_pid,
                char *err, size_t errlen);

/* ---- native benchmark loop (no Python per verb) ---------------------------------------------- */

typedef enum dm_bench_op { DM_BENCH_READ = 0, DM_BENCH_WRITE = 1, DM_BENCH_CAS = 2, DM_BENCH_FAA = 3 } dm_bench_op;

/* Issue iters verbs of one kind, batch per submit, at pseudo-random aligned addresses in
 * [base, base + span) (span a multiple of len rounded to DM_LINE). Returns elapsed ns via
 * *elapsed_ns; counters are updated as for any verb. */
int dm_bench_loop(dm_ctx *ctx, int op, dm_gaddr base, uint64_t span, uint32_t len,
                  uint32_t batch, uint64_t iters, uint64_t seed, uint64_t *elapsed_ns);

/* Monotonic clock in ns (the one latency numbers are measured with). */
uint64_t dm_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif /* KVDM_DM_H */
