/* test-config: the configuration through the real binary: `-t` and `-T`, @include, reloads of a
 * broken configuration, and the messages an operator reads. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"

HELLOD_SUITE(config);

/* A verdict must come at once: a FIFO or a slow check would show here as seconds. */
#define PROMPT_MS 3000

static bool exited_with(int status, int code) {
        return WIFEXITED(status) && WEXITSTATUS(status) == code;
}

/* in_dir: PATH for NAME in D's directory. */
static const char *in_dir(const Hellod *d, const char *name, char *buf, size_t size) {
        snprintf(buf, size, "%s/%s", d->dir, name);
        return buf;
}

static void write_in_dir(const Hellod *d, const char *name, const char *text) {
        char path[512];

        harness_write_file(in_dir(d, name, path, sizeof(path)), text, strlen(text));
}

/* run_check: `hellod ARG -c CONF` (ARG: -t or -T); its status, promptly. */
static int run_check(Hellod *d, const char *arg) {
        int64_t start = harness_now_ms();
        int status = hellod_run(d, (const char *const[]) { arg, "-c", d->conf_path, NULL });
        int64_t took = harness_now_ms() - start;

        if (took > PROMPT_MS)
                hellod_fail(d, "hellod %s took %lld ms", arg, (long long) took);
        return status;
}

/* expect_check_fails: `hellod -t` exits 78 and stderr contains every NEEDLE (NULL-terminated). */
static void expect_check_fails(Hellod *d, const char *const *needles) {
        char buf[96], *err;
        int status = run_check(d, "-t");

        err = hellod_stderr(d);
        if (!exited_with(status, HELLOD_EXIT_CONFIG))
                hellod_fail(d, "-t: %s, expected %d; stderr:\n%s", harness_describe_status(status, buf, sizeof(buf)),
                            HELLOD_EXIT_CONFIG, err);
        for (size_t i = 0; needles[i]; i++)
                cr_expect(strstr(err, needles[i]), "-t stderr lacks \"%s\":\n%s", needles[i], err);
        free(err);
}

/* ---- @include ---- */

Test(config, check_refuses_bad_includes_promptly, .timeout = 60) {
        Hellod *d = hellod_new();
        char path[512], needle[600];

        harness_step("@include of a directory");
        cr_assert_eq(mkdir(in_dir(d, "dir.conf", path, sizeof(path)), 0755), 0);
        hellod_write_config_std(d, "@include \"dir.conf\"\n");
        snprintf(needle, sizeof(needle), "%s:3: @include \"dir.conf\"", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, "is a directory", NULL });

        harness_step("@include of a FIFO nobody writes to");
        cr_assert_eq(mkfifo(in_dir(d, "fifo.conf", path, sizeof(path)), 0644), 0);
        hellod_write_config_std(d, "@include \"fifo.conf\"\n");
        expect_check_fails(d, (const char *const[]) { "@include \"fifo.conf\"", "is not a regular file", NULL });

        harness_step("@include of a missing file");
        hellod_write_config_std(d, "\n@include \"missing.conf\"\n");
        snprintf(needle, sizeof(needle), "%s:4: @include \"missing.conf\"", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, "No such file or directory", NULL });

        harness_step("an out-of-range integer in an included file");
        write_in_dir(d, "wide.conf", "\nidle_timeout = 4294967296;\n");
        hellod_write_config_std(d, "@include \"wide.conf\"\n");
        snprintf(needle, sizeof(needle), "%s:2: idle_timeout: must be between 0 and 86400",
                 in_dir(d, "wide.conf", path, sizeof(path)));
        expect_check_fails(d, (const char *const[]) { needle, NULL });
        hellod_free(d);
}

Test(config, check_refuses_group_without_user, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[600];

        hellod_write_config_std(d, "group = \"nogroup\";\n");
        snprintf(needle, sizeof(needle), "%s:3: group: ", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, "set 'user' too", NULL });

        harness_step("and the daemon does not start either");
        hellod_spawn(d, NULL);
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        cr_assert(exited_with(status, HELLOD_EXIT_CONFIG), "start with group alone: status %d", status);
        hellod_free(d);
}

/* spawn_on_default_dir: hellod without --config (ARGS, NULL-terminated, or NULL), with MINE
 * mounted over the directory of its default path in a private mount namespace (unshare, as
 * root); that directory is made if the machine has none (and left: another test's mount may
 * stand on it). Returns the default path, SYSCONFDIR/hellod/hellod.conf. */
