/* test-hostile: slowloris, floods, garbage, abrupt ends and descriptor exhaustion against the
 * real daemon. After each scenario the daemon must be alive and serving, and back to its
 * baseline: descriptors, threads (workers are cached), memory. Figures are printed, and
 * asserted only where the bound is behavioural and generous. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clients.h"
#include "suite.h"

HELLOD_SUITE(hostile);

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

static void *xcalloc(size_t n, size_t size) {
        void *p = calloc(n, size);

        if (!p)
                harness_fail("out of memory");
        return p;
}

/* stats_report: the samples' figures; returns the largest (us). */
static int64_t stats_report(const char *what, Stats *s) {
        char figures[256];

        report("%s: %s", what, stats_describe(s, figures, sizeof(figures)));
        return stats_max(s);
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

/* expect_baseline: an idle daemon's figures, once its descriptor count holds still. */
static Baseline expect_baseline(Hellod *d) {
        Baseline b;

        harness_step("baseline");
        b = baseline_take(d);
        if (!b.steady)
                hellod_fail(d, "the descriptor count of an idle hellod does not settle (%d)", b.fds);
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
 * expect_settled: after SCENARIO, within HELLOD_SETTLE_TIMEOUT_MS: alive, serving, its
 * descriptors back to the baseline (no session left open), no more threads than the cache
 * keeps, and its memory back under the baseline plus a generous bound.
 */
static void expect_settled(Hellod *d, const Baseline *b, long peak_kib, const char *scenario) {
        int64_t t0 = harness_now_ms();
        long end_kib;
        Usage u;

        harness_step("%s: alive and serving", scenario);
        if (!hellod_alive(d))
                hellod_fail(d, "hellod died during %s", scenario);
        expect_serving(d, "after");

        harness_step("%s: back to the baseline", scenario);
        if (!baseline_wait_settled(d, b, HELLOD_SETTLE_TIMEOUT_MS, &u))
                hellod_fail(d,
                            "%s: still %d fds (baseline %d), %d workers (cache keeps %d), %d other "
                            "threads (baseline %d) after %d ms",
                            scenario, u.fds, b->fds, u.workers, HELLOD_WORKERS_CACHED_MAX, u.others, b->other_threads,
                            HELLOD_SETTLE_TIMEOUT_MS);
        end_kib = hellod_rss_kib(d);
        report("%s: settled in %" PRId64 " ms: %d fds (baseline %d), %d threads = %d workers + %d others; "
               "RSS baseline %ld KiB, peak %ld KiB, end %ld KiB (bound %ld KiB)",
               scenario, harness_now_ms() - t0, u.fds, b->fds, u.workers + u.others, u.workers, u.others, b->rss_kib,
               peak_kib, end_kib, baseline_rss_bound(b));
        cr_assert(end_kib <= baseline_rss_bound(b), "%s: hellod's RSS stays at %ld KiB, baseline %ld KiB", scenario,
                  end_kib, b->rss_kib);
        cr_assert(hellod_alive(d), "hellod died after %s", scenario);
}

/* --- slowloris ------------------------------------------------------------------------------ */

enum {
        LORIS_SLOTS = 300,            /* attackers connected at once */
        LORIS_ATTACK_MS = 8000,       /* closed attackers are replaced during this window */
        LORIS_MAX_SESSIONS = 1500,    /* and this many attacker sessions at most */
        LORIS_TICK_MS = 1000,         /* one dribble per attacker per tick */
        LORIS_FAST_EVERY = 3,         /* every third attacker is fast */
        LORIS_FAST_BYTES = 10,        /* a fast attacker's dribble: the second passes the line limit */
        LORIS_CLOSE_GRACE_MS = 15000, /* after the window, every attacker must be closed by then */
        LORIS_PROBE_MAX = 400,        /* well-behaved sessions during the attack, at most */
        LORIS_PROBE_PAUSE_MS = 100,
        LORIS_PROBE_NAMES = 3,
        /* Nine waits in ten of a well-behaved client: a client starved by the attack, even now
         * and then, waits long often, where a loaded machine (a sanitizer build beside other
         * tests) stalls one wait; every wait is bounded by HARNESS_TIMEOUT_MS. */
        LORIS_P90_BOUND_MS = 2000,
        LORIS_IDLE_TIMEOUT = 3,
        LORIS_MAX_LINE = 16,
};

/*
 * Slowloris: 300 clients dribble bytes and never finish a line; closed ones are replaced for
 * 8 s. Each must be closed with exactly its ERR line (idle_timeout for one byte a second,
 * max_line_length for ten), and meanwhile a well-behaved client must be served promptly.
 */
Test(hostile, slowloris, .timeout = 180) {
        Hellod *d;
        static const char *const greetings[] = { HELLOD_GREETING, NULL };
        Loris *l;
        Stats greet = { 0 }, rtt = { 0 };
        int64_t t0, t1;
        uint64_t cpu0, cpu1;
        long hz = sysconf(_SC_CLK_TCK);
        RssSampler rss;
        Baseline b;
        int rounds = 0;

        report("slowloris: own RLIMIT_NOFILE raised to %llu", (unsigned long long) harness_raise_nofile());
        d = hellod_start("max_connections = 1000;\nidle_timeout = %d;\nmax_line_length = %d;\n", LORIS_IDLE_TIMEOUT,
                         LORIS_MAX_LINE);
        b = expect_baseline(d);
        rss_start(&rss, d);

        harness_step("slowloris: %d attackers connect", LORIS_SLOTS);
        l = loris_start(&(LorisConfig) {
                .port = d->port,
                .greetings = greetings,
                .mix = { LORIS_SLOTS, LORIS_FAST_EVERY, LORIS_FAST_BYTES, LORIS_TICK_MS },
                .end = { .attack_ms = LORIS_ATTACK_MS, .max_sessions = LORIS_MAX_SESSIONS,
                         .close_grace_ms = LORIS_CLOSE_GRACE_MS },
        });
        if (!l)
                harness_fail("cannot start the attack: %s", strerror(errno));
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
                int64_t t = harness_now_us();
                int fd = client_connect(d->port);

                client_expect_str(fd, HELLOD_GREETING);
                stats_add(&greet, harness_now_us() - t);
                for (int i = 0; i < LORIS_PROBE_NAMES; i++) {
                        char name[32];

                        (void) snprintf(name, sizeof(name), "polite-%d-%d", rounds, i);
                        t = harness_now_us();
                        client_hello(fd, name);
                        stats_add(&rtt, harness_now_us() - t);
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
        loris_join(l);
        report("slowloris: %d attacker sessions: %d slow closed by idle_timeout in %" PRId64 "-%" PRId64
               " ms (at most %zu bytes sent), %d fast closed by max_line_length in %" PRId64 "-%" PRId64
               " ms, %u wrong",
               l->sessions, l->closed[LORIS_SLOW], l->close_ms_min[LORIS_SLOW], l->close_ms_max[LORIS_SLOW],
               l->sent_max[LORIS_SLOW], l->closed[LORIS_FAST], l->close_ms_min[LORIS_FAST],
               l->close_ms_max[LORIS_FAST], l->err.n);
        report("slowloris: daemon CPU during the attack: %.2f s in %.1f s", (double) (cpu1 - cpu0) / (double) hz,
               (double) (t1 - t0) / 1000.0);
        (void) stats_report("slowloris: well-behaved connect to greeting", &greet);
        (void) stats_report("slowloris: well-behaved round trip", &rtt);
        cr_assert(l->err.n == 0, "%u of %d attackers were not closed as the protocol says; first: %s", l->err.n,
                  l->sessions, l->err.first[0]);
        cr_assert(l->closed[LORIS_SLOW] > 0 && l->closed[LORIS_FAST] > 0);
        cr_assert(rounds > 0, "no well-behaved session ran during the attack");
        int64_t greet_p90 = stats_percentile(&greet, 90), rtt_p90 = stats_percentile(&rtt, 90);
        cr_assert(greet_p90 < LORIS_P90_BOUND_MS * 1000 && rtt_p90 < LORIS_P90_BOUND_MS * 1000,
                  "a well-behaved client waited %.3f ms for a greeting, %.3f ms for a reply (p90, bound %d ms)",
                  greet_p90 / 1000.0, rtt_p90 / 1000.0, LORIS_P90_BOUND_MS);
        stats_free(&greet);
        stats_free(&rtt);
        loris_free(l);

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
        FLOOD_QUIET_RSS_KIB = 4096,             /* what hellod may grow by meanwhile (4 times, sanitized) */
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

/* flood_send_once: one write of up to 16 KiB of LINES lines, from *OFF on; false on an error. */
static bool flood_send_once(int fd, uint64_t lines, uint64_t *off) {
        char buf[16384];
        size_t n = flood_stream(false, lines, *off, buf, sizeof(buf));
        ssize_t k = n ? send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) : 0;

        if (k < 0)
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        *off += (uint64_t) k;
        return true;
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
        Baseline b = expect_baseline(d);
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
                        int64_t t = harness_now_us();
                        int other = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);

                        client_hello(other, "bystander");
                        client_send_str(other, "exit\n");
                        client_expect_eof(other, false);
                        client_close(other);
                        other_us = harness_now_us() - t;
                }
                if (sent == in_total)
                        harness_sleep_ms(20);
        }
        sent_quiet = sent;
        peak_quiet = atomic_load(&rss.peak_kib);
        cr_assert(other_us >= 0);
        /* A loop blocked writing to the flooder would hold the bystander until the test failed
         * waiting for it: the bound only adds a stall of seconds, never a loaded machine's. */
        cr_assert(other_us < HARNESS_TIMEOUT_MS * 500LL, "a bystander's session took %.3f ms while the flooder was blocked",
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
        /* The kernel's buffers on loopback (tcp_rmem and tcp_wmem, 6 and 4 MB at most) take about
         * 8.6 MB of the 11.5 MB of lines, with the replies to them: a daemon that went on reading
         * and kept the replies it could not send would take the whole flood, and hold megabytes. */
        cr_assert(t_stall >= 0, "the flooder sent all %" PRIu64 " bytes without reading: no back-pressure", in_total);
        cr_assert(peak_quiet - b.rss_kib <= (b.sanitized ? 4 : 1) * FLOOD_QUIET_RSS_KIB,
                  "hellod's RSS grew by %ld KiB while the flooder did not read", peak_quiet - b.rss_kib);

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
        cr_assert(peak <= baseline_rss_bound(&b),
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
        Baseline b = expect_baseline(d);
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


enum {
        FLOODERS = 64,
        FLOODERS_MS = 4000,        /* each sends what its socket takes, never reading, this long */
        FLOODER_KIB = 96,          /* what one costs the daemon on average: its buffers, the input
                                    * a backend keeps while a reply waits, and slack (measured: epoll
                                    * 8 KiB, a thread each 24) */
        /* io_uring keeps what its multishot receive took before the receive stopped (at the first
         * input that had to wait for a send): a burst the kernel reads in one go, up to 32 buffers
         * of 4 KiB; the kept buffer grows by doubling, to 64, 68, then 136 KiB (measured: 10 KiB, up
         * to 103 with the cores busy, once 265 with the suite's next test on the other core;
         * 114-242 before the receive stopped at once, 0.5 MiB before it was bounded). */
        FLOODER_KIB_IO_URING = FLOODER_KIB + 224,
        /* Sanitizers add redzones and keep what was freed, and TSan's runtime costs about 2 MiB
         * a thread (per-connection: a thread a flooder): the bound that counts is the one above. */
        FLOODER_KIB_SANITIZED = 4096,
};

/* Many clients flood without reading: the daemon stops reading each once its replies back up,
 * so that what one client costs is bounded by its buffers, whatever it sends (io_uring's
 * multishot receive once kept 0.5 MiB a connection, growing while its cancel was pending). */
Test(hostile, flooders_that_never_read_cost_bounded_memory_each, .timeout = 120) {
        Hellod *d = hellod_start("max_connections = 100;\n");
        Baseline b = expect_baseline(d);
        uint64_t sent[FLOODERS] = { 0 };
        int fds[FLOODERS];
        RssSampler rss;
        bool uring = harness_model_is("io_uring");
        long peak, per, bound = b.sanitized ? FLOODER_KIB_SANITIZED : uring ? FLOODER_KIB_IO_URING : FLOODER_KIB;
        int64_t end;

        for (int i = 0; i < FLOODERS; i++)
                fds[i] = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        rss_start(&rss, d);
        harness_step("%d clients flood for %d ms, never reading", FLOODERS, FLOODERS_MS);
        end = harness_now_ms() + FLOODERS_MS;
        while (harness_now_ms() < end) {
                struct pollfd pfd[FLOODERS];

                for (int i = 0; i < FLOODERS; i++)
                        pfd[i] = (struct pollfd) { .fd = fds[i], .events = POLLOUT };
                if (poll(pfd, FLOODERS, 50) < 0 && errno != EINTR)
                        harness_fail("poll(): %s", strerror(errno));
                /* One write each in turn, as many clients at once would send. */
                for (int i = 0; i < FLOODERS; i++)
                        if ((pfd[i].revents & POLLOUT) && !flood_send_once(fds[i], FLOOD_NEVER_READ_LINES, &sent[i]))
                                harness_fail("flooder %d: send(): %s", i, strerror(errno));
        }
        peak = rss_stop(&rss);
        per = (peak - b.rss_kib) / FLOODERS;
        report("flooders: %d sent %" PRIu64 " KiB each on average; RSS baseline %ld KiB, peak %ld KiB: %ld KiB a "
               "flooder (bound %ld)",
               FLOODERS, (sent[0] + sent[FLOODERS / 2] + sent[FLOODERS - 1]) / 3 / 1024, b.rss_kib, peak, per, bound);
        cr_assert(per <= bound, "a client that floods without reading costs the daemon %ld KiB (bound %ld KiB)", per,
                  bound);
        for (int i = 0; i < FLOODERS; i++)
                client_close(fds[i]);
        expect_settled(d, &b, peak, "flooders");
        hellod_stop_clean(d);
        hellod_free(d);
}

enum {
        CAUGHT_UP = 56,
        CAUGHT_UP_WARM = 8, /* the first ones also grow what each loop keeps: caches, malloc's arenas */
        /* What one more costs: an idle session (measured: epoll 1-2 KiB, io_uring 3) and slack.
         * The epoll pool's sessions kept the buffers they had filled for as long as they lived:
         * 16 KiB of output and 4 KiB of input allocated, 7-8 KiB of them resident. */
        CAUGHT_UP_KIB = 5,
        /* A thread each, with its stack and buffers of its own (measured: 24 KiB). */
        CAUGHT_UP_KIB_PER_CONNECTION = 48,
        /* ASan keeps what is freed in its quarantine (256 MiB) and each flood moves megabytes
         * through kept buffers: 5.7 MiB a client was seen with io_uring. The bound that counts
         * is the ones above; this one only catches a runaway. */
        CAUGHT_UP_KIB_SANITIZED = 8192,
};

/* rss_exact_kib: the daemon's resident memory from /proc/PID/smaps_rollup, which walks its
 * page tables (VmRSS may lag by a batch of pages a thread on some kernels). */
static long rss_exact_kib(Hellod *d) {
        char path[64], *text, *field;
        long kib = -1;

        (void) snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int) d->pid);
        text = harness_read_file(path, NULL);
        field = strstr(text, "\nRss:");
        if (!field || sscanf(field, "\nRss: %ld kB", &kib) != 1)
                hellod_fail(d, "no Rss in %s", path);
        free(text);
        return kib;
}

/* caught_up_client: a client that floods without reading until the daemon stops reading it
 * (back-pressure: its replies, and input it could not take yet, wait in the session), then
 * finishes the line it was sending, reads every reply, exact, and falls idle. */
static int caught_up_client(Hellod *d) {
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        uint64_t sent = 0, received = 0, replies;
        int64_t t0 = harness_now_ms();

        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                int r = poll(&pfd, 1, FLOOD_STALL_MS);

                if (r == 0)
                        break;
                if (r > 0 && !flood_send(fd, FLOOD_NEVER_READ_LINES, &sent))
                        harness_fail("flooder send(): %s", strerror(errno));
                if (harness_now_ms() - t0 > HARNESS_TIMEOUT_MS)
                        hellod_fail(d, "the daemon took all %" PRIu64 " bytes: no back-pressure", sent);
        }
        /* Every reply to the whole lines sent; then the rest of the line it was in, and its
         * reply, so that no partial line waits in the session. */
        replies = sent / FLOOD_LINE_LEN;
        for (int pass = 0; pass < 2; pass++) {
                while (received < replies * FLOOD_REPLY_LEN) {
                        char buf[65536];
                        ClientReadEnd end = CLIENT_READ_DONE;
                        uint64_t left = replies * FLOOD_REPLY_LEN - received;
                        size_t k = client_read(fd, buf, left < sizeof(buf) ? (size_t) left : sizeof(buf), NULL,
                                               HARNESS_TIMEOUT_MS, &end);

                        flood_check(FLOOD_NEVER_READ_LINES, received, buf, k);
                        received += k;
                        if (k == 0)
                                hellod_fail(d, "%" PRIu64 " of %" PRIu64 " reply bytes, then nothing", received,
                                            replies * FLOOD_REPLY_LEN);
                }
                if (sent % FLOOD_LINE_LEN == 0)
                        break;
                char rest[FLOOD_LINE_LEN];
                size_t n = flood_stream(false, FLOOD_NEVER_READ_LINES, sent, rest, FLOOD_LINE_LEN - sent % FLOOD_LINE_LEN);
                client_send(fd, rest, n);
                sent += n;
                replies++;
        }
        return fd;
}

