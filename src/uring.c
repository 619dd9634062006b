/* uring: the pool's event loops on io_uring instead of epoll (io_backend = "io_uring").
 *
 * The same model as pool.c, the same hooks and the same session policy (session.h); only the
 * way each loop talks to the kernel differs. A loop owns one ring, set up on its own thread
 * (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions are produced only when the loop asks
 * for them, so no other thread and no interrupt does its work), and makes one system call a
 * round: io_uring_submit_and_wait_timeout() submits everything the previous round prepared and
 * waits for completions or the first deadline.
 *
 * Operations:
 *   accept   one single-shot IORING_OP_ACCEPT per listener per loop, re-armed after each
 *            completion. Not multishot: a multishot accept cannot report each client's address
 *            (it would cost a getpeername() per connection, the system call this backend is
 *            meant to save), and an armed multishot accept keeps accepting while every slot
 *            is taken (overload = "queue"). The kernel wakes one waiter per connection for
 *            accept (its poll is exclusive), so every loop arms every listener, as with
 *            EPOLLEXCLUSIVE in pool.c. Out of descriptors, an IORING_OP_POLL_ADD on the listener
 *            comes first after the pause (see on_accept).
 *   receive  line framing: one multishot IORING_OP_RECV per session with buffers from the
 *            loop's provided-buffer ring (an idle session holds no buffer); chunk framing, where
 *            each read is one message of up to session_input_size() bytes: a single-shot
 *            receive into the session's own buffer of that size.
 *   send     IORING_OP_SEND of the session's output buffer (from the loop's cache); a short
 *            send is resubmitted with the rest, and the receive is cancelled meanwhile
 *            (back-pressure) until the client has taken its replies.
 *   wake     an IORING_OP_READ on the loop's eventfd: sessions handed over, a slot freed, new
 *            listeners, the stop.
 *
 * Lifetime: a session's Conn holds the operations the kernel has on it (inflight). Ending a
 * session (finish) cancels them; the done hook runs, and the Conn is freed, only once the last
 * of their completions has arrived, so no completion ever points at freed memory and no
 * buffer is freed under the kernel. Every function that can end a session returns a Fate;
 * GONE means ended: the caller returns without touching it.
 *
 * Kept input: data that arrives while a send is in flight (or that the protocol could not take
 * because the output was full) is kept in the Conn and fed once the send completes; that
 * completion is the event that brings it back, so no ready list is needed. Its size is bounded:
 * the receive is cancelled as soon as input must be kept while a send is in flight, and resumes
 * with receives of one buffer at a time (stop_recv). What is kept is what the multishot receive
 * had already taken by then: a burst, tens of KiB under a flood, at worst the buffer ring.
 *
 * Hand-over (docs/zero-downtime.md): the loop cancels each session's receive and send, keeps
 * what the receive still brings without answering it, counts what the send wrote, and passes
 * the session to the server's handed_over hook once its last completion is in (give), with
 * its kept input and unsent output in the Session, as pool.c has them. A resumed session
 * comes the other way (resume). */
#include <errno.h>
#include <inttypes.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "log.h"
#include "loopset.h"
#include "queued.h"
#include "uring.h"

#define SQ_ENTRIES 256
#define CQ_ENTRIES 4096
/* The provided-buffer ring: BUF_COUNT buffers of BUF_SIZE per loop (1 MiB), shared by all of
 * its sessions in line framing; a buffer is back in the ring as soon as its data is fed. */
#define BUF_GROUP 0
#define BUF_COUNT 256
#define BUF_SIZE 4096
/* Kept input beyond which the receive is cancelled even with no send in flight: a guard, since
 * pump() leaves input kept only behind a send, and input behind a send cancels it at once. */
#define KEPT_MAX SESSION_URING_KEPT_STOP
_Static_assert(KEPT_MAX + (size_t) BUF_COUNT * BUF_SIZE <= SESSION_URING_KEPT_MAX,
               "what a loop may keep of a session's input can be handed over");
_Static_assert(KEPT_MAX + BUF_SIZE == SESSION_URING_KEPT_SOFT, "session_memory_max() counts kept_capacity()'s step past KEPT_MAX");
/* Output buffers a loop keeps for reuse: at most OBUF_CACHE, and at most OBUF_CACHE_BYTES
 * together (64 of the usual 16 KiB; one when replies may be a MiB long). */
#define OBUF_CACHE 64
#define OBUF_CACHE_BYTES (1024u * 1024u)
/* Completions copied out of the ring at a time. */
#define CQE_BATCH 64

/* user_data: a pointer (8-byte aligned at least) with the operation in its low bits. */
enum {
        OP_RECV = 1,   /* Conn */
        OP_SEND = 2,   /* Conn */
        OP_ACCEPT = 3, /* Acceptor */
        OP_WAKE = 4,   /* Loop */
        OP_IGNORE = 5, /* no pointer: cancellations, whose own completion says nothing we need */
};
#define OP_MASK 7u

typedef enum Fate {
        ALIVE,
        GONE, /* ended: the Conn may be freed already, do not touch */
} Fate;

/* A completion, copied out of the ring so that its slot is free before it is handled. */
typedef struct Completion {
        uint64_t user_data;
        int32_t res;
        uint32_t flags;
} Completion;

typedef struct Conn {
        Session *s;
        Deadline timer;           /* in the loop's deadlines */
        char *kept;               /* input read but not fed yet */
        size_t kept_off, kept_len, kept_cap;
        char *rbuf; /* chunk framing: the buffer of the single-shot receive */
        size_t discarded; /* lingering: bytes read and thrown away */
        unsigned inflight; /* operations the kernel holds on this Conn */
        bool chunk;        /* chunk framing: single-shot receives into rbuf */
        bool throttled;    /* after back-pressure: single-shot receives of one buffer, until one
                            * finds the socket drained (stop_recv) */
        bool recv_armed, recv_cancelling, sending, eof, ended;
        bool answered; /* the send in flight carries replies to messages (feed) */
        bool handing; /* the hand-over: its operations are being cancelled (hand_over_begin) */
} Conn;

typedef struct Acceptor {
        struct Loop *loop;
        const Listener *via; /* in the pool's listener set of this loop's generation */
        struct sockaddr_storage peer;
        socklen_t peer_len;
        bool armed, cancelling;
        bool poll_first; /* out of descriptors: wait for a client before the next accept */
        bool polling;    /* what is armed is that wait (IORING_OP_POLL_ADD), not an accept */
        /* Its accept failed for a reason of its own (ACCEPT_FAILED: shut down, say): not armed
         * again before RETRY_AT (usec; 0: none), while the other listeners go on (a pause of
         * them all kept every client waiting out each of its 100 ms); logged once, not at every
         * retry, until it accepts again. */
        uint64_t retry_at;
        bool failing;
} Acceptor;

