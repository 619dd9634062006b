/* store: see store.h. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* must: COND, or the test fails with WHAT and errno. */
static void must(bool cond, const char *what) {
        if (!cond)
                harness_fail("%s: %s", what, strerror(errno));
}

/* held_already: whether ST holds the socket whose inode is INO under any name (under ST's
 * lock; sockets share one file system, and other files are kept with inode 0). Compared with the inodes kept at storing: a look at each held descriptor made a
 * slow store of thousands slower still. */
static bool held_already(const Store *st, ino_t ino) {
        for (unsigned i = 0; i < st->n; i++)
                if (st->inos[i] == ino)
                        return true;
        return false;
}

/* drop: entry I of ST closed and gone (under ST's lock). */
static void drop(Store *st, unsigned i) {
        close(st->fds[i]);
        st->n--;
        st->fds[i] = st->fds[st->n];
        st->inos[i] = st->inos[st->n];
        st->unpolled[i] = st->unpolled[st->n];
        memcpy(st->names[i], st->names[st->n], sizeof(st->names[0]));
}

/* watch: into P, ST's socket, then every stored socket PID 1 polls; how many (under ST's lock). */
static nfds_t watch(Store *st, struct pollfd *p) {
        nfds_t n = 0;

        p[n++] = (struct pollfd) { .fd = st->sock, .events = POLLIN };
        for (unsigned i = 0; i < st->n; i++)
                if (st->inos[i] != 0 && !st->unpolled[i])
                        p[n++] = (struct pollfd) { .fd = st->fds[i] }; /* EPOLLHUP and EPOLLERR only */
        return n;
}

/* drop_hung_up: the stored sockets of P[1..N) that hung up or failed, dropped (PID 1's
 * on_fd_store_io()); under ST's lock, the store unchanged since watch(). */
static void drop_hung_up(Store *st, const struct pollfd *p, nfds_t n) {
        for (nfds_t k = 1; k < n; k++) {
                if (!(p[k].revents & (POLLHUP | POLLERR)))
                        continue;
                for (unsigned i = 0; i < st->n; i++)
                        if (st->fds[i] == p[k].fd) {
                                drop(st, i);
                                st->hung_up++;
                                break;
                        }
        }
}

/* store_take: one message. A second copy of a socket the store holds is dropped, its first
 * name kept, as PID 1 does ("Suppressing duplicate fd in fd store"). */
static void store_take(Store *st, const char *msg, int fd) {
        const char *name = strstr(msg, "FDNAME=");
        char n[64] = "";

        if (name)
                sscanf(name + 7, "%63[^\n]", n);
        pthread_mutex_lock(&st->lock);
        const char *extend = strstr(msg, "EXTEND_TIMEOUT_USEC=");
        if (extend)
                st->extended_usec = strtoull(extend + 20, NULL, 10);
        st->readies += strstr(msg, "READY=1") != NULL;
        struct stat file = { 0 };
        bool store = strstr(msg, "FDSTORE=1") && fd >= 0 && fstat(fd, &file) == 0;
        bool socket = store && S_ISSOCK(file.st_mode);
        if (socket && held_already(st, file.st_ino)) {
                /* dropped: closed below */
        } else if (store && st->n < st->limit) {
                st->inos[st->n] = socket ? file.st_ino : 0;
                st->unpolled[st->n] = strstr(msg, "FDPOLL=0") != NULL;
                snprintf(st->names[st->n], sizeof(st->names[0]), "%s", n);
                st->fds[st->n++] = fd;
                st->added++;
                st->conns_added += strncmp(n, "c", 1) == 0;
                fd = -1;
        } else if (strstr(msg, "FDSTOREREMOVE=1")) {
                for (unsigned i = 0; i < st->n; i++)
                        if (strcmp(st->names[i], n) == 0) {
                                drop(st, i);
                                st->removed++;
                                break;
                        }
        }
        pthread_mutex_unlock(&st->lock);
        if (fd >= 0)
                close(fd);
}

static void set_reading(Store *st, bool reading) {
        pthread_mutex_lock(&st->lock);
        st->reading = reading;
        pthread_mutex_unlock(&st->lock);
}

