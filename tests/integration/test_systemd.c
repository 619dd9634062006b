/* test-systemd: what systemd sees of hellod without a PID 1: socket activation through
 * systemd-socket-activate, the sd_notify protocol on a notification socket the test owns,
 * and the log targets. The booted-systemd test (tests/systemd/) covers the rest. */
#include <criterion/criterion.h>
#include <errno.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"

HELLOD_SUITE(systemd);

#define SOCKET_ACTIVATE "/usr/bin/systemd-socket-activate"

/* --- a notification socket, as systemd's NOTIFY_SOCKET -------------------------------- */

typedef struct Notify {
        int fd;
        char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
        char env[sizeof("NOTIFY_SOCKET=") + sizeof(((struct sockaddr_un *) 0)->sun_path)];
        char seen[16384]; /* every message so far, separated by "\n--\n" */
        size_t seen_len;
} Notify;

static void notify_open(Notify *n, const Hellod *d) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };

        memset(n, 0, sizeof(*n));
        cr_assert_lt((size_t) snprintf(n->path, sizeof(n->path), "%s/notify", d->dir), sizeof(n->path));
        memcpy(a.sun_path, n->path, sizeof(n->path));
        cr_assert_lt((size_t) snprintf(n->env, sizeof(n->env), "NOTIFY_SOCKET=%s", n->path), sizeof(n->env));
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(n->fd >= 0);
        cr_assert_eq(bind(n->fd, (struct sockaddr *) &a, sizeof(a)), 0, "bind %s: %s", n->path, strerror(errno));
}

/* notify_wait_within: the next message containing NEEDLE within MS (messages before it are
 * kept in SEEN); notify_wait: within the harness's timeout. */
/* datagram_before: the next datagram on FD into BUF (NUL-terminated), or false once DEADLINE
 * (harness_now_ms()) has passed without one. */
static bool datagram_before(int fd, char *buf, size_t size, int64_t deadline) {
        for (int64_t left; (left = deadline - harness_now_ms()) > 0;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                if (poll(&pfd, 1, (int) left) <= 0)
                        continue;
                ssize_t k = recv(fd, buf, size - 1, MSG_DONTWAIT);
                if (k <= 0)
                        continue;
                buf[k] = '\0';
                return true;
        }
        return false;
}

static const char *notify_wait_within(Notify *n, const char *needle, int ms) {
        static char msg[4096];
        int64_t deadline = harness_now_ms() + ms;

        for (;;) {
                if (!datagram_before(n->fd, msg, sizeof(msg), deadline))
                        cr_assert_fail("no notification with '%s' within %d ms; got:\n%.*s", needle, ms,
                                       (int) n->seen_len, n->seen);
                int m = snprintf(n->seen + n->seen_len, sizeof(n->seen) - n->seen_len, "%s\n--\n", msg);
                if (m > 0 && (size_t) m < sizeof(n->seen) - n->seen_len)
                        n->seen_len += (size_t) m;
                if (strstr(msg, needle))
                        return msg;
        }
}

static const char *notify_wait(Notify *n, const char *needle) {
        return notify_wait_within(n, needle, HARNESS_TIMEOUT_MS);
}

static bool has_line(const char *msg, const char *line) {
        size_t len = strlen(line);

        for (const char *p = strstr(msg, line); p; p = strstr(p + 1, line))
                if ((p == msg || p[-1] == '\n') && (p[len] == '\n' || p[len] == '\0'))
                        return true;
        return false;
}

/* --- socket activation ------------------------------------------------------------------ */

/* Two passed sockets (IPv4 and IPv6, two ports) are served; the config's own address is not
 * bound; a reload keeps the passed sockets. */
Test(systemd, socket_activation_serves_passed_sockets, .timeout = 60) {
        Hellod *d = hellod_new();
        uint16_t v6_port = harness_pick_port(), unused = harness_pick_port();
        char l4[64], l6[64];
        int fd;

        snprintf(l4, sizeof(l4), "127.0.0.1:%u", (unsigned) d->port);
        snprintf(l6, sizeof(l6), "[::1]:%u", (unsigned) v6_port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", l4, "-l", l6, "--fdname=hellod:hellod6", NULL };
        hellod_write_config(d, "listen = [\"127.0.0.1\"];\nport = %u;\n", (unsigned) unused);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);

        fd = client_connect6(v6_port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "over IPv6");
        client_close(fd);
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "over IPv4");
        client_close(fd);
        cr_assert_lt(client_try_connect("127.0.0.1", unused, NULL), 0, "the config's own port was bound");
        /* The config asks for another port: said at warning level, with the fix. */
        hellod_wait_stderr(d, "the sockets do not match 'listen' and 'port'");
        hellod_wait_stderr(d, "systemctl daemon-reload && systemctl restart hellod.socket");

        harness_step("reload keeps the passed sockets");
        hellod_write_config(d, "listen = [\"127.0.0.1\"];\nport = %u;\ngreeting = \"Howdy!\";\n", (unsigned) unused);
        hellod_signal(d, SIGHUP);
        fd = client_connect_greeted("::1", v6_port, NULL, "Howdy!\r\n", HELLOD_GREETING);
        client_close(fd);
        fd = client_connect(d->port);
        client_expect_str(fd, "Howdy!\r\n");
        client_close(fd);
        cr_assert_lt(client_try_connect("127.0.0.1", unused, NULL), 0, "reload bound the config's port");

        hellod_stop_clean(d);
        hellod_free(d);
}

/* expect_match_verdict: the start (and a reload) report sockets matching the config, and
 * never warn that they do not. */
static void expect_match_verdict(Hellod *d) {
        hellod_wait_stderr(d, "as 'listen' and 'port' say");
        char *err = hellod_stderr(d);
        cr_assert_null(strstr(err, "do not match"), "warned about matching sockets:\n%s", err);
        free(err);
}

/* Sockets that are what the config's `listen` and `port` ask for (what hellod-socket-generator
 * makes systemd bind): no warning, at start or on reload. */
