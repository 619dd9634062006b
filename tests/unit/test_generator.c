/* test_generator: hellod-socket-generator. The pure part, dropin_format(): a configuration
 * becomes the hellod.socket drop-in text (listen forms, port, backlog, the dual-stack default,
 * host names refused), and dropin_service_format() the hellod.service one (the file descriptor
 * store sized from max_connections). Then the real binary (HELLOD_GENERATOR_BIN), run as
 * systemd runs it on configuration files: what it leaves in its output directory, what it
 * says, its exit status. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conf.h"
#include "dropin.h"

/* ---- dropin_format() ---------------------------------------------------------------------- */

typedef struct Formatted {
        int r;
        char *text;
        char err[1024];
} Formatted;

static Formatted format_conf(const char *conf_text) {
        Formatted f = { 0 };
        char err[1024];
        Conf *c = NULL;

        int r = conf_load_text("/etc/hellod/hellod.conf", conf_text, strlen(conf_text), &c, err, sizeof(err));
        cr_assert_eq(r, 0, "the test's config is invalid: %s", err);
        f.r = dropin_format(c, &f.text, f.err, sizeof(f.err));
        conf_unref(c);
        return f;
}

/* body: TEXT without its leading comment lines (which say where it came from). */
static const char *body(const char *text) {
        while (text[0] == '#') {
                const char *nl = strchr(text, '\n');
                cr_assert_not_null(nl);
                text = nl + 1;
        }
        return text;
}

static void expect_dropin(const char *conf_text, const char *expected) {
        Formatted f = format_conf(conf_text);

        cr_assert_eq(f.r, 0, "dropin_format failed: %s", f.err);
        cr_expect_str_eq(body(f.text), expected, "for the config:\n%s", conf_text);
        free(f.text);
}

Test(dropin, default_listen_is_the_packaged_dual_stack_form) {
        expect_dropin("", "[Socket]\nListenStream=\nListenStream=9999\nBindIPv6Only=both\nBacklog=511\n");
        expect_dropin("port = 7777;\nbacklog = 64;\n", "[Socket]\nListenStream=\nListenStream=7777\nBindIPv6Only=both\nBacklog=64\n");
}

Test(dropin, the_issue_example) {
        expect_dropin("listen = [\"127.0.0.1\"];\nport = 7777;\n",
                      "[Socket]\nListenStream=\nListenStream=127.0.0.1:7777\nBindIPv6Only=ipv6-only\n"
                      "FreeBind=yes\nBacklog=511\n");
}

Test(dropin, every_listen_form) {
        expect_dropin("listen = [\"192.0.2.7:8001\", \"::1\", \"[2001:db8::1]\", \"[2001:db8::2]:8002\", "
                      "\"2001:db8:0:0:0:0:0:3\"];\nport = 7000;\nbacklog = 1000;\n",
                      "[Socket]\nListenStream=\nListenStream=192.0.2.7:8001\nListenStream=[::1]:7000\n"
                      "ListenStream=[2001:db8::1]:7000\nListenStream=[2001:db8::2]:8002\n"
                      "ListenStream=[2001:db8::3]:7000\nBindIPv6Only=ipv6-only\nFreeBind=yes\nBacklog=1000\n");
}

/* systemd.socket(5) takes a link-local address's interface after the port, with its '%'
 * doubled: systemd expands specifiers there (binary/a_link_local_dropin_is_read_by_systemd). */
Test(dropin, a_link_local_address_keeps_its_interface) {
        expect_dropin("listen = [\"[fe80::1%eth0]:8001\", \"FE80:0::2%br0\"];\nport = 7000;\n",
                      "[Socket]\nListenStream=\nListenStream=[fe80::1]:8001%%eth0\nListenStream=[fe80::2]:7000%%br0\n"
                      "BindIPv6Only=ipv6-only\nFreeBind=yes\nBacklog=511\n");
}

/* Linux allows a '\\' in an interface's name; ending a unit file line, it would continue the
 * line into the next. */
