/* test_addr: address text and per-client keys; the per-address table; the `listen` entry grammar. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "iptable.h"
#include "listen_cases.h"

static struct sockaddr_in v4(const char *ip, uint16_t port) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };

        cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1);
        return a;
}

static struct sockaddr_in6 v6(const char *ip, uint16_t port) {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };

        cr_assert_eq(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
        return a;
}

Test(addr, format_ipv4_and_ipv6) {
        char buf[ADDR_STR_MAX];
        struct sockaddr_in a = v4("127.0.0.1", 9999);
        struct sockaddr_in6 b = v6("::1", 7000);

        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "127.0.0.1:9999");
        cr_assert_str_eq(addr_format((struct sockaddr *) &b, buf, sizeof(buf)), "[::1]:7000");
}

/* A link-local address is shown with its interface, by name, or by index once it is gone; any
 * other address without, whatever its scope ID. */
Test(addr, a_link_local_address_is_shown_on_its_interface) {
        char buf[ADDR_STR_MAX];
        struct sockaddr_in6 a = v6("fe80::7", 4000), b = v6("2001:db8::7", 4000);

        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "[fe80::7]:4000");
        a.sin6_scope_id = if_nametoindex("lo");
        cr_assert_neq(a.sin6_scope_id, 0, "no interface lo");
        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "[fe80::7%lo]:4000");
        a.sin6_scope_id = 999999;
        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "[fe80::7%999999]:4000");
        b.sin6_scope_id = 1;
        cr_assert_str_eq(addr_format((struct sockaddr *) &b, buf, sizeof(buf)), "[2001:db8::7]:4000");
}

Test(addr, v4_mapped_is_shown_as_ipv4) {
        char buf[ADDR_STR_MAX];
        struct sockaddr_in6 a = v6("::ffff:192.0.2.7", 40000);

        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "192.0.2.7:40000");
}

/* reference_format: the test's own model of addr_format (the libc formatters). */
static void reference_format(const struct sockaddr *sa, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN];

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
                snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
                return;
        }
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
                inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
                snprintf(buf, size, "%s:%u", host, ntohs(in6->sin6_port));
        } else {
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
        }
}

/* Addresses and ports of every digit count (0, 9, 10, 99, 100, 255 in each octet; ports 0 to
 * 65535), v4-mapped and plain IPv6, each into every buffer size from 1 to ADDR_STR_MAX: the
 * text, and where it is cut, match the model byte for byte, and nothing past SIZE is written. */
Test(addr, format_matches_the_model_for_random_addresses_and_every_buffer_size) {
        static const uint8_t edges[] = { 0, 1, 9, 10, 99, 100, 199, 200, 255 };
        static const uint16_t ports[] = { 0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535 };
        unsigned seed = 11;

        for (int i = 0; i < 4000; i++) {
                struct sockaddr_storage ss = { 0 };
                uint8_t bytes[16];
                for (size_t k = 0; k < sizeof(bytes); k++)
                        bytes[k] = i % 2 ? edges[rand_r(&seed) % sizeof(edges)] : (uint8_t) rand_r(&seed);
                uint16_t port = i % 3 ? ports[rand_r(&seed) % (sizeof(ports) / sizeof(ports[0]))] : (uint16_t) rand_r(&seed);
                switch (i % 3) {
                case 0: {
                        struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                        in->sin_family = AF_INET;
                        in->sin_port = htons(port);
                        memcpy(&in->sin_addr, bytes, 4);
                        break;
                }
                default: {
                        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                        in6->sin6_family = AF_INET6;
                        in6->sin6_port = htons(port);
                        memcpy(&in6->sin6_addr, bytes, 16);
                        if (i % 3 == 1) { /* v4-mapped */
                                memset(in6->sin6_addr.s6_addr, 0, 10);
                                in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
                        }
                        break;
                }
                }
                for (size_t size = 1; size <= ADDR_STR_MAX; size++) {
                        char want[ADDR_STR_MAX + 8], got[ADDR_STR_MAX + 8];
                        memset(want, '#', sizeof(want));
                        memset(got, '#', sizeof(got));
                        reference_format((const struct sockaddr *) &ss, want, size);
                        cr_assert_eq(addr_format((const struct sockaddr *) &ss, got, size), got);
                        cr_assert_eq(memcmp(got, want, sizeof(got)), 0, "case %d, size %zu: \"%.*s\", want \"%s\"", i,
                                     size, (int) size, got, want);
                }
        }
}

