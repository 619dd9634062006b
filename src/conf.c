/* conf: the libconfig file turned into a validated, reference-counted Conf, immutable once shared.
 *
 * Every key is one line of conf_keys[]: its name, its parser, its printer, where it goes in Conf,
 * its range and its default. The defaults are applied by parsing them like a file would, so a
 * default can never be a value the file could not give. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ascii.h"
#include "conf.h"
#include "conftext.h"
#include "log.h"

/* Values from the file that are echoed in messages are cut to this many bytes, since messages end up
 * in logs. */
#define ECHO_MAX 64
#define ECHO_BUF_SIZE (ECHO_MAX * 4 + sizeof("..."))

#define ERR_REASON_MAX 256

/* Where messages go and what they name while one file is loaded. */
typedef struct ConfCtx {
        const char *path;
        const ConfText *text; /* maps a line of what libconfig parsed to a file and line; or NULL */
        char *err;
        size_t err_size;
} ConfCtx;

typedef struct ConfKey ConfKey;
typedef int (*ConfKeyParser)(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx);
typedef void (*ConfKeyPrinter)(const Conf *c, const ConfKey *k, FILE *f);

struct ConfKey {
        const char *name;
        ConfKeyParser parse;
        ConfKeyPrinter print;
        size_t offset, offset_n; /* where the value (and a list's length) goes in Conf */
        size_t offset_at;        /* where its "FILE:LINE" goes, for start-time checks; 0: not kept */
        size_t size;             /* integers: sizeof the field */
        long long min, max;      /* integers */
        const char *const *names; /* enumerations: the value's name at its index, NULL-terminated */
        const char *def;         /* the default, in config syntax; NULL: zero */
};

static const char *const framing_names[] = { [FRAMING_LINE] = "line", [FRAMING_CHUNK] = "chunk", NULL };
static const char *const overload_names[] = { [OVERLOAD_REFUSE] = "refuse", [OVERLOAD_QUEUE] = "queue", NULL };
static const char *const handover_names[] = { [HANDOVER_MODE_RESTART] = "restart",
                                              [HANDOVER_MODE_ALWAYS] = "always",
                                              [HANDOVER_MODE_OFF] = "off",
                                              NULL };
static const char *const io_backend_names[] = { [IO_BACKEND_EPOLL] = "epoll", [IO_BACKEND_IO_URING] = "io_uring",
                                                NULL };

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

/* where: "FILE:LINE" (or "FILE" without a line) into BUF, LINE being a line of the spliced text
 * when FILE is NULL. FILE can come from an @include in the config text, so it is escaped like
 * any other value. err_prefix: a message starts with it and ": ". */
static void where(const ConfCtx *ctx, const char *file, unsigned line, char *buf, size_t size) {
        size_t n;

        if (!file && line > 0 && ctx->text)
                conf_text_locate(ctx->text, line, &file, &line);
        buf[0] = '\0';
        (void) escape(file ? file : ctx->path, SIZE_MAX, buf, size);
        n = strlen(buf);
        if (line > 0)
                err_append(buf + n, size - n, ":%u", line);
}

static void err_prefix(const ConfCtx *ctx, const char *file, unsigned line) {
        size_t n;

        if (!ctx->err || ctx->err_size == 0)
                return;
        where(ctx, file, line, ctx->err, ctx->err_size);
        n = strlen(ctx->err);
        err_append(ctx->err + n, ctx->err_size - n, ": ");
}

/* line_of: the line of the setting or list entry S in the text libconfig parsed. */
static unsigned line_of(const ConfCtx *ctx, const config_setting_t *s) {
        unsigned line = config_setting_source_line(s), own;
        const config_setting_t *parent = config_setting_parent(s);
        const char *value;

        /* libconfig gave an entry the line of the token after it: the entry's own string, at
         * or before that line, is where it is (not found: written with escapes). */
        if (ctx->text && parent && !config_setting_name(s) && config_setting_type(s) == CONFIG_TYPE_STRING &&
            (value = config_setting_get_string(s)) && (own = conf_text_string_line(ctx->text, line, value)) > 0)
                return own;
        return line;
}

/* origin: "FILE:LINE" of the setting S, kept for what only the start can check (a user that
 * must exist, a name that must resolve); NULL when out of memory. */
