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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"
#include "privileges.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* What is looked up: an address (getaddrinfo()) or the IDs of a user and group
 * (privileges_resolve(), through getpwnam_r() and getgrnam_r()). */
typedef enum LookupKind { LOOKUP_ADDRESS, LOOKUP_IDENTITY } LookupKind;

typedef struct Lookup {
        int refs;
        bool done; /* set (release) by the thread once the results below are written */
        int done_fd;
        LookupKind kind;
        char *host, *service; /* LOOKUP_ADDRESS: host, service; LOOKUP_IDENTITY: user, group */
        struct addrinfo hints;
        struct addrinfo *res;
        uid_t uid;
        gid_t gid;
        char why[256]; /* LOOKUP_IDENTITY: what privileges_resolve() said of a failure */
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
        if (l->kind == LOOKUP_ADDRESS) {
                l->rc = getaddrinfo(l->host, l->service, &l->hints, &l->res);
                l->error = errno;
        } else
                l->rc = privileges_resolve(l->host, l->service, &l->uid, &l->gid, l->why, sizeof(l->why));
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

/* lookup_new: a request for KIND of A and B (either may be NULL), with its two references
 * (the caller's, the thread's); NULL without memory. */
static Lookup *lookup_new(LookupKind kind, const char *a, const char *b) {
        Lookup *l = calloc(1, sizeof(*l));

        if (!l)
                return NULL;
        l->refs = 2;
        l->kind = kind;
        l->done_fd = -1;
        l->host = a ? strdup(a) : NULL;
        l->service = b ? strdup(b) : NULL;
        if ((a && !l->host) || (b && !l->service)) {
                l->refs = 1;
                unref(l);
                return NULL;
        }
        return l;
}

/* run: L on its thread, waited for: 0 with the results in L, a LOOKUP_ code, or -errno (the
 * thread could not start). The caller's reference is still the caller's to let go. */
static int run(Lookup *l) {
        int r;

        /* Once for every lookup, however quick its answer: many names each answered within a
         * tick would otherwise starve the watchdog; and a stop already pending starts none. */
        if (waiter && !waiter(waiter_userdata))
                r = LOOKUP_ABANDONED;
        else if ((l->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                r = -errno;
        else if ((r = start(l)) == 0)
                return wait_done(l);
        else if (r == -EBUSY)
                r = LOOKUP_BUSY;
        l->refs = 1; /* no thread holds a reference */
        return r;
}

int lookup_addrinfo(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
        int r, error = 0;
        Lookup *l;

        *res = NULL; /* on every failure too, as the callers had it before */
        r = numeric(host, service, hints, res);
        if (r != EAI_NONAME)
                return r;
        if (!(l = lookup_new(LOOKUP_ADDRESS, host, service)))
                return EAI_MEMORY;
        l->hints = *hints;
        r = run(l);
        if (r < 0) {
                error = -r;
                r = EAI_SYSTEM;
        } else if (r == 0) {
                r = l->rc;
                error = l->error;
                *res = l->res;
                l->res = NULL;
        }
        unref(l);
        errno = error; /* for EAI_SYSTEM */
        return r;
}

int lookup_identity(const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid, char *why,
                    size_t why_size) {
        Lookup *l;
        int r;

        /* Numeric IDs at once, as numeric addresses: nothing to wait for, and not held up by
         * lookups still running. */
        if (privileges_numeric(user, group))
                return privileges_resolve(user, group, ret_uid, ret_gid, why, why_size);
        if (!(l = lookup_new(LOOKUP_IDENTITY, user, group))) {
                snprintf(why, why_size, "%s", strerror(ENOMEM));
                return -ENOMEM;
        }
        r = run(l);
        if (r < 0)
                snprintf(why, why_size, "cannot start a lookup: %s", strerror(-r));
        else if (r == 0 && (r = l->rc) < 0)
                snprintf(why, why_size, "%s", l->why);
        else if (r == 0) {
                *ret_uid = l->uid;
                *ret_gid = l->gid;
        } else
                snprintf(why, why_size, "%s", lookup_strerror(r));
        unref(l);
        return r;
}

bool lookup_transient(int r) {
        /* EAI_SYSTEM, EAI_MEMORY: out of descriptors, threads or memory (the lookup's own
         * eventfd and thread among them), the machine's state for now, not the file's fault. */
        return r == EAI_AGAIN || r == LOOKUP_TIMED_OUT || r == LOOKUP_BUSY || r == EAI_SYSTEM || r == EAI_MEMORY;
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
