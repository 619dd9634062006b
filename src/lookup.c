/* lookup: see lookup.h. Ownership: a Lookup has two references, the waiting caller's and the
 * looking-up thread's; whichever lets go last frees it (and the result, when the caller gave
 * up and never took it). The result is handed over by an atomic flag, not by the eventfd
 * that only wakes the caller. */
#include "lookup.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

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

static LookupWaiter waiter;
static void *waiter_userdata;

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

        l->rc = getaddrinfo(l->host, l->service, &l->hints, &l->res);
        l->error = errno;
        __atomic_store_n(&l->done, true, __ATOMIC_RELEASE);
        (void) eventfd_write(l->done_fd, 1);
        unref(l);
        return NULL;
}

static uint64_t now_msec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* wait_done: until L is done (0), LOOKUP_TIMEOUT_SEC has passed or the waiter gave up. */
static int wait_done(Lookup *l) {
        uint64_t deadline = now_msec() + LOOKUP_TIMEOUT_SEC * 1000u;

        while (!__atomic_load_n(&l->done, __ATOMIC_ACQUIRE)) {
                uint64_t now = now_msec();
                if (now >= deadline)
                        return LOOKUP_TIMED_OUT;
                uint64_t left = deadline - now;
                struct pollfd pfd = { .fd = l->done_fd, .events = POLLIN };
                (void) poll(&pfd, 1, (int) (waiter && left > LOOKUP_TICK_MSEC ? LOOKUP_TICK_MSEC : left));
                if (waiter && !waiter(waiter_userdata))
                        return LOOKUP_ABANDONED;
        }
        return 0;
}

/* start: L looked up on a detached thread; false when no thread could be started. */
static bool start(Lookup *l) {
        pthread_attr_t attr;
        pthread_t thread;
        bool started;

        if (pthread_attr_init(&attr) != 0)
                return false;
        started = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                  pthread_create(&thread, &attr, look_up, l) == 0;
        pthread_attr_destroy(&attr);
        return started;
}

int lookup_addrinfo(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
        Lookup *l = calloc(1, sizeof(*l));

        *res = NULL;
        if (l) {
                l->refs = 2;
                l->hints = *hints;
                l->host = host ? strdup(host) : NULL;
                l->service = service ? strdup(service) : NULL;
                l->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        }
        if (!l || (host && !l->host) || (service && !l->service) || l->done_fd < 0 || !start(l)) {
                /* Out of memory, descriptors or threads: the lookup as glibc makes it, unbounded. */
                if (l) {
                        l->refs = 1;
                        unref(l);
                }
                return getaddrinfo(host, service, hints, res);
        }
        int r = wait_done(l), error = 0;
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

const char *lookup_strerror(int r) {
        switch (r) {
        case LOOKUP_TIMED_OUT:
                return "no answer within " STRINGIFY(LOOKUP_TIMEOUT_SEC) " s";
        case LOOKUP_ABANDONED:
                return "hellod is stopping";
        case EAI_SYSTEM:
                return strerror(errno);
        default:
                return gai_strerror(r);
        }
}
