/* conf: the libconfig file turned into a validated, reference-counted Conf, immutable once shared. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "addr.h"
#include "fdname.h"

#define CONF_DEFAULT_PATH SYSCONFDIR "/hellod/hellod.conf"

/* Built-in defaults; conf/hellod.conf and the README document the same values. */
#define CONF_DEFAULT_PORT 9999
#define CONF_DEFAULT_BACKLOG 511
#define CONF_DEFAULT_MAX_CONNECTIONS 1024
#define CONF_MAX_CONNECTIONS_LIMIT 1000000 /* the most max_connections can be */
#define CONF_DEFAULT_MAX_CONNECTIONS_PER_IP 0
#define CONF_DEFAULT_IDLE_TIMEOUT 60
#define CONF_IDLE_TIMEOUT_MAX 86400 /* seconds: the most idle_timeout can be */
#define CONF_DEFAULT_MAX_LINE_LENGTH 1024
#define CONF_DEFAULT_SHUTDOWN_TIMEOUT 10
#define CONF_DEFAULT_GREETING "Welcome!"
#define CONF_DEFAULT_REPLY "Hello, {name}!"
#define CONF_DEFAULT_WORKER_STACK_SIZE 131072 /* 128 KiB */
#define CONF_DEFAULT_PER_IP_IPV4_PREFIX 32
#define CONF_DEFAULT_PER_IP_IPV6_PREFIX 64
#define CONF_DEFAULT_RATE_LIMIT_PER_IP 0
#define CONF_DEFAULT_RATE_LIMIT_BURST 10

/* The placeholder a reply template must contain exactly once. */
#define CONF_REPLY_PLACEHOLDER "{name}"

/* Upper bounds: a config cannot ask for more than these. */
#define CONF_MAX_LINE_LENGTH_MAX (1024 * 1024)
/* The shortest max_line_length: `exit` must fit, or a client could not leave (it would be
 * answered ERR line too long). */
#define CONF_MAX_LINE_LENGTH_MIN 4
#define CONF_TEXT_MAX 1024 /* greeting and reply template, in bytes */
#define CONF_LISTEN_MAX 64
#define CONF_CIDR_MAX 1024 /* entries in `allow` or `deny` */
#define CONF_NAME_MAX 64   /* `user`, `group` */
#define CONF_ORIGIN_MAX 4200 /* "FILE:LINE", the file's name escaped */
#define CONF_DEFAULTS_NAME "(built-in defaults)" /* the file name of what no file set */
#define CONF_FDNAME_MAX FDNAME_MAX /* a listen group's `name` (fdname.h); fits Listener.fdname */
#define CONF_WORKERS_MAX 256
#define CONF_WORKER_STACK_MIN (64 * 1024)
#define CONF_WORKER_STACK_MAX (64 * 1024 * 1024)

typedef enum Framing {
        FRAMING_LINE,
        FRAMING_CHUNK,
} Framing;

/* What happens to a new client while max_connections are being served. */
typedef enum Overload {
        OVERLOAD_REFUSE, /* "ERR server busy", close */
        OVERLOAD_QUEUE,  /* stop accepting: the kernel's backlog holds new clients */
} Overload;

/* What becomes of live conversations when hellod's process ends (docs/zero-downtime.md). */
typedef enum HandoverMode {
        HANDOVER_MODE_RESTART, /* handed to the next process at a restart; ended at a stop */
        HANDOVER_MODE_ALWAYS,  /* also kept in systemd's store from accept to close: survive a crash */
        HANDOVER_MODE_OFF,     /* always ended (ERR shutting down) */
} HandoverMode;

/* How the pool's event loops talk to the kernel (workers = N or "auto"). */
typedef enum IoBackend {
        IO_BACKEND_EPOLL,
        IO_BACKEND_IO_URING, /* falls back to epoll, with a notice, where io_uring is unavailable */
} IoBackend;

