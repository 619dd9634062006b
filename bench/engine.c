/* engine: one worker thread of hellod-bench: an epoll loop over the connections it owns,
 * driving the rr, churn and hold scenarios.
 *
 * Every connection is lockstep: one message in flight, whose exact expected answer is known
 * before it is sent. Received bytes are compared with it as they arrive; a byte that differs,
 * a byte too many, a close or a reset before the end is an error of its kind, counted, with
 * the first one of each kind kept as an escaped sample. Nothing is ever counted as a success
 * without having been compared. The hot path allocates nothing and makes one send() and one
 * recv() per request (plus the share of epoll_wait() the request has in its batch). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define RXBUF_SIZE 16384
#define MAX_EVENTS 512
#define SWEEP_NS (100 * NSEC_PER_MSEC) /* how often timeouts are looked for */
#define BUSY_LINE "ERR server busy"

enum {
        ST_FREE,    /* no socket: not opened yet, finished, or failed */
        ST_WAIT,    /* expecting exp[got..exp_len) */
        ST_IDLE,    /* connected and greeted, nothing expected: anything received is an error */
        ST_CLOSING, /* exit sent, expecting the server's close */
};

/* What the message in flight is, for the scenario's next move. */
enum {
        STEP_GREETING,
        STEP_REQUEST, /* rr, hold: a request; churn: the seed session's message STEP_REQUEST + i */
        STEP_EXIT = STEP_REQUEST + 3,
};

struct Conn {
        int fd;
        uint32_t gen; /* bumped at every open: tells a stale epoll event from a live one */
        uint32_t id;  /* the connection's number among all threads' */
        uint8_t state, step;
        bool connecting; /* nothing received since connect(): failures are connect failures */
        bool want_out;   /* EPOLLOUT registered: a send did not complete at once */
        uint32_t got, exp_len, tx_off, tx_len;
        const char *exp, *tx;
        uint64_t seq;
        int64_t t_sent;  /* when the message in flight was sent (or connect() started) */
        int64_t t_begin; /* churn: when the session started; hold: when connect() started */
        char *slot;      /* rr, hold: this connection's request and expected reply */
};

int64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec;
}

const char *err_kind_to_string(ErrKind k) {
        static const char *const names[_ERR_MAX] = {
                [ERR_CONNECT_REFUSED] = "connect-refused",
                [ERR_CONNECT_TIMEOUT] = "connect-timeout",
                [ERR_CONNECT] = "connect-failed",
                [ERR_BUSY] = "busy",
                [ERR_SERVER] = "server-error",
                [ERR_UNEXPECTED] = "unexpected",
                [ERR_EOF] = "early-eof",
                [ERR_RESET] = "reset",
                [ERR_TIMEOUT] = "timeout",
                [ERR_IO] = "io",
        };
        return (unsigned) k < _ERR_MAX ? names[k] : "unknown";
}

void escape(char *out, size_t out_size, const char *data, size_t n) {
        size_t o = 0;

        if (out_size < 8) {
                if (out_size)
                        out[0] = '\0';
                return;
        }
        out[o++] = '"';
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char) data[i];
                char tmp[5];
                size_t len;

                if (ch == '\r')
                        len = (size_t) snprintf(tmp, sizeof(tmp), "\\r");
                else if (ch == '\n')
                        len = (size_t) snprintf(tmp, sizeof(tmp), "\\n");
                else if (ch == '"' || ch == '\\')
                        len = (size_t) snprintf(tmp, sizeof(tmp), "\\%c", ch);
                else if (ch < 0x20 || ch >= 0x7f)
                        len = (size_t) snprintf(tmp, sizeof(tmp), "\\x%02x", ch);
                else
                        len = (size_t) snprintf(tmp, sizeof(tmp), "%c", ch);
                if (o + len + 5 > out_size) { /* room for `..."` and the NUL */
                        memcpy(out + o, "...", 3);
                        o += 3;
                        break;
                }
                memcpy(out + o, tmp, len);
                o += len;
        }
        out[o++] = '"';
        out[o] = '\0';
}

/* counter_add: the worker is the only writer, so a relaxed load and store suffice (no locked
 * instruction on the hot path); the main thread only reads. */
