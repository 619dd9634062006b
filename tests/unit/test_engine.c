/* test_engine: both drivers behind the engine interface, in process, over socketpairs: the
 * conversation, both directions blocked, pipelined bursts, deadlines that fire while a reset
 * is pending, and a stop that times out. Every scenario runs against each worker model. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#ifdef __SANITIZE_ADDRESS__
/* ASan's runtime (sanitizer/allocator_interface.h, which Debian's gcc does not install). */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif
#include "../seccomp/deny_io_uring.h"

#define WAIT_MS 10000

/* What the done callback saw, and a way to hold it (to block the loop that calls it). */
typedef struct Record {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        unsigned done;
        char reasons[16][32];
        uint64_t lines[16];
        bool hold;       /* the next callback waits for `release` */
        bool holding;    /* a callback is waiting */
        bool release;
} Record;

static Record rec;

static void record_init(void) {
        pthread_mutex_init(&rec.lock, NULL);
        pthread_cond_init(&rec.cond, NULL);
        rec.done = 0;
        rec.hold = rec.holding = rec.release = false;
}

static void on_done(Session *s, void *userdata) {
        (void) userdata;
        pthread_mutex_lock(&rec.lock);
        if (rec.hold) {
                rec.hold = false;
                rec.holding = true;
                pthread_cond_broadcast(&rec.cond);
                while (!rec.release)
                        pthread_cond_wait(&rec.cond, &rec.lock);
                rec.holding = false;
        }
        if (rec.done < 16) {
                snprintf(rec.reasons[rec.done], sizeof(rec.reasons[0]), "%s", session_reason(s));
                rec.lines[rec.done] = s->proto.lines;
        }
        rec.done++;
        pthread_cond_broadcast(&rec.cond);
        pthread_mutex_unlock(&rec.lock);
        session_free(s);
}

static struct timespec deadline_in(int ms) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long) (ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

/* wait_done: until N sessions have ended. */
static void wait_done(unsigned n) {
        struct timespec ts = deadline_in(WAIT_MS);
        int r = 0;

        pthread_mutex_lock(&rec.lock);
        while (rec.done < n && r == 0)
                r = pthread_cond_timedwait(&rec.cond, &rec.lock, &ts);
        unsigned done = rec.done;
        pthread_mutex_unlock(&rec.lock);
        cr_assert_geq(done, n, "%u of %u sessions ended", done, n);
}

static void wait_holding(void) {
        struct timespec ts = deadline_in(WAIT_MS);
        int r = 0;

        pthread_mutex_lock(&rec.lock);
        while (!rec.holding && r == 0)
                r = pthread_cond_timedwait(&rec.cond, &rec.lock, &ts);
        bool holding = rec.holding;
        pthread_mutex_unlock(&rec.lock);
        cr_assert(holding, "the done callback was not reached");
}

static void let_go(void) {
        pthread_mutex_lock(&rec.lock);
        rec.release = true;
        pthread_cond_broadcast(&rec.cond);
        pthread_mutex_unlock(&rec.lock);
}

static const char *reason(unsigned i) {
        return rec.reasons[i];
}

/* A test bench: a configuration, its engine, sessions on socketpairs. */
typedef struct Bench {
        Conf *conf;
        Engine *engine;
} Bench;

/* The server's hooks, as small as they can be: every connection is admitted. */
static Conf *admit_conf;
static unsigned admitted;
/* With it set, admit() leaves every client waiting, as the server does for overload = "queue"
 * with every slot taken; the hand-over gives them to handed_over_waiting, into GIVEN. */
static bool queue_everyone;
static unsigned left_waiting, given, stopped;
static unsigned waited_again; /* admit() calls for a client that had been left waiting */
static int given_fds[4], stopped_fds[4];

static Session *test_admit(void *userdata, int fd, const struct sockaddr *peer, const Listener *via, bool *queued) {
        Session *s;

        (void) userdata;
        if (queued && *queued)
                __atomic_add_fetch(&waited_again, 1, __ATOMIC_RELEASE);
        if (queued && __atomic_load_n(&queue_everyone, __ATOMIC_ACQUIRE)) {
                *queued = true;
                __atomic_add_fetch(&left_waiting, 1, __ATOMIC_RELEASE);
                return NULL;
        }
        if (queued)
                *queued = false;
        if (session_new(&s, fd, admit_conf, peer, via->name) < 0)
                return NULL;
        __atomic_add_fetch(&admitted, 1, __ATOMIC_RELAXED);
        return s;
}

static bool test_must_wait(void *userdata) {
        (void) userdata;
        return false;
}

static void test_exhausted(void *userdata, const Listener *via, int error) {
        (void) userdata;
        (void) via;
        (void) error;
}

/* keep_given: FD, a waiting client an engine gave away, into FDS (*N of them so far). */
static void keep_given(int fd, int fds[4], unsigned *n) {
        pthread_mutex_lock(&rec.lock);
        if (*n < 4)
                fds[(*n)++] = fd;
        else
                close(fd);
        pthread_mutex_unlock(&rec.lock);
}

/* test_waiting_handed_over, test_waiting_stopped: a hand-over's waiting clients into GIVEN, a
 * stop's into STOPPED (the server greets and hands over the first, tells the second it is
 * stopping). */
static void test_waiting_handed_over(void *userdata, int fd, const struct sockaddr_storage *peer,
                                     const Listener *via) {
        (void) userdata, (void) peer, (void) via;
        keep_given(fd, given_fds, &given);
}

static void test_waiting_stopped(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via) {
        (void) userdata, (void) peer, (void) via;
        keep_given(fd, stopped_fds, &stopped);
}

static const EngineHooks hooks = {
        .done = on_done,
        .admit = test_admit,
        .must_wait = test_must_wait,
        .exhausted = test_exhausted,
        .handed_over_waiting = test_waiting_handed_over,
        .stopped_waiting = test_waiting_stopped,
};

static Bench bench_new(const char *model, const char *extra) {
        char text[2048], err[512];
        Bench b = { 0 };

        record_init();
        snprintf(text, sizeof(text), "workers = %s;\n%s", model, extra ? extra : "");
        cr_assert_eq(conf_load_text("test.conf", text, strlen(text), &b.conf, err, sizeof(err)), 0, "%s", err);
        admit_conf = b.conf;
        cr_assert_eq(engine_new(&b.engine, b.conf, &hooks), 0);
        return b;
}

static void bench_free(Bench *b) {
        cr_assert_eq(engine_stop(b->engine, WAIT_MS), 0);
        conf_unref(b->conf);
}

/* bench_client_pair: a session on one end of a socketpair, driven by the engine; returns the
 * client's end (blocking, with a receive timeout), and the daemon's in *DAEMON_END if not NULL
 * (for a test that acts on it behind the engine's back). bench_client: without it. */
static int bench_client_pair(Bench *b, int *daemon_end) {
        struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(4242),
                                    .sin_addr.s_addr = htonl(0x7f000001) };
        struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
        int sv[2];
        Session *s;

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        if (engine_nonblocking(b->engine))
                cr_assert_eq(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
        cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        cr_assert_eq(session_new(&s, sv[0], b->conf, (struct sockaddr *) &peer, "test"), 0);
        cr_assert_eq(engine_add(b->engine, s), 0);
        if (daemon_end)
                *daemon_end = sv[0];
        return sv[1];
}

static int bench_client(Bench *b) {
        return bench_client_pair(b, NULL);
}

static void send_all(int fd, const void *buf, size_t n) {
        const char *p = buf;

        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                cr_assert_gt(k, 0, "send: %s", strerror(errno));
                p += k;
                n -= (size_t) k;
        }
}