typedef struct Loop {
        LoopBase base; /* first: the shared part (loopset.h); its eventfd is blocking here:
                        * io_uring reads it rather than failing with EAGAIN */
        pthread_cond_t set_up; /* with base.lock: the ring's setup result is in */
        int setup_r;           /* 1 until the thread has set up its ring, then 0 or -errno */
        char setup_why[96];

        /* Loop thread only. */
        struct io_uring ring;
        bool ring_ok;
        struct io_uring_buf_ring *br;
        char *bufs;
        uint64_t wake_value;
        Deadlines deadlines; /* the sessions (Conn.timer) */
        unsigned n_conns;
        char **obufs; /* cached output buffers of obuf_size */
        unsigned n_obufs;
        size_t obuf_size;
        Acceptor *acc; /* one per listener of generation listen_gen */
        QueuedClient *parked; /* overload = "queue" (queued.h); accepting waits while one is there */
        size_t n_acc;
        unsigned acc_inflight; /* accepts the kernel holds */
        uint64_t listen_gen;
        bool retiring;    /* the accepts of the previous set are being cancelled */
        bool acc_failed;  /* the acceptors of the current set could not be allocated */
        bool exiting;     /* the pool is stopping */
        bool handing_over; /* ... by handing its sessions over: each goes once its operations are in */
        bool waiting_slot; /* overload = "queue": every slot taken */
        uint64_t paused_until;
        uint64_t retry_at; /* usec: the earliest Acceptor.retry_at ahead, or earlier; 0: none */
        /* CLOCK_MONOTONIC, read once a round: deadlines are whole seconds, and reading the
         * clock per request was 3-4% of the loop's time under load (perf). */
        uint64_t now;
} Loop;

typedef struct Uring {
        LoopSet set; /* first: the engine, the loops, the listeners */
} Uring;

static uint64_t tag(const void *p, unsigned op) {
        return (uint64_t) (uintptr_t) p | op;
}

/* ---- submission ---- */

/* sqe: a free submission entry; when the queue is full, what is in it is submitted first. */
static struct io_uring_sqe *sqe(Loop *l) {
        struct io_uring_sqe *e = io_uring_get_sqe(&l->ring);

        while (!e) {
                int r = io_uring_submit(&l->ring);
                if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
                        /* The ring is broken: nothing can go on. */
                        log_error_errno(r, "io_uring_submit failed");
                        abort();
                }
                e = io_uring_get_sqe(&l->ring);
        }
        return e;
}

static void cancel(Loop *l, uint64_t user_data) {
        struct io_uring_sqe *e = sqe(l);

        io_uring_prep_cancel64(e, user_data, 0);
        io_uring_sqe_set_data64(e, OP_IGNORE);
}

/* ---- the deadlines ---- */

static Conn *conn_of(Deadline *d) {
        return DEADLINE_OWNER(d, Conn, timer);
}

static void deadline_set(Loop *l, Conn *c, uint64_t deadline) {
        deadlines_set(&l->deadlines, &c->timer, deadline);
}

/* ---- buffers ---- */

static char *obuf_get(Loop *l, size_t size) {
        if (size == l->obuf_size && l->n_obufs > 0)
                return l->obufs[--l->n_obufs];
        return malloc(size);
}

static void obuf_put(Loop *l, Session *s) {
        if (!s->out.data)
                return;
        if (s->out.cap != l->obuf_size) { /* a reload changed the size: cache the new one */
                while (l->n_obufs > 0)
                        free(l->obufs[--l->n_obufs]);
                l->obuf_size = s->out.cap;
        }
        size_t kept = (size_t) l->n_obufs + 1; /* with this one */
        if (kept <= OBUF_CACHE && (kept == 1 || kept * l->obuf_size <= OBUF_CACHE_BYTES))
                l->obufs[l->n_obufs++] = s->out.data;
        else
                free(s->out.data);
        s->out.data = NULL;
        s->out.len = s->out_off = 0;
}

static void ring_buf_return(Loop *l, unsigned bid) {
        io_uring_buf_ring_add(l->br, l->bufs + (size_t) bid * BUF_SIZE, BUF_SIZE, (unsigned short) bid,
                              io_uring_buf_ring_mask(BUF_COUNT), 0);
        io_uring_buf_ring_advance(l->br, 1);
}

static bool has_kept(const Conn *c) {
        return c->kept_len > c->kept_off;
}

/* kept_capacity: room for NEED bytes of kept input, from CAP: doubling, with a stop at KEPT_MAX
 * and one buffer more, SESSION_URING_KEPT_SOFT (what usually arrives before the receive stops,
 * and what session_memory_max() counts; doubling straight past it took 128 KiB for 68).
 * Geometric beyond as well: completions already on their way when the receive stopped can add
 * many buffers, and growing a buffer at a time copies (and, under ASan, quarantines)
 * quadratically. */
static size_t kept_capacity(size_t cap, size_t need) {
        const size_t soft = SESSION_URING_KEPT_SOFT;

        if (cap == 0)
                cap = BUF_SIZE;
        while (cap < need)
                cap = cap < soft && cap * 2 > soft ? soft : cap * 2;
        return cap;
}

/* keep: N bytes at DATA appended to the kept input. */
static int keep(Conn *c, const char *data, size_t n) {
        size_t have = c->kept_len - c->kept_off;

        if (c->kept_off > 0) {
                memmove(c->kept, c->kept + c->kept_off, have);
                c->kept_off = 0;
                c->kept_len = have;
        }
        if (have + n > c->kept_cap) {
                size_t cap = kept_capacity(c->kept_cap, have + n);
                char *p = realloc(c->kept, cap);
                if (!p)
                        return -ENOMEM;
                c->kept = p;
                c->kept_cap = cap;
        }
        memcpy(c->kept + c->kept_len, data, n);
        c->kept_len += n;
        return 0;
}

static void kept_drop(Conn *c) {
        free(c->kept);
        c->kept = NULL;
        c->kept_off = c->kept_len = c->kept_cap = 0;
}

/* ---- one session ---- */

/* conn_free: C, its last operation in, and what it holds are gone; its session leaves the
 * loop (to the server: ended, or handed over). */
static void conn_free(Loop *l, Conn *c) {
        kept_drop(c);
        free(c->rbuf);
        free(c);
        l->n_conns--;
        __atomic_sub_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
}

/* settle: an ended Conn whose last operation has completed goes back to the server. */
static Fate settle(Loop *l, Conn *c) {
        if (c->inflight > 0)
                return GONE;
        Session *s = c->s;
        obuf_put(l, s);
        conn_free(l, c);
        engine_session_done(&l->base.set->engine, s);
        return GONE;
}

/* finish: the one way out. R: the I/O failure that ended it, or 0. The operations still in
 * the kernel are cancelled; the Conn is released when their completions are in. */
static Fate finish(Loop *l, Conn *c, int r) {
        if (r < 0)
                session_fail(c->s, r);
        c->ended = true;
        deadlines_remove(&l->deadlines, &c->timer);
        if (c->recv_armed && !c->recv_cancelling) {
                c->recv_cancelling = true;
                cancel(l, tag(c, OP_RECV));
        }
        if (c->sending)
                cancel(l, tag(c, OP_SEND));
        return settle(l, c);
}

