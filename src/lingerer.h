/* lingerer: the per-connection model's helper thread for lingering sockets. A conversation that
 * ended with its FIN sent (session_send_fin) leaves its socket here; the lingerer reads and
 * discards what the client still sends and closes the socket at the client's EOF, after
 * SESSION_LINGER_BYTES once its replies are acknowledged (session_linger_spent) or at its
 * deadline, while the thread that served it goes on to its next client. (A thread that kept the
 * socket itself left it open and unread for as long as its next conversation lasted.) At most a
 * set number of sockets linger here, each in a place taken with lingerer_reserve() before the
 * connection is let go. Past that, the thread lingers itself and the connection keeps its slot:
 * a socket closed at once answers the bytes its client still sends with a reset, which destroys
 * the replies not yet delivered. So lingering needs no more descriptors than the connections
 * themselves, twice over.
 *
 * The lingerer sleeps in an epoll set holding the lingering sockets and an eventfd (an earlier
 * deadline, or the stop), until the earliest deadline (within LINGERER_SLACK_USEC, so that
 * deadlines close together cost one wakeup). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Lingerer Lingerer;

/* How late the lingerer may close a socket past its deadline. */
#define LINGERER_SLACK_USEC 20000u

/* LingererClosing: a lingering socket that has a RECORD (lingerer_add()) is about to be closed
 * (its linger over, the lingerer freed, or no memory to wait with in lingerer_add()); RECORD
 * is freed after. Not at a hand-over, where LingererGive takes both. On whichever thread
 * closes it: the lingerer's, lingerer_add()'s caller's, or lingerer_free()'s. */
typedef void (*LingererClosing)(void *userdata, void *record);

/* lingerer_new: starts the thread; at most MAX sockets linger at a time; CLOSING (or NULL)
 * with USERDATA before each close. 0 or a negative errno. */
int lingerer_new(Lingerer **ret, size_t max, LingererClosing closing, void *userdata);
/* lingerer_set_max: at most MAX from now on (a reload). */
void lingerer_set_max(Lingerer *g, size_t max);
/* lingerer_free: stops and joins the thread, and closes the lingering sockets at once (the
 * process is going away). NULL-safe. */
void lingerer_free(Lingerer *g);

/* LingererGive: at a hand-over, a lingering socket FD with the RECORD lingerer_add() was given,
 * its DEADLINE and the bytes DISCARDED so far; it owns FD and RECORD from then on. */
typedef void (*LingererGive)(void *userdata, int fd, void *record, uint64_t deadline, size_t discarded);

/* lingerer_count: the sockets lingering, and the places taken for more. */
size_t lingerer_count(Lingerer *g);
/* lingerer_wait_empty: until no socket lingers (each closes by its deadline), for at most
 * TIMEOUT_USEC. */
void lingerer_wait_empty(Lingerer *g, uint64_t timeout_usec);
/* lingerer_hand_over: lingerer_free(), but each socket that has a record goes to GIVE instead
 * of being closed (to linger on in the next process). */
void lingerer_hand_over(Lingerer *g, LingererGive give, void *userdata);

/* lingerer_reserve: a place for one more socket, taken now, so that the caller knows before
 * it lets go of the connection; false when MAX sockets linger or have places. lingerer_add()
 * fills it. */
bool lingerer_reserve(Lingerer *g);
/* lingerer_add: FD (its FIN sent) is the lingerer's until DEADLINE, DISCARDED bytes of it read
 * already, in the place lingerer_reserve() took; RECORD (malloc'd, or NULL) goes with it:
 * freed when it closes, or given at a hand-over. */
void lingerer_add(Lingerer *g, int fd, uint64_t deadline, size_t discarded, void *record);