static void expect_bytes(int fd, const char *want, size_t n) {
        char *got = malloc(n);
        size_t have = 0;

        cr_assert(got);
        while (have < n) {
                ssize_t k = recv(fd, got + have, n - have, 0);
                cr_assert_gt(k, 0, "after %zu of %zu bytes: %s", have, n, k == 0 ? "EOF" : strerror(errno));
                have += (size_t) k;
        }
        cr_assert(memcmp(got, want, n) == 0, "the bytes differ");
        free(got);
}

static void expect_str(int fd, const char *want) {
        expect_bytes(fd, want, strlen(want));
}

static void expect_eof(int fd) {
        char c;
        ssize_t k = recv(fd, &c, 1, 0);

        cr_assert_eq(k, 0, "expected EOF, got %zd (%s)", k, k < 0 ? strerror(errno) : "data");
}

/* readable_within: whether something (data or EOF) arrives within MS. */
static bool readable_within(int fd, int ms) {
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, ms) == 1;
}

/* Parameters are indexes: Criterion runs each test in a new process, where pointers into
 * the parent's memory mean nothing. */
static const char *const models[] = {
        "1", "2", "\"per-connection\"", "1;\nio_backend = \"io_uring\"", "2;\nio_backend = \"io_uring\"",
};
static int model_ids[] = { 0, 1, 2, 3, 4 };
#define N_MODELS (sizeof(model_ids) / sizeof(model_ids[0]))

ParameterizedTestParameters(engine, conversation) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* The greeting, replies, exit: one done callback with the reason and the count. */
ParameterizedTest(int *model, engine, conversation, .timeout = 30) {
        Bench b = bench_new(models[*model], NULL);
        int fd = bench_client(&b);

        expect_str(fd, "Welcome!\r\n");
        send_all(fd, "Michael\nTracy\n", 14);
        expect_str(fd, "Hello, Michael!\r\nHello, Tracy!\r\n");
        send_all(fd, "exit\n", 5);
        expect_eof(fd);
        wait_done(1);
        cr_expect_str_eq(reason(0), "exit");
        cr_expect_eq(rec.lines[0], 2);
        close(fd);
        bench_free(&b);
}

ParameterizedTestParameters(engine, both_directions_blocked) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* The client writes 400,000 lines without reading: the session's output and then its input
 * back up (both directions blocked). Once the client reads, every reply arrives in order. */
