/* iptable: a chained hash of client source → live connections and rate bucket. */
#include "iptable.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* A power of two; chains stay short for tens of thousands of distinct clients. */
#define IPTABLE_BUCKETS 4096

/* How many chains a new source looks through for a refilled entry when the table is full:
 * about 16 entries each when it is, so the cost of a source is bounded (the server's lock is
 * held) and the whole table is looked through every 512 new sources. */
#define IPTABLE_SWEEP_CHAINS 8

/* A token, in the bucket's unit: a microtoken, so that RATE tokens a second are RATE units a
 * microsecond, with no division to round away what a fast retry gained. */
#define TOKEN 1000000u

typedef struct IpEntry {
        IpKey key;
        unsigned count;    /* live connections */
        uint64_t tokens;   /* rate bucket, in microtokens (TOKEN) */
        uint64_t refilled; /* usec of the last refill */
        uint64_t full_at;  /* usec when the bucket is full again; 0: full (or never used) */
        struct IpEntry *next;
} IpEntry;

struct IpTable {
        IpEntry *buckets[IPTABLE_BUCKETS];
        size_t size;
        size_t live;      /* entries with connections (bounded by max_connections) */
        size_t sweep;     /* the next chain a full table looks through */
        uint64_t seed;    /* per-table, so that clients cannot aim at one chain */
        unsigned rate;    /* tokens a second; 0: no limit (iptable_set_rate) */
        unsigned burst;   /* tokens a full bucket holds */
};

static size_t bucket_of(const IpTable *t, const IpKey *key) {
        /* FNV-1a over the seed, the 16 address bytes and the prefix. */
        uint64_t h = 0xcbf29ce484222325ULL ^ t->seed;

        for (size_t i = 0; i < sizeof(key->bytes); i++) {
                h ^= key->bytes[i];
                h *= 0x100000001b3ULL;
        }
        h ^= key->prefix;
        h *= 0x100000001b3ULL;
        return (size_t) (h ^ (h >> 32)) & (IPTABLE_BUCKETS - 1);
}

int iptable_new(IpTable **ret) {
        IpTable *t = calloc(1, sizeof(*t));

        if (!t)
                return -ENOMEM;
        /* A seed clients cannot guess, so that they cannot aim many sources at one bucket.
         * GRND_NONBLOCK: never wait at early boot; the address is a weak fallback then. */
        if (getrandom(&t->seed, sizeof(t->seed), GRND_NONBLOCK) != (ssize_t) sizeof(t->seed))
                t->seed = (uint64_t) (uintptr_t) t ^ 0x9e3779b97f4a7c15u;
        *ret = t;
        return 0;
}

IpTable *iptable_free(IpTable *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < IPTABLE_BUCKETS; i++)
                for (IpEntry *e = t->buckets[i], *next; e; e = next) {
                        next = e->next;
                        free(e);
                }
        free(t);
        return NULL;
}

static IpEntry **find(IpTable *t, const IpKey *key) {
        IpEntry **p = &t->buckets[bucket_of(t, key)];

        while (*p && memcmp(&(*p)->key, key, sizeof(*key)) != 0)
                p = &(*p)->next;
        return p;
}

static IpEntry *add(IpTable *t, IpEntry **slot, const IpKey *key) {
        IpEntry *e = calloc(1, sizeof(*e));

        if (!e)
                return NULL;
        e->key = *key;
        *slot = e;
        t->size++;
        return e;
}

static bool idle(const IpEntry *e, uint64_t now) {
        return e->count == 0 && now >= e->full_at;
}

/* drop_if_idle: removes *SLOT when nothing keeps it. */
static void drop_if_idle(IpTable *t, IpEntry **slot, uint64_t now) {
        IpEntry *e = *slot;

        if (!idle(e, now))
                return;
        *slot = e->next;
        free(e);
        t->size--;
}

unsigned iptable_count(const IpTable *t, const IpKey *key) {
        IpEntry **p = find((IpTable *) t, key);

        return *p ? (*p)->count : 0;
}

int iptable_inc(IpTable *t, const IpKey *key) {
        IpEntry **p = find(t, key);

        if (!*p && !add(t, p, key))
                return -ENOMEM;
        if ((*p)->count++ == 0)
                t->live++;
        return 0;
}

void iptable_dec(IpTable *t, const IpKey *key, uint64_t now) {
        IpEntry **p = find(t, key);

        if (!*p || (*p)->count == 0)
                return;
        if (--(*p)->count == 0)
                t->live--;
        drop_if_idle(t, p, now);
}

