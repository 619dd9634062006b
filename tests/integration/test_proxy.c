/* test-proxy: PROXY protocol listeners through the real daemon: headers as HAProxy sends them,
 * written by hand (v1 text, v2 binary), and everything a direct client can do wrong. */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "clients.h"
#include "suite.h"

HELLOD_SUITE(proxy);

/* write_config: D's configuration: a plain listener on d->port (the harness's readiness probe
 * uses it) and a PROXY listener on PROXY_PORT, trusting the balancers in TRUSTED, with EXTRA
 * settings. */
static void write_config(Hellod *d, uint16_t proxy_port, const char *trusted, const char *extra) {
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ %s ];\nlog_level = \"debug\";\n%s",
                            (unsigned) d->port, (unsigned) proxy_port, trusted, extra ? extra : "");
}

/* start: a daemon of write_config(), serving. */
static Hellod *start(uint16_t *proxy_port, const char *trusted, const char *extra) {
        Hellod *d = hellod_new();

        *proxy_port = harness_pick_port();
        write_config(d, *proxy_port, trusted, extra);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        return d;
}

/* v2: the signature, version 2 with COMMAND, then FAMILY/TRANSPORT and the addresses. */
static size_t v2_header(unsigned char *buf, bool local, const char *src, unsigned src_port, unsigned dst_port) {
        unsigned a, b, c, e;

        memcpy(buf, PROXY_V2_SIG, PROXY_V2_SIG_LEN);
        buf[12] = local ? 0x20 : 0x21;
        if (local) {
                buf[13] = 0x00;
                buf[14] = buf[15] = 0;
                return 16;
        }
        buf[13] = 0x11; /* AF_INET, STREAM */
        buf[14] = 0;
        buf[15] = 12;
        cr_assert_eq(sscanf(src, "%u.%u.%u.%u", &a, &b, &c, &e), 4);
        unsigned char *p = buf + 16;
        p[0] = (unsigned char) a, p[1] = (unsigned char) b, p[2] = (unsigned char) c, p[3] = (unsigned char) e;
        p[4] = 127, p[5] = 0, p[6] = 0, p[7] = 1;
        p[8] = (unsigned char) (src_port >> 8), p[9] = (unsigned char) src_port;
        p[10] = (unsigned char) (dst_port >> 8), p[11] = (unsigned char) dst_port;
        return 28;
}

/* proxied_client: a connection to PORT whose v1 header says it is SRC:SRC_PORT. */
static int proxied_client(uint16_t port, const char *src, unsigned src_port) {
        char header[128];
        int fd = client_connect(port);

        snprintf(header, sizeof(header), "PROXY TCP4 %s 127.0.0.1 %u %u\r\n", src, src_port, (unsigned) port);
        client_send_str(fd, header);
        return fd;
}