Test(systemd, socket_activation_matching_config_is_not_warned_about, .timeout = 60) {
        Hellod *d = hellod_new();
        uint16_t v6_port = harness_pick_port();
        char l4[64], l6[64];

        snprintf(l4, sizeof(l4), "127.0.0.1:%u", (unsigned) d->port);
        snprintf(l6, sizeof(l6), "[::1]:%u", (unsigned) v6_port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", l4, "-l", l6, NULL };
        hellod_write_config(d, "listen = [\"127.0.0.1\", \"[::1]:%u\"];\nport = %u;\n", (unsigned) v6_port,
                            (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        expect_match_verdict(d);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* `ListenStream=PORT` (the packaged hellod.socket) is one dual-stack [::]:PORT socket, which
 * is what the built-in listen default ("0.0.0.0" and "::") asks for; a config that moved to
 * another port, or to 127.0.0.1 only, is warned about on reload. */
Test(systemd, socket_activation_dual_stack_matches_the_default_listen, .timeout = 60) {
        Hellod *d = hellod_new();
        char port[16];

        snprintf(port, sizeof(port), "%u", (unsigned) d->port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", port, NULL };
        hellod_write_config(d, "port = %u;\n", (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        expect_match_verdict(d);

        harness_step("reload with listen = [\"127.0.0.1\"]: warned");
        hellod_write_config(d, "listen = [\"127.0.0.1\"];\nport = %u;\n", (unsigned) d->port);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "the sockets do not match 'listen' and 'port'");
        hellod_wait_stderr(d, "systemd passed [::]:");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* no_ipv6_helper: tests/seccomp/no-ipv6.c, which runs a command as on a host booted with
 * ipv6.disable=1 (socket(AF_INET6) fails with EAFNOSUPPORT), into PATH. */
static void no_ipv6_helper(char *path, size_t size) {
        const char *dir = harness_env_path("HELLOD_TEST_NSS_DIR");

        cr_assert_lt((size_t) snprintf(path, size, "%s/hellod-test-no-ipv6", dir), size);
        cr_assert_eq(access(path, X_OK), 0, "%s: %s", path, strerror(errno));
}

/* On a host without IPv6, `ListenStream=PORT` is one IPv4 socket on 0.0.0.0:PORT, which is all
 * the built-in listen default can have there (outside systemd hellod skips "::" with a warning):
 * no mismatch to warn about, at the start or on reload. It used to want [::]:PORT as well, and
 * told the administrator to restart hellod.socket, which could not change it. */
Test(systemd, socket_activation_without_ipv6_matches_the_default_listen, .timeout = 60) {
        Hellod *d = hellod_new();
        char helper[PATH_MAX], any4[32];

        no_ipv6_helper(helper, sizeof(helper));
        snprintf(any4, sizeof(any4), "0.0.0.0:%u", (unsigned) d->port);
        const char *const wrapper[] = { helper, SOCKET_ACTIVATE, "-l", any4, NULL };
        hellod_write_config(d, "port = %u;\n", (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        expect_match_verdict(d);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded");
        hellod_wait_stderr_count(d, "as 'listen' and 'port' say", 2);
        expect_match_verdict(d);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The packaged unit: hellod.socket passes a dual-stack [::]:PORT, and the service's sandbox
 * (RestrictAddressFamilies=AF_UNIX) fails any socket(AF_INET6) of hellod's own, as a host
 * without IPv6 does: the passed socket is still what the default asks for, with no warning.
 * (The first cut of the test above took that sandbox for a host without IPv6.) */
Test(systemd, socket_activation_in_a_sandbox_without_inet6_matches_the_default_listen, .timeout = 60) {
        Hellod *d = hellod_new();
        char helper[PATH_MAX], port[16];

        no_ipv6_helper(helper, sizeof(helper));
        snprintf(port, sizeof(port), "%u", (unsigned) d->port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", port, helper, NULL };
        hellod_write_config(d, "port = %u;\n", (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        expect_match_verdict(d);
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The same host without systemd: hellod binds 0.0.0.0 and skips "::" with a warning. */
Test(systemd, without_ipv6_the_default_listen_serves_ipv4, .timeout = 60) {
        Hellod *d = hellod_new();
        char helper[PATH_MAX];

        no_ipv6_helper(helper, sizeof(helper));
        const char *const wrapper[] = { helper, NULL };
        hellod_write_config(d, "port = %u;\n", (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        hellod_wait_stderr(d, "IPv6 is not available, not listening on [::]:");
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "v4 only");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* trigger_unix: systemd-socket-activate execs the daemon on the first connection. */
static void trigger_unix(const char *path) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        cr_assert_lt((size_t) snprintf(a.sun_path, sizeof(a.sun_path), "%s", path), sizeof(a.sun_path));
        while (connect(fd, (struct sockaddr *) &a, sizeof(a)) < 0) {
                cr_assert(harness_now_ms() < deadline, "cannot connect to %s: %s", path, strerror(errno));
                harness_sleep_ms(20);
        }
        close(fd);
}

/* A passed socket that is not a listening TCP socket is an error that names it. */
Test(systemd, socket_activation_rejects_a_unix_socket, .timeout = 60) {
        Hellod *d = hellod_new();
        char path[400], *err;
        int status;

        snprintf(path, sizeof(path), "%s/activate.sock", d->dir);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", path, "--fdname=bogus", NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        trigger_unix(path);
        status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        err = hellod_stderr(d);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_FAILURE, "status %d; stderr:\n%s",
                  status, err);
        cr_assert(strstr(err, "descriptor 3") && strstr(err, "'bogus'"), "stderr does not name fd 3 'bogus':\n%s",
                  err);
        free(err);
        hellod_free(d);
}

Test(systemd, socket_activation_rejects_a_datagram_socket, .timeout = 60) {
        Hellod *d = hellod_new();
        char addr[64], *err;
        int status, fd;

        snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned) d->port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "--datagram", "-l", addr, "--fdname=dgram", NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        /* The first datagram makes systemd-socket-activate exec the daemon. */
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(d->port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        for (int i = 0; i < 100 && hellod_alive(d); i++) {
                (void) sendto(fd, "x", 1, 0, (struct sockaddr *) &a, sizeof(a));
                if (strstr(err = hellod_stderr(d), "descriptor")) {
                        free(err);
                        break;
                }
                free(err);
                harness_sleep_ms(50);
        }
        close(fd);
        status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        err = hellod_stderr(d);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_FAILURE, "status %d; stderr:\n%s",
                  status, err);
        cr_assert(strstr(err, "descriptor 3") && strstr(err, "'dgram'"), "stderr:\n%s", err);
        free(err);
        hellod_free(d);
}

/* --- sd_notify ---------------------------------------------------------------------------- */

/* READY=1 with a STATUS=, STATUS= kept current, WATCHDOG=1 pings when WATCHDOG_USEC is set,
 * RELOADING=1 (with MONOTONIC_USEC=) then READY=1 around SIGHUP, STOPPING=1 on SIGTERM. */
Test(systemd, notify_protocol, .timeout = 60) {
        Hellod *d = hellod_new();
        Notify n;
        const char *msg;
        int fd;

        notify_open(&n, d);
        const char *const env[] = { n.env, "WATCHDOG_USEC=400000", NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env });

        msg = notify_wait(&n, "READY=1");
        cr_assert(has_line(msg, "READY=1") && strstr(msg, "STATUS="), "READY without STATUS: %s", msg);
        hellod_wait_ready(d);

        harness_step("watchdog pings");
        notify_wait(&n, "WATCHDOG=1");
        notify_wait(&n, "WATCHDOG=1");

        harness_step("STATUS follows the connections");
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "status");
        client_close(fd);
        /* The readiness probe counts as one served connection too. */
        msg = notify_wait(&n, "2 served");
        cr_assert(strstr(msg, "STATUS=") && strstr(msg, "refused"), "%s", msg);

        harness_step("reload");
        hellod_signal(d, SIGHUP);
        msg = notify_wait(&n, "RELOADING=1");
        cr_assert(strstr(msg, "MONOTONIC_USEC="), "RELOADING=1 without MONOTONIC_USEC: %s", msg);
        msg = notify_wait(&n, "READY=1");

        harness_step("stop");
        hellod_signal(d, SIGTERM);
        notify_wait(&n, "STOPPING=1");
        cr_assert_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        close(n.fd);
        hellod_free(d);
}

/* A reload that fails says so in STATUS= (`systemctl status`), until one succeeds: the
 * `hellod -t` that `systemctl reload` runs first cannot foresee every failure (a file deleted
 * since the start, an address that cannot be bound), and `systemctl reload` then succeeds;
 * STATUS= used to show the counters alone, and only the journal told that the file on disk was
 * not in force. */
Test(systemd, a_failed_reload_shows_in_the_status_until_one_succeeds, .timeout = 60) {
        Hellod *d = hellod_new();
        Notify n;
        const char *msg;

        notify_open(&n, d);
        const char *const env[] = { n.env, NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);

        harness_step("a reload that fails: the file is gone");
        char moved[PATH_MAX];
        (void) snprintf(moved, sizeof(moved), "%s.moved", d->conf_path);
        cr_assert_eq(rename(d->conf_path, moved), 0);
        hellod_signal(d, SIGHUP);
        notify_wait(&n, "RELOADING=1");
        msg = notify_wait(&n, "READY=1");
        cr_assert(strstr(msg, "STATUS=") && strstr(msg, "served") && strstr(msg, "reload failed") &&
                          strstr(msg, "running configuration kept"),
                  "a failed reload's STATUS=: %s", msg);

        harness_step("the counters still refresh it, and it still says so");
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);
        msg = notify_wait(&n, "2 served");
        cr_assert(strstr(msg, "reload failed"), "a refreshed STATUS= forgot the failed reload: %s", msg);

        harness_step("a reload that succeeds clears it");
        cr_assert_eq(rename(moved, d->conf_path), 0);
        hellod_signal(d, SIGHUP);
        notify_wait(&n, "RELOADING=1");
        msg = notify_wait(&n, "READY=1");
        cr_assert(strstr(msg, "STATUS=") && strstr(msg, "served") && !strstr(msg, "reload failed"),
                  "a good reload's STATUS=: %s", msg);

        hellod_signal(d, SIGTERM);
        cr_assert_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        close(n.fd);
        hellod_free(d);
}

/* A stop with clients open tells systemd it may take shutdown_timeout and the cut-off's grace
 * (EXTEND_TIMEOUT_USEC=), so that a shutdown_timeout above the unit's TimeoutStopSec= is not
 * cut short by SIGKILL, as it was: the busy clients lost their ERR line. */
Test(systemd, a_stop_with_clients_open_asks_systemd_for_its_shutdown_timeout, .timeout = 60) {
        Hellod *d = hellod_new();
        Notify n;
        const char *msg;

        notify_open(&n, d);
        const char *const env[] = { n.env, NULL };
        hellod_write_config_std(d, "shutdown_timeout = 120;\nhandover = \"off\";\n");
        hellod_spawn(d, &(HellodOpts) { .env = env });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);

        hellod_signal(d, SIGTERM);
        msg = notify_wait(&n, "EXTEND_TIMEOUT_USEC=");
        unsigned long long usec = strtoull(strstr(msg, "EXTEND_TIMEOUT_USEC=") + strlen("EXTEND_TIMEOUT_USEC="), NULL, 10);
        cr_expect_geq(usec, 120ULL * 1000000u, "systemd was given %llu usec for a shutdown_timeout of 120 s", usec);
        cr_expect_leq(usec, 140ULL * 1000000u, "systemd was given %llu usec for a shutdown_timeout of 120 s", usec);
        client_expect_str(fd, "ERR shutting down\r\n");
        client_close(fd);
        cr_expect_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        close(n.fd);
        hellod_free(d);
}

/* A reload that raises max_connections says that systemd's file descriptor store, which a
 * restart hands the conversations over through, is sized by `systemctl daemon-reload` (the
 * generator's FileDescriptorStoreMax=), not by the reload: beyond it a restart cuts clients.
 * Not said when nothing is handed over (handover = "off"), nor for a lower limit. */
Test(systemd, a_reload_raising_max_connections_says_the_store_needs_a_daemon_reload, .timeout = 60) {
        static const char said[] = "max_connections raised from 100 to 200: a restart hands over";
        Hellod *d = hellod_new();
        Notify n;

        notify_open(&n, d);
        const char *const env[] = { n.env, NULL };
        hellod_write_config_std(d, "max_connections = 100;\n");
        hellod_spawn(d, &(HellodOpts) { .env = env });
        notify_wait(&n, "READY=1");

        harness_step("raised");
        hellod_write_config_std(d, "max_connections = 200;\n");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, said);
        /* 200 + 64, and 200 more lingering closes for a thread per connection (dropin.h). */
        hellod_wait_stderr(d, harness_model_is("per-connection")
                                      ? "`systemctl daemon-reload` sizes it (FileDescriptorStoreMax=464)"
                                      : "`systemctl daemon-reload` sizes it (FileDescriptorStoreMax=264)");

        harness_step("lowered, then raised with handover = \"off\"");
        hellod_write_config_std(d, "max_connections = 100;\n");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr_count(d, "configuration reloaded from", 2);
        hellod_write_config_std(d, "max_connections = 200;\nhandover = \"off\";\n");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr_count(d, "configuration reloaded from", 3);
        cr_expect_eq(hellod_count_in_stderr(d, "max_connections raised"), 1, "said again where nothing is handed over");
        hellod_signal(d, SIGTERM);
        cr_expect_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        close(n.fd);
        hellod_free(d);
}

/* --- the watchdog answers for the engine ------------------------------------------------ */

/* Wedged: stops (ptrace, PTRACE_INTERRUPT) the first of hellod's event loops, or, with a thread
 * per connection, every thread but the main one (the threads that wait for clients), as a
 * deadlock or a write to a stalled journal would. Their tids are kept for thaw. The main thread
 * runs on: only it sends WATCHDOG=1. */
typedef struct Wedged {
        pid_t tids[64];
        int n;
} Wedged;

static void wedge_thread(Wedged *w, pid_t tid) {
        int status;

        cr_assert_lt(w->n, (int) (sizeof(w->tids) / sizeof(w->tids[0])));
        cr_assert_eq(ptrace(PTRACE_SEIZE, tid, NULL, NULL), 0, "PTRACE_SEIZE %d: %s", (int) tid, strerror(errno));
        cr_assert_eq(ptrace(PTRACE_INTERRUPT, tid, NULL, NULL), 0, "PTRACE_INTERRUPT: %s", strerror(errno));
        cr_assert_eq(waitpid(tid, &status, __WALL), tid, "waitpid %d: %s", (int) tid, strerror(errno));
        cr_assert(WIFSTOPPED(status), "thread %d: status %d", (int) tid, status);
        w->tids[w->n++] = tid;
}

static void wedge_engine(Wedged *w, pid_t pid) {
        char path[64], comm[64];
        struct dirent *e;
        DIR *dir;
        bool loops = harness_proc_thread_count(pid, "hellod-loop") > 0;

        w->n = 0;
        (void) snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        cr_assert((dir = opendir(path)) != NULL, "%s: %s", path, strerror(errno));
        while ((e = readdir(dir)) != NULL && !(loops && w->n == 1)) {
                pid_t tid = (pid_t) atoi(e->d_name);
                FILE *f;

                if (tid <= 0 || tid == pid)
                        continue;
                (void) snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", (int) pid, (int) tid);
                if (!(f = fopen(path, "re")))
                        continue; /* the thread has exited */
                bool named = fgets(comm, sizeof(comm), f) != NULL;
                (void) fclose(f);
                if (!named || (loops && strncmp(comm, "hellod-loop", 11) != 0) || strncmp(comm, "iou-", 4) == 0)
                        continue;
                wedge_thread(w, tid);
        }
        closedir(dir);
        cr_assert_gt(w->n, 0, "no engine thread of hellod %d found", (int) pid);
}

static void thaw_engine(Wedged *w) {
        for (int i = 0; i < w->n; i++)
                cr_assert_eq(ptrace(PTRACE_DETACH, w->tids[i], NULL, NULL), 0, "PTRACE_DETACH: %s", strerror(errno));
        w->n = 0;
}

/* notify_count_within: how many messages with LINE come within MS. */
static int notify_count_within(Notify *n, const char *line, int ms) {
        char msg[4096];
        int64_t deadline = harness_now_ms() + ms;
        int count = 0;

        while (datagram_before(n->fd, msg, sizeof(msg), deadline))
                count += has_line(msg, line);
        return count;
}

/* The watchdog stands for the threads that serve, not for the main thread alone: with an event
 * loop (or every thread that waits for clients) stopped, WATCHDOG=1 stops too, and systemd
 * restarts the daemon; once the thread runs again, so do the pings. (The pings once came from the
 * main loop whatever the engine did: a wedged loop kept its clients waiting for ever.) */
Test(systemd, watchdog_stops_while_the_engine_is_wedged, .timeout = 60) {
        Hellod *d = hellod_new();
        Wedged w;
        Notify n;

        notify_open(&n, d);
        const char *const env[] = { n.env, "WATCHDOG_USEC=400000", NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);
        notify_wait(&n, "WATCHDOG=1");

        harness_step("an engine thread stopped: once the daemon says so, no ping");
        wedge_engine(&w, d->pid);
        /* Logged by the main thread after the ping it sent last (if any): queued by then. */
        hellod_wait_stderr(d, "no watchdog ping until it does");
        (void) notify_count_within(&n, "WATCHDOG=1", 20);
        int pings = notify_count_within(&n, "WATCHDOG=1", 1600), wedged = w.n;
        thaw_engine(&w); /* first: a failed assertion would leave the daemon stopped */
        cr_assert_eq(pings, 0, "%d WATCHDOG=1 in 1.6 s (4 intervals) with %d engine thread(s) stopped", pings, wedged);

        harness_step("running again: the pings resume");
        notify_wait(&n, "WATCHDOG=1");
        hellod_wait_stderr(d, "watchdog pings resumed");
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "awake");
        client_close(fd);
        hellod_stop_clean(d);
        close(n.fd);
        hellod_free(d);
}

/* STATUS= still follows the connections after the process ran out of descriptors: the
 * server thread is woken by every change, before, during and after the episode. (A misplaced
 * edit once lost the wake-up at the first EMFILE: STATUS= froze at the figures of the
 * episode.) */
Test(systemd, status_follows_connections_after_descriptors_ran_out, .timeout = 60) {
        enum { CLIENTS = 120, NOFILE = 64 };
        Hellod *d = hellod_new();
        unsigned active = 1;
        unsigned long served = 0, refused = 0;
        int fds[CLIENTS];
        Notify n;

        harness_raise_nofile();
        notify_open(&n, d);
        const char *const env[] = { n.env, NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env, .nofile = NOFILE });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);

        harness_step("%d clients against RLIMIT_NOFILE = %d", CLIENTS, NOFILE);
        for (int i = 0; i < CLIENTS; i++)
                fds[i] = client_connect(d->port);
        for (int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;;) {
                char *err = hellod_stderr(d);
                bool exhausted = strstr(err, "cannot accept connections") != NULL;
                free(err);
                if (exhausted)
                        break;
                if (harness_now_ms() > deadline)
                        hellod_fail(d, "no \"cannot accept connections\" with %d clients and RLIMIT_NOFILE = %d",
                                    CLIENTS, NOFILE);
                harness_sleep_ms(20);
        }

        harness_step("every client leaves: STATUS= comes back to 0 active, all counted");
        for (int i = 0; i < CLIENTS; i++)
                client_close(fds[i]);
        while (active != 0 || served + refused < CLIENTS + 1) { /* + the readiness probe */
                const char *msg = strstr(notify_wait(&n, "STATUS="), "STATUS=");
                cr_assert_eq(sscanf(msg, "STATUS=%u active, %lu served, %lu refused", &active, &served, &refused), 3,
                             "%s", msg);
        }

        harness_step("and goes on following them");
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, HELLOD_ERR_BUSY);
        client_hello(fd, "after");
        client_close(fd);
        unsigned long before = served;
        while (active != 0 || served <= before) {
                const char *msg = strstr(notify_wait(&n, "STATUS="), "STATUS=");
                cr_assert_eq(sscanf(msg, "STATUS=%u active, %lu served, %lu refused", &active, &served, &refused), 3,
                             "%s", msg);
        }
        hellod_stop_clean(d);
        close(n.fd);
        hellod_free(d);
}

/* Without NOTIFY_SOCKET the notifications are no-ops: nothing breaks. */
Test(systemd, no_notify_socket_is_harmless, .timeout = 60) {
        const char *const env[] = { "WATCHDOG_USEC=100000", NULL };
        Hellod *d = hellod_new();
        int fd;

        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env });
        hellod_wait_ready(d);
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "plain");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --- name lookups during a reload ------------------------------------------------------ */

/* A name server that takes queries and answers none: a UDP socket on port 53 of a loopback
 * address of its own, and a resolv.conf naming it (with OPTIONS) that hellod sees in place of
 * /etc/resolv.conf, in a mount namespace of its own (WRAPPER). The lookups are glibc's own,
 * as a host whose name server went away makes them. */
typedef struct SilentResolver {
        int fd;
        char conf_path[320];
        const char *wrapper[9];
} SilentResolver;

/* bound_over_wrapper: WRAPPER (9 entries, the last NULL) runs hellod in a mount namespace of its own, where
 * the file PATH is seen in place of TARGET. */
static void bound_over_wrapper(const char **wrapper, const char *path, const char *target) {
        const char *argv[] = { "/usr/bin/unshare", "--mount", "--", "/bin/sh", "-c",
                               "mount --bind \"$0\" \"$1\" && shift && exec \"$@\"", path, target, NULL };

        memcpy(wrapper, argv, sizeof(argv));
}

/* resolver_premises: what the silent name server needs of this host, said plainly. */
static void resolver_premises(void) {
        char *nss = harness_read_file("/etc/nsswitch.conf", NULL); /* fails the test when missing */
        const char *hosts = strncmp(nss, "hosts:", 6) == 0 ? nss : strstr(nss, "\nhosts:");
        bool dns = false, resolve = false;

        cr_assert_eq(access("/etc/resolv.conf", F_OK), 0,
                     "/etc/resolv.conf is missing (%s): the test binds its own over it", strerror(errno));
        if (hosts) {
                char line[512];
                snprintf(line, sizeof(line), "%.*s", (int) strcspn(hosts + 1, "\n"), hosts + (hosts != nss));
                for (char *save = NULL, *w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
                        dns |= strcmp(w, "dns") == 0;
                        resolve |= strcmp(w, "resolve") == 0;
                }
        }
        cr_assert(dns && !resolve,
                  "/etc/nsswitch.conf's hosts: line must ask dns (resolv.conf's name servers), not resolve "
                  "(systemd-resolved's): %s", nss);
        free(nss);
}

static void silent_resolver_open(SilentResolver *r, const Hellod *d, const char *options) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(53) };
        char resolv[256];
        unsigned seed = (unsigned) getpid() ^ (unsigned) harness_now_us();
        int tries = 0, bound;

        resolver_premises();
        r->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(r->fd >= 0, "socket: %s", strerror(errno));
        /* 127.53.0.0/16, clear of the harness's client addresses; another run may hold one. */
        do {
                a.sin_addr.s_addr = htonl(0x7f350000u | (uint32_t) (1 + rand_r(&seed) % 65000));
                bound = bind(r->fd, (struct sockaddr *) &a, sizeof(a));
        } while (bound < 0 && errno == EADDRINUSE && ++tries < 100);
        cr_assert_eq(bound, 0, "no free port 53 on 127.53.0.0/16 (a name server bound to 0.0.0.0:53?): %s",
                     strerror(errno));
        int len = snprintf(resolv, sizeof(resolv), "nameserver %s\noptions %s\n",
                           inet_ntoa(a.sin_addr), options);
        cr_assert(len > 0 && (size_t) len < sizeof(resolv));
        cr_assert_lt((size_t) snprintf(r->conf_path, sizeof(r->conf_path), "%s/resolv.conf", d->dir),
                     sizeof(r->conf_path));
        harness_write_file(r->conf_path, resolv, (size_t) len);
        bound_over_wrapper(r->wrapper, r->conf_path, "/etc/resolv.conf");
}

