/* test-haproxy: Debian's real HAProxy on loopback in front of two hellod instances, as the
 * scale-out guide (docs/scale-out.md) sets it up: PROXY listeners fed send-proxy and
 * send-proxy-v2, round robin, a tcp-check that expects the greeting, a stats socket, and TLS
 * terminated by HAProxy with a certificate the test makes. Clients come from their own loopback
 * addresses (127.0.0.2...), so that what hellod logs, counts and denies can be told from HAProxy's. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"

HELLOD_SUITE(haproxy);

#define HAPROXY_BIN "/usr/sbin/haproxy"
#define OPENSSL_BIN "/usr/bin/openssl"
#define SH_BIN "/bin/sh"
/* Checks every 200 ms: a server is UP after one good check, DOWN after two bad ones. */
#define CHECK_PARAMS "check inter 200ms rise 1 fall 2"

typedef struct Haproxy {
        pid_t pid;
        const char *dir; /* borrowed: a hellod instance's temp dir, removed with it */
        char cfg[400], stats[400], pem[400];
        uint16_t port, tls_port, one_port;
} Haproxy;

static void need_program(const char *path) {
        if (access(path, X_OK) != 0)
                harness_fail("%s is missing: install the test packages (scripts/deps TEST_PACKAGES)", path);
}

/* make_certificate: a self-signed certificate for "localhost" and its key in one PEM file (what
 * `bind ... ssl crt` takes); CERT gets the certificate alone (for the client to trust). */
