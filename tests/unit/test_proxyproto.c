/* test_proxyproto: the PROXY protocol parser against haproxy's doc/proxy-protocol.txt: its
 * examples and limits, every way to break a header, and bytes arriving in every possible split. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>

#include "proxyproto.h"

static const uint8_t SIG[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

/* What the client sends after the header; it must come out untouched. */
static const char CLIENT[] = "Michael\nexit\n";

/* ---- helpers ---- */

/* v2: a v2 header (VER_CMD, FAM) around BODY, into OUT; returns its length. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const void *body, size_t body_len) {
        memcpy(out, SIG, sizeof(SIG));
        out[12] = ver_cmd;
        out[13] = fam;
        out[14] = (uint8_t) (body_len >> 8);
        out[15] = (uint8_t) body_len;
        if (body_len > 0)
                memcpy(out + 16, body, body_len);
        return 16 + body_len;
}

/* v2_inet_body: 192.0.2.7:40000 → 198.51.100.1:7000, as on the wire. */
static size_t v2_inet_body(uint8_t *out) {
        static const uint8_t b[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x1b, 0x58 };

        memcpy(out, b, sizeof(b));
        return sizeof(b);
}

static void check_v4(const struct sockaddr_storage *ss, const char *ip, uint16_t port) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) ss;
        char text[INET_ADDRSTRLEN];

        cr_assert_eq(ss->ss_family, AF_INET);
        cr_assert_not_null(inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)));
        cr_assert_str_eq(text, ip);
        cr_assert_eq(ntohs(in->sin_port), port);
}

static void check_v6(const struct sockaddr_storage *ss, const char *ip, uint16_t port) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) ss;
        struct in6_addr want;

        cr_assert_eq(ss->ss_family, AF_INET6);
        cr_assert_eq(inet_pton(AF_INET6, ip, &want), 1);
        cr_assert_eq(memcmp(&in6->sin6_addr, &want, sizeof(want)), 0, "address differs from %s", ip);
        cr_assert_eq(ntohs(in6->sin6_port), port);
}

static void check_unspec(const ProxyHeader *h) {
        cr_assert_eq(h->source.ss_family, AF_UNSPEC);
        cr_assert_eq(h->destination.ss_family, AF_UNSPEC);
}

static bool same_header(const ProxyHeader *a, const ProxyHeader *b) {
        return a->version == b->version && a->command == b->command &&
               memcmp(&a->source, &b->source, sizeof(a->source)) == 0 &&
               memcmp(&a->destination, &b->destination, sizeof(a->destination)) == 0;
}

/* feed_split: IN through a ProxyParser in two pieces cut at CUT (and CLIENT after it, in the
 * same feed as the header's end); checks the client's bytes are left; returns the status. */
static ProxyStatus feed_split(const uint8_t *in, size_t n, size_t cut, ProxyHeader *ret) {
        uint8_t piece[PROXY_HEADER_MAX + sizeof(CLIENT)];
        ProxyParser p;
        ProxyStatus s;
        size_t used;

        proxy_parser_init(&p);
        s = proxy_feed(&p, in, cut, &used, ret, NULL);
        if (s != PROXY_NEED_MORE)
                return s;
        cr_assert_eq(used, cut, "NEED_MORE must take the whole piece");
        memcpy(piece, in + cut, n - cut);
        memcpy(piece + n - cut, CLIENT, sizeof(CLIENT) - 1);
        s = proxy_feed(&p, piece, n - cut + sizeof(CLIENT) - 1, &used, ret, NULL);
        if (s == PROXY_DONE)
                cr_assert_eq(used, n - cut, "cut at %zu: used %zu of the last piece, the header has %zu", cut,
                             used, n - cut);
        return s;
}

/* expect_done: IN (N bytes) is exactly one valid header. Every shorter prefix needs more; with
 * the client's bytes after it, only N are consumed; fed in two pieces cut anywhere, or a byte
 * at a time, the result is the same. Returns the header. */