ParameterizedTest(int *model, engine, both_directions_blocked, .timeout = 60) {
        Bench b = bench_new(models[*model], "idle_timeout = 30;\n");
        int fd = bench_client(&b);
        const size_t lines = 400000;
        char *in = malloc(lines * 6 + 1), *want = malloc(lines * 14 + 1);
        size_t n = 0, wn = 0;

        cr_assert(in && want);
        for (size_t i = 0; i < lines; i++) {
                n += (size_t) sprintf(in + n, "%04zu\n", i % 10000);
                wn += (size_t) sprintf(want + wn, "Hello, %04zu!\r\n", i % 10000);
        }
        expect_str(fd, "Welcome!\r\n");
        cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
        size_t sent = 0;
        for (;;) { /* until the client's own send buffer is full too */
                ssize_t k = send(fd, in + sent, n - sent, MSG_NOSIGNAL);
                if (k < 0) {
                        cr_assert(errno == EAGAIN, "send: %s", strerror(errno));
                        struct pollfd p = { .fd = fd, .events = POLLOUT };
                        if (poll(&p, 1, 300) == 0)
                                break; /* blocked both ways */
                        continue;
                }
                sent += (size_t) k;
                cr_assert_lt(sent, n, "400,000 lines went through without anyone reading");
        }
        cr_assert_eq(fcntl(fd, F_SETFL, 0), 0);
        /* Read and write in turns from here on: a thread would do, so would this. */
        size_t got = 0;
        char *buf = malloc(wn);
        cr_assert(buf);
        while (got < wn) {
                ssize_t k = recv(fd, buf + got, wn - got, sent < n ? MSG_DONTWAIT : 0);
                if (k > 0)
                        got += (size_t) k;
                else
                        cr_assert(k < 0 && errno == EAGAIN, "recv after %zu of %zu bytes: %s", got, wn,
                                  k == 0 ? "EOF" : strerror(errno));
                if (sent < n) {
                        ssize_t w = send(fd, in + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (w > 0)
                                sent += (size_t) w;
                }
        }
        cr_assert(memcmp(buf, want, wn) == 0, "the replies differ from the lines sent");
        close(fd);
        wait_done(1);
        free(buf);
        free(in);
        free(want);
        bench_free(&b);
}

ParameterizedTestParameters(engine, pipelined_burst_long_reply) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* 2,048 lines in one write with a ~100-byte reply: all answered at once, no idle timeout. */
ParameterizedTest(int *model, engine, pipelined_burst_long_reply, .timeout = 30) {
        static const char prefix[] = "A reply long enough that the replies to one read do not fit the buffer: ";
        char extra[256];
        snprintf(extra, sizeof(extra), "idle_timeout = 2;\nreply = \"%s{name}.\";\n", prefix);
        Bench b = bench_new(models[*model], extra);
        int fd = bench_client(&b);
        char in[4096], *want = malloc(2048 * (sizeof(prefix) + 4));
        size_t wn = 0;

        cr_assert(want);
        for (int i = 0; i < 2048; i++) {
                memcpy(in + 2 * i, "a\n", 2);
                wn += (size_t) sprintf(want + wn, "%sa.\r\n", prefix);
        }
        expect_str(fd, "Welcome!\r\n");
        send_all(fd, in, sizeof(in));
        expect_bytes(fd, want, wn);
        close(fd);
        wait_done(1);
        free(want);
        bench_free(&b);
}

ParameterizedTestParameters(engine, input_arriving_while_kept_input_is_answered) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* A read whose replies do not fit the output buffer is answered over several turns from the
 * input kept in the session. Lines that arrive meanwhile are announced by an event the session
 * takes while it still works on the kept input: once that is answered they must be read, not
 * wait for the idle timeout (the driver test found the pool missing them: a 3,658-line burst
 * with 1,024-byte replies stalled with 1,483 bytes unread). */
ParameterizedTest(int *model, engine, input_arriving_while_kept_input_is_answered, .timeout = 90) {
        enum { ROUNDS = 20, FIRST = 1990, SECOND = 5 }; /* FIRST lines: one read, short of 4 KiB */
        char prefix[1001], extra[1200], first[2 * FIRST], second[2 * SECOND];
        memset(prefix, 'r', sizeof(prefix) - 1);
        prefix[sizeof(prefix) - 1] = '\0';
        snprintf(extra, sizeof(extra), "idle_timeout = 30;\nreply = \"%s{name}\";\n", prefix);
        Bench b = bench_new(models[*model], extra);
        int fd = bench_client(&b);
        size_t reply = sizeof(prefix) - 1 + 3, wn = 0;
        char *want = malloc((FIRST + SECOND) * reply + 1); /* + sprintf's NUL */

        cr_assert(want);
        for (int i = 0; i < FIRST + SECOND; i++) {
                memcpy(first + 2 * (i < FIRST ? i : 0), "a\n", 2);
                if (i >= FIRST)
                        memcpy(second + 2 * (i - FIRST), "b\n", 2);
                wn += (size_t) sprintf(want + wn, "%s%c\r\n", prefix, i < FIRST ? 'a' : 'b');
        }
        expect_str(fd, "Welcome!\r\n");
        for (int round = 0; round < ROUNDS; round++) {
                send_all(fd, first, sizeof(first));
                usleep(2000); /* the daemon reads the first write alone and starts on its replies */
                send_all(fd, second, sizeof(second));
                expect_bytes(fd, want, wn);
        }
        close(fd);
        wait_done(1);
        free(want);
        bench_free(&b);
}

static double seconds_now(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double) t.tv_sec + (double) t.tv_nsec / 1e9;
}

