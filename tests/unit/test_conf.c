/* test_conf: conf_load() against its specification: the defaults, every key's
 * type and range checks (with "FILE:LINE: KEY:" in the message), the listen forms, the reply template,
 * escaping of echoed values, conf_print() round trips and reference counting. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "conf.h"
#include "conftext.h"
#include "listen_cases.h"
#include "log.h"

typedef struct Loaded {
        int r;
        Conf *conf;
        char path[PATH_MAX];
        char err[2048];
} Loaded;

/* temp_file: a new empty file under $TMPDIR (or /tmp); its name goes to PATH. */
static int temp_file(char *path, size_t size) {
        const char *dir = getenv("TMPDIR");
        int fd;

        if (!dir || !*dir)
                dir = "/tmp";
        cr_assert_lt(snprintf(path, size, "%s/test-conf-XXXXXX", dir), (int) size);
        fd = mkstemp(path);
        cr_assert_geq(fd, 0, "mkstemp(%s): %s", path, strerror(errno));
        return fd;
}

static void write_temp(const char *text, char *path, size_t size) {
        int fd = temp_file(path, size);
        size_t len = strlen(text);

        cr_assert_eq(write(fd, text, len), (ssize_t) len);
        cr_assert_eq(close(fd), 0);
}

/* load_text: TEXT written to a temp file, loaded, and the file removed before anything is asserted. */
static Loaded load_text(const char *text) {
        Loaded l = { .r = 0 };

        write_temp(text, l.path, sizeof(l.path));
        l.r = conf_load(l.path, &l.conf, l.err, sizeof(l.err));
        (void) unlink(l.path);
        return l;
}

static Conf *load_ok(const char *text) {
        Loaded l = load_text(text);

        cr_assert_eq(l.r, 0, "config <<%s>> failed: %d, %s", text, l.r, l.err);
        cr_assert_not_null(l.conf);
        cr_assert_str_empty(l.err);
        return l.conf;
}

static bool has_control_bytes(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

/* expect_error: TEXT must fail with -EINVAL and a message "PATH:LINE: KEY: ..." (no "KEY: " when KEY is
 * NULL) that contains WHAT. */
static void expect_error(const char *text, unsigned line, const char *key, const char *what) {
        char prefix[PATH_MAX + 128];
        Loaded l = load_text(text);

        snprintf(prefix, sizeof(prefix), "%s:%u: %s%s", l.path, line, key ? key : "", key ? ": " : "");
        cr_expect_eq(l.r, -EINVAL, "config <<%s>>: expected -EINVAL, got %d (%s)", text, l.r, l.err);
        cr_expect_null(l.conf, "config <<%s>>: a Conf was returned on error", text);
        cr_expect(strncmp(l.err, prefix, strlen(prefix)) == 0,
                  "config <<%s>>: message '%s' does not start with '%s'", text, l.err, prefix);
        if (what)
                cr_expect(strstr(l.err, what), "config <<%s>>: message '%s' does not mention '%s'", text,
                          l.err, what);
        cr_expect(!has_control_bytes(l.err), "config <<%s>>: message has raw control bytes", text);
        conf_unref(l.conf);
}

static void expect_defaults(const Conf *c) {
        cr_assert_eq(c->n_listen, 2);
        cr_expect_str_eq(c->listen[0].host, "0.0.0.0");
        cr_expect_eq(c->listen[0].port, 0);
        cr_expect_str_eq(c->listen[1].host, "::");
        cr_expect_eq(c->listen[1].port, 0);
        cr_expect(c->listen_is_default);
        cr_expect_eq(c->port, 9999);
        cr_expect_eq(c->backlog, 511);
        cr_expect_eq(c->max_connections, 1024);
        cr_expect_eq(c->max_connections_per_ip, 0);
        cr_expect_eq(c->idle_timeout, 60);
        cr_expect_eq(c->max_line_length, 1024);
        cr_expect_eq(c->shutdown_timeout, 10);
        cr_expect_str_eq(c->greeting, "Welcome!");
        cr_expect_str_eq(c->reply_prefix, "Hello, ");
        cr_expect_str_eq(c->reply_suffix, "!");
        cr_expect_eq(c->framing, FRAMING_LINE);
        cr_expect_eq(c->log_level, LOG_INFO);
        cr_expect_eq(c->worker_stack_size, 128 * 1024);
        cr_expect_eq(c->n_allow, 0);
        cr_expect_eq(c->n_deny, 0);
        cr_expect_eq(c->per_ip_ipv4_prefix, 32);
        cr_expect_eq(c->per_ip_ipv6_prefix, 64);
        cr_expect_eq(c->rate_limit_per_ip, 0);
        cr_expect_eq(c->rate_limit_burst, 10);
        cr_expect_eq(c->overload, OVERLOAD_REFUSE);
        cr_expect_null(c->user);
        cr_expect_null(c->group);
        cr_expect(c->workers_auto);
        cr_expect_eq(c->n_ref, 1);
}

/* expect_same: everything but the path. */
static void expect_same(const Conf *a, const Conf *b) {
        cr_assert_eq(a->n_listen, b->n_listen);
        for (size_t i = 0; i < a->n_listen; i++) {
                const ListenSpec *x = &a->listen[i], *y = &b->listen[i];
                cr_expect((x->host == NULL) == (y->host == NULL) && (!x->host || strcmp(x->host, y->host) == 0),
                          "listen entry %zu: host %s vs %s", i, x->host ? x->host : "(none)",
                          y->host ? y->host : "(none)");
                cr_expect((x->fdname == NULL) == (y->fdname == NULL) &&
                                  (!x->fdname || strcmp(x->fdname, y->fdname) == 0),
                          "listen entry %zu: name %s vs %s", i, x->fdname ? x->fdname : "(none)",
                          y->fdname ? y->fdname : "(none)");
                cr_expect_eq(x->port, y->port);
                cr_expect_eq(x->proxy_protocol, y->proxy_protocol, "listen entry %zu: proxy_protocol", i);
        }
        cr_expect_eq(a->listen_is_default, b->listen_is_default);
        cr_expect_eq(a->port, b->port);
        cr_expect_eq(a->backlog, b->backlog);
        cr_expect_eq(a->max_connections, b->max_connections);
        cr_expect_eq(a->max_connections_per_ip, b->max_connections_per_ip);
        cr_expect_eq(a->idle_timeout, b->idle_timeout);
        cr_expect_eq(a->max_line_length, b->max_line_length);
        cr_expect_eq(a->shutdown_timeout, b->shutdown_timeout);
        cr_expect_str_eq(a->greeting, b->greeting);
        cr_expect_str_eq(a->reply_prefix, b->reply_prefix);
        cr_expect_str_eq(a->reply_suffix, b->reply_suffix);
        cr_expect_eq(a->framing, b->framing);
        cr_expect_eq(a->log_level, b->log_level);
        cr_expect_eq(a->worker_stack_size, b->worker_stack_size);
        cr_assert_eq(a->n_allow, b->n_allow);
        cr_expect(a->n_allow == 0 || memcmp(a->allow, b->allow, a->n_allow * sizeof(Cidr)) == 0);
        cr_assert_eq(a->n_deny, b->n_deny);
        cr_expect(a->n_deny == 0 || memcmp(a->deny, b->deny, a->n_deny * sizeof(Cidr)) == 0);
        cr_assert_eq(a->n_proxy_from, b->n_proxy_from);
        cr_expect(a->n_proxy_from == 0 ||
                  memcmp(a->proxy_from, b->proxy_from, a->n_proxy_from * sizeof(Cidr)) == 0);
        cr_expect_eq(a->per_ip_ipv4_prefix, b->per_ip_ipv4_prefix);
        cr_expect_eq(a->per_ip_ipv6_prefix, b->per_ip_ipv6_prefix);
        cr_expect_eq(a->rate_limit_per_ip, b->rate_limit_per_ip);
        cr_expect_eq(a->rate_limit_burst, b->rate_limit_burst);
        cr_expect_eq(a->overload, b->overload);
        cr_expect((a->user == NULL) == (b->user == NULL) && (!a->user || strcmp(a->user, b->user) == 0));
        cr_expect((a->group == NULL) == (b->group == NULL) && (!a->group || strcmp(a->group, b->group) == 0));
        cr_expect_eq(a->handover, b->handover);
        cr_expect_eq(a->workers, b->workers);
        cr_expect_eq(a->workers_auto, b->workers_auto);
        cr_expect_eq(a->io_backend, b->io_backend);
}

/* ---- defaults ---- */

Test(conf_defaults, null_path_gives_builtin_defaults) {
        char err[64] = "junk";
        Conf *c = NULL;

        cr_assert_eq(conf_load(NULL, &c, err, sizeof(err)), 0);
        cr_assert_not_null(c);
        cr_expect_null(c->path);
        cr_expect_str_empty(err);
        expect_defaults(c);
        conf_unref(c);
}

Test(conf_defaults, empty_and_comment_only_files_give_defaults) {
        static const char *const texts[] = {
                "",
                "\n\n",
                "# nothing here\n// nor here\n/* nor\n here */\n",
        };

        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
                Loaded l = load_text(texts[i]);

                cr_assert_eq(l.r, 0, "%s", l.err);
                cr_expect_str_eq(l.conf->path, l.path);
                expect_defaults(l.conf);
                conf_unref(l.conf);
        }
}

Test(conf_defaults, header_constants_match) {
        Conf *c = NULL;

        cr_assert_eq(conf_load(NULL, &c, NULL, 0), 0);
        cr_expect_eq(c->port, CONF_DEFAULT_PORT);
        cr_expect_eq(c->backlog, CONF_DEFAULT_BACKLOG);
        cr_expect_eq(c->max_connections, CONF_DEFAULT_MAX_CONNECTIONS);
        cr_expect_eq(c->max_connections_per_ip, CONF_DEFAULT_MAX_CONNECTIONS_PER_IP);
        cr_expect_eq(c->idle_timeout, CONF_DEFAULT_IDLE_TIMEOUT);
        cr_expect_eq(c->max_line_length, CONF_DEFAULT_MAX_LINE_LENGTH);
        cr_expect_eq(c->shutdown_timeout, CONF_DEFAULT_SHUTDOWN_TIMEOUT);
        cr_expect_str_eq(c->greeting, CONF_DEFAULT_GREETING);
        cr_expect_eq(c->worker_stack_size, CONF_DEFAULT_WORKER_STACK_SIZE);
        conf_unref(c);
}

/* The shipped sample must mean exactly the defaults. meson passes its path in
 * HELLOD_SAMPLE_CONF; without it the test fails rather than pass unseen. */
Test(conf_defaults, shipped_sample_config_gives_defaults) {
        const char *path = getenv("HELLOD_SAMPLE_CONF");
        char err[1024];
        Conf *c = NULL;
        int r;

        cr_assert_not_null(path, "HELLOD_SAMPLE_CONF is not set (run through meson test)");
        r = conf_load(path, &c, err, sizeof(err));
        cr_assert_eq(r, 0, "%s", err);
        expect_defaults(c);
        conf_unref(c);
}

/* The sample shows each key that has a default as a setting line, "# key = value;", at that
 * default: all those lines uncommented load to the defaults. (The listen list is then given rather than
 * defaulted: the one difference a written value makes.) */
