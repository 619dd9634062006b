/* deadlines: an event loop's timers, one list ordered by deadline, earliest first; equal
 * deadlines in the order they were set. Intrusive: each entry lives in what it times (a
 * session, an io_uring connection), so setting a deadline never allocates. A loop's deadlines
 * cluster at two ends: an idle one (now + idle_timeout) is nearly always the latest, a
 * lingering close's second lands near the earliest; deadlines_set() walks from the nearer
 * end, so neither walks past all the connections of the loop. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Deadline {
        struct Deadline *prev, *next;
        uint64_t at;  /* usec, CLOCK_MONOTONIC; UINT64_MAX: none. Set directly only while not linked */
        bool linked;  /* in a list */
} Deadline;

typedef struct Deadlines {
        Deadline *first, *last;
} Deadlines;

/* DEADLINE_OWNER: the TYPE whose MEMBER is the Deadline *D. */
#define DEADLINE_OWNER(d, type, member) ((type *) (void *) ((char *) (d) - offsetof(type, member)))

/* deadlines_set: D is due AT, at its place in LIST (taken out of it first if it was in). */
void deadlines_set(Deadlines *list, Deadline *d, uint64_t at);
/* deadlines_remove: D out of LIST; nothing if it is not in a list. D keeps its time. */
void deadlines_remove(Deadlines *list, Deadline *d);
