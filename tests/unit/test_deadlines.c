/* test_deadlines: the event loops' timer list against a model: after every operation the list
 * holds exactly the entries set and not removed, earliest first, equal deadlines in the order
 * they were set, its links consistent both ways. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>

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

/* check: LIST against the model ITEMS: exactly those set and not removed, each at the time it
 * was given, in order of (at, order). */
static void check(const Deadlines *list, const Timed *items, uint64_t seed, int step) {
        const Deadline *prev = NULL;
        size_t n_list = 0, n_model = 0;

        for (int i = 0; i < ENTRIES; i++) {
                n_model += items[i].in;
                cr_assert_eq(items[i].timer.linked, items[i].in, "seed %llu step %d: entry %d is %s, the model says %s",
                             (unsigned long long) seed, step, i, items[i].timer.linked ? "linked" : "not linked",
                             items[i].in ? "set" : "removed");
        }
        for (const Deadline *d = list->first; d; prev = d, d = d->next) {
                const Timed *t = DEADLINE_OWNER(d, const Timed, timer);
                cr_assert(d->linked, "seed %llu step %d: entry %d in the list, not marked linked",
                          (unsigned long long) seed, step, t->id);
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
                cr_assert(++n_list <= ENTRIES, "seed %llu step %d: the list loops", (unsigned long long) seed, step);
        }
        cr_assert_eq(list->last, prev, "seed %llu step %d: last is not the list's last entry",
                     (unsigned long long) seed, step);
        cr_assert_eq(n_list, n_model, "seed %llu step %d: %zu entries in the list, %zu set",
                     (unsigned long long) seed, step, n_list, n_model);
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

Test(deadlines, an_early_deadline_goes_before_the_idle_ones_a_late_one_after_them) {
        Timed idle[4] = { 0 }, linger = { .id = 10 }, later = { .id = 11 }, first = { .id = 12 };
        Deadlines list = { 0 };

        for (int i = 0; i < 4; i++) {
                idle[i].id = i;
                deadlines_set(&list, &idle[i].timer, 300 + (uint64_t) i);
        }
        deadlines_set(&list, &linger.timer, 5);
        deadlines_set(&list, &first.timer, 5);
        deadlines_set(&list, &later.timer, 302);
        cr_assert_eq(list.first, &linger.timer);
        cr_assert_eq(linger.timer.next, &first.timer, "equal deadlines keep the order they were set in");
        cr_assert_eq(first.timer.next, &idle[0].timer);
        cr_assert_eq(idle[2].timer.next, &later.timer, "an equal later deadline goes after the earlier one");
        cr_assert_eq(later.timer.next, &idle[3].timer);
        cr_assert_eq(list.last, &idle[3].timer);

        deadlines_remove(&list, &linger.timer);
        deadlines_remove(&list, &linger.timer); /* not linked: nothing */
        cr_assert_eq(list.first, &first.timer);
        cr_assert_null(first.timer.prev);
        deadlines_set(&list, &idle[3].timer, 1);
        cr_assert_eq(list.first, &idle[3].timer, "a deadline moved earlier moves to the front");
        cr_assert_eq(list.last, &later.timer);
}
