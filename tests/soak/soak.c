/* soak: one hellod under mixed well-behaved and hostile load, with reloads, for a bounded time.
 *
 *   soak [--seconds N] [--seed N] [--hellod PATH]      (60 s by default; else $HELLOD_BIN)
 *
 * Well-behaved clients run lockstep sessions (greeting, a few names, exit) and check every
 * byte. Hostile ones dribble bytes (slowloris), flood without reading, send garbage (checked
 * against the protocol's model), reset mid-line, half-close, and storm the listener. Every few
 * seconds the configuration is rewritten between two greetings (and reply templates) and
 * reloaded with SIGHUP: a session must get one of the two, and the replies that go with it.
 * The soak reports its figures, one PASS/FAIL line per check, then
 * "soak checks: P passed, F failed", and exits non-zero on any failure.
 *
 * Load threads never call harness_fail(): they count what went wrong; only the main thread
 * drives the daemon through the harness. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clients.h"
#include "harness.h"

#define SOAK_DEFAULT_SECONDS 60
#define SOAK_MAX_SECONDS 86400
#define IO_TIMEOUT_MS 10000 /* any single wait of a client: a hang, not slowness */
#define RELOAD_EVERY_MS 2500
#define SAMPLE_EVERY_MS 250
#define IDLE_TIMEOUT 3
#define MAX_LINE 64
#define POLITE_THREADS 3
#define POLITE_PAUSE_MS 5
#define LORIS_SLOTS 40
#define LORIS_FAST_EVERY 4  /* every fourth attacker is fast */
#define LORIS_FAST_BYTES 40 /* a fast dribbler passes MAX_LINE at its second dribble */
#define LORIS_TICK_MS 1000
#define FLOOD_PAUSE_MS 200
#define GARBAGE_PAUSE_MS 10
#define STORM_EVERY_MS 2000
#define STORM_SIZE 100

/* The two configurations the reloads alternate between. */
typedef struct Template {
        const char *greeting, *prefix, *suffix;
} Template;

static const Template templates[2] = {
        { "Welcome!", "Hello, ", "!" },
        { "Welcome back!", "Hi again, ", "." },
};

static uint16_t port;
static atomic_bool stopping;

/* --- small helpers -------------------------------------------------------------------------- */

/* stats_print: one line of the samples' figures. */
static void stats_print(const char *what, Stats *s) {
        char figures[256];

        printf("soak: %s: %s\n", what, stats_describe(s, figures, sizeof(figures)));
}

/* --- client I/O (blocking, every wait bounded) ------------------------------------------------ */

/* soak_connect: a connected blocking socket with IO_TIMEOUT_MS send and receive timeouts, or
 * -errno. */
static int soak_connect(void) {
        struct timeval tv = { .tv_sec = IO_TIMEOUT_MS / 1000 };
        int fd = client_start_connect("127.0.0.1", port), e;

        if (fd < 0)
                return fd;
        e = client_wait_connected(fd, IO_TIMEOUT_MS);
        if (e < 0) {
                (void) close(fd);
                return e;
        }
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
                e = errno;
                (void) close(fd);
                return -e;
        }
        return fd;
}

static const char *io_what(ssize_t k, int e) {
        if (k == 0)
                return "EOF";
        if (e == EAGAIN || e == EWOULDBLOCK)
                return "timeout";
        return strerror(e);
}

/* send_all: 0, or a description of what went wrong. */
static const char *send_all(int fd, const void *buf, size_t n) {
        const char *p = buf;

        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return io_what(-1, errno);
                p += k;
                n -= (size_t) k;
        }
        return NULL;
}

/* read_crlf: in lockstep nothing follows a reply until the next request, so reading in chunks
 * up to "\r\n" eats nothing of the next. The line (CRLF kept) is NUL-terminated; returns its
 * length, or -1 with *RET_WHY set. */
static ssize_t read_crlf(int fd, char *buf, size_t cap, const char **ret_why) {
        size_t n = 0;

        while (n + 1 < cap) {
                ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0) {
                        buf[n] = '\0';
                        *ret_why = io_what(k, errno);
                        return -1;
                }
                n += (size_t) k;
                buf[n] = '\0';
                if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n')
                        return (ssize_t) n;
        }
        *ret_why = "line too long";
        return -1;
}

