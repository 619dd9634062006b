/* test_worker: the per-connection model's threads: one always waits, threads are reused, idle
 * ones are bounded, threads of an old stack size leave, and a stop joins every thread. The
 * threads wait on a queue here (in hellod: in epoll for a connection). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "worker.h"

enum { QUEUE_MAX = 64 };

typedef struct Job {
        bool block; /* wait for the gate to open */
} Job;

/* The queue the threads wait on, and what the jobs did. */
static struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        Job *jobs[QUEUE_MAX];
        size_t n;
        bool closed, open;
        unsigned done, refused;
        pid_t tid; /* of the last job */
        Workers *pool;
} q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, false, false, 0, 0, 0, NULL };

static void *queue_wait(void *userdata) {
        Job *job = NULL;

        (void) userdata;
        pthread_mutex_lock(&q.lock);
        while (!q.closed && q.n == 0)
                pthread_cond_wait(&q.cond, &q.lock);
        /* A thread of an old stack size leaves the job to another (as hellod re-arms the
         * listener). */
        if (!q.closed && !workers_stale(q.pool))
                job = q.jobs[--q.n];
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
        return job;
}

static void run_job(void *userdata, void *arg) {
        Job *job = arg;

        (void) userdata;
        pthread_mutex_lock(&q.lock);
        while (job->block && !q.open)
                pthread_cond_wait(&q.cond, &q.lock);
        q.tid = (pid_t) syscall(SYS_gettid);
        q.done++;
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
}

/* refuse_job: a job turned away (in hellod: the busy line). */
static void refuse_job(void *userdata, void *arg) {
        (void) userdata;
        (void) arg;
        pthread_mutex_lock(&q.lock);
        q.refused++;
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
}

static Workers *pool_new(size_t stack_size, unsigned max_idle) {
        Workers *w = NULL;

        q.n = q.done = q.refused = 0;
        q.closed = q.open = false;
        cr_assert_eq(workers_new(&w, stack_size, max_idle,
                                 &(WorkerCalls) { .wait = queue_wait, .serve = run_job, .refuse = refuse_job,
                                                  .userdata = NULL }),
                     0);
        q.pool = w;
        return w;
}

static void push(Job *job) {
        pthread_mutex_lock(&q.lock);
        cr_assert_lt(q.n, QUEUE_MAX);
        q.jobs[q.n++] = job;
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
}

static void open_gate(void) {
        pthread_mutex_lock(&q.lock);
        q.open = true;
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
}

static void wait_done(unsigned n) {
        struct timespec deadline;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 5;
        pthread_mutex_lock(&q.lock);
        while (q.done < n && pthread_cond_timedwait(&q.cond, &q.lock, &deadline) == 0)
                ;
        unsigned done = q.done;
        pthread_mutex_unlock(&q.lock);
        cr_assert_geq(done, n, "%u jobs served in 5 s, expected %u", done, n);
}

/* wait_refused: until N jobs were turned away, bounded: a pool with no thread left to take
 * them never would. */
static void wait_refused(unsigned n) {
        struct timespec deadline;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 5;
        pthread_mutex_lock(&q.lock);
        while (q.refused < n && pthread_cond_timedwait(&q.cond, &q.lock, &deadline) == 0)
                ;
        unsigned refused = q.refused, done = q.done;
        pthread_mutex_unlock(&q.lock);
        cr_assert_eq(refused, n, "%u jobs turned away, %u served, expected %u turned away", refused, done, n);
}

/* wait_handled: until N jobs were served or turned away, bounded. */
static void wait_handled(unsigned n) {
        struct timespec deadline;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 5;
        pthread_mutex_lock(&q.lock);
        while (q.done + q.refused < n && pthread_cond_timedwait(&q.cond, &q.lock, &deadline) == 0)
                ;
        pthread_mutex_unlock(&q.lock);
}

/* settle: a job returns before its thread waits again or leaves; give it a moment, bounded. */
static void settle(Workers *w, unsigned want_waiting, unsigned want_count) {
        for (int i = 0; i < 5000 && (workers_waiting(w) != want_waiting || workers_count(w) != want_count); i++)
                usleep(1000);
        cr_assert_eq(workers_waiting(w), want_waiting);
        cr_assert_eq(workers_count(w), want_count);
}

