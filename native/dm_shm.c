/* dm_shm.c - shm backend of dm.h: each memory node is a POSIX shared-memory region.
 *
 * Object layout: [0, size) is the region clients address; after it a table of 32-bit
 * sequence numbers (seqlocks), one per aligned block of SEQ_BLOCK bytes (hashed by block index),
 * makes every aligned 64-byte line copy atomic, as an RNIC's DMA is. A READ or WRITE copies
 * each block it covers under that block's seqlock: the part within one block is applied at
 * once, larger transfers stay non-atomic across blocks, and with tear injection every line is
 * applied on its own, in random order. Atomics use __atomic on the word itself, so they are
 * atomic against other atomics only (a WRITE racing a CAS on the same word is as undefined as
 * on real RDMA). */
#define _GNU_SOURCE
#include "dm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <sched.h>

#define SHM_MIN_SIZE (64u * 1024)
#define SEQ_MAX_ENTRIES (1u << 20)
#define SEQ_STUCK_NS 1000000000ull /* a line lock held this long belongs to a crashed writer */
/* Bytes one seqlock guards: a 1 KB node write takes two seqlocks, not one per line, and the
 * seqlocks a run touches fit the CPU cache (a leaf's 16 line locks were a cache miss each). */
#define SEQ_BLOCK 1024u
_Static_assert(SEQ_BLOCK % DM_LINE == 0, "a seqlock guards whole lines");

typedef struct shm_node {
    uint8_t *base;
    uint32_t *seq;
    uint32_t seq_mask;
    size_t map_len;
} shm_node;

static uint32_t seq_entries(uint64_t size) {
    uint64_t lines = size / DM_LINE, n = 1;
    while (n < lines && n < SEQ_MAX_ENTRIES) n <<= 1;
    return (uint32_t)n;
}

static size_t object_len(uint64_t size) { return (size_t)size + (size_t)seq_entries(size) * sizeof(uint32_t); }

static int check_name(const char *name, char *path, size_t pathlen, char *err, size_t errlen) {
    if (!name) return dm_fail_buf(err, errlen, DM_EINVAL, "memory-node name is NULL");
    if (name[0] == '/') name++;
    size_t n = strlen(name);
    if (n == 0 || n > 200)
        return dm_fail_buf(err, errlen, DM_EINVAL, "memory-node name must be 1..200 characters (got %zu)", n);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return dm_fail_buf(err, errlen, DM_EINVAL,
                               "memory-node name '%s' has '%c': use letters, digits, '.', '_' and '-'", name, c);
    }
    snprintf(path, pathlen, "/%s", name);
    return DM_OK;
}

int dm_shm_create(const char *name, uint64_t size, unsigned node_id, uint64_t owner_pid, char *err, size_t errlen) {
    char path[256];
    int rc = check_name(name, path, sizeof path, err, errlen);
    if (rc) return rc;
    if (node_id > DM_MAX_NODES)
        return dm_fail_buf(err, errlen, DM_EINVAL, "memory-node id %u out of range 0..%d", node_id, DM_MAX_NODES);
    if (size < SHM_MIN_SIZE || size % 4096 || size > DM_OFFSET_MASK)
        return dm_fail_buf(err, errlen, DM_EINVAL,
                           "region size %llu must be a multiple of 4096 between %u bytes and 2^48",
                           (unsigned long long)size, SHM_MIN_SIZE);
    size_t len = object_len(size);
    struct statvfs vfs;
    if (statvfs("/dev/shm", &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
        if (len > avail)
            return dm_fail_buf(err, errlen, DM_ENOMEM,
                               "region '%s' of %llu bytes does not fit: /dev/shm has %llu bytes free",
                               path + 1, (unsigned long long)size, (unsigned long long)avail);
    }
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && psz > 0 && len > (uint64_t)pages * (uint64_t)psz)
        return dm_fail_buf(err, errlen, DM_ENOMEM,
                           "region '%s' of %llu bytes is larger than physical memory (%llu bytes)", path + 1,
                           (unsigned long long)size, (unsigned long long)pages * (unsigned long long)psz);
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return dm_fail_buf(err, errlen, DM_EEXIST,
                               "memory node '%s' already exists (another kvdm memnode is serving it, or one crashed: "
                               "see `kvdm memnode clean`)", path + 1);
        return dm_fail_buf(err, errlen, DM_EIO, "shm_open('%s'): %s", path, strerror(errno));
    }
    /* Allocate every page now, as a NIC's memory registration pins the region: no client pays a
     * page fault mid-run that a real memory node never takes, and a /dev/shm that cannot hold the
     * region fails here with a message instead of a SIGBUS when a page is first touched. */
    if (ftruncate(fd, (off_t)len) != 0 || (errno = posix_fallocate(fd, 0, (off_t)len)) != 0) {
        int e = errno;
        close(fd);
        shm_unlink(path);
        return dm_fail_buf(err, errlen, e == ENOSPC || e == EFBIG ? DM_ENOMEM : DM_EIO,
                           "sizing region '%s' to %zu bytes: %s", path + 1, len, strerror(e));
    }
    uint8_t *base = mmap(NULL, DM_HDR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        shm_unlink(path);
        return dm_fail_buf(err, errlen, DM_EIO, "mmap of region '%s': %s", path + 1, strerror(errno));
    }
    *(uint64_t *)(base + DM_HDR_SIZE_OFF) = size;
    *(uint64_t *)(base + DM_HDR_NODE_ID) = node_id;
    *(uint64_t *)(base + DM_HDR_OWNER_PID) = owner_pid;
    *(uint64_t *)(base + DM_HDR_ALLOC) = DM_HDR_BYTES;
    __atomic_store_n((uint64_t *)(base + DM_HDR_MAGIC), DM_MAGIC, __ATOMIC_RELEASE); /* header complete */
    munmap(base, DM_HDR_BYTES);
    return DM_OK;
}

