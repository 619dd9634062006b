/* proxyproto: PROXY protocol v1 and v2 headers, parsed strictly to the specification. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* The v2 signature: a CRLF pair, a NUL and "QUIT", which no text protocol parses. */
static const uint8_t v2_signature[12] = {
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};
static const char v1_prefix[] = "PROXY ";
#define V1_PREFIX_LEN (sizeof(v1_prefix) - 1)

/* v2 address families (high nibble of byte 14) and transports (low nibble), per the spec. */
enum {
        V2_AF_UNSPEC = 0x0,
        V2_AF_INET = 0x1,
        V2_AF_INET6 = 0x2,
        V2_AF_UNIX = 0x3,
        V2_TRANSPORT_UNSPEC = 0x0,
        V2_TRANSPORT_STREAM = 0x1,
        V2_TRANSPORT_DGRAM = 0x2,
        V2_COMMAND_LOCAL = 0x0,
        V2_COMMAND_PROXY = 0x1,
};

#define NOT_PROXY "not a PROXY protocol header"

static size_t min_size(size_t a, size_t b) {
        return a < b ? a : b;
}

static ProxyStatus invalid(const char **ret_reason, const char *reason) {
        if (ret_reason)
                *ret_reason = reason;
        return PROXY_INVALID;
}

static ProxyStatus done(ProxyHeader *ret, size_t *ret_len, const ProxyHeader *h, size_t len) {
        if (ret)
                *ret = *h;
        if (ret_len)
                *ret_len = len;
        return PROXY_DONE;
}

/* ---- v1: one line of text ---- */

static bool is_digit(uint8_t c) {
        return c >= '0' && c <= '9';
}

static bool is_hex(uint8_t c) {
        return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* decimal: 1..MAX_DIGITS digits, no heading zero (the spec forbids them: octal confusion), at
 * most MAX. */
static bool decimal(const uint8_t *p, size_t n, size_t max_digits, unsigned max, unsigned *ret) {
        unsigned v = 0;

        if (n == 0 || n > max_digits || (n > 1 && p[0] == '0'))
                return false;
        for (size_t i = 0; i < n; i++) {
                if (!is_digit(p[i]))
                        return false;
                v = v * 10 + (unsigned) (p[i] - '0');
        }
        if (v > max)
                return false;
        *ret = v;
        return true;
}

/* ipv4: exactly four decimal numbers 0..255 joined by single dots. */
static bool ipv4(const uint8_t *p, size_t n, struct in_addr *ret) {
        uint8_t bytes[4];
        size_t at = 0;

        for (int i = 0; i < 4; i++) {
                size_t start = at;
                unsigned v;

                while (at < n && p[at] != '.')
                        at++;
                if (!decimal(p + start, at - start, 3, 255, &v))
                        return false;
                bytes[i] = (uint8_t) v;
                if (i < 3) {
                        if (at == n)
                                return false;
                        at++; /* the dot */
                }
        }
        if (at != n)
                return false;
        memcpy(ret, bytes, sizeof(bytes));
        return true;
}

/* ipv6: hex groups and colons, one "::" at most, an IPv4 tail allowed; 128 bits exactly. */
static bool ipv6(const uint8_t *p, size_t n, struct in6_addr *ret) {
        char text[INET6_ADDRSTRLEN];

        if (n == 0 || n >= sizeof(text))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!is_hex(p[i]) && p[i] != ':' && p[i] != '.')
                        return false;
        memcpy(text, p, n);
        text[n] = '\0';
        return inet_pton(AF_INET6, text, ret) == 1;
}

/* v1_addresses: "SRC DST SPORT DPORT" of FAMILY, the whole of LINE[AT..END): four fields
 * joined by single spaces (an empty field fails its own parser). */