static const char *spawn_on_default_dir_in(Hellod *d, const char *mine, const char *const *args, bool own_net) {
        static const char script[] = "mount --bind \"$1\" \"$2\" && bin=$3 && shift 5 && exec \"$bin\" \"$@\"";
        static const char net_script[] = "ip link set lo up && mount --bind \"$1\" \"$2\" && bin=$3 && shift 5 && "
                                         "exec \"$bin\" \"$@\"";
        static char dir[256];
        const char *path = getenv("HELLOD_DEFAULT_CONF");

        cr_assert_not_null(path, "HELLOD_DEFAULT_CONF is not set (run through meson test)");
        const char *base = strrchr(path, '/');
        cr_assert(base && base > path, "%s: no directory", path);
        snprintf(dir, sizeof(dir), "%.*s", (int) (base - path), path);
        cr_assert(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", dir, strerror(errno));
        const char *const wrapper[] = { "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                                        script, "sh", mine, dir, NULL };
        const char *const net_wrapper[] = { "/usr/bin/unshare", "--mount", "--propagation", "private", "--net",
                                            "/bin/sh", "-c", net_script, "sh", mine, dir, NULL };
        hellod_spawn(d, &(HellodOpts) { .wrapper = own_net ? net_wrapper : wrapper, .extra_args = args });
        return path;
}

static const char *spawn_on_default_dir(Hellod *d, const char *mine, const char *const *args) {
        return spawn_on_default_dir_in(d, mine, args, false);
}

/* With no file at its default path (a fresh install, a minimal container) hellod says so and
 * runs on the built-in defaults: -t and -T accept them (port 9999), and a start serves on port
 * 9999, every address; that start runs in a network namespace of its own, where port 9999 is
 * free whatever the machine runs. */
Test(config, a_start_without_the_default_file_runs_on_the_built_in_defaults, .timeout = 60) {
        char mine[300], cmd[256], reply[256] = "", buf[96];
        Hellod *d = hellod_new();

        snprintf(mine, sizeof(mine), "%s/defaults", d->dir);
        cr_assert(mkdir(mine, 0755) == 0, "mkdir %s: %s", mine, strerror(errno));
        harness_step("hellod -T");
        const char *path = spawn_on_default_dir(d, mine, (const char *const[]) { "-T", NULL });
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        char *err = hellod_stderr(d), *out = hellod_stdout(d);
        cr_expect(exited_with(status, HELLOD_EXIT_OK), "-T without %s: %s\n%s", path,
                  harness_describe_status(status, buf, sizeof(buf)), err);
        cr_expect(strstr(err, "not found, built-in defaults apply"), "no word of the defaults:\n%s", err);
        cr_expect(strstr(out, "(built-in defaults)") && strstr(out, "port = 9999;"), "-T printed:\n%s", out);
        free(err);
        free(out);
        hellod_free(d);

        harness_step("hellod, in a network namespace of its own");
        d = hellod_new();
        snprintf(mine, sizeof(mine), "%s/defaults", d->dir);
        cr_assert(mkdir(mine, 0755) == 0, "mkdir %s: %s", mine, strerror(errno));
        spawn_on_default_dir_in(d, mine, NULL, true);
        hellod_wait_stderr(d, " started: config ");
        err = hellod_stderr(d);
        cr_expect(strstr(err, "(absent: built-in defaults)"), "not started on the defaults:\n%s", err);
        free(err);
        snprintf(cmd, sizeof(cmd),
                 "nsenter -t %d -n bash -c 'exec 3<>/dev/tcp/127.0.0.1/9999 && printf \"x\\nexit\\n\" >&3 && "
                 "timeout 10 cat <&3'", (int) d->pid);
        FILE *p = popen(cmd, "r");
        cr_assert_not_null(p, "popen: %s", strerror(errno));
        size_t n = fread(reply, 1, sizeof(reply) - 1, p);
        reply[n] = '\0';
        cr_expect_eq(pclose(p), 0, "%s", cmd);
        cr_expect_str_eq(reply, HELLOD_GREETING "Hello, x!\r\n", "port 9999 in the namespace answered");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Without --config hellod reads its default path, and runs on built-in defaults while that file
 * is absent. Once it has read the file, a reload that finds it gone fails and keeps the running
 * configuration (as nginx and sshd refuse a missing file): it used to put every key back to its
 * default, listening on every address with no access list. */
Test(config, a_reload_without_the_default_file_it_read_fails, .timeout = 60) {
        char mine[300], file[400], text[128];
        Hellod *d = hellod_new();

        snprintf(mine, sizeof(mine), "%s/defaults", d->dir);
        snprintf(file, sizeof(file), "%s/hellod.conf", mine);
        cr_assert(mkdir(mine, 0755) == 0, "mkdir %s: %s", mine, strerror(errno));
        int n = snprintf(text, sizeof(text), "listen = [ \"127.0.0.1\" ];\nport = %u;\n", (unsigned) d->port);
        harness_write_file(file, text, (size_t) n);

        const char *path = spawn_on_default_dir(d, mine, NULL);
        hellod_wait_ready(d);
        /* The listeners serve a moment before the line is written (CI's TSan run saw the gap). */
        hellod_wait_stderr(d, " started: config ");
        char *err = hellod_stderr(d);
        cr_assert(strstr(err, path) && !strstr(err, "built-in defaults"), "not started on %s:\n%s", path, err);
        free(err);

        harness_step("the file gone, a reload");
        cr_assert(unlink(file) == 0, "unlink %s: %s", file, strerror(errno));
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "reload failed, keeping the running configuration");
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);

        harness_step("the file back, a reload");
        harness_write_file(file, text, (size_t) n);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded from");
        err = hellod_stderr(d);
        cr_expect(!strstr(err, "built-in defaults"), "%s", err);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* 64 listeners, the most a configuration may name, do not fit the "started" line: it names as
 * many as fit, each one whole, and counts the rest. It used to cut the list at 1,024 bytes, in
 * the middle of a name, with nothing to say that more followed. */
Test(config, the_started_line_counts_the_listeners_it_cannot_name, .timeout = 60) {
        enum { LISTENERS = 64 };
        char text[2048], tail[32];
        Hellod *d = hellod_new();
        unsigned more = 0, named = 0;
        size_t n = (size_t) snprintf(text, sizeof(text), "port = %u;\nlisten = [", (unsigned) d->port);

        for (int i = 1; i <= LISTENERS; i++)
                n += (size_t) snprintf(text + n, sizeof(text) - n, "%s\"127.0.0.%d\"", i > 1 ? ", " : " ", i);
        cr_assert_lt(n, sizeof(text) - 8);
        hellod_write_config(d, "%s ];\n", text);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        hellod_wait_stderr(d, " started: config ");
        char *err = hellod_stderr(d);
        char *line = strstr(err, "listening on ");
        cr_assert(line, "no listeners in the started line:\n%s", err);
        *strchrnul(line, '\n') = '\0';
        for (const char *p = line; (p = strstr(p, "127.0.0.")); p++)
                named++;
        const char *and = strstr(line, ", and ");
        cr_assert(and && sscanf(and, ", and %u more", &more) == 1, "no count of the rest: %s", line);
        snprintf(tail, sizeof(tail), ":%u, and ", (unsigned) d->port);
        cr_expect(strstr(line, tail) == and - strlen(tail) + strlen(", and "), "the last name is cut: %s", line);
        cr_expect_eq(named + more, LISTENERS, "%u named and %u more: %s", named, more, line);
        free(err);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A dangling symbolic link at the default path is a mistake, not an absent file: it used to
 * read as "no file", and hellod ran on built-in defaults (every address, no access list). It
 * is a configuration error naming the path, for -t and for a start alike. */
Test(config, a_dangling_link_at_the_default_path_is_an_error, .timeout = 60) {
        const char *const modes[][2] = { { "-t", NULL }, { NULL, NULL } };
        char mine[300], link_path[400], target[400], needle[600];

        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                Hellod *d = hellod_new();

                harness_step("%s", modes[i][0] ? "hellod -t" : "hellod");
                snprintf(mine, sizeof(mine), "%s/defaults", d->dir);
                snprintf(link_path, sizeof(link_path), "%s/hellod.conf", mine);
                snprintf(target, sizeof(target), "%s/moved.conf", d->dir);
                cr_assert(mkdir(mine, 0755) == 0, "mkdir %s: %s", mine, strerror(errno));
                cr_assert(symlink(target, link_path) == 0, "symlink %s: %s", link_path, strerror(errno));
                const char *path = spawn_on_default_dir(d, mine, modes[i][0] ? modes[i] : NULL);
                int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
                char *err = hellod_stderr(d);
                cr_expect(exited_with(status, HELLOD_EXIT_CONFIG), "status %d:\n%s", status, err);
                snprintf(needle, sizeof(needle), "%s: a symbolic link to", path);
                cr_expect(strstr(err, needle) && !strstr(err, "built-in defaults"), "no error naming %s:\n%s",
                          path, err);
                free(err);
                hellod_free(d);
        }
}

/* A reload whose includes cannot be read keeps the running configuration, and never blocks. */
Test(config, reload_with_bad_include_keeps_old_config, .timeout = 90) {
        static const char *const bad[] = { "dir.conf", "fifo.conf", "wide.conf" };
        Hellod *d = hellod_start("greeting = \"Before!\";\n");
        char path[512];
        int fd;

        cr_assert_eq(mkdir(in_dir(d, "dir.conf", path, sizeof(path)), 0755), 0);
        cr_assert_eq(mkfifo(in_dir(d, "fifo.conf", path, sizeof(path)), 0644), 0);
        write_in_dir(d, "wide.conf", "idle_timeout = 4294967296;\n");
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char needle[600];

                harness_step("reload with @include \"%s\"", bad[i]);
                hellod_write_config_std(d, "greeting = \"After!\";\n@include \"%s\"\n", bad[i]);
                hellod_signal(d, SIGHUP);
                if (i < 2)
                        snprintf(needle, sizeof(needle),
                                 "reload failed, keeping the running configuration: %s:4: @include \"%s\"",
                                 d->conf_path, bad[i]);
                else
                        snprintf(needle, sizeof(needle),
                                 "reload failed, keeping the running configuration: %s:1: idle_timeout",
                                 in_dir(d, "wide.conf", path, sizeof(path)));
                hellod_wait_stderr(d, needle);
                cr_assert(hellod_alive(d), "hellod died reloading an @include of %s", bad[i]);
                fd = client_connect(d->port);
                client_expect_str(fd, "Before!\r\n");
                client_hello(fd, "still before");
                client_close(fd);
        }

        harness_step("a good reload still works afterwards");
        hellod_write_config_std(d, "greeting = \"After!\";\n");
        hellod_signal(d, SIGHUP);
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, "After!\r\n", "Before!\r\n");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The main file, too, is read only when it is a regular file: a FIFO left at its path used to
 * block `hellod -t` and the reload itself in open() until a writer came, the daemon's main
 * loop (signals, the watchdog) with it. */
Test(config, a_fifo_as_the_config_file_is_refused_promptly, .timeout = 60) {
        Hellod *d = hellod_start("greeting = \"Before!\";\n");
        char needle[600];
        int fd, status;

        harness_step("a reload keeps the running configuration");
        cr_assert_eq(unlink(d->conf_path), 0);
        cr_assert_eq(mkfifo(d->conf_path, 0644), 0);
        hellod_signal(d, SIGHUP);
        snprintf(needle, sizeof(needle), "reload failed, keeping the running configuration: %s: is not a regular file",
                 d->conf_path);
        hellod_wait_stderr(d, needle);
        fd = client_connect(d->port);
        client_expect_str(fd, "Before!\r\n");
        client_close(fd);

        harness_step("a good reload still works afterwards");
        cr_assert_eq(unlink(d->conf_path), 0);
        hellod_write_config_std(d, "greeting = \"After!\";\n");
        hellod_signal(d, SIGHUP);
        fd = client_connect_greeted("127.0.0.1", d->port, NULL, "After!\r\n", "Before!\r\n");
        client_close(fd);
        hellod_stop_clean(d);

        harness_step("-t and a start refuse it");
        cr_assert_eq(unlink(d->conf_path), 0);
        cr_assert_eq(mkfifo(d->conf_path, 0644), 0);
        snprintf(needle, sizeof(needle), "%s: is not a regular file", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });
        hellod_spawn(d, NULL);
        status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        cr_assert(exited_with(status, HELLOD_EXIT_CONFIG), "start with a FIFO: status %d", status);
        hellod_free(d);
}

