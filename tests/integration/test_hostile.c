/* test-hostile: slowloris, floods, garbage, abrupt ends and descriptor exhaustion against the
 * real daemon. After each scenario the daemon must be alive and serving, and back to its
 * baseline: descriptors, threads (workers are cached), memory. Figures are printed, and
 * asserted only where the bound is behavioural and generous. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "suite.h"

HELLOD_SUITE(hostile);

/* src/server.c WORKERS_MAX_IDLE: worker threads the daemon keeps parked for reuse. */
#define WORKERS_CACHED_MAX 64
/* How long the daemon gets to be back to its baseline after a scenario: lingering closes take
 * up to 1 s, hundreds of sessions end at once, and a sanitized daemon is slow. */
#define SETTLE_TIMEOUT_MS 30000
/* RSS growth allowed from the baseline. Sanitizers keep freed memory in quarantine and
 * shadow what is touched: their bound only catches runaway growth. */
#define RSS_SLACK_KIB (64L * 1024)
#define RSS_SLACK_SANITIZED_KIB (1024L * 1024)

/* --- reporting and small helpers ---------------------------------------------------------- */

static void report(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* report: a measured figure, on stderr so that it lands in the meson test log. */
static void report(const char *format, ...) {
        char line[1024];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(line, sizeof(line), format, ap);
        va_end(ap);
        (void) fprintf(stderr, "[hostile] %s\n", line);
}

static int64_t now_us(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *xcalloc(size_t n, size_t size) {
        void *p = calloc(n, size);

        if (!p)
                harness_fail("out of memory");
        return p;
}

/* Latency samples in microseconds. */
typedef struct Stats {
        int64_t *v;
        size_t n, cap;
} Stats;

static void stats_add(Stats *s, int64_t us) {
        if (s->n == s->cap) {
                size_t cap = s->cap ? 2 * s->cap : 256;
                int64_t *v = realloc(s->v, cap * sizeof(*v));

                if (!v)
                        harness_fail("out of memory");
                s->v = v;
                s->cap = cap;
        }
        s->v[s->n++] = us;
}

static int cmp_i64(const void *a, const void *b) {
        int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

        return (x > y) - (x < y);
}

/* stats_report: sorts the samples, prints count/min/p50/p99/max, returns the max (us). */
static int64_t stats_report(const char *what, Stats *s) {
        if (s->n == 0) {
                report("%s: no samples", what);
                return 0;
        }
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
        report("%s: n=%zu min %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms", what, s->n, s->v[0] / 1000.0,
               s->v[s->n / 2] / 1000.0, s->v[(s->n * 99) / 100] / 1000.0, s->v[s->n - 1] / 1000.0);
        return s->v[s->n - 1];
}

static void stats_free(Stats *s) {
        free(s->v);
        *s = (Stats) { 0 };
}

/* --- the daemon's baseline ------------------------------------------------------------------ */

/* RssSampler: the daemon's peak VmRSS, sampled from a thread while a scenario runs. */
typedef struct RssSampler {
        pid_t pid;
        pthread_t thread;
        atomic_bool stop;
        atomic_long peak_kib;
} RssSampler;

static void *rss_sampler_main(void *arg) {
        RssSampler *r = arg;

        while (!atomic_load(&r->stop)) {
                long kib = harness_proc_status_field(r->pid, "VmRSS");

                if (kib > atomic_load(&r->peak_kib))
                        atomic_store(&r->peak_kib, kib);
                harness_sleep_ms(20);
        }
        return NULL;
}

static void rss_start(RssSampler *r, Hellod *d) {
        r->pid = d->pid;
        atomic_init(&r->stop, false);
        atomic_init(&r->peak_kib, hellod_rss_kib(d));
        if (pthread_create(&r->thread, NULL, rss_sampler_main, r) != 0)
                harness_fail("pthread_create(): cannot start the RSS sampler");
}

static long rss_stop(RssSampler *r) {
        atomic_store(&r->stop, true);
        (void) pthread_join(r->thread, NULL);
        return atomic_load(&r->peak_kib);
}

typedef struct Baseline {
        int fds;
        int other_threads; /* not workers: the main thread, a sanitizer's own */
        long rss_kib;
        bool sanitized;
} Baseline;

/* baseline_take: an idle daemon's figures. The readiness probe's session may still be
 * closing: wait for a steady descriptor count first. */
static Baseline baseline_take(Hellod *d) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        int last = -1, same = 0;
        Baseline b;

        harness_step("baseline");
        while (same < 3) {
                int n = hellod_fd_count(d);

                same = n == last ? same + 1 : 0;
                last = n;
                if (harness_now_ms() >= deadline)
                        hellod_fail(d, "the descriptor count of an idle hellod does not settle (%d)", n);
                harness_sleep_ms(100);
        }
        b = (Baseline) {
                .fds = last,
                .other_threads = hellod_thread_count(d) - hellod_worker_count(d),
                .rss_kib = hellod_rss_kib(d),
                .sanitized = hellod_sanitized(d),
        };
        report("baseline: %d fds, %d non-worker threads, RSS %ld KiB%s", b.fds, b.other_threads, b.rss_kib,
               b.sanitized ? " (sanitized daemon)" : "");
        return b;
}

/* expect_serving: a well-behaved session from start to exit (retrying while a slot frees). */
static void expect_serving(Hellod *d, const char *name) {
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, HELLOD_ERR_BUSY);

        client_hello(fd, name);
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
}

/*
 * expect_settled: after SCENARIO, within SETTLE_TIMEOUT_MS: alive, serving, its descriptors
 * back to the baseline (no session left open), no more threads than the cache keeps, and its
 * memory back under the baseline plus a generous bound.
 */
static void expect_settled(Hellod *d, const Baseline *b, long peak_kib, const char *scenario) {
        int64_t t0 = harness_now_ms(), deadline = t0 + SETTLE_TIMEOUT_MS;
        long slack = b->sanitized ? RSS_SLACK_SANITIZED_KIB : RSS_SLACK_KIB, end_kib;
        int fds, workers, others;

        harness_step("%s: alive and serving", scenario);
        if (!hellod_alive(d))
                hellod_fail(d, "hellod died during %s", scenario);
        expect_serving(d, "after");

        harness_step("%s: back to the baseline", scenario);
        for (;;) {
                fds = hellod_fd_count(d);
                workers = hellod_worker_count(d);
                others = hellod_thread_count(d) - workers;
                if (fds <= b->fds && workers <= WORKERS_CACHED_MAX && others <= b->other_threads)
                        break;
                if (harness_now_ms() >= deadline)
                        hellod_fail(d,
                                    "%s: still %d fds (baseline %d), %d workers (cache keeps %d), %d other "
                                    "threads (baseline %d) after %d ms",
                                    scenario, fds, b->fds, workers, WORKERS_CACHED_MAX, others, b->other_threads,
                                    SETTLE_TIMEOUT_MS);
                harness_sleep_ms(50);
        }
        end_kib = hellod_rss_kib(d);
        report("%s: settled in %" PRId64 " ms: %d fds (baseline %d), %d threads = %d workers + %d others; "
               "RSS baseline %ld KiB, peak %ld KiB, end %ld KiB (bound %ld KiB)",
               scenario, harness_now_ms() - t0, fds, b->fds, workers + others, workers, others, b->rss_kib,
               peak_kib, end_kib, b->rss_kib + slack);
        cr_assert(end_kib <= b->rss_kib + slack, "%s: hellod's RSS stays at %ld KiB, baseline %ld KiB", scenario,
                  end_kib, b->rss_kib);
        cr_assert(hellod_alive(d), "hellod died after %s", scenario);
}

/* wait_connected: a client_start_connect() socket; 0 or -errno. */
static int wait_connected(int fd) {
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        socklen_t len = sizeof(int);
        int e = 0, r;

        do
                r = poll(&pfd, 1, HARNESS_TIMEOUT_MS);
        while (r < 0 && errno == EINTR);
        if (r == 0)
                return -ETIMEDOUT;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                return -errno;
        return -e;
}

/* --- slowloris ------------------------------------------------------------------------------ */