Test(proxy, v1_header_then_the_conversation_as_that_client, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        int fd = proxied_client(port, "192.0.2.7", 51234);

        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "Michael");
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_wait_stderr(d, "from 192.0.2.7:51234 via 127.0.0.1:");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The header and the first line in one segment, as a client's first bytes often follow at once. */
Test(proxy, v2_header_and_first_line_together, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.0/8\"", NULL);
        unsigned char buf[64];
        size_t n = v2_header(buf, false, "198.51.100.9", 40000, port);
        int fd = client_connect(port);

        memcpy(buf + n, "Tracy\n", 6);
        client_send(fd, buf, n + 6);
        client_expect_str(fd, HELLOD_GREETING "Hello, Tracy!\r\n");
        client_close(fd);
        hellod_wait_stderr(d, "from 198.51.100.9:40000 via 127.0.0.1:");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Chunk framing reads one message a read, at most max_line_length + 2 bytes: the header and a
 * message of 16 bytes in one segment must give that message whole. The header used to be read
 * in reads of that size, and what followed it in the last one (the message's first 15 bytes)
 * was a message of its own: "Hello, 0123456789abcde!", then "Hello, f!". */
Test(proxy, chunk_framing_reads_the_message_behind_the_header_whole, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "framing = \"chunk\";\nmax_line_length = 16;\n");
        int fd = client_connect(port);
        char reply[64];
        ClientReadEnd end;

        client_send_str(fd, "PROXY TCP4 192.0.2.7 127.0.0.1 1111 2222\r\n0123456789abcdef\n");
        client_expect_str(fd, "Welcome!Hello, 0123456789abcdef!"); /* chunk framing: no line ends */
        size_t n = client_read(fd, reply, sizeof(reply) - 1, "\n", 300, &end);
        reply[n] = '\0';
        cr_expect_eq(n, 0, "more after the reply: '%s'", reply);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A LOCAL header (HAProxy's health check with send-proxy-v2) is the balancer speaking for itself:
 * greeted, and its close is not an info line. */
Test(proxy, v2_local_is_a_health_check, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        unsigned char buf[16];
        int fd = client_connect(port);

        client_send(fd, buf, v2_header(buf, true, NULL, 0, 0));
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);
        hellod_wait_stderr(d, "via 127.0.0.1");
        char *err = hellod_stderr(d), *line = strtok(err, "\n");
        bool found = false;
        for (; line; line = strtok(NULL, "\n")) {
                if (!strstr(line, " via ") || !strstr(line, "closed: eof, 0 lines"))
                        continue;
                found = true;
                cr_expect(strstr(line, "debug") != NULL, "the health check was logged above debug: %s", line);
        }
        cr_expect(found, "no line for the health check's close");
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* refused_unanswered: FD gets no byte at all, then EOF (or a reset). */
static void refused_unanswered(int fd) {
        client_expect_eof(fd, true);
        client_close(fd);
}

/* Activation: systemd-socket-activate passing two sockets: on D's port (the plain one) and on
 * PORT (the one a PROXY entry names). A name that cannot be looked up gets one short try: with
 * an unreachable nameserver, the resolver's default (5 s, twice) would outlast the test's waits. */
typedef struct Activation {
        uint16_t port;
        char plain[32], proxied[32];
        const char *wrapper[8];
} Activation;

static void activation_init(Activation *a, const Hellod *d) {
        a->port = harness_pick_port();
        snprintf(a->plain, sizeof(a->plain), "127.0.0.1:%u", (unsigned) d->port);
        snprintf(a->proxied, sizeof(a->proxied), "127.0.0.1:%u", (unsigned) a->port);
        const char *const wrapper[] = { "/usr/bin/systemd-socket-activate", "-l", a->plain, "-l", a->proxied,
                                        "-E", "RES_OPTIONS=timeout:1 attempts:1", NULL };
        memcpy(a->wrapper, wrapper, sizeof(wrapper));
}

/* activation_write_config: D's configuration lists the plain socket of A and, with
 * proxy_protocol, PROXY_HOST on A's port; then EXTRA. */
static void activation_write_config(Hellod *d, const Activation *a, const char *proxy_host, const char *extra) {
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"%s:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n%s",
                            (unsigned) d->port, proxy_host, (unsigned) a->port, extra);
}

/* activated_start: D started under A's systemd-socket-activate, as activation_write_config() says. */
static void activated_start(Hellod *d, Activation *a, const char *proxy_host, const char *extra) {
        activation_init(a, d);
        activation_write_config(d, a, proxy_host, extra);
        hellod_spawn(d, &(HellodOpts) { .wrapper = a->wrapper });
        hellod_wait_ready(d);
}

/* expect_header_wanted: the PROXY listener on PORT still wants the header: a client without one
 * gets nothing, a balancer's client is served. */
static void expect_header_wanted(uint16_t port) {
        int fd = client_connect(port);
        client_send_str(fd, "Michael\n");
        refused_unanswered(fd);
        fd = proxied_client(port, "192.0.2.7", 51234);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "Michael");
        client_close(fd);
}

/* activated_start_refused: D, stopped, started again under A's systemd-socket-activate with a
 * file that must not start it; returns its wait status, once stderr holds NEEDLE. */
static int activated_spawn_refused(Hellod *d, const Activation *a, const char *needle) {
        int fd;

        hellod_spawn(d, &(HellodOpts) { .wrapper = a->wrapper });
        /* systemd-socket-activate starts hellod on the first connection, once it listens. */
        for (int64_t end = harness_now_ms() + HARNESS_TIMEOUT_MS; (fd = client_try_connect("127.0.0.1", d->port, NULL)) < 0;
             harness_sleep_ms(10))
                if (harness_now_ms() > end)
                        hellod_fail(d, "systemd-socket-activate never listened: %s", strerror(-fd));
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        client_close(fd);
        char *err = hellod_stderr(d);
        cr_expect(strstr(err, needle), "stderr lacks \"%s\":\n%s", needle, err);
        free(err);
        return status;
}

static int activated_start_refused(Hellod *d, const Activation *a, const char *needle) {
        hellod_stop_clean(d);
        return activated_spawn_refused(d, a, needle);
}

/* Socket-activated (systemd passes the sockets, hellod binds nothing): a PROXY entry by host
 * name marks the passed socket its name resolves to. "localhost" used to be matched
 * numerically only, never, so its socket was served as a plain one: direct clients greeted,
 * the balancer's header answered as a line, allow/deny applied to the balancer. */
