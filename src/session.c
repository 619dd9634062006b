/* session: one connection's blocking I/O around the pure protocol. */
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ratelimit.h"

/* Read size in line framing; replies to one read go out in one write when they fit OUT. */
#define SESSION_READ_SIZE 4096
#define SESSION_OUT_SIZE 16384
/* Connection log lines per second, across all sessions; the rest are counted. */
#define SESSION_LOG_BURST 100

uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

size_t session_output_size(const Conf *conf) {
        size_t min = proto_output_min(conf);

        return min > SESSION_OUT_SIZE ? min : SESSION_OUT_SIZE;
}

static size_t input_size(const Conf *conf) {
        return conf->framing == FRAMING_CHUNK ? proto_input_max(conf) : SESSION_READ_SIZE;
}

size_t session_memory_max(const Conf *conf) {
        return sizeof(Session) + session_output_size(conf) + input_size(conf) + (size_t) conf->max_line_length + 1 +
               conf->worker_stack_size;
}

int session_new(Session **ret, int fd, Conf *conf, const struct sockaddr *peer, const char *listen) {
        Session *s = calloc(1, sizeof(*s));

        if (!s) {
                close(fd);
                return -ENOMEM;
        }
        s->fd = fd;
        s->conf = conf_ref(conf);
        s->started_usec = now_usec();
        (void) ip_key_from_sockaddr(peer, &s->ip);
        addr_format(peer, s->peer, sizeof(s->peer));
        snprintf(s->listen, sizeof(s->listen), "%s", listen);

        s->out.cap = session_output_size(conf);
        s->in_cap = input_size(conf);
        (void) proto_init(&s->proto, conf);
        *ret = s;
        return 0;
}

Session *session_free(Session *s) {
        if (!s)
                return NULL;
        if (s->fd >= 0)
                close(s->fd);
        proto_done(&s->proto);
        free(s->in);
        free(s->out.data);
        conf_unref(s->conf);
        free(s);
        return NULL;
}

void session_stop(Session *s) {
        __atomic_store_n(&s->stop_requested, true, __ATOMIC_RELEASE);
        /* A reader blocked in recv() sees EOF; a writer finishes what it is writing. */
        (void) shutdown(s->fd, SHUT_RD);
}

void session_kill(Session *s) {
        __atomic_store_n(&s->stop_requested, true, __ATOMIC_RELEASE);
        (void) shutdown(s->fd, SHUT_RDWR);
}

bool session_stop_requested(const Session *s) {
        return __atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE);
}

bool session_lingers(const Session *s) {
        /* Also after a clean exit: bytes the client sent after it may still be in flight, and
         * closing before they arrive would answer them with a RST. (Closing at once when
         * nothing is queued was measured 8% faster for connection churn, and failed the
         * hostile tests for exactly that reason.) */
        return s->proto.end != PROTO_END_EOF && s->proto.end != PROTO_END_SHUTDOWN;
}

static int set_timeout(int fd, int option, uint64_t usec) {
        struct timeval tv = { .tv_sec = (time_t) (usec / 1000000u), .tv_usec = (suseconds_t) (usec % 1000000u) };

        if (setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv)) < 0)
                return -errno;
        return 0;
}

/* flush: writes all of OUT; partial writes are completed, a stalled reader times out.
 * SO_SNDTIMEO (idle_timeout) bounds each send(); when one returns short, the rest of the
 * flush gets only what is left of idle_timeout from the flush's start, so a client that
 * reads a trickle cannot hold its worker for several timeouts in a row. */
static int flush(Session *s) {
        const uint64_t limit = (uint64_t) s->conf->idle_timeout * 1000000u;
        const uint64_t deadline = limit ? now_usec() + limit : 0;
        bool shortened = false;
        size_t done = 0;
        int r = 0;

        while (done < s->out.len) {
                ssize_t n = send(s->fd, s->out.data + done, s->out.len - done, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
                        break;
                }
                done += (size_t) n;
                if (done == s->out.len || limit == 0)
                        continue;
                /* The slow path: a short write. */
                uint64_t now = now_usec();
                if (now >= deadline || (r = set_timeout(s->fd, SO_SNDTIMEO, deadline - now)) < 0) {
                        r = r < 0 ? r : -ETIMEDOUT;
                        break;
                }
                shortened = true;
        }
        if (shortened)
                (void) set_timeout(s->fd, SO_SNDTIMEO, limit);
        s->out.len = 0;
        return r;
}

/* feed: hands one read to the protocol, flushing whenever the output buffer fills. */
static int feed(Session *s, size_t n, ProtoStatus *status) {
        size_t done = 0;

        for (;;) {
                done += proto_feed(&s->proto, s->in + done, n - done, &s->out, status);
                if (done == n || *status == PROTO_CLOSE)
                        return 0;
                int r = flush(s);
                if (r < 0)
                        return r;
        }
}

static void io_error(Session *s, int r) {
        switch (-r) {
        case ETIMEDOUT:
                s->error = "write-timeout";
                break;
        case ECONNRESET:
                s->error = "reset";
                break;
        case EPIPE:
                s->error = "broken-pipe";
                break;
        default:
                s->error = "io-error";
                break;
        }
        log_debug_errno(r, "connection %" PRIu64 " from %s: I/O failed", s->id, s->peer);
}

/* The idle timer measures time without a complete line. When a partial line is in hand
 * the receive timeout shrinks to what is left, so a client dribbling bytes is closed on
 * time; a well-behaved client keeps the full timeout and pays no extra system call. */
typedef struct IdleTimer {
        uint64_t limit;    /* usec, 0: none */
        uint64_t deadline; /* usec, CLOCK_MONOTONIC */
        uint64_t armed;    /* the SO_RCVTIMEO in force */
} IdleTimer;

