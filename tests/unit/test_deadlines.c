/* test_deadlines: the event loops' timer list against a model: after every operation the list
 * holds exactly the entries set and not removed, earliest first, equal deadlines in the order
 * they were set, its links consistent both ways. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "deadlines.h"

enum { ENTRIES = 24 };

typedef struct Timed {
        int id;
        Deadline timer;
        /* The model, kept by the test alone: */
        bool in;        /* set and not removed since */
        uint64_t at;    /* the time it was last set to */
        uint64_t order; /* when that was: the tie-break between equal times */
} Timed;

/* xorshift64*: reproducible from the seed the failure message names. */
static uint64_t next_random(uint64_t *state) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        return *state * 2685821657736338717ull;
}

/* check_lane: lane I of LIST: links consistent both ways, each entry the model's, earliest
 * first, equal deadlines in the order they were set. Returns how many it holds. */
static size_t check_lane(const Deadlines *list, unsigned i, uint64_t seed, int step) {
        const DeadlineLane *lane = &list->lanes[i];
        const Deadline *prev = NULL;
        size_t n = 0;

        for (const Deadline *d = lane->first; d; prev = d, d = d->next) {
                const Timed *t = DEADLINE_OWNER(d, const Timed, timer);
                cr_assert(d->linked && d->lane == i, "seed %llu step %d: entry %d in lane %u, marked %s in lane %u",
                          (unsigned long long) seed, step, t->id, i, d->linked ? "linked" : "not linked", d->lane);
                cr_assert_eq(d->prev, prev, "seed %llu step %d: entry %d's prev link is wrong",
                             (unsigned long long) seed, step, t->id);
                cr_assert(t->in && d->at == t->at, "seed %llu step %d: entry %d in the list at %llu, the model says %s %llu",
                          (unsigned long long) seed, step, t->id, (unsigned long long) d->at,
                          t->in ? "set to" : "removed, last set to", (unsigned long long) t->at);
                if (prev) {
                        const Timed *p = DEADLINE_OWNER(prev, const Timed, timer);
                        cr_assert(prev->at < d->at || (prev->at == d->at && p->order < t->order),
                                  "seed %llu step %d: entry %d (at %llu, set #%llu) after entry %d (at %llu, set #%llu)",
                                  (unsigned long long) seed, step, t->id, (unsigned long long) d->at,
                                  (unsigned long long) t->order, p->id, (unsigned long long) prev->at,
                                  (unsigned long long) p->order);
                }
                cr_assert(++n <= ENTRIES, "seed %llu step %d: lane %u loops", (unsigned long long) seed, step, i);
        }
        cr_assert_eq(lane->last, prev, "seed %llu step %d: lane %u's last is not its last entry",
                     (unsigned long long) seed, step, i);
        return n;
}

/* check: LIST against the model ITEMS: exactly those set and not removed, each at the time it
 * was given, every lane in order, the first the earliest of all, the walk over all complete. */
static void check(const Deadlines *list, const Timed *items, uint64_t seed, int step) {
        size_t n_list = 0, n_model = 0, n_walk = 0;
        const Timed *earliest = NULL;

        for (int i = 0; i < ENTRIES; i++) {
                n_model += items[i].in;
                cr_assert_eq(items[i].timer.linked, items[i].in, "seed %llu step %d: entry %d is %s, the model says %s",
                             (unsigned long long) seed, step, i, items[i].timer.linked ? "linked" : "not linked",
                             items[i].in ? "set" : "removed");
                if (items[i].in && (!earliest || items[i].at < earliest->at))
                        earliest = &items[i];
        }
        for (unsigned i = 0; i < DEADLINE_LANES; i++)
                n_list += check_lane(list, i, seed, step);
        cr_assert_eq(n_list, n_model, "seed %llu step %d: %zu entries in the list, %zu set",
                     (unsigned long long) seed, step, n_list, n_model);
        const Deadline *first = deadlines_first(list);
        cr_assert(earliest ? first && first->at == earliest->at : !first,
                  "seed %llu step %d: the first is not the earliest", (unsigned long long) seed, step);
        uint64_t next = earliest ? earliest->at : UINT64_MAX;
        cr_assert_eq(deadlines_next_at(list), next, "seed %llu step %d: the next deadline is not the earliest's",
                     (unsigned long long) seed, step);
        /* Due just before, at and just after the earliest: the first only from its time on. */
        for (int delta = -1; delta <= 1; delta++) {
                uint64_t now = next + (uint64_t) (int64_t) delta;
                if ((delta < 0 && next == 0) || (delta > 0 && next == UINT64_MAX))
                        continue; /* no such time */
                const Deadline *due = deadlines_due(list, now);
                cr_assert(earliest && delta >= 0 ? due && due->at == next : !due,
                          "seed %llu step %d: deadlines_due at %+d of the earliest", (unsigned long long) seed, step,
                          delta);
        }
        for (const Deadline *d = deadlines_after(list, NULL); d; d = deadlines_after(list, d))
                cr_assert(++n_walk <= n_model, "seed %llu step %d: the walk over all loops", (unsigned long long) seed,
                          step);
        cr_assert_eq(n_walk, n_model, "seed %llu step %d: the walk over all saw %zu of %zu", (unsigned long long) seed,
                     step, n_walk, n_model);
}

