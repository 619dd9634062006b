/* perconn: the per-connection driver: each session runs on a thread of its own with
 * blocking I/O: the greeting, then read → proto → write until the client leaves, says exit,
 * idles out or the server stops. A read that runs past the idle deadline is woken by a signal
 * (serving.h); a write that blocks, by a send timeout (SO_SNDTIMEO, socktimer.h) measured
 * against the session's write deadline. The lingering close is the lingerer's (lingerer.h): a
 * thread leaves the socket to it and goes on.
 *
 * Accepting: the threads that wait for a connection (worker.c) all wait in one epoll set
 * holding the listeners, each one-shot (EPOLLONESHOT). epoll wakes one waiting thread per
 * event; that thread accepts, re-arms the listener (so that the next connection wakes
 * another) and serves the connection itself: no accept thread, no hand-off between threads.
 * Admission (limits, access lists) is the server's, through its hooks. A listener stays
 * disarmed while overload = "queue" finds every slot taken (until the server says one freed)
 * and, after descriptors ran out, for ENGINE_ACCEPT_PAUSE_USEC: a timerfd in the same set
 * re-arms every listener then; a listener whose accept() failed for a reason of its own stays
 * disarmed as long, alone. The listener set is replaced under a write lock, so that once
 * perconn_set_listeners() returns no thread uses a socket of the old set.
 *
 * The hand-over (perconn_hand_over): a thread blocked in recv() or send() is woken by the
 * same signal (serving_wake_all) and sees the engine handing over: it leaves its session at
 * rest, with what it read and did not answer as kept input and what it did not send as kept
 * output, for the server's handed_over hook. The connection is not shut down: the next
 * process goes on with it. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "handoff.h"
#include "lingerer.h"
#include "log.h"
#include "queued.h"
#include "serving.h"
#include "socktimer.h"
#include "worker.h"

/* epoll data of the control descriptors; a listener's is (generation << 32) | its index,
 * generations starting at 1. */
enum { KEY_STOP = 1, KEY_RESUME = 2, KEY_PING = 3, KEY_SLOT = 4 };

/* How often the hand-over wakes the threads still serving: a signal that comes just before a
 * thread blocks (after it looked at `handing`) is lost, and the next one wakes it. The first
 * wakes nearly every thread; the interval doubles from 1 ms to 32 ms, so that thousands of
 * threads are not signalled again and again while they line up to leave the list. */
#define WAKE_INTERVAL_MIN_NSEC 1000000L
#define WAKE_INTERVAL_MAX_NSEC 32000000L

/* What a thread's session came to (run). */
typedef enum Outcome {
        OUTCOME_DONE,   /* ended: the done hook */
        OUTCOME_HANDED, /* at rest for the hand-over: the handed_over hook */
} Outcome;

/* converse() and flush(): the session is at rest for the hand-over (no errno can be this:
 * send() and recv() never fail with ECANCELED). */
#define HANDING_OVER (-ECANCELED)

typedef struct PerConn {
        Engine engine; /* first: the engine is the driver */
        Workers *workers;
        Lingerer *lingerer; /* the lingering sockets */
        int epoll_fd;  /* the listeners (one-shot), stop_fd and resume_fd */
        int stop_fd;   /* eventfd: written at the stop and never read, so that every waiting
                        * thread wakes to it in turn (level-triggered) */
        int resume_fd; /* timerfd: a pause of accepting (out of descriptors, a failed accept) ends */
        int slot_fd;   /* eventfd: accepting resumes now (a slot freed, or may have) */
        int ping_fd;   /* eventfd: perconn_answered()'s question, for a waiting thread */
        /* atomic, usec: until when accepting pauses. Kept apart from the slot's wake-up, as
         * the pool's paused_until is: a slot freeing during the pause (its socket may linger
         * on, its descriptor not freed yet) admits the queued clients but arms no listener,
         * and one shared timer re-armed by both lost the pause, or delayed the wake-up. */
        uint64_t paused_until;
        uint64_t alive_gen, alive_acked; /* atomic: the question asked last, answered last */
        pthread_rwlock_t listen_lock; /* read: a thread accepting; write: a new set */
        const Listener *listeners;    /* the server's set (its array: engine.h, set_listeners) */
        size_t n_listeners;
        uint32_t listen_gen;
        /* overload = "queue": for each listener of the set, the clients accepted as another
         * thread took the last slot, oldest first. They wait here, as they would have in the
         * backlog, and their listener is armed again once none is left. NULL when it could
         * not be allocated: they wait with the orphans then (queue_of). */
        QueuedClient **queued;
        /* one a listener, atomic: its accept() failed (ACCEPT_FAILED), logged, and it has not
         * accepted since; NULL: no memory for them (every failure is logged then) */
        bool *failing;
        QueuedClient *orphans; /* queued through listeners of an earlier set: admitted first */
        pthread_mutex_t queue_lock; /* the lists of queued and orphans */
        uint64_t resumes; /* atomic: resume() calls begun */
        bool handing;     /* atomic: the hand-over: serving threads bring their sessions to rest */
        ServingSet *serving; /* the threads serving a session, and their wakeups */
} PerConn;

/* handing: whether P hands its sessions over; handing_over: whether S's engine does: S goes
 * to rest now. */
static bool handing(const PerConn *p) {
        return __atomic_load_n(&p->handing, __ATOMIC_ACQUIRE);
}

static bool handing_over(const Session *s) {
        return handing((const PerConn *) s->engine);
}