static bool v1_addresses(const uint8_t *line, size_t at, size_t end, int family, ProxyHeader *h) {
        size_t start[4], len[4], fields = 0, from = at;
        unsigned sport, dport;

        for (size_t i = at; i <= end; i++) {
                if (i < end && line[i] != ' ')
                        continue;
                if (fields == 4)
                        return false;
                start[fields] = from;
                len[fields] = i - from;
                fields++;
                from = i + 1;
        }
        if (fields != 4)
                return false;
        if (!decimal(line + start[2], len[2], 5, 65535, &sport) ||
            !decimal(line + start[3], len[3], 5, 65535, &dport))
                return false;
        if (family == AF_INET) {
                struct sockaddr_in *src = (struct sockaddr_in *) &h->source;
                struct sockaddr_in *dst = (struct sockaddr_in *) &h->destination;

                if (!ipv4(line + start[0], len[0], &src->sin_addr) ||
                    !ipv4(line + start[1], len[1], &dst->sin_addr))
                        return false;
                src->sin_family = dst->sin_family = AF_INET;
                src->sin_port = htons((uint16_t) sport);
                dst->sin_port = htons((uint16_t) dport);
        } else {
                struct sockaddr_in6 *src = (struct sockaddr_in6 *) &h->source;
                struct sockaddr_in6 *dst = (struct sockaddr_in6 *) &h->destination;

                if (!ipv6(line + start[0], len[0], &src->sin6_addr) ||
                    !ipv6(line + start[1], len[1], &dst->sin6_addr))
                        return false;
                src->sin6_family = dst->sin6_family = AF_INET6;
                src->sin6_port = htons((uint16_t) sport);
                dst->sin6_port = htons((uint16_t) dport);
        }
        return true;
}

static bool starts_with(const uint8_t *p, size_t n, const char *s) {
        size_t len = strlen(s);

        return n >= len && memcmp(p, s, len) == 0;
}

/* v1_line: the line before its CRLF, "PROXY " already matched. */
static ProxyStatus v1_line(const uint8_t *line, size_t end, ProxyHeader *h, const char **ret_reason) {
        const uint8_t *proto = line + V1_PREFIX_LEN;
        size_t n = end - V1_PREFIX_LEN;
        int family;

        /* UNKNOWN: "the receiver must ignore anything presented before the CRLF". */
        if ((n == 7 && starts_with(proto, n, "UNKNOWN")) || starts_with(proto, n, "UNKNOWN ")) {
                h->command = PROXY_COMMAND_UNKNOWN;
                return PROXY_DONE;
        }
        if (starts_with(proto, n, "TCP4 "))
                family = AF_INET;
        else if (starts_with(proto, n, "TCP6 "))
                family = AF_INET6;
        else
                return invalid(ret_reason, "v1: the protocol is not TCP4, TCP6 or UNKNOWN");
        if (!v1_addresses(line, V1_PREFIX_LEN + 5, end, family, h))
                return invalid(ret_reason, family == AF_INET ? "v1: malformed TCP4 addresses or ports"
                                                             : "v1: malformed TCP6 addresses or ports");
        h->command = PROXY_COMMAND_PROXY;
        return PROXY_DONE;
}

/* v1_plausible: whether the start of a line (no CR or LF in it yet) can still become a valid
 * one, so that garbage is refused when it arrives rather than at the 107th byte. */
static bool v1_plausible(const uint8_t *p, size_t n) {
        static const char *const protos[] = { "TCP4 ", "TCP6 ", "UNKNOWN" };
        const uint8_t *proto = p + V1_PREFIX_LEN;
        size_t len = n - V1_PREFIX_LEN;
        int which = -1, spaces = 0;

        for (int i = 0; i < 3; i++) {
                size_t want = strlen(protos[i]);

                if (memcmp(proto, protos[i], min_size(len, want)) == 0) {
                        which = i;
                        break;
                }
        }
        if (which < 0)
                return false;
        if (which == 2) /* UNKNOWN: "UNKNOWN" then a space or the CRLF; the rest is ignored */
                return len <= 7 || proto[7] == ' ';
        for (size_t i = 5; i < len; i++) {
                uint8_t c = proto[i];

                if (c == ' ')
                        spaces++;
                else if (!(is_digit(c) || c == '.' || (which == 1 && (is_hex(c) || c == ':'))))
                        return false;
        }
        return spaces <= 3;
}

static ProxyStatus parse_v1(const uint8_t *in, size_t n, ProxyHeader *ret, size_t *ret_len,
                            const char **ret_reason) {
        size_t avail = min_size(n, PROXY_V1_MAX);

        if (memcmp(in, v1_prefix, min_size(avail, V1_PREFIX_LEN)) != 0)
                return invalid(ret_reason, NOT_PROXY);
        for (size_t i = V1_PREFIX_LEN; i < avail; i++) {
                if (in[i] == '\n')
                        return invalid(ret_reason, "v1: a line feed without a carriage return");
                if (in[i] != '\r')
                        continue;
                /* The CRLF must end within the first 107 bytes. */
                if (i + 1 >= PROXY_V1_MAX)
                        return invalid(ret_reason, "v1: no CRLF within 107 bytes");
                if (i + 1 == n)
                        break; /* the LF is yet to come */
                if (in[i + 1] != '\n')
                        return invalid(ret_reason, "v1: a carriage return without a line feed");
                {
                        ProxyHeader h = { .version = 1 };
                        ProxyStatus s = v1_line(in, i, &h, ret_reason);

                        return s == PROXY_DONE ? done(ret, ret_len, &h, i + 2) : s;
                }
        }
        if (n >= PROXY_V1_MAX)
                return invalid(ret_reason, "v1: no CRLF within 107 bytes");
        /* Up to here the line is its first N bytes, possibly followed by a lone CR. */
        if (n > V1_PREFIX_LEN && !v1_plausible(in, in[n - 1] == '\r' ? n - 1 : n))
                return invalid(ret_reason, "v1: malformed line");
        return PROXY_NEED_MORE;
}

