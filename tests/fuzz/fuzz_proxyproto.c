/* fuzz_proxyproto: the PROXY protocol parser on arbitrary first bytes of a connection.
 *
 * The input is what a connection sent, from its first byte. The harness checks, with abort() so
 * that libFuzzer reports it:
 *   - the verdict only ever moves forward as bytes arrive: for the prefixes of the input, NEED_MORE
 *     until one length, then either INVALID for every longer prefix, or DONE with one and the same
 *     header length L and result for every prefix from L on (the parser never looks past the
 *     header: the client's bytes after it change nothing); NEED_MORE only below PROXY_HEADER_MAX;
 *   - a DONE header is well formed: L <= the input and <= PROXY_HEADER_MAX, v1 within 107 bytes
 *     and ending in CRLF, v2 exactly 16 + its length field; the addresses are both AF_INET or both
 *     AF_INET6 with no stray bytes in the structures for PROXY, all zero otherwise;
 *   - fed through a ProxyParser in pieces of pseudo-random sizes (seeded from the input), the
 *     verdict and result are those of one parse, and the pieces' used bytes add up to L;
 *   - a PROXY result written back as a v1 line and as a v2 header parses to the same result. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prefixes beyond this length cannot change the verdict (no header is longer). */
#define PREFIX_MAX (PROXY_HEADER_MAX + 8)

#define check(cond, ...)                                                                                 \
        do {                                                                                             \
                if (!(cond)) {                                                                           \
                        fprintf(stderr, "fuzz_proxyproto: check failed: %s (%s:%d)\n", #cond, __FILE__, \
                                __LINE__);                                                               \
                        fprintf(stderr, "fuzz_proxyproto: " __VA_ARGS__);                                \
                        fputc('\n', stderr);                                                             \
                        abort();                                                                         \
                }                                                                                        \
        } while (0)

static bool all_zero(const void *p, size_t n) {
        const uint8_t *b = p;

        for (size_t i = 0; i < n; i++)
                if (b[i])
                        return false;
        return true;
}

static bool same_header(const ProxyHeader *a, const ProxyHeader *b) {
        return a->version == b->version && a->command == b->command &&
               memcmp(&a->source, &b->source, sizeof(a->source)) == 0 &&
               memcmp(&a->destination, &b->destination, sizeof(a->destination)) == 0;
}

/* check_address: only the family's fields are set; the rest of the storage is zero. */
static void check_address(const struct sockaddr_storage *ss, int family) {
        check(ss->ss_family == family, "family %d, expected %d", ss->ss_family, family);
        if (family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) ss;

                check(all_zero(in->sin_zero, sizeof(in->sin_zero)), "sin_zero set");
                check(all_zero((const uint8_t *) ss + sizeof(*in), sizeof(*ss) - sizeof(*in)),
                      "bytes past sockaddr_in");
        } else {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) ss;

                check(in6->sin6_flowinfo == 0 && in6->sin6_scope_id == 0, "flowinfo or scope id set");
                check(all_zero((const uint8_t *) ss + sizeof(*in6), sizeof(*ss) - sizeof(*in6)),
                      "bytes past sockaddr_in6");
        }
}