Test(dropin, an_interface_name_with_a_backslash_is_refused) {
        Formatted f = format_conf("listen = [\"127.0.0.1\",\n  \"fe80::1%eth\\\\\"];\n");

        cr_assert_eq(f.r, -EINVAL);
        cr_assert_null(f.text);
        cr_expect(strstr(f.err, "/etc/hellod/hellod.conf:2: listen: 'fe80::1%eth\\': an interface name with a '\\'"),
                  "%s", f.err);
}

/* Both wildcards listed: two sockets, which can coexist only because the IPv6 one is
 * IPv6-only (as hellod's own are). */
Test(dropin, both_wildcards_are_two_sockets) {
        expect_dropin("listen = [\"0.0.0.0\", \"::\"];\n",
                      "[Socket]\nListenStream=\nListenStream=0.0.0.0:9999\nListenStream=[::]:9999\n"
                      "BindIPv6Only=ipv6-only\nFreeBind=yes\nBacklog=511\n");
}

Test(dropin, localhost_is_both_loopbacks_once) {
        expect_dropin("listen = [\"localhost\", \"127.0.0.1\", \"LocalHost:8000\", \"[::0]:8001\"];\n",
                      "[Socket]\nListenStream=\nListenStream=127.0.0.1:9999\nListenStream=[::1]:9999\n"
                      "ListenStream=127.0.0.1:8000\nListenStream=[::1]:8000\nListenStream=[::]:8001\n"
                      "BindIPv6Only=ipv6-only\nFreeBind=yes\nBacklog=511\n");
}

/* "localhost" is ::1 here too: beside "::" on its port, systemd could not bind both. */
Test(dropin, localhost_beside_the_ipv6_wildcard_is_refused) {
        Formatted f = format_conf("listen = [\"::\", \"127.0.0.1:8000\",\n  \"LocalHost\"];\n");

        cr_assert_eq(f.r, -EINVAL);
        cr_assert_null(f.text);
        cr_expect(strstr(f.err, "/etc/hellod/hellod.conf:2: listen: 'LocalHost' is 127.0.0.1 and ::1 under socket "
                                "activation, and ::1 port 9999 is already served by '::'"),
                  "%s", f.err);
        f = format_conf("listen = [\"[::]:8000\", \"localhost\"];\n");
        cr_expect_eq(f.r, 0, "%s", f.err);
        free(f.text);
}

Test(dropin, a_host_name_is_refused_with_the_file_and_the_name) {
        Formatted f = format_conf("listen = [\"127.0.0.1\", \"example.org:8000\"];\n");

        cr_assert_eq(f.r, -EINVAL);
        cr_assert_null(f.text);
        cr_expect(strstr(f.err, "/etc/hellod/hellod.conf:1: listen: 'example.org'"), "%s", f.err);
        cr_expect(strstr(f.err, "write the address instead"), "%s", f.err);
}

/* PROXY listeners by address are hellod.socket's like any other; sockets by name belong to a
 * socket unit the administrator writes, so they add nothing here. */
Test(dropin, listen_groups) {
        expect_dropin("listen = ( \"0.0.0.0\", { address = \"127.0.0.1:10001\"; proxy_protocol = true; },\n"
                      "  { name = \"hellod-proxy\"; proxy_protocol = true; }, { address = \"[::1]\"; } );\n"
                      "proxy_from = [ \"127.0.0.1\" ];\n",
                      "[Socket]\nListenStream=\nListenStream=0.0.0.0:9999\nListenStream=127.0.0.1:10001\n"
                      "ListenStream=[::1]:9999\nBindIPv6Only=ipv6-only\nFreeBind=yes\nBacklog=511\n");
}

Test(dropin, names_only_leave_hellod_socket_without_an_address) {
        Formatted f = format_conf("listen = ( { name = \"a\"; }, { name = \"b\"; proxy_protocol = true; } );\n"
                                  "proxy_from = [ \"::1\" ];\n");

        cr_assert_eq(f.r, -EINVAL);
        cr_assert_null(f.text);
        cr_expect(strstr(f.err, "/etc/hellod/hellod.conf: listen: every entry is a socket by name"), "%s", f.err);
}

