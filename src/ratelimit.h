/* ratelimit: at most BURST events per one-second window, counting what was held back, so a
 * flood of connections cannot flood the log. Thread-safe. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct RateLimit {
        pthread_mutex_t lock;
        unsigned burst;
        uint64_t window_start; /* usec, CLOCK_MONOTONIC */
        unsigned in_window;
        unsigned suppressed;
} RateLimit;

#define RATELIMIT_INIT(b) { .lock = PTHREAD_MUTEX_INITIALIZER, .burst = (b) }

typedef enum RateVerdict {
        RATE_PASS,       /* the event may pass */
        RATE_HELD_FIRST, /* held back, the first in its window: worth a wakeup (ratelimit_held_back) */
        RATE_HELD,       /* held back */
} RateVerdict;

/* ratelimit_check: whether one more event may pass now; *RET_SUPPRESSED is set to the number
 * held back in the window that just ended and not yet reported (worth a line of its own), else 0. */
RateVerdict ratelimit_check(RateLimit *rl, unsigned *ret_suppressed);

/* ratelimit_allow: ratelimit_check() == RATE_PASS. */
bool ratelimit_allow(RateLimit *rl, unsigned *ret_suppressed);

/* ratelimit_held_back: the number held back in a window that has ended, to be reported now (0:
 * none, or their window still runs); *RET_DUE: when the running window that holds some back
 * ends, in CLOCK_MONOTONIC microseconds, else 0. So those held back last are reported once
 * their second is over, whether or not another event comes. */
unsigned ratelimit_held_back(RateLimit *rl, uint64_t *ret_due);

/* ratelimit_held_back_now: the number held back and not yet reported, whether or not their
 * window has ended: for a last report before the process exits. */
unsigned ratelimit_held_back_now(RateLimit *rl);

/* ratelimit_repeats: " (N more held back since the last one)" for a line that passes after N
 * like it were held back since the last one passed (ratelimit_check's *RET_SUPPRESSED: they
 * are counted until the next one passes, however late), in BUF; "" when N is 0. */
const char *ratelimit_repeats(unsigned n, char *buf, size_t size);
#define RATELIMIT_REPEATS_SIZE 64 /* BUF's size: the text with the largest unsigned N */
