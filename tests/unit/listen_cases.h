/* listen_cases: `listen` entries and what they mean, shared by test_addr (the grammar itself) and
 * test_conf (the same entries through a config file). */
#pragma once

#include <stdint.h>

typedef struct ValidSpec {
        const char *text, *host;
        uint16_t port;
} ValidSpec;

static const ValidSpec valid_specs[] = {
        { "127.0.0.1", "127.0.0.1", 0 },
        { "127.0.0.1:7000", "127.0.0.1", 7000 },
        { "0.0.0.0:1", "0.0.0.0", 1 },
        { "[::1]:7000", "::1", 7000 },
        { "[::]:65535", "::", 65535 },
        { "::", "::", 0 },
        { "::1", "::1", 0 },
        { "::1:ffff", "::1:ffff", 0 }, /* the last group is no decimal port: not ambiguous */
        { "[::1:9999]", "::1:9999", 0 },
        { "localhost", "localhost", 0 },
        { "localhost:8080", "localhost", 8080 },
        { "my-host", "my-host", 0 },
        { "my-host.example.com:65535", "my-host.example.com", 65535 },
        { "a", "a", 0 },
        { "1.2.3.4a", "1.2.3.4a", 0 }, /* not all digits and dots: a name */
        { "fe80::1%eth0", "fe80::1%eth0", 0 }, /* link-local, on its interface */
        { "[fe80::1%eth0]:7000", "fe80::1%eth0", 7000 },
        { "[FE80::A%br-lan.10]", "FE80::A%br-lan.10", 0 },
        { "fe80::1%3", "fe80::1%3", 0 }, /* an interface's index */
};

static const char *const invalid_specs[] = {
        "",
        "[::1",
        "[1.2.3.4]",
        "[1.2.3.4]:80",
        "[localhost]",
        "[]",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "host:",
        "host:0",
        "host:65536",
        "host:99999999999999999999",
        "host:abc",
        "host:+80",
        "host:-1",
        "host: 80",
        "host:80 ",
        "host:80x",
        ":80",
        "1.2.3.4.5",
        "1.2.3",
        "256.1.1.1",
        "123",
        "0x7f.1:7000",               /* inet_aton forms, which getaddrinfo reads as 127.0.0.1 */
        "0x7f000001",
        "0x7f.0.0.1",
        "a b",
        " localhost",
        "*",
        "*:80",
        "fe80::zz",
        "fe80::1",                   /* link-local: no interface, so no host can listen on it */
        "fe80::1%",
        "fe80::1%eth0:80",           /* a bare IPv6 literal takes no port */
        "[fe80::1%eth0]x",
        "fe80::1%a/b",
        "fe80::1%a b",
        "fe80::1%..",
        "fe80::1%0123456789abcdef",  /* 16 bytes: more than an interface's name can have */
        "[fe80::1%e%f]",
        "::1%lo",                    /* an interface goes with a link-local address only */
        "[2001:db8::1%eth0]:7000",
        "127.0.0.1%lo",
        "fe80::zz%eth0",
        "[fe80::2]:7000",
        "ff02::1",                   /* multicast: no TCP listener */
        "[ff05::2]:7000",
        "224.0.0.1",
        "239.1.2.3:7000",
        "::1:9999",                  /* [::1]:9999 or [::1:9999]? */
        "2001:db8::1:80",
        "::ffff:192.0.2.1",          /* IPv4-mapped: IPv6-only sockets cannot take IPv4 */
        "[::ffff:127.0.0.1]:7003",
        "a..b",
        ".a",
        "a.",
        "-a",
        "a-",
        "under_score",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* a 64-byte label */
};

