/* hist: a log-linear latency histogram (HdrHistogram's layout), fixed size, no allocation.
 *
 * Values are nanoseconds. Below 256 ns every value has its own bucket; above, each power of
 * two is split into 128 equal buckets, so a bucket is at most 1/128 of its values wide: a
 * reported value is within 0.4 % of the true one (the bucket's midpoint is reported). Values
 * up to 2^41 ns (about 36 minutes) are kept apart; anything longer lands in the last bucket,
 * and the exact maximum is kept separately. Recording is an index computation and an
 * increment; percentiles walk the buckets once, so millions of samples are never sorted. */
#pragma once

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB_COUNT (1u << HIST_SUB_BITS)
#define HIST_MAX_BITS 41
#define HIST_BUCKETS ((HIST_MAX_BITS - HIST_SUB_BITS + 1) * HIST_SUB_COUNT)

typedef struct Hist {
        uint64_t count;
        uint64_t sum; /* for the mean; 2^64 ns is 584 years */
        uint64_t min, max;
        uint64_t buckets[HIST_BUCKETS];
} Hist;

void hist_init(Hist *h);

static inline unsigned hist_index(uint64_t v) {
        unsigned msb, idx;

        if (v < 2 * HIST_SUB_COUNT)
                return (unsigned) v;
        msb = 63u - (unsigned) __builtin_clzll(v);
        if (msb >= HIST_MAX_BITS)
                return HIST_BUCKETS - 1;
        idx = ((msb - HIST_SUB_BITS + 1) << HIST_SUB_BITS) +
              (unsigned) (v >> (msb - HIST_SUB_BITS)) - HIST_SUB_COUNT;
        return idx;
}

static inline void hist_record(Hist *h, uint64_t v) {
        h->buckets[hist_index(v)]++;
        h->count++;
        h->sum += v;
        if (v > h->max)
                h->max = v;
        if (v < h->min)
                h->min = v;
}

/* hist_merge: adds FROM's samples to TO. */
void hist_merge(Hist *to, const Hist *from);

/* hist_value_at: the value (ns) at or below which PER_MILLION / 10^6 of the samples lie,
 * i.e. hist_value_at(h, 990000) is p99; 0 for an empty histogram. Never above the maximum. */
uint64_t hist_value_at(const Hist *h, uint32_t per_million);

/* hist_mean: the exact mean in ns, 0 for an empty histogram. */
uint64_t hist_mean(const Hist *h);
