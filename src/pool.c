/* pool: the event-driven driver: N epoll loops, each serving many non-blocking sessions.
 *
 * Accepting: every loop has every listener in its epoll set with EPOLLEXCLUSIVE, so the
 * kernel wakes one idle loop per new connection, and the loop that accepts a connection
 * serves it: no hand-off between threads, no accept thread. Admission (limits, access lists)
 * is the server's, through its hooks, under its lock, so it is exact across loops. The
 * listener set is published by the server (pool_set_listeners) and taken up by each loop at
 * the top of its next round; the server waits until every loop has let go of the previous set
 * before it closes any of its sockets. A loop stops accepting (takes the listeners out of its
 * set) while it is out of descriptors (for ENGINE_ACCEPT_PAUSE_USEC) and, with overload =
 * "queue", while every slot is taken (until the server says one freed). A listener whose
 * accept() fails for a reason of its own is taken out alone, for as long (ListenerFault).
 *
 * Ownership: from the moment a loop starts a session (accepted there, or handed over by
 * loopset_add()), only that loop's thread touches it, until engine_session_done() hands it
 * back. Every function below that can end a session returns a Fate, and GONE means the
 * session is freed: the caller returns at once without touching it.
 *
 * Per request the loop makes one recv() and one send(): input is read into the loop's
 * scratch buffer and replies are built in its scratch output buffer; a session keeps
 * buffers of its own only while it has input it could not consume yet or output the client
 * has not taken (then it stops reading until the output is gone: back-pressure). An idle
 * session costs its Session struct and nothing else (and, behind a PROXY listener, the
 * header's parser until the header is in, without a buffer of the conversation).
 *
 * Sessions are edge-triggered (EPOLLET): an event says something new arrived (or room to
 * write), not that something is there. Fairness: a session gets READS_PER_EVENT rounds per
 * turn. When its turn ends with more to do (input kept in its own buffer, a read that
 * filled the buffer and so probably left more in the kernel, or an edge taken while the kept
 * input was being answered, with nothing read since), no event would bring it back:
 * it goes on the loop's ready list and gets another turn after the next poll (which then does
 * not wait).
 *
 * With handover = "always" (a stored session) a partial line is left in the kernel, read
 * with MSG_PEEK and taken only with its line end, so that a crash of this process loses none
 * of what the client sent (docs/zero-downtime.md). Edge triggering is what lets such a
 * session wait for the rest of its line with bytes still unread.
 *
 * Urgent data (MSG_OOB; telnet sends its Synch so): the kernel ends every read at an urgent
 * byte's mark, so a short read does not say that nothing is left, and what is queued behind
 * the mark brings no new edge. A reading session is also told of urgent data (EPOLLPRI, in
 * READING); after that, every read that took something is followed by another, until one
 * finds nothing (Session.urgent). Other sessions pay nothing for it. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "engine.h"
#include "log.h"
#include "loopset.h"

#define EVENTS_MAX 256
/* Reads per turn for one session before the loop turns to the others. */
#define READS_PER_EVENT 8
/* Connections accepted per listener event before the loop turns to its sessions. */
#define ACCEPT_BATCH 16
/* epoll data of a listener: its (aligned) address with the low bit set; sessions have it
 * clear; the loop's eventfd is 0. */
#define LISTENER_TAG 1u
/* A session's interest: its input (and urgent data: see the top), or room for its output. */
#define READING (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLET)
#define WRITING (EPOLLOUT | EPOLLRDHUP | EPOLLET)

typedef enum Fate {
        ALIVE,
        GONE, /* ended and freed: do not touch */
} Fate;

/* ListenerFault: a listener of the loop whose accept() failed for a reason of its own
 * (ACCEPT_FAILED: shut down, say): out of the loop's epoll set until RETRY_AT, while the other
 * listeners go on (pausing them all, as for descriptors, starved them: the failing one came
 * first in every batch after the pause). */
typedef struct ListenerFault {
        uint64_t retry_at; /* usec; 0: in the set whenever the loop is attached */
        bool failing;      /* logged: failed, and has not accepted since */
} ListenerFault;