static inline void counter_add(_Atomic uint64_t *c, uint64_t n) {
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                              memory_order_relaxed);
}

static char *format_u64(char *end, uint64_t v) {
        do {
                *--end = (char) ('0' + v % 10);
                v /= 10;
        } while (v);
        return end;
}

/* ---------------------------------------------------------------------------------------- */
/* Errors */

static void conn_close(Worker *w, Conn *c) {
        if (c->fd >= 0) {
                close(c->fd); /* also removes it from the epoll set */
                c->fd = -1;
                w->live--;
        }
        c->state = ST_FREE;
        c->want_out = false;
}

__attribute__((format(printf, 4, 5)))
static int conn_fail(Worker *w, Conn *c, ErrKind kind, const char *fmt, ...) {
        if (w->err[kind]++ == 0) {
                va_list ap;

                va_start(ap, fmt);
                vsnprintf(w->sample[kind], SAMPLE_MAX, fmt, ap);
                va_end(ap);
        }
        counter_add(&w->errors, 1);
        conn_close(w, c);
        return -1;
}

static const char *step_name(const Conn *c) {
        switch (c->state) {
        case ST_IDLE:
                return "an idle connection";
        case ST_CLOSING:
                return "exit";
        default:
                return c->step == STEP_GREETING ? "the greeting" : "a request";
        }
}

static int conn_fail_errno(Worker *w, Conn *c, int e, const char *op) {
        ErrKind kind;

        switch (e) {
        case ECONNREFUSED:
                kind = ERR_CONNECT_REFUSED;
                break;
        case ECONNRESET:
        case EPIPE:
                kind = c->connecting && e == EPIPE ? ERR_CONNECT : ERR_RESET;
                break;
        case ETIMEDOUT:
                kind = c->connecting ? ERR_CONNECT_TIMEOUT : ERR_TIMEOUT;
                break;
        default:
                kind = c->connecting ? ERR_CONNECT : ERR_IO;
                break;
        }
        return conn_fail(w, c, kind, "%s (%s, waiting for %s)", strerror(e), op, step_name(c));
}

/* conn_fail_bytes: DATA (N bytes) arrived where it differs from what was expected. An ERR line
 * at the start of a message is the server's refusal, classified by its text. */
static int conn_fail_bytes(Worker *w, Conn *c, const char *data, size_t n) {
        char got[SAMPLE_MAX / 2], want[SAMPLE_MAX / 2];
        const char *what = step_name(c);
        ErrKind kind = ERR_UNEXPECTED;

        if (c->got == 0 && n >= 4 && memcmp(data, "ERR ", 4) == 0) {
                size_t m = n < sizeof(BUSY_LINE) - 1 ? n : sizeof(BUSY_LINE) - 1;

                kind = memcmp(data, BUSY_LINE, m) == 0 ? ERR_BUSY : ERR_SERVER;
        }
        escape(got, sizeof(got), data, n);
        if (c->state == ST_WAIT) {
                escape(want, sizeof(want), c->exp + c->got, c->exp_len - c->got);
                return conn_fail(w, c, kind, "conn %u, %s: got %s, expected %s", c->id, what, got,
                                 want);
        }
        return conn_fail(w, c, kind, "conn %u, after %s: got %s, expected %s", c->id, what, got,
                         c->state == ST_IDLE ? "nothing" : "the server's close");
}

/* ---------------------------------------------------------------------------------------- */
/* Connections */

static inline uint64_t conn_key(const Worker *w, const Conn *c) {
        return (uint64_t) c->gen << 32 | (uint64_t) (c - w->conns);
}

static int conn_set_events(Worker *w, Conn *c, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.u64 = conn_key(w, c) };

        if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
                return conn_fail_errno(w, c, errno, "epoll_ctl");
        return 0;
}

/* bind_local_port: hold binds each socket to a local port it picks itself, walking
 * ip_local_port_range (each worker its own residue class). Left to connect(), the choice
 * costs a search over the ports in use, and Linux searches one parity of the range before
 * the other: past half the range (some 14000 connections to one server with the default
 * range) every connect() scans thousands of ports, and the generator, not the server,
 * becomes what is measured. A port another socket holds (bind() is then EADDRINUSE, at the
 * cost of one hash lookup) is skipped. */