/* ---- v2: binary ---- */

/* v2_tlvs_fit: the type-length-value vectors after the addresses tile the rest of the header
 * exactly (their contents are not needed, but a length that overruns is a malformed header). */
static bool v2_tlvs_fit(const uint8_t *p, size_t n) {
        size_t at = 0;

        while (at < n) {
                size_t len;

                if (n - at < 3)
                        return false;
                len = (size_t) p[at + 1] << 8 | p[at + 2];
                if (len > n - at - 3)
                        return false;
                at += 3 + len;
        }
        return true;
}

/* v2_address_size: the bytes the address block of FAMILY takes (0: unknown, AF_UNSPEC). */
static size_t v2_address_size(unsigned family) {
        switch (family) {
        case V2_AF_INET:
                return 2 * 4 + 2 * 2;
        case V2_AF_INET6:
                return 2 * 16 + 2 * 2;
        case V2_AF_UNIX:
                return 2 * 108;
        default:
                return 0;
        }
}

/* v2_addresses: PROXY over TCP: the addresses are in network byte order on the wire, as in
 * the socket structures. */
static void v2_addresses(const uint8_t *p, unsigned family, ProxyHeader *h) {
        if (family == V2_AF_INET) {
                struct sockaddr_in *src = (struct sockaddr_in *) &h->source;
                struct sockaddr_in *dst = (struct sockaddr_in *) &h->destination;

                src->sin_family = dst->sin_family = AF_INET;
                memcpy(&src->sin_addr, p, 4);
                memcpy(&dst->sin_addr, p + 4, 4);
                memcpy(&src->sin_port, p + 8, 2);
                memcpy(&dst->sin_port, p + 10, 2);
        } else {
                struct sockaddr_in6 *src = (struct sockaddr_in6 *) &h->source;
                struct sockaddr_in6 *dst = (struct sockaddr_in6 *) &h->destination;

                src->sin6_family = dst->sin6_family = AF_INET6;
                memcpy(&src->sin6_addr, p, 16);
                memcpy(&dst->sin6_addr, p + 16, 16);
                memcpy(&src->sin6_port, p + 32, 2);
                memcpy(&dst->sin6_port, p + 34, 2);
        }
}

/* v2_body: the complete header, its fixed part already checked. */
static ProxyStatus v2_body(const uint8_t *in, size_t total, ProxyHeader *h, const char **ret_reason) {
        unsigned family = in[13] >> 4, transport = in[13] & 0x0f;
        const uint8_t *body = in + PROXY_V2_HEADER_MIN;
        size_t len = total - PROXY_V2_HEADER_MIN, addr_size = v2_address_size(family);

        /* LOCAL: "use the real connection endpoints and discard the protocol block including
         * the family", whatever it holds. */
        if ((in[12] & 0x0f) == V2_COMMAND_LOCAL) {
                h->command = PROXY_COMMAND_LOCAL;
                return PROXY_DONE;
        }
        /* AF_UNSPEC: the address block has no known size, so the TLVs cannot be found. */
        if (family != V2_AF_UNSPEC) {
                if (len < addr_size)
                        return invalid(ret_reason, "v2: the length is too short for the address family");
                if (!v2_tlvs_fit(body + addr_size, len - addr_size))
                        return invalid(ret_reason, "v2: a TLV overruns the header");
        }
        /* The spec lets a receiver fall back to the real endpoints for the valid combinations it
         * does not support: AF_UNSPEC, AF_UNIX (a local balancer: its address is the real one)
         * and datagrams (not what reaches a TCP listener). */
        if ((family == V2_AF_INET || family == V2_AF_INET6) && transport == V2_TRANSPORT_STREAM) {
                v2_addresses(body, family, h);
                h->command = PROXY_COMMAND_PROXY;
        } else
                h->command = PROXY_COMMAND_UNKNOWN;
        return PROXY_DONE;
}

