/* harness: drive the real hellod binary over loopback TCP for the integration tests. */
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <net/if.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STDERR_TAIL_MAX 3000
#define REGISTRY_MAX 32
#define RETRY_PAUSE_MS 50

static HarnessFailFn fail_handler;
static char step[256];
static Hellod *registry[REGISTRY_MAX];

/* --- failure reporting ------------------------------------------------------------------ */

void harness_set_fail_handler(HarnessFailFn fn) {
        fail_handler = fn;
}

void harness_step(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(step, sizeof(step), format, ap);
        va_end(ap);
}

static _Noreturn void fail_message(const char *message) {
        if (fail_handler)
                fail_handler(message);
        /* No handler, or one that returned: still never let the test carry on. */
        (void) fprintf(stderr, "harness: %s\n", message);
        abort();
}

static _Noreturn void fail_va(const char *suffix, const char *format, va_list ap)
        __attribute__((format(printf, 2, 0)));

static _Noreturn void fail_va(const char *suffix, const char *format, va_list ap) {
        static char message[STDERR_TAIL_MAX + 2048];
        size_t n = 0;

        if (step[0])
                n = (size_t) snprintf(message, sizeof(message), "[%s] ", step);
        if (n < sizeof(message))
                (void) vsnprintf(message + n, sizeof(message) - n, format, ap);
        if (suffix) {
                n = strlen(message);
                (void) snprintf(message + n, sizeof(message) - n, "%s", suffix);
        }
        fail_message(message);
}

/*
 * dead_daemon_note: a failing client step ("connection refused", "got EOF") is often just the
 * daemon having died; say so instead of leaving that to guesswork.
 */
static const char *dead_daemon_note(char *buf, size_t size) {
        for (size_t i = 0; i < REGISTRY_MAX; i++) {
                Hellod *d = registry[i];
                char status[96];

                if (!d || d->owner != getpid() || d->pid <= 0)
                        continue;
                /* A daemon's sockets close before it becomes reapable: give it a moment. */
                if (!d->reaped && !harness_wait_pid(d->pid, 200, &d->status))
                        continue;
                d->reaped = true;
                (void) snprintf(buf, size, "\n(hellod pid %d: %s)", (int) d->pid,
                                harness_describe_status(d->status, status, sizeof(status)));
                return buf;
        }
        return NULL;
}

_Noreturn void harness_fail(const char *format, ...) {
        static bool failing;
        const char *note = NULL;
        char buf[160];
        va_list ap;

        /* dead_daemon_note() itself may fail (waitpid); do not recurse for a mere note. */
        if (!failing) {
                failing = true;
                note = dead_daemon_note(buf, sizeof(buf));
        }
        failing = false;
        va_start(ap, format);
        fail_va(note, format, ap);
}

/* --- small utilities -------------------------------------------------------------------- */

bool harness_model_is(const char *word) {
        const char *extra = getenv("HELLOD_TEST_CONF_EXTRA");

        return extra && strstr(extra, word);
}