Test(addr, v4_and_v4_mapped_are_the_same_client) {
        struct sockaddr_in a = v4("192.0.2.7", 1);
        struct sockaddr_in6 b = v6("::ffff:192.0.2.7", 2);
        struct sockaddr_in6 c = v6("2001:db8::7", 1);
        IpKey ka, kb, kc;

        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &a, &ka), 0);
        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &b, &kb), 0);
        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &c, &kc), 0);
        cr_assert_eq(memcmp(&ka, &kb, sizeof(ka)), 0);
        cr_assert_neq(memcmp(&ka, &kc, sizeof(ka)), 0);
}

/* A resumed connection's record names its peer; the stored socket must be connected to it
 * (handoff_peer_check()), IPv4 or IPv4-mapped alike, a link-local one on its interface. */
Test(addr, same_endpoint_takes_the_address_and_the_port) {
        struct sockaddr_in a = v4("192.0.2.7", 4000), a_port = v4("192.0.2.7", 4001), other = v4("192.0.2.8", 4000);
        struct sockaddr_in6 mapped = v6("::ffff:192.0.2.7", 4000), six = v6("2001:db8::7", 4000);
        struct sockaddr_in6 six_same = v6("2001:db8::7", 4000), six_port = v6("2001:db8::7", 1);
        struct sockaddr_in6 link = v6("fe80::7", 4000), link_other = v6("fe80::7", 4000);
        struct sockaddr unix_sa = { .sa_family = AF_UNIX };

        link.sin6_scope_id = 2;
        link_other.sin6_scope_id = 3;
        six_same.sin6_scope_id = 5; /* a global address: no interface of its own */

        cr_assert(addr_same_endpoint((struct sockaddr *) &a, (struct sockaddr *) &a));
        cr_assert(addr_same_endpoint((struct sockaddr *) &a, (struct sockaddr *) &mapped));
        cr_assert(addr_same_endpoint((struct sockaddr *) &mapped, (struct sockaddr *) &a));
        cr_assert(addr_same_endpoint((struct sockaddr *) &six, (struct sockaddr *) &six_same));
        cr_assert_not(addr_same_endpoint((struct sockaddr *) &a, (struct sockaddr *) &a_port));
        cr_assert_not(addr_same_endpoint((struct sockaddr *) &a, (struct sockaddr *) &other));
        cr_assert_not(addr_same_endpoint((struct sockaddr *) &a, (struct sockaddr *) &six));
        cr_assert_not(addr_same_endpoint((struct sockaddr *) &six, (struct sockaddr *) &six_port));
        cr_assert(addr_same_endpoint((struct sockaddr *) &link, (struct sockaddr *) &link));
        cr_assert_not(addr_same_endpoint((struct sockaddr *) &link, (struct sockaddr *) &link_other),
                      "one link-local address on two interfaces is two peers");
        cr_assert_not(addr_same_endpoint(&unix_sa, &unix_sa));
}

Test(addr, non_ip_family_is_refused) {
        struct sockaddr sa = { .sa_family = AF_UNIX };
        IpKey k;

        cr_assert_eq(ip_key_from_sockaddr(&sa, &k), -EAFNOSUPPORT);
}

/* numbered_source: the source numbered I, in 2001:db8::/32. */
static IpKey numbered_source(uint32_t i) {
        IpKey k = { .bytes = { 0x20, 0x01, 0x0d, 0xb8 } };

        memcpy(k.bytes + 12, &i, sizeof(i));
        return k;
}

