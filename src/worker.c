/* worker: the threads of the per-connection model (see worker.h). */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "ratelimit.h"

typedef struct Worker {
        pthread_t thread;
        struct Workers *pool;
        void *first;         /* the job it was started with (workers_run), or NULL */
        size_t stack_size;   /* what it was created with */
        bool pinned;         /* no other thread waits and none could be started: it stays,
                              * whatever its stack size (stale) */
        struct Worker *next; /* on the finished list */
} Worker;

/* Lock order: only pool->lock exists; neither wait nor serve is called with it held. A
 * session's way through a thread (serve, wait, serve) takes no lock: n_waiting, stack_size
 * and stopping are atomics there (strace -c under churn: the two lock round trips a session
 * were a futex call each, contended by ten threads on two cores). */
struct Workers {
        pthread_mutex_t lock;
        pthread_cond_t all_gone;
        WorkerCalls calls;
        Worker *finished; /* under lock: threads that returned, waiting for pthread_join */
        unsigned n_alive; /* under lock */
        unsigned n_waiting; /* atomic */
        unsigned max_idle;
        size_t stack_size; /* atomic; written under lock */
        bool stopping;     /* atomic; written under lock */
        bool started;      /* under lock: workers_start() was called */
        RateLimit spawn_log;
};

/* The Worker of the calling thread (NULL on the server's). */
static _Thread_local Worker *self;

static int spawn(Workers *pool, void *first);

static bool stopping(Workers *pool) {
        return __atomic_load_n(&pool->stopping, __ATOMIC_ACQUIRE);
}

/* stale: W was created with a stack size that is no longer the pool's (and may leave). */
static bool stale(Workers *pool, const Worker *w) {
        return !w->pinned && w->stack_size != __atomic_load_n(&pool->stack_size, __ATOMIC_RELAXED);
}

/* keep_one_waiting: called by a thread about to serve or to leave (still counted alive, so
 * that the pool cannot be freed meanwhile); starts a waiting thread when none waits. false
 * when none waits and none could be started (TasksMax, RLIMIT_NPROC, memory): the caller is
 * then the only thread left to accept, and must neither serve nor leave. Stopping, none need
 * wait: spawn() says so under the pool's lock (-ECANCELED), so that a stop that begins
 * meanwhile is not taken for a failure to start one, and the client is served (the stop or the
 * hand-over reaches it there), not told busy. */
static bool keep_one_waiting(Workers *pool) {
        if (__atomic_load_n(&pool->n_waiting, __ATOMIC_ACQUIRE) > 0)
                return true;
        unsigned suppressed;
        int r = spawn(pool, NULL);
        if (r >= 0 || r == -ECANCELED || stopping(pool)) /* the last: a failure as the stop began */
                return true;
        if (ratelimit_allow(&pool->spawn_log, &suppressed))
                log_warning_errno(r, "cannot start a worker thread to accept connections; new clients are "
                                     "turned away as busy until one can be%s",
                                  ratelimit_repeats(suppressed, (char[RATELIMIT_REPEATS_SIZE]) { 0 }, RATELIMIT_REPEATS_SIZE));
        return false;
}

/* may_leave: whether W, about to leave (one too many waiting, an old stack size, a wait that
 * failed), can: only if another thread waits or can be started. Otherwise W stays pinned to
 * the pool, so that a client never meets a pool where no thread accepts. */
static bool may_leave(Workers *pool, Worker *w) {
        w->pinned = !keep_one_waiting(pool);
        return !w->pinned;
}

/* wait_again: whether the thread W may wait for another connection; if so it is counted
 * waiting. A thread created before a reload changed the stack size leaves instead of serving
 * more connections on the old size, as does one that would make more than max_idle wait. */
static bool wait_again(Workers *pool, Worker *w) {
        if (stopping(pool) || stale(pool, w))
                return false;
        if (__atomic_fetch_add(&pool->n_waiting, 1, __ATOMIC_ACQ_REL) < pool->max_idle)
                return true;
        __atomic_sub_fetch(&pool->n_waiting, 1, __ATOMIC_ACQ_REL);
        return false;
}

static void *worker_main(void *arg) {
        Worker *w = arg;
        Workers *pool = w->pool;
        void *job = w->first;
        bool counted = !job; /* started to wait: spawn() counted it waiting already */

        self = w;
        (void) pthread_setname_np(pthread_self(), "hellod-worker");
        for (;;) {
                if (job)
                        pool->calls.serve(pool->calls.userdata, job);
                w->pinned = false; /* each session (or refusal) tries again to start a thread */
                if (!counted && !wait_again(pool, w)) {
                        if (may_leave(pool, w))
                                break;
                        __atomic_add_fetch(&pool->n_waiting, 1, __ATOMIC_ACQ_REL);
                }
                counted = false;
                job = pool->calls.wait(pool->calls.userdata);
                __atomic_sub_fetch(&pool->n_waiting, 1, __ATOMIC_ACQ_REL);
                if (!job) {
                        if (stopping(pool) || may_leave(pool, w))
                                break;
                        continue;
                }
                /* Before serving: the next client must not wait for us. Where no thread can
                 * be had, serving this client would leave nobody to accept the next ones, who
                 * would wait unanswered: this one is turned away instead, and the thread
                 * stays to accept (and turn away) until a thread can be started again. */
                if (!keep_one_waiting(pool)) {
                        pool->calls.refuse(pool->calls.userdata, job);
                        job = NULL;
                }
        }
        pthread_mutex_lock(&pool->lock);
        w->next = pool->finished;
        pool->finished = w;
        if (--pool->n_alive == 0)
                pthread_cond_broadcast(&pool->all_gone);
        pthread_mutex_unlock(&pool->lock);
        return NULL;
}