/* The name hellod is asked to listen on: not in /etc/hosts, so asked of the name server. */
#define UNANSWERED_NAME "hellod-lookup.test"

/* reload_stuck_on_a_lookup: D, started with N's notification socket and WATCHDOG_USEC of 1 s,
 * reloads the file just written, whose lookup gets no answer: clients are served while it
 * waits, the watchdog is fed all the while (systemd kills a daemon that stops pinging,
 * WatchdogSec= in the unit), and hellod gives up on its own after 30 s however long the
 * lookup would go on, with FAILURE logged and the running configuration kept. */
static void reload_stuck_on_a_lookup(Hellod *d, Notify *n, const char *failure) {
        int fd, pings = 0;

        hellod_signal(d, SIGHUP);
        notify_wait(n, "RELOADING=1");
        hellod_wait_stderr(d, "reloading configuration");

        harness_step("a client is served while the reload waits");
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        client_hello(fd, "during the lookup");
        client_close(fd);

        harness_step("pings until the reload gives up (hellod's bound: 30 s)");
        for (;;) {
                const char *msg = notify_wait_within(n, "=1", 60000);
                if (has_line(msg, "WATCHDOG=1"))
                        pings++;
                if (has_line(msg, "READY=1"))
                        break;
        }
        /* Twice a WatchdogSec= of 1 s, over 30 s: about 60. Without pings, systemd kills. */
        cr_assert_geq(pings, 10, "%d watchdog pings while the reload waited 30 s", pings);
        hellod_wait_stderr(d, "reload failed, keeping the running configuration");
        char *err = hellod_stderr(d);
        cr_assert(strstr(err, failure), "no '%s' in: %s", failure, err);
        free(err);

        harness_step("the running configuration serves");
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        client_hello(fd, "after");
        client_close(fd);
}

