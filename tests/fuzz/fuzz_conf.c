/* fuzz_conf: configuration parsing, from libconfig text to a validated Conf and back.
 *
 * The input is the text of a config file. The harness checks, with abort() so that libFuzzer
 * reports it (leaks are reported by LeakSanitizer at the end of each input):
 *   - a rejected file gets -EINVAL and a message that names the file ("fuzz.conf:LINE: ..." or
 *     "fuzz.conf: ...") and is printable ASCII: config text never reaches a log unescaped; the
 *     same message cut to a small buffer is a NUL-terminated prefix of it;
 *   - an accepted file gives a Conf within the documented limits, and conf_print() of it is itself
 *     a valid config that loads to the same settings: printing it again gives the same text.
 * Inputs containing "@include" are skipped: conf would open the named file, and the fuzzer must
 * not touch the file system (test_conf covers @include). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fuzz.conf"
#define ERR_SIZE 1024

#define check(cond, ...)                                                                                 \
        do {                                                                                             \
                if (!(cond)) {                                                                           \
                        fprintf(stderr, "fuzz_conf: check failed: %s (%s:%d)\n", #cond, __FILE__,        \
                                __LINE__);                                                               \
                        fprintf(stderr, "fuzz_conf: " __VA_ARGS__);                                      \
                        fputc('\n', stderr);                                                             \
                        abort();                                                                         \
                }                                                                                        \
        } while (0)

static bool is_printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || (unsigned char) *s >= 0x7f)
                        return false;
        return true;
}

static bool has_control(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || (unsigned char) *s == 0x7f)
                        return true;
        return false;
}

static void check_error(int r, const char *err, const char *data, size_t size) {
        char small[41];
        size_t small_size = 1 + size % (sizeof(small) - 1);
        Conf *c = NULL;
        int r2;

        check(r == -EINVAL, "rejected with %d (%s), expected -EINVAL: %s", r, strerror(-r), err);
        check(strncmp(err, NAME ":", strlen(NAME ":")) == 0, "message does not start with '" NAME ":': %s",
              err);
        check(strlen(err) > strlen(NAME ": "), "message says nothing: '%s'", err);
        check(is_printable(err), "message holds raw control or non-ASCII bytes: '%s'", err);
        if (err[strlen(NAME ":")] != ' ') {
                /* "fuzz.conf:LINE: ...": a line of the file. */
                unsigned long line = strtoul(err + strlen(NAME ":"), NULL, 10);
                size_t lines = 1;

                for (size_t i = 0; i < size; i++)
                        lines += data[i] == '\n';
                check(line >= 1 && line <= lines, "message names line %lu of %zu: %s", line, lines, err);
        }

        /* The same message in a buffer too small for it: cut, terminated, never overrun (ASan). */
        memset(small, 'X', sizeof(small));
        r2 = conf_load_text(NAME, data, size, &c, small, small_size);
        check(r2 == r && !c, "second load: %d, first %d", r2, r);
        check(memchr(small, '\0', small_size), "message in %zu bytes is not terminated", small_size);
        check(strncmp(err, small, strlen(small)) == 0, "message in %zu bytes '%s' is not a prefix of '%s'",
              small_size, small, err);
}

