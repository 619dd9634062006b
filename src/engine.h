/* engine: the interface behind which each worker model drives its sessions.
 *
 *   pool.c     workers = N | "auto": N event loops, each serving many non-blocking sessions,
 *              each accepting from the listeners itself
 *   uring.c    the same pool on io_uring (io_backend = "io_uring")
 *   perconn.c  workers = "per-connection": a thread per session (worker.c); the threads
 *              waiting for a connection accept it themselves
 *
 * A connection is admitted by the server's hooks (limits, access lists, registration), on
 * whichever engine thread accepted it; a session resumed from another process is given to
 * the engine with engine_add().
 * From then on only the engine's thread touches the session (the server may still call
 * session_stop()/session_kill(), which act on the socket alone) until the engine calls the
 * done hook, exactly once per session, which takes the session back for good. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "handover.h"
#include "listener.h"
#include "session.h"

typedef struct Engine Engine;

/* The server's side, called from the engine's threads. */
typedef struct EngineHooks {
        void *userdata;
        /* done: S has ended. Called on the thread that drove it, which never touches S again:
         * the hook owns it (logs, unregisters and frees it). */
        void (*done)(Session *s, void *userdata);
        /* admit: FD was accepted from VIA by the engine: the access lists and limits decide.
         * Returns the registered session to start, or NULL: the client was turned away and FD
         * is closed; or, when QUEUED is not NULL and *QUEUED is set, overload = "queue" found
         * every slot taken (or other clients waiting before it): FD is still the engine's, to
         * keep waiting (counted in Engine.waiting, accepting nothing after it that could pass
         * it) and admit again once the server calls engine_slot_freed(), with *QUEUED true on
         * the way in (false for a client just accepted); VIA may be a copy, kept by the engine
         * for that. must_wait()
         * spares the accept while the server is full; this decides, under the same lock that
         * takes the slot, for a client accepted while another thread took the last one. */
        Session *(*admit)(void *userdata, int fd, const struct sockaddr *peer, const Listener *via, bool *queued);
        /* must_wait: overload = "queue" and every slot taken: accept nothing now; the server
         * calls engine_slot_freed() when one frees. */
        bool (*must_wait)(void *userdata);
        /* exhausted: accepting from VIA failed for lack of descriptors or memory (-ERROR):
         * the server turns that client away with its reserve descriptor. The engine then
         * pauses accepting for ENGINE_ACCEPT_PAUSE_USEC. */
        void (*exhausted)(void *userdata, const Listener *via, int error);
        /* handed_over: S is at rest for the hand-over to the next process (engine_hand_over):
         * the hook records it and owns it from then on, like done. */
        void (*handed_over)(Session *s, void *userdata);
        /* handed_over_lingering: the same for a conversation that ended before (its done hook
         * was called) and lingers on the socket FD, which the engine kept: REC is its record
         * (handoff_lingering_at()), STORED_AS its name in systemd's store if it is still there
         * (HandoffLingering), else ""; the hook owns FD from then on. */
        void (*handed_over_lingering)(void *userdata, const HandoverRecord *rec, int fd, const char *stored_as);
        /* ending: S, stored (Session.stored), has ended its conversation (proto.end) and waits
         * for its client to take the last replies before its FIN, or lingers after it
         * (engine_send_fin); on its engine thread, once or more. */
        void (*ending)(Session *s, void *userdata);
        /* lingering_closed: such a conversation's socket, still in systemd's store under the
         * name STORED_AS, is about to be closed: out of the store first (as the done hook does
         * for a session that closes). */
        void (*lingering_closed)(void *userdata, const char *stored_as);
        /* handed_over_waiting: the same for a client admit() left waiting (QUEUED), never
         * greeted: FD, accepted from VIA (a copy) with PEER; the hook owns FD from then on. */
        void (*handed_over_waiting)(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via);
        /* stopped_waiting: the engine stops with no hand-over, and FD, a client admit() left
         * waiting (QUEUED), never greeted, is still in its hands: the hook tells it the server
         * is stopping, as admit() tells a client that comes during a stop, and owns FD from
         * then on. (The wakeup of a freed slot, which has admit() tell it, may come too late.) */
        void (*stopped_waiting)(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via);
        /* proxied: S came through a PROXY listener and its header is in (STATUS PROXY_DONE,
         * HEADER), malformed or late (PROXY_INVALID, REASON): the server admits the client the
         * header names, or turns it away. true: go on (greet, then the bytes after the
         * header); false: end the session (the server has said what there was to say). */
        bool (*proxied)(void *userdata, Session *s, ProxyStatus status, const ProxyHeader *header,
                        const char *reason);
} EngineHooks;

