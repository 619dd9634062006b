/* test-pipeline: pipelined bursts are answered in full and at once, in every worker model.
 * Regression tests for a pool that kept input in a session after its turn and waited for an
 * event that never came, until the idle timeout: the client got `ERR idle timeout` instead
 * of its replies. idle_timeout is short here, so a stall shows as that ERR line, byte for
 * byte against the model, not as a measured delay. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "clients.h"
#include "suite.h"

HELLOD_SUITE(pipeline);

/* A ~100-character reply template, as in the review's reproduction. */
#define LONG_PREFIX "Hello there, dear client; this reply is long on purpose so that the output fills: "
#define LONG_SUFFIX " -- and that is all!"

/* expect_model: the replies the model gives for IN (no half-close: IN ends with a newline). */
static void expect_model(int fd, const char *prefix, const char *suffix, const char *in, size_t n) {
        size_t room = n / 2 * (strlen(prefix) + strlen(suffix) + 3) + 4096;
        char *want = malloc(room), *got = malloc(room), e1[256], e2[256];
        ClientReadEnd end;

        cr_assert(want && got);
        size_t wn = harness_model_replies(prefix, suffix, (const unsigned char *) in, n, 1024, want);
        cr_assert(wn < room);
        size_t gn = client_read(fd, got, wn, NULL, HARNESS_TIMEOUT_MS, &end);
        size_t at = 0;
        while (at < gn && got[at] == want[at])
                at++;
        if (at < wn) {
                size_t from = at > 40 ? at - 40 : 0;
                harness_fail("replies differ from the model at byte %zu of %zu (after %zu bytes: %s): expected "
                             "\"...%s\", got \"...%s\"",
                             at, wn, gn, gn < wn ? "the read stopped" : "a wrong byte",
                             harness_escape(want + from, wn - from < 80 ? wn - from : 80, e1, sizeof(e1)),
                             harness_escape(got + from, gn - from < 80 ? gn - from : 80, e2, sizeof(e2)));
        }
        free(want);
        free(got);
}

/* burst: LINES lines of "a" in one write, with the reply PREFIX{name}SUFFIX; every reply comes
 * back, and the session still works afterwards. */
static void burst(unsigned lines, const char *prefix, const char *suffix) {
        Hellod *d = hellod_start("idle_timeout = 3;\nreply = \"%s{name}%s\";\n", prefix, suffix);
        size_t n = (size_t) lines * 2;
        char *in = malloc(n);
        int fd;

        cr_assert(in);
        for (unsigned i = 0; i < lines; i++)
                memcpy(in + 2 * i, "a\n", 2);
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        harness_step("%u pipelined lines in one write", lines);
        client_send(fd, in, n);
        expect_model(fd, prefix, suffix, in, n);
        harness_step("the session goes on");
        client_send_str(fd, "b\n");
        expect_model(fd, prefix, suffix, "b\n", 2);
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
        free(in);
        hellod_stop_clean(d);
        hellod_free(d);
}

Test(pipeline, burst_2048_lines_default_reply, .timeout = 60) {
        burst(2048, "Hello, ", "!");
}

Test(pipeline, burst_2048_lines_long_reply, .timeout = 60) {
        burst(2048, LONG_PREFIX, LONG_SUFFIX);
}

Test(pipeline, burst_20000_lines_default_reply, .timeout = 60) {
        burst(20000, "Hello, ", "!");
}

Test(pipeline, burst_20000_lines_long_reply, .timeout = 60) {
        burst(20000, LONG_PREFIX, LONG_SUFFIX);
}

/* Several reads that fill the input buffer with long lines, then short lines: the kept input
 * of the last full read must not wait for an event. */
