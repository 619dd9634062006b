/* test_signals: a signal that interrupts a blocked call loses nothing. The per-connection
 * model's threads take SIGURG without SA_RESTART while they serve (serving.h); besides their
 * recv() and send(), they write log lines (stderr may be a pipe its reader let fill) and store
 * their connections with systemd (the notify socket's queue may be full). Each test blocks
 * such a call, signals the thread once it sleeps in that system call, frees the way and checks
 * that what was sent arrived whole, once. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

#define WAIT_MSEC 3000
#define LINE "a line a signal must not cut short"

static bool handled; /* atomic: the signal handler ran */

static void on_signal(int sig) {
        (void) sig;
        __atomic_store_n(&handled, true, __ATOMIC_RELEASE);
}

static void install_handler(void) {
        struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART, as serving.c's */
        sigemptyset(&sa.sa_mask);
        cr_assert_eq(sigaction(SIGURG, &sa, NULL), 0);
}

/* Blocked: the thread that makes the call, and what the helper found. */
typedef struct Blocked {
        pid_t tid;
        long call;    /* the system call it blocks in */
        bool calling; /* atomic: about to make it */
        bool done;    /* atomic: the call returned */
        bool signalled_in_call, handled, settled;
} Blocked;

/* in_call: the thread sleeps in system call CALL (/proc's "syscall": its number first). */
static bool in_call(pid_t tid, long call) {
        char path[64], text[64];
        snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int) tid);
        FILE *f = fopen(path, "r");
        if (!f)
                return false;
        bool in = fgets(text, sizeof(text), f) && strtol(text, NULL, 10) == call;
        fclose(f);
        return in;
}

static void pause_msec(long msec) {
        nanosleep(&(struct timespec) { .tv_nsec = msec * 1000000L }, NULL);
}

/* wait_for: polls COND every millisecond for WAIT_MSEC at most; its last value. */
#define wait_for(cond)                                                       \
        ({                                                                   \
                bool met_ = (cond);                                          \
                for (int i_ = 0; i_ < WAIT_MSEC && !met_; i_++, met_ = (cond)) \
                        pause_msec(1);                                       \
                met_;                                                        \
        })

/* signal_blocked: once B's thread sleeps in its call, signals it; returns when the handler
 * has run and the thread sleeps in the call again (retried) or has returned from it (given
 * up): only then may the way be freed, so that a call the signal ended cannot go through by
 * chance. */
static void signal_blocked(Blocked *b) {
        if (!wait_for(__atomic_load_n(&b->calling, __ATOMIC_ACQUIRE)))
                return;
        b->signalled_in_call = wait_for(in_call(b->tid, b->call));
        syscall(SYS_tgkill, getpid(), b->tid, SIGURG);
        b->handled = wait_for(__atomic_load_n(&handled, __ATOMIC_ACQUIRE));
        b->settled = wait_for(__atomic_load_n(&b->done, __ATOMIC_ACQUIRE) || in_call(b->tid, b->call));
}

static void assert_signalled(const Blocked *b) {
        cr_assert(b->signalled_in_call, "the thread never blocked in system call %ld", b->call);
        cr_assert(b->handled, "the signal handler never ran");
        cr_assert(b->settled, "the thread neither blocked again nor returned");
}

/* ---- a log line to a full stderr pipe ---- */

typedef struct PipeDrainer {
        Blocked b;
        int rfd;
        size_t skip; /* the filler ahead of the line */
        char got[4096];
        size_t got_len;
} PipeDrainer;

static void *pipe_drainer_main(void *userdata) {
        PipeDrainer *d = userdata;
        char scratch[4096];

        signal_blocked(&d->b);
        for (int i = 0; i < WAIT_MSEC; i++) {
                bool done = __atomic_load_n(&d->b.done, __ATOMIC_ACQUIRE); /* before the read */
                ssize_t n = read(d->rfd, scratch, sizeof(scratch));
                if (n <= 0) {
                        if (done)
                                break;
                        pause_msec(1);
                        continue;
                }
                size_t skipped = (size_t) n < d->skip ? (size_t) n : d->skip;
                d->skip -= skipped;
                size_t keep = (size_t) n - skipped;
                if (keep > sizeof(d->got) - 1 - d->got_len)
                        keep = sizeof(d->got) - 1 - d->got_len;
                memcpy(d->got + d->got_len, scratch + skipped, keep);
                d->got_len += keep;
        }
        d->got[d->got_len] = '\0';
        return NULL;
}

