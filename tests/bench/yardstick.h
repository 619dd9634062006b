/* yardstick: what the two minimal benchmark servers share: the command line, the listener
 * and the protocol (hellod's defaults: "Welcome!", "Hello, {name}!", exit, lines of at most
 * 1024 bytes, line or chunk framing). Header-only: each yardstick is one executable. */
#pragma once

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define YS_MAX_LINE 1024
#define YS_GREETING "Welcome!"
#define YS_PREFIX "Hello, "
#define YS_SUFFIX "!"
#define YS_TOO_LONG "ERR line too long\r\n"
/* The worst case of one read's replies: two input bytes ("a\n") give 11 output bytes, and a
 * line carried over from earlier reads adds at most one reply of the longest line. */
#define YS_OUT_SIZE(in_size) ((in_size) * 6 + YS_MAX_LINE + 64)

typedef struct YsArgs {
        bool chunk;
        unsigned loops;
        const char *host;
        unsigned port;
} YsArgs;

__attribute__((noreturn)) static inline void ys_usage(const char *prog, bool loops) {
        fprintf(stderr, "Usage: %s [--chunk]%s [--host ADDR] PORT\n", prog, loops ? " [--loops N]" : "");
        exit(2);
}

static inline YsArgs ys_parse_args(int argc, char **argv, bool loops) {
        YsArgs a = { .loops = 1, .host = "127.0.0.1" };
        bool have_port = false;

        for (int i = 1; i < argc; i++) {
                char *end;
                unsigned long v;

                if (strcmp(argv[i], "--chunk") == 0) {
                        a.chunk = true;
                } else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
                        a.host = argv[++i];
                } else if (loops && strcmp(argv[i], "--loops") == 0 && i + 1 < argc) {
                        v = strtoul(argv[++i], &end, 10);
                        if (*end || v < 1 || v > 64)
                                ys_usage(argv[0], loops);
                        a.loops = (unsigned) v;
                } else if (!have_port && argv[i][0] != '-') {
                        v = strtoul(argv[i], &end, 10);
                        if (*end || v < 1 || v > 65535)
                                ys_usage(argv[0], loops);
                        a.port = (unsigned) v;
                        have_port = true;
                } else {
                        ys_usage(argv[0], loops);
                }
        }
        if (!have_port)
                ys_usage(argv[0], loops);
        return a;
}

/* ys_raise_nofile: soft RLIMIT_NOFILE up to the hard limit, as hellod does. */
static inline void ys_raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

/* ys_listen: a listening TCP socket on HOST:PORT (IPv4 or IPv6 literal); exits on failure. */
static inline int ys_listen(const YsArgs *a, bool reuseport, bool nonblock) {
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(a->port) };
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(a->port) };
        const struct sockaddr *sa = (const struct sockaddr *) &sin;
        socklen_t len = sizeof(sin);
        int one = 1, fd;

        if (inet_pton(AF_INET, a->host, &sin.sin_addr) != 1) {
                if (inet_pton(AF_INET6, a->host, &sin6.sin6_addr) != 1) {
                        fprintf(stderr, "yardstick: '%s' is not an IP address\n", a->host);
                        exit(2);
                }
                sa = (const struct sockaddr *) &sin6;
                len = sizeof(sin6);
        }
        fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
            bind(fd, sa, len) < 0 || listen(fd, 4096) < 0) {
                fprintf(stderr, "yardstick: cannot listen on %s port %u: %s\n", a->host, a->port,
                        strerror(errno));
                exit(1);
        }
        return fd;
}

/* YsProto: one connection's protocol state; the unterminated line carried across reads. */
typedef struct YsProto {
        bool chunk;
        size_t pending_len;
        char pending[YS_MAX_LINE + 1]; /* the longest line, plus the '\r' before its '\n' */
} YsProto;

static inline size_t ys_greeting(const YsProto *p, char *out) {
        memcpy(out, YS_GREETING "\r\n", sizeof(YS_GREETING) + 1);
        return sizeof(YS_GREETING) - 1 + (p->chunk ? 0 : 2);
}

