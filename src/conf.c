/* conf: the libconfig file turned into a validated, immutable, reference-counted Conf. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"

/* A greeting daemon's config is a few hundred bytes; refuse to slurp anything absurd into memory. */
#define CONF_FILE_SIZE_MAX (1024 * 1024)

/* Values from the file that are echoed in messages are cut to this many bytes, since messages end up
 * in logs. */
#define ECHO_MAX 64
#define ECHO_BUF_SIZE (ECHO_MAX * 4 + sizeof("..."))

#define ERR_REASON_MAX 256

/* Where messages go and what they name while one file is loaded. */
typedef struct ConfCtx {
        const char *path;
        char *err;
        size_t err_size;
} ConfCtx;

typedef struct ConfKey ConfKey;
typedef int (*ConfKeyParser)(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx);

struct ConfKey {
        const char *name;
        ConfKeyParser parse;
        size_t offset; /* integers only: where the value goes in Conf */
        long long min, max;
};

static bool is_ascii_digit(char c) {
        return c >= '0' && c <= '9';
}

static bool is_ascii_alpha(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* escape: S as printable ASCII into BUF: `"` and `\` backslashed, anything else outside 0x20..0x7e as
 * \xNN. At most MAX_IN input bytes are taken ("..." marks the cut), and an escape sequence is never split
 * when BUF runs out. */
static const char *escape(const char *s, size_t max_in, char *buf, size_t size) {
        static const char hex[] = "0123456789abcdef";
        size_t n = 0, i;

        assert(size > 0);
        for (i = 0; i < max_in && s[i]; i++) {
                unsigned char ch = (unsigned char) s[i];
                char seq[4];
                size_t len;

                if (ch == '"' || ch == '\\') {
                        seq[0] = '\\';
                        seq[1] = (char) ch;
                        len = 2;
                } else if (ch < 0x20 || ch >= 0x7f) {
                        seq[0] = '\\';
                        seq[1] = 'x';
                        seq[2] = hex[ch >> 4];
                        seq[3] = hex[ch & 0xf];
                        len = 4;
                } else {
                        seq[0] = (char) ch;
                        len = 1;
                }
                if (n + len >= size)
                        break;
                memcpy(buf + n, seq, len);
                n += len;
        }
        if (s[i] && n + 3 < size) {
                memcpy(buf + n, "...", 3);
                n += 3;
        }
        buf[n] = '\0';
        return buf;
}

static const char *echo(const char *s, char buf[static ECHO_BUF_SIZE]) {
        return escape(s, ECHO_MAX, buf, ECHO_BUF_SIZE);
}

static void err_vappend(char *err, size_t size, const char *format, va_list ap)
        __attribute__((format(printf, 3, 0)));
static void err_vappend(char *err, size_t size, const char *format, va_list ap) {
        size_t n;

        if (!err || size == 0)
                return;
        n = strnlen(err, size);
        if (n + 1 >= size)
                return;
        (void) vsnprintf(err + n, size - n, format, ap);
}

static void err_append(char *err, size_t size, const char *format, ...)
        __attribute__((format(printf, 3, 4)));
static void err_append(char *err, size_t size, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        err_vappend(err, size, format, ap);
        va_end(ap);
}

/* err_prefix: starts a message with "FILE:LINE: " (or "FILE: " without a line). FILE can come from an
 * @include in the config text, so it is escaped like any other value. */
static void err_prefix(const ConfCtx *ctx, const char *file, unsigned line) {
        size_t n;

        if (!ctx->err || ctx->err_size == 0)
                return;
        ctx->err[0] = '\0';
        (void) escape(file ? file : ctx->path, SIZE_MAX, ctx->err, ctx->err_size);
        n = strlen(ctx->err);
        if (line > 0)
                err_append(ctx->err + n, ctx->err_size - n, ":%u: ", line);
        else
                err_append(ctx->err + n, ctx->err_size - n, ": ");
}

static int file_error(const ConfCtx *ctx, int r, const char *file, unsigned line, const char *format, ...)
        __attribute__((format(printf, 5, 6)));
static int file_error(const ConfCtx *ctx, int r, const char *file, unsigned line, const char *format, ...) {
        va_list ap;

        err_prefix(ctx, file, line);
        va_start(ap, format);
        err_vappend(ctx->err, ctx->err_size, format, ap);
        va_end(ap);
        return r;
}

/* key_error: "FILE:LINE: KEY: ...", where S is the setting (or list element) at fault. */
static int key_error(const ConfCtx *ctx, const config_setting_t *s, const char *key, const char *format, ...)
        __attribute__((format(printf, 4, 5)));
static int key_error(const ConfCtx *ctx, const config_setting_t *s, const char *key, const char *format,
                     ...) {
        char k[ECHO_BUF_SIZE];
        va_list ap;

        err_prefix(ctx, config_setting_source_file(s), config_setting_source_line(s));
        err_append(ctx->err, ctx->err_size, "%s: ", echo(key, k));
        va_start(ap, format);
        err_vappend(ctx->err, ctx->err_size, format, ap);
        va_end(ap);
        return -EINVAL;
}

static int oom_error(const ConfCtx *ctx) {
        return file_error(ctx, -ENOMEM, NULL, 0, "out of memory");
}

static const char *type_name(int type) {
        switch (type) {
        case CONFIG_TYPE_GROUP:
                return "a group";
        case CONFIG_TYPE_INT:
        case CONFIG_TYPE_INT64:
                return "an integer";
        case CONFIG_TYPE_FLOAT:
                return "a float";
        case CONFIG_TYPE_STRING:
                return "a string";
        case CONFIG_TYPE_BOOL:
                return "a boolean";
        case CONFIG_TYPE_ARRAY:
                return "an array";
        case CONFIG_TYPE_LIST:
                return "a list";
        default:
                return "an unknown type";
        }
}

/* ---- listen specs ---- */

static int reason(char *err, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
static int reason(char *err, size_t size, const char *format, ...) {
        va_list ap;

        if (err && size > 0) {
                err[0] = '\0';
                va_start(ap, format);
                err_vappend(err, size, format, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* port_parse: strictly decimal digits, 1..65535; no sign, no blanks, nothing after. */
static int port_parse(const char *s, uint16_t *ret, char *err, size_t size) {
        char buf[ECHO_BUF_SIZE];
        unsigned long v = 0;

        if (!*s)
                return reason(err, size, "empty port after ':'");
        for (const char *p = s; *p; p++) {
                if (!is_ascii_digit(*p))
                        return reason(err, size, "port \"%s\" is not a decimal number", echo(s, buf));
                if (v <= 65535)
                        v = v * 10 + (unsigned long) (*p - '0');
        }
        if (v < 1 || v > 65535)
                return reason(err, size, "port must be between 1 and 65535, got %s", echo(s, buf));
        *ret = (uint16_t) v;
        return 0;
}

/* host_name_check: what a DNS name can look like (RFC 1123); it is resolved later, not here. */
static int host_name_check(const char *h, char *err, size_t size) {
        size_t label = 0;
        const char *p;

        if (strlen(h) > 253)
                return reason(err, size, "host name is longer than 253 characters");
        for (p = h; *p; p++) {
                if (*p == '.') {
                        if (label == 0)
                                return reason(err, size, "host name has an empty label");
                        if (p[-1] == '-')
                                return reason(err, size, "host name label ends with '-'");
                        label = 0;
                        continue;
                }
                if (!is_ascii_alpha(*p) && !is_ascii_digit(*p) && *p != '-')
                        return reason(err, size, "not an IP address, and not a host name "
                                                 "(letters, digits, '-' and '.' only)");
                if (*p == '-' && label == 0)
                        return reason(err, size, "host name label starts with '-'");
                if (++label > 63)
                        return reason(err, size, "host name label is longer than 63 characters");
        }
        if (label == 0)
                return reason(err, size, "host name has an empty label");
        if (p[-1] == '-')
                return reason(err, size, "host name label ends with '-'");
        return 0;
}

/* host_check: HOST as written outside brackets: an IPv4 literal or a DNS name. */
static int host_check(const char *h, char *err, size_t size) {
        struct in_addr a4;

        if (!*h)
                return reason(err, size, "empty host");
        if (strcmp(h, "*") == 0)
                return reason(err, size,
                              "'*' is not accepted; to listen on all addresses, leave out 'listen' "
                              "or list \"0.0.0.0\" and \"::\"");
        /* getaddrinfo() would happily read "1.2.3" or "123" as an IPv4 address; we do not. */
        if (strspn(h, "0123456789.") == strlen(h)) {
                if (inet_pton(AF_INET, h, &a4) != 1)
                        return reason(err, size, "not a valid IPv4 address");
                return 0;
        }
        return host_name_check(h, err, size);
}

int listen_spec_parse(const char *text, ListenSpec *ret, char *err, size_t err_size) {
        struct in6_addr a6;
        const char *host_start, *host_end, *port_text = NULL, *first_colon;
        uint16_t port = 0;
        char *host;
        int r;

        assert(ret);
        if (!text || !*text)
                return reason(err, err_size, "empty address");
        /* Longest sane form: "[" 253-byte name "]:65535"; refuse early instead of copying megabytes. */
        if (strlen(text) > 253 + 8)
                return reason(err, err_size, "too long");

        if (text[0] == '[') {
                const char *close = strchr(text, ']');

                if (!close)
                        return reason(err, err_size, "missing ']' after IPv6 address");
                host_start = text + 1;
                host_end = close;
                if (close[1] == ':')
                        port_text = close + 2;
                else if (close[1] != '\0')
                        return reason(err, err_size,
                                      "unexpected text after ']' (expected ':PORT' or nothing)");
        } else {
                host_start = text;
                first_colon = strchr(text, ':');
                if (first_colon && !strchr(first_colon + 1, ':')) {
                        host_end = first_colon;
                        port_text = first_colon + 1;
                } else
                        /* No colon, or two or more: a bare IPv6 literal, which takes no port. */
                        host_end = text + strlen(text);
        }

        host = strndup(host_start, (size_t) (host_end - host_start));
        if (!host) {
                (void) reason(err, err_size, "out of memory");
                return -ENOMEM;
        }

        if (text[0] == '[') {
                if (inet_pton(AF_INET6, host, &a6) != 1)
                        r = reason(err, err_size,
                                   "brackets are only for IPv6 addresses, and this is not one");
                else
                        r = 0;
        } else if (strchr(host, ':')) {
                if (inet_pton(AF_INET6, host, &a6) != 1)
                        r = reason(err, err_size,
                                   "not a valid IPv6 address (write \"[ADDRESS]:PORT\" to give a port)");
                else
                        r = 0;
        } else
                r = host_check(host, err, err_size);
        if (r >= 0 && port_text)
                r = port_parse(port_text, &port, err, err_size);
        if (r < 0) {
                free(host);
                return r;
        }

        *ret = (ListenSpec) { .host = host, .port = port };
        return 0;
}

void listen_spec_done(ListenSpec *s) {
        if (!s)
                return;
        free(s->host);
        s->host = NULL;
        s->port = 0;
}

static void listen_specs_free(ListenSpec *specs, size_t n) {
        for (size_t i = 0; i < n; i++)
                listen_spec_done(&specs[i]);
        free(specs);
}

/* ---- keys ---- */

static int parse_integer(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, long long *ret) {
        int type = config_setting_type(s);
        long long v;

        if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                return key_error(ctx, s, k->name, "must be an integer, got %s", type_name(type));
        v = config_setting_get_int64(s);
        if (v < k->min || v > k->max)
                return key_error(ctx, s, k->name, "must be between %lld and %lld, got %lld", k->min, k->max,
                                 v);
        *ret = v;
        return 0;
}

static int parse_unsigned(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        long long v = 0;
        int r;

        assert(k->min >= 0 && k->max <= UINT_MAX);
        r = parse_integer(k, s, ctx, &v);
        if (r < 0)
                return r;
        *(unsigned *) ((char *) c + k->offset) = (unsigned) v;
        return 0;
}

static int parse_size(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        long long v = 0;
        int r;

        assert(k->min >= 0);
        r = parse_integer(k, s, ctx, &v);
        if (r < 0)
                return r;
        *(size_t *) ((char *) c + k->offset) = (size_t) v;
        return 0;
}

static int parse_string(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, const char **ret) {
        int type = config_setting_type(s);
        const char *v = NULL;

        if (type != CONFIG_TYPE_STRING)
                return key_error(ctx, s, k->name, "must be a string, got %s", type_name(type));
        v = config_setting_get_string(s);
        *ret = v ? v : "";
        return 0;
}

/* parse_text: a string that is sent to clients as part of a line, so CR, LF, NUL and friends would
 * break the protocol. */
static int parse_text(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, const char **ret) {
        const char *v = NULL;
        size_t len;
        int r;

        r = parse_string(k, s, ctx, &v);
        if (r < 0)
                return r;
        len = strlen(v);
        if (len > CONF_TEXT_MAX)
                return key_error(ctx, s, k->name, "is too long (%zu bytes, at most %d)", len, CONF_TEXT_MAX);
        for (size_t i = 0; i < len; i++) {
                unsigned char ch = (unsigned char) v[i];

                if (ch < 0x20 || ch == 0x7f)
                        return key_error(ctx, s, k->name,
                                         "must not contain control characters, found \\x%02x at byte %zu",
                                         ch, i);
        }
        *ret = v;
        return 0;
}

static int parse_greeting(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        const char *v = NULL;
        char *copy;
        int r;

        r = parse_text(k, s, ctx, &v);
        if (r < 0)
                return r;
        if (!*v)
                return key_error(ctx, s, k->name, "must not be empty: a greeting daemon has to greet");
        copy = strdup(v);
        if (!copy)
                return oom_error(ctx);
        free(c->greeting);
        c->greeting = copy;
        return 0;
}

/* reply_split: TEMPLATE cut at its one placeholder. -EINVAL: none; -E2BIG: more than one. */
static int reply_split(const char *template, char **ret_prefix, char **ret_suffix) {
        const char *at = strstr(template, CONF_REPLY_PLACEHOLDER), *after;
        char *prefix, *suffix;

        if (!at)
                return -EINVAL;
        after = at + strlen(CONF_REPLY_PLACEHOLDER);
        if (strstr(after, CONF_REPLY_PLACEHOLDER))
                return -E2BIG;
        prefix = strndup(template, (size_t) (at - template));
        suffix = strdup(after);
        if (!prefix || !suffix) {
                free(prefix);
                free(suffix);
                return -ENOMEM;
        }
        *ret_prefix = prefix;
        *ret_suffix = suffix;
        return 0;
}

static int parse_reply(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        const char *v = NULL;
        char *prefix, *suffix;
        int r;

        r = parse_text(k, s, ctx, &v);
        if (r < 0)
                return r;
        r = reply_split(v, &prefix, &suffix);
        if (r == -EINVAL)
                return key_error(ctx, s, k->name, "must contain %s", CONF_REPLY_PLACEHOLDER);
        if (r == -E2BIG)
                return key_error(ctx, s, k->name, "must contain %s exactly once", CONF_REPLY_PLACEHOLDER);
        if (r < 0)
                return oom_error(ctx);
        free(c->reply_prefix);
        free(c->reply_suffix);
        c->reply_prefix = prefix;
        c->reply_suffix = suffix;
        return 0;
}

/* parse_either: a string that must be FIRST or SECOND; *RET_SECOND says which. */
static int parse_either(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, const char *first,
                        const char *second, bool *ret_second) {
        char buf[ECHO_BUF_SIZE];
        const char *v = NULL;
        int r;

        r = parse_string(k, s, ctx, &v);
        if (r < 0)
                return r;
        if (strcmp(v, first) != 0 && strcmp(v, second) != 0)
                return key_error(ctx, s, k->name, "must be \"%s\" or \"%s\", got \"%s\"", first, second,
                                 echo(v, buf));
        *ret_second = strcmp(v, second) == 0;
        return 0;
}

static int parse_framing(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        bool chunk;
        int r = parse_either(k, s, ctx, "line", "chunk", &chunk);

        if (r == 0)
                c->framing = chunk ? FRAMING_CHUNK : FRAMING_LINE;
        return r;
}

static int parse_log_level(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE];
        const char *v = NULL;
        int r, level;

        r = parse_string(k, s, ctx, &v);
        if (r < 0)
                return r;
        level = log_level_from_string(v);
        if (level < 0)
                return key_error(ctx, s, k->name,
                                 "must be one of \"error\", \"warning\", \"notice\", \"info\", \"debug\"; "
                                 "got \"%s\"",
                                 echo(v, buf));
        c->log_level = level;
        return 0;
}

static int parse_listen(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], why[ERR_REASON_MAX];
        int type = config_setting_type(s), n, i, r = 0;
        ListenSpec *specs;

        if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
                return key_error(ctx, s, k->name, "must be a list of strings, got %s", type_name(type));
        n = config_setting_length(s);
        if (n <= 0)
                return key_error(ctx, s, k->name, "must not be empty: hellod has to listen somewhere");
        if (n > CONF_LISTEN_MAX)
                return key_error(ctx, s, k->name, "has too many entries (%d, at most %d)", n,
                                 CONF_LISTEN_MAX);

        specs = calloc((size_t) n, sizeof(ListenSpec));
        if (!specs)
                return oom_error(ctx);
        for (i = 0; i < n; i++) {
                const config_setting_t *e = config_setting_get_elem(s, (unsigned) i);
                const char *text;

                if (!e || config_setting_type(e) != CONFIG_TYPE_STRING) {
                        r = key_error(ctx, e ? e : s, k->name, "entries must be strings, got %s",
                                      type_name(e ? config_setting_type(e) : CONFIG_TYPE_NONE));
                        break;
                }
                text = config_setting_get_string(e);
                r = listen_spec_parse(text, &specs[i], why, sizeof(why));
                if (r == -ENOMEM) {
                        r = oom_error(ctx);
                        break;
                }
                if (r < 0) {
                        r = key_error(ctx, e, k->name, "\"%s\": %s", echo(text ? text : "", buf), why);
                        break;
                }
                for (int j = 0; j < i; j++)
                        if (specs[j].port == specs[i].port && strcmp(specs[j].host, specs[i].host) == 0) {
                                r = key_error(ctx, e, k->name, "\"%s\" is listed twice", echo(text, buf));
                                break;
                        }
                if (r < 0)
                        break;
        }
        if (r < 0) {
                listen_specs_free(specs, (size_t) n);
                return r;
        }

        listen_specs_free(c->listen, c->n_listen);
        c->listen = specs;
        c->n_listen = (size_t) n;
        c->listen_is_default = false;
        return 0;
}

static int parse_cidr_list(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, Cidr **ret,
                           size_t *ret_n) {
        char buf[ECHO_BUF_SIZE], why[ERR_REASON_MAX];
        int type = config_setting_type(s), n, r = 0;
        Cidr *items;

        if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
                return key_error(ctx, s, k->name, "must be a list of strings, got %s", type_name(type));
        n = config_setting_length(s);
        if (n > CONF_CIDR_MAX)
                return key_error(ctx, s, k->name, "has too many entries (%d, at most %d)", n, CONF_CIDR_MAX);
        items = calloc(n > 0 ? (size_t) n : 1, sizeof(Cidr));
        if (!items)
                return oom_error(ctx);
        for (int i = 0; i < n && r == 0; i++) {
                const config_setting_t *e = config_setting_get_elem(s, (unsigned) i);
                const char *text;

                if (!e || config_setting_type(e) != CONFIG_TYPE_STRING) {
                        r = key_error(ctx, e ? e : s, k->name, "entries must be strings, got %s",
                                      type_name(e ? config_setting_type(e) : CONFIG_TYPE_NONE));
                        break;
                }
                text = config_setting_get_string(e);
                if (cidr_parse(text ? text : "", &items[i], why, sizeof(why)) < 0)
                        r = key_error(ctx, e, k->name, "\"%s\": %s", echo(text ? text : "", buf), why);
        }
        if (r < 0) {
                free(items);
                return r;
        }
        free(*ret);
        *ret = items;
        *ret_n = (size_t) n;
        return 0;
}

static int parse_allow(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        return parse_cidr_list(k, s, ctx, &c->allow, &c->n_allow);
}

static int parse_deny(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        return parse_cidr_list(k, s, ctx, &c->deny, &c->n_deny);
}

static int parse_overload(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        bool queue;
        int r = parse_either(k, s, ctx, "refuse", "queue", &queue);

        if (r == 0)
                c->overload = queue ? OVERLOAD_QUEUE : OVERLOAD_REFUSE;
        return r;
}

/* parse_name: a user or group name (or a numeric ID), as getpwnam()/getgrnam() take it; it is
 * resolved when the daemon drops privileges, not here. */
static int parse_name(const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx, char **ret) {
        char buf[ECHO_BUF_SIZE];
        const char *v = NULL;
        char *copy;
        size_t len;
        int r;

        r = parse_string(k, s, ctx, &v);
        if (r < 0)
                return r;
        len = strlen(v);
        if (len == 0 || len > CONF_NAME_MAX)
                return key_error(ctx, s, k->name, "must be 1 to %d characters", CONF_NAME_MAX);
        for (size_t i = 0; i < len; i++) {
                char ch = v[i];
                if (!is_ascii_alpha(ch) && !is_ascii_digit(ch) && ch != '_' && ch != '-' && ch != '.' &&
                    !(ch == '$' && i == len - 1))
                        return key_error(ctx, s, k->name, "\"%s\" is not a valid name", echo(v, buf));
        }
        if (v[0] == '-')
                return key_error(ctx, s, k->name, "\"%s\" is not a valid name", echo(v, buf));
        copy = strdup(v);
        if (!copy)
                return oom_error(ctx);
        free(*ret);
        *ret = copy;
        return 0;
}

static int parse_user(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        return parse_name(k, s, ctx, &c->user);
}

static int parse_group(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        return parse_name(k, s, ctx, &c->group);
}

/* workers_auto: one event loop per CPU. */
static unsigned workers_auto(void) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        return cpus < 1 ? 1 : cpus > CONF_WORKERS_MAX ? CONF_WORKERS_MAX : (unsigned) cpus;
}

/* parse_workers: "per-connection", "auto" (one loop per CPU) or a number of pool loops. */
static int parse_workers(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE];
        int type = config_setting_type(s);

        if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
                long long v = config_setting_get_int64(s);
                if (v < 1 || v > CONF_WORKERS_MAX)
                        return key_error(ctx, s, k->name, "must be between 1 and %d, \"auto\" or \"per-connection\"; got %lld",
                                         CONF_WORKERS_MAX, v);
                c->workers = (unsigned) v;
                c->workers_auto = false;
                return 0;
        }
        if (type != CONFIG_TYPE_STRING)
                return key_error(ctx, s, k->name, "must be \"per-connection\", \"auto\" or a number, got %s",
                                 type_name(type));
        const char *v = config_setting_get_string(s);
        if (strcmp(v, "per-connection") == 0) {
                c->workers = 0;
                c->workers_auto = false;
        } else if (strcmp(v, "auto") == 0) {
                c->workers = workers_auto();
                c->workers_auto = true;
        } else
                return key_error(ctx, s, k->name, "must be \"per-connection\", \"auto\" or a number, got \"%s\"",
                                 echo(v, buf));
        return 0;
}

#define INT_KEY(key, parser, field, lo, hi)                                                               \
        { .name = (key), .parse = (parser), .offset = offsetof(Conf, field), .min = (lo), .max = (hi) }

static const ConfKey conf_keys[] = {
        { .name = "listen", .parse = parse_listen },
        INT_KEY("port", parse_unsigned, port, 1, 65535),
        INT_KEY("backlog", parse_unsigned, backlog, 1, 65535),
        INT_KEY("max_connections", parse_unsigned, max_connections, 1, 1000000),
        INT_KEY("max_connections_per_ip", parse_unsigned, max_connections_per_ip, 0, 1000000),
        INT_KEY("idle_timeout", parse_unsigned, idle_timeout, 0, 86400),
        INT_KEY("max_line_length", parse_unsigned, max_line_length, 1, CONF_MAX_LINE_LENGTH_MAX),
        INT_KEY("shutdown_timeout", parse_unsigned, shutdown_timeout, 0, 3600),
        { .name = "greeting", .parse = parse_greeting },
        { .name = "reply", .parse = parse_reply },
        { .name = "framing", .parse = parse_framing },
        { .name = "log_level", .parse = parse_log_level },
        INT_KEY("worker_stack_size", parse_size, worker_stack_size, CONF_WORKER_STACK_MIN,
                CONF_WORKER_STACK_MAX),
        { .name = "allow", .parse = parse_allow },
        { .name = "deny", .parse = parse_deny },
        INT_KEY("per_ip_ipv4_prefix", parse_unsigned, per_ip_ipv4_prefix, 1, 32),
        INT_KEY("per_ip_ipv6_prefix", parse_unsigned, per_ip_ipv6_prefix, 1, 128),
        INT_KEY("rate_limit_per_ip", parse_unsigned, rate_limit_per_ip, 0, 1000000),
        INT_KEY("rate_limit_burst", parse_unsigned, rate_limit_burst, 1, 1000000),
        { .name = "overload", .parse = parse_overload },
        { .name = "workers", .parse = parse_workers },
        { .name = "user", .parse = parse_user },
        { .name = "group", .parse = parse_group },
};

static const ConfKey *conf_key_find(const char *name, size_t len) {
        for (size_t i = 0; i < sizeof(conf_keys) / sizeof(conf_keys[0]); i++)
                if (strlen(conf_keys[i].name) == len && strncmp(conf_keys[i].name, name, len) == 0)
                        return &conf_keys[i];
        return NULL;
}

/* ---- libconfig 1.5 integer truncation ---- */

/* libconfig 1.5 reads an integer literal without an L suffix through a plain cast to int, so
 * `port = 4294967297;` arrives as 1 and `idle_timeout = 4294967296;` as 0 (never), with no error.
 * The API cannot tell, so scan the (already syntax-checked) text for such literals ourselves. Only the
 * main file is scanned: @include'd files are read by libconfig directly. */
typedef struct WideLiteral {
        const char *key, *text;
        size_t key_len, text_len;
        unsigned line;
} WideLiteral;

static bool literal_is_wide(const char *t, size_t len) {
        unsigned long long v = 0, limit;
        bool negative = false, hex = false, saturated = false;
        size_t i = 0, digits = 0;

        if (t[i] == '-' || t[i] == '+')
                negative = t[i++] == '-';
        if (i + 1 < len && t[i] == '0' && (t[i + 1] == 'x' || t[i + 1] == 'X')) {
                hex = true;
                i += 2;
        }
        for (; i < len; i++, digits++) {
                char ch = t[i];
                unsigned d;

                if (is_ascii_digit(ch))
                        d = (unsigned) (ch - '0');
                else if (hex && ((ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
                        d = (unsigned) ((ch | 0x20) - 'a' + 10);
                else
                        break;
                if (v > (ULLONG_MAX - d) / (hex ? 16 : 10))
                        saturated = true;
                else
                        v = v * (hex ? 16 : 10) + d;
        }
        if (digits == 0)
                return false;
        if (len - i == 1 && t[i] == 'L')
                limit = (unsigned long long) LLONG_MAX;
        else if (len - i == 2 && t[i] == 'L' && t[i + 1] == 'L')
                limit = (unsigned long long) LLONG_MAX;
        else if (i == len)
                limit = INT_MAX;
        else
                return false; /* a float, or not a number at all */
        return saturated || v > limit + (negative ? 1 : 0);
}

static void skip_string(const char **p, unsigned *line) {
        const char *q = *p + 1;

        for (; *q && *q != '"'; q++) {
                if (*q == '\\' && q[1])
                        q++;
                if (*q == '\n')
                        (*line)++;
        }
        *p = *q ? q + 1 : q;
}

static void skip_comment(const char **p, unsigned *line) {
        const char *q = *p;

        if (q[0] == '/' && q[1] == '*') {
                for (q += 2; *q && !(q[0] == '*' && q[1] == '/'); q++)
                        if (*q == '\n')
                                (*line)++;
                *p = *q ? q + 2 : q;
                return;
        }
        *p = q + strcspn(q, "\n");
}

static bool find_wide_literal(const char *text, WideLiteral *ret) {
        const char *p = text, *name = NULL, *key = NULL;
        size_t name_len = 0, key_len = 0;
        unsigned line = 1, name_line = 0, key_line = 0;

        while (*p) {
                const char *start = p;

                if (*p == '\n') {
                        line++;
                        p++;
                } else if (*p == '"')
                        skip_string(&p, &line);
                else if (*p == '#' || (p[0] == '/' && (p[1] == '/' || p[1] == '*')))
                        skip_comment(&p, &line);
                else if (is_ascii_alpha(*p) || *p == '*') {
                        p += strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_*-");
                        name = start;
                        name_len = (size_t) (p - start);
                        name_line = line;
                } else if (is_ascii_digit(*p) || *p == '-' || *p == '+' || *p == '.') {
                        p += strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-");
                        if (key && literal_is_wide(start, (size_t) (p - start))) {
                                *ret = (WideLiteral) { .key = key, .key_len = key_len, .line = key_line,
                                                       .text = start, .text_len = (size_t) (p - start) };
                                return true;
                        }
                } else {
                        if ((*p == '=' || *p == ':') && name) {
                                key = name;
                                key_len = name_len;
                                key_line = name_line;
                        }
                        p++;
                }
        }
        return false;
}

static int wide_literal_error(const WideLiteral *w, const ConfCtx *ctx) {
        char key[ECHO_BUF_SIZE], lit[ECHO_BUF_SIZE], *k, *t;
        const ConfKey *known = conf_key_find(w->key, w->key_len);
        int r;

        k = strndup(w->key, w->key_len);
        t = strndup(w->text, w->text_len);
        if (!k || !t)
                r = oom_error(ctx);
        else if (known && (known->parse == parse_unsigned || known->parse == parse_size))
                r = file_error(ctx, -EINVAL, NULL, w->line, "%s: must be between %lld and %lld, got %s",
                               echo(k, key), known->min, known->max, echo(t, lit));
        else
                r = file_error(ctx, -EINVAL, NULL, w->line,
                               "%s: integer %s is out of range (libconfig 1.5 would silently truncate it)",
                               echo(k, key), echo(t, lit));
        free(k);
        free(t);
        return r;
}

/* ---- loading ---- */

/* read_file: the whole file, NUL-terminated. We read it ourselves rather than let libconfig do it:
 * libconfig 1.5 cannot tell a missing file from a syntax error, and a read error (a directory, EIO)
 * makes its flex scanner exit() the whole process. */
static int read_file(const ConfCtx *ctx, char **ret, size_t *ret_size) {
        size_t size = 0, alloc = 4096;
        char msg[128];
        char *buf = NULL;
        int fd, r = 0;

        /* A directory opens fine and fails in read() with EISDIR, which is the message we want. */
        fd = open(ctx->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                r = -errno;
        else if (!(buf = malloc(alloc)))
                r = -ENOMEM;

        while (r == 0) {
                ssize_t n;

                if (size + 1 >= alloc) {
                        char *p;

                        if (alloc > CONF_FILE_SIZE_MAX) {
                                r = -EFBIG;
                                break;
                        }
                        p = realloc(buf, alloc * 2);
                        if (!p) {
                                r = -ENOMEM;
                                break;
                        }
                        buf = p;
                        alloc *= 2;
                }
                n = read(fd, buf + size, alloc - size - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        r = -errno;
                else if (n == 0)
                        break;
                else
                        size += (size_t) n;
        }
        if (fd >= 0)
                (void) close(fd);

        if (r == 0 && size > CONF_FILE_SIZE_MAX)
                r = -EFBIG;
        if (r < 0) {
                free(buf);
                if (r == -EFBIG)
                        return file_error(ctx, -EINVAL, NULL, 0, "file is larger than %d bytes",
                                          CONF_FILE_SIZE_MAX);
                if (r == -ENOMEM)
                        return oom_error(ctx);
                return file_error(ctx, r, NULL, 0, "%s", strerror_r(-r, msg, sizeof(msg)));
        }
        buf[size] = '\0';
        *ret = buf;
        *ret_size = size;
        return 0;
}

static unsigned line_of(const char *text, size_t offset) {
        unsigned line = 1;

        for (size_t i = 0; i < offset; i++)
                if (text[i] == '\n')
                        line++;
        return line;
}

static int conf_apply(Conf *c, const config_t *cfg, const ConfCtx *ctx) {
        const config_setting_t *root = config_root_setting(cfg);
        int n = config_setting_length(root);

        for (int i = 0; i < n; i++) {
                const config_setting_t *s = config_setting_get_elem(root, (unsigned) i);
                const char *name;
                const ConfKey *k;
                char buf[ECHO_BUF_SIZE];
                int r;

                if (!s)
                        continue;
                name = config_setting_name(s);
                if (!name)
                        name = "";
                k = conf_key_find(name, strlen(name));
                if (!k)
                        return file_error(ctx, -EINVAL, config_setting_source_file(s),
                                          config_setting_source_line(s), "unknown key '%s'",
                                          echo(name, buf));
                r = k->parse(c, k, s, ctx);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* conf_parse_text: TEXT (SIZE bytes, NUL-terminated) as a configuration file. */
static int conf_parse_text(Conf *c, const ConfCtx *ctx, const char *text, size_t size) {
        WideLiteral wide;
        config_t cfg;
        int r;

        /* libconfig reads a C string: anything after a NUL would be silently ignored. */
        if (strlen(text) != size)
                return file_error(ctx, -EINVAL, NULL, line_of(text, strlen(text)), "NUL byte in file");

        config_init(&cfg);
        if (!config_read_string(&cfg, text)) {
                const char *what = config_error_text(&cfg);

                r = file_error(ctx, -EINVAL, config_error_file(&cfg),
                               config_error_line(&cfg) > 0 ? (unsigned) config_error_line(&cfg) : 0, "%s",
                               what ? what : "syntax error");
        } else if (find_wide_literal(text, &wide))
                r = wide_literal_error(&wide, ctx);
        else
                r = conf_apply(c, &cfg, ctx);
        config_destroy(&cfg);
        return r;
}

static int conf_parse_file(Conf *c, const ConfCtx *ctx) {
        size_t size = 0;
        char *text = NULL;
        int r;

        r = read_file(ctx, &text, &size);
        if (r < 0)
                return r;
        r = conf_parse_text(c, ctx, text, size);
        free(text);
        return r;
}

static void conf_free(Conf *c) {
        if (!c)
                return;
        free(c->path);
        listen_specs_free(c->listen, c->n_listen);
        free(c->greeting);
        free(c->reply_prefix);
        free(c->reply_suffix);
        free(c->allow);
        free(c->deny);
        free(c->user);
        free(c->group);
        free(c);
}

static int conf_new(const char *path, Conf **ret) {
        Conf *c;

        c = calloc(1, sizeof(Conf));
        if (!c)
                return -ENOMEM;
        *c = (Conf) {
                .n_ref = 1,
                .listen_is_default = true,
                .port = CONF_DEFAULT_PORT,
                .backlog = CONF_DEFAULT_BACKLOG,
                .max_connections = CONF_DEFAULT_MAX_CONNECTIONS,
                .max_connections_per_ip = CONF_DEFAULT_MAX_CONNECTIONS_PER_IP,
                .idle_timeout = CONF_DEFAULT_IDLE_TIMEOUT,
                .max_line_length = CONF_DEFAULT_MAX_LINE_LENGTH,
                .shutdown_timeout = CONF_DEFAULT_SHUTDOWN_TIMEOUT,
                .framing = FRAMING_LINE,
                .log_level = LOG_INFO,
                .worker_stack_size = CONF_DEFAULT_WORKER_STACK_SIZE,
                .per_ip_ipv4_prefix = CONF_DEFAULT_PER_IP_IPV4_PREFIX,
                .per_ip_ipv6_prefix = CONF_DEFAULT_PER_IP_IPV6_PREFIX,
                .rate_limit_per_ip = CONF_DEFAULT_RATE_LIMIT_PER_IP,
                .rate_limit_burst = CONF_DEFAULT_RATE_LIMIT_BURST,
                .overload = OVERLOAD_REFUSE,
                /* The pool, one loop per CPU: measured faster and far leaner than a thread per
                 * connection (README, Performance). */
                .workers = workers_auto(),
                .workers_auto = true,
        };

        c->listen = calloc(2, sizeof(ListenSpec));
        if (c->listen) {
                c->n_listen = 2;
                c->listen[0].host = strdup("0.0.0.0");
                c->listen[1].host = strdup("::");
        }
        c->greeting = strdup(CONF_DEFAULT_GREETING);
        if (path)
                c->path = strdup(path);
        if (!c->listen || !c->listen[0].host || !c->listen[1].host || !c->greeting || (path && !c->path) ||
            reply_split(CONF_DEFAULT_REPLY, &c->reply_prefix, &c->reply_suffix) < 0) {
                conf_free(c);
                return -ENOMEM;
        }
        *ret = c;
        return 0;
}

int conf_load(const char *path, Conf **ret, char *err, size_t err_size) {
        ConfCtx ctx = { .path = path, .err = err, .err_size = err_size };
        Conf *c;
        int r;

        assert(ret);
        if (err && err_size > 0)
                err[0] = '\0';

        r = conf_new(path, &c);
        if (r < 0) {
                ctx.path = path ? path : "hellod";
                return oom_error(&ctx);
        }
        if (path) {
                r = conf_parse_file(c, &ctx);
                if (r < 0) {
                        conf_free(c);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

int conf_load_text(const char *name, const char *text, size_t size, Conf **ret, char *err, size_t err_size) {
        ConfCtx ctx = { .path = name, .err = err, .err_size = err_size };
        char *copy;
        Conf *c;
        int r;

        assert(name && ret);
        if (err && err_size > 0)
                err[0] = '\0';
        /* The parser wants a NUL-terminated string; TEXT need not be one. */
        copy = malloc(size + 1);
        if (!copy || conf_new(name, &c) < 0) {
                free(copy);
                return oom_error(&ctx);
        }
        memcpy(copy, text, size);
        copy[size] = '\0';
        r = conf_parse_text(c, &ctx, copy, size);
        free(copy);
        if (r < 0) {
                conf_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

int conf_load_for(const char *path, bool optional, Conf **ret, bool *ret_defaulted, char *err, size_t err_size) {
        int r = conf_load(path, ret, err, err_size);

        *ret_defaulted = false;
        if (r == -ENOENT && optional) {
                *ret_defaulted = true;
                return conf_load(NULL, ret, err, err_size);
        }
        return r;
}

Conf *conf_ref(Conf *c) {
        if (!c)
                return NULL;
        assert(__atomic_load_n(&c->n_ref, __ATOMIC_RELAXED) > 0);
        (void) __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL);
        return c;
}

Conf *conf_unref(Conf *c) {
        int n;

        if (!c)
                return NULL;
        n = __atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL);
        assert(n >= 0);
        if (n == 0)
                conf_free(c);
        return NULL;
}

void conf_unrefp(Conf **c) {
        if (c)
                *c = conf_unref(*c);
}

/* ---- printing ---- */

/* print_escaped: S as the inside of a libconfig string literal; nothing is truncated here, unlike in
 * messages. Bytes from 0x80 up pass through, so UTF-8 text stays readable. */
static void print_escaped(FILE *f, const char *s) {
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;

                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20 || ch == 0x7f)
                        fprintf(f, "\\x%02x", ch);
                else
                        fputc(ch, f);
        }
}

static void print_listen_spec(FILE *f, const ListenSpec *s) {
        fputc('"', f);
        if (s->port == 0)
                print_escaped(f, s->host);
        else if (strchr(s->host, ':')) {
                fputc('[', f);
                print_escaped(f, s->host);
                fprintf(f, "]:%u", (unsigned) s->port);
        } else {
                print_escaped(f, s->host);
                fprintf(f, ":%u", (unsigned) s->port);
        }
        fputc('"', f);
}

static void print_listen(FILE *f, const Conf *c) {
        /* The built-in default tolerates a missing IPv6 stack, and the same list written out would not:
         * print it commented out, so that this output, loaded again, means exactly the same thing. */
        fputs(c->listen_is_default ? "# listen = [ " : "listen = [ ", f);
        for (size_t i = 0; i < c->n_listen; i++) {
                if (i > 0)
                        fputs(", ", f);
                print_listen_spec(f, &c->listen[i]);
        }
        fputs(c->listen_is_default ? " ];  (built-in default)\n" : " ];\n", f);
}

static void print_cidrs(FILE *f, const char *key, const Cidr *items, size_t n) {
        char buf[INET6_ADDRSTRLEN + 8];

        fprintf(f, "%s = [", key);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s \"%s\"", i ? "," : "", cidr_format(&items[i], buf, sizeof(buf)));
        fputs(" ];\n", f);
}

void conf_print(const Conf *c, FILE *f) {
        const char *level = log_level_to_string(c->log_level);

        assert(c);
        assert(f);

        if (c->path) {
                /* Escaped: a newline in the path would end the comment. */
                fputs("# hellod effective configuration (from ", f);
                print_escaped(f, c->path);
                fputs(")\n", f);
        } else
                fputs("# hellod effective configuration (built-in defaults)\n", f);

        print_listen(f, c);
        fprintf(f, "port = %u;\n", c->port);
        fprintf(f, "backlog = %u;\n", c->backlog);
        fprintf(f, "max_connections = %u;\n", c->max_connections);
        fprintf(f, "max_connections_per_ip = %u;\n", c->max_connections_per_ip);
        fprintf(f, "idle_timeout = %u;\n", c->idle_timeout);
        fprintf(f, "max_line_length = %u;\n", c->max_line_length);
        fprintf(f, "shutdown_timeout = %u;\n", c->shutdown_timeout);
        fputs("greeting = \"", f);
        print_escaped(f, c->greeting);
        fputs("\";\nreply = \"", f);
        print_escaped(f, c->reply_prefix);
        print_escaped(f, CONF_REPLY_PLACEHOLDER);
        print_escaped(f, c->reply_suffix);
        fputs("\";\n", f);
        fprintf(f, "framing = \"%s\";\n", framing_to_string(c->framing));
        fprintf(f, "log_level = \"%s\";\n", level ? level : "info");
        fprintf(f, "worker_stack_size = %zu;\n", c->worker_stack_size);
        print_cidrs(f, "allow", c->allow, c->n_allow);
        print_cidrs(f, "deny", c->deny, c->n_deny);
        fprintf(f, "per_ip_ipv4_prefix = %u;\n", c->per_ip_ipv4_prefix);
        fprintf(f, "per_ip_ipv6_prefix = %u;\n", c->per_ip_ipv6_prefix);
        fprintf(f, "rate_limit_per_ip = %u;\n", c->rate_limit_per_ip);
        fprintf(f, "rate_limit_burst = %u;\n", c->rate_limit_burst);
        fprintf(f, "overload = \"%s\";\n", overload_to_string(c->overload));
        if (c->workers_auto)
                fprintf(f, "workers = \"auto\"; # %u\n", c->workers);
        else if (c->workers == 0)
                fputs("workers = \"per-connection\";\n", f);
        else
                fprintf(f, "workers = %u;\n", c->workers);
        /* Names were validated: letters, digits and _-.$ only; nothing to escape. */
        if (c->user)
                fprintf(f, "user = \"%s\";\n", c->user);
        else
                fputs("# user: not set\n", f);
        if (c->group)
                fprintf(f, "group = \"%s\";\n", c->group);
        else
                fputs("# group: not set\n", f);
}

const char *overload_to_string(Overload o) {
        return o == OVERLOAD_QUEUE ? "queue" : "refuse";
}

bool conf_admits(const Conf *c, const IpKey *client) {
        bool allowed = c->n_allow == 0;

        for (size_t i = 0; i < c->n_allow && !allowed; i++)
                allowed = cidr_match(&c->allow[i], client);
        for (size_t i = 0; i < c->n_deny && allowed; i++)
                allowed = !cidr_match(&c->deny[i], client);
        return allowed;
}

const char *framing_to_string(Framing f) {
        switch (f) {
        case FRAMING_LINE:
                return "line";
        case FRAMING_CHUNK:
                return "chunk";
        }
        return NULL;
}