int64_t harness_now_ms(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t harness_now_us(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void harness_sleep_ms(int ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000 };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int remaining_ms(int64_t deadline) {
        int64_t left = deadline - harness_now_ms();

        return left > 0 ? (int) left : 0;
}

const char *harness_escape(const void *buf, size_t n, char *out, size_t size) {
        const unsigned char *p = buf;
        size_t o = 0;

        if (size == 0)
                return out;
        for (size_t i = 0; i < n && o + 5 < size; i++) {
                unsigned char c = p[i];

                if (c == '\r')
                        o += (size_t) snprintf(out + o, size - o, "\\r");
                else if (c == '\n')
                        o += (size_t) snprintf(out + o, size - o, "\\n");
                else if (c == '\\' || c == '"')
                        o += (size_t) snprintf(out + o, size - o, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        o += (size_t) snprintf(out + o, size - o, "\\x%02x", c);
                else
                        out[o++] = (char) c;
        }
        out[o] = '\0';
        return out;
}

char *harness_read_file(const char *path, size_t *ret_size) {
        char *data = NULL;
        size_t n = 0, cap = 0;
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                harness_fail("open(%s): %s", path, strerror(errno));
        for (;;) {
                ssize_t k;

                if (cap - n < 4096) {
                        cap = cap ? cap * 2 : 8192;
                        data = realloc(data, cap + 1);
                        if (!data)
                                harness_fail("out of memory reading %s", path);
                }
                k = read(fd, data + n, cap - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        harness_fail("read(%s): %s", path, strerror(errno));
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        (void) close(fd);
        data[n] = '\0';
        if (ret_size)
                *ret_size = n;
        return data;
}

static void write_all_fd(int fd, const char *data, size_t n, const char *what) {
        while (n > 0) {
                ssize_t k = write(fd, data, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        harness_fail("write(%s): %s", what, strerror(errno));
                data += k;
                n -= (size_t) k;
        }
}

void harness_write_file(const char *path, const char *data, size_t n) {
        char tmp[512];
        int fd;

        (void) snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                harness_fail("open(%s): %s", tmp, strerror(errno));
        write_all_fd(fd, data, n, tmp);
        if (close(fd) < 0)
                harness_fail("close(%s): %s", tmp, strerror(errno));
        /* rename() so that a SIGHUP racing with the write sees the old or the new file, whole. */
        if (rename(tmp, path) < 0)
                harness_fail("rename(%s, %s): %s", tmp, path, strerror(errno));
}

const char *harness_describe_status(int status, char *buf, size_t size) {
        if (WIFEXITED(status))
                (void) snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                (void) snprintf(buf, size, "killed by signal %d (%s)%s", WTERMSIG(status),
                                strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
        else
                (void) snprintf(buf, size, "wait status 0x%x", (unsigned) status);
        return buf;
}

const char *harness_env_path(const char *name) {
        const char *v = getenv(name);

        if (!v || !*v)
                harness_fail("$%s is not set; the meson test wiring must export it", name);
        if (access(v, F_OK) < 0)
                harness_fail("$%s=%s: %s", name, v, strerror(errno));
        return v;
}

uint64_t harness_cpu_ticks(pid_t pid) {
        unsigned long long utime = 0, stime = 0;
        char path[64], *stat, *p;

        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        stat = harness_read_file(path, NULL);
        /* comm may contain spaces and parentheses: the fields start after the last ')'. */
        p = strrchr(stat, ')');
        if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                         &stime) != 2) {
                free(stat);
                harness_fail("cannot parse %s", path);
        }
        free(stat);
        return utime + stime;
}

double harness_cpu_quietest(pid_t pid, int window_ms, int windows, double quiet) {
        double hz = (double) sysconf(_SC_CLK_TCK), least = -1;

        for (int i = 0; i < windows && (least < 0 || least >= quiet); i++) {
                uint64_t before = harness_cpu_ticks(pid);
                harness_sleep_ms(window_ms);
                double used = (double) (harness_cpu_ticks(pid) - before) / hz;
                if (least < 0 || used < least)
                        least = used;
        }
        return least;
}

void harness_loopback_up(void) {
        struct ifreq ifr;
        int fd;

        memset(&ifr, 0, sizeof(ifr));
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                harness_fail("socket(AF_INET, SOCK_DGRAM): %s", strerror(errno));
        (void) snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
                harness_fail("ioctl(lo, SIOCGIFFLAGS): %s", strerror(errno));
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
                harness_fail("ioctl(lo, SIOCSIFFLAGS, IFF_UP): %s", strerror(errno));
        (void) close(fd);
}

void harness_shell(const char *command) {
        int status = system(command);

        if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                harness_fail("'%s' failed (%d)", command, status);
}

rlim_t harness_raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                harness_fail("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        if (rl.rlim_cur != rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        harness_fail("setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long) rl.rlim_max,
                                     strerror(errno));
        }
        return rl.rlim_cur;
}

/* --- /proc (never fails: sampler threads use these) -------------------------------------- */

ssize_t harness_read_small(const char *path, char *buf, size_t size) {
        size_t n = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return -1;
        while (n + 1 < size) {
                ssize_t k = read(fd, buf + n, size - 1 - n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                n += (size_t) k;
        }
        (void) close(fd);
        buf[n] = '\0';
        return (ssize_t) n;
}

long harness_proc_status_field(pid_t pid, const char *name) {
        char path[64], buf[8192], key[64];
        size_t klen;
        char *p;

        (void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        if (harness_read_small(path, buf, sizeof(buf)) < 0)
                return -1;
        klen = (size_t) snprintf(key, sizeof(key), "%s:", name);
        for (p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
                if (strncmp(p, key, klen) == 0)
                        return strtol(p + klen, NULL, 10);
        return -1;
}

int harness_proc_fd_count(pid_t pid) {
        char path[64];
        struct dirent *e;
        int n = 0;
        DIR *dir;

        (void) snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        dir = opendir(path);
        if (!dir)
                return -1;
        while ((e = readdir(dir)))
                if (e->d_name[0] != '.')
                        n++;
        (void) closedir(dir);
        return n;
}

/* count_threads: PID's threads, and in *RET_NAMED those whose name (/proc/PID/task/TID/comm)
 * is NAME, or begins with it when PREFIX (one look at /proc; NAME NULL: no name is read, and
 * *RET_NAMED is 0). -1 if they cannot be listed. */
static int count_threads(pid_t pid, const char *name, bool prefix, int *ret_named) {
        char path[64];
        struct dirent *e;
        int n = 0;
        DIR *dir;

        *ret_named = 0;
        (void) snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        dir = opendir(path);
        if (!dir)
                return -1;
        while ((e = readdir(dir))) {
                char comm_path[384], comm[64];
                ssize_t k;

                if (e->d_name[0] == '.')
                        continue;
                if (!name) {
                        n++;
                        continue;
                }
                (void) snprintf(comm_path, sizeof(comm_path), "%s/%s/comm", path, e->d_name);
                k = harness_read_small(comm_path, comm, sizeof(comm));
                if (k <= 0) /* the thread ended meanwhile */
                        continue;
                if (comm[k - 1] == '\n')
                        comm[k - 1] = '\0';
                n++;
                *ret_named += prefix ? strncmp(comm, name, strlen(name)) == 0 : strcmp(comm, name) == 0;
        }
        (void) closedir(dir);
        return n;
}

int harness_proc_thread_count(pid_t pid, const char *name) {
        int named, n = count_threads(pid, name, false, &named);

        return n < 0 || !name ? n : named;
}

int harness_proc_thread_count_but(pid_t pid, const char *prefix, int *ret_excluded) {
        int n = count_threads(pid, prefix, true, ret_excluded);

        return n < 0 ? n : n - *ret_excluded;
}

void harness_cgroup_write(const char *dir, const char *name, const char *value) {
        char path[256];
        FILE *f;

        (void) snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "w");
        if (!f)
                harness_fail("%s: %s", path, strerror(errno));
        if (fputs(value, f) < 0 || fclose(f) != 0)
                harness_fail("writing '%s' to %s: %s", value, path, strerror(errno));
}

long harness_cgroup_read(const char *dir, const char *name) {
        char path[256];

        (void) snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *text = harness_read_file(path, NULL);
        long v = strtol(strncmp(text, "max ", 4) == 0 ? text + 4 : text, NULL, 10);
        free(text);
        return v;
}

void harness_pids_cgroup(char *buf, size_t size) {
        DIR *dir = opendir(HARNESS_PIDS_CGROUP_ROOT);
        struct dirent *e;

        /* Those of failed runs (named after a test process no longer there): empty once their
         * daemons were killed; rmdir refuses one in use. A live test's may be empty still. */
        while (dir && (e = readdir(dir))) {
                char path[320];

                if (strncmp(e->d_name, "hellod-test-", 12) != 0)
                        continue;
                pid_t owner = (pid_t) strtol(e->d_name + 12, NULL, 10);
                if (owner > 0 && (kill(owner, 0) == 0 || errno == EPERM))
                        continue;
                (void) snprintf(path, sizeof(path), HARNESS_PIDS_CGROUP_ROOT "/%s", e->d_name);
                (void) rmdir(path);
        }
        if (dir)
                closedir(dir);
        (void) snprintf(buf, size, HARNESS_PIDS_CGROUP_ROOT "/hellod-test-%d", (int) getpid());
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                harness_fail("mkdir %s: %s (this test needs the cgroup v1 pids controller at "
                             HARNESS_PIDS_CGROUP_ROOT ")", buf, strerror(errno));
}

bool harness_proc_maps_contain(pid_t pid, const char *needle) {
        char path[64], *line = NULL;
        size_t cap = 0;
        bool found = false;
        FILE *f;

        (void) snprintf(path, sizeof(path), "/proc/%d/maps", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        while (!found && getline(&line, &cap, f) > 0)
                found = strstr(line, needle) != NULL;
        free(line);
        (void) fclose(f);
        return found;
}

/* --- ports ------------------------------------------------------------------------------ */

static socklen_t make_addr(const char *ip, uint16_t port, struct sockaddr_storage *ss) {
        memset(ss, 0, sizeof(*ss));
        if (strchr(ip, ':')) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *) ss;

                a->sin6_family = AF_INET6;
                a->sin6_port = htons(port);
                if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1)
                        harness_fail("bad IPv6 address '%s'", ip);
                return sizeof(*a);
        } else {
                struct sockaddr_in *a = (struct sockaddr_in *) ss;

                a->sin_family = AF_INET;
                a->sin_port = htons(port);
                if (inet_pton(AF_INET, ip, &a->sin_addr) != 1)
                        harness_fail("bad IPv4 address '%s'", ip);
                return sizeof(*a);
        }
}

static bool port_free_on(const char *ip, uint16_t port) {
        struct sockaddr_storage ss;
        socklen_t len = make_addr(ip, port, &ss);
        bool ok;
        int fd, one = 1;

        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                harness_fail("socket(): %s", strerror(errno));
        if (ss.ss_family == AF_INET6)
                (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        /* No SO_REUSEADDR: a port with TIME_WAIT leftovers is skipped rather than shared. */
        ok = bind(fd, (struct sockaddr *) &ss, len) == 0;
        (void) close(fd);
        return ok;
}

static void local_port_range(unsigned *ret_lo, unsigned *ret_hi) {
        unsigned lo = 32768, hi = 60999;
        FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");

        if (f) {
                if (fscanf(f, "%u %u", &lo, &hi) != 2) {
                        lo = 32768;
                        hi = 60999;
                }
                (void) fclose(f);
        }
        *ret_lo = lo;
        *ret_hi = hi;
}

/*
 * Why not bind(port 0): the kernel hands out ports from the ephemeral range, the same range
 * that the hundreds of client sockets of tests running in parallel are auto-bound from. Such
 * a port can be taken by some client's connect() between our probe and the daemon's bind(),
 * which fails the daemon with EADDRINUSE. Ports below (or above) the ephemeral range are
 * never auto-assigned, so a random one that binds now stays ours in practice.
 */
/* claim_port: whether this process may take PORT: no other process of the suite has claimed
 * it. Free ports picked by two tests at once stayed free until either daemon bound one, and
 * then met: a valgrind run's readiness probe was greeted by another test's daemon on "its"
 * port, and its own daemon, signalled while valgrind still started it, died without a word.
 * The claim is a lock on a file named after the port, held until the process exits (each test
 * runs in a process of its own; the daemons, exec'd, do not inherit it). */
static bool claim_port(uint16_t port) {
        char path[64];

        (void) mkdir("/tmp/hellod-test-ports", 0700);
        (void) snprintf(path, sizeof(path), "/tmp/hellod-test-ports/%u", (unsigned) port);
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
                return true; /* no claims to be had: the bind checks alone, as before */
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                close(fd);
                return false;
        }
        return true; /* FD stays open: the claim lasts as long as this process */
}

uint16_t harness_pick_port(void) {
        /* One generator per process: two picks in the same millisecond must differ. */
        static uint64_t seed;
        unsigned lo, hi, first, count;

        if (seed == 0)
                seed = (uint64_t) harness_now_ms() * 2654435761u ^ (uint64_t) getpid() << 16 ^ 1u;

        local_port_range(&lo, &hi);
        if (lo >= 11024) {
                first = 10000;
                count = lo - first;
        } else if (hi < 64511) {
                first = hi + 1;
                count = 65535 - hi;
        } else
                harness_fail("ip_local_port_range %u-%u leaves no room for fixed test ports", lo, hi);

        for (int attempt = 0; attempt < 200; attempt++) {
                uint16_t port;

                seed = seed * 6364136223846793005u + 1442695040888963407u;
                port = (uint16_t) (first + (unsigned) (seed >> 33) % count);
                if (port_free_on("127.0.0.1", port) && port_free_on("::1", port) && claim_port(port))
                        return port;
        }
        harness_fail("no free TCP port on both 127.0.0.1 and ::1 in %u-%u (is IPv6 loopback "
                     "available?)",
                     first, first + count - 1);
}

/* --- processes -------------------------------------------------------------------------- */

/* Only async-signal-safe calls from here to execv(): the test process may have threads. */
static _Noreturn void spawn_child(const HarnessSpawn *s, char **envp, pid_t parent, int errpipe) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        struct rlimit rl = { .rlim_cur = s->nofile, .rlim_max = s->nofile };
        sigset_t none;
        int in, out, err;

        /* Dispositions and the mask survive exec: give the daemon a pristine signal state. */
        for (int sig = 1; sig < NSIG; sig++)
                (void) sigaction(sig, &sa, NULL);
        (void) sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);

        /* A test that crashes or times out must not leave a daemon behind. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                goto fail;
        if (getppid() != parent) /* the parent died before prctl() */
                _exit(127);

        in = open("/dev/null", O_RDONLY);
        out = open(s->stdout_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        err = open(s->stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0 || err < 0)
                goto fail;
        if (dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0)
                goto fail;
        /* Keep the CLOEXEC error pipe as fd 3, close everything else the test had open. */
        if (errpipe != 3 && dup3(errpipe, 3, O_CLOEXEC) < 0)
                goto fail;
        errpipe = 3;
        if (close_range(4, ~0U, 0) < 0)
                for (int fd = 4; fd < 65536; fd++)
                        (void) close(fd);

        if (s->nofile > 0 && setrlimit(RLIMIT_NOFILE, &rl) < 0)
                goto fail;

        execve(s->argv[0], (char *const *) s->argv, envp);
fail:
        harness_exec_failed(errpipe);
}

void harness_exec_failed(int write_fd) {
        int e = errno;

        (void) !write(write_fd, &e, sizeof(e));
        _exit(127);
}

void harness_expect_exec(int read_fd, pid_t pid, const char *program) {
        struct pollfd pfd = { .fd = read_fd, .events = POLLIN };
        ssize_t k;
        int e = 0;

        /* EOF on the CLOEXEC pipe means exec succeeded; an int on it is the child's errno. */
        if (poll(&pfd, 1, HARNESS_TIMEOUT_MS) <= 0)
                harness_fail("%s: no exec within %d ms", program, HARNESS_TIMEOUT_MS);
        do
                k = read(read_fd, &e, sizeof(e));
        while (k < 0 && errno == EINTR);
        (void) close(read_fd);
        if (k > 0) {
                (void) harness_wait_pid(pid, HARNESS_TIMEOUT_MS, NULL);
                harness_fail("cannot start %s: %s", program, strerror(e));
        }
}

/* build_env: environ plus EXTRA, built before fork() so that the child only calls execve(). */
static char **build_env(const char *const *extra) {
        size_t n = 0, m = 0;
        char **envp;

        while (environ[n])
                n++;
        while (extra && extra[m])
                m++;
        envp = calloc(n + m + 1, sizeof(*envp));
        if (!envp)
                harness_fail("out of memory");
        memcpy(envp, environ, n * sizeof(*envp));
        for (size_t i = 0; i < m; i++)
                envp[n + i] = (char *) extra[i];
        return envp;
}

pid_t harness_spawn(const HarnessSpawn *s) {
        pid_t parent = getpid(), pid;
        char **envp = build_env(s->env);
        int p[2];

        if (pipe2(p, O_CLOEXEC) < 0)
                harness_fail("pipe2(): %s", strerror(errno));
        pid = fork();
        if (pid < 0)
                harness_fail("fork(): %s", strerror(errno));
        if (pid == 0) {
                (void) close(p[0]);
                spawn_child(s, envp, parent, p[1]);
        }
        (void) close(p[1]);
        free(envp);
        harness_expect_exec(p[0], pid, s->argv[0]);
        return pid;
}

bool harness_wait_pid(pid_t pid, int timeout_ms, int *ret_status) {
        int64_t deadline = harness_now_ms() + timeout_ms;
        int status;

        for (;;) {
                pid_t r = waitpid(pid, &status, WNOHANG);

                if (r == pid) {
                        if (ret_status)
                                *ret_status = status;
                        return true;
                }
                if (r < 0 && errno != EINTR)
                        harness_fail("waitpid(%d): %s", (int) pid, strerror(errno));
                if (harness_now_ms() >= deadline)
                        return false;
                harness_sleep_ms(10);
        }
}

int harness_run(const HarnessSpawn *s, int timeout_ms) {
        pid_t pid = harness_spawn(s);
        int status;

        if (!harness_wait_pid(pid, timeout_ms, &status)) {
                (void) kill(pid, SIGKILL);
                (void) harness_wait_pid(pid, HARNESS_TIMEOUT_MS, NULL);
                harness_fail("%s did not exit within %d ms", s->argv[0], timeout_ms);
        }
        return status;
}

/* --- hellod instances ------------------------------------------------------------------- */

static void registry_add(Hellod *d) {
        for (size_t i = 0; i < REGISTRY_MAX; i++)
                if (!registry[i]) {
                        registry[i] = d;
                        return;
                }
        harness_fail("more than %d hellod instances in one test", REGISTRY_MAX);
}

static void registry_remove(Hellod *d) {
        for (size_t i = 0; i < REGISTRY_MAX; i++)
                if (registry[i] == d)
                        registry[i] = NULL;
}

void harness_cleanup(void) {
        for (size_t i = 0; i < REGISTRY_MAX; i++) {
                /* A forked helper inherits the registry, but not the daemons: leave those alone. */
                if (registry[i] && registry[i]->owner != getpid())
                        registry[i] = NULL;
                else
                        registry[i] = hellod_free(registry[i]);
        }
}

_Noreturn void hellod_fail(Hellod *d, const char *format, ...) {
        char suffix[STDERR_TAIL_MAX + 128] = "";
        va_list ap;

        if (d && d->stderr_path[0] && access(d->stderr_path, R_OK) == 0) {
                size_t n;
                char *err = harness_read_file(d->stderr_path, &n);
                const char *tail = n > STDERR_TAIL_MAX ? err + n - STDERR_TAIL_MAX : err;

                (void) snprintf(suffix, sizeof(suffix), "\n--- hellod stderr%s ---\n%s--- end ---",
                                tail != err ? " (tail)" : "", tail);
                free(err);
        }
        va_start(ap, format);
        fail_va(suffix, format, ap);
}

Hellod *hellod_new_with_port(uint16_t port) {
        const char *tmp = getenv("TMPDIR");
        Hellod *d;

        d = calloc(1, sizeof(*d));
        if (!d)
                harness_fail("out of memory");
        (void) snprintf(d->dir, sizeof(d->dir), "%s/hellod-test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(d->dir)) {
                int e = errno;

                free(d);
                harness_fail("mkdtemp(): %s", strerror(e));
        }
        (void) snprintf(d->conf_path, sizeof(d->conf_path), "%s/hellod.conf", d->dir);
        (void) snprintf(d->stdout_path, sizeof(d->stdout_path), "%s/stdout", d->dir);
        (void) snprintf(d->stderr_path, sizeof(d->stderr_path), "%s/stderr", d->dir);
        d->port = port;
        d->owner = getpid();
        registry_add(d);
        return d;
}

Hellod *hellod_new(void) {
        return hellod_new_with_port(harness_pick_port());
}

/* extra_unless_set: the statements of EXTRA ("key = value;" ...) whose key BODY does not
 * mention; NULL when none is left. */
static char *extra_unless_set(const char *extra, const char *body) {
        size_t len = extra ? strlen(extra) : 0, n = 0;
        char *out;

        if (len == 0)
                return NULL;
        if (!(out = malloc(len + 1)))
                harness_fail("out of memory");
        for (const char *p = extra; *p;) {
                const char *end = strchr(p, ';');
                size_t stmt = end ? (size_t) (end - p) + 1 : strlen(p);
                const char *k = p;
                while (*k == ' ' || *k == '\n' || *k == '\t')
                        k++;
                size_t klen = strcspn(k, " =\t");
                char key[64];
                snprintf(key, sizeof(key), "%.*s", (int) (klen < sizeof(key) ? klen : sizeof(key) - 1), k);
                if (klen == 0 || !body || !strstr(body, key)) {
                        memcpy(out + n, p, stmt);
                        n += stmt;
                }
                p += stmt;
        }
        out[n] = '\0';
        if (n == 0) {
                free(out);
                return NULL;
        }
        return out;
}

static void write_config_va(Hellod *d, const char *prefix, const char *format, va_list ap)
        __attribute__((format(printf, 3, 0)));

static void write_config_va(Hellod *d, const char *prefix, const char *format, va_list ap) {
        char *body = NULL, *all = NULL;
        int n;

        /* HELLOD_TEST_CONF_EXTRA (e.g. "workers = 2;") goes at the end of every config, so that
         * the whole suite runs once per worker model; line numbers above it do not move. */
        const char *extra = getenv("HELLOD_TEST_CONF_EXTRA");

        if (format && vasprintf(&body, format, ap) < 0)
                harness_fail("out of memory");
        /* A test that sets a key of the extra itself (its worker model, say) keeps its own. */
        char *kept = extra_unless_set(extra, body);
        n = asprintf(&all, "%s%s%s%s", prefix, body ? body : "", kept ? "\n" : "", kept ? kept : "");
        free(kept);
        free(body);
        if (n < 0)
                harness_fail("out of memory");
        harness_write_file(d->conf_path, all, (size_t) n);
        free(all);
}

void hellod_write_config(Hellod *d, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        write_config_va(d, "", format, ap);
        va_end(ap);
}

static void write_config_std_va(Hellod *d, const char *extra_format, va_list ap)
        __attribute__((format(printf, 2, 0)));

static void write_config_std_va(Hellod *d, const char *extra_format, va_list ap) {
        char prefix[128];

        (void) snprintf(prefix, sizeof(prefix), "listen = [ \"127.0.0.1\", \"::1\" ];\nport = %u;\n",
                        (unsigned) d->port);
        write_config_va(d, prefix, extra_format, ap);
}

void hellod_write_config_std(Hellod *d, const char *extra_format, ...) {
        va_list ap;

        va_start(ap, extra_format);
        write_config_std_va(d, extra_format, ap);
        va_end(ap);
}

void hellod_spawn(Hellod *d, const HellodOpts *opts) {
        const char *argv[32];
        size_t n = 0;

        if (d->pid > 0 && !d->reaped)
                harness_fail("hellod already running as %d", (int) d->pid);
        for (size_t i = 0; opts && opts->wrapper && opts->wrapper[i]; i++) {
                if (n + 4 >= sizeof(argv) / sizeof(argv[0]))
                        harness_fail("too many wrapper arguments");
                argv[n++] = opts->wrapper[i];
        }
        argv[n++] = harness_env_path("HELLOD_BIN");
        argv[n++] = "--config";
        argv[n++] = d->conf_path;
        for (size_t i = 0; opts && opts->extra_args && opts->extra_args[i]; i++) {
                if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
                        harness_fail("too many hellod arguments");
                argv[n++] = opts->extra_args[i];
        }
        argv[n] = NULL;

        d->reaped = false;
        d->pid = harness_spawn(&(HarnessSpawn) {
                .argv = argv,
                .stdout_path = d->stdout_path,
                .stderr_path = d->stderr_path,
                .nofile = opts ? opts->nofile : 0,
                .env = opts ? opts->env : NULL,
        });
}

/*
 * probe_drain: leave politely. Closing with the rest of the greeting unread would make our
 * kernel answer with an RST, so every daemon would start its life with a reset connection in
 * its logs. Half-close and read to EOF instead, for a short while only: the probe is not the
 * place to judge the daemon's half-close handling.
 */
static void probe_drain(int fd) {
        char buf[256];
        ClientReadEnd end;

        (void) shutdown(fd, SHUT_WR);
        do
                (void) client_read(fd, buf, sizeof(buf), NULL, 1000, &end);
        while (end == CLIENT_READ_DONE);
}

/* probe_once: connected to the daemon; true once it sent a byte or closed. */
static bool probe_once(Hellod *d, int fd, int64_t deadline) {
        while (harness_now_ms() < deadline) {
                ClientReadEnd end;
                char c;

                if (client_read(fd, &c, 1, NULL, 100, &end) == 1) {
                        probe_drain(fd);
                        return true;
                }
                if (end == CLIENT_READ_EOF)
                        return true;
                if (end == CLIENT_READ_RESET)
                        return false;
                if (!hellod_alive(d))
                        return false;
        }
        return false;
}

void hellod_wait_ready(Hellod *d) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        char buf[64];

        /*
         * A real client round trip rather than a look at /proc/net/tcp: it proves the accept
         * loop runs, so signals the test sends next hit an initialised daemon.
         */
        while (harness_now_ms() < deadline) {
                int fd;

                if (!hellod_alive(d))
                        hellod_fail(d, "hellod exited before accepting on 127.0.0.1:%u: %s",
                                    (unsigned) d->port,
                                    harness_describe_status(d->status, buf, sizeof(buf)));
                fd = client_try_connect("127.0.0.1", d->port, NULL);
                if (fd >= 0) {
                        bool ok = probe_once(d, fd, deadline);

                        client_close(fd);
                        if (ok)
                                return;
                } else if (fd != -ECONNREFUSED)
                        hellod_fail(d, "connect(127.0.0.1:%u): %s", (unsigned) d->port, strerror(-fd));
                harness_sleep_ms(20);
        }
        hellod_fail(d, "hellod did not serve 127.0.0.1:%u within %d ms", (unsigned) d->port,
                    HARNESS_TIMEOUT_MS);
}