/* idle_client_bound: the KiB one more idle client may cost the daemon (B: sanitized or not) in
 * the suite's pass for a model; REPLY_KIB: the longest reply it was sent, which a thread per
 * connection keeps in its output buffer for the session's life (by design: it is the thread's). */
static long idle_client_bound(const Baseline *b, long reply_kib) {
        bool per_connection = harness_model_is("per-connection");

        return b->sanitized ? CAUGHT_UP_KIB_SANITIZED
               : per_connection ? CAUGHT_UP_KIB_PER_CONNECTION + reply_kib
                                : CAUGHT_UP_KIB;
}

/* expect_idle_clients_cheap: CAUGHT_UP clients of D made in turn by MAKE (into FDS) and left
 * idle cost at most what an idle one does (REPLY_KIB: idle_client_bound), counted past the first
 * CAUGHT_UP_WARM; WHAT names them. */
static void expect_idle_clients_cheap(Hellod *d, const Baseline *b, int (*make)(Hellod *), int *fds, long reply_kib,
                                      const char *what) {
        long bound = idle_client_bound(b, reply_kib), warm_kib = 0;

        for (int i = 0; i < CAUGHT_UP; i++) {
                fds[i] = make(d);
                if (i + 1 == CAUGHT_UP_WARM)
                        warm_kib = rss_exact_kib(d);
        }
        long end_kib = rss_exact_kib(d), per = (end_kib - warm_kib) / (CAUGHT_UP - CAUGHT_UP_WARM);
        report("%s: RSS baseline %ld KiB, %ld KiB after %d idle clients, %ld KiB after %d: %ld KiB a client (bound %ld)",
               what, b->rss_kib, warm_kib, CAUGHT_UP_WARM, end_kib, CAUGHT_UP, per, bound);
        cr_assert(per <= bound, "%s: an idle client costs the daemon %ld KiB (bound %ld KiB)", what, per, bound);
        for (int i = 0; i < CAUGHT_UP; i++)
                client_close(fds[i]);
        expect_settled(d, b, end_kib, what);
}