/* expect_eof: nothing more, then EOF; NULL or what came instead. */
static const char *expect_eof(int fd) {
        char c;
        ssize_t k;

        do
                k = recv(fd, &c, 1, 0);
        while (k < 0 && errno == EINTR);
        if (k == 0)
                return NULL;
        if (k > 0)
                return "data instead of EOF";
        return io_what(k, errno);
}

/* template_of: which configuration a greeting line belongs to, -1 if none. */
static int template_of(const char *line) {
        for (int i = 0; i < 2; i++) {
                size_t len = strlen(templates[i].greeting);

                if (strncmp(line, templates[i].greeting, len) == 0 && strcmp(line + len, "\r\n") == 0)
                        return i;
        }
        return -1;
}

/* greet: connects and reads the greeting; the fd (its template in *RET_TPL) or -1 (counted). */
static int greet(Errors *err, const char *who, int *ret_tpl) {
        char line[256], esc[600];
        const char *why;
        int fd = soak_connect();

        if (fd < 0) {
                errors_add(err, "%s: connect(): %s", who, strerror(-fd));
                return -1;
        }
        if (read_crlf(fd, line, sizeof(line), &why) < 0) {
                errors_add(err, "%s: greeting: %s after \"%s\"", who, why,
                           harness_escape(line, strlen(line), esc, sizeof(esc)));
                (void) close(fd);
                return -1;
        }
        *ret_tpl = template_of(line);
        if (*ret_tpl < 0) {
                errors_add(err, "%s: unexpected greeting \"%s\"", who,
                           harness_escape(line, strlen(line), esc, sizeof(esc)));
                (void) close(fd);
                return -1;
        }
        return fd;
}

/* --- well-behaved clients --------------------------------------------------------------------- */

typedef struct Polite {
        int id;
        pthread_t thread;
        Rng rng;
        uint64_t sessions, lines, greeted[2];
        Stats rtt, greeting;
        Errors err;
} Polite;

/* polite_session: greeting, one to four names, exit; every byte checked. */
static void polite_session(Polite *p) {
        static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.";
        char who[64], name[64], line[96], want[160], got[256], e1[400], e2[400];
        const char *why;
        int64_t t0 = harness_now_us();
        int tpl, fd, names = 1 + (int) rng_below(&p->rng, 4);

        (void) snprintf(who, sizeof(who), "well-behaved %d session %" PRIu64, p->id, p->sessions);
        fd = greet(&p->err, who, &tpl);
        if (fd < 0)
                return;
        stats_add(&p->greeting, harness_now_us() - t0);
        p->greeted[tpl]++;
        for (int i = 0; i < names; i++) {
                size_t len = (size_t) snprintf(name, sizeof(name), "p%d-%" PRIu64 "-%d-", p->id, p->sessions, i);
                size_t extra = rng_below(&p->rng, 20);
                int64_t t;

                for (size_t k = 0; k < extra; k++)
                        name[len++] = alphabet[rng_below(&p->rng, sizeof(alphabet) - 1)];
                name[len] = '\0';
                /* Now and then an empty line first (no reply), CRLF or LF. */
                (void) snprintf(line, sizeof(line), "%s%s%s", rng_below(&p->rng, 8) == 0 ? "\n" : "", name,
                                rng_below(&p->rng, 2) ? "\r\n" : "\n");
                (void) snprintf(want, sizeof(want), "%s%s%s\r\n", templates[tpl].prefix, name, templates[tpl].suffix);
                t = harness_now_us();
                why = send_all(fd, line, strlen(line));
                if (!why && read_crlf(fd, got, sizeof(got), &why) >= 0 && strcmp(got, want) != 0)
                        why = "a wrong reply";
                if (why) {
                        errors_add(&p->err, "%s (%s): %s: expected \"%s\", got \"%s\"", who,
                                   templates[tpl].greeting, why,
                                   harness_escape(want, strlen(want), e1, sizeof(e1)),
                                   harness_escape(got, strnlen(got, sizeof(got)), e2, sizeof(e2)));
                        (void) close(fd);
                        return;
                }
                stats_add(&p->rtt, harness_now_us() - t);
                p->lines++;
        }
        why = send_all(fd, "exit\n", 5);
        if (!why)
                why = expect_eof(fd);
        if (why)
                errors_add(&p->err, "%s: after exit: %s", who, why);
        else
                p->sessions++;
        (void) close(fd);
}