Test(iptable, counts_up_and_down_and_forgets_at_zero) {
        struct sockaddr_in a = v4("192.0.2.1", 1), b = v4("192.0.2.2", 1);
        IpTable *t = NULL;
        IpKey ka, kb;

        ip_key_from_sockaddr((struct sockaddr *) &a, &ka);
        ip_key_from_sockaddr((struct sockaddr *) &b, &kb);
        cr_assert_eq(iptable_new(&t), 0);
        cr_assert_eq(iptable_count(t, &ka), 0);
        cr_assert_eq(iptable_inc(t, &ka), 0);
        cr_assert_eq(iptable_inc(t, &ka), 0);
        cr_assert_eq(iptable_inc(t, &kb), 0);
        cr_assert_eq(iptable_count(t, &ka), 2);
        cr_assert_eq(iptable_count(t, &kb), 1);
        cr_assert_eq(iptable_size(t), 2);
        iptable_dec(t, &ka, 0);
        iptable_dec(t, &kb, 0);
        cr_assert_eq(iptable_count(t, &ka), 1);
        cr_assert_eq(iptable_count(t, &kb), 0);
        cr_assert_eq(iptable_size(t), 1);
        iptable_dec(t, &ka, 0);
        iptable_dec(t, &ka, 0); /* one too many: harmless */
        cr_assert_eq(iptable_size(t), 0);
        cr_assert_null(iptable_free(t));
}

Test(iptable, many_distinct_clients) {
        enum { N = 20000 };
        IpTable *t = NULL;

        cr_assert_eq(iptable_new(&t), 0);
        for (uint32_t i = 0; i < N; i++) {
                IpKey k = numbered_source(i);
                cr_assert_eq(iptable_inc(t, &k), 0);
        }
        cr_assert_eq(iptable_size(t), N);
        for (uint32_t i = 0; i < N; i++) {
                IpKey k = numbered_source(i);
                cr_assert_eq(iptable_count(t, &k), 1);
                iptable_dec(t, &k, 0);
        }
        cr_assert_eq(iptable_size(t), 0);
        iptable_free(t);
}

/* ---- network blocks ---- */

static IpKey key_of(const char *ip) {
        struct sockaddr_storage ss = { 0 };
        IpKey k;

        if (strchr(ip, ':')) {
                struct sockaddr_in6 a = v6(ip, 1);
                memcpy(&ss, &a, sizeof(a));
        } else {
                struct sockaddr_in a = v4(ip, 1);
                memcpy(&ss, &a, sizeof(a));
        }
        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &ss, &k), 0);
        return k;
}

Test(mask, ipv6_clients_in_one_64_are_one_source) {
        IpKey a = key_of("2001:db8:1:2:aaaa::1"), b = key_of("2001:db8:1:2:bbbb::2"), c = key_of("2001:db8:1:3::1");

        ip_key_mask(&a, 32, 64);
        ip_key_mask(&b, 32, 64);
        ip_key_mask(&c, 32, 64);
        cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
        cr_assert_neq(memcmp(&a, &c, sizeof(a)), 0);
}

Test(mask, ipv4_keeps_its_own_prefix_and_stays_ipv4) {
        IpKey a = key_of("192.0.2.7"), b = key_of("192.0.2.200"), c = key_of("192.0.2.7");

        ip_key_mask(&a, 24, 64);
        ip_key_mask(&b, 24, 64);
        ip_key_mask(&c, 32, 64);
        cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
        cr_assert(ip_key_is_ipv4(&a));
        IpKey unmasked = key_of("192.0.2.7");
        cr_assert_eq(memcmp(c.bytes, unmasked.bytes, sizeof(c.bytes)), 0, "a /32 keeps every bit");
}

/* The prefix is part of the key: a network counted under one prefix is not found under another
 * (per_ip_ipv4_prefix changed on reload), though both mask to the same bytes. */