static Hellod *start_va(const HellodOpts *opts, const char *extra_format, va_list ap)
        __attribute__((format(printf, 2, 0)));

static Hellod *start_va(const HellodOpts *opts, const char *extra_format, va_list ap) {
        Hellod *d = hellod_new();

        write_config_std_va(d, extra_format, ap);
        hellod_spawn(d, opts);
        hellod_wait_ready(d);
        return d;
}

Hellod *hellod_start(const char *extra_format, ...) {
        va_list ap;
        Hellod *d;

        va_start(ap, extra_format);
        d = start_va(NULL, extra_format, ap);
        va_end(ap);
        return d;
}

Hellod *hellod_start_opts(const HellodOpts *opts, const char *extra_format, ...) {
        va_list ap;
        Hellod *d;

        va_start(ap, extra_format);
        d = start_va(opts, extra_format, ap);
        va_end(ap);
        return d;
}

int hellod_run(Hellod *d, const char *const *args) {
        const char *argv[32];
        size_t n = 0;

        if (d->pid > 0 && !d->reaped)
                harness_fail("hellod_run() while a daemon of this instance runs");
        argv[n++] = harness_env_path("HELLOD_BIN");
        for (size_t i = 0; args && args[i]; i++) {
                if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
                        harness_fail("too many hellod arguments");
                argv[n++] = args[i];
        }
        argv[n] = NULL;
        return harness_run(&(HarnessSpawn) {
                .argv = argv,
                .stdout_path = d->stdout_path,
                .stderr_path = d->stderr_path,
        }, HARNESS_TIMEOUT_MS);
}

