/* socktimer: setsockopt() for a timeout only when it must change (socktimer.h). */
#include "socktimer.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "session.h"

int socktimer_set(int fd, int option, uint64_t usec) {
        struct timeval tv = { .tv_sec = (time_t) (usec / 1000000u), .tv_usec = (suseconds_t) (usec % 1000000u) };

        if (setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv)) < 0)
                return -errno;
        return 0;
}

bool socktimer_arm(SockTimer *t, uint64_t deadline, uint64_t now) {
        if (deadline == SESSION_NO_DEADLINE) {
                /* One armed for an earlier deadline (a hand-over's kept output) would wake the
                 * thread at each expiry for as long as the client does not read. */
                socktimer_disarm(t);
                return true;
        }
        if (now >= deadline)
                return false;
        uint64_t left = deadline - now;
        bool rearm = t->armed == 0 || left + SOCKTIMER_SLACK_USEC < t->armed || left / 2 > t->armed;
        if (rearm && socktimer_set(t->fd, t->option, left) == 0)
                t->armed = left;
        return true;
}

void socktimer_disarm(SockTimer *t) {
        if (t->armed != 0 && socktimer_set(t->fd, t->option, 0) == 0)
                t->armed = 0;
}