/* flush: writes all of OUT; the client has until the session's write deadline to take it,
 * in total, so that one reading a trickle cannot hold its thread for several timeouts. The
 * first send does not block: when the socket has room, as it nearly always has, no send
 * timeout needs arming (one setsockopt() less per connection, measured with strace -c), and
 * the clock is not read (perf under rr: three clock reads a request cost 3% of the server's
 * time, more than all of hellod's own code). DEADLINE: the write deadline already running
 * (kept output a session was handed over with), or 0: from the first wait. */
static int flush(Session *s, SockTimer *send_timer, uint64_t deadline) {
        bool blocking = false;
        int r = 0;

        while (s->out_off < s->out.len) {
                if (blocking && handing_over(s)) {
                        /* Kept output: the client has until the write deadline to take it. */
                        s->timer.at = deadline ? deadline : session_write_deadline(s, now_usec());
                        return HANDING_OVER;
                }
                if (blocking) {
                        uint64_t now = now_usec();
                        if (deadline == 0)
                                deadline = session_write_deadline(s, now);
                        if (!socktimer_arm(send_timer, deadline, now)) {
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
                        if (s->proto.end != PROTO_END_NONE && s->stored) /* its last replies */
                                s->engine->hooks.ending(s, s->engine->hooks.userdata);
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

/* feed: hands one read (the N bytes at S->in) to the protocol, flushing whenever the output
 * buffer fills. At a hand-over what the protocol has not taken stays in S->in as kept input. */
static int feed(Session *s, size_t n, ProtoStatus *status, SockTimer *send_timer) {
        size_t done = 0;

        for (;;) {
                done += proto_feed(&s->proto, s->in + done, n - done, &s->out, status);
                if (done == n || *status == PROTO_CLOSE)
                        return 0;
                int r = flush(s, send_timer, 0);
                if (r == HANDING_OVER) {
                        s->in_off = done;
                        s->in_len = n;
                }
                if (r < 0)
                        return r;
        }
}

/* set_lowat: SO_RCVLOWAT to MARK, *LOWAT what is in force then; false when that is not MARK
 * (the kernel caps the mark at half the receive buffer). */
static bool set_lowat(int fd, int mark, int *lowat) {
        socklen_t len = sizeof(*lowat);

        if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof(mark)) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, lowat, &len) < 0)
                *lowat = -1; /* unknown: set again before the next wait */
        return *lowat == mark;
}

/* idled_out: whether S's idle deadline has passed at NOW. */
static bool idled_out(const Session *s, uint64_t now) {
        return s->timer.at != SESSION_NO_DEADLINE && now >= s->timer.at;
}

/* recv_lines: the read of a stored session (handover = "always"), as the pool's read_lines:
 * peeked first, then what session_lines_taken() says. While a partial line waits for its end
 * (session_line_end_awaited), SO_RCVLOWAT one byte past it makes the next peek block until
 * more comes, and the call returns -1 with EAGAIN: the caller checks the session's deadline
 * before peeking again. So bytes that end no line are no activity (a client sending its line
 * a byte at a time does not restart the timeout), and a peek that a signal ends (the idle
 * watch's at the deadline, the hand-over's) returns -1 with EINTR, its line left in the
 * kernel. A peek that comes back with nothing new otherwise cannot wait without spinning (the
 * client's FIN behind a partial line, say): the line is taken as it is. Once bytes are taken
 * the mark goes back to 1. *LOWAT: the socket's SO_RCVLOWAT (1 to begin with). */
static ssize_t recv_lines(Session *s, int *lowat) {
        serving_signal_clear();
        ssize_t k = recv(s->fd, s->in, s->in_cap, MSG_PEEK);
        if (k == 0) /* the end: session_read_end */
                return session_read_end(s, s->in, s->in_cap);
        if (k < 0)
                return k;
        if (serving_signalled() || handing_over(s)) {
                /* A signal (the hand-over's, the idle watch's) ends a peek with what is there,
                 * before the mark: the partial line stays in the kernel, as the crash mode
                 * wants it, and the caller looks at why it was woken. */
                errno = EINTR;
                return -1;
        }
        size_t take = session_lines_taken(s, s->in, (size_t) k);
        if (take == 0 && session_line_end_awaited(s)) {
                int mark = (int) k + 1;
                if (mark != *lowat && set_lowat(s->fd, mark, lowat)) {
                        errno = EAGAIN;
                        return -1;
                }
        }
        if (*lowat != 1)
                (void) set_lowat(s->fd, 1, lowat);
        return recv(s->fd, s->in, take ? take : (size_t) k, 0);
}

/* converse: greeting, then read → proto → write; returns 0 when the protocol ended the
 * session, or a negative errno when the connection failed under it. */
static int converse(Session *s, ServingThread *me) {
        SockTimer send_timer = { .fd = s->fd, .option = SO_SNDTIMEO };
        int lowat = 1; /* SO_RCVLOWAT, for recv_lines */
        ProtoStatus status = PROTO_CONTINUE;
        uint64_t messages = s->proto.messages, now;
        /* Handed over while the client lagged: its deadline is the write deadline, running. */
        bool kept_output = s->resumed && s->out.len > s->out_off;
        uint64_t kept_deadline = kept_output ? s->timer.at : 0;
        int r;

        if (!s->resumed) {
                s->timer.at = session_idle_deadline(s, now_usec());
                proto_greeting(&s->proto, &s->out);
        }
        if (s->in_len > s->in_off) {
                /* Handed over with replies still to send and input still to answer: the
                 * replies first (a hand-over meanwhile keeps the input where it is). */
                if ((r = flush(s, &send_timer, kept_deadline)) < 0)
                        return r;
                kept_deadline = 0; /* the kept output is out: new replies get a deadline of their own */
                size_t n = s->in_len - s->in_off;
                memmove(s->in, s->in + s->in_off, n);
                s->in_off = s->in_len = 0;
                if ((r = feed(s, n, &status, &send_timer)) < 0)
                        return r;
        }
        if ((r = flush(s, &send_timer, kept_deadline)) < 0)
                return r;
        if (s->proto.end != PROTO_END_NONE)
                status = PROTO_CLOSE;

        /* The clock is read once a round: after the writes (which may have blocked), before
         * the next read; the lines answered so far were activity (session_idle_deadline). */
        now = now_usec();
        if (s->proto.messages != messages || kept_output) /* taking replies is progress, as in pool.c */
                s->timer.at = session_idle_deadline(s, now);
        r = 0;
        while (status == PROTO_CONTINUE) {
                if (handing_over(s)) { /* between two reads: at rest */
                        r = HANDING_OVER;
                        break;
                }
                if (session_stop_requested(s)) {
                        /* The lines in hand were answered; the server is going away. */
                        proto_abort(&s->proto, PROTO_END_SHUTDOWN, &s->out);
                        break;
                }
                if (idled_out(s, now)) {
                        proto_abort(&s->proto, PROTO_END_IDLE, &s->out);
                        break;
                }
                serving_idle_until(me, s->timer.at);
                ssize_t n = session_reads_lines(s) ? recv_lines(s, &lowat) : recv(s->fd, s->in, s->in_cap, 0);
                if (n < 0) {
                        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
                                return -errno;
                        now = now_usec(); /* the watch's signal, or recv_lines waiting: idled_out decides */
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
                if ((r = flush(s, &send_timer, 0)) < 0)
                        return r;
                /* A complete line (even an empty one) is activity; bytes of an unfinished
                 * line are not. Re-armed after the writes (session_idle_deadline). */
                now = now_usec();
                if (s->proto.messages != messages)
                        s->timer.at = session_idle_deadline(s, now);
        }
        if (lowat != 1) /* a wait for a line's end ended otherwise: the lingerer's epoll needs 1 */
                (void) set_lowat(s->fd, 1, &lowat);
        return r == HANDING_OVER ? r : flush(s, &send_timer, 0);
}

/* proxy_header: reads the PROXY header (at most SESSION_PROXY_TIMEOUT_USEC: peeks, and what
 * session_proxy_take() says read) and hands it to the server; the bytes after it wait in the
 * kernel for the conversation's first read. 0: go on; -1: the session ends here;
 * HANDING_OVER: still waiting for it at the hand-over. */
static int proxy_header(Session *s) {
        const EngineHooks *hooks = &s->engine->hooks;
        const uint64_t deadline = now_usec() + SESSION_PROXY_TIMEOUT_USEC;
        SockTimer recv_timer = { .fd = s->fd, .option = SO_RCVTIMEO };
        const char *reason = "no PROXY header in time";
        ProxyStatus status = PROXY_INVALID;
        ProxyHeader header;

        while (socktimer_arm(&recv_timer, deadline, now_usec())) {
                if (handing_over(s))
                        return HANDING_OVER; /* not greeted: the server closes it in silence */
                if (session_stop_requested(s)) {
                        reason = NULL; /* woken by the conversations' end: the proxied hook says so */
                        break;
                }
                ssize_t n = recv(s->fd, s->in, s->in_cap, MSG_PEEK);
                if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
                        continue;
                if (n <= 0) {
                        reason = n == 0 ? "closed before its PROXY header was complete" : strerror(errno);
                        break;
                }
                if (session_proxy_take(s, s->in, (size_t) n, &status, &header, &reason) < 0 ||
                    status != PROXY_NEED_MORE)
                        break;
        }
        /* The conversation arms its own timeout, if it has one: none of the header's is left
         * (without an idle timeout, it would wake the thread up as long as the client idles). */
        socktimer_disarm(&recv_timer);
        if (!hooks->proxied(hooks->userdata, s, status == PROXY_NEED_MORE ? PROXY_INVALID : status, &header, reason))
                return -1;
        return 0;
}

/* Linger: a socket to leave to the lingerer once its session is over (serve). */
typedef struct Linger {
        int fd; /* -1: none */
        uint64_t deadline;
        size_t discarded;
} Linger;

/* lingers_on_elsewhere: S, its FIN out, is handed over lingering until DEADLINE, DISCARDED
 * bytes read away so far (lingering, in_len counts them), to linger on in the next process. */
static void lingers_on_elsewhere(Session *s, uint64_t deadline, size_t discarded) {
        s->lingering = true;
        s->want_write = false; /* a resumed session's, its output long sent */
        s->timer.at = deadline;
        s->in_off = 0;
        s->in_len = discarded;
}

/* linger_here: S's FIN is out and the lingerer is full: this thread reads and discards what
 * the client still sends until its EOF, session_linger_spent() or DEADLINE, DISCARDED bytes read
 * already, the session keeping its slot (as a pool's lingering session does). HANDING_OVER:
 * it lingers on in the next process (S says how), or 0. */
static int linger_here(Session *s, uint64_t deadline, size_t discarded) {
        SockTimer recv_timer = { .fd = s->fd, .option = SO_RCVTIMEO };
        uint64_t now = now_usec(), latest = now + SESSION_LINGER_USEC; /* whatever a resumed session brought */
        LingerProgress progress;

        session_linger_begin(&progress, s->fd, discarded, now);
        if (deadline > latest)
                deadline = latest;
        while (!session_linger_spent(s->fd, discarded)) { /* a stop lets it run out (session_stop) */
                if (handing_over(s)) {
                        lingers_on_elsewhere(s, deadline, discarded);
                        return HANDING_OVER;
                }
                if (!socktimer_arm(&recv_timer, deadline, now = now_usec())) {
                        /* Its second is up; more while the client still takes its replies. */
                        if (!(deadline = session_linger_next(&progress, s->fd, discarded, now)))
                                break;
                        continue;
                }
                ssize_t n = recv(s->fd, s->in, s->in_cap, 0);
                if (n > 0)
                        discarded += (size_t) n;
                else if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK))
                        break; /* its EOF, or the connection failed */
        }
        return 0;
}