enum {
        LORIS_SLOTS = 300,            /* attackers connected at once */
        LORIS_ATTACK_MS = 8000,       /* closed attackers are replaced during this window */
        LORIS_MAX_SESSIONS = 1500,    /* and this many attacker sessions at most */
        LORIS_TICK_MS = 1000,         /* one dribble per attacker per tick */
        LORIS_FAST_BYTES = 10,        /* a fast attacker's dribble: the second passes the line limit */
        LORIS_CLOSE_GRACE_MS = 15000, /* after the window, every attacker must be closed by then */
        LORIS_PROBE_MAX = 400,        /* well-behaved sessions during the attack, at most */
        LORIS_PROBE_PAUSE_MS = 100,
        LORIS_PROBE_NAMES = 3,
        LORIS_RTT_BOUND_MS = 2000, /* generous: only catches a client starved by the attack */
        LORIS_IDLE_TIMEOUT = 3,
        LORIS_MAX_LINE = 16,
};

typedef enum LorisKind {
        LORIS_SLOW, /* one byte a tick: never a line, never too long; idle_timeout closes it */
        LORIS_FAST, /* LORIS_FAST_BYTES a tick: max_line_length closes it */
} LorisKind;

typedef struct LorisSlot {
        int fd; /* -1: free */
        LorisKind kind;
        bool connected, greeted;
        int64_t started_ms, next_send_ms;
        size_t sent, n_got;
        char got[64];
} LorisSlot;

typedef struct Loris {
        uint16_t port;
        atomic_int greeted;    /* attacker sessions that got the greeting */
        atomic_bool attacking; /* false once the window is over */
        LorisSlot slots[LORIS_SLOTS];
        /* Results: read after the join. */
        int sessions, closed[2], n_errors;
        int64_t close_ms_min[2], close_ms_max[2];
        size_t sent_max[2];
        char error[1024];
} Loris;

static const char *const loris_kind_name[] = { "slow", "fast" };