static void arm_recv(Loop *l, Conn *c) {
        struct io_uring_sqe *e;

        if (c->recv_armed || c->eof)
                return;
        e = sqe(l);
        if (c->chunk) {
                io_uring_prep_recv(e, c->s->fd, c->rbuf, c->s->in_cap, 0);
        } else if (c->throttled) {
                io_uring_prep_recv(e, c->s->fd, NULL, BUF_SIZE, 0);
                e->flags |= IOSQE_BUFFER_SELECT;
                e->buf_group = BUF_GROUP;
        } else {
                io_uring_prep_recv_multishot(e, c->s->fd, NULL, 0, 0);
                e->flags |= IOSQE_BUFFER_SELECT;
                e->buf_group = BUF_GROUP;
        }
        io_uring_sqe_set_data64(e, tag(c, OP_RECV));
        c->recv_armed = true;
        c->inflight++;
}

/* stop_recv: back-pressure: no more input until the output is taken. A multishot receive
 * hands over whatever the socket holds, up to the whole buffer ring, and all of it would have
 * to be kept while the replies wait (0.5 MiB a connection was seen under a flood): its cancel
 * is submitted at once, not with the round (if that fails, the round's submits it), and the
 * receives that follow take one buffer at a time until one finds the socket drained. */
static void stop_recv(Loop *l, Conn *c) {
        c->throttled = true;
        if (c->recv_armed && !c->recv_cancelling) {
                c->recv_cancelling = true;
                cancel(l, tag(c, OP_RECV));
                (void) io_uring_submit(&l->ring);
        }
}