/* let_linger: S's socket lingers until DEADLINE, DISCARDED bytes read already: in the lingerer
 * (*LINGER), so that this thread goes on at once and the slot frees, when it has room;
 * otherwise here. */
static Outcome let_linger(PerConn *p, Session *s, uint64_t deadline, size_t discarded, Linger *linger) {
        if (lingerer_reserve(p->lingerer)) {
                *linger = (Linger) { .fd = s->fd, .deadline = deadline, .discarded = discarded };
                s->fd_kept = true;
                return OUTCOME_DONE;
        }
        return linger_here(s, deadline, discarded) == HANDING_OVER ? OUTCOME_HANDED : OUTCOME_DONE;
}

/* run: the whole session on a worker thread; *LINGER: its socket, if it lingers in the
 * lingerer. */
static Outcome run(PerConn *p, Session *s, ServingThread *me, Linger *linger) {
        /* A resumed session may have brought buffers of its own. */
        if (!s->in)
                s->in = malloc(s->in_cap);
        if (!s->out.data)
                s->out.data = malloc(s->out.cap);
        if (!s->in || !s->out.data) {
                session_fail(s, -ENOMEM);
                return OUTCOME_DONE;
        }
        if (s->lingering) /* resumed after its FIN was sent: with what it brought */
                return let_linger(p, s, s->timer.at, s->in_len, linger);
        int r = s->proxy ? proxy_header(s) : 0;
        if (r == HANDING_OVER)
                return OUTCOME_HANDED;
        if (r < 0)
                return OUTCOME_DONE;
        if (s->resumed) { /* the timeouts of the process it comes from, if it set them */
                (void) socktimer_set(s->fd, SO_RCVTIMEO, 0);
                (void) socktimer_set(s->fd, SO_SNDTIMEO, 0);
        }
        r = converse(s, me);
        serving_idle_until(me, 0);
        if (r == HANDING_OVER) {
                s->want_write = s->out.len > s->out_off;
                return OUTCOME_HANDED;
        }
        if (r < 0)
                session_fail(s, r);
        else if (session_lingers(s) && engine_send_fin(&p->engine, s)) {
                uint64_t deadline = now_usec() + SESSION_LINGER_USEC;
                if (handing_over(s)) {
                        /* Ended during the hand-over: it lingers on in the next process,
                         * handed over now rather than through the lingerer, which is stopping. */
                        lingers_on_elsewhere(s, deadline, 0);
                        return OUTCOME_HANDED;
                }
                return let_linger(p, s, deadline, 0, linger);
        }
        return OUTCOME_DONE;
}