Test(proxy, socket_activated_a_proxy_entry_by_host_name_is_a_proxy_listener, .timeout = 60) {
        Hellod *d = hellod_new();
        Activation a;

        activated_start(d, &a, "localhost", "log_level = \"debug\";\n");
        uint16_t port = a.port;
        hellod_wait_stderr(d, "(PROXY)"); /* "serving the sockets passed by systemd: ... (PROXY)" */

        int fd = client_connect(port);
        client_send_str(fd, "Michael\n");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "PROXY protocol listener: not a PROXY protocol header");
        fd = proxied_client(port, "192.0.2.7", 51234);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "Michael");
        client_close(fd);
        hellod_wait_stderr(d, "from 192.0.2.7:51234 via 127.0.0.1:");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Socket-activated, a passed socket bound to an IPv4-mapped address ("[::ffff:127.0.0.1]:P" in a
 * socket unit) is the one "127.0.0.1:P" names: it used to be compared byte for byte, an IPv6
 * address against an IPv4 one, so a PROXY entry did not mark it (its clients were all taken for
 * the balancer, its header for a line) and the start warned of a mismatch. */
Test(proxy, socket_activated_an_ipv4_mapped_socket_is_its_ipv4_entry, .timeout = 60) {
        Hellod *d = hellod_new();
        Activation a;

        activation_init(&a, d);
        snprintf(a.proxied, sizeof(a.proxied), "[::ffff:127.0.0.1]:%u", (unsigned) a.port);
        activation_write_config(d, &a, "127.0.0.1", "");
        hellod_spawn(d, &(HellodOpts) { .wrapper = a.wrapper });
        hellod_wait_ready(d);
        hellod_wait_stderr(d, "(PROXY)");
        expect_header_wanted(a.port);
        hellod_wait_stderr(d, "from 192.0.2.7:51234 via ");
        hellod_wait_stderr(d, "as 'listen' and 'port' say");
        char *err = hellod_stderr(d);
        cr_expect_null(strstr(err, "do not match"), "warned about matching sockets:\n%s", err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Socket-activated, a PROXY entry "localhost" marks the passed sockets on 127.0.0.1 and on ::1,
 * as hellod-socket-generator writes it (RFC 6761), whatever the hosts file maps: one that maps
 * only 127.0.0.1, as Debian's often does, used to leave the ::1 socket a plain listener. (Where
 * the hosts file maps both, this test cannot tell the two apart.) */
Test(proxy, socket_activated_localhost_is_both_loopbacks, .timeout = 60) {
        Hellod *d = hellod_new();
        char v6[48];
        Activation a;

        activation_init(&a, d);
        snprintf(v6, sizeof(v6), "[::1]:%u", (unsigned) a.port);
        const char *const wrapper[] = { "/usr/bin/systemd-socket-activate", "-l", a.plain, "-l", a.proxied, "-l", v6,
                                        NULL };
        memcpy(a.wrapper, wrapper, sizeof(wrapper));
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"localhost:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\", \"::1\" ];\n",
                            (unsigned) d->port, (unsigned) a.port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = a.wrapper });
        hellod_wait_ready(d);
        snprintf(v6, sizeof(v6), "[::1]:%u (PROXY)", (unsigned) a.port);
        hellod_wait_stderr(d, v6);

        int fd = client_connect6(a.port);
        client_send_str(fd, "Michael\n");
        refused_unanswered(fd);
        fd = client_connect(a.port);
        client_send_str(fd, "Michael\n");
        refused_unanswered(fd);
        char *err = hellod_stderr(d);
        cr_expect(strstr(err, "as 'listen' and 'port' say"), "the passed sockets are what the generator writes:\n%s",
                  err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Socket-activated, a reload whose PROXY entry names a host that cannot be looked up fails,
 * and the passed socket stays a PROXY listener; such a file does not start hellod either. (The
 * checks a reload runs first look the names up; the marks' own lookup failing a moment later,
 * which used to unmark the socket in silence, is tested in inherit/.) */
Test(proxy, socket_activated_a_proxy_name_that_cannot_be_looked_up_fails_the_reload, .timeout = 60) {
        static const char unknown[] = "hellod-test.invalid"; /* RFC 6761: never resolves */
        Hellod *d = hellod_new();
        char needle[512];
        Activation a;

        activated_start(d, &a, "127.0.0.1", "");
        uint16_t port = a.port;

        harness_step("a reload naming %s for the PROXY listener", unknown);
        activation_write_config(d, &a, unknown, "");
        hellod_signal(d, SIGHUP);
        snprintf(needle, sizeof(needle), "%s:1: listen: cannot resolve listen address '%s'", d->conf_path, unknown);
        hellod_wait_stderr(d, needle);
        hellod_wait_stderr(d, "reload failed");

        harness_step("the passed socket still wants the header");
        expect_header_wanted(port);

        harness_step("and such a file does not start the daemon");
        int status = activated_start_refused(d, &a, needle);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0, "started with an unknown PROXY name: status %d", status);
        hellod_free(d);
}