Test(mask, one_network_under_two_prefixes_is_two_keys) {
        IpKey wide = key_of("127.1.2.3"), narrow = key_of("127.0.0.5"), v6_wide = key_of("2001:db8:1::1"),
              v6_narrow = key_of("2001:db8:1::2");

        ip_key_mask(&wide, 8, 64);
        ip_key_mask(&narrow, 24, 64);
        cr_assert_eq(memcmp(wide.bytes, narrow.bytes, sizeof(wide.bytes)), 0, "127.0.0.0 either way");
        cr_assert_neq(memcmp(&wide, &narrow, sizeof(wide)), 0);
        ip_key_mask(&v6_wide, 32, 48);
        ip_key_mask(&v6_narrow, 32, 64);
        cr_assert_neq(memcmp(&v6_wide, &v6_narrow, sizeof(v6_wide)), 0);

        IpTable *t = NULL;
        cr_assert_eq(iptable_new(&t), 0);
        cr_assert_eq(iptable_inc(t, &wide), 0);
        cr_assert_eq(iptable_count(t, &narrow), 0, "a count under /8 found under /24");
        cr_assert_eq(iptable_count(t, &wide), 1);
        iptable_free(t);
}

Test(cidr, parse_match_and_format) {
        struct { const char *text, *in, *out, *formatted; } cases[] = {
                { "10.0.0.0/8", "10.255.1.2", "11.0.0.1", "10.0.0.0/8" },
                { "192.0.2.7", "192.0.2.7", "192.0.2.8", "192.0.2.7/32" },
                { "0.0.0.0/0", "203.0.113.9", "::1", "0.0.0.0/0" },
                { "2001:db8::/32", "2001:db8:ffff::1", "2001:db9::1", "2001:db8::/32" },
                { "::1", "::1", "::2", "::1/128" },
                /* A prefix written in IPv6 is for IPv6 clients: "::/0" and "::/8" matched every
                 * IPv4 client (kept as ::ffff:a.b.c.d), unless written inside ::ffff:0:0/96. */
                { "::/0", "2001:db8::1", "192.0.2.7", "::/0" },
                { "::/8", "::2", "127.0.0.1", "::/8" },
                { "::ffff:10.0.0.0/104", "10.1.2.3", "11.0.0.1", "10.0.0.0/8" },
                { "::ffff:0:0/96", "192.0.2.7", "2001:db8::1", "0.0.0.0/0" },
        };
        char buf[64], err[128];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                Cidr c;
                IpKey in = key_of(cases[i].in);

                cr_assert_eq(cidr_parse(cases[i].text, &c, err, sizeof(err)), 0, "%s: %s", cases[i].text, err);
                cr_assert(cidr_match(&c, &in), "%s should match %s", cases[i].text, cases[i].in);
                if (cases[i].out) {
                        IpKey out = key_of(cases[i].out);
                        cr_assert_not(cidr_match(&c, &out), "%s should not match %s", cases[i].text, cases[i].out);
                }
                cr_assert_str_eq(cidr_format(&c, buf, sizeof(buf)), cases[i].formatted);
        }
}

Test(cidr, invalid_forms) {
        const char *bad[] = { "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/8x",
                              "2001:db8::/129", "example.com", "10.0.0.1/8", "2001:db8::1/32", "1.2.3.4 /32" };
        char err[128];
        Cidr c;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_assert_eq(cidr_parse(bad[i], &c, err, sizeof(err)), -EINVAL, "'%s' was accepted", bad[i]);
        cr_assert_eq(cidr_parse("10.0.0.1/8", &c, err, sizeof(err)), -EINVAL);
        cr_assert_not_null(strstr(err, "10.0.0.0/8"), "no hint in: %s", err);
}

/* ---- the connection-rate bucket ---- */

/* fill: a new table holding IPTABLE_RATE_ENTRIES_MAX sources, each of which took a token
 * (RATE and BURST) at NOW, or opened a connection when RATE is 0. */
static IpTable *fill(unsigned rate, unsigned burst, uint64_t now) {
        IpTable *t = NULL;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, rate, burst, now);
        for (uint32_t i = 0; i < IPTABLE_RATE_ENTRIES_MAX; i++) {
                IpKey k = numbered_source(i);
                cr_assert_eq(rate ? iptable_take_token(t, &k, now) : iptable_inc(t, &k), rate ? 1 : 0);
        }
        return t;
}