/* A reload whose listen address is a name the name server never answers (told to try for
 * 5 × 30 s): see reload_stuck_on_a_lookup. */
Test(systemd, a_reload_stuck_on_a_name_lookup_feeds_the_watchdog_and_gives_up, .timeout = 120) {
        Hellod *d = hellod_new();
        SilentResolver resolver;
        Notify n;

        silent_resolver_open(&resolver, d, "timeout:30 attempts:5");
        notify_open(&n, d);
        const char *const env[] = { n.env, "WATCHDOG_USEC=1000000", NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env, .wrapper = resolver.wrapper });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);

        harness_step("reload with a listen name the name server never answers");
        hellod_write_config(d, "listen = [ \"127.0.0.1\", \"" UNANSWERED_NAME "\" ];\nport = %u;\n",
                            (unsigned) d->port);
        reload_stuck_on_a_lookup(d, &n, "hellod.conf:1: listen: cannot resolve listen address '" UNANSWERED_NAME
                                        "': no answer within 30 s");
        hellod_stop_clean(d);
        close(n.fd);
        close(resolver.fd);
        hellod_free(d);
}

/* check_and_start_exit_1: `hellod -t`, then a start, each run with OPTS, exit 1 (runtime
 * failure) saying EXPECTED. */
static void check_and_start_exit_1(Hellod *d, const HellodOpts *opts, const char *expected) {
        const char *const check[] = { "-t", NULL };

        for (int i = 0; i < 2; i++) {
                HellodOpts run = *opts;
                harness_step("%s", i == 0 ? "hellod -t" : "hellod");
                run.extra_args = i == 0 ? check : NULL;
                hellod_spawn(d, &run);
                int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
                char *err = hellod_stderr(d);
                cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_FAILURE, "status %d: %s", status, err);
                cr_assert(strstr(err, expected), "no '%s' in: %s", expected, err);
                free(err);
        }
}