static int bind_local_port(Worker *w, int fd) {
        const Options *opt = w->run->opt;
        unsigned span = opt->port_hi - opt->port_lo + 1, step = opt->threads;

        for (unsigned tries = 0; tries < span / step + 1; tries++) {
                struct sockaddr_storage ss = { .ss_family = opt->addr.ss_family };
                unsigned port = w->next_port;

                w->next_port += step;
                if (w->next_port > opt->port_hi)
                        w->next_port = opt->port_lo + (w->next_port - opt->port_lo) % step;
                if (ss.ss_family == AF_INET6)
                        ((struct sockaddr_in6 *) &ss)->sin6_port = htons((uint16_t) port);
                else
                        ((struct sockaddr_in *) &ss)->sin_port = htons((uint16_t) port);
                if (bind(fd, (struct sockaddr *) &ss, opt->addr_len) == 0)
                        return 0;
                if (errno != EADDRINUSE)
                        return -errno;
        }
        return -EADDRNOTAVAIL;
}

/* conn_open: a non-blocking connect(); the greeting is the first message expected. A refused
 * connection shows up as EPOLLERR, and recv() then reports the reason, so no EPOLLOUT round
 * is needed to learn that the connect completed: the greeting says so. */
static int conn_open(Worker *w, Conn *c, int64_t now) {
        const Options *opt = w->run->opt;
        struct epoll_event ev;
        int fd;

        c->gen++;
        c->connecting = true;
        c->want_out = false;
        c->state = ST_WAIT;
        c->step = STEP_GREETING;
        c->exp = opt->greeting;
        c->exp_len = (uint32_t) opt->greeting_len;
        c->got = 0;
        c->t_sent = c->t_begin = now;

        fd = socket(opt->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                c->state = ST_FREE;
                return conn_fail(w, c, ERR_CONNECT, "socket: %s", strerror(errno));
        }
        c->fd = fd;
        w->live++;
        if (w->run->opt->scenario != SCENARIO_CHURN) {
                /* Long-lived connections: requests must never wait for Nagle (churn's
                 * lockstep never has unacknowledged data when it sends, and the extra
                 * syscall per session would cost). */
                int one = 1;
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        if (opt->port_lo) {
                int r = bind_local_port(w, fd);

                if (r < 0)
                        return conn_fail(w, c, ERR_CONNECT, "conn %u: no free local port: %s", c->id,
                                         strerror(-r));
        }
        if (connect(fd, (const struct sockaddr *) &opt->addr, opt->addr_len) < 0 &&
            errno != EINPROGRESS)
                return conn_fail_errno(w, c, errno, "connect");
        ev.events = EPOLLIN;
        ev.data.u64 = conn_key(w, c);
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
                return conn_fail_errno(w, c, errno, "epoll_ctl");
        return 0;
}

static int conn_flush(Worker *w, Conn *c) {
        while (c->tx_off < c->tx_len) {
                ssize_t r = send(c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK) {
                                if (!c->want_out) {
                                        c->want_out = true;
                                        return conn_set_events(w, c, EPOLLIN | EPOLLOUT);
                                }
                                return 0;
                        }
                        return conn_fail_errno(w, c, errno, "send");
                }
                c->tx_off += (uint32_t) r;
        }
        if (c->want_out) {
                c->want_out = false;
                return conn_set_events(w, c, EPOLLIN);
        }
        return 0;
}

/* conn_send: sends TX (kept until sent) and expects EXP in answer (NULL: the server's close). */
static int conn_send(Worker *w, Conn *c, const char *tx, uint32_t tx_len, const char *exp,
                     uint32_t exp_len, int64_t now) {
        c->tx = tx;
        c->tx_len = tx_len;
        c->tx_off = 0;
        c->exp = exp;
        c->exp_len = exp_len;
        c->got = 0;
        c->state = exp ? ST_WAIT : ST_CLOSING;
        c->t_sent = now;
        return conn_flush(w, c);
}