Test(bucket, burst_then_refill_at_the_rate) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1"), other = key_of("192.0.2.2");
        uint64_t now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 2, 3, now);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(iptable_take_token(t, &k, now), 1, "burst token %d", i);
        cr_assert_eq(iptable_take_token(t, &k, now), 0, "the burst is spent");
        cr_assert_eq(iptable_take_token(t, &other, now), 1, "another source is not affected");
        cr_assert_eq(iptable_take_token(t, &k, now + 400000), 0, "0.8 tokens after 0.4 s at 2/s");
        cr_assert_eq(iptable_take_token(t, &k, now + 500000), 1, "1 token after 0.5 s at 2/s");
        cr_assert_eq(iptable_take_token(t, &k, now + 500000), 0);
        /* Refilled and unused: the entries are forgotten. */
        iptable_expire(t, now + 10 * 1000000);
        cr_assert_eq(iptable_size(t), 0);
        cr_assert_eq(iptable_take_token(t, &k, now + 10 * 1000000), 1);
        iptable_free(t);
}

Test(bucket, an_entry_with_connections_outlives_its_bucket) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1");

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 1, 1, 1000);
        cr_assert_eq(iptable_take_token(t, &k, 1000), 1);
        cr_assert_eq(iptable_inc(t, &k), 0);
        iptable_expire(t, 1000 + 60 * 1000000);
        cr_assert_eq(iptable_count(t, &k), 1);
        iptable_dec(t, &k, 1000 + 60 * 1000000);
        cr_assert_eq(iptable_size(t), 0);
        iptable_free(t);
}

Test(bucket, a_full_table_fails_open_to_the_caller) {
        uint64_t now = 5000000;
        IpTable *t = fill(1, 2, now);
        IpKey extra = { .bytes = { 0x20, 0x01, 0x0d, 0xb9 } };
        cr_assert_eq(iptable_take_token(t, &extra, now), -ENOSPC);
        /* Once the buckets refill, room comes back. */
        cr_assert_eq(iptable_take_token(t, &extra, now + 2 * 1000000), 1);
        iptable_free(t);
}

/* flood: a source trying every GAP usec for SECONDS from NOW, against RATE and BURST; how
 * many were let in. */
static unsigned flood(IpTable *t, const IpKey *k, unsigned rate, unsigned burst, uint64_t now, uint64_t gap,
                      unsigned seconds) {
        unsigned admitted = 0;

        iptable_set_rate(t, rate, burst, now);
        for (uint64_t at = now; at < now + seconds * 1000000ull; at += gap)
                admitted += iptable_take_token(t, k, at) == 1;
        return admitted;
}

/* The refill is exact however fast a source retries: each attempt used to add what the time
 * since the last one was worth in whole millitokens, and drop the rest, so a source trying
 * more than 1,000 times a token got nothing after its burst (and legitimate clients behind
 * the same address block with it). */
Test(bucket, a_source_retrying_fast_still_gets_the_rate) {
        static const struct { unsigned rate, burst; uint64_t gap; unsigned seconds; } cases[] = {
                { 1, 1, 999, 10 },  /* just under a millitoken a try */
                { 1, 1, 1, 3 },     /* every microsecond */
                { 3, 1, 250, 10 },
                { 10, 10, 150, 10 }, /* 1.5 millitokens a try: a third lost */
                /* whole millitokens a try, which the old bucket got right too */
                { 1000, 5, 7, 1 },
                { 1000000, 1, 1, 1 },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                IpTable *t = NULL;
                IpKey k = key_of("192.0.2.1");
                unsigned seconds = cases[i].seconds;

                cr_assert_eq(iptable_new(&t), 0);
                unsigned admitted = flood(t, &k, cases[i].rate, cases[i].burst, 1000000000, cases[i].gap, seconds);
                /* The burst at once, then RATE a second: the last token may fall just after
                 * the last try. */
                unsigned most = cases[i].burst + cases[i].rate * seconds;
                cr_assert(admitted <= most && admitted + 1 >= most,
                          "rate %u, burst %u, a try every %llu us for %u s: %u let in, %u wanted", cases[i].rate,
                          cases[i].burst, (unsigned long long) cases[i].gap, seconds, admitted, most);
                iptable_free(t);
        }
}