static char *origin(const ConfCtx *ctx, const config_setting_t *s) {
        char buf[CONF_ORIGIN_MAX];

        where(ctx, NULL, line_of(ctx, s), buf, sizeof(buf));
        return strdup(buf);
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

        err_prefix(ctx, NULL, line_of(ctx, s));
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

/* ---- parsers ---- */

static const ConfKey *conf_key_find(const char *name, size_t len);

static void *field(Conf *c, size_t offset) {
        return (char *) c + offset;
}

static const void *cfield(const Conf *c, size_t offset) {
        return (const char *) c + offset;
}

/* parse_int: an integer within the key's range, into an unsigned or a size_t field. */
static int parse_int(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        int type = config_setting_type(s);
        long long v;

        if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                return key_error(ctx, s, k->name, "must be an integer, got %s", type_name(type));
        v = config_setting_get_int64(s);
        if (v < k->min || v > k->max)
                return key_error(ctx, s, k->name, "must be between %lld and %lld, got %lld", k->min, k->max,
                                 v);
        if (k->size == sizeof(size_t))
                *(size_t *) field(c, k->offset) = (size_t) v;
        else {
                assert(k->size == sizeof(unsigned) && k->max <= UINT_MAX);
                *(unsigned *) field(c, k->offset) = (unsigned) v;
        }
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

/* utf8_decode: the length of the well-formed UTF-8 character at P (LEFT bytes from there), its
 * code point in *CP; 0 for a byte that begins none (a stray continuation byte, an overlong
 * form, a surrogate, beyond U+10FFFF, cut short). */
static size_t utf8_decode(const unsigned char *p, size_t left, uint32_t *cp) {
        static const uint32_t least[] = { 0, 0, 0x80, 0x800, 0x10000 }; /* below: overlong */
        size_t n;
        uint32_t v;

        if (p[0] < 0x80)
                n = 1, v = p[0];
        else if (p[0] >= 0xc2 && p[0] < 0xe0)
                n = 2, v = p[0] & 0x1fu;
        else if (p[0] >= 0xe0 && p[0] < 0xf0)
                n = 3, v = p[0] & 0x0fu;
        else if (p[0] >= 0xf0 && p[0] < 0xf5)
                n = 4, v = p[0] & 0x07u;
        else
                return 0;
        if (n > left)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                v = v << 6 | (p[i] & 0x3fu);
        }
        if (v < least[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
                return 0;
        *cp = v;
        return n;
}

/* parse_text: a string that is sent to clients as part of a line, so CR, LF, NUL and friends would
 * break the protocol; and text, UTF-8, so that no byte reads as something else to a client
 * (telnet's IAC, 0xff, begins a command; a lone 0x9b is a terminal's CSI). */
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
        for (size_t i = 0, n; i < len; i += n) {
                const unsigned char *at = (const unsigned char *) v + i;
                uint32_t cp = 0;

                n = utf8_decode(at, len - i, &cp);
                if (n == 0)
                        return key_error(ctx, s, k->name, "is not UTF-8 text: byte \\x%02x at byte %zu", at[0], i);
                if (cp < 0x20 || cp == 0x7f)
                        return key_error(ctx, s, k->name,
                                         "must not contain control characters, found \\x%02x at byte %zu",
                                         (unsigned) cp, i);
                if (cp >= 0x80 && cp <= 0x9f)
                        return key_error(ctx, s, k->name,
                                         "must not contain control characters, found U+%04X at byte %zu",
                                         (unsigned) cp, i);
        }
        *ret = v;
        return 0;
}

/* replace: frees the string at *FIELD and puts a copy of V there. */
static int replace(char **f, const char *v, const ConfCtx *ctx) {
        char *copy = strdup(v);

        if (!copy)
                return oom_error(ctx);
        free(*f);
        *f = copy;
        return 0;
}

static int parse_greeting(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        const char *v = NULL;
        int r;

        r = parse_text(k, s, ctx, &v);
        if (r < 0)
                return r;
        if (!*v)
                return key_error(ctx, s, k->name, "must not be empty: a greeting daemon has to greet");
        return replace(field(c, k->offset), v, ctx);
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

/* parse_enum: one of the key's names, stored as its index. */
static int parse_enum(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], choices[128] = "";
        const char *v = NULL;
        size_t n = 0;
        int r;

        r = parse_string(k, s, ctx, &v);
        if (r < 0)
                return r;
        for (unsigned i = 0; k->names[i]; i++) {
                if (strcmp(v, k->names[i]) == 0) {
                        *(unsigned *) field(c, k->offset) = i;
                        return 0;
                }
                n += (size_t) snprintf(choices + n, sizeof(choices) - n, "%s\"%s\"",
                                       i == 0 ? "" : k->names[i + 1] ? ", " : " or ", k->names[i]);
                assert(n < sizeof(choices));
        }
        return key_error(ctx, s, k->name, "must be %s, got \"%s\"", choices, echo(v, buf));
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
        *(int *) field(c, k->offset) = level;
        return 0;
}

/* list_elem_string: element I of the list S, which must be a string. */
static int list_elem_string(const ConfKey *k, const config_setting_t *s, int i, const ConfCtx *ctx,
                            const config_setting_t **ret_elem, const char **ret) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned) i);
        const char *text;

        if (!e || config_setting_type(e) != CONFIG_TYPE_STRING)
                return key_error(ctx, e ? e : s, k->name, "entries must be strings, got %s",
                                 type_name(e ? config_setting_type(e) : CONFIG_TYPE_NONE));
        text = config_setting_get_string(e);
        *ret_elem = e;
        *ret = text ? text : "";
        return 0;
}

/* list_length: S must be a list or array of at most MAX entries. */
static int list_length(const ConfKey *k, const config_setting_t *s, int max, const ConfCtx *ctx, int *ret) {
        int type = config_setting_type(s), n;

        if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
                return key_error(ctx, s, k->name, "must be a list of strings, got %s", type_name(type));
        n = config_setting_length(s);
        if (n > max)
                return key_error(ctx, s, k->name, "has too many entries (%d, at most %d)", n, max);
        *ret = n;
        return 0;
}

/* listen_address: a string entry of `listen`, or a group's `address`, into RET. */
static int listen_address(const ConfKey *k, const config_setting_t *e, const char *text, ListenSpec *ret,
                          const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], why[ERR_REASON_MAX];
        int r = listen_spec_parse(text, ret, why, sizeof(why));

        if (r == -ENOMEM)
                return oom_error(ctx);
        if (r < 0)
                return key_error(ctx, e, k->name, "\"%s\": %s", echo(text, buf), why);
        return 0;
}

static int listen_name(const ConfKey *k, const config_setting_t *e, const char *text, ListenSpec *ret,
                       const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE];

        if (!fdname_valid(text))
                return key_error(ctx, e, k->name,
                                 "name \"%s\": a FileDescriptorName= is 1 to %d printable ASCII characters, "
                                 "no spaces or ':'",
                                 echo(text, buf), CONF_FDNAME_MAX);
        ret->fdname = strdup(text);
        return ret->fdname ? 0 : oom_error(ctx);
}

/* listen_group_member: one setting E of a listen group into RET. */
static int listen_group_member(const ConfKey *k, const config_setting_t *e, ListenSpec *ret, const ConfCtx *ctx) {
        const char *name = config_setting_name(e), *text;
        int type = config_setting_type(e);
        char buf[ECHO_BUF_SIZE];

        name = name ? name : "";
        if (strcmp(name, "proxy_protocol") == 0) {
                if (type != CONFIG_TYPE_BOOL)
                        return key_error(ctx, e, k->name, "'proxy_protocol' must be true or false, got %s",
                                         type_name(type));
                ret->proxy_protocol = config_setting_get_bool(e) != 0;
                return 0;
        }
        if (strcmp(name, "address") != 0 && strcmp(name, "name") != 0) {
                if (conf_key_find(name, strlen(name)))
                        return key_error(ctx, e, k->name, "unknown key '%s' in a listen group (%s is a top-level "
                                                          "setting)",
                                         echo(name, buf), name);
                return key_error(ctx, e, k->name,
                                 "unknown key '%s' in a listen group (it takes address, name and proxy_protocol)",
                                 echo(name, buf));
        }
        if (type != CONFIG_TYPE_STRING)
                return key_error(ctx, e, k->name, "'%s' must be a string, got %s", name, type_name(type));
        if (ret->host || ret->fdname)
                return key_error(ctx, e, k->name, "a listen group takes one 'address' or one 'name', not both");
        text = config_setting_get_string(e);
        text = text ? text : "";
        if (name[0] == 'n')
                return listen_name(k, e, text, ret, ctx);
        bool proxy = ret->proxy_protocol;
        int r = listen_address(k, e, text, ret, ctx);
        ret->proxy_protocol = proxy; /* listen_spec_parse() fills all of RET */
        return r;
}