static void submit_send(Loop *l, Conn *c) {
        Session *s = c->s;
        struct io_uring_sqe *e = sqe(l);

        io_uring_prep_send(e, s->fd, s->out.data + s->out_off, s->out.len - s->out_off, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(e, tag(c, OP_SEND));
        c->sending = true;
        c->inflight++;
}

/* out_begin: the session's output buffer, empty, for the protocol to write into. */
static int out_begin(Loop *l, Session *s) {
        if (!s->out.data && !(s->out.data = obuf_get(l, s->out.cap)))
                return -ENOMEM;
        s->out.len = s->out_off = 0;
        return 0;
}

/* out_end: sends what the protocol wrote, if anything. */
static void out_end(Loop *l, Conn *c) {
        if (c->s->out.len > 0) {
                submit_send(l, c);
        } else {
                c->answered = false;
                obuf_put(l, c->s);
        }
}

/* conclude: the protocol has ended and its last words are sent: linger or close. */
static Fate conclude(Loop *l, Conn *c) {
        Session *s = c->s;

        if (!session_lingers(s))
                return finish(l, c, 0);
        if (c->eof || !engine_send_fin(s->engine, s))
                return finish(l, c, 0);
        s->lingering = true;
        kept_drop(c);
        c->discarded = 0;
        session_linger_begin(&s->linger, s->fd, 0, l->now);
        deadline_set(l, c, l->now + SESSION_LINGER_USEC);
        arm_recv(l, c);
        return ALIVE;
}

/* end_with: the protocol's closing words (the EOF answer, an ERR line); pump() concludes
 * once they are sent. */
static Fate end_with(Loop *l, Conn *c, ProtoEnd reason) {
        Session *s = c->s;
        int r = out_begin(l, s);

        if (r < 0)
                return finish(l, c, r);
        if (reason == PROTO_END_EOF)
                proto_eof(&s->proto, &s->out);
        else
                proto_abort(&s->proto, reason, &s->out);
        /* What arrives from here on is not read as requests (on_input), and the receive
         * stays armed for the lingering close. */
        kept_drop(c);
        deadline_set(l, c, session_write_deadline(s, l->now));
        out_end(l, c);
        return c->sending ? ALIVE : conclude(l, c);
}

/* feed: N bytes at DATA (the kept input, or a receive buffer) through the protocol, the
 * replies out. What the protocol cannot take yet (its output is full) is kept. */
static Fate feed(Loop *l, Conn *c, const char *data, size_t n) {
        Session *s = c->s;
        bool from_kept = data == c->kept + c->kept_off && has_kept(c);
        ProtoStatus status;
        int r;

        if (session_stop_requested(s))
                return end_with(l, c, PROTO_END_SHUTDOWN);
        r = out_begin(l, s);
        if (r < 0)
                return finish(l, c, r);
        uint64_t messages = s->proto.messages;
        size_t used = proto_feed(&s->proto, data, n, &s->out, &status);
        if (status == PROTO_CLOSE) {
                kept_drop(c);
        } else if (from_kept) {
                c->kept_off += used;
                if (!has_kept(c))
                        kept_drop(c);
        } else if (used < n && (r = keep(c, data + used, n - used)) < 0) {
                return finish(l, c, r);
        }
        c->answered = s->proto.messages != messages;
        if (c->answered)
                deadline_set(l, c, session_idle_deadline(s, l->now));
        out_end(l, c);
        return ALIVE;
}

/* pump: takes C as far as it can go now. Called whenever what it waits for has changed: a
 * send completed, input or EOF arrived, the receive ended. */
static Fate pump(Loop *l, Conn *c) {
        Session *s = c->s;

        while (!c->sending) {
                if (s->lingering) {
                        if (c->eof)
                                return finish(l, c, 0);
                        if (!c->recv_cancelling)
                                arm_recv(l, c);
                        return ALIVE;
                }
                if (s->proto.end != PROTO_END_NONE)
                        return conclude(l, c);
                if (session_stop_requested(s))
                        return end_with(l, c, PROTO_END_SHUTDOWN);
                if (has_kept(c)) {
                        if (feed(l, c, c->kept + c->kept_off, c->kept_len - c->kept_off) == GONE)
                                return GONE;
                        continue;
                }
                if (c->eof)
                        return end_with(l, c, PROTO_END_EOF);
                if (!c->recv_cancelling)
                        arm_recv(l, c);
                return ALIVE;
        }
        return ALIVE;
}

/* on_input: N bytes received. */
static Fate on_input(Loop *l, Conn *c, const char *data, size_t n) {
        Session *s = c->s;
        int r;

        if (s->lingering) {
                c->discarded += n;
                return session_linger_spent(s->fd, c->discarded) ? finish(l, c, 0) : ALIVE;
        }
        if (s->proto.end != PROTO_END_NONE) {
                s->proto.input_after_end = true; /* the client goes on sending: linger */
                /* Ended, last words on their way: nothing more is read until they are out (as
                 * in the pool), or a client flooding behind a stalled send would be read and
                 * thrown away at full speed until the write deadline. */
                stop_recv(l, c);
                return ALIVE;
        }
        if (c->sending || has_kept(c)) {
                if ((r = keep(c, data, n)) < 0)
                        return finish(l, c, r);
                /* The replies back up: no more input until they are out, but what a multishot
                 * receive has already taken must be kept (at worst the buffer ring). */
                if (c->sending || c->kept_len - c->kept_off > KEPT_MAX)
                        stop_recv(l, c);
                return ALIVE;
        }
        if (feed(l, c, data, n) == GONE)
                return GONE;
        return pump(l, c);
}

/* ---- the hand-over (docs/zero-downtime.md) ---- */

/* give: C, its last operation in, at rest for the next process. What it read and has not fed
 * becomes the session's kept input, as pool.c keeps it; the rest of its output and its deadline
 * stay with it. The server records it, and the Conn is gone. */
static Fate give(Loop *l, Conn *c) {
        const EngineHooks *hooks = &l->base.set->engine.hooks;
        Session *s = c->s;
        size_t kept = c->kept_len - c->kept_off;

        if (!s->lingering && kept > session_handover_input_max(s->conf)) {
                /* Chunk framing: more than a read (single-shot receives). */
                log_warning("connection %" PRIu64 " from %s sent %zu bytes ahead of its replies, more than "
                            "can be handed over; closing it",
                            s->id, s->peer, kept);
                return finish(l, c, 0);
        }
        deadlines_remove(&l->deadlines, &c->timer);
        s->timer.at = c->timer.at;
        if (s->lingering) {
                s->in_len = c->discarded; /* while lingering, in_len counts it (pool.c) */
        } else if (kept > 0) {
                s->in = c->kept;
                s->in_off = c->kept_off;
                s->in_len = c->kept_len;
                c->kept = NULL;
        }
        s->want_write = s->out.len > s->out_off;
        if (!s->want_write)
                obuf_put(l, s);
        conn_free(l, c);
        hooks->handed_over(s, hooks->userdata);
        return GONE;
}

/* hand_over_begin: every session of the loop is to go: its receive and its send are cancelled,
 * and each goes (give) as the last of their completions comes in. */
static void hand_over_begin(Loop *l) {
        Deadline *next;

        for (Deadline *d = deadlines_after(&l->deadlines, NULL); d; d = next) {
                Conn *c = conn_of(d);
                next = deadlines_after(&l->deadlines, d);
                c->handing = true;
                if (c->recv_armed && !c->recv_cancelling) {
                        c->recv_cancelling = true;
                        cancel(l, tag(c, OP_RECV));
                }
                if (c->sending)
                        cancel(l, tag(c, OP_SEND));
                if (c->inflight == 0)
                        (void) give(l, c);
        }
}

/* handing_recv: a completion of C's receive during the hand-over: its bytes are kept as they
 * came, not fed (or counted, lingering); nothing more is written to the client. */
static Fate handing_recv(Loop *l, Conn *c, const Completion *cqe, bool buffer, unsigned bid) {
        Session *s = c->s;
        int r = 0;

        if (cqe->res > 0 && s->lingering) /* as on_input: the linger's bound holds */
                r = session_linger_spent(s->fd, c->discarded += (size_t) cqe->res) ? -ECONNABORTED : 0;
        else if (cqe->res > 0 && s->proto.end != PROTO_END_NONE)
                s->proto.input_after_end = true; /* as on_input: not a request, not kept */
        else if (cqe->res > 0)
                r = keep(c, buffer ? l->bufs + (size_t) bid * BUF_SIZE : c->rbuf, (size_t) cqe->res);
        if (buffer)
                ring_buf_return(l, bid);
        if (r < 0)
                return finish(l, c, r == -ECONNABORTED ? 0 : r);
        return c->inflight == 0 ? give(l, c) : ALIVE;
}

static Fate on_recv(Loop *l, Conn *c, const Completion *cqe) {
        bool more = cqe->flags & IORING_CQE_F_MORE;
        bool buffer = cqe->flags & IORING_CQE_F_BUFFER;
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        Fate fate = ALIVE;

        if (!more) {
                c->recv_armed = c->recv_cancelling = false;
                c->inflight--;
        }
        if (c->ended) {
                if (buffer)
                        ring_buf_return(l, bid);
                return settle(l, c);
        }
        if (c->handing)
                return handing_recv(l, c, cqe, buffer, bid);
        if (cqe->res > 0) {
                if (!more && (size_t) cqe->res < BUF_SIZE)
                        c->throttled = false; /* the socket had less than a buffer: drained */
                /* The buffer goes back only after the data is fed or kept. */
                const char *data = buffer ? l->bufs + (size_t) bid * BUF_SIZE : c->rbuf;
                fate = on_input(l, c, data, (size_t) cqe->res);
                if (buffer)
                        ring_buf_return(l, bid);
                if (fate == GONE || more)
                        return fate;
                return pump(l, c);
        }
        if (buffer)
                ring_buf_return(l, bid);
        if (cqe->res == 0) {
                c->eof = true;
                if (c->s->proto.end != PROTO_END_NONE && !c->s->lingering)
                        return ALIVE; /* last words on their way; conclude() sees the EOF */
                return pump(l, c);
        }
        switch (-cqe->res) {
        case ECANCELED: /* back-pressure, or the end of a session */
        case ENOBUFS:   /* the ring ran dry for a moment: its buffers are back now */
        case EINTR:
        case EAGAIN:
                return more ? ALIVE : pump(l, c);
        default:
                if (c->s->lingering)
                        return finish(l, c, 0);
                return finish(l, c, cqe->res);
        }
}

/* cancelled: a send's result when it was cancelled before it sent anything: -ECANCELED, or
 * -EINTR when the cancellation interrupted it while it ran (io-wq; seen under the driver's
 * restarts). What it sent before a cancellation comes back as a count. */
static bool cancelled(int res) {
        return res == -ECANCELED || res == -EINTR;
}

static Fate on_send(Loop *l, Conn *c, int res) {
        Session *s = c->s;

        c->sending = false;
        c->inflight--;
        if (c->ended)
                return settle(l, c);
        if (c->handing) { /* cancelled, or done: what it sent is counted */
                if (res < 0 && !cancelled(res))
                        return finish(l, c, res);
                s->out_off += res > 0 ? (size_t) res : 0;
                return c->inflight == 0 ? give(l, c) : ALIVE;
        }
        if (res < 0)
                return finish(l, c, cancelled(res) ? -ETIMEDOUT : res);
        s->out_off += (size_t) res;
        if (s->out_off < s->out.len) {
                /* The client lags: keep the rest, wait for it, read nothing meanwhile. */
                if (!s->want_write) {
                        s->want_write = true;
                        deadline_set(l, c, session_write_deadline(s, l->now));
                }
                stop_recv(l, c);
                submit_send(l, c);
                return ALIVE;
        }
        obuf_put(l, s);
        if (s->want_write || c->answered) {
                /* The client took its replies: that is progress, not idleness. A send waits
                 * for a slow reader in the kernel, not in want_write, so the idle timeout
                 * counts from its completion, as the other engines count from the write that
                 * went through (pool.c's flush_kept, perconn.c's clock after the writes). */
                s->want_write = c->answered = false;
                if (s->proto.end == PROTO_END_NONE)
                        deadline_set(l, c, session_idle_deadline(s, l->now));
        }
        return pump(l, c);
}

static Fate on_deadline(Loop *l, Conn *c) {
        if (c->s->lingering) { /* its second is up; more while the client still takes its replies */
                uint64_t next = session_linger_next(&c->s->linger, c->s->fd, c->discarded, l->now);
                if (next == 0)
                        return finish(l, c, 0);
                deadline_set(l, c, next);
                return ALIVE;
        }
        if (c->sending) /* the client stopped reading its replies */
                return finish(l, c, -ETIMEDOUT);
        return end_with(l, c, PROTO_END_IDLE);
}

/* resume: a session handed over by the previous process (or kept across its crash) goes on
 * where it was: its kept input to be fed, its output sent, its lingering close. */
static Fate resume(Loop *l, Conn *c) {
        Session *s = c->s;
        int r = 0;

        if (s->lingering)
                c->discarded = s->in_len; /* while lingering, in_len counts it (pool.c) */
        else if (s->in_len > s->in_off)
                r = keep(c, s->in + s->in_off, s->in_len - s->in_off);
        free(s->in);
        s->in = NULL;
        s->in_off = s->in_len = 0;
        if (r < 0)
                return finish(l, c, r);
        if (s->out.len > s->out_off)
                submit_send(l, c);
        return pump(l, c);
}

static Fate start(Loop *l, Session *s) {
        Conn *c = calloc(1, sizeof(*c));
        int r;

        l->n_conns++;
        if (!c) {
                l->n_conns--;
                __atomic_sub_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
                session_fail(s, -ENOMEM);
                engine_session_done(&l->base.set->engine, s);
                return GONE;
        }
        c->s = s;
        c->chunk = s->conf->framing == FRAMING_CHUNK;
        deadline_set(l, c, s->resumed ? s->timer.at : session_idle_deadline(s, l->now));
        if (c->chunk && !(c->rbuf = malloc(s->in_cap)))
                return finish(l, c, -ENOMEM);
        if (s->resumed) /* greeted by the process before */
                return resume(l, c);
        if ((r = out_begin(l, s)) < 0)
                return finish(l, c, r);
        proto_greeting(&s->proto, &s->out);
        out_end(l, c);
        /* In line framing the receive is armed at once: the greeting's send and the first
         * request travel together. */
        arm_recv(l, c);
        return ALIVE;
}

/* ---- accepting ---- */

static void arm_accept(Loop *l, Acceptor *a) {
        struct io_uring_sqe *e = sqe(l);

        a->polling = a->poll_first;
        if (a->polling) {
                io_uring_prep_poll_add(e, a->via->fd, POLLIN);
        } else {
                a->peer_len = sizeof(a->peer);
                io_uring_prep_accept(e, a->via->fd, (struct sockaddr *) &a->peer, &a->peer_len,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        }
        io_uring_sqe_set_data64(e, tag(a, OP_ACCEPT));
        a->armed = true;
        l->acc_inflight++;
}

static bool accepting(const Loop *l) {
        return !l->exiting && !l->retiring && !l->waiting_slot && l->paused_until == 0;
}

/* park: FD (from PEER through VIA) waits for a slot, at the FRONT of the line (it was the
 * oldest) or its back. false: out of memory (the caller still has FD). */
static bool park(Loop *l, int fd, const struct sockaddr_storage *peer, const Listener *via, bool front) {
        QueuedClient *q = queued_new(fd, peer, via);

        if (!q)
                return false;
        queued_put(&l->parked, q, front);
        l->waiting_slot = true;
        return true;
}

/* admit: FD, accepted from VIA. With overload = "queue" and every slot taken (by another loop
 * since must_wait(), or before an accept armed earlier completed), it is parked once the
 * server has let it in (at the FRONT when it was the oldest). */
static void admit(Loop *l, int fd, const struct sockaddr_storage *peer, const Listener *via, bool front) {
        const EngineHooks *hooks = &l->base.set->engine.hooks;
        bool queued = front; /* FRONT: it waited (admit_parked) */
        Session *s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) peer, via, &queued);

        if (queued && !park(l, fd, peer, via, front)) { /* cannot wait: the server decides now */
                engine_waiting_add(&l->base.set->engine, -1);
                s = hooks->admit(hooks->userdata, fd, (const struct sockaddr *) peer, via, NULL);
        }
        if (!s)
                return;
        __atomic_add_fetch(&l->base.n_sessions, 1, __ATOMIC_RELAXED);
        s->engine = &l->base.set->engine;
        (void) start(l, s);
}