/* A reload runs the checks `hellod -t` and a start run: a file naming a user that does not
 * exist is refused, the running configuration kept. It used to be applied (the new greeting
 * served), and the next restart failed with 78. */
Test(config, reload_refuses_what_the_check_refuses, .timeout = 60) {
        Hellod *d = hellod_start("greeting = \"Before!\";\n");
        char needle[600];

        hellod_write_config_std(d, "greeting = \"After!\";\nuser = \"no-such-hellod-user\";\n");
        snprintf(needle, sizeof(needle), "reload failed, keeping the running configuration: %s:4: user: ", d->conf_path);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, needle);
        int fd = client_connect(d->port);
        client_expect_str(fd, "Before!\r\n");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* expect_included_error: `hellod -t` of MAIN_TEXT, which includes NAME (TEXT), fails, naming NAME
 * and its LINE, then WHAT. */
static void expect_included_error(const char *name, const char *text, const char *main_text, unsigned line,
                                  const char *what) {
        Hellod *d = hellod_new();
        char path[512], needle[700];

        write_in_dir(d, name, text);
        hellod_write_config(d, "%s", main_text);
        snprintf(needle, sizeof(needle), "%s:%u: %s", in_dir(d, name, path, sizeof(path)), line, what);
        expect_check_fails(d, (const char *const[]) { needle, NULL });
        hellod_free(d);
}

/* An allow list written one entry a line, its last entry wrong, in an included file: the
 * error names that file and the entry's line, not the closing bracket's (libconfig's). */
Test(config, check_names_the_line_of_a_last_list_entry, .timeout = 60) {
        expect_included_error("access.conf", "allow = [\n  \"10.0.0.0/8\",\n  \"192.168.1.1/16\"\n\n];\n",
                              "@include \"access.conf\"\n", 3,
                              "allow: \"192.168.1.1/16\": has host bits set beyond /16 (did you mean 192.168.0.0/16?)");
}

/* ---- -t runs what a start would, -T prints the settings ---- */

/* Each configuration of issue 10 point 3 that used to pass -t and fail at start: 78, and a
 * message naming the file, the line, the key and the fix (the checks only a start can make
 * named the file alone). */
Test(config, check_runs_the_start_time_checks, .timeout = 60) {
        static const struct {
                const char *text;
                unsigned line;
                const char *key, *fix;
        } cases[] = {
                { "user = \"no-such-user-hellod\";\n", 1, "user: unknown user 'no-such-user-hellod'", "create it" },
                { "user = \"nobody\";\ngroup = \"no-such-group-hellod\";\n", 2, "group: unknown group", "create it" },
                { "listen = [ \"::1:9999\" ];\n", 1, "listen: \"::1:9999\"", "write \"[::1]:9999\"" },
                { "listen = [ \"[::ffff:127.0.0.1]:7003\" ];\n", 1, "listen: \"[::ffff:127.0.0.1]:7003\"",
                  "write \"127.0.0.1:7003\" instead" },
                { "listen = [ \"127.0.0.1\",\n  \"fe80::1\" ];\n", 2, "listen: \"fe80::1\": a link-local address",
                  "listen on \"::\" or a global address" },
                { "listen = ( \"localhost:7003\",\n  { address = \"127.0.0.1:7003\"; proxy_protocol = true; } );\n"
                  "proxy_from = [ \"127.0.0.1\" ];\n",
                  2, "listen: listen address '127.0.0.1' is 127.0.0.1:7003, which another entry also names",
                  "one with proxy_protocol and one without" },
        };
        Hellod *d = hellod_new();

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char where[600];

                harness_step("%s", cases[i].text);
                hellod_write_config(d, "%s", cases[i].text);
                snprintf(where, sizeof(where), "%s:%u: %s", d->conf_path, cases[i].line, cases[i].key);
                expect_check_fails(d, (const char *const[]) { where, cases[i].fix, NULL });
                harness_step("-T too: %s", cases[i].text);
                int status = run_check(d, "-T");
                cr_expect(exited_with(status, HELLOD_EXIT_CONFIG), "-T on a bad file: status %d", status);
        }
        hellod_free(d);
}

/* Started without socket activation, a listen list of socket names has nothing to bind: the
 * start fails and says where and why (it said "no address to listen on", no more). */
Test(config, a_start_with_only_socket_names_says_where_and_why, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[600];

        hellod_write_config(d, "greeting = \"Hi\";\nlisten = ( { name = \"hellod-extra\"; } );\n");
        hellod_spawn(d, NULL);
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        cr_expect(exited_with(status, HELLOD_EXIT_CONFIG), "started with nothing to listen on, and not exit 78");
        snprintf(needle, sizeof(needle), "%s:2: listen: no address to listen on (each entry names a socket systemd passes",
                 d->conf_path);
        hellod_wait_stderr(d, needle);
        hellod_free(d);
}

/* Started without socket activation, a socket name beside addresses has no socket to mark:
 * the start fails with a configuration error naming it (the name used to be skipped without a
 * word, and the PROXY listener meant was simply not there), and so does a reload adding one. */
