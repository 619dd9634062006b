/* watcher: the per-connection model's one helper thread, for the two things a thread blocked
 * on one socket cannot do for itself.
 *
 * - Lingering: a conversation that ended with its FIN sent (session_send_fin) leaves its
 *   socket here. The watcher reads and discards what the client still sends and closes the
 *   socket at the client's EOF, after SESSION_LINGER_BYTES or at its deadline, while the
 *   thread goes on to its next client. (A thread that kept the socket itself left it open and
 *   unread for as long as its next conversation lasted.)
 * - Idle deadlines: a thread waits in recv() without a receive timeout, since each timed
 *   sleep arms and cancels a kernel timer (under `perf stat`, rr 10: 15-20 µs of CPU a round
 *   trip with it, 14-16 without, as the naive thread server; scripts/bench's medians do not
 *   tell them apart), and a session costs no setsockopt(). The thread publishes its session's
 *   idle deadline in its Watch; once that has passed, the watcher shuts the socket's read side
 *   down, recv() returns 0, and the thread, seeing its Watch fired, answers "ERR idle
 *   timeout".
 *
 * The watcher sleeps in an epoll set holding the lingering sockets and an eventfd (a deadline
 * earlier than the one it sleeps towards, or the stop), until the earliest deadline it knows
 * (within WATCHER_SLACK_USEC, so that deadlines close together cost one wakeup). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Watcher Watcher;

/* Watch: a serving thread's entry, in the watcher's list from the thread's first session to
 * its exit (watch_leave). Initialise with WATCH_INIT; the fields are the watcher's. */
typedef struct Watch {
        struct Watch *prev, *next;
        bool linked;
        int fd;            /* the socket of the session served, -1 for none (under the lock) */
        uint64_t deadline; /* atomic: its idle deadline; SESSION_NO_DEADLINE for none */
        bool fired;        /* atomic: the watcher shut the socket's read side down */
} Watch;

#define WATCH_INIT { .fd = -1 }

/* How late the watcher may act on a deadline. */
#define WATCHER_SLACK_USEC 20000u

/* watcher_new: starts the thread; 0 or a negative errno. */
int watcher_new(Watcher **ret);
/* watcher_free: stops and joins the thread, and closes the lingering sockets at once (the
 * process is going away); every thread has left (watch_leave) before. NULL-safe. */
void watcher_free(Watcher *w);

/* watcher_linger: FD (its FIN sent) is the watcher's until DEADLINE, DISCARDED bytes of it
 * read already. */
void watcher_linger(Watcher *w, int fd, uint64_t deadline, size_t discarded);

/* watch_begin: the calling thread serves the session on FD; no deadline yet. */
void watch_begin(Watcher *w, Watch *t, int fd);
/* watch_set: the session's idle deadline is now DEADLINE. Costs no system call unless it is
 * earlier than the watcher's next wakeup. */
void watch_set(Watcher *w, Watch *t, uint64_t deadline);
/* watch_fired: the deadline passed and the read side was shut down. */
bool watch_fired(const Watch *t);
/* watch_end: the session is over; its socket is no business of the watcher's any more. */
void watch_end(Watcher *w, Watch *t);
/* watch_leave: the thread exits; T leaves the list. */
void watch_leave(Watcher *w, Watch *t);