/* recv_exactly: N bytes from FD into BUF (FD has a receive timeout). */
static void recv_exactly(int fd, char *buf, size_t n) {
        for (size_t have = 0; have < n;) {
                ssize_t k = recv(fd, buf + have, n - have, 0);
                cr_assert_gt(k, 0, "after %zu of %zu bytes", have, n);
                have += (size_t) k;
        }
}

/* idle_timeout_in: the seconds until FD's next line, which must be the idle timeout's. */
static double idle_timeout_in(int fd) {
        char line[64];
        double from = seconds_now();
        ssize_t k = recv(fd, line, sizeof(line) - 1, 0);
        double waited = seconds_now() - from;

        cr_assert_gt(k, 0);
        line[k] = '\0';
        cr_expect_str_eq(line, "ERR idle timeout\r\n");
        return waited;
}

/* The per-connection model answers input it starts with (bytes that came with a PROXY header,
 * or a resumed session's) before its first read. Those lines are activity like any other: when
 * their replies take long to be read, the idle timeout counts from the last of them written,
 * as in the pool (session_idle_deadline), not from the start of the session. */
Test(engine, per_connection_idle_timeout_after_slowly_read_kept_replies, .timeout = 60) {
        enum { LINES = 1000 };
        char prefix[1001], extra[1200];
        memset(prefix, 'r', sizeof(prefix) - 1);
        prefix[sizeof(prefix) - 1] = '\0';
        /* Seconds apart, the two outcomes (from the start: 2 s; from the last reply: 4 s), so
         * that a slow machine's late wake-up cannot make one look like the other. */
        snprintf(extra, sizeof(extra), "idle_timeout = 4;\nreply = \"%s{name}\";\n", prefix);
        Bench b = bench_new("\"per-connection\"", extra);
        struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(4242),
                                    .sin_addr.s_addr = htonl(0x7f000001) };
        struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
        size_t want = strlen("Welcome!\r\n") + LINES * (sizeof(prefix) - 1 + 3);
        char *buf = malloc(want);
        Session *s;
        int sv[2];

        cr_assert(buf);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        cr_assert_eq(session_new(&s, sv[0], b.conf, (struct sockaddr *) &peer, "test"), 0);
        cr_assert((s->in = malloc(s->in_cap)));
        for (int i = 0; i < LINES; i++)
                memcpy(s->in + 2 * i, "a\n", 2);
        s->in_len = 2 * LINES;
        cr_assert_eq(engine_add(b.engine, s), 0);
        usleep(2000000); /* the daemon's writes block meanwhile */
        recv_exactly(sv[1], buf, want);
        double waited = idle_timeout_in(sv[1]);
        /* The last replies left the daemon as the client read them (2 s in): the timeout
         * comes idle_timeout (4 s) later, not at 4 s from the start. */
        cr_expect_gt(waited, 3.0, "ERR idle timeout came %.2f s after the replies were read", waited);
        close(sv[1]);
        wait_done(1);
        free(buf);
        bench_free(&b);
}

/* A session handed over while its client lagged brings its replies and its write deadline,
 * and no input. Once the client has taken those replies it has made progress: its idle
 * timeout counts from then, as in the pool (flush_kept), not from the deadline it came with. */
Test(engine, per_connection_idle_timeout_after_kept_output_is_taken, .timeout = 60) {
        enum { KEPT = 16000, CAME_WITH_MS = 2000, READ_AT_MS = 400 };
        Bench b = bench_new("\"per-connection\"", "idle_timeout = 4;\n");
        struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(4242),
                                    .sin_addr.s_addr = htonl(0x7f000001) };
        struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
        char *buf = malloc(KEPT);
        Session *s;
        int sv[2];

        cr_assert(buf);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        /* A small send buffer: the kept replies do not fit, and the thread waits to write. */
        cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &(int) { 4096 }, sizeof(int)), 0);
        cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        cr_assert_eq(session_new(&s, sv[0], b.conf, (struct sockaddr *) &peer, "test"), 0);
        cr_assert_leq(KEPT, s->out.cap);
        cr_assert((s->out.data = malloc(s->out.cap)));
        memset(s->out.data, 'k', KEPT);
        s->out.len = KEPT;
        s->resumed = true;
        s->want_write = true;
        s->timer.at = now_usec() + CAME_WITH_MS * 1000u; /* the write deadline it came with */
        cr_assert_eq(engine_add(b.engine, s), 0);
        usleep(READ_AT_MS * 1000);
        recv_exactly(sv[1], buf, KEPT);
        double waited = idle_timeout_in(sv[1]);
        /* Taken 0.4 s in: the timeout comes idle_timeout (4 s) after that, not at the 2 s
         * the session came with (1.6 s after). */
        cr_expect_gt(waited, 3.0, "ERR idle timeout came %.2f s after the kept replies were read", waited);
        close(sv[1]);
        wait_done(1);
        free(buf);
        bench_free(&b);
}

