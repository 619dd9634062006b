/* perconn: the per-connection driver: each session runs on a thread of its own (from the
 * thread cache in worker.c) with blocking I/O: the greeting, then read → proto → write until
 * the client leaves, says exit, idles out or the server stops. Timeouts are socket options
 * (SO_RCVTIMEO, SO_SNDTIMEO) measured against the session's deadlines. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "log.h"
#include "worker.h"

/* Parked threads kept for reuse. */
#define PERCONN_MAX_IDLE 64

typedef struct PerConn {
        Engine engine; /* first: the engine is the driver */
        Workers *workers;
} PerConn;

static int set_timeout(int fd, int option, uint64_t usec) {
        struct timeval tv = { .tv_sec = (time_t) (usec / 1000000u), .tv_usec = (suseconds_t) (usec % 1000000u) };

        if (setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv)) < 0)
                return -errno;
        return 0;
}

/* A socket timeout is armed only when it must shrink or grow back: a well-behaved client
 * costs no extra system call per line. */
typedef struct Timer {
        int option; /* SO_RCVTIMEO or SO_SNDTIMEO */
        uint64_t armed; /* usec in force; 0: none */
} Timer;

/* How late a timeout may fire rather than pay a setsockopt() per read. */
#define TIMER_SLACK_USEC 20000u

/* timer_arm: the socket's timeout ends at DEADLINE (or within TIMER_SLACK_USEC after it),
 * NOW being the time; false when DEADLINE has passed. The caller loops on EAGAIN: a timeout
 * that fires early only costs a wakeup. */
static bool timer_arm(Session *s, Timer *t, uint64_t deadline, uint64_t now) {
        if (deadline == SESSION_NO_DEADLINE)
                return true;
        if (now >= deadline)
                return false;
        uint64_t left = deadline - now;
        bool rearm = t->armed == 0 || left + TIMER_SLACK_USEC < t->armed || left / 2 > t->armed;
        if (rearm && set_timeout(s->fd, t->option, left) == 0)
                t->armed = left;
        return true;
}

/* flush: writes all of OUT; the client has until the session's write deadline to take it,
 * in total, so that one reading a trickle cannot hold its thread for several timeouts. The
 * first send does not block: when the socket has room, as it nearly always has, no send
 * timeout needs arming (one setsockopt() less per connection, measured with strace -c), and
 * the clock is not read (perf under rr: three clock reads a request cost 3% of the server's
 * time, more than all of hellod's own code). */
static int flush(Session *s, Timer *send_timer) {
        uint64_t deadline = 0;
        bool blocking = false;
        int r = 0;

        while (s->out_off < s->out.len) {
                if (blocking) {
                        uint64_t now = now_usec();
                        if (deadline == 0)
                                deadline = session_write_deadline(s, now);
                        if (!timer_arm(s, send_timer, deadline, now)) {
                                r = -ETIMEDOUT;
                                break;
                        }
                }
                ssize_t n = send(s->fd, s->out.data + s->out_off, s->out.len - s->out_off,
                                 MSG_NOSIGNAL | (blocking ? 0 : MSG_DONTWAIT));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        blocking = true; /* from now on the send timeout bounds the wait */
                        continue;
                }
                if (n < 0) {
                        r = -errno;
                        break;
                }
                s->out_off += (size_t) n;
        }
        s->out.len = s->out_off = 0;
        return r;
}

/* feed: hands one read to the protocol, flushing whenever the output buffer fills. */
static int feed(Session *s, size_t n, ProtoStatus *status, Timer *send_timer) {
        size_t done = 0;

        for (;;) {
                done += proto_feed(&s->proto, s->in + done, n - done, &s->out, status);
                if (done == n || *status == PROTO_CLOSE)
                        return 0;
                int r = flush(s, send_timer);
                if (r < 0)
                        return r;
        }
}

/* converse: greeting, then read → proto → write; returns 0 when the protocol ended the
 * session, or a negative errno when the connection failed under it. */
static int converse(Session *s) {
        Timer recv_timer = { .option = SO_RCVTIMEO }, send_timer = { .option = SO_SNDTIMEO };
        ProtoStatus status = PROTO_CONTINUE;
        uint64_t messages = s->proto.messages, now;
        int r;

        if (!s->resumed) {
                s->deadline = session_idle_deadline(s, now_usec());
                proto_greeting(&s->proto, &s->out);
        }
        if (s->in_len > s->in_off) {
                /* Handed over with replies still to send and input still to answer, or bytes
                 * that came after a PROXY header. */
                size_t n = s->in_len - s->in_off;
                memmove(s->in, s->in + s->in_off, n);
                s->in_off = s->in_len = 0;
                if ((r = flush(s, &send_timer)) < 0 || (r = feed(s, n, &status, &send_timer)) < 0)
                        return r;
        }
        if ((r = flush(s, &send_timer)) < 0)
                return r;
        if (s->proto.end != PROTO_END_NONE)
                status = PROTO_CLOSE;

        /* The clock is read once a round: after the writes (which may have blocked), before
         * the next read; the lines answered so far were activity (session_idle_deadline). */
        now = now_usec();
        if (s->proto.messages != messages)
                s->deadline = session_idle_deadline(s, now);
        while (status == PROTO_CONTINUE) {
                if (session_stop_requested(s)) {
                        /* The lines in hand were answered; the server is going away. */
                        proto_abort(&s->proto, PROTO_END_SHUTDOWN, &s->out);
                        break;
                }
                if (!timer_arm(s, &recv_timer, s->deadline, now)) {
                        proto_abort(&s->proto, PROTO_END_IDLE, &s->out);
                        break;
                }
                ssize_t n = recv(s->fd, s->in, s->in_cap, 0);
                if (n < 0) {
                        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
                                return -errno;
                        now = now_usec(); /* EAGAIN: the receive timeout; timer_arm decides */
                        continue;
                }
                if (n == 0) {
                        if (session_stop_requested(s))
                                proto_abort(&s->proto, PROTO_END_SHUTDOWN, &s->out);
                        else
                                proto_eof(&s->proto, &s->out);
                        break;
                }
                messages = s->proto.messages;
                if ((r = feed(s, (size_t) n, &status, &send_timer)) < 0)
                        return r;
                if ((r = flush(s, &send_timer)) < 0)
                        return r;
                /* A complete line (even an empty one) is activity; bytes of an unfinished
                 * line are not. Re-armed after the writes (session_idle_deadline). */
                now = now_usec();
                if (s->proto.messages != messages)
                        s->deadline = session_idle_deadline(s, now);
        }
        return flush(s, &send_timer);
}