void hellod_signal(Hellod *d, int sig) {
        if (!hellod_alive(d))
                hellod_fail(d, "cannot send signal %d: hellod is not running", sig);
        if (kill(d->pid, sig) < 0)
                harness_fail("kill(%d, %d): %s", (int) d->pid, sig, strerror(errno));
}

/* all_stopped: every thread of PID is stopped (state T in its stat; t under a tracer), and there
 * was one to read. */
static bool all_stopped(pid_t pid) {
        char path[64], stat[512];
        bool stopped = true, seen = false;
        struct dirent *e;
        DIR *dir;

        (void) snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        if (!(dir = opendir(path)))
                return false;
        while (stopped && (e = readdir(dir))) {
                char stat_path[384];
                if (e->d_name[0] == '.')
                        continue;
                (void) snprintf(stat_path, sizeof(stat_path), "%s/%s/stat", path, e->d_name);
                if (harness_read_small(stat_path, stat, sizeof(stat)) <= 0) /* the thread ended meanwhile */
                        continue;
                const char *end_of_name = strrchr(stat, ')');
                stopped = end_of_name && end_of_name[1] == ' ' && (end_of_name[2] == 'T' || end_of_name[2] == 't');
                seen = true;
        }
        closedir(dir);
        return stopped && seen;
}