Test(pipeline, long_reads_then_short_lines, .timeout = 60) {
        Hellod *d = hellod_start("idle_timeout = 3;\nmax_line_length = 1024;\nreply = \"%s{name}%s\";\n",
                                 LONG_PREFIX, LONG_SUFFIX);
        char *in = malloc(64 * 1024);
        size_t n = 0;
        int fd;

        cr_assert(in);
        for (int i = 0; i < 40; i++) { /* 40 lines of 1,000 bytes: ten full 4 KiB reads */
                memset(in + n, 'A' + i % 26, 1000);
                n += 1000;
                in[n++] = '\n';
        }
        for (int i = 0; i < 3000; i++) {
                memcpy(in + n, "xy\n", 3);
                n += 3;
        }
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_send(fd, in, n);
        expect_model(fd, LONG_PREFIX, LONG_SUFFIX, in, n);
        client_close(fd);
        free(in);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* urgent_burst: BEFORE, a byte of urgent data, then AFTER, sent while the daemon is stopped,
 * so that it finds all of them queued at once. The kernel ends every read at the urgent
 * byte's mark (and leaves that byte out of band), so a read stops short there with the rest
 * already queued: an edge-triggered loop gets no new event for it. WANT: the replies. */
static void urgent_burst(Hellod *d, int fd, const char *before, const char *after, const char *want) {
        char e1[64], e2[64];

        harness_step("\"%s\", a byte of urgent data and \"%s\", queued at once",
                     harness_escape(before, strlen(before), e1, sizeof(e1)),
                     harness_escape(after, strlen(after), e2, sizeof(e2)));
        hellod_freeze(d);
        client_send_str(fd, before);
        cr_assert_eq(send(fd, "!", 1, MSG_OOB), 1);
        client_send_str(fd, after);
        harness_sleep_ms(100); /* loopback: delivered by now, even to a stopped process */
        hellod_thaw(d);
        client_expect_str(fd, want);
}

/* Urgent data (telnet sends its Synch so) amid pipelined lines: the bytes behind its mark are
 * answered at once, not after the client's next write or the idle timeout (ERR idle timeout). */
Test(pipeline, lines_behind_an_urgent_mark_are_answered_at_once, .timeout = 60) {
        Hellod *d = hellod_start("idle_timeout = 3;\n");
        int fd = client_connect(d->port);

        client_expect_str(fd, HELLOD_GREETING);
        urgent_burst(d, fd, "hel", "lo\nworld\n", "Hello, hello!\r\nHello, world!\r\n");
        urgent_burst(d, fd, "one\n", "two\n", "Hello, one!\r\nHello, two!\r\n");
        urgent_burst(d, fd, "three\nfo", "ur\n", "Hello, three!\r\nHello, four!\r\n");
        client_hello(fd, "still answering");
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* lines_then_exit: N "a" lines and "exit" into IN (of at least N * 2 + 5 bytes); returns the
 * bytes written. */
static size_t lines_then_exit(char *in, size_t n) {
        for (size_t i = 0; i < n; i++)
                memcpy(in + 2 * i, "a\n", 2);
        memcpy(in + n * 2, "exit\n", 5);
        return n * 2 + 5;
}

/* connect_fixed_window: a client of D, greeted, with a 128 KiB receive window (no autotuning):
 * the replies it does not take queue up in hellod's socket, where a reset destroys them. Not
 * below the loopback MSS (64 KiB): TCP then sends by window probes. */
static int connect_fixed_window(Hellod *d) {
        int fd = client_connect(d->port);

        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &(int) { 131072 }, sizeof(int)), 0);
        client_expect_str(fd, HELLOD_GREETING);
        return fd;
}

/* expect_replies_then_eof: EX holds the WANT_N bytes of WANT, then the end of file; frees what
 * it got. */
static void expect_replies_then_eof(Hellod *d, Exchange *ex, const char *want, size_t want_n) {
        size_t at = bytes_first_difference(want, want_n, ex->got, ex->n);

        if (!(at == want_n && ex->n == want_n && ex->end == CLIENT_READ_EOF))
                hellod_fail(d, "%zu of %zu reply bytes as the model has them, %zu received, then %s", at, want_n, ex->n,
                            ex->end == CLIENT_READ_EOF     ? "the end of file"
                            : ex->end == CLIENT_READ_RESET ? "a reset"
                                                           : "a timeout");
        free(ex->got);
}

/* A client that pipelines far past its exit, reading all the while, gets every reply before
 * the exit and then the end of file: the lingering close reads away what follows the exit for
 * as long as replies are still on their way (within its second), not just 64 KiB. It used to
 * close once 64 KiB were discarded; the reset that closing with bytes unread sends destroyed
 * the replies still queued in hellod's socket, and the client read a truncated stream. */
