/* ratelimit: a fixed one-second window. */
#include "ratelimit.h"

#include <time.h>

static uint64_t monotonic_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

bool ratelimit_allow(RateLimit *rl, unsigned *ret_suppressed) {
        uint64_t now = monotonic_usec();
        bool allow;

        pthread_mutex_lock(&rl->lock);
        *ret_suppressed = 0;
        if (rl->window_start == 0 || now - rl->window_start >= 1000000u) {
                *ret_suppressed = rl->suppressed;
                rl->window_start = now;
                rl->in_window = 0;
                rl->suppressed = 0;
        }
        allow = rl->in_window < rl->burst;
        if (allow)
                rl->in_window++;
        else
                rl->suppressed++;
        pthread_mutex_unlock(&rl->lock);
        return allow;
}
