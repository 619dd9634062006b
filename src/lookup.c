/* lookup: see lookup.h. Ownership: a Lookup has two references, the waiting caller's and the
 * looking-up thread's; whichever lets go last frees it (and the result, when the caller gave
 * up and never took it). The result is handed over by an atomic flag, not by the eventfd
 * that only wakes the caller. */
#include "lookup.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "session.h" /* now_usec() */

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

typedef struct Lookup {
        int refs;
        bool done; /* set (release) by the thread once RC, ERROR and RES are written */
        int done_fd;
        char *host, *service;
        struct addrinfo hints;
        struct addrinfo *res;
        int rc, error;
} Lookup;

/* The lookup threads still running, most of them given up on: each reload against a dead
 * name server leaves one for as long as the resolver tries, so they are capped. */
static unsigned running;

static _Thread_local LookupWaiter waiter;
static _Thread_local void *waiter_userdata;

void lookup_set_waiter(LookupWaiter fn, void *userdata) {
        waiter = fn;
        waiter_userdata = userdata;
}

static void unref(Lookup *l) {
        if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        if (l->res)
                freeaddrinfo(l->res);
        if (l->done_fd >= 0)
                close(l->done_fd);
        free(l->host);
        free(l->service);
        free(l);
}

static void *look_up(void *arg) {
        Lookup *l = arg;

        /* Named by itself: detached, it may be gone before its creator could name it. */
        (void) pthread_setname_np(pthread_self(), "hellod-lookup");
        l->rc = getaddrinfo(l->host, l->service, &l->hints, &l->res);
        l->error = errno;
        /* No longer counted once done: the caller may look the next name up at once. */
        __atomic_sub_fetch(&running, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&l->done, true, __ATOMIC_RELEASE);
        (void) eventfd_write(l->done_fd, 1);
        unref(l);
        return NULL;
}

static bool is_done(Lookup *l) {
        return __atomic_load_n(&l->done, __ATOMIC_ACQUIRE);
}

/* wait_done: until L is done (0), LOOKUP_TIMEOUT_SEC has passed or the waiter gave up. */
static int wait_done(Lookup *l) {
        uint64_t deadline = now_usec() + LOOKUP_TIMEOUT_SEC * 1000000u;

        while (!is_done(l)) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return LOOKUP_TIMED_OUT;
                uint64_t left = (deadline - now + 999u) / 1000u; /* msec */
                struct pollfd pfd = { .fd = l->done_fd, .events = POLLIN };
                (void) poll(&pfd, 1, (int) (waiter && left > LOOKUP_TICK_MSEC ? LOOKUP_TICK_MSEC : left));
                if (!is_done(l) && waiter && !waiter(waiter_userdata))
                        return LOOKUP_ABANDONED;
        }
        return 0;
}

/* start: L looked up on a detached thread, with every signal blocked (the daemon's are read
 * by its main thread; one delivered here would take its default action); 0 or -errno. */
static int start(Lookup *l) {
        sigset_t all, old;
        pthread_attr_t attr;
        pthread_t thread;
        int r;

        if (__atomic_add_fetch(&running, 1, __ATOMIC_RELAXED) > LOOKUP_RUNNING_MAX) {
                __atomic_sub_fetch(&running, 1, __ATOMIC_RELAXED);
                return -EBUSY;
        }
        sigfillset(&all);
        r = pthread_attr_init(&attr);
        if (r == 0) {
                r = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                if (r == 0 && (r = pthread_sigmask(SIG_SETMASK, &all, &old)) == 0) {
                        r = pthread_create(&thread, &attr, look_up, l);
                        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
                }
                pthread_attr_destroy(&attr);
        }
        if (r != 0)
                __atomic_sub_fetch(&running, 1, __ATOMIC_RELAXED);
        return -r;
}

/* numeric: HOST as a numeric address, at once (most listen entries are). */
static int numeric(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
        struct addrinfo numeric_hints = *hints;

        numeric_hints.ai_flags |= AI_NUMERICHOST;
        return getaddrinfo(host, service, &numeric_hints, res);
}

int lookup_addrinfo(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
        int r, error = 0, failed = 0;
        Lookup *l;

        *res = NULL; /* on every failure too, as the callers had it before */
        r = numeric(host, service, hints, res);
        if (r != EAI_NONAME)
                return r;
        /* Once for every name, however quick its answer: many names each answered within a
         * tick would otherwise starve the watchdog; and a stop already pending starts none. */
        if (waiter && !waiter(waiter_userdata))
                return LOOKUP_ABANDONED;
        if (!(l = calloc(1, sizeof(*l))))
                return EAI_MEMORY;
        l->refs = 2;
        l->hints = *hints;
        l->host = host ? strdup(host) : NULL;
        l->service = service ? strdup(service) : NULL;
        l->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if ((host && !l->host) || (service && !l->service))
                failed = EAI_MEMORY;
        else if (l->done_fd < 0) {
                failed = EAI_SYSTEM;
                error = errno;
        } else if ((error = -start(l)) != 0)
                failed = error == EBUSY ? LOOKUP_BUSY : EAI_SYSTEM;
        if (failed) { /* no thread holds a reference */
                l->refs = 1;
                unref(l);
                errno = error;
                return failed;
        }
        r = wait_done(l);
        if (r == 0) {
                r = l->rc;
                error = l->error;
                *res = l->res;
                l->res = NULL;
        }
        unref(l);
        errno = error; /* for EAI_SYSTEM */
        return r;
}

bool lookup_transient(int r) {
        return r == EAI_AGAIN || r == LOOKUP_TIMED_OUT || r == LOOKUP_BUSY;
}

const char *lookup_strerror(int r) {
        switch (r) {
        case LOOKUP_TIMED_OUT:
                return "no answer within " STRINGIFY(LOOKUP_TIMEOUT_SEC) " s";
        case LOOKUP_ABANDONED:
                return "lookup given up";
        case LOOKUP_BUSY:
                return STRINGIFY(LOOKUP_RUNNING_MAX) " earlier lookups are still running";
        case EAI_SYSTEM:
                return strerror(errno);
        default:
                return gai_strerror(r);
        }
}
