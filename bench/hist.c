/* hist: a log-linear latency histogram, see hist.h. */
#include "hist.h"

#include <string.h>

void hist_init(Hist *h) {
        memset(h, 0, sizeof(*h));
        h->min = UINT64_MAX;
}

void hist_merge(Hist *to, const Hist *from) {
        if (from->count == 0)
                return;
        for (unsigned i = 0; i < HIST_BUCKETS; i++)
                to->buckets[i] += from->buckets[i];
        to->count += from->count;
        to->sum += from->sum;
        if (from->max > to->max)
                to->max = from->max;
        if (from->min < to->min)
                to->min = from->min;
}

/* bucket_low, bucket_width: the values bucket IDX holds are [low, low + width). */
static uint64_t bucket_low(unsigned idx) {
        unsigned k = idx >> HIST_SUB_BITS, sub = idx & (HIST_SUB_COUNT - 1);

        if (k == 0)
                return idx;
        return (uint64_t) (HIST_SUB_COUNT + sub) << (k - 1);
}

static uint64_t bucket_width(unsigned idx) {
        unsigned k = idx >> HIST_SUB_BITS;

        return k == 0 ? 1 : (uint64_t) 1 << (k - 1);
}

uint64_t hist_value_at(const Hist *h, uint32_t per_million) {
        uint64_t rank, seen = 0, v;

        if (h->count == 0)
                return 0;
        if (per_million >= 1000000)
                return h->max;
        /* The smallest value with at least RANK samples at or below it (RANK >= 1). */
        rank = (h->count * per_million + 999999) / 1000000;
        if (rank == 0)
                rank = 1;
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
                seen += h->buckets[i];
                if (seen < rank)
                        continue;
                v = bucket_width(i) == 1 ? bucket_low(i) : bucket_low(i) + bucket_width(i) / 2;
                if (v > h->max)
                        v = h->max;
                if (v < h->min)
                        v = h->min;
                return v;
        }
        return h->max;
}

uint64_t hist_mean(const Hist *h) {
        return h->count ? h->sum / h->count : 0;
}
