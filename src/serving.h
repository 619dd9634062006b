/* serving: the per-connection model's threads that serve a session, and what wakes them. Such
 * a thread blocks in recv() or send(); a signal (SERVING_SIGNAL, caught without SA_RESTART)
 * makes the call return EINTR, or what it transferred, so that the thread looks again at why
 * it waits. Two things send it:
 *
 * - the hand-over (serving_wake_all), to every listed thread;
 * - the watch, a helper thread, to a thread whose session is past its idle deadline. A socket
 *   receive timeout (SO_RCVTIMEO) did this before: it sets and deletes a kernel timer in every
 *   blocking read, and costs a setsockopt() a connection (docs/benchmarks.md measures both).
 *   A thread now publishes its session's idle deadline with a store (serving_idle_until).
 *   Once the stop ends the conversations (serving_end_all), every listed thread is past it.
 *
 * The watch sleeps until the earliest published deadline, or SERVING_HORIZON_USEC at most, so
 * that a deadline published meanwhile is seen in time: a fresh idle deadline is at least a
 * second away. Only one that was already older (a session handed over from another process)
 * can be seen up to that much late. Deadlines close together cost one look: the watch looks
 * again no sooner than SERVING_GAP_USEC plus SERVING_GAP_PER_THREAD_NSEC for each listed
 * thread (a look walks the whole list, under the lock that starting and ending sessions take;
 * with 19,000 threads it is at most 0.12 s late). With no thread listed it sleeps until one
 * is. A signal that arrives just before its thread blocks wakes nothing: the watch sends it
 * again while the thread's deadline stays passed, at intervals doubling from SERVING_GAP_USEC
 * to the horizon, each thread on its own. A thread blocked in send() past its idle deadline
 * (the write has a deadline of its own) gets these too: send() returns what it sent, and the
 * thread goes on; once a second at most after the first few.
 *
 * The watch signals listed threads only. The server blocks the signal from the start, and a
 * thread unblocks it when it is first listed; a per-connection thread keeps it unblocked
 * between its sessions (serving_remove() with BLOCK false: two system calls fewer a session),
 * and so do the threads it starts. A SIGURG sent to the process from outside may therefore
 * interrupt such a thread's wait for its next client, which is retried. */
#pragma once

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

/* SIGURG, as Go's scheduler chose for its preemption: ignored by default, sent by nothing
 * else here (no socket of hellod has an owner, F_SETOWN), and not a real-time signal: one
 * pending at most, however often it is sent to a thread that is busy elsewhere. */
#define SERVING_SIGNAL SIGURG

#define SERVING_GAP_USEC 20000u
#define SERVING_GAP_PER_THREAD_NSEC 5000u
#define SERVING_HORIZON_USEC 1000000u

/* ServingThread: a serving thread's entry, on its own stack, listed from serving_add() to
 * serving_remove(). */
typedef struct ServingThread {
        pthread_t thread;
        uint64_t idle_deadline; /* atomic: its session's (now_usec()); 0: none */
        /* the watch's, under the set's lock: */
        uint64_t signalled_for; /* the deadline it was signalled for; 0: none */
        uint64_t signal_again;  /* when to send it again, if that deadline stays */
        uint64_t resend;        /* the interval after that (usec) */
        struct ServingThread *prev, *next;
} ServingThread;

typedef struct ServingSet ServingSet;

/* serving_new: installs the signal's handler and starts the watch (which blocks the signal,
 * as the thread that calls this should). 0 or a negative errno. */
int serving_new(ServingSet **ret);
/* serving_free: stops and joins the watch; every thread has been removed. NULL-safe. */
void serving_free(ServingSet *set);

/* serving_add: the calling thread, ME, serves a session from now on, and takes the signal. */
void serving_add(ServingSet *set, ServingThread *me);
/* serving_remove: ME is no longer woken. A wakeup sent before may still be pending: with
 * BLOCK (the hand-over has begun), the thread blocks the signal now, so that it interrupts
 * nothing more (the handed_over hook's message to systemd, say). Otherwise it keeps taking it
 * (two system calls a session fewer), as its next session would: the threads that wait for a
 * connection take an EINTR in their stride. */
void serving_remove(ServingSet *set, ServingThread *me, bool block);
/* serving_end_all: from now on the watch treats every listed thread as past its deadline (and
 * so signals each one again and again, at the intervals above, until it leaves the list): the
 * conversations end (EngineOps.end_conversations), and each thread looks at its session's stop.
 * serving_wake_all: signals every listed thread once; false when none is listed. */
void serving_end_all(ServingSet *set);
bool serving_wake_all(ServingSet *set);

/* serving_idle_until: ME's session idles out at DEADLINE (UINT64_MAX: never; 0: not
 * conversing). Only the thread itself calls it, before each blocking read. */
static inline void serving_idle_until(ServingThread *me, uint64_t deadline) {
        __atomic_store_n(&me->idle_deadline, deadline == UINT64_MAX ? 0 : deadline, __ATOMIC_RELAXED);
}

/* serving_signal_clear, serving_signalled: whether the signal reached the calling thread since
 * it cleared it: a peek (MSG_PEEK with SO_RCVLOWAT) that a signal ends returns what it has,
 * not EINTR, and only this tells that apart from a peek that cannot wait. */
void serving_signal_clear(void);
bool serving_signalled(void);