typedef struct Loop {
        LoopBase base; /* first: the shared part (loopset.h) */
        int epoll_fd;

        /* Loop thread only. */
        Deadlines deadlines; /* running sessions (Session.timer) */
        Session *ready;        /* sessions with kept input waiting for a turn ... */
        Session *ready_now;    /* ... and those taking it now (run_ready) */
        char *in_buf, *out_buf;
        size_t in_cap, out_cap;
        const Listener *listening; /* the listener set this loop accepts from ... */
        size_t n_listening;
        uint64_t listen_gen;  /* ... its generation */
        bool attached;        /* ... and whether it is in the epoll set now */
        bool exiting;         /* the pool is stopping: accept nothing more */
        bool handing_over;    /* the pool is handing its sessions over: pass them on, then exit */
        bool waiting_slot;    /* overload = "queue": every slot taken */
        uint64_t paused_until; /* usec: out of descriptors; 0: not paused */
        ListenerFault *faults; /* one a listening entry; NULL: no memory for them (a failure then
                                * pauses every listener, as running out of descriptors does) */
        uint64_t retry_at;     /* usec: the earliest ListenerFault.retry_at, or earlier; 0: none */
        /* usec: read once as each turn begins (after epoll_wait) and again before the deadlines
         * run, as nginx and Redis do. A deadline set during a turn counts from the turn's
         * start, a few microseconds early; a clock read a request cost ~1% of a round trip. */
        uint64_t now;
        /* overload = "queue": a client accepted as another loop took the last slot waits here,
         * as it would have in the backlog, until a slot frees; -1: none. */
        int queued_fd;
        struct sockaddr_storage queued_peer;
        Listener queued_via; /* a copy: the client may outlive its listener set (a reload) */
} Loop;

typedef struct Pool {
        LoopSet set; /* first: the engine, the loops, the listeners */
} Pool;

static const EngineHooks *hooks_of(const Loop *l) {
        return &l->base.set->engine.hooks;
}

/* ---- the loop's sessions, ordered by deadline ---- */

static Session *session_of(Deadline *d) {
        return DEADLINE_OWNER(d, Session, timer);
}

static void set_deadline(Loop *l, Session *s, uint64_t deadline) {
        deadlines_set(&l->deadlines, &s->timer, deadline);
}

/* ---- the ready list: kept input that no event will announce ---- */

static void ready_push(Loop *l, Session *s) {
        if (s->ready)
                return;
        s->ready = true;
        s->ready_prev = NULL;
        s->ready_next = l->ready;
        if (l->ready)
                l->ready->ready_prev = s;
        l->ready = s;
}

/* ready_remove: S off the list it is on, the one waiting or the one taking its turn: doubly
 * linked, so that sessions ending while many others have kept input (a pipelining crowd) do
 * not each walk all of them. */
static void ready_remove(Loop *l, Session *s) {
        if (!s->ready)
                return;
        if (s->ready_next)
                s->ready_next->ready_prev = s->ready_prev;
        if (s->ready_prev)
                s->ready_prev->ready_next = s->ready_next;
        else if (l->ready == s)
                l->ready = s->ready_next;
        else
                l->ready_now = s->ready_next;
        s->ready = false;
        s->ready_prev = s->ready_next = NULL;
}

/* ---- one session ---- */

static int set_interest(Loop *l, Session *s, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.ptr = s };

        return epoll_ctl(l->epoll_fd, EPOLL_CTL_MOD, s->fd, &ev) < 0 ? -errno : 0;
}

/* finish: the one way out. R: the I/O failure that ended it, or 0. */
static Fate finish(Loop *l, Session *s, int r) {
        /* Closing the socket takes it out of the epoll set only when it is the last
         * descriptor of the connection: one systemd keeps in its store (handover = "always",
         * or a resumed one until PID 1 drops its copy) would go on reporting events for a
         * freed session. So would one whose renaming at its end (EngineHooks.ending) took it
         * out of the store and failed to put it back: PID 1 may not have dropped it yet.
         * Otherwise no EPOLL_CTL_DEL: the done path closes the socket, and nothing in this
         * loop runs in between. */
        if (s->stored || s->stored_ended || s->resumed)
                (void) epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, s->fd, NULL);
        deadlines_remove(&l->deadlines, &s->timer);
        ready_remove(l, s);
        if (r < 0)
                session_fail(s, r);
        __atomic_sub_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
        engine_session_done(&l->base.set->engine, s);
        return GONE;
}

/* send_out: OUT (scratch) to the client; what it does not take now is kept in the
 * session, the loop waits for EPOLLOUT and the write deadline runs. */
static int send_out(Loop *l, Session *s, const Buf *out) {
        ssize_t n = 0;

        if (out->len == 0)
                return 0;
        n = send(s->fd, out->data, out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        return -errno;
                n = 0;
        }
        if ((size_t) n == out->len)
                return 0;
        if (!s->out.data && !(s->out.data = malloc(s->out.cap)))
                return -ENOMEM;
        memcpy(s->out.data, out->data + n, out->len - (size_t) n);
        s->out.len = out->len - (size_t) n;
        s->out_off = 0;
        s->want_write = true;
        set_deadline(l, s, session_write_deadline(s, l->now));
        return set_interest(l, s, WRITING);
}

