/* iptable: a chained hash of client address → live connections. */
#include "iptable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A power of two; chains stay short for tens of thousands of distinct clients. */
#define IPTABLE_BUCKETS 4096

typedef struct IpEntry {
        IpKey key;
        unsigned count;
        struct IpEntry *next;
} IpEntry;

struct IpTable {
        IpEntry *buckets[IPTABLE_BUCKETS];
        size_t size;
        uint64_t seed; /* per-table, so that clients cannot aim at one chain */
};

static size_t bucket_of(const IpTable *t, const IpKey *key) {
        /* FNV-1a over the seed and the 16 address bytes. */
        uint64_t h = 0xcbf29ce484222325ULL ^ t->seed;

        for (size_t i = 0; i < sizeof(key->bytes); i++) {
                h ^= key->bytes[i];
                h *= 0x100000001b3ULL;
        }
        return (size_t) (h ^ (h >> 32)) & (IPTABLE_BUCKETS - 1);
}

int iptable_new(IpTable **ret) {
        IpTable *t = calloc(1, sizeof(*t));

        if (!t)
                return -ENOMEM;
        t->seed = ((uint64_t) random() << 32) ^ (uint64_t) (uintptr_t) t;
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

unsigned iptable_count(const IpTable *t, const IpKey *key) {
        IpEntry **p = find((IpTable *) t, key);

        return *p ? (*p)->count : 0;
}

int iptable_inc(IpTable *t, const IpKey *key) {
        IpEntry **p = find(t, key);

        if (!*p) {
                IpEntry *e = calloc(1, sizeof(*e));
                if (!e)
                        return -ENOMEM;
                e->key = *key;
                *p = e;
                t->size++;
        }
        (*p)->count++;
        return 0;
}

void iptable_dec(IpTable *t, const IpKey *key) {
        IpEntry **p = find(t, key);
        IpEntry *e = *p;

        if (!e)
                return;
        if (--e->count == 0) {
                *p = e->next;
                free(e);
                t->size--;
        }
}

size_t iptable_size(const IpTable *t) {
        return t->size;
}