static void loris_error(Loris *l, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void loris_error(Loris *l, const char *format, ...) {
        va_list ap;

        if (l->n_errors++ > 0)
                return;
        va_start(ap, format);
        (void) vsnprintf(l->error, sizeof(l->error), format, ap);
        va_end(ap);
}

static void loris_open(Loris *l, int index, int64_t first_send_ms) {
        LorisSlot *s = &l->slots[index];
        int fd = client_start_connect("127.0.0.1", l->port);

        *s = (LorisSlot) { .fd = -1 };
        if (fd < 0) {
                loris_error(l, "attacker connect(): %s", strerror(-fd));
                return;
        }
        s->fd = fd;
        s->kind = index % 3 == 2 ? LORIS_FAST : LORIS_SLOW;
        s->started_ms = harness_now_ms();
        s->next_send_ms = first_send_ms;
        l->sessions++;
}

/* loris_finish: the daemon closed the attacker (HOW: NULL for EOF, else the error). */
static void loris_finish(Loris *l, LorisSlot *s, const char *how) {
        const char *err = s->kind == LORIS_FAST ? HELLOD_ERR_TOO_LONG : HELLOD_ERR_IDLE;
        char want[64], e1[256], e2[256];
        size_t wlen = (size_t) snprintf(want, sizeof(want), "%s%s", HELLOD_GREETING, err);
        int64_t ms = harness_now_ms() - s->started_ms;
        int k = (int) s->kind;

        if (!how && s->n_got == wlen && memcmp(s->got, want, wlen) == 0) {
                if (l->closed[k] == 0 || ms < l->close_ms_min[k])
                        l->close_ms_min[k] = ms;
                if (ms > l->close_ms_max[k])
                        l->close_ms_max[k] = ms;
                if (s->sent > l->sent_max[k])
                        l->sent_max[k] = s->sent;
                l->closed[k]++;
        } else
                loris_error(l,
                            "a %s attacker (%zu bytes sent in %" PRId64 " ms) got \"%s\" then %s; "
                            "expected \"%s\" then EOF",
                            loris_kind_name[k], s->sent, ms,
                            harness_escape(s->got, s->n_got < sizeof(s->got) ? s->n_got : sizeof(s->got), e1,
                                           sizeof(e1)),
                            how ? how : "EOF", harness_escape(want, wlen, e2, sizeof(e2)));
        (void) close(s->fd);
        s->fd = -1;
}

static void loris_read(Loris *l, LorisSlot *s) {
        const size_t glen = strlen(HELLOD_GREETING);

        for (;;) {
                char buf[128];
                ssize_t k = recv(s->fd, buf, sizeof(buf), MSG_DONTWAIT);

                if (k > 0) {
                        size_t room = sizeof(s->got) - (s->n_got < sizeof(s->got) ? s->n_got : sizeof(s->got));
                        size_t take = (size_t) k < room ? (size_t) k : room;

                        memcpy(s->got + sizeof(s->got) - room, buf, take);
                        s->n_got += (size_t) k;
                        if (!s->greeted && s->n_got >= glen && memcmp(s->got, HELLOD_GREETING, glen) == 0) {
                                s->greeted = true;
                                atomic_fetch_add(&l->greeted, 1);
                        }
                        continue;
                }
                if (k == 0) {
                        loris_finish(l, s, NULL);
                        return;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        loris_finish(l, s, strerror(errno));
                return;
        }
}

/* loris_main: the attack, on its own thread: one poll loop over every attacker. It reports
 * through Loris only (harness_fail() belongs to the test's main thread). */
static void *loris_main(void *arg) {
        static const char dribble[LORIS_FAST_BYTES] = "xxxxxxxxxx";
        const size_t glen = strlen(HELLOD_GREETING);
        Loris *l = arg;
        int64_t start = harness_now_ms();
        struct pollfd pfds[LORIS_SLOTS];
        int map[LORIS_SLOTS];

        /* Staggered over the first tick, as real attackers would be. */
        for (int i = 0; i < LORIS_SLOTS; i++)
                loris_open(l, i, start + (int64_t) i * LORIS_TICK_MS / LORIS_SLOTS);

        for (;;) {
                int64_t now = harness_now_ms();
                bool attacking = now < start + LORIS_ATTACK_MS && l->sessions < LORIS_MAX_SESSIONS;
                int n = 0, timeout = 100, r;

                if (!attacking)
                        atomic_store(&l->attacking, false);
                for (int i = 0; i < LORIS_SLOTS; i++) {
                        LorisSlot *s = &l->slots[i];

                        if (s->fd < 0 && attacking)
                                loris_open(l, i, now);
                        if (s->fd < 0)
                                continue;
                        pfds[n] = (struct pollfd) { .fd = s->fd, .events = s->connected ? POLLIN : POLLOUT };
                        map[n++] = i;
                        if (s->connected && s->n_got <= glen) {
                                int64_t wait = s->next_send_ms - now;

                                if (wait < timeout)
                                        timeout = wait > 0 ? (int) wait : 0;
                        }
                }
                if (n == 0 && !attacking)
                        break;
                if (now > start + LORIS_ATTACK_MS + LORIS_CLOSE_GRACE_MS) {
                        for (int k = 0; k < n; k++) {
                                LorisSlot *s = &l->slots[map[k]];

                                loris_error(l,
                                            "a %s attacker (%zu bytes sent) was still open %" PRId64
                                            " ms after it connected",
                                            loris_kind_name[s->kind], s->sent, now - s->started_ms);
                                (void) close(s->fd);
                                s->fd = -1;
                        }
                        break;
                }

                r = poll(pfds, (nfds_t) n, timeout);
                if (r < 0 && errno != EINTR) {
                        loris_error(l, "poll(): %s", strerror(errno));
                        break;
                }
                for (int k = 0; r > 0 && k < n; k++) {
                        LorisSlot *s = &l->slots[map[k]];

                        if (!pfds[k].revents)
                                continue;
                        if (!s->connected) {
                                socklen_t len = sizeof(int);
                                int e = 0;

                                (void) getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &len);
                                if (e != 0) {
                                        loris_error(l, "attacker connect(): %s", strerror(e));
                                        (void) close(s->fd);
                                        s->fd = -1;
                                        continue;
                                }
                                s->connected = true;
                                continue;
                        }
                        loris_read(l, s);
                }

                /* Dribble; an attacker that got anything beyond the greeting stops. */
                now = harness_now_ms();
                for (int i = 0; i < LORIS_SLOTS; i++) {
                        LorisSlot *s = &l->slots[i];
                        size_t len = s->kind == LORIS_FAST ? LORIS_FAST_BYTES : 1;
                        ssize_t k;

                        if (s->fd < 0 || !s->connected || s->n_got > glen || now < s->next_send_ms)
                                continue;
                        k = send(s->fd, dribble, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (k > 0)
                                s->sent += (size_t) k;
                        /* A failed send is the daemon closing: the read side will tell. */
                        s->next_send_ms += LORIS_TICK_MS;
                }
        }
        atomic_store(&l->attacking, false);
        return NULL;
}

/*
 * Slowloris: 300 clients dribble bytes and never finish a line; closed ones are replaced for
 * 8 s. Each must be closed with exactly its ERR line (idle_timeout for one byte a second,
 * max_line_length for ten), and meanwhile a well-behaved client must be served promptly.
 */
Test(hostile, slowloris, .timeout = 180) {
        Hellod *d;
        Loris *l = xcalloc(1, sizeof(*l));
        Stats greet = { 0 }, rtt = { 0 };
        int64_t greet_max, rtt_max, t0, t1;
        uint64_t cpu0, cpu1;
        long hz = sysconf(_SC_CLK_TCK);
        pthread_t thread;
        RssSampler rss;
        Baseline b;
        int rounds = 0;

        report("slowloris: own RLIMIT_NOFILE raised to %llu", (unsigned long long) harness_raise_nofile());
        d = hellod_start("max_connections = 1000;\nidle_timeout = %d;\nmax_line_length = %d;\n", LORIS_IDLE_TIMEOUT,
                         LORIS_MAX_LINE);
        b = baseline_take(d);
        rss_start(&rss, d);

        harness_step("slowloris: %d attackers connect", LORIS_SLOTS);
        l->port = d->port;
        atomic_init(&l->greeted, 0);
        atomic_init(&l->attacking, true);
        if (pthread_create(&thread, NULL, loris_main, l) != 0)
                harness_fail("pthread_create(): cannot start the attack");
        t0 = harness_now_ms();
        while (atomic_load(&l->greeted) < LORIS_SLOTS && atomic_load(&l->attacking)) {
                if (harness_now_ms() - t0 > HARNESS_TIMEOUT_MS)
                        hellod_fail(d, "only %d of %d attackers greeted after %d ms", atomic_load(&l->greeted),
                                    LORIS_SLOTS, HARNESS_TIMEOUT_MS);
                harness_sleep_ms(10);
        }
        report("slowloris: %d attackers greeted in %" PRId64 " ms", atomic_load(&l->greeted), harness_now_ms() - t0);

        harness_step("slowloris: a well-behaved client during the attack");
        t0 = harness_now_ms();
        cpu0 = harness_cpu_ticks(d->pid);
        while (atomic_load(&l->attacking) && rounds < LORIS_PROBE_MAX) {
                int64_t t = now_us();
                int fd = client_connect(d->port);

                client_expect_str(fd, HELLOD_GREETING);
                stats_add(&greet, now_us() - t);
                for (int i = 0; i < LORIS_PROBE_NAMES; i++) {
                        char name[32];

                        (void) snprintf(name, sizeof(name), "polite-%d-%d", rounds, i);
                        t = now_us();
                        client_hello(fd, name);
                        stats_add(&rtt, now_us() - t);
                }
                client_send_str(fd, "exit\n");
                client_expect_eof(fd, false);
                client_close(fd);
                rounds++;
                harness_sleep_ms(LORIS_PROBE_PAUSE_MS);
        }
        cpu1 = harness_cpu_ticks(d->pid);
        t1 = harness_now_ms();

        harness_step("slowloris: every attacker closed");
        (void) pthread_join(thread, NULL);
        report("slowloris: %d attacker sessions: %d slow closed by idle_timeout in %" PRId64 "-%" PRId64
               " ms (at most %zu bytes sent), %d fast closed by max_line_length in %" PRId64 "-%" PRId64
               " ms, %d wrong",
               l->sessions, l->closed[LORIS_SLOW], l->close_ms_min[LORIS_SLOW], l->close_ms_max[LORIS_SLOW],
               l->sent_max[LORIS_SLOW], l->closed[LORIS_FAST], l->close_ms_min[LORIS_FAST],
               l->close_ms_max[LORIS_FAST], l->n_errors);
        report("slowloris: daemon CPU during the attack: %.2f s in %.1f s", (double) (cpu1 - cpu0) / (double) hz,
               (double) (t1 - t0) / 1000.0);
        greet_max = stats_report("slowloris: well-behaved connect to greeting", &greet);
        rtt_max = stats_report("slowloris: well-behaved round trip", &rtt);
        cr_assert(l->n_errors == 0, "%d of %d attackers were not closed as the protocol says; first: %s", l->n_errors,
                  l->sessions, l->error);
        cr_assert(l->closed[LORIS_SLOW] > 0 && l->closed[LORIS_FAST] > 0);
        cr_assert(rounds > 0, "no well-behaved session ran during the attack");
        cr_assert(greet_max < LORIS_RTT_BOUND_MS * 1000 && rtt_max < LORIS_RTT_BOUND_MS * 1000,
                  "a well-behaved client waited %.3f ms for a greeting, %.3f ms for a reply (bound %d ms)",
                  greet_max / 1000.0, rtt_max / 1000.0, LORIS_RTT_BOUND_MS);
        stats_free(&greet);
        stats_free(&rtt);
        free(l);

        expect_settled(d, &b, rss_stop(&rss), "slowloris");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- floods --------------------------------------------------------------------------------- */

enum {
        FLOOD_LINES = 100000,
        FLOOD_PAD = 100,                        /* long lines: more than the kernel buffers between us */
        FLOOD_LINE_LEN = 6 + 7 + 1 + FLOOD_PAD + 1, /* "flood-NNNNNNN-xxx...\n" */
        FLOOD_REPLY_LEN = FLOOD_LINE_LEN - 1 + 10,  /* "Hello, flood-NNNNNNN-xxx...!\r\n" */
        FLOOD_NEVER_READ_LINES = 2000000,       /* stops long before: when the daemon stops reading */
        FLOOD_RELEASE_BOUND_MS = 4500,          /* idle_timeout 2 s, twice, and slack */
        FLOOD_QUIET_MS = 1500,                  /* the flooder sends without reading for this long */
        FLOOD_STALL_MS = 500,                   /* ... or (never reading) until stalled this long */
        FLOOD_DEADLINE_MS = 90000,
};

/* flood_stream: bytes [OFF, OFF+CAP) of the flooder's LINES lines (REPLIES: of the replies). */
static size_t flood_stream(bool replies, uint64_t lines, uint64_t off, char *buf, size_t cap) {
        static const char pad[FLOOD_PAD + 1] =
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        const size_t unit = replies ? FLOOD_REPLY_LEN : FLOOD_LINE_LEN;
        const uint64_t total = lines * unit;
        size_t n = 0;

        while (n < cap && off < total) {
                char line[FLOOD_REPLY_LEN + 1];
                uint64_t i = off / unit;
                size_t col = (size_t) (off % unit), k = unit - col;

                (void) snprintf(line, sizeof(line), "%sflood-%07" PRIu64 "-%s%s", replies ? "Hello, " : "", i, pad,
                                replies ? "!\r\n" : "\n");
                if (k > cap - n)
                        k = cap - n;
                memcpy(buf + n, line + col, k);
                n += k;
                off += k;
        }
        return n;
}

/* flood_send: sends what the socket takes now of LINES lines, from *OFF on; false on an error. */
static bool flood_send(int fd, uint64_t lines, uint64_t *off) {
        char buf[16384];

        for (;;) {
                size_t n = flood_stream(false, lines, *off, buf, sizeof(buf));
                ssize_t k;

                if (n == 0)
                        return true;
                k = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0)
                        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
                *off += (uint64_t) k;
        }
}

/* flood_check: DATA, received at reply offset OFF, is what the replies to LINES lines say;
 * fails otherwise. */
static void flood_check(uint64_t lines, uint64_t off, const char *data, size_t n) {
        char want[65536], e1[256], e2[256];
        size_t got = flood_stream(true, lines, off, want, n < sizeof(want) ? n : sizeof(want));

        if (got != n)
                harness_fail("the flooder got %zu bytes beyond the last reply (at byte %" PRIu64 ")", n - got,
                             off + got);
        for (size_t i = 0; i < n; i++)
                if (data[i] != want[i]) {
                        size_t from = i > 20 ? i - 20 : 0, len = n - from < 60 ? n - from : 60;

                        harness_fail("reply stream differs at byte %" PRIu64 " (reply %" PRIu64
                                     "): expected \"%s\", got \"%s\"",
                                     off + i, (off + i) / FLOOD_REPLY_LEN,
                                     harness_escape(want + from, len, e1, sizeof(e1)),
                                     harness_escape(data + from, len, e2, sizeof(e2)));
                }
}

/*
 * A client pipelines 100k lines and reads nothing for 1.5 s: the daemon stops reading it
 * (back-pressure), its memory stays bounded, another client is served meanwhile. Then the
 * flooder reads (idle_timeout = 60 bounds the daemon's blocked write, far beyond 1.5 s): every
 * reply arrives, exact and in order.
 */
Test(hostile, flood_pipelined_then_read, .timeout = 180) {
        const uint64_t in_total = (uint64_t) FLOOD_LINES * FLOOD_LINE_LEN;
        const uint64_t out_total = (uint64_t) FLOOD_LINES * FLOOD_REPLY_LEN;
        Hellod *d = hellod_start("idle_timeout = 60;\n");
        Baseline b = baseline_take(d);
        uint64_t sent = 0, received = 0, sent_quiet;
        int64_t t0, t_progress, t_stall = -1, t_read, t_done, other_us = -1;
        RssSampler rss;
        long peak_quiet, peak;
        int fd;

        rss_start(&rss, d);
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);

        harness_step("flood: %d lines without reading", FLOOD_LINES);
        t0 = t_progress = harness_now_ms();
        while (harness_now_ms() - t0 < FLOOD_QUIET_MS) {
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                uint64_t before = sent;

                if (sent < in_total && poll(&pfd, 1, 20) > 0 && !flood_send(fd, FLOOD_LINES, &sent))
                        harness_fail("flooder send(): %s", strerror(errno));
                if (sent != before)
                        t_progress = harness_now_ms();
                /* Stalled: the socket took nothing for 200 ms, the daemon stopped reading. */
                if (t_stall < 0 && sent < in_total && harness_now_ms() - t_progress >= 200)
                        t_stall = t_progress - t0;
                if (other_us < 0 && (t_stall >= 0 || sent == in_total)) {
                        /* The flooder's worker is blocked writing: another client must not notice. */
                        int64_t t = now_us();
                        int other = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);

                        client_hello(other, "bystander");
                        client_send_str(other, "exit\n");
                        client_expect_eof(other, false);
                        client_close(other);
                        other_us = now_us() - t;
                }
                if (sent == in_total)
                        harness_sleep_ms(20);
        }
        sent_quiet = sent;
        peak_quiet = atomic_load(&rss.peak_kib);
        cr_assert(other_us >= 0);
        cr_assert(other_us < 2000000, "a bystander's session took %.3f ms while the flooder was blocked",
                  other_us / 1000.0);
        if (t_stall >= 0)
                report("flood: without reading, the flooder sent %" PRIu64 " of %" PRIu64 " bytes (%" PRIu64
                       " lines) in %d ms; its socket first took nothing for 200 ms at %" PRId64
                       " ms (back-pressure: the daemon was blocked writing replies)",
                       sent_quiet, in_total, sent_quiet / FLOOD_LINE_LEN, FLOOD_QUIET_MS, t_stall);
        else
                report("flood: without reading, the flooder sent all %" PRIu64 " bytes in %d ms: the kernel's "
                       "buffers held them all, no back-pressure was needed",
                       in_total, FLOOD_QUIET_MS);
        report("flood: meanwhile a bystander's whole session (connect to EOF) took %.3f ms", other_us / 1000.0);

        harness_step("flood: the flooder reads every reply");
        t_read = harness_now_ms();
        while (received < out_total) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN | (sent < in_total ? POLLOUT : 0) };
                char buf[65536];
                int r = poll(&pfd, 1, 1000);

                if (harness_now_ms() - t_read > FLOOD_DEADLINE_MS)
                        hellod_fail(d, "flood: %" PRIu64 " of %" PRIu64 " reply bytes after %d ms", received, out_total,
                                    FLOOD_DEADLINE_MS);
                if (r < 0 && errno != EINTR)
                        harness_fail("poll(): %s", strerror(errno));
                if (r <= 0)
                        continue;
                if ((pfd.revents & POLLOUT) && !flood_send(fd, FLOOD_LINES, &sent))
                        harness_fail("flooder send(): %s", strerror(errno));
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

                        if (k == 0)
                                hellod_fail(d, "flood: EOF after %" PRIu64 " of %" PRIu64 " reply bytes", received,
                                            out_total);
                        if (k < 0 && errno != EAGAIN && errno != EINTR)
                                hellod_fail(d, "flood: recv() after %" PRIu64 " reply bytes: %s", received,
                                            strerror(errno));
                        if (k > 0) {
                                flood_check(FLOOD_LINES, received, buf, (size_t) k);
                                received += (uint64_t) k;
                        }
                }
        }
        t_done = harness_now_ms();
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
        peak = rss_stop(&rss);
        report("flood: all %d replies exact and in order, %.1f MB, read in %" PRId64 " ms (%.0f lines/s)", FLOOD_LINES,
               out_total / 1e6, t_done - t_read, FLOOD_LINES * 1000.0 / (double) (t_done - t_read + 1));
        report("flood: RSS baseline %ld KiB, peak while not reading %ld KiB, peak overall %ld KiB", b.rss_kib,
               peak_quiet, peak);
        cr_assert(peak <= b.rss_kib + (b.sanitized ? RSS_SLACK_SANITIZED_KIB : RSS_SLACK_KIB),
                  "hellod's RSS peaked at %ld KiB during the flood, baseline %ld KiB", peak, b.rss_kib);

        expect_settled(d, &b, peak, "flood");
        hellod_stop_clean(d);
        hellod_free(d);
}

