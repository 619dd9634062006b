/* addr: socket address formatting, per-client keys, prefixes and the `listen` entry grammar. */
#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"

/* put_decimal: V's digits at P; returns the end. */
static char *put_decimal(char *p, unsigned v) {
        char digits[10];
        size_t n = 0;

        do
                digits[n++] = (char) ('0' + v % 10u);
        while ((v /= 10u) != 0);
        while (n > 0)
                *p++ = digits[--n];
        return p;
}

/* put_ipv4: "a.b.c.d" of the four bytes at A, at P; returns the end. */
static char *put_ipv4(char *p, const uint8_t *a) {
        for (int i = 0; i < 4; i++) {
                if (i > 0)
                        *p++ = '.';
                p = put_decimal(p, a[i]);
        }
        return p;
}

/* put_scope: "%eth0" (or "%3", the interface gone) after a link-local address, at P; returns
 * the end. The interface is part of such an address: fe80::1 is on every link. */
static char *put_scope(char *p, const struct sockaddr_in6 *in6) {
        if (!IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr) || in6->sin6_scope_id == 0)
                return p;
        *p++ = '%';
        if (if_indextoname(in6->sin6_scope_id, p))
                return p + strlen(p);
        return put_decimal(p, in6->sin6_scope_id);
}

/* Every accepted connection is named, so IPv4 (and v4-mapped) text is built by hand: the
 * libc formatters (inet_ntop prints IPv4 through sprintf) cost a churn session 1% of its
 * CPU. IPv6 keeps inet_ntop, for its zero compression. Cut at SIZE like snprintf. */
_Static_assert(ADDR_STR_MAX >= INET6_ADDRSTRLEN + IF_NAMESIZE + sizeof("[%]:65535"), "room for the longest address");

const char *addr_format(const struct sockaddr *sa, char *buf, size_t size) {
        char text[ADDR_STR_MAX], *end = text;
        unsigned port = 0;

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                end = put_ipv4(end, (const uint8_t *) &in->sin_addr);
                port = ntohs(in->sin_port);
        } else if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
                        end = put_ipv4(end, &in6->sin6_addr.s6_addr[12]);
                else {
                        *end++ = '[';
                        inet_ntop(AF_INET6, &in6->sin6_addr, end, INET6_ADDRSTRLEN);
                        end += strlen(end);
                        end = put_scope(end, in6);
                        *end++ = ']';
                }
                port = ntohs(in6->sin6_port);
        } else {
                snprintf(buf, size, "(family %d)", sa->sa_family);
                return buf;
        }
        *end++ = ':';
        end = put_decimal(end, port);
        if (size > 0) {
                size_t n = (size_t) (end - text) < size ? (size_t) (end - text) : size - 1;
                memcpy(buf, text, n);
                buf[n] = '\0';
        }
        return buf;
}

const char *addr_strip_port(const char *formatted, char *buf, size_t size) {
        const char *colon = strrchr(formatted, ':');
        size_t n = colon ? (size_t) (colon - formatted) : strlen(formatted);

        if (formatted[0] == '[' && n >= 2 && formatted[n - 1] == ']')
                snprintf(buf, size, "%.*s", (int) (n - 2), formatted + 1);
        else
                snprintf(buf, size, "%.*s", (int) n, formatted);
        return buf;
}

/* ::ffff:0:0/96, where IPv4 addresses live in IPv6 space. */
static const uint8_t v4_mapped_prefix[12] = { [10] = 0xff, [11] = 0xff };

int ip_key_from_sockaddr(const struct sockaddr *sa, IpKey *ret) {
        ret->prefix = 0;
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

unsigned addr_port(const struct sockaddr *sa) {
        if (sa->sa_family == AF_INET)
                return ntohs(((const struct sockaddr_in *) sa)->sin_port);
        if (sa->sa_family == AF_INET6)
                return ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
        return 0;
}

bool addr_is_wildcard(const struct sockaddr *sa) {
        if (sa->sa_family == AF_INET)
                return ((const struct sockaddr_in *) sa)->sin_addr.s_addr == htonl(INADDR_ANY);
        if (sa->sa_family == AF_INET6)
                return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *) sa)->sin6_addr);
        return false;
}

