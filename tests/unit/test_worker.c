/* test_worker: the thread cache: reuse, its bound, and a shutdown that joins every thread. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "worker.h"

typedef struct Gate {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool open;
        unsigned done;
        pid_t tid; /* of the last job */
} Gate;

static Gate gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0 };

static void record_job(void *arg) {
        Gate *g = arg;

        pthread_mutex_lock(&g->lock);
        g->tid = (pid_t) syscall(SYS_gettid);
        g->done++;
        pthread_cond_broadcast(&g->cond);
        pthread_mutex_unlock(&g->lock);
}

static void blocking_job(void *arg) {
        Gate *g = arg;

        pthread_mutex_lock(&g->lock);
        while (!g->open)
                pthread_cond_wait(&g->cond, &g->lock);
        g->done++;
        pthread_cond_broadcast(&g->cond);
        pthread_mutex_unlock(&g->lock);
}

static void wait_done(Gate *g, unsigned n) {
        pthread_mutex_lock(&g->lock);
        while (g->done < n)
                pthread_cond_wait(&g->cond, &g->lock);
        pthread_mutex_unlock(&g->lock);
}

/* wait_parked: a job returns before its thread parks; give it a moment, bounded. */
static void wait_parked(Workers *w, unsigned want) {
        for (int i = 0; i < 5000 && workers_parked(w) != want; i++)
                usleep(1000);
        cr_assert_eq(workers_parked(w), want);
}

Test(workers, sequential_jobs_reuse_one_thread) {
        Workers *w = NULL;
        pid_t first = 0;

        cr_assert_eq(workers_new(&w, 128 * 1024, 4), 0);
        for (unsigned i = 1; i <= 20; i++) {
                cr_assert_eq(workers_run(w, record_job, &gate), 0);
                wait_done(&gate, i);
                wait_parked(w, 1);
                cr_assert_eq(workers_count(w), 1, "a second thread was started");
                if (i == 1)
                        first = gate.tid;
                cr_assert_eq(gate.tid, first, "job %u ran on thread %d, not the cached %d", i, gate.tid, first);
        }
        cr_assert_neq(first, (pid_t) syscall(SYS_gettid));
        w = workers_free(w);
        cr_assert_null(w);
}

Test(workers, concurrent_jobs_get_their_own_threads_and_idle_ones_are_bounded) {
        enum { JOBS = 8, MAX_IDLE = 3 };
        Workers *w = NULL;

        cr_assert_eq(workers_new(&w, 128 * 1024, MAX_IDLE), 0);
        for (int i = 0; i < JOBS; i++)
                cr_assert_eq(workers_run(w, blocking_job, &gate), 0);
        cr_assert_eq(workers_count(w), JOBS); /* all blocked at once: one thread each */

        pthread_mutex_lock(&gate.lock);
        gate.open = true;
        pthread_cond_broadcast(&gate.cond);
        pthread_mutex_unlock(&gate.lock);
        wait_done(&gate, JOBS);
        wait_parked(w, MAX_IDLE);
        /* The rest exit instead of parking. */
        for (int i = 0; i < 5000 && workers_count(w) != MAX_IDLE; i++)
                usleep(1000);
        cr_assert_eq(workers_count(w), MAX_IDLE);
        workers_free(w);
}

Test(workers, free_with_nothing_run_and_null) {
        Workers *w = NULL;

        cr_assert_eq(workers_new(&w, 128 * 1024, 4), 0);
        cr_assert_eq(workers_count(w), 0);
        cr_assert_null(workers_free(w));
        cr_assert_null(workers_free(NULL));
}

Test(workers, impossible_stack_size_is_an_error_not_a_crash) {
        Workers *w = NULL;

        cr_assert_eq(workers_new(&w, 1, 4), 0); /* below PTHREAD_STACK_MIN */
        cr_assert_lt(workers_run(w, record_job, &gate), 0);
        cr_assert_eq(workers_count(w), 0);
        workers_free(w);
}

Test(workers, stop_gives_up_on_a_stuck_job_within_its_timeout) {
        Workers *w = NULL;
        struct timespec a, b;

        gate.open = false;
        cr_assert_eq(workers_new(&w, 128 * 1024, 4), 0);
        cr_assert_eq(workers_run(w, blocking_job, &gate), 0);
        clock_gettime(CLOCK_MONOTONIC, &a);
        cr_assert_eq(workers_stop(w, 200), -ETIMEDOUT);
        clock_gettime(CLOCK_MONOTONIC, &b);
        cr_assert_lt(b.tv_sec - a.tv_sec, 5, "workers_stop() did not honour its timeout");
        /* The pool was left to the job: let it finish, then a second stop succeeds. */
        pthread_mutex_lock(&gate.lock);
        gate.open = true;
        pthread_cond_broadcast(&gate.cond);
        pthread_mutex_unlock(&gate.lock);
        cr_assert_eq(workers_stop(w, 5000), 0);
}

Test(workers, a_new_stack_size_retires_parked_threads) {
        Workers *w = NULL;

        cr_assert_eq(workers_new(&w, 128 * 1024, 4), 0);
        cr_assert_eq(workers_run(w, record_job, &gate), 0);
        wait_parked(w, 1);
        workers_set_stack_size(w, 128 * 1024); /* unchanged: the thread stays */
        cr_assert_eq(workers_parked(w), 1);
        workers_set_stack_size(w, 256 * 1024);
        cr_assert_eq(workers_parked(w), 0);
        for (int i = 0; i < 5000 && workers_count(w) != 0; i++)
                usleep(1000);
        cr_assert_eq(workers_count(w), 0, "the retired thread did not exit");
        workers_reap(w);
        workers_free(w);
}