/* waiting_give: where a client never greeted goes at the loop's end: to the server, which
 * greets it and hands it over, or tells it it is stopping. */
static QueuedGive waiting_give(const Loop *l) {
        const EngineHooks *hooks = &l->base.set->engine.hooks;

        return l->handing_over ? hooks->handed_over_waiting : hooks->stopped_waiting;
}

/* admit_parked: the clients accepted while every slot was taken, oldest first, as long as
 * slots are free. */
static void admit_parked(Loop *l) {
        while (l->parked && !l->waiting_slot) {
                QueuedClient *q = queued_take(&l->parked);
                admit(l, q->fd, &q->peer, &q->via, true);
                free(q);
        }
}

static void on_accept(Loop *l, Acceptor *a, int res) {
        const EngineHooks *hooks = &l->base.set->engine.hooks;

        a->armed = a->cancelling = false;
        l->acc_inflight--;
        if (a->polling) {
                /* A client waits (or the poll failed, which the accept will say): the next
                 * round arms the accept. */
                a->polling = false;
                a->poll_first = res == -ECANCELED;
                return;
        }
        if (res == -ECANCELED)
                return;
        if (res >= 0)
                listener_note_accepted(a->via, &a->failing);
        if (res >= 0 && l->exiting) {
                /* Accepted as the loop stopped: nobody would stop a session of it. It goes
                 * where the parked clients go at the loop's end. */
                waiting_give(l)(hooks->userdata, res, &a->peer, a->via);
                return;
        }
        if (res >= 0) {
                /* Accepted while every slot is taken (the accept was armed before): the server
                 * decides, as for any client, and may tell it to wait; it must not wait
                 * unchecked, or a hand-over would greet a client allow/deny refuses. */
                admit(l, res, &a->peer, a->via, false);
                return;
        }
        switch (listener_accept_error(-res)) {
        case ACCEPT_DRAINED:
        case ACCEPT_RETRY:
                return;
        case ACCEPT_EXHAUSTED:
                hooks->exhausted(hooks->userdata, a->via, res);
                /* io_uring's accept takes its descriptor before it looks for a client: at the
                 * limit it would fail at once after every pause, client or not, and warn and
                 * spend the reserve descriptor each time. After the pause it waits for a
                 * client first, as the epoll loop waits for the listener to be readable. */
                a->poll_first = true;
                break;
        case ACCEPT_FAILED:
                listener_note_failure(a->via, &a->failing, res);
                a->retry_at = l->now + ENGINE_ACCEPT_PAUSE_USEC;
                if (l->retry_at == 0 || a->retry_at < l->retry_at)
                        l->retry_at = a->retry_at;
                return;
        }
        l->paused_until = l->now + ENGINE_ACCEPT_PAUSE_USEC;
}

static void acceptors_cancel(Loop *l) {
        for (size_t i = 0; i < l->n_acc; i++)
                if (l->acc[i].armed && !l->acc[i].cancelling) {
                        l->acc[i].cancelling = true;
                        cancel(l, tag(&l->acc[i], OP_ACCEPT));
                }
}