/* How long accepting pauses when the process is out of descriptors or memory. */
#define ENGINE_ACCEPT_PAUSE_USEC 100000u

typedef struct EngineOps {
        /* add: S was resumed from another process (its socket made non-blocking when
         * `nonblocking`). 0, or a negative errno when no thread can take it: the caller still
         * owns S. */
        int (*add)(Engine *e, Session *s);
        /* stop: once the server has stopped every session, waits for the threads at most
         * TIMEOUT_MSEC. 0: joined and freed. -ETIMEDOUT: a thread is still running and the
         * engine is left to it (its done callback may still come); stop may be called again. */
        int (*stop)(Engine *e, uint64_t timeout_msec);
        /* end_conversations: the server has asked every session to stop (session_stop(), which
         * leaves the socket alone): the engine's threads look at their sessions, and each one
         * waiting for its client's next line ends with the shutdown line; one writing goes on
         * until its replies are out. Called once, after the last session the engine serves was
         * registered: none is admitted during a stop, and resumed ones come before serving. */
        void (*end_conversations)(Engine *e);
        /* lingering: the sockets of conversations that ended and are no session any more, still
         * lingering (session_send_fin) in the engine: each closes within its lingering close's
         * time (a second, more while its client still sends: session_linger_next).
         * NULL: an engine whose sessions linger as sessions (the pools). */
        size_t (*lingering)(Engine *e);
        /* reap: housekeeping from the server thread (joins exited threads). */
        void (*reap)(Engine *e);
        /* reconfigure: applies what it can of CONF to the running engine, logs what it cannot;
         * STARTED is the configuration it was started with. */
        void (*reconfigure)(Engine *e, const Conf *started, const Conf *conf);
        /* set_listeners: the engine accepts from SET's sockets from now on (the empty set: from
         * none). Returns once no engine thread uses a socket of the previous set any more, so
         * that the server may close those. SET's array is the engine's to read (not copied:
         * a copy could fail halfway through a reload) until the next call: the server leaves
         * it unchanged until then. Cannot fail. */
        void (*set_listeners)(Engine *e, const ListenerSet *set);
        /* slot_freed: overload = "queue": a slot is free again (see must_wait). */
        void (*slot_freed)(Engine *e);
        /* hand_over: like stop, but instead of ending its sessions the engine brings each to
         * rest between two reads, writes nothing more to its client, and passes it to the
         * handed_over hook. */
        int (*hand_over)(Engine *e, uint64_t timeout_msec);
        /* answered: whether the threads the engine cannot do without (every event loop; with a
         * thread per connection, one of those waiting for clients) have all woken to the previous
         * call's question (true at the first), then asks them again. The server asks four times
         * per watchdog interval and pings systemd only when they answered: a stuck loop then gets
         * the daemon restarted, as WatchdogSec= means. */
        bool (*answered)(Engine *e);
        bool nonblocking; /* the sessions' sockets must be non-blocking */
        bool reads_proxy; /* reads a PROXY header before the greeting (EngineHooks.proxied) */
        /* keeps_partial_lines: a stored session's partial line stays in the kernel until its
         * end arrives (handover = "always": a crash then loses none of it) */
        bool keeps_partial_lines;
} EngineOps;

struct Engine {
        const EngineOps *ops;
        EngineHooks hooks;
        /* atomic: clients left waiting (QUEUED) that the engine holds now, counted by admit()
         * under the server's lock as it tells a client to wait and takes a waiting one back (an
         * engine counts only what it keeps without asking admit(), and gives back the count of a
         * client it cannot keep after all). While there are any, a client accepted after them
         * waits too, and accepting waits (must_wait), so that none of them is passed by a client
         * from the backlog. */
        unsigned waiting;
};

/* engine_waiting_add: the engine holds DELTA more (or fewer) waiting clients. */
static inline void engine_waiting_add(Engine *e, int delta) {
        __atomic_add_fetch(&e->waiting, (unsigned) delta, __ATOMIC_ACQ_REL);
}

