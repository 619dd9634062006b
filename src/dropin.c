/* dropin: the drop-ins hellod-socket-generator writes from hellod.conf. */
#include "dropin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* "[" INET6_ADDRSTRLEN "]:65535%%" IF_NAMESIZE (the NUL counted once) */
#define STREAM_MAX (INET6_ADDRSTRLEN + 10 + IF_NAMESIZE)
/* "localhost" names two addresses. */
#define STREAMS_MAX (2 * CONF_LISTEN_MAX)

typedef struct Streams {
        char items[STREAMS_MAX][STREAM_MAX];
        size_t n;
} Streams;

/* add: one ListenStream= value, once; "127.0.0.1" and "localhost" may name the same socket,
 * which systemd would try to bind twice. */
static void add(Streams *s, const char *text) {
        for (size_t i = 0; i < s->n; i++)
                if (strcmp(s->items[i], text) == 0)
                        return;
        if (s->n < STREAMS_MAX)
                snprintf(s->items[s->n++], STREAM_MAX, "%s", text);
}

/* add_literal: HOST, an IPv4 or IPv6 literal, in the canonical form inet_ntop() writes
 * (so that "::0" and "::" are one socket), with PORT. A link-local address's interface goes
 * after the port, where systemd.socket(5) takes it, its '%' doubled: systemd expands
 * specifiers in ListenStream=, and read "[fe80::1]:9999%eth0" as the unknown specifier %e (the
 * line ignored) and "%lo" as the host name. Returns false if HOST is no literal. */
static bool add_literal(Streams *s, const char *host, unsigned port) {
        unsigned char bytes[sizeof(struct in6_addr)];
        char canon[INET6_ADDRSTRLEN], text[STREAM_MAX];
        const char *scope = strchr(host, '%');

        if (inet_pton(AF_INET, host, bytes) == 1) {
                inet_ntop(AF_INET, bytes, canon, sizeof(canon));
                snprintf(text, sizeof(text), "%s:%u", canon, port);
        } else if (listen_host_ipv6(host, bytes)) {
                inet_ntop(AF_INET6, bytes, canon, sizeof(canon));
                snprintf(text, sizeof(text), "[%s]:%u%s%s", canon, port, scope ? "%%" : "", scope ? scope + 1 : "");
        } else
                return false;
        add(s, text);
        return true;
}

/* ipv6_wildcard_on: the `listen` entry of CONF that is "::" (in any spelling) on PORT, or NULL. */
static const ListenSpec *ipv6_wildcard_on(const Conf *conf, unsigned port) {
        static const struct in6_addr any = IN6ADDR_ANY_INIT;
        struct in6_addr a;

        for (size_t i = 0; i < conf->n_listen; i++) {
                const ListenSpec *spec = &conf->listen[i];
                if (spec->host && listen_host_ipv6(spec->host, &a) && memcmp(&a, &any, sizeof(a)) == 0 &&
                    conf_listen_port(conf, spec) == port)
                        return spec;
        }
        return NULL;
}