/* Socket-activated, one address listed twice, with and without proxy_protocol ("localhost"
 * beside 127.0.0.1), cannot be served either way: hellod does not start (78), as `hellod -t`
 * says. Under socket activation a name that cannot be resolved is left out of the check, and
 * it once skipped the whole check, then served the socket as a PROXY listener. */
Test(proxy, socket_activated_an_address_with_and_without_proxy_protocol_does_not_start, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[512];
        Activation a;

        activation_init(&a, d);
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\",\n  \"localhost:%u\",\n"
                            "  { address = \"127.0.0.1:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n",
                            (unsigned) d->port, (unsigned) a.port, (unsigned) a.port);
        snprintf(needle, sizeof(needle),
                 "%s:3: listen: listen address '127.0.0.1' is 127.0.0.1:%u, which another entry also names",
                 d->conf_path, (unsigned) a.port);
        int status = activated_spawn_refused(d, &a, needle);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_CONFIG, "status %d", status);
        hellod_free(d);
}

/* Socket-activated, a PROXY entry by FileDescriptorName= that matches no passed socket (a
 * typo) is an error naming the file, the line and the names passed: at a reload, which fails
 * and leaves the socket a PROXY listener, and at the start. Such an entry used to be skipped in
 * silence: the socket it meant was served as a plain one, every client taken for the balancer. */
Test(proxy, socket_activated_a_proxy_name_no_socket_has_fails, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[512];
        Activation a;

        activation_init(&a, d);
        const char *const wrapper[] = { "/usr/bin/systemd-socket-activate", "-l", a.plain, "-l", a.proxied,
                                        "--fdname=plain:balancer", NULL };
        memcpy(a.wrapper, wrapper, sizeof(wrapper));
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { name = \"balancer\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n",
                            (unsigned) d->port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = a.wrapper });
        hellod_wait_ready(d);
        uint16_t port = a.port;

        harness_step("a reload naming \"balancr\" for the PROXY listener");
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { name = \"balancr\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n",
                            (unsigned) d->port);
        hellod_signal(d, SIGHUP);
        snprintf(needle, sizeof(needle),
                 "%s:1: listen: name \"balancr\": no passed socket has that name (passed: plain, balancer)",
                 d->conf_path);
        hellod_wait_stderr(d, needle);
        hellod_wait_stderr(d, "reload failed");

        harness_step("the passed socket still wants the header");
        expect_header_wanted(port);

        harness_step("and such a file does not start the daemon");
        int status = activated_start_refused(d, &a, needle);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_CONFIG,
                  "started with a PROXY name no socket has: status %d, expected exit %d (the file's fault: no restart)",
                  status, HELLOD_EXIT_CONFIG);
        hellod_free(d);
}

/* A passed socket's name is kept whole (systemd allows 255 characters): cut to 63, a name
 * longer than a `listen` entry's but beginning with it matched that entry, and its socket
 * was served as the PROXY listener it was not. */
Test(proxy, socket_activated_a_long_name_is_not_cut_to_match, .timeout = 60) {
        static const char entry[] = "a-name-of-sixty-three-characters-for-the-balancer-listener-0063";
        char fdnames[160], needle[512];
        Hellod *d = hellod_new();
        Activation a;

        cr_assert_eq(strlen(entry), 63);
        activation_init(&a, d);
        snprintf(fdnames, sizeof(fdnames), "--fdname=plain:%s-and-more", entry);
        const char *const wrapper[] = { "/usr/bin/systemd-socket-activate", "-l", a.plain, "-l", a.proxied, fdnames,
                                        NULL };
        memcpy(a.wrapper, wrapper, sizeof(wrapper));
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { name = \"%s\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\n",
                            (unsigned) d->port, entry);
        snprintf(needle, sizeof(needle), "%s:1: listen: name \"%s\": no passed socket has that name", d->conf_path,
                 entry);
        int status = activated_spawn_refused(d, &a, needle);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == HELLOD_EXIT_CONFIG, "status %d, expected exit %d",
                  status, HELLOD_EXIT_CONFIG);
        hellod_free(d);
}

Test(proxy, a_direct_client_without_a_header_gets_nothing, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        int fd = client_connect(port);

        client_send_str(fd, "Michael\n");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "PROXY protocol listener: not a PROXY protocol header");
        hellod_stop_clean(d);
        hellod_free(d);
}