/* fill_send_buffer: writes to the daemon's end FD until its send buffer is full; returns the
 * bytes written (the client reads them before anything the daemon writes after). */
static size_t fill_send_buffer(int fd) {
        static const char junk[4096] = { 0 };
        size_t n = 0;

        for (;;) {
                ssize_t k = send(fd, junk, sizeof(junk), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0) {
                        cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "send: %s", strerror(errno));
                        return n;
                }
                n += (size_t) k;
        }
}

ParameterizedTestParameters(engine, idle_timeout_counts_from_a_blocked_reply_taken) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* A reply that waits for a slow reader (the socket's send buffer full) is not idleness: once
 * the client has taken it, the idle timeout counts from then in every model, not from the
 * line that asked for it (session.h). The io_uring loop, whose send waits in the kernel, used
 * to count from the line (a review: ERR idle timeout 2 s after the read, not 4). */
ParameterizedTest(int *model, engine, idle_timeout_counts_from_a_blocked_reply_taken, .timeout = 60) {
        enum { READ_AT_MS = 2000 };
        /* Seconds apart, the two outcomes (from the line: 2 s after the read; from the read:
         * 4 s), so that a slow machine's late wake-up cannot make one look like the other. */
        Bench b = bench_new(models[*model], "idle_timeout = 4;\n");
        int sv[2];

        sv[1] = bench_client_pair(&b, &sv[0]);
        expect_str(sv[1], "Welcome!\r\n");
        size_t filled = fill_send_buffer(sv[0]); /* the daemon is at rest, waiting for a line */
        char *junk = malloc(filled);
        cr_assert(junk);
        send_all(sv[1], "a\n", 2); /* its reply cannot leave until the client reads */
        usleep(READ_AT_MS * 1000);
        recv_exactly(sv[1], junk, filled);
        expect_str(sv[1], "Hello, a!\r\n");
        double waited = idle_timeout_in(sv[1]);
        cr_expect_gt(waited, 3.0, "ERR idle timeout came %.2f s after the blocked reply was taken", waited);
        close(sv[1]);
        wait_done(1);
        free(junk);
        bench_free(&b);
}

/* heap_in_use: the bytes malloc has handed out and not had back, every arena and mapping
 * (ASan's allocator under ASan: it leaves glibc's arenas, which mallinfo2() reads, unused). */
static size_t heap_in_use(void) {
#ifdef __SANITIZE_ADDRESS__
        return __sanitizer_get_current_allocated_bytes();
#else
        struct mallinfo2 m = mallinfo2();

        return m.uordblks + m.hblkhd;
#endif
}

ParameterizedTestParameters(engine, long_replies_leave_no_buffers_behind) {
        static int pool_models[] = { 0, 1, 3, 4 }; /* a thread per connection keeps its own */
        return cr_make_param_array(int, pool_models, 4);
}

/* A pool session that has caught up holds no buffer, whatever the size of its replies: once
 * CLIENTS clients have each had a reply of about a MiB at the same time and read it, the
 * heap is back within a few buffers of where it was. (The io_uring loop kept up to 64 output
 * buffers for reuse whatever their size: 1 MiB each with max_line_length = 1048576, a
 * review found.) */
ParameterizedTest(int *model, engine, long_replies_leave_no_buffers_behind, .timeout = 60) {
        enum { CLIENTS = 16, LINE = 1000000, SLACK = 4 << 20 };
        char extra[128];
        snprintf(extra, sizeof(extra), "max_line_length = %d;\nidle_timeout = 30;\n", LINE);
        Bench b = bench_new(models[*model], extra);
        char *line = malloc(LINE + 1), *reply = malloc(LINE + 16), *want = malloc(LINE + 16);
        int fds[CLIENTS];

        cr_assert(line && reply && want);
        memset(line, 'x', LINE);
        line[LINE] = '\n';
        size_t wn = (size_t) snprintf(want, LINE + 16, "Hello, %.*s!\r\n", LINE, line);
        for (int i = 0; i < CLIENTS; i++) {
                fds[i] = bench_client(&b);
                expect_str(fds[i], "Welcome!\r\n");
        }
        size_t before = heap_in_use();
        /* Every client sends its line before any reads: the replies wait, all at once. */
        for (int i = 0; i < CLIENTS; i++)
                send_all(fds[i], line, LINE + 1);
        for (int i = 0; i < CLIENTS; i++) {
                recv_exactly(fds[i], reply, wn);
                cr_assert(memcmp(reply, want, wn) == 0, "client %d: the reply differs", i);
        }
        send_all(fds[0], "a\n", 2); /* a round trip: the loops have put the buffers back */
        expect_str(fds[0], "Hello, a!\r\n");
        size_t after = heap_in_use();
        cr_expect_leq(after, before + SLACK, "%zu KiB more on the heap after the replies were taken",
                      (after - before) / 1024);
        for (int i = 0; i < CLIENTS; i++)
                close(fds[i]);
        wait_done(CLIENTS);
        free(line);
        free(reply);
        free(want);
        bench_free(&b);
}

ParameterizedTestParameters(engine, deadline_with_reset_pending) {
        static int pool_models[] = { 0, 3 };
        return cr_make_param_array(int, pool_models, 2);
}

/* The review's use-after-free: the loop is held (here in the done callback of another
 * session) while an idle client's deadline passes and the client resets. The deadline scan
 * then ends a session whose ERR line cannot be sent: the session is freed on that path, and
 * nothing may touch it afterwards (ASan: heap-use-after-free in on_deadline). */
ParameterizedTest(int *model, engine, deadline_with_reset_pending, .timeout = 30) {
        Bench b = bench_new(models[*model], "idle_timeout = 2;\n"); /* the set-up well within it */
        int idle = bench_client(&b), other = bench_client(&b);

        /* Neither client reads its greeting: closing with unread data resets the pair. */
        cr_assert(readable_within(idle, WAIT_MS) && readable_within(other, WAIT_MS));
        pthread_mutex_lock(&rec.lock);
        rec.hold = true;
        pthread_mutex_unlock(&rec.lock);
        close(other); /* its session ends: the loop sits in our callback */
        wait_holding();
        close(idle); /* the reset, pending while the loop is held */
        usleep(2200 * 1000); /* ... past the idle deadline */
        let_go();
        wait_done(2);
        cr_expect(strcmp(reason(1), "reset") == 0 || strcmp(reason(1), "broken-pipe") == 0,
                  "the idle session ended with %s", reason(1));
        bench_free(&b);
}

ParameterizedTestParameters(engine, idle_timeout_then_write_timeout) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* An idle client gets `ERR idle timeout`, then EOF. */
ParameterizedTest(int *model, engine, idle_timeout_then_write_timeout, .timeout = 30) {
        Bench b = bench_new(models[*model], "idle_timeout = 1;\n");
        int fd = bench_client(&b);

        expect_str(fd, "Welcome!\r\n");
        send_all(fd, "half a line", 11);
        expect_str(fd, "ERR idle timeout\r\n");
        expect_eof(fd);
        wait_done(1);
        cr_expect_str_eq(reason(0), "idle-timeout");
        close(fd);
        bench_free(&b);
}

ParameterizedTestParameters(engine, stop_times_out) {
        return cr_make_param_array(int, model_ids, N_MODELS);
}

/* A thread stuck outside socket I/O: engine_stop() gives up after its timeout and leaves the
 * engine to that thread, which can still finish its session later. */
ParameterizedTest(int *model, engine, stop_times_out, .timeout = 30) {
        Bench b = bench_new(models[*model], NULL);
        int fd = bench_client(&b);

        expect_str(fd, "Welcome!\r\n");
        pthread_mutex_lock(&rec.lock);
        rec.hold = true;
        pthread_mutex_unlock(&rec.lock);
        close(fd);
        wait_holding();
        cr_assert_eq(engine_stop(b.engine, 200), -ETIMEDOUT);
        let_go();
        wait_done(1);
        /* The engine was left to the stuck thread, which has finished its session now: a
         * second stop joins it and frees the engine. */
        bench_free(&b);
}

/* bench_listener: a listening socket named "test" on 127.0.0.1 into L; returns its address. */
static struct sockaddr_in bench_listener(Listener *l) {
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
        socklen_t len = sizeof(addr);

        *l = (Listener) { .fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) };
        snprintf(l->name, sizeof(l->name), "test");
        cr_assert_eq(bind(l->fd, (struct sockaddr *) &addr, sizeof(addr)), 0);
        cr_assert_eq(listen(l->fd, 64), 0);
        cr_assert_eq(getsockname(l->fd, (struct sockaddr *) &addr, &len), 0);
        return addr;
}

