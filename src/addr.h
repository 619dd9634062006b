/* addr: socket addresses as text and as keys (IPv4-mapped IPv6 shown as plain IPv4), address
 * prefixes, and the grammar of a `listen` entry. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "255.255.255.255:65535" or "[ffff:...:ffff%ifname]:65535" fits. */
#define ADDR_STR_MAX 80

/* IpKey: a client's address with the port dropped; IPv4 stored IPv4-mapped, so that a
 * client reaching a dual-stack socket counts as the same client as over plain IPv4. */
typedef struct IpKey {
        uint8_t bytes[16];
        /* ip_key_mask()'s prefix, of the 128 bits (0: a whole address): part of the key, so
         * that a network counted under one prefix is not found under another (127.0.0.0/8 and
         * 127.0.0.0/24 mask to the same bytes, and per_ip_ipv4_prefix may change on reload). */
        uint8_t prefix;
} IpKey;

/* addr_format: "a.b.c.d:port" or "[v6]:port" into BUF (ADDR_STR_MAX); returns BUF. */
const char *addr_format(const struct sockaddr *sa, char *buf, size_t size);
/* addr_strip_port: the address alone of what addr_format() wrote ("a.b.c.d", "v6"). */
const char *addr_strip_port(const char *formatted, char *buf, size_t size);

/* addr_same_endpoint: whether A and B are one IP address and port (and, link-local, on one
 * interface), an IPv4 address and its IPv4-mapped IPv6 form alike; false for any other family. */
bool addr_same_endpoint(const struct sockaddr *a, const struct sockaddr *b);
/* addr_port: SA's port in host order (0 for a family without one); addr_is_wildcard: whether SA
 * is 0.0.0.0 or ::, every address of its family. */
unsigned addr_port(const struct sockaddr *sa);
bool addr_is_wildcard(const struct sockaddr *sa);

/* ip_key_from_sockaddr: returns 0, or -EAFNOSUPPORT for non-IP families. */
int ip_key_from_sockaddr(const struct sockaddr *sa, IpKey *ret);
bool ip_key_is_ipv4(const IpKey *k);

/* ip_key_mask: keeps the first V4_PREFIX bits of an IPv4 address, or V6_PREFIX bits of an IPv6
 * one, so that clients of one network block count as one source (OpenSSH's
 * PerSourceNetBlockSize): one host cannot dodge per-source limits by rotating addresses. */
void ip_key_mask(IpKey *k, unsigned v4_prefix, unsigned v6_prefix);

/* Cidr: an address prefix, IPv4 held IPv4-mapped (prefix length counted in that space). */
typedef struct Cidr {
        IpKey net;
        unsigned bits; /* 0..128 */
        bool ipv6_only; /* written as IPv6, outside ::ffff:0:0/96: IPv4 clients never match */
} Cidr;

/* cidr_parse: "192.0.2.0/24", "2001:db8::/32", or a single address ("192.0.2.7", "::1").
 * Host bits beyond the prefix are an error (a typo more often than not). A prefix written in
 * IPv6 matches IPv6 clients only ("::/0" is every IPv6 client, not everyone), unless it is
 * written inside ::ffff:0:0/96, where IPv4 clients live. Returns 0, or
 * -EINVAL with a reason in ERR. */
int cidr_parse(const char *text, Cidr *ret, char *err, size_t err_size);
bool cidr_match(const Cidr *c, const IpKey *k);
/* cidr_format: back to the text cidr_parse() takes. */
const char *cidr_format(const Cidr *c, char *buf, size_t size);

/* One `listen` entry as written: an address (host, a literal address or a name, and an optional
 * port), or the FileDescriptorName= of sockets systemd passes (never bound by hellod itself). */
typedef struct ListenSpec {
        char *host;          /* "0.0.0.0", "::", "127.0.0.1", "localhost", ... never brackets; NULL for a name */
        uint16_t port;       /* 0: use Conf.port */
        char *fdname;        /* a socket unit's FileDescriptorName=; NULL for an address */
        bool proxy_protocol; /* clients arrive through a balancer that sends a PROXY header */
        char *at;            /* "FILE:LINE" of the entry, for errors at the start; NULL: built in */
} ListenSpec;

/* listen_spec_parse: "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 literal; a
 * link-local one always with its interface ("fe80::1%eth0", "[fe80::1%eth0]:7000"), which
 * stays in the host. Returns 0, -EINVAL with a reason in ERR (RET untouched), or -ENOMEM. */
int listen_spec_parse(const char *text, ListenSpec *ret, char *err, size_t err_size);
void listen_spec_done(ListenSpec *s);
/* listen_host_ipv6: whether a ListenSpec's HOST is an IPv6 literal (its interface, if any,
 * left aside), and which: its 16 bytes into RET. */
bool listen_host_ipv6(const char *host, void *ret);
/* listen_specs_free: done on each of N specs, then the array; NULL-safe. */
void listen_specs_free(ListenSpec *specs, size_t n);
