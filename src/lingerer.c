/* lingerer: see lingerer.h. */
#include "lingerer.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"
#include "deadlines.h"
#include "log.h"
#include "session.h"

/* Lingering: a socket the lingerer waits on, in its list by deadline (deadlines.h). Freed
 * only by the lingerer's thread (or after it has been joined). */
typedef struct Lingering {
        Deadline timer;
        struct Lingering *expired_next; /* off the list, to be closed (take_expired) */
        int fd;
        size_t discarded;
        LingerProgress progress; /* whether it goes on past its deadline (session_linger_next) */
        void *record; /* lingerer_add()'s, or NULL */
} Lingering;

struct Lingerer {
        pthread_t thread;
        int epoll_fd; /* the lingering sockets (data.ptr: their Lingering) and wake_fd (NULL) */
        int wake_fd;  /* eventfd: an earlier deadline, or the stop */
        pthread_mutex_t lock; /* everything below */
        Deadlines list;
        size_t n, max; /* in the list or reserved (lingerer_reserve); at most */
        uint64_t sleep_until; /* the lingerer's next look, at the latest */
        bool stop;
        LingererClosing closing; /* set once, before the thread starts */
        void *userdata;
};

/* ---- the list (under the lock) ---- */

static Lingering *first_lingering(const Lingerer *g) {
        Deadline *d = deadlines_first(&g->list);

        return d ? DEADLINE_OWNER(d, Lingering, timer) : NULL;
}

static void unlink_lingering(Lingerer *g, Lingering *l) {
        deadlines_remove(&g->list, &l->timer);
        g->n--;
}

/* take_expired: the sockets whose deadline has passed, off the list into *EXPIRED (linked by
 * expired_next), to be closed outside the lock, but for those whose client still takes its
 * replies, which get another second; returns the next deadline. */
static uint64_t take_expired(Lingerer *g, uint64_t now, Lingering **expired) {
        Lingering *l;

        *expired = NULL;
        while ((l = first_lingering(g)) && l->timer.at <= now) {
                uint64_t next = session_linger_next(&l->progress, l->fd, l->discarded, now);
                if (next > 0) {
                        deadlines_set(&g->list, &l->timer, next);
                        continue;
                }
                unlink_lingering(g, l);
                l->expired_next = *expired;
                *expired = l;
        }
        return l ? l->timer.at : SESSION_NO_DEADLINE;
}

/* ---- closing ---- */

/* close_with_record: FD closed, its RECORD told first (LingererClosing) and freed. */
static void close_with_record(Lingerer *g, int fd, void *record) {
        if (record && g->closing)
                g->closing(g->userdata, record);
        close(fd);
        free(record);
}

/* release: out of the epoll set first: with handover = "always", systemd may still hold a copy
 * of the socket for a moment, and the registration would outlive the close. */
static void release(Lingerer *g, Lingering *l) {
        (void) epoll_ctl(g->epoll_fd, EPOLL_CTL_DEL, l->fd, NULL);
        close_with_record(g, l->fd, l->record);
        free(l);
}

/* release_expired: the sockets whose linger ran out, each read one last time first: what came
 * since the last turn, or an urgent byte, would otherwise draw a reset at the close. An urgent
 * byte alone at its mark raises no EPOLLIN (a read takes it, passing over the mark), and not
 * EPOLLPRI instead: that one stays raised while the byte waits behind a segment still missing,
 * and would wake the lingerer again and again for nothing to read. */
static void release_expired(Lingerer *g, Lingering *l) {
        char sink[4096];

        while (l) {
                Lingering *next = l->expired_next;
                (void) session_linger_turn(l->fd, sink, sizeof(sink), &l->discarded);
                release(g, l);
                l = next;
        }
}

/* drain: a turn of reading away what the client sent (session_linger_turn); closes the socket
 * when the linger is done. The socket is watched level-triggered: what a turn leaves brings the
 * lingerer back. On its thread. */
static void drain(Lingerer *g, Lingering *l) {
        char sink[4096];

        if (session_linger_turn(l->fd, sink, sizeof(sink), &l->discarded) != LINGER_DONE)
                return;
        pthread_mutex_lock(&g->lock);
        unlink_lingering(g, l);
        pthread_mutex_unlock(&g->lock);
        release(g, l);
}

bool lingerer_reserve(Lingerer *g) {
        pthread_mutex_lock(&g->lock);
        bool room = g->n < g->max;
        if (room)
                g->n++;
        pthread_mutex_unlock(&g->lock);
        return room;
}

void lingerer_add(Lingerer *g, int fd, uint64_t deadline, size_t discarded, void *record) {
        Lingering *l = malloc(sizeof(*l));
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = l };
        uint64_t sleep_until;

        if (!l) { /* cannot wait for the client: close now, its place given back */
                close_with_record(g, fd, record);
                pthread_mutex_lock(&g->lock);
                g->n--;
                pthread_mutex_unlock(&g->lock);
                return;
        }
        /* At most the linger time from now, whatever a resumed session brought. */
        uint64_t latest = now_usec() + SESSION_LINGER_USEC;
        if (deadline > latest)
                deadline = latest;
        *l = (Lingering) { .fd = fd, .discarded = discarded, .record = record };
        session_linger_begin(&l->progress, fd, discarded, now_usec());
        pthread_mutex_lock(&g->lock);
        /* Listed and registered in one step under the lock: the lingerer cannot close it (its
         * deadline may have passed already) before it is registered, nor read it before it is
         * listed. Without the registration (out of memory) it still closes at its deadline. */
        deadlines_set(&g->list, &l->timer, deadline); /* counted in N since lingerer_reserve() */
        if (epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
                log_warning_errno(-errno, "cannot wait for a lingering client, closing it at its deadline");
        sleep_until = g->sleep_until;
        pthread_mutex_unlock(&g->lock);
        if (deadline < sleep_until) /* not l->timer.at: L may be gone already */
                (void) eventfd_write(g->wake_fd, 1);
}

