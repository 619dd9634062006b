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