/* Deadlines as a loop makes them: idle ones late, lingering ones early, many equal (whole
 * seconds), none (UINT64_MAX) and 0 at the ends. */
static uint64_t pick_deadline(uint64_t *state) {
        static const uint64_t edges[] = { 0, 1, UINT64_MAX - 1, UINT64_MAX };
        uint64_t r = next_random(state);

        switch (r % 8) {
        case 0:
                return edges[(r >> 8) % 4];
        case 1:
        case 2:
                return 1000000u * (1 + (r >> 8) % 3); /* the linger's second, near the front */
        default:
                return 300000000u + 1000000u * ((r >> 8) % 5); /* idle_timeout, at the back */
        }
}

Test(deadlines, random_operations_keep_the_order_a_model_predicts) {
        for (uint64_t seed = 1; seed <= 200; seed++) {
                Timed items[ENTRIES] = { 0 };
                Deadlines list = { 0 };
                uint64_t state = seed * 0x9e3779b97f4a7c15ull, order = 0;

                for (int i = 0; i < ENTRIES; i++)
                        items[i].id = i;
                for (int step = 0; step < 400; step++) {
                        uint64_t r = next_random(&state);
                        Timed *t = &items[r % ENTRIES];
                        if ((r >> 32) % 4 == 0) {
                                uint64_t at = t->timer.at;
                                deadlines_remove(&list, &t->timer);
                                t->in = false;
                                cr_assert(!t->timer.linked && t->timer.at == at,
                                          "seed %llu step %d: a removed entry is still linked or lost its time",
                                          (unsigned long long) seed, step);
                        } else {
                                t->at = pick_deadline(&state);
                                t->in = true;
                                t->order = ++order;
                                deadlines_set(&list, &t->timer, t->at);
                        }
                        check(&list, items, seed, step);
                }
        }
}

/* pop_all: LIST emptied earliest first; the times into AT (N at most); returns how many. */
static size_t pop_all(Deadlines *list, uint64_t *at, size_t n) {
        size_t k = 0;

        for (Deadline *d; (d = deadlines_first(list)) && k < n; k++) {
                at[k] = d->at;
                deadlines_remove(list, d);
        }
        return k;
}

Test(deadlines, lingering_and_idle_deadlines_come_due_in_time_order) {
        Timed idle[4] = { 0 }, linger = { .id = 10 }, later = { .id = 11 }, first = { .id = 12 };
        Deadlines list = { 0 };
        uint64_t at[8];

        for (int i = 0; i < 4; i++) {
                idle[i].id = i;
                deadlines_set(&list, &idle[i].timer, 300 + (uint64_t) i);
        }
        deadlines_set(&list, &linger.timer, 5);
        deadlines_set(&list, &first.timer, 5);
        deadlines_set(&list, &later.timer, 302);
        cr_assert_eq(deadlines_first(&list)->at, 5);
        deadlines_remove(&list, &linger.timer);
        deadlines_remove(&list, &linger.timer); /* not linked: nothing */
        cr_assert_eq(deadlines_first(&list), &first.timer);
        deadlines_set(&list, &idle[3].timer, 1);
        cr_assert_eq(deadlines_first(&list), &idle[3].timer, "a deadline moved earlier comes first");
        cr_assert_eq(pop_all(&list, at, 8), 6);
        static const uint64_t want[] = { 1, 5, 300, 301, 302, 302 };
        for (size_t i = 0; i < 6; i++)
                cr_expect_eq(at[i], want[i], "due #%zu at %llu, not %llu", i, (unsigned long long) at[i],
                             (unsigned long long) want[i]);
        cr_assert_null(deadlines_first(&list));
        cr_assert_null(deadlines_after(&list, NULL));
}

/* Every lane in use, none that the new deadline fits at either end: lane 0 is walked, and
 * the order holds. Lane K is made [10 K, 1000 - 10 K], so 500 fits none. */
