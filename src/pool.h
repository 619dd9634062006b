/* pool: the event-driven worker model: N threads, each running an epoll loop over many
 * non-blocking sessions (memcached's layout). The accept loop hands each connection to the
 * least busy loop; the protocol is the same pure proto module the thread-per-connection
 * model uses, only the I/O around it differs. */
#pragma once

#include <stdint.h>

#include "session.h"

typedef struct Pool Pool;

/* PoolDone: a session has ended; called on its loop thread, which no longer touches it. */
typedef void (*PoolDone)(Session *s, void *userdata);

/* pool_new: starts N loop threads with STACK_SIZE stacks. Returns 0 or a negative errno. */
int pool_new(Pool **ret, unsigned n, size_t stack_size, PoolDone done, void *userdata);

/* pool_add: hands S (registered by the server, its socket accepted with SOCK_NONBLOCK) to a
 * loop. On failure the caller still owns S. */
int pool_add(Pool *p, Session *s);

/* pool_stop: the loops exit once their sessions are gone (the server stops them first);
 * waits at most TIMEOUT_MSEC for the threads. 0: joined and freed; -ETIMEDOUT: a loop is
 * still running and the pool is left to it (the caller is exiting). NULL-safe. */
int pool_stop(Pool *p, uint64_t timeout_msec);