Test(config, a_socket_name_without_socket_activation_is_a_configuration_error, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[600];

        hellod_write_config(d, "listen = ( \"127.0.0.1:%u\",\n  { name = \"balancer\"; proxy_protocol = true; } );\n"
                               "proxy_from = [ \"127.0.0.1\" ];\n",
                            (unsigned) d->port);
        cr_expect(exited_with(run_check(d, "-t"), HELLOD_EXIT_OK), "-t cannot know whether systemd will pass sockets");
        hellod_spawn(d, NULL);
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        cr_expect(exited_with(status, HELLOD_EXIT_CONFIG), "a start with a name and no socket passed did not exit 78");
        snprintf(needle, sizeof(needle),
                 "%s:2: listen: name \"balancer\": no socket was passed (a name marks a socket systemd passes;", d->conf_path);
        hellod_wait_stderr(d, needle);
        hellod_free(d);

        harness_step("a reload adding a name");
        d = hellod_start("greeting = \"Before!\";\n");
        hellod_write_config(d, "greeting = \"After!\";\nlisten = ( \"127.0.0.1:%u\", { name = \"balancer\"; } );\n",
                            (unsigned) d->port);
        snprintf(needle, sizeof(needle), "reload failed, keeping the running configuration: %s:", d->conf_path);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, needle);
        hellod_wait_stderr(d, "listen: name \"balancer\": no socket was passed");
        int fd = client_connect(d->port);
        client_expect_str(fd, "Before!\r\n");
        client_close(fd);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A user named in an @included file: the message names that file and its line. */
Test(config, check_names_the_included_file_of_an_unknown_user, .timeout = 60) {
        expect_included_error("who.conf", "# who runs hellod\n\nuser = \"no-such-user-hellod\";\n",
                              "greeting = \"Hi\";\n@include \"who.conf\"\n", 3, "user: unknown user");
}

static unsigned count_lines(const char *s) {
        unsigned n = 0;

        for (; *s; s++)
                n += *s == '\n';
        return n;
}

Test(config, check_is_short_and_dump_prints_settings, .timeout = 60) {
        Hellod *d = hellod_new();
        char buf[96], *out, *err;
        int status;

        hellod_write_config_std(d, "greeting = \"Hi\";\n");
        status = run_check(d, "-t");
        out = hellod_stdout(d);
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "-t: %s\n%s", harness_describe_status(status, buf, sizeof(buf)),
                  err);
        cr_expect_str_empty(out, "-t printed settings:\n%s", out);
        cr_expect(count_lines(out) + count_lines(err) <= 2, "-t printed more than two lines:\n%s%s", out, err);
        cr_expect(strstr(err, "is valid"), "-t: no verdict:\n%s", err);
        cr_expect(strncmp(err, "hellod: ", 8) == 0, "-t: not 'hellod: ...':\n%s", err);
        free(out);
        free(err);

        status = run_check(d, "-T");
        out = hellod_stdout(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "-T: %s", harness_describe_status(status, buf, sizeof(buf)));
        cr_expect(strstr(out, "greeting = \"Hi\";"), "-T lacks the greeting:\n%s", out);
        cr_expect(strstr(out, "max_connections = 1024;"), "-T lacks max_connections:\n%s", out);
        free(out);

        /* The effective settings: --log-level overrides the file's, as sshd -T applies -o. */
        hellod_write_config_std(d, "log_level = \"warning\";\n");
        status = hellod_run(d, (const char *const[]) { "-T", "--log-level", "debug", "-c", d->conf_path, NULL });
        out = hellod_stdout(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "-T -l: %s", harness_describe_status(status, buf, sizeof(buf)));
        cr_expect(strstr(out, "log_level = \"debug\";") && !strstr(out, "\"warning\""),
                  "-T --log-level debug does not show the level in force:\n%s", out);
        free(out);
        hellod_free(d);
}

/* Limits a start only warns about are shown by -t too, which still says valid. */
/* check_with_nofile: `hellod -t` of BODY under an open-files limit of NOFILE, which must pass;
 * returns its stderr (malloc'd). */
static char *check_with_nofile(Hellod *d, const char *body, rlim_t nofile) {
        char *err;
        int status;

        hellod_write_config_std(d, "%s", body);
        status = harness_run(&(HarnessSpawn) {
                .argv = (const char *const[]) { harness_env_path("HELLOD_BIN"), "-t", "-c", d->conf_path, NULL },
                .stdout_path = d->stdout_path,
                .stderr_path = d->stderr_path,
                .nofile = nofile,
        }, HARNESS_TIMEOUT_MS);
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        return err;
}

/* A backlog the kernel clamps: -t says so as a start does (the check an administrator runs
 * after tuning it), and still says valid. */
Test(config, check_notes_a_backlog_over_somaxconn, .timeout = 60) {
        Hellod *d = hellod_new();
        unsigned cap = 0;
        FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");

        cr_assert(f && fscanf(f, "%u", &cap) == 1, "cannot read net.core.somaxconn");
        fclose(f);
        char *err = check_with_nofile(d, "backlog = 65535;\n", 8192);
        char want[96];
        snprintf(want, sizeof(want), "backlog 65535 exceeds net.core.somaxconn, the kernel uses %u", cap);
        if (cap < 65535) /* else no backlog is over it, and none is noted */
                cr_expect(strstr(err, want) && strstr(err, "is valid"), "-t:\n%s", err);
        else
                cr_expect(!strstr(err, "somaxconn") && strstr(err, "is valid"), "-t:\n%s", err);
        free(err);
        err = check_with_nofile(d, "backlog = 16;\n", 8192);
        cr_expect(!strstr(err, "somaxconn"), "-t with a backlog the kernel takes:\n%s", err);
        free(err);
        hellod_free(d);
}

/* An IPv6 prefix over where IPv4 addresses live ("::/0", "::/8") is for IPv6 clients only:
 * written alone in a list, it was most likely meant for everyone, and -t says so; with an
 * IPv4 prefix beside it, it was not. The advice fits the list: "0.0.0.0/0" in proxy_from would
 * let every IPv4 peer name the client it likes (past allow, deny and the per-source limits). */
Test(config, check_warns_of_an_ipv6_prefix_meant_for_everyone, .timeout = 60) {
        static const struct {
                const char *text;
                bool warned;
                const char *advice;
        } cases[] = {
                { "allow = [ \"::/0\" ];\n", true, "add \"0.0.0.0/0\"" },
                { "deny = [ \"::/8\" ];\n", true, "add \"0.0.0.0/0\"" },
                { "proxy_from = [ \"::/0\" ];\n", true, "list the balancers' IPv4 addresses" },
                { "allow = [ \"::/0\", \"0.0.0.0/0\" ];\n", false, NULL },
                { "allow = [ \"2001:db8::/32\" ];\n", false, NULL },
                { "allow = [ \"::ffff:0:0/96\" ];\n", false, NULL },
        };
        Hellod *d = hellod_new();

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                harness_step("%s", cases[i].text);
                hellod_write_config_std(d, "%s", cases[i].text);
                int status = hellod_run(d, (const char *const[]) { "-t", "-c", d->conf_path, NULL });
                char *err = hellod_stderr(d);
                cr_expect(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
                bool warned = strstr(err, "matches IPv6 clients only") != NULL;
                cr_expect_eq(warned, cases[i].warned, "%s: warned %d:\n%s", cases[i].text, warned, err);
                if (cases[i].advice)
                        cr_expect(strstr(err, cases[i].advice), "%s: not advised to %s:\n%s", cases[i].text,
                                  cases[i].advice, err);
                if (strncmp(cases[i].text, "proxy_from", 10) == 0)
                        cr_expect(!strstr(err, "0.0.0.0/0"), "%s: advised to trust every IPv4 peer:\n%s",
                                  cases[i].text, err);
                free(err);
        }
        hellod_free(d);
}

/* A reload's warnings count with the worker model hellod runs, not one the file asks for and a
 * restart would bring: max_connections 200 with a thread per connection (about 439 open files)
 * is past a limit of 300 even when the reloaded file says workers = 2 (about 238); the warning
 * went missing. */