/* ---- the thread ---- */

/* msec_until: an epoll timeout for DEADLINE, late by up to LINGERER_SLACK_USEC; -1: none. */
static int msec_until(uint64_t deadline, uint64_t now) {
        if (deadline == SESSION_NO_DEADLINE)
                return -1;
        uint64_t usec = deadline > now ? deadline - now + LINGERER_SLACK_USEC : 0;
        return (int) ((usec + 999u) / 1000u);
}

static void *lingerer_main(void *arg) {
        Lingerer *g = arg;
        struct epoll_event events[64];

        (void) pthread_setname_np(pthread_self(), "hellod-linger");
        for (;;) {
                Lingering *expired;
                eventfd_t ignored;

                pthread_mutex_lock(&g->lock);
                if (g->stop) {
                        pthread_mutex_unlock(&g->lock);
                        return NULL;
                }
                uint64_t now = now_usec();
                uint64_t until = g->sleep_until = take_expired(g, now, &expired);
                pthread_mutex_unlock(&g->lock);
                release_expired(g, expired);

                /* The clock again: releasing (a read, a close, the closing hook's message to
                 * systemd for a stored socket) takes time that must not push UNTIL back. */
                int n = epoll_wait(g->epoll_fd, events, 64, msec_until(until, now_usec()));
                if (n < 0 && errno != EINTR) {
                        log_error_errno(-errno, "the lingerer's epoll_wait failed");
                        (void) usleep(LINGERER_SLACK_USEC);
                }
                for (int i = 0; i < n; i++) {
                        if (events[i].data.ptr)
                                drain(g, events[i].data.ptr);
                        else
                                (void) eventfd_read(g->wake_fd, &ignored);
                }
        }
}

/* ---- the lingerer ---- */

static void destroy(Lingerer *g) {
        Lingering *l;

        while ((l = first_lingering(g))) {
                unlink_lingering(g, l);
                release(g, l);
        }
        if (g->epoll_fd >= 0)
                close(g->epoll_fd);
        if (g->wake_fd >= 0)
                close(g->wake_fd);
        pthread_mutex_destroy(&g->lock);
        free(g);
}

int lingerer_new(Lingerer **ret, size_t max, LingererClosing closing, void *userdata) {
        Lingerer *g = calloc(1, sizeof(*g));
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        int r;

        if (!g)
                return -ENOMEM;
        pthread_mutex_init(&g->lock, NULL);
        g->max = max;
        g->closing = closing;
        g->userdata = userdata;
        g->sleep_until = SESSION_NO_DEADLINE;
        g->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        g->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (g->epoll_fd < 0 || g->wake_fd < 0 || epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, g->wake_fd, &ev) < 0) {
                r = -errno;
                destroy(g);
                return r;
        }
        if ((r = -pthread_create(&g->thread, NULL, lingerer_main, g)) < 0) {
                destroy(g);
                return r;
        }
        *ret = g;
        return 0;
}

void lingerer_set_max(Lingerer *g, size_t max) {
        pthread_mutex_lock(&g->lock);
        g->max = max;
        pthread_mutex_unlock(&g->lock);
}

/* stop_thread: the thread is gone: everything is this caller's. */
static void stop_thread(Lingerer *g) {
        pthread_mutex_lock(&g->lock);
        g->stop = true;
        pthread_mutex_unlock(&g->lock);
        (void) eventfd_write(g->wake_fd, 1);
        (void) pthread_join(g->thread, NULL);
}

size_t lingerer_count(Lingerer *g) {
        pthread_mutex_lock(&g->lock);
        size_t n = g->n;
        pthread_mutex_unlock(&g->lock);
        return n;
}

void lingerer_wait_empty(Lingerer *g, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;

        for (;;) {
                size_t n = lingerer_count(g);
                if (n == 0 || now_usec() >= deadline)
                        return;
                (void) usleep(LINGERER_SLACK_USEC / 2); /* a stop's last second: no wakeup to wait for */
        }
}

void lingerer_free(Lingerer *g) {
        if (!g)
                return;
        stop_thread(g);
        destroy(g);
}

void lingerer_hand_over(Lingerer *g, LingererGive give, void *userdata) {
        Lingering *l;

        stop_thread(g);
        while ((l = first_lingering(g))) {
                unlink_lingering(g, l);
                if (!l->record) { /* no record (out of memory when it began): closed now */
                        release(g, l);
                        continue;
                }
                (void) epoll_ctl(g->epoll_fd, EPOLL_CTL_DEL, l->fd, NULL);
                give(userdata, l->fd, l->record, l->timer.at, l->discarded);
                free(l);
        }
        destroy(g);
}