size_t iptable_size(const IpTable *t) {
        return t->size;
}

/* rate_entries: the entries kept by their bucket alone: the ones IPTABLE_RATE_ENTRIES_MAX
 * bounds (those with connections are bounded by max_connections). */
static size_t rate_entries(const IpTable *t) {
        return t->size - t->live;
}

/* expire_chain: drops the idle entries of chain I. */
static void expire_chain(IpTable *t, size_t i, uint64_t now) {
        for (IpEntry **p = &t->buckets[i]; *p;) {
                if (idle(*p, now))
                        drop_if_idle(t, p, now);
                else
                        p = &(*p)->next;
        }
}

/* sweep: drops the idle entries of the next IPTABLE_SWEEP_CHAINS chains. */
static void sweep(IpTable *t, uint64_t now) {
        for (size_t n = 0; n < IPTABLE_SWEEP_CHAINS; n++, t->sweep = (t->sweep + 1) & (IPTABLE_BUCKETS - 1))
                expire_chain(t, t->sweep, now);
}

/* refill: E's bucket brought up to NOW at RATE, capped at BURST tokens. E's full_at was
 * computed at RATE (iptable_set_rate keeps it so), which bounds the gain below the bucket's
 * size: at most 1e6 × 1e6 microtokens. */
static void refill(IpEntry *e, unsigned rate, unsigned burst, uint64_t now) {
        const uint64_t full = (uint64_t) burst * TOKEN;

        if (e->full_at == 0 || now >= e->full_at) {
                e->tokens = full; /* never drawn from, or refilled by now */
        } else {
                /* rate tokens a second: rate microtokens a microsecond, exactly */
                uint64_t filled = e->tokens + (now - e->refilled) * rate;
                e->tokens = filled < full ? filled : full;
        }
        e->refilled = now;
}

/* schedule_full: when E's bucket, as of NOW, is full again at RATE: the entry must stay until
 * then. */
static void schedule_full(IpEntry *e, unsigned rate, unsigned burst, uint64_t now) {
        const uint64_t full = (uint64_t) burst * TOKEN;

        e->full_at = now + (full - e->tokens + rate - 1) / rate;
}

void iptable_set_rate(IpTable *t, unsigned rate, unsigned burst, uint64_t now) {
        if (rate == t->rate && burst == t->burst)
                return;
        for (size_t i = 0; i < IPTABLE_BUCKETS; i++)
                for (IpEntry **p = &t->buckets[i]; *p;) {
                        IpEntry *e = *p;

                        if (e->full_at != 0 && now >= e->full_at)
                                e->full_at = 0; /* full: full at the new burst too */
                        if (e->full_at != 0) { /* drawn from: only ever under a rate */
                                refill(e, t->rate, t->burst, now); /* what the old rate gave back */
                                if (rate == 0) {
                                        e->full_at = 0; /* no limit: the bucket is forgotten */
                                } else {
                                        const uint64_t full = (uint64_t) burst * TOKEN;
                                        if (e->tokens > full)
                                                e->tokens = full;
                                        schedule_full(e, rate, burst, now);
                                }
                        }
                        if (idle(e, now))
                                drop_if_idle(t, p, now);
                        else
                                p = &e->next;
                }
        t->rate = rate;
        t->burst = burst;
}

int iptable_take_token(IpTable *t, const IpKey *key, uint64_t now) {
        IpEntry **p = find(t, key);
        IpEntry *e = *p;

        if (t->rate == 0)
                return 1;
        if (!e) {
                if (rate_entries(t) >= IPTABLE_RATE_ENTRIES_MAX) {
                        sweep(t, now);
                        if (rate_entries(t) >= IPTABLE_RATE_ENTRIES_MAX)
                                return -ENOSPC;
                        p = find(t, key);
                }
                e = add(t, p, key);
                if (!e)
                        return -ENOMEM;
        }
        refill(e, t->rate, t->burst, now);

        int allowed = e->tokens >= TOKEN;
        if (allowed)
                e->tokens -= TOKEN;
        schedule_full(e, t->rate, t->burst, now);
        return allowed;
}

void iptable_expire(IpTable *t, uint64_t now) {
        for (size_t i = 0; i < IPTABLE_BUCKETS; i++)
                expire_chain(t, i, now);
}