int dm_shm_destroy(const char *name, char *err, size_t errlen) {
    char path[256];
    int rc = check_name(name, path, sizeof path, err, errlen);
    if (rc) return rc;
    if (shm_unlink(path) != 0)
        return dm_fail_buf(err, errlen, errno == ENOENT ? DM_ENOENT : DM_EIO, "removing memory node '%s': %s",
                           path + 1, strerror(errno));
    return DM_OK;
}

/* Map NAME and check its header; on success *out holds the mapping and *size the region size. */
static int map_region(const char *name, shm_node *out, uint64_t *size, char *err, size_t errlen) {
    char path[256];
    int rc = check_name(name, path, sizeof path, err, errlen);
    if (rc) return rc;
    int fd = shm_open(path, O_RDWR, 0);
    if (fd < 0)
        return dm_fail_buf(err, errlen, errno == ENOENT ? DM_ENOENT : DM_EIO,
                           "cannot attach memory node '%s': %s%s", path + 1, strerror(errno),
                           errno == ENOENT ? " (start one with `kvdm memnode serve`)" : "");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)DM_HDR_BYTES) {
        close(fd);
        return dm_fail_buf(err, errlen, DM_EPROTO, "memory node '%s' is not a kvdm region (too small)", path + 1);
    }
    uint64_t *hdr = mmap(NULL, DM_HDR_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (hdr == MAP_FAILED) {
        close(fd);
        return dm_fail_buf(err, errlen, DM_EIO, "mmap of '%s': %s", path + 1, strerror(errno));
    }
    uint64_t magic = __atomic_load_n(&hdr[DM_HDR_MAGIC / 8], __ATOMIC_ACQUIRE), sz = hdr[DM_HDR_SIZE_OFF / 8];
    munmap(hdr, DM_HDR_BYTES);
    if (magic != DM_MAGIC || sz < SHM_MIN_SIZE || (uint64_t)st.st_size != object_len(sz)) {
        close(fd);
        return dm_fail_buf(err, errlen, DM_EPROTO, "memory node '%s' has no valid kvdm header (magic %016llx)",
                           path + 1, (unsigned long long)magic);
    }
    size_t len = object_len(sz);
    /* map every page now (the region's pages exist since its creation): no minor fault mid-run */
    uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED) return dm_fail_buf(err, errlen, DM_EIO, "mmap of '%s': %s", path + 1, strerror(errno));
    out->base = base;
    out->seq = (uint32_t *)(base + sz);
    out->seq_mask = seq_entries(sz) - 1;
    out->map_len = len;
    *size = sz;
    return DM_OK;
}

