/* ratelimit: at most BURST events per one-second window, counting what was held back, so a
 * flood of connections cannot flood the log. Thread-safe. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct RateLimit {
        pthread_mutex_t lock;
        unsigned burst;
        uint64_t window_start; /* usec, CLOCK_MONOTONIC */
        unsigned in_window;
        unsigned suppressed;
} RateLimit;

#define RATELIMIT_INIT(b) { .lock = PTHREAD_MUTEX_INITIALIZER, .burst = (b) }

/* ratelimit_allow: true when one more event may pass now; *RET_SUPPRESSED is set to the
 * number held back in the window that just ended (worth a line of its own), else 0. */
bool ratelimit_allow(RateLimit *rl, unsigned *ret_suppressed);