Test(conf_defaults, shipped_sample_setting_lines_state_the_defaults) {
        const char *path = getenv("HELLOD_SAMPLE_CONF");
        char line[512], text[8192] = "", err[1024];
        size_t used = 0;
        int settings = 0;
        Conf *defaults = NULL;
        FILE *f;

        cr_assert_not_null(path, "HELLOD_SAMPLE_CONF is not set (run through meson test)");
        cr_assert_not_null(f = fopen(path, "r"), "%s: %s", path, strerror(errno));
        while (fgets(line, sizeof(line), f)) {
                size_t key = strspn(line + 2, "abcdefghijklmnopqrstuvwxyz_");
                if (strncmp(line, "# ", 2) != 0 || key == 0 || strncmp(line + 2 + key, " = ", 3) != 0)
                        continue; /* prose, or an example ("#   e.g. ...") */
                int n = snprintf(text + used, sizeof(text) - used, "%s", line + 2);
                cr_assert(n > 0 && (size_t) n < sizeof(text) - used, "the setting lines outgrow the buffer");
                used += (size_t) n;
                settings++;
        }
        fclose(f);
        cr_assert_geq(settings, 22, "only %d setting lines in %s:\n%s", settings, path, text);
        Conf *c = load_ok(text);
        cr_assert_eq(conf_load(NULL, &defaults, err, sizeof(err)), 0, "%s", err);
        cr_expect_not(c->listen_is_default);
        c->listen_is_default = defaults->listen_is_default;
        expect_same(c, defaults);
        conf_unref(c);
        conf_unref(defaults);
}

/* ---- every key, valid values ---- */

static const char all_keys[] = "listen = [ \"127.0.0.1:7000\", \"[::1]:7001\", \"::\", \"localhost:7003\" ];\n"
                               "port = 8080;\n"
                               "backlog = 128;\n"
                               "max_connections = 10;\n"
                               "max_connections_per_ip = 3;\n"
                               "idle_timeout = 0;\n"
                               "max_line_length = 80;\n"
                               "shutdown_timeout = 0;\n"
                               "greeting = \"Hi \\\"there\\\" \\\\ 100% %s\";\n"
                               "reply = \"%s<{name}>%n\\\\\";\n"
                               "framing = \"chunk\";\n"
                               "log_level = \"debug\";\n"
                               "worker_stack_size = 1048576;\n";

Test(conf_keys, every_key_set_to_a_non_default_value) {
        Conf *c = load_ok(all_keys);

        cr_assert_eq(c->n_listen, 4);
        cr_expect_str_eq(c->listen[0].host, "127.0.0.1");
        cr_expect_eq(c->listen[0].port, 7000);
        cr_expect_str_eq(c->listen[1].host, "::1");
        cr_expect_eq(c->listen[1].port, 7001);
        cr_expect_str_eq(c->listen[2].host, "::");
        cr_expect_eq(c->listen[2].port, 0);
        cr_expect_str_eq(c->listen[3].host, "localhost");
        cr_expect_eq(c->listen[3].port, 7003);
        cr_expect_not(c->listen_is_default);
        cr_expect_eq(c->port, 8080);
        cr_expect_eq(c->backlog, 128);
        cr_expect_eq(c->max_connections, 10);
        cr_expect_eq(c->max_connections_per_ip, 3);
        cr_expect_eq(c->idle_timeout, 0);
        cr_expect_eq(c->max_line_length, 80);
        cr_expect_eq(c->shutdown_timeout, 0);
        cr_expect_str_eq(c->greeting, "Hi \"there\" \\ 100% %s");
        cr_expect_str_eq(c->reply_prefix, "%s<");
        cr_expect_str_eq(c->reply_suffix, ">%n\\");
        cr_expect_eq(c->framing, FRAMING_CHUNK);
        cr_expect_eq(c->log_level, LOG_DEBUG);
        cr_expect_eq(c->worker_stack_size, 1048576);
        conf_unref(c);
}

/* ---- integer keys ---- */

typedef struct IntKey {
        const char *name;
        long long min, max;
        size_t offset, size;
} IntKey;

#define INT_KEY(key, lo, hi)                                                                               \
        {                                                                                                  \
                .name = #key, .min = (lo), .max = (hi), .offset = offsetof(Conf, key),                     \
                .size = sizeof(((Conf *) 0)->key),                                                         \
        }

static const IntKey int_keys[] = {
        INT_KEY(port, 1, 65535),
        INT_KEY(backlog, 1, 65535),
        INT_KEY(max_connections, 1, 1000000),
        INT_KEY(max_connections_per_ip, 0, 1000000),
        INT_KEY(idle_timeout, 0, 86400),
        INT_KEY(max_line_length, 4, CONF_MAX_LINE_LENGTH_MAX), /* `exit` fits: CONF_MAX_LINE_LENGTH_MIN */
        INT_KEY(shutdown_timeout, 0, 3600),
        INT_KEY(worker_stack_size, CONF_WORKER_STACK_MIN, CONF_WORKER_STACK_MAX),
        INT_KEY(per_ip_ipv4_prefix, 1, 32),
        INT_KEY(per_ip_ipv6_prefix, 1, 128),
        INT_KEY(rate_limit_per_ip, 0, 1000000),
        INT_KEY(rate_limit_burst, 1, 1000000),
};

static const IntKey *int_key(const char *name) {
        for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++)
                if (strcmp(int_keys[i].name, name) == 0)
                        return &int_keys[i];
        cr_assert_fail("no int key %s", name);
        return NULL;
}

static long long int_field(const Conf *c, const IntKey *k) {
        const char *p = (const char *) c + k->offset;

        if (k->size == sizeof(size_t)) {
                size_t v;

                memcpy(&v, p, sizeof(v));
                return (long long) v;
        }
        unsigned v;

        memcpy(&v, p, sizeof(v));
        return v;
}

/* The key sits on line 3, after a comment and a blank line, so that the line number is tested. */
static void format_setting(char *buf, size_t size, const char *key, const char *value) {
        snprintf(buf, size, "# test\n\n%s = %s;\n# end\n", key, value);
}

static void expect_int_accepted(const IntKey *k, const char *literal, long long want) {
        char text[256];
        Conf *c;

        format_setting(text, sizeof(text), k->name, literal);
        c = load_ok(text);
        cr_expect_eq(int_field(c, k), want, "%s = %s: got %lld", k->name, literal, int_field(c, k));
        conf_unref(c);
}

static void expect_int_range_error(const IntKey *k, const char *literal) {
        char text[256], what[128];

        format_setting(text, sizeof(text), k->name, literal);
        snprintf(what, sizeof(what), "must be between %lld and %lld, got ", k->min, k->max);
        expect_error(text, 3, k->name, what);
}

static void check_int_key(const char *name) {
        static const char *const wrong_types[] = {
                "1.5", "\"10\"", "true", "[ 1 ]", "( 1 )", "{ a = 1; }",
        };
        const IntKey *k = int_key(name);
        char lit[64], text[256];

        /* Both ends are accepted, also written as 64-bit and hex literals. */
        snprintf(lit, sizeof(lit), "%lld", k->min);
        expect_int_accepted(k, lit, k->min);
        snprintf(lit, sizeof(lit), "%lld", k->max);
        expect_int_accepted(k, lit, k->max);
        snprintf(lit, sizeof(lit), "%lldL", k->max);
        expect_int_accepted(k, lit, k->max);
        snprintf(lit, sizeof(lit), "0x%llx", (unsigned long long) k->max);
        expect_int_accepted(k, lit, k->max);

        /* One past each end. */
        snprintf(lit, sizeof(lit), "%lld", k->min - 1);
        expect_int_range_error(k, lit);
        snprintf(lit, sizeof(lit), "%lld", k->max + 1);
        expect_int_range_error(k, lit);
        snprintf(lit, sizeof(lit), "%lldL", k->max + 1);
        expect_int_range_error(k, lit);
        expect_int_range_error(k, "9223372036854775807L");
        expect_int_range_error(k, "-9223372036854775807L");
        /* libconfig 1.5 silently truncates these to 32 bits: MIN + 2^32 would come back as MIN. */
        snprintf(lit, sizeof(lit), "%lld", k->min + 4294967296LL);
        expect_int_range_error(k, lit);
        snprintf(lit, sizeof(lit), "0x%llx", (unsigned long long) k->min + 0x100000000ULL);
        expect_int_range_error(k, lit);
        expect_int_range_error(k, "99999999999999999999999");

        for (size_t i = 0; i < sizeof(wrong_types) / sizeof(wrong_types[0]); i++) {
                format_setting(text, sizeof(text), k->name, wrong_types[i]);
                expect_error(text, 3, k->name, "must be an integer");
        }
}

Test(conf_int, port) {
        check_int_key("port");
}
Test(conf_int, backlog) {
        check_int_key("backlog");
}
Test(conf_int, max_connections) {
        check_int_key("max_connections");
}
Test(conf_int, max_connections_per_ip) {
        check_int_key("max_connections_per_ip");
}
Test(conf_int, idle_timeout) {
        check_int_key("idle_timeout");
}
Test(conf_int, max_line_length) {
        check_int_key("max_line_length");
}
Test(conf_int, shutdown_timeout) {
        check_int_key("shutdown_timeout");
}
Test(conf_int, per_ip_ipv4_prefix) {
        check_int_key("per_ip_ipv4_prefix");
}
Test(conf_int, per_ip_ipv6_prefix) {
        check_int_key("per_ip_ipv6_prefix");
}
Test(conf_int, rate_limit_per_ip) {
        check_int_key("rate_limit_per_ip");
}
Test(conf_int, rate_limit_burst) {
        check_int_key("rate_limit_burst");
}
Test(conf_int, worker_stack_size) {
        check_int_key("worker_stack_size");
}

Test(conf_int, message_names_the_value) {
        expect_error("port = 70000;", 1, "port", "must be between 1 and 65535, got 70000");
}

/* A literal too wide for libconfig 1.5 is named with its own setting and line: one in a list
 * after a group used to be blamed on the group's last key, at that key's line. */
Test(conf_int, a_wide_literal_is_named_with_its_setting_and_line) {
        expect_error("max_connections = 10;\n"
                     "listen = ( { address = \"127.0.0.1\"; },\n"
                     "  4294967296 );\n",
                     3, "listen", "4294967296");
        expect_error("idle_timeout =\n  4294967296;\n", 2, "idle_timeout", "must be between 0 and 86400, got 4294967296");
}

/* Big numbers where libconfig does not read them as integers must not trip the truncation check. */
Test(conf_int, big_numbers_in_comments_and_strings_are_not_integers) {
        Conf *c = load_ok("# port = 99999999999;\n"
                          "port = 80; // 99999999999\n"
                          "/* 4294967297 */ backlog = 5;\n"
                          "greeting = \"call 99999999999 or 0x100000000\";\n");

        cr_expect_eq(c->port, 80);
        cr_expect_eq(c->backlog, 5);
        cr_expect_str_eq(c->greeting, "call 99999999999 or 0x100000000");
        conf_unref(c);
}

/* ---- string keys ---- */

static void check_string_key_types(const char *name) {
        static const char *const wrong_types[] = {
                "1", "1.5", "true", "[ \"x\" ]", "( \"x\" )", "{ a = \"x\"; }",
        };
        char text[256];

        for (size_t i = 0; i < sizeof(wrong_types) / sizeof(wrong_types[0]); i++) {
                format_setting(text, sizeof(text), name, wrong_types[i]);
                expect_error(text, 3, name, "must be a string");
        }
}