int dm_shm_info(const char *name, uint64_t *size, unsigned *node_id, uint64_t *owner_pid, char *err, size_t errlen) {
    shm_node m;
    uint64_t sz;
    int rc = map_region(name, &m, &sz, err, errlen);
    if (rc) return rc;
    if (size) *size = sz;
    if (node_id) *node_id = (unsigned)*(uint64_t *)(m.base + DM_HDR_NODE_ID);
    if (owner_pid) *owner_pid = *(uint64_t *)(m.base + DM_HDR_OWNER_PID);
    munmap(m.base, m.map_len);
    return DM_OK;
}

/* ---- line-atomic copies ---- */

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

/* Wait while a line is being written; a writer that died mid-copy leaves the count odd, so
 * after SEQ_STUCK_NS the waiter repairs it (the line holds a torn copy, as after a real NIC
 * dropped a half-done DMA; indexes detect it with their versions). */
static uint32_t wait_even(uint32_t *seq) {
    uint32_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
    if (!(s & 1)) return s;
    uint64_t t0 = dm_now_ns();
    for (unsigned spins = 0;; spins++) {
        s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(s & 1)) return s;
        if (spins > 1000) {
            sched_yield();
            if (dm_now_ns() - t0 > SEQ_STUCK_NS && __atomic_compare_exchange_n(seq, &s, s + 1, 0, __ATOMIC_ACQ_REL,
                                                                               __ATOMIC_ACQUIRE))
                return s + 1;
        } else {
            cpu_relax();
        }
    }
}

static inline uint32_t *seq_of(const shm_node *m, uint64_t off) { return &m->seq[(off / SEQ_BLOCK) & m->seq_mask]; }

/* Copy n bytes at off (inside one seqlock block) out of the region, atomically. */
static void read_piece(shm_node *m, uint64_t off, uint8_t *dst, uint32_t n) {
    uint32_t *seq = seq_of(m, off);
    for (;;) {
        uint32_t s1 = wait_even(seq);
        if (n == DM_LINE) memcpy(dst, m->base + off, DM_LINE); /* constant sizes: inlined, no libc call */
        else if (n == 2 * DM_LINE) memcpy(dst, m->base + off, 2 * DM_LINE);
        else memcpy(dst, m->base + off, n);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seq, __ATOMIC_RELAXED) == s1) return;
    }
}

