/* iptable: per-source state: live connections (for max_connections_per_ip) and a token
 * bucket (for the connection rate limit). A source is a client address, or its network
 * block once masked with ip_key_mask(). An entry lives while it has connections or its
 * bucket is refilling, so the table holds only sources seen lately.
 * Not locked: the server serialises every call under its own mutex. */
#pragma once

#include <stdint.h>

#include "addr.h"

/* A bound on the sources tracked for their rate bucket alone (a source with connections is
 * bounded by max_connections); when it is reached and none of the few chains a new source
 * looks through has an entry to forget, the rate limit fails open (admits) rather than refuse
 * everyone, and the server says so. */
#define IPTABLE_RATE_ENTRIES_MAX 65536

typedef struct IpTable IpTable;

int iptable_new(IpTable **ret);
IpTable *iptable_free(IpTable *t);

unsigned iptable_count(const IpTable *t, const IpKey *key);
/* iptable_inc: returns 0 or -ENOMEM. */
int iptable_inc(IpTable *t, const IpKey *key);
void iptable_dec(IpTable *t, const IpKey *key, uint64_t now_usec);
size_t iptable_size(const IpTable *t);

/* iptable_set_rate: the connection rate from NOW_USEC on: buckets of BURST tokens refilling at
 * RATE a second (0: no limit; a new table has none). A bucket drawn from keeps what the old
 * rate gave back by then, capped at the new burst, and refills at the new rate, so a reload
 * that lowers the rate does not hand a drained source a full bucket when the old rate would
 * have refilled it. Walks every entry: for a start or a reload. */
void iptable_set_rate(IpTable *t, unsigned rate, unsigned burst, uint64_t now_usec);

/* iptable_take_token: one connection from KEY's bucket. Returns 1 (take it; also with no rate
 * set), 0 (over the rate), -ENOSPC (table full: the caller decides), -ENOMEM. */
int iptable_take_token(IpTable *t, const IpKey *key, uint64_t now_usec);

/* iptable_expire: drops the entries with no connection whose bucket has refilled. */
void iptable_expire(IpTable *t, uint64_t now_usec);