int hellod_signal_threads(Hellod *d, int sig) {
        char path[64];
        struct dirent *e;
        int sent = 0;
        DIR *dir;

        (void) snprintf(path, sizeof(path), "/proc/%d/task", (int) d->pid);
        if (!hellod_alive(d) || !(dir = opendir(path)))
                hellod_fail(d, "cannot send signal %d to its threads: hellod is not running", sig);
        while ((e = readdir(dir)))
                if (e->d_name[0] != '.' && syscall(SYS_tgkill, (int) d->pid, atoi(e->d_name), sig) == 0)
                        sent++;
        closedir(dir);
        return sent;
}

void hellod_freeze(Hellod *d) {
        hellod_signal(d, SIGSTOP);
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; !all_stopped(d->pid); harness_sleep_ms(5))
                if (!hellod_alive(d))
                        hellod_fail(d, "it exited instead of stopping");
                else if (harness_now_ms() > end)
                        hellod_fail(d, "its threads did not all stop after SIGSTOP");
}

void hellod_thaw(Hellod *d) {
        hellod_signal(d, SIGCONT);
}

bool hellod_alive(Hellod *d) {
        if (d->pid <= 0 || d->reaped)
                return false;
        if (harness_wait_pid(d->pid, 0, &d->status)) {
                d->reaped = true;
                return false;
        }
        return true;
}

int hellod_wait_exit(Hellod *d, int timeout_ms) {
        if (d->pid <= 0)
                harness_fail("hellod was never started");
        if (!d->reaped) {
                if (!harness_wait_pid(d->pid, timeout_ms, &d->status)) {
                        (void) kill(d->pid, SIGKILL);
                        (void) harness_wait_pid(d->pid, HARNESS_TIMEOUT_MS, &d->status);
                        d->reaped = true;
                        hellod_fail(d, "hellod (pid %d) still running after %d ms; killed it",
                                    (int) d->pid, timeout_ms);
                }
                d->reaped = true;
        }
        return d->status;
}

int hellod_stop(Hellod *d) {
        if (hellod_alive(d) && kill(d->pid, SIGTERM) < 0)
                harness_fail("kill(%d, SIGTERM): %s", (int) d->pid, strerror(errno));
        return hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS);
}

void hellod_stop_clean(Hellod *d) {
        int status = hellod_stop(d);
        char buf[96];

        if (!WIFEXITED(status) || WEXITSTATUS(status) != HELLOD_EXIT_OK)
                hellod_fail(d, "hellod did not exit cleanly on SIGTERM: %s",
                            harness_describe_status(status, buf, sizeof(buf)));
}

char *hellod_stdout(Hellod *d) {
        return harness_read_file(d->stdout_path, NULL);
}

char *hellod_stderr(Hellod *d) {
        return harness_read_file(d->stderr_path, NULL);
}

int hellod_count_in_stderr(Hellod *d, const char *needle) {
        char *log = hellod_stderr(d);
        int n = 0;

        for (const char *p = log; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        free(log);
        return n;
}

int hellod_sum_in_stderr(Hellod *d, const char *marker) {
        char *log = hellod_stderr(d);
        int sum = 0;

        for (const char *p = strstr(log, marker); p; p = strstr(p + 1, marker)) {
                const char *digits = p;
                while (digits > log && isdigit((unsigned char) digits[-1]))
                        digits--;
                sum += atoi(digits);
        }
        free(log);
        return sum;
}

void hellod_wait_stderr_count(Hellod *d, const char *needle, int n) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;

        for (int seen; (seen = hellod_count_in_stderr(d, needle)) < n; harness_sleep_ms(50))
                if (harness_now_ms() >= deadline)
                        hellod_fail(d, "hellod's stderr contains \"%s\" %d times after %d ms, not %d", needle, seen,
                                    HARNESS_TIMEOUT_MS, n);
}

void hellod_wait_stderr(Hellod *d, const char *needle) {
        hellod_wait_stderr_count(d, needle, 1);
}

static pid_t running_pid(Hellod *d) {
        if (!hellod_alive(d))
                hellod_fail(d, "hellod is not running");
        return d->pid;
}

int hellod_fd_count(Hellod *d) {
        int n = harness_proc_fd_count(running_pid(d));

        if (n < 0)
                hellod_fail(d, "cannot list /proc/%d/fd", (int) d->pid);
        return n;
}

int hellod_thread_count(Hellod *d) {
        int kernel = 0, n = harness_proc_thread_count_but(running_pid(d), "iou-", &kernel);

        if (n < 0)
                hellod_fail(d, "cannot list /proc/%d/task", (int) d->pid);
        /* io-wq keeps an idle worker or two per ring: hundreds would be work that blocks. */
        if (kernel > HELLOD_IO_URING_WORKERS_MAX)
                hellod_fail(d, "%d io_uring worker threads in the kernel (at most %d expected)", kernel,
                            HELLOD_IO_URING_WORKERS_MAX);
        return n;
}

int hellod_worker_count(Hellod *d) {
        int n = harness_proc_thread_count(running_pid(d), "hellod-worker");

        if (n < 0)
                hellod_fail(d, "cannot list /proc/%d/task", (int) d->pid);
        return n;
}

long hellod_rss_kib(Hellod *d) {
        long kib = harness_proc_status_field(running_pid(d), "VmRSS");

        if (kib < 0)
                hellod_fail(d, "no VmRSS in /proc/%d/status", (int) d->pid);
        return kib;
}

bool hellod_sanitized(Hellod *d) {
        pid_t pid = running_pid(d);

        return harness_proc_maps_contain(pid, "libasan") || harness_proc_maps_contain(pid, "libtsan") ||
               harness_proc_maps_contain(pid, "libubsan");
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) st;
        (void) type;
        (void) ftw;
        (void) remove(path);
        return 0;
}

Hellod *hellod_free(Hellod *d) {
        if (!d)
                return NULL;
        /* Never fails: it also runs from the .fini hook after a failed assertion. */
        if (d->owner != getpid()) {
                /* Inherited over fork(): the daemon and the dir belong to the parent. */
                registry_remove(d);
                free(d);
                return NULL;
        }
        if (d->pid > 0 && !d->reaped) {
                (void) kill(d->pid, SIGKILL);
                (void) waitpid(d->pid, &d->status, 0);
                d->reaped = true;
        }
        if (d->dir[0])
                (void) nftw(d->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        registry_remove(d);
        free(d);
        return NULL;
}

/* --- clients ---------------------------------------------------------------------------- */

/* wait_fd: true when FD has EVENTS (or an error/hangup) before DEADLINE. */
static bool wait_fd(int fd, short events, int64_t deadline) {
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = events };
                int r = poll(&pfd, 1, remaining_ms(deadline));

                if (r > 0)
                        return true;
                if (r == 0)
                        return false;
                if (errno != EINTR)
                        harness_fail("poll(): %s", strerror(errno));
        }
}

static int finish_connect(int fd) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        socklen_t len = sizeof(int);
        int e = 0;

        if (!wait_fd(fd, POLLOUT, deadline))
                return -ETIMEDOUT;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                return -errno;
        return -e;
}

/* try_connect: client_try_connect(), with a receive buffer of RCVBUF bytes set before the
 * connect (so that the window the client advertises is that small), unless 0. */