Test(proxy, a_header_from_an_untrusted_address_is_refused, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.2\"", NULL);
        int fd = proxied_client(port, "192.0.2.7", 51234); /* from 127.0.0.1: not a balancer */

        refused_unanswered(fd);
        hellod_wait_stderr(d, "not from a balancer in proxy_from");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* proxy_from is checked at the accept and again when the header is in: a balancer a reload
 * dropped meanwhile (a compromised one, say) is no longer believed, as it would not be for a
 * new connection. Its header used to be taken for up to the header's time limit. */
Test(proxy, a_balancer_dropped_from_proxy_from_while_its_header_is_awaited_is_refused, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        Baseline b = baseline_take(d); /* the readiness probe's session closed */
        cr_assert(b.steady, "hellod's descriptors did not settle after the readiness probe");
        int before = b.fds;
        int fd = client_connect(port);

        harness_step("the connection accepted, its header not sent yet");
        int64_t end = harness_now_ms() + 5000;
        while (hellod_fd_count(d) <= before && harness_now_ms() < end)
                harness_sleep_ms(10);
        cr_assert_gt(hellod_fd_count(d), before, "hellod did not accept the balancer's connection");

        harness_step("a reload drops the balancer from proxy_from; then its header");
        write_config(d, port, "\"127.0.0.2\"", NULL);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded from");
        client_send_str(fd, "PROXY TCP4 192.0.2.7 127.0.0.1 51234 2222\r\n");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "its balancer is no longer in proxy_from");

        harness_step("a balancer still in proxy_from is served");
        write_config(d, port, "\"127.0.0.1\"", NULL);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr_count(d, "configuration reloaded from", 2);
        fd = proxied_client(port, "192.0.2.8", 1);
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

Test(proxy, a_slow_or_truncated_header_is_refused, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);

        harness_step("half a header, then nothing: refused after the header's time limit");
        int fd = client_connect(port);
        client_send_str(fd, "PROXY TCP4 192.0.2.7 ");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "no PROXY header in time");

        harness_step("half a header, then the client's close");
        fd = client_connect(port);
        client_send_str(fd, "PROXY TCP4 192.0.2.7 ");
        client_shutdown_write(fd);
        refused_unanswered(fd);
        hellod_wait_stderr(d, "closed before its PROXY header was complete");

        harness_step("half a header, then a reset: refused too, not counted as served");
        fd = client_connect(port);
        client_send_str(fd, "PROXY TCP4 192.0.2.7 ");
        client_reset(fd);
        hellod_wait_stderr(d, "PROXY protocol listener: Connection reset by peer");
        hellod_signal(d, SIGTERM);
        cr_assert_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);
        char *err = hellod_stderr(d);
        cr_expect(strstr(err, "stopped: 1 connection served, 3 refused"), "%s", err); /* served: the probe */
        free(err);
        hellod_free(d);
}

/* Out of descriptors, hellod spends its reserve descriptor to turn the waiting client away:
 * told busy, unless it may not talk to hellod at all. A client outside proxy_from on a PROXY
 * listener, or one that deny names, gets no byte then either, and its refusal is logged with its
 * address (they were told "ERR server busy", and only the exhaustion was logged). */
Test(proxy, out_of_descriptors_an_unwelcome_client_still_gets_nothing, .timeout = 90) {
        enum { NOFILE = 40, MAX_CLIENTS = 64 };
        Hellod *d = hellod_new();
        uint16_t proxy_port = harness_pick_port();
        int fds[MAX_CLIENTS], n = 0, fd;

        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\ndeny = [ \"127.0.0.3\" ];\n",
                            (unsigned) d->port, (unsigned) proxy_port);
        hellod_spawn(d, &(HellodOpts) { .nofile = NOFILE });
        hellod_wait_ready(d);

        harness_step("clients until one is told busy: out of descriptors");
        for (ClientState last = CLIENT_SERVED; last == CLIENT_SERVED;) {
                if (n == MAX_CLIENTS)
                        hellod_fail(d, "%d clients served: no descriptor limit met", n);
                fds[n] = client_connect(d->port);
                if (!client_wait_readable(fds[n], HARNESS_TIMEOUT_MS))
                        hellod_fail(d, "client %d: no greeting, no refusal", n);
                last = client_classify(fds[n++]);
                if (last != CLIENT_SERVED && last != CLIENT_REFUSED)
                        hellod_fail(d, "client %d: neither greeted nor told busy", n - 1);
        }
        hellod_wait_stderr(d, "cannot accept connections");

        harness_step("a client from outside proxy_from on the PROXY listener: nothing");
        fd = client_connect_to("127.0.0.1", proxy_port, "127.0.0.2");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "refused 127.0.0.2:");

        harness_step("a client that deny names: nothing");
        fd = client_connect_to("127.0.0.1", d->port, "127.0.0.3");
        refused_unanswered(fd);
        hellod_wait_stderr(d, "refused 127.0.0.3:");

        harness_step("a welcome client at the limit is still told busy");
        fd = client_connect(d->port);
        if (!client_wait_readable(fd, HARNESS_TIMEOUT_MS))
                hellod_fail(d, "no greeting, no refusal");
        cr_expect_eq(client_classify(fd), CLIENT_REFUSED);
        client_close(fd);
        for (int i = 0; i < n; i++)
                client_close(fds[i]);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A stop before the header is in: no conversation began, so none is logged as served; the
 * balancer's connection is refused as shutting-down, without a word, so that HAProxy (which
 * redispatches a connection closed before any byte) can try another server. */
