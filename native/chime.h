/* chime.h - the chime index (B+tree internals, hash-bucketed leaves) for 8- and 32-byte keys.
 * One handle per client thread. Keys: k8 = uint64 array, k32 = 32-byte rows; values uint64.
 * Every call returns DM_OK or a dm_status with chime_kN_error(h) saying why. */
#ifndef KVDM_CHIME_H
#define KVDM_CHIME_H

#include <stddef.h>
#include <stdint.h>

#include "dm.h"
#include "kvidx.h"

#define KVDM_CHIME_DECLARE(W)                                                                               \
    typedef struct chime_##W chime_##W;                                                                     \
    int chime_##W##_open(dm_ctx *ctx, const kvidx_opts *opts, chime_##W **out, char *err, size_t errlen);  \
    void chime_##W##_close(chime_##W *h);                                                                   \
    const char *chime_##W##_error(const chime_##W *h);                                                      \
    int chime_##W##_get(chime_##W *h, const uint8_t *keys, size_t n, uint64_t *vals, uint8_t *found,        \
                        uint64_t *lat_ns);                                                                  \
    int chime_##W##_put(chime_##W *h, const uint8_t *keys, const uint64_t *vals, size_t n, uint64_t *lat_ns); \
    int chime_##W##_delete(chime_##W *h, const uint8_t *keys, size_t n, uint8_t *found, uint64_t *lat_ns);  \
    int chime_##W##_range(chime_##W *h, const uint8_t *lo, const uint8_t *hi, uint64_t limit, size_t *count); \
    void chime_##W##_range_fetch(const chime_##W *h, uint8_t *keys, uint64_t *vals);                        \
    int chime_##W##_range_count(chime_##W *h, const uint8_t *los, const uint8_t *his, size_t n,             \
                                int64_t *counts, uint64_t *lat_ns);                                         \
    void chime_##W##_stats(const chime_##W *h, kvidx_stats *out);                                           \
    void chime_##W##_reset_stats(chime_##W *h);                                                             \
    int chime_##W##_debug_lock(chime_##W *h, const uint8_t *key);

KVDM_CHIME_DECLARE(k8)
KVDM_CHIME_DECLARE(k32)

#endif
