/* loopset: the shared machinery of the event-loop drivers. */
#include "loopset.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

/* How long the server waits for the loops to let go of a listener set before it says so. */
#define LOOPSET_LISTENERS_WAIT_WARN_SEC 5

int loopset_init(LoopSet *set, unsigned n, size_t loop_size, const EngineOps *ops, const EngineHooks *hooks) {
        pthread_condattr_t attr;

        if (!(set->loops = calloc(n, loop_size)))
                return -ENOMEM;
        set->n_alloc = n;
        set->loop_size = loop_size;
        set->engine = (Engine) { .ops = ops, .hooks = *hooks };
        pthread_mutex_init(&set->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&set->all_gone, &attr);
        pthread_cond_init(&set->acked, &attr);
        pthread_condattr_destroy(&attr);
        for (unsigned i = 0; i < n; i++) {
                LoopBase *l = loopset_loop(set, i);
                l->set = set;
                l->wake_fd = -1;
                pthread_mutex_init(&l->lock, NULL);
        }
        return 0;
}

LoopBase *loopset_loop(const LoopSet *set, unsigned i) {
        return (LoopBase *) ((char *) set->loops + (size_t) i * set->loop_size);
}

int loopset_start(LoopSet *set, LoopBase *l, size_t stack_size, int eventfd_flags, int (*prepare)(LoopBase *l),
                  void *(*main)(void *)) {
        pthread_attr_t attr;
        int r;

        if ((l->wake_fd = eventfd(0, eventfd_flags | EFD_CLOEXEC)) < 0)
                return -errno;
        if (prepare && (r = prepare(l)) < 0)
                return r;
        r = pthread_attr_init(&attr);
        if (r != 0)
                return -r;
        r = pthread_attr_setstacksize(&attr, stack_size);
        pthread_mutex_lock(&set->lock);
        if (r == 0)
                r = pthread_create(&l->thread, &attr, main, l);
        if (r == 0) {
                set->n_running++;
                set->n++;
        }
        pthread_mutex_unlock(&set->lock);
        pthread_attr_destroy(&attr);
        return -r;
}

void loopset_exited(LoopBase *l) {
        LoopSet *set = l->set;

        pthread_mutex_lock(&set->lock);
        l->listen_acked = UINT64_MAX; /* gone: holds no listener */
        pthread_cond_broadcast(&set->acked);
        if (--set->n_running == 0)
                pthread_cond_broadcast(&set->all_gone);
        pthread_mutex_unlock(&set->lock);
}

int loopset_add(LoopSet *set, Session *s) {
        LoopBase *best = loopset_loop(set, 0);

        for (unsigned i = 1; i < set->n; i++) {
                LoopBase *l = loopset_loop(set, i);
                if (__atomic_load_n(&l->n_sessions, __ATOMIC_RELAXED) < __atomic_load_n(&best->n_sessions, __ATOMIC_RELAXED))
                        best = l;
        }
        __atomic_add_fetch(&best->n_sessions, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&best->lock);
        s->incoming_next = best->incoming;
        best->incoming = s;
        pthread_mutex_unlock(&best->lock);
        /* An eventfd write fails only when the counter would overflow: it is read on every
         * wakeup, so it cannot, and the loop is awake anyway if it were that full. */
        (void) eventfd_write(best->wake_fd, 1);
        return 0;
}