/* acceptors_take: the pool's current listener set, acknowledged. Without memory for its
 * acceptors the loop takes it up again after a pause (retiring stays set: nothing accepts
 * meanwhile), and says so once. */
static void acceptors_take(Loop *l) {
        const Listener *listeners;
        size_t n;

        free(l->acc);
        l->acc = NULL;
        l->n_acc = 0;
        l->retry_at = 0;
        l->listen_gen = loopset_take_listeners(&l->base, &listeners, &n);
        if (n > 0 && (l->acc = calloc(n, sizeof(Acceptor)))) {
                l->n_acc = n;
                for (size_t i = 0; i < l->n_acc; i++)
                        l->acc[i] = (Acceptor) { .loop = l, .via = &listeners[i] };
        }
        bool failed = n > 0 && !l->acc;
        if (failed && !l->acc_failed)
                log_error_errno(-ENOMEM, "cannot accept in an event loop, trying again");
        else if (!failed && l->acc_failed)
                log_notice("an event loop accepts again");
        l->acc_failed = failed;
        if (failed) {
                l->retiring = true;
                l->paused_until = l->now + ENGINE_ACCEPT_PAUSE_USEC;
        }
}

/* sync_listeners: at the top of each round. A new listener set: the accepts of the old one are
 * cancelled, and only when their last completion is in does the loop take up the new set and
 * acknowledge it, so that the server may close the old sockets. Then the accepts are
 * (re-)armed as far as accepting is allowed. */
static void sync_listeners(Loop *l) {
        uint64_t gen = loopset_listen_gen(l->base.set);

        if (gen != l->listen_gen)
                l->retiring = true;
        if (l->retiring || l->exiting)
                acceptors_cancel(l);
        if (l->retiring && l->acc_inflight == 0 && (!l->acc_failed || l->now >= l->paused_until)) {
                l->retiring = false;
                acceptors_take(l);
        }
        if (l->paused_until != 0 && l->now >= l->paused_until)
                l->paused_until = 0;
        if (l->retry_at != 0 && l->now >= l->retry_at) { /* the next failed listener's retry */
                l->retry_at = 0;
                for (size_t i = 0; i < l->n_acc; i++)
                        if (l->acc[i].retry_at > l->now && (l->retry_at == 0 || l->acc[i].retry_at < l->retry_at))
                                l->retry_at = l->acc[i].retry_at;
        }
        if (!accepting(l))
                return;
        for (size_t i = 0; i < l->n_acc; i++)
                if (!l->acc[i].armed && l->now >= l->acc[i].retry_at) {
                        /* An accept armed while clients wait for a slot (here or in another
                         * loop) would take the next one from the backlog past them. */
                        const EngineHooks *hooks = &l->base.set->engine.hooks;
                        if (hooks->must_wait(hooks->userdata)) {
                                l->waiting_slot = true;
                                return;
                        }
                        arm_accept(l, &l->acc[i]);
                }
}

/* ---- the loop ---- */

static void arm_wake(Loop *l) {
        struct io_uring_sqe *e = sqe(l);

        io_uring_prep_read(e, l->base.wake_fd, &l->wake_value, sizeof(l->wake_value), 0);
        io_uring_sqe_set_data64(e, tag(l, OP_WAKE));
}

/* end_conversations: the server has asked every session to stop: pump() ends each one waiting
 * for its client's input with the shutdown line (its receive stays armed, for the lingering
 * close); one sending does once its replies are out (on_send). A session that pump() moves to
 * another deadline may come again in the walk, ended by then. */
static void end_conversations(Loop *l) {
        for (Deadline *d = deadlines_after(&l->deadlines, NULL), *next; d; d = next) {
                next = deadlines_after(&l->deadlines, d);
                Conn *c = conn_of(d);
                if (!c->s->lingering && c->s->proto.end == PROTO_END_NONE)
                        (void) pump(l, c);
        }
}

/* on_wake: sessions handed over, a slot freed, new listeners, the conversations' end, or the
 * stop. */
static void on_wake(Loop *l, int res) {
        Session *incoming;

        if (res < 0 && res != -EINTR && res != -EAGAIN && res != -ECANCELED)
                log_error_errno(res, "reading the event loop's eventfd failed");
        if (!loopset_take_incoming(&l->base, &incoming))
                l->exiting = true;
        if (!l->exiting)
                arm_wake(l);
        else
                l->handing_over = loopset_handing_over(l->base.set);
        while (incoming) { /* oldest first */
                Session *next = incoming->incoming_next;
                incoming->incoming_next = NULL;
                (void) start(l, incoming);
                incoming = next;
        }
        if (l->handing_over) {
                hand_over_begin(l);
                return;
        }
        l->waiting_slot = false; /* must_wait() says whether it is still full */
        if (!l->exiting)
                admit_parked(l);
        if (loopset_ending_conversations(&l->base))
                end_conversations(l);
}

static void dispatch(Loop *l, const Completion *cqe) {
        uint64_t data = cqe->user_data;
        void *p = (void *) (uintptr_t) (data & ~(uint64_t) OP_MASK);

        switch (data & OP_MASK) {
        case OP_RECV:
                (void) on_recv(l, p, cqe);
                break;
        case OP_SEND:
                (void) on_send(l, p, cqe->res);
                break;
        case OP_ACCEPT:
                on_accept(l, p, cqe->res);
                break;
        case OP_WAKE:
                on_wake(l, cqe->res);
                break;
        default:
                break;
        }
}

/* run_deadlines: each call ends the session or moves its deadline on, so this terminates. */
static void run_deadlines(Loop *l) {
        if (l->handing_over) /* the deadlines go with the sessions */
                return;
        Deadline *d;

        while ((d = deadlines_due(&l->deadlines, l->now)))
                (void) on_deadline(l, conn_of(d));
}

/* wait_time: until the first deadline or the end of an accept pause; false: no limit. */
static bool wait_time(const Loop *l, struct __kernel_timespec *ts) {
        uint64_t wake = deadlines_next_at(&l->deadlines); /* SESSION_NO_DEADLINE: none */

        if (l->handing_over) /* the cancellations' completions are what comes next */
                return false;
        if (l->paused_until != 0 && l->paused_until < wake)
                wake = l->paused_until;
        if (accepting(l) && l->retry_at > l->now && l->retry_at < wake) /* a failed listener's retry */
                wake = l->retry_at;
        if (wake == SESSION_NO_DEADLINE)
                return false;
        uint64_t now = now_usec(), usec = wake > now ? wake - now : 0;
        ts->tv_sec = (long long) (usec / 1000000u);
        ts->tv_nsec = (long long) (usec % 1000000u) * 1000;
        return true;
}