/* Clients that were back-pressured once and then took every reply cost what idle ones do: a
 * session gives its buffers back once they are empty (found in a review: the epoll pool's kept
 * them). */
Test(hostile, clients_that_caught_up_cost_what_idle_ones_do, .timeout = 180) {
        /* No idle timeout: every client must still be there when the memory is read. */
        Hellod *d = hellod_start("max_connections = 100;\nidle_timeout = 0;\n");
        Baseline b = expect_baseline(d);
        int fds[CAUGHT_UP];

        harness_step("%d clients in turn flood, are held back, then read every reply", CAUGHT_UP);
        expect_idle_clients_cheap(d, &b, caught_up_client, fds, 0, "caught up");
        hellod_stop_clean(d);
        hellod_free(d);
}

enum { SPLIT_LINE_PART = 48000 }; /* far past a page: what a kept line buffer holds is resident */

/* split_line_client: a client of D whose line came in two reads: the first SPLIT_LINE_PART
 * bytes, read by hellod (nothing unread at its end) before the rest; answered whole, then idle. */
static int split_line_client(Hellod *d) {
        static char line[SPLIT_LINE_PART + 1], want[SPLIT_LINE_PART + 16];
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);

        memset(line, 'x', SPLIT_LINE_PART);
        client_send(fd, line, SPLIT_LINE_PART);
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; hellod_socket_of(d->port, fd).rx_queue > 0;) {
                if (harness_now_ms() > end)
                        hellod_fail(d, "hellod did not read the first part of a line in %d ms", HARNESS_TIMEOUT_MS);
                harness_sleep_ms(1);
        }
        client_send_str(fd, "\n");
        int n = snprintf(want, sizeof(want), "Hello, %.*s!\r\n", SPLIT_LINE_PART, line);
        client_expect(fd, want, (size_t) n);
        return fd;
}

