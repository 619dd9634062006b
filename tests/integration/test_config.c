/* test-config: the configuration through the real binary: `-t` and `-T`, @include, reloads of a
 * broken configuration, and the messages an operator reads. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
