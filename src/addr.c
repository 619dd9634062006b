/* addr: socket address formatting and per-client keys. */
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *addr_format(const struct sockaddr *sa, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN];

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
                snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
        } else if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
                        inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
                        snprintf(buf, size, "%s:%u", host, ntohs(in6->sin6_port));
                } else {
                        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                        snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
                }
        } else
                snprintf(buf, size, "(family %d)", sa->sa_family);
        return buf;
}

/* ::ffff:0:0/96, where IPv4 addresses live in IPv6 space. */
static const uint8_t v4_mapped_prefix[12] = { [10] = 0xff, [11] = 0xff };

int ip_key_from_sockaddr(const struct sockaddr *sa, IpKey *ret) {
        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                memcpy(ret->bytes, v4_mapped_prefix, sizeof(v4_mapped_prefix));
                memcpy(ret->bytes + 12, &in->sin_addr, 4);
                return 0;
        }
        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                memcpy(ret->bytes, &in6->sin6_addr, 16);
                return 0;
        }
        return -EAFNOSUPPORT;
}

bool ip_key_is_ipv4(const IpKey *k) {
        return memcmp(k->bytes, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0;
}

/* clear_after: zeroes every bit of K past the first BITS (of 128). */
static void clear_after(IpKey *k, unsigned bits) {
        for (unsigned i = 0; i < 16; i++) {
                unsigned first = i * 8;
                if (bits >= first + 8)
                        continue;
                k->bytes[i] &= bits <= first ? 0 : (uint8_t) (0xff << (8 - (bits - first)));
        }
}

void ip_key_mask(IpKey *k, unsigned v4_prefix, unsigned v6_prefix) {
        clear_after(k, ip_key_is_ipv4(k) ? 96 + v4_prefix : v6_prefix);
}

int cidr_parse(const char *text, Cidr *ret, char *err, size_t err_size) {
        char host[INET6_ADDRSTRLEN + 1];
        const char *slash = strchr(text, '/');
        size_t host_len = slash ? (size_t) (slash - text) : strlen(text);
        unsigned long bits;
        bool v4;
        Cidr c = { 0 };

        if (host_len == 0 || host_len >= sizeof(host)) {
                snprintf(err, err_size, "not an address or address/prefix");
                return -EINVAL;
        }
        memcpy(host, text, host_len);
        host[host_len] = '\0';
        if (inet_pton(AF_INET, host, c.net.bytes + 12) == 1) {
                memcpy(c.net.bytes, v4_mapped_prefix, sizeof(v4_mapped_prefix));
                v4 = true;
        } else if (inet_pton(AF_INET6, host, c.net.bytes) == 1)
                v4 = false;
        else {
                snprintf(err, err_size, "not an IPv4 or IPv6 address");
                return -EINVAL;
        }

        bits = v4 ? 32 : 128;
        if (slash) {
                char *end;
                const char *digits = slash + 1;

                errno = 0;
                bits = digits[0] >= '0' && digits[0] <= '9' ? strtoul(digits, &end, 10) : ULONG_MAX;
                if (bits == ULONG_MAX || errno != 0 || *end != '\0' || bits > (v4 ? 32u : 128u)) {
                        snprintf(err, err_size, "prefix length must be 0..%u", v4 ? 32u : 128u);
                        return -EINVAL;
                }
        }
        c.bits = (unsigned) bits + (v4 ? 96 : 0);

        IpKey masked = c.net;
        clear_after(&masked, c.bits);
        if (memcmp(&masked, &c.net, sizeof(masked)) != 0) {
                char net[INET6_ADDRSTRLEN];
                Cidr fixed = { .net = masked, .bits = c.bits };
                snprintf(err, err_size, "has host bits set beyond /%lu (did you mean %s?)", bits,
                         cidr_format(&fixed, net, sizeof(net)));
                return -EINVAL;
        }
        *ret = c;
        return 0;
}

bool cidr_match(const Cidr *c, const IpKey *k) {
        IpKey masked = *k;

        clear_after(&masked, c->bits);
        return memcmp(&masked, &c->net, sizeof(masked)) == 0;
}

const char *cidr_format(const Cidr *c, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN];
        bool v4 = ip_key_is_ipv4(&c->net) && c->bits >= 96;

        if (v4)
                inet_ntop(AF_INET, c->net.bytes + 12, host, sizeof(host));
        else
                inet_ntop(AF_INET6, c->net.bytes, host, sizeof(host));
        snprintf(buf, size, "%s/%u", host, v4 ? c->bits - 96 : c->bits);
        return buf;
}