Test(dropin, the_header_names_the_file_and_the_next_step) {
        Formatted f = format_conf("port = 7777;\n");

        cr_assert_eq(f.r, 0, "%s", f.err);
        cr_expect(strstr(f.text, "# Generated by hellod-socket-generator from /etc/hellod/hellod.conf"), "%s", f.text);
        cr_expect(strstr(f.text, "systemctl daemon-reload && systemctl restart hellod.socket"), "%s", f.text);
        free(f.text);
}

static void expect_service_dropin(const char *conf_text, const char *expected) {
        char err[1024];
        char *text = NULL;
        Conf *c = NULL;

        cr_assert_eq(conf_load_text("/etc/hellod/hellod.conf", conf_text, strlen(conf_text), &c, err, sizeof(err)), 0,
                     "%s", err);
        cr_assert_eq(dropin_service_format(c, &text), 0);
        conf_unref(c);
        cr_expect_str_eq(body(text), expected, "for the config:\n%s", conf_text);
        cr_expect(strstr(text, "# Generated by hellod-socket-generator from /etc/hellod/hellod.conf ('max_connections', 'workers')"),
                  "%s", text);
        free(text);
}

/* Every connection the configuration allows, plus the state memfd and a margin. */
Test(dropin, the_fd_store_is_sized_from_max_connections) {
        const char *comment = "# Every live conversation, and the hand-over state, kept across a restart.\n";
        char expected[256];

        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=1088\n", comment);
        expect_service_dropin("", expected);
        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=19064\n", comment);
        expect_service_dropin("max_connections = 19000;\n", expected);
        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=65\n", comment);
        expect_service_dropin("max_connections = 1;\n", expected);
        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=1000064\n", comment);
        expect_service_dropin("max_connections = 1000000;\n", expected);
}

/* A thread per connection lets an ended conversation linger outside its slot (lingerer.h): up to
 * max_connections lingering sockets beside max_connections live ones, each handed over at a
 * restart. A store sized for the live ones alone refused the rest, and their clients met a reset. */
Test(dropin, the_fd_store_holds_the_lingering_sockets_of_a_thread_per_connection) {
        const char *comment = "# Every live conversation, every lingering close, and the hand-over state, kept "
                              "across a restart.\n";
        char expected[256];

        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=2112\n", comment);
        expect_service_dropin("workers = \"per-connection\";\n", expected);
        snprintf(expected, sizeof(expected), "[Service]\n%sFileDescriptorStoreMax=264\n", comment);
        expect_service_dropin("workers = \"per-connection\";\nmax_connections = 100;\n", expected);
}

/* ---- the binary ----------------------------------------------------------------------------- */

typedef struct Run {
        char dir[256];         /* a temporary directory: the config and out/ */
        char out[300];         /* the output directory given as argv[1] */
        char dropin[PATH_MAX]; /* where the socket's drop-in goes */
        char service_dropin[PATH_MAX]; /* and the service's */
        char conf[PATH_MAX];
        int status;     /* exit status */
        char said[4096]; /* stderr */
} Run;