/* listen_group: { address = "..."; name = "..."; proxy_protocol = BOOL; } into RET. */
static int listen_group(const ConfKey *k, const config_setting_t *g, ListenSpec *ret, const ConfCtx *ctx) {
        int n = config_setting_length(g);

        for (int i = 0; i < n; i++) {
                const config_setting_t *e = config_setting_get_elem(g, (unsigned) i);
                int r = e ? listen_group_member(k, e, ret, ctx) : 0;
                if (r < 0)
                        return r;
        }
        if (!ret->host && !ret->fdname)
                return key_error(ctx, g, k->name,
                                 "a listen group needs an 'address' (as a string entry gives it) or the 'name' of "
                                 "sockets systemd passes");
        return 0;
}

static int listen_entry_parse(const ConfKey *k, const config_setting_t *e, ListenSpec *ret, const ConfCtx *ctx) {
        int type = config_setting_type(e);
        const char *text;

        if (type == CONFIG_TYPE_GROUP)
                return listen_group(k, e, ret, ctx);
        if (type != CONFIG_TYPE_STRING)
                return key_error(ctx, e, k->name, "entries must be strings or groups, got %s", type_name(type));
        text = config_setting_get_string(e);
        return listen_address(k, e, text ? text : "", ret, ctx);
}

/* listen_entry: entry E into RET, with where it is written (names are resolved at the start). */
static int listen_entry(const ConfKey *k, const config_setting_t *e, ListenSpec *ret, const ConfCtx *ctx) {
        int r = listen_entry_parse(k, e, ret, ctx);

        if (r >= 0 && ctx->text && !(ret->at = origin(ctx, e)))
                return oom_error(ctx);
        return r;
}

/* listen_entry_text: what entry E says, for messages: the string, or a group's address or name. */
static const char *listen_entry_text(const config_setting_t *e) {
        const config_setting_t *m = e;
        const char *text;

        if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
                m = config_setting_get_member(e, "address");
                if (!m)
                        m = config_setting_get_member(e, "name");
        }
        text = m ? config_setting_get_string(m) : NULL;
        return text ? text : "";
}

/* same_host: whether hosts A and B are one address: the same text, or two spellings of one
 * IPv6 literal ("::1" and "0:0::1"; a link-local one's interface compared as written), or of
 * one IPv4 literal as inet_pton() reads it. Names are compared as written. */
static bool same_host(const char *a, const char *b) {
        unsigned char x[sizeof(struct in6_addr)], y[sizeof(struct in6_addr)];
        const char *scope_a = strchr(a, '%'), *scope_b = strchr(b, '%');

        if (strcmp(a, b) == 0)
                return true;
        if (inet_pton(AF_INET, a, x) == 1 && inet_pton(AF_INET, b, y) == 1)
                return memcmp(x, y, sizeof(struct in_addr)) == 0;
        if (!listen_host_ipv6(a, x) || !listen_host_ipv6(b, y) || memcmp(x, y, sizeof(x)) != 0)
                return false;
        return (!scope_a && !scope_b) || (scope_a && scope_b && strcmp(scope_a, scope_b) == 0);
}

/* listen_same: whether A and B name one socket, an entry without a port taking PORT
 * ("127.0.0.1" and "127.0.0.1:9999" with port = 9999). */
static bool listen_same(const ListenSpec *a, const ListenSpec *b, unsigned port) {
        if (a->fdname || b->fdname)
                return a->fdname && b->fdname && strcmp(a->fdname, b->fdname) == 0;
        return (a->port ? a->port : port) == (b->port ? b->port : port) && same_host(a->host, b->host);
}

/* listed_twice: the first `listen` entry that names the socket of an earlier one, *EARLIER;
 * -1: none. Checked once every key is read, since `port` may come after `listen`. */
static int listed_twice(const Conf *c, size_t *earlier) {
        for (size_t j = 1; j < c->n_listen; j++)
                for (size_t i = 0; i < j; i++)
                        if (listen_same(&c->listen[i], &c->listen[j], c->port)) {
                                *earlier = i;
                                return (int) j;
                        }
        return -1;
}

/* Address families, as a mask: what listen_families() knows of an entry without a lookup. */
enum { FAMILY_V4 = 1, FAMILY_V6 = 2 };

/* listen_families: the families of SPEC's address when it is known without a lookup: one for
 * a numeric address, *WILDCARD saying whether it is 0.0.0.0 or ::; IPv4 for "localhost",
 * which is 127.0.0.1 wherever hellod looks it up (::1 only where the resolver says so: the
 * bind tells then, and the generator, which binds both, checks its own); 0 for another host
 * name (looked up at the start) or a passed socket. */
static unsigned listen_families(const ListenSpec *spec, bool *wildcard) {
        static const unsigned char zero[sizeof(struct in6_addr)];
        unsigned char a[sizeof(struct in6_addr)];

        *wildcard = false;
        if (!spec->host)
                return 0;
        if (inet_pton(AF_INET, spec->host, a) == 1) {
                *wildcard = memcmp(a, zero, sizeof(struct in_addr)) == 0;
                return FAMILY_V4;
        }
        if (listen_host_ipv6(spec->host, a)) {
                *wildcard = memcmp(a, zero, sizeof(struct in6_addr)) == 0;
                return FAMILY_V6;
        }
        return strcasecmp(spec->host, "localhost") == 0 ? FAMILY_V4 : 0;
}

/* beside_wildcard: the first `listen` entry that one wildcard address and one specific address
 * of a family make on one port, *EARLIER the other; -1: none. The wildcard's socket takes
 * every address of its family on that port, so the specific one could not be bound. */
static int beside_wildcard(const Conf *c, size_t *earlier) {
        for (size_t j = 1; j < c->n_listen; j++) {
                bool wild_j, wild_i;
                unsigned families = listen_families(&c->listen[j], &wild_j);
                unsigned port = conf_listen_port(c, &c->listen[j]);
                for (size_t i = 0; i < j && families; i++) {
                        if ((listen_families(&c->listen[i], &wild_i) & families) && wild_i != wild_j &&
                            conf_listen_port(c, &c->listen[i]) == port) {
                                *earlier = i;
                                return (int) j;
                        }
                }
        }
        return -1;
}

/* parse_listen: a list of entries, each a string (an address) or a group; an array (strings
 * only) too. */