static int conn_send_exit(Worker *w, Conn *c, int64_t now) {
        c->step = STEP_EXIT;
        return conn_send(w, c, w->tx_msg[3], w->tx_msg_len[3], NULL, 0, now);
}

/* conn_send_request: "n<conn>-<seq>" and its reply, both built in the connection's slot (the
 * reply's prefix is written there once, at init). Names differ per connection and request,
 * so a reply that went to the wrong connection, or came twice, is caught. */
static int conn_send_request(Worker *w, Conn *c, int64_t now) {
        const Options *opt = w->run->opt;
        char name[NAME_MAX_LEN], *p = name + sizeof(name);
        char *tx = c->slot, *exp = c->slot + NAME_MAX_LEN + 2;
        size_t n;

        c->seq++;
        p = format_u64(p, c->seq);
        *--p = '-';
        p = format_u64(p, c->id);
        *--p = 'n';
        n = (size_t) (name + sizeof(name) - p);
        memcpy(tx, p, n);
        memcpy(tx + n, opt->newline, opt->newline_len);
        memcpy(exp + opt->prefix_len, p, n);
        memcpy(exp + opt->prefix_len + n, opt->suffix, opt->suffix_len);
        c->step = STEP_REQUEST;
        return conn_send(w, c, tx, (uint32_t) (n + opt->newline_len), exp,
                         (uint32_t) (opt->prefix_len + n + opt->suffix_len), now);
}

/* ---------------------------------------------------------------------------------------- */
/* Scenarios: what to do once the expected bytes are all there. */

static inline bool in_window(const Run *run, int64_t t) {
        return t >= run->t_measure && t < run->t_end;
}

static int rr_complete(Worker *w, Conn *c, int64_t now) {
        if (c->step == STEP_GREETING && !w->started) {
                c->state = ST_IDLE; /* ready: the run starts when every connection is */
                return 0;
        }
        /* A greeting later than the wait for them (the server was slow) starts its requests
         * at once: left idle, no sweep would end it, and the run would never finish. */
        if (c->step != STEP_GREETING && in_window(w->run, now)) {
                hist_record(&w->hist, (uint64_t) (now - c->t_sent));
                counter_add(&w->completed, 1);
        }
        if (now < w->run->t_end)
                return conn_send_request(w, c, now);
        return conn_send_exit(w, c, now);
}

static int churn_complete(Worker *w, Conn *c, int64_t now) {
        unsigned i = c->step; /* the message just answered: 0 is the greeting */

        if (i < 3) {
                c->step++;
                return conn_send(w, c, w->tx_msg[i], w->tx_msg_len[i], w->exp_msg[i],
                                 w->exp_msg_len[i], now);
        }
        return conn_send_exit(w, c, now);
}

static int hold_complete(Worker *w, Conn *c, int64_t now) {
        if (c->step == STEP_GREETING) {
                hist_record(&w->hist, (uint64_t) (now - c->t_begin));
                counter_add(&w->greeted, 1);
                c->state = ST_IDLE;
                return 0;
        }
        counter_add(&w->completed, 1);
        return conn_send_exit(w, c, now);
}

/* conn_closed_by_server: EOF after exit, as expected: the session is complete. */
static int conn_closed_by_server(Worker *w, Conn *c, int64_t now) {
        conn_close(w, c);
        if (w->run->opt->scenario == SCENARIO_CHURN && in_window(w->run, now)) {
                hist_record(&w->hist, (uint64_t) (now - c->t_begin));
                counter_add(&w->completed, 1);
        }
        return -1;
}