/* flush_kept: 1 when the kept output is gone, 0 when the client still lags, or -errno. */
static int flush_kept(Loop *l, Session *s) {
        while (s->out_off < s->out.len) {
                ssize_t n = send(s->fd, s->out.data + s->out_off, s->out.len - s->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
                }
                s->out_off += (size_t) n;
        }
        /* A session that caught up holds no buffer: an idle one costs its struct alone. */
        free(s->out.data);
        s->out.data = NULL;
        s->out.len = s->out_off = 0;
        s->want_write = false;
        /* The client took its replies: that is progress, not idleness. */
        set_deadline(l, s, session_idle_deadline(s, l->now));
        /* Input (or urgent data) that came meanwhile: EPOLL_CTL_MOD reports it as a new event. */
        int r = set_interest(l, s, READING);
        return r < 0 ? r : 1;
}

/* keep_input: the N bytes at DATA that the protocol could not take yet (the output was
 * full), kept in the session's own buffer. */
static int keep_input(Session *s, const char *data, size_t n) {
        if (s->in && data >= s->in && data < s->in + s->in_cap) {
                s->in_off = (size_t) (data - s->in); /* already ours: just advance */
                return 0;
        }
        if (!s->in && !(s->in = malloc(s->in_cap)))
                return -ENOMEM;
        memmove(s->in, data, n);
        s->in_off = 0;
        s->in_len = n;
        return 0;
}

static bool has_kept_input(const Session *s) {
        return s->in_len > s->in_off;
}

/* client_gone: the client has closed its side and nothing of it is left unread: closing now
 * cannot answer anything with a reset, so the lingering close has nothing to wait for. */
static bool client_gone(Loop *l, Session *s) {
        ssize_t n;

        if (!s->peer_shut)
                return false;
        while ((n = recv(s->fd, l->in_buf, l->in_cap, MSG_DONTWAIT)) > 0)
                ;
        return n == 0;
}

/* conclude: the protocol has ended and its last words are sent: linger or close. */
static Fate conclude(Loop *l, Session *s) {
        if (!session_lingers(s))
                return finish(l, s, 0);
        if (client_gone(l, s) || !engine_send_fin(&l->base.set->engine, s))
                return finish(l, s, 0);
        s->lingering = true;
        s->in_off = s->in_len = 0; /* from here on in_len counts what was discarded */
        session_linger_begin(&s->linger, s->fd, 0, l->now);
        /* A turn at once: edge-triggered, what already waits in the kernel brings no new event,
         * and with the window shut (the client pipelined while its replies backed up) neither
         * its next bytes nor its FIN can come. */
        ready_push(l, s);
        set_deadline(l, s, l->now + SESSION_LINGER_USEC);
        return ALIVE;
}

/* linger: a turn of reading away what the client still sends (session_linger_turn). */
static Fate linger(Loop *l, Session *s) {
        switch (session_linger_turn(s->fd, l->in_buf, l->in_cap, &s->in_len)) {
        case LINGER_DONE:
                return finish(l, s, 0);
        case LINGER_MORE:
                ready_push(l, s); /* edge-triggered: what is left brings no new event */
                return ALIVE;
        case LINGER_WAIT:
        default:
                return ALIVE;
        }
}

/* conclude_when_sent: the conversation has ended: conclude() now, or once the client has taken
 * its last replies, its store's name saying so meanwhile (EngineHooks.ending). */
static Fate conclude_when_sent(Loop *l, Session *s) {
        const EngineHooks *hooks = hooks_of(l);

        if (!s->want_write)
                return conclude(l, s);
        if (s->stored)
                hooks->ending(s, hooks->userdata);
        return ALIVE;
}

/* end_with: the protocol's closing words (EOF answer, ERR line), then conclude once they
 * are sent. */
static Fate end_with(Loop *l, Session *s, ProtoEnd reason) {
        Buf out = { .data = l->out_buf, .cap = s->out.cap };

        if (reason == PROTO_END_EOF)
                proto_eof(&s->proto, &out);
        else
                proto_abort(&s->proto, reason, &out);
        int r = send_out(l, s, &out);
        if (r < 0)
                return finish(l, s, r);
        return conclude_when_sent(l, s);
}

/* read_lines: the read of a stored session: peeked first, then what session_lines_taken()
 * says. Returns as recv(), or -1 with EAGAIN while a partial line waits for its end; *MORE:
 * bytes may be left in the kernel (the peek filled the buffer, whole lines were taken and more
 * follows, or a partial line was taken as it is: session_line_end_awaited says when), which
 * no new edge will announce. */
