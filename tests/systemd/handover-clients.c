/* handover-clients: many conversations held across a restart of hellod, each checked byte for
 * byte afterwards (docs/zero-downtime.md, issue 12's booted test).
 *
 *   handover-clients [options] hold   opens N conversations, puts each in a state (below),
 *                                     prints "ready N" and waits for "check [STOP_MS]" on stdin
 *                                     (or SIGUSR1); then checks every conversation and reports
 *   handover-clients [options] greet  N new clients, each greeted and answered once (run it
 *                                     while hellod restarts: the socket's backlog holds them)
 *
 * The states, by connection number i (i % 10):
 *   0-1 partial  "p<i>" sent without its line end; on check "-end\r\n" completes it, and the
 *                reply must be "Hello, p<i>-end!\r\n"
 *   2-3 unread   K lines "u<i>.<k>\r\n" sent and their replies not read; on check the K
 *                replies, then one more line and its reply
 *   4-9 idle     one line answered, then quiet; on check one more line and its reply
 * Every connection must then hold exactly those bytes: no second greeting, no ERR line, no
 * close. The verdicts: kept (all bytes right), dropped (closed or reset before they came),
 * refused (an ERR line instead), wrong (other bytes), stalled (nothing complete by --timeout).
 * The gap: from STOP_MS (CLOCK_REALTIME milliseconds, e.g. `date +%s%3N` just before
 * `systemctl restart`), or else from the check command, to the first and to the last
 * conversation answered in full.
 *
 * Exit status: 0 when every conversation is kept (hold) or every client served (greet), 1 on
 * any loss, 2 on a usage or setup error. Everything is bounded by --timeout. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLIENTS_MAX 100000
#define EXPECT_MAX 65536 /* bytes one conversation still expects */

typedef enum Kind {
        KIND_PARTIAL,
        KIND_UNREAD,
        KIND_IDLE,
} Kind;

typedef enum Verdict {
        PENDING,
        KEPT,
        DROPPED,
        REFUSED,
        WRONG,
        STALLED,
} Verdict;

typedef struct Client {
        int fd;
        Kind kind;
        char *expect; /* what the check must read, exactly */
        size_t expect_len, got;
        Verdict verdict;
        uint64_t done_usec; /* when the last expected byte came */
} Client;

static struct {
        const char *host;
        unsigned port;
        unsigned n;
        unsigned unread_lines;
        unsigned timeout_sec;
        int rcvbuf;
        const char *greeting;
        char prefix[256], suffix[256];
} arg = {
        .host = "127.0.0.1",
        .port = 9999,
        .n = 1000,
        .unread_lines = 2,
        .timeout_sec = 30,
        .greeting = "Welcome!",
        .prefix = "Hello, ",
        .suffix = "!",
};

static volatile sig_atomic_t check_signal;

static void on_usr1(int sig) {
        (void) sig;
        check_signal = 1;
}

static uint64_t mono_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static uint64_t real_msec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what) {
        fprintf(stderr, "handover-clients: %s: %s\n", what, strerror(errno));
        exit(2);
}

/* raise_nofile: room for N sockets and a few more, as far as the hard limit (or, as root,
 * raising it) allows. */
static void raise_nofile(unsigned n) {
        struct rlimit rl;
        rlim_t want = (rlim_t) n + 64;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("getrlimit");
        if (rl.rlim_cur >= want)
                return;
        if (rl.rlim_max < want) {
                struct rlimit more = { want, want };
                if (setrlimit(RLIMIT_NOFILE, &more) == 0)
                        return;
                errno = EMFILE;
                die("RLIMIT_NOFILE's hard limit is below the number of clients");
        }
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("setrlimit");
}