static void *polite_main(void *arg) {
        Polite *p = arg;

        while (!atomic_load(&stopping)) {
                polite_session(p);
                harness_sleep_ms(POLITE_PAUSE_MS);
        }
        return NULL;
}

/* --- slowloris -------------------------------------------------------------------------------- */

/* loris_begin: the attack (clients.c), against either greeting, until the load stops. */
static Loris *loris_begin(void) {
        static char lines[2][64];
        static const char *greetings[3];

        for (int i = 0; i < 2; i++) {
                (void) snprintf(lines[i], sizeof(lines[i]), "%s\r\n", templates[i].greeting);
                greetings[i] = lines[i];
        }
        return loris_start(&(LorisConfig) {
                .port = port,
                .greetings = greetings,
                .mix = { LORIS_SLOTS, LORIS_FAST_EVERY, LORIS_FAST_BYTES, LORIS_TICK_MS },
                .end = { .stop = &stopping, .close_grace_ms = IO_TIMEOUT_MS },
        });
}

/* --- floods ----------------------------------------------------------------------------------- */

typedef struct Flood {
        pthread_t thread;
        Rng rng;
        uint64_t sessions, lines;
        Errors err;
} Flood;

/* flood_session: pipelines 5000-25000 lines without reading for 300 ms, then reads every
 * reply (checked, in order) while sending the rest; exit; EOF. */
static void flood_session(Flood *f) {
        const uint64_t lines = 5000 + rng_below(&f->rng, 20000);
        const int64_t t0 = harness_now_ms();
        uint64_t sent_lines = 0, replies = 0;
        size_t out_len = 0, pending_len = 0;
        char out[4096], pending[256], esc[300];
        const char *why = NULL;
        int tpl, fd = greet(&f->err, "flood", &tpl);

        if (fd < 0)
                return;
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        while (replies < lines && !why) {
                bool quiet = harness_now_ms() - t0 < 300;
                short events = (short) ((quiet ? 0 : POLLIN) | (sent_lines < lines || out_len ? POLLOUT : 0));
                struct pollfd pfd = { .fd = fd, .events = events };
                int r = poll(&pfd, 1, 100);

                if (harness_now_ms() - t0 > 3 * IO_TIMEOUT_MS) {
                        why = "took too long";
                        break;
                }
                if (r <= 0)
                        continue;
                if (pfd.revents & POLLOUT) {
                        while (out_len < sizeof(out) - 16 && sent_lines < lines)
                                out_len += (size_t) snprintf(out + out_len, sizeof(out) - out_len, "f%07" PRIu64 "\n",
                                                             sent_lines++);
                        ssize_t k = send(fd, out, out_len, MSG_NOSIGNAL | MSG_DONTWAIT);

                        if (k > 0) {
                                memmove(out, out + k, out_len - (size_t) k);
                                out_len -= (size_t) k;
                        } else if (k < 0 && errno != EAGAIN && errno != EINTR)
                                why = strerror(errno);
                }
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        char buf[16384];
                        ssize_t k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

                        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
                                why = io_what(k, errno);
                                break;
                        }
                        for (ssize_t i = 0; i < k && !why; i++) {
                                if (pending_len == sizeof(pending)) {
                                        why = "an over-long reply";
                                        break;
                                }
                                pending[pending_len++] = buf[i];
                                if (pending_len >= 2 && memcmp(pending + pending_len - 2, "\r\n", 2) == 0) {
                                        char want[96];
                                        int n = snprintf(want, sizeof(want), "%sf%07" PRIu64 "%s\r\n",
                                                         templates[tpl].prefix, replies, templates[tpl].suffix);

                                        if ((size_t) n != pending_len || memcmp(want, pending, pending_len) != 0) {
                                                errors_add(&f->err, "flood: reply %" PRIu64 " is \"%s\"", replies,
                                                           harness_escape(pending, pending_len, esc, sizeof(esc)));
                                                why = "";
                                        }
                                        replies++;
                                        pending_len = 0;
                                }
                        }
                }
        }
        if (!why) {
                (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
                why = send_all(fd, "exit\n", 5);
                if (!why)
                        why = expect_eof(fd);
        }
        if (why && *why)
                errors_add(&f->err, "flood of %" PRIu64 " lines: %s after %" PRIu64 " replies", lines, why, replies);
        if (!why) {
                f->sessions++;
                f->lines += lines;
        }
        (void) close(fd);
}