static int conn_read(Worker *w, Conn *c) {
        ssize_t r;
        size_t n;
        int64_t now;

        r = recv(c->fd, w->rxbuf, RXBUF_SIZE, 0);
        if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                        return 0;
                return conn_fail_errno(w, c, errno, "recv");
        }
        now = now_ns();
        if (r == 0) {
                char want[SAMPLE_MAX / 2];

                if (c->state == ST_CLOSING)
                        return conn_closed_by_server(w, c, now);
                if (c->state == ST_IDLE)
                        return conn_fail(w, c, ERR_EOF, "conn %u: closed by the server while idle",
                                         c->id);
                escape(want, sizeof(want), c->exp, c->exp_len);
                return conn_fail(w, c, ERR_EOF, "conn %u: closed by the server after %u of %u bytes of %s",
                                 c->id, c->got, c->exp_len, want);
        }
        n = (size_t) r;
        c->connecting = false;
        if (c->state != ST_WAIT || n > c->exp_len - c->got ||
            memcmp(w->rxbuf, c->exp + c->got, n) != 0)
                return conn_fail_bytes(w, c, w->rxbuf, n);
        c->got += (uint32_t) n;
        if (c->got < c->exp_len)
                return 0; /* the rest is on its way */
        switch (w->run->opt->scenario) {
        case SCENARIO_RR:
                return rr_complete(w, c, now);
        case SCENARIO_CHURN:
                return churn_complete(w, c, now);
        case SCENARIO_HOLD:
                return hold_complete(w, c, now);
        }
        return 0;
}

/* conn_timeout: no complete answer within --timeout. Whether the TCP handshake itself never
 * completed (connect timeout) or the server accepted and said nothing is told by the socket's
 * state, asked only here, off the hot path. */
static int conn_timeout(Worker *w, Conn *c, int64_t now) {
        double ms = (double) (now - c->t_sent) / 1e6;

        if (c->connecting) {
                struct tcp_info ti;
                socklen_t len = sizeof(ti);

                if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
                    ti.tcpi_state == TCP_SYN_SENT)
                        return conn_fail(w, c, ERR_CONNECT_TIMEOUT,
                                         "conn %u: connect not completed after %.0f ms", c->id, ms);
        }
        if (c->state == ST_CLOSING)
                return conn_fail(w, c, ERR_TIMEOUT,
                                 "conn %u: not closed by the server %.0f ms after exit", c->id, ms);
        return conn_fail(w, c, ERR_TIMEOUT, "conn %u: %u of %u bytes of %s after %.0f ms", c->id,
                         c->got, c->exp_len, step_name(c), ms);
}

/* ---------------------------------------------------------------------------------------- */
/* The loop */

static void restart_if_running(Worker *w, Conn *c, int64_t now);