static void set_timeouts(int fd, unsigned sec) {
        struct timeval tv = { .tv_sec = sec };

        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* dial: a blocking connection, or -1 (errno set). */
static int dial(void) {
        struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t) arg.port) };
        struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t) arg.port) };
        bool v6 = inet_pton(AF_INET6, arg.host, &a6.sin6_addr) == 1;
        int fd;

        if (!v6 && inet_pton(AF_INET, arg.host, &a4.sin_addr) != 1) {
                errno = EINVAL;
                return -1;
        }
        fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        if (arg.rcvbuf > 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &arg.rcvbuf, sizeof(arg.rcvbuf));
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int) { 1 }, sizeof(int));
        set_timeouts(fd, arg.timeout_sec);
        if (connect(fd, v6 ? (struct sockaddr *) &a6 : (struct sockaddr *) &a4, v6 ? sizeof(a6) : sizeof(a4)) < 0) {
                int e = errno;
                close(fd);
                errno = e;
                return -1;
        }
        return fd;
}

static int send_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -1;
                p += w;
                n -= (size_t) w;
        }
        return 0;
}

/* read_exact: reads N bytes and compares them with WANT; 0, or -1 with a description in WHY. */
static int read_exact(int fd, const char *want, size_t n, char *why, size_t why_size) {
        char buf[4096];
        size_t got = 0;

        while (got < n) {
                size_t chunk = n - got < sizeof(buf) ? n - got : sizeof(buf);
                ssize_t r = recv(fd, buf, chunk, 0);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0) {
                        snprintf(why, why_size, "%s after %zu of %zu bytes", r == 0 ? "closed" : strerror(errno), got, n);
                        return -1;
                }
                if (memcmp(buf, want + got, (size_t) r) != 0) {
                        snprintf(why, why_size, "got '%.*s'", (int) r, buf);
                        return -1;
                }
                got += (size_t) r;
        }
        return 0;
}

/* reply: the reply to NAME, into BUF; its length. */
static size_t reply(char *buf, size_t size, const char *name) {
        int n = snprintf(buf, size, "%s%s%s\r\n", arg.prefix, name, arg.suffix);
        return n > 0 && (size_t) n < size ? (size_t) n : 0;
}

static size_t greeting(char *buf, size_t size) {
        int n = snprintf(buf, size, "%s\r\n", arg.greeting);
        return n > 0 && (size_t) n < size ? (size_t) n : 0;
}

/* open_client: connected, greeted, and put in the state of its kind; C->expect set to what the
 * check must read. 0, or -1 with WHY. */
static int open_client(Client *c, unsigned i, char *why, size_t why_size) {
        char line[80], want[256], name[64];
        size_t n;

        c->fd = dial();
        if (c->fd < 0) {
                snprintf(why, why_size, "connect: %s", strerror(errno));
                return -1;
        }
        n = greeting(want, sizeof(want));
        if (read_exact(c->fd, want, n, why, why_size) < 0)
                return -1;
        c->expect = malloc(EXPECT_MAX);
        if (!c->expect) {
                snprintf(why, why_size, "out of memory");
                return -1;
        }
        c->kind = i % 10 < 2 ? KIND_PARTIAL : i % 10 < 4 ? KIND_UNREAD : KIND_IDLE;
        switch (c->kind) {
        case KIND_PARTIAL:
                snprintf(line, sizeof(line), "p%u", i);
                if (send_all(c->fd, line, strlen(line)) < 0)
                        goto failed;
                snprintf(name, sizeof(name), "p%u-end", i);
                c->expect_len = reply(c->expect, EXPECT_MAX, name);
                return 0;
        case KIND_UNREAD:
                for (unsigned k = 0; k < arg.unread_lines; k++) {
                        snprintf(name, sizeof(name), "u%u.%u", i, k);
                        n = reply(c->expect + c->expect_len, EXPECT_MAX - c->expect_len, name);
                        if (n == 0) {
                                snprintf(why, why_size, "--unread-lines too many");
                                return -1;
                        }
                        c->expect_len += n;
                        snprintf(line, sizeof(line), "%s\r\n", name);
                        if (send_all(c->fd, line, strlen(line)) < 0)
                                goto failed;
                }
                break;
        case KIND_IDLE:
                snprintf(name, sizeof(name), "i%u", i);
                snprintf(line, sizeof(line), "%s\r\n", name);
                n = reply(want, sizeof(want), name);
                if (send_all(c->fd, line, strlen(line)) < 0)
                        goto failed;
                if (read_exact(c->fd, want, n, why, why_size) < 0)
                        return -1;
                break;
        }
        /* unread and idle: the check sends one more line. */
        snprintf(name, sizeof(name), "n%u", i);
        n = reply(c->expect + c->expect_len, EXPECT_MAX - c->expect_len, name);
        if (n == 0) {
                snprintf(why, why_size, "--unread-lines too many");
                return -1;
        }
        c->expect_len += n;
        return 0;
failed:
        snprintf(why, why_size, "send: %s", strerror(errno));
        return -1;
}