/* A listen name that gets no answer (the name server timed out), at the start: the check and
 * the start say so and exit 1, not 78: the file is not at fault, and 78 would keep systemd
 * from restarting hellod (RestartPreventExitStatus=78 in the unit). */
Test(systemd, a_listen_name_without_an_answer_is_no_configuration_error, .timeout = 60) {
        Hellod *d = hellod_new();
        SilentResolver resolver;

        silent_resolver_open(&resolver, d, "timeout:1 attempts:1");
        hellod_write_config(d, "listen = [ \"" UNANSWERED_NAME "\" ];\nport = %u;\n", (unsigned) d->port);
        check_and_start_exit_1(d, &(HellodOpts) { .wrapper = resolver.wrapper },
                               "hellod.conf:1: listen: cannot resolve listen address '" UNANSWERED_NAME "': ");
        close(resolver.fd);
        hellod_free(d);
}

/* Under socket activation the addresses are systemd's (hellod-socket-generator writes
 * `listen` into hellod.socket, and refuses host names there): a name that cannot be resolved
 * (the packaged unit's sandbox has no network) only leaves hellod nothing to compare the passed
 * sockets with. It serves them with a warning, at the start and at each reload, as it does
 * when they differ. It used to fail its start (exit 1), and systemd restarted it until the
 * start limit took hellod.socket down with it. */