Test(config, reload_warnings_count_with_the_worker_model_in_force, .timeout = 60) {
        Hellod *d = hellod_new();

        hellod_write_config_std(d, "workers = \"per-connection\";\nmax_connections = 100;\n");
        hellod_spawn(d, &(HellodOpts) { .nofile = 300 });
        hellod_wait_ready(d);
        cr_assert_eq(hellod_count_in_stderr(d, "open files"), 0, "a warning at the start already");

        hellod_write_config_std(d, "workers = 2;\nmax_connections = 200;\n");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded");
        hellod_wait_stderr(d, "a change of 'workers' takes effect when hellod is restarted");
        hellod_wait_stderr(d, "max_connections 200 needs about");
        hellod_stop_clean(d);
        hellod_free(d);
}

Test(config, check_shows_limit_warnings, .timeout = 60) {
        Hellod *d = hellod_new();
        char *err;
        int status;

        /* On epoll: io_uring names itself in the warning (below). */
        hellod_write_config_std(d, "max_connections = 1000000;\nmax_line_length = 1048576;\nio_backend = \"epoll\";\n");
        status = run_check(d, "-t");
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        cr_expect(strstr(err, "hellod: warning: max_connections 1000000 clients at max_line_length 1048576 could"),
                  "no memory warning:\n%s", err);
        free(err);

        /* 40000 sessions: about 0.8 GiB of buffers at worst, under the warning; with a 128 KiB stack
         * each (per-connection), about 6 GiB; with the 68 KiB of a flooding client's input an
         * io_uring loop keeps while its replies back up, about 3.3 GiB. Either warning will do:
         * which one depends on the machine's memory. */
        harness_step("a pooled session has no stack of its own: the pool does not warn");
        hellod_write_config_std(d, "max_connections = 40000;\nworkers = 2;\nio_backend = \"epoll\";\n");
        status = hellod_run(d, (const char *const[]) { "-t", "-c", d->conf_path, NULL });
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        cr_expect(!strstr(err, "could make hellod use") && !strstr(err, "could need"), "pool warned:\n%s", err);
        free(err);
        harness_step("a thread per connection does");
        hellod_write_config_std(d, "max_connections = 40000;\nworkers = \"per-connection\";\n");
        status = hellod_run(d, (const char *const[]) { "-t", "-c", d->conf_path, NULL });
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        cr_expect(strstr(err, "could make hellod use") || strstr(err, "could need"), "per-connection did not warn:\n%s",
                  err);
        free(err);
        harness_step("an io_uring loop does: it keeps more of a flooding client's input");
        hellod_write_config_std(d, "max_connections = 40000;\nworkers = 2;\nio_backend = \"io_uring\";\n");
        status = hellod_run(d, (const char *const[]) { "-t", "-c", d->conf_path, NULL });
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        cr_expect(strstr(err, "on io_uring (68 KiB of a flooding client's input each) could"), "io_uring did not warn:\n%s",
                  err);
        free(err);
        harness_step("an io_uring pool that falls back to epoll (handover = \"always\") does not");
        hellod_write_config_std(d, "max_connections = 40000;\nworkers = 2;\nio_backend = \"io_uring\";\n"
                                   "handover = \"always\";\n");
        status = hellod_run(d, (const char *const[]) { "-t", "-c", d->conf_path, NULL });
        err = hellod_stderr(d);
        cr_assert(exited_with(status, HELLOD_EXIT_OK), "status %d\n%s", status, err);
        cr_expect(!strstr(err, "could make hellod use") && !strstr(err, "could need"), "io_uring's fallback warned:\n%s",
                  err);
        free(err);

        harness_step("the open-files limit");
        err = check_with_nofile(d, "max_connections = 5000;\n", 1024);
        cr_expect(strstr(err, "open-files limit is 1024"), "no open-files warning:\n%s", err);
        free(err);

        /* A thread per connection may hold two sockets at once: its client's, and the previous
         * client's lingering close (perconn.c), so 600 clients fit 1024 in a pool only. */
        harness_step("the open-files limit, counting the per-connection model's lingering sockets");
        for (int per_connection = 0; per_connection <= 1; per_connection++) {
                err = check_with_nofile(d,
                                        per_connection ? "max_connections = 600;\nworkers = \"per-connection\";\n"
                                                       : "max_connections = 600;\nworkers = 2;\n",
                                        1024);
                cr_expect(!strstr(err, "open-files limit") == !per_connection, "%s: %s warning:\n%s",
                          per_connection ? "per-connection" : "pool", per_connection ? "no" : "an", err);
                free(err);
        }
        /* Two descriptors a client there: the clients that fit are half of what the limit leaves
         * (1024 less 2 listeners, 32 for the daemon, 5 for the model: 492); "beyond 0" said
         * nothing. */
        err = check_with_nofile(d, "max_connections = 600;\nworkers = \"per-connection\";\n", 1024);
        cr_expect(strstr(err, "clients beyond 492 may be refused"), "per-connection, the clients that fit:\n%s", err);
        free(err);
        hellod_free(d);
}

/* expect_usage_error: `hellod ARGS` exits with the usage status, and its stderr holds NEEDLE. */
static void expect_usage_error(Hellod *d, const char *const *args, const char *needle) {
        int status = hellod_run(d, args);
        char *err = hellod_stderr(d);

        cr_expect(exited_with(status, HELLOD_EXIT_USAGE), "%s: status %d", args[0], status);
        cr_expect(strstr(err, needle), "%s: no \"%s\" in:\n%s", args[0], needle, err);
        free(err);
}

Test(config, messages, .timeout = 60) {
        Hellod *d = hellod_new();
        char *err;
        int status;

        harness_step("--config= (empty)");
        expect_usage_error(d, (const char *const[]) { "--config=", NULL }, "hellod: --config needs a file name");

        harness_step("an unknown option names hellod, not argv[0]");
        status = hellod_run(d, (const char *const[]) { "--no-such-option", NULL });
        err = hellod_stderr(d);
        cr_expect(exited_with(status, HELLOD_EXIT_USAGE), "status %d", status);
        cr_expect(strncmp(err, "hellod: unknown option '--no-such-option'", 41) == 0, "%s", err);
        free(err);

        harness_step("an option given an argument it does not take, and an ambiguous one, are named so");
        expect_usage_error(d, (const char *const[]) { "--help=1", NULL }, "hellod: option '--help' takes no argument");
        /* An unknown letter in a cluster: getopt's optind still names the argument before it. */
        expect_usage_error(d, (const char *const[]) { "--check-config", "-xV", NULL }, "hellod: unknown option '-x'");
        expect_usage_error(d, (const char *const[]) { "--c", "x", NULL }, "hellod: option '--c' is ambiguous");

        harness_step("output that cannot be written fails the command (-V, --help, -T to /dev/full)");
        for (int i = 0; i < 3; i++) {
                static const char *const opts[] = { "-V", "--help", "-T" };
                char script[600];

                snprintf(script, sizeof(script), "exec \"$0\" %s --config=%s >/dev/full", opts[i], d->conf_path);
                hellod_write_config_std(d, NULL);
                const char *const argv[] = { "/bin/sh", "-c", script, harness_env_path("HELLOD_BIN"), NULL };
                HarnessSpawn spawn = { .argv = argv, .stdout_path = d->stdout_path, .stderr_path = d->stderr_path };
                status = harness_run(&spawn, 30000);
                err = hellod_stderr(d);
                cr_expect(exited_with(status, 1), "%s >/dev/full: status %d", opts[i], status);
                cr_expect(strstr(err, "hellod: cannot write the output: No space left on device"), "%s: %s", opts[i],
                          err);
                free(err);
        }

        harness_step("the duplicate key is named");
        hellod_write_config_std(d, "backlog = 5;\nbacklog = 6;\n");
        char needle[600];
        snprintf(needle, sizeof(needle), "%s:4: backlog: duplicate setting, first set on line 3", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });

        harness_step("one connection is singular");
        hellod_write_config_std(d, "shutdown_timeout = 1;\n");
        hellod_spawn(d, NULL);
        hellod_wait_ready(d); /* the readiness probe is a connection */
        hellod_stop_clean(d);
        err = hellod_stderr(d);
        cr_expect(strstr(err, "stopped: 1 connection served"), "%s", err);
        free(err);
        hellod_free(d);
}