/* store_settle: until every message already sent to the store has been taken in. PID 1 reads
 * the notifications a service sent before it handles the service's exit (its notify socket
 * has the higher event priority), so the next process finds every descriptor the last one
 * stored; starting it while some were still queued lost them, and their clients met a reset
 * once a later process found a descriptor without a record. */
static void store_settle(Store *st) {
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS;; harness_sleep_ms(1)) {
                int queued = 0;

                pthread_mutex_lock(&st->lock);
                bool reading = st->reading;
                pthread_mutex_unlock(&st->lock);
                must(ioctl(st->sock, FIONREAD, &queued) == 0, "FIONREAD on the store's socket");
                if (!reading && queued == 0)
                        return;
                if (harness_now_ms() > end)
                        harness_fail("the store did not take its queued messages in %d ms", HARNESS_TIMEOUT_MS);
        }
}

/* pace: a message that takes DELAY_US, as a slow PID 1's would: done DELAY_US after the one
 * before it was when it was already queued then (QUEUED), else DELAY_US after now. On the clock:
 * a sleep that overruns (a loaded machine) is not added to every message queued behind it.
 * *DONE_US: the last one's end. */
static void pace(unsigned delay_us, bool queued, int64_t *done_us) {
        if (delay_us == 0) {
                *done_us = 0;
                return;
        }
        *done_us = (queued && *done_us > 0 ? *done_us : harness_now_us()) + delay_us;
        struct timespec until = { .tv_sec = *done_us / 1000000, .tv_nsec = (*done_us % 1000000) * 1000 };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
                ;
}

static void *store_main(void *arg) {
        Store *st = arg;
        int64_t done_us = 0; /* pace() */
        bool queued = false; /* a message waited as the last one was done */

        struct pollfd *p = calloc(STORE_CAPACITY + 1, sizeof(*p));

        must(p != NULL, "the store's poll set");
        while (!__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE)) {
                /* Messages first, as PID 1's notify socket has the higher event priority: the
                 * stored sockets are looked at when none is queued (a turn that looks at all
                 * of them for each message made a slow store of thousands slower still). Only
                 * this thread closes a stored socket (tests swap descriptors under the lock). */
                int next = 0;
                bool message = ioctl(st->sock, FIONREAD, &next) == 0 && next > 0;
                if (!message) {
                        pthread_mutex_lock(&st->lock);
                        nfds_t n = watch(st, p);
                        pthread_mutex_unlock(&st->lock);
                        int ready = poll(p, n, 100);
                        pthread_mutex_lock(&st->lock);
                        if (ready > 0)
                                drop_hung_up(st, p, n);
                        st->polls++;
                        pthread_mutex_unlock(&st->lock);
                        message = ready > 0 && (p[0].revents & POLLIN);
                }
                if (!message)
                        continue;
                char msg[4096], control[CMSG_SPACE(sizeof(int) * 8)];
                struct iovec iov = { .iov_base = msg, .iov_len = sizeof(msg) - 1 };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                                     .msg_controllen = sizeof(control) };
                set_reading(st, true); /* from the queue to the store: store_settle() waits for it */
                ssize_t k = recvmsg(st->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
                if (k < 0) {
                        set_reading(st, false);
                        continue;
                }
                msg[k] = '\0';
                int fd = -1;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                                memcpy(&fd, CMSG_DATA(c), sizeof(int));
                pace(__atomic_load_n(&st->delay_us, __ATOMIC_RELAXED), queued, &done_us);
                store_take(st, msg, fd);
                next = 0;
                queued = ioctl(st->sock, FIONREAD, &next) == 0 && next > 0;
                set_reading(st, false);
        }
        free(p);
        return NULL;
}

void store_start(Store *st, const char *dir) {
        struct sockaddr_un addr = { .sun_family = AF_UNIX };

        memset(st, 0, sizeof(*st));
        st->limit = STORE_MAX;
        pthread_mutex_init(&st->lock, NULL);
        snprintf(st->path, sizeof(st->path), "%s/notify", dir);
        snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", st->path);
        st->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        must(st->sock >= 0 && bind(st->sock, (struct sockaddr *) &addr, sizeof(addr)) == 0, "the store's socket");
        int r = pthread_create(&st->thread, NULL, store_main, st);
        if (r != 0)
                harness_fail("the store's thread: %s", strerror(r));
}