/*
 * A flooder that never reads: the daemon's write to it blocks, and is bounded by idle_timeout
 * (2 s): the session ends (write-timeout, or idle-timeout) and its descriptor and thread are
 * released while the flooder still holds its socket. What the flooder then finds is an exact prefix of the
 * replies.
 */
Test(hostile, flood_never_read, .timeout = 120) {
        Hellod *d = hellod_start("idle_timeout = 2;\n");
        Baseline b = baseline_take(d);
        uint64_t sent = 0, received = 0;
        int64_t t0, stalled_at = -1, released_at;
        ClientReadEnd end = CLIENT_READ_DONE;
        RssSampler rss;
        int fd;

        rss_start(&rss, d);
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);

        harness_step("flood: send until the daemon stops reading");
        t0 = harness_now_ms();
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                int r = poll(&pfd, 1, FLOOD_STALL_MS);

                if (r > 0 && !flood_send(fd, FLOOD_NEVER_READ_LINES, &sent))
                        harness_fail("flooder send(): %s", strerror(errno));
                if (r == 0) {
                        stalled_at = harness_now_ms();
                        break;
                }
                if (harness_now_ms() - t0 > HARNESS_TIMEOUT_MS)
                        harness_fail("the daemon took all %" PRIu64 " bytes: no back-pressure", sent);
        }
        report("flood (never read): stalled after %" PRIu64 " bytes, %" PRId64 " ms", sent, stalled_at - t0);

        harness_step("flood: the daemon gives up on the writer");
        expect_serving(d, "bystander");
        for (;;) {
                if (hellod_fd_count(d) <= b.fds)
                        break;
                /* The whole flush is bounded by idle_timeout (2 s), not each send(): the session
                 * must be gone well within twice that (a daemon that restarted the timeout for
                 * every send() took 5.5 s here). */
                if (harness_now_ms() - stalled_at > FLOOD_RELEASE_BOUND_MS)
                        hellod_fail(d, "the blocked session still holds its descriptor %d ms after the stall",
                                    FLOOD_RELEASE_BOUND_MS);
                harness_sleep_ms(20);
        }
        released_at = harness_now_ms();
        /* Both are the daemon giving up on it: its write timed out, or the idle deadline passed
         * while it was blocked writing. */
        for (;;) {
                char *err = hellod_stderr(d), *line = strstr(err, "closed: write-timeout"), *eol;

                if (!line)
                        line = strstr(err, "closed: idle-timeout");
                if (line) {
                        while (line > err && line[-1] != '\n')
                                line--;
                        eol = strchr(line, '\n');
                        report("flood (never read): daemon log: %.*s", eol ? (int) (eol - line) : (int) strlen(line),
                               line);
                        free(err);
                        break;
                }
                free(err);
                if (harness_now_ms() - released_at > HARNESS_TIMEOUT_MS)
                        hellod_fail(d, "no write-timeout or idle-timeout logged for the flooder");
                harness_sleep_ms(50);
        }
        report("flood (never read): session released %" PRId64 " ms after the flooder stalled (idle_timeout 2 s)",
               released_at - stalled_at);

        harness_step("flood: what reached the flooder is an exact prefix of the replies");
        while (end == CLIENT_READ_DONE) {
                char buf[65536];
                size_t k = client_read(fd, buf, sizeof(buf), NULL, HARNESS_TIMEOUT_MS, &end);

                flood_check(FLOOD_NEVER_READ_LINES, received, buf, k);
                received += k;
        }
        cr_assert(end == CLIENT_READ_EOF || end == CLIENT_READ_RESET, "the flooder's connection did not end");
        report("flood (never read): the flooder then read %" PRIu64 " reply bytes (%" PRIu64 " replies), then %s",
               received, received / FLOOD_REPLY_LEN, end == CLIENT_READ_EOF ? "EOF" : "a reset");
        client_close(fd);

        expect_settled(d, &b, rss_stop(&rss), "flood (never read)");
        hellod_stop_clean(d);
        hellod_free(d);
}