static int try_connect(const char *ip, uint16_t port, const char *src_ip, int rcvbuf) {
        struct sockaddr_storage ss;
        socklen_t len = make_addr(ip, port, &ss);
        int fd, r;

        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                harness_fail("socket(): %s", strerror(errno));
        if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0)
                harness_fail("setsockopt(SO_RCVBUF): %s", strerror(errno));
        if (src_ip) {
                struct sockaddr_storage src;
                socklen_t src_len = make_addr(src_ip, 0, &src);

                if (bind(fd, (struct sockaddr *) &src, src_len) < 0)
                        harness_fail("bind(%s): %s", src_ip, strerror(errno));
        }
        r = connect(fd, (struct sockaddr *) &ss, len) < 0 ? -errno : 0;
        if (r == -EINPROGRESS)
                r = finish_connect(fd);
        if (r < 0) {
                (void) close(fd);
                return r;
        }
        return fd;
}

int client_try_connect(const char *ip, uint16_t port, const char *src_ip) {
        return try_connect(ip, port, src_ip, 0);
}

int client_start_connect(const char *ip, uint16_t port) {
        return client_start_connect_window(ip, port, 0);
}

int client_start_connect_window(const char *ip, uint16_t port, int rcvbuf) {
        struct sockaddr_storage ss;
        socklen_t len = make_addr(ip, port, &ss);
        int fd;

        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0) {
                int r = -errno;

                (void) close(fd);
                return r;
        }
        if (connect(fd, (struct sockaddr *) &ss, len) < 0 && errno != EINPROGRESS) {
                int r = -errno;

                (void) close(fd);
                return r;
        }
        return fd;
}

int client_connect_to(const char *ip, uint16_t port, const char *src_ip) {
        int fd = client_try_connect(ip, port, src_ip);

        if (fd < 0)
                harness_fail("connect(%s%s%s:%u%s%s): %s", strchr(ip, ':') ? "[" : "", ip,
                             strchr(ip, ':') ? "]" : "", (unsigned) port, src_ip ? " from " : "",
                             src_ip ? src_ip : "", strerror(-fd));
        return fd;
}

int client_connect(uint16_t port) {
        return client_connect_to("127.0.0.1", port, NULL);
}

int client_connect6(uint16_t port) {
        return client_connect_to("::1", port, NULL);
}

static const char *end_name(ClientReadEnd end) {
        switch (end) {
        case CLIENT_READ_DONE:
                return "complete";
        case CLIENT_READ_EOF:
                return "EOF";
        case CLIENT_READ_RESET:
                return "connection reset";
        case CLIENT_READ_TIMEOUT:
                return "timeout";
        }
        return "?";
}

int client_connect_greeted(const char *ip, uint16_t port, const char *src_ip, const char *want,
                           const char *retry_on) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        char got[512], e1[1024], e2[1024];

        for (;;) {
                int fd = client_connect_to(ip, port, src_ip);
                ClientReadEnd end;
                size_t n = client_read(fd, got, sizeof(got) - 1, "\r\n", HARNESS_TIMEOUT_MS, &end);

                got[n] = '\0';
                if (end == CLIENT_READ_DONE && strcmp(got, want) == 0)
                        return fd;
                client_close(fd);
                if (!retry_on || end != CLIENT_READ_DONE || strcmp(got, retry_on) != 0)
                        harness_fail("expected greeting \"%s\", got \"%s\" (%s)",
                                     harness_escape(want, strlen(want), e1, sizeof(e1)),
                                     harness_escape(got, n, e2, sizeof(e2)), end_name(end));
                if (harness_now_ms() >= deadline)
                        harness_fail("still \"%s\" instead of \"%s\" after %d ms of retries",
                                     harness_escape(retry_on, strlen(retry_on), e1, sizeof(e1)),
                                     harness_escape(want, strlen(want), e2, sizeof(e2)),
                                     HARNESS_TIMEOUT_MS);
                harness_sleep_ms(RETRY_PAUSE_MS);
        }
}

int client_try_send(int fd, const void *buf, size_t n) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        const char *p = buf;

        while (n > 0) {
                ssize_t k;

                if (!wait_fd(fd, POLLOUT, deadline))
                        return -ETIMEDOUT;
                /* MSG_NOSIGNAL: a peer that already closed must fail the send, not kill us. */
                k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

void client_send(int fd, const void *buf, size_t n) {
        int r = client_try_send(fd, buf, n);

        if (r < 0)
                harness_fail("send(%zu bytes): %s", n, strerror(-r));
}

void client_send_str(int fd, const char *s) {
        client_send(fd, s, strlen(s));
}

void client_shutdown_write(int fd) {
        if (shutdown(fd, SHUT_WR) < 0)
                harness_fail("shutdown(SHUT_WR): %s", strerror(errno));
}

size_t client_read(int fd, void *buf, size_t size, const char *delim, int timeout_ms,
                   ClientReadEnd *ret_end) {
        int64_t deadline = harness_now_ms() + timeout_ms;
        size_t n = 0, dlen = delim ? strlen(delim) : 0;
        unsigned char *p = buf;
        ClientReadEnd end = CLIENT_READ_DONE;

        while (n < size) {
                ssize_t k;

                if (!wait_fd(fd, POLLIN, deadline)) {
                        end = CLIENT_READ_TIMEOUT;
                        break;
                }
                /* One byte at a time when looking for a delimiter: never eat the next reply. */
                k = recv(fd, p + n, delim ? 1 : size - n, MSG_DONTWAIT);
                if (k < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                if (k < 0 && errno == ECONNRESET) {
                        end = CLIENT_READ_RESET;
                        break;
                }
                if (k < 0)
                        harness_fail("recv(): %s", strerror(errno));
                if (k == 0) {
                        end = CLIENT_READ_EOF;
                        break;
                }
                n += (size_t) k;
                if (delim && n >= dlen && memcmp(p + n - dlen, delim, dlen) == 0)
                        break;
        }
        *ret_end = end;
        return n;
}

size_t client_read_line(int fd, char *buf, size_t size) {
        char esc[1024];
        ClientReadEnd end;
        size_t n = client_read(fd, buf, size - 1, "\r\n", HARNESS_TIMEOUT_MS, &end);

        buf[n] = '\0';
        if (end != CLIENT_READ_DONE || n < 2 || memcmp(buf + n - 2, "\r\n", 2) != 0)
                harness_fail("expected a CRLF-terminated line, got \"%s\" (%s)",
                             harness_escape(buf, n, esc, sizeof(esc)), end_name(end));
        return n;
}

void client_expect(int fd, const void *bytes, size_t n) {
        char *got = malloc(n + 1), e1[2048], e2[2048];
        ClientReadEnd end;
        size_t k;

        if (!got)
                harness_fail("out of memory");
        k = client_read(fd, got, n, NULL, HARNESS_TIMEOUT_MS, &end);
        if (k != n || memcmp(got, bytes, n) != 0) {
                (void) harness_escape(bytes, n, e1, sizeof(e1));
                (void) harness_escape(got, k, e2, sizeof(e2));
                free(got);
                harness_fail("expected \"%s\", got \"%s\"%s%s", e1, e2, k != n ? " then " : "",
                             k != n ? end_name(end) : "");
        }
        free(got);
}

void client_expect_str(int fd, const char *s) {
        client_expect(fd, s, strlen(s));
}

void client_expect_eof(int fd, bool allow_reset) {
        char got[256], esc[1024];
        ClientReadEnd end;
        size_t n = client_read(fd, got, sizeof(got), NULL, HARNESS_TIMEOUT_MS, &end);

        if (n > 0)
                harness_fail("expected EOF, got \"%s\" (%s)", harness_escape(got, n, esc, sizeof(esc)),
                             end_name(end));
        if (end == CLIENT_READ_EOF || (allow_reset && end == CLIENT_READ_RESET))
                return;
        harness_fail("expected EOF, got %s", end_name(end));
}

void client_expect_eof_after(int fd, const char *optional) {
        size_t len = strlen(optional);
        char got[512], e1[1024], e2[1024];
        ClientReadEnd end;
        size_t n;

        if (len + 64 > sizeof(got))
                harness_fail("client_expect_eof_after(): message too long");
        n = client_read(fd, got, len + 64, NULL, HARNESS_TIMEOUT_MS, &end);
        if (end == CLIENT_READ_EOF && (n == 0 || (n == len && memcmp(got, optional, len) == 0)))
                return;
        harness_fail("expected EOF, optionally after \"%s\"; got \"%s\" then %s",
                     harness_escape(optional, len, e1, sizeof(e1)), harness_escape(got, n, e2, sizeof(e2)),
                     end_name(end));
}

bool client_wait_readable(int fd, int ms) {
        return wait_fd(fd, POLLIN, harness_now_ms() + ms);
}

int hellod_next_greeted(Hellod *d, const int *fds, int n) {
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; harness_now_ms() <= end; harness_sleep_ms(5))
                for (int i = 0; i < n; i++)
                        if (fds[i] >= 0 && client_wait_readable(fds[i], 0)) {
                                client_expect_str(fds[i], HELLOD_GREETING);
                                return i;
                        }
        hellod_fail(d, "none of the waiting clients was greeted");
}

void client_expect_silence(int fd, int ms) {
        int64_t deadline = harness_now_ms() + ms;
        char got[256], esc[1024];
        ssize_t k;

        if (!wait_fd(fd, POLLIN, deadline))
                return;
        k = recv(fd, got, sizeof(got), MSG_DONTWAIT | MSG_PEEK);
        if (k > 0)
                harness_fail("expected no reply yet, got \"%s\"",
                             harness_escape(got, (size_t) k, esc, sizeof(esc)));
        if (k == 0)
                harness_fail("expected no reply yet, got EOF");
        if (errno != EAGAIN)
                harness_fail("expected no reply yet, got error: %s", strerror(errno));
}

void client_hello(int fd, const char *name) {
        char line[512], reply[512];

        (void) snprintf(line, sizeof(line), "%s\n", name);
        (void) snprintf(reply, sizeof(reply), "Hello, %s!\r\n", name);
        client_send_str(fd, line);
        client_expect_str(fd, reply);
}

void client_close(int fd) {
        if (fd >= 0)
                (void) close(fd);
}

void client_reset(int fd) {
        struct linger l = { .l_onoff = 1, .l_linger = 0 };

        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) < 0)
                harness_fail("setsockopt(SO_LINGER): %s", strerror(errno));
        (void) close(fd);
}