Test(proxy, a_stop_refuses_a_header_still_awaited_in_silence, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);

        int fd = client_connect(port);
        client_send_str(fd, "PROXY TCP4 192.0.2.7 ");
        hellod_wait_stderr(d, "connection 2 from 127.0.0.1:"); /* opened: the probe was 1 */
        hellod_signal(d, SIGTERM);
        refused_unanswered(fd);
        cr_assert_eq(hellod_wait_exit(d, HARNESS_STOP_TIMEOUT_MS), 0);

        char *err = hellod_stderr(d);
        cr_expect(strstr(err, "stopped: 1 connection served, 1 refused"), "%s", err);
        cr_expect(strstr(err, "PROXY protocol listener: the server stopped before the header was complete"),
                  "%s", err);
        cr_expect(!strstr(err, "closed before its PROXY header"), "%s", err);
        cr_expect(!strstr(err, "closed: none"), "%s", err);
        free(err);
        hellod_free(d);
}

/* expect_unaffected_then_stop: after a refusal, D still greets and answers a client behind
 * its PROXY listener on PORT; then it stops cleanly and is freed. */
static void expect_unaffected_then_stop(Hellod *d, uint16_t port) {
        harness_step("the daemon is unaffected");
        int fd = proxied_client(port, "192.0.2.7", 1);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "after");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

Test(proxy, a_v1_line_over_107_bytes_is_refused, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        char line[160];
        int fd = client_connect(port);

        memset(line, ' ', sizeof(line));
        memcpy(line, "PROXY UNKNOWN", 13);
        memcpy(line + 120, "\r\n", 2);
        client_send(fd, line, 122);
        refused_unanswered(fd);
        hellod_wait_stderr(d, "PROXY protocol listener: ");

        expect_unaffected_then_stop(d, port);
}

/* tlv: appends a TLV of TYPE with LEN bytes of FILL at P; returns the end. */
static unsigned char *tlv(unsigned char *p, unsigned char type, size_t len, unsigned char fill) {
        p[0] = type;
        p[1] = (unsigned char) (len >> 8);
        p[2] = (unsigned char) len;
        memset(p + 3, fill, len);
        return p + 3 + len;
}

/* v2_header_of: a v2 header for SRC:SRC_PORT of TOTAL bytes in all: the addresses, then TLVs
 * as a TLS-terminating HAProxy sends them with proxy-v2-options authority,unique-id,ssl (an
 * SNI of 255 bytes, a unique id of 128, the SSL TLV with a client certificate's details),
 * padded with a NOOP TLV. */
static size_t v2_header_of(unsigned char *buf, size_t total, const char *src, unsigned src_port, unsigned dst_port) {
        unsigned char *p = buf + v2_header(buf, false, src, src_port, dst_port);

        p = tlv(p, 0x02, 255, 'a'); /* PP2_TYPE_AUTHORITY */
        p = tlv(p, 0x05, 128, 'u'); /* PP2_TYPE_UNIQUE_ID */
        unsigned char *ssl = p + 3; /* PP2_TYPE_SSL's value: client, verify, two sub-TLVs */
        p = tlv(p, 0x20, 5 + 3 + 7 + 3 + 64, 0);
        ssl[0] = 0x07; /* PP2_CLIENT_SSL | CERT_CONN | CERT_SESS */
        (void) tlv(tlv(ssl + 5, 0x21, 7, 'v'), 0x22, 64, 'c'); /* PP2_SUBTYPE_SSL_VERSION, _CN */
        cr_assert_geq(total, (size_t) (p - buf) + 3);
        p = tlv(p, 0x04, total - (size_t) (p - buf) - 3, 0); /* PP2_TYPE_NOOP */
        buf[14] = (unsigned char) ((total - 16) >> 8);
        buf[15] = (unsigned char) (total - 16);
        return total;
}

/* A header with the TLVs HAProxy adds for a TLS client is longer than the 536 bytes the spec
 * designs the address block for; as nginx, hellod reads headers of up to 4,096 bytes (it
 * refused any over 536, and such a balancer's every client). Sent in pieces, the first line
 * behind the header: both the longest taken and one byte more refused, the daemon unaffected. */