Test(conf_string, greeting) {
        Conf *c;

        check_string_key_types("greeting");
        expect_error("\n\ngreeting = \"\";", 3, "greeting", "must not be empty");
        expect_error("\n\ngreeting = \"a\\nb\";", 3, "greeting", "control characters");
        expect_error("\n\ngreeting = \"a\\rb\";", 3, "greeting", "control characters");
        expect_error("\n\ngreeting = \"a\\tb\";", 3, "greeting", "control characters");
        expect_error("\n\ngreeting = \"\\x01\";", 3, "greeting", "control characters");
        expect_error("\n\ngreeting = \"\\x7f\";", 3, "greeting", "control characters");

        c = load_ok("greeting = \"%s%n%d %%\";");
        cr_expect_str_eq(c->greeting, "%s%n%d %%");
        conf_unref(c);
        c = load_ok("greeting = \"Gr\xc3\xbc\xc3\x9f dich\";"); /* UTF-8 passes */
        cr_expect_str_eq(c->greeting, "Gr\xc3\xbc\xc3\x9f dich");
        conf_unref(c);
        c = load_ok("greeting = \"\xe2\x82\xac \xf0\x9f\x91\x8b \xef\xbf\xbd\";"); /* 3 and 4 bytes */
        conf_unref(c);
        /* Bytes a client would take for something else: telnet's IAC (0xff) begins a command
         * (0xff 0xf4 is "interrupt"), a lone 0x9b is a terminal's CSI. Text is UTF-8, and its
         * C1 controls (U+0080 to U+009F) are control characters too. */
        expect_error("\n\ngreeting = \"\\xff\\xf4\";", 3, "greeting", "not UTF-8 text: byte \\xff at byte 0");
        expect_error("\n\ngreeting = \"ab\\x9b2J\";", 3, "greeting", "not UTF-8 text: byte \\x9b at byte 2");
        expect_error("\n\ngreeting = \"\xc2\x85\";", 3, "greeting", "control characters, found U+0085 at byte 0");
        expect_error("\n\ngreeting = \"\xc0\xaf\";", 3, "greeting", "not UTF-8 text"); /* overlong '/' */
        expect_error("\n\ngreeting = \"\xed\xa0\x80\";", 3, "greeting", "not UTF-8 text"); /* a surrogate */
        expect_error("\n\ngreeting = \"\xf4\x90\x80\x80\";", 3, "greeting", "not UTF-8 text"); /* > U+10FFFF */
        expect_error("\n\ngreeting = \"a\xe2\x82\";", 3, "greeting", "not UTF-8 text: byte \\xe2 at byte 1");
        expect_error("\n\nreply = \"{name}\xe9\";", 3, "reply", "not UTF-8 text");
}

Test(conf_string, greeting_and_reply_length_limit) {
        static const char *const keys[] = { "greeting", "reply" };
        char text[CONF_TEXT_MAX + 64], value[CONF_TEXT_MAX + 2];

        for (size_t i = 0; i < 2; i++) {
                size_t len = CONF_TEXT_MAX;
                Conf *c;

                memset(value, 'a', sizeof(value));
                if (i == 1)
                        memcpy(value, CONF_REPLY_PLACEHOLDER, strlen(CONF_REPLY_PLACEHOLDER));
                value[len] = '\0';
                snprintf(text, sizeof(text), "%s = \"%s\";", keys[i], value);
                c = load_ok(text);
                conf_unref(c);

                value[len] = 'a';
                value[len + 1] = '\0';
                snprintf(text, sizeof(text), "%s = \"%s\";", keys[i], value);
                expect_error(text, 1, keys[i], "too long");
        }
}

Test(conf_string, reply_template) {
        Conf *c;

        check_string_key_types("reply");
        expect_error("\n\nreply = \"Hello!\";", 3, "reply", "must contain {name}");
        expect_error("\n\nreply = \"{NAME} {nam}\";", 3, "reply", "must contain {name}");
        expect_error("\n\nreply = \"{name} and {name}\";", 3, "reply", "must contain {name} exactly once");
        expect_error("\n\nreply = \"{name}{name}{name}\";", 3, "reply", "must contain {name} exactly once");
        expect_error("\n\nreply = \"{name}\\n\";", 3, "reply", "control characters");
        expect_error("\n\nreply = \"\";", 3, "reply", "must contain {name}");

        /* "must contain {name}" alone for zero, so the two cases can be told apart. */
        {
                Loaded l = load_text("reply = \"Hello!\";");

                cr_expect_null(strstr(l.err, "exactly once"), "%s", l.err);
        }

        c = load_ok("reply = \"{name}\";");
        cr_expect_str_eq(c->reply_prefix, "");
        cr_expect_str_eq(c->reply_suffix, "");
        conf_unref(c);
        c = load_ok("reply = \"%s says {name} %d\";");
        cr_expect_str_eq(c->reply_prefix, "%s says ");
        cr_expect_str_eq(c->reply_suffix, " %d");
        conf_unref(c);
}

Test(conf_string, framing) {
        static const char *const bad[] = { "\"LINE\"", "\"\"", "\"lines\"", "\"chunk \"" };
        char text[128];
        Conf *c;

        check_string_key_types("framing");
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                format_setting(text, sizeof(text), "framing", bad[i]);
                expect_error(text, 3, "framing", "must be \"line\" or \"chunk\"");
        }
        c = load_ok("framing = \"chunk\";");
        cr_expect_eq(c->framing, FRAMING_CHUNK);
        conf_unref(c);
        c = load_ok("framing = \"line\";");
        cr_expect_eq(c->framing, FRAMING_LINE);
        conf_unref(c);
        cr_expect_str_eq(framing_to_string(FRAMING_LINE), "line");
        cr_expect_str_eq(framing_to_string(FRAMING_CHUNK), "chunk");
}

Test(conf_string, log_level) {
        static const struct {
                const char *name;
                int level;
        } levels[] = {
                { "error", LOG_ERR }, { "warning", LOG_WARNING }, { "notice", LOG_NOTICE },
                { "info", LOG_INFO }, { "debug", LOG_DEBUG },
        };
        char text[128];

        check_string_key_types("log_level");
        for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
                Conf *c;

                snprintf(text, sizeof(text), "log_level = \"%s\";", levels[i].name);
                c = load_ok(text);
                cr_expect_eq(c->log_level, levels[i].level, "%s", levels[i].name);
                conf_unref(c);
        }
        expect_error("\n\nlog_level = \"verbose\";", 3, "log_level", "\"verbose\"");
        expect_error("\n\nlog_level = \"\";", 3, "log_level", "must be one of");
}

/* ---- listen ---- */

Test(conf_listen, valid_forms_through_a_file) {
        char text[256];
        Conf *c;

        /* One at a time: "::" beside "::1" on one port is an error of its own (below). */
        for (size_t i = 0; i < sizeof(valid_specs) / sizeof(valid_specs[0]); i++) {
                snprintf(text, sizeof(text), "listen = [ \"%s\" ];\n", valid_specs[i].text);
                c = load_ok(text);
                cr_assert_eq(c->n_listen, 1);
                cr_expect_not(c->listen_is_default);
                cr_expect_str_eq(c->listen[0].host, valid_specs[i].host);
                cr_expect_eq(c->listen[0].port, valid_specs[i].port);
                conf_unref(c);
        }

        /* A ( ... ) list works like a [ ... ] array. */
        c = load_ok("listen = ( \"127.0.0.1:7000\", \"[::1]:7000\" );");
        cr_assert_eq(c->n_listen, 2);
        cr_expect_str_eq(c->listen[1].host, "::1");
        cr_expect_eq(c->listen[1].port, 7000);
        conf_unref(c);
}

Test(conf_listen, invalid_forms_through_a_file) {
        for (size_t i = 0; i < sizeof(invalid_specs) / sizeof(invalid_specs[0]); i++) {
                char text[512], what[256];

                snprintf(text, sizeof(text), "port = 1;\nlisten = [ \"127.0.0.1\", \"%s\" ];\n",
                         invalid_specs[i]);
                snprintf(what, sizeof(what), "\"%s\": ", invalid_specs[i]);
                expect_error(text, 2, "listen", what);
        }
}

Test(conf_listen, list_errors) {
        char text[64 * 24 + 64];
        size_t n;
        Conf *c;

        expect_error("\n\nlisten = [];", 3, "listen", "must not be empty");
        expect_error("\n\nlisten = ();", 3, "listen", "must not be empty");
        expect_error("\n\nlisten = \"127.0.0.1\";", 3, "listen", "must be a list of addresses or groups");
        expect_error("\n\nlisten = 1;", 3, "listen", "must be a list of addresses or groups");
        expect_error("\n\nlisten = { a = \"127.0.0.1\"; };", 3, "listen", "must be a list of addresses or groups");
        expect_error("\n\nlisten = [ 1, 2 ];", 3, "listen", "must be strings");
        expect_error("\n\nlisten = ( \"127.0.0.1\", 1 );", 3, "listen", "must be strings");
        expect_error("\n\nlisten = ( \"127.0.0.1\", [ \"::1\" ] );", 3, "listen", "must be strings");
        expect_error("\n\nlisten = [ \"a\", \"b\", \"a\" ];", 3, "listen", "\"a\" is listed twice");
        expect_error("\n\nlisten = [ \"[::1]:80\", \"::1\", \"[::1]\" ];", 3, "listen", "listed twice");
        expect_error("\n\nlisten = [ \"a:80\", \"a:80\" ];", 3, "listen", "listed twice");
        /* Two spellings of one address: one socket (the second was dropped without a word). */
        expect_error("\n\nlisten = [ \"::1\", \"0:0::1\" ];", 3, "listen", "\"0:0::1\" is listed twice");
        expect_error("\n\nlisten = [ \"[::]:80\", \"[0::0]:80\" ];", 3, "listen", "listed twice");
        expect_error("\n\nlisten = [ \"fe80::1%lo\", \"fe80:0::1%lo\" ];", 3, "listen", "listed twice");
        c = load_ok("listen = [ \"fe80::1%lo\", \"fe80::2%lo\", \"fe80::1%eth0\", \"127.0.0.1\", \"::1\" ];\n");
        cr_expect_eq(c->n_listen, 5);
        conf_unref(c);
        /* An entry without a port takes `port`, which may come after `listen`. */
        expect_error("listen = [ \"127.0.0.1\",\n  \"127.0.0.1:7003\" ];\nport = 7003;\n", 2, "listen",
                     "\"127.0.0.1:7003\" is listed twice (an entry without a port takes 'port')");
        Conf *other_port = load_ok("listen = [ \"127.0.0.1\", \"127.0.0.1:7004\" ];\nport = 7003;\n");
        conf_unref(other_port);
        /* A wildcard address takes every address of its family on its port: a specific one
         * beside it could not be bound (nginx would serve both on the wildcard's socket). */
        expect_error("listen = [ \"0.0.0.0:7000\",\n  \"127.0.0.1:7000\" ];\n", 2, "listen",
                     "\"127.0.0.1:7000\" is already served by \"0.0.0.0:7000\"");
        expect_error("listen = [ \"127.0.0.1\",\n  \"0.0.0.0\" ];\nport = 7003;\n", 2, "listen",
                     "\"0.0.0.0\" would also serve \"127.0.0.1\"");
        expect_error("listen = [ \"::\", \"[::1]:7003\" ];\nport = 7003;\n", 1, "listen", "already served by \"::\"");
        Conf *apart = load_ok("listen = [ \"0.0.0.0:7000\", \"127.0.0.1:7001\", \"::\", \"127.0.0.2\" ];\n"
                              "port = 7002;\n");
        conf_unref(apart);
        /* "localhost" is 127.0.0.1 wherever it is looked up: beside 0.0.0.0, never. Whether
         * it is ::1 too is the resolver's to say (the bind tells; the generator checks its own). */
        expect_error("listen = [ \"0.0.0.0\",\n  \"localhost\" ];\n", 2, "listen",
                     "\"localhost\" is already served by \"0.0.0.0\"");
        expect_error("listen = [ \"LocalHost:7000\", \"0.0.0.0:7000\" ];\n", 1, "listen",
                     "\"0.0.0.0:7000\" would also serve \"LocalHost:7000\"");
        apart = load_ok("listen = [ \"localhost:7000\", \"0.0.0.0:7001\", \"[::]:7000\" ];\n");
        conf_unref(apart);

        /* CONF_LISTEN_MAX distinct entries are fine, one more is not. */
        n = (size_t) snprintf(text, sizeof(text), "listen = [ \"h0\"");
        for (int i = 1; i < CONF_LISTEN_MAX; i++)
                n += (size_t) snprintf(text + n, sizeof(text) - n, ", \"h%d\"", i);
        snprintf(text + n, sizeof(text) - n, " ];");
        c = load_ok(text);
        cr_expect_eq(c->n_listen, CONF_LISTEN_MAX);
        conf_unref(c);
        snprintf(text + n, sizeof(text) - n, ", \"extra\" ];");
        expect_error(text, 1, "listen", "too many");

        /* Same host, different ports, is not a duplicate. */
        c = load_ok("listen = [ \"a:80\", \"a:81\", \"a\" ];");
        cr_expect_eq(c->n_listen, 3);
        conf_unref(c);
}