Test(pipeline, a_client_pipelining_far_past_its_exit_gets_every_reply, .timeout = 60) {
        enum { LINES = 200000, FLOOD = 4 * 1024 * 1024 };
        size_t n = LINES * 2 + 5 + FLOOD, want_room = (size_t) LINES * 11 + 64;
        char *in = malloc(n), *want = malloc(want_room);
        Hellod *d = hellod_start("log_level = \"info\";\n");
        Rng rng = { 0xe817 };
        Exchange ex;

        cr_assert(in && want);
        for (size_t i = lines_then_exit(in, LINES); i < n; i += 2)
                memcpy(in + i, "b\n", 2);
        size_t want_n = harness_model_replies("Hello, ", "!", (const unsigned char *) in, n, 1024, want);
        cr_assert(want_n < want_room);
        int fd = connect_fixed_window(d);
        harness_step("%d lines, exit, then %d MiB more, read all the while", LINES, FLOOD >> 20);
        cr_assert_eq(client_exchange(fd, in, n, &rng, 65536, &ex), 0);
        expect_replies_then_eof(d, &ex, want, want_n);
        client_close(fd);
        free(in);
        free(want);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* slow_reader_gets_every_reply: a client with a fixed window pipelines LINES lines and its exit,
 * then reads and sends late lines as SLOW says (described by HOW), and gets every reply before
 * the exit, then the end of file. */
static void slow_reader_gets_every_reply(size_t lines, const SlowReader *slow, const char *how) {
        size_t n = lines * 2 + 5, want_room = lines * 11 + 64;
        char *in = malloc(n), *want = malloc(want_room);
        Hellod *d = hellod_start("log_level = \"info\";\n");
        Exchange ex;

        cr_assert(in && want);
        lines_then_exit(in, lines);
        size_t want_n = harness_model_replies("Hello, ", "!", (const unsigned char *) in, n, 1024, want);
        cr_assert(want_n < want_room);
        int fd = connect_fixed_window(d);
        harness_step("%zu lines, exit, then %s", lines, how);
        cr_assert_eq(client_exchange_slow(fd, in, n, slow, &ex), 0);
        expect_replies_then_eof(d, &ex, want, want_n);
        client_close(fd);
        free(in);
        free(want);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A client that pipelines past its exit and reads slowly gets every reply before the exit and
 * then the end of file: the lingering close goes on past its second while the client is still
 * taking replies. It used to close at the second with the client's late lines unread, and the
 * reset that sends destroyed the replies still queued in hellod's socket. */
Test(pipeline, a_slow_reader_pipelining_past_its_exit_gets_every_reply, .timeout = 90) {
        /* About 800 KB/s, slower than hellod answers, and a line every 10 ms after the exit. */
        const SlowReader slow = { .read_max = 16384, .read_every_ms = 20, .late = "late\n", .lates = 3000, .late_every_ms = 10 };

        slow_reader_gets_every_reply(200000, &slow, "a line every 10 ms, reading 16 KiB every 20 ms");
}

/* The same, slower than the client's window opens in a second: a receiver opens its window in
 * steps, once its buffer has drained (here 256 KiB, 1.3 s apart at 200 KB/s), and in between
 * hellod sees none of its replies acknowledged. The lingering close used to be cut at the
 * first second without one; the reset destroyed the replies still queued. */
Test(pipeline, a_reader_slower_than_its_window_opens_gets_every_reply, .timeout = 90) {
        /* About 200 KB/s (5.5 s for the replies, twice that given), and a line every 100 ms. */
        const SlowReader slow = { .read_max = 16384, .read_every_ms = 80, .late = "late\n", .lates = 200,
                                  .late_every_ms = 100, .timeout_ms = 2 * HARNESS_TIMEOUT_MS };

        slow_reader_gets_every_reply(100000, &slow, "a line every 100 ms, reading 16 KiB every 80 ms");
}

/* Keeper: a client whose lingering close goes on for as long as the test needs: it pipelines
 * LINES lines and its exit, then sends a late line and takes at most 16 KiB of its replies
 * every 100 ms (about 160 KB/s, so that its replies take seconds to drain), until told to stop. */
typedef struct Keeper {
        int fd;
        const char *in;
        size_t n;
        atomic_bool stop;
        atomic_bool ended; /* it met the end of file or a reset before it was told to stop */
        pthread_t thread;
} Keeper;

static void *keeper_main(void *arg) {
        Keeper *k = arg;
        char buf[16384];
        size_t off = 0;

        while (!atomic_load(&k->stop)) {
                ssize_t r = off < k->n ? send(k->fd, k->in + off, k->n - off, MSG_NOSIGNAL | MSG_DONTWAIT)
                                       : send(k->fd, "late\n", 5, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (r > 0 && off < k->n)
                        off += (size_t) r;
                bool failed = r < 0 && errno != EAGAIN && errno != EINTR;
                if (!failed && (r = recv(k->fd, buf, sizeof(buf), MSG_DONTWAIT)) < 0)
                        failed = errno != EAGAIN && errno != EINTR;
                if (failed || r == 0) {
                        atomic_store(&k->ended, true);
                        break;
                }
                harness_sleep_ms(off < k->n ? 1 : 100);
        }
        return NULL;
}

/* Per connection, a conversation that ends while the helper thread that keeps lingering
 * sockets is full (at most max_connections of them) lingers on its own thread: that lingering
 * close, too, goes on past its second for a slow reader that pipelines past its exit. Here one
 * slot: a first client's lingering close fills the helper thread and goes on while a second
 * client, served after it, does what a_slow_reader_pipelining_past_its_exit_gets_every_reply
 * does. */
Test(pipeline, per_connection_a_slow_reader_lingering_on_its_own_thread_gets_every_reply, .timeout = 90) {
        enum { LINES = 200000 };
        size_t n = LINES * 2 + 5, want_room = (size_t) LINES * 11 + 64;
        char *in = malloc(n), *want = malloc(want_room);
        Hellod *d = hellod_start("log_level = \"info\";\nworkers = \"per-connection\";\nmax_connections = 1;\n"
                                 "overload = \"queue\";\n");
        const SlowReader slow = { .read_max = 16384, .read_every_ms = 20, .late = "late\n", .lates = 3000, .late_every_ms = 10 };
        Keeper keeper = { .in = in, .n = n };
        Exchange ex;

        cr_assert(in && want);
        lines_then_exit(in, LINES);
        size_t want_n = harness_model_replies("Hello, ", "!", (const unsigned char *) in, n, 1024, want);
        cr_assert(want_n < want_room);
        harness_step("a first client: %d lines, exit, then a line and 16 KiB of replies every 100 ms", LINES);
        keeper.fd = connect_fixed_window(d);
        cr_assert_eq(pthread_create(&keeper.thread, NULL, keeper_main, &keeper), 0);
        harness_step("a second client, served once the first one's conversation ended: %d lines, exit, then a "
                     "line every 10 ms, reading 16 KiB every 20 ms",
                     LINES);
        int fd = connect_fixed_window(d);
        cr_assert_eq(client_exchange_slow(fd, in, n, &slow, &ex), 0);
        bool first_lingered_throughout = !atomic_load(&keeper.ended);
        atomic_store(&keeper.stop, true);
        pthread_join(keeper.thread, NULL);
        expect_replies_then_eof(d, &ex, want, want_n);
        if (!first_lingered_throughout)
                hellod_fail(d, "the first client's lingering close ended before the second's did: the second "
                               "lingered in the helper thread, not on its own");
        client_close(fd);
        client_close(keeper.fd);
        free(in);
        free(want);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The same client reading nothing at all is closed once the lingering close has gone 5 s
 * without a reply taken, not kept for its 30 s. Its late lines then draw a reset. */
Test(pipeline, a_client_that_reads_nothing_past_its_exit_is_not_kept_lingering, .timeout = 60) {
        enum { LINES = 200000 };
        size_t n = LINES * 2 + 5;
        char *in = malloc(n);
        Hellod *d = hellod_start("log_level = \"info\";\n");
        size_t off = 0;

        cr_assert(in);
        lines_then_exit(in, LINES);
        int fd = connect_fixed_window(d);
        harness_step("%d lines, exit, then a line every 10 ms, reading nothing", LINES);
        /* The linger's 5 s, and the harness's own time for the rest. */
        const int wait_ms = HARNESS_TIMEOUT_MS + 5000;
        int64_t deadline = harness_now_ms() + wait_ms;
        int error = 0;
        while (!error && harness_now_ms() < deadline) {
                const char *what = off < n ? in + off : "late\n";
                size_t len = off < n ? n - off : 5;
                ssize_t k = send(fd, what, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0 && errno != EAGAIN && errno != EINTR)
                        error = errno;
                else if (k > 0 && off < n)
                        off += (size_t) k;
                harness_sleep_ms(off < n ? 1 : 10);
        }
        cr_assert_eq(off, n, "hellod took %zu of the %zu bytes up to the exit", off, n);
        if (error != ECONNRESET && error != EPIPE)
                hellod_fail(d, "still open %d ms after the exit (%s): the linger went on without a reply reaching the client",
                            wait_ms, error ? strerror(error) : "no error");
        cr_expect_eq(hellod_count_in_stderr(d, "closed: exit, 200000 lines"), 1);
        client_close(fd);
        free(in);
        hellod_stop_clean(d);
        hellod_free(d);
}