/* A line that came in pieces is kept in a buffer of its own (max_line_length + 1 bytes) until its
 * end comes; once it is answered, the session gives the buffer back: clients that once sent a
 * line in pieces (a slow link, telnet's character mode) cost what idle ones do. */
Test(hostile, clients_that_split_a_line_cost_what_idle_ones_do, .timeout = 180) {
        Hellod *d = hellod_start("max_connections = 100;\nidle_timeout = 0;\nmax_line_length = 65536;\n");
        Baseline b = expect_baseline(d);
        int fds[CAUGHT_UP];

        harness_step("%d clients in turn send a %d-byte line in two parts, then fall idle", CAUGHT_UP, SPLIT_LINE_PART + 1);
        /* Measured with a thread per connection: 78 KiB a client, 116 when the line's buffer
         * was kept. */
        expect_idle_clients_cheap(d, &b, split_line_client, fds, SPLIT_LINE_PART / 1024, "split a line");
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
        char *want = malloc(glen + n * 6 + 64), e1[512], e2[512];
        size_t wlen;
        Exchange x;
        int fd, r;

        if (!want)
                harness_fail("out of memory");
        memcpy(want, HELLOD_GREETING, glen);
        wlen = glen + harness_model_replies("Hello, ", "!", in, n, GARBAGE_MAX_LINE, want + glen);
        fd = client_connect(g->d->port);
        r = client_exchange(fd, in, n, &g->rng, pieces[rng_below(&g->rng, sizeof(pieces) / sizeof(pieces[0]))], &x);
        client_close(fd);
        if (r < 0)
                harness_fail("garbage case %d (%s): the client failed: %s", g->cases, what, strerror(-r));
        if (!hellod_alive(g->d))
                hellod_fail(g->d, "hellod died on garbage case %d (%s), seed %" PRIu64, g->cases, what, g->seed);
        if (x.n != wlen || memcmp(x.got, want, wlen) != 0) {
                size_t i = bytes_first_difference(x.got, x.n, want, wlen), from = i > 24 ? i - 24 : 0, len = 72;

                hellod_fail(g->d,
                            "garbage case %d (%s, %zu bytes in, seed %" PRIu64 "): output differs at byte %zu of %zu "
                            "(got %zu): expected \"%s\", got \"%s\"",
                            g->cases, what, n, g->seed, i, wlen, x.n,
                            harness_escape(want + from, wlen - from < len ? wlen - from : len, e1, sizeof(e1)),
                            harness_escape(x.got + from, x.n > from ? (x.n - from < len ? x.n - from : len) : 0,
                                           e2, sizeof(e2)));
        }
        if (!(x.end == CLIENT_READ_EOF || (allow_reset && x.end == CLIENT_READ_RESET)))
                hellod_fail(g->d, "garbage case %d (%s, seed %" PRIu64 "): the right output, then %s instead of EOF",
                            g->cases, what, g->seed,
                            x.end == CLIENT_READ_RESET ? "a reset" : x.end == CLIENT_READ_TIMEOUT ? "a timeout" : "?");
        if (bytes_end_with(want, wlen, HELLOD_ERR_TOO_LONG))
                g->errs++;
        g->cases++;
        g->bytes_in += n;
        g->bytes_out += x.n;
        free(want);
        free(x.got);
        if (g->cases % GARBAGE_POLITE_EVERY == 0) {
                expect_serving(g->d, "polite");
                g->polite++;
        }
}

