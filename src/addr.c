/* addr: socket address formatting and per-client keys. */
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
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

int ip_key_from_sockaddr(const struct sockaddr *sa, IpKey *ret) {
        static const uint8_t v4_mapped_prefix[12] = { [10] = 0xff, [11] = 0xff };

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
