/* queued: the clients an engine accepted while overload = "queue" found every slot taken
 * (EngineHooks.admit said *queued). They wait in the engine, as they would have in the
 * backlog, until a slot frees, oldest first. Each keeps a copy of its listener, so that it may
 * outlive a listener set (a reload). A list is its owner's: no lock here. */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>

#include "listener.h"

typedef struct QueuedClient {
        int fd;
        struct sockaddr_storage peer;
        Listener via;
        struct QueuedClient *next;
} QueuedClient;

/* queued_new: a record for FD from PEER through VIA (filled in field by field: a literal
 * would be a 0.6 KiB temporary on the accepting thread's stack); NULL: out of memory. */
QueuedClient *queued_new(int fd, const struct sockaddr_storage *peer, const Listener *via);

/* queued_put: Q waits in the list *HEAD, at the FRONT (it was the oldest) or the back. */
void queued_put(QueuedClient **head, QueuedClient *q, bool front);

/* queued_take: the oldest client of the list *HEAD (the caller owns it), or NULL. */
QueuedClient *queued_take(QueuedClient **head);

/* QueuedGive: takes a waiting client's descriptor FD (it owns it from then on), accepted from
 * VIA with PEER: EngineHooks.handed_over_waiting's shape. */
typedef void (*QueuedGive)(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via);

/* queued_give_all: every client of *HEAD, oldest first, to GIVE, the list emptied: at a
 * hand-over they go on in the next process (as clients left in the backlog do); at a stop
 * they are told so. */
void queued_give_all(QueuedClient **head, QueuedGive give, void *userdata);
