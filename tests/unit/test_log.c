/* test_log: a line written to stderr is whole even when a signal interrupts its write. The
 * per-connection model's threads take SIGURG without SA_RESTART while they serve (serving.h),
 * and stderr may be a pipe its reader has let fill. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LINE "a line a signal must not cut short"
#define WAIT_MSEC 10000

static bool handled; /* atomic: the signal handler ran */

static void on_signal(int sig) {
        (void) sig;
        __atomic_store_n(&handled, true, __ATOMIC_RELEASE);
}

/* Drainer: signals the writer once it blocks on the full pipe, then empties the pipe. */
typedef struct Drainer {
        pid_t writer;
        int rfd;
        bool logging; /* atomic: the writer is about to log */
        bool logged;  /* atomic: the writer's log call returned */
        char got[16384];
        size_t got_len;
} Drainer;

/* thread_state: the writer's state letter in /proc ('S': asleep, as in a blocked write). */
static char thread_state(pid_t tid) {
        char path[64], text[512];
        snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int) tid);
        FILE *f = fopen(path, "r");
        if (!f)
                return '?';
        size_t n = fread(text, 1, sizeof(text) - 1, f);
        fclose(f);
        text[n] = '\0';
        const char *paren = strrchr(text, ')'); /* the name may hold spaces */
        return paren && paren[1] == ' ' ? paren[2] : '?';
}

static void pause_msec(long msec) {
        nanosleep(&(struct timespec) { .tv_nsec = msec * 1000000L }, NULL);
}

/* wait_for: polls COND every millisecond, for WAIT_MSEC at most. */
#define wait_for(cond)                                                 \
        do {                                                           \
                for (int i_ = 0; i_ < WAIT_MSEC && !(cond); i_++)      \
                        pause_msec(1);                                 \
        } while (0)

static void *drainer_main(void *userdata) {
        Drainer *d = userdata;

        wait_for(__atomic_load_n(&d->logging, __ATOMIC_ACQUIRE));
        wait_for(thread_state(d->writer) == 'S');
        syscall(SYS_tgkill, getpid(), d->writer, SIGURG);
        wait_for(__atomic_load_n(&handled, __ATOMIC_ACQUIRE));
        /* Asleep again (the write retried) or done (the write gave up): only then is there
         * room, so that a write the signal ended cannot complete by chance. */
        wait_for(__atomic_load_n(&d->logged, __ATOMIC_ACQUIRE) || thread_state(d->writer) == 'S');
        for (int i = 0; i < WAIT_MSEC; i++) {
                ssize_t n = read(d->rfd, d->got + d->got_len, sizeof(d->got) - 1 - d->got_len);
                if (n > 0) {
                        d->got_len += (size_t) n;
                        continue;
                }
                if (__atomic_load_n(&d->logged, __ATOMIC_ACQUIRE) && n < 0 && errno == EAGAIN &&
                    read(d->rfd, d->got + d->got_len, sizeof(d->got) - 1 - d->got_len) <= 0)
                        break;
                pause_msec(1);
        }
        d->got[d->got_len] = '\0';
        return NULL;
}

Test(log, a_signal_during_a_blocked_write_to_stderr_cuts_no_line) {
        static Drainer d;
        char filler[4096];
        int pipefd[2];
        pthread_t drainer;

        cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
        cr_assert_geq(fcntl(pipefd[1], F_SETPIPE_SZ, 4096), 4096);
        cr_assert_eq(fcntl(pipefd[0], F_SETFL, O_NONBLOCK), 0);
        /* Fill the pipe, so that the log line's write blocks. */
        memset(filler, 'f', sizeof(filler));
        cr_assert_eq(fcntl(pipefd[1], F_SETFL, O_NONBLOCK), 0);
        while (write(pipefd[1], filler, sizeof(filler)) > 0)
                ;
        cr_assert_eq(errno, EAGAIN);
        cr_assert_eq(fcntl(pipefd[1], F_SETFL, 0), 0);

        struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART, as serving.c's */
        sigemptyset(&sa.sa_mask);
        cr_assert_eq(sigaction(SIGURG, &sa, NULL), 0);
        int saved_stderr = dup(STDERR_FILENO);
        cr_assert_geq(saved_stderr, 0);
        log_open(LOG_TARGET_STDERR);
        log_set_max_level(LOG_NOTICE);

        d = (Drainer) { .writer = (pid_t) syscall(SYS_gettid), .rfd = pipefd[0] };
        cr_assert_eq(pthread_create(&drainer, NULL, drainer_main, &d), 0);
        cr_assert_eq(dup2(pipefd[1], STDERR_FILENO), STDERR_FILENO);
        __atomic_store_n(&d.logging, true, __ATOMIC_RELEASE);
        log_notice("%s", LINE);
        __atomic_store_n(&d.logged, true, __ATOMIC_RELEASE);
        pthread_join(drainer, NULL);
        dup2(saved_stderr, STDERR_FILENO);

        cr_assert(__atomic_load_n(&handled, __ATOMIC_ACQUIRE), "the signal never came");
        cr_assert_not_null(strstr(d.got, LINE "\n"), "the line is not whole on stderr (%zu bytes read)",
                           d.got_len);
}