static void check_limits(const Conf *c) {
        size_t reply_len = strlen(c->reply_prefix) + strlen(CONF_REPLY_PLACEHOLDER) + strlen(c->reply_suffix);

        check(c->n_listen >= 1 && c->n_listen <= CONF_LISTEN_MAX, "n_listen %zu", c->n_listen);
        for (size_t i = 0; i < c->n_listen; i++) {
                const ListenSpec *l = &c->listen[i];
                /* An address or a FileDescriptorName=, never both. */
                check(l->host ? !l->fdname && *l->host && !has_control(l->host)
                              : l->fdname && *l->fdname && !has_control(l->fdname) &&
                                        strlen(l->fdname) <= CONF_FDNAME_MAX,
                      "listen entry %zu", i);
                check(!l->proxy_protocol || c->n_proxy_from > 0, "listen entry %zu: PROXY without proxy_from", i);
        }
        check(c->port >= 1 && c->port <= 65535, "port %u", c->port);
        check(c->backlog >= 1 && c->backlog <= 65535, "backlog %u", c->backlog);
        check(c->max_connections >= 1 && c->max_connections <= 1000000, "max_connections %u",
              c->max_connections);
        check(c->max_connections_per_ip <= 1000000, "max_connections_per_ip %u", c->max_connections_per_ip);
        check(c->idle_timeout <= 86400, "idle_timeout %u", c->idle_timeout);
        check(c->max_line_length >= 1 && c->max_line_length <= CONF_MAX_LINE_LENGTH_MAX, "max_line_length %u",
              c->max_line_length);
        check(c->shutdown_timeout <= 3600, "shutdown_timeout %u", c->shutdown_timeout);
        check(*c->greeting && strlen(c->greeting) <= CONF_TEXT_MAX && !has_control(c->greeting),
              "greeting of %zu bytes", strlen(c->greeting));
        check(reply_len <= CONF_TEXT_MAX && !has_control(c->reply_prefix) && !has_control(c->reply_suffix),
              "reply template of %zu bytes", reply_len);
        check(!strstr(c->reply_suffix, CONF_REPLY_PLACEHOLDER), "placeholder twice in the reply");
        check(c->framing == FRAMING_LINE || c->framing == FRAMING_CHUNK, "framing %d", (int) c->framing);
        check(c->worker_stack_size >= CONF_WORKER_STACK_MIN && c->worker_stack_size <= CONF_WORKER_STACK_MAX,
              "worker_stack_size %zu", c->worker_stack_size);
        check(c->n_allow <= CONF_CIDR_MAX && c->n_deny <= CONF_CIDR_MAX, "allow %zu, deny %zu entries",
              c->n_allow, c->n_deny);
        for (size_t i = 0; i < c->n_allow; i++)
                check(c->allow[i].bits <= 128, "allow entry %zu: /%u", i, c->allow[i].bits);
        for (size_t i = 0; i < c->n_deny; i++)
                check(c->deny[i].bits <= 128, "deny entry %zu: /%u", i, c->deny[i].bits);
        check(c->per_ip_ipv4_prefix >= 1 && c->per_ip_ipv4_prefix <= 32, "per_ip_ipv4_prefix %u",
              c->per_ip_ipv4_prefix);
        check(c->per_ip_ipv6_prefix >= 1 && c->per_ip_ipv6_prefix <= 128, "per_ip_ipv6_prefix %u",
              c->per_ip_ipv6_prefix);
        check(c->rate_limit_burst >= 1, "rate_limit_burst %u", c->rate_limit_burst);
        check(c->n_ref == 1, "n_ref %d", c->n_ref);
}

/* same_cidrs: the address lists survived printing and parsing unchanged. */
static void check_same_cidrs(const char *key, const Cidr *a, size_t n_a, const Cidr *b, size_t n_b) {
        check(n_a == n_b, "%s: %zu entries, %zu after the round trip", key, n_a, n_b);
        for (size_t i = 0; i < n_a; i++)
                check(a[i].bits == b[i].bits && memcmp(&a[i].net, &b[i].net, sizeof(a[i].net)) == 0,
                      "%s entry %zu changed in the round trip", key, i);
}

/* print: conf_print() into a malloc'ed string. */
static char *print(const Conf *c, size_t *ret_len) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        check(f, "open_memstream failed");
        conf_print(c, f);
        check(fclose(f) == 0, "fclose of the memory stream failed");
        *ret_len = len;
        return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char err[ERR_SIZE], err2[ERR_SIZE];
        char *text = NULL, *text2 = NULL;
        size_t len = 0, len2 = 0;
        Conf *c = NULL, *c2 = NULL;
        int r;

        if (memmem(data, size, "@include", strlen("@include")))
                return -1; /* conf would read the named file: keep it out of the corpus */

        r = conf_load_text(NAME, (const char *) data, size, &c, err, sizeof(err));
        /* FUZZ_CONF_VERBOSE=1 shows each verdict, e.g. when writing a seed. */
        if (getenv("FUZZ_CONF_VERBOSE"))
                fprintf(stderr, "fuzz_conf: %s\n", r < 0 ? err : "accepted");
        if (r < 0) {
                check(!c, "failed, yet returned a Conf");
                check_error(r, err, (const char *) data, size);
                return 0;
        }
        check(r == 0 && c, "load returned %d", r);
        check_limits(c);

        /* Round trip: what --check-config prints is a config file meaning the same. */
        text = print(c, &len);
        r = conf_load_text(NAME, text, len, &c2, err2, sizeof(err2));
        check(r == 0, "printed config does not load: %s\n--- printed:\n%s---", err2, text);
        text2 = print(c2, &len2);
        check(len == len2 && memcmp(text, text2, len) == 0, "printed twice differently:\n%s---\n%s---", text,
              text2);
        check_same_cidrs("allow", c->allow, c->n_allow, c2->allow, c2->n_allow);
        check_same_cidrs("deny", c->deny, c->n_deny, c2->deny, c2->n_deny);
        check_same_cidrs("proxy_from", c->proxy_from, c->n_proxy_from, c2->proxy_from, c2->n_proxy_from);

        free(text);
        free(text2);
        conf_unref(c2);
        conf_unref(c);
        return 0;
}