/* ---- accepting ---- */

/* listen_ctl: OP (EPOLL_CTL_ADD, or MOD to re-arm) for the listener I of the current set
 * (under listen_lock): one-shot, so that it wakes one waiting thread until re-armed. */
static void listen_ctl(PerConn *p, int op, size_t i) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT,
                                  .data.u64 = (uint64_t) p->listen_gen << 32 | (uint32_t) i };

        if (epoll_ctl(p->epoll_fd, op, p->listeners[i].fd, &ev) < 0)
                log_error_errno(-errno, "cannot accept from %s", p->listeners[i].name);
}

/* arm: the listener I wakes a waiting thread again. */
static void arm(PerConn *p, size_t i) {
        listen_ctl(p, EPOLL_CTL_MOD, i);
}

/* queue_put, queue_take: queued_put() and queued_take() under queue_lock. */
static void queue_put(PerConn *p, QueuedClient **head, QueuedClient *q, bool front) {
        pthread_mutex_lock(&p->queue_lock);
        queued_put(head, q, front);
        pthread_mutex_unlock(&p->queue_lock);
}

static QueuedClient *queue_take(PerConn *p, QueuedClient **head) {
        pthread_mutex_lock(&p->queue_lock);
        QueuedClient *q = queued_take(head);
        pthread_mutex_unlock(&p->queue_lock);
        return q;
}

/* refuse_session: S, admitted, gets LINE instead of a thread (REASON: why none can be had). */
static void refuse_session(PerConn *p, Session *s, const char *line, const char *reason) {
        session_say_last(s->fd, line);
        s->error = reason;
        s->turned_away = true;
        engine_session_done(&p->engine, s);
}

/* start_elsewhere: S, admitted by a thread that serves another, gets a thread of its own; or
 * the busy line, when no thread can be had, the shutdown line once hellod stops (admitted just
 * before, it met the stop on its way to a thread): as the server's refusals at a stop, none
 * before a PROXY header is in (a balancer may try another server). */