void store_stop(Store *st) {
        if (st->sock < 0) /* stopped already (a test that takes PID 1's socket away first) */
                return;
        __atomic_store_n(&st->stop, true, __ATOMIC_RELEASE);
        pthread_join(st->thread, NULL);
        for (unsigned i = 0; i < st->n; i++)
                close(st->fds[i]);
        close(st->sock);
        st->sock = -1;
}

unsigned store_count(Store *st, const char *prefix) {
        unsigned n = 0;

        pthread_mutex_lock(&st->lock);
        for (unsigned i = 0; i < st->n; i++)
                n += strncmp(st->names[i], prefix, strlen(prefix)) == 0;
        pthread_mutex_unlock(&st->lock);
        return n;
}

unsigned store_count_settled(Store *st, const char *prefix) {
        store_settle(st);
        return store_count(st, prefix);
}

int store_dup(Store *st, const char *name) {
        int fd = -1;

        pthread_mutex_lock(&st->lock);
        for (unsigned i = 0; i < st->n && fd < 0; i++)
                if (strcmp(st->names[i], name) == 0)
                        fd = fcntl(st->fds[i], F_DUPFD_CLOEXEC, 3);
        pthread_mutex_unlock(&st->lock);
        if (fd < 0)
                harness_fail("the store holds no descriptor named %s", name);
        return fd;
}

unsigned store_conns_added(Store *st) {
        pthread_mutex_lock(&st->lock);
        unsigned n = st->conns_added;
        pthread_mutex_unlock(&st->lock);
        return n;
}

void store_wait(Hellod *d, Store *st, const char *prefix, unsigned n) {
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; store_count(st, prefix) != n; harness_sleep_ms(10))
                if (harness_now_ms() > end)
                        hellod_fail(d, "the store holds %u descriptors named %s*, expected %u", store_count(st, prefix),
                                     prefix, n);
}

void store_wait_turn(Store *st) {
        pthread_mutex_lock(&st->lock);
        unsigned long start = st->polls;
        pthread_mutex_unlock(&st->lock);
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS;; harness_sleep_ms(5)) {
                pthread_mutex_lock(&st->lock);
                bool turned = st->polls >= start + 2; /* the one under way may have begun before */
                pthread_mutex_unlock(&st->lock);
                if (turned)
                        return;
                if (harness_now_ms() > end)
                        harness_fail("the store's thread made no turn in %d ms", HARNESS_TIMEOUT_MS);
        }
}

unsigned store_hung_up(Store *st) {
        pthread_mutex_lock(&st->lock);
        unsigned n = st->hung_up;
        pthread_mutex_unlock(&st->lock);
        return n;
}

unsigned store_count_suffix(Store *st, const char *suffix) {
        size_t len = strlen(suffix);
        unsigned n = 0;

        pthread_mutex_lock(&st->lock);
        for (unsigned i = 0; i < st->n; i++) {
                size_t name_len = strlen(st->names[i]);
                n += name_len >= len && strcmp(st->names[i] + name_len - len, suffix) == 0;
        }
        pthread_mutex_unlock(&st->lock);
        return n;
}

unsigned store_readies(Store *st) {
        pthread_mutex_lock(&st->lock);
        unsigned n = st->readies;
        pthread_mutex_unlock(&st->lock);
        return n;
}

void store_wait_ready(Hellod *d, Store *st, unsigned n) {
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; store_readies(st) < n; harness_sleep_ms(5))
                if (harness_now_ms() > end)
                        hellod_fail(d, "%u READY=1 notifications in %d ms, expected %u", store_readies(st),
                                    HARNESS_TIMEOUT_MS, n);
}

void store_stays(Hellod *d, Store *st, const char *prefix, unsigned n, int ms) {
        for (int64_t end = harness_now_ms() + ms; harness_now_ms() < end; harness_sleep_ms(10))
                if (store_count(st, prefix) != n)
                        hellod_fail(d, "the store holds %u descriptors named %s*, expected %u", store_count(st, prefix),
                                    prefix, n);
}

