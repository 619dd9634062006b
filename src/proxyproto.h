/* proxyproto: the PROXY protocol header (v1 text, v2 binary) a load balancer puts in front of a
 * client's bytes, as a pure function of bytes in → result. No sockets, no allocation, no logging:
 * the session feeds it what it read, and the unit tests and the fuzzer drive the very same code.
 * Specification: haproxy's doc/proxy-protocol.txt (2020/03/05). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The longest v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses and ports). */
#define PROXY_V1_MAX 107
/* The longest header of either version. The spec sizes v2's address block to fit the smallest
 * TCP segment every host must accept (576 - 40 bytes), but TLVs follow it: those HAProxy adds
 * for a TLS client (authority, unique id, SSL details) pass 536 bytes. As nginx, hellod reads
 * up to 4,096 bytes; a v2 header announcing more (16 + its length field) is refused. The
 * parser holds what came while the header is awaited, and goes once it is in. */
#define PROXY_HEADER_MAX 4096
#define PROXY_V2_HEADER_MIN 16

typedef enum ProxyStatus {
        PROXY_NEED_MORE, /* the bytes so far begin a valid header: read more */
        PROXY_DONE,      /* a complete, valid header */
        PROXY_INVALID,   /* not a PROXY header, or a malformed one: close the connection */
} ProxyStatus;

typedef enum ProxyCommand {
        /* The balancer's own connection (a v2 LOCAL health check): use the real endpoints. */
        PROXY_COMMAND_LOCAL,
        /* Relayed for a client: source and destination are the client's connection. */
        PROXY_COMMAND_PROXY,
        /* Relayed, but the balancer could not or would not say for whom (v1 UNKNOWN; v2 with
         * AF_UNSPEC, AF_UNIX, or a datagram transport): use the real endpoints. */
        PROXY_COMMAND_UNKNOWN,
} ProxyCommand;

typedef struct ProxyHeader {
        unsigned version; /* 1 or 2 */
        ProxyCommand command;
        /* AF_INET or AF_INET6 (both the same family) with PROXY_COMMAND_PROXY; AF_UNSPEC
         * (all zero) otherwise. */
        struct sockaddr_storage source, destination;
} ProxyHeader;

/*
 * proxy_parse: looks at the first N bytes a connection sent (all of them, from its first byte).
 *   PROXY_NEED_MORE: they begin a valid header (then N < PROXY_HEADER_MAX): read more, and call
 *     again with all the bytes so far.
 *   PROXY_DONE: the first *RET_LEN bytes (<= N) are a valid header, described in *RET; bytes
 *     after it are the client's own and are never looked at.
 *   PROXY_INVALID: *RET_REASON (a static string) says why. Garbage is refused as soon as it is
 *     seen: a first byte that starts neither version is refused on its own.
 * RET, RET_LEN and RET_REASON are written only for the status they belong to; any may be NULL.
 */
ProxyStatus proxy_parse(const void *in, size_t n, ProxyHeader *ret, size_t *ret_len,
                        const char **ret_reason);

/* ProxyParser: proxy_parse() over bytes that arrive in pieces, for a caller that has nowhere
 * else to keep them. */
typedef struct ProxyParser {
        uint8_t buf[PROXY_HEADER_MAX];
        size_t len;
        ProxyStatus status;
        ProxyHeader header;   /* once PROXY_DONE */
        const char *reason;   /* once PROXY_INVALID */
} ProxyParser;

void proxy_parser_init(ProxyParser *p);

/*
 * proxy_feed: the next N bytes the connection sent. *RET_USED says how many of them belong to
 * the header: all N with PROXY_NEED_MORE; with PROXY_DONE the header's last bytes, so that
 * IN[*RET_USED..N) are the client's first bytes; with PROXY_INVALID, 0. Once done or invalid
 * the parser keeps its answer: feeding more uses nothing and returns it again.
 * RET (PROXY_DONE) and RET_REASON (PROXY_INVALID) may be NULL.
 */
ProxyStatus proxy_feed(ProxyParser *p, const void *in, size_t n, size_t *ret_used, ProxyHeader *ret,
                       const char **ret_reason);

const char *proxy_command_to_string(ProxyCommand command);