static ssize_t read_lines(Loop *l, Session *s, bool *more) {
        ssize_t k = recv(s->fd, l->in_buf, s->in_cap, MSG_PEEK);

        *more = false;
        if (k == 0) /* the end: session_read_end */
                return session_read_end(s, l->in_buf, s->in_cap);
        if (k < 0)
                return k;
        size_t take = session_lines_taken(s, l->in_buf, (size_t) k);
        if (take == 0 && session_line_end_awaited(s)) {
                errno = EAGAIN; /* the next bytes bring a new edge */
                return -1;
        }
        *more = (size_t) k == s->in_cap || take < (size_t) k;
        if (take == 0) /* a partial line not to wait for (session_line_end_awaited) */
                take = (size_t) k;
        return recv(s->fd, l->in_buf, take, 0);
}

static ssize_t read_once(Loop *l, Session *s, bool *left) {
        return session_reads_lines(s) ? read_lines(l, s, left) : recv(s->fd, l->in_buf, s->in_cap, 0);
}

/* read_input: the session's next read. After urgent data, one that found nothing is made
 * again: while a signal is pending for the thread (a SIGSTOP, the cgroup freezer), the kernel
 * returns EAGAIN at an urgent byte's mark without passing it, and what is queued behind it
 * gets no new edge. The signal is taken on the way back, so the second read passes the mark. */
static ssize_t read_input(Loop *l, Session *s, bool *left) {
        ssize_t k = read_once(l, s, left);

        if (k < 0 && errno == EAGAIN && s->urgent)
                k = read_once(l, s, left);
        return k;
}

/* proxy_refused: the header is malformed, late, or the connection ended before it. */
static Fate proxy_refused(Loop *l, Session *s, const char *reason) {
        const EngineHooks *hooks = hooks_of(l);

        (void) hooks->proxied(hooks->userdata, s, PROXY_INVALID, NULL, reason);
        return finish(l, s, 0);
}

/* serve_proxy: a peek while the PROXY header is awaited, and what session_proxy_take() says
 * read; once the header is in and the server admits the client it names, the greeting. The
 * bytes after the header wait in the kernel for the first read of the conversation. */
static Fate serve_proxy(Loop *l, Session *s, bool *more) {
        const EngineHooks *hooks = hooks_of(l);
        const char *reason = NULL;
        ProxyHeader header;
        ProxyStatus status;
        ssize_t k = recv(s->fd, l->in_buf, s->in_cap, MSG_PEEK);

        *more = false;
        if (k == 0)
                return proxy_refused(l, s, "closed before its PROXY header was complete");
        if (k < 0) /* a reset, say: refused, as a close before the header is (perconn.c) */
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? ALIVE
                                                                                : proxy_refused(l, s, strerror(errno));
        ssize_t taken = session_proxy_take(s, l->in_buf, (size_t) k, &status, &header, &reason);
        if (taken < 0)
                return proxy_refused(l, s, reason);
        if (status == PROXY_NEED_MORE) {
                *more = (size_t) k == s->in_cap || s->urgent || s->peer_shut; /* edge-triggered: see serve_once */
                return ALIVE;
        }
        if (!hooks->proxied(hooks->userdata, s, status, &header, reason))
                return finish(l, s, 0);

        Buf out = { .data = l->out_buf, .cap = s->out.cap };
        proto_greeting(&s->proto, &out);
        int r = send_out(l, s, &out);
        if (r < 0)
                return finish(l, s, r);
        if (!s->want_write)
                set_deadline(l, s, session_idle_deadline(s, l->now));
        /* Edge-triggered: the bytes behind the header, more than a full peek saw, or the
         * client's FIN behind the header bring no new event (see serve_once). */
        s->unread = k > taken || (size_t) k == s->in_cap || s->urgent;
        *more = !s->want_write && (s->unread || s->peer_shut);
        return ALIVE;
}

/* serve_once: one round: a read (or the kept input) through the protocol, the replies out.
 * *MORE: whether another round may find more to do right away. */
static Fate serve_once(Loop *l, Session *s, bool *more) {
        bool kept = has_kept_input(s);
        const char *data = kept ? s->in + s->in_off : l->in_buf;
        size_t n = kept ? s->in_len - s->in_off : 0;
        ProtoStatus status;
        int r = 0;

        *more = false;
        if (session_stop_requested(s))
                return s->proxy ? proxy_refused(l, s, NULL) : end_with(l, s, PROTO_END_SHUTDOWN);
        if (s->proxy)
                return serve_proxy(l, s, more);
        if (!kept) {
                bool left = false;
                ssize_t k = read_input(l, s, &left);
                if (k == 0)
                        return end_with(l, s, session_stop_requested(s) ? PROTO_END_SHUTDOWN : PROTO_END_EOF);
                s->unread = left || (k > 0 && ((size_t) k == s->in_cap || s->urgent));
                if (k < 0) {
                        s->urgent = false; /* read to the end (or failed) */
                        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? ALIVE
                                                                                        : finish(l, s, -errno);
                }
                n = (size_t) k;
        }

        Buf out = { .data = l->out_buf, .cap = s->out.cap };
        uint64_t messages = s->proto.messages;
        size_t used = proto_feed(&s->proto, data, n, &out, &status);
        if (status == PROTO_CONTINUE && used < n) {
                r = keep_input(s, data + used, n - used);
        } else { /* fed to the end: the kept input's buffer goes back, as the output's does */
                free(s->in);
                s->in = NULL;
                s->in_off = s->in_len = 0;
        }
        if (r == 0)
                r = send_out(l, s, &out);
        if (r < 0)
                return finish(l, s, r);
        if (status == PROTO_CLOSE)
                return conclude_when_sent(l, s);
        if (s->proto.messages != messages && !s->want_write)
                set_deadline(l, s, session_idle_deadline(s, l->now));
        /* Back-pressure: nothing more is read until the client takes its replies. A read
         * that filled the buffer probably left more in the kernel; after the client's FIN a
         * short read did not take the end of the stream, and no new edge will come for it. */
        *more = !s->want_write && (has_kept_input(s) || s->unread || s->peer_shut);
        return ALIVE;
}

