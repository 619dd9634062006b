/* ratelimit: a fixed one-second window. */
#include "ratelimit.h"

#include <stdio.h>

#include "clock.h"

#define WINDOW_USEC 1000000u

/* Both read the clock under the lock: read before it, a caller that waited for the lock could
 * find a window newer than its "now", and the subtraction below would wrap. */
RateVerdict ratelimit_check(RateLimit *rl, unsigned *ret_suppressed) {
        RateVerdict verdict = RATE_PASS;

        pthread_mutex_lock(&rl->lock);
        uint64_t now = now_usec();
        *ret_suppressed = 0;
        if (rl->window_start == 0 || now - rl->window_start >= WINDOW_USEC) {
                *ret_suppressed = rl->suppressed;
                rl->window_start = now;
                rl->in_window = 0;
                rl->suppressed = 0;
        }
        if (rl->in_window < rl->burst)
                rl->in_window++;
        else
                verdict = rl->suppressed++ == 0 ? RATE_HELD_FIRST : RATE_HELD;
        pthread_mutex_unlock(&rl->lock);
        return verdict;
}

bool ratelimit_allow(RateLimit *rl, unsigned *ret_suppressed) {
        return ratelimit_check(rl, ret_suppressed) == RATE_PASS;
}

unsigned ratelimit_held_back(RateLimit *rl, uint64_t *ret_due) {
        unsigned held = 0;

        pthread_mutex_lock(&rl->lock);
        uint64_t now = now_usec();
        *ret_due = 0;
        if (rl->suppressed > 0 && now - rl->window_start >= WINDOW_USEC) {
                held = rl->suppressed;
                rl->suppressed = 0; /* reported: the next event starts a window of its own */
        } else if (rl->suppressed > 0) {
                *ret_due = rl->window_start + WINDOW_USEC;
        }
        pthread_mutex_unlock(&rl->lock);
        return held;
}

unsigned ratelimit_held_back_now(RateLimit *rl) {
        pthread_mutex_lock(&rl->lock);
        unsigned held = rl->suppressed;
        rl->suppressed = 0;
        pthread_mutex_unlock(&rl->lock);
        return held;
}

const char *ratelimit_repeats(unsigned n, char *buf, size_t size) {
        if (n == 0)
                return "";
        snprintf(buf, size, " (%u more held back since the last one)", n);
        return buf;
}