Test(systemd, a_listen_name_without_an_answer_under_socket_activation_serves_the_passed_sockets, .timeout = 60) {
        static const char cannot[] = "socket-activated: cannot compare the passed sockets with 'listen' and 'port'";
        static const char why[] = "hellod.conf:1: listen: cannot resolve listen address '" UNANSWERED_NAME "': ";
        Hellod *d = hellod_new();
        SilentResolver resolver;
        const char *wrapper[12];
        char stream[32];
        int fd;

        silent_resolver_open(&resolver, d, "timeout:1 attempts:1");
        snprintf(stream, sizeof(stream), "127.0.0.1:%u", (unsigned) d->port);
        memcpy(wrapper, resolver.wrapper, 8 * sizeof(*wrapper)); /* its 9th entry is the NULL */
        wrapper[8] = "/usr/bin/systemd-socket-activate";
        wrapper[9] = "-l";
        wrapper[10] = stream;
        wrapper[11] = NULL;
        hellod_write_config(d, "listen = [ \"" UNANSWERED_NAME "\" ];\nport = %u;\n", (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d); /* systemd-socket-activate starts hellod on the first connection */
        hellod_wait_stderr(d, cannot);
        hellod_wait_stderr(d, why);
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        client_hello(fd, "started");

        harness_step("a reload");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded from");
        hellod_wait_stderr_count(d, cannot, 2);
        hellod_wait_stderr_count(d, why, 2);
        client_hello(fd, "reloaded");
        client_close(fd);
        hellod_stop_clean(d);
        close(resolver.fd);
        hellod_free(d);
}

/* stop_during_a_stuck_reload: D (notifying N) reloads the file just written, whose lookup gets
 * no answer, and is sent SIGTERM meanwhile: it stops cleanly, well inside hellod's own 30 s
 * bound on the lookup, the reload abandoned with ABANDONED logged, not failed; and it tells
 * systemd the reload is over (READY=1, as sd_notify(3) wants after RELOADING=1) before
 * STOPPING=1: it sent none, and left systemd to take the unit for still reloading. */
static void stop_during_a_stuck_reload(Hellod *d, Notify *n, const char *abandoned) {
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "reloading configuration");
        notify_wait(n, "RELOADING=1");
        size_t reloading = n->seen_len;
        hellod_signal(d, SIGTERM);
        cr_assert_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        char *err = hellod_stderr(d);
        cr_assert(strstr(err, "reload abandoned, hellod is stopping: ") && strstr(err, abandoned), "%s", err);
        cr_assert_null(strstr(err, "reload failed"), "%s", err);
        free(err);
        notify_wait(n, "STOPPING=1");
        const char *after = n->seen + reloading, *ready = strstr(after, "READY=1"), *stopping = strstr(after, "STOPPING=1");
        cr_assert(ready && ready < stopping, "no READY=1 between RELOADING=1 and STOPPING=1:\n%s", after);
}

/* SIGTERM during a reload stuck on a name lookup: hellod stops at once, the reload abandoned,
 * not when the lookup ends (systemctl stop would otherwise wait it out). */
Test(systemd, a_stop_during_a_stuck_name_lookup_is_not_held_up, .timeout = 120) {
        Hellod *d = hellod_new();
        SilentResolver resolver;
        Notify n;

        silent_resolver_open(&resolver, d, "timeout:30 attempts:5");
        notify_open(&n, d);
        const char *const env[] = { n.env, NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env, .wrapper = resolver.wrapper });
        hellod_wait_ready(d);

        hellod_write_config(d, "listen = [ \"127.0.0.1\", \"" UNANSWERED_NAME "\" ];\nport = %u;\n",
                            (unsigned) d->port);
        stop_during_a_stuck_reload(d, &n, "cannot resolve listen address '" UNANSWERED_NAME "': lookup given up");
        close(n.fd);
        close(resolver.fd);
        hellod_free(d);
}

/* --- user and group lookups during a reload ------------------------------------------- */

/* A directory (LDAP, sssd) that went away: tests/nss's module, asked after /etc/passwd and
 * /etc/group by an nsswitch.conf that hellod sees in place of /etc/nsswitch.conf (WRAPPER, ENV:
 * LD_LIBRARY_PATH naming the module's directory). A name it is asked for blocks its lookup for
 * good, but one starting with "hellod-unavail", which fails at once (EIO). */
typedef struct SilentDirectory {
        char conf_path[320], library_path[PATH_MAX + 32];
        const char *wrapper[9];
        const char *env[2]; /* LIBRARY_PATH alone, for HellodOpts.env */
} SilentDirectory;

static void silent_directory_open(SilentDirectory *sd, const Hellod *d) {
        static const char nss[] = "passwd: files hellodstall\ngroup: files hellodstall\nhosts: files\n";
        const char *dir = harness_env_path("HELLOD_TEST_NSS_DIR");
        char module[PATH_MAX];

        /* nscd answers before nsswitch.conf is read, from the host's configuration */
        cr_assert_neq(access("/run/nscd/socket", F_OK), 0,
                      "nscd runs (/run/nscd/socket): it would answer in place of the test's nsswitch.conf");

        cr_assert_lt((size_t) snprintf(module, sizeof(module), "%s/libnss_hellodstall.so.2", dir), sizeof(module));
        cr_assert_eq(access(module, R_OK), 0, "%s: %s", module, strerror(errno));
        cr_assert_lt((size_t) snprintf(sd->library_path, sizeof(sd->library_path), "LD_LIBRARY_PATH=%s", dir),
                     sizeof(sd->library_path));
        cr_assert_lt((size_t) snprintf(sd->conf_path, sizeof(sd->conf_path), "%s/nsswitch.conf", d->dir),
                     sizeof(sd->conf_path));
        harness_write_file(sd->conf_path, nss, sizeof(nss) - 1);
        bound_over_wrapper(sd->wrapper, sd->conf_path, "/etc/nsswitch.conf");
        sd->env[0] = sd->library_path;
        sd->env[1] = NULL;
}

/* The user hellod is asked to run as: in no file, so asked of the directory. */
#define UNANSWERED_USER "hellod-stuck"