/* A string where libconfig's grammar has none is a syntax error that libconfig 1.5 reports
 * without freeing the string: each failed reload of such a file leaked it (30 reloads of a
 * 500 KB one: VmRSS up by ~15 MB). hellod finds it first and names it, and a failed reload
 * costs nothing. */
Test(config, a_string_out_of_place_is_named_and_a_failed_reload_costs_nothing, .timeout = 90) {
        enum { RELOADS = 30, STRING = 500000 };
        static const char *const cases[] = { "port \"a\";", "\"a\" = 1;", "greeting = \"a\"; \"b\";",
                                             "listen = ( { address \"127.0.0.1\"; } );" };
        Hellod *d = hellod_new();
        char needle[700];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                harness_step("%s", cases[i]);
                hellod_write_config(d, "backlog = 5;\n%s\n", cases[i]);
                snprintf(needle, sizeof(needle), "%s:2: syntax error at \"", d->conf_path);
                expect_check_fails(d, (const char *const[]) { needle, NULL });
        }

        harness_step("a syntax error on an earlier line is the one named");
        hellod_write_config(d, "port = ;\ngreeting \"a\";\n");
        snprintf(needle, sizeof(needle), "%s:1: syntax error", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });

        harness_step("%d failed reloads of a %d-byte string out of place", RELOADS, STRING);
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        char *big = malloc(STRING + 1);
        cr_assert(big);
        memset(big, 'a', STRING);
        big[STRING] = '\0';
        hellod_write_config_std(d, "greeting \"%s\";\n", big);
        free(big);
        long before = hellod_rss_kib(d);
        for (int i = 1; i <= RELOADS; i++) {
                hellod_signal(d, SIGHUP);
                hellod_wait_stderr_count(d, "reload failed", i);
        }
        long grown = hellod_rss_kib(d) - before;
        /* Under ASan freed memory waits in quarantine, so VmRSS grows all the same: there
         * LeakSanitizer finds a leak at the exit instead (no suppression for libconfig left),
         * and hellod_stop_clean() fails on its exit status. */
        if (!hellod_sanitized(d))
                cr_expect_lt(grown, 4096, "VmRSS grew by %ld KiB in %d failed reloads", grown, RELOADS);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* --log-level overrides the file's log_level, at the start and across reloads (someone
 * debugging with --log-level=debug keeps the debug lines after `systemctl reload`); a level
 * that does not exist is a usage error (exit 2) naming the levels. */
Test(config, the_log_level_option_outlasts_a_reload, .timeout = 60) {
        Hellod *d = hellod_new();
        char buf[96];

        hellod_write_config_std(d, "log_level = \"warning\";\n");
        hellod_spawn(d, &(HellodOpts) { .extra_args = (const char *const[]) { "--log-level=debug", NULL } });
        hellod_wait_ready(d); /* a client round trip: one debug line "opened" */
        hellod_wait_stderr(d, " opened");
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "configuration reloaded from"); /* a notice: the file says warning */
        int fd = client_connect(d->port);
        client_expect_str(fd, HELLOD_GREETING);
        client_close(fd);
        hellod_wait_stderr_count(d, " opened", 2);
        hellod_stop_clean(d);
        hellod_free(d);

        harness_step("--log-level=verbose");
        d = hellod_new();
        hellod_write_config_std(d, NULL);
        int status = hellod_run(d, (const char *const[]) { "--log-level=verbose", "--config", d->conf_path, NULL });
        char *err = hellod_stderr(d);
        cr_expect(exited_with(status, HELLOD_EXIT_USAGE), "--log-level=verbose: %s, expected 2\n%s",
                  harness_describe_status(status, buf, sizeof(buf)), err);
        cr_expect(strstr(err, "invalid log level 'verbose' (error, warning, notice, info, debug)"), "%s", err);
        free(err);
        hellod_free(d);
}

/* Started with descriptors 0, 1 and 2 closed, hellod opens /dev/null on them first, as sshd does:
 * otherwise the next descriptor it opens (its signalfd) became stderr, and every log line went
 * to it; a socket there would have received them. */
Test(config, closed_standard_descriptors_are_opened_on_dev_null, .timeout = 60) {
        const char *const wrapper[] = { "/bin/sh", "-c", "exec \"$@\" <&- >&- 2>&-", "sh", NULL };
        Hellod *d = hellod_new();

        hellod_write_config_std(d, "log_level = \"debug\";\n");
        hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper });
        hellod_wait_ready(d);
        for (int fd = 0; fd <= 2; fd++) {
                char link[64], target[256] = "";

                snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int) d->pid, fd);
                ssize_t n = readlink(link, target, sizeof(target) - 1);
                cr_expect(n > 0 && strcmp(target, "/dev/null") == 0, "%s -> '%s'", link, target);
        }
        int c = client_connect(d->port);
        client_expect_str(c, HELLOD_GREETING);
        client_hello(c, "no log line here");
        client_send(c, "exit\n", 5);
        client_expect_eof(c, false);
        client_close(c);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* Brackets nested deeper than 64 are refused before libconfig reads the file, naming the line of
 * the first one too deep: past the depth hellod tracked, a string where libconfig has none went
 * unnoticed, and libconfig 1.5 leaked it on each failed reload (fuzz_conf, with leak checks). */
Test(config, brackets_nested_too_deep_are_named_and_a_failed_reload_costs_nothing, .timeout = 60) {
        enum { RELOADS = 3, DEPTH = 70 };
        char deep[DEPTH + 1], shut[DEPTH + 1], needle[700];
        Hellod *d = hellod_new();

        memset(deep, '(', DEPTH);
        memset(shut, ')', DEPTH);
        deep[DEPTH] = shut[DEPTH] = '\0';
        harness_step("hellod -t names the line");
        hellod_write_config(d, "backlog = 5;\ngreeting = %s 1 \"a\" %s;\n", deep, shut);
        snprintf(needle, sizeof(needle), "%s:2: '(' nested deeper than 64 brackets", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });

        harness_step("%d failed reloads: under ASan, LeakSanitizer judges the exit", RELOADS);
        hellod_write_config_std(d, NULL);
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        hellod_write_config_std(d, "greeting = %s 1 \"a\" %s;\n", deep, shut);
        for (int i = 1; i <= RELOADS; i++) {
                hellod_signal(d, SIGHUP);
                hellod_wait_stderr_count(d, "reload failed", i);
        }
        cr_expect_eq(hellod_count_in_stderr(d, "nested deeper than 64 brackets"), RELOADS);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* A UTF-8 byte order mark, which some editors write first, is not text of the file (libconfig
 * gave a bare "syntax error" on line 1), in the main file and in an included one. */