Test(proxy, a_v2_header_with_tlvs_up_to_4096_bytes_is_read, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        static const size_t totals[] = { 700, 4096 };
        static unsigned char buf[4200];

        for (size_t i = 0; i < sizeof(totals) / sizeof(totals[0]); i++) {
                unsigned src_port = 41000 + (unsigned) i;
                harness_step("a header of %zu bytes in pieces of 1000, then a line", totals[i]);
                size_t n = v2_header_of(buf, totals[i], "203.0.113.5", src_port, port);
                int fd = client_connect(port);

                memcpy(buf + n, "Tracy\n", 6);
                for (size_t off = 0; off < n + 6; off += 1000) {
                        client_send(fd, buf + off, off + 1000 < n + 6 ? 1000 : n + 6 - off);
                        harness_sleep_ms(20);
                }
                client_expect_str(fd, HELLOD_GREETING "Hello, Tracy!\r\n");
                client_close(fd);
                char from[64];
                snprintf(from, sizeof(from), "from 203.0.113.5:%u via 127.0.0.1:", src_port);
                hellod_wait_stderr(d, from);
        }

        harness_step("a header announcing 4,097 bytes is refused as soon as its length is in");
        v2_header_of(buf, 4096, "203.0.113.5", 1, port);
        buf[14] = (unsigned char) ((4097 - 16) >> 8);
        buf[15] = (unsigned char) (4097 - 16);
        int fd = client_connect(port);
        client_send(fd, buf, 16);
        refused_unanswered(fd);
        hellod_wait_stderr(d, "v2: the header is longer than 4096 bytes");

        expect_unaffected_then_stop(d, port);
}