static void check_well_formed(const uint8_t *data, size_t size, const ProxyHeader *h, size_t len) {
        static const uint8_t sig[12] = {
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
        };

        check(len > 0 && len <= size && len <= PROXY_HEADER_MAX, "header length %zu of %zu bytes", len, size);
        if (h->version == 1) {
                check(len >= 8 && len <= PROXY_V1_MAX, "v1 line of %zu bytes", len);
                check(memcmp(data, "PROXY ", 6) == 0, "v1 line without PROXY");
                check(data[len - 2] == '\r' && data[len - 1] == '\n', "v1 line not ending in CRLF");
                check(memchr(data, '\n', len - 1) == NULL, "v1 line with an LF inside");
        } else {
                check(h->version == 2, "version %u", h->version);
                check(len >= PROXY_V2_HEADER_MIN && memcmp(data, sig, sizeof(sig)) == 0,
                      "v2 without signature");
                check(len == PROXY_V2_HEADER_MIN + ((size_t) data[14] << 8 | data[15]), "v2 length %zu", len);
        }
        if (h->command == PROXY_COMMAND_PROXY) {
                int family = h->source.ss_family;

                check(family == AF_INET || family == AF_INET6, "family %d", family);
                check_address(&h->source, family);
                check_address(&h->destination, family);
        } else {
                check(h->command == PROXY_COMMAND_LOCAL || h->command == PROXY_COMMAND_UNKNOWN, "command %d",
                      (int) h->command);
                check(h->command != PROXY_COMMAND_LOCAL || h->version == 2, "LOCAL in v1");
                check(all_zero(&h->source, sizeof(h->source)) &&
                              all_zero(&h->destination, sizeof(h->destination)),
                      "addresses set for a %s header", proxy_command_to_string(h->command));
        }
}

/* check_prefixes: the verdict of every prefix; returns the header length (DONE) or 0. */
static size_t check_prefixes(const uint8_t *data, size_t size, ProxyStatus final, const ProxyHeader *want) {
        size_t n = size < PREFIX_MAX ? size : PREFIX_MAX, header_len = 0, invalid_from = 0;
        bool invalid = false;

        for (size_t k = 0; k <= n; k++) {
                ProxyHeader h;
                size_t len = 0;
                const char *reason = NULL;
                ProxyStatus s = proxy_parse(data, k, &h, &len, &reason);

                if (invalid) {
                        check(s == PROXY_INVALID, "invalid at %zu bytes, then %d at %zu", invalid_from,
                              (int) s, k);
                        continue;
                }
                if (header_len > 0) {
                        check(s == PROXY_DONE && len == header_len && same_header(&h, want),
                              "done at %zu bytes, then status %d, length %zu at %zu", header_len, (int) s,
                              len, k);
                        continue;
                }
                if (s == PROXY_NEED_MORE) {
                        check(k < PROXY_HEADER_MAX, "NEED_MORE at %zu bytes", k);
                        continue;
                }
                if (s == PROXY_INVALID) {
                        check(reason != NULL && reason[0] != '\0', "invalid without a reason");
                        invalid = true;
                        invalid_from = k;
                        continue;
                }
                check(s == PROXY_DONE, "status %d", (int) s);
                check(len == k, "done at %zu bytes with a header of %zu: it read past the header", k, len);
                header_len = len;
        }
        check(final != PROXY_DONE || header_len > 0, "the whole input is done, no prefix was");
        check(final != PROXY_INVALID || invalid, "the whole input is invalid, no prefix was");
        return header_len;
}

static uint64_t hash(const uint8_t *data, size_t size) {
        uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */

        for (size_t i = 0; i < size; i++)
                h = (h ^ data[i]) * 0x100000001b3u;
        return h;
}

/* check_pieces: a ProxyParser fed the input in pseudo-random pieces agrees with one parse. */
static void check_pieces(const uint8_t *data, size_t size, ProxyStatus want_status, const ProxyHeader *want,
                         size_t want_len) {
        uint64_t rng = hash(data, size) | 1;
        ProxyParser p;
        ProxyStatus s = PROXY_NEED_MORE;
        ProxyHeader h;
        size_t pos = 0, used_total = 0;

        proxy_parser_init(&p);
        while (pos < size && s == PROXY_NEED_MORE) {
                size_t piece, used = 99999;

                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17; /* xorshift64 */
                /* Mostly small pieces (a slow network), sometimes up to everything left. */
                piece = rng % 4 ? 1 + (rng >> 8) % 8 : 1 + (rng >> 8) % (size - pos);
                if (piece > size - pos)
                        piece = size - pos;
                s = proxy_feed(&p, data + pos, piece, &used, &h, NULL);
                check(used <= piece, "used %zu of a %zu-byte piece", used, piece);
                check(s != PROXY_NEED_MORE || used == piece, "NEED_MORE took %zu of %zu", used, piece);
                used_total += used;
                pos += piece;
        }
        check(s == want_status, "pieces give status %d, one parse %d", (int) s, (int) want_status);
        if (s == PROXY_DONE) {
                check(used_total == want_len, "pieces used %zu bytes, the header has %zu", used_total,
                      want_len);
                check(same_header(&h, want), "pieces give another header");
        }
}

