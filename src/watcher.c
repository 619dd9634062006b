/* watcher: see watcher.h. */
#include "watcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "session.h"

/* Lingering: a socket the watcher lingers on, in its list by deadline, earliest first. */
typedef struct Lingering {
        struct Lingering *prev, *next;
        int fd;
        uint64_t deadline;
        size_t discarded;
} Lingering;

struct Watcher {
        pthread_t thread;
        int epoll_fd; /* the lingering sockets (data.ptr: their Lingering) and wake_fd (NULL) */
        int wake_fd;  /* eventfd: an earlier idle deadline, or the stop */
        pthread_mutex_t lock; /* the lists, each Watch's fd, stop */
        Lingering *first, *last;
        Watch *watches;
        bool stop;
        uint64_t sleep_until; /* the watcher's next look, at the latest */
        uint64_t wake_at; /* atomic: the earliest idle deadline the watcher knows of */
};

/* ---- lingering sockets (the lists under the lock) ---- */

static void linger_unlink(Watcher *w, Lingering *l) {
        if (l->prev)
                l->prev->next = l->next;
        else
                w->first = l->next;
        if (l->next)
                l->next->prev = l->prev;
        else
                w->last = l->prev;
}

/* linger_insert: by deadline, walking from the back: a new socket's deadline (now plus the
 * linger time) is nearly always the latest. */
static void linger_insert(Watcher *w, Lingering *l) {
        Lingering *after = w->last;

        while (after && after->deadline > l->deadline)
                after = after->prev;
        l->prev = after;
        l->next = after ? after->next : w->first;
        if (l->next)
                l->next->prev = l;
        else
                w->last = l;
        if (after)
                after->next = l;
        else
                w->first = l;
}

/* linger_free: out of the epoll set first: with handover = "always", systemd may still hold a
 * copy of the socket for a moment, and the registration would outlive the close. */
static void linger_free(Watcher *w, Lingering *l) {
        (void) epoll_ctl(w->epoll_fd, EPOLL_CTL_DEL, l->fd, NULL);
        close(l->fd);
        free(l);
}

static void linger_close(Watcher *w, Lingering *l) {
        pthread_mutex_lock(&w->lock);
        linger_unlink(w, l);
        pthread_mutex_unlock(&w->lock);
        linger_free(w, l);
}

/* linger_read: reads what the client sent; closes the socket at its EOF, on an error, or past
 * SESSION_LINGER_BYTES. */
static void linger_read(Watcher *w, Lingering *l) {
        char sink[4096];

        for (;;) {
                ssize_t n = recv(l->fd, sink, sizeof(sink), MSG_DONTWAIT);

                if (n > 0 && (l->discarded += (size_t) n) < SESSION_LINGER_BYTES)
                        continue;
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                linger_close(w, l);
                return;
        }
}

/* linger_take_expired: the sockets whose deadline has passed, off the list into *EXPIRED
 * (linked by next) to be closed outside the lock; returns the next deadline. Under the lock. */
static uint64_t linger_take_expired(Watcher *w, uint64_t now, Lingering **expired) {
        Lingering *l;

        *expired = NULL;
        while ((l = w->first) && l->deadline <= now) {
                linger_unlink(w, l);
                l->next = *expired;
                *expired = l;
        }
        return l ? l->deadline : SESSION_NO_DEADLINE;
}

static void close_all(Watcher *w, Lingering *l) {
        while (l) {
                Lingering *next = l->next;
                linger_free(w, l);
                l = next;
        }
}

void watcher_linger(Watcher *w, int fd, uint64_t deadline, size_t discarded) {
        Lingering *l = malloc(sizeof(*l));
        uint64_t sleep_until;

        if (!l) { /* cannot wait for the client: the FIN is out, close now */
                close(fd);
                return;
        }
        *l = (Lingering) { .fd = fd, .deadline = deadline, .discarded = discarded };
        /* Listed and registered in one step under the lock: the watcher cannot close it (its
         * deadline may have passed already) before it is registered, nor read it before it is
         * listed. Without the registration (out of memory) it still closes at its deadline. */
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = l };
        pthread_mutex_lock(&w->lock);
        linger_insert(w, l);
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
                log_warning_errno(-errno, "cannot wait for a lingering client, closing it at its deadline");
        sleep_until = w->sleep_until;
        pthread_mutex_unlock(&w->lock);
        if (deadline < sleep_until)
                (void) eventfd_write(w->wake_fd, 1);
}

/* ---- idle deadlines ---- */

void watch_begin(Watcher *w, Watch *t, int fd) {
        pthread_mutex_lock(&w->lock);
        if (!t->linked) {
                t->prev = NULL;
                t->next = w->watches;
                if (w->watches)
                        w->watches->prev = t;
                w->watches = t;
                t->linked = true;
        }
        t->fd = fd;
        __atomic_store_n(&t->deadline, SESSION_NO_DEADLINE, __ATOMIC_RELAXED);
        __atomic_store_n(&t->fired, false, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&w->lock);
}

void watch_set(Watcher *w, Watch *t, uint64_t deadline) {
        /* Store, then load, both seq_cst, as the watcher's publish-then-look (watch_idle). */
        __atomic_store_n(&t->deadline, deadline, __ATOMIC_SEQ_CST);
        if (deadline < __atomic_load_n(&w->wake_at, __ATOMIC_SEQ_CST))
                (void) eventfd_write(w->wake_fd, 1);
}