/* stop: what perconn_stop() does: no new thread, WAIT returns NULL to everyone, join. */
static int stop(Workers *w, uint64_t timeout_msec) {
        workers_shutdown(w);
        pthread_mutex_lock(&q.lock);
        q.closed = true;
        pthread_cond_broadcast(&q.cond);
        pthread_mutex_unlock(&q.lock);
        return workers_stop(w, timeout_msec);
}

Test(workers, one_thread_waits_from_the_start) {
        Workers *w = pool_new(128 * 1024, 4);

        cr_assert_eq(workers_start(w), 0);
        settle(w, 1, 1);
        cr_assert_eq(stop(w, 5000), 0);
}

/* workers_shutdown() promises that no thread is started from then on: a job run after it is
 * left to the caller, who turns it away. */
Test(workers, no_thread_is_started_after_the_shutdown) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = false };

        cr_assert_eq(workers_start(w), 0);
        settle(w, 1, 1);
        workers_shutdown(w);
        cr_assert_eq(workers_run(w, &job), -ECANCELED);
        cr_assert_eq(workers_count(w), 1, "a thread was started after the shutdown");
        cr_assert_eq(stop(w, 5000), 0);
        cr_assert_eq(q.done, 0);
}

/* The shutdown that begins while a thread with a job starts the next one to wait: spawn() calls
 * pthread_attr_init() after its caller looked at the pool and before it takes the pool's lock,
 * and this executable is linked with -Wl,--wrap=pthread_attr_init (tests/meson.build). */
static bool shutdown_in_spawn;

int __real_pthread_attr_init(pthread_attr_t *attr);
int __wrap_pthread_attr_init(pthread_attr_t *attr);
int __wrap_pthread_attr_init(pthread_attr_t *attr) {
        if (__atomic_exchange_n(&shutdown_in_spawn, false, __ATOMIC_ACQ_REL))
                workers_shutdown(q.pool);
        return __real_pthread_attr_init(attr);
}

/* A job taken as the shutdown begins is served, not turned away as if no thread could be
 * started: in hellod the stop (ERR shutting down) or the hand-over reaches it in its session. */
Test(workers, a_job_taken_as_the_shutdown_begins_is_served) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = false };

        cr_assert_eq(workers_start(w), 0);
        settle(w, 1, 1);
        __atomic_store_n(&shutdown_in_spawn, true, __ATOMIC_RELEASE);
        push(&job);
        wait_handled(1);
        cr_assert_eq(q.refused, 0, "the job was turned away");
        cr_assert_eq(q.done, 1, "the job was not served");
        cr_assert_eq(stop(w, 5000), 0);
}

Test(workers, sequential_jobs_reuse_the_threads) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = false };
        pid_t seen[2] = { 0, 0 };

        cr_assert_eq(workers_start(w), 0);
        for (unsigned i = 1; i <= 20; i++) {
                push(&job);
                wait_done(i);
                /* The thread that took the job started one to wait in its place. */
                settle(w, 2, 2);
                if (seen[0] == 0 || seen[0] == q.tid)
                        seen[0] = q.tid;
                else if (seen[1] == 0)
                        seen[1] = q.tid;
                cr_assert(q.tid == seen[0] || q.tid == seen[1], "job %u ran on a third thread", i);
        }
        cr_assert_neq(seen[0], (pid_t) syscall(SYS_gettid));
        cr_assert_eq(stop(w, 5000), 0);
}

Test(workers, concurrent_jobs_get_their_own_threads_and_idle_ones_are_bounded) {
        enum { JOBS = 8, MAX_IDLE = 3 };
        Workers *w = pool_new(128 * 1024, MAX_IDLE);
        Job job = { .block = true };

        cr_assert_eq(workers_start(w), 0);
        for (int i = 0; i < JOBS; i++) {
                push(&job);
                /* Each is taken before the next is pushed: all blocked at once, one each. */
                for (int k = 0; k < 5000 && (workers_count(w) != (unsigned) i + 2 || workers_waiting(w) != 1); k++)
                        usleep(1000);
        }
        settle(w, 1, JOBS + 1); /* and one waiting */
        open_gate();
        wait_done(JOBS);
        /* The rest leave instead of waiting. */
        settle(w, MAX_IDLE, MAX_IDLE);
        workers_reap(w);
        cr_assert_eq(stop(w, 5000), 0);
}