/* reap: joins threads that have returned; called without the lock. */
static void reap(Worker *list) {
        while (list) {
                Worker *next = list->next;
                pthread_join(list->thread, NULL);
                free(list);
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

int workers_new(Workers **ret, size_t stack_size, unsigned max_idle, const WorkerCalls *calls) {
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
        pool->calls = *calls;
        pool->spawn_log = (RateLimit) RATELIMIT_INIT(1);
        pool->stack_size = stack_size;
        pool->max_idle = max_idle > 0 ? max_idle : 1;
        *ret = pool;
        return 0;
}

static void destroy(Workers *pool) {
        reap(take_finished(pool));
        pthread_cond_destroy(&pool->all_gone);
        pthread_mutex_destroy(&pool->lock);
        pthread_mutex_destroy(&pool->spawn_log.lock);
        free(pool);
}

void workers_shutdown(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        __atomic_store_n(&pool->stopping, true, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&pool->lock);
}

int workers_stop(Workers *pool, uint64_t timeout_msec) {
        struct timespec deadline = timespec_in_msec(timeout_msec);
        int r = 0;

        if (!pool)
                return 0;

        pthread_mutex_lock(&pool->lock);
        __atomic_store_n(&pool->stopping, true, __ATOMIC_RELEASE);
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
        __atomic_store_n(&pool->stopping, true, __ATOMIC_RELEASE);
        while (pool->n_alive > 0)
                pthread_cond_wait(&pool->all_gone, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
        destroy(pool);
        return NULL;
}

void workers_reap(Workers *pool) {
        if (!pool)
                return;
        reap(take_finished(pool));
        pthread_mutex_lock(&pool->lock);
        bool none_waits = pool->started && !stopping(pool) && workers_waiting(pool) == 0;
        pthread_mutex_unlock(&pool->lock);
        /* A thread between its wait and its serve starts the next one itself, so this only
         * starts one where that failed, even with no thread left (one more waiting thread at
         * worst). */
        if (none_waits && spawn(pool, NULL) < 0)
                log_warning("no thread accepts connections: cannot start one");
}

/* spawn: a thread serving FIRST (if any), then waiting; called without the lock. Threads
 * that left are joined first: the server thread's tick may be far off. A thread started to
 * wait counts as waiting from now on, not from when it is first scheduled: on a busy machine
 * the next connection must not start yet another. */
static int spawn(Workers *pool, void *first) {
        pthread_attr_t attr;
        Worker *w;
        int r;

        reap(take_finished(pool));
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->pool = pool;
        w->first = first;

        r = pthread_attr_init(&attr);
        if (r != 0) {
                free(w);
                return -r;
        }
        pthread_mutex_lock(&pool->lock);
        if (pool->stopping) { /* workers_shutdown(): none is started from then on */
                pthread_mutex_unlock(&pool->lock);
                pthread_attr_destroy(&attr);
                free(w);
                return -ECANCELED;
        }
        size_t stack_size = w->stack_size = __atomic_load_n(&pool->stack_size, __ATOMIC_RELAXED);
        pool->n_alive++;
        pthread_mutex_unlock(&pool->lock);
        if (!first)
                __atomic_add_fetch(&pool->n_waiting, 1, __ATOMIC_ACQ_REL);

        r = pthread_attr_setstacksize(&attr, stack_size);
        if (r == 0)
                r = pthread_create(&w->thread, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
        if (r != 0) {
                if (!first)
                        __atomic_sub_fetch(&pool->n_waiting, 1, __ATOMIC_ACQ_REL);
                pthread_mutex_lock(&pool->lock);
                if (--pool->n_alive == 0)
                        pthread_cond_broadcast(&pool->all_gone);
                pthread_mutex_unlock(&pool->lock);
                free(w);
                return -r;
        }
        return 0;
}

int workers_start(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        pool->started = true;
        pthread_mutex_unlock(&pool->lock);
        return spawn(pool, NULL);
}

int workers_run(Workers *pool, void *job) {
        return spawn(pool, job);
}

void workers_set_stack_size(Workers *pool, size_t stack_size) {
        pthread_mutex_lock(&pool->lock);
        __atomic_store_n(&pool->stack_size, stack_size, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&pool->lock);
}

bool workers_stale(Workers *pool) {
        return self && self->pool == pool && stale(pool, self);
}

unsigned workers_count(Workers *pool) {
        pthread_mutex_lock(&pool->lock);
        unsigned n = pool->n_alive;
        pthread_mutex_unlock(&pool->lock);
        return n;
}

unsigned workers_waiting(Workers *pool) {
        return __atomic_load_n(&pool->n_waiting, __ATOMIC_ACQUIRE);
}