/* Never more than the burst plus the rate, whatever the spacing of the tries. */
Test(bucket, random_tries_never_get_more_than_the_rate) {
        uint64_t state = 0x9e3779b97f4a7c15ull;

        for (int round = 0; round < 200; round++) {
                IpTable *t = NULL;
                IpKey k = key_of("192.0.2.9");
                state ^= state << 13, state ^= state >> 7, state ^= state << 17;
                unsigned rate = 1 + (unsigned) (state % 500), burst = 1 + (unsigned) ((state >> 20) % 20);
                uint64_t start = 1000000000, at = start;
                unsigned admitted = 0;

                cr_assert_eq(iptable_new(&t), 0);
                iptable_set_rate(t, rate, burst, start);
                for (int i = 0; i < 5000; i++) {
                        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
                        at += state % 3000;
                        admitted += iptable_take_token(t, &k, at) == 1;
                        uint64_t most = burst + (at - start) * rate / 1000000;
                        cr_assert(admitted <= most, "round %d: %u let in by %llu us, at most %llu (rate %u, burst %u)",
                                  round, admitted, (unsigned long long) (at - start), (unsigned long long) most, rate,
                                  burst);
                }
                iptable_free(t);
        }
}

/* A reload that makes the burst smaller: a bucket fuller than that is capped at the new
 * burst, and its entry is forgotten once it refills. */
Test(bucket, a_smaller_burst_caps_a_fuller_bucket) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1");
        uint64_t now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 1, 10, now);
        cr_assert_eq(iptable_take_token(t, &k, now), 1); /* 9 left */
        iptable_set_rate(t, 1, 2, now + 1); /* a reload */
        for (int i = 0; i < 2; i++)
                cr_assert_eq(iptable_take_token(t, &k, now + 1), 1, "token %d of the new burst", i);
        cr_assert_eq(iptable_take_token(t, &k, now + 1), 0, "capped at the new burst of 2");
        iptable_expire(t, now + 3000000);
        cr_assert_eq(iptable_size(t), 0, "refilled after 2 s at 1/s, and forgotten");
        iptable_free(t);
}

/* spend: takes KEY's tokens at NOW until one is refused; how many were let in. */
static unsigned spend(IpTable *t, const IpKey *k, uint64_t now) {
        unsigned admitted = 0;

        while (iptable_take_token(t, k, now) == 1)
                cr_assert_lt(++admitted, 1000u);
        return admitted;
}

/* A reload that lowers the rate: what the old rate gave back until the reload stays, and the
 * new rate refills the rest. The bucket used to be full again at the time the old rate would
 * have filled it, once per source, as if the reload had not happened; and the sweep dropped
 * the entry by that time too, forgetting the bucket. */
Test(bucket, a_lower_rate_refills_from_the_reload_on) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1");
        const uint64_t s = 1000000, now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 5, 10, now);
        cr_assert_eq(spend(t, &k, now), 10);
        iptable_set_rate(t, 1, 10, now + s / 5); /* 1 token back by then, at 5 a second */
        iptable_expire(t, now + 2 * s + s / 2);
        cr_assert_eq(iptable_size(t), 1, "the drained bucket was forgotten when 5 a second would have filled it");
        /* 2.5 s after: 1 token at the old rate, 2.3 at the new one. */
        cr_assert_eq(spend(t, &k, now + 2 * s + s / 2), 3);
        /* 0.3 left: full again 9.7 s later at 1 a second, and forgotten then. */
        iptable_expire(t, now + 12 * s + s / 5 - 1);
        cr_assert_eq(iptable_size(t), 1);
        iptable_expire(t, now + 12 * s + s / 5);
        cr_assert_eq(iptable_size(t), 0);
        iptable_free(t);
}

/* A reload that raises the rate: the new rate applies from the reload on, and the bucket is
 * full (its entry forgotten) as soon as that rate fills it. */