/*
 * The other side of slowloris: a slow writer that is active must not be taken for one. A
 * complete line every 500 ms against idle_timeout = 2, each write ending with the start of the
 * next line, as a block-buffered writer (stdio's 4 KiB flushes, `producer | nc`) sends them.
 * The README: ERR idle timeout is for "no complete line for idle_timeout seconds".
 */
Test(hostile, slow_writer_is_not_idle, .timeout = 60) {
        enum { LINES = 10, PERIOD_MS = 500 };
        Hellod *d = hellod_start("idle_timeout = 2;\n");
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        int64_t t0 = harness_now_ms();

        client_send_str(fd, "line-0-start");
        for (int i = 1; i <= LINES; i++) {
                char piece[64], want[64];

                harness_sleep_ms(PERIOD_MS);
                harness_step("slow writer: complete line %d of %d, %" PRId64 " ms in (idle_timeout 2 s)", i, LINES,
                             harness_now_ms() - t0);
                (void) snprintf(piece, sizeof(piece), "-end\nline-%d-start", i);
                (void) snprintf(want, sizeof(want), "Hello, line-%d-start-end!\r\n", i - 1);
                client_send_str(fd, piece);
                client_expect_str(fd, want);
        }
        harness_step("slow writer: exit");
        client_send_str(fd, "-end\nexit\n");
        client_expect_str(fd, "Hello, line-10-start-end!\r\n");
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- garbage -------------------------------------------------------------------------------- */

enum {
        GARBAGE_MAX_LINE = 300,
        GARBAGE_IDLE_TIMEOUT = 2,
        GARBAGE_STRUCTURED = 150, /* random line-structured streams */
        GARBAGE_UNIFORM = 50,     /* uniformly random byte streams */
        GARBAGE_STREAM_MAX = 32768,
        GARBAGE_BIG = 100 * 1024, /* one unterminated line, far beyond the limit and the linger budget */
        GARBAGE_POLITE_EVERY = 10,
};


/* nasty_byte: anything but '\n', biased to what breaks parsers and terminals. */
static unsigned char nasty_byte(Rng *r) {
        static const unsigned char special[] = { 0x00, 0xff, 0xfb, 0xfc, 0xfd, 0xfe, 0xf4, 0xf0, 0xfa, '\r', 0x80,
                                                 0xbf, 0xc0, 0xc1, 0xed, 0xf5, 0x1b, 0x7f, '%', '{', '}', '\\' };
        unsigned char c;

        switch (rng_below(r, 4)) {
        case 0:
                return special[rng_below(r, sizeof(special))];
        case 1:
                return (unsigned char) (0x20 + rng_below(r, 0x5f));
        default:
                c = (unsigned char) rng_next(r);
                return c == '\n' ? 0 : c;
        }
}

/* gen_structured: random lines of nasty bytes, some empty, near or over the limit, exit,
 * telnet negotiations, "\n" or "\r\n" ends, maybe an unterminated last line. */
static size_t gen_structured(Rng *r, unsigned char *buf, size_t cap) {
        size_t n = 0, lines = 1 + rng_below(r, 40);

        for (size_t i = 0; i < lines; i++) {
                size_t pick = rng_below(r, 100), len;

                if (pick < 3)
                        len = GARBAGE_MAX_LINE + 1 + rng_below(r, 40);
                else if (pick < 8)
                        len = GARBAGE_MAX_LINE - rng_below(r, 2);
                else if (pick < 14)
                        len = 0;
                else
                        len = rng_below(r, 60);
                if (n + len + 16 > cap)
                        break;
                if (pick >= 14 && pick < 17) {
                        memcpy(buf + n, "exit", 4);
                        n += 4;
                } else {
                        if (pick >= 17 && pick < 25) /* a telnet negotiation first */
                                for (size_t k = 1 + rng_below(r, 3); k > 0; k--) {
                                        buf[n++] = 0xff;
                                        buf[n++] = (unsigned char) (0xfb + rng_below(r, 4));
                                        buf[n++] = (unsigned char) rng_below(r, 40);
                                }
                        for (size_t k = 0; k < len; k++)
                                buf[n++] = nasty_byte(r);
                }
                if (i + 1 == lines && rng_below(r, 4) == 0)
                        break; /* unterminated, answered at EOF */
                if (rng_below(r, 2))
                        buf[n++] = '\r';
                buf[n++] = '\n';
        }
        return n;
}

/*
 * exchange: sends IN in random-sized pieces (TCP_NODELAY, so they leave as they are), then
 * half-closes, reading all the while until EOF or a reset. Stops sending if the daemon is
 * gone. Returns the bytes read (malloc'd in *RET).
 */
static size_t exchange(int fd, const void *in, size_t n, Rng *r, size_t max_piece, char **ret, ClientReadEnd *ret_end) {
        static const int one = 1;
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        size_t off = 0, got = 0, cap = 4096;
        bool shut = false;
        char *out = malloc(cap);

        if (!out)
                harness_fail("out of memory");
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN | (off < n ? POLLOUT : 0) };
                int rp = poll(&pfd, 1, 100);

                if (harness_now_ms() > deadline) {
                        *ret_end = CLIENT_READ_TIMEOUT;
                        break;
                }
                if (rp < 0 && errno != EINTR)
                        harness_fail("poll(): %s", strerror(errno));
                if (rp <= 0)
                        continue;
                if ((pfd.revents & POLLOUT) && off < n) {
                        size_t piece = 1 + rng_below(r, max_piece);
                        ssize_t k = send(fd, (const char *) in + off, piece < n - off ? piece : n - off,
                                         MSG_NOSIGNAL | MSG_DONTWAIT);

                        if (k > 0)
                                off += (size_t) k;
                        else if (k < 0 && errno != EAGAIN && errno != EINTR)
                                off = n; /* EPIPE, ECONNRESET: the daemon closed; read what it said */
                }
                if (off == n && !shut) {
                        (void) shutdown(fd, SHUT_WR);
                        shut = true;
                }
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t k;

                        if (got == cap) {
                                char *grown = realloc(out, cap *= 2);

                                if (!grown)
                                        harness_fail("out of memory");
                                out = grown;
                        }
                        k = recv(fd, out + got, cap - got, MSG_DONTWAIT);
                        if (k > 0)
                                got += (size_t) k;
                        else if (k == 0) {
                                *ret_end = CLIENT_READ_EOF;
                                break;
                        } else if (errno == ECONNRESET) {
                                *ret_end = CLIENT_READ_RESET;
                                break;
                        } else if (errno != EAGAIN && errno != EINTR)
                                harness_fail("recv(): %s", strerror(errno));
                }
        }
        *ret = out;
        return got;
}