bool loopset_take_incoming(LoopBase *l, Session **ret) {
        Session *list, *reversed = NULL;
        bool go_on;

        /* Woken, so not stuck: the answer to loopset_answered(). */
        __atomic_store_n(&l->alive_acked, __atomic_load_n(&l->set->alive_gen, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
        pthread_mutex_lock(&l->lock);
        list = l->incoming;
        l->incoming = NULL;
        go_on = !l->stopping;
        pthread_mutex_unlock(&l->lock);
        while (list) {
                Session *next = list->incoming_next;
                list->incoming_next = reversed;
                reversed = list;
                list = next;
        }
        *ret = reversed;
        return go_on;
}

void loopset_wake_all(LoopSet *set) {
        for (unsigned i = 0; i < set->n; i++)
                (void) eventfd_write(loopset_loop(set, i)->wake_fd, 1);
}

bool loopset_answered(LoopSet *set) {
        uint64_t gen = __atomic_load_n(&set->alive_gen, __ATOMIC_ACQUIRE);
        bool all = true;

        for (unsigned i = 0; i < set->n; i++)
                if (__atomic_load_n(&loopset_loop(set, i)->alive_acked, __ATOMIC_ACQUIRE) < gen)
                        all = false;
        __atomic_store_n(&set->alive_gen, gen + 1, __ATOMIC_RELEASE);
        loopset_wake_all(set);
        return all;
}

void loopset_end_conversations(LoopSet *set) {
        __atomic_store_n(&set->ending, true, __ATOMIC_RELEASE);
        loopset_wake_all(set);
}

bool loopset_ending_conversations(LoopBase *l) {
        if (l->ending_seen || !__atomic_load_n(&l->set->ending, __ATOMIC_ACQUIRE))
                return false;
        l->ending_seen = true;
        return true;
}

static bool all_acked(const LoopSet *set, uint64_t gen) {
        for (unsigned i = 0; i < set->n; i++)
                if (loopset_loop(set, i)->listen_acked < gen)
                        return false;
        return true;
}

void loopset_publish_listeners(LoopSet *set, const ListenerSet *listeners) {
        pthread_mutex_lock(&set->lock);
        set->listeners = listeners->items;
        set->n_listeners = listeners->n;
        uint64_t gen = set->listen_gen + 1;
        __atomic_store_n(&set->listen_gen, gen, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&set->lock);

        /* Wait until no loop can touch a socket of the previous set; a loop is never blocked
         * for long, so this is quick; the warning is for a loop that is stuck. */
        loopset_wake_all(set);
        pthread_mutex_lock(&set->lock);
        while (!all_acked(set, gen)) {
                struct timespec deadline = timespec_in_msec(LOOPSET_LISTENERS_WAIT_WARN_SEC * 1000u);
                if (pthread_cond_timedwait(&set->acked, &set->lock, &deadline) == ETIMEDOUT)
                        log_warning("an event loop has not taken up the new listeners for %d s, waiting",
                                    LOOPSET_LISTENERS_WAIT_WARN_SEC);
        }
        pthread_mutex_unlock(&set->lock);
}

uint64_t loopset_listen_gen(const LoopSet *set) {
        return __atomic_load_n(&set->listen_gen, __ATOMIC_ACQUIRE);
}

uint64_t loopset_take_listeners(LoopBase *l, const Listener **ret, size_t *ret_n) {
        LoopSet *set = l->set;

        pthread_mutex_lock(&set->lock);
        *ret = set->listeners;
        *ret_n = set->n_listeners;
        uint64_t gen = l->listen_acked = set->listen_gen;
        pthread_cond_broadcast(&set->acked);
        pthread_mutex_unlock(&set->lock);
        return gen;
}

/* free_set: every thread has returned: join them, clean every loop up (the driver's part,
 * then the base), free the set (and with it the driver, which it begins). */
static void free_set(LoopSet *set, void (*loop_done)(LoopBase *l)) {
        for (unsigned i = 0; i < set->n; i++)
                pthread_join(loopset_loop(set, i)->thread, NULL);
        for (unsigned i = 0; i < set->n_alloc; i++) {
                LoopBase *l = loopset_loop(set, i);
                loop_done(l);
                if (l->wake_fd >= 0)
                        close(l->wake_fd);
                pthread_mutex_destroy(&l->lock);
        }
        pthread_cond_destroy(&set->acked);
        pthread_cond_destroy(&set->all_gone);
        pthread_mutex_destroy(&set->lock);
        free(set->loops);
        free(set);
}

int loopset_hand_over(LoopSet *set, uint64_t timeout_msec, void (*loop_done)(LoopBase *l)) {
        pthread_mutex_lock(&set->lock);
        set->hand_over = true;
        pthread_mutex_unlock(&set->lock);
        return loopset_stop(set, timeout_msec, loop_done);
}

bool loopset_handing_over(LoopSet *set) {
        pthread_mutex_lock(&set->lock);
        bool r = set->hand_over;
        pthread_mutex_unlock(&set->lock);
        return r;
}

int loopset_stop(LoopSet *set, uint64_t timeout_msec, void (*loop_done)(LoopBase *l)) {
        struct timespec deadline = timespec_in_msec(timeout_msec);
        int r = 0;

        for (unsigned i = 0; i < set->n; i++) {
                LoopBase *l = loopset_loop(set, i);
                pthread_mutex_lock(&l->lock);
                l->stopping = true;
                pthread_mutex_unlock(&l->lock);
                (void) eventfd_write(l->wake_fd, 1);
        }
        /* Wait on a counter, then join: pthread_join() alone cannot time out. */
        pthread_mutex_lock(&set->lock);
        while (set->n_running > 0 && r == 0)
                r = timeout_msec == UINT64_MAX ? pthread_cond_wait(&set->all_gone, &set->lock)
                                               : pthread_cond_timedwait(&set->all_gone, &set->lock, &deadline);
        bool gone = set->n_running == 0;
        pthread_mutex_unlock(&set->lock);
        if (!gone)
                return -ETIMEDOUT; /* a loop still runs: the set is left to it */
        free_set(set, loop_done);
        return 0;
}

/* ---- the EngineOps both pools share ---- */

static LoopSet *set_of(Engine *e) {
        return (LoopSet *) e; /* the engine is a LoopSet's first member */
}

int loopset_engine_add(Engine *e, Session *s) {
        return loopset_add(set_of(e), s);
}

void loopset_engine_end_conversations(Engine *e) {
        loopset_end_conversations(set_of(e));
}

void loopset_engine_reconfigure(Engine *e, const Conf *started, const Conf *conf) {
        (void) e;
        if (conf_same_workers(conf, started) && conf->worker_stack_size != started->worker_stack_size)
                log_warning("a change of 'worker_stack_size' takes effect for the event loops when hellod is "
                            "restarted");
}

void loopset_engine_set_listeners(Engine *e, const ListenerSet *set) {
        loopset_publish_listeners(set_of(e), set);
}

void loopset_engine_slot_freed(Engine *e) {
        loopset_wake_all(set_of(e));
}

bool loopset_engine_answered(Engine *e) {
        return loopset_answered(set_of(e));
}