static ProxyHeader expect_done(const void *in, size_t n) {
        uint8_t buf[PROXY_HEADER_MAX + sizeof(CLIENT)];
        ProxyHeader h, again;
        const char *reason = NULL;
        size_t len = 0;
        ProxyStatus s;

        cr_assert_leq(n, PROXY_HEADER_MAX);
        memcpy(buf, in, n);
        memcpy(buf + n, CLIENT, sizeof(CLIENT) - 1);
        s = proxy_parse(buf, n + sizeof(CLIENT) - 1, &h, &len, &reason);
        cr_assert_eq(s, PROXY_DONE, "refused: %s", s == PROXY_INVALID ? reason : "needs more");
        cr_assert_eq(len, n, "consumed %zu bytes, the header has %zu", len, n);
        cr_assert_eq(memcmp(buf + n, CLIENT, sizeof(CLIENT) - 1), 0);

        for (size_t k = 0; k < n; k++)
                cr_assert_eq(proxy_parse(buf, k, NULL, NULL, &reason), PROXY_NEED_MORE,
                             "truncated to %zu of %zu bytes: not NEED_MORE (%s)", k, n, reason);
        cr_assert_eq(proxy_parse(buf, n, &again, &len, NULL), PROXY_DONE);
        cr_assert_eq(len, n);
        cr_assert(same_header(&h, &again));

        for (size_t cut = 0; cut <= n; cut++) {
                cr_assert_eq(feed_split(buf, n, cut, &again), PROXY_DONE, "cut at %zu", cut);
                cr_assert(same_header(&h, &again), "cut at %zu: another result", cut);
        }
        {
                ProxyParser p;
                size_t used = 0;

                proxy_parser_init(&p);
                for (size_t i = 0; i < n; i++) {
                        s = proxy_feed(&p, buf + i, 1, &used, &again, NULL);
                        cr_assert_eq(s, i + 1 < n ? PROXY_NEED_MORE : PROXY_DONE, "byte %zu", i);
                        cr_assert_eq(used, 1);
                }
                cr_assert(same_header(&h, &again));
                /* Done is final: later bytes are the client's, none is taken. */
                cr_assert_eq(proxy_feed(&p, CLIENT, sizeof(CLIENT) - 1, &used, &again, NULL), PROXY_DONE);
                cr_assert_eq(used, 0);
                cr_assert(same_header(&h, &again));
        }
        return h;
}

/* invalid_at: the length of the shortest prefix of IN that is refused; N + 1 if none is. Also
 * checks that once refused, every longer prefix is refused too. */
static size_t invalid_at(const void *in, size_t n, const char **ret_reason) {
        size_t at = n + 1;

        for (size_t k = 0; k <= n; k++) {
                ProxyStatus s = proxy_parse(in, k, NULL, NULL, ret_reason);

                if (s == PROXY_INVALID && at > n)
                        at = k;
                if (at <= n)
                        cr_assert_eq(s, PROXY_INVALID, "refused at %zu bytes, not at %zu", at, k);
        }
        return at;
}

/* expect_invalid: IN is refused, at the latest once all N bytes are in (and by a parser fed
 * the bytes one at a time, which then takes nothing). */
static void expect_invalid(const void *in, size_t n) {
        const char *reason = NULL;
        ProxyParser p;
        size_t used = 1;
        ProxyStatus s = PROXY_NEED_MORE;

        cr_assert_leq(invalid_at(in, n, &reason), n, "accepted or still waiting");
        cr_assert_not_null(reason);
        proxy_parser_init(&p);
        for (size_t i = 0; i < n && s == PROXY_NEED_MORE; i++)
                s = proxy_feed(&p, (const uint8_t *) in + i, 1, &used, NULL, NULL);
        cr_assert_eq(s, PROXY_INVALID);
        cr_assert_eq(used, 0);
        reason = NULL;
        cr_assert_eq(proxy_feed(&p, CLIENT, 3, &used, NULL, &reason), PROXY_INVALID, "invalid is final");
        cr_assert_not_null(reason);
}

static void expect_invalid_str(const char *s) {
        expect_invalid(s, strlen(s));
}

/* ---- detection ---- */

Test(proxyproto, a_first_byte_of_neither_version_is_refused_at_once) {
        static const char *const starts[] = { "G", "\x16", "\n", "p", " ", "\0", "Michael\n", "exit\r\n" };
        const char *reason = NULL;

        for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++)
                cr_assert_eq(invalid_at(starts[i], strlen(starts[i]) ? strlen(starts[i]) : 1, &reason), 1,
                             "start %zu", i);
        cr_assert_eq(proxy_parse("", 0, NULL, NULL, NULL), PROXY_NEED_MORE);
}