static void start_elsewhere(PerConn *p, Session *s) {
        int r = workers_run(p->workers, s);

        if (r == -ECANCELED)
                refuse_session(p, s, s->proxy ? NULL : PROTO_ERR_SHUTDOWN, "shutting-down");
        else if (r < 0)
                refuse_session(p, s, PROTO_ERR_BUSY, "out-of-threads");
}

/* queue_of: the list where clients of the listener I wait (under listen_lock). */
static QueuedClient **queue_of(PerConn *p, size_t i) {
        return p->queued ? &p->queued[i] : &p->orphans;
}

/* resume_in: every listener is armed again in USEC (at least 1), those disarmed meanwhile too.
 * Always ENGINE_ACCEPT_PAUSE_USEC from now: a later call never moves the timer before the end
 * of a pause set earlier (paused_until). */
static void resume_in(PerConn *p, uint64_t usec) {
        struct itimerspec t = { .it_value = { .tv_sec = (time_t) (usec / 1000000u),
                                              .tv_nsec = (long) (usec % 1000000u) * 1000 + 1 } };

        if (timerfd_settime(p->resume_fd, 0, &t, NULL) < 0)
                log_error_errno(-errno, "cannot schedule accepting");
}

/* pause_for: accepting pauses for USEC (out of descriptors or memory): no listener is armed
 * until then, whatever wakes a thread meanwhile. */
static void pause_for(PerConn *p, uint64_t usec) {
        __atomic_store_n(&p->paused_until, now_usec() + usec, __ATOMIC_RELEASE);
        resume_in(p, usec);
}

/* paused: whether accepting pauses now. Read at each arm: a pause may begin while resume()
 * admits the queued clients (a thread of another listener out of descriptors). */
static bool paused(PerConn *p) {
        return now_usec() < __atomic_load_n(&p->paused_until, __ATOMIC_ACQUIRE);
}

/* resume_now: a waiting thread resumes accepting (resume()), as far as a pause allows. */
static void resume_now(PerConn *p) {
        if (eventfd_write(p->slot_fd, 1) < 0)
                log_error_errno(-errno, "cannot schedule accepting");
}

/* admit_queue: the clients of the list *HEAD, oldest first, as long as slots are free: the
 * first admitted goes to *MINE (for this thread to serve), the others get threads of their
 * own. true when the list is empty now; false: every slot is taken again. */
static bool admit_queue(PerConn *p, QueuedClient **head, Session **mine) {
        const EngineHooks *hooks = &p->engine.hooks;

        for (;;) {
                /* Read before the server can say "full" (see take_connection()). */
                uint64_t resumes = __atomic_load_n(&p->resumes, __ATOMIC_ACQUIRE);
                QueuedClient *q = queue_take(p, head);
                if (!q)
                        break;
                bool queued = true; /* it waited */
                Session *s = hooks->admit(hooks->userdata, q->fd, (const struct sockaddr *) &q->peer, &q->via, &queued);
                if (queued) {
                        queue_put(p, head, q, true);
                        /* A slot that freed after admit() said "full" was announced to a
                         * resume() that may have looked at this list while Q was out of it,
                         * found it empty and armed the listener: once more, or Q waits on
                         * with a slot free, and so does every client after it. */
                        if (__atomic_load_n(&p->resumes, __ATOMIC_ACQUIRE) != resumes)
                                resume_now(p);
                        return false;
                }
                free(q);
                if (!s)
                        continue; /* turned away */
                s->engine = &p->engine;
                if (*mine)
                        start_elsewhere(p, s);
                else
                        *mine = s;
        }
        return true;
}

/* resume: accepting resumes (a slot freed, or a pause ended): the queued clients are admitted
 * first, oldest first, then each listener without one waiting is armed, unless accepting is
 * paused (its timer arms them at its end). Returns one client admitted for this thread to
 * serve; the others admitted get threads of their own. */
static Session *resume(PerConn *p) {
        Session *mine = NULL;

        /* Counted before any queue is looked at: see take_connection(). */
        __atomic_add_fetch(&p->resumes, 1, __ATOMIC_ACQ_REL);
        pthread_rwlock_rdlock(&p->listen_lock);
        (void) admit_queue(p, &p->orphans, &mine);
        for (size_t i = 0; i < p->n_listeners; i++)
                if (admit_queue(p, queue_of(p, i), &mine) && !paused(p)) /* else still full: stays disarmed */
                        arm(p, i);
        pthread_rwlock_unlock(&p->listen_lock);
        return mine;
}

/* orphan_queued: the listener set goes away; its queued clients wait on, oldest first (their
 * listeners' lists in turn: the order between listeners is not kept). Under the write lock. */
static void orphan_queued(PerConn *p) {
        for (size_t i = 0; p->queued && i < p->n_listeners; i++) {
                QueuedClient *q;
                while ((q = queue_take(p, &p->queued[i])))
                        queue_put(p, &p->orphans, q, false);
        }
}

/* take_connection: the listener behind KEY said a client is waiting: accept and admit it.
 * NULL when there is none to serve (taken by another thread, refused, or not now); *LEAVE
 * when this thread should leave instead (workers_stale). */
