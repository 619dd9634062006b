/* worker: a thread per connection, from a cache of idle threads.
 * A finished worker parks for the next connection instead of exiting, so connect/disconnect
 * churn does not pay pthread_create() each time; every thread is joined, none detached.
 * All calls but the job itself come from one thread (the server's). */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef void (*WorkerJob)(void *arg);

typedef struct Workers Workers;

/* workers_new: MAX_IDLE threads at most are kept parked; returns 0 or a negative errno. */
int workers_new(Workers **ret, size_t stack_size, unsigned max_idle);

/* workers_free: wakes parked threads, waits for every thread to return, joins them.
 * Callers first make running jobs end (the server stops its sessions). NULL-safe. */
Workers *workers_free(Workers *w);

/* workers_stop: the same, waiting at most TIMEOUT_MSEC. Returns 0 (the pool is freed), or
 * -ETIMEDOUT: some job is still running, and the pool is left to it (the caller is exiting). */
int workers_stop(Workers *w, uint64_t timeout_msec);

/* workers_reap: joins the threads that exited since the last call (also done on each
 * workers_run()), so that their stacks are unmapped without waiting for a new connection. */
void workers_reap(Workers *w);

/* workers_run: JOB(ARG) on a parked thread, or a new one. -EAGAIN and friends when no
 * thread can be had: the caller still owns ARG. */
int workers_run(Workers *w, WorkerJob job, void *arg);

/* workers_set_stack_size: applies to threads created from now on; parked threads of the
 * old size exit, so that new connections run on the new size. */
void workers_set_stack_size(Workers *w, size_t stack_size);

/* workers_count: threads alive (running a job or parked); workers_parked: those parked. */
unsigned workers_count(Workers *w);
unsigned workers_parked(Workers *w);