static uint64_t garbage_seed(void) {
        const char *env = getenv("HELLOD_HOSTILE_SEED");

        if (env && *env)
                return strtoull(env, NULL, 0);
        return (uint64_t) harness_now_us() ^ ((uint64_t) getpid() << 32);
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
        Baseline b = expect_baseline(d);
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
                                buf[6 + k] = hostile_byte(&g.rng);
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
                buf[k] = hostile_byte(&g.rng);
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
                n = hostile_lines(&g.rng, GARBAGE_MAX_LINE, buf, GARBAGE_STREAM_MAX);
                garbage_case(&g, "random lines", buf, n, false);
        }

        harness_step("garbage: %d uniformly random streams (seed %" PRIu64 ")", GARBAGE_UNIFORM, g.seed);
        for (int i = 0; i < GARBAGE_UNIFORM; i++) {
                n = hostile_uniform(&g.rng, buf, 4096);
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
        b = expect_baseline(d);
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

                /* Bytes after exit: hellod may have closed before they arrive (every reply
                 * taken, nothing unread: src/session.c), so they may meet a reset and the
                 * half-close fail; what the client reads is whole all the same. */
                fd = client_connect(d->port);
                {
                        char junk[32768];

                        memset(junk, 'j', sizeof(junk));
                        client_send_str(fd, "exit\n");
                        if (client_try_send(fd, junk, sizeof(junk)) == 0)
                                (void) shutdown(fd, SHUT_WR);
                }
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
                        r = client_wait_connected(fds[j], HARNESS_TIMEOUT_MS);
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
               hellod_count_in_stderr(d, "closed: reset"), hellod_count_in_stderr(d, "closed: broken-pipe"),
               hellod_count_in_stderr(d, "closed: eof"), hellod_count_in_stderr(d, "closed: exit"));
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- descriptor exhaustion ------------------------------------------------------------------ */