static Session *take_connection(PerConn *p, uint64_t key, bool *leave) {
        const EngineHooks *hooks = &p->engine.hooks;
        size_t i = (uint32_t) key;
        struct sockaddr_storage peer;
        Session *s = NULL;
        AcceptError kind;

        pthread_rwlock_rdlock(&p->listen_lock);
        if (key >> 32 != p->listen_gen || i >= p->n_listeners) {
                ; /* an event of a set let go of */
        } else if (workers_stale(p->workers)) {
                arm(p, i); /* for a thread of the current stack size */
                *leave = true;
        } else if (hooks->must_wait(hooks->userdata)) {
                ; /* stays disarmed: the server calls slot_freed */
        } else {
                const Listener *l = &p->listeners[i];
                uint64_t resumes = __atomic_load_n(&p->resumes, __ATOMIC_ACQUIRE);
                bool queued = false;
                int fd = listener_accept(l, SOCK_CLOEXEC, &peer, &kind, hooks->exhausted, hooks->userdata);
                bool unshared = false; /* without p->failing: every failure logged */
                bool *failing = p->failing ? &p->failing[i] : &unshared;
                if (fd >= 0)
                        listener_note_accepted(l, failing);
                else if (kind == ACCEPT_FAILED) /* it alone stays disarmed, until the resume */
                        listener_note_failure(l, failing, -errno);
                if (fd >= 0 && (s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) &peer, l, &queued)))
                        s->engine = &p->engine;
                /* Re-armed once this client is admitted, not before: the next thread's
                 * must_wait() then counts it (overload = "queue" queues, never refuses). A
                 * client that found every slot taken after all (by a thread of another
                 * listener, or a resume()) waits in this one, disarmed until resume(). */
                QueuedClient *q = queued ? queued_new(fd, &peer, l) : NULL;
                if (queued && !q) { /* cannot keep it waiting: the server decides now */
                        engine_waiting_add(&p->engine, -1);
                        if ((s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) &peer, l, NULL)))
                                s->engine = &p->engine;
                        arm(p, i);
                } else if (queued) {
                        queue_put(p, queue_of(p, i), q, false);
                        /* A slot that freed after admit() said "full" may have been announced
                         * to a resume() that found no client queued here yet: once more. */
                        if (__atomic_load_n(&p->resumes, __ATOMIC_ACQUIRE) != resumes)
                                resume_now(p);
                } else if (fd >= 0 || kind == ACCEPT_DRAINED || kind == ACCEPT_RETRY)
                        arm(p, i);
                else if (kind == ACCEPT_FAILED) /* this listener alone stays disarmed until then */
                        resume_in(p, ENGINE_ACCEPT_PAUSE_USEC);
                else /* out of descriptors or memory: every listener waits */
                        pause_for(p, ENGINE_ACCEPT_PAUSE_USEC);
        }
        pthread_rwlock_unlock(&p->listen_lock);
        return s;
}

/* wait_for_client: WorkerCalls.wait: a connection accepted and admitted, or NULL at the stop
 * (or for a thread of an old stack size). */
static void *wait_for_client(void *userdata) {
        PerConn *p = userdata;

        for (;;) {
                struct epoll_event ev;
                bool leave = false;
                int n = epoll_wait(p->epoll_fd, &ev, 1, -1);

                if (n < 0 && errno != EINTR) {
                        log_error_errno(-errno, "epoll_wait failed");
                        return NULL;
                }
                if (n <= 0)
                        continue;
                if (ev.data.u64 == KEY_STOP)
                        return NULL;
                if (ev.data.u64 == KEY_PING) { /* one thread reads it; the others find it empty */
                        eventfd_t question;
                        (void) eventfd_read(p->ping_fd, &question);
                        __atomic_store_n(&p->alive_acked, __atomic_load_n(&p->alive_gen, __ATOMIC_ACQUIRE),
                                         __ATOMIC_RELEASE);
                        continue;
                }
                if (ev.data.u64 == KEY_RESUME || ev.data.u64 == KEY_SLOT) {
                        /* One thread reads it (the others find it empty) and resumes. */
                        uint64_t count;
                        Session *s = NULL;
                        if (read(ev.data.u64 == KEY_RESUME ? p->resume_fd : p->slot_fd, &count, sizeof(count)) > 0)
                                s = resume(p);
                        if (s)
                                return s;
                        continue;
                }
                Session *s = take_connection(p, ev.data.u64, &leave);
                if (s || leave)
                        return s;
        }
}

/* ---- serving ---- */

/* refuse: WorkerCalls.refuse: no other thread could be started to accept after this one. */
static void refuse(void *userdata, void *job) {
        refuse_session(userdata, job, PROTO_ERR_BUSY, "out-of-threads");
}

/* serve: WorkerCalls.serve: the whole session, then the engine's done path. A lingering
 * socket goes to the lingerer only after that: the lingerer may close it at once, and the
 * server calls shutdown() on the sockets of its registered sessions. It takes the session's
 * record along, for a hand-over while it lingers: always, since whether there is one is for
 * the configuration in force then to say, not the session's (a reload may have turned the
 * hand-over on since it began); without memory the socket closes at a hand-over. A stored
 * session (handover = "always") stays stored until the lingerer closes it (its record names
 * it), as a pool's lingering session does, so that a crash meanwhile leaves its socket open
 * for the next process to linger out: closed with this one, it would answer the client's
 * late bytes with a reset. Without memory it leaves the store with its session. */
static void serve(void *userdata, void *job) {
        PerConn *p = userdata;
        Session *s = job;
        ServingThread me = { .thread = pthread_self() };
        Linger linger = { .fd = -1 };

        serving_add(p->serving, &me);
        Outcome outcome = run(p, s, &me, &linger);
        serving_remove(p->serving, &me, handing(p));
        if (outcome == OUTCOME_HANDED) {
                p->engine.hooks.handed_over(s, p->engine.hooks.userdata);
                return;
        }
        HandoffLingering *record = linger.fd >= 0 ? handoff_lingering_new(s) : NULL;
        if (record && record->stored_as[0] != '\0')
                s->stored = false; /* the record's now: not the done hook's to take out */
        engine_session_done(s->engine, s);
        if (linger.fd >= 0)
                lingerer_add(p->lingerer, linger.fd, linger.deadline, linger.discarded, record);
}