/* libconfig joins adjacent strings: in a list a forgotten ',' made one entry of two. */
Test(conf_file, strings_without_a_comma_in_a_list) {
        expect_error("allow = [ \"192.0.2.1\" \"0\" ];", 1, "allow",
                     "no ',' between \"192.0.2.1\" and \"0\": libconfig would join them");
        expect_error("proxy_from = (\n  \"192.0.2.1\" // one\n  \"192.0.2.2\" );", 3, "proxy_from", "no ','");
        expect_error("listen = ( { name = \"a\"; },\n  \"127.0.0.1\" /* x */ \"::1\" );", 2, "listen", "no ','");
        expect_error("deny = [ \"\" \"\" ];", 1, "deny", "no ','");
        /* Outside a list a value may be written in pieces, in a group in a list too. */
        Conf *c = load_ok("greeting = \"Hel\" \"lo!\";\nlisten = ( { name = \"we\" \"b\"; } );");
        cr_expect_str_eq(c->greeting, "Hello!");
        conf_unref(c);
        c = load_ok("allow = [ \"192.0.2.1\", \"0.0.0.0/0\" ];");
        cr_expect_eq(c->n_allow, 2);
        conf_unref(c);
}

/* ---- file-level errors ---- */

Test(conf_file, unknown_keys) {
        expect_error("port = 1;\n\nprot = 2;\n", 3, NULL, "unknown key 'prot'");
        expect_error("\nPort = 1;\n", 2, NULL, "unknown key 'Port'");
        expect_error("\n\nhellod = { port = 1; };\n", 3, NULL, "unknown key 'hellod'");
}

Test(conf_file, syntax_errors) {
        expect_error("port = 1;\n\nbacklog = ;\n", 3, NULL, "syntax error");
        /* An unterminated string is reported where it opens. */
        expect_error("port = 1;\ngreeting = \"unterminated;\nbacklog = 5;\n", 2, NULL, "a string opened here");
        /* A bare "syntax error" quotes the line it is about (nginx names the token). */
        expect_error("port 31100;\n", 1, NULL, "syntax error in \"port 31100;\"");
        expect_error("backlog = 5;\n  port = = 1;  \n", 2, NULL, "syntax error in \"port = = 1;\"");
        expect_error("max_connections = 0b101;\n", 1, NULL, "syntax error in \"max_connections = 0b101;\"");
        expect_error("greeting = \"\\x01\";\nport = = 1;\n", 2, NULL, "in \"port = = 1;\"");
}

/* A comma after a list's last entry, a habit from JSON and nginx, is named at the comma, with
 * the list's key; libconfig's bare "syntax error" names the closing bracket's line. */
Test(conf_file, a_comma_after_the_last_entry) {
        expect_error("port = 1;\nlisten = [ \"127.0.0.1\", ];\n", 2, "listen", "',' after the last entry of a list");
        expect_error("listen = [\n  \"127.0.0.1\",\n  \"::1\", # both\n];\n", 3, "listen",
                     "libconfig takes none before ']'");
        expect_error("allow = ( \"10.0.0.0/8\", );\n", 1, "allow", "none before ')'");
        /* Inside a string or a comment it is no comma, and the error is libconfig's own (the
         * re-read without such a "comma" would not get past the line either). */
        expect_error("greeting = \"a, ]\";\nport = = 1;\n", 2, NULL, "syntax error in \"port = = 1;\"");
        expect_error("port = = 1; /* , ] */\n", 1, NULL, "syntax error in");
        /* Another error on the bracket's line is the one named; a comma after no entry is no
         * comma after the last entry. */
        expect_error("port = = 1; listen = [ \"127.0.0.1\", ];\n", 1, NULL, "syntax error in \"port = = 1;");
        expect_error("allow = ( \"10.0.0.0/8\" ), ];\n", 1, NULL, "syntax error in");
        expect_error("listen = [ , ];\n", 1, NULL, "syntax error in");
        expect_error("listen = [ \"::1\",, ];\n", 1, NULL, "syntax error in");
        /* The comma is the first error on its line, whatever follows it there. */
        expect_error("allow = [ \"10.0.0.0/8\", ]; deny = [ \"10.1.0.0/16\", ];\n", 1, "allow", "after the last entry");
        expect_error("listen = [ \"::1\", ]; port = = 1;\n", 1, "listen", "after the last entry");
        /* A syntax error before a string out of place is named first (refused_first), a comma
         * too; the re-read stops before the string, which libconfig would leak (ASan's leak
         * check caught a re-read of the whole text). */
        expect_error("listen = [ \"::1\", ];\ngreeting \"hi\";\n", 1, "listen", "after the last entry");
        /* A list of groups; and a list in a group, where the whole text is read again. */
        expect_error("listen = ( { address = \"::1\"; }, );\nport = 1;\n", 1, "listen", "after the last entry");
        expect_error("hellod = {\n  allow = [ \"10.0.0.0/8\", ];\n};\n", 2, "allow", "after the last entry");
}

Test(conf_file, nul_byte) {
        char path[PATH_MAX], prefix[PATH_MAX + 16], err[1024];
        static const char text[] = "port = 1;\nbacklog = 2;\0junk\n";
        Conf *c = NULL;
        int fd = temp_file(path, sizeof(path));

        cr_assert_eq(write(fd, text, sizeof(text) - 1), (ssize_t) sizeof(text) - 1);
        close(fd);
        cr_expect_eq(conf_load(path, &c, err, sizeof(err)), -EINVAL);
        unlink(path);
        cr_expect_null(c);
        snprintf(prefix, sizeof(prefix), "%s:2: ", path);
        cr_expect(strncmp(err, prefix, strlen(prefix)) == 0, "%s", err);
}

Test(conf_file, missing_file) {
        char path[PATH_MAX], want[PATH_MAX + 64], err[1024];
        Conf *c = NULL;

        close(temp_file(path, sizeof(path)));
        unlink(path);
        cr_assert_eq(conf_load(path, &c, err, sizeof(err)), -ENOENT);
        cr_expect_null(c);
        snprintf(want, sizeof(want), "%s: No such file or directory", path);
        cr_expect_str_eq(err, want);
}

/* A symbolic link to nothing, at the file or at a directory on its way, is no absent file (an
 * absent default file means built-in defaults: every address, no access list). */
Test(conf_file, dangling_link) {
        char dir[] = "/tmp/test-conf-link-XXXXXX", link[128], path[256], want[512], err[2048];
        Conf *c = NULL;

        cr_assert_not_null(mkdtemp(dir));
        snprintf(link, sizeof(link), "%s/hellod.conf", dir);
        cr_assert_eq(symlink("/nonexistent/hellod.conf", link), 0);
        cr_expect_eq(conf_load(link, &c, err, sizeof(err)), -EINVAL);
        snprintf(want, sizeof(want), "%s: a symbolic link to a file that does not exist", link);
        cr_expect_str_eq(err, want);

        snprintf(link, sizeof(link), "%s/etc", dir);
        cr_assert_eq(symlink("/nonexistent-dir", link), 0);
        snprintf(path, sizeof(path), "%s/hellod/hellod.conf", link);
        cr_expect_eq(conf_load(path, &c, err, sizeof(err)), -EINVAL);
        snprintf(want, sizeof(want), "%s: %s is a symbolic link to nothing", path, link);
        cr_expect_str_eq(err, want);
        cr_expect_null(c);

        snprintf(path, sizeof(path), "%s/absent/hellod.conf", dir); /* no link: absent */
        cr_expect_eq(conf_load(path, &c, err, sizeof(err)), -ENOENT);
        snprintf(want, sizeof(want), "rm -rf '%s'", dir);
        cr_expect_eq(system(want), 0);
}

Test(conf_file, directory) {
        char err[1024];
        Conf *c = NULL;

        cr_expect_eq(conf_load("/", &c, err, sizeof(err)), -EISDIR);
        cr_expect_null(c);
        cr_expect_str_eq(err, "/: Is a directory");
}

/* Only a regular file is read, as for @include: a FIFO left at the path would block open()
 * until a writer came, the reload (and the watchdog) with it, or give an empty file and so
 * the built-in defaults; a device is no configuration either. */
Test(conf_file, fifo_or_device, .timeout = 20) {
        char path[PATH_MAX], want[PATH_MAX + 64], err[1024];
        Conf *c = NULL;

        close(temp_file(path, sizeof(path)));
        unlink(path);
        cr_assert_eq(mkfifo(path, 0644), 0, "mkfifo(%s): %s", path, strerror(errno));
        cr_expect_eq(conf_load(path, &c, err, sizeof(err)), -EINVAL);
        unlink(path);
        cr_expect_null(c);
        snprintf(want, sizeof(want), "%s: is not a regular file", path);
        cr_expect_str_eq(err, want);

        cr_expect_eq(conf_load("/dev/null", &c, err, sizeof(err)), -EINVAL);
        cr_expect_null(c);
        cr_expect_str_eq(err, "/dev/null: is not a regular file");
}

Test(conf_file, unreadable_file) {
        char path[PATH_MAX], want[PATH_MAX + 64], err[1024];
        Conf *c = NULL;
        int r;

        close(temp_file(path, sizeof(path)));
        chmod(path, 0);
        /* Root reads anything: look at the file as nobody (this test runs in its own
         * process; the saved set-user-ID keeps root for the clean-up). */
        if (geteuid() == 0)
                cr_assert_eq(setresuid((uid_t) -1, 65534, 0), 0, "setresuid: %s", strerror(errno));
        r = conf_load(path, &c, err, sizeof(err));
        if (getuid() == 0)
                cr_assert_eq(seteuid(0), 0);
        unlink(path);
        cr_expect_eq(r, -EACCES);
        cr_expect_null(c);
        snprintf(want, sizeof(want), "%s: Permission denied", path);
        cr_expect_str_eq(err, want);
}

Test(conf_file, small_or_no_error_buffer) {
        char err[8];
        Loaded l = load_text("port = 0;");
        Conf *c = NULL;

        cr_expect_eq(l.r, -EINVAL);
        write_temp("port = 0;", l.path, sizeof(l.path));
        memset(err, 'x', sizeof(err));
        cr_expect_eq(conf_load(l.path, &c, err, sizeof(err)), -EINVAL);
        cr_expect_eq(strnlen(err, sizeof(err)), sizeof(err) - 1);
        cr_expect_eq(conf_load(l.path, &c, NULL, 0), -EINVAL);
        cr_expect_null(c);
        unlink(l.path);
}

/* Values echoed in messages are escaped and cut short: they end up in logs. */
Test(conf_file, echoed_values_are_escaped_and_truncated) {
        char text[1024], long_value[400];
        Loaded l;

        l = load_text("listen = [ \"a\\x01\\x1b[31mb\" ];");
        cr_expect_eq(l.r, -EINVAL);
        cr_expect(strstr(l.err, "a\\x01\\x1b[31mb"), "%s", l.err);
        cr_expect(!has_control_bytes(l.err), "%s", l.err);

        l = load_text("framing = \"\\\"quoted\\\"\";");
        cr_expect(strstr(l.err, "got \"\\\"quoted\\\"\""), "%s", l.err);

        memset(long_value, 'x', sizeof(long_value) - 1);
        long_value[sizeof(long_value) - 1] = '\0';
        snprintf(text, sizeof(text), "framing = \"%s\";", long_value);
        l = load_text(text);
        cr_expect_eq(l.r, -EINVAL);
        cr_expect(strstr(l.err, "..."), "%s", l.err);
        cr_expect_lt(strlen(l.err), strlen(l.path) + 200, "%s", l.err);
}