pid_t store_start_hellod(Hellod *d, Store *st, int listener) {
        static int fds[STORE_CAPACITY + 1];
        /* Every name and its ':' fit: the names are NUL-terminated within sizeof(st->names[0]). */
        static char names[STORE_CAPACITY * sizeof(st->names[0]) + 16], env_names[sizeof(names) + 16];
        char env_fds[32], env_notify[160];
        unsigned n = 0;
        size_t len = (size_t) snprintf(names, sizeof(names), "hellod");

        fds[n++] = listener;
        store_settle(st);
        /* Copies, taken under the lock: the store's thread may drop (close) a stored socket
         * that hangs up at any time, and the number could be another file's by the fork. */
        pthread_mutex_lock(&st->lock);
        for (unsigned i = 0; i < st->n; i++) {
                fds[n] = fcntl(st->fds[i], F_DUPFD_CLOEXEC, 3);
                must(fds[n++] >= 0, "a copy of a stored descriptor");
                len += (size_t) snprintf(names + len, sizeof(names) - len, ":%s", st->names[i]);
        }
        pthread_mutex_unlock(&st->lock);
        snprintf(env_fds, sizeof(env_fds), "LISTEN_FDS=%u", n);
        snprintf(env_names, sizeof(env_names), "LISTEN_FDNAMES=%s", names);
        snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", st->path);
        int err = open(d->stderr_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        must(err >= 0, d->stderr_path);
        const char *bin = harness_env_path("HELLOD_BIN"); /* may fail the test: not in the child */
        int exec_err[2]; /* the child's errno, when it cannot become hellod (close-on-exec) */
        must(pipe2(exec_err, O_CLOEXEC) == 0, "pipe2");

        pid_t pid = fork();
        must(pid >= 0, "fork");
        if (pid == 0) {
                /* Above every descriptor to be placed, then 3, 4, ... as systemd does. The
                 * stderr file too: opened in the test, it may have a number among 3, 4, ...
                 * (the driver's restarts wrote hellod's log into a client's connection). */
                int report = fcntl(exec_err[1], F_DUPFD_CLOEXEC, 3 + (int) n + 64);
                err = fcntl(err, F_DUPFD_CLOEXEC, 3 + (int) n + 64);
                for (unsigned i = 0; i < n; i++)
                        fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + (int) n + 64);
                for (unsigned i = 0; i < n; i++)
                        if (dup2(fds[i], 3 + (int) i) < 0)
                                harness_exec_failed(report);
                char env_pid[32], invocation[] = "INVOCATION_ID=0123456789abcdef0123456789abcdef",
                                  path[] = "PATH=/usr/bin:/bin";
                snprintf(env_pid, sizeof(env_pid), "LISTEN_PID=%d", (int) getpid());
                char *envp[] = { env_fds, env_names, env_pid, env_notify, path, invocation, NULL };
                if (st->not_a_service)
                        envp[5] = NULL;
                if (dup2(err, 2) < 0)
                        harness_exec_failed(report);
                if (st->cgroup) {
                        char procs[256], pid_text[16];
                        snprintf(procs, sizeof(procs), "%s/cgroup.procs", st->cgroup);
                        int pid_len = snprintf(pid_text, sizeof(pid_text), "%d", (int) getpid());
                        int c = open(procs, O_WRONLY | O_CLOEXEC);
                        if (c < 0 || write(c, pid_text, (size_t) pid_len) != pid_len)
                                harness_exec_failed(report);
                        close(c);
                }
                execle(bin, "hellod", "--config", d->conf_path, "--log-target=stderr", (char *) NULL, envp);
                harness_exec_failed(report);
        }
        close(err);
        close(exec_err[1]);
        harness_expect_exec(exec_err[0], pid, bin);
        for (unsigned i = 1; i < n; i++) /* the copies; the store keeps its own, as PID 1 does */
                close(fds[i]);
        d->pid = pid;
        d->reaped = false;
        return pid;
}

void store_end_rig(Hellod *d, Store *st, int listener) {
        store_stop(st);
        close(listener);
        hellod_free(d);
}

int store_listener(uint16_t *port) {
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
        socklen_t len = sizeof(addr);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        must(fd >= 0 && bind(fd, (struct sockaddr *) &addr, sizeof(addr)) == 0 && listen(fd, 128) == 0 &&
                     getsockname(fd, (struct sockaddr *) &addr, &len) == 0,
             "the listening socket");
        *port = ntohs(addr.sin_port);
        return fd;
}