/* send_rest: what the check sends to C: the end of the partial line, or one more line. */
static int send_rest(Client *c, unsigned i) {
        char line[64];

        if (c->kind == KIND_PARTIAL)
                snprintf(line, sizeof(line), "-end\r\n");
        else
                snprintf(line, sizeof(line), "n%u\r\n", i);
        return send_all(c->fd, line, strlen(line));
}

/* take: what came on connection I; settles its verdict when it is complete or wrong. */
static void take(Client *c, unsigned i, const char *buf, size_t n, uint64_t now) {
        size_t want = c->expect_len - c->got;

        if (n <= want && memcmp(buf, c->expect + c->got, n) == 0) {
                c->got += n;
                if (c->got == c->expect_len) {
                        c->verdict = KEPT;
                        c->done_usec = now;
                }
                return;
        }
        /* An ERR line where the expected bytes part: hellod ended the conversation. */
        size_t same = 0;
        while (same < n && same < want && buf[same] == c->expect[c->got + same])
                same++;
        c->verdict = n - same >= 3 && memcmp(buf + same, "ERR", 3) == 0 ? REFUSED : WRONG;
        fprintf(stderr, "handover-clients: connection %u: expected '%.*s', got '%.*s'\n", i,
                (int) (want < 80 ? want : 80), c->expect + c->got, (int) (n < 80 ? n : 80), buf);
}

/* collect: reads every pending client until each is settled or DEADLINE passes. */
static void collect(Client *clients, unsigned n, uint64_t deadline) {
        struct pollfd *pfd = calloc(n, sizeof(*pfd));
        unsigned *idx = calloc(n, sizeof(*idx));
        char buf[EXPECT_MAX];

        if (!pfd || !idx)
                die("calloc");
        for (;;) {
                unsigned m = 0;
                for (unsigned i = 0; i < n; i++)
                        if (clients[i].verdict == PENDING) {
                                pfd[m] = (struct pollfd) { .fd = clients[i].fd, .events = POLLIN };
                                idx[m++] = i;
                        }
                uint64_t now = mono_usec();
                if (m == 0 || now >= deadline)
                        break;
                int r = poll(pfd, m, (int) ((deadline - now) / 1000 + 1));
                if (r < 0 && errno != EINTR)
                        die("poll");
                now = mono_usec();
                for (unsigned k = 0; r > 0 && k < m; k++) {
                        Client *c = &clients[idx[k]];
                        if (!pfd[k].revents)
                                continue;
                        ssize_t got = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
                        if (got > 0)
                                take(c, idx[k], buf, (size_t) got, now);
                        else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                                c->verdict = DROPPED;
                                fprintf(stderr, "handover-clients: connection %u: %s after %zu of %zu bytes\n", idx[k],
                                        got == 0 ? "closed" : strerror(errno), c->got, c->expect_len);
                        }
                }
        }
        for (unsigned i = 0; i < n; i++)
                if (clients[i].verdict == PENDING)
                        clients[i].verdict = STALLED;
        free(pfd);
        free(idx);
}