/* give_lingering: LingererGive: a lingering socket, at the hand-over, to the server's hook. */
static void give_lingering(void *userdata, int fd, void *record, uint64_t deadline, size_t discarded) {
        const EngineHooks *hooks = &((PerConn *) userdata)->engine.hooks;
        const HandoverRecord *rec = handoff_lingering_at(record, now_usec(), deadline, discarded);

        hooks->handed_over_lingering(hooks->userdata, rec, fd, ((HandoffLingering *) record)->stored_as);
        free(record);
}

/* lingering_closing: LingererClosing: a lingering socket still stored leaves the store. */
static void lingering_closing(void *userdata, void *record) {
        const EngineHooks *hooks = &((PerConn *) userdata)->engine.hooks;
        const char *stored_as = ((HandoffLingering *) record)->stored_as;

        if (stored_as[0] != '\0')
                hooks->lingering_closed(hooks->userdata, stored_as);
}

static void perconn_set_listeners(Engine *e, const ListenerSet *set) {
        PerConn *p = (PerConn *) e;
        /* Only this can fail: the listeners are borrowed, and without the lists their queued
         * clients wait with the orphans. */
        QueuedClient **queued = set->n ? calloc(set->n, sizeof(*queued)) : NULL;
        bool *failing = set->n ? calloc(set->n, sizeof(*failing)) : NULL;

        pthread_rwlock_wrlock(&p->listen_lock);
        orphan_queued(p);
        for (size_t i = 0; i < p->n_listeners; i++)
                (void) epoll_ctl(p->epoll_fd, EPOLL_CTL_DEL, p->listeners[i].fd, NULL);
        free(p->queued);
        free(p->failing);
        p->listeners = set->items;
        p->n_listeners = set->n;
        p->queued = queued;
        p->failing = failing;
        p->listen_gen++;
        for (size_t i = 0; i < p->n_listeners; i++)
                listen_ctl(p, EPOLL_CTL_ADD, i);
        pthread_rwlock_unlock(&p->listen_lock);
}

/* perconn_slot_freed: overload = "queue": a slot is free; a waiting thread re-arms the
 * listeners (under the server's lock: no lock of ours is taken here). */
static void perconn_slot_freed(Engine *e) {
        resume_now((PerConn *) e);
}

/* ---- the engine ---- */

static int perconn_add(Engine *e, Session *s) {
        return workers_run(((PerConn *) e)->workers, s);
}

/* perconn_free: every thread has left. At a hand-over the lingering sockets linger on in the
 * next process; at a stop they get up to linger_usec to run out (the server has given those
 * whose client still takes its replies what was left of shutdown_timeout already). */
static void perconn_free(PerConn *p, uint64_t linger_usec) {
        if (handing(p) && p->lingerer) {
                lingerer_hand_over(p->lingerer, give_lingering, p);
        } else if (p->lingerer) {
                /* A stop lets each lingering close run out, as the server's wait does a
                 * session's (session_stop): none is added any more. */
                lingerer_wait_empty(p->lingerer, linger_usec);
                lingerer_free(p->lingerer);
        }
        if (p->epoll_fd >= 0)
                close(p->epoll_fd);
        if (p->stop_fd >= 0)
                close(p->stop_fd);
        if (p->resume_fd >= 0)
                close(p->resume_fd);
        if (p->slot_fd >= 0)
                close(p->slot_fd);
        if (p->ping_fd >= 0)
                close(p->ping_fd);
        orphan_queued(p); /* no thread is left to take the lock */
        /* Greeted and handed over by the server, or told it is stopping. */
        queued_give_all(&p->orphans,
                        handing(p) ? p->engine.hooks.handed_over_waiting : p->engine.hooks.stopped_waiting,
                        p->engine.hooks.userdata);
        pthread_rwlock_destroy(&p->listen_lock);
        pthread_mutex_destroy(&p->queue_lock);
        serving_free(p->serving);
        free(p->queued);
        free(p->failing);
        free(p);
}

static int perconn_stop(Engine *e, uint64_t timeout_msec);

/* perconn_hand_over: EngineOps.hand_over: no thread waits for a connection any more, and each
 * serving thread, woken until it is done, brings its session to rest for the handed_over hook
 * (a session that ends meanwhile is handed over lingering, or closes); then as perconn_stop,
 * but the lingerer's sockets go to the handed_over_lingering hook. */
static int perconn_hand_over(Engine *e, uint64_t timeout_msec) {
        PerConn *p = (PerConn *) e;
        uint64_t deadline = now_usec() + timeout_msec * 1000u, now;

        __atomic_store_n(&p->handing, true, __ATOMIC_RELEASE);
        workers_shutdown(p->workers); /* no thread is started for a client queued meanwhile */
        for (long pause = WAKE_INTERVAL_MIN_NSEC; serving_wake_all(p->serving) && (now = now_usec()) < deadline;
             pause = pause < WAKE_INTERVAL_MAX_NSEC ? pause * 2 : pause)
                (void) nanosleep(&(struct timespec) { .tv_nsec = pause }, NULL);
        now = now_usec();
        return perconn_stop(e, now < deadline ? (deadline - now) / 1000u : 0);
}