static void make_certificate(const char *dir, char *pem, size_t pem_size, char *cert, size_t cert_size) {
        char key[400], cmd_out[400], cmd_err[400];
        char *cert_text, *key_text, *both;
        size_t cert_len, key_len;
        int status;

        (void) snprintf(key, sizeof(key), "%s/key.pem", dir);
        (void) snprintf(cert, cert_size, "%s/cert.pem", dir);
        (void) snprintf(pem, pem_size, "%s/site.pem", dir);
        (void) snprintf(cmd_out, sizeof(cmd_out), "%s/openssl.out", dir);
        (void) snprintf(cmd_err, sizeof(cmd_err), "%s/openssl.err", dir);
        {
                const char *const argv[] = { OPENSSL_BIN, "req", "-x509", "-newkey", "ec",
                                             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                             "-keyout", key, "-out", cert, "-days", "2", "-subj",
                                             "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                                             NULL };
                HarnessSpawn s = { .argv = argv, .stdout_path = cmd_out, .stderr_path = cmd_err };

                status = harness_run(&s, HARNESS_TIMEOUT_MS);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char *err = harness_read_file(cmd_err, NULL);
                harness_fail("openssl req failed: %s", err);
        }
        cert_text = harness_read_file(cert, &cert_len);
        key_text = harness_read_file(key, &key_len);
        both = malloc(cert_len + key_len);
        cr_assert_not_null(both);
        memcpy(both, cert_text, cert_len);
        memcpy(both + cert_len, key_text, key_len);
        harness_write_file(pem, both, cert_len + key_len);
        free(both);
        free(cert_text);
        free(key_text);
}

/* haproxy_write_config: a plain and a TLS frontend balancing round robin over the two hellod
 * PROXY listeners (one fed the v1 line, the other the v2 header), with a tcp-check that expects
 * the greeting; and a third frontend whose backend is instance A alone, so that where a client's
 * connections land (for the per-client limit) does not depend on the round robin's turn. */
static void haproxy_write_config(Haproxy *h, uint16_t proxy_a, uint16_t proxy_b) {
        char text[4096];
        int n;

        n = snprintf(text, sizeof(text),
                     "global\n"
                     "    nbthread 1\n"
                     "    stats socket %s mode 600 level admin\n"
                     "defaults\n"
                     "    mode tcp\n"
                     "    timeout connect 2s\n"
                     "    timeout client 30s\n"
                     "    timeout server 30s\n"
                     "    timeout check 2s\n"
                     "frontend hellod_plain\n"
                     "    bind 127.0.0.1:%u\n"
                     "    default_backend hellod\n"
                     "frontend hellod_tls\n"
                     "    bind 127.0.0.1:%u ssl crt %s\n"
                     "    default_backend hellod\n"
                     "frontend hellod_one\n"
                     "    bind 127.0.0.1:%u\n"
                     "    default_backend hellod_one\n"
                     "backend hellod\n"
                     "    balance roundrobin\n"
                     "    option tcp-check\n"
                     "    tcp-check expect string Welcome!\n"
                     /* The checks carry the header too (HAProxy 2.6 needs no check-send-proxy for
                      * that): v1 a PROXY TCP4 line naming HAProxy itself, v2 a LOCAL header. */
                     "    server a 127.0.0.1:%u send-proxy " CHECK_PARAMS "\n"
                     "    server b 127.0.0.1:%u send-proxy-v2 " CHECK_PARAMS "\n"
                     /* No check here: a server without one is always UP, and the checks above
                      * already watch instance A. */
                     "backend hellod_one\n"
                     "    server a 127.0.0.1:%u send-proxy-v2\n",
                     h->stats, h->port, h->tls_port, h->pem, h->one_port, proxy_a, proxy_b, proxy_a);
        cr_assert(n > 0 && (size_t) n < sizeof(text));
        harness_write_file(h->cfg, text, (size_t) n);
}

/* haproxy_start: HAProxy in the foreground (haproxy_write_config). The config is checked first
 * (haproxy -c), so that a mistake in it fails with HAProxy's own message. */
static void haproxy_start(Haproxy *h, const char *dir, uint16_t proxy_a, uint16_t proxy_b) {
        char out[400], err[400], cert[400];
        int status;

        need_program(HAPROXY_BIN);
        need_program(OPENSSL_BIN);
        *h = (Haproxy) { .dir = dir,
                         .port = harness_pick_port(),
                         .tls_port = harness_pick_port(),
                         .one_port = harness_pick_port() };
        (void) snprintf(h->cfg, sizeof(h->cfg), "%s/haproxy.cfg", dir);
        (void) snprintf(h->stats, sizeof(h->stats), "%s/haproxy.sock", dir);
        (void) snprintf(out, sizeof(out), "%s/haproxy.out", dir);
        (void) snprintf(err, sizeof(err), "%s/haproxy.err", dir);
        make_certificate(dir, h->pem, sizeof(h->pem), cert, sizeof(cert));
        haproxy_write_config(h, proxy_a, proxy_b);

        harness_step("haproxy -c: the configuration is valid");
        {
                const char *const argv[] = { HAPROXY_BIN, "-c", "-f", h->cfg, NULL };
                HarnessSpawn s = { .argv = argv, .stdout_path = out, .stderr_path = err };

                status = harness_run(&s, HARNESS_TIMEOUT_MS);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char *e = harness_read_file(err, NULL);
                harness_fail("haproxy -c refused %s: %s", h->cfg, e);
        }

        harness_step("start haproxy");
        {
                /* -db: stay in the foreground, a child of the test (killed with it). */
                const char *const argv[] = { HAPROXY_BIN, "-db", "-f", h->cfg, NULL };
                HarnessSpawn s = { .argv = argv, .stdout_path = out, .stderr_path = err };

                h->pid = harness_spawn(&s);
        }
}

static void haproxy_stop(Haproxy *h) {
        int status;

        if (h->pid <= 0)
                return;
        /* SIGUSR1: the soft stop (SIGTERM is HAProxy's hard stop, also fine, but less polite). */
        cr_assert_eq(kill(h->pid, SIGUSR1), 0);
        if (!harness_wait_pid(h->pid, HARNESS_STOP_TIMEOUT_MS, &status)) {
                (void) kill(h->pid, SIGKILL);
                (void) harness_wait_pid(h->pid, HARNESS_STOP_TIMEOUT_MS, &status);
                harness_fail("haproxy did not stop on SIGUSR1");
        }
        h->pid = 0;
}

/* haproxy_expect_running: fails with HAProxy's own words if it has exited (a port taken between
 * the pick and its bind, a refused certificate), rather than timing out on its silence later. */
static void haproxy_expect_running(Haproxy *h) {
        char err[400];
        int status;
        pid_t r = waitpid(h->pid, &status, WNOHANG);

        if (r == 0)
                return;
        h->pid = 0;
        (void) snprintf(err, sizeof(err), "%s/haproxy.err", h->dir);
        if (r > 0 && WIFEXITED(status))
                harness_fail("haproxy exited with status %d: %s", WEXITSTATUS(status), harness_read_file(err, NULL));
        harness_fail("haproxy ended (wait status %d): %s", r > 0 ? status : -1, harness_read_file(err, NULL));
}

/* stats_query: COMMAND on the stats socket, the whole answer (malloc'd); NULL if the socket is
 * not there yet or refuses. Every wait is bounded. */
static char *stats_query(const Haproxy *h, const char *command) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        size_t len = 0, cap = 65536;
        char *buf;
        int fd;

        cr_assert_lt(strlen(h->stats), sizeof(sa.sun_path));
        memcpy(sa.sun_path, h->stats, strlen(h->stats));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                close(fd);
                return NULL;
        }
        if (write(fd, command, strlen(command)) != (ssize_t) strlen(command)) {
                close(fd);
                return NULL;
        }
        buf = malloc(cap);
        cr_assert_not_null(buf);
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) (deadline - harness_now_ms());
                ssize_t r;

                if (left <= 0 || poll(&p, 1, left) <= 0)
                        harness_fail("no end to the answer to '%s' on %s", command, h->stats);
                r = read(fd, buf + len, cap - 1 - len);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        break;
                len += (size_t) r;
                if (len == cap - 1)
                        harness_fail("the answer to '%s' is over %zu bytes", command, cap - 1);
        }
        close(fd);
        buf[len] = '\0';
        return buf;
}

