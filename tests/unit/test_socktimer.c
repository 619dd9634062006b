/* test_socktimer: the per-connection model's socket timeouts, read back from a real socket
 * with getsockopt() after every arm: set to the time left, not set again within the slack,
 * shrunk and grown back past it, and gone once the deadline is. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "session.h"
#include "socktimer.h"

static int pair[2] = { -1, -1 };

static void open_pair(void) {
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0, "socketpair: %s", strerror(errno));
}

static void close_pair(void) {
        close(pair[0]);
        close(pair[1]);
}

/* in_force: the socket's OPTION as the kernel has it, in usec. */
static uint64_t in_force(int option) {
        struct timeval tv;
        socklen_t len = sizeof(tv);

        cr_assert_eq(getsockopt(pair[0], SOL_SOCKET, option, &tv, &len), 0, "getsockopt: %s", strerror(errno));
        return (uint64_t) tv.tv_sec * 1000000u + (uint64_t) tv.tv_usec;
}

/* The kernel keeps a timeout in jiffies: what it reads back is within one of them (at most
 * 10 ms at HZ=100) of what was set. */
#define JIFFY_USEC 10000u

static void assert_about(uint64_t got, uint64_t want, const char *what) {
        cr_assert(got + JIFFY_USEC >= want && got <= want + JIFFY_USEC, "%s: %llu usec in force, %llu wanted", what,
                  (unsigned long long) got, (unsigned long long) want);
}

TestSuite(socktimer, .init = open_pair, .fini = close_pair);

Test(socktimer, a_deadline_sets_the_time_left) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };

        cr_assert(socktimer_arm(&t, 5000000 + 1000, 1000));
        assert_about(in_force(SO_SNDTIMEO), 5000000, "armed 5 s ahead");
        cr_assert_eq(in_force(SO_RCVTIMEO), 0, "the other direction is left alone");
}

Test(socktimer, a_deadline_that_has_passed_is_refused) {
        SockTimer t = { .fd = pair[0], .option = SO_RCVTIMEO };

        cr_assert_not(socktimer_arm(&t, 1000, 1000));
        cr_assert_not(socktimer_arm(&t, 1000, 2000));
        cr_assert_eq(in_force(SO_RCVTIMEO), 0);
}

Test(socktimer, a_deadline_within_the_slack_is_not_set_again) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };

        cr_assert(socktimer_arm(&t, 3000000, 0));
        /* 10 ms later, the same deadline: 10 ms less left, within the slack. */
        cr_assert(socktimer_set(pair[0], SO_SNDTIMEO, 7000000) == 0); /* a marker: untouched if not set again */
        cr_assert(socktimer_arm(&t, 3000000, 10000));
        assert_about(in_force(SO_SNDTIMEO), 7000000, "within the slack");
}

Test(socktimer, a_deadline_nearer_than_the_slack_shrinks_it) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };

        cr_assert(socktimer_arm(&t, 3000000, 0));
        cr_assert(socktimer_arm(&t, 1000000, 0));
        assert_about(in_force(SO_SNDTIMEO), 1000000, "shrunk to 1 s");
}

Test(socktimer, a_deadline_twice_as_far_grows_it_back) {
        SockTimer t = { .fd = pair[0], .option = SO_RCVTIMEO };

        cr_assert(socktimer_arm(&t, 1000000, 0));
        cr_assert(socktimer_arm(&t, 1000000 + 2500000, 1000000)); /* 2.5 s left, 1 s in force */
        assert_about(in_force(SO_RCVTIMEO), 2500000, "grown back to 2.5 s");
}

/* The bug this module was split out for: kept output handed over with the previous process's
 * write deadline armed a send timeout, and a later write with none (idle_timeout = 0) kept it:
 * its thread woke at every expiry for as long as the client did not read. */
Test(socktimer, no_deadline_after_one_leaves_no_timeout) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };

        cr_assert(socktimer_arm(&t, 4000000, 0));
        cr_assert(socktimer_arm(&t, SESSION_NO_DEADLINE, 100));
        cr_assert_eq(in_force(SO_SNDTIMEO), 0, "a write without a deadline kept a timeout");
        cr_assert_eq(t.armed, 0);
        /* and the next deadline arms it anew */
        cr_assert(socktimer_arm(&t, 2000000 + 200, 200));
        assert_about(in_force(SO_SNDTIMEO), 2000000, "armed again");
}

Test(socktimer, no_deadline_costs_nothing_when_none_is_armed) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };

        /* A marker that a setsockopt() from it would overwrite: a line answered at once, in a
         * session without deadlines, costs no system call for its timeout. */
        cr_assert_eq(socktimer_set(pair[0], SO_SNDTIMEO, 7000000), 0);
        cr_assert(socktimer_arm(&t, SESSION_NO_DEADLINE, 0));
        assert_about(in_force(SO_SNDTIMEO), 7000000, "untouched");
        cr_assert_eq(t.armed, 0);
}

Test(socktimer, disarm_clears_it) {
        SockTimer t = { .fd = pair[0], .option = SO_RCVTIMEO };

        cr_assert(socktimer_arm(&t, 500000, 0));
        socktimer_disarm(&t);
        cr_assert_eq(in_force(SO_RCVTIMEO), 0);
        cr_assert_eq(t.armed, 0);
}

/* What it is for: a send that would block forever returns EAGAIN once the timeout fires. */
Test(socktimer, a_blocked_send_returns_at_the_timeout) {
        SockTimer t = { .fd = pair[0], .option = SO_SNDTIMEO };
        static char chunk[65536];
        ssize_t n;

        cr_assert(socktimer_arm(&t, 50000, 0));
        for (int i = 0; i < 10000; i++) { /* the peer reads nothing: the buffers fill */
                n = send(pair[0], chunk, sizeof(chunk), MSG_NOSIGNAL);
                if (n < 0)
                        break;
        }
        cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "send: %zd (%s)", n, strerror(errno));
}
