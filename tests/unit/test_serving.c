/* test_serving: what wakes the per-connection model's threads out of a blocking recv(): the
 * watch, once the idle deadline a thread published has passed (not before, and never for a
 * thread that published none), again at growing intervals while it stays passed, and the
 * hand-over's serving_wake_all(). Each reader blocks on a socket pair, as a serving thread
 * blocks on its client. The upper bounds leave a loaded machine half a second and more: the
 * watch is due within SERVING_GAP_USEC. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "serving.h"
#include "session.h"

/* Reader: a serving thread's stand-in: listed, blocked in recv() on its end of a pair. */
typedef struct Reader {
        ServingSet *set;
        int fd, peer;
        uint64_t deadline; /* published from the start; 0: none */
        uint64_t until;    /* 0: one read, however it ends; else: reads again after each
                            * EINTR until then, the deadline left as it is */
        bool listed;       /* atomic: in the set */
        /* what came of it */
        ssize_t n;
        int err;
        unsigned signals; /* reads the signal ended */
        uint64_t ended_at;
        pthread_t thread;
} Reader;

static void *reader_main(void *userdata) {
        Reader *r = userdata;
        ServingThread me = { .thread = pthread_self() };
        char byte;

        serving_idle_until(&me, r->deadline); /* before the watch can look */
        serving_add(r->set, &me);
        __atomic_store_n(&r->listed, true, __ATOMIC_RELEASE);
        do {
                serving_signal_clear();
                r->n = recv(r->fd, &byte, 1, 0);
                r->err = r->n < 0 ? errno : 0;
                r->signals += serving_signalled();
        } while (r->n < 0 && r->err == EINTR && now_usec() < r->until);
        r->ended_at = now_usec();
        serving_idle_until(&me, 0);
        serving_remove(r->set, &me, false);
        return NULL;
}

static void reader_start(Reader *r, ServingSet *set, uint64_t deadline, uint64_t until) {
        int pair[2];

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
        *r = (Reader) { .set = set, .fd = pair[0], .peer = pair[1], .deadline = deadline, .until = until };
        cr_assert_eq(pthread_create(&r->thread, NULL, reader_main, r), 0);
        while (!__atomic_load_n(&r->listed, __ATOMIC_ACQUIRE))
                usleep(1000);
}

static void reader_join(Reader *r) {
        cr_assert_eq(pthread_join(r->thread, NULL), 0);
        close(r->fd);
        close(r->peer);
}

static ServingSet *set_new(void) {
        ServingSet *set = NULL;

        cr_assert_eq(serving_new(&set), 0);
        return set;
}

/* Attempts of the tests below: a late wake-up (a slow machine's) is tried again, for a watch
 * that misses its deadline misses it every time; an early one fails at once. */
#define WAKE_ATTEMPTS 3
#define WAKE_LATE_USEC 700000u /* under the watch's horizon past the deadline */

/* The watch wakes a read past its deadline: recv() returns EINTR at the deadline, not
 * before, and the thread can tell the signal came. */
Test(serving, a_read_past_its_idle_deadline_is_woken) {
        ServingSet *set = set_new();
        Reader r;

        for (int attempt = 1;; attempt++) {
                uint64_t deadline = now_usec() + 300000u;

                reader_start(&r, set, deadline, 0);
                reader_join(&r);
                cr_assert_eq(r.n, -1, "recv() returned %zd", r.n);
                cr_assert_eq(r.err, EINTR);
                cr_assert_eq(r.signals, 1);
                cr_assert_geq(r.ended_at, deadline, "woken %llu us before its deadline",
                              (unsigned long long) (deadline - r.ended_at));
                if (r.ended_at < deadline + WAKE_LATE_USEC)
                        break;
                cr_assert_lt(attempt, WAKE_ATTEMPTS, "woken %llu us after its deadline, %d times",
                             (unsigned long long) (r.ended_at - deadline), WAKE_ATTEMPTS);
        }
        serving_free(set);
}

/* A thread with no deadline (idle_timeout = 0) is never woken by the watch; its read ends
 * with the byte its client sends, a second and a half later (past the watch's horizon). */
Test(serving, a_read_without_a_deadline_is_left_alone) {
        ServingSet *set = set_new();
        Reader r;

        reader_start(&r, set, 0, 0);
        usleep(1500000);
        cr_assert_eq(send(r.peer, "x", 1, 0), 1);
        reader_join(&r);
        cr_assert_eq(r.n, 1, "recv() returned %zd (%s)", r.n, strerror(r.err));
        cr_assert_eq(r.signals, 0);
        serving_free(set);
}

/* Deadlines far apart: each read is woken at its own, the later one not with the earlier.
 * The watch, idle while no thread was listed, notices the first thread listed. */
Test(serving, each_read_is_woken_at_its_own_deadline) {
        ServingSet *set = set_new();
        Reader early, late;

        for (int attempt = 1;; attempt++) {
                uint64_t now = now_usec();

                usleep(50000); /* the watch has found the list empty and sleeps until a thread is listed */
                reader_start(&early, set, now + 200000u, 0);
                reader_start(&late, set, now + 1500000u, 0);
                reader_join(&early);
                cr_assert_eq(early.err, EINTR);
                reader_join(&late);
                cr_assert_eq(late.err, EINTR);
                cr_assert_geq(late.ended_at, late.deadline);
                if (early.ended_at < early.deadline + WAKE_LATE_USEC)
                        break;
                cr_assert_lt(attempt, WAKE_ATTEMPTS, "the early read ended %llu us late, %d times",
                             (unsigned long long) (early.ended_at - early.deadline), WAKE_ATTEMPTS);
        }
        serving_free(set);
}

/* A thread that stays past its deadline (blocked in a write, or a signal that came before it
 * blocked) is signalled again, at intervals doubling from 20 ms: 7 or 8 times in its first
 * 1.5 s, where a signal every look would be some 75. */
Test(serving, a_deadline_that_stays_passed_is_signalled_again_less_and_less) {
        ServingSet *set = set_new();
        Reader r;
        uint64_t deadline = now_usec() + 100000u;

        reader_start(&r, set, deadline, deadline + 1500000u);
        reader_join(&r);
        cr_assert_eq(r.err, EINTR);
        cr_log_info("a deadline passed for 1.5 s: signalled %u times", r.signals);
        cr_assert(r.signals >= 4 && r.signals <= 15, "signalled %u times in 1.5 s", r.signals);
        serving_free(set);
}

/* The hand-over wakes every listed thread, deadline or none. */
Test(serving, wake_all_wakes_every_listed_thread) {
        ServingSet *set = set_new();
        Reader r[3];

        for (int i = 0; i < 3; i++)
                reader_start(&r[i], set, i == 0 ? now_usec() + 60000000u : 0, 0);
        /* Sent until every thread is done: one that was not blocked yet misses a signal. */
        cr_assert(serving_wake_all(set));
        for (int i = 0; i < 200 && serving_wake_all(set); i++)
                usleep(10000);
        cr_assert(!serving_wake_all(set), "threads still listed after 2 s of wakeups");
        for (int i = 0; i < 3; i++) {
                reader_join(&r[i]);
                cr_assert_eq(r[i].err, EINTR, "reader %d: recv() returned %zd", i, r[i].n);
        }
        serving_free(set);
}