static void *flood_main(void *arg) {
        Flood *f = arg;

        while (!atomic_load(&stopping)) {
                flood_session(f);
                harness_sleep_ms(FLOOD_PAUSE_MS);
        }
        return NULL;
}

/* --- garbage, resets, half-closes, storms ------------------------------------------------------ */

typedef struct Garbage {
        pthread_t thread;
        Rng rng;
        uint64_t streams, bytes, resets, half_closes, too_long, storms, storm_connections;
        Errors err;
} Garbage;

/* garbage_stream: hostile lines (or uniform bytes) in random pieces, a half-close, and the
 * output checked byte for byte against the model. */
static void garbage_stream(Garbage *g) {
        unsigned char in[4096];
        char want[4096 * 12 + 64], e1[300], e2[300]; /* the model: at most 7 bytes a byte in, and a reply */
        size_t n, wlen, i;
        int tpl, r, fd = greet(&g->err, "garbage", &tpl);
        bool uniform = rng_below(&g->rng, 4) == 0;
        Exchange x;

        if (fd < 0)
                return;
        n = uniform ? hostile_uniform(&g->rng, in, sizeof(in)) : hostile_lines(&g->rng, MAX_LINE, in, sizeof(in));
        wlen = harness_model_replies(templates[tpl].prefix, templates[tpl].suffix, in, n, MAX_LINE, want);
        r = client_exchange(fd, in, n, &g->rng, 700, &x);
        (void) close(fd);
        if (r < 0 || x.end != CLIENT_READ_EOF) {
                errors_add(&g->err, "garbage: %s after %zu bytes",
                           r < 0 ? strerror(-r) : x.end == CLIENT_READ_TIMEOUT ? "no EOF in time" : "a reset", x.n);
                free(x.got);
                return;
        }
        i = bytes_first_difference(x.got, x.n, want, wlen);
        if (i < x.n || i < wlen) {
                errors_add(&g->err, "garbage (%s, %zu bytes): output differs at byte %zu: expected \"%s\", got \"%s\"",
                           uniform ? "uniform" : "lines", n, i,
                           harness_escape(want + i, wlen - i < 40 ? wlen - i : 40, e1, sizeof(e1)),
                           harness_escape(x.got + i, x.n - i < 40 ? x.n - i : 40, e2, sizeof(e2)));
                free(x.got);
                return;
        }
        free(x.got);
        g->streams++;
        g->bytes += n;
        if (bytes_end_with(want, wlen, HELLOD_ERR_TOO_LONG))
                g->too_long++;
}