/* csv_field: field I of the comma-separated LINE (up to its end), into OUT. */
static const char *csv_field(const char *line, int index, char *out, size_t size) {
        const char *p = line;
        size_t n;

        for (int i = 0; i < index && p; i++) {
                p = strpbrk(p, ",\n");
                p = p && *p == ',' ? p + 1 : NULL;
        }
        if (!p)
                return NULL;
        n = strcspn(p, ",\n");
        if (n >= size)
                n = size - 1;
        memcpy(out, p, n);
        out[n] = '\0';
        return out;
}

/* csv_column: the index of column NAME in the header line ("# pxname,svname,..."). */
static int csv_column(const char *stats, const char *name) {
        char field[64];

        cr_assert(strncmp(stats, "# ", 2) == 0, "no CSV header in 'show stat': %.200s", stats);
        for (int i = 0; csv_field(stats + 2, i, field, sizeof(field)); i++)
                if (strcmp(field, name) == 0)
                        return i;
        harness_fail("no column '%s' in 'show stat'", name);
}

/* server_stat: column NAME of backend "hellod", server SERVER, from a 'show stat' answer. */
static const char *server_stat(const char *stats, const char *server, const char *name, char *out,
                               size_t size) {
        int column = csv_column(stats, name);
        char prefix[64];
        const char *line;

        (void) snprintf(prefix, sizeof(prefix), "\nhellod,%s,", server);
        line = strstr(stats, prefix);
        if (!line)
                harness_fail("no server '%s' in 'show stat'", server);
        if (!csv_field(line + 1, column, out, size))
                harness_fail("no column %d for server '%s'", column, server);
        return out;
}