/* serve: a turn of up to READS_PER_EVENT rounds. */
static Fate serve(Loop *l, Session *s) {
        bool more = !s->want_write; /* output first: new replies must not overtake kept ones */

        for (int round = 0; round < READS_PER_EVENT && more; round++)
                if (serve_once(l, s, &more) == GONE)
                        return GONE;
        /* Edge-triggered: what is left now (kept input, or unread bytes after a full read)
         * brings no new event; without this the session would wait for the idle timeout. */
        if (more)
                ready_push(l, s);
        return ALIVE;
}

static Fate on_event(Loop *l, Session *s) {
        if (s->lingering)
                return linger(l, s);
        if (!s->want_write)
                return serve(l, s);
        int r = flush_kept(l, s);
        if (r < 0)
                return finish(l, s, r);
        if (r == 0)
                return ALIVE;
        if (s->proto.end != PROTO_END_NONE)
                return conclude(l, s);
        return serve(l, s);
}

static Fate on_deadline(Loop *l, Session *s) {
        if (s->proxy)
                return proxy_refused(l, s, "no PROXY header in time");
        if (s->lingering) { /* its second is up; more while the client still takes its replies */
                uint64_t next = session_linger_next(&s->linger, s->fd, s->in_len, l->now);
                if (next == 0)
                        return finish(l, s, 0);
                set_deadline(l, s, next);
                return ALIVE;
        }
        if (s->want_write) /* the client stopped reading its replies */
                return finish(l, s, -ETIMEDOUT);
        /* Idle: the ERR line; if the client does not take it, send_out() gave it the last
         * short grace (session_write_deadline), and the next deadline finishes it. */
        return end_with(l, s, PROTO_END_IDLE);
}

/* grow: the scratch buffers fit every session's sizes (they differ across reloads). */
static int grow(char **buf, size_t *cap, size_t want) {
        if (*cap >= want)
                return 0;
        char *p = realloc(*buf, want);
        if (!p)
                return -ENOMEM;
        *buf = p;
        *cap = want;
        return 0;
}

static Fate start(Loop *l, Session *s) {
        struct epoll_event ev = { .events = s->want_write ? WRITING : READING, .data.ptr = s };
        Buf out;
        int r;

        set_deadline(l, s, s->resumed ? s->timer.at : session_idle_deadline(s, l->now));
        if ((r = grow(&l->in_buf, &l->in_cap, s->in_cap)) < 0 || (r = grow(&l->out_buf, &l->out_cap, s->out.cap)) < 0)
                return finish(l, s, r);
        /* The socket was accepted non-blocking, and TCP_NODELAY came from its listener (a
         * resumed one is made non-blocking by the server). */
        if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
                return finish(l, s, -errno);
        if (s->proxy) {
                /* A PROXY listener: the balancer's header first, the greeting after it. */
                set_deadline(l, s, l->now + SESSION_PROXY_TIMEOUT_USEC);
                return ALIVE;
        }
        if (s->resumed) {
                /* Greeted by the process that handed it over: go on where it was. An io_uring
                 * loop can hand over a conversation that has ended with its last words sent,
                 * before it concluded. */
                if (s->proto.end != PROTO_END_NONE && !s->lingering)
                        return conclude_when_sent(l, s); /* if stored, renamed ended now */
                if (has_kept_input(s) && !s->want_write && !s->lingering)
                        ready_push(l, s);
                return ALIVE;
        }

        out = (Buf) { .data = l->out_buf, .cap = s->out.cap };
        proto_greeting(&s->proto, &out);
        r = send_out(l, s, &out);
        return r < 0 ? finish(l, s, r) : ALIVE;
}