/* wait_command: a "check [STOP_MS]" line on stdin, or SIGUSR1. Returns STOP_MS (or now). */
static uint64_t wait_command(void) {
        char line[128];
        size_t len = 0;

        for (;;) {
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                if (check_signal)
                        return real_msec();
                int r = poll(&p, 1, -1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        die("poll");
                ssize_t got = read(STDIN_FILENO, line + len, sizeof(line) - 1 - len);
                if (got <= 0) {
                        fprintf(stderr, "handover-clients: stdin closed before 'check'\n");
                        exit(2);
                }
                len += (size_t) got;
                line[len] = '\0';
                char *nl = strchr(line, '\n');
                if (!nl) {
                        if (len == sizeof(line) - 1)
                                len = 0; /* a line too long to be a command */
                        continue;
                }
                *nl = '\0';
                unsigned long long stop = 0;
                if (strcmp(line, "check") == 0)
                        return real_msec();
                if (sscanf(line, "check %llu", &stop) == 1)
                        return stop;
                fprintf(stderr, "handover-clients: unknown command '%s' (expected 'check [STOP_MS]')\n", line);
                len = 0;
        }
}

static int hold(void) {
        Client *clients = calloc(arg.n, sizeof(*clients));
        char why[256];
        unsigned count[STALLED + 1] = { 0 };

        if (!clients)
                die("calloc");
        for (unsigned i = 0; i < arg.n; i++) {
                clients[i].fd = -1;
                if (open_client(&clients[i], i, why, sizeof(why)) < 0) {
                        fprintf(stderr, "handover-clients: setting up connection %u: %s\n", i, why);
                        return 2;
                }
        }
        printf("ready %u\n", arg.n);
        fflush(stdout);

        uint64_t stop_ms = wait_command();
        uint64_t check_mono = mono_usec(), check_real = real_msec();
        /* STOP_MS on the monotonic clock: the stop was this long before the check. */
        uint64_t stop_mono = check_mono - (check_real > stop_ms ? (check_real - stop_ms) * 1000u : 0);

        for (unsigned i = 0; i < arg.n; i++)
                if (send_rest(&clients[i], i) < 0) {
                        clients[i].verdict = DROPPED;
                        fprintf(stderr, "handover-clients: connection %u: send: %s\n", i, strerror(errno));
                }
        collect(clients, arg.n, check_mono + (uint64_t) arg.timeout_sec * 1000000u);

        uint64_t first = UINT64_MAX, last = 0;
        for (unsigned i = 0; i < arg.n; i++) {
                Client *c = &clients[i];
                count[c->verdict]++;
                if (c->verdict == KEPT) {
                        first = c->done_usec < first ? c->done_usec : first;
                        last = c->done_usec > last ? c->done_usec : last;
                }
                close(c->fd);
                free(c->expect);
        }
        free(clients);
        printf("handover-clients: %u conversations: kept %u, dropped %u, refused %u, wrong %u, stalled %u", arg.n,
               count[KEPT], count[DROPPED], count[REFUSED], count[WRONG], count[STALLED]);
        if (count[KEPT] > 0)
                printf("; gap %.1f ms to the first resumed reply, %.1f ms to the last",
                       (double) (first - stop_mono) / 1000.0, (double) (last - stop_mono) / 1000.0);
        printf("\n");
        return count[KEPT] == arg.n ? 0 : 1;
}

/* greet: N new clients, one after another, each greeted and answered. */
static int greet(void) {
        unsigned served = 0;
        uint64_t start = mono_usec();
        char want[512], why[256], line[64], name[32];

        for (unsigned i = 0; i < arg.n; i++) {
                int fd = dial();
                size_t n = greeting(want, sizeof(want));

                if (fd < 0) {
                        fprintf(stderr, "handover-clients: greet %u: connect: %s\n", i, strerror(errno));
                        continue;
                }
                snprintf(name, sizeof(name), "g%u", i);
                snprintf(line, sizeof(line), "%s\r\n", name);
                if (read_exact(fd, want, n, why, sizeof(why)) == 0 && send_all(fd, line, strlen(line)) == 0 &&
                    read_exact(fd, want, reply(want, sizeof(want), name), why, sizeof(why)) == 0)
                        served++;
                else
                        fprintf(stderr, "handover-clients: greet %u: %s\n", i, why);
                close(fd);
        }
        printf("handover-clients: %u new clients: %u greeted and answered, %u not, in %.1f ms\n", arg.n, served,
               arg.n - served, (double) (mono_usec() - start) / 1000.0);
        return served == arg.n ? 0 : 1;
}

static void usage(FILE *f) {
        fputs("usage: handover-clients [options] hold|greet\n"
              "  -H, --host ADDR        hellod's address (127.0.0.1)\n"
              "  -p, --port PORT        its port (9999)\n"
              "  -n, --clients N        conversations (1000)\n"
              "  -u, --unread-lines K   lines each 'unread' conversation leaves unanswered (2)\n"
              "  -r, --rcvbuf BYTES     SO_RCVBUF of each client (system default): small, with many\n"
              "                         unread lines, leaves replies in hellod's output buffer\n"
              "  -t, --timeout SEC      bound of every wait (30)\n"
              "  -g, --greeting TEXT    the configured greeting (Welcome!)\n"
              "  -R, --reply TEMPLATE   the configured reply ('Hello, {name}!')\n",
              f);
}

static unsigned parse_uint(const char *s, unsigned min, unsigned max, const char *what) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);

        if (errno || end == s || *end || v < min || v > max) {
                fprintf(stderr, "handover-clients: %s: '%s' is not a number in %u..%u\n", what, s, min, max);
                exit(2);
        }
        return (unsigned) v;
}