/* ModelLine: harness_model_replies()'s state: the line so far and the replies. */
typedef struct ModelLine {
        const char *prefix, *suffix;
        size_t max_line;
        unsigned char *line;
        size_t len;
        char *out;
        size_t o;
        bool ended;
} ModelLine;

static void model_put(ModelLine *m, const void *p, size_t n) {
        memcpy(m->out + m->o, p, n);
        m->o += n;
}

static void model_too_long(ModelLine *m) {
        model_put(m, HELLOD_ERR_TOO_LONG, strlen(HELLOD_ERR_TOO_LONG));
        m->ended = true;
}

/* model_line_end: the line is complete (newline or EOF). */
static void model_line_end(ModelLine *m) {
        size_t len = m->len;

        m->len = 0;
        if (len > 0 && m->line[len - 1] == '\r')
                len--;
        if (len > m->max_line)
                model_too_long(m);
        else if (len == 4 && memcmp(m->line, "exit", 4) == 0)
                m->ended = true;
        else if (len > 0) {
                model_put(m, m->prefix, strlen(m->prefix));
                model_put(m, m->line, len);
                model_put(m, m->suffix, strlen(m->suffix));
                model_put(m, "\r\n", 2);
        }
}

static void model_data(ModelLine *m, unsigned char c) {
        if (c == '\n')
                model_line_end(m);
        else
                m->line[m->len++] = c;
}

/* model_check: the ERR goes out as soon as the line cannot end within max_line, at the latest
 * where a telnet command interrupts it (the daemon frames the data between commands as it
 * frames its reads, so where its reads are cut does not change what it answers). */
static void model_check(ModelLine *m) {
        if (m->len > m->max_line + 1 || (m->len == m->max_line + 1 && m->line[m->len - 1] != '\r'))
                model_too_long(m);
}

size_t harness_model_replies(const char *prefix, const char *suffix, const unsigned char *in, size_t n,
                             size_t max_line, char *out) {
        /* Telnet (README): WHERE is 0 in data, 1 after IAC, 2 before an option byte, 3 inside
         * IAC SB ... IAC SE, 4 after an IAC there. */
        ModelLine m = { .prefix = prefix, .suffix = suffix, .max_line = max_line, .out = out };
        int where = 0;
        unsigned char verb = 0;
        size_t sb = 0;

        m.line = malloc(n + 1);
        if (!m.line)
                harness_fail("out of memory");
        for (size_t i = 0; i < n && !m.ended; i++) {
                unsigned char c = in[i];

                switch (where) {
                case 0:
                        if (c == 0xff) {
                                model_check(&m);
                                where = 1;
                        } else
                                model_data(&m, c);
                        break;
                case 1:
                        where = 0;
                        if (c == 0xff) { /* IAC IAC: one 0xff data byte */
                                model_data(&m, c);
                                model_check(&m);
                        } else if (c < 236) /* no command: the IAC alone is dropped */
                                model_data(&m, c);
                        else if (c == 244 || c == 245 || c == 243 || c == 236 || c == 238)
                                m.ended = true; /* IP AO BRK EOF ABORT: as exit */
                        else if (c == 246) /* AYT */
                                model_put(&m, "[Yes]\r\n", 7);
                        else if (c == 250) { /* SB */
                                where = 3;
                                sb = 0;
                        } else if (c >= 251 && c <= 254) { /* WILL WONT DO DONT */
                                where = 2;
                                verb = c;
                        }
                        break;
                case 2:
                        where = 0;
                        if (verb == 253) /* DO: WONT, but WILL TIMING-MARK */
                                model_put(&m, c == 6 ? "\xff\xfb" : "\xff\xfc", 2);
                        else if (verb == 251) /* WILL: DONT */
                                model_put(&m, "\xff\xfe", 2);
                        if (verb == 253 || verb == 251)
                                model_put(&m, &c, 1);
                        break;
                default:
                        if (where == 3 && c == 0xff) {
                                where = 4;
                                break;
                        }
                        if (where == 4 && c == 0xf0) { /* IAC SE */
                                where = 0;
                                break;
                        }
                        sb += where == 4 ? 2 : 1;
                        where = 3;
                        if (sb > max_line)
                                model_too_long(&m);
                        break;
                }
        }
        if (!m.ended)
                model_check(&m);
        if (!m.ended && m.len > 0) /* EOF: an unterminated last line is answered too */
                model_line_end(&m);
        free(m.line);
        return m.o;
}

/* tcp_socket_v4: the IPv4 socket LOCAL_PORT <-> REMOTE_PORT on 127.0.0.1 as /proc/net/tcp has
 * it; state -1 if there is none. */
static TcpSocket tcp_socket_v4(uint16_t local_port, uint16_t remote_port) {
        FILE *f = fopen("/proc/net/tcp", "re");
        char line[512];
        TcpSocket sock = { .state = -1 };

        if (!f)
                harness_fail("/proc/net/tcp: %s", strerror(errno));
        while (sock.state < 0 && fgets(line, sizeof(line), f)) {
                unsigned lport, rport, st;
                unsigned long tx, rx, ino;

                if (sscanf(line, " %*u: %*x:%x %*x:%x %x %lx:%lx %*x:%*x %*x %*u %*d %lu", &lport, &rport, &st, &tx, &rx,
                           &ino) == 6 &&
                    lport == local_port && rport == remote_port)
                        sock = (TcpSocket) { .state = (int) st, .inode = ino, .tx_queue = tx, .rx_queue = rx };
        }
        fclose(f);
        return sock;
}

static int tcp_state_v4(uint16_t local_port, uint16_t remote_port) {
        return tcp_socket_v4(local_port, remote_port).state;
}

static uint16_t local_port_of(int fd) {
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);

        if (getsockname(fd, (struct sockaddr *) &sin, &len) < 0)
                harness_fail("getsockname(): %s", strerror(errno));
        return ntohs(sin.sin_port);
}

static struct tcp_info tcp_info_of(int fd) {
        struct tcp_info info;
        socklen_t len = sizeof(info);

        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
                harness_fail("getsockopt(TCP_INFO): %s", strerror(errno));
        return info;
}