ParameterizedTestParameters(engine, accepts_on_the_threads_that_serve) {
        static int accepting[] = { 1, 2, 4 }; /* two loops (epoll, io_uring), per-connection */
        return cr_make_param_array(int, accepting, 3);
}

/* Every engine accepts on the threads that serve (the pool in its loops, the per-connection
 * model on its waiting threads): connections are admitted through the hook and served where
 * they were accepted, 20 of them at once. A new listener set replaces the old
 * one: once set_listeners returns, nothing accepts from the old socket any more. */
ParameterizedTest(int *model, engine, accepts_on_the_threads_that_serve, .timeout = 30) {
        Bench b = bench_new(models[*model], NULL);
        Listener l;
        struct sockaddr_in addr = bench_listener(&l);
        int fds[20];

        engine_set_listeners(b.engine, &(ListenerSet) { .items = &l, .n = 1 });
        for (int i = 0; i < 20; i++) {
                struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
                fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                cr_assert_eq(connect(fds[i], (struct sockaddr *) &addr, sizeof(addr)), 0);
                cr_assert_eq(setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
                expect_str(fds[i], "Welcome!\r\n");
        }
        for (int i = 0; i < 20; i++) {
                send_all(fds[i], "loop\nexit\n", 10);
                expect_str(fds[i], "Hello, loop!\r\n");
                expect_eof(fds[i]);
                close(fds[i]);
        }
        wait_done(20);
        cr_expect_eq(__atomic_load_n(&admitted, __ATOMIC_RELAXED), 20);

        /* Let go of the listener: a connection now waits in the backlog, unanswered. */
        engine_set_listeners(b.engine, &(ListenerSet) { 0 });
        int waiting = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(waiting, (struct sockaddr *) &addr, sizeof(addr)), 0);
        cr_expect(!readable_within(waiting, 300), "a thread accepted from a listener it was told to let go");
        engine_set_listeners(b.engine, &(ListenerSet) { .items = &l, .n = 1 });
        cr_expect(readable_within(waiting, WAIT_MS), "the listener given back was not served");
        close(waiting);
        wait_done(21);
        engine_set_listeners(b.engine, &(ListenerSet) { 0 });
        close(l.fd);
        bench_free(&b);
}

