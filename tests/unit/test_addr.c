/* test_addr: address text and per-client keys; the per-address table. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "addr.h"
#include "iptable.h"

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

Test(addr, v4_mapped_is_shown_as_ipv4) {
        char buf[ADDR_STR_MAX];
        struct sockaddr_in6 a = v6("::ffff:192.0.2.7", 40000);

        cr_assert_str_eq(addr_format((struct sockaddr *) &a, buf, sizeof(buf)), "192.0.2.7:40000");
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

Test(addr, non_ip_family_is_refused) {
        struct sockaddr sa = { .sa_family = AF_UNIX };
        IpKey k;

        cr_assert_eq(ip_key_from_sockaddr(&sa, &k), -EAFNOSUPPORT);
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
        iptable_dec(t, &ka);
        iptable_dec(t, &kb);
        cr_assert_eq(iptable_count(t, &ka), 1);
        cr_assert_eq(iptable_count(t, &kb), 0);
        cr_assert_eq(iptable_size(t), 1);
        iptable_dec(t, &ka);
        iptable_dec(t, &ka); /* one too many: harmless */
        cr_assert_eq(iptable_size(t), 0);
        cr_assert_null(iptable_free(t));
}

Test(iptable, many_distinct_clients) {
        enum { N = 20000 };
        IpTable *t = NULL;

        cr_assert_eq(iptable_new(&t), 0);
        for (uint32_t i = 0; i < N; i++) {
                IpKey k = { { 0x20, 0x01, 0x0d, 0xb8 } };
                memcpy(k.bytes + 12, &i, sizeof(i));
                cr_assert_eq(iptable_inc(t, &k), 0);
        }
        cr_assert_eq(iptable_size(t), N);
        for (uint32_t i = 0; i < N; i++) {
                IpKey k = { { 0x20, 0x01, 0x0d, 0xb8 } };
                memcpy(k.bytes + 12, &i, sizeof(i));
                cr_assert_eq(iptable_count(t, &k), 1);
                iptable_dec(t, &k);
        }
        cr_assert_eq(iptable_size(t), 0);
        iptable_free(t);
}
