/* listener: `listen` entries → bound, listening, non-blocking sockets. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "addr.h"
#include "conf.h"

typedef struct Listener {
        int fd;
        struct sockaddr_storage addr;
        socklen_t addr_len;
        char name[ADDR_STR_MAX]; /* "127.0.0.1:9999", "[::]:9999" */
} Listener;

typedef struct ListenerSet {
        Listener *items;
        size_t n;
} ListenerSet;

/* listeners_resolve: every listen entry through getaddrinfo, duplicates removed; the
 * result's fds are -1. Errors (a name that does not resolve) are described in ERR. */
int listeners_resolve(const Conf *conf, ListenerSet *ret, char *err, size_t err_size);

/* listeners_open: the sockets CONF asks for. A socket of OLD (may be NULL) already bound to
 * a wanted address is carried over (moved out of OLD, its backlog updated), so a reload
 * keeps its listeners without a gap; the others are bound anew. All or nothing: on failure
 * nothing of OLD is taken, and ERR names the address and the reason.
 * With conf->listen_is_default, an unavailable IPv6 stack is skipped with a warning. */
int listeners_open(const Conf *conf, ListenerSet *old, ListenerSet *ret, char *err, size_t err_size);

/* listeners_inherit: the sockets systemd passed (LISTEN_FDS, sd_listen_fds_with_names()); an
 * empty set when there are none. Each must be a listening TCP socket (IPv4 or IPv6); anything
 * else is an error naming the descriptor and its FileDescriptorName. The sockets are made
 * non-blocking and close-on-exec. */
int listeners_inherit(ListenerSet *ret, char *err, size_t err_size);

/* listener_set_done: closes every socket still in the set and frees it. */
void listener_set_done(ListenerSet *set);

/* listeners_describe: "127.0.0.1:9999, [::1]:9999" into BUF. */
const char *listeners_describe(const ListenerSet *set, char *buf, size_t size);

/* listeners_match_conf: whether the sockets systemd passed (INHERITED) are the ones CONF's
 * `listen` and `port` ask for, as a set. A dual-stack "[::]:P" socket (IPV6_V6ONLY off, what
 * `ListenStream=P` makes) stands for both "0.0.0.0:P" and "[::]:P", the built-in default.
 * Returns 1 when they match, 0 when not (WHY then says both sides), or a negative errno when
 * CONF's addresses cannot be resolved (WHY says why). Non-logging. */
int listeners_match_conf(const ListenerSet *inherited, const Conf *conf, char *why, size_t why_size);

/* listeners_report_match: logs whether the passed sockets match CONF: info when they do, a
 * warning with the fix (daemon-reload, restart hellod.socket) when they do not. */
void listeners_report_match(const ListenerSet *inherited, const Conf *conf);

/* What a failed accept4() means for the accepting loop. */
typedef enum AcceptError {
        ACCEPT_DRAINED,   /* EAGAIN: nothing more to accept now */
        ACCEPT_RETRY,     /* the client's problem (accept(2), "Error handling"): go on */
        ACCEPT_EXHAUSTED, /* out of descriptors or memory: turn the client away, pause */
        ACCEPT_FAILED,    /* anything else: log, pause */
} AcceptError;

AcceptError listener_accept_error(int errnum);