enum {
        EXHAUST_CLIENTS = 500,
        EXHAUST_NOFILE = 64,
        EXHAUST_CPU_WINDOW_MS = 3000,
        EXHAUST_CPU_WINDOWS = 3, /* the quietest counts (harness_cpu_quietest) */
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
        int64_t t0, connected_ms;
        double cpu;
        RssSampler rss;
        Baseline b;
        Hellod *d;

        report("exhaustion: own RLIMIT_NOFILE raised to %llu", (unsigned long long) harness_raise_nofile());
        d = hellod_start_opts(&(HellodOpts) { .nofile = EXHAUST_NOFILE }, NULL);
        b = expect_baseline(d);
        rss_start(&rss, d);

        harness_step("exhaustion: %d clients against RLIMIT_NOFILE = %d", EXHAUST_CLIENTS, EXHAUST_NOFILE);
        t0 = harness_now_ms();
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                fds[i] = client_start_connect("127.0.0.1", d->port);
                if (fds[i] < 0)
                        harness_fail("connect(): %s", strerror(-fds[i]));
        }
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                int r = client_wait_connected(fds[i], HARNESS_TIMEOUT_MS);

                if (r < 0)
                        hellod_fail(d, "client %d: connect(): %s", i, strerror(-r));
        }
        connected_ms = harness_now_ms() - t0;
        harness_sleep_ms(500);

        /* Without the reserve descriptor and the pause the listener stays readable and the
         * accept loop spins. */
        harness_step("exhaustion: CPU use while at the limit");
        const double busy = 0.5 * EXHAUST_CPU_WINDOW_MS / 1000.0; /* CPU seconds a window: half a core */
        cpu = harness_cpu_quietest(d->pid, EXHAUST_CPU_WINDOW_MS, EXHAUST_CPU_WINDOWS, busy);
        if (!hellod_alive(d))
                hellod_fail(d, "hellod died with RLIMIT_NOFILE = %d", EXHAUST_NOFILE);

        harness_step("exhaustion: every client served, refused or waiting");
        for (int i = 0; i < EXHAUST_CLIENTS; i++) {
                state[i] = client_classify(fds[i]);
                counts[state[i]]++;
        }
        report("exhaustion: %d clients connected in %" PRId64 " ms; at the limit: %d served, %d refused, %d "
               "waiting; daemon fds %d; daemon CPU %.2f s in its quietest %.1f s (%.0f%% of a core)",
               EXHAUST_CLIENTS, connected_ms, counts[CLIENT_SERVED], counts[CLIENT_REFUSED], counts[CLIENT_WAITING],
               hellod_fd_count(d), cpu, EXHAUST_CPU_WINDOW_MS / 1000.0, 100.0 * cpu * 1000.0 / EXHAUST_CPU_WINDOW_MS);
        cr_assert(cpu < busy,
                  "hellod used %.2f s of CPU (the least) in each of %d windows of %.1f s while out of "
                  "descriptors: a busy loop?",
                  cpu, EXHAUST_CPU_WINDOWS,
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
