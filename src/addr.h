/* addr: socket addresses as text and as keys, IPv4-mapped IPv6 shown as plain IPv4. */
#pragma once

#include <stdint.h>
#include <sys/socket.h>

/* "255.255.255.255:65535" or "[ffff:...:ffff%ifname]:65535" fits. */
#define ADDR_STR_MAX 80

/* IpKey: a client's address with the port dropped; IPv4 stored IPv4-mapped, so that a
 * client reaching a dual-stack socket counts as the same client as over plain IPv4. */
typedef struct IpKey {
        uint8_t bytes[16];
} IpKey;

/* addr_format: "a.b.c.d:port" or "[v6]:port" into BUF (ADDR_STR_MAX); returns BUF. */
const char *addr_format(const struct sockaddr *sa, char *buf, size_t size);

/* ip_key_from_sockaddr: returns 0, or -EAFNOSUPPORT for non-IP families. */
int ip_key_from_sockaddr(const struct sockaddr *sa, IpKey *ret);