static void run_setup(Run *r) {
        const char *tmp = getenv("TMPDIR");

        memset(r, 0, sizeof(*r));
        snprintf(r->dir, sizeof(r->dir), "%s/test-generator-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        cr_assert_not_null(mkdtemp(r->dir), "mkdtemp: %s", strerror(errno));
        cr_assert_lt(strlen(r->dir), 128, "TMPDIR is too long for this test: %s", r->dir);
        snprintf(r->out, sizeof(r->out), "%s/out", r->dir);
        cr_assert_eq(mkdir(r->out, 0755), 0);
        snprintf(r->dropin, sizeof(r->dropin), "%s/" DROPIN_DIR "/" DROPIN_FILE, r->out);
        snprintf(r->service_dropin, sizeof(r->service_dropin), "%s/" DROPIN_SERVICE_DIR "/" DROPIN_FILE, r->out);
        snprintf(r->conf, sizeof(r->conf), "%s/hellod.conf", r->dir);
}

static void run_cleanup(Run *r) {
        char cmd[PATH_MAX + 16];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
        cr_expect_eq(system(cmd), 0);
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        cr_assert_not_null(f, "%s: %s", path, strerror(errno));
        fputs(text, f);
        cr_assert_eq(fclose(f), 0);
}

static char *read_file(const char *path) {
        static char buf[4096];
        FILE *f = fopen(path, "re");

        if (!f)
                return NULL;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

/* generate: the binary, as systemd calls it (three directories), with the config at CONF
 * (HELLOD_GENERATOR_CONFIG) and without $SYSTEMD_SCOPE, so that it speaks on stderr. */
static void generate(Run *r, const char *conf) {
        const char *bin = getenv("HELLOD_GENERATOR_BIN");
        char err_path[PATH_MAX + 8];

        cr_assert(bin && *bin, "HELLOD_GENERATOR_BIN is not set (meson sets it)");
        snprintf(err_path, sizeof(err_path), "%s/stderr", r->dir);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                FILE *e = freopen(err_path, "w", stderr); /* not "e": it must survive exec */
                if (!e)
                        _exit(126);
                unsetenv("SYSTEMD_SCOPE");
                setenv("HELLOD_GENERATOR_CONFIG", conf, 1);
                execl(bin, bin, r->out, r->out, r->out, (char *) NULL);
                _exit(127);
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status), "the generator did not exit normally (status %d)", status);
        r->status = WEXITSTATUS(status);
        const char *said = read_file(err_path);
        snprintf(r->said, sizeof(r->said), "%s", said ? said : "");
}

/* out_entries: the names in the output directory (the generator must write nothing else). */
static int out_entries(const Run *r) {
        DIR *d = opendir(r->out);
        int n = 0;

        cr_assert_not_null(d);
        for (struct dirent *e; (e = readdir(d));)
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

Test(binary, a_valid_config_becomes_the_dropin) {
        Run r;

        run_setup(&r);
        write_file(r.conf, "listen = [\"127.0.0.1\"];\nport = 7777;\nbacklog = 128;\n");
        generate(&r, r.conf);
        cr_expect_eq(r.status, 0, "said: %s", r.said);
        cr_expect_str_empty(r.said);
        const char *text = read_file(r.dropin);
        cr_assert_not_null(text, "no %s", r.dropin);
        cr_expect(strstr(text, "\n[Socket]\nListenStream=\nListenStream=127.0.0.1:7777\n"), "%s", text);
        cr_expect(strstr(text, "\nBacklog=128\n"), "%s", text);
        text = read_file(r.service_dropin);
        cr_assert_not_null(text, "no %s", r.service_dropin);
        cr_expect(strstr(text, "\n[Service]\n"), "%s", text);
        cr_expect(strstr(text, "\nFileDescriptorStoreMax=1088\n"), "%s", text);
        cr_expect_eq(out_entries(&r), 2, "more than hellod.socket.d/ and hellod.service.d/ in the output directory");
        run_cleanup(&r);
}

/* systemd's own parser (systemd-analyze verify) reads every line of the drop-in as written:
 * a link-local address's interface came out as "%eth0", which systemd took for the unknown
 * specifier %e and ignored the line ("%lo" became the host name), so hellod.socket never
 * listened there. */
Test(binary, a_link_local_dropin_is_read_by_systemd) {
        char unit[PATH_MAX + 32], cmd[2 * PATH_MAX], said[4096];
        Run r;

        run_setup(&r);
        /* Interfaces every host has: systemd looks a name up as it reads the line. */
        write_file(r.conf, "listen = [\"[fe80::1%lo]:8001\", \"fe80::2%lo\", \"fe80::3%7\", \"127.0.0.1\"];\n");
        generate(&r, r.conf);
        cr_assert_eq(r.status, 0, "said: %s", r.said);
        const char *text = read_file(r.dropin);
        cr_assert_not_null(text, "no %s", r.dropin);
        snprintf(unit, sizeof(unit), "%s/hellod.socket", r.dir);
        write_file(unit, text);
        snprintf(unit, sizeof(unit), "%s/hellod.service", r.dir);
        write_file(unit, "[Service]\nExecStart=/bin/true\n");
        snprintf(cmd, sizeof(cmd), "systemd-analyze verify '%s/hellod.socket' 2>&1", r.dir);
        FILE *p = popen(cmd, "r");
        cr_assert_not_null(p);
        size_t n = fread(said, 1, sizeof(said) - 1, p);
        said[n] = '\0';
        int status = pclose(p);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0 && !strstr(said, "ignoring"),
                  "systemd-analyze verify of\n%s\nsaid (status %d):\n%s", text, status, said);
        run_cleanup(&r);
}