/* v2_pair_defined: whether FAMILY and TRANSPORT make one of the seven pairs the spec defines
 * (UNSPEC, or a family with a transport); any other "must be rejected as invalid by
 * receivers". LOCAL's is not looked at. */
static bool v2_pair_defined(unsigned family, unsigned transport) {
        if (family == V2_AF_UNSPEC)
                return transport == V2_TRANSPORT_UNSPEC;
        return family <= V2_AF_UNIX && (transport == V2_TRANSPORT_STREAM || transport == V2_TRANSPORT_DGRAM);
}

static ProxyStatus parse_v2(const uint8_t *in, size_t n, ProxyHeader *ret, size_t *ret_len,
                            const char **ret_reason) {
        size_t total;

        if (memcmp(in, v2_signature, min_size(n, sizeof(v2_signature))) != 0)
                return invalid(ret_reason, NOT_PROXY);
        if (n <= 12)
                return PROXY_NEED_MORE;
        if ((in[12] >> 4) != 2)
                return invalid(ret_reason, "v2: the version is not 2");
        if ((in[12] & 0x0f) > V2_COMMAND_PROXY)
                return invalid(ret_reason, "v2: the command is neither LOCAL nor PROXY");
        if (n <= 13)
                return PROXY_NEED_MORE;
        if ((in[12] & 0x0f) == V2_COMMAND_PROXY && !v2_pair_defined(in[13] >> 4, in[13] & 0x0f))
                return invalid(ret_reason, "v2: an undefined address family and transport");
        if (n < PROXY_V2_HEADER_MIN)
                return PROXY_NEED_MORE;
        total = PROXY_V2_HEADER_MIN + ((size_t) in[14] << 8 | in[15]);
        if (total > PROXY_HEADER_MAX)
                return invalid(ret_reason, "v2: the header is longer than 4096 bytes");
        if (n < total)
                return PROXY_NEED_MORE;
        {
                ProxyHeader h = { .version = 2 };
                ProxyStatus s = v2_body(in, total, &h, ret_reason);

                return s == PROXY_DONE ? done(ret, ret_len, &h, total) : s;
        }
}

ProxyStatus proxy_parse(const void *in, size_t n, ProxyHeader *ret, size_t *ret_len,
                        const char **ret_reason) {
        const uint8_t *p = in;

        if (n == 0)
                return PROXY_NEED_MORE;
        /* The two versions differ from their first byte: 'P' of "PROXY", or the CR that starts
         * the v2 signature. */
        if (p[0] == v1_prefix[0])
                return parse_v1(p, n, ret, ret_len, ret_reason);
        if (p[0] == v2_signature[0])
                return parse_v2(p, n, ret, ret_len, ret_reason);
        return invalid(ret_reason, NOT_PROXY);
}

void proxy_parser_init(ProxyParser *p) {
        *p = (ProxyParser) { .status = PROXY_NEED_MORE };
}

/* feed_answer: the parser's verdict, written where proxy_feed() promises. */
static ProxyStatus feed_answer(const ProxyParser *p, ProxyHeader *ret, const char **ret_reason) {
        if (p->status == PROXY_DONE && ret)
                *ret = p->header;
        if (p->status == PROXY_INVALID && ret_reason)
                *ret_reason = p->reason;
        return p->status;
}

ProxyStatus proxy_feed(ProxyParser *p, const void *in, size_t n, size_t *ret_used, ProxyHeader *ret,
                       const char **ret_reason) {
        size_t take = min_size(n, sizeof(p->buf) - p->len), before = p->len, len = 0;

        *ret_used = 0;
        if (p->status != PROXY_NEED_MORE)
                return feed_answer(p, ret, ret_reason);
        if (take > 0)
                memcpy(p->buf + p->len, in, take);
        p->len += take;
        p->status = proxy_parse(p->buf, p->len, &p->header, &len, &p->reason);
        if (p->status == PROXY_NEED_MORE)
                /* Never with a full buffer (no header is longer), so all N were taken. */
                *ret_used = n;
        else if (p->status == PROXY_DONE) {
                /* The header ends in this piece: what follows it is the client's. */
                *ret_used = len - before;
                p->len = len;
        }
        return feed_answer(p, ret, ret_reason);
}

const char *proxy_command_to_string(ProxyCommand command) {
        switch (command) {
        case PROXY_COMMAND_LOCAL:
                return "local";
        case PROXY_COMMAND_PROXY:
                return "proxy";
        case PROXY_COMMAND_UNKNOWN:
                return "unknown";
        }
        return "?";
}