/* perconn_end_conversations: EngineOps.end_conversations: the watch wakes every serving thread
 * until it leaves (serving_end_all): one blocked reading sees its session's stop; one writing
 * goes on with what is left of its write. */
static void perconn_end_conversations(Engine *e) {
        serving_end_all(((PerConn *) e)->serving);
}

static size_t perconn_lingering(Engine *e) {
        return lingerer_count(((PerConn *) e)->lingerer);
}

static int perconn_stop(Engine *e, uint64_t timeout_msec) {
        PerConn *p = (PerConn *) e;
        uint64_t start = now_usec();

        workers_shutdown(p->workers);
        (void) eventfd_write(p->stop_fd, 1); /* every waiting thread, one after the other */
        int r = workers_stop(p->workers, timeout_msec);
        if (r < 0)
                return r; /* a job still runs and uses P: leave it to the exiting process */
        /* The lingering closes within what is left of the timeout (systemd's TimeoutStopSec=
         * counts on it), and at most as long as one lasts. In milliseconds, which "no limit"
         * (UINT64_MAX) cannot overflow. */
        uint64_t spent = (now_usec() - start) / 1000u, most = (SESSION_LINGER_USEC + LINGERER_SLACK_USEC) / 1000u;
        uint64_t left = timeout_msec > spent ? timeout_msec - spent : 0;
        perconn_free(p, (left < most ? left : most) * 1000u);
        return 0;
}

static void perconn_reap(Engine *e) {
        workers_reap(((PerConn *) e)->workers);
}

static void perconn_reconfigure(Engine *e, const Conf *started, const Conf *conf) {
        PerConn *p = (PerConn *) e;

        (void) started;
        /* Threads of the old size leave as they finish, or before they accept; new ones get
         * the new size. */
        workers_set_stack_size(p->workers, conf->worker_stack_size);
        lingerer_set_max(p->lingerer, conf->max_connections);
}

/* perconn_answered: a thread that waits for clients is the one that must not be stuck: each
 * session has a thread of its own, and a stuck one holds up its client alone. */
static bool perconn_answered(Engine *e) {
        PerConn *p = (PerConn *) e;
        uint64_t gen = __atomic_load_n(&p->alive_gen, __ATOMIC_ACQUIRE);
        bool answered = __atomic_load_n(&p->alive_acked, __ATOMIC_ACQUIRE) >= gen;

        __atomic_store_n(&p->alive_gen, gen + 1, __ATOMIC_RELEASE);
        (void) eventfd_write(p->ping_fd, 1);
        return answered;
}

static const EngineOps perconn_ops = {
        .add = perconn_add,
        .stop = perconn_stop,
        .end_conversations = perconn_end_conversations,
        .lingering = perconn_lingering,
        .reap = perconn_reap,
        .reconfigure = perconn_reconfigure,
        .set_listeners = perconn_set_listeners,
        .slot_freed = perconn_slot_freed,
        .hand_over = perconn_hand_over,
        .answered = perconn_answered,
        .nonblocking = false,
        .reads_proxy = true,
        .keeps_partial_lines = true,
};

/* open_control: the epoll set, its stop, slot and ping eventfds and resume timerfd. */
static int open_control(PerConn *p) {
        struct epoll_event stop_ev = { .events = EPOLLIN, .data.u64 = KEY_STOP };
        struct epoll_event resume_ev = { .events = EPOLLIN, .data.u64 = KEY_RESUME };
        struct epoll_event slot_ev = { .events = EPOLLIN, .data.u64 = KEY_SLOT };
        struct epoll_event ping_ev = { .events = EPOLLIN, .data.u64 = KEY_PING };

        p->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        p->resume_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        p->slot_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        p->ping_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->epoll_fd < 0 || p->stop_fd < 0 || p->resume_fd < 0 || p->slot_fd < 0 || p->ping_fd < 0 ||
            epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, p->stop_fd, &stop_ev) < 0 ||
            epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, p->resume_fd, &resume_ev) < 0 ||
            epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, p->slot_fd, &slot_ev) < 0 ||
            epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, p->ping_fd, &ping_ev) < 0)
                return -errno;
        return 0;
}

int perconn_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks) {
        PerConn *p = calloc(1, sizeof(*p));
        pthread_rwlockattr_t attr;
        int r;

        if (!p)
                return -ENOMEM;
        p->epoll_fd = p->stop_fd = p->resume_fd = p->slot_fd = p->ping_fd = -1;
        /* A new listener set must not wait behind a stream of accepting threads. */
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&p->listen_lock, &attr);
        pthread_rwlockattr_destroy(&attr);
        pthread_mutex_init(&p->queue_lock, NULL);
        p->engine = (Engine) { .ops = &perconn_ops, .hooks = *hooks };
        r = open_control(p);
        if (r == 0)
                r = serving_new(&p->serving);
        if (r == 0)
                r = lingerer_new(&p->lingerer, conf->max_connections, lingering_closing, p);
        if (r == 0)
                r = workers_new(&p->workers, conf->worker_stack_size, PERCONN_MAX_IDLE,
                                &(WorkerCalls) { .wait = wait_for_client, .serve = serve, .refuse = refuse,
                                                 .userdata = p });
        if (r == 0 && (r = workers_start(p->workers)) < 0)
                p->workers = workers_free(p->workers);
        if (r < 0) {
                perconn_free(p, 0);
                return r;
        }
        *ret = &p->engine;
        return 0;
}
