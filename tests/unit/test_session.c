/* test_session: when a lingering close goes on past its deadline (session_linger_next), with
 * the clock given: over a socket pair whose server side holds unread replies, the client
 * taking some (the server's unread bytes shrink, as a TCP sender's unacknowledged ones do)
 * and sending more (bytes the lingering close read away). The integration suite drives the
 * same through the daemon (test_pipeline.c); these are the bounds no test of seconds reaches:
 * the 30 s cap, and the stall of SESSION_LINGER_STALL_USEC counted from the last reply taken. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "session.h"

#define SECOND 1000000u
#define BEGAN (1000u * SECOND) /* any time but 0 */

static int pair[2] = { -1, -1 }; /* [0]: hellod's side, [1]: the client's */

/* open_filled: the pair, hellod's side holding as many replies as its buffer takes. */
static void open_filled(void) {
        static const char replies[4096] = { 'x' };

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair), 0, "socketpair: %s", strerror(errno));
        while (send(pair[0], replies, sizeof(replies), MSG_NOSIGNAL) > 0)
                ;
        cr_assert_eq(errno, EAGAIN, "filling: %s", strerror(errno));
}

static void close_pair(void) {
        close(pair[0]);
        close(pair[1]);
}

/* take_replies: the client reads one of its replies (a whole send: a socket pair frees a
 * send's buffer only once all of it is read). */
static void take_replies(void) {
        char buf[4096];

        cr_assert_gt(recv(pair[1], buf, sizeof(buf), 0), 0, "the client's read: %s", strerror(errno));
}

TestSuite(linger, .init = open_filled, .fini = close_pair);

/* At the stall's end, where one that takes nothing is closed (below). */
Test(linger, a_client_that_sends_and_takes_replies_gets_another_second) {
        const uint64_t at = BEGAN + SESSION_LINGER_STALL_USEC;
        LingerProgress p;

        session_linger_begin(&p, pair[0], 10, BEGAN);
        take_replies();
        cr_assert_eq(session_linger_next(&p, pair[0], 20, at), at + SECOND);
}

Test(linger, a_client_that_stopped_sending_is_closed) {
        LingerProgress p;

        session_linger_begin(&p, pair[0], 10, BEGAN);
        take_replies();
        cr_assert_eq(session_linger_next(&p, pair[0], 10, BEGAN + SECOND), 0);
}

Test(linger, a_zeroed_progress_never_goes_on) {
        LingerProgress p = { 0 };

        take_replies();
        cr_assert_eq(session_linger_next(&p, pair[0], 20, BEGAN + SECOND), 0);
}

/* A receiver opens its window in steps: seconds without a reply taken, while the client still
 * sends, are not the end; SESSION_LINGER_STALL_USEC of them are. */
Test(linger, a_client_that_takes_nothing_is_closed_after_the_stall) {
        const uint64_t stall_seconds = SESSION_LINGER_STALL_USEC / SECOND;
        LingerProgress p;
        size_t discarded = 10;
        uint64_t at = BEGAN + SECOND;

        session_linger_begin(&p, pair[0], discarded, BEGAN);
        for (; at < BEGAN + SESSION_LINGER_STALL_USEC; at += SECOND)
                cr_assert_eq(session_linger_next(&p, pair[0], discarded += 10, at), at + SECOND,
                             "%llu s without a reply taken", (unsigned long long) ((at - BEGAN) / SECOND));
        cr_assert_eq(at, BEGAN + stall_seconds * SECOND);
        cr_assert_eq(session_linger_next(&p, pair[0], discarded += 10, at), 0);
}

/* The stall counts from the last reply taken, not from the beginning. */
Test(linger, the_stall_counts_from_the_last_reply_taken) {
        LingerProgress p;
        size_t discarded = 10;
        uint64_t took = BEGAN + 3 * SECOND, at;

        session_linger_begin(&p, pair[0], discarded, BEGAN);
        for (at = BEGAN + SECOND; at < took; at += SECOND)
                cr_assert_neq(session_linger_next(&p, pair[0], discarded += 10, at), 0);
        take_replies();
        cr_assert_eq(session_linger_next(&p, pair[0], discarded += 10, took), took + SECOND);
        for (at = took + SECOND; at < took + SESSION_LINGER_STALL_USEC; at += SECOND)
                cr_assert_neq(session_linger_next(&p, pair[0], discarded += 10, at), 0,
                              "%llu s after the last reply taken", (unsigned long long) ((at - took) / SECOND));
        cr_assert_eq(session_linger_next(&p, pair[0], discarded += 10, at), 0);
}

/* However well the client keeps up, SESSION_LINGER_MAX_USEC in all (nginx's lingering_time):
 * the last deadline is the cap itself, not a second past it. */
Test(linger, a_lingering_close_ends_at_the_cap) {
        LingerProgress p;
        size_t discarded = 10;
        uint64_t cap = BEGAN + SESSION_LINGER_MAX_USEC, at = BEGAN + SECOND / 2, next = 0;

        session_linger_begin(&p, pair[0], discarded, BEGAN);
        for (int turns = 0; at < cap && turns < 100; turns++, at = next) {
                take_replies();
                next = session_linger_next(&p, pair[0], discarded += 10, at);
                cr_assert_eq(next, at + SECOND < cap ? at + SECOND : cap, "at %llu usec",
                             (unsigned long long) (at - BEGAN));
        }
        cr_assert_eq(at, cap);
        take_replies();
        cr_assert_eq(session_linger_next(&p, pair[0], discarded += 10, at), 0);
}
