/* deadlines: an event loop's timers (deadlines.h). */
#include "deadlines.h"

void deadlines_remove(Deadlines *list, Deadline *d) {
        if (!d->linked)
                return;
        if (d->prev)
                d->prev->next = d->next;
        else
                list->first = d->next;
        if (d->next)
                d->next->prev = d->prev;
        else
                list->last = d->prev;
        d->prev = d->next = NULL;
        d->linked = false;
}

/* place: the entry D goes after, by the walk from the nearer end; NULL: at the front. */
static Deadline *place(const Deadlines *list, uint64_t at) {
        Deadline *after;

        if (!list->first || at < list->first->at)
                return NULL;
        /* first->at <= at here, so neither difference below can wrap. */
        if (at >= list->last->at || list->last->at - at <= at - list->first->at) {
                for (after = list->last; after->at > at; after = after->prev)
                        ;
        } else {
                for (after = list->first; after->next && after->next->at <= at; after = after->next)
                        ;
        }
        return after;
}

void deadlines_set(Deadlines *list, Deadline *d, uint64_t at) {
        deadlines_remove(list, d);
        d->at = at;

        Deadline *after = place(list, at);
        d->prev = after;
        d->next = after ? after->next : list->first;
        if (d->next)
                d->next->prev = d;
        else
                list->last = d;
        if (after)
                after->next = d;
        else
                list->first = d;
        d->linked = true;
}