static void reset_fd(int fd) {
        struct linger l = { .l_onoff = 1, .l_linger = 0 };

        (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        (void) close(fd);
}

/* reset_mid_line: greeting, half a line, RST. */
static void reset_mid_line(Garbage *g) {
        int tpl, fd = greet(&g->err, "reset", &tpl);

        if (fd < 0)
                return;
        (void) send_all(fd, "half a li", 9);
        reset_fd(fd);
        g->resets++;
}

/* half_close: two lines and a partial one, then SHUT_WR: three replies, then EOF. */
static void half_close(Garbage *g) {
        char want[256], got[256], esc[600];
        const char *why;
        int tpl, fd = greet(&g->err, "half-close", &tpl);
        size_t n = 0;

        if (fd < 0)
                return;
        (void) snprintf(want, sizeof(want), "%sone%s\r\n%stwo%s\r\n%sthr%s\r\n", templates[tpl].prefix,
                        templates[tpl].suffix, templates[tpl].prefix, templates[tpl].suffix, templates[tpl].prefix,
                        templates[tpl].suffix);
        why = send_all(fd, "one\ntwo\r\nthr", 12);
        if (!why && shutdown(fd, SHUT_WR) < 0)
                why = strerror(errno);
        while (!why && n < sizeof(got) - 1) {
                ssize_t k = recv(fd, got + n, sizeof(got) - 1 - n, 0);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k == 0)
                        break;
                if (k < 0)
                        why = io_what(k, errno);
                else
                        n += (size_t) k;
        }
        got[n] = '\0';
        if (!why && strcmp(got, want) != 0)
                why = "wrong replies";
        if (why)
                errors_add(&g->err, "half-close: %s: got \"%s\"", why, harness_escape(got, n, esc, sizeof(esc)));
        else
                g->half_closes++;
        (void) close(fd);
}

/* storm: STORM_SIZE connections closed at once, most with a RST (a FIN leaves us a TIME_WAIT). */
static void storm(Garbage *g) {
        int fds[STORM_SIZE];

        for (int i = 0; i < STORM_SIZE; i++)
                fds[i] = client_start_connect(i % 2 ? "::1" : "127.0.0.1", port);
        for (int i = 0; i < STORM_SIZE; i++) {
                if (fds[i] < 0)
                        continue;
                if (i % 4 == 0)
                        (void) close(fds[i]);
                else
                        reset_fd(fds[i]);
                g->storm_connections++;
        }
        g->storms++;
}

static void *garbage_main(void *arg) {
        Garbage *g = arg;
        int64_t next_storm = harness_now_ms() + STORM_EVERY_MS;

        while (!atomic_load(&stopping)) {
                size_t pick = rng_below(&g->rng, 10);

                if (harness_now_ms() >= next_storm) {
                        storm(g);
                        next_storm += STORM_EVERY_MS;
                } else if (pick < 6)
                        garbage_stream(g);
                else if (pick < 8)
                        reset_mid_line(g);
                else
                        half_close(g);
                harness_sleep_ms(GARBAGE_PAUSE_MS);
        }
        return NULL;
}

/* --- the daemon ------------------------------------------------------------------------------- */

static void write_config(Hellod *d, int tpl) {
        hellod_write_config_std(d,
                                "max_connections = 1000;\nidle_timeout = %d;\nmax_line_length = %d;\n"
                                "shutdown_timeout = 5;\ngreeting = \"%s\";\nreply = \"%s{name}%s\";\n",
                                IDLE_TIMEOUT, MAX_LINE, templates[tpl].greeting, templates[tpl].prefix,
                                templates[tpl].suffix);
}

static int passed, failed;