/* wait_server: until the stats say SERVER is STATUS ("UP", "DOWN") with check result CHECK
 * ("L7OK": the greeting was seen; "L4CON": refused), bounded. */
static void wait_server(Haproxy *h, const char *server, const char *status, const char *check) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        char got_status[64] = "", got_check[64] = "";
        bool answered = false;

        harness_step("wait for server %s: %s, %s", server, status, check);
        for (;;) {
                char *stats = stats_query(h, "show stat\n");

                if (stats) {
                        answered = true;
                        server_stat(stats, server, "status", got_status, sizeof(got_status));
                        server_stat(stats, server, "check_status", got_check, sizeof(got_check));
                        free(stats);
                        if (strcmp(got_status, status) == 0 && strcmp(got_check, check) == 0)
                                return;
                } else
                        haproxy_expect_running(h);
                if (harness_now_ms() > deadline) {
                        if (!answered)
                                harness_fail("the stats socket %s never answered in %d ms (haproxy is "
                                             "running)",
                                             h->stats, HARNESS_TIMEOUT_MS);
                        harness_fail("server %s is '%s' (check '%s'), not %s (%s), after %d ms", server,
                                     got_status, got_check, status, check, HARNESS_TIMEOUT_MS);
                }
                harness_sleep_ms(50);
        }
}

static long server_sessions(const Haproxy *h, const char *server) {
        char *stats = stats_query(h, "show stat\n");
        char field[64];
        long n;

        cr_assert_not_null(stats, "the stats socket went away");
        n = strtol(server_stat(stats, server, "stot", field, sizeof(field)), NULL, 10);
        free(stats);
        return n;
}

/* tls_session: `openssl s_client` from SRC_IP through the TLS frontend, trusting only the test's
 * certificate and checking its name, sends "NAME\nexit\n"; returns what it printed (malloc'd). */
static char *tls_session(const Haproxy *h, const char *src_ip, const char *name) {
        char cmd[1600], input[400], out[400], err[400], cert[400];
        int status;

        (void) snprintf(input, sizeof(input), "%s/tls.in", h->dir);
        (void) snprintf(out, sizeof(out), "%s/tls.out", h->dir);
        (void) snprintf(err, sizeof(err), "%s/tls.err", h->dir);
        (void) snprintf(cert, sizeof(cert), "%s/cert.pem", h->dir);
        (void) snprintf(cmd, sizeof(cmd), "%s\nexit\n", name);
        harness_write_file(input, cmd, strlen(cmd));
        /* -quiet: only the connection's bytes on stdout, and no end at the input's EOF: the
         * session ends when hellod closes after "exit". */
        (void) snprintf(cmd, sizeof(cmd),
                        "exec %s s_client -connect 127.0.0.1:%u -servername localhost -CAfile %s "
                        "-verify_hostname localhost -verify_return_error -quiet -bind %s:0 <%s",
                        OPENSSL_BIN, h->tls_port, cert, src_ip, input);
        {
                const char *const argv[] = { SH_BIN, "-c", cmd, NULL };
                HarnessSpawn s = { .argv = argv, .stdout_path = out, .stderr_path = err };

                status = harness_run(&s, HARNESS_TIMEOUT_MS);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char *e = harness_read_file(err, NULL);
                harness_fail("openssl s_client failed: %s", e);
        }
        return harness_read_file(out, NULL);
}

/* instance_start: a hellod with a plain listener on d->port (the harness's readiness probe uses
 * it) and a PROXY listener on *PROXY_PORT trusting HAProxy (127.0.0.1); at most two connections
 * per client, 127.0.0.4 denied; info level, so that a health check's line would show. */
static Hellod *instance_start(uint16_t *proxy_port) {
        Hellod *d = hellod_new();

        *proxy_port = harness_pick_port();
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n"
                            "log_level = \"info\";\n"
                            "max_connections_per_ip = 2;\n"
                            "deny = [ \"127.0.0.4\" ];\n",
                            (unsigned) d->port, (unsigned) *proxy_port);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        return d;
}