Test(signals, a_signal_during_a_blocked_write_to_stderr_cuts_no_line) {
        static PipeDrainer d;
        char filler[4096];
        int pipefd[2];
        pthread_t drainer;
        ssize_t n;

        cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
        (void) fcntl(pipefd[1], F_SETPIPE_SZ, 4096); /* the smallest: little to fill */
        cr_assert_eq(fcntl(pipefd[0], F_SETFL, O_NONBLOCK), 0);
        d = (PipeDrainer) { .b = { .tid = (pid_t) syscall(SYS_gettid), .call = SYS_write }, .rfd = pipefd[0] };
        /* Fill the pipe, so that the line's write blocks. */
        memset(filler, 'f', sizeof(filler));
        cr_assert_eq(fcntl(pipefd[1], F_SETFL, O_NONBLOCK), 0);
        while ((n = write(pipefd[1], filler, sizeof(filler))) > 0)
                d.skip += (size_t) n;
        cr_assert_eq(errno, EAGAIN);
        cr_assert_eq(fcntl(pipefd[1], F_SETFL, 0), 0);

        install_handler();
        int saved_stderr = dup(STDERR_FILENO);
        cr_assert_geq(saved_stderr, 0);
        log_open(LOG_TARGET_STDERR);
        log_set_max_level(LOG_NOTICE);
        cr_assert_eq(pthread_create(&drainer, NULL, pipe_drainer_main, &d), 0);
        cr_assert_eq(dup2(pipefd[1], STDERR_FILENO), STDERR_FILENO);
        close(pipefd[1]); /* stderr holds it now */
        __atomic_store_n(&d.b.calling, true, __ATOMIC_RELEASE);
        log_notice("%s", LINE);
        __atomic_store_n(&d.b.done, true, __ATOMIC_RELEASE);
        pthread_join(drainer, NULL);
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        close(pipefd[0]);

        assert_signalled(&d.b);
        cr_assert_not_null(strstr(d.got, LINE "\n"), "the line is not whole on stderr: \"%s\"", d.got);
}

/* ---- a connection stored with a full notify socket ---- */

typedef struct NotifyDrainer {
        Blocked b;
        int sock; /* the notify socket: what systemd reads */
        unsigned stored, fds; /* FDSTORE messages and descriptors that came */
} NotifyDrainer;

static void *notify_drainer_main(void *userdata) {
        NotifyDrainer *d = userdata;

        signal_blocked(&d->b);
        for (int i = 0; i < WAIT_MSEC; i++) {
                bool done = __atomic_load_n(&d->b.done, __ATOMIC_ACQUIRE); /* before the read */
                char text[256];
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(4 * sizeof(int))];
                } control;
                struct iovec iov = { .iov_base = text, .iov_len = sizeof(text) - 1 };
                struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                                      .msg_controllen = sizeof(control.buf) };
                ssize_t n = recvmsg(d->sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (n < 0) {
                        if (done)
                                break;
                        pause_msec(1);
                        continue;
                }
                text[n] = '\0';
                if (strstr(text, "FDSTORE=1"))
                        d->stored++;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                                for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) {
                                        int fd;
                                        memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
                                        close(fd);
                                        d->fds++;
                                }
        }
        return NULL;
}

/* fill_queue: datagrams to ADDR until its queue is full (net.unix.max_dgram_qlen: 10 in the
 * kernel, 512 where systemd sets it). A sender's own buffer may fill first, so the queue is
 * full only when a fresh sender's first datagram finds no room. */
static void fill_queue(const struct sockaddr_un *addr, socklen_t len) {
        for (int k = 0; k < 64; k++) {
                int filler = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                cr_assert_geq(filler, 0);
                unsigned sent = 0;
                while (sendto(filler, "filler", 6, 0, (const struct sockaddr *) addr, len) > 0)
                        sent++;
                int err = errno;
                close(filler); /* what it sent stays queued */
                cr_assert(err == EAGAIN || err == EWOULDBLOCK, "filling the queue: %s", strerror(err));
                if (sent == 0)
                        return;
        }
        cr_assert_fail("the notify socket's queue never filled");
}

Test(signals, a_signal_during_a_blocked_fd_store_stores_the_connection_once) {
        static NotifyDrainer d;
        struct sockaddr_un addr = { .sun_family = AF_UNIX };
        char name[64];
        pthread_t drainer;

        /* An abstract notify socket of this test's own, its queue filled from another. */
        snprintf(name, sizeof(name), "hellod-test-notify-%d", (int) getpid());
        memcpy(addr.sun_path + 1, name, strlen(name));
        socklen_t len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(sock, 0);
        cr_assert_eq(bind(sock, (struct sockaddr *) &addr, len), 0);
        fill_queue(&addr, len);
        char env[80];
        snprintf(env, sizeof(env), "@%s", name);
        cr_assert_eq(setenv("NOTIFY_SOCKET", env, 1), 0);
        cr_assert_eq(notify_open(), 1, "no socket of its own for an abstract $NOTIFY_SOCKET");

        install_handler();
        d = (NotifyDrainer) { .b = { .tid = (pid_t) syscall(SYS_gettid), .call = SYS_sendmsg }, .sock = sock };
        cr_assert_eq(pthread_create(&drainer, NULL, notify_drainer_main, &d), 0);
        int stored = open("/dev/null", O_RDONLY | O_CLOEXEC);
        cr_assert_geq(stored, 0);
        __atomic_store_n(&d.b.calling, true, __ATOMIC_RELEASE);
        int r = notify_fdstore_add(stored, "conn-1", false);
        __atomic_store_n(&d.b.done, true, __ATOMIC_RELEASE);
        pthread_join(drainer, NULL);
        close(stored);
        close(sock);

        assert_signalled(&d.b);
        cr_assert_eq(r, 1, "notify_fdstore_add: %d", r);
        cr_assert_eq(d.stored, 1, "the connection was stored %u times", d.stored);
        cr_assert_eq(d.fds, 1, "%u descriptors came", d.fds);
}