static void idle_reset(Session *s, IdleTimer *t) {
        t->deadline = now_usec() + t->limit;
        if (t->limit > 0 && t->armed != t->limit && set_timeout(s->fd, SO_RCVTIMEO, t->limit) == 0)
                t->armed = t->limit;
}

/* idle_prepare: before a read; returns false when the deadline has passed. */
static bool idle_prepare(Session *s, IdleTimer *t) {
        if (t->limit == 0)
                return true;
        uint64_t now = now_usec();
        if (now >= t->deadline)
                return false;
        uint64_t left = t->deadline - now;
        if (left < t->armed && set_timeout(s->fd, SO_RCVTIMEO, left) == 0)
                t->armed = left;
        return true;
}

/* converse: greeting, then read → proto → write; returns 0 when the protocol ended the
 * session, or a negative errno when the connection failed under it. */
static int converse(Session *s) {
        IdleTimer timer = { .limit = (uint64_t) s->conf->idle_timeout * 1000000u };
        ProtoStatus status = PROTO_CONTINUE;
        int r;

        idle_reset(s, &timer);
        if (timer.limit > 0)
                (void) set_timeout(s->fd, SO_SNDTIMEO, timer.limit);

        proto_greeting(&s->proto, &s->out);
        if ((r = flush(s)) < 0)
                return r;

        while (status == PROTO_CONTINUE) {
                if (session_stop_requested(s)) {
                        /* The lines in hand were answered; the server is going away. */
                        proto_abort(&s->proto, PROTO_END_SHUTDOWN, &s->out);
                        break;
                }
                if (!idle_prepare(s, &timer)) {
                        proto_abort(&s->proto, PROTO_END_IDLE, &s->out);
                        break;
                }
                ssize_t n = recv(s->fd, s->in, s->in_cap, 0);
                if (n < 0) {
                        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                                continue; /* EAGAIN: the receive timeout; idle_prepare decides */
                        return -errno;
                }
                if (n == 0) {
                        if (session_stop_requested(s))
                                proto_abort(&s->proto, PROTO_END_SHUTDOWN, &s->out);
                        else
                                proto_eof(&s->proto, &s->out);
                        break;
                }
                uint64_t messages = s->proto.messages;
                if ((r = feed(s, (size_t) n, &status)) < 0)
                        return r;
                if ((r = flush(s)) < 0)
                        return r;
                /* A complete line (even an empty one) is activity; bytes of an unfinished
                 * line are not. Reset after the writes: time spent waiting for a slow reader
                 * is not the client being idle. */
                if (s->proto.messages != messages)
                        idle_reset(s, &timer);
        }
        return flush(s);
}

/* linger: when the server ends the conversation (exit, ERR) the client may still have bytes
 * in flight; closing with unread data sends a RST that can destroy the reply or ERR line
 * before the client reads it. Send FIN first and discard the client's leftovers, bounded
 * in time and bytes, as nginx's lingering close does. */
static void linger(Session *s) {
        uint64_t deadline = now_usec() + SESSION_LINGER_USEC;
        char sink[4096];
        size_t total = 0;

        if (shutdown(s->fd, SHUT_WR) < 0)
                return;
        /* One deadline for the whole linger: a client dribbling a byte now and then must not
         * keep its slot and its thread. */
        while (total < SESSION_LINGER_BYTES) {
                uint64_t now = now_usec();
                if (now >= deadline || set_timeout(s->fd, SO_RCVTIMEO, deadline - now) < 0)
                        return;
                ssize_t n = recv(s->fd, sink, sizeof(sink), 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
                total += (size_t) n;
        }
}

void session_run(Session *s) {
        /* TCP_NODELAY comes from the listener (listener.c). */
        log_debug("connection %" PRIu64 " from %s opened", s->id, s->peer);

        s->in = malloc(s->in_cap);
        s->out.data = malloc(s->out.cap);
        if (!s->in || !s->out.data) {
                s->error = "out-of-memory";
                return;
        }
        int r = converse(s);
        if (r < 0) {
                io_error(s, r);
                return;
        }
        if (session_lingers(s))
                linger(s);
}

void session_log_close(const Session *s) {
        static RateLimit limit = RATELIMIT_INIT(SESSION_LOG_BURST);
        char id[24], lines[24], usec_text[24];
        unsigned suppressed;

        if (!log_enabled(LOG_INFO))
                return;
        if (!ratelimit_allow(&limit, &suppressed))
                return;
        if (suppressed > 0)
                log_info("%u more connection log lines were suppressed in the last second", suppressed);

        uint64_t usec = now_usec() - s->started_usec;
        const char *reason = s->error ? s->error : proto_end_to_string(s->proto.end);
        snprintf(id, sizeof(id), "%" PRIu64, s->id);
        snprintf(lines, sizeof(lines), "%" PRIu64, s->proto.lines);
        snprintf(usec_text, sizeof(usec_text), "%" PRIu64, usec);
        LogField fields[] = {
                { "HELLOD_PEER", s->peer },   { "HELLOD_LISTEN", s->listen },
                { "HELLOD_CONN_ID", id },     { "HELLOD_LINES", lines },
                { "HELLOD_DURATION_USEC", usec_text }, { "HELLOD_REASON", reason },
        };
        log_struct(LOG_INFO, NULL, fields, sizeof(fields) / sizeof(fields[0]),
                   "connection %" PRIu64 " from %s closed: %s, %" PRIu64 " line%s, %" PRIu64 ".%03" PRIu64 " s",
                   s->id, s->peer, reason, s->proto.lines, s->proto.lines == 1 ? "" : "s", usec / 1000000u,
                   (usec / 1000u) % 1000u);
}
