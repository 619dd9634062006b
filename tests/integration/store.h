/* store: the test plays PID 1's part in a hand-over, without systemd. It owns the listening
 * socket (as hellod.socket would) and a $NOTIFY_SOCKET that keeps what hellod stores
 * (FDSTORE=1) and drops what it removes (FDSTOREREMOVE=1), and, as PID 1 does, a stored
 * socket that reports EPOLLHUP or EPOLLERR unless it came with FDPOLL=0 (sd_notify(3): systemd
 * 252 polls them for nothing else). It starts hellod with the
 * listener and the stored descriptors in LISTEN_FDS, named in LISTEN_FDNAMES, as systemd does.
 * With INVOCATION_ID set and no system bus to ask, hellod cannot tell a stop from a restart and
 * hands over (docs/zero-downtime.md). Used by test-handover and by the driver's stored
 * sessions (handover = "always"). Failures go through harness_fail(). */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "harness.h"

#define STORE_CAPACITY 4096 /* descriptors the fake store can hold */
#define STORE_MAX 256       /* what it takes by default: FileDescriptorStoreMax= */

/* The file descriptor store: name -> descriptor, as PID 1 keeps it. */
typedef struct Store {
        int sock;
        char path[108];
        pthread_t thread;
        pthread_mutex_t lock;
        char names[STORE_CAPACITY][64]; /* hellod's longest is 63 bytes (HANDOVER_FDNAME_MAX) */
        int fds[STORE_CAPACITY];
        ino_t inos[STORE_CAPACITY]; /* each socket's inode (0: not a socket), for held_already() */
        bool unpolled[STORE_CAPACITY]; /* stored with FDPOLL=0: kept through a hang-up */
        unsigned limit;    /* FileDescriptorStoreMax=: what is stored beyond it is refused */
        unsigned delay_us; /* how long each message takes, as a slow PID 1 would (set atomically) */
        unsigned long long extended_usec; /* the last EXTEND_TIMEOUT_USEC= */
        unsigned n, added, removed;
        unsigned conns_added; /* of ADDED, the connections ("c<id>") */
        unsigned readies;     /* READY=1 notifications taken */
        unsigned hung_up;     /* sockets dropped on EPOLLHUP or EPOLLERR */
        unsigned long polls;  /* turns of the store's thread */
        bool stop;
        bool reading;       /* the store's thread is taking a message in (under LOCK) */
        bool not_a_service; /* start hellod without INVOCATION_ID: a stop ends the conversations */
        const char *cgroup; /* a cgroup the next hellod joins before it runs (as TasksMax= would
                             * put it in one), or NULL */
} Store;

void store_start(Store *st, const char *dir);
void store_stop(Store *st);
/* store_count: descriptors held whose name starts with PREFIX. */
unsigned store_count(Store *st, const char *prefix);
/* store_count_settled: the same once every message already sent to the store is in (for a
 * process that sends no more: frozen, or gone). */
unsigned store_count_settled(Store *st, const char *prefix);
/* store_dup: a duplicate of the descriptor held as NAME (the caller closes it); fails the test
 * when there is none. */
int store_dup(Store *st, const char *name);
/* store_conns_added: connections stored so far, those since removed too. */
unsigned store_conns_added(Store *st);
/* store_wait: until the store holds N descriptors whose name starts with PREFIX (the
 * messages of a process that just exited may still be on their way). */
void store_wait(Hellod *d, Store *st, const char *prefix, unsigned n);
/* store_count_suffix: descriptors held whose name ends in SUFFIX. */
unsigned store_count_suffix(Store *st, const char *suffix);
/* store_stays: the store holds N descriptors named PREFIX* for MS milliseconds on end (a
 * message that is not sent can only be waited for). */
void store_stays(Hellod *d, Store *st, const char *prefix, unsigned n, int ms);
/* store_start_hellod: a process of the "service" with D's configuration: LISTEN_FDS = the
 * LISTENER, then what the store holds. */
pid_t store_start_hellod(Hellod *d, Store *st, int listener);
/* store_wait_ready: until the store has taken N READY=1 notifications in all (a start job
 * done, as `systemctl restart` waits for it). A reload sends one too, done or failed. */
void store_wait_ready(Hellod *d, Store *st, unsigned n);
/* store_wait_turn: until the store's thread has made a whole turn since the call: a hang-up
 * that came before it has been seen. store_hung_up: the sockets dropped on a hang-up so far. */
void store_wait_turn(Store *st);
unsigned store_hung_up(Store *st);
/* store_readies: the READY=1 notifications taken so far. */
unsigned store_readies(Store *st);
/* store_listener: PID 1's listening socket on 127.0.0.1, on a free *PORT. */
int store_listener(uint16_t *port);
/* store_end_rig: the test's part of PID 1 ends with it: the store, the listening socket, and D. */
void store_end_rig(Hellod *d, Store *st, int listener);