static void on_event(Worker *w, const struct epoll_event *ev) {
        Conn *c = &w->conns[(uint32_t) ev->data.u64];
        int r = 0;

        if (c->fd < 0 || c->gen != (uint32_t) (ev->data.u64 >> 32))
                return; /* closed (and maybe reopened) earlier in this batch */
        if ((ev->events & EPOLLOUT) && c->want_out)
                r = conn_flush(w, c);
        if (r == 0 && (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                r = conn_read(w, c);
        if (r < 0)
                restart_if_running(w, c, now_ns());
}

static void sweep_timeouts(Worker *w, int64_t now) {
        int64_t timeout = w->run->opt->timeout_ns;

        for (unsigned i = 0; i < w->n_conns; i++) {
                Conn *c = &w->conns[i];

                if ((c->state == ST_WAIT || c->state == ST_CLOSING) && now - c->t_sent > timeout) {
                        (void) conn_timeout(w, c, now);
                        restart_if_running(w, c, now);
                }
        }
}

/* poll_once: one epoll_wait() and its events, plus the timeout sweep when due; false when the
 * thread cannot go on (epoll_wait itself failed). */
static bool poll_once(Worker *w, int timeout_ms, int64_t *next_sweep) {
        struct epoll_event evs[MAX_EVENTS];
        int64_t now;
        int n;

        n = epoll_wait(w->epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
                if (errno == EINTR)
                        return true;
                w->setup_error = -errno;
                return false;
        }
        for (int i = 0; i < n; i++)
                on_event(w, &evs[i]);
        now = now_ns();
        if (now >= *next_sweep) {
                sweep_timeouts(w, now);
                *next_sweep = now + SWEEP_NS;
        }
        return true;
}

/* restart_if_running: churn slots start a new session as long as the run lasts, after a
 * success as after a failure (failures are counted, never hidden by a slot that gave up). */
static void restart_if_running(Worker *w, Conn *c, int64_t now) {
        if (w->run->opt->scenario != SCENARIO_CHURN || c->state != ST_FREE || now >= w->run->t_end)
                return;
        if (conn_open(w, c, now) < 0)
                return; /* counted; the sweep's next pass or the next event retries */
}

static int ms_until(int64_t t, int64_t now, int cap) {
        int64_t ms;

        if (t <= now)
                return 0;
        ms = (t - now + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC;
        return ms < cap ? (int) ms : cap;
}

static void start_together(Worker *w) {
        pthread_barrier_wait(&w->run->ready);
        pthread_barrier_wait(&w->run->go); /* the main thread set the timeline between the two */
}

static void run_rr(Worker *w) {
        int64_t next_sweep = 0, deadline = now_ns() + w->run->opt->timeout_ns;
        unsigned pending;

        /* Connect everything and read every greeting before the clock starts. */
        for (unsigned i = 0; i < w->n_conns; i++)
                (void) conn_open(w, &w->conns[i], now_ns());
        for (;;) {
                pending = 0;
                for (unsigned i = 0; i < w->n_conns; i++)
                        pending += w->conns[i].state == ST_WAIT;
                if (pending == 0 || now_ns() > deadline + SWEEP_NS)
                        break;
                if (!poll_once(w, 10, &next_sweep))
                        break;
        }
        start_together(w);
        w->started = true;
        for (unsigned i = 0; i < w->n_conns; i++)
                if (w->conns[i].state == ST_IDLE)
                        (void) conn_send_request(w, &w->conns[i], now_ns());
        while (w->live > 0) {
                int64_t now = now_ns();
                int ms = ms_until(now < w->run->t_end ? w->run->t_end : next_sweep, now, 100);

                if (!poll_once(w, ms, &next_sweep))
                        break;
        }
}

static void run_churn(Worker *w) {
        int64_t next_sweep = 0, now;

        start_together(w);
        now = now_ns();
        for (unsigned i = 0; i < w->n_conns; i++)
                (void) conn_open(w, &w->conns[i], now);
        for (;;) {
                now = now_ns();
                if (now < w->run->t_end) {
                        /* Slots whose connect failed at once wait for the next pass. */
                        for (unsigned i = 0; i < w->n_conns && w->live < w->n_conns; i++)
                                restart_if_running(w, &w->conns[i], now);
                } else if (w->live == 0) {
                        break;
                }
                if (!poll_once(w, ms_until(w->run->t_end, now, 100), &next_sweep))
                        break;
        }
}

static void run_hold(Worker *w) {
        const Options *opt = w->run->opt;
        double rate = opt->rate / opt->threads;
        int64_t next_sweep = 0, t0, now;
        unsigned opened = 0;
        bool ramped = false, checked = false;

        start_together(w);
        t0 = now_ns();
        for (;;) {
                now = now_ns();
                if (opened < w->n_conns) {
                        /* Bounded connect rate: as many as the time since the start allows. */
                        double allowed = rate > 0 ? (double) (now - t0) / 1e9 * rate + 1 : 1e18;

                        while (opened < w->n_conns && opened < allowed) {
                                (void) conn_open(w, &w->conns[opened], now);
                                opened++;
                                counter_add(&w->opened, 1);
                        }
                }
                if (!ramped && opened == w->n_conns) {
                        unsigned pending = 0;

                        for (unsigned i = 0; i < w->n_conns; i++)
                                pending += w->conns[i].state == ST_WAIT;
                        if (pending == 0) {
                                ramped = true;
                                w->t_ramped = now;
                                atomic_fetch_add(&w->run->ramped, 1);
                        }
                }
                if (!checked && atomic_load(&w->run->hold_phase) == HOLD_CHECK) {
                        checked = true;
                        for (unsigned i = 0; i < w->n_conns; i++)
                                if (w->conns[i].state == ST_IDLE)
                                        (void) conn_send_request(w, &w->conns[i], now);
                }
                if (checked && w->live == 0)
                        break;
                if (!poll_once(w, opened < w->n_conns ? 1 : 50, &next_sweep))
                        break;
        }
}

void *worker_main(void *arg) {
        Worker *w = arg;

        switch (w->run->opt->scenario) {
        case SCENARIO_RR:
                run_rr(w);
                break;
        case SCENARIO_CHURN:
                run_churn(w);
                break;
        case SCENARIO_HOLD:
                run_hold(w);
                break;
        }
        /* Whatever is still open (epoll_wait failed): closed, and counted if unfinished. */
        for (unsigned i = 0; i < w->n_conns; i++)
                if (w->conns[i].fd >= 0)
                        (void) conn_fail(w, &w->conns[i], ERR_IO, "conn %u: abandoned: %s",
                                         w->conns[i].id, strerror(-w->setup_error));
        atomic_fetch_add(&w->run->finished, 1);
        return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up */

/* build_msg: MSG + the request terminator, and the expected reply prefix + MSG + suffix,
 * appended at *P. */
static void build_msg(Worker *w, char **p, unsigned i, const char *msg) {
        const Options *opt = w->run->opt;
        size_t n = strlen(msg);

        w->tx_msg[i] = *p;
        w->tx_msg_len[i] = (uint32_t) (n + opt->newline_len);
        memcpy(*p, msg, n);
        memcpy(*p + n, opt->newline, opt->newline_len);
        *p += n + opt->newline_len;
        if (i >= 3)
                return;
        w->exp_msg[i] = *p;
        w->exp_msg_len[i] = (uint32_t) (opt->prefix_len + n + opt->suffix_len);
        memcpy(*p, opt->prefix, opt->prefix_len);
        memcpy(*p + opt->prefix_len, msg, n);
        memcpy(*p + opt->prefix_len + n, opt->suffix, opt->suffix_len);
        *p += w->exp_msg_len[i];
}

int worker_init(Worker *w, Run *run, unsigned index) {
        const Options *opt = run->opt;
        static const char *const seed[] = { "Michael", "Tracy", "Sarah", "exit" };
        char *p;

        memset(w, 0, sizeof(*w));
        w->run = run;
        w->index = index;
        w->epfd = -1;
        hist_init(&w->hist);
        w->n_conns = opt->connections / opt->threads + (index < opt->connections % opt->threads);

        w->next_port = opt->port_lo + index;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (w->epfd < 0)
                return -errno;
        w->rxbuf = malloc(RXBUF_SIZE);
        w->msgs = malloc(4 * (opt->newline_len + 8) + 3 * (opt->prefix_len + opt->suffix_len + 8));
        w->conns = calloc(w->n_conns ? w->n_conns : 1, sizeof(Conn));
        /* Slot: request (name, terminator) at 0, expected reply at NAME_MAX_LEN + 2. */
        w->slot_size = (NAME_MAX_LEN + 2 + opt->prefix_len + NAME_MAX_LEN + opt->suffix_len + 15) &
                       ~(size_t) 15;
        if (opt->scenario != SCENARIO_CHURN)
                w->arena = malloc(w->slot_size * (w->n_conns ? w->n_conns : 1));
        if (!w->rxbuf || !w->msgs || !w->conns || (opt->scenario != SCENARIO_CHURN && !w->arena))
                return -ENOMEM;

        p = w->msgs;
        for (unsigned i = 0; i < 4; i++)
                build_msg(w, &p, i, seed[i]);

        for (unsigned i = 0; i < w->n_conns; i++) {
                Conn *c = &w->conns[i];

                c->fd = -1;
                c->id = index + i * opt->threads;
                c->state = ST_FREE;
                if (w->arena) {
                        c->slot = w->arena + i * w->slot_size;
                        memcpy(c->slot + NAME_MAX_LEN + 2, opt->prefix, opt->prefix_len);
                }
        }
        return 0;
}

void worker_done(Worker *w) {
        for (unsigned i = 0; w->conns && i < w->n_conns; i++)
                if (w->conns[i].fd >= 0)
                        close(w->conns[i].fd);
        if (w->epfd >= 0)
                close(w->epfd);
        free(w->conns);
        free(w->arena);
        free(w->msgs);
        free(w->rxbuf);
        w->conns = NULL;
        w->arena = w->msgs = w->rxbuf = NULL;
        w->epfd = -1;
}
