/* loopset: what the event-loop drivers (pool.c on epoll, uring.c on io_uring) share: N loop
 * threads, each with a queue of sessions handed to it and an eventfd to wake it; the choice
 * of the least busy loop; the listener set published to every loop, which each takes up and
 * acknowledges before the server may close the previous set's sockets; and the stop that waits
 * for the threads with a deadline. A driver's Loop begins with a LoopBase, its engine with a
 * LoopSet. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "listener.h"
#include "session.h"

typedef struct LoopSet LoopSet;

typedef struct LoopBase {
        LoopSet *set;
        pthread_t thread;
        int wake_fd;          /* eventfd: sessions queued, a slot freed, new listeners, the stop */
        pthread_mutex_t lock; /* guards incoming and stopping (and what a driver adds) */
        Session *incoming;    /* handed over by loopset_add(), linked through incoming_next */
        bool stopping;
        bool ending_seen;      /* loop thread only: loopset_ending_conversations() said so */
        unsigned n_sessions;   /* atomic: queued and running, for loopset_add() */
        uint64_t listen_acked; /* under set->lock: the listener generation taken up */
        uint64_t alive_acked;  /* atomic: the last question of loopset_answered() it woke to */
} LoopBase;

struct LoopSet {
        Engine engine; /* first: the engine is the driver */
        void *loops;   /* N driver Loops of LOOP_SIZE bytes, each beginning with a LoopBase */
        size_t loop_size;
        unsigned n_alloc; /* loops allocated */
        unsigned n;       /* loops whose thread was started (the first N) */

        pthread_mutex_t lock;
        pthread_cond_t all_gone; /* CLOCK_MONOTONIC; n_running dropped to 0 */
        pthread_cond_t acked;    /* CLOCK_MONOTONIC; a loop took up a listener generation */
        unsigned n_running;      /* loop threads that have not returned yet */
        const Listener *listeners; /* under lock: the set published by the server (its array) */
        size_t n_listeners;
        uint64_t listen_gen; /* written under lock, read atomically by the loops */
        bool hand_over;      /* under lock: the stop hands the sessions over (loopset_hand_over) */
        bool ending;         /* atomic: the server stops the conversations (loopset_end_conversations) */
        uint64_t alive_gen;  /* atomic: loopset_answered()'s last question */
};

/* loopset_init: room for N loops of LOOP_SIZE bytes (zeroed), no thread yet. 0 or -ENOMEM.
 * SET is the beginning of the driver's engine, allocated with calloc(): loopset_stop() frees
 * it. */
int loopset_init(LoopSet *set, unsigned n, size_t loop_size, const EngineOps *ops, const EngineHooks *hooks);
LoopBase *loopset_loop(const LoopSet *set, unsigned i);

/* loopset_start: L's eventfd (with EVENTFD_FLAGS), then PREPARE(L) if not NULL (what the loop
 * needs before it runs: a loop that could not be woken could not be stopped), then its thread
 * running MAIN(L) on a stack of STACK_SIZE. 0 or a negative errno (no thread started). */
int loopset_start(LoopSet *set, LoopBase *l, size_t stack_size, int eventfd_flags, int (*prepare)(LoopBase *l),
                  void *(*main)(void *));
/* loopset_exited: the last thing a loop thread does. */
void loopset_exited(LoopBase *l);

/* loopset_add: S to the least busy loop's queue, and that loop woken. Returns 0. */
int loopset_add(LoopSet *set, Session *s);
/* loopset_take_incoming: the sessions queued for L, oldest first; false once L must stop. The
 * driver reads its eventfd itself. */
bool loopset_take_incoming(LoopBase *l, Session **ret);
void loopset_wake_all(LoopSet *set);
/* loopset_answered: whether every loop has woken to the previous call's question (true at the
 * first call), then asks again: wakes every loop, which answers as it takes its incoming
 * sessions. A loop that does not answer is stuck: the server's watchdog stands for the loops
 * this way. One caller at a time (the server thread). */
bool loopset_answered(LoopSet *set);
/* loopset_end_conversations: every loop is woken to look at its sessions, which the server has
 * asked to stop (EngineOps.end_conversations); loopset_ending_conversations: whether it has, for
 * loop L that is woken: true once, the first time L asks after it. */
void loopset_end_conversations(LoopSet *set);
bool loopset_ending_conversations(LoopBase *l);

/* loopset_publish_listeners: from now on LISTENERS' sockets are the loops' listeners;
 * returns once every loop has taken up the new set (see loopset_take_listeners). The array is
 * borrowed, not copied (a copy could fail, halfway through a reload): the caller keeps it
 * unchanged until it publishes the next set. */
void loopset_publish_listeners(LoopSet *set, const ListenerSet *listeners);
/* loopset_listen_gen: the generation published last (to compare with the one a loop has). */
uint64_t loopset_listen_gen(const LoopSet *set);
/* loopset_take_listeners: L takes up the published set and acknowledges it: the previous one
 * is no longer used by L. Returns its generation. */
uint64_t loopset_take_listeners(LoopBase *l, const Listener **ret, size_t *ret_n);

/* The EngineOps both pools share, for an Engine that is a LoopSet's (its first member): each
 * pool adds its own stop and hand_over (they free its loops) and its flags.
 * loopset_engine_reconfigure warns of a change that waits for a restart. */
int loopset_engine_add(Engine *e, Session *s);
void loopset_engine_end_conversations(Engine *e);
void loopset_engine_reconfigure(Engine *e, const Conf *started, const Conf *conf);
void loopset_engine_set_listeners(Engine *e, const ListenerSet *set);
void loopset_engine_slot_freed(Engine *e);
bool loopset_engine_answered(Engine *e);

/* loopset_stop: asks every loop to stop and waits at most TIMEOUT_MSEC for the threads (with
 * UINT64_MAX: no limit). 0: joined; LOOP_DONE was called for each loop and SET is freed.
 * -ETIMEDOUT: a thread still runs, SET is left to it; stop may be called again. */
int loopset_stop(LoopSet *set, uint64_t timeout_msec, void (*loop_done)(LoopBase *l));
/* loopset_hand_over: loopset_stop(), with the loops told to hand their sessions over to the
 * server's handed_over hook instead of ending them; loopset_handing_over: whether they are to,
 * for a loop that found it is stopping. */
int loopset_hand_over(LoopSet *set, uint64_t timeout_msec, void (*loop_done)(LoopBase *l));
bool loopset_handing_over(LoopSet *set);