Test(config, a_byte_order_mark_is_not_text, .timeout = 60) {
        Hellod *d = hellod_new();

        write_in_dir(d, "bom.inc", "\xef\xbb\xbfidle_timeout = 30;\n");
        hellod_write_config(d, "\xef\xbb\xbflisten = [ \"127.0.0.1\" ];\nport = %u;\n@include \"bom.inc\"\n",
                            (unsigned) d->port);
        cr_expect(exited_with(run_check(d, "-t"), 0), "-t refused a byte order mark");
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        hellod_stop_clean(d);
        hellod_free(d);
}

/* The end of the file: a '#' or '//' comment on its last line without a newline is a comment
 * (libconfig 1.5 took it for a syntax error), and a bracket left open at the end of the file is
 * named where it opens (libconfig names the end). */
Test(config, the_end_of_the_file_comments_and_errors, .timeout = 60) {
        Hellod *d = hellod_new();
        char text[256], needle[600];

        /* Written as they are: the suite's HELLOD_TEST_CONF_EXTRA would add a line at the end. */
        harness_step("a comment ends the file without a newline: valid, at the start too");
        snprintf(text, sizeof(text), "listen = [ \"127.0.0.1\" ];\nport = %u;\n// the end", (unsigned) d->port);
        harness_write_file(d->conf_path, text, strlen(text));
        cr_expect(exited_with(run_check(d, "-t"), 0), "-t refused a // comment at the end of the file");
        snprintf(text, sizeof(text), "listen = [ \"127.0.0.1\" ];\nport = %u;\n# the end", (unsigned) d->port);
        harness_write_file(d->conf_path, text, strlen(text));
        cr_expect(exited_with(run_check(d, "-t"), 0), "-t refused a comment at the end of the file");
        hellod_spawn(d, NULL);
        hellod_wait_ready(d);
        hellod_stop_clean(d);

        harness_step("a group left open by a file that ends with an @include: the main file is named, where it opens");
        write_in_dir(d, "last.inc", "a = 1;\nb = 2;\n");
        snprintf(text, sizeof(text), "port = %u;\ng = {\n@include \"last.inc\"\n", (unsigned) d->port);
        harness_write_file(d->conf_path, text, strlen(text));
        snprintf(needle, sizeof(needle), "%s:2: syntax error: a group opened here ('{') is not closed", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });

        harness_step("a list left open at the end: the line where it opens is named");
        snprintf(text, sizeof(text), "port = %u;\nlisten = [ \"127.0.0.1\",\n  \"::1\"\n", (unsigned) d->port);
        harness_write_file(d->conf_path, text, strlen(text));
        snprintf(needle, sizeof(needle), "%s:2: syntax error: an array opened here ('[') is not closed", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });
        hellod_free(d);
}

/* libconfig joins two strings with nothing between them into one: in a list, a ',' forgotten
 * between two entries made one entry of them, valid and wrong ("192.0.2.1" "0" allowed
 * 192.0.2.10). A list refuses them, naming the file, the line and both strings; a value outside
 * a list may still be written in pieces. */
Test(config, check_refuses_two_strings_without_a_comma_in_a_list, .timeout = 60) {
        static const struct {
                const char *text, *key;
                unsigned line;
        } cases[] = {
                { "allow = [ \"192.0.2.1\" \"0\" ];\n", "allow", 1 },
                { "deny = [ \"192.0.2.1\",\n  \"198.51.100.0/24\" # no comma\n  \"203.0.113.0/24\" ];\n", "deny", 3 },
                { "listen = ( { name = \"web\"; }, \"127.0.0.1\" /* x */ \"1\" );\n", "listen", 1 },
        };
        Hellod *d = hellod_new();
        char needle[600];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                harness_step("%s", cases[i].text);
                hellod_write_config(d, "%s", cases[i].text);
                snprintf(needle, sizeof(needle), "%s:%u: %s: ", d->conf_path, cases[i].line, cases[i].key);
                expect_check_fails(d, (const char *const[]) { needle, "no ',' between", NULL });
        }

        harness_step("a greeting in two pieces is one string");
        hellod_write_config_std(d, "greeting = \"Hello \"\n  \"there!\";\n");
        int status = hellod_run(d, (const char *const[]) { "-T", "-c", d->conf_path, NULL });
        char *out = harness_read_file(d->stdout_path, NULL), *err = hellod_stderr(d);
        cr_expect(exited_with(status, HELLOD_EXIT_OK), "status %d:\n%s", status, err);
        cr_expect(strstr(out, "greeting = \"Hello there!\""), "-T:\n%s", out);
        free(out);
        free(err);
        hellod_free(d);
}

/* A greeting goes to every client as it is written: a byte a client would take for something
 * else (telnet's IAC, 0xff: "\xff\xf4" is an interrupt command) is refused, named by offset. */
Test(config, check_refuses_a_greeting_that_is_not_utf8_text, .timeout = 60) {
        Hellod *d = hellod_new();
        char needle[600];

        hellod_write_config_std(d, "greeting = \"Hi \\xff\\xf4\";\n");
        snprintf(needle, sizeof(needle), "%s:3: greeting: is not UTF-8 text: byte \\xff at byte 3", d->conf_path);
        expect_check_fails(d, (const char *const[]) { needle, NULL });
        hellod_free(d);
}

/* A host name that resolves to an address a wildcard of the list takes too could not be bound:
 * "localhost" beside "::" where the resolver says ::1 (Debian's stock /etc/hosts does). -t
 * says so with the file and line, as for numeric addresses; where localhost is 127.0.0.1
 * alone, the same list is valid. The test gives hellod its own /etc/hosts (a private mount). */
Test(config, check_refuses_a_name_beside_a_wildcard_as_it_resolves, .timeout = 60) {
        static const char script[] = "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"";
        static const struct {
                const char *hosts;
                bool refused;
        } cases[] = {
                { "127.0.0.1 localhost\n::1 localhost ip6-localhost\n", true },
                { "127.0.0.1 localhost\n", false },
        };
        Hellod *d = hellod_new();
        char hosts[300], needle[600];

        snprintf(hosts, sizeof(hosts), "%s/hosts", d->dir);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                harness_step("/etc/hosts: %s", cases[i].hosts);
                harness_write_file(hosts, cases[i].hosts, strlen(cases[i].hosts));
                hellod_write_config(d, "port = %u;\nlisten = [ \"::\",\n  \"localhost\" ];\n", (unsigned) d->port);
                const char *const wrapper[] = { "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                                                script, "sh", hosts, NULL };
                hellod_spawn(d, &(HellodOpts) { .wrapper = wrapper, .extra_args = (const char *const[]) { "-t", NULL } });
                int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
                char *err = hellod_stderr(d);
                snprintf(needle, sizeof(needle), "%s:3: listen: 'localhost' is [::1]:%u, which '::' already serves",
                         d->conf_path, (unsigned) d->port);
                if (cases[i].refused)
                        cr_expect(exited_with(status, HELLOD_EXIT_CONFIG) && strstr(err, needle),
                                  "status %d, no \"%s\":\n%s", status, needle, err);
                else
                        cr_expect(exited_with(status, HELLOD_EXIT_OK), "status %d:\n%s", status, err);
                free(err);
        }
        hellod_free(d);
}

