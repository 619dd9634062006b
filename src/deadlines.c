/* deadlines: an event loop's timers (deadlines.h). */
#include "deadlines.h"

#define NO_LANE DEADLINE_LANES

void deadlines_remove(Deadlines *list, Deadline *d) {
        if (!d->linked)
                return;
        DeadlineLane *lane = &list->lanes[d->lane];
        if (d->prev)
                d->prev->next = d->next;
        else
                lane->first = d->next;
        if (d->next)
                d->next->prev = d->prev;
        else
                lane->last = d->prev;
        d->prev = d->next = NULL;
        d->linked = false;
}

/* lane_for: where AT goes without a walk: the lane whose last entry is the latest not after
 * AT, else one whose first is not before it, else an empty one; NO_LANE when none will do. */
static unsigned lane_for(const Deadlines *list, uint64_t at) {
        unsigned back = NO_LANE, front = NO_LANE, empty = NO_LANE;

        for (unsigned i = 0; i < DEADLINE_LANES; i++) {
                const DeadlineLane *lane = &list->lanes[i];
                if (!lane->first) {
                        if (empty == NO_LANE)
                                empty = i;
                } else if (lane->last->at <= at) {
                        if (back == NO_LANE || lane->last->at > list->lanes[back].last->at)
                                back = i;
                } else if (at < lane->first->at && front == NO_LANE) {
                        front = i;
                }
        }
        return back != NO_LANE ? back : front != NO_LANE ? front : empty;
}

/* place: the entry of LANE D goes after, walking from the nearer end; NULL: at the front. */
static Deadline *place(Deadlines *list, const DeadlineLane *lane, uint64_t at) {
        Deadline *after;

        if (!lane->first || at < lane->first->at)
                return NULL;
        /* first->at <= at here, so neither difference below can wrap. */
        if (at >= lane->last->at || lane->last->at - at <= at - lane->first->at) {
                for (after = lane->last; after->at > at; after = after->prev)
                        list->walked++;
        } else {
                for (after = lane->first; after->next && after->next->at <= at; after = after->next)
                        list->walked++;
        }
        return after;
}

void deadlines_set(Deadlines *list, Deadline *d, uint64_t at) {
        deadlines_remove(list, d);
        d->at = at;

        unsigned i = lane_for(list, at);
        if (i == NO_LANE) /* every lane in use, none fits: rare (deadlines.h) */
                i = 0;
        DeadlineLane *lane = &list->lanes[i];
        Deadline *after = place(list, lane, at);
        d->prev = after;
        d->next = after ? after->next : lane->first;
        if (d->next)
                d->next->prev = d;
        else
                lane->last = d;
        if (after)
                after->next = d;
        else
                lane->first = d;
        d->lane = (uint8_t) i;
        d->linked = true;
}

Deadline *deadlines_first(const Deadlines *list) {
        Deadline *first = NULL;

        for (unsigned i = 0; i < DEADLINE_LANES; i++) {
                Deadline *d = list->lanes[i].first;
                if (d && (!first || d->at < first->at))
                        first = d;
        }
        return first;
}

uint64_t deadlines_next_at(const Deadlines *list) {
        const Deadline *first = deadlines_first(list);

        return first ? first->at : UINT64_MAX;
}

Deadline *deadlines_due(const Deadlines *list, uint64_t now) {
        Deadline *first = deadlines_first(list);

        return first && first->at <= now ? first : NULL;
}

Deadline *deadlines_after(const Deadlines *list, const Deadline *d) {
        if (d && d->next)
                return d->next;
        for (unsigned i = d ? d->lane + 1u : 0; i < DEADLINE_LANES; i++)
                if (list->lanes[i].first)
                        return list->lanes[i].first;
        return NULL;
}