static inline size_t ys_reply(const YsProto *p, char *out, const char *a, size_t an, const char *b,
                              size_t bn) {
        size_t o = sizeof(YS_PREFIX) - 1;

        memcpy(out, YS_PREFIX, o);
        memcpy(out + o, a, an);
        o += an;
        memcpy(out + o, b, bn);
        o += bn;
        memcpy(out + o, YS_SUFFIX "\r\n", sizeof(YS_SUFFIX) + 1);
        return o + sizeof(YS_SUFFIX) - 1 + (p->chunk ? 0 : 2);
}

/* ys_strip_cr: drops the '\r' of a "\r\n" terminator from the message A+B. */
static inline void ys_strip_cr(const char *a, size_t *an, const char *b, size_t *bn) {
        if (*bn > 0) {
                if (b[*bn - 1] == '\r')
                        (*bn)--;
        } else if (*an > 0 && a[*an - 1] == '\r') {
                (*an)--;
        }
}

/* ys_message: one complete message A+B (a carried part and the rest), terminator removed.
 * Appends its reply at OUT + *O; returns true when the connection must close. */
static inline bool ys_message(const YsProto *p, const char *a, size_t an, const char *b, size_t bn,
                              char *out, size_t *o) {
        if (an + bn > YS_MAX_LINE) {
                memcpy(out + *o, YS_TOO_LONG, sizeof(YS_TOO_LONG) - 1);
                *o += sizeof(YS_TOO_LONG) - 1;
                return true;
        }
        if (an + bn == 4 && memcmp(a, "exit", an) == 0 && memcmp(b, &"exit"[an], bn) == 0)
                return true;
        if (an + bn == 0)
                return false; /* empty lines get no reply */
        *o += ys_reply(p, out + *o, a, an, b, bn);
        return false;
}

/* ys_feed: the bytes of one read; replies appended to OUT (YS_OUT_SIZE(n) bytes), their
 * length in *RET_LEN. Returns true when the connection must close (exit or an error: the
 * rest of the input is discarded). */
static inline bool ys_feed(YsProto *p, const char *in, size_t n, char *out, size_t *ret_len) {
        size_t o = 0;

        *ret_len = 0;
        if (p->chunk) {
                /* One read is one message; a trailing "\n" or "\r\n" is not part of it. */
                if (n > 0 && in[n - 1] == '\n') {
                        n--;
                        if (n > 0 && in[n - 1] == '\r')
                                n--;
                }
                bool close = ys_message(p, "", 0, in, n, out, &o);
                *ret_len = o;
                return close;
        }
        while (n > 0) {
                const char *nl = memchr(in, '\n', n);

                if (!nl) {
                        if (p->pending_len + n > YS_MAX_LINE + 1 ||
                            (p->pending_len + n == YS_MAX_LINE + 1 && in[n - 1] != '\r')) {
                                memcpy(out + o, YS_TOO_LONG, sizeof(YS_TOO_LONG) - 1);
                                *ret_len = o + sizeof(YS_TOO_LONG) - 1;
                                return true;
                        }
                        memcpy(p->pending + p->pending_len, in, n);
                        p->pending_len += n;
                        break;
                }
                size_t an = p->pending_len, bn = (size_t) (nl - in);

                ys_strip_cr(p->pending, &an, in, &bn);
                if (ys_message(p, p->pending, an, in, bn, out, &o)) {
                        *ret_len = o;
                        return true;
                }
                p->pending_len = 0;
                n -= (size_t) (nl - in) + 1;
                in = nl + 1;
        }
        *ret_len = o;
        return false;
}

/* ys_eof: the client half-closed: an unterminated last line is answered. */
static inline size_t ys_eof(YsProto *p, char *out) {
        size_t o = 0;

        if (!p->chunk && p->pending_len > 0) {
                size_t an = p->pending_len, bn = 0;

                ys_strip_cr(p->pending, &an, "", &bn);
                (void) ys_message(p, p->pending, an, "", 0, out, &o);
        }
        p->pending_len = 0;
        return o;
}