Test(deadlines, with_every_lane_taken_one_is_walked_in_order) {
        Timed t[2 * DEADLINE_LANES + 1] = { 0 };
        Deadlines list = { 0 };
        uint64_t at[2 * DEADLINE_LANES + 1];

        for (unsigned k = 0; k < DEADLINE_LANES; k++) {
                deadlines_set(&list, &t[2 * k].timer, 10 * k);
                deadlines_set(&list, &t[2 * k + 1].timer, 1000 - 10 * k);
                cr_assert_eq(t[2 * k].timer.lane, k);
                cr_assert_eq(t[2 * k + 1].timer.lane, k);
        }
        cr_assert_eq(list.walked, 0);
        deadlines_set(&list, &t[2 * DEADLINE_LANES].timer, 500);
        cr_assert_eq(t[2 * DEADLINE_LANES].timer.lane, 0);
        cr_assert_eq(list.walked, 1);
        cr_assert_eq(pop_all(&list, at, 2 * DEADLINE_LANES + 1), 2 * DEADLINE_LANES + 1);
        for (size_t i = 1; i < 2 * DEADLINE_LANES + 1; i++)
                cr_assert_geq(at[i], at[i - 1], "due #%zu before #%zu", i, i - 1);
}

enum { LOOP_SESSIONS = 20000 };
#define SECOND 1000000u

/* reset_all: every session of a loop answers a request, oldest deadline first, as time goes
 * on: each gets NOW + TIMEOUT. Returns the entries the placements walked past. */
static uint64_t reset_all(Deadlines *list, Timed *s, size_t n, uint64_t *now, uint64_t timeout) {
        uint64_t before = list->walked;

        for (size_t i = 0; i < n; i++) {
                *now += 1000;
                deadlines_set(list, &s[i].timer, *now + timeout);
        }
        return list->walked - before;
}

/* A reload that changes idle_timeout leaves a loop with sessions of the old timeout and of the
 * new: an old session's next deadline falls between the two populations, and one list walked
 * from its nearer end passed every old session on each request (raised) or every new one
 * (lowered). Setting a deadline walks past nothing, whichever way it changed, with lingering
 * closes and write deadlines beside. */
Test(deadlines, a_reload_that_changes_idle_timeout_costs_no_walk) {
        static const uint64_t timeouts[][2] = { { 60, 300 }, { 300, 10 } };

        for (size_t k = 0; k < 2; k++) {
                Timed *s = calloc(LOOP_SESSIONS, sizeof(*s));
                Deadlines list = { 0 };
                uint64_t now = 1000 * SECOND, old = timeouts[k][0] * SECOND, new = timeouts[k][1] * SECOND;
                size_t half = LOOP_SESSIONS / 2;

                cr_assert_not_null(s);
                (void) reset_all(&list, s, half, &now, old);         /* accepted before the reload */
                (void) reset_all(&list, s + half, 1, &now, new);     /* the first after it */
                cr_expect_eq(reset_all(&list, s, half, &now, old), 0, "old sessions walked (%llu s to %llu s)",
                             (unsigned long long) timeouts[k][0], (unsigned long long) timeouts[k][1]);
                (void) reset_all(&list, s + half + 1, half - 1, &now, new); /* the new ones come */
                cr_expect_eq(reset_all(&list, s, half, &now, old), 0, "old sessions walked, beside the new");
                cr_expect_eq(reset_all(&list, s + half, half, &now, new), 0, "new sessions walked");
                /* Lingering closes (a second) and write deadlines (the same timeout) beside. */
                cr_expect_eq(reset_all(&list, s, 100, &now, SECOND), 0, "lingering closes walked");
                cr_expect_eq(reset_all(&list, s + 100, 100, &now, old), 0, "a write deadline walked");
                uint64_t *at = calloc(LOOP_SESSIONS, sizeof(*at));
                cr_assert_not_null(at);
                cr_assert_eq(pop_all(&list, at, LOOP_SESSIONS), LOOP_SESSIONS);
                for (size_t i = 1; i < LOOP_SESSIONS; i++)
                        cr_assert_geq(at[i], at[i - 1], "due #%zu before #%zu", i, i - 1);
                free(at);
                free(s);
        }
}

/* A poll timeout for any wake-up time: 0 once it has passed, rounded up to the millisecond,
 * and at most a minute. A WatchdogSec= of about 100 days used to give the server thread a
 * negative one: poll() waited without end and missed its pings. */
Test(deadlines, a_poll_timeout_is_never_negative) {
        cr_assert_eq(poll_msec_until(1000, 2000), 0);
        cr_assert_eq(poll_msec_until(2000, 2000), 0);
        cr_assert_eq(poll_msec_until(2001, 2000), 1);
        cr_assert_eq(poll_msec_until(3000, 2000), 1);
        cr_assert_eq(poll_msec_until(3001, 2000), 2);
        cr_assert_eq(poll_msec_until(2000 + 60000000u, 2000), POLL_MSEC_MAX);
        cr_assert_eq(poll_msec_until(2000 + 8600000000000u / 4, 2000), POLL_MSEC_MAX);
        cr_assert_eq(poll_msec_until(UINT64_MAX, 0), POLL_MSEC_MAX);
}