typedef struct GarbageRun {
        Hellod *d;
        Rng rng;
        uint64_t seed;
        int cases, errs, polite;
        size_t bytes_in, bytes_out;
} GarbageRun;

/*
 * garbage_case: one connection: IN, then a half-close; the output must be the greeting and
 * exactly what the model says, then EOF (a reset only when ALLOW_RESET: input far beyond what
 * the daemon drains after its ERR). Every few cases a well-behaved client is served too.
 */
static void garbage_case(GarbageRun *g, const char *what, const void *in, size_t n, bool allow_reset) {
        static const size_t pieces[] = { 7, 64, 600, 4096 }; /* largest piece per send() */
        const size_t glen = strlen(HELLOD_GREETING);
        char *want = malloc(glen + n * 6 + 64), *got, e1[512], e2[512];
        size_t wlen, glen_got;
        ClientReadEnd end;
        int fd;

        if (!want)
                harness_fail("out of memory");
        memcpy(want, HELLOD_GREETING, glen);
        wlen = glen + harness_model_replies("Hello, ", "!", in, n, GARBAGE_MAX_LINE, want + glen);
        fd = client_connect(g->d->port);
        glen_got = exchange(fd, in, n, &g->rng, pieces[rng_below(&g->rng, sizeof(pieces) / sizeof(pieces[0]))],
                            &got, &end);
        client_close(fd);
        if (!hellod_alive(g->d))
                hellod_fail(g->d, "hellod died on garbage case %d (%s), seed %" PRIu64, g->cases, what, g->seed);
        if (glen_got != wlen || memcmp(got, want, wlen) != 0) {
                size_t i = 0, from, len;

                while (i < wlen && i < glen_got && got[i] == want[i])
                        i++;
                from = i > 24 ? i - 24 : 0;
                len = 72;
                hellod_fail(g->d,
                            "garbage case %d (%s, %zu bytes in, seed %" PRIu64 "): output differs at byte %zu of %zu "
                            "(got %zu): expected \"%s\", got \"%s\"",
                            g->cases, what, n, g->seed, i, wlen, glen_got,
                            harness_escape(want + from, wlen - from < len ? wlen - from : len, e1, sizeof(e1)),
                            harness_escape(got + from,
                                           glen_got > from ? (glen_got - from < len ? glen_got - from : len) : 0, e2,
                                           sizeof(e2)));
        }
        if (!(end == CLIENT_READ_EOF || (allow_reset && end == CLIENT_READ_RESET)))
                hellod_fail(g->d, "garbage case %d (%s, seed %" PRIu64 "): the right output, then %s instead of EOF",
                            g->cases, what, g->seed,
                            end == CLIENT_READ_RESET ? "a reset" : end == CLIENT_READ_TIMEOUT ? "a timeout" : "?");
        if (wlen >= strlen(HELLOD_ERR_TOO_LONG) &&
            memcmp(want + wlen - strlen(HELLOD_ERR_TOO_LONG), HELLOD_ERR_TOO_LONG, strlen(HELLOD_ERR_TOO_LONG)) == 0)
                g->errs++;
        g->cases++;
        g->bytes_in += n;
        g->bytes_out += glen_got;
        free(want);
        free(got);
        if (g->cases % GARBAGE_POLITE_EVERY == 0) {
                expect_serving(g->d, "polite");
                g->polite++;
        }
}

static uint64_t garbage_seed(void) {
        const char *env = getenv("HELLOD_HOSTILE_SEED");

        if (env && *env)
                return strtoull(env, NULL, 0);
        return (uint64_t) now_us() ^ ((uint64_t) getpid() << 32);
}

/*
 * Garbage: NULs, invalid UTF-8, telnet IAC sequences, control bytes, CR games, over-long lines,
 * random line-structured and uniformly random streams, each on its own connection and sent in
 * random pieces. hellod is 8-bit clean: every output is checked byte for byte against the
 * protocol's model. Others are served throughout; the daemon never dies.
 */
Test(hostile, garbage, .timeout = 180) {
#define CASE(lit) { #lit, lit, sizeof(lit) - 1 }
        static const struct {
                const char *what, *bytes;
                size_t len;
        } fixed[] = {
                CASE("\0\0nul\0inside\0\n"),
                CASE("\0\n"),
                CASE("\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\x28\n"), /* invalid UTF-8 */
                CASE("\xc0\xaf\xe0\x80\xaf\xf8\x88\x80\x80\x80\n"),         /* overlong forms, 5-byte form */
                CASE("\xed\xa0\x80\xed\xbf\xbf\n"),                         /* UTF-16 surrogates */
                CASE("\xfe\xff\xff\xfe\xef\xbb\xbf\n"),                     /* BOMs */
                CASE("Zo\xc3\xab \xf0\x9f\x98\x80\n"),                      /* valid UTF-8 */
                CASE("\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27\xff\xfb\x03Michael\r\n"), /* telnet's opening */
                CASE("\xff\xfb\x01\xff\xfd\x03\r\n"),
                CASE("\xff\xf4\xff\xfd\x06exit\r\nexit\r\n"), /* telnet ^C: its IAC IP ends the session */
                CASE("\xff\xfa\x18\x00xterm\xff\xf0\r\nTracy\r\n"), /* subnegotiation */
                CASE("\xff\xff\n"),
                CASE("\xff\xfb"), /* half an IAC sequence, at EOF */
                CASE("\x01\x02\x1b[31mred\x1b[0m\x07\x7f\b\n"),
                CASE("a\rb\r\rc\r\n"),
                CASE("two crs\r\r\n"),
                CASE("\n\r\n\n\r\nafter empty lines\n"),
                CASE("exit\n\xff\xfb\x01garbage\0 after exit\n"),
                CASE("Exit\nEXIT\nexit \n exit\nexit\r\n"),
                CASE("\x80\x81\x82\0\xff"),
                CASE("\r"),
                CASE("%s%n%x%%\n"),
                CASE("{name}\n"),
                CASE("exit\r"),
        };
#undef CASE
        Hellod *d = hellod_start("max_line_length = %d;\nidle_timeout = %d;\n", GARBAGE_MAX_LINE,
                                 GARBAGE_IDLE_TIMEOUT);
        Baseline b = baseline_take(d);
        GarbageRun g = { .d = d };
        unsigned char *buf = xcalloc(1, GARBAGE_BIG + 16);
        int64_t t0 = harness_now_ms();
        RssSampler rss;
        size_t n;
        int fd;

        g.seed = garbage_seed();
        g.rng.s = g.seed;
        report("garbage: seed %" PRIu64 " (HELLOD_HOSTILE_SEED=%" PRIu64 " repeats this run)", g.seed, g.seed);
        rss_start(&rss, d);

        harness_step("garbage: fixed cases (seed %" PRIu64 ")", g.seed);
        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
                garbage_case(&g, fixed[i].what, fixed[i].bytes, fixed[i].len, false);

        harness_step("garbage: around max_line_length (seed %" PRIu64 ")", g.seed);
        {
                static const struct {
                        const char *what, *tail;
                        size_t extra;
                } edges[] = {
                        { "exactly max_line_length", "\n", 0 },
                        { "max_line_length + CRLF", "\r\n", 0 },
                        { "max_line_length + 1", "\n", 1 },
                        { "max_line_length + CR CR LF", "\r\r\n", 0 },
                        { "max_line_length + CR, at EOF", "\r", 0 },
                        { "max_line_length + 1, at EOF", "", 1 },
                };

                for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
                        size_t len = GARBAGE_MAX_LINE + edges[i].extra;

                        memcpy(buf, "first\n", 6);
                        for (size_t k = 0; k < len; k++)
                                buf[6 + k] = nasty_byte(&g.rng);
                        n = 6 + len;
                        memcpy(buf + n, edges[i].tail, strlen(edges[i].tail));
                        n += strlen(edges[i].tail);
                        memcpy(buf + n, "last\n", 5);
                        n += 5;
                        garbage_case(&g, edges[i].what, buf, n, false);
                }
        }

        harness_step("garbage: 100 KiB without a newline (seed %" PRIu64 ")", g.seed);
        for (size_t k = 0; k < GARBAGE_BIG; k++)
                buf[k] = nasty_byte(&g.rng);
        /* The daemon drains 64 KiB after its ERR, then closes: the rest may come back as a reset. */
        garbage_case(&g, "100 KiB unterminated", buf, GARBAGE_BIG, true);

        harness_step("garbage: the ERR comes without waiting for a newline or EOF");
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        memset(buf, 0xfe, GARBAGE_MAX_LINE + 1); /* not 0xff: IAC IAC is one data byte */
        client_send(fd, buf, GARBAGE_MAX_LINE + 1);
        client_expect_str(fd, HELLOD_ERR_TOO_LONG);
        client_expect_eof(fd, false);
        client_close(fd);

        harness_step("garbage: binary without a newline, then silence: idle timeout");
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_send(fd, "\xff\xfb\x01\x00\x80junk", 10);
        client_expect(fd, "\xff\xfe\x01", 3); /* telnet WILL ECHO refused: DONT ECHO */
        client_expect_str(fd, HELLOD_ERR_IDLE);
        client_expect_eof(fd, false);
        client_close(fd);

        harness_step("garbage: %d random line-structured streams (seed %" PRIu64 ")", GARBAGE_STRUCTURED, g.seed);
        for (int i = 0; i < GARBAGE_STRUCTURED; i++) {
                n = gen_structured(&g.rng, buf, GARBAGE_STREAM_MAX);
                garbage_case(&g, "random lines", buf, n, false);
        }

        harness_step("garbage: %d uniformly random streams (seed %" PRIu64 ")", GARBAGE_UNIFORM, g.seed);
        for (int i = 0; i < GARBAGE_UNIFORM; i++) {
                n = 1 + rng_below(&g.rng, 4096);
                for (size_t k = 0; k < n; k++)
                        buf[k] = (unsigned char) rng_next(&g.rng);
                garbage_case(&g, "random bytes", buf, n, false);
        }

        report("garbage: %d connections, %zu bytes in, %zu bytes out, all exact; %d ended with ERR line too long; "
               "%d well-behaved sessions served in between; %" PRId64 " ms",
               g.cases, g.bytes_in, g.bytes_out, g.errs, g.polite, harness_now_ms() - t0);
        free(buf);
        expect_settled(d, &b, rss_stop(&rss), "garbage");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- abrupt ends ---------------------------------------------------------------------------- */

