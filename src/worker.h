/* worker: the threads of the per-connection model. Each thread waits for its next connection
 * itself (WorkerCalls.wait, which accepts and admits one: no thread hands a connection to
 * another), serves it (WorkerCalls.serve) and waits again. While the pool runs, one thread
 * always waits: the thread that takes the last waiting place starts another before it
 * serves, and where none can be started it turns its client away and waits again; a thread
 * leaves only if another waits. At most MAX_IDLE threads wait; one that would be the next
 * leaves after its session instead. Every thread is joined, none detached. The calls come from
 * the server's thread, but workers_run() and workers_stale(), which the pool's own threads
 * make too (a queued client admitted, a stack size checked). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct WorkerCalls {
        /* wait: blocks until there is a job (a connection accepted and admitted); NULL: the
         * thread leaves (the pool stops, or workers_stale() said so). */
        void *(*wait)(void *userdata);
        void (*serve)(void *userdata, void *job);
        /* refuse: JOB is turned away (the busy line) rather than served: no other thread could
         * be started to accept the next connections. */
        void (*refuse)(void *userdata, void *job);
        void *userdata;
} WorkerCalls;

typedef struct Workers Workers;

/* workers_new: no thread yet; returns 0 or a negative errno. */
int workers_new(Workers **ret, size_t stack_size, unsigned max_idle, const WorkerCalls *calls);

/* workers_start: the first waiting thread. 0 or a negative errno. */
int workers_start(Workers *w);

/* workers_shutdown: no thread is started from now on, and every thread leaves after its job;
 * the caller then makes WAIT return NULL. */
void workers_shutdown(Workers *w);

/* workers_stop: the pool stops; once WAIT returns NULL to every waiting thread (the caller
 * sees to that) and the running jobs end (the server stops its sessions), waits at most
 * TIMEOUT_MSEC for every thread and joins them. Returns 0 (the pool is freed), or -ETIMEDOUT:
 * some job is still running, and the pool is left to it (the caller is exiting). */
int workers_stop(Workers *w, uint64_t timeout_msec);

/* workers_free: the same without a time limit. NULL-safe. */
Workers *workers_free(Workers *w);

/* workers_reap: joins the threads that left since the last call, so that their stacks are
 * unmapped; and starts a waiting thread if none waits (a start that failed earlier). */
void workers_reap(Workers *w);

/* workers_run: JOB on a new thread, which then waits like the others (a session resumed from
 * another process). -EAGAIN and friends when no thread can be had: the caller still owns JOB. */
int workers_run(Workers *w, void *job);

/* workers_set_stack_size: applies to threads created from now on. A thread of the old size
 * leaves after its session; a waiting one asks workers_stale() before it takes a connection. */
void workers_set_stack_size(Workers *w, size_t stack_size);

/* workers_stale: on a thread of the pool, whether it was created with a stack size that is
 * no longer the pool's: it should leave rather than take a connection. */
bool workers_stale(Workers *w);

/* workers_count: threads alive (serving or waiting); workers_waiting: those waiting. */
unsigned workers_count(Workers *w);
unsigned workers_waiting(Workers *w);
