/* clock: the time in microseconds, and deadlines for timed waits (pthread_cond_timedwait() on
 * a CLOCK_MONOTONIC condition, poll() and epoll_wait()). */
#pragma once

#include <stdint.h>
#include <time.h>

/* clock_usec: CLOCK's time in microseconds. */
static inline uint64_t clock_usec(clockid_t clock) {
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* now_usec: CLOCK_MONOTONIC in microseconds, the clock of every deadline. */
static inline uint64_t now_usec(void) {
        return clock_usec(CLOCK_MONOTONIC);
}

/* timespec_in_msec: CLOCK_MONOTONIC now plus MSEC, at most a day (so that "no limit",
 * UINT64_MAX, cannot overflow time_t). */
static inline struct timespec timespec_in_msec(uint64_t msec) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t) (msec / 1000u < 86400u ? msec / 1000u : 86400u);
        ts.tv_nsec += (long) (msec % 1000u) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

/* poll_msec_until: a poll() or epoll_wait() timeout for WAKE, a time in usec on NOW's clock: 0
 * once it has passed, else rounded up to the millisecond and at most a minute, after which the
 * caller wakes early and asks again: a deadline however far (a WatchdogSec= of months) never
 * turns into a negative timeout, which would mean no timeout at all. */
#define POLL_MSEC_MAX 60000
static inline int poll_msec_until(uint64_t wake, uint64_t now) {
        if (wake <= now)
                return 0;
        uint64_t usec = wake - now, msec = usec / 1000u + (usec % 1000u != 0); /* no "+ 999": it could wrap */
        return msec > POLL_MSEC_MAX ? POLL_MSEC_MAX : (int) msec;
}