Test(bucket, a_higher_rate_refills_from_the_reload_on) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1");
        const uint64_t s = 1000000, now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 1, 4, now);
        cr_assert_eq(spend(t, &k, now), 4);
        iptable_set_rate(t, 1000, 4, now + s / 2); /* half a token back by then */
        cr_assert_eq(spend(t, &k, now + s / 2 + 500), 1, "0.5 + 0.5 tokens");
        iptable_expire(t, now + s / 2 + 4500);
        cr_assert_eq(iptable_size(t), 0, "full after 4 ms at 1,000 a second, and forgotten");
        iptable_free(t);
}

/* A reload that raises the burst: a bucket already full is full at the new size, whether its
 * entry is still kept (here by a connection) or was forgotten; it used to be refilled to the
 * old burst first, and had to earn the rest at the rate. */
Test(bucket, a_larger_burst_fills_a_full_bucket) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1");
        const uint64_t s = 1000000, now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        iptable_set_rate(t, 1, 2, now);
        cr_assert_eq(iptable_take_token(t, &k, now), 1);
        cr_assert_eq(iptable_inc(t, &k), 0); /* kept while it refills, and after */
        iptable_set_rate(t, 1, 10, now + 5 * s);
        cr_assert_eq(spend(t, &k, now + 5 * s), 10);
        iptable_free(t);
}

/* A reload that turns the limit off forgets the buckets (an entry with connections stays for
 * its count), and one that turns it on again starts every source with a full bucket. */
Test(bucket, no_rate_forgets_the_buckets) {
        IpTable *t = NULL;
        IpKey k = key_of("192.0.2.1"), connected = key_of("192.0.2.2");
        const uint64_t now = 1000000000;

        cr_assert_eq(iptable_new(&t), 0);
        cr_assert_eq(iptable_take_token(t, &k, now), 1, "no rate set: no limit");
        iptable_set_rate(t, 1, 2, now);
        cr_assert_eq(spend(t, &k, now), 2);
        cr_assert_eq(spend(t, &connected, now), 2);
        cr_assert_eq(iptable_inc(t, &connected), 0);
        iptable_set_rate(t, 0, 2, now + 1);
        cr_assert_eq(iptable_size(t), 1, "the bucket kept only its entry with a connection");
        cr_assert_eq(iptable_count(t, &connected), 1);
        iptable_set_rate(t, 1, 2, now + 2);
        cr_assert_eq(spend(t, &k, now + 2), 2);
        cr_assert_eq(spend(t, &connected, now + 2), 2);
        iptable_free(t);
}

/* Sources with live connections are bounded by max_connections: only entries kept by their
 * bucket alone count against IPTABLE_RATE_ENTRIES_MAX, so a server with more connected
 * sources than that still limits the rate of a new one. */
Test(bucket, connected_sources_do_not_fill_the_table) {
        IpTable *t = fill(0, 0, 0);
        IpKey fresh = { .bytes = { 0x20, 0x01, 0x0d, 0xb9 } };

        iptable_set_rate(t, 1, 1, 5000000);
        cr_assert_eq(iptable_take_token(t, &fresh, 5000000), 1);
        cr_assert_eq(iptable_take_token(t, &fresh, 5000000), 0, "the new source is rate limited");
        iptable_free(t);
}

/* A full table looks for room a few chains at a time, not in a walk of every entry for each
 * new source (under the server's lock, which every loop's admissions wait for): the
 * once-a-second tick walks it all. */
Test(bucket, a_full_table_is_not_walked_for_each_new_source) {
        uint64_t now = 5000000;
        IpTable *t = fill(1, 1, now);

        /* A second later every bucket has refilled: all of them could go. */
        IpKey extra = { .bytes = { 0x20, 0x01, 0x0d, 0xb9 } };
        cr_assert_eq(iptable_take_token(t, &extra, now + 1000000), 1, "room found among the refilled");
        cr_assert_gt(iptable_size(t), IPTABLE_RATE_ENTRIES_MAX / 2, "%zu entries left: the whole table was walked",
                     iptable_size(t));
        /* The tick's walk forgets them all. */
        iptable_expire(t, now + 2000000);
        cr_assert_eq(iptable_size(t), 0);
        iptable_free(t);
}