/* scope_of: the interface a link-local IPv6 address is on, 0 for any other address. */
static uint32_t scope_of(const struct sockaddr *sa) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

        return sa->sa_family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr) ? in6->sin6_scope_id : 0;
}

bool addr_same_endpoint(const struct sockaddr *a, const struct sockaddr *b) {
        IpKey ka, kb;

        if (ip_key_from_sockaddr(a, &ka) < 0 || ip_key_from_sockaddr(b, &kb) < 0)
                return false;
        return memcmp(&ka, &kb, sizeof(ka)) == 0 && addr_port(a) == addr_port(b) && scope_of(a) == scope_of(b);
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
        unsigned bits = ip_key_is_ipv4(k) ? 96 + v4_prefix : v6_prefix;

        clear_after(k, bits);
        k->prefix = (uint8_t) bits;
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
        c.ipv6_only = !v4 && !(c.bits >= 96 && ip_key_is_ipv4(&c.net));

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

        if (c->ipv6_only && ip_key_is_ipv4(k))
                return false;

        clear_after(&masked, c->bits);
        return memcmp(masked.bytes, c->net.bytes, sizeof(masked.bytes)) == 0;
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

/* ---- listen specs ---- */

static int reason(char *err, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
static int reason(char *err, size_t size, const char *format, ...) {
        va_list ap;

        if (err && size > 0) {
                err[0] = '\0';
                va_start(ap, format);
                (void) vsnprintf(err, size, format, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* port_parse: strictly decimal digits, 1..65535; no sign, no blanks, nothing after. */
static int port_parse(const char *s, uint16_t *ret, char *err, size_t size) {
        unsigned long v = 0;

        if (!*s)
                return reason(err, size, "empty port after ':'");
        for (const char *p = s; *p; p++) {
                if (!is_ascii_digit(*p))
                        return reason(err, size, "port is not a decimal number");
                if (v <= 65535)
                        v = v * 10 + (unsigned long) (*p - '0');
        }
        if (v < 1 || v > 65535)
                return reason(err, size, "port must be between 1 and 65535");
        *ret = (uint16_t) v;
        return 0;
}

/* host_name_check: what a DNS name can look like (RFC 1123); it is resolved later, not here. */
static int host_name_check(const char *h, char *err, size_t size) {
        size_t label = 0;
        const char *p;

        if (strlen(h) > 253)
                return reason(err, size, "host name is longer than 253 characters");
        for (p = h; *p; p++) {
                if (*p == '.') {
                        if (label == 0)
                                return reason(err, size, "host name has an empty label");
                        if (p[-1] == '-')
                                return reason(err, size, "host name label ends with '-'");
                        label = 0;
                        continue;
                }
                if (!is_ascii_alpha(*p) && !is_ascii_digit(*p) && *p != '-')
                        return reason(err, size, "not an IP address, and not a host name "
                                                 "(letters, digits, '-' and '.' only)");
                if (*p == '-' && label == 0)
                        return reason(err, size, "host name label starts with '-'");
                if (++label > 63)
                        return reason(err, size, "host name label is longer than 63 characters");
        }
        if (label == 0)
                return reason(err, size, "host name has an empty label");
        if (p[-1] == '-')
                return reason(err, size, "host name label ends with '-'");
        return 0;
}

/* host_check: HOST as written outside brackets: an IPv4 literal or a DNS name. */
static int host_check(const char *h, char *err, size_t size) {
        struct in_addr a4;

        if (!*h)
                return reason(err, size, "empty host");
        if (strcmp(h, "*") == 0)
                return reason(err, size,
                              "'*' is not accepted; to listen on all addresses, leave out 'listen' "
                              "or list \"0.0.0.0\" and \"::\"");
        /* getaddrinfo() would happily read "1.2.3" or "123" as an IPv4 address; we do not. */
        if (strspn(h, "0123456789.") == strlen(h)) {
                if (inet_pton(AF_INET, h, &a4) != 1)
                        return reason(err, size, "not a valid IPv4 address");
                return 0;
        }
        /* Nor "0x7f.1" (127.0.0.1) or any other form inet_aton() reads, as getaddrinfo() does. */
        if (inet_aton(h, &a4) != 0)
                return reason(err, size, "not a valid IPv4 address (write it as a.b.c.d)");
        return host_name_check(h, err, size);
}

/* bare_ipv6_check: "::1:9999" is a valid address (::0.1.153.153), but hardly what anyone means:
 * when the text before the last ':' is an address by itself and the rest is a decimal port,
 * make the writer say which one with brackets. */
static int bare_ipv6_check(const char *host, char *err, size_t size) {
        const char *colon = strrchr(host, ':');
        struct in6_addr a6;
        char head[INET6_ADDRSTRLEN + 1];
        size_t n = (size_t) (colon - host);

        if (!colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5 ||
            n == 0 || n >= sizeof(head))
                return 0;
        memcpy(head, host, n);
        head[n] = '\0';
        if (inet_pton(AF_INET6, head, &a6) != 1)
                return 0;
        return reason(err, size, "ambiguous: write \"[%s]:%s\" for port %s on %s, or \"[%s]\" for that "
                                 "address", head, colon + 1, colon + 1, head, host);
}

/* never_listenable: why no host can listen on the address literal HOST (its interface, if
 * any, taken off: SCOPED), or NULL. */
static const char *never_listenable(const char *host, bool scoped) {
        struct in6_addr a6;
        struct in_addr a4;

        if (inet_pton(AF_INET6, host, &a6) == 1) {
                if (IN6_IS_ADDR_LINKLOCAL(&a6) && !scoped)
                        return "a link-local address is bound on one interface: write it with the interface's "
                               "name (fe80::1%eth0), or listen on \"::\" or a global address";
                if (!IN6_IS_ADDR_LINKLOCAL(&a6) && scoped)
                        return "an interface (%NAME) goes with a link-local address (fe80::/10) only";
                if (IN6_IS_ADDR_MULTICAST(&a6))
                        return "a multicast address takes no TCP connections";
        } else if (inet_pton(AF_INET, host, &a4) == 1 && IN_MULTICAST(ntohl(a4.s_addr))) {
                return "a multicast address takes no TCP connections";
        }
        return NULL;
}

/* interface_name_check: NAME as Linux takes an interface's name (dev_valid_name()): 1 to 15
 * bytes, no '/', ':' or white space, not "." or ".."; and as systemd does (ifname_valid(),
 * which the generator's ListenStream= lines meet), printable ASCII only. So no byte of it is
 * left to escape where an error repeats the address (listener.c, cannot_listen). */
static int interface_name_check(const char *name, char *err, size_t size) {
        size_t n = strlen(name);
        bool printable = true;

        for (const unsigned char *c = (const unsigned char *) name; *c; c++)
                printable = printable && *c > 0x20 && *c < 0x7f;
        if (n == 0 || n >= IF_NAMESIZE || !printable || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
            strpbrk(name, "/:%"))
                /* The caller quotes the whole address, escaped: NAME may hold any byte. */
                return reason(err, size, "what follows '%%' is not an interface name (1 to %d printable ASCII "
                              "characters, no '/' or ':')", IF_NAMESIZE - 1);
        return 0;
}

bool listen_host_ipv6(const char *host, void *ret) {
        const char *scope = strchr(host, '%');
        char text[INET6_ADDRSTRLEN];
        size_t n = scope ? (size_t) (scope - host) : strlen(host);

        if (n >= sizeof(text))
                return false;
        memcpy(text, host, n);
        text[n] = '\0';
        return inet_pton(AF_INET6, text, ret) == 1;
}

int listen_spec_parse(const char *text, ListenSpec *ret, char *err, size_t err_size) {
        struct in6_addr a6;
        const char *host_start, *host_end, *port_text = NULL, *first_colon;
        uint16_t port = 0;
        char *host;
        int r;

        if (!text || !*text)
                return reason(err, err_size, "empty address");
        /* Longest sane form: "[" 253-byte name "]:65535"; refuse early instead of copying megabytes. */
        if (strlen(text) > 253 + 8)
                return reason(err, err_size, "too long");

        if (text[0] == '[') {
                const char *close = strchr(text, ']');

                if (!close)
                        return reason(err, err_size, "missing ']' after IPv6 address");
                host_start = text + 1;
                host_end = close;
                if (close[1] == ':')
                        port_text = close + 2;
                else if (close[1] != '\0')
                        return reason(err, err_size,
                                      "unexpected text after ']' (expected ':PORT' or nothing)");
        } else {
                host_start = text;
                first_colon = strchr(text, ':');
                if (first_colon && !strchr(first_colon + 1, ':')) {
                        host_end = first_colon;
                        port_text = first_colon + 1;
                } else
                        /* No colon, or two or more: a bare IPv6 literal, which takes no port. */
                        host_end = text + strlen(text);
        }

        host = strndup(host_start, (size_t) (host_end - host_start));
        if (!host) {
                (void) reason(err, err_size, "out of memory");
                return -ENOMEM;
        }
        /* "fe80::1%eth0": the interface is checked here and put back once the address is. */
        char *scope = strchr(host, ':') ? strchr(host, '%') : NULL;
        if (scope)
                *scope++ = '\0';

        if (text[0] == '[') {
                if (inet_pton(AF_INET6, host, &a6) != 1)
                        r = reason(err, err_size,
                                   "brackets are only for IPv6 addresses, and this is not one");
                else
                        r = 0;
        } else if (strchr(host, ':')) {
                if (inet_pton(AF_INET6, host, &a6) != 1)
                        r = reason(err, err_size,
                                   "not a valid IPv6 address (write \"[ADDRESS]:PORT\" to give a port)");
                else
                        r = bare_ipv6_check(host, err, err_size);
        } else
                r = host_check(host, err, err_size);
        if (r >= 0 && strchr(host, ':') && IN6_IS_ADDR_V4MAPPED(&a6)) {
                char v4[INET_ADDRSTRLEN];

                inet_ntop(AF_INET, &a6.s6_addr[12], v4, sizeof(v4));
                r = reason(err, err_size,
                           "an IPv4-mapped IPv6 address cannot be listened on (hellod's IPv6 sockets are "
                           "IPv6-only); write \"%s%s%s\" instead",
                           v4, port_text ? ":" : "", port_text ? port_text : "");
        }
        const char *never = r >= 0 ? never_listenable(host, scope != NULL) : NULL;
        if (never)
                r = reason(err, err_size, "%s", never);
        if (r >= 0 && scope)
                r = interface_name_check(scope, err, err_size);
        if (r >= 0 && scope)
                scope[-1] = '%';
        if (r >= 0 && port_text)
                r = port_parse(port_text, &port, err, err_size);
        if (r < 0) {
                free(host);
                return r;
        }

        *ret = (ListenSpec) { .host = host, .port = port };
        return 0;
}

void listen_spec_done(ListenSpec *s) {
        if (!s)
                return;
        free(s->host);
        free(s->fdname);
        free(s->at);
        *s = (ListenSpec) { .host = NULL };
}

void listen_specs_free(ListenSpec *specs, size_t n) {
        for (size_t i = 0; i < n; i++)
                listen_spec_done(&specs[i]);
        free(specs);
}