ParameterizedTestParameters(engine, a_waiting_client_is_given_at_the_hand_over) {
        static int accepting[] = { 0, 2, 3 }; /* a loop (epoll, io_uring), per-connection */
        return cr_make_param_array(int, accepting, 3);
}

/* leave_one_waiting: a client of L, which B's engine accepts and admit() leaves waiting for a
 * slot, and once more after a slot frees; the client's end. */
static int leave_one_waiting(Bench *b, Listener *l, const struct sockaddr_in *addr) {
        struct timeval tv = { .tv_sec = WAIT_MS / 1000 };

        __atomic_store_n(&queue_everyone, true, __ATOMIC_RELEASE);
        engine_set_listeners(b->engine, &(ListenerSet) { .items = l, .n = 1 });
        int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(client, (const struct sockaddr *) addr, sizeof(*addr)), 0);
        cr_assert_eq(setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        for (int ms = 0; __atomic_load_n(&left_waiting, __ATOMIC_ACQUIRE) == 0; ms += 10) {
                cr_assert_lt(ms, WAIT_MS, "the client was never accepted");
                (void) usleep(10000);
        }
        cr_expect(!readable_within(client, 200), "a client left waiting was greeted, or closed");

        /* A slot frees: the client is admitted again, as one that waited, and waits on. */
        engine_slot_freed(b->engine);
        /* test_admit counts it admitted again, then left waiting again: both, not the first. */
        for (int ms = 0; __atomic_load_n(&waited_again, __ATOMIC_ACQUIRE) == 0 ||
                         __atomic_load_n(&left_waiting, __ATOMIC_ACQUIRE) < 2;
             ms += 10) {
                cr_assert_lt(ms, WAIT_MS, "the waiting client was not admitted again after a slot freed");
                (void) usleep(10000);
        }
        cr_expect_eq(__atomic_load_n(&left_waiting, __ATOMIC_ACQUIRE), 2);
        engine_set_listeners(b->engine, &(ListenerSet) { 0 }); /* as the server's stop does */
        return client;
}

/* waiting_client_given: a client left waiting in MODEL's engine, which then hands over
 * (HAND_OVER) or stops: the engine gives the very connection, still open, to
 * handed_over_waiting or to stopped_waiting, and nothing to the other. */
static void waiting_client_given(int model, bool hand_over) {
        Bench b = bench_new(models[model], NULL);
        Listener l;
        struct sockaddr_in addr = bench_listener(&l);
        char buf[16];
        int client = leave_one_waiting(&b, &l, &addr);

        if (hand_over)
                cr_assert_eq(engine_hand_over(b.engine, WAIT_MS), 0);
        else
                cr_assert_eq(engine_stop(b.engine, WAIT_MS), 0);
        unsigned got = hand_over ? given : stopped, other = hand_over ? stopped : given;
        int fd = hand_over ? given_fds[0] : stopped_fds[0];
        cr_assert_eq(got, 1, "%u clients given at the %s", got, hand_over ? "hand-over" : "stop");
        cr_expect_eq(other, 0, "%u clients given to the other hook", other);
        send_all(fd, "next\n", 5); /* the very connection, still open */
        cr_assert_eq(recv(client, buf, sizeof(buf), 0), 5);
        cr_expect_eq(memcmp(buf, "next\n", 5), 0);
        close(fd);
        close(client);
        close(l.fd);
        __atomic_store_n(&queue_everyone, false, __ATOMIC_RELEASE);
        left_waiting = given = stopped = waited_again = 0;
        conf_unref(b.conf);
}

/* A client admit() leaves waiting for a slot (overload = "queue", every slot taken) is never
 * greeted here. At a hand-over the engine gives it, still connected, to handed_over_waiting
 * (the server greets it and hands it over). */
ParameterizedTest(int *model, engine, a_waiting_client_is_given_at_the_hand_over, .timeout = 30) {
        waiting_client_given(*model, true);
}

ParameterizedTestParameters(engine, a_waiting_client_is_given_at_a_stop) {
        static int accepting[] = { 0, 2, 3 }; /* a loop (epoll, io_uring), per-connection */
        return cr_make_param_array(int, accepting, 3);
}