bool watch_fired(const Watch *t) {
        return __atomic_load_n(&t->fired, __ATOMIC_ACQUIRE);
}

void watch_end(Watcher *w, Watch *t) {
        pthread_mutex_lock(&w->lock);
        t->fd = -1; /* from now on the socket may close: the watcher no longer touches it */
        pthread_mutex_unlock(&w->lock);
}

void watch_leave(Watcher *w, Watch *t) {
        pthread_mutex_lock(&w->lock);
        if (t->linked) {
                if (t->prev)
                        t->prev->next = t->next;
                else
                        w->watches = t->next;
                if (t->next)
                        t->next->prev = t->prev;
                t->linked = false;
        }
        t->fd = -1;
        pthread_mutex_unlock(&w->lock);
}

/* fire_idle: shuts down the read side of each watched socket past its deadline (under the
 * lock: its thread cannot close it meanwhile); returns the earliest deadline still ahead. */
static uint64_t fire_idle(Watcher *w, uint64_t now) {
        uint64_t next = SESSION_NO_DEADLINE;

        for (Watch *t = w->watches; t; t = t->next) {
                if (t->fd < 0 || __atomic_load_n(&t->fired, __ATOMIC_RELAXED))
                        continue;
                uint64_t deadline = __atomic_load_n(&t->deadline, __ATOMIC_SEQ_CST);
                if (deadline <= now) {
                        __atomic_store_n(&t->fired, true, __ATOMIC_RELEASE);
                        (void) shutdown(t->fd, SHUT_RD);
                } else if (deadline < next)
                        next = deadline;
        }
        return next;
}

/* watch_idle: fire_idle(), and the earliest deadline ahead published as wake_at. A thread
 * that sets an earlier deadline than wake_at wakes the watcher (watch_set); one that set it
 * during the look compared it with the old wake_at. So the watcher publishes, then looks
 * again: either that look sees the new deadline, or the thread's comparison sees the new
 * wake_at (store, then load, on both sides, seq_cst). Under the lock. */
static uint64_t watch_idle(Watcher *w, uint64_t now) {
        uint64_t next = fire_idle(w, now);

        for (;;) {
                __atomic_store_n(&w->wake_at, next, __ATOMIC_SEQ_CST);
                uint64_t again = fire_idle(w, now);
                if (again >= next)
                        return next;
                next = again;
        }
}

/* msec_until: an epoll timeout for DEADLINE, late by up to WATCHER_SLACK_USEC; -1: none. */
static int msec_until(uint64_t deadline, uint64_t now) {
        if (deadline == SESSION_NO_DEADLINE)
                return -1;
        uint64_t usec = deadline > now ? deadline - now + WATCHER_SLACK_USEC : 0;
        return usec / 1000u > 3600000u ? 3600000 : (int) ((usec + 999u) / 1000u);
}

static void *watcher_main(void *arg) {
        Watcher *w = arg;
        struct epoll_event events[64];

        (void) pthread_setname_np(pthread_self(), "hellod-watcher");
        for (;;) {
                Lingering *expired;
                eventfd_t ignored;

                pthread_mutex_lock(&w->lock);
                if (w->stop) {
                        pthread_mutex_unlock(&w->lock);
                        return NULL;
                }
                uint64_t now = now_usec(), idle = watch_idle(w, now);
                uint64_t linger = linger_take_expired(w, now, &expired);
                uint64_t until = w->sleep_until = idle < linger ? idle : linger;
                pthread_mutex_unlock(&w->lock);
                close_all(w, expired);

                int n = epoll_wait(w->epoll_fd, events, 64, msec_until(until, now));
                if (n < 0 && errno != EINTR) {
                        log_error_errno(-errno, "the watcher's epoll_wait failed");
                        (void) usleep(WATCHER_SLACK_USEC);
                }
                for (int i = 0; i < n; i++) {
                        if (events[i].data.ptr)
                                linger_read(w, events[i].data.ptr);
                        else
                                (void) eventfd_read(w->wake_fd, &ignored);
                }
        }
}

/* ---- the watcher ---- */

static void release(Watcher *w) {
        Lingering *l;

        while ((l = w->first)) {
                linger_unlink(w, l);
                linger_free(w, l);
        }
        if (w->epoll_fd >= 0)
                close(w->epoll_fd);
        if (w->wake_fd >= 0)
                close(w->wake_fd);
        pthread_mutex_destroy(&w->lock);
        free(w);
}

int watcher_new(Watcher **ret) {
        Watcher *w = calloc(1, sizeof(*w));
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        int r;

        if (!w)
                return -ENOMEM;
        pthread_mutex_init(&w->lock, NULL);
        w->wake_at = w->sleep_until = SESSION_NO_DEADLINE;
        w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->epoll_fd < 0 || w->wake_fd < 0 || epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->wake_fd, &ev) < 0) {
                r = -errno;
                release(w);
                return r;
        }
        if ((r = -pthread_create(&w->thread, NULL, watcher_main, w)) < 0) {
                release(w);
                return r;
        }
        *ret = w;
        return 0;
}

void watcher_free(Watcher *w) {
        if (!w)
                return;
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_mutex_unlock(&w->lock);
        (void) eventfd_write(w->wake_fd, 1);
        (void) pthread_join(w->thread, NULL);
        release(w);
}