static int parse_listen(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        int type = config_setting_type(s), n, i, r = 0;
        ListenSpec *specs;

        if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
                return key_error(ctx, s, k->name, "must be a list of addresses or groups, got %s", type_name(type));
        n = config_setting_length(s);
        if (n > CONF_LISTEN_MAX)
                return key_error(ctx, s, k->name, "has too many entries (%d, at most %d)", n, CONF_LISTEN_MAX);
        if (n <= 0)
                return key_error(ctx, s, k->name, "must not be empty: hellod has to listen somewhere");
        specs = calloc((size_t) n, sizeof(ListenSpec));
        if (!specs)
                return oom_error(ctx);
        for (i = 0; i < n && r >= 0; i++) {
                const config_setting_t *e = config_setting_get_elem(s, (unsigned) i);

                r = e ? listen_entry(k, e, &specs[i], ctx) : key_error(ctx, s, k->name, "missing entry");
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

/* parse_cidrs: a list of address prefixes, into a Cidr array and its length. */
static int parse_cidrs(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], why[ERR_REASON_MAX];
        Cidr **items = field(c, k->offset), *new;
        int n = 0, r;

        r = list_length(k, s, CONF_CIDR_MAX, ctx, &n);
        if (r < 0)
                return r;
        new = calloc(n > 0 ? (size_t) n : 1, sizeof(Cidr));
        if (!new)
                return oom_error(ctx);
        for (int i = 0; i < n && r >= 0; i++) {
                const config_setting_t *e = NULL;
                const char *text = NULL;

                r = list_elem_string(k, s, i, ctx, &e, &text);
                if (r >= 0 && cidr_parse(text, &new[i], why, sizeof(why)) < 0)
                        r = key_error(ctx, e, k->name, "\"%s\": %s", echo(text, buf), why);
        }
        if (r < 0) {
                free(new);
                return r;
        }
        free(*items);
        *items = new;
        *(size_t *) field(c, k->offset_n) = (size_t) n;
        return 0;
}

/* parse_name: a user or group name (or a numeric ID), as getpwnam()/getgrnam() take it; whether it
 * exists is a start-time check (preflight), not a matter of syntax. */
static int parse_name(Conf *c, const ConfKey *k, const config_setting_t *s, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE];
        const char *v = NULL;
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
        char **at = field(c, k->offset_at);
        free(*at);
        if (!(*at = origin(ctx, s)))
                return oom_error(ctx);
        return replace(field(c, k->offset), v, ctx);
}

bool conf_same_workers(const Conf *a, const Conf *b) {
        return (a->workers_auto && b->workers_auto) || a->workers == b->workers;
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
        const char *v;

        if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
                long long n = config_setting_get_int64(s);
                if (n < 1 || n > CONF_WORKERS_MAX)
                        return key_error(ctx, s, k->name,
                                         "must be between 1 and %d, \"auto\" or \"per-connection\"; got %lld",
                                         CONF_WORKERS_MAX, n);
                c->workers = (unsigned) n;
                c->workers_auto = false;
                return 0;
        }
        if (type != CONFIG_TYPE_STRING)
                return key_error(ctx, s, k->name, "must be \"per-connection\", \"auto\" or a number, got %s",
                                 type_name(type));
        v = config_setting_get_string(s);
        if (strcmp(v, "per-connection") == 0) {
                c->workers = 0;
                c->workers_auto = false;
        } else if (strcmp(v, "auto") == 0) {
                c->workers = workers_auto();
                c->workers_auto = true;
        } else
                return key_error(ctx, s, k->name,
                                 "must be \"per-connection\", \"auto\" or a number, got \"%s\"", echo(v, buf));
        return 0;
}

/* ---- printers: each writes its key back in the file's own syntax ---- */

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

static void print_int(const Conf *c, const ConfKey *k, FILE *f) {
        if (k->size == sizeof(size_t))
                fprintf(f, "%s = %zu;\n", k->name, *(const size_t *) cfield(c, k->offset));
        else
                fprintf(f, "%s = %u;\n", k->name, *(const unsigned *) cfield(c, k->offset));
}

static void print_string(const Conf *c, const ConfKey *k, FILE *f) {
        fprintf(f, "%s = \"", k->name);
        print_escaped(f, *(char *const *) cfield(c, k->offset));
        fputs("\";\n", f);
}

static void print_reply(const Conf *c, const ConfKey *k, FILE *f) {
        fprintf(f, "%s = \"", k->name);
        print_escaped(f, c->reply_prefix);
        print_escaped(f, CONF_REPLY_PLACEHOLDER);
        print_escaped(f, c->reply_suffix);
        fputs("\";\n", f);
}

static void print_enum(const Conf *c, const ConfKey *k, FILE *f) {
        fprintf(f, "%s = \"%s\";\n", k->name, k->names[*(const unsigned *) cfield(c, k->offset)]);
}

static void print_log_level(const Conf *c, const ConfKey *k, FILE *f) {
        fprintf(f, "%s = \"%s\";\n", k->name, log_level_to_string(*(const int *) cfield(c, k->offset)));
}

static void print_listen_spec(FILE *f, const ListenSpec *s) {
        ListenSpec bare = { .host = NULL };
        bool brackets = strchr(s->host, ':') && (s->port != 0 || listen_spec_parse(s->host, &bare, NULL, 0) < 0);

        /* IPv6 in brackets when bare it would not load again ("::1:9999" reads as ambiguous). */
        listen_spec_done(&bare);
        fputc('"', f);
        if (brackets) {
                fputc('[', f);
                print_escaped(f, s->host);
                fputc(']', f);
                if (s->port != 0)
                        fprintf(f, ":%u", (unsigned) s->port);
        } else if (s->port == 0)
                print_escaped(f, s->host);
        else {
                print_escaped(f, s->host);
                fprintf(f, ":%u", (unsigned) s->port);
        }
        fputc('"', f);
}

/* print_listen_entry: a plain address as a string, anything more as a group. */
static void print_listen_entry(FILE *f, const ListenSpec *s) {
        if (!s->fdname && !s->proxy_protocol) {
                print_listen_spec(f, s);
                return;
        }
        fputs("{ ", f);
        if (s->fdname) {
                /* Names were validated: printable ASCII; quotes and backslashes still need escaping. */
                fputs("name = \"", f);
                print_escaped(f, s->fdname);
                fputs("\"; ", f);
        } else {
                fputs("address = ", f);
                print_listen_spec(f, s);
                fputs("; ", f);
        }
        fprintf(f, "proxy_protocol = %s; }", s->proxy_protocol ? "true" : "false");
}