/* expect_no_dropin: neither drop-in for CONF_TEXT (NULL: no file), and the generator says SAID. */
static void expect_no_dropin(const char *conf_text, const char *said) {
        Run r;

        run_setup(&r);
        if (conf_text)
                write_file(r.conf, conf_text);
        generate(&r, r.conf);
        cr_expect_eq(r.status, 0, "a config problem must not fail the generator; said: %s", r.said);
        cr_expect_eq(access(r.dropin, F_OK), -1, "a drop-in was written for:\n%s", conf_text ? conf_text : "(none)");
        cr_expect_eq(access(r.service_dropin, F_OK), -1, "a service drop-in was written for:\n%s",
                     conf_text ? conf_text : "(none)");
        cr_expect_eq(out_entries(&r), 0, "the output directory is not empty");
        cr_expect(strstr(r.said, said), "expected '%s' in what it said: %s", said, r.said);
        cr_expect(strstr(r.said, "hellod-socket-generator: "), "%s", r.said);
        run_cleanup(&r);
}

Test(binary, an_invalid_config_leaves_the_packaged_socket_and_says_why) {
        expect_no_dropin("listen = [\"127.0.0.1\"];\nport = 77777;\n", "hellod.conf:2: port:");
        expect_no_dropin("listen = [\"127.0.0.1\"];\nport = = 7777;\n", "hellod.conf:2");
        expect_no_dropin("listen = [\"127.0.0.1\"];\nno_such_key = 1;\n", "no_such_key");
}

Test(binary, a_missing_config_leaves_the_packaged_socket) {
        expect_no_dropin(NULL, "not found");
}

/* The socket cannot follow a host name; the service's store is sized all the same. */
Test(binary, a_host_name_leaves_the_packaged_socket_and_says_why) {
        Run r;

        run_setup(&r);
        write_file(r.conf, "max_connections = 50;\nlisten = [\"example.org\"];\n");
        generate(&r, r.conf);
        cr_expect_eq(r.status, 0, "said: %s", r.said);
        /* the file and the line of the entry, as every other error about the file */
        cr_expect(strstr(r.said, ".conf:2: listen: 'example.org' is a host name"), "%s", r.said);
        cr_expect_eq(access(r.dropin, F_OK), -1, "a socket drop-in was written");
        const char *text = read_file(r.service_dropin);
        cr_assert_not_null(text, "no %s", r.service_dropin);
        cr_expect(strstr(text, "\nFileDescriptorStoreMax=114\n"), "%s", text);
        cr_expect_eq(out_entries(&r), 1);
        run_cleanup(&r);
}

Test(binary, usage_errors_fail) {
        const char *bin = getenv("HELLOD_GENERATOR_BIN");
        char cmd[PATH_MAX + 64];

        cr_assert(bin && *bin);
        snprintf(cmd, sizeof(cmd), "'%s' 2>/dev/null", bin);
        cr_expect_neq(system(cmd), 0, "no directory");
        snprintf(cmd, sizeof(cmd), "'%s' relative/dir 2>/dev/null", bin);
        cr_expect_neq(system(cmd), 0, "a relative directory");
}