static inline unsigned engine_waiting(const Engine *e) {
        return e ? __atomic_load_n(&e->waiting, __ATOMIC_ACQUIRE) : 0;
}

/* engine_send_fin: session_send_fin() for S of E. Stored, a session that lingers lingers in
 * systemd's store too, under the name of one that has ended (EngineHooks.ending, once: it may
 * have been renamed as its last replies waited): kept there through its client's hang-up
 * (notify_fdstore_add), for the next process to read away after a crash. */
static inline bool engine_send_fin(Engine *e, Session *s) {
        bool lingers = session_send_fin(s);

        /* Not at a stop: systemd empties the store then, and the messages would only slow it. */
        if (lingers && s->stored && s->proto.end != PROTO_END_SHUTDOWN)
                e->hooks.ending(s, e->hooks.userdata);
        return lingers;
}

/* workers = "per-connection": waiting threads kept for the next connections; more leave after
 * their session. */
#define PERCONN_MAX_IDLE 64

/* The drivers. Each returns 0 or a negative errno. */
int pool_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks);
int perconn_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks);
/* uring_engine_new: the pool on io_uring; where io_uring is unavailable, logs why (notice) and
 * returns the epoll pool. */
int uring_engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks);

/* engine_uring_unfit: why CONF's pool cannot run on io_uring whatever the kernel offers (the
 * notice's words), or NULL. */
static inline const char *engine_uring_unfit(const Conf *conf) {
        if (conf_has_proxy_listener(conf))
                return "io_backend = \"io_uring\" does not read PROXY protocol headers";
        /* Its multishot receive takes every byte in: a partial line is not left in the kernel
         * (pool.c, read_lines), and a crash would lose it. */
        if (conf->handover == HANDOVER_MODE_ALWAYS)
                return "io_backend = \"io_uring\" cannot leave partial lines in the kernel for "
                       "handover = \"always\"";
        return NULL;
}

/* engine_runs_uring: whether CONF asks for a pool on io_uring that it can have (the kernel
 * willing: uring_engine_new() finds out). */
static inline bool engine_runs_uring(const Conf *conf) {
        return conf->workers != 0 && conf->io_backend == IO_BACKEND_IO_URING && !engine_uring_unfit(conf);
}

/* engine_new: the model CONF chooses (its `workers`, and for the pool its `io_backend`). */
static inline int engine_new(Engine **ret, const Conf *conf, const EngineHooks *hooks) {
        if (conf->workers == 0)
                return perconn_engine_new(ret, conf, hooks);
        if (conf->io_backend == IO_BACKEND_IO_URING)
                return uring_engine_new(ret, conf, hooks);
        return pool_engine_new(ret, conf, hooks);
}

static inline int engine_add(Engine *e, Session *s) {
        s->engine = e;
        return e->ops->add(e, s);
}

/* engine_stop: NULL-safe. */
static inline int engine_stop(Engine *e, uint64_t timeout_msec) {
        return e ? e->ops->stop(e, timeout_msec) : 0;
}

static inline void engine_end_conversations(Engine *e) {
        e->ops->end_conversations(e);
}

static inline size_t engine_lingering(Engine *e) {
        return e->ops->lingering ? e->ops->lingering(e) : 0;
}

static inline void engine_reap(Engine *e) {
        if (e->ops->reap)
                e->ops->reap(e);
}

static inline void engine_reconfigure(Engine *e, const Conf *started, const Conf *conf) {
        e->ops->reconfigure(e, started, conf);
}

static inline bool engine_nonblocking(const Engine *e) {
        return e->ops->nonblocking;
}

static inline void engine_set_listeners(Engine *e, const ListenerSet *set) {
        e->ops->set_listeners(e, set);
}

static inline int engine_hand_over(Engine *e, uint64_t timeout_msec) {
        return e->ops->hand_over(e, timeout_msec);
}

static inline bool engine_answered(Engine *e) {
        return e->ops->answered(e);
}

static inline void engine_slot_freed(Engine *e) {
        if (e->ops->slot_freed)
                e->ops->slot_freed(e);
}

/* engine_session_done: how a driver ends a session: the single exit path. */
static inline void engine_session_done(Engine *e, Session *s) {
        e->hooks.done(s, e->hooks.userdata);
}