static int collect(const Conf *conf, Streams *s, char *err, size_t err_size) {
        for (size_t i = 0; i < conf->n_listen; i++) {
                const ListenSpec *spec = &conf->listen[i];
                unsigned port = conf_listen_port(conf, spec);

                /* A socket by name belongs to a socket unit the administrator writes (with its
                 * FileDescriptorName= and in hellod.service's Sockets=), not to hellod.socket. */
                if (!spec->host)
                        continue;
                const char *scope = strchr(spec->host, '%');
                if (scope && strchr(scope, '\\')) {
                        /* Linux allows it in an interface's name; a unit file line ending in
                         * one would run on into the next. */
                        snprintf(err, err_size,
                                 "%s: listen: '%s': an interface name with a '\\' cannot be written into a "
                                 "socket unit",
                                 conf_listen_origin(conf, spec), spec->host);
                        return -EINVAL;
                }
                if (add_literal(s, spec->host, port))
                        continue;
                /* RFC 6761: "localhost" is the loopback, whatever a resolver says; it is the one
                 * name that needs no lookup. */
                if (strcasecmp(spec->host, "localhost") == 0) {
                        /* Here ::1 too, which a socket on [::] of the port would hold already
                         * (hellod.conf's check knows "localhost" as 127.0.0.1 only). */
                        const ListenSpec *wild = ipv6_wildcard_on(conf, port);
                        if (wild) {
                                snprintf(err, err_size,
                                         "%s: listen: '%s' is 127.0.0.1 and ::1 under socket activation, and ::1 "
                                         "port %u is already served by '%s': list one or the other",
                                         conf_listen_origin(conf, spec), spec->host,
                                         port, wild->host);
                                return -EINVAL;
                        }
                        add_literal(s, "127.0.0.1", port);
                        add_literal(s, "::1", port);
                        continue;
                }
                snprintf(err, err_size,
                         "%s: listen: '%s' is a host name; under socket activation 'listen' takes IP "
                         "addresses (and \"localhost\") only, since names cannot be resolved before the "
                         "network is up: write the address instead",
                         conf_listen_origin(conf, spec), spec->host);
                return -EINVAL;
        }
        if (s->n == 0) {
                snprintf(err, err_size,
                         "%s: listen: every entry is a socket by name; hellod.socket needs at least one address "
                         "(or leave hellod.socket disabled and start hellod through the socket units that pass "
                         "those names)",
                         conf->path ? conf->path : CONF_DEFAULTS_NAME);
                return -EINVAL;
        }
        return 0;
}

static void print(FILE *f, const Conf *conf, const Streams *s) {
        fprintf(f,
                "# Generated by hellod-socket-generator from %s ('listen', 'port', 'backlog').\n"
                "# Edit that file, then: systemctl daemon-reload && systemctl restart hellod.socket\n"
                "[Socket]\n"
                "ListenStream=\n",
                conf->path ? conf->path : "the built-in defaults");
        if (conf->listen_is_default) /* dual stack, whatever net.ipv6.bindv6only says */
                fprintf(f, "ListenStream=%u\nBindIPv6Only=both\n", conf->port);
        else {
                for (size_t i = 0; i < s->n; i++)
                        fprintf(f, "ListenStream=%s\n", s->items[i]);
                fputs("BindIPv6Only=ipv6-only\nFreeBind=yes\n", f);
        }
        fprintf(f, "Backlog=%u\n", conf->backlog);
}

int dropin_format(const Conf *conf, char **ret, char *err, size_t err_size) {
        Streams *s = calloc(1, sizeof(*s));
        char *text = NULL;
        size_t size = 0;
        FILE *f;
        int r = -ENOMEM;

        if (!s)
                goto out;
        if (!conf->listen_is_default) {
                r = collect(conf, s, err, err_size);
                if (r < 0)
                        goto out;
        }
        r = -ENOMEM;
        f = open_memstream(&text, &size);
        if (!f)
                goto out;
        print(f, conf, s);
        /* A write the stream could not grow for leaves its error set, not fclose()'s result:
         * a drop-in cut short could lose its BindIPv6Only= or FreeBind= lines. */
        bool cut = ferror(f) != 0;
        if (fclose(f) != 0 || cut) {
                free(text);
                goto out;
        }
        *ret = text;
        r = 0;
out:
        if (r == -ENOMEM)
                snprintf(err, err_size, "out of memory");
        free(s);
        return r;
}

unsigned dropin_fdstore_max(unsigned max_connections, bool per_connection) {
        return max_connections * (per_connection ? 2u : 1u) + DROPIN_FDSTORE_SLACK;
}

int dropin_service_format(const Conf *conf, char **ret) {
        char *text = NULL;
        int n = asprintf(&text,
                         "# Generated by hellod-socket-generator from %s ('max_connections', 'workers').\n"
                         "# Edit that file, then: systemctl daemon-reload\n"
                         "[Service]\n"
                         "# Every live conversation,%s and the hand-over state, kept across a restart.\n"
                         "FileDescriptorStoreMax=%u\n",
                         conf->path ? conf->path : "the built-in defaults",
                         conf->workers == 0 ? " every lingering close," : "",
                         dropin_fdstore_max(conf->max_connections, conf->workers == 0));

        if (n < 0)
                return -ENOMEM;
        *ret = text;
        return 0;
}
