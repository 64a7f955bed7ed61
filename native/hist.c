/* hist.c - see hist.h. */
#include "hist.h"

#include <math.h>
#include <string.h>

void kv_hist_reset(kv_hist *h) {
    memset(h, 0, sizeof *h);
    h->min_ns = UINT64_MAX;
}

void kv_hist_record(kv_hist *h, uint64_t ns) {
    h->counts[kv_hist_index(ns)]++;
    h->total++;
    h->sum_ns += ns;
    if (ns < h->min_ns) h->min_ns = ns;
    if (ns > h->max_ns) h->max_ns = ns;
}

void kv_hist_merge(kv_hist *dst, const kv_hist *src) {
    for (unsigned i = 0; i < KV_HIST_BUCKETS; i++) dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum_ns += src->sum_ns;
    if (src->min_ns < dst->min_ns) dst->min_ns = src->min_ns;
    if (src->max_ns > dst->max_ns) dst->max_ns = src->max_ns;
}

double kv_hist_bucket_mid(unsigned i) {
    if (i < KV_HIST_SUB) return (double)i;
    unsigned shift = i / KV_HIST_SUB - 1;
    double lo = (double)((uint64_t)(i % KV_HIST_SUB + KV_HIST_SUB) << shift);
    return lo + ((double)((uint64_t)1 << shift) - 1.0) / 2.0;
}

double kv_hist_percentile(const kv_hist *h, double q) {
    if (h->total == 0) return 0.0;
    if (q < 0) q = 0;
    if (q > 100) q = 100;
    uint64_t rank = (uint64_t)ceil(q / 100.0 * (double)h->total);
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < KV_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) return kv_hist_bucket_mid(i);
    }
    return (double)h->max_ns;
}