/* closed_lines: the connection close lines in D's log so far. Every one must name a client
 * from 127.0.0.2 up by its own address, via HAProxy (127.0.0.1): a line from 127.0.0.1 itself
 * would be HAProxy's health check logged at info level, or a header not read. */
static int closed_lines(Hellod *d) {
        char *err = hellod_stderr(d), *save = NULL;
        int n = 0;

        for (char *line = strtok_r(err, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (!strstr(line, " closed: "))
                        continue;
                if (!strstr(line, " via 127.0.0.1:") || strstr(line, " from 127.0.0.1:"))
                        hellod_fail(d, "a close line that is not a real client's through HAProxy: %s", line);
                n++;
        }
        free(err);
        return n;
}

/* wait_closed_lines: until A and B have logged WANT close lines between them (bounded). */
static void wait_closed_lines(Hellod *a, Hellod *b, int want) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        int got;

        while ((got = closed_lines(a) + closed_lines(b)) < want) {
                if (harness_now_ms() > deadline)
                        harness_fail("%d close lines after %d ms, expected %d", got, HARNESS_TIMEOUT_MS, want);
                harness_sleep_ms(20);
        }
        cr_assert_eq(got, want, "close lines: %d, sessions: %d", got, want);
}

/* session: a client from SRC_IP through PORT: greeted, one reply, "exit", closed by hellod.
 * Told busy, it tries again: a source's slot frees just after its client sees the end of the
 * conversation before, and max_connections_per_ip = 2. */
static void session(uint16_t port, const char *src_ip, const char *name) {
        int fd = client_connect_greeted("127.0.0.1", port, src_ip, HELLOD_GREETING, HELLOD_ERR_BUSY);

        client_hello(fd, name);
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
}

static long server_checks_failed(const Haproxy *h, const char *server) {
        char *stats = stats_query(h, "show stat\n");
        char field[64];
        long n;

        cr_assert_not_null(stats, "the stats socket went away");
        n = strtol(server_stat(stats, server, "chkfail", field, sizeof(field)), NULL, 10);
        free(stats);
        return n;
}

