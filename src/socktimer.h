/* socktimer: a socket's SO_RCVTIMEO or SO_SNDTIMEO kept to a deadline, for the per-connection
 * model's blocking reads and writes. The timeout is set only when it must shrink or grow back
 * (within SOCKTIMER_SLACK_USEC): a well-behaved client costs no extra system call per line.
 * A timeout that fires early only costs a wakeup: the caller loops on EAGAIN and arms again. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* How late a timeout may fire rather than pay a setsockopt() per read. */
#define SOCKTIMER_SLACK_USEC 20000u

typedef struct SockTimer {
        int fd;
        int option;     /* SO_RCVTIMEO or SO_SNDTIMEO */
        uint64_t armed; /* usec in force; 0: none */
} SockTimer;

/* socktimer_set: FD's OPTION is USEC (0: no timeout); 0 or a negative errno. */
int socktimer_set(int fd, int option, uint64_t usec);

/* socktimer_arm: T's timeout ends at DEADLINE (now_usec(); within SOCKTIMER_SLACK_USEC after
 * it), NOW being the time; with no deadline (SESSION_NO_DEADLINE) there is none. False when
 * DEADLINE has passed. */
bool socktimer_arm(SockTimer *t, uint64_t deadline, uint64_t now);

/* socktimer_disarm: T has no timeout in force any more. */
void socktimer_disarm(SockTimer *t);
