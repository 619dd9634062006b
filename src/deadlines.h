/* deadlines: an event loop's timers. Intrusive: each entry lives in what it times (a session,
 * an io_uring connection), so setting a deadline never allocates.
 *
 * A loop sets its deadlines as now plus a few fixed durations: idle_timeout (one per
 * configuration its sessions were accepted under: a reload that changes it leaves two), the
 * write deadline, a lingering close's second, the PROXY header's. Each such population, set in
 * time order, is already sorted. So the entries are kept in a few lanes, each one list
 * ordered by deadline, and a new deadline goes where it needs no walk: at the back of the lane
 * whose last entry is the latest not after it (the lane of its own population), at the front
 * of one it precedes, or into an empty lane. Only when every lane is in use and none fits is
 * one walked, from its nearer end. The earliest deadline is the earliest of the lanes' firsts.
 * (One list walked from its nearer end passed every session of the loop on each request once
 * a reload had changed idle_timeout: the new deadline fell between the two populations.) */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { DEADLINE_LANES = 8 };

typedef struct Deadline {
        struct Deadline *prev, *next; /* in its lane */
        uint64_t at;  /* usec, CLOCK_MONOTONIC; UINT64_MAX: none. Set directly only while not linked */
        bool linked;  /* in a list */
        uint8_t lane; /* which, while linked */
} Deadline;

typedef struct DeadlineLane {
        Deadline *first, *last;
} DeadlineLane;

typedef struct Deadlines {
        DeadlineLane lanes[DEADLINE_LANES];
        uint64_t walked; /* entries passed by placements so far: what setting has cost */
} Deadlines;

/* DEADLINE_OWNER: the TYPE whose MEMBER is the Deadline *D. */
#define DEADLINE_OWNER(d, type, member) ((type *) (void *) ((char *) (d) - offsetof(type, member)))

/* deadlines_set: D is due AT, at its place in LIST (taken out of it first if it was in). */
void deadlines_set(Deadlines *list, Deadline *d, uint64_t at);
/* deadlines_remove: D out of LIST; nothing if it is not in a list. D keeps its time. */
void deadlines_remove(Deadlines *list, Deadline *d);
/* deadlines_first: the earliest entry of LIST (of equal ones, any), or NULL when it is empty. */
Deadline *deadlines_first(const Deadlines *list);
/* deadlines_next_at: when LIST's earliest entry is due; UINT64_MAX when it is empty. */
uint64_t deadlines_next_at(const Deadlines *list);
/* deadlines_due: LIST's earliest entry when it is due by NOW, else NULL. */
Deadline *deadlines_due(const Deadlines *list, uint64_t now);
/* deadlines_after: the entry after D in a walk over every entry of LIST (not in time order),
 * the walk's first when D is NULL, NULL after the last. Taken before D is removed, it stays
 * valid when D goes. */
Deadline *deadlines_after(const Deadlines *list, const Deadline *d);