/* take_incoming: the queued sessions, oldest first; false when the loop should exit. */
static bool take_incoming(Loop *l, Session **ret) {
        eventfd_t ignored;

        (void) eventfd_read(l->base.wake_fd, &ignored);
        return loopset_take_incoming(&l->base, ret);
}

static int poll_timeout(const Loop *l) {
        uint64_t wake = deadlines_next_at(&l->deadlines); /* SESSION_NO_DEADLINE: none */

        if (l->ready)
                return 0;
        if (l->paused_until != 0 && l->paused_until < wake)
                wake = l->paused_until;
        if (l->attached && l->retry_at != 0 && l->retry_at < wake)
                wake = l->retry_at;
        if (wake == SESSION_NO_DEADLINE)
                return -1;
        return poll_msec_until(wake, l->now); /* l->now: read as the deadlines ran, just before */
}

/* ---- accepting ---- */

/* add_listener: listener I into the epoll set (its fault, if any, waited out). */
static void add_listener(Loop *l, size_t i) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE,
                                  .data.u64 = (uintptr_t) &l->listening[i] | LISTENER_TAG };

        if (l->faults)
                l->faults[i].retry_at = 0;
        if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, l->listening[i].fd, &ev) < 0)
                log_error_errno(-errno, "cannot accept from %s in an event loop", l->listening[i].name);
}

/* waiting_out: listener I is out of the set for its fault, for now (ListenerFault). */
static bool waiting_out(const Loop *l, size_t i) {
        return l->faults && l->faults[i].retry_at > l->now;
}

/* attach, detach: the loop's listeners in or out of its epoll set. EPOLLEXCLUSIVE can only be
 * given to EPOLL_CTL_ADD, so a pause is a removal and a resumption an addition. */
static void attach(Loop *l) {
        for (size_t i = 0; i < l->n_listening; i++)
                if (!waiting_out(l, i))
                        add_listener(l, i);
        l->attached = true;
}

/* detach: every listener out (one already out for its fault: ENOENT, ignored). */
static void detach(Loop *l) {
        if (!l->attached)
                return;
        for (size_t i = 0; i < l->n_listening; i++)
                (void) epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, l->listening[i].fd, NULL);
        l->attached = false;
}

/* retry_failed: once the earliest retry is due, the listeners out for their fault whose time
 * has come back in the set, and the next retry found (a round with none due costs a compare). */
static void retry_failed(Loop *l) {
        if (l->retry_at == 0 || l->now < l->retry_at)
                return;
        l->retry_at = 0;
        for (size_t i = 0; l->faults && i < l->n_listening; i++) {
                if (l->faults[i].retry_at != 0 && !waiting_out(l, i))
                        add_listener(l, i);
                if (l->faults[i].retry_at != 0 && (l->retry_at == 0 || l->faults[i].retry_at < l->retry_at))
                        l->retry_at = l->faults[i].retry_at;
        }
}

/* listener_failed: VIA's accept() failed for a reason of its own (-ERROR): it alone is out of
 * the set until the pause ends; false without the memory to keep that apart. */
static bool listener_failed(Loop *l, const Listener *via, int error) {
        if (!l->faults)
                return false;
        ListenerFault *f = &l->faults[via - l->listening];
        listener_note_failure(via, &f->failing, error);
        f->retry_at = l->now + ENGINE_ACCEPT_PAUSE_USEC;
        if (l->retry_at == 0 || f->retry_at < l->retry_at)
                l->retry_at = f->retry_at;
        (void) epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, via->fd, NULL);
        return true;
}

/* begin: S, admitted, is this loop's. */
static void begin(Loop *l, Session *s) {
        __atomic_add_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
        s->engine = &l->base.set->engine;
        (void) start(l, s);
}

/* admit_queued: the client queued in this loop, once a slot is free. */
static void admit_queued(Loop *l) {
        const EngineHooks *hooks = hooks_of(l);
        int fd = l->queued_fd;
        bool queued = true; /* it waited */

        if (fd < 0)
                return;
        l->queued_fd = -1;
        Session *s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) &l->queued_peer, &l->queued_via,
                                  &queued);
        if (queued) {
                l->queued_fd = fd;
                l->waiting_slot = true;
        } else if (s) {
                begin(l, s);
        }
}

/* sync_listeners: at the top of each round (no event of the previous set is in hand): takes
 * up a new listener set, and attaches or detaches as accepting is allowed or not. */
static void sync_listeners(Loop *l) {
        if (loopset_listen_gen(l->base.set) != l->listen_gen) {
                detach(l);
                l->listen_gen = loopset_take_listeners(&l->base, &l->listening, &l->n_listening);
                free(l->faults);
                l->faults = l->n_listening ? calloc(l->n_listening, sizeof(*l->faults)) : NULL;
                l->retry_at = 0;
        }
        if (l->paused_until != 0 && l->now >= l->paused_until)
                l->paused_until = 0;
        bool accepting = !l->exiting && !l->waiting_slot && l->paused_until == 0;
        if (accepting && !l->attached)
                attach(l);
        else if (accepting)
                retry_failed(l);
        else
                detach(l);
}