/* ---- listen entries ---- */

Test(listen_spec, valid_forms) {
        for (size_t i = 0; i < sizeof(valid_specs) / sizeof(valid_specs[0]); i++) {
                ListenSpec s = { .host = NULL };
                char err[256] = "";

                cr_assert_eq(listen_spec_parse(valid_specs[i].text, &s, err, sizeof(err)), 0, "'%s': %s",
                             valid_specs[i].text, err);
                cr_expect_str_eq(s.host, valid_specs[i].host, "'%s'", valid_specs[i].text);
                cr_expect_eq(s.port, valid_specs[i].port, "'%s'", valid_specs[i].text);
                listen_spec_done(&s);
                cr_expect_null(s.host);
        }
}

Test(listen_spec, invalid_forms) {
        for (size_t i = 0; i < sizeof(invalid_specs) / sizeof(invalid_specs[0]); i++) {
                ListenSpec s = { .host = NULL, .port = 4242 };
                char err[256] = "";

                cr_expect_eq(listen_spec_parse(invalid_specs[i], &s, err, sizeof(err)), -EINVAL, "'%s'",
                             invalid_specs[i]);
                cr_expect_neq(err[0], '\0', "'%s': no reason given", invalid_specs[i]);
                cr_expect_null(s.host, "'%s': output touched on error", invalid_specs[i]);
                cr_expect_eq(s.port, 4242, "'%s': output touched on error", invalid_specs[i]);
        }
}

Test(listen_spec, reasons) {
        static const struct {
                const char *text, *why;
        } cases[] = {
                { "", "empty" },
                { "[::1", "']'" },
                { "[1.2.3.4]", "IPv6" },
                { "host:", "empty port" },
                { "host:0", "between 1 and 65535" },
                { "host:65536", "between 1 and 65535" },
                { "host:abc", "not a decimal number" },
                { "1.2.3.4.5", "IPv4" },
                { "*", "'*' is not accepted" },
                { "::1:9999", "write \"[::1]:9999\" for port 9999 on ::1, or \"[::1:9999]\"" },
                { "[::ffff:127.0.0.1]:7003", "write \"127.0.0.1:7003\" instead" },
                { "::ffff:10.0.0.1", "IPv4-mapped" },
                { "fe80::1", "link-local" },
                { "fe80::1", "fe80::1%eth0" },
                { "::1%lo", "a link-local address (fe80::/10) only" },
                { "fe80::1%a/b", "not an interface name" },
                { "fe80::1%0123456789abcdef", "not an interface name" },
                { "fe80::1%\xc9\xcf", "not an interface name" }, /* systemd takes printable ASCII only */
                { "fe80::1%e\x7f", "not an interface name" },
                { "[fe80::1]:7000", "listen on \"::\" or a global address" },
                { "ff02::1", "multicast" },
                { "224.0.0.1:7000", "multicast" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                ListenSpec s = { .host = NULL };
                char err[256] = "";

                (void) listen_spec_parse(cases[i].text, &s, err, sizeof(err));
                cr_expect(strstr(err, cases[i].why), "'%s': reason '%s' lacks '%s'", cases[i].text, err,
                          cases[i].why);
        }
}

Test(listen_spec, name_length_limits) {
        char name[300], err[256];
        ListenSpec s = { .host = NULL };

        /* 63-byte labels up to 253 bytes in all are fine; one byte more is not. */
        memset(name, 'a', sizeof(name));
        for (size_t i = 63; i < 253; i += 64)
                name[i] = '.';
        name[253] = '\0';
        cr_assert_eq(listen_spec_parse(name, &s, err, sizeof(err)), 0, "%s", err);
        cr_expect_str_eq(s.host, name);
        listen_spec_done(&s);
        name[253] = 'a';
        name[254] = '\0';
        cr_expect_eq(listen_spec_parse(name, &s, err, sizeof(err)), -EINVAL);
        memset(name, 'a', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        cr_expect_eq(listen_spec_parse(name, &s, err, sizeof(err)), -EINVAL);
}