typedef struct Conf {
        char *path; /* the file it came from; NULL for built-in defaults */
        char **includes; /* the files it @included, as opened; a reload opens them again */
        size_t n_includes;

        ListenSpec *listen;
        size_t n_listen;
        bool listen_is_default; /* no `listen` key: an unavailable IPv6 stack is tolerated */

        unsigned port;
        unsigned backlog;
        unsigned max_connections;
        unsigned max_connections_per_ip; /* 0: no per-address limit */
        unsigned idle_timeout;           /* seconds without a complete line; 0: never */
        unsigned max_line_length;        /* bytes, terminator excluded */
        unsigned shutdown_timeout;       /* seconds */
        char *greeting;
        char *reply_prefix; /* the reply template split at its placeholder */
        char *reply_suffix;
        Framing framing;
        int log_level; /* a LOG_* priority from <syslog.h> */
        size_t worker_stack_size;

        Cidr *allow; /* empty: everyone not denied */
        size_t n_allow;
        Cidr *deny;
        size_t n_deny;
        Cidr *proxy_from; /* the balancers trusted to send a PROXY header */
        size_t n_proxy_from;
        unsigned per_ip_ipv4_prefix; /* bits of an address that make one "source" */
        unsigned per_ip_ipv6_prefix;
        unsigned rate_limit_per_ip; /* new connections a second per source; 0: no limit */
        unsigned rate_limit_burst;
        Overload overload;
        HandoverMode handover;
        unsigned workers;  /* 0: a thread per connection; N: a pool of N event loops */
        bool workers_auto; /* "auto" (the default): N is the number of CPUs */
        IoBackend io_backend;
        char *user; /* NULL: stay who we are started as */
        char *group;
        char *user_at, *group_at; /* "FILE:LINE" where they are set, for the start's checks */

        int n_ref; /* atomic; conf_ref()/conf_unref() */
} Conf;

/* conf_load: parse and validate PATH. NULL PATH gives the built-in defaults.
 * Returns 0 and a Conf with one reference, or a negative errno and, in ERR, a message
 * that names the file, the line and the key ("hellod.conf:7: port: must be ...").
 * -ENOENT when the file does not exist (the caller decides whether that is fatal). */
int conf_load(const char *path, Conf **ret, char *err, size_t err_size);

/* conf_load_text: the same from SIZE bytes of TEXT (need not be NUL-terminated); NAME stands
 * for the file in messages and in Conf.path. For tests and fuzzers. */
int conf_load_text(const char *name, const char *text, size_t size, Conf **ret, char *err, size_t err_size);

/* conf_load_for: loads PATH, or the built-in defaults when OPTIONAL and PATH is absent
 * (*RET_DEFAULTED then says so). Errors as conf_load(). */
int conf_load_for(const char *path, bool optional, Conf **ret, bool *ret_defaulted, char *err, size_t err_size);

Conf *conf_ref(Conf *c);
/* conf_unref: drops a reference and frees on the last one; NULL-safe; returns NULL. */
Conf *conf_unref(Conf *c);
void conf_unrefp(Conf **c);

/* conf_print: the effective settings, in the config file's own syntax (for --check-config). */
void conf_print(const Conf *c, FILE *f);

const char *framing_to_string(Framing f);

/* conf_listen_port: SPEC's port, or C's `port` where SPEC names none. */
static inline unsigned conf_listen_port(const Conf *c, const ListenSpec *spec) {
        return spec->port ? spec->port : c->port;
}

/* conf_listen_origin: where SPEC is written ("FILE:LINE"), or C's file, for messages. */
static inline const char *conf_listen_origin(const Conf *c, const ListenSpec *spec) {
        return spec && spec->at ? spec->at : c->path ? c->path : CONF_DEFAULTS_NAME;
}

/* conf_has_proxy_listener: whether a listen entry of C reads PROXY protocol headers. */
bool conf_has_proxy_listener(const Conf *c);

/* conf_admits: whether the client address passes `allow` and `deny`: it must match an
 * `allow` entry if there are any, and no `deny` entry. */
bool conf_admits(const Conf *c, const IpKey *client);

/* conf_same_workers: whether A and B ask for the same worker model and loop count: "auto" in
 * both is the same whatever the CPUs online when each was read (a reload after a CPU went
 * offline changes nothing). */
bool conf_same_workers(const Conf *a, const Conf *b);

/* conf_proxy_trusted: whether BALANCER (the peer of a PROXY listener) is in `proxy_from`, so
 * that the PROXY header it sends is believed. */
bool conf_proxy_trusted(const Conf *c, const IpKey *balancer);