Test(haproxy, clients_behind_haproxy_keep_their_own_addresses, .timeout = 120) {
        uint16_t proxy_a, proxy_b;
        Hellod *a = instance_start(&proxy_a), *b = instance_start(&proxy_b);
        int sessions = 0, held[3];
        Haproxy h;
        char *text;

        haproxy_start(&h, a->dir, proxy_a, proxy_b);
        harness_step("health checks through the PROXY header: both servers UP");
        wait_server(&h, "a", "UP", "L7OK");
        wait_server(&h, "b", "UP", "L7OK");
        cr_assert_eq(server_sessions(&h, "a") + server_sessions(&h, "b"), 0,
                     "sessions before any client (checks are not sessions)");

        harness_step("clients from 127.0.0.2 and 127.0.0.3, round robin over both instances");
        session(h.port, "127.0.0.2", "Michael");
        session(h.port, "127.0.0.2", "Michael");
        session(h.port, "127.0.0.3", "Sarah");
        session(h.port, "127.0.0.3", "Sarah");
        sessions += 4;
        cr_assert_eq(server_sessions(&h, "a"), 2);
        cr_assert_eq(server_sessions(&h, "b"), 2);
        /* Round robin alternates: each instance had one of each client, whatever its header. */
        hellod_wait_stderr(a, " from 127.0.0.2:");
        hellod_wait_stderr(a, " from 127.0.0.3:");
        hellod_wait_stderr(b, " from 127.0.0.2:");
        hellod_wait_stderr(b, " from 127.0.0.3:");
        wait_closed_lines(a, b, sessions);

        harness_step("TLS terminated by haproxy: openssl s_client gets the greeting and a reply");
        text = tls_session(&h, "127.0.0.5", "Tracy");
        cr_assert_str_eq(text, HELLOD_GREETING "Hello, Tracy!\r\n");
        free(text);
        sessions++;
        cr_assert_eq(server_sessions(&h, "a") + server_sessions(&h, "b"), 5);
        wait_closed_lines(a, b, sessions);
        {
                char *err_a = hellod_stderr(a), *err_b = hellod_stderr(b);

                cr_assert(strstr(err_a, " from 127.0.0.5:") || strstr(err_b, " from 127.0.0.5:"),
                          "the TLS client is not named by its own address");
                free(err_a);
                free(err_b);
        }

        harness_step("max_connections_per_ip = 2: the third connection of 127.0.0.2 is refused");
        /* Through the one-server backend: all three reach instance A. A slot of an earlier
         * session may still be freeing just after its close line: retry on busy for these two. */
        held[0] = client_connect_greeted("127.0.0.1", h.one_port, "127.0.0.2", HELLOD_GREETING, HELLOD_ERR_BUSY);
        held[1] = client_connect_greeted("127.0.0.1", h.one_port, "127.0.0.2", HELLOD_GREETING, HELLOD_ERR_BUSY);
        {
                int fd = client_connect_to("127.0.0.1", h.one_port, "127.0.0.2");

                client_expect_str(fd, HELLOD_ERR_BUSY);
                client_expect_eof(fd, true);
                client_close(fd);
        }
        hellod_wait_stderr(a, "refused 127.0.0.2:");
        hellod_wait_stderr(a, " via 127.0.0.1:");
        hellod_wait_stderr(a, ": server busy (max_connections_per_ip reached)");
        harness_step("another client behind the same haproxy is served meanwhile");
        held[2] = client_connect_greeted("127.0.0.1", h.one_port, "127.0.0.3", HELLOD_GREETING, NULL);
        client_hello(held[2], "Sarah");
        /* Each says something: a session that said nothing is logged like a health check. */
        client_hello(held[0], "Michael");
        client_hello(held[1], "Michael");
        for (int i = 0; i < 3; i++)
                client_close(held[i]);
        sessions += 3;
        wait_closed_lines(a, b, sessions);

        harness_step("deny = [ 127.0.0.4 ]: no greeting through haproxy, on either instance");
        for (int i = 0; i < 2; i++) {
                int fd = client_connect_to("127.0.0.1", h.port, "127.0.0.4");

                client_expect_eof(fd, true);
                client_close(fd);
        }
        hellod_wait_stderr(a, "refused 127.0.0.4:");
        hellod_wait_stderr(b, "refused 127.0.0.4:");
        session(h.port, "127.0.0.3", "Sarah");
        sessions++;
        wait_closed_lines(a, b, sessions);

        harness_step("health checks: still UP, and no close line of theirs at info level");
        /* Five check intervals more: each would have left a line by now. */
        harness_sleep_ms(1000);
        wait_server(&h, "a", "UP", "L7OK");
        wait_server(&h, "b", "UP", "L7OK");
        cr_assert_eq(server_checks_failed(&h, "a"), 0);
        cr_assert_eq(server_checks_failed(&h, "b"), 0);
        wait_closed_lines(a, b, sessions);

        harness_step("a stopped instance goes DOWN; the other serves every client");
        hellod_stop_clean(b);
        wait_server(&h, "b", "DOWN", "L4CON");
        wait_server(&h, "a", "UP", "L7OK");
        for (int i = 0; i < 3; i++)
                session(h.port, "127.0.0.3", "Sarah");
        text = tls_session(&h, "127.0.0.5", "Sarah");
        cr_assert_str_eq(text, HELLOD_GREETING "Hello, Sarah!\r\n");
        free(text);

        harness_step("stop");
        haproxy_stop(&h);
        hellod_stop_clean(a);
        hellod_free(b);
        hellod_free(a);
}