static void loop_run(Loop *l) {
        l->now = now_usec();
        arm_wake(l);
        while (!l->exiting || l->n_conns > 0 || l->acc_inflight > 0) {
                struct io_uring_cqe *cqe, *batch[CQE_BATCH];
                struct __kernel_timespec ts;
                Completion done[CQE_BATCH];
                unsigned n;

                sync_listeners(l);
                int r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, wait_time(l, &ts) ? &ts : NULL, NULL);
                if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) {
                        log_error_errno(r, "io_uring_submit_and_wait_timeout failed");
                        abort(); /* sessions in the kernel's hands cannot be recovered */
                }
                l->now = now_usec();
                while ((n = io_uring_peek_batch_cqe(&l->ring, batch, CQE_BATCH)) > 0) {
                        for (unsigned i = 0; i < n; i++)
                                done[i] = (Completion) { .user_data = batch[i]->user_data, .res = batch[i]->res,
                                                         .flags = batch[i]->flags };
                        io_uring_cq_advance(&l->ring, n);
                        for (unsigned i = 0; i < n; i++)
                                dispatch(l, &done[i]);
                }
                run_deadlines(l);
        }
        queued_give_all(&l->parked, waiting_give(l), l->base.set->engine.hooks.userdata);
}

/* ---- setting up a loop's ring, on its own thread ---- */

/* The operations a loop submits: the kernel must offer each, and its ring takes no other. */
static const struct {
        unsigned char op;
        const char *name;
} ring_ops[] = {
        { IORING_OP_ACCEPT, "accept" }, { IORING_OP_RECV, "recv" },
        { IORING_OP_SEND, "send" },     { IORING_OP_READ, "read" },
        { IORING_OP_ASYNC_CANCEL, "cancel" }, { IORING_OP_POLL_ADD, "poll" },
};
#define RING_OPS (sizeof(ring_ops) / sizeof(ring_ops[0]))

static int probe_ops(struct io_uring *ring, char *why, size_t size) {
        struct io_uring_probe *probe = io_uring_get_probe_ring(ring);

        if (!probe) {
                snprintf(why, size, "cannot probe its operations");
                return -EOPNOTSUPP;
        }
        for (size_t i = 0; i < RING_OPS; i++)
                if (!io_uring_opcode_supported(probe, ring_ops[i].op)) {
                        snprintf(why, size, "the kernel lacks its %s operation", ring_ops[i].name);
                        io_uring_free_probe(probe);
                        return -EOPNOTSUPP;
                }
        io_uring_free_probe(probe);
        if (!(ring->features & IORING_FEAT_FAST_POLL) || !(ring->features & IORING_FEAT_EXT_ARG) ||
            !(ring->features & IORING_FEAT_NODROP)) {
                snprintf(why, size, "the kernel lacks fast poll, extended wait arguments or no-drop completions");
                return -EOPNOTSUPP;
        }
        return 0;
}

/* restrict_ops: RING, still disabled, takes only ring_ops, with no SQE flag but a provided
 * buffer's, and no registration but a buffer ring's; then it is enabled, on this thread. */
static int restrict_ops(struct io_uring *ring, char *why, size_t size) {
        struct io_uring_restriction res[RING_OPS + 3];
        unsigned n = 0;
        int r;

        memset(res, 0, sizeof(res));
        for (size_t i = 0; i < RING_OPS; i++) {
                res[n].opcode = IORING_RESTRICTION_SQE_OP;
                res[n++].sqe_op = ring_ops[i].op;
        }
        res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
        res[n++].sqe_flags = IOSQE_BUFFER_SELECT;
        res[n].opcode = IORING_RESTRICTION_REGISTER_OP;
        res[n++].register_op = IORING_REGISTER_PBUF_RING;
        res[n].opcode = IORING_RESTRICTION_REGISTER_OP;
        res[n++].register_op = IORING_UNREGISTER_PBUF_RING;
        /* Through io_uring_register(): Debian 12's liburing 2.3 declares
         * io_uring_register_restrictions() and io_uring_enable_rings() but does not export
         * them. It returns the kernel's negative errno. */
        if ((r = io_uring_register((unsigned) ring->ring_fd, IORING_REGISTER_RESTRICTIONS, res, n)) < 0) {
                snprintf(why, size, "cannot restrict its ring to its operations");
                return r;
        }
        if ((r = io_uring_register((unsigned) ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0)) < 0) {
                snprintf(why, size, "cannot enable its ring");
                return r;
        }
        return 0;
}

int uring_ring_open(struct io_uring *ring, char *why, size_t size) {
        struct io_uring_params params = {
                .flags = IORING_SETUP_R_DISABLED | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL |
                         IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                .cq_entries = CQ_ENTRIES,
        };
        int r = io_uring_queue_init_params(SQ_ENTRIES, ring, &params);

        if (r == -EINVAL) { /* before Linux 6.1: without the task-work flags */
                params = (struct io_uring_params) { .flags = IORING_SETUP_R_DISABLED | IORING_SETUP_CQSIZE,
                                                    .cq_entries = CQ_ENTRIES };
                r = io_uring_queue_init_params(SQ_ENTRIES, ring, &params);
        }
        if (r < 0) {
                snprintf(why, size, "cannot set up io_uring");
                return r;
        }
        if ((r = probe_ops(ring, why, size)) < 0 || (r = restrict_ops(ring, why, size)) < 0) {
                io_uring_queue_exit(ring);
                return r;
        }
        return 0;
}

/* probe_multishot: a multishot receive with a provided buffer, tried on a socketpair: kernels
 * before 6.0 have the opcode but not the mode, and say so only when it is used. */