/* check_round_trip: the addresses written back as a v1 line and a v2 header parse the same. */
static void check_round_trip(const ProxyHeader *h) {
        char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN], line[PROXY_V1_MAX + 1];
        uint8_t bin[16 + 36] = {
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, /* PROXY */
        };
        ProxyHeader back;
        size_t len = 0, bin_len;
        int n;

        if (h->source.ss_family == AF_INET) {
                const struct sockaddr_in *s = (const struct sockaddr_in *) &h->source;
                const struct sockaddr_in *d = (const struct sockaddr_in *) &h->destination;

                inet_ntop(AF_INET, &s->sin_addr, src, sizeof(src));
                inet_ntop(AF_INET, &d->sin_addr, dst, sizeof(dst));
                n = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", src, dst, ntohs(s->sin_port),
                             ntohs(d->sin_port));
                bin[13] = 0x11;
                memcpy(bin + 16, &s->sin_addr, 4);
                memcpy(bin + 20, &d->sin_addr, 4);
                memcpy(bin + 24, &s->sin_port, 2);
                memcpy(bin + 26, &d->sin_port, 2);
                bin_len = 16 + 12;
        } else {
                const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) &h->source;
                const struct sockaddr_in6 *d = (const struct sockaddr_in6 *) &h->destination;

                inet_ntop(AF_INET6, &s->sin6_addr, src, sizeof(src));
                inet_ntop(AF_INET6, &d->sin6_addr, dst, sizeof(dst));
                n = snprintf(line, sizeof(line), "PROXY TCP6 %s %s %u %u\r\n", src, dst, ntohs(s->sin6_port),
                             ntohs(d->sin6_port));
                bin[13] = 0x21;
                memcpy(bin + 16, &s->sin6_addr, 16);
                memcpy(bin + 32, &d->sin6_addr, 16);
                memcpy(bin + 48, &s->sin6_port, 2);
                memcpy(bin + 50, &d->sin6_port, 2);
                bin_len = 16 + 36;
        }
        bin[15] = (uint8_t) (bin_len - 16);
        /* inet_ntop may write an IPv4-mapped address as ::ffff:a.b.c.d: longer, still under 107. */
        check(n > 0 && (size_t) n < sizeof(line), "v1 line of %d bytes", n);
        check(proxy_parse(line, (size_t) n, &back, &len, NULL) == PROXY_DONE && len == (size_t) n,
              "written back as \"%.*s\", not parsed", n - 2, line);
        back.version = h->version;
        check(same_header(&back, h), "written back as \"%.*s\", parsed to other addresses", n - 2, line);
        check(proxy_parse(bin, bin_len, &back, &len, NULL) == PROXY_DONE && len == bin_len,
              "written back as v2, not parsed");
        back.version = h->version;
        check(same_header(&back, h), "written back as v2, parsed to other addresses");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        ProxyHeader h = { 0 };
        size_t len = 0, header_len;
        const char *reason = NULL;
        ProxyStatus s = proxy_parse(data, size, &h, &len, &reason);

        check(s == PROXY_NEED_MORE || s == PROXY_DONE || s == PROXY_INVALID, "status %d", (int) s);
        if (s == PROXY_DONE)
                check_well_formed(data, size, &h, len);
        header_len = check_prefixes(data, size, s, &h);
        check(s != PROXY_DONE || header_len == len, "header length %zu, by prefixes %zu", len, header_len);
        check_pieces(data, size, s, &h, len);
        if (s == PROXY_DONE && h.command == PROXY_COMMAND_PROXY)
                check_round_trip(&h);
        return 0;
}