enum {
        ABRUPT_MIDLINE = 200,
        ABRUPT_WRITERS = 10,
        ABRUPT_HALF_CLOSE_ABANDON = 100,
        STORM_CONNECTIONS = 2000,
        STORM_BATCH = 100,
        STORM_DEADLINE_MS = 60000,
};

/* count_in_stderr: occurrences of NEEDLE in the daemon's log so far. */
static int count_in_stderr(Hellod *d, const char *needle) {
        char *err = hellod_stderr(d);
        int n = 0;

        for (const char *p = err; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        free(err);
        return n;
}

/*
 * Abrupt ends: RSTs in the middle of a line and in the middle of the daemon's writes,
 * half-closes with data still pending, and a storm of 2000 connections closed at once (FIN or
 * RST, before or after the handshake or the greeting). Afterwards: alive, serving, baseline.
 */
Test(hostile, abrupt_ends, .timeout = 180) {
        static const char *const modes[] = { "close at once", "RST at once", "close once connected",
                                             "RST once connected", "RST after the greeting" };
        Hellod *d;
        Baseline b;
        RssSampler rss;
        int fds[ABRUPT_MIDLINE], storm_modes[5] = { 0 }, storm_done = 0;
        int64_t t0;

        harness_raise_nofile();
        d = hellod_start(NULL);
        b = baseline_take(d);
        rss_start(&rss, d);

        harness_step("abrupt: %d RSTs in the middle of a line", ABRUPT_MIDLINE);
        for (int i = 0; i < ABRUPT_MIDLINE; i++)
                fds[i] = client_connect(d->port);
        for (int i = 0; i < ABRUPT_MIDLINE; i++) {
                char partial[32];

                client_expect_str(fds[i], HELLOD_GREETING);
                (void) snprintf(partial, sizeof(partial), "half a line %d", i);
                client_send_str(fds[i], partial);
        }
        harness_sleep_ms(200); /* let the daemon read the partial lines */
        for (int i = 0; i < ABRUPT_MIDLINE; i++)
                client_reset(fds[i]);
        expect_serving(d, "after mid-line resets");

        harness_step("abrupt: %d RSTs while the daemon writes", ABRUPT_WRITERS);
        {
                uint64_t sent[ABRUPT_WRITERS] = { 0 };
                int64_t quiet_since = harness_now_ms();

                for (int i = 0; i < ABRUPT_WRITERS; i++)
                        fds[i] = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
                /* Pipeline without reading until no socket takes more for 300 ms: the workers
                 * are then blocked writing replies nobody reads. */
                t0 = harness_now_ms();
                while (harness_now_ms() - quiet_since < 300 && harness_now_ms() - t0 < HARNESS_TIMEOUT_MS) {
                        for (int i = 0; i < ABRUPT_WRITERS; i++) {
                                uint64_t before = sent[i];

                                if (!flood_send(fds[i], FLOOD_NEVER_READ_LINES, &sent[i]))
                                        harness_fail("send(): %s", strerror(errno));
                                if (sent[i] != before)
                                        quiet_since = harness_now_ms();
                        }
                        harness_sleep_ms(10);
                }
                for (int i = 0; i < ABRUPT_WRITERS; i++)
                        client_reset(fds[i]);
                report("abrupt: %d writers reset with about %" PRIu64 " bytes each pipelined and unread",
                       ABRUPT_WRITERS, sent[0]);
        }
        expect_serving(d, "after resets mid-write");

        harness_step("abrupt: half-close with pending data");
        {
                int fd = client_connect(d->port);

                client_send_str(fd, "alpha\nbeta\r\ngam");
                client_shutdown_write(fd);
                client_expect_str(fd, HELLOD_GREETING "Hello, alpha!\r\nHello, beta!\r\nHello, gam!\r\n");
                client_expect_eof(fd, false);
                client_close(fd);

                fd = client_connect(d->port);
                client_shutdown_write(fd);
                client_expect_str(fd, HELLOD_GREETING);
                client_expect_eof(fd, false);
                client_close(fd);

                fd = client_connect(d->port);
                {
                        char junk[32768];

                        memset(junk, 'j', sizeof(junk));
                        client_send_str(fd, "exit\n");
                        client_send(fd, junk, sizeof(junk));
                }
                client_shutdown_write(fd);
                client_expect_str(fd, HELLOD_GREETING);
                client_expect_eof(fd, false);
                client_close(fd);

                /* Half-close, then vanish without reading: the replies meet a closed socket. */
                for (int i = 0; i < ABRUPT_HALF_CLOSE_ABANDON; i++) {
                        fd = client_connect(d->port);
                        client_send_str(fd, "half\nclosed\npartial");
                        client_shutdown_write(fd);
                        client_close(fd);
                }
        }
        expect_serving(d, "after half-closes");

        harness_step("abrupt: a storm of %d connections closed at once", STORM_CONNECTIONS);
        t0 = harness_now_ms();
        while (storm_done < STORM_CONNECTIONS && harness_now_ms() - t0 < STORM_DEADLINE_MS) {
                const char *ip = (storm_done / STORM_BATCH) % 2 ? "::1" : "127.0.0.1";
                int mode[STORM_BATCH];

                for (int j = 0; j < STORM_BATCH; j++) {
                        fds[j] = client_start_connect(ip, d->port);
                        if (fds[j] < 0)
                                harness_fail("connect(%s): %s", ip, strerror(-fds[j]));
                        mode[j] = (storm_done + j) % 5;
                        if (mode[j] == 0)
                                client_close(fds[j]);
                        else if (mode[j] == 1)
                                client_reset(fds[j]);
                }
                for (int j = 0; j < STORM_BATCH; j++) {
                        int r;

                        storm_modes[mode[j]]++;
                        if (mode[j] <= 1)
                                continue;
                        r = wait_connected(fds[j]);
                        if (r < 0)
                                hellod_fail(d, "storm connect(%s): %s", ip, strerror(-r));
                        if (mode[j] == 2)
                                client_close(fds[j]);
                        else if (mode[j] == 3)
                                client_reset(fds[j]);
                }
                for (int j = 0; j < STORM_BATCH; j++)
                        if (mode[j] == 4) {
                                if (!client_wait_readable(fds[j], HARNESS_TIMEOUT_MS))
                                        hellod_fail(d, "storm: no greeting within %d ms", HARNESS_TIMEOUT_MS);
                                client_reset(fds[j]);
                        }
                storm_done += STORM_BATCH;
        }
        report("abrupt: storm of %d connections in %" PRId64 " ms: %d %s, %d %s, %d %s, %d %s, %d %s", storm_done,
               harness_now_ms() - t0, storm_modes[0], modes[0], storm_modes[1], modes[1], storm_modes[2], modes[2],
               storm_modes[3], modes[3], storm_modes[4], modes[4]);
        cr_assert(storm_done >= STORM_CONNECTIONS, "the storm did not finish within %d ms", STORM_DEADLINE_MS);

        expect_settled(d, &b, rss_stop(&rss), "abrupt ends");
        report("abrupt: daemon log: %d closed by reset, %d broken pipe, %d eof, %d exit (connection lines are "
               "rate-limited to 100/s)",
               count_in_stderr(d, "closed: reset"), count_in_stderr(d, "closed: broken-pipe"),
               count_in_stderr(d, "closed: eof"), count_in_stderr(d, "closed: exit"));
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- descriptor exhaustion ------------------------------------------------------------------ */

enum {
        EXHAUST_CLIENTS = 500,
        EXHAUST_NOFILE = 64,
        EXHAUST_CPU_WINDOW_MS = 3000,
        EXHAUST_DRAIN_MS = 60000,
};

/*
 * The daemon with RLIMIT_NOFILE = 64 and 500 clients: it stays up, does not spin (CPU while at
 * the limit), leaves each client served, refused with the busy error or waiting in the
 * backlog; as served clients leave, the waiting ones are served or refused in turn, none is
 * dropped without a word; then it serves normally and is back to its baseline.
 */
Test(hostile, descriptor_exhaustion, .timeout = 180) {
        ClientState *state = xcalloc(EXHAUST_CLIENTS, sizeof(*state));
        int *fds = xcalloc(EXHAUST_CLIENTS, sizeof(*fds));
        int counts[4] = { 0 }, total[4] = { 0 }, rounds = 0, left;
        long hz = sysconf(_SC_CLK_TCK);
        uint64_t t0_ticks, t1_ticks;
        int64_t t0, connected_ms;
        double cpu;
        RssSampler rss;
        Baseline b;
        Hellod *d;

        report("exhaustion: own RLIMIT_NOFILE raised to %llu", (unsigned long long) harness_raise_nofile());
        d = hellod_start_opts(&(HellodOpts) { .nofile = EXHAUST_NOFILE }, NULL);
        b = baseline_take(d);
        rss_start(&rss, d);

        harness_step("exhaustion: %d clients against RLIMIT_NOFILE = %d", EXHAUST_CLIENTS, EXHAUST_NOFILE);
        t0 = harness_now_ms();
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                fds[i] = client_start_connect("127.0.0.1", d->port);
                if (fds[i] < 0)
                        harness_fail("connect(): %s", strerror(-fds[i]));
        }
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                int r = wait_connected(fds[i]);

                if (r < 0)
                        hellod_fail(d, "client %d: connect(): %s", i, strerror(-r));
        }
        connected_ms = harness_now_ms() - t0;
        harness_sleep_ms(500);

        /* Without the reserve descriptor and the pause the listener stays readable and the
         * accept loop spins. */
        harness_step("exhaustion: CPU use while at the limit");
        t0_ticks = harness_cpu_ticks(d->pid);
        harness_sleep_ms(EXHAUST_CPU_WINDOW_MS);
        t1_ticks = harness_cpu_ticks(d->pid);
        cpu = (double) (t1_ticks - t0_ticks) / (double) hz;
        if (!hellod_alive(d))
                hellod_fail(d, "hellod died with RLIMIT_NOFILE = %d", EXHAUST_NOFILE);

        harness_step("exhaustion: every client served, refused or waiting");
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                state[i] = client_classify(fds[i]);
                counts[state[i]]++;
        }
        report("exhaustion: %d clients connected in %" PRId64 " ms; at the limit: %d served, %d refused, %d "
               "waiting; daemon fds %d; daemon CPU %.2f s in %.1f s (%.0f%% of a core)",
               EXHAUST_CLIENTS, connected_ms, counts[CLIENT_SERVED], counts[CLIENT_REFUSED], counts[CLIENT_WAITING],
               hellod_fd_count(d), cpu, EXHAUST_CPU_WINDOW_MS / 1000.0, 100.0 * cpu * 1000.0 / EXHAUST_CPU_WINDOW_MS);
        cr_assert(cpu < 0.5 * EXHAUST_CPU_WINDOW_MS / 1000.0,
                  "hellod used %.2f s of CPU in %.1f s while out of descriptors: a busy loop?", cpu,
                  EXHAUST_CPU_WINDOW_MS / 1000.0);
        cr_assert(counts[CLIENT_SERVED] > 0, "no client served at all with RLIMIT_NOFILE = %d", EXHAUST_NOFILE);
        cr_assert(counts[CLIENT_SERVED] < EXHAUST_NOFILE, "%d clients served with only %d descriptors?",
                  counts[CLIENT_SERVED], EXHAUST_NOFILE);

        harness_step("exhaustion: served clients work while saturated");
        for (int i = 0; i < EXHAUST_CLIENTS; i++)
                if (state[i] == CLIENT_SERVED)
                        client_hello(fds[i], "saturated");

        /* Served clients leave, refused ones are closed; the backlog must then be worked off:
         * each waiting client gets the greeting or the busy error, none is dropped. */
        harness_step("exhaustion: the backlog is worked off as clients leave");
        memcpy(total, counts, sizeof(total));
        t0 = harness_now_ms();
        for (;;) {
                left = 0;
                for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                        if (state[i] == CLIENT_WAITING) {
                                state[i] = client_classify(fds[i]);
                                if (state[i] != CLIENT_WAITING) {
                                        total[state[i]]++;
                                        total[CLIENT_WAITING]--;
                                        if (state[i] == CLIENT_SERVED)
                                                client_hello(fds[i], "from the backlog");
                                }
                        }
                        if (state[i] == CLIENT_SERVED || state[i] == CLIENT_REFUSED) {
                                client_close(fds[i]);
                                state[i] = CLIENT_GONE;
                        }
                        left += state[i] == CLIENT_WAITING;
                }
                if (left == 0)
                        break;
                if (harness_now_ms() - t0 > EXHAUST_DRAIN_MS)
                        hellod_fail(d, "%d clients still waiting %d ms after the others left", left, EXHAUST_DRAIN_MS);
                rounds++;
                harness_sleep_ms(50);
        }
        report("exhaustion: backlog worked off in %" PRId64 " ms (%d polls): in all %d served, %d refused, "
               "none dropped",
               harness_now_ms() - t0, rounds, total[CLIENT_SERVED], total[CLIENT_REFUSED]);

        harness_step("exhaustion: recovery");
        for (int i = 0; i < 5; i++)
                expect_serving(d, "recovered");

        expect_settled(d, &b, rss_stop(&rss), "descriptor exhaustion");
        free(state);
        free(fds);
        hellod_stop_clean(d);
        hellod_free(d);
}