/* The conversation of client_exit_unread(): replies to NAME, LINES of them, in a receive
 * window of about 2 KiB: 8 KiB of replies. */
enum { EXIT_UNREAD_LINES = 100, EXIT_UNREAD_NAME_LEN = 70 };
static const char exit_unread_name[EXIT_UNREAD_NAME_LEN + 1] =
        "the-client-reads-none-of-these-replies-until-hellod-has-ended-it-01234";

/* client_connect_small_window: a connection from 127.0.0.1 with a receive window of about
 * 2 KiB, once it is greeted (peeked at, left unread): a client told busy (the slot of the
 * previous one frees only once hellod has seen its close) is closed and tried again. */
int client_connect_small_window(uint16_t port) {
        size_t busy_len = strlen(HELLOD_ERR_BUSY);
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        char first[64];

        for (;;) {
                int fd = try_connect("127.0.0.1", port, NULL, 2048);
                if (fd < 0)
                        harness_fail("connect(127.0.0.1:%u) with a small window: %s", port, strerror(-fd));
                if (!client_wait_readable(fd, HARNESS_TIMEOUT_MS))
                        harness_fail("127.0.0.1:%u: no greeting within %d ms", port, HARNESS_TIMEOUT_MS);
                ssize_t k = recv(fd, first, busy_len, MSG_PEEK);
                if (k <= 0 || memcmp(first, HELLOD_ERR_BUSY, (size_t) k) != 0)
                        return fd; /* anything else is the caller's to check */
                close(fd);
                if (harness_now_ms() > deadline)
                        harness_fail("127.0.0.1:%u: told busy for %d ms", port, HARNESS_TIMEOUT_MS);
                harness_sleep_ms(20);
        }
}

int client_exit_unread(uint16_t port) {
        int fd = client_connect_small_window(port);

        client_exit_unread_on(port, fd);
        return fd;
}

void client_exit_unread_on(uint16_t port, int fd) {
        char request[EXIT_UNREAD_LINES * (EXIT_UNREAD_NAME_LEN + 1)];
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;

        for (int i = 0; i < EXIT_UNREAD_LINES; i++) {
                memcpy(request + i * (EXIT_UNREAD_NAME_LEN + 1), exit_unread_name, EXIT_UNREAD_NAME_LEN);
                request[i * (EXIT_UNREAD_NAME_LEN + 1) + EXIT_UNREAD_NAME_LEN] = '\n';
        }
        client_send(fd, request, sizeof(request));
        client_send_str(fd, "exit\n");
        while (tcp_state_v4(port, local_port_of(fd)) != TCP_FIN_WAIT1) {
                if (harness_now_ms() > deadline)
                        harness_fail("hellod did not end the conversation after exit within %d ms", HARNESS_TIMEOUT_MS);
                harness_sleep_ms(5);
        }
}

void client_expect_exit_replies(int fd) {
        size_t reply_len = strlen("Hello, ") + EXIT_UNREAD_NAME_LEN + strlen("!\r\n"), glen = strlen(HELLOD_GREETING);
        char want[sizeof(HELLOD_GREETING) + EXIT_UNREAD_LINES * (EXIT_UNREAD_NAME_LEN + 12)];

        memcpy(want, HELLOD_GREETING, glen);
        for (int i = 0; i < EXIT_UNREAD_LINES; i++)
                snprintf(want + glen + i * reply_len, reply_len + 1, "Hello, %s!\r\n", exit_unread_name);
        client_expect(fd, want, glen + EXIT_UNREAD_LINES * reply_len);
        client_expect_eof(fd, false);
}

int client_exit_replies_unread(uint16_t port) {
        int fd = client_exit_unread(port);

        client_expect_exit_replies(fd);
        return fd;
}

TcpSocket hellod_socket_of(uint16_t port, int fd) {
        return tcp_socket_v4(port, local_port_of(fd));
}

bool hellod_holds_socket_of(uint16_t port, int fd) {
        TcpSocket sock = hellod_socket_of(port, fd);

        return sock.state >= 0 && sock.inode != 0;
}

void hellod_expect_lingering_ends_quietly(Hellod *d, uint16_t port, int fd) {
        int64_t start = harness_now_ms();

        while (hellod_holds_socket_of(port, fd)) {
                if (harness_now_ms() - start > HARNESS_TIMEOUT_MS)
                        hellod_fail(d, "the lingering close did not end within %d ms", HARNESS_TIMEOUT_MS);
                harness_sleep_ms(20);
        }
        struct tcp_info info = tcp_info_of(fd);
        if (info.tcpi_state != TCP_CLOSE_WAIT)
                hellod_fail(d, "the lingering socket was closed with the late line unread (state %u)", info.tcpi_state);
}

ClientLate client_write_late(int fd) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;

        int r = client_try_send(fd, "late\n", 5);

        if (r == -ECONNRESET || r == -EPIPE)
                return CLIENT_LATE_RESET;
        if (r < 0)
                harness_fail("a late write: %s", strerror(-r));
        for (;;) {
                struct tcp_info info = tcp_info_of(fd);
                int unacked;

                if (info.tcpi_state == TCP_CLOSE)
                        return CLIENT_LATE_RESET;
                if (info.tcpi_state == TCP_CLOSE_WAIT && ioctl(fd, SIOCOUTQ, &unacked) == 0 && unacked == 0)
                        return CLIENT_LATE_DISCARDED;
                if (harness_now_ms() > deadline)
                        harness_fail("a late write met neither an acknowledgement nor a reset within %d ms (state %u)",
                                     HARNESS_TIMEOUT_MS, info.tcpi_state);
                harness_sleep_ms(2);
        }
}

ClientState client_classify(int fd) {
        ClientReadEnd end;
        char c, esc[16];

        if (!client_wait_readable(fd, 0))
                return CLIENT_WAITING;
        if (client_read(fd, &c, 1, NULL, HARNESS_TIMEOUT_MS, &end) != 1)
                harness_fail("a client of the saturated daemon was closed without a word (%s)",
                             end == CLIENT_READ_EOF ? "EOF" : end == CLIENT_READ_RESET ? "reset" : "?");
        if (c == HELLOD_ERR_BUSY[0]) {
                client_expect_str(fd, &HELLOD_ERR_BUSY[1]);
                client_expect_eof(fd, false);
                return CLIENT_REFUSED;
        }
        if (c != HELLOD_GREETING[0])
                harness_fail("a client of the saturated daemon got \"%s...\"; expected the greeting, the busy "
                             "error, or nothing yet",
                             harness_escape(&c, 1, esc, sizeof(esc)));
        client_expect_str(fd, &HELLOD_GREETING[1]);
        return CLIENT_SERVED;
}

int hellod_socket_dup(Hellod *d, int fd) {
        pid_t pid = d->pid;
        struct sockaddr_storage mine, theirs;
        socklen_t len = sizeof(mine);
        char dir[64];
        struct dirent *e;
        int pidfd = pidfd_open(pid, 0), found = -1;
        DIR *fds;

        if (pidfd < 0)
                hellod_fail(d, "pidfd_open(%d): %s", (int) pid, strerror(errno));
        if (getsockname(fd, (struct sockaddr *) &mine, &len) < 0)
                harness_fail("getsockname: %s", strerror(errno));
        (void) snprintf(dir, sizeof(dir), "/proc/%d/fd", (int) pid);
        fds = opendir(dir);
        if (!fds)
                hellod_fail(d, "%s: %s", dir, strerror(errno));
        while (found < 0 && (e = readdir(fds))) {
                int dup = atoi(e->d_name) > 0 ? pidfd_getfd(pidfd, atoi(e->d_name), 0) : -1;

                len = sizeof(theirs);
                if (dup >= 0 && getpeername(dup, (struct sockaddr *) &theirs, &len) == 0 && len == sizeof(struct sockaddr_in) &&
                    ((struct sockaddr_in *) &theirs)->sin_port == ((struct sockaddr_in *) &mine)->sin_port)
                        found = dup;
                else if (dup >= 0)
                        close(dup);
        }
        closedir(fds);
        close(pidfd);
        if (found < 0)
                hellod_fail(d, "no socket of hellod (pid %d) is connected to this client", (int) pid);
        return found;
}