static void print_listen(const Conf *c, const ConfKey *k, FILE *f) {
        bool groups = false;

        for (size_t i = 0; i < c->n_listen; i++)
                groups = groups || c->listen[i].fdname || c->listen[i].proxy_protocol;
        /* The built-in default tolerates a missing IPv6 stack, and the same list written out would not:
         * print it commented out, so that this output, loaded again, means exactly the same thing.
         * Groups need a ( ) list: a [ ] array holds scalars only. */
        fprintf(f, "%s%s = %s ", c->listen_is_default ? "# " : "", k->name, groups ? "(" : "[");
        for (size_t i = 0; i < c->n_listen; i++) {
                if (i > 0)
                        fputs(", ", f);
                print_listen_entry(f, &c->listen[i]);
        }
        fprintf(f, " %s;%s\n", groups ? ")" : "]", c->listen_is_default ? "  (built-in default)" : "");
}

static void print_cidrs(const Conf *c, const ConfKey *k, FILE *f) {
        const Cidr *items = *(Cidr *const *) cfield(c, k->offset);
        size_t n = *(const size_t *) cfield(c, k->offset_n);
        char buf[INET6_ADDRSTRLEN + 8];

        fprintf(f, "%s = [", k->name);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s \"%s\"", i ? "," : "", cidr_format(&items[i], buf, sizeof(buf)));
        fputs(" ];\n", f);
}

static void print_workers(const Conf *c, const ConfKey *k, FILE *f) {
        if (c->workers_auto)
                fprintf(f, "%s = \"auto\"; # %u\n", k->name, c->workers);
        else if (c->workers == 0)
                fprintf(f, "%s = \"per-connection\";\n", k->name);
        else
                fprintf(f, "%s = %u;\n", k->name, c->workers);
}

static void print_name(const Conf *c, const ConfKey *k, FILE *f) {
        const char *v = *(char *const *) cfield(c, k->offset);

        /* Names were validated: letters, digits and _-.$ only; nothing to escape. */
        if (v)
                fprintf(f, "%s = \"%s\";\n", k->name, v);
        else
                fprintf(f, "# %s: not set\n", k->name);
}

/* ---- the keys ---- */

#define FIELD_SIZE(f) sizeof(((Conf *) NULL)->f)
#define STR_(x) #x
#define STR(x) STR_(x)

#define INT_KEY(key, f, lo, hi, dflt)                                                                    \
        { .name = (key), .parse = parse_int, .print = print_int, .offset = offsetof(Conf, f),              \
          .size = FIELD_SIZE(f), .min = (lo), .max = (hi), .def = STR(dflt) }
#define ENUM_KEY(key, f, choices, dflt)                                                                   \
        { .name = (key), .parse = parse_enum, .print = print_enum, .offset = offsetof(Conf, f),            \
          .names = (choices), .def = "\"" dflt "\"" }
#define KEY(key, parser, printer, f, dflt)                                                                \
        { .name = (key), .parse = (parser), .print = (printer), .offset = offsetof(Conf, f), .def = (dflt) }
