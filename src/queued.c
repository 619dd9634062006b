/* queued: see queued.h. */
#include <stdlib.h>
#include <unistd.h>

#include "queued.h"

QueuedClient *queued_new(int fd, const struct sockaddr_storage *peer, const Listener *via) {
        QueuedClient *q = malloc(sizeof(*q));

        if (!q)
                return NULL;
        q->fd = fd;
        q->peer = *peer;
        q->via = *via;
        q->next = NULL;
        return q;
}

void queued_put(QueuedClient **head, QueuedClient *q, bool front) {
        while (!front && *head)
                head = &(*head)->next;
        q->next = *head;
        *head = q;
}

QueuedClient *queued_take(QueuedClient **head) {
        QueuedClient *q = *head;

        if (q)
                *head = q->next;
        return q;
}

void queued_give_all(QueuedClient **head, QueuedGive give, void *userdata) {
        for (QueuedClient *q; (q = queued_take(head));) {
                give(userdata, q->fd, &q->peer, &q->via);
                free(q);
        }
}
