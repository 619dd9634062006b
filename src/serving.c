/* serving: see serving.h. */
#include "serving.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "session.h"

struct ServingSet {
        pthread_mutex_t lock; /* everything below */
        pthread_cond_t wake;  /* the watch's sleep (CLOCK_MONOTONIC) */
        ServingThread *head;
        bool watch_idle; /* the watch sleeps until a thread is listed */
        bool ending;     /* serving_end_all(): every listed thread is due */
        bool stop;
        bool watch_started;
        pthread_t watch;
};

static __thread volatile sig_atomic_t signalled;
static __thread bool takes_signal; /* the calling thread has unblocked it */

static void on_signal(int sig) {
        (void) sig; /* the point is the EINTR */
        signalled = 1;
}

void serving_signal_clear(void) {
        signalled = 0;
}

bool serving_signalled(void) {
        return signalled != 0;
}

static void take_signal(bool take) {
        sigset_t signals;

        sigemptyset(&signals);
        sigaddset(&signals, SERVING_SIGNAL);
        if (pthread_sigmask(take ? SIG_UNBLOCK : SIG_BLOCK, &signals, NULL) == 0)
                takes_signal = take;
}

/* signal_due: whether T, whose session idled out at DEADLINE, is to be signalled at NOW: at
 * once for a deadline not signalled before, then at intervals doubling up to the horizon. */
static bool signal_due(ServingThread *t, uint64_t deadline, uint64_t now) {
        if (t->signalled_for != deadline)
                t->resend = SERVING_GAP_USEC;
        else if (now < t->signal_again)
                return false;
        else
                t->resend = t->resend * 2 < SERVING_HORIZON_USEC ? t->resend * 2 : SERVING_HORIZON_USEC;
        t->signalled_for = deadline;
        t->signal_again = now + t->resend;
        return true;
}

/* A deadline long past: every thread's, once the conversations end (serving_end_all). */
#define ENDING_DEADLINE 1u

/* wake_idle: signals the threads whose session is past its idle deadline at NOW (signal_due);
 * returns when to look again (under the lock). */
static uint64_t wake_idle(ServingSet *set, uint64_t now) {
        uint64_t next = now + SERVING_HORIZON_USEC, gap = SERVING_GAP_USEC;

        for (ServingThread *t = set->head; t; t = t->next) {
                uint64_t deadline = set->ending ? ENDING_DEADLINE : __atomic_load_n(&t->idle_deadline, __ATOMIC_RELAXED);
                gap += SERVING_GAP_PER_THREAD_NSEC / 1000u;
                if (deadline == 0)
                        continue;
                if (deadline > now) {
                        next = deadline < next ? deadline : next;
                        continue;
                }
                if (signal_due(t, deadline, now))
                        (void) pthread_kill(t->thread, SERVING_SIGNAL);
                next = t->signal_again < next ? t->signal_again : next;
        }
        return next > now + gap ? next : now + gap;
}

/* watch_main: the watch's thread: a look at the list, then sleep until the next one is due, or
 * until a thread is listed when none is. */
static void *watch_main(void *userdata) {
        ServingSet *set = userdata;

        pthread_mutex_lock(&set->lock);
        while (!set->stop) {
                uint64_t next = wake_idle(set, now_usec());
                set->watch_idle = set->head == NULL;
                if (set->watch_idle) {
                        pthread_cond_wait(&set->wake, &set->lock);
                        continue;
                }
                struct timespec at = { .tv_sec = (time_t) (next / 1000000u),
                                       .tv_nsec = (long) (next % 1000000u) * 1000L };
                (void) pthread_cond_timedwait(&set->wake, &set->lock, &at);
        }
        pthread_mutex_unlock(&set->lock);
        return NULL;
}

int serving_new(ServingSet **ret) {
        struct sigaction action = { .sa_handler = on_signal }; /* no SA_RESTART: EINTR */
        ServingSet *set = calloc(1, sizeof(*set));
        pthread_condattr_t attr;
        int r;

        if (!set)
                return -ENOMEM;
        sigemptyset(&action.sa_mask);
        if (sigaction(SERVING_SIGNAL, &action, NULL) < 0) {
                r = log_error_errno(-errno, "cannot install the serving threads' wakeup");
                free(set);
                return r;
        }
        pthread_mutex_init(&set->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&set->wake, &attr);
        pthread_condattr_destroy(&attr);
        if ((r = -pthread_create(&set->watch, NULL, watch_main, set)) < 0) {
                log_error_errno(r, "cannot start the idle watch");
                serving_free(set);
                return r;
        }
        set->watch_started = true;
        *ret = set;
        return 0;
}

void serving_free(ServingSet *set) {
        if (!set)
                return;
        if (set->watch_started) {
                pthread_mutex_lock(&set->lock);
                set->stop = true;
                pthread_cond_signal(&set->wake);
                pthread_mutex_unlock(&set->lock);
                pthread_join(set->watch, NULL);
        }
        pthread_cond_destroy(&set->wake);
        pthread_mutex_destroy(&set->lock);
        free(set);
}

void serving_add(ServingSet *set, ServingThread *me) {
        if (!takes_signal)
                take_signal(true);
        pthread_mutex_lock(&set->lock);
        me->signalled_for = 0;
        me->prev = NULL;
        me->next = set->head;
        if (me->next)
                me->next->prev = me;
        set->head = me;
        if (set->watch_idle) {
                set->watch_idle = false;
                pthread_cond_signal(&set->wake);
        }
        pthread_mutex_unlock(&set->lock);
}

void serving_remove(ServingSet *set, ServingThread *me, bool block) {
        pthread_mutex_lock(&set->lock);
        if (me->prev)
                me->prev->next = me->next;
        else
                set->head = me->next;
        if (me->next)
                me->next->prev = me->prev;
        pthread_mutex_unlock(&set->lock);
        if (block)
                take_signal(false);
}

void serving_end_all(ServingSet *set) {
        pthread_mutex_lock(&set->lock);
        set->ending = true;
        pthread_cond_signal(&set->wake);
        pthread_mutex_unlock(&set->lock);
}

bool serving_wake_all(ServingSet *set) {
        pthread_mutex_lock(&set->lock);
        bool any = set->head != NULL;
        for (ServingThread *t = set->head; t; t = t->next)
                (void) pthread_kill(t->thread, SERVING_SIGNAL);
        pthread_mutex_unlock(&set->lock);
        return any;
}