/* ---- conf_print ---- */

/* print_and_reload: C printed to a temp file, which is loaded back. */
static Conf *print_and_reload(const Conf *c, char *out, size_t out_size) {
        char path[PATH_MAX], err[1024];
        Conf *again = NULL;
        FILE *f;
        size_t n;
        int fd = temp_file(path, sizeof(path));

        f = fdopen(fd, "w+");
        cr_assert_not_null(f);
        conf_print(c, f);
        rewind(f);
        n = fread(out, 1, out_size - 1, f);
        out[n] = '\0';
        fclose(f);
        cr_expect_eq(conf_load(path, &again, err, sizeof(err)), 0, "%s\n%s", err, out);
        unlink(path);
        cr_assert_not_null(again);
        return again;
}

Test(conf_print, defaults_round_trip) {
        char out[4096];
        Conf *c = NULL, *again;

        cr_assert_eq(conf_load(NULL, &c, NULL, 0), 0);
        again = print_and_reload(c, out, sizeof(out));
        expect_same(c, again);
        cr_expect(strncmp(out, "# hellod effective configuration (built-in defaults)\n", 53) == 0, "%s",
                  out);
        cr_expect(strstr(out, "\nport = 9999;\n"), "%s", out);
        cr_expect(strstr(out, "\nbacklog = 511;\n"), "%s", out);
        cr_expect(strstr(out, "\ngreeting = \"Welcome!\";\n"), "%s", out);
        cr_expect(strstr(out, "\nreply = \"Hello, {name}!\";\n"), "%s", out);
        cr_expect(strstr(out, "\nframing = \"line\";\n"), "%s", out);
        cr_expect(strstr(out, "\nlog_level = \"info\";\n"), "%s", out);
        cr_expect(strstr(out, "\nworker_stack_size = 131072;\n"), "%s", out);
        cr_expect(strstr(out, "listen = [ \"0.0.0.0\", \"::\" ];"), "%s", out);
        conf_unref(again);
        conf_unref(c);
}

Test(conf_print, every_key_round_trips) {
        char out[4096], header[PATH_MAX + 64];
        Loaded l = load_text(all_keys);
        Conf *again;

        cr_assert_eq(l.r, 0, "%s", l.err);
        again = print_and_reload(l.conf, out, sizeof(out));
        expect_same(l.conf, again);
        snprintf(header, sizeof(header), "# hellod effective configuration (from %s)\n", l.path);
        cr_expect(strncmp(out, header, strlen(header)) == 0, "%s", out);
        cr_expect(strstr(out, "\nlisten = [ \"127.0.0.1:7000\", \"[::1]:7001\", \"::\", \"localhost:7003\" ];\n"),
                  "%s", out);
        cr_expect(strstr(out, "\ngreeting = \"Hi \\\"there\\\" \\\\ 100% %s\";\n"), "%s", out);
        cr_expect(strstr(out, "\nreply = \"%s<{name}>%n\\\\\";\n"), "%s", out);
        cr_expect(strstr(out, "\nframing = \"chunk\";\n"), "%s", out);
        cr_expect(strstr(out, "\nlog_level = \"debug\";\n"), "%s", out);
        conf_unref(again);
        conf_unref(l.conf);
}

/* ---- reference counting and threads ---- */

Test(conf_ref, ref_and_unref) {
        Conf *c = NULL, *p;

        cr_assert_eq(conf_load(NULL, &c, NULL, 0), 0);
        cr_expect_eq(c->n_ref, 1);
        cr_expect_eq(conf_ref(c), c);
        cr_expect_eq(c->n_ref, 2);
        cr_expect_null(conf_unref(c));
        cr_expect_eq(c->n_ref, 1);
        p = c;
        conf_unrefp(&p); /* the last reference: freed (valgrind and ASan check that) */
        cr_expect_null(p);
        conf_unrefp(&p);
        cr_expect_null(conf_ref(NULL));
        cr_expect_null(conf_unref(NULL));
        listen_spec_done(NULL);
}

typedef struct LoadJob {
        const char *path;
        unsigned port;
        int failures;
} LoadJob;

static void *load_many(void *userdata) {
        LoadJob *job = userdata;

        for (int i = 0; i < 100; i++) {
                char err[256];
                Conf *c = NULL;

                if (conf_load(job->path, &c, err, sizeof(err)) < 0 || c->port != job->port ||
                    strcmp(c->listen[0].host, "localhost") != 0)
                        job->failures++;
                conf_unref(c);
        }
        return NULL;
}

