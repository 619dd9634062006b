/* engine: the interface behind which each worker model drives its sessions.
 *
 *   pool.c     workers = N | "auto": N event loops, each serving many non-blocking sessions
 *   perconn.c  workers = "per-connection": a thread per session, from a cache (worker.c)
 *
 * The server admits a connection, registers it and hands it over with engine_add(); from
 * then on only the engine's thread touches the session (the server may still call
 * session_stop()/session_kill(), which act on the socket alone) until the engine calls the
 * done callback, exactly once per session, which takes the session back for good. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "session.h"

typedef struct Engine Engine;

/* EngineDone: S has ended. Called on the thread that drove it, which never touches S again:
 * the callback owns it (logs, unregisters and frees it). */
typedef void (*EngineDone)(Session *s, void *userdata);

typedef struct EngineOps {
        /* add: S's socket was accepted non-blocking when `nonblocking`. 0, or a negative errno
         * when no thread can take it: the caller still owns S. */
        int (*add)(Engine *e, Session *s);
        /* stop: once the server has stopped every session, waits for the threads at most
         * TIMEOUT_MSEC. 0: joined and freed. -ETIMEDOUT: a thread is still running and the
         * engine is left to it (its done callback may still come); stop may be called again. */
        int (*stop)(Engine *e, uint64_t timeout_msec);
        /* reap: housekeeping from the server thread (joins exited threads). */
        void (*reap)(Engine *e);
        /* reconfigure: applies what it can of CONF to the running engine, logs what it cannot. */
        void (*reconfigure)(Engine *e, const Conf *old, const Conf *conf);
        bool nonblocking; /* the sessions' sockets must be non-blocking */
} EngineOps;

struct Engine {
        const EngineOps *ops;
        EngineDone done;
        void *userdata;
};

/* The drivers. Each returns 0 or a negative errno. */
int pool_engine_new(Engine **ret, const Conf *conf, EngineDone done, void *userdata);
int perconn_engine_new(Engine **ret, const Conf *conf, EngineDone done, void *userdata);

/* engine_new: the model CONF chooses (its `workers`). */
static inline int engine_new(Engine **ret, const Conf *conf, EngineDone done, void *userdata) {
        return conf->workers > 0 ? pool_engine_new(ret, conf, done, userdata)
                                 : perconn_engine_new(ret, conf, done, userdata);
}

static inline int engine_add(Engine *e, Session *s) {
        s->engine = e;
        return e->ops->add(e, s);
}

/* engine_stop: NULL-safe. */
static inline int engine_stop(Engine *e, uint64_t timeout_msec) {
        return e ? e->ops->stop(e, timeout_msec) : 0;
}

static inline void engine_reap(Engine *e) {
        if (e->ops->reap)
                e->ops->reap(e);
}

static inline void engine_reconfigure(Engine *e, const Conf *old, const Conf *conf) {
        e->ops->reconfigure(e, old, conf);
}

static inline bool engine_nonblocking(const Engine *e) {
        return e->ops->nonblocking;
}

/* engine_session_done: how a driver ends a session: the single exit path. */
static inline void engine_session_done(Engine *e, Session *s) {
        e->done(s, e->userdata);
}