static void on_listener(Loop *l, const Listener *via) {
        const EngineHooks *hooks = hooks_of(l);

        /* Detached earlier in this batch (paused, or waiting for a slot): not now. */
        for (int i = 0; i < ACCEPT_BATCH && l->attached; i++) {
                struct sockaddr_storage peer;
                AcceptError kind;

                if (hooks->must_wait(hooks->userdata)) {
                        l->waiting_slot = true;
                        detach(l);
                        return;
                }
                int fd = listener_accept(via, SOCK_NONBLOCK | SOCK_CLOEXEC, &peer, &kind, hooks->exhausted,
                                         hooks->userdata);
                if (fd < 0 && kind == ACCEPT_RETRY)
                        continue;
                if (fd < 0) {
                        int error = -errno;
                        if (kind == ACCEPT_FAILED && listener_failed(l, via, error))
                                return;
                        if (kind == ACCEPT_FAILED)
                                log_error_errno(error, "accept on %s failed, pausing", via->name);
                        if (kind != ACCEPT_DRAINED) {
                                l->paused_until = l->now + ENGINE_ACCEPT_PAUSE_USEC;
                                detach(l);
                        }
                        return;
                }
                if (l->faults)
                        listener_note_accepted(via, &l->faults[via - l->listening].failing);
                bool queued = false;
                Session *s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) &peer, via, &queued);
                if (queued) { /* another loop took the last slot since must_wait() */
                        l->queued_fd = fd;
                        l->queued_peer = peer;
                        l->queued_via = *via;
                        l->waiting_slot = true;
                        detach(l);
                        return;
                }
                if (s)
                        begin(l, s);
        }
}

/* hand_over_all: every session of the loop, at rest between two reads (nothing of a read is
 * in hand now), to the handed_over hook; nothing more is written to the clients. */
static void hand_over_all(Loop *l) {
        const EngineHooks *hooks = hooks_of(l);

        Deadline *d;

        while ((d = deadlines_first(&l->deadlines))) {
                Session *s = session_of(d);
                deadlines_remove(&l->deadlines, &s->timer);
                ready_remove(l, s);
                __atomic_sub_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
                hooks->handed_over(s, hooks->userdata);
        }
}

/* end_conversations: the server has asked every session to stop: each one waiting for its
 * client's input gets a turn (run_ready), whose serve_once() ends it with the shutdown line;
 * one writing gets it once its replies are out (on_event). */
static void end_conversations(Loop *l) {
        for (Deadline *d = deadlines_after(&l->deadlines, NULL); d; d = deadlines_after(&l->deadlines, d)) {
                Session *s = session_of(d);
                if (!s->lingering && !s->want_write && s->proto.end == PROTO_END_NONE)
                        ready_push(l, s);
        }
}

/* on_wake: the eventfd: sessions handed over, a slot freed, new listeners, the conversations'
 * end, or the stop. */
static void on_wake(Loop *l) {
        Session *queued;

        l->exiting = !take_incoming(l, &queued) || l->exiting;
        if (l->exiting)
                l->handing_over = loopset_handing_over(l->base.set);
        l->waiting_slot = false; /* try again: must_wait() says whether it is still full */
        if (!l->exiting)
                admit_queued(l);
        while (queued) {
                Session *next = queued->incoming_next;
                queued->incoming_next = NULL;
                (void) start(l, queued);
                queued = next;
        }
        if (loopset_ending_conversations(&l->base))
                end_conversations(l);
}

/* run_ready: one more turn for each session that has kept input (or, lingering, more to read
 * away). Sessions that still have some after their turn queue up again for the next round,
 * after the next poll. */
static void run_ready(Loop *l) {
        Session *s;

        l->ready_now = l->ready;
        l->ready = NULL;
        while ((s = l->ready_now)) {
                ready_remove(l, s);
                (void) (s->lingering ? linger(l, s) : serve(l, s));
        }
}

/* run_deadlines: every session whose deadline has passed. Each call either ends the
 * session or moves its deadline to the future, so this terminates. */
static void run_deadlines(Loop *l) {
        l->now = now_usec(); /* the turn's work took time: expire what is due now */
        Deadline *d;

        while ((d = deadlines_due(&l->deadlines, l->now)))
                (void) on_deadline(l, session_of(d));
}

/* loop_prepare: L's epoll set, with its eventfd in it, before its thread runs. A loop that
 * failed to add it used to exit at once, and the engine started all the same: sessions given
 * to the loop (resumed after a hand-over) were never served, and held their slots. */