/* Copy n bytes (inside one seqlock block) into the region at off, atomically. */
static void write_piece(shm_node *m, uint64_t off, const uint8_t *src, uint32_t n) {
    uint32_t *seq = seq_of(m, off);
    for (;;) {
        uint32_t s = wait_even(seq);
        if (__atomic_compare_exchange_n(seq, &s, s + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            if (n == DM_LINE) memcpy(m->base + off, src, DM_LINE);
            else memcpy(m->base + off, src, n);
            __atomic_store_n(seq, s + 2, __ATOMIC_RELEASE);
            return;
        }
        cpu_relax();
    }
}

static uint64_t gcd64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Copy [off, off+len) seqlock block by block; with tear on, line by line in a random order with
 * a pause between lines, so a concurrent reader really can see a mix of old and new lines. */
static void copy_lines(dm_ctx *ctx, shm_node *m, int is_write, uint64_t off, uint8_t *buf, uint32_t len) {
    uint64_t first = off / DM_LINE, last = (off + len - 1) / DM_LINE, nlines = last - first + 1;
    if (!ctx->cfg.tear || nlines == 1) {
        for (uint64_t lo = off, end = off + len; lo < end;) {
            uint64_t hi = (lo / SEQ_BLOCK + 1) * SEQ_BLOCK < end ? (lo / SEQ_BLOCK + 1) * SEQ_BLOCK : end;
            if (is_write) write_piece(m, lo, buf + (lo - off), (uint32_t)(hi - lo));
            else read_piece(m, lo, buf + (lo - off), (uint32_t)(hi - lo));
            lo = hi;
        }
        return;
    }
    uint64_t add = dm_rand(ctx) % nlines, mult;
    do mult = dm_rand(ctx) % nlines; while (mult == 0 || gcd64(mult, nlines) != 1);
    ctx->counters.torn_lines++;
    for (uint64_t i = 0; i < nlines; i++) {
        uint64_t line = first + (mult * i + add) % nlines;
        uint64_t lo = line * DM_LINE > off ? line * DM_LINE : off;
        uint64_t hi = (line + 1) * DM_LINE < off + len ? (line + 1) * DM_LINE : off + len;
        uint8_t *p = buf + (lo - off);
        if (is_write) write_piece(m, lo, p, (uint32_t)(hi - lo));
        else read_piece(m, lo, p, (uint32_t)(hi - lo));
        for (int k = 0; k < 64; k++) cpu_relax();
    }
}

/* A load whose value nobody uses: it starts the line's cache miss and is kept in the load queue
 * until the line arrives. Prefetch instructions are dropped once the core's miss buffers are
 * full, which a doorbell's 64-256 verbs do at once: with them 2/3 of a batch still missed when
 * its verb ran (random 128 B reads over 40 MB: 100 ns/verb with prefetches, ~35 with loads). */
static inline void touch(const void *p) { (void)*(const volatile uint8_t *)p; }

#define PREFETCH_LINES 16 /* a node's lines: a 1 KB READ or WRITE misses on all of them at once */

/* Start the cache misses of a verb's lines (up to PREFETCH_LINES) and its seqlocks. shm_post does so for
 * a whole doorbell before it executes any verb, so the doorbell's misses overlap as a NIC's DMAs
 * do, instead of each verb (a locked CAS above all) waiting for its own. */
static inline void prefetch_verb(const shm_node *m, const dm_verb *v) {
    uint64_t line = v->offset / DM_LINE;
    if (v->op == DM_OP_CAS || v->op == DM_OP_FAA) {
        touch(m->base + v->offset);
        return;
    }
    const uint8_t *p = m->base + line * DM_LINE;
    touch(p);
    touch(seq_of(m, v->offset));
    if (v->offset % DM_LINE + v->len <= DM_LINE) return;
    touch(p + DM_LINE);
    if (v->offset % DM_LINE + v->len > 2 * DM_LINE) { /* beyond a lookup's two buckets */
        uint64_t n = (v->offset % DM_LINE + v->len + DM_LINE - 1) / DM_LINE;
        for (uint64_t l = 2; l < n && l < PREFETCH_LINES; l++) touch(p + l * DM_LINE);
    }
    if ((v->offset + v->len - 1) / SEQ_BLOCK > v->offset / SEQ_BLOCK) touch(seq_of(m, v->offset + v->len - 1));
}

static int shm_post(dm_ctx *ctx, dm_node *node, dm_verb *const *verbs, int n) {
    shm_node *m = node->impl;
    for (int i = 0; i < n; i++) prefetch_verb(m, verbs[i]);
    for (int i = 0; i < n; i++) {
        dm_verb *v = verbs[i];
        uint64_t *word = (uint64_t *)(m->base + v->offset);
        switch (v->op) {
        case DM_OP_READ: copy_lines(ctx, m, 0, v->offset, v->local, v->len); break;
        case DM_OP_WRITE: copy_lines(ctx, m, 1, v->offset, (uint8_t *)v->src, v->len); break;
        case DM_OP_CAS: {
            uint64_t expected = v->compare;
            __atomic_compare_exchange_n(word, &expected, v->swap, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            v->result = expected; /* the old value, whether or not the swap happened */
            break;
        }
        case DM_OP_FAA: v->result = __atomic_fetch_add(word, v->compare, __ATOMIC_SEQ_CST); break;
        }
    }
    return DM_OK;
}

static int shm_wait(dm_ctx *ctx, dm_node *node) {
    (void)ctx;
    (void)node;
    return DM_OK; /* post() completed everything */
}

static void shm_detach(dm_node *node) {
    shm_node *m = node->impl;
    munmap(m->base, m->map_len);
    free(m);
    free(node);
}

static const dm_node_ops shm_ops = {"shm", shm_post, shm_wait, shm_detach};

int dm_shm_attach(dm_ctx *ctx, const char *name, dm_node **out) {
    shm_node *m = calloc(1, sizeof *m);
    dm_node *node = calloc(1, sizeof *node);
    if (!m || !node) {
        free(m);
        free(node);
        return dm_fail(ctx, DM_ENOMEM, "out of local memory attaching '%s'", name);
    }
    uint64_t size;
    int rc = map_region(name, m, &size, ctx->err, sizeof ctx->err);
    if (rc) {
        free(m);
        free(node);
        return rc;
    }
    node->id = (unsigned)*(uint64_t *)(m->base + DM_HDR_NODE_ID);
    node->size = size;
    node->ops = &shm_ops;
    node->impl = m;
    *out = node;
    return DM_OK;
}
