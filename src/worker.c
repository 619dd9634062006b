/* worker: the thread cache behind the per-connection model. */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"

typedef struct Worker {
        pthread_t thread;
        struct Workers *pool;
        WorkerJob job; /* set by the dispatcher, cleared by the worker when done */
        void *arg;
        /* Posted once per unpark, after the pool lock is released: the parked thread wakes to
         * an uncontended lock-free path (one futex wake, one futex wait per connection;
         * a condition variable signalled under the lock cost ~6 futex calls, strace -c). */
        sem_t wake;
        size_t stack_size;   /* what it was created with */
        struct Worker *next; /* on the parked or the finished list */
} Worker;

/* Lock order: only pool->lock exists; a job never runs with it held. */
struct Workers {
        pthread_mutex_t lock;
        pthread_cond_t all_gone;
        Worker *parked;   /* LIFO: the most recently used thread has the warmest stack */
        Worker *finished; /* returned threads waiting for pthread_join */
        unsigned n_parked, n_alive, max_idle;
        size_t stack_size;
        bool stopping;
};

/* park: called with the lock held after a job. true: a job was handed over (the lock is
 * released); false: the thread should exit (the lock is held). */
static bool park(Workers *pool, Worker *w) {
        /* A thread created before a reload changed the stack size retires instead of
         * serving more connections on the old size. */
        if (pool->stopping || pool->n_parked >= pool->max_idle || w->stack_size != pool->stack_size)
                return false;
        w->next = pool->parked;
        pool->parked = w;
        pool->n_parked++;
        pthread_mutex_unlock(&pool->lock);
        while (sem_wait(&w->wake) < 0)
                ; /* EINTR only */
        /* Whoever posted unlinked us first: a dispatcher (with a job), workers_stop() or
         * workers_set_stack_size() (without); the semaphore orders their writes before our
         * reads. */
        if (w->job)
                return true;
        pthread_mutex_lock(&pool->lock);
        return false;
}

static void *worker_main(void *arg) {
        Worker *w = arg;
        Workers *pool = w->pool;

        (void) pthread_setname_np(pthread_self(), "hellod-worker");
        do {
                w->job(w->arg);
                pthread_mutex_lock(&pool->lock);
                w->job = NULL;
                w->arg = NULL;
        } while (park(pool, w));

        w->next = pool->finished;
        pool->finished = w;
        if (--pool->n_alive == 0)
                pthread_cond_broadcast(&pool->all_gone);
        pthread_mutex_unlock(&pool->lock);
        return NULL;
}

static void worker_destroy(Worker *w) {
        sem_destroy(&w->wake);
        free(w);
}

/* reap: joins threads that have returned; called without the lock. */
static void reap(Worker *list) {
        while (list) {
                Worker *next = list->next;
                pthread_join(list->thread, NULL);
                worker_destroy(list);
                list = next;
        }
}

static Worker *take_finished(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        Worker *list = pool->finished;
        pool->finished = NULL;
        pthread_mutex_unlock(&pool->lock);
        return list;
}

int workers_new(Workers **ret, size_t stack_size, unsigned max_idle) {
        Workers *pool = calloc(1, sizeof(*pool));
        pthread_condattr_t attr;

        if (!pool)
                return -ENOMEM;
        pthread_mutex_init(&pool->lock, NULL);
        /* all_gone is waited on with a deadline: measure it on the monotonic clock. */
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&pool->all_gone, &attr);
        pthread_condattr_destroy(&attr);
        pool->stack_size = stack_size;
        pool->max_idle = max_idle;
        *ret = pool;
        return 0;
}

/* unpark_all: wakes every parked thread without a job, so that it leaves; under the lock. */
static void unpark_all(Workers *pool) {
        for (Worker *w = pool->parked, *next; w; w = next) {
                next = w->next;
                sem_post(&w->wake); /* w->job is NULL: it leaves */
        }
        pool->parked = NULL;
        pool->n_parked = 0;
}

static void destroy(Workers *pool) {
        reap(take_finished(pool));
        pthread_cond_destroy(&pool->all_gone);
        pthread_mutex_destroy(&pool->lock);
        free(pool);
}

int workers_stop(Workers *pool, uint64_t timeout_msec) {
        struct timespec deadline = timespec_in_msec(timeout_msec);
        int r = 0;

        if (!pool)
                return 0;

        pthread_mutex_lock(&pool->lock);
        pool->stopping = true;
        unpark_all(pool);
        while (pool->n_alive > 0 && r == 0)
                r = pthread_cond_timedwait(&pool->all_gone, &pool->lock, &deadline);
        bool gone = pool->n_alive == 0;
        pthread_mutex_unlock(&pool->lock);

        if (!gone)
                return -ETIMEDOUT; /* the pool stays: running threads still use it */
        destroy(pool);
        return 0;
}

Workers *workers_free(Workers *pool) {
        if (!pool)
                return NULL;
        pthread_mutex_lock(&pool->lock);
        pool->stopping = true;
        unpark_all(pool);
        while (pool->n_alive > 0)
                pthread_cond_wait(&pool->all_gone, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
        destroy(pool);
        return NULL;
}

void workers_reap(Workers *pool) {
        if (pool)
                reap(take_finished(pool));
}

static int spawn(Workers *pool, WorkerJob job, void *arg) {
        pthread_attr_t attr;
        Worker *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        w->pool = pool;
        w->job = job;
        w->arg = arg;
        if (sem_init(&w->wake, 0, 0) < 0) {
                free(w);
                return -errno;
        }

        r = pthread_attr_init(&attr);
        if (r != 0) {
                worker_destroy(w);
                return -r;
        }
        pthread_mutex_lock(&pool->lock);
        size_t stack_size = w->stack_size = pool->stack_size;
        pool->n_alive++;
        pthread_mutex_unlock(&pool->lock);

        r = pthread_attr_setstacksize(&attr, stack_size);
        if (r == 0)
                r = pthread_create(&w->thread, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
        if (r != 0) {
                pthread_mutex_lock(&pool->lock);
                if (--pool->n_alive == 0)
                        pthread_cond_broadcast(&pool->all_gone);
                pthread_mutex_unlock(&pool->lock);
                worker_destroy(w);
                return -r;
        }
        return 0;
}

int workers_run(Workers *pool, WorkerJob job, void *arg) {
        reap(take_finished(pool));

        pthread_mutex_lock(&pool->lock);
        Worker *w = pool->parked;
        if (w) {
                pool->parked = w->next;
                pool->n_parked--;
                w->next = NULL;
                w->job = job;
                w->arg = arg;
        }
        pthread_mutex_unlock(&pool->lock);
        if (w)
                sem_post(&w->wake);

        return w ? 0 : spawn(pool, job, arg);
}

void workers_set_stack_size(Workers *pool, size_t stack_size) {
        pthread_mutex_lock(&pool->lock);
        if (pool->stack_size != stack_size) {
                pool->stack_size = stack_size;
                /* Parked threads have the old size: let them go, new ones get the new one. */
                unpark_all(pool);
        }
        pthread_mutex_unlock(&pool->lock);
}

unsigned workers_count(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        unsigned n = pool->n_alive;
        pthread_mutex_unlock(&pool->lock);
        return n;
}

unsigned workers_parked(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        unsigned n = pool->n_parked;
        pthread_mutex_unlock(&pool->lock);
        return n;
}