static int loop_prepare(LoopBase *base) {
        Loop *l = (Loop *) base;
        struct epoll_event wake = { .events = EPOLLIN, .data.u64 = 0 };

        if ((l->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0 || epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, base->wake_fd, &wake) < 0)
                return log_error_errno(-errno, "cannot start an event loop");
        return 0;
}

/* give_queued: the client that waits in L, never greeted, at the loop's end. */
static void give_queued(Loop *l) {
        const EngineHooks *hooks = hooks_of(l);

        if (l->handing_over) /* greeted and handed over by the server */
                hooks->handed_over_waiting(hooks->userdata, l->queued_fd, &l->queued_peer, &l->queued_via);
        else if (l->exiting) /* told it is stopping */
                hooks->stopped_waiting(hooks->userdata, l->queued_fd, &l->queued_peer, &l->queued_via);
        else { /* the loop failed under it (epoll_wait): the other loops must not wait behind it */
                engine_waiting_add(&l->base.set->engine, -1);
                close(l->queued_fd);
        }
        l->queued_fd = -1;
}

static void *loop_main(void *arg) {
        Loop *l = arg;
        struct epoll_event events[EVENTS_MAX];

        (void) pthread_setname_np(pthread_self(), "hellod-loop");
        l->now = now_usec();
        while (!l->exiting || deadlines_first(&l->deadlines)) {
                if (l->handing_over) {
                        hand_over_all(l);
                        break;
                }
                sync_listeners(l);
                int n = epoll_wait(l->epoll_fd, events, EVENTS_MAX, poll_timeout(l));
                l->now = now_usec();
                if (n < 0 && errno != EINTR) {
                        log_error_errno(-errno, "epoll_wait failed");
                        break;
                }
                for (int i = 0; i < n; i++) {
                        uint64_t data = events[i].data.u64;
                        if (data == 0)
                                on_wake(l);
                        else if (data & LISTENER_TAG)
                                on_listener(l, (const Listener *) (uintptr_t) (data & ~(uint64_t) LISTENER_TAG));
                        else {
                                Session *s = (Session *) (uintptr_t) data;
                                if (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                                        s->peer_shut = true;
                                /* An edge announces new input even while the session is still
                                 * answering input it kept, and so reads nothing this turn: the
                                 * read that follows the kept input must not be skipped. */
                                if (events[i].events & EPOLLIN)
                                        s->unread = true;
                                if (events[i].events & EPOLLPRI)
                                        s->urgent = true;
                                (void) on_event(l, s);
                        }
                }
                run_ready(l);
                run_deadlines(l);
        }

        detach(l);
        if (l->queued_fd >= 0)
                give_queued(l);
        loopset_exited(&l->base);
        return NULL;
}

/* ---- the pool ---- */

static void loop_done(LoopBase *base) {
        Loop *l = (Loop *) base;

        if (l->epoll_fd >= 0)
                close(l->epoll_fd);
        free(l->in_buf);
        free(l->out_buf);
        free(l->faults);
}

static int pool_stop(Engine *e, uint64_t timeout_msec) {
        return loopset_stop(&((Pool *) e)->set, timeout_msec, loop_done);
}

static int pool_hand_over(Engine *e, uint64_t timeout_msec) {
        return loopset_hand_over(&((Pool *) e)->set, timeout_msec, loop_done);
}

static const EngineOps pool_ops = {
        .add = loopset_engine_add,
        .stop = pool_stop,
        .end_conversations = loopset_engine_end_conversations,
        .reconfigure = loopset_engine_reconfigure,
        .set_listeners = loopset_engine_set_listeners,
        .slot_freed = loopset_engine_slot_freed,
        .hand_over = pool_hand_over,
        .answered = loopset_engine_answered,
        .nonblocking = true,
        .reads_proxy = true,
        .keeps_partial_lines = true,
};

int pool_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks) {
        Pool *p = calloc(1, sizeof(*p));
        int r;

        if (!p)
                return -ENOMEM;
        r = loopset_init(&p->set, conf->workers, sizeof(Loop), &pool_ops, hooks);
        if (r < 0) {
                free(p);
                return r;
        }
        for (unsigned i = 0; i < conf->workers; i++) {
                Loop *l = (Loop *) loopset_loop(&p->set, i);
                l->epoll_fd = l->queued_fd = -1;
        }
        for (unsigned i = 0; i < conf->workers && r == 0; i++)
                r = loopset_start(&p->set, loopset_loop(&p->set, i), conf->worker_stack_size, EFD_NONBLOCK, loop_prepare,
                                  loop_main);
        if (r < 0) {
                (void) pool_stop(&p->set.engine, UINT64_MAX);
                return r;
        }
        *ret = &p->set.engine;
        return 0;
}