/* At a stop the engine gives a client still waiting to stopped_waiting (the server tells it
 * it is stopping), whether or not a freed slot's wakeup came first: it used to close it
 * without a word. */
ParameterizedTest(int *model, engine, a_waiting_client_is_given_at_a_stop, .timeout = 30) {
        waiting_client_given(*model, false);
}

static void redirect_stderr(void) {
        cr_redirect_stderr();
}

/* expect_child_exit_0: PID, a child the test forked (a seccomp filter cannot be taken off
 * again), must exit 0; WHAT says what the other statuses mean. */
static void expect_child_exit_0(pid_t pid, const char *what) {
        int status;

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %#x%s%s)", status,
                  what ? "; " : "", what ? what : "");
}

/* redirected_stderr: what the test and its children wrote to the redirected stderr, into TEXT. */
static void redirected_stderr(char *text, size_t size) {
        fflush(stderr);
        size_t n = fread(text, 1, size - 1, cr_get_redirected_stderr());
        text[n] = '\0';
}

/* A pool loop that cannot add its eventfd to its epoll set (ENOMEM, or ENOSPC past
 * fs.epoll.max_user_watches) fails the engine's start, which names why. It used to exit at
 * once while the engine was reported started: the sessions given to it were never served. */
Test(engine, a_loop_that_cannot_be_woken_fails_the_start, .init = redirect_stderr, .timeout = 30) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                Engine *e = NULL;
                Conf *conf = NULL;
                char err[256];

                if (conf_load_text("test.conf", "workers = 2;\n", 13, &conf, err, sizeof(err)) < 0)
                        _exit(3);
                if (deny_syscall(__NR_epoll_ctl, ENOMEM) < 0)
                        _exit(4);
                int r = pool_engine_new(&e, conf, &hooks);
                _exit(r == -ENOMEM ? 0 : r == 0 ? 5 : 6);
        }
        expect_child_exit_0(pid, "5: the engine started without its loop");
        char text[4096];
        redirected_stderr(text, sizeof(text));
        cr_expect(strstr(text, "cannot start an event loop: Cannot allocate memory"), "stderr: %s", text);
}

/* Where io_uring is refused (a seccomp filter, as systemd's SystemCallFilter= makes, with
 * either error the kernel or a filter gives), io_backend = "io_uring" says so and serves on
 * epoll. */
Test(engine, io_uring_unavailable_falls_back_to_epoll, .init = redirect_stderr, .timeout = 30) {
        static const int errnums[] = { ENOSYS, EPERM };

        for (size_t i = 0; i < sizeof(errnums) / sizeof(errnums[0]); i++) {
                pid_t pid = fork();
                cr_assert_geq(pid, 0);
                if (pid == 0) {
                        /* In a child: the filter cannot be taken off again. */
                        if (deny_io_uring(errnums[i]) < 0)
                                _exit(3);
                        Bench b = bench_new("2;\nio_backend = \"io_uring\"", NULL);
                        int fd = bench_client(&b);
                        expect_str(fd, "Welcome!\r\n");
                        send_all(fd, "Lindsay\nexit\n", 13);
                        expect_str(fd, "Hello, Lindsay!\r\n");
                        expect_eof(fd);
                        close(fd);
                        wait_done(1);
                        bench_free(&b);
                        _exit(0);
                }
                expect_child_exit_0(pid, NULL);
        }
        char text[4096];
        redirected_stderr(text, sizeof(text));
        cr_expect(strstr(text, "io_backend = \"io_uring\" is unavailable (cannot set up io_uring: Function not "
                               "implemented); the event loops use epoll"),
                  "no notice of ENOSYS in: %s", text);
        cr_expect(strstr(text, "io_backend = \"io_uring\" is unavailable (cannot set up io_uring: Operation not "
                               "permitted); the event loops use epoll"),
                  "no notice of EPERM in: %s", text);
}

/* memory_max_of: session_memory_max() for the configuration TEXT, in the pool, on epoll. */
static size_t memory_max_of(const char *text) {
        char err[512];
        Conf *conf = NULL;

        cr_assert_eq(conf_load_text("test.conf", text, strlen(text), &conf, err, sizeof(err)), 0, "%s", err);
        size_t n = session_memory_max(conf, 2, false);
        conf_unref(conf);
        return n;
}

/* Behind a PROXY listener a client holds the header's parser until the header is in, and only
 * then may it hold a partial line: the bound counts the larger of the two, not their sum. */
Test(engine, the_memory_bound_counts_a_proxy_header_or_a_partial_line) {
        static const char proxied[] = "listen = ( { address = \"127.0.0.1:7000\"; proxy_protocol = true; } );\n"
                                      "proxy_from = [ \"127.0.0.1\" ];\n";
        char text[512];

        snprintf(text, sizeof(text), "%smax_line_length = 16;\n", proxied);
        cr_expect_eq(memory_max_of(text) - memory_max_of("max_line_length = 16;\n"), sizeof(ProxyParser) - 17);
        snprintf(text, sizeof(text), "%smax_line_length = 65536;\n", proxied);
        cr_expect_eq(memory_max_of(text), memory_max_of("max_line_length = 65536;\n"));
}