Test(proxyproto, a_wrong_byte_in_either_prefix_is_refused_when_it_arrives) {
        const char *reason = NULL;

        cr_assert_eq(invalid_at("PROXX TCP4", 10, &reason), 5);
        cr_assert_eq(invalid_at("PROXYTCP4", 9, &reason), 6);
        cr_assert_eq(invalid_at("PROXY HTTP", 10, &reason), 7);
        for (size_t i = 1; i < sizeof(SIG); i++) {
                uint8_t buf[16];

                v2(buf, 0x21, 0x11, NULL, 0);
                buf[i] ^= 0x20;
                cr_assert_eq(invalid_at(buf, sizeof(buf), &reason), i + 1, "signature byte %zu", i);
        }
}

/* ---- v1 ---- */

Test(proxyproto, v1_tcp4_the_spec_example) {
        static const char line[] = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        ProxyHeader h = expect_done(line, sizeof(line) - 1);

        cr_assert_eq(h.version, 1);
        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v4(&h.source, "192.168.0.1", 56324);
        check_v4(&h.destination, "192.168.0.11", 443);
}

Test(proxyproto, v1_tcp4_the_longest_line_and_the_extremes) {
        static const char line[] = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        static const char zero[] = "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n";
        ProxyHeader h;

        cr_assert_eq(sizeof(line) - 1, 56, "the spec's 56 bytes");
        h = expect_done(line, sizeof(line) - 1);
        check_v4(&h.source, "255.255.255.255", 65535);
        check_v4(&h.destination, "255.255.255.255", 65535);
        h = expect_done(zero, sizeof(zero) - 1);
        check_v4(&h.source, "0.0.0.0", 0);
}