Test(workers, impossible_stack_size_is_an_error_not_a_crash) {
        Workers *w = pool_new(1, 4); /* below PTHREAD_STACK_MIN */

        cr_assert_lt(workers_start(w), 0);
        cr_assert_eq(workers_count(w), 0);
        cr_assert_null(workers_free(w));
        cr_assert_null(workers_free(NULL));
}

/* Threads cannot be started (here: a stack size pthread refuses; in hellod: TasksMax,
 * RLIMIT_NPROC or memory). The waiting thread, of the old size, would leave for one of the new
 * size; it stays instead, and turns each job away (serving it would leave nobody to take the
 * next), until threads can be started again. */
Test(workers, the_last_thread_stays_and_turns_jobs_away_while_none_can_be_started) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = false };

        cr_assert_eq(workers_start(w), 0);
        settle(w, 1, 1);
        workers_set_stack_size(w, 1); /* below PTHREAD_STACK_MIN: every start fails */
        for (unsigned i = 1; i <= 3; i++) {
                push(&job);
                wait_refused(i);
                settle(w, 1, 1); /* it is still there, waiting */
        }
        workers_reap(w); /* the server's retry: fails too, and changes nothing */
        settle(w, 1, 1);
        cr_assert_eq(q.done, 0);

        workers_set_stack_size(w, 128 * 1024); /* threads can be had again */
        push(&job);
        wait_done(1);
        settle(w, 2, 2); /* it served, and started one to wait in its place */
        cr_assert_eq(q.refused, 3);
        cr_assert_eq(stop(w, 5000), 0);
}

Test(workers, stop_gives_up_on_a_stuck_job_within_its_timeout) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = true };
        struct timespec a, b;

        cr_assert_eq(workers_start(w), 0);
        push(&job);
        settle(w, 1, 2);
        clock_gettime(CLOCK_MONOTONIC, &a);
        cr_assert_eq(stop(w, 200), -ETIMEDOUT);
        clock_gettime(CLOCK_MONOTONIC, &b);
        cr_assert_lt(b.tv_sec - a.tv_sec, 5, "workers_stop() did not honour its timeout");
        /* The pool was left to the job: let it finish, then a second stop succeeds. */
        open_gate();
        cr_assert_eq(workers_stop(w, 5000), 0);
}

/* task_ids: the threads of this process now. */
static size_t task_ids(pid_t *tids, size_t max) {
        DIR *dir = opendir("/proc/self/task");
        struct dirent *e;
        size_t n = 0;

        cr_assert_not_null(dir);
        while ((e = readdir(dir)) && n < max)
                if (atoi(e->d_name) > 0)
                        tids[n++] = (pid_t) atoi(e->d_name);
        closedir(dir);
        return n;
}

Test(workers, threads_of_an_old_stack_size_leave_and_a_new_one_takes_the_job) {
        Workers *w = pool_new(128 * 1024, 4);
        Job job = { .block = false };
        pid_t before[64], after[64];

        cr_assert_eq(workers_start(w), 0);
        push(&job);
        wait_done(1);
        settle(w, 2, 2);
        size_t n_before = task_ids(before, 64);
        workers_set_stack_size(w, 128 * 1024); /* unchanged: nothing leaves */
        push(&job);
        wait_done(2);
        settle(w, 2, 2);
        size_t n_after = task_ids(after, 64);
        cr_assert_eq(n_after, n_before);
        for (size_t i = 0; i < n_after; i++)
                cr_assert_eq(after[i], before[i], "a thread left though the stack size did not change");
        workers_set_stack_size(w, 256 * 1024);
        push(&job);
        wait_done(3);
        for (size_t i = 0; i < n_before; i++)
                cr_assert_neq(q.tid, before[i], "a thread of the old stack size took the job");
        /* An old thread that woke for the job left; one still waiting leaves when it next
         * wakes (as in hellod, for the next connection). */
        workers_reap(w);
        cr_assert_eq(stop(w, 5000), 0);
}