#define NAME_KEY(key, f)                                                                                  \
        { .name = (key), .parse = parse_name, .print = print_name, .offset = offsetof(Conf, f),            \
          .offset_at = offsetof(Conf, f##_at) }
#define LIST_KEY(key, parser, printer, f, dflt)                                                           \
        { .name = (key), .parse = (parser), .print = (printer), .offset = offsetof(Conf, f),              \
          .offset_n = offsetof(Conf, n_##f), .def = (dflt) }

_Static_assert(sizeof(Framing) == sizeof(unsigned) && sizeof(Overload) == sizeof(unsigned) &&
                       sizeof(HandoverMode) == sizeof(unsigned) &&
                       sizeof(IoBackend) == sizeof(unsigned),
               "parse_enum stores an unsigned");

/* In the order conf_print() writes them. */
static const ConfKey conf_keys[] = {
        LIST_KEY("listen", parse_listen, print_listen, listen, "[ \"0.0.0.0\", \"::\" ]"),
        INT_KEY("port", port, 1, 65535, CONF_DEFAULT_PORT),
        INT_KEY("backlog", backlog, 1, 65535, CONF_DEFAULT_BACKLOG),
        INT_KEY("max_connections", max_connections, 1, CONF_MAX_CONNECTIONS_LIMIT, CONF_DEFAULT_MAX_CONNECTIONS),
        INT_KEY("max_connections_per_ip", max_connections_per_ip, 0, 1000000, CONF_DEFAULT_MAX_CONNECTIONS_PER_IP),
        INT_KEY("idle_timeout", idle_timeout, 0, CONF_IDLE_TIMEOUT_MAX, CONF_DEFAULT_IDLE_TIMEOUT),
        INT_KEY("max_line_length", max_line_length, CONF_MAX_LINE_LENGTH_MIN, CONF_MAX_LINE_LENGTH_MAX, CONF_DEFAULT_MAX_LINE_LENGTH),
        INT_KEY("shutdown_timeout", shutdown_timeout, 0, 3600, CONF_DEFAULT_SHUTDOWN_TIMEOUT),
        KEY("greeting", parse_greeting, print_string, greeting, "\"" CONF_DEFAULT_GREETING "\""),
        KEY("reply", parse_reply, print_reply, reply_prefix, "\"" CONF_DEFAULT_REPLY "\""),
        ENUM_KEY("framing", framing, framing_names, "line"),
        KEY("log_level", parse_log_level, print_log_level, log_level, "\"info\""),
        INT_KEY("worker_stack_size", worker_stack_size, CONF_WORKER_STACK_MIN, CONF_WORKER_STACK_MAX,
                CONF_DEFAULT_WORKER_STACK_SIZE),
        LIST_KEY("allow", parse_cidrs, print_cidrs, allow, NULL),
        LIST_KEY("deny", parse_cidrs, print_cidrs, deny, NULL),
        LIST_KEY("proxy_from", parse_cidrs, print_cidrs, proxy_from, NULL),
        INT_KEY("per_ip_ipv4_prefix", per_ip_ipv4_prefix, 1, 32, CONF_DEFAULT_PER_IP_IPV4_PREFIX),
        INT_KEY("per_ip_ipv6_prefix", per_ip_ipv6_prefix, 1, 128, CONF_DEFAULT_PER_IP_IPV6_PREFIX),
        INT_KEY("rate_limit_per_ip", rate_limit_per_ip, 0, 1000000, CONF_DEFAULT_RATE_LIMIT_PER_IP),
        INT_KEY("rate_limit_burst", rate_limit_burst, 1, 1000000, CONF_DEFAULT_RATE_LIMIT_BURST),
        ENUM_KEY("overload", overload, overload_names, "refuse"),
        ENUM_KEY("handover", handover, handover_names, "restart"),
        /* The pool, one loop per CPU: measured faster and far leaner than a thread per connection. */
        KEY("workers", parse_workers, print_workers, workers, "\"auto\""),
        ENUM_KEY("io_backend", io_backend, io_backend_names, "epoll"),
        NAME_KEY("user", user),
        NAME_KEY("group", group),
};

static const ConfKey *conf_key_find(const char *name, size_t len) {
        for (size_t i = 0; i < sizeof(conf_keys) / sizeof(conf_keys[0]); i++)
                if (strlen(conf_keys[i].name) == len && strncmp(conf_keys[i].name, name, len) == 0)
                        return &conf_keys[i];
        return NULL;
}

/* ---- loading ---- */

static int wide_literal_error(const ConfSpot *w, const ConfCtx *ctx) {
        char key[ECHO_BUF_SIZE], lit[ECHO_BUF_SIZE], *k, *t;
        const ConfKey *known = conf_key_find(w->key, w->key_len);
        int r;

        k = strndup(w->key, w->key_len);
        t = strndup(w->text, w->text_len);
        if (!k || !t)
                r = oom_error(ctx);
        else if (known && known->parse == parse_int)
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

/* trailing_comma_error: "FILE:LINE: KEY: ..." at the comma J found (conf_text_find_trailing_comma),
 * where libconfig's "syntax error" names the bracket's line. */
static int trailing_comma_error(const ConfSpot *j, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], *key = j->key_len > 0 ? strndup(j->key, j->key_len) : NULL;

        if (j->key_len > 0 && !key)
                return oom_error(ctx);
        (void) file_error(ctx, -EINVAL, NULL, j->line, "%s%s',' after the last entry of a list: libconfig takes none before '%c'",
                   key ? echo(key, buf) : "", key ? ": " : "", j->next[0]);
        free(key);
        return -EINVAL;
}

/* reads_past: whether libconfig reads T's text without an error, or (LINE > 0) past LINE. Not
 * asked of a text that holds what hellod refuses before libconfig reads it (refused_first:
 * libconfig would leak a stray string). */
static bool reads_past(const ConfText *t, unsigned line) {
        ConfSpot refused;
        config_t cfg;

        if (conf_text_find_stray_string(t, &refused) || conf_text_find_too_deep(t, &refused))
                return false;
        config_init(&cfg);
        bool past = config_read_string(&cfg, t->text) || (line > 0 && (unsigned) config_error_line(&cfg) > line);
        config_destroy(&cfg);
        return past;
}

/* comma_is_the_error: whether the comma J found is what libconfig stumbled on at LINE, and not
 * something else on that line: without it, the text up to the list's bracket reads without an
 * error (a list outside any group), or the whole text reads past LINE. */
static bool comma_is_the_error(const ConfSpot *j, unsigned line, const ConfCtx *ctx) {
        ConfText without = *ctx->text;

        if (!(without.text = strdup(ctx->text->text)))
                return false;
        without.text[j->text - ctx->text->text] = ' ';
        char *cut = without.text + (j->next - ctx->text->text) + 1, kept = *cut;
        *cut = '\0';
        bool past = reads_past(&without, 0);
        *cut = kept;
        if (!past)
                past = reads_past(&without, line);
        free(without.text);
        return past;
}

/* file_error_quoting_line: "FILE:LINE: WHAT in "TEXT"", TEXT the line as written (its blanks
 * around taken away), so that a bare "syntax error" shows what it is about; WHAT alone for a
 * blank line. */
static int file_error_quoting_line(const ConfCtx *ctx, unsigned line, const char *what) {
        size_t len = 0;
        const char *text = ctx->text && line > 0 ? conf_text_line(ctx->text, line, &len) : NULL;

        while (len > 0 && strchr(" \t\r\f\v", text[0])) {
                text++;
                len--;
        }
        while (len > 0 && strchr(" \t\r\f\v", text[len - 1]))
                len--;
        if (len == 0)
                return file_error(ctx, -EINVAL, NULL, line, "%s", what);
        char buf[ECHO_BUF_SIZE], *copy = strndup(text, len);
        if (!copy)
                return oom_error(ctx);
        (void) file_error(ctx, -EINVAL, NULL, line, "%s in \"%s\"", what, echo(copy, buf));
        free(copy);
        return -EINVAL;
}

/* syntax_error: libconfig's message, with the line it names quoted; for a duplicate, the name it
 * does not give; for a comma after a list's last entry, the comma's line and what is wrong. */
static int syntax_error(const config_t *cfg, const ConfCtx *ctx) {
        const char *what = config_error_text(cfg);
        unsigned line = config_error_line(cfg) > 0 ? (unsigned) config_error_line(cfg) : 0;
        char name[ECHO_BUF_SIZE], shown[ECHO_BUF_SIZE];
        unsigned first = 0;

        if (what && strcmp(what, "duplicate setting name") == 0 && ctx->text &&
            conf_text_duplicate(ctx->text, line, name, sizeof(name), &first)) {
                const char *file, *first_file;
                unsigned at;

                conf_text_locate(ctx->text, line, &file, &at);
                conf_text_locate(ctx->text, first, &first_file, &first);
                err_prefix(ctx, file, at);
                err_append(ctx->err, ctx->err_size, "%s: ", echo(name, shown));
                if (first_file == file)
                        err_append(ctx->err, ctx->err_size, "duplicate setting, first set on line %u", first);
                else
                        err_append(ctx->err, ctx->err_size, "duplicate setting, first set in %s line %u",
                                   escape(first_file, SIZE_MAX, shown, sizeof(shown)), first);
                return -EINVAL;
        }
        /* libconfig finds a bracket left open where the text goes on, or at its end: in the
         * file that included the one at fault, or at the main file's last line. */
        const ConfUnclosed *u = ctx->text ? &ctx->text->unclosed : NULL;
        if (u && u->file && (line == 0 || line >= u->after))
                return file_error(ctx, -EINVAL, u->file, u->line, "syntax error: %s opened here ('%c') is not closed by the end of the file",
                                  u->what == '[' ? "an array" : u->what == '(' ? "a list" : "a group", u->what);
        /* libconfig finds an included file that ends inside a setting where the including file
         * goes on. */
        const ConfUnfinished *f = ctx->text ? &ctx->text->unfinished : NULL;
        if (f && f->file && (line == 0 || line >= f->after))
                return file_error(ctx, -EINVAL, f->file, f->line, "syntax error: the file ends inside a setting, in \"%s\"",
                                  echo(f->text, shown));
        ConfSpot comma;
        if (ctx->text && line > 0 && conf_text_find_trailing_comma(ctx->text, &comma) && comma.next_line == line &&
            comma_is_the_error(&comma, line, ctx))
                return trailing_comma_error(&comma, ctx);
        return file_error_quoting_line(ctx, line, what ? what : "syntax error");
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
                        return file_error(ctx, -EINVAL, NULL, config_setting_source_line(s), "unknown key '%s'",
                                          echo(name, buf));
                r = k->parse(c, k, s, ctx);
                if (r < 0)
                        return r;
        }
        return 0;
}

bool conf_has_proxy_listener(const Conf *c) {
        for (size_t i = 0; i < c->n_listen; i++)
                if (c->listen[i].proxy_protocol)
                        return true;
        return false;
}

/* warn_unused_proxy_from: `proxy_from` without a PROXY listener does nothing; likely a listen
 * group was forgotten, but the file means something, so it loads. */
static void warn_unused_proxy_from(const Conf *c, const config_t *cfg, const ConfCtx *ctx) {
        char msg[ERR_REASON_MAX + PATH_MAX];
        ConfCtx quiet = *ctx;

        if (c->n_proxy_from == 0 || conf_has_proxy_listener(c))
                return;
        msg[0] = '\0';
        quiet.err = msg;
        quiet.err_size = sizeof(msg);
        (void) key_error(&quiet, config_lookup(cfg, "proxy_from"), "proxy_from",
                         "no listen entry has proxy_protocol = true: ignored");
        log_warning("%s", msg);
}

/* conf_validate: rules between keys, once the whole file is read. */
static int conf_validate(const Conf *c, const config_t *cfg, const ConfCtx *ctx) {
        size_t earlier = 0;
        int twice = c->listen_is_default ? -1 : listed_twice(c, &earlier);
        if (twice >= 0) {
                char buf[ECHO_BUF_SIZE];
                const ListenSpec *a = &c->listen[earlier], *b = &c->listen[twice];
                const config_setting_t *s = config_lookup(cfg, "listen");
                const config_setting_t *e = s ? config_setting_get_elem(s, (unsigned) twice) : NULL;
                return key_error(ctx, e ? e : s, "listen", "%s\"%s\" is listed twice%s", b->fdname ? "name " : "",
                                 e ? echo(listen_entry_text(e), buf) : "",
                                 a->port != b->port ? " (an entry without a port takes 'port')" : "");
        }
        int beside = c->listen_is_default ? -1 : beside_wildcard(c, &earlier);
        if (beside >= 0) {
                char buf[ECHO_BUF_SIZE], other[ECHO_BUF_SIZE];
                bool wild = false;
                const config_setting_t *s = config_lookup(cfg, "listen");
                const config_setting_t *e = s ? config_setting_get_elem(s, (unsigned) beside) : NULL;
                const config_setting_t *o = s ? config_setting_get_elem(s, (unsigned) earlier) : NULL;
                (void) listen_families(&c->listen[beside], &wild);
                return key_error(ctx, e ? e : s, "listen",
                                 "\"%s\" %s \"%s\" (a wildcard address takes every address of its family on "
                                 "its port: list one or the other)",
                                 e ? echo(listen_entry_text(e), buf) : "",
                                 wild ? "would also serve" : "is already served by",
                                 o ? echo(listen_entry_text(o), other) : "");
        }
        /* A PROXY header from anyone would let any client claim any address. */
        if (conf_has_proxy_listener(c) && c->n_proxy_from == 0) {
                const config_setting_t *s = config_lookup(cfg, "proxy_from");
                return key_error(ctx, s ? s : config_lookup(cfg, "listen"), "proxy_from",
                                 "must list the balancers trusted to send a PROXY header (e.g. [ \"127.0.0.1\" ]), "
                                 "since a listen entry has proxy_protocol = true");
        }
        warn_unused_proxy_from(c, cfg, ctx);
        /* setgid() alone would leave hellod running as root, with every capability. */
        if (c->group && !c->user)
                return key_error(ctx, config_lookup(cfg, "group"), "group",
                                 "is set without 'user': hellod would stay root; set 'user' too (the group "
                                 "then replaces the user's own), or remove 'group'");
        return 0;
}

static int joined_strings_error(const ConfSpot *j, const ConfCtx *ctx) {
        char key[ECHO_BUF_SIZE], first[ECHO_BUF_SIZE], second[ECHO_BUF_SIZE], *k, *a, *b;
        int r;

        k = strndup(j->key, j->key_len);
        a = strndup(j->text, j->text_len);
        b = strndup(j->next, j->next_len);
        if (!k || !a || !b)
                r = oom_error(ctx);
        else
                r = file_error(ctx, -EINVAL, NULL, j->line,
                               "%s: no ',' between \"%s\" and \"%s\": libconfig would join them into one entry",
                               echo(k, key), echo(a, first), echo(b, second));
        free(k);
        free(a);
        free(b);
        return r;
}

static int stray_string_error(const ConfSpot *j, const ConfCtx *ctx) {
        char buf[ECHO_BUF_SIZE], *a = strndup(j->text, j->text_len);
        int r;

        if (!a)
                r = oom_error(ctx);
        else
                r = file_error(ctx, -EINVAL, NULL, j->line,
                               "syntax error at \"%s\": a setting is written name = value; and the entries of a "
                               "list are separated by ','",
                               echo(a, buf));
        free(a);
        return r;
}

static int too_deep_error(const ConfSpot *j, const ConfCtx *ctx) {
        return file_error(ctx, -EINVAL, NULL, j->line, "'%c' nested deeper than %d brackets", j->text[0],
                          CONF_NESTING_MAX);
}

/* refused_first: what hellod refuses before libconfig reads TEXT (which would leak a string
 * there), the first in the text; 0 when there is nothing, else the error. A syntax error
 * libconfig finds on an earlier line is the file's first, and named instead: libconfig reads the
 * text up to the token refused, which holds nothing it would leak. */
static int refused_first(const ConfCtx *ctx) {
        const char *text = ctx->text->text;
        ConfSpot deep, stray;
        bool too_deep = conf_text_find_too_deep(ctx->text, &deep);
        /* It tracks the brackets up to the first one too deep: a string it finds comes first. */
        bool stray_string = conf_text_find_stray_string(ctx->text, &stray);
        const ConfSpot *first = stray_string ? &stray : too_deep ? &deep : NULL;
        config_t cfg;
        int r = 0;

        if (!first)
                return 0; /* nothing refused */
        char *before = strndup(text, (size_t) (first->token - text));
        if (!before)
                return oom_error(ctx);
        config_init(&cfg);
        if (!config_read_string(&cfg, before) && (unsigned) config_error_line(&cfg) < first->line)
                r = syntax_error(&cfg, ctx);
        config_destroy(&cfg);
        free(before);
        if (r < 0)
                return r;
        return first == &stray ? stray_string_error(&stray, ctx) : too_deep_error(&deep, ctx);
}

/* conf_parse: TEXT, which libconfig may read: no @include is left in it. */
static int conf_parse(Conf *c, const ConfCtx *ctx, const char *text) {
        ConfSpot spot;
        config_t cfg;
        int r;

        /* Before libconfig reads it all. */
        r = ctx->text ? refused_first(ctx) : 0;
        if (r < 0)
                return r;
        config_init(&cfg);
        if (!config_read_string(&cfg, text))
                r = syntax_error(&cfg, ctx);
        else if (ctx->text && conf_text_find_wide(ctx->text, &spot))
                r = wide_literal_error(&spot, ctx);
        else if (ctx->text && conf_text_find_joined(ctx->text, &spot))
                r = joined_strings_error(&spot, ctx);
        else {
                r = conf_apply(c, &cfg, ctx);
                if (r >= 0)
                        r = conf_validate(c, &cfg, ctx);
        }
        config_destroy(&cfg);
        return r;
}

static void free_includes(Conf *c) {
        for (size_t i = 0; i < c->n_includes; i++)
                free(c->includes[i]);
        free(c->includes);
        c->includes = NULL;
        c->n_includes = 0;
}

/* keep_includes: the names of the files T spliced in besides the main one, into C. */
static int keep_includes(Conf *c, const ConfText *t, const ConfCtx *ctx) {
        free_includes(c);
        if (t->n_files <= 1)
                return 0;
        if (!(c->includes = calloc(t->n_files - 1, sizeof(char *))))
                return oom_error(ctx);
        for (size_t i = 1; i < t->n_files; i++, c->n_includes++)
                if (!(c->includes[c->n_includes] = strdup(t->files[i])))
                        return oom_error(ctx);
        return 0;
}

/* conf_parse_text: NAME's TEXT (SIZE bytes, NUL-terminated), its includes spliced in first. */
static int conf_parse_text(Conf *c, const char *name, const ConfCtx *outer, const char *text, size_t size) {
        ConfCtx ctx = *outer;
        ConfTextError te;
        ConfText t;
        int r;

        r = conf_text_build(&t, name, text, size, &te);
        if (r < 0) {
                r = te.r == -ENOMEM ? oom_error(&ctx) : file_error(&ctx, te.r, te.file, te.line, "%s", te.message);
                conf_text_done(&t);
                return r;
        }
        ctx.text = &t;
        r = conf_parse(c, &ctx, t.text);
        if (r >= 0)
                r = keep_includes(c, &t, &ctx);
        conf_text_done(&t);
        return r;
}

static void conf_free(Conf *c) {
        if (!c)
                return;
        free(c->path);
        free_includes(c);
        listen_specs_free(c->listen, c->n_listen);
        free(c->greeting);
        free(c->reply_prefix);
        free(c->reply_suffix);
        free(c->allow);
        free(c->deny);
        free(c->proxy_from);
        free(c->user);
        free(c->group);
        free(c->user_at);
        free(c->group_at);
        free(c);
}

/* conf_defaults: every key's default, parsed as a file holding them would be. */
static int conf_defaults(Conf *c) {
        ConfCtx ctx = { .path = CONF_DEFAULTS_NAME };
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r;

        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < sizeof(conf_keys) / sizeof(conf_keys[0]); i++)
                if (conf_keys[i].def)
                        fprintf(f, "%s = %s;\n", conf_keys[i].name, conf_keys[i].def);
        /* A write the stream could not grow for leaves its error set, not fclose()'s result. */
        bool cut = ferror(f) != 0;
        if (fclose(f) != 0 || cut) {
                free(text);
                return -ENOMEM;
        }
        r = conf_parse(c, &ctx, text);
        free(text);
        /* Only memory can fail here: conf_defaults_are_valid in test_conf holds the table to that. */
        if (r < 0)
                return -ENOMEM;
        c->listen_is_default = true;
        return 0;
}

static int conf_new(const char *path, Conf **ret) {
        Conf *c;

        c = calloc(1, sizeof(Conf));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        if ((path && !(c->path = strdup(path))) || conf_defaults(c) < 0) {
                conf_free(c);
                return -ENOMEM;
        }
        *ret = c;
        return 0;
}

int conf_load(const char *path, Conf **ret, char *err, size_t err_size) {
        ConfCtx ctx = { .path = path ? path : "hellod", .err = err, .err_size = err_size };
        ConfTextError te;
        size_t size = 0;
        char *text = NULL;
        Conf *c;
        int r;

        assert(ret);
        if (err && err_size > 0)
                err[0] = '\0';

        if (conf_new(path, &c) < 0)
                return oom_error(&ctx);
        if (path) {
                r = conf_text_read(path, &text, &size, &te);
                if (r < 0)
                        r = r == -ENOMEM ? oom_error(&ctx) : file_error(&ctx, r, NULL, 0, "%s", te.message);
                else
                        r = conf_parse_text(c, path, &ctx, text, size);
                free(text);
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
        r = conf_parse_text(c, name, &ctx, copy, size);
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

void conf_print(const Conf *c, FILE *f) {
        assert(c);
        assert(f);

        if (c->path) {
                /* Escaped: a newline in the path would end the comment. */
                fputs("# hellod effective configuration (from ", f);
                print_escaped(f, c->path);
                fputs(")\n", f);
        } else
                fputs("# hellod effective configuration (built-in defaults)\n", f);
        for (size_t i = 0; i < sizeof(conf_keys) / sizeof(conf_keys[0]); i++)
                conf_keys[i].print(c, &conf_keys[i], f);
}

const char *framing_to_string(Framing f) {
        return f <= FRAMING_CHUNK ? framing_names[f] : NULL;
}

bool conf_admits(const Conf *c, const IpKey *client) {
        bool allowed = c->n_allow == 0;

        for (size_t i = 0; i < c->n_allow && !allowed; i++)
                allowed = cidr_match(&c->allow[i], client);
        for (size_t i = 0; i < c->n_deny && allowed; i++)
                allowed = !cidr_match(&c->deny[i], client);
        return allowed;
}

bool conf_proxy_trusted(const Conf *c, const IpKey *balancer) {
        for (size_t i = 0; i < c->n_proxy_from; i++)
                if (cidr_match(&c->proxy_from[i], balancer))
                        return true;
        return false;
}