static int probe_multishot(Loop *l, char *why, size_t size) {
        struct io_uring_cqe *cqe;
        int sv[2], r;
        bool ok = false;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        struct io_uring_sqe *e = io_uring_get_sqe(&l->ring); /* the ring is empty: never NULL */
        if (!e) {
                close(sv[0]);
                close(sv[1]);
                return -EBUSY;
        }
        io_uring_prep_recv_multishot(e, sv[0], NULL, 0, 0);
        e->flags |= IOSQE_BUFFER_SELECT;
        e->buf_group = BUF_GROUP;
        io_uring_sqe_set_data64(e, OP_IGNORE); /* a completion left by a failed drain is not a Conn's */
        ssize_t sent = send(sv[1], "x", 1, MSG_NOSIGNAL);
        bool tried = sent == 1; /* else the probe could not be made: no verdict on the kernel */
        r = tried ? io_uring_submit_and_wait(&l->ring, 1) : sent < 0 ? -errno : -EIO;
        if (r >= 0 && (r = io_uring_peek_cqe(&l->ring, &cqe)) == 0) {
                ok = cqe->res == 1 && (cqe->flags & IORING_CQE_F_MORE) && (cqe->flags & IORING_CQE_F_BUFFER);
                if (cqe->flags & IORING_CQE_F_BUFFER)
                        ring_buf_return(l, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                r = ok ? 0 : cqe->res < 0 ? cqe->res : -EOPNOTSUPP;
                io_uring_cqe_seen(&l->ring, cqe);
        }
        /* Closing both ends ends the receive (EOF); drain until its last completion. */
        close(sv[1]);
        close(sv[0]);
        for (bool more = ok; more;) {
                if (io_uring_wait_cqe(&l->ring, &cqe) < 0)
                        break;
                more = cqe->flags & IORING_CQE_F_MORE;
                if (cqe->flags & IORING_CQE_F_BUFFER)
                        ring_buf_return(l, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                io_uring_cqe_seen(&l->ring, cqe);
        }
        if (!ok)
                snprintf(why, size, tried ? "the kernel lacks multishot receive (Linux 6.0)"
                                          : "cannot send the multishot receive probe its byte");
        return ok ? 0 : r < 0 ? r : -EOPNOTSUPP;
}

static int ring_setup(Loop *l, char *why, size_t size) {
        int r = uring_ring_open(&l->ring, why, size);

        if (r < 0)
                return r;
        l->ring_ok = true;

        size_t ring_size = BUF_COUNT * sizeof(struct io_uring_buf);
        void *mem = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        if (mem == MAP_FAILED) {
                r = -errno;
                snprintf(why, size, "cannot map its buffer ring");
                return r;
        }
        l->br = mem;
        io_uring_buf_ring_init(l->br);
        struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t) mem, .ring_entries = BUF_COUNT, .bgid = BUF_GROUP };
        if ((r = io_uring_register_buf_ring(&l->ring, &reg, 0)) < 0) {
                snprintf(why, size, "cannot register a provided-buffer ring (Linux 5.19)");
                return r;
        }
        /* Resident from the start: the kernel takes the buffers in turn, so that a loop under
         * load soon touches every one of them; its megabyte is a fixed cost, not a growth. */
        void *bufs = mmap(NULL, (size_t) BUF_COUNT * BUF_SIZE, PROT_READ | PROT_WRITE,
                          MAP_ANONYMOUS | MAP_PRIVATE | MAP_POPULATE, -1, 0);
        if (bufs == MAP_FAILED) {
                r = -errno;
                snprintf(why, size, "cannot map its receive buffers");
                return r;
        }
        l->bufs = bufs;
        if (!(l->obufs = calloc(OBUF_CACHE, sizeof(char *)))) {
                snprintf(why, size, "out of memory");
                return -ENOMEM;
        }
        for (unsigned i = 0; i < BUF_COUNT; i++)
                io_uring_buf_ring_add(l->br, l->bufs + (size_t) i * BUF_SIZE, BUF_SIZE, (unsigned short) i,
                                      io_uring_buf_ring_mask(BUF_COUNT), (int) i);
        io_uring_buf_ring_advance(l->br, BUF_COUNT);
        return probe_multishot(l, why, size);
}

static void ring_teardown(Loop *l) {
        if (l->ring_ok) {
                if (l->br)
                        (void) io_uring_unregister_buf_ring(&l->ring, BUF_GROUP);
                io_uring_queue_exit(&l->ring);
        }
        if (l->br)
                munmap(l->br, BUF_COUNT * sizeof(struct io_uring_buf));
        if (l->bufs)
                munmap(l->bufs, (size_t) BUF_COUNT * BUF_SIZE);
        while (l->n_obufs > 0)
                free(l->obufs[--l->n_obufs]);
        free(l->obufs);
        free(l->acc);
        l->ring_ok = false;
        l->br = NULL;
        l->bufs = NULL;
        l->obufs = NULL;
        l->acc = NULL;
}

static void *loop_main(void *arg) {
        Loop *l = arg;
        char why[sizeof(l->setup_why)] = "";
        int r;

        (void) pthread_setname_np(pthread_self(), "hellod-loop");
        r = ring_setup(l, why, sizeof(why));
        pthread_mutex_lock(&l->base.lock);
        l->setup_r = r;
        memcpy(l->setup_why, why, sizeof(why));
        pthread_cond_broadcast(&l->set_up);
        pthread_mutex_unlock(&l->base.lock);
        if (r == 0)
                loop_run(l);
        ring_teardown(l);

        loopset_exited(&l->base);
        return NULL;
}

/* ---- the engine ---- */

static void loop_done(LoopBase *base) {
        pthread_cond_destroy(&((Loop *) base)->set_up);
}

/* loop_start: the thread, and its ring's setup result (WHY says what failed). */
static int loop_start(Uring *p, Loop *l, size_t stack_size, char *why, size_t size) {
        int r = loopset_start(&p->set, &l->base, stack_size, 0, NULL, loop_main);

        if (r < 0)
                return r;
        pthread_mutex_lock(&l->base.lock);
        while (l->setup_r == 1)
                pthread_cond_wait(&l->set_up, &l->base.lock);
        r = l->setup_r;
        snprintf(why, size, "%s", l->setup_why);
        pthread_mutex_unlock(&l->base.lock);
        return r;
}

static int uring_stop(Engine *e, uint64_t timeout_msec) {
        return loopset_stop(&((Uring *) e)->set, timeout_msec, loop_done);
}

static int uring_hand_over(Engine *e, uint64_t timeout_msec) {
        return loopset_hand_over(&((Uring *) e)->set, timeout_msec, loop_done);
}

static const EngineOps uring_ops = {
        .add = loopset_engine_add,
        .stop = uring_stop,
        .end_conversations = loopset_engine_end_conversations,
        .reconfigure = loopset_engine_reconfigure,
        /* Each loop takes up a new set once the last completion of its accepts on the old
         * sockets is in (sync_listeners): only then may the server close them. */
        .set_listeners = loopset_engine_set_listeners,
        .slot_freed = loopset_engine_slot_freed,
        .hand_over = uring_hand_over,
        .answered = loopset_engine_answered,
        .nonblocking = true,
};

/* uring_try: the engine, or a negative errno and WHY when io_uring cannot be had. */
static int uring_try(Engine **ret, const Conf *conf, const EngineHooks *hooks, char *why, size_t size) {
        Uring *p = calloc(1, sizeof(*p));
        int r;

        if (!p || (r = loopset_init(&p->set, conf->workers, sizeof(Loop), &uring_ops, hooks)) < 0) {
                free(p);
                snprintf(why, size, "out of memory");
                return -ENOMEM;
        }
        for (unsigned i = 0; i < conf->workers; i++) {
                Loop *l = (Loop *) loopset_loop(&p->set, i);
                l->setup_r = 1;
                pthread_cond_init(&l->set_up, NULL);
        }
        for (unsigned i = 0; i < conf->workers && r == 0; i++)
                r = loop_start(p, (Loop *) loopset_loop(&p->set, i), conf->worker_stack_size, why, size);
        if (r < 0) {
                /* A loop whose setup failed has returned already; the others are stopped. */
                (void) uring_stop(&p->set.engine, UINT64_MAX);
                return r;
        }
        *ret = &p->set.engine;
        return 0;
}

int uring_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks) {
        char why[96] = "";

        const char *unfit = engine_uring_unfit(conf);

        if (unfit) {
                log_notice("%s; the event loops use epoll", unfit);
                return pool_engine_new(ret, conf, hooks);
        }
        int r = uring_try(ret, conf, hooks, why, sizeof(why));

        if (r == 0)
                return 0;
        /* Seccomp (a SystemCallFilter= without io_uring), kernel.io_uring_disabled, an old
         * kernel: the pool serves the same on epoll. */
        log_notice("io_backend = \"io_uring\" is unavailable (%s: %s); the event loops use epoll",
                   why[0] ? why : "cannot start", strerror(-r));
        return pool_engine_new(ret, conf, hooks);
}