/* Limits and access lists apply to the client the header names, not to the balancer. */
Test(proxy, per_source_limits_and_deny_see_the_real_client, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "max_connections_per_ip = 2;\ndeny = [ \"192.0.2.9\" ];\n");
        int a = proxied_client(port, "192.0.2.7", 1), b = proxied_client(port, "192.0.2.7", 2);

        client_expect_str(a, HELLOD_GREETING);
        client_expect_str(b, HELLOD_GREETING);
        harness_step("a third connection of 192.0.2.7 is refused");
        int c = proxied_client(port, "192.0.2.7", 3);
        client_expect_str(c, HELLOD_ERR_BUSY);
        client_close(c);
        hellod_wait_stderr(d, "refused 192.0.2.7:3 via 127.0.0.1:");
        harness_step("another client behind the same balancer is served");
        int other = proxied_client(port, "192.0.2.8", 4);
        client_expect_str(other, HELLOD_GREETING);
        client_hello(other, "other");
        harness_step("a denied client behind the balancer gets nothing");
        int denied = proxied_client(port, "192.0.2.9", 5);
        refused_unanswered(denied);
        hellod_wait_stderr(d, "refused 192.0.2.9:5 via 127.0.0.1:");
        client_hello(a, "still");
        client_close(a);
        client_close(b);
        client_close(other);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A denied client whose first line came in the header's segment: nothing said, and a clean
 * end, not a reset (the balancer logs a reset as the server's failure). Since the header is
 * peeked and only its bytes taken, the line is left unread, and a close over it sends one. */
Test(proxy, a_denied_client_with_a_line_behind_its_header_gets_a_clean_end, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "deny = [ \"192.0.2.9\" ];\n");
        int fd = client_connect(port);

        client_send_str(fd, "PROXY TCP4 192.0.2.9 127.0.0.1 5 9999\r\nMallory\n");
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_wait_stderr(d, "refused 192.0.2.9:5 via 127.0.0.1:");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A client refused after its header, with more of what it sent still unread: the ERR line,
 * then a clean end, not a reset (closing over unread bytes sends one, and it can destroy the
 * line before the client reads it). */
Test(proxy, a_refusal_after_the_header_is_not_cut_by_a_reset, .timeout = 60) {
        enum { LINES = 8192 };
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "max_connections_per_ip = 1;\n");
        int a = proxied_client(port, "192.0.2.7", 1);
        char *burst = malloc(LINES * 2 + 128);
        size_t n;

        cr_assert(burst);
        client_expect_str(a, HELLOD_GREETING);
        n = (size_t) snprintf(burst, 128, "PROXY TCP4 192.0.2.7 127.0.0.1 2 %u\r\n", (unsigned) port);
        for (int i = 0; i < LINES; i++, n += 2)
                memcpy(burst + n, "x\n", 2);
        harness_step("a second connection of 192.0.2.7: its header and %d lines in one write", LINES);
        int b = client_connect(port);
        client_send(b, burst, n);
        client_expect_str(b, HELLOD_ERR_BUSY);
        client_expect_eof(b, false);
        client_close(b);
        free(burst);
        client_hello(a, "still");
        client_close(a);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A header, then the balancer's close (a health check that says nothing more): greeted, then
 * closed at once, not held until the idle timeout. */
Test(proxy, a_header_then_the_close_ends_at_once, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "idle_timeout = 60;\n");
        int fd = client_connect(port);

        client_send_str(fd, "PROXY UNKNOWN\r\n");
        client_shutdown_write(fd);
        client_expect_str(fd, HELLOD_GREETING);
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A header that names no client (v1 UNKNOWN: HAProxy relaying a client of a unix socket) but
 * opens a real conversation is logged at info level like any other; a health check that says
 * nothing (LOCAL) stays at debug. Every UNKNOWN and LOCAL close used to be at debug, so a whole
 * population of clients left no trace at the default level. */
Test(proxy, a_conversation_without_a_named_client_is_logged_at_info, .timeout = 60) {
        unsigned char local[64];
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", NULL);
        int fd = client_connect(port);

        client_send_str(fd, "PROXY UNKNOWN\r\n");
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "relayed");
        client_send_str(fd, "exit\n");
        client_expect_eof(fd, false);
        client_close(fd);
        hellod_wait_stderr(d, "closed: exit, 1 line");

        int check = client_connect(port);
        size_t n = v2_header(local, true, NULL, 0, 0);
        client_send(check, local, n);
        client_expect_str(check, HELLOD_GREETING);
        client_close(check);
        hellod_wait_stderr_count(d, "closed: eof", 2); /* the readiness probe's, then the check's */
        char *err = hellod_stderr(d);
        const char *conversation = strstr(err, "closed: exit, 1 line"), *health = strstr(err, "closed: eof");
        health = strstr(health + 1, "closed: eof");
        while (conversation > err && conversation[-1] != '\n')
                conversation--;
        while (health > err && health[-1] != '\n')
                health--;
        cr_expect(strncmp(strchr(conversation, ' '), " info: ", 7) == 0, "the conversation's close:\n%s", err);
        cr_expect(strncmp(strchr(health, ' '), " debug: ", 8) == 0, "the health check's close:\n%s", err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A thread per connection reads with a receive timeout (SO_RCVTIMEO) for the header's deadline;
 * without an idle timeout nothing must be left of it once the conversation starts, or the
 * thread would wake up every few seconds (or milliseconds) for as long as the client idles. */
Test(proxy, no_header_timeout_outlives_the_header, .timeout = 60) {
        uint16_t port;
        Hellod *d = start(&port, "\"127.0.0.1\"", "workers = \"per-connection\";\nidle_timeout = 0;\n");
        int fd = proxied_client(port, "192.0.2.7", 51234), end;
        struct timeval tv;
        socklen_t len = sizeof(tv);

        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "Michael");
        end = hellod_socket_dup(d, fd);
        cr_assert_eq(getsockopt(end, SOL_SOCKET, SO_RCVTIMEO, &tv, &len), 0);
        cr_expect(tv.tv_sec == 0 && tv.tv_usec == 0, "a receive timeout of %ld.%06ld s is left on the connection",
                  (long) tv.tv_sec, (long) tv.tv_usec);
        close(end);
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* An io_uring daemon leaves PROXY listeners to epoll at its start; one that a reload adds
 * cannot be served until the restart. The reload says so, naming the listener, and its
 * clients are closed before any greeting (a header answered as a line would be worse); the
 * other listeners serve on. */
Test(proxy, a_proxy_listener_added_to_io_uring_by_a_reload_is_named_and_refused, .timeout = 60) {
        Hellod *d = hellod_new();
        uint16_t port = harness_pick_port();
        char name[64];

        hellod_write_config(d, "listen = [ \"127.0.0.1:%u\" ];\nworkers = 1;\nio_backend = \"io_uring\";\n",
                            (unsigned) d->port);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        char *err = hellod_stderr(d);
        cr_assert_null(strstr(err, "the event loops use epoll"), "io_uring fell back to epoll: %s", err);
        free(err);
        hellod_write_config(d,
                            "listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = true; } );\n"
                            "proxy_from = [ \"127.0.0.1\" ];\nworkers = 1;\nio_backend = \"io_uring\";\n",
                            (unsigned) d->port, (unsigned) port);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded");
        snprintf(name, sizeof(name), "127.0.0.1:%u speaks the PROXY protocol", (unsigned) port);
        hellod_wait_stderr(d, name);
        int fd = proxied_client(port, "192.0.2.7", 51234);
        client_expect_eof(fd, true);
        client_close(fd);
        hellod_wait_stderr(d, "does not read PROXY headers");
        fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_hello(fd, "still served");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}