Test(proxyproto, v1_tcp6_short_and_full_forms) {
        static const char line[] = "PROXY TCP6 2001:db8::7 2001:db8:0:1::1 40000 7000\r\n";
        static const char full[] = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                   "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n";
        static const char mapped[] = "PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n";
        ProxyHeader h = expect_done(line, sizeof(line) - 1);

        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v6(&h.source, "2001:db8::7", 40000);
        check_v6(&h.destination, "2001:db8:0:1::1", 7000);
        cr_assert_eq(sizeof(full) - 1, 104, "the spec's 104 bytes");
        h = expect_done(full, sizeof(full) - 1);
        check_v6(&h.source, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
        h = expect_done(mapped, sizeof(mapped) - 1);
        check_v6(&h.source, "::ffff:192.0.2.7", 1);
        check_v6(&h.destination, "::1", 2);
}

Test(proxyproto, v1_unknown_short_and_with_ignored_fields) {
        static const char shortest[] = "PROXY UNKNOWN\r\n";
        static const char fields[] = "PROXY UNKNOWN 192.0.2.7 192.0.2.8 1 2\r\n";
        static const char junk[] = "PROXY UNKNOWN whatever \x01\xff is here\r\n";
        ProxyHeader h = expect_done(shortest, sizeof(shortest) - 1);

        cr_assert_eq(sizeof(shortest) - 1, 15);
        cr_assert_eq(h.version, 1);
        cr_assert_eq(h.command, PROXY_COMMAND_UNKNOWN);
        check_unspec(&h);
        h = expect_done(fields, sizeof(fields) - 1);
        cr_assert_eq(h.command, PROXY_COMMAND_UNKNOWN);
        check_unspec(&h);
        h = expect_done(junk, sizeof(junk) - 1);
        cr_assert_eq(h.command, PROXY_COMMAND_UNKNOWN);
}

Test(proxyproto, v1_107_bytes_are_accepted_108_refused) {
        static const char worst[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        static const char longer[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655350\r\n";
        static const char tcp6[] = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535   \r\n";
        char no_crlf[200];
        const char *reason = NULL;

        cr_assert_eq(sizeof(worst) - 1, PROXY_V1_MAX, "the spec's worst case is 107 bytes");
        cr_assert_eq(expect_done(worst, sizeof(worst) - 1).command, PROXY_COMMAND_UNKNOWN);
        cr_assert_eq(sizeof(longer) - 1, 108);
        /* The 107th byte is the CR: refused there, as its LF would be the 108th. */
        cr_assert_eq(invalid_at(longer, sizeof(longer) - 1, &reason), 107);
        cr_assert_str_eq(reason, "v1: no CRLF within 107 bytes");
        expect_invalid_str(tcp6);
        memset(no_crlf, ' ', sizeof(no_crlf));
        memcpy(no_crlf, "PROXY UNKNOWN", 13);
        cr_assert_eq(invalid_at(no_crlf, sizeof(no_crlf), &reason), 107);
}

Test(proxyproto, v1_fields_are_strict) {
        static const char *const bad[] = {
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",   /* LF alone */
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n", /* CR not followed by LF */
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", /* a trailing space */
                "PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n", /* two spaces */
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",      /* a field missing */
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 1\r\n", /* a field too many */
                "PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", /* a heading zero (port) */
                "PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n",
                "PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",  /* port out of range */
                "PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n",
                "PROXY TCP4 192.168.0.1 192.168.0.11 123456 443\r\n",
                "PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
                "PROXY TCP4 192.168.0.1 192.168.0.11 +80 443\r\n",
                "PROXY TCP4 192.168.0.1 192.168.0.11 0x50 443\r\n",
                "PROXY TCP4 192.168.00.1 192.168.0.11 1 2\r\n",       /* a heading zero (address) */
                "PROXY TCP4 192.168.0.01 192.168.0.11 1 2\r\n",
                "PROXY TCP4 192.168.0.256 192.168.0.11 1 2\r\n",      /* octet out of range */
                "PROXY TCP4 192.168.0 192.168.0.11 1 2\r\n",          /* three octets */
                "PROXY TCP4 192.168.0.1.5 192.168.0.11 1 2\r\n",      /* five */
                "PROXY TCP4 192.168..1 192.168.0.11 1 2\r\n",
                "PROXY TCP4 .192.168.0.1 192.168.0.11 1 2\r\n",
                "PROXY TCP4 192.168.0.1. 192.168.0.11 1 2\r\n",
                "PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",         /* family mismatch */
                "PROXY TCP6 192.168.0.1 192.168.0.11 1 2\r\n",
                "PROXY TCP6 2001:db8::1::2 ::1 1 2\r\n",              /* two "::" */
                "PROXY TCP6 2001:db8:1:2:3:4:5:6:7 ::1 1 2\r\n",      /* 144 bits */
                "PROXY TCP6 2001:db8:1:2:3:4:5 ::1 1 2\r\n",          /* 112 bits */
                "PROXY TCP6 fe80::1%lo ::1 1 2\r\n",                  /* scope ids are not addresses */
                "PROXY TCP6 12345::1 ::1 1 2\r\n",
                "PROXY TCP5 192.168.0.1 192.168.0.11 1 2\r\n",        /* unknown protocols */
                "PROXY tcp4 192.168.0.1 192.168.0.11 1 2\r\n",
                "PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
                "PROXY UNKNOWNX\r\n",
                "PROXY UNKNOWN\r \r\n",
                "PROXY \r\n",
                "PROXY TCP4\r\n",
                "PROXY TCP4 \r\n",
                "proxy TCP4 192.168.0.1 192.168.0.11 1 2\r\n",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                cr_log_info("bad[%zu]", i);
                expect_invalid_str(bad[i]);
        }
}

Test(proxyproto, v1_garbage_is_refused_before_the_line_ends) {
        const char *reason = NULL;

        /* A letter where only digits and dots may come: refused on the spot. */
        cr_assert_eq(invalid_at("PROXY TCP4 192.x", 16, &reason), 16);
        cr_assert_eq(invalid_at("PROXY TCP6 ::g", 14, &reason), 14);
        cr_assert_eq(invalid_at("PROXY TCP4 1 2 3 4 5", 20, &reason), 19, "a fourth space");
        cr_assert_eq(invalid_at("PROXY UNKNOWNX", 14, &reason), 14);
        cr_assert_eq(invalid_at("PROXY TCP4 1.2.3.4 \n", 20, &reason), 20);
}

/* ---- v2 ---- */

Test(proxyproto, v2_tcp_over_ipv4) {
        uint8_t body[12], buf[64];
        size_t n = v2(buf, 0x21, 0x11, body, v2_inet_body(body));
        ProxyHeader h = expect_done(buf, n);

        cr_assert_eq(n, 28);
        cr_assert_eq(h.version, 2);
        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v4(&h.source, "192.0.2.7", 40000);
        check_v4(&h.destination, "198.51.100.1", 7000);
}

Test(proxyproto, v2_tcp_over_ipv6) {
        uint8_t body[36], buf[64];
        ProxyHeader h;

        cr_assert_eq(inet_pton(AF_INET6, "2001:db8::7", body), 1);
        cr_assert_eq(inet_pton(AF_INET6, "2001:db8::1", body + 16), 1);
        body[32] = 0xff, body[33] = 0xff, body[34] = 0x00, body[35] = 0x01;
        h = expect_done(buf, v2(buf, 0x21, 0x21, body, sizeof(body)));
        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v6(&h.source, "2001:db8::7", 65535);
        check_v6(&h.destination, "2001:db8::1", 1);
}

Test(proxyproto, v2_local_uses_the_real_endpoints_whatever_the_block_says) {
        uint8_t body[40] = { 0 }, buf[64];
        ProxyHeader h;

        h = expect_done(buf, v2(buf, 0x20, 0x00, NULL, 0));
        cr_assert_eq(h.version, 2);
        cr_assert_eq(h.command, PROXY_COMMAND_LOCAL);
        check_unspec(&h);
        /* "must not assume zero is presented for LOCAL connections", and the family is ignored. */
        v2_inet_body(body);
        h = expect_done(buf, v2(buf, 0x20, 0x11, body, 12));
        cr_assert_eq(h.command, PROXY_COMMAND_LOCAL);
        check_unspec(&h);
        h = expect_done(buf, v2(buf, 0x20, 0xff, body, 5));
        cr_assert_eq(h.command, PROXY_COMMAND_LOCAL);
}

/* Byte 14 of a PROXY command: the seven pairs the spec defines (UNSPEC, TCP and UDP over
 * IPv4 and IPv6, UNIX stream and datagram); any other "must be rejected as invalid by
 * receivers" (haproxy's doc/proxy-protocol.txt, 2.2). They used to be taken as UNKNOWN, and
 * such a connection was the balancer's own: past allow/deny and the per-source limits. */
Test(proxyproto, v2_an_undefined_family_and_transport_pair_is_refused) {
        uint8_t body[300] = { 0 }, buf[PROXY_HEADER_MAX];
        static const uint8_t undefined[] = { 0x01, 0x02, 0x10, 0x20, 0x30, 0x13, 0x23, 0x33, 0x03 };

        for (size_t i = 0; i < sizeof(undefined); i++) {
                cr_log_info("family/transport 0x%02x", undefined[i]);
                expect_invalid(buf, v2(buf, 0x21, undefined[i], body, 36));
        }
        /* LOCAL: the block is the balancer's own business, ignored whatever it says. */
        expect_done(buf, v2(buf, 0x20, 0x30, body, 12));
}

Test(proxyproto, v2_unspec_unix_and_datagrams_fall_back_to_the_real_endpoints) {
        uint8_t body[300] = { 0 }, buf[PROXY_HEADER_MAX];
        static const uint8_t fams[] = { 0x00, 0x12, 0x22, 0x31, 0x32 };
        ProxyHeader h;

        for (size_t i = 0; i < sizeof(fams); i++) {
                static const size_t block[4] = { 0, 12, 36, 216 }; /* by family */
                size_t len = block[fams[i] >> 4];

                cr_log_info("family/transport 0x%02x", fams[i]);
                h = expect_done(buf, v2(buf, 0x21, fams[i], body, len));
                cr_assert_eq(h.command, PROXY_COMMAND_UNKNOWN);
                check_unspec(&h);
        }
        /* AF_UNSPEC: the block is ignored, whatever its size. */
        h = expect_done(buf, v2(buf, 0x21, 0x00, body, 100));
        cr_assert_eq(h.command, PROXY_COMMAND_UNKNOWN);
}

Test(proxyproto, v2_tlvs_are_skipped) {
        uint8_t body[200], buf[PROXY_HEADER_MAX];
        size_t n = v2_inet_body(body);
        static const uint8_t good[] = {
                0x01, 0x00, 0x02, 'h', '2',
                0x04, 0x00, 0x00,
                /* SSL: client flags, verify, then a sub-TLV (version): 1 + 4 + 7 = 12 bytes */
                0x20, 0x00, 0x0c, 0x01, 0, 0, 0, 0, 0x21, 0x00, 0x04, 'T', 'L', 'S', '3',
                0xe0, 0x00, 0x01, 0xff,                            /* a custom type */
        };
        ProxyHeader h;

        memcpy(body + n, good, sizeof(good));
        h = expect_done(buf, v2(buf, 0x21, 0x11, body, n + sizeof(good)));
        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v4(&h.source, "192.0.2.7", 40000);

        /* Cut inside the SSL TLV: its length (12) now runs past the end of the header. */
        expect_invalid(buf, v2(buf, 0x21, 0x11, body, n + sizeof(good) - 4 - 4));
}

Test(proxyproto, v2_malformed_tlvs_are_refused) {
        uint8_t body[64], buf[128];
        size_t n = v2_inet_body(body);

        body[n] = 0x01, body[n + 1] = 0x00, body[n + 2] = 0x05, body[n + 3] = 'x';
        expect_invalid(buf, v2(buf, 0x21, 0x11, body, n + 4)); /* value shorter than its length */
        expect_invalid(buf, v2(buf, 0x21, 0x11, body, n + 2)); /* a TLV header cut short */
        expect_invalid(buf, v2(buf, 0x21, 0x11, body, n + 1));
        body[n + 2] = 0x01;
        cr_assert_eq(expect_done(buf, v2(buf, 0x21, 0x11, body, n + 4)).command, PROXY_COMMAND_PROXY);
}

Test(proxyproto, v2_address_block_shorter_than_the_family_is_refused) {
        uint8_t body[300] = { 0 }, buf[PROXY_HEADER_MAX];

        expect_invalid(buf, v2(buf, 0x21, 0x11, body, 11));
        expect_invalid(buf, v2(buf, 0x21, 0x21, body, 35));
        expect_invalid(buf, v2(buf, 0x21, 0x21, body, 12));
        expect_invalid(buf, v2(buf, 0x21, 0x31, body, 215));
        expect_invalid(buf, v2(buf, 0x21, 0x11, body, 0));
}

Test(proxyproto, v2_version_command_family_and_transport_are_checked) {
        uint8_t buf[64], body[12];
        const char *reason = NULL;

        v2_inet_body(body);
        for (unsigned version = 0; version < 16; version++) {
                if (version == 2)
                        continue;
                v2(buf, (uint8_t) (version << 4 | 1), 0x11, body, 12);
                cr_assert_eq(invalid_at(buf, 28, &reason), 13, "version %u", version);
                cr_assert_str_eq(reason, "v2: the version is not 2");
        }
        for (unsigned command = 2; command < 16; command++) {
                v2(buf, (uint8_t) (0x20 | command), 0x11, body, 12);
                cr_assert_eq(invalid_at(buf, 28, &reason), 13, "command %u", command);
        }
        for (unsigned family = 4; family < 16; family++) {
                v2(buf, 0x21, (uint8_t) (family << 4 | 1), body, 12);
                cr_assert_eq(invalid_at(buf, 28, &reason), 14, "family %u", family);
        }
        for (unsigned transport = 3; transport < 16; transport++) {
                v2(buf, 0x21, (uint8_t) (0x10 | transport), body, 12);
                cr_assert_eq(invalid_at(buf, 28, &reason), 14, "transport %u", transport);
        }
}

Test(proxyproto, v2_length_is_bounded) {
        uint8_t body[PROXY_HEADER_MAX] = { 0 }, buf[PROXY_HEADER_MAX + 16];
        size_t n = v2_inet_body(body), max_body = PROXY_HEADER_MAX - 16;
        const char *reason = NULL;

        /* Filled with NOOP TLVs up to the bound exactly: 4,096 bytes in all. */
        body[n] = 0x04;
        body[n + 1] = (uint8_t) ((max_body - n - 3) >> 8);
        body[n + 2] = (uint8_t) (max_body - n - 3);
        cr_assert_eq(expect_done(buf, v2(buf, 0x21, 0x11, body, max_body)).command, PROXY_COMMAND_PROXY);

        /* One byte more is refused as soon as the length field is in, not after 4,097 bytes. */
        v2(buf, 0x21, 0x11, body, max_body);
        buf[14] = (uint8_t) ((max_body + 1) >> 8);
        buf[15] = (uint8_t) (max_body + 1);
        cr_assert_eq(invalid_at(buf, 16, &reason), 16);
        cr_assert_str_eq(reason, "v2: the header is longer than 4096 bytes");
        buf[14] = buf[15] = 0xff;
        cr_assert_eq(invalid_at(buf, 16, &reason), 16);
}

/* ---- the incremental parser ---- */

Test(proxyproto, feed_leaves_the_client_bytes_of_a_large_first_read) {
        static const char line[] = "PROXY TCP4 192.0.2.7 192.0.2.8 1 2\r\n";
        uint8_t big[2000];
        ProxyParser p;
        ProxyHeader h;
        size_t used = 0;

        memset(big, 'x', sizeof(big));
        memcpy(big, line, sizeof(line) - 1);
        proxy_parser_init(&p);
        cr_assert_eq(proxy_feed(&p, big, sizeof(big), &used, &h, NULL), PROXY_DONE);
        cr_assert_eq(used, sizeof(line) - 1);
        check_v4(&h.source, "192.0.2.7", 1);
}

Test(proxyproto, feed_in_three_pieces_at_every_pair_of_cuts) {
        uint8_t body[64], buf[128];
        size_t n = v2_inet_body(body);
        ProxyHeader want, got;

        body[n] = 0x05, body[n + 1] = 0x00, body[n + 2] = 0x03, body[n + 3] = 'a', body[n + 4] = 'b';
        body[n + 5] = 'c';
        n = v2(buf, 0x21, 0x11, body, n + 6);
        cr_assert_eq(proxy_parse(buf, n, &want, NULL, NULL), PROXY_DONE);
        for (size_t a = 0; a <= n; a++)
                for (size_t b = a; b <= n; b++) {
                        ProxyParser p;
                        size_t used[3], total = 0;
                        ProxyStatus s;

                        proxy_parser_init(&p);
                        s = proxy_feed(&p, buf, a, &used[0], &got, NULL);
                        s = proxy_feed(&p, buf + a, b - a, &used[1], &got, NULL);
                        s = proxy_feed(&p, buf + b, n - b, &used[2], &got, NULL);
                        cr_assert_eq(s, PROXY_DONE, "cuts %zu, %zu", a, b);
                        total = used[0] + used[1] + used[2];
                        cr_assert_eq(total, n, "cuts %zu, %zu: used %zu", a, b, total);
                        cr_assert(same_header(&want, &got));
                }
}

/* ---- what Debian's HAProxy 2.6 really sends (captured on loopback) ---- */

Test(proxyproto, haproxy_health_checks_and_a_relayed_client) {
        /* `send-proxy` health check: a v1 line with HAProxy's own connection. */
        static const char v1_check[] = "PROXY TCP4 127.0.0.1 127.0.0.1 49248 17101\r\n";
        /* `send-proxy-v2` health check: LOCAL, AF_UNSPEC, no address block. */
        static const uint8_t v2_check[] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
                                            0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00 };
        /* `send-proxy-v2` for a client from 127.0.0.2:54739 to the frontend 127.0.0.1:17100. */
        static const uint8_t v2_client[] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49,
                                             0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 0x7f, 0x00, 0x00, 0x02,
                                             0x7f, 0x00, 0x00, 0x01, 0xd5, 0xd3, 0x42, 0xcc };
        ProxyHeader h = expect_done(v1_check, sizeof(v1_check) - 1);

        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v4(&h.source, "127.0.0.1", 49248);
        h = expect_done(v2_check, sizeof(v2_check));
        cr_assert_eq(h.command, PROXY_COMMAND_LOCAL);
        h = expect_done(v2_client, sizeof(v2_client));
        cr_assert_eq(h.command, PROXY_COMMAND_PROXY);
        check_v4(&h.source, "127.0.0.2", 54739);
        check_v4(&h.destination, "127.0.0.1", 17100);
}