static void parse_reply(const char *t) {
        const char *at = strstr(t, "{name}");

        if (!at || (size_t) (at - t) >= sizeof(arg.prefix) || strlen(at + 6) >= sizeof(arg.suffix)) {
                fprintf(stderr, "handover-clients: --reply needs {name} and less than 256 bytes around it\n");
                exit(2);
        }
        snprintf(arg.prefix, sizeof(arg.prefix), "%.*s", (int) (at - t), t);
        snprintf(arg.suffix, sizeof(arg.suffix), "%s", at + 6);
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "host", required_argument, NULL, 'H' },    { "port", required_argument, NULL, 'p' },
                { "clients", required_argument, NULL, 'n' }, { "unread-lines", required_argument, NULL, 'u' },
                { "rcvbuf", required_argument, NULL, 'r' },  { "timeout", required_argument, NULL, 't' },
                { "greeting", required_argument, NULL, 'g' }, { "reply", required_argument, NULL, 'R' },
                { "help", no_argument, NULL, 'h' },          { NULL, 0, NULL, 0 },
        };
        int opt;

        while ((opt = getopt_long(argc, argv, "H:p:n:u:r:t:g:R:h", options, NULL)) >= 0)
                switch (opt) {
                case 'H': arg.host = optarg; break;
                case 'p': arg.port = parse_uint(optarg, 1, 65535, "--port"); break;
                case 'n': arg.n = parse_uint(optarg, 1, CLIENTS_MAX, "--clients"); break;
                case 'u': arg.unread_lines = parse_uint(optarg, 0, 2000, "--unread-lines"); break;
                case 'r': arg.rcvbuf = (int) parse_uint(optarg, 0, 1u << 24, "--rcvbuf"); break;
                case 't': arg.timeout_sec = parse_uint(optarg, 1, 3600, "--timeout"); break;
                case 'g': arg.greeting = optarg; break;
                case 'R': parse_reply(optarg); break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        if (optind != argc - 1 || (strcmp(argv[optind], "hold") != 0 && strcmp(argv[optind], "greet") != 0)) {
                usage(stderr);
                return 2;
        }
        raise_nofile(arg.n);
        signal(SIGPIPE, SIG_IGN);
        struct sigaction sa = { .sa_handler = on_usr1 };
        sigaction(SIGUSR1, &sa, NULL);
        return strcmp(argv[optind], "hold") == 0 ? hold() : greet();
}