static void check(bool ok, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void check(bool ok, const char *format, ...) {
        va_list ap;

        printf("%s: ", ok ? "PASS" : "FAIL");
        va_start(ap, format);
        (void) vprintf(format, ap);
        va_end(ap);
        printf("\n");
        if (ok)
                passed++;
        else
                failed++;
}

static _Noreturn void soak_fatal(const char *message) {
        printf("soak: fatal: %s\n", message);
        printf("soak checks: %d passed, %d failed\n", passed, failed + 1);
        (void) fflush(stdout);
        harness_cleanup();
        _exit(1);
}

static _Noreturn void usage(const char *message) {
        fprintf(stderr, "soak: %s\nusage: soak [--seconds N] [--seed N] [--hellod PATH]\n", message);
        exit(2);
}

int main(int argc, char **argv) {
        Polite polite[POLITE_THREADS];
        Loris *loris;
        Flood flood = { 0 };
        Garbage garbage = { 0 };
        Polite final = { .id = 99 };
        Stats rtt = { 0 }, greeting = { 0 };
        Errors polite_err = { 0 }, hostile_err = { 0 };
        uint64_t seconds = SOAK_DEFAULT_SECONDS, seed = 0, sessions = 0, lines = 0, greeted[2] = { 0 };
        long hz = sysconf(_SC_CLK_TCK), rss_peak, rss_end;
        int reloads = 0, status, threads_peak = 0, fds_peak = 0;
        Usage settled = { -1, -1, -1 };
        Baseline start;
        int64_t t_start, t_end, next_reload, next_sample, t_settle;
        uint64_t cpu0, cpu1;
        double cpu;
        bool died = false;
        pid_t pid;
        Hellod *d;
        char buf[96];

        setvbuf(stdout, NULL, _IOLBF, 0);
        for (int i = 1; i < argc; i++) {
                char *end;

                if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
                        errno = 0;
                        seconds = strtoull(argv[++i], &end, 10);
                        if (errno || *end || seconds == 0 || seconds > SOAK_MAX_SECONDS)
                                usage("--seconds: a number of seconds, 1-86400");
                } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
                        errno = 0;
                        seed = strtoull(argv[++i], &end, 0);
                        if (errno || *end)
                                usage("--seed: a number");
                } else if (strcmp(argv[i], "--hellod") == 0 && i + 1 < argc) {
                        if (setenv("HELLOD_BIN", argv[++i], 1) < 0)
                                usage("setenv failed");
                } else
                        usage("unknown argument");
        }
        if (seed == 0)
                seed = (uint64_t) harness_now_us() ^ ((uint64_t) getpid() << 32);
        harness_set_fail_handler(soak_fatal);
        (void) harness_raise_nofile();

        /* The daemon. */
        d = hellod_new();
        port = d->port;
        write_config(d, 0);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        pid = d->pid;
        start = baseline_take(d);
        if (!start.steady) /* one descriptor high, it would let one leaked pass */
                harness_fail("hellod's descriptors did not settle before the load (%d)", start.fds);
        rss_peak = start.rss_kib;
        printf("soak: %" PRIu64 " s against %s (pid %d%s) on port %u, seed %" PRIu64 "%s%s\n", seconds,
               harness_env_path("HELLOD_BIN"), (int) pid, start.sanitized ? ", sanitized" : "", (unsigned) port, seed,
               getenv("HELLOD_TEST_CONF_EXTRA") && *getenv("HELLOD_TEST_CONF_EXTRA") ? ", config extra: " : "",
               getenv("HELLOD_TEST_CONF_EXTRA") ? getenv("HELLOD_TEST_CONF_EXTRA") : "");
        printf("soak: load: %d well-behaved threads, %d slowloris attackers, a flooder, garbage/resets/half-closes, "
               "a storm of %d every %d ms; SIGHUP every %d ms\n",
               POLITE_THREADS, LORIS_SLOTS, STORM_SIZE, STORM_EVERY_MS, RELOAD_EVERY_MS);

        /* The load. */
        atomic_init(&stopping, false);
        for (int i = 0; i < POLITE_THREADS; i++) {
                polite[i] = (Polite) { .id = i, .rng = { seed + 1 + (uint64_t) i } };
                if (pthread_create(&polite[i].thread, NULL, polite_main, &polite[i]) != 0)
                        harness_fail("pthread_create() failed");
        }
        flood.rng.s = seed + 100;
        garbage.rng.s = seed + 200;
        loris = loris_begin();
        if (!loris)
                harness_fail("cannot start the slowloris attack: %s", strerror(errno));
        if (pthread_create(&flood.thread, NULL, flood_main, &flood) != 0 ||
            pthread_create(&garbage.thread, NULL, garbage_main, &garbage) != 0)
                harness_fail("pthread_create() failed");

        t_start = harness_now_ms();
        cpu0 = harness_cpu_ticks(pid);
        next_reload = t_start + RELOAD_EVERY_MS;
        next_sample = t_start;
        while (harness_now_ms() - t_start < (int64_t) seconds * 1000) {
                int64_t now = harness_now_ms();

                if (!hellod_alive(d)) {
                        died = true;
                        break;
                }
                if (now >= next_sample) {
                        long rss = harness_proc_status_field(pid, "VmRSS");
                        int fds = harness_proc_fd_count(pid), threads = harness_proc_thread_count(pid, NULL);

                        rss_peak = rss > rss_peak ? rss : rss_peak;
                        fds_peak = fds > fds_peak ? fds : fds_peak;
                        threads_peak = threads > threads_peak ? threads : threads_peak;
                        next_sample += SAMPLE_EVERY_MS;
                }
                if (now >= next_reload) {
                        /* Rewritten atomically (rename), then reloaded. */
                        write_config(d, ++reloads % 2);
                        hellod_signal(d, SIGHUP);
                        next_reload += RELOAD_EVERY_MS;
                }
                harness_sleep_ms(20);
        }
        cpu1 = died ? cpu0 : harness_cpu_ticks(pid);
        t_end = harness_now_ms();

        /* Wind down: every thread finishes the session in hand (bounded by its timeouts). */
        atomic_store(&stopping, true);
        for (int i = 0; i < POLITE_THREADS; i++) {
                (void) pthread_join(polite[i].thread, NULL);
                sessions += polite[i].sessions;
                lines += polite[i].lines;
                greeted[0] += polite[i].greeted[0];
                greeted[1] += polite[i].greeted[1];
                stats_merge(&rtt, &polite[i].rtt);
                stats_merge(&greeting, &polite[i].greeting);
                errors_merge(&polite_err, &polite[i].err);
        }
        loris_join(loris);
        (void) pthread_join(flood.thread, NULL);
        (void) pthread_join(garbage.thread, NULL);
        errors_merge(&hostile_err, &loris->err);
        errors_merge(&hostile_err, &flood.err);
        errors_merge(&hostile_err, &garbage.err);

        /* Back to the start: no session left, threads within the cache, memory bounded. */
        t_settle = harness_now_ms();
        if (!died && hellod_alive(d)) {
                (void) baseline_wait_settled(d, &start, HELLOD_SETTLE_TIMEOUT_MS, &settled);
                t_settle = harness_now_ms() - t_settle;
                polite_session(&final);
        } else {
                died = true;
                t_settle = -1;
        }
        rss_end = died ? -1 : hellod_rss_kib(d);

        /* Figures. */
        cpu = (double) (cpu1 - cpu0) / (double) hz;
        printf("soak: ran %.1f s; daemon CPU %.2f s (%.0f%% of a core)\n", (t_end - t_start) / 1000.0, cpu,
               100.0 * cpu * 1000.0 / (double) (t_end - t_start));
        printf("soak: well-behaved: %" PRIu64 " sessions served (%" PRIu64 " greeted \"%s\", %" PRIu64
               " \"%s\"), %" PRIu64 " lines, %u errors\n",
               sessions, greeted[0], templates[0].greeting, greeted[1], templates[1].greeting, lines, polite_err.n);
        stats_print("well-behaved round trip (line to reply)", &rtt);
        stats_print("well-behaved connect to greeting", &greeting);
        printf("soak: hostile: slowloris %d sessions (%d idle-timeout, %d line-too-long); "
               "floods %" PRIu64 " (%" PRIu64 " lines); garbage %" PRIu64 " streams (%" PRIu64 " bytes, %" PRIu64
               " ERR line too long); %" PRIu64 " resets mid-line; %" PRIu64 " half-closes; %" PRIu64 " storms (%" PRIu64
               " connections); %u anomalies\n",
               loris->sessions, loris->closed[LORIS_SLOW], loris->closed[LORIS_FAST], flood.sessions, flood.lines,
               garbage.streams, garbage.bytes, garbage.too_long, garbage.resets, garbage.half_closes, garbage.storms,
               garbage.storm_connections, hostile_err.n);
        if (died)
                printf("soak: daemon: pid %d DIED (a restart would be needed); descriptors %d at start, %d peak; "
                       "threads %d peak; RSS %ld KiB at start, %ld KiB peak\n",
                       (int) pid, start.fds, fds_peak, threads_peak, start.rss_kib, rss_peak);
        else
                printf("soak: daemon: restarts 0 (pid %d alive throughout); descriptors %d at start, %d peak, %d at "
                       "end; threads %d peak, %d at end (%d workers + %d others); RSS %ld KiB at start, %ld KiB peak, "
                       "%ld KiB at end; settled in %" PRId64 " ms\n",
                       (int) pid, start.fds, fds_peak, settled.fds, threads_peak, settled.workers + settled.others,
                       settled.workers, settled.others, start.rss_kib, rss_peak, rss_end, t_settle);
        for (unsigned i = 0; i < polite_err.n && i < 3; i++)
                printf("soak: well-behaved error: %s\n", polite_err.first[i]);
        for (unsigned i = 0; i < hostile_err.n && i < 3; i++)
                printf("soak: hostile anomaly: %s\n", hostile_err.first[i]);
        for (unsigned i = 0; i < final.err.n && i < 3; i++)
                printf("soak: final session: %s\n", final.err.first[i]);

        /* Checks. */
        check(!died, "daemon alive throughout, same pid %d (restarts: %d)", (int) pid, died ? 1 : 0);
        check(sessions >= seconds, "well-behaved sessions served: %" PRIu64, sessions);
        check(polite_err.n == 0, "errors seen by well-behaved clients: %u", polite_err.n);
        check(reloads == 0 || (greeted[0] > 0 && greeted[1] > 0),
              "reloads took effect: both greetings seen (%" PRIu64 " / %" PRIu64 ")", greeted[0], greeted[1]);
        check(hostile_err.n == 0, "hostile clients answered per the protocol: %u anomalies", hostile_err.n);
        check(loris->closed[LORIS_SLOW] > 0 && loris->closed[LORIS_FAST] > 0 && flood.sessions > 0 &&
                      garbage.streams > 0 && garbage.resets > 0 && garbage.half_closes > 0 &&
                      (seconds * 1000 < STORM_EVERY_MS || garbage.storms > 0),
              "every hostile kind ran");
        if (!died) {
                int logged = hellod_count_in_stderr(d, "configuration reloaded");
                int rejected = hellod_count_in_stderr(d, "reload failed");

                check(logged == reloads && rejected == 0, "reloads: %d sent, %d logged as done, %d failed", reloads,
                      logged, rejected);
                check(settled.fds >= 0 && settled.fds <= start.fds, "descriptors back to the start: %d (start %d)",
                      settled.fds, start.fds);
                check(settled.workers <= HELLOD_WORKERS_CACHED_MAX && settled.others <= start.other_threads,
                      "threads within the cache: %d workers (at most %d), %d others (start %d)", settled.workers,
                      HELLOD_WORKERS_CACHED_MAX, settled.others, start.other_threads);
                check(rss_end <= baseline_rss_bound(&start), "RSS at the end %ld KiB <= start %ld KiB + %ld KiB",
                      rss_end, start.rss_kib, baseline_rss_bound(&start) - start.rss_kib);
                check(final.err.n == 0 && final.sessions == 1, "serving after the soak");
                status = hellod_stop(d);
                check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "clean exit on SIGTERM: %s",
                      harness_describe_status(status, buf, sizeof(buf)));
        }
        {
                int reports = hellod_count_in_stderr(d, "ERROR: AddressSanitizer") +
                              hellod_count_in_stderr(d, "ERROR: LeakSanitizer") +
                              hellod_count_in_stderr(d, "WARNING: ThreadSanitizer") +
                              hellod_count_in_stderr(d, "runtime error:");

                check(reports == 0, "sanitizer reports in the daemon's log: %d", reports);
                if (reports > 0 || failed > 0) {
                        char *log = hellod_stderr(d);
                        size_t len = strlen(log);

                        printf("--- hellod stderr (tail) ---\n%s--- end ---\n", len > 4000 ? log + len - 4000 : log);
                        free(log);
                }
        }

        printf("soak checks: %d passed, %d failed\n", passed, failed);
        hellod_free(d);
        harness_cleanup();
        for (int i = 0; i < POLITE_THREADS; i++) {
                stats_free(&polite[i].rtt);
                stats_free(&polite[i].greeting);
        }
        stats_free(&rtt);
        stats_free(&greeting);
        stats_free(&final.rtt);
        stats_free(&final.greeting);
        loris_free(loris);
        return failed > 0 ? 1 : 0;
}