/* A reload whose user the directory never answers: see reload_stuck_on_a_lookup. */
Test(systemd, a_reload_stuck_on_a_user_lookup_feeds_the_watchdog_and_gives_up, .timeout = 120) {
        Hellod *d = hellod_new();
        SilentDirectory directory;
        Notify n;

        silent_directory_open(&directory, d);
        notify_open(&n, d);
        const char *const env[] = { n.env, "WATCHDOG_USEC=1000000", directory.library_path, NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env, .wrapper = directory.wrapper });
        notify_wait(&n, "READY=1");
        hellod_wait_ready(d);

        harness_step("reload with a user the directory never answers");
        hellod_write_config_std(d, "user = \"" UNANSWERED_USER "\";\n");
        reload_stuck_on_a_lookup(d, &n, "hellod.conf:3: user: cannot look user '" UNANSWERED_USER
                                        "' up: no answer within 30 s");
        hellod_stop_clean(d);
        close(n.fd);
        hellod_free(d);
}

/* SIGTERM during a reload stuck on the user's lookup: hellod stops at once. */
Test(systemd, a_stop_during_a_stuck_user_lookup_is_not_held_up, .timeout = 120) {
        Hellod *d = hellod_new();
        SilentDirectory directory;
        Notify n;

        silent_directory_open(&directory, d);
        notify_open(&n, d);
        const char *const env[] = { directory.env[0], n.env, NULL };
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .env = env, .wrapper = directory.wrapper });
        hellod_wait_ready(d);

        hellod_write_config_std(d, "user = \"" UNANSWERED_USER "\";\ngroup = \"nogroup\";\n");
        stop_during_a_stuck_reload(d, &n, "user: cannot look user '" UNANSWERED_USER "' and group 'nogroup' up: "
                                      "lookup given up");
        close(n.fd);
        hellod_free(d);
}

/* A SIGHUP while the start still looks its user up (tests/nss answers "hellod-slow" after 2 s;
 * a slow directory can take up to hellod's 30 s bound): it used to end hellod at once, by the
 * signal's default action, with nothing logged. It is held now, and is a reload once hellod
 * has started. */
Test(systemd, a_reload_asked_for_during_the_start_is_done_after_it, .timeout = 60) {
        Hellod *d = hellod_new();
        SilentDirectory directory;
        int waited_ms = 0;

        silent_directory_open(&directory, d);
        hellod_write_config_std(d, "user = \"hellod-slow\";\n");
        hellod_spawn(d, &(HellodOpts) { .env = directory.env, .wrapper = directory.wrapper });
        harness_step("SIGHUP while the start looks the user up");
        while (harness_proc_thread_count(d->pid, "hellod-lookup") < 1) {
                cr_assert(hellod_alive(d) && waited_ms < HARNESS_TIMEOUT_MS, "no lookup thread seen in hellod");
                usleep(10 * 1000);
                waited_ms += 10;
        }
        hellod_signal(d, SIGUSR1); /* held too, and then ignored: it ended the start */
        hellod_signal(d, SIGHUP);
        hellod_wait_ready(d);
        char *err = hellod_stderr(d);
        cr_assert(strstr(err, "running as root: 'user' is root") != NULL, "stderr:\n%s", err); /* hellod-slow is uid 0 */
        free(err);
        hellod_wait_stderr(d, "configuration reloaded");
        hellod_wait_stderr(d, "received SIGUSR1, ignoring it");
        int fd = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, NULL);
        client_hello(fd, "after the reload");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* write_in_place: TEXT into the file PATH, the same file (a bind mount of it shows the new text;
 * harness_write_file() puts a new file in its place). */
static void write_in_place(const char *path, const char *text) {
        FILE *f = fopen(path, "w");

        cr_assert_not_null(f, "%s: %s", path, strerror(errno));
        cr_assert_geq(fputs(text, f), 0);
        cr_assert_eq(fclose(f), 0);
}

/* workers = "auto" is one loop per CPU online at the start (glibc reads the count from
 * /sys/devices/system/cpu/online, here a file of the test's in hellod's mount namespace). A
 * reload after a CPU went offline keeps the running loops, and used to warn of a change of
 * 'workers' that the file never made, and then to say nothing of a real change of
 * worker_stack_size. */
Test(systemd, a_reload_after_the_cpus_changed_is_no_change_of_workers, .timeout = 60) {
        Hellod *d = hellod_new();
        const char *wrapper[9];
        char online[320];

        cr_assert_lt((size_t) snprintf(online, sizeof(online), "%s/online", d->dir), sizeof(online));
        write_in_place(online, "0-1\n");
        bound_over_wrapper(wrapper, online, "/sys/devices/system/cpu/online");
        hellod_write_config_std(d, "workers = \"auto\";\n");
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        hellod_wait_stderr(d, "a pool of 2 event loops");

        harness_step("CPU 1 offline, and a reload that changes worker_stack_size");
        write_in_place(online, "0\n");
        hellod_write_config_std(d, "workers = \"auto\";\nworker_stack_size = 262144;\n");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded");
        char *err = hellod_stderr(d);
        cr_expect_null(strstr(err, "a change of 'workers'"), "stderr:\n%s", err);
        cr_expect(strstr(err, "a change of 'worker_stack_size' takes effect for the event loops"), "stderr:\n%s", err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A directory that fails (EIO) at the start: the check and the start exit 1, not 78, as for a
 * name server without an answer (the file is not at fault). */
Test(systemd, a_failing_directory_is_no_configuration_error, .timeout = 60) {
        Hellod *d = hellod_new();
        SilentDirectory directory;

        silent_directory_open(&directory, d);
        hellod_write_config_std(d, "user = \"root\";\ngroup = \"hellod-unavail-group\";\n");
        check_and_start_exit_1(d, &(HellodOpts) { .env = directory.env, .wrapper = directory.wrapper },
                               "hellod.conf:4: group: cannot look group 'hellod-unavail-group' up: Input/output error");
        hellod_free(d);
}

/* --- log targets -------------------------------------------------------------------------- */

static char *run_briefly(const char *const *args, const char *const *env) {
        Hellod *d = hellod_new();
        char *err;

        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .extra_args = args, .env = env });
        hellod_wait_ready(d);
        hellod_stop_clean(d);
        err = hellod_stderr(d);
        hellod_free(d);
        return err;
}

Test(systemd, stderr_target_under_systemd_uses_priority_prefixes, .timeout = 60) {
        const char *const args[] = { "--log-target=stderr", NULL };
        const char *const env[] = { "INVOCATION_ID=0123456789abcdef0123456789abcdef", NULL };
        char *err = run_briefly(args, env);

        /* notice is priority 5; no timestamp, the journal adds its own. */
        cr_assert(strncmp(err, "<5>hellod ", 10) == 0 || strstr(err, "\n<5>hellod "), "stderr:\n%s", err);
        cr_assert_null(strstr(err, "notice:"), "stderr:\n%s", err);
        free(err);
}

/* `hellod -t` as ExecReload= runs it, its stderr the journal stream: the words a person
 * reads, behind the priority prefix journald reads. Without it the check's errors reached the
 * journal at priority 6 (info), and `journalctl -p err` did not show why a reload was refused. */
