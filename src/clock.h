/* clock: deadlines for timed waits (pthread_cond_timedwait() on a CLOCK_MONOTONIC condition). */
#pragma once

#include <stdint.h>
#include <time.h>

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