/* linger: send FIN, then discard the client's leftovers until it closes, bounded in time
 * and bytes in total (a client dribbling a byte now and then must not keep its thread). */
static void linger(Session *s) {
        const uint64_t deadline = now_usec() + SESSION_LINGER_USEC;
        Timer recv_timer = { .option = SO_RCVTIMEO };
        char sink[4096];
        size_t total = 0;

        if (shutdown(s->fd, SHUT_WR) < 0)
                return;
        while (total < SESSION_LINGER_BYTES && timer_arm(s, &recv_timer, deadline, now_usec())) {
                ssize_t n = recv(s->fd, sink, sizeof(sink), 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
                        continue;
                if (n <= 0)
                        return;
                total += (size_t) n;
        }
}

/* proxy_header: reads the PROXY header (at most SESSION_PROXY_TIMEOUT_USEC) and hands it to
 * the server; the bytes after it are kept in S->in. false: the session ends here. */
static bool proxy_header(Session *s) {
        const EngineHooks *hooks = &s->engine->hooks;
        const uint64_t deadline = now_usec() + SESSION_PROXY_TIMEOUT_USEC;
        Timer recv_timer = { .option = SO_RCVTIMEO };
        const char *reason = "no PROXY header in time";
        ProxyStatus status = PROXY_INVALID;
        ProxyHeader header;
        size_t used = 0;
        ssize_t n = 0;

        while (timer_arm(s, &recv_timer, deadline, now_usec())) {
                n = recv(s->fd, s->in, s->in_cap, 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
                        continue;
                if (n <= 0) {
                        reason = n == 0 ? "closed before its PROXY header was complete" : strerror(errno);
                        break;
                }
                status = proxy_feed(s->proxy, s->in, (size_t) n, &used, &header, &reason);
                if (status != PROXY_NEED_MORE)
                        break;
        }
        if (!hooks->proxied(hooks->userdata, s, status == PROXY_NEED_MORE ? PROXY_INVALID : status, &header, reason))
                return false;
        s->in_off = used;
        s->in_len = (size_t) n;
        return true;
}

/* run: the whole session on a worker thread, then the engine's done path. */
static void run(Session *s) {
        /* A resumed session may have brought buffers of its own. */
        if (!s->in)
                s->in = malloc(s->in_cap);
        if (!s->out.data)
                s->out.data = malloc(s->out.cap);
        if (!s->in || !s->out.data) {
                session_fail(s, -ENOMEM);
                return;
        }
        if (s->lingering) {
                linger(s);
                return;
        }
        if (s->proxy && !proxy_header(s))
                return;
        int r = converse(s);
        if (r < 0)
                session_fail(s, r);
        else if (session_lingers(s))
                linger(s);
}

static void job_main(void *arg) {
        Session *s = arg;

        run(s);
        engine_session_done(s->engine, s);
}

static int perconn_add(Engine *e, Session *s) {
        return workers_run(((PerConn *) e)->workers, job_main, s);
}

static int perconn_stop(Engine *e, uint64_t timeout_msec) {
        PerConn *p = (PerConn *) e;
        int r = workers_stop(p->workers, timeout_msec);

        if (r < 0)
                return r; /* a job still runs and uses P: leave it to the exiting process */
        free(p);
        return 0;
}

static void perconn_reap(Engine *e) {
        workers_reap(((PerConn *) e)->workers);
}

static void perconn_reconfigure(Engine *e, const Conf *old, const Conf *conf) {
        (void) old;
        /* Threads of the old size retire as they finish; new ones get the new size. */
        workers_set_stack_size(((PerConn *) e)->workers, conf->worker_stack_size);
}

static const EngineOps perconn_ops = {
        .add = perconn_add,
        .stop = perconn_stop,
        .reap = perconn_reap,
        .reconfigure = perconn_reconfigure,
        .nonblocking = false,
        .reads_proxy = true,
};

int perconn_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks) {
        PerConn *p = calloc(1, sizeof(*p));
        int r;

        if (!p)
                return -ENOMEM;
        r = workers_new(&p->workers, conf->worker_stack_size, PERCONN_MAX_IDLE);
        if (r < 0) {
                free(p);
                return r;
        }
        p->engine = (Engine) { .ops = &perconn_ops, .hooks = *hooks };
        *ret = &p->engine;
        return 0;
}