/* Independent loads on several threads do not disturb each other (run under TSan/helgrind too). */
Test(conf_ref, concurrent_loads) {
        char paths[4][PATH_MAX], text[128];
        pthread_t threads[4];
        LoadJob jobs[4];

        for (int i = 0; i < 4; i++) {
                snprintf(text, sizeof(text), "listen = [ \"localhost\" ];\nport = %d;\n", 1000 + i);
                write_temp(text, paths[i], sizeof(paths[i]));
                jobs[i] = (LoadJob) { .path = paths[i], .port = 1000u + (unsigned) i };
                cr_assert_eq(pthread_create(&threads[i], NULL, load_many, &jobs[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
                cr_assert_eq(pthread_join(threads[i], NULL), 0);
                unlink(paths[i]);
                cr_expect_eq(jobs[i].failures, 0);
        }
}

/* ---- the default path may be absent, a named one may not (conf_load_for) ---- */

Test(conf_file, absent_optional_path_gives_defaults_and_says_so) {
        char err[256];
        Conf *c = NULL;
        bool defaulted = false;

        cr_assert_eq(conf_load_for("/nonexistent/hellod.conf", true, &c, &defaulted, err, sizeof(err)), 0, "%s",
                     err);
        cr_assert(defaulted);
        cr_assert_null(c->path);
        expect_defaults(c);
        conf_unref(c);
}

Test(conf_file, absent_named_path_is_an_error) {
        char err[256];
        Conf *c = NULL;
        bool defaulted = true;

        cr_assert_eq(conf_load_for("/nonexistent/hellod.conf", false, &c, &defaulted, err, sizeof(err)), -ENOENT);
        cr_assert_not(defaulted);
        cr_assert_null(c);
        cr_assert_str_eq(err, "/nonexistent/hellod.conf: No such file or directory");
}

Test(conf_file, present_optional_path_is_read) {
        char path[PATH_MAX], err[256];
        Conf *c = NULL;
        bool defaulted = true;

        write_temp("port = 7777;\n", path, sizeof(path));
        cr_assert_eq(conf_load_for(path, true, &c, &defaulted, err, sizeof(err)), 0, "%s", err);
        unlink(path);
        cr_assert_not(defaulted);
        cr_assert_eq(c->port, 7777);
        conf_unref(c);
}

/* ---- conf_load_text: the same parser over bytes in memory (fuzzers, tests) ---- */

Test(conf_text, parses_unterminated_bytes_and_names_the_source) {
        const char text[] = "port = 7000;\nbogus = 1;XXXX";
        char err[256];
        Conf *c = NULL;

        cr_assert_eq(conf_load_text("mem.conf", text, strlen("port = 7000;\n"), &c, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(c->port, 7000);
        cr_assert_str_eq(c->path, "mem.conf");
        conf_unref(c);
        cr_assert_eq(conf_load_text("mem.conf", text, strlen(text) - 4, &c, err, sizeof(err)), -EINVAL);
        cr_assert_not_null(strstr(err, "mem.conf:2:"), "%s", err);
}

Test(conf_text, embedded_nul_is_an_error_with_its_line) {
        const char text[] = "port = 7000;\n\0port = 1;\n";
        char err[256];
        Conf *c = NULL;

        cr_assert_eq(conf_load_text("mem.conf", text, sizeof(text) - 1, &c, err, sizeof(err)), -EINVAL);
        cr_assert_null(c);
        cr_assert_not_null(strstr(err, "mem.conf:2:"), "%s", err);
}

/* ---- access control, overload, privileges ---- */

Test(conf_access, allow_and_deny_lists) {
        Conf *c = load_ok("allow = [ \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\" ];\n"
                          "deny = [ \"10.9.0.0/16\" ];\n");
        char buf[64];

        cr_assert_eq(c->n_allow, 3);
        cr_assert_eq(c->n_deny, 1);
        cr_expect_str_eq(cidr_format(&c->allow[1], buf, sizeof(buf)), "2001:db8::/32");
        IpKey in = { .bytes = { [10] = 0xff, [11] = 0xff, 10, 1, 2, 3 } };
        IpKey denied = { .bytes = { [10] = 0xff, [11] = 0xff, 10, 9, 2, 3 } };
        IpKey outside = { .bytes = { [10] = 0xff, [11] = 0xff, 11, 1, 2, 3 } };
        cr_expect(conf_admits(c, &in));
        cr_expect_not(conf_admits(c, &denied), "deny wins over allow");
        cr_expect_not(conf_admits(c, &outside), "not in a non-empty allow list");
        conf_unref(c);

        c = load_ok("deny = [ \"10.0.0.0/8\" ];\n");
        cr_expect(conf_admits(c, &outside), "an empty allow list admits everyone not denied");
        cr_expect_not(conf_admits(c, &in));
        conf_unref(c);
}

Test(conf_access, list_errors_name_line_and_key) {
        expect_error("port = 1;\nallow = [ \"10.0.0.1/8\" ];\n", 2, "allow", "did you mean 10.0.0.0/8");
        expect_error("\ndeny = [ \"example.com\" ];\n", 2, "deny", "not an IPv4 or IPv6 address");
        expect_error("deny = \"10.0.0.0/8\";\n", 1, "deny", "must be a list of strings");
        expect_error("deny = [ 10 ];\n", 1, "deny", "entries must be strings");
        expect_error("allow = [ \"10.0.0.0/33\" ];\n", 1, "allow", "prefix length");
}

/* libconfig 1.5 stamps a list entry with the line of the token after it: for the last entry of
 * a list written one entry a line, the closing bracket's, past blank and comment lines. */
Test(conf_access, a_last_entry_on_a_line_of_its_own_is_named_by_its_line) {
        expect_error("allow = [\n  \"10.0.0.0/8\",\n  \"192.168.1.1/16\"\n];\n", 3, "allow", "did you mean");
        expect_error("deny = [\n  \"10.0.0.0/8\",\n  \"10.0.0.1/8\"\n\n  # the last one\n\n];\n", 3, "deny",
                     "did you mean");
        expect_error("proxy_from = [\n  \"127.0.0.1\"\n  ,\n  \"example.com\"\n];\n", 4, "proxy_from",
                     "not an IPv4 or IPv6 address");
        expect_error("listen = [\n  \"127.0.0.1\",\n  \"127.0.0.1\"\n];\n", 3, "listen", "listed twice");
        expect_error("listen = [\n  \"127.0.0.1:99999\"\n];\n", 2, "listen", "");
        /* the same text earlier in the file, or in a comment after the entry, is not the entry */
        expect_error("# \"10.0.0.1/8\" was here\nallow = [\n  \"10.0.0.1/8\"\n];\n", 3, "allow", "did you mean");
        expect_error("allow = [\n  \"10.0.0.1/8\"\n  # was \"10.0.0.1/8\"\n];\n", 2, "allow", "did you mean");
        expect_error("allow = [\n  \"10.0.0.1/8\" /* not \"10.0.0.1/8\",\n  \"10.0.0.1/8\" */\n];\n", 2, "allow",
                     "did you mean");
        expect_error("allow = [\n  \"10.0.0.1/8\"\n  // \"10.0.0.1/8\"\n];\n", 2, "allow", "did you mean");
}

Test(conf_access, overload) {
        Conf *c = load_ok("overload = \"queue\";\n");

        cr_expect_eq(c->overload, OVERLOAD_QUEUE);
        conf_unref(c);
        expect_error("\n\noverload = \"wait\";\n", 3, "overload", "must be \"refuse\" or \"queue\"");
        expect_error("overload = 1;\n", 1, "overload", "must be a string");
}

Test(conf_access, user_and_group) {
        Conf *c = load_ok("user = \"nobody\";\ngroup = \"nogroup\";\n");

        cr_expect_str_eq(c->user, "nobody");
        cr_expect_str_eq(c->group, "nogroup");
        conf_unref(c);
        expect_error("user = \"\";\n", 1, "user", "1 to");
        expect_error("user = \"a b\";\n", 1, "user", "not a valid name");
        expect_error("\ngroup = \"-x\";\n", 2, "group", "not a valid name");
        expect_error("group = \"../etc\";\n", 1, "group", "not a valid name");
        expect_error("user = 0;\n", 1, "user", "must be a string");
}

Test(conf_access, new_keys_round_trip) {
        char out[4096];
        Conf *c = load_ok("allow = [ \"10.0.0.0/8\", \"::1\" ];\ndeny = [ \"10.1.0.0/16\" ];\n"
                          "per_ip_ipv4_prefix = 24;\nper_ip_ipv6_prefix = 48;\nrate_limit_per_ip = 5;\n"
                          "rate_limit_burst = 20;\noverload = \"queue\";\nuser = \"nobody\";\n"
                          "group = \"nogroup\";\n");
        Conf *again = print_and_reload(c, out, sizeof(out));

        expect_same(c, again);
        cr_expect(strstr(out, "\nallow = [ \"10.0.0.0/8\", \"::1/128\" ];\n"), "%s", out);
        cr_expect(strstr(out, "\noverload = \"queue\";\n"), "%s", out);
        conf_unref(again);
        conf_unref(c);
}

Test(conf_workers, forms) {
        Conf *c = load_ok("workers = 4;\n");

        cr_expect_eq(c->workers, 4);
        cr_expect_not(c->workers_auto);
        conf_unref(c);
        c = load_ok("workers = \"per-connection\";\n");
        cr_expect_eq(c->workers, 0);
        conf_unref(c);
        c = load_ok("workers = \"auto\";\n");
        cr_expect_geq(c->workers, 1);
        cr_expect(c->workers_auto);
        conf_unref(c);
        c = load_ok("");
        cr_expect(c->workers_auto, "the default is the pool, one loop per CPU");
        cr_expect_geq(c->workers, 1);
        conf_unref(c);
}

Test(conf_workers, errors) {
        expect_error("workers = 0;\n", 1, "workers", "between 1 and 256");
        expect_error("\nworkers = 257;\n", 2, "workers", "between 1 and 256");
        expect_error("workers = \"pool\";\n", 1, "workers", "\"per-connection\", \"auto\" or a number");
        expect_error("workers = 1.5;\n", 1, "workers", "got a float");
}

Test(conf_workers, round_trip) {
        char out[4096];
        Conf *c = load_ok("workers = \"auto\";\n"), *again = print_and_reload(c, out, sizeof(out));

        cr_expect(again->workers_auto);
        cr_expect_eq(again->workers, c->workers);
        conf_unref(again);
        conf_unref(c);
        c = load_ok("workers = 3;\n");
        again = print_and_reload(c, out, sizeof(out));
        cr_expect_eq(again->workers, 3);
        conf_unref(again);
        conf_unref(c);
}

Test(conf_file, syntax_error_after_a_string) {
        /* libconfig 1.5 would leak the token (its issue #142): hellod refuses it first. */
        expect_error("port = 1;\n\"str\"\n", 2, NULL, "syntax error");
        expect_error("listen = [ \"::1\" ];\nli\"notice\" ];\n", 2, NULL, "syntax error");
}

/* Brackets nested deeper than CONF_NESTING_MAX: refused before libconfig reads the file, on the
 * line of the bracket one too deep. (Past the depth hellod tracked, a string where libconfig has
 * none went unnoticed, and libconfig 1.5 leaked it: found by fuzz_conf.) */
Test(conf_file, brackets_nested_too_deep) {
        static const char opens[] = "([{";
        char text[1024];

        for (const char *o = opens; *o; o++) {
                char close = *o == '(' ? ')' : *o == '[' ? ']' : '}';
                int n = snprintf(text, sizeof(text), "port = 1;\na = ");

                for (int i = 0; i < CONF_NESTING_MAX; i++)
                        text[n++] = '(';
                n += snprintf(text + n, sizeof(text) - (size_t) n, "\n%c 1 \"leak\" %c", *o, close);
                for (int i = 0; i < CONF_NESTING_MAX; i++)
                        text[n++] = ')';
                snprintf(text + n, sizeof(text) - (size_t) n, ";\n");
                expect_error(text, 3, NULL, "nested deeper than 64");
        }

        /* Closed brackets do not count; and CONF_NESTING_MAX levels are libconfig's to judge. */
        int n = snprintf(text, sizeof(text), "a = ");
        for (int round = 0; round < 2; round++) {
                for (int i = 0; i < CONF_NESTING_MAX; i++)
                        text[n++] = '(';
                text[n++] = '1';
                for (int i = 0; i < CONF_NESTING_MAX; i++)
                        text[n++] = ')';
                text[n++] = round == 0 ? ',' : ';';
                if (round == 0)
                        n += snprintf(text + n, sizeof(text) - (size_t) n, "\nb = ");
        }
        text[n] = '\0';
        Loaded l = load_text(text);
        cr_expect_eq(l.r, -EINVAL, "<<%s>>: %d", text, l.r);
        cr_expect_null(strstr(l.err, "nested"), "%s", l.err);
        cr_expect(strstr(l.err, "unknown key 'a'"), "%s", l.err);
        conf_unref(l.conf);
}

/* A file with a syntax error before what hellod refuses ahead of libconfig (a string out of place,
 * brackets too deep) names the earlier line, as libconfig alone did: the first error. */
Test(conf_file, the_first_error_is_named_before_a_string_out_of_place) {
        char text[512];
        int n;

        expect_error("port = ;\ngreeting \"hi\";\n", 1, NULL, "syntax error");
        expect_error("port = 1;\nport = 2;\ngreeting \"hi\";\n", 2, NULL, "duplicate");
        n = snprintf(text, sizeof(text), "port = 7000 7001;\n\n\ngreeting = ");
        for (int i = 0; i < CONF_NESTING_MAX + 5; i++)
                text[n++] = '(';
        snprintf(text + n, sizeof(text) - (size_t) n, "\"x\"\n");
        expect_error(text, 1, NULL, "syntax error");
        /* The refused one first: still named. */
        expect_error("greeting \"hi\";\nport = ;\n", 1, NULL, "syntax error at \"hi\"");
}

/* A list entry that spans lines (a newline inside its quotes, which libconfig keeps) is named
 * on the line it begins, not on the line of the token after it (libconfig's). */
Test(conf_file, a_list_entry_over_two_lines_is_named_where_it_begins) {
        expect_error("listen = [\"bo\ngus\"\n\n];\n", 1, "listen", NULL);
        expect_error("port = 1;\nlisten = [ \"127.0.0.1\",\n  \"x\\\ny\"\n\n\n];\n", 3, "listen", NULL);
}

/* ---- @include ---- */

/* An include tree under a fresh directory: main.conf and whatever files a test puts next to it. */
typedef struct IncDir {
        char dir[PATH_MAX];
        char main[PATH_MAX + 16];
} IncDir;

static void inc_dir(IncDir *d) {
        const char *tmp = getenv("TMPDIR");

        snprintf(d->dir, sizeof(d->dir), "%s/test-conf-inc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        cr_assert_not_null(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
        snprintf(d->main, sizeof(d->main), "%s/main.conf", d->dir);
}

static void inc_write(const IncDir *d, const char *name, const char *text) {
        char path[PATH_MAX * 2];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", d->dir, name);
        f = fopen(path, "w");
        cr_assert_not_null(f, "%s: %s", path, strerror(errno));
        cr_assert_eq(fputs(text, f) >= 0, true);
        cr_assert_eq(fclose(f), 0);
}

static void inc_cleanup(const IncDir *d) {
        char cmd[PATH_MAX + 16];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
        cr_assert_eq(system(cmd), 0);
}

/* inc_expect_error: main.conf fails with -EINVAL and a message starting "DIR/FILE:LINE: " and
 * containing WHAT. */
static void inc_expect_error(const IncDir *d, const char *file, unsigned line, const char *what) {
        char prefix[PATH_MAX * 2], err[2048];
        Conf *c = NULL;
        int r = conf_load(d->main, &c, err, sizeof(err));

        snprintf(prefix, sizeof(prefix), "%s/%s:%u: ", d->dir, file, line);
        cr_expect_eq(r, -EINVAL, "expected -EINVAL, got %d (%s)", r, err);
        cr_expect_null(c);
        cr_expect(strncmp(err, prefix, strlen(prefix)) == 0, "message '%s' does not start with '%s'", err,
                  prefix);
        cr_expect(strstr(err, what), "message '%s' does not mention '%s'", err, what);
        cr_expect(!has_control_bytes(err));
        conf_unref(c);
}

Test(conf_include, relative_to_the_main_file_and_lines_stay_right) {
        char err[1024];
        IncDir d;
        Conf *c = NULL;

        inc_dir(&d);
        inc_write(&d, "main.conf", "port = 7000;\n@include \"limits.conf\"\n  @include \"sub/greeting.conf\" # why\n"
                                   "backlog = 7;\n");
        inc_write(&d, "limits.conf", "max_connections = 5;\nidle_timeout = 9;"); /* no final newline */
        cr_assert_eq(mkdir(strcat(strcpy(err, d.dir), "/sub"), 0755), 0);
        inc_write(&d, "sub/greeting.conf", "greeting = \"Hi\";\n");
        /* Run from elsewhere: names are relative to the main file's directory, not to ours. */
        cr_assert_eq(chdir("/"), 0);
        cr_assert_eq(conf_load(d.main, &c, err, sizeof(err)), 0, "%s", err);
        cr_expect_eq(c->port, 7000);
        cr_expect_eq(c->max_connections, 5);
        cr_expect_eq(c->idle_timeout, 9);
        cr_expect_str_eq(c->greeting, "Hi");
        cr_expect_eq(c->backlog, 7);
        conf_unref(c);

        /* Errors after, in and around includes name the right file and line. */
        inc_write(&d, "main.conf", "port = 7000;\n@include \"limits.conf\"\n\nbacklog = 0;\n");
        inc_expect_error(&d, "main.conf", 4, "backlog: must be between 1 and 65535");
        inc_write(&d, "limits.conf", "max_connections = 5;\n\nprot = 1;\n");
        inc_expect_error(&d, "limits.conf", 3, "unknown key 'prot'");
        inc_write(&d, "limits.conf", "max_connections = 5;\nbacklog = ;\n");
        inc_expect_error(&d, "limits.conf", 2, "syntax error");
        inc_cleanup(&d);
}

/* A bracket an included file leaves open: libconfig says "syntax error" at the main file's
 * next line, or at its last one when the include comes last, and the file at fault went
 * unnamed; hellod names where the bracket opens. A file that opens a bracket around an
 * include and closes it after is fine, and an error before the bracket is still the one named. */
Test(conf_include, a_bracket_an_included_file_leaves_open_is_named_there) {
        IncDir d;
        Conf *c = NULL;
        char err[1024];

        inc_dir(&d);
        inc_write(&d, "acl.conf", "# the clients\nallow = [ \"10.0.0.0/8\",\n  \"192.168.0.0/16\"\n");
        inc_write(&d, "main.conf", "port = 7000;\n@include \"acl.conf\"\nbacklog = 7;\n");
        inc_expect_error(&d, "acl.conf", 2, "an array opened here ('[') is not closed by the end of the file");
        inc_write(&d, "main.conf", "port = 7000;\n@include \"acl.conf\"\n");
        inc_expect_error(&d, "acl.conf", 2, "an array opened here ('[') is not closed by the end of the file");
        inc_write(&d, "groups.conf", "\nlisten = ( \"127.0.0.1\",\n  { address = \"[::1]:7001\"; proxy_protocol = true; }\n");
        inc_write(&d, "main.conf", "port = 7000;\n@include \"groups.conf\"\nbacklog = 7;\n");
        inc_expect_error(&d, "groups.conf", 2, "a list opened here ('(') is not closed");
        /* Mismatched: libconfig's error, where it is. */
        inc_write(&d, "groups.conf", "listen = ( \"127.0.0.1\",\n  { address = \"[::1]:7001\"; proxy_protocol = true;\n);\n");
        inc_expect_error(&d, "groups.conf", 3, "syntax error");
        inc_write(&d, "main.conf", "port = 7000;\nbacklog = 7;\nallow = [\n");
        inc_expect_error(&d, "main.conf", 3, "an array opened here ('[') is not closed");

        inc_write(&d, "list.conf", "\"10.0.0.0/8\", \"192.168.0.0/16\"\n");
        inc_write(&d, "main.conf", "port = 7000;\nallow = [\n@include \"list.conf\"\n];\n");
        cr_assert_eq(conf_load(d.main, &c, err, sizeof(err)), 0, "%s", err);
        conf_unref(c);
        inc_write(&d, "main.conf", "port = ;\n@include \"acl.conf\"\n");
        inc_expect_error(&d, "main.conf", 1, "syntax error");
        /* Opened in one file and closed in another: not the error, which comes later. */
        inc_write(&d, "open.conf", "allow = [\n");
        inc_write(&d, "main.conf", "@include \"open.conf\"\n\"10.0.0.0/8\" ];\nbacklog = ;\n");
        inc_expect_error(&d, "main.conf", 3, "syntax error");
        inc_cleanup(&d);
}

/* An included file that ends inside a setting: libconfig says "syntax error" on a line of the
 * including file that is not at fault (the one after the include, or the include's own); hellod
 * names the included file's last setting. A setting without its ';' is fine. */
Test(conf_include, an_included_file_that_ends_inside_a_setting_is_named_there) {
        IncDir d;
        Conf *c = NULL;
        char err[1024];

        inc_dir(&d);
        inc_write(&d, "main.conf", "port = 7000;\n@include \"limits.conf\"\nbacklog = 5;\n");
        inc_write(&d, "limits.conf", "max_connections = 5;\nidle_timeout =\n");
        inc_expect_error(&d, "limits.conf", 2, "syntax error: the file ends inside a setting, in \"idle_timeout =\"");
        inc_write(&d, "limits.conf", "max_connections = 5;\n  idle_timeout  \n\n# the end\n");
        inc_expect_error(&d, "limits.conf", 2, "the file ends inside a setting, in \"idle_timeout\"");
        inc_write(&d, "limits.conf", "x");
        inc_expect_error(&d, "limits.conf", 1, "the file ends inside a setting, in \"x\"");
        inc_write(&d, "main.conf", "port = 7000;\n@include \"limits.conf\"\n");
        inc_expect_error(&d, "limits.conf", 1, "the file ends inside a setting");

        inc_write(&d, "limits.conf", "max_connections = 5;\nidle_timeout = 9\n");
        inc_write(&d, "main.conf", "port = 7000;\n@include \"limits.conf\"\nbacklog = 5;\n");
        cr_assert_eq(conf_load(d.main, &c, err, sizeof(err)), 0, "%s", err);
        cr_expect_eq(c->idle_timeout, 9);
        conf_unref(c);
        /* Nor is a name that is a value, its ';' left out. */
        inc_write(&d, "pp.conf", "proxy_protocol = true\n");
        inc_write(&d, "main.conf", "listen = ( { address = \"127.0.0.1:7001\";\n@include \"pp.conf\"\n} );\nproxy_from = [ \"127.0.0.1\" ];\n");
        cr_assert_eq(conf_load(d.main, &c, err, sizeof(err)), 0, "%s", err);
        cr_expect(c->listen[0].proxy_protocol);
        conf_unref(c);
        /* An error before it is the one named. */
        inc_write(&d, "main.conf", "port = ;\n@include \"limits.conf\"\n");
        inc_write(&d, "limits.conf", "idle_timeout =\n");
        inc_expect_error(&d, "main.conf", 1, "syntax error in \"port = ;\"");
        inc_cleanup(&d);
}

/* libconfig 1.5 would truncate these in an included file as it does in the main one. */
Test(conf_include, wide_integers_in_an_included_file) {
        IncDir d;

        inc_dir(&d);
        inc_write(&d, "main.conf", "backlog = 7;\n@include \"more.conf\"\n");
        inc_write(&d, "more.conf", "# limits\nidle_timeout = 4294967296;\n");
        inc_expect_error(&d, "more.conf", 2, "idle_timeout: must be between 0 and 86400, got 4294967296");
        inc_write(&d, "more.conf", "\n\nport = 4294967297;\n");
        inc_expect_error(&d, "more.conf", 3, "port: must be between 1 and 65535");
        inc_cleanup(&d);
}

Test(conf_include, missing_directory_fifo_and_unreadable, .timeout = 20) {
        char path[PATH_MAX * 2];
        IncDir d;

        inc_dir(&d);
        inc_write(&d, "main.conf", "port = 7000;\n@include \"nope.conf\"\n");
        inc_expect_error(&d, "main.conf", 2, "@include \"nope.conf\": No such file or directory (");
        inc_expect_error(&d, "main.conf", 2, "/nope.conf)");

        /* The reason comes first: a long name (its resolved path after it) used to push it out of
         * the message. */
        char name[201];
        memset(name, 'n', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        char text[256];
        snprintf(text, sizeof(text), "@include \"%s\"\n", name);
        inc_write(&d, "main.conf", text);
        inc_expect_error(&d, "main.conf", 1, ": No such file or directory");

        snprintf(path, sizeof(path), "%s/dir.conf", d.dir);
        cr_assert_eq(mkdir(path, 0755), 0);
        inc_write(&d, "main.conf", "port = 7000;\n\n@include \"dir.conf\"\n");
        inc_expect_error(&d, "main.conf", 3, "is a directory");

        /* Nobody writes to this FIFO: opening it for reading the usual way would block forever. */
        snprintf(path, sizeof(path), "%s/fifo.conf", d.dir);
        cr_assert_eq(mkfifo(path, 0644), 0);
        inc_write(&d, "main.conf", "@include \"fifo.conf\"\n");
        inc_expect_error(&d, "main.conf", 1, "is not a regular file");

        inc_write(&d, "main.conf", "@include \"/dev/null\"\n");
        inc_expect_error(&d, "main.conf", 1, "is not a regular file");

        static const char with_nul[] = "port = 1;\n\n# a\0b\n";
        snprintf(path, sizeof(path), "%s/nul.conf", d.dir);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        cr_assert_eq(fwrite(with_nul, 1, sizeof(with_nul) - 1, f), sizeof(with_nul) - 1);
        cr_assert_eq(fclose(f), 0);
        inc_write(&d, "main.conf", "\n@include \"nul.conf\"\n");
        inc_expect_error(&d, "main.conf", 2, "NUL byte on its line 3");

        inc_write(&d, "secret.conf", "port = 1;\n");
        snprintf(path, sizeof(path), "%s/secret.conf", d.dir);
        cr_assert_eq(chmod(path, 0), 0);
        inc_write(&d, "main.conf", "@include \"secret.conf\"\n");
        /* Root reads anything: look as nobody (this test runs in its own process). */
        cr_assert_eq(chmod(d.dir, 0755), 0);
        if (geteuid() == 0)
                cr_assert_eq(setresuid((uid_t) -1, 65534, 0), 0, "setresuid: %s", strerror(errno));
        inc_expect_error(&d, "main.conf", 1, "Permission denied");
        if (getuid() == 0)
                cr_assert_eq(seteuid(0), 0);
        inc_cleanup(&d);
}

Test(conf_include, bounds_and_form) {
        IncDir d;

        inc_dir(&d);
        inc_write(&d, "main.conf", "port = 7000;\n@include \"main.conf\"\n");
        inc_expect_error(&d, "main.conf", 2, "does a file include itself?");

        inc_write(&d, "main.conf", "port = 7000; @include \"x.conf\"\n");
        inc_expect_error(&d, "main.conf", 1, "only a line @include \"FILE\"");
        inc_write(&d, "main.conf", "@include \"x.conf\" port = 1;\n");
        inc_expect_error(&d, "main.conf", 1, "must be alone on its line");
        inc_write(&d, "main.conf", "\n@include x.conf\n");
        inc_expect_error(&d, "main.conf", 2, "in double quotes");
        inc_write(&d, "main.conf", "@include \"\"\n");
        inc_expect_error(&d, "main.conf", 1, "empty file name");
        inc_write(&d, "main.conf", "@inclde \"x.conf\"\n");
        inc_expect_error(&d, "main.conf", 1, "only a line @include");

        /* A string or comment cannot run out of an included file into the next. */
        inc_write(&d, "main.conf", "@include \"open.conf\"\n\";\n");
        inc_write(&d, "open.conf", "greeting = \"abc\n");
        inc_expect_error(&d, "open.conf", 1, "a string opened here runs to the end of the file");

        /* In strings and comments, @include is just text. */
        inc_write(&d, "main.conf", "# @include \"x.conf\"\ngreeting = \"@include \\\"x\\\"\";\n/*\n@include \"x\"\n*/\n");
        Conf *c = NULL;
        char err[1024];
        cr_assert_eq(conf_load(d.main, &c, err, sizeof(err)), 0, "%s", err);
        cr_expect_str_eq(c->greeting, "@include \"x\"");
        conf_unref(c);
        inc_cleanup(&d);
}

/* ---- rules between keys, and messages libconfig leaves vague ---- */

Test(conf_access, group_needs_user) {
        Conf *c;

        expect_error("port = 7000;\n\ngroup = \"nogroup\";\n", 3, "group", "set 'user' too");
        c = load_ok("user = \"nobody\";\n");
        cr_expect_null(c->group);
        conf_unref(c);
}

Test(conf_file, duplicate_names_the_key) {
        expect_error("port = 1;\n\nport = 2;\n", 3, "port", "duplicate setting, first set on line 1");
        expect_error("port = 1; backlog = 2;\nidle_timeout = 3; backlog = 4;\n", 2, "backlog",
                     "first set on line 1");
}

/* An address that needs its brackets keeps them when printed, or the output would not load. */
Test(conf_print, bracketed_address_round_trips) {
        Conf *c = load_ok("listen = [ \"[::1:9999]\", \"::1\" ];\n");
        char out[4096];
        Conf *again = print_and_reload(c, out, sizeof(out));

        cr_expect(strstr(out, "\"[::1:9999]\""), "%s", out);
        cr_expect(strstr(out, "\"::1\""), "%s", out);
        expect_same(c, again);
        conf_unref(again);
        conf_unref(c);
}

/* ---- listen groups and proxy_from (PROXY protocol) ---- */

Test(conf_proxy, groups_and_strings_mix_in_a_list) {
        Conf *c = load_ok("listen = ( \"0.0.0.0\", { address = \"127.0.0.1:10001\"; proxy_protocol = true; },\n"
                          "           { name = \"hellod-proxy\"; proxy_protocol = true; },\n"
                          "           { address = \"[::1]\"; }, { proxy_protocol = false; name = \"plain\"; } );\n"
                          "proxy_from = [ \"127.0.0.1\", \"10.0.0.0/8\" ];\n");

        cr_assert_eq(c->n_listen, 5);
        cr_expect_str_eq(c->listen[0].host, "0.0.0.0");
        cr_expect_null(c->listen[0].fdname);
        cr_expect_not(c->listen[0].proxy_protocol);
        cr_expect_str_eq(c->listen[1].host, "127.0.0.1");
        cr_expect_eq(c->listen[1].port, 10001);
        cr_expect(c->listen[1].proxy_protocol);
        cr_expect_null(c->listen[2].host);
        cr_expect_str_eq(c->listen[2].fdname, "hellod-proxy");
        cr_expect(c->listen[2].proxy_protocol);
        cr_expect_str_eq(c->listen[3].host, "::1");
        cr_expect_not(c->listen[3].proxy_protocol, "proxy_protocol defaults to false");
        cr_expect_str_eq(c->listen[4].fdname, "plain");
        cr_expect_not(c->listen[4].proxy_protocol);
        cr_assert_eq(c->n_proxy_from, 2);
        conf_unref(c);
}

Test(conf_proxy, trusted_balancers) {
        Conf *c = load_ok("listen = ( { address = \"127.0.0.1\"; proxy_protocol = true; } );\n"
                          "proxy_from = [ \"127.0.0.1\", \"10.0.0.0/8\", \"2001:db8::/32\" ];\n");
        IpKey k;
        struct sockaddr_in in = { .sin_family = AF_INET };
        struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
        static const struct {
                const char *addr;
                bool trusted;
        } cases[] = {
                { "127.0.0.1", true },   { "127.0.0.2", false }, { "10.200.3.4", true },
                { "11.0.0.1", false },   { "2001:db8::7", true }, { "2001:db9::7", false },
                { "::ffff:10.0.0.1", true }, /* IPv4 through a dual-stack socket */
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                if (inet_pton(AF_INET, cases[i].addr, &in.sin_addr) == 1)
                        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &in, &k), 0);
                else {
                        cr_assert_eq(inet_pton(AF_INET6, cases[i].addr, &in6.sin6_addr), 1);
                        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &in6, &k), 0);
                }
                cr_expect_eq(conf_proxy_trusted(c, &k), cases[i].trusted, "%s", cases[i].addr);
        }
        conf_unref(c);

        /* Without proxy_from (no PROXY listener), nobody is trusted. */
        c = load_ok("");
        cr_assert_eq(inet_pton(AF_INET, "127.0.0.1", &in.sin_addr), 1);
        cr_assert_eq(ip_key_from_sockaddr((struct sockaddr *) &in, &k), 0);
        cr_expect_not(conf_proxy_trusted(c, &k));
        conf_unref(c);
}

Test(conf_proxy, group_errors_name_file_line_and_key) {
        expect_error("port = 1;\n\nlisten = ( { address = \"127.0.0.1\"; proxy_from = [ \"::1\" ]; } );\n", 3,
                     "listen", "unknown key 'proxy_from' in a listen group (proxy_from is a top-level setting)");
        expect_error("\nlisten = ( \"::1\",\n  { adress = \"127.0.0.1\"; } );\n", 3, "listen",
                     "unknown key 'adress' in a listen group");
        expect_error("listen = ( { address = 1; } );\n", 1, "listen", "'address' must be a string, got an integer");
        expect_error("listen = ( { name = true; } );\n", 1, "listen", "'name' must be a string, got a boolean");
        expect_error("listen = ( { address = \"127.0.0.1\"; proxy_protocol = 1; } );\n", 1, "listen",
                     "'proxy_protocol' must be true or false, got an integer");
        expect_error("listen = ( { address = \"127.0.0.1\"; proxy_protocol = \"yes\"; } );\n", 1, "listen",
                     "'proxy_protocol' must be true or false, got a string");
        expect_error("listen = ( { address = \"127.0.0.1\"; name = \"x\"; } );\n", 1, "listen",
                     "not both");
        expect_error("listen = ( { proxy_protocol = true; } );\n", 1, "listen", "needs an 'address'");
        expect_error("listen = ( { } );\n", 1, "listen", "needs an 'address'");
        expect_error("listen = ( { address = \"[::1\"; } );\n", 1, "listen", "\"[::1\": missing ']'");
        expect_error("listen = ( { name = \"\"; } );\n", 1, "listen", "FileDescriptorName=");
        expect_error("listen = ( { name = \"a b\"; } );\n", 1, "listen", "FileDescriptorName=");
        expect_error("listen = ( { name = \"a:b\"; } );\n", 1, "listen", "FileDescriptorName=");
        /* systemd's limit, 255 characters: one more is refused. */
        char long_name[300];
        snprintf(long_name, sizeof(long_name), "listen = ( { name = \"%0255d\"; } );\n", 7);
        Conf *named = load_ok(long_name);
        cr_expect_eq(strlen(named->listen[0].fdname), 255);
        conf_unref(named);
        snprintf(long_name, sizeof(long_name), "listen = ( { name = \"%0256d\"; } );\n", 7);
        expect_error(long_name, 1, "listen", "1 to 255");
        expect_error("listen = ( { name = \"s\"; }, { name = \"s\"; proxy_protocol = true; } );\n", 1, "listen",
                     "name \"s\" is listed twice");
        expect_error("listen = ( \"127.0.0.1:80\", { address = \"127.0.0.1:80\"; proxy_protocol = true; } );\n"
                     "proxy_from = [ \"::1\" ];\n",
                     1, "listen", "\"127.0.0.1:80\" is listed twice");
        expect_error("listen = ( { address = \"127.0.0.1\"; listen = ( ); } );\n", 1, "listen",
                     "(listen is a top-level setting)");
        expect_error("listen = ( ( \"127.0.0.1\" ) );\n", 1, "listen", "must be strings or groups, got a list");
}

Test(conf_proxy, proxy_from_is_required_by_a_proxy_listener) {
        expect_error("port = 1;\nlisten = ( { address = \"127.0.0.1\"; proxy_protocol = true; } );\n", 2,
                     "proxy_from", "trusted to send a PROXY header");
        expect_error("listen = ( { name = \"p\"; proxy_protocol = true; } );\n\nproxy_from = [ ];\n", 3,
                     "proxy_from", "trusted to send a PROXY header");
        expect_error("proxy_from = [ \"10.0.0.0/33\" ];\n", 1, "proxy_from", "prefix length");
        expect_error("proxy_from = \"10.0.0.1\";\n", 1, "proxy_from", "must be a list of strings");
}

static void redirect_stderr(void) {
        cr_redirect_stderr();
}

Test(conf_proxy, proxy_from_without_a_proxy_listener_is_a_warning, .init = redirect_stderr) {
        Loaded l = load_text("listen = [ \"127.0.0.1\" ];\nproxy_from = [ \"10.0.0.1\" ];\n");
        char text[2048], want[PATH_MAX + 128];
        size_t n;

        cr_assert_eq(l.r, 0, "%s", l.err);
        cr_expect_eq(l.conf->n_proxy_from, 1);
        conf_unref(l.conf);
        fflush(stderr);
        n = fread(text, 1, sizeof(text) - 1, cr_get_redirected_stderr());
        text[n] = '\0';
        snprintf(want, sizeof(want), "%s:2: proxy_from: no listen entry has proxy_protocol = true", l.path);
        cr_expect(strstr(text, want), "no warning '%s' in: %s", want, text);
}

Test(conf_proxy, groups_round_trip) {
        char out[4096];
        Conf *c = load_ok("listen = ( \"0.0.0.0\", { address = \"[::1]:10001\"; proxy_protocol = true; },\n"
                          "  { name = \"hellod-proxy\"; proxy_protocol = true; }, { name = \"x\\\"y\"; },\n"
                          "  { address = \"[::1:9999]\"; proxy_protocol = true; } );\n"
                          "proxy_from = [ \"127.0.0.1\", \"10.0.0.0/8\" ];\n");
        Conf *again = print_and_reload(c, out, sizeof(out));

        expect_same(c, again);
        cr_expect(strstr(out, "\nlisten = ( \"0.0.0.0\", { address = \"[::1]:10001\"; proxy_protocol = true; }, "
                              "{ name = \"hellod-proxy\"; proxy_protocol = true; }, "
                              "{ name = \"x\\\"y\"; proxy_protocol = false; }, "
                              "{ address = \"[::1:9999]\"; proxy_protocol = true; } );\n"),
                  "%s", out);
        cr_expect(strstr(out, "\nproxy_from = [ \"127.0.0.1/32\", \"10.0.0.0/8\" ];\n"), "%s", out);
        conf_unref(again);
        conf_unref(c);

        /* Without groups, listen stays an array; conf_load_text() reads conf_print()'s output too. */
        c = load_ok("listen = ( \"127.0.0.1\" );\n");
        again = print_and_reload(c, out, sizeof(out));
        cr_expect(strstr(out, "\nlisten = [ \"127.0.0.1\" ];\n"), "%s", out);
        conf_unref(again);
        conf_unref(c);
}

Test(conf_proxy, conf_print_output_loads_as_text) {
        char *text = NULL, err[512] = "";
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        Conf *c = load_ok("listen = ( { name = \"p\"; proxy_protocol = true; } );\nproxy_from = [ \"::1\" ];\n"),
             *again = NULL;

        cr_assert_not_null(f);
        conf_print(c, f);
        cr_assert_eq(fclose(f), 0);
        cr_assert_eq(conf_load_text("printed", text, len, &again, err, sizeof(err)), 0, "%s\n%s", err, text);
        expect_same(c, again);
        free(text);
        conf_unref(again);
        conf_unref(c);
}

/* A block comment or a string that never ends is an error in the main file too, at the line
 * where it opens: an unclosed comment used to swallow the rest of the file in silence (here an
 * out-of-range value and an unknown key), and an unclosed string was a syntax error at the
 * line past the end. */
Test(conf_text, a_comment_or_string_left_open_is_an_error_where_it_opens) {
        expect_error("port = 7000;\n/* forgot to close\nmax_connections = 0;\nbogus = 1;\n", 2, NULL,
                     "a comment opened here runs to the end of the file");
        expect_error("port = 7000;\ngreeting = \"Hello;\nmax_connections = 5;\n", 2, NULL,
                     "a string opened here runs to the end of the file");
        Conf *c = load_ok("port = 7000; /* closed */\ngreeting = \"a /* not a comment\";\n");
        cr_expect_str_eq(c->greeting, "a /* not a comment");
        conf_unref(c);
        /* Quotes and comment openers inside line comments open nothing. */
        c = load_ok("# a lone \" in a comment\n// and /* here\nport = 7000; # \"\ngreeting = \"b # c // d\";\n");
        cr_expect_str_eq(c->greeting, "b # c // d");
        cr_expect_eq(c->port, 7000);
        conf_unref(c);
}

/* "\x00" in a string is an error at its line: libconfig dropped the byte in silence, so
 * greeting = "Hello\x00 there" became "Hello there" and user = "nobody\x00x" "nobodyx". */
Test(conf_text, a_nul_escape_in_a_string_is_an_error) {
        expect_error("port = 7000;\ngreeting = \"Hello\\x00 there\";\n", 2, NULL, "cannot hold a NUL byte");
        expect_error("user = \"nobody\\x00x\";\n", 1, NULL, "cannot hold a NUL byte");
        /* libconfig takes \X as \x: user = "nobody\X00x" was "nobodyx", and valid. */
        expect_error("user = \"nobody\\X00x\";\n", 1, NULL, "cannot hold a NUL byte");
        Conf *c = load_ok("greeting = \"an escaped backslash: \\\\x00 is text\";\n");
        cr_expect_str_eq(c->greeting, "an escaped backslash: \\x00 is text");
        conf_unref(c);
}