/* --log-target=journal without a journal: stderr, with a warning, never silence. */
Test(config, journal_unreachable_falls_back_to_stderr, .timeout = 60) {
        /* Hide any real journal: the daemon runs in its own mount namespace with an empty /run. */
        static const char *const hide[] = { "/usr/bin/unshare", "--mount", "--", "/bin/sh", "-c",
                                            "mount -t tmpfs none /run && exec \"$0\" \"$@\"", NULL };
        Hellod *d = hellod_new();

        hellod_write_config_std(d, NULL);
        hellod_spawn(d, &(HellodOpts) { .wrapper = hide, .extra_args = (const char *const[]) { "--log-target=journal", NULL } });
        hellod_wait_ready(d);
        hellod_wait_stderr(d, "cannot reach the journal at /run/systemd/journal/socket, logging to stderr instead");
        hellod_wait_stderr(d, "listening on");
        hellod_stop_clean(d);
        hellod_free(d);
}

/* connect_link_local_raw: a client of fe80::1 on INTERFACE, PORT, once something listens there
 * (within 5 s: systemd-socket-activate starting). */
static int connect_link_local_raw(const char *interface, uint16_t port) {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };

        cr_assert_eq(inet_pton(AF_INET6, "fe80::1", &a.sin6_addr), 1);
        a.sin6_scope_id = if_nametoindex(interface);
        cr_assert_neq(a.sin6_scope_id, 0, "no interface %s", interface);
        for (int i = 0; i < 100; i++) {
                int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
                cr_assert_geq(fd, 0, "socket(): %s", strerror(errno));
                if (connect(fd, (struct sockaddr *) &a, sizeof(a)) == 0)
                        return fd;
                (void) close(fd);
                harness_sleep_ms(50);
        }
        cr_assert_fail("nothing listens on [fe80::1%%%s]:%u", interface, (unsigned) port);
        return -1;
}

/* connect_link_local: the same, greeted. */
static int connect_link_local(const char *interface, uint16_t port) {
        int fd = connect_link_local_raw(interface, port);

        client_expect_str(fd, HELLOD_GREETING);
        return fd;
}

/* A link-local address listens on the interface it is written with (OpenSSH's ListenAddress
 * fe80::1%eth0): one address on two interfaces is two listeners on one port, each named with
 * its interface; an interface that does not exist is an error that says so. In a network of
 * the test's own, with a veth pair. */
Test(config, a_link_local_address_listens_on_its_interface, .timeout = 60) {
        Hellod *d = hellod_new();
        unsigned port = d->port;
        char needle[512];
        int fds[2];

        cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare(CLONE_NEWNET): %s (needs root)", strerror(errno));
        harness_loopback_up();
        harness_shell("ip link add hd0 type veth peer name hd1 && ip link set hd0 up && ip link set hd1 up && "
               "ip -6 addr add fe80::1/64 dev hd0 nodad && ip -6 addr add fe80::1/64 dev hd1 nodad");

        hellod_write_config(d, "listen = [ \"[fe80::1%%hd0]:%u\", \"fe80::1%%hd1\" ];\nport = %u;\n", port, port);
        hellod_spawn(d, NULL);
        snprintf(needle, sizeof(needle), "listening on [fe80::1%%hd0]:%u, [fe80::1%%hd1]:%u", port, port);
        hellod_wait_stderr(d, needle); /* started: no 127.0.0.1 for hellod_wait_ready() */
        fds[0] = connect_link_local("hd0", (uint16_t) port);
        fds[1] = connect_link_local("hd1", (uint16_t) port);
        client_hello(fds[0], "hd0");
        client_hello(fds[1], "hd1");
        for (int i = 0; i < 2; i++)
                client_close(fds[i]);

        harness_step("a reload to an interface that does not exist fails, and the listeners stay");
        hellod_write_config(d, "listen = [ \"[fe80::1%%hd9]:%u\" ];\nport = %u;\n", port, port);
        hellod_signal(d, SIGHUP);
        hellod_wait_stderr(d, "cannot listen on 'fe80::1%hd9': no network interface 'hd9'");
        hellod_wait_stderr(d, "reload failed");
        fds[0] = connect_link_local("hd0", (uint16_t) port);
        client_hello(fds[0], "still");
        client_close(fds[0]);
        hellod_stop_clean(d);

        harness_step("socket-activated, the socket as systemd reads hellod-socket-generator's line");
        char stream[64];
        /* systemd.socket(5)'s form; the drop-in doubles the '%' for systemd's specifiers */
        snprintf(stream, sizeof(stream), "[fe80::1]:%u%%hd0", port);
        const char *const activate[] = { "/usr/bin/systemd-socket-activate", "-l", stream, NULL };
        hellod_write_config(d, "listen = [ \"fe80::1%%hd0\" ];\nport = %u;\n", port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = activate });
        fds[0] = connect_link_local_raw("hd0", (uint16_t) port); /* it starts hellod on the first connection */
        client_expect_str(fds[0], HELLOD_GREETING);
        client_hello(fds[0], "activated");
        client_close(fds[0]);
        snprintf(needle, sizeof(needle), "serving the sockets passed by systemd: [fe80::1%%hd0]:%u", port);
        hellod_wait_stderr(d, needle);
        hellod_wait_stderr(d, "socket-activated: serving 1 passed socket, as 'listen' and 'port' say");
        hellod_stop_clean(d);

        harness_step("socket-activated into a network of its own, as the shipped unit's PrivateNetwork=yes does");
        const char *const private[] = { "/usr/bin/systemd-socket-activate", "-l", stream, "/usr/bin/unshare", "--net",
                                        "--", NULL };
        hellod_spawn(d, &(HellodOpts) { .wrapper = private });
        fds[0] = connect_link_local_raw("hd0", (uint16_t) port);
        client_expect_str(fds[0], HELLOD_GREETING);
        client_hello(fds[0], "private");
        client_close(fds[0]);
        /* No hd0 in there: the socket is named by the interface's number, and matched all the same. */
        snprintf(needle, sizeof(needle), "serving the sockets passed by systemd: [fe80::1%%%u]:%u", if_nametoindex("hd0"),
                 port);
        hellod_wait_stderr(d, needle);
        hellod_wait_stderr(d, "socket-activated: serving 1 passed socket, as 'listen' and 'port' say");
        hellod_stop_clean(d);

        harness_step("there, a PROXY listener on it is still one");
        hellod_write_config(d, "listen = ( { address = \"fe80::1%%hd0\"; proxy_protocol = true; } );\nport = %u;\n"
                               "proxy_from = [ \"fe80::/10\" ];\n", port);
        hellod_spawn(d, &(HellodOpts) { .wrapper = private });
        fds[0] = connect_link_local_raw("hd0", (uint16_t) port);
        client_send_str(fds[0], "PROXY TCP4 192.0.2.7 192.0.2.1 51234 9999\r\nMichael\n");
        client_expect_str(fds[0], HELLOD_GREETING);
        client_expect_str(fds[0], "Hello, Michael!\r\n");
        client_close(fds[0]);
        hellod_stop_clean(d);

        harness_step("an interface that does not exist");
        hellod_write_config(d, "listen = [ \"127.0.0.1\",\n  \"[fe80::1%%hd9]\" ];\nport = %u;\n", port);
        hellod_spawn(d, NULL);
        int status = hellod_wait_exit(d, HARNESS_TIMEOUT_MS);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) != 0, "started without its interface: status %d", status);
        char *err = hellod_stderr(d);
        snprintf(needle, sizeof(needle), "%s:2: listen: cannot listen on 'fe80::1%%hd9': no network interface 'hd9'",
                 d->conf_path);
        cr_expect(strstr(err, needle), "stderr lacks \"%s\":\n%s", needle, err);
        free(err);
        hellod_free(d);
}
