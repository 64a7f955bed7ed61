/* hist.h - mergeable log-linear latency histograms (HDR-style), shared by C and numpy.
 *
 * Values are nanoseconds. Below 2^SUB_BITS every value has its own bucket; above, each
 * power-of-two range is cut into 2^SUB_BITS equal buckets, so a bucket's midpoint is within
 * 2^-(SUB_BITS+1) = 0.39% of any value in it. Merging is adding counts; percentiles come from
 * merged counts, never from averaging percentiles. experiments/metrics.py implements the same
 * bucket function in numpy: keep the two in step. */
#ifndef KVDM_HIST_H
#define KVDM_HIST_H

#include <stdint.h>

#define KV_HIST_SUB_BITS 7
#define KV_HIST_SUB (1u << KV_HIST_SUB_BITS)
#define KV_HIST_MAX_SHIFT 34                         /* top bucket covers up to 2^41 ns (~36 min) */
#define KV_HIST_BUCKETS ((KV_HIST_MAX_SHIFT + 2) * KV_HIST_SUB)

typedef struct kv_hist {
    uint64_t counts[KV_HIST_BUCKETS];
    uint64_t total;
    uint64_t sum_ns;
    uint64_t min_ns;
    uint64_t max_ns;
} kv_hist;

static inline unsigned kv_hist_index(uint64_t ns) {
    if (ns < KV_HIST_SUB) return (unsigned)ns;
    unsigned shift = (unsigned)(63 - __builtin_clzll(ns)) - KV_HIST_SUB_BITS;
    if (shift > KV_HIST_MAX_SHIFT) return KV_HIST_BUCKETS - 1;
    return (shift + 1) * KV_HIST_SUB + (unsigned)((ns >> shift) - KV_HIST_SUB);
}

void kv_hist_reset(kv_hist *h);
void kv_hist_record(kv_hist *h, uint64_t ns);
void kv_hist_merge(kv_hist *dst, const kv_hist *src);
/* Nearest-rank percentile (q in [0, 100]) as the midpoint of its bucket, in ns; 0 if empty. */
double kv_hist_percentile(const kv_hist *h, double q);
/* Midpoint of bucket i in ns. */
double kv_hist_bucket_mid(unsigned i);

#endif
