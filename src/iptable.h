/* iptable: live connection counts per client address, for max_connections_per_ip.
 * Not locked: the server serialises every call under its own mutex. */
#pragma once

#include "addr.h"

typedef struct IpTable IpTable;

int iptable_new(IpTable **ret);
IpTable *iptable_free(IpTable *t);

unsigned iptable_count(const IpTable *t, const IpKey *key);
/* iptable_inc: returns 0 or -ENOMEM. */
int iptable_inc(IpTable *t, const IpKey *key);
/* iptable_dec: the entry goes away at zero, so the table only holds live clients. */
void iptable_dec(IpTable *t, const IpKey *key);
size_t iptable_size(const IpTable *t);