Test(systemd, a_check_whose_stderr_is_the_journal_keeps_its_priorities, .timeout = 60) {
        Hellod *d = hellod_new();
        char path[512], cmd[2048];

        hellod_write_config(d, "idle_timeout = -1;\n");
        snprintf(path, sizeof(path), "%s/check.err", d->dir);
        snprintf(cmd, sizeof(cmd),
                 ": >'%s' && JOURNAL_STREAM=$(stat -c %%d:%%i '%s') '%s' -t -c '%s' 2>>'%s'; test $? = 78", path,
                 path, harness_env_path("HELLOD_BIN"), d->conf_path, path);
        harness_shell(cmd);
        char *err = harness_read_file(path, NULL);
        cr_assert_not_null(err);
        cr_expect(strncmp(err, "<3>hellod: ", 11) == 0, "stderr:\n%s", err);
        cr_expect(strstr(err, ":1: idle_timeout"), "stderr:\n%s", err);
        free(err);
        hellod_free(d);
}

Test(systemd, auto_target_with_a_foreign_journal_stream_stays_on_stderr, .timeout = 60) {
        const char *const env[] = { "JOURNAL_STREAM=1:1", NULL };
        char *err = run_briefly(NULL, env);

        /* stderr is a file here, not the journal stream named: stderr, with prefixes. */
        cr_assert_not_null(strstr(err, "<5>hellod "), "stderr:\n%s", err);
        free(err);
}

Test(systemd, plain_stderr_outside_systemd, .timeout = 60) {
        const char *const args[] = { "--log-target=auto", NULL };
        char *err = run_briefly(args, NULL);

        cr_assert_not_null(strstr(err, " notice: hellod "), "stderr:\n%s", err);
        cr_assert_null(strstr(err, "<5>"), "stderr:\n%s", err);
        free(err);
}

/* journal_entry_with: the next datagram on the journal socket FD (native protocol, text fields)
 * with the line NEEDLE, within the harness's timeout; into BUF. */
static const char *journal_entry_with(int fd, const char *needle, char *buf, size_t size) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;

        while (datagram_before(fd, buf, size, deadline))
                if (has_line(buf, needle))
                        return buf;
        cr_assert_fail("no journal entry with the line '%s'", needle);
        return NULL;
}

/* The journal fields carry their whole value: a configuration path of 300 bytes is the
 * HELLOD_CONFIG= of the start's entry, and the listeners' HELLOD_LISTEN= too. Fields were cut
 * at 255 bytes, so `journalctl HELLOD_CONFIG=PATH` missed the entries of a long path. hellod
 * logs to a journal socket of the test's, mounted at /run/systemd in a mount namespace of its
 * own (unshare, as root). */
Test(systemd, journal_fields_are_never_cut, .timeout = 60) {
        /* A tmpfs over /run first: a machine without systemd may have no /run/systemd. */
        static const char script[] = "mount -t tmpfs tmpfs /run && mkdir /run/systemd && mount --bind \"$1\" /run/systemd "
                                     "&& bin=$3 && exec \"$bin\" --config \"$2\" --log-target=journal";
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        char run[300], conf[400], line[600], entry[8192];
        Hellod *d = hellod_new();
        int fd;

        snprintf(run, sizeof(run), "%s/run-systemd", d->dir);
        cr_assert_eq(mkdir(run, 0755), 0, "mkdir %s: %s", run, strerror(errno));
        cr_assert_lt((size_t) snprintf(a.sun_path, sizeof(a.sun_path), "%s/journal", run), 80u);
        cr_assert_eq(mkdir(a.sun_path, 0755), 0, "mkdir %s: %s", a.sun_path, strerror(errno));
        strcat(a.sun_path, "/socket");
        cr_assert((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) >= 0);
        cr_assert_eq(bind(fd, (struct sockaddr *) &a, sizeof(a)), 0, "bind %s: %s", a.sun_path, strerror(errno));
        int n = snprintf(conf, sizeof(conf), "%s", d->dir);
        for (int level = 0; level < 2; level++) { /* two directories of 150 bytes, then the file */
                conf[n++] = '/';
                for (int i = 0; i < 150; i++)
                        conf[n++] = 'c';
                conf[n] = '\0';
                cr_assert_eq(mkdir(conf, 0755), 0, "mkdir %s: %s", conf, strerror(errno));
        }
        strcat(conf, "/hellod.conf");
        int len = snprintf(line, sizeof(line), "listen = [ \"127.0.0.1\" ];\nport = %u;\n", (unsigned) d->port);
        harness_write_file(conf, line, (size_t) len);

        const char *const wrapper[] = { "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                                        script, "sh", run, conf, NULL };
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        snprintf(line, sizeof(line), "HELLOD_CONFIG=%s", conf);
        const char *msg = journal_entry_with(fd, line, entry, sizeof(entry));
        snprintf(line, sizeof(line), "HELLOD_LISTEN=127.0.0.1:%u", (unsigned) d->port);
        cr_assert(has_line(msg, line), "%s", msg);
        cr_assert(has_line(msg, "SYSLOG_IDENTIFIER=hellod") && strstr(msg, "MESSAGE=hellod "), "%s", msg);
        hellod_stop_clean(d);
        close(fd);
        hellod_free(d);
}

Test(systemd, bad_log_target_is_a_usage_error, .timeout = 60) {
        Hellod *d = hellod_new();
        const char *const args[] = { "--log-target=syslog", NULL }; /* hellod_run() puts hellod in front */
        int status = hellod_run(d, args);
        char *err = hellod_stderr(d);

        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_USAGE, "status %d", status);
        cr_assert(strstr(err, "invalid log target 'syslog'"), "%s", err);
        free(err);
        hellod_free(d);
}

/* What `ListenStream=9999` creates is one dual-stack [::] socket: IPv4 clients arrive as
 * ::ffff:a.b.c.d and must be logged and limited as the plain IPv4 address they are. */
Test(systemd, dual_stack_socket_sees_plain_ipv4, .timeout = 60) {
        Hellod *d = hellod_new();
        char addr[64], needle[64], *err;
        int first, second;

        snprintf(addr, sizeof(addr), "[::]:%u", (unsigned) d->port);
        const char *const wrapper[] = { SOCKET_ACTIVATE, "-l", addr, "--fdname=hellod", NULL };
        hellod_write_config_std(d, "max_connections_per_ip = 1;\n");
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);

        first = client_connect_greeted("127.0.0.1", d->port, NULL, HELLOD_GREETING, HELLOD_ERR_BUSY);
        second = client_connect(d->port);
        client_expect_str(second, HELLOD_ERR_BUSY);
        client_expect_eof(second, false);
        client_close(second);
        client_hello(first, "v4 over dual stack");
        client_close(first);

        snprintf(needle, sizeof(needle), "refused 127.0.0.1:");
        hellod_wait_stderr(d, needle);
        err = hellod_stderr(d);
        cr_assert_null(strstr(err, "::ffff:"), "an IPv4 client was logged as IPv4-mapped IPv6:\n%s", err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}
