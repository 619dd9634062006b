/* listener: address resolution, binding and carrying sockets over a reload. */
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "engine.h"
#include "handover.h"
#include "log.h"
#include "lookup.h"
#include "notify.h"

_Static_assert(CONF_FDNAME_MAX < sizeof(((Listener *) 0)->fdname), "a listen entry's name fits Listener.fdname");

static bool same_addr(const Listener *a, const Listener *b) {
        return a->addr_len == b->addr_len && memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

/* same_endpoint: a passed socket A listens where B says: the same address, or B's IPv4 address
 * in its IPv4-mapped form, which a socket unit may bind ("[::ffff:127.0.0.1]:P"). Only for the
 * sockets systemd passes: hellod's own never take a mapped address (the configuration refuses
 * one), and a socket kept across a reload must be of the family asked for. */
static bool same_endpoint(const Listener *a, const Listener *b) {
        return same_addr(a, b) || addr_same_endpoint((const struct sockaddr *) &a->addr, (const struct sockaddr *) &b->addr);
}

static bool contains(const ListenerSet *set, const Listener *l) {
        for (size_t i = 0; i < set->n; i++)
                if (same_addr(&set->items[i], l))
                        return true;
        return false;
}

static int append(ListenerSet *set, const struct sockaddr *sa, socklen_t len, bool proxy, size_t spec) {
        Listener l = { .fd = -1, .addr_len = len, .proxy = proxy, .spec = spec };

        memcpy(&l.addr, sa, len);
        for (size_t i = 0; i < set->n; i++)
                if (same_addr(&set->items[i], &l))
                        /* "localhost" and "127.0.0.1" may name the same socket; but one socket cannot both
                         * expect a PROXY header and not. */
                        return set->items[i].proxy == proxy ? 0 : -ENOTUNIQ;
        Listener *items = realloc(set->items, (set->n + 1) * sizeof(*items));
        if (!items)
                return -ENOMEM;
        addr_format(sa, l.name, sizeof(l.name));
        items[set->n++] = l;
        set->items = items;
        return 0;
}

/* interface_index: the index of the interface NAME, or NAME itself when it is a number; 0 for
 * none. */
static unsigned interface_index(const char *name) {
        char *end;
        unsigned long index = strtoul(name, &end, 10);

        if (*name >= '0' && *name <= '9' && *end == '\0')
                return index <= UINT32_MAX ? (unsigned) index : 0;
        return if_nametoindex(name);
}

/* unseen_interface: whether L is a link-local address whose interface hellod cannot see. */
static bool unseen_interface(const Listener *l) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &l->addr;

        return l->addr.ss_family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr) && in6->sin6_scope_id == 0;
}

/* look_up: the addresses SPEC's host and port (PORT when it has none) stand for, into *RES
 * (freeaddrinfo() it); lookup_addrinfo()'s result. The one lookup binding and marking share. */
static int look_up(const ListenSpec *spec, unsigned port, struct addrinfo **res) {
        struct addrinfo hints = {
                .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_protocol = IPPROTO_TCP,
        };
        char service[8], address[INET6_ADDRSTRLEN];
        const char *scope = strchr(spec->host, '%');

        snprintf(service, sizeof(service), "%u", spec->port ? spec->port : port);
        if (!scope)
                return lookup_addrinfo(spec->host, service, &hints, res);
        /* "fe80::1%eth0": the interface is not looked up by getaddrinfo(), which fails where it
         * cannot be seen (the unit's network namespace: the socket systemd bound is still
         * there). Its index stays 0 then: a bind says no such interface (cannot_listen), and
         * a passed socket on the address is taken as the one meant (adopt_interfaces). */
        snprintf(address, sizeof(address), "%.*s", (int) (scope - spec->host), spec->host);
        int r = lookup_addrinfo(address, service, &hints, res);
        if (r != 0)
                return r;
        for (struct addrinfo *ai = *res; ai; ai = ai->ai_next)
                if (ai->ai_family == AF_INET6)
                        ((struct sockaddr_in6 *) ai->ai_addr)->sin6_scope_id = interface_index(scope + 1);
        return 0;
}

/* family_allowed: whether this process may open a TCP socket of FAMILY: not when the kernel
 * has none (IPv6 under ipv6.disable=1), nor when a sandbox's RestrictAddressFamilies= forbids
 * it (the packaged unit allows AF_UNIX alone); both say EAFNOSUPPORT. */
static bool family_allowed(int family) {
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return errno != EAFNOSUPPORT;
        close(fd);
        return true;
}

/* cannot_listen: ERR for L of CONF that cannot be bound: "FILE:LINE: listen: cannot listen on
 * ADDRESS: REASON", the line of the entry it came from. */
static void cannot_listen(const Conf *conf, const Listener *l, int r, char *err, size_t err_size) {
        const ListenSpec *spec = l->spec < conf->n_listen ? &conf->listen[l->spec] : NULL;
        const char *scope = spec && spec->host ? strchr(spec->host, '%') : NULL;

        if (scope && unseen_interface(l)) {
                snprintf(err, err_size, "%s: listen: cannot listen on '%s': no network interface '%s'",
                         conf_listen_origin(conf, spec), spec->host, scope + 1);
                return;
        }
        /* Under systemd (INVOCATION_ID) a unit that allows no network socket of hellod's own
         * (the packaged RestrictAddressFamilies=AF_UNIX) gets here only when hellod.socket
         * passed none: a daemon-reload that changed its addresses leaves it none until it is
         * restarted. The administrator needs the command, not the errno. */
        bool no_socket_passed = r == -EAFNOSUPPORT && getenv("INVOCATION_ID") && !family_allowed(AF_INET);
        snprintf(err, err_size, "%s: listen: cannot listen on %s: %s%s", conf_listen_origin(conf, spec), l->name,
                 strerror(-r),
                 no_socket_passed ? "; the unit lets hellod open no network socket itself, and systemd passed "
                                    "none, as after a daemon-reload that changed hellod.socket's addresses: "
                                    "systemctl restart hellod.socket" : "");
}

/* look_up_or_explain: look_up(), or -EADDRNOTAVAIL with the reason in ERR (-EAGAIN: no answer
 * for now, the name server's fault rather than the file's; -ECANCELED: the lookup was given
 * up, hellod is stopping). */
static int look_up_or_explain(const ListenSpec *spec, unsigned port, struct addrinfo **res, char *err,
                              size_t err_size) {
        int r = look_up(spec, port, res);

        if (r == 0)
                return 0;
        snprintf(err, err_size, "cannot resolve listen address '%s': %s", spec->host, lookup_strerror(r));
        return r == LOOKUP_ABANDONED ? -ECANCELED : lookup_transient(r) ? -EAGAIN : -EADDRNOTAVAIL;
}

static int resolve_one(const Conf *conf, size_t index, ListenerSet *set, char *err, size_t err_size) {
        const ListenSpec *spec = &conf->listen[index];
        unsigned port = conf->port;
        struct addrinfo *res;
        int r = look_up_or_explain(spec, port, &res, err, err_size);

        if (r < 0)
                return r;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                        continue;
                r = append(set, ai->ai_addr, ai->ai_addrlen, spec->proxy_protocol, index);
                if (r == -ENOTUNIQ) {
                        char name[ADDR_STR_MAX];
                        snprintf(err, err_size,
                                 "listen address '%s' is %s, which another entry also names, one with "
                                 "proxy_protocol and one without",
                                 spec->host, addr_format(ai->ai_addr, name, sizeof(name)));
                }
                if (r < 0) {
                        freeaddrinfo(res);
                        if (r == -ENOMEM)
                                snprintf(err, err_size, "out of memory");
                        return r;
                }
        }
        freeaddrinfo(res);
        return 0;
}

/* all_by_name: whether every listen entry names a socket systemd passes (none an address). */
static bool all_by_name(const Conf *conf) {
        for (size_t i = 0; i < conf->n_listen; i++)
                if (conf->listen[i].host)
                        return false;
        return true;
}

/* unresolved: whether R from resolve_one() is a lookup that failed (not one given up). */
static bool unresolved(int r) {
        return r == -EAGAIN || r == -EADDRNOTAVAIL;
}

static int resolve(const Conf *conf, bool sockets_passed, ListenerSet *ret, char *err, size_t err_size) {
        ListenerSet set = { 0 };
        char why[512];

        for (size_t i = 0; i < conf->n_listen; i++) {
                int r;

                if (!conf->listen[i].host)
                        continue; /* a socket systemd passes by name: never bound here */
                r = resolve_one(conf, i, &set, why, sizeof(why));
                if (r < 0 && sockets_passed && !conf->listen[i].proxy_protocol && unresolved(r))
                        continue;
                if (r < 0) {
                        snprintf(err, err_size, "%s: listen: %s", conf_listen_origin(conf, &conf->listen[i]), why);
                        listener_set_done(&set);
                        return r;
                }
        }
        *ret = set;
        return 0;
}

int listeners_resolve(const Conf *conf, ListenerSet *ret, char *err, size_t err_size) {
        return resolve(conf, false, ret, err, err_size);
}

int listeners_resolve_passed(const Conf *conf, ListenerSet *ret, char *err, size_t err_size) {
        return resolve(conf, true, ret, err, err_size);
}

static int open_socket(Listener *l, unsigned backlog) {
        static const int one = 1;
        int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);

        if (fd < 0)
                return -errno;
        /* Accepted sockets inherit TCP_NODELAY from their listener: one call here instead of
         * one per connection. Replies answer requests; Nagle would only delay them. */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* Restarts must not wait for TIME_WAIT; v6 sockets must not claim IPv4 too, so that
         * "0.0.0.0" and "::" can both be bound. */
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            (l->addr.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
            bind(fd, (const struct sockaddr *) &l->addr, l->addr_len) < 0 || listen(fd, (int) backlog) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        l->fd = fd;
        return 0;
}

/* ipv6_unavailable: errors that mean "this host has no IPv6", not "something is wrong". */
static bool ipv6_unavailable(const Listener *l, int r) {
        return l->addr.ss_family == AF_INET6 && (r == -EAFNOSUPPORT || r == -EADDRNOTAVAIL);
}

static Listener *find_open(ListenerSet *set, const Listener *l) {
        if (!set)
                return NULL;
        for (size_t i = 0; i < set->n; i++)
                if (set->items[i].fd >= 0 && same_addr(&set->items[i], l))
                        return &set->items[i];
        return NULL;
}

/* somaxconn: the kernel's cap on listen() backlogs; 0 when it cannot be read. */
static unsigned somaxconn(void) {
        unsigned value = 0;
        FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");

        if (!f)
                return 0;
        if (fscanf(f, "%u", &value) != 1)
                value = 0;
        fclose(f);
        return value;
}

/* may_hold_port: whether A's socket can stand in the way of binding B: one family and port,
 * and the same address or the wildcard on either side. Two specific addresses share a port
 * (SO_REUSEADDR): when B's bind fails, A is not why. */
static bool may_hold_port(const Listener *a, const Listener *b) {
        return a->addr.ss_family == b->addr.ss_family && listener_port(a) == listener_port(b) &&
               (same_addr(a, b) || listener_is_wildcard(a) || listener_is_wildcard(b));
}

/* holds_port_of: whether OLD has a socket that WANT does not keep on L's family and port:
 * binding "127.0.0.1:P" fails with EADDRINUSE while the old "0.0.0.0:P" is open. */
static bool holds_port_of(const ListenerSet *old, const ListenerSet *want, const Listener *l) {
        for (size_t i = 0; old && i < old->n; i++) {
                const Listener *o = &old->items[i];
                if (o->fd >= 0 && !contains(want, o) && may_hold_port(o, l))
                        return true;
        }
        return false;
}

/* release_departing: closes the sockets of OLD that WANT does not keep and that hold the port
 * of an entry of WANT marked in PORT_HELD, so that such a move frees the port first. Their
 * entries keep the address, with fd -1. */
static void release_departing(ListenerSet *old, const ListenerSet *want, const bool *port_held) {
        for (size_t i = 0; old && i < old->n; i++) {
                Listener *o = &old->items[i];
                bool holds = false;
                for (size_t j = 0; j < want->n && !holds; j++)
                        holds = port_held[j] && may_hold_port(o, &want->items[j]);
                if (o->fd >= 0 && holds && !contains(want, o)) {
                        close(o->fd);
                        o->fd = -1;
                }
        }
}

/* drop_closed: the entries of SET without a socket (fd -1) taken out, the others kept in order. */
static void drop_closed(ListenerSet *set) {
        size_t n = 0;

        for (size_t i = 0; i < set->n; i++)
                if (set->items[i].fd >= 0)
                        set->items[n++] = set->items[i];
        set->n = n;
}

/* restore_departing: a failed reload gives OLD back the sockets release_departing() closed,
 * as far as they can be bound again (another process may have taken the port meanwhile); an
 * entry that cannot is dropped, so that no engine is handed a closed descriptor to accept on. */
static void restore_departing(ListenerSet *old, unsigned backlog) {
        for (size_t i = 0; i < old->n; i++) {
                Listener *l = &old->items[i];
                if (l->fd >= 0)
                        continue;
                int r = open_socket(l, backlog);
                if (r < 0)
                        log_error_errno(r, "cannot listen on %s again after a failed reload", l->name);
        }
        drop_closed(old);
}

/* no_address: WANT has nothing to listen on (every entry a name systemd did not pass, or an
 * IPv6 address on a host without IPv6). */
static int no_address(const Conf *conf, ListenerSet *want, char *err, size_t err_size) {
        snprintf(err, err_size, "%s: listen: no address to listen on (%s)",
                 conf_listen_origin(conf, conf->n_listen > 0 ? &conf->listen[0] : NULL),
                 all_by_name(conf) ? "each entry names a socket systemd passes, and none was passed"
                                   : "IPv6 is not available here");
        listener_set_done(want);
        /* Names with no socket passed: the configuration's fault, as name_without_sockets() says. */
        return all_by_name(conf) ? -ENOENT : -EADDRNOTAVAIL;
}

/* bind_new: binds the entries of WANT that OLD has no socket for, leaving OLD as it is. An
 * address whose port a departing socket of OLD holds is marked in PORT_HELD (bound once that
 * socket is closed); an entry skipped (no IPv6) keeps fd -1. Returns how many entries will
 * have a socket, or a negative errno (ERR says which address) with WANT's sockets closed. */
static ssize_t bind_new(const Conf *conf, ListenerSet *want, ListenerSet *old, bool *port_held, char *err,
                        size_t err_size) {
        ssize_t usable = 0;

        for (size_t i = 0; i < want->n; i++) {
                Listener *l = &want->items[i];
                if (find_open(old, l)) {
                        usable++;
                        continue;
                }
                int r = open_socket(l, conf->backlog);
                if (r == -EADDRINUSE && holds_port_of(old, want, l)) {
                        port_held[i] = true;
                        usable++;
                        continue;
                }
                if (r < 0 && conf->listen_is_default && ipv6_unavailable(l, r)) {
                        log_warning_errno(r, "IPv6 is not available, not listening on %s", l->name);
                        continue;
                }
                if (r < 0) {
                        cannot_listen(conf, l, r, err, err_size);
                        listener_set_done(want);
                        return r;
                }
                usable++;
        }
        return usable;
}

/* name_without_sockets: the error for a `{ name = ...; }` entry beside addresses when hellod
 * binds its own sockets: no socket is passed for it to mark, and skipping it would leave the
 * listener meant (a PROXY one, usually) silently absent. -ENOENT, as for a name no passed
 * socket has; 0 when no entry is a name, or every one is (no_address() explains that). */
static int name_without_sockets(const Conf *conf, char *err, size_t err_size) {
        if (all_by_name(conf))
                return 0;
        for (size_t i = 0; i < conf->n_listen; i++) {
                const ListenSpec *spec = &conf->listen[i];
                if (!spec->fdname)
                        continue;
                snprintf(err, err_size,
                         "%s: listen: name \"%s\": no socket was passed (a name marks a socket systemd passes; "
                         "started without socket activation, hellod binds only the addresses listed)",
                         conf_listen_origin(conf, spec), spec->fdname);
                return -ENOENT;
        }
        return 0;
}

bool listeners_warn_backlog(const Conf *conf) {
        unsigned cap = somaxconn();

        /* The kernel clamps silently; an administrator tuning backlog should hear about it. */
        if (cap == 0 || conf->backlog <= cap)
                return false;
        log_notice("backlog %u exceeds net.core.somaxconn, the kernel uses %u", conf->backlog, cap);
        return true;
}

int listeners_reopen(const Conf *conf, const ListenersReopen *how, ListenerSet *ret, char *err, size_t err_size) {
        ListenerSet want = { 0 }, *old = how ? how->old : NULL;
        bool *port_held, waiting = false;
        int r;

        (void) listeners_warn_backlog(conf);
        if ((r = name_without_sockets(conf, err, err_size)) < 0)
                return r;
        r = listeners_resolve(conf, &want, err, err_size);
        if (r < 0)
                return r;
        if (!(port_held = calloc(want.n + 1, sizeof(*port_held)))) {
                snprintf(err, err_size, "out of memory");
                listener_set_done(&want);
                return -ENOMEM;
        }
        /* First bind what is new. Until all of it worked, OLD is not touched: a reload that
         * fails on any address leaves every running listener and its backlog as it was. */
        ssize_t usable = bind_new(conf, &want, old, port_held, err, err_size);
        if (usable <= 0) {
                free(port_held);
                return usable < 0 ? (int) usable : no_address(conf, &want, err, err_size);
        }
        /* From here on OLD changes: whoever accepts from it lets go first. */
        if (how && how->pause)
                how->pause(how->userdata);
        for (size_t i = 0; i < want.n; i++)
                waiting |= port_held[i];
        if (waiting)
                release_departing(old, &want, port_held);
        for (size_t i = 0; i < want.n && waiting; i++) {
                Listener *l = &want.items[i];
                if (port_held[i] && (r = open_socket(l, conf->backlog)) < 0) {
                        cannot_listen(conf, l, r, err, err_size);
                        listener_set_done(&want);
                        restore_departing(old, how->old_backlog);
                        free(port_held);
                        return r;
                }
        }
        free(port_held);
        for (size_t i = 0; i < want.n; i++) {
                Listener *l = &want.items[i];
                Listener *kept = find_open(old, l);
                if (kept) {
                        l->fd = kept->fd;
                        kept->fd = -1;
                        /* listen() again on a listening socket updates its backlog. */
                        if (listen(l->fd, (int) conf->backlog) < 0)
                                log_warning_errno(-errno, "cannot update the backlog of %s, ignoring", l->name);
                }
        }
        drop_closed(&want); /* the entries skipped above (no IPv6) */
        *ret = want;
        return 0;
}

int listeners_open(const Conf *conf, ListenerSet *ret, char *err, size_t err_size) {
        return listeners_reopen(conf, NULL, ret, err, err_size);
}

int passed_fd_set_mode(int fd, bool nonblocking) {
        int flags = fcntl(fd, F_GETFL);

        if (flags < 0 || fcntl(fd, F_SETFL, nonblocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return -errno;
        return 0;
}

static int adopt(Listener *l, int fd) {
        /* systemd passes the sockets blocking and inheritable; the accept loop needs neither. */
        int r = passed_fd_set_mode(fd, true);

        if (r < 0)
                return r;
        l->fd = fd;
        l->spec = SIZE_MAX;
        /* As for our own listeners (hellod.socket sets NoDelay=true too). */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int) { 1 }, sizeof(int));
        l->addr_len = sizeof(l->addr);
        if (getsockname(fd, (struct sockaddr *) &l->addr, &l->addr_len) < 0)
                return -errno;
        addr_format((const struct sockaddr *) &l->addr, l->name, sizeof(l->name));
        return 0;
}

InheritRole inherit_classify(const char *name, FdKind kind, HandoverConnName *ret_conn) {
        if (kind == FD_KIND_LISTENING_TCP)
                return INHERIT_LISTENER;
        if (!handover_fdname_is_stored(name))
                return INHERIT_INVALID;
        if (strcmp(name, HANDOVER_FDNAME_STATE) == 0)
                return kind == FD_KIND_REGULAR ? INHERIT_STATE : INHERIT_UNKNOWN_STORED;
        if (kind == FD_KIND_CONNECTED_TCP && handover_fdname_parse_conn(name, ret_conn))
                return INHERIT_CONNECTION;
        return INHERIT_UNKNOWN_STORED;
}

static FdKind fd_kind(int fd) {
        struct stat st;
        int listening = 0;
        socklen_t len = sizeof(listening);

        /* Whether it listens, asked once: a stored connection is one of thousands (two calls
         * that each asked made 7 system calls of it, 4 now). */
        if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, -1, 0) > 0) {
                if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
                        return FD_KIND_OTHER;
                return listening ? FD_KIND_LISTENING_TCP : FD_KIND_CONNECTED_TCP;
        }
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
                return FD_KIND_REGULAR;
        return FD_KIND_OTHER;
}

/* keep_stored: takes FD into STORE in ROLE. 1: taken; 0: a second state (the caller closes
 * it). A second connection of an id is taken here and given back by index_conns(). */
static int keep_stored(InheritedStore *store, InheritRole role, int fd, const HandoverConnName *conn) {
        if (role == INHERIT_STATE) {
                if (store->state_fd >= 0)
                        return 0;
                store->state_fd = fd;
        } else
                store->conns[store->n_conns++] = (StoredConn) { .fd = fd, .name = *conn };
        /* Unchecked: it fails only on a bad descriptor, which its first read reports; a
         * connection's mode is set again, checked, when it is resumed (adopt_session()). */
        (void) fcntl(fd, F_SETFD, FD_CLOEXEC);
        return 1;
}

/* conn_order: by id, then as passed (the descriptors are numbered in that order). */
static int conn_order(const void *a, const void *b) {
        const StoredConn *x = a, *y = b;

        if (x->name.id != y->name.id)
                return x->name.id < y->name.id ? -1 : 1;
        return (x->fd > y->fd) - (x->fd < y->fd);
}

/* index_conns: STORE's connections sorted by id. Of several of one id the first passed is
 * kept; the others are given back (TAKEN false, by their number as passed) for drop_unknown()
 * to close. (A check against all those taken before, for each, was quadratic: 12 ms of a
 * 94 ms split of 6,000, and it grows with the square.) */
static void index_conns(InheritedStore *store, bool *taken) {
        size_t kept = 0;

        qsort(store->conns, store->n_conns, sizeof(*store->conns), conn_order);
        for (size_t i = 0; i < store->n_conns; i++) {
                if (kept > 0 && store->conns[kept - 1].name.id == store->conns[i].name.id)
                        taken[store->conns[i].fd - SD_LISTEN_FDS_START] = false;
                else
                        store->conns[kept++] = store->conns[i];
        }
        store->n_conns = kept;
}

StoredConn *inherited_store_conn(InheritedStore *store, uint64_t id) {
        size_t lo = 0, hi = store->n_conns;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (store->conns[mid].name.id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo < store->n_conns && store->conns[lo].name.id == id ? &store->conns[lo] : NULL;
}

/* store_keeps_name: whether a descriptor named NAME was taken, so that removing NAME from the
 * store would drop it too. (A connection of the same id under another name, "c5b" beside "c5",
 * is not: each name has one spelling.) */
static bool store_keeps_name(const InheritedStore *store, const char *name) {
        char taken[HANDOVER_FDNAME_MAX];

        if (strcmp(name, HANDOVER_FDNAME_STATE) == 0)
                return store->state_fd >= 0;
        for (size_t i = 0; i < store->n_conns; i++)
                if (strcmp(handover_fdname_conn(&store->conns[i].name, taken, sizeof(taken)), name) == 0)
                        return true;
        return false;
}

/* drop_unknown: closes the stored descriptors classify() could not use, and removes their
 * names from the store once it is known which names were taken. */
static void drop_unknown(const InheritedStore *store, char **names, const InheritRole *roles, const bool *taken,
                         int n) {
        for (int i = 0; i < n; i++) {
                const char *name = names && names[i] ? names[i] : "unknown";

                if (roles[i] == INHERIT_LISTENER || taken[i])
                        continue;
                if ((roles[i] == INHERIT_UNKNOWN_STORED || roles[i] == INHERIT_CONNECTION) &&
                    !store_keeps_name(store, name)) {
                        log_warning("passed file descriptor %d ('%s') is not one hellod can resume: closed and "
                                    "removed from the file descriptor store",
                                    SD_LISTEN_FDS_START + i, name);
                        int r = notify_fdstore_remove(name);
                        if (r < 0)
                                log_warning_errno(r, "cannot remove '%s' from the file descriptor store, ignoring",
                                                  name);
                } else
                        log_warning("passed file descriptor %d ('%s') has the name of another one: closed",
                                    SD_LISTEN_FDS_START + i, name);
                close(SD_LISTEN_FDS_START + i);
        }
}

/* split: classifies the N passed descriptors into SET and STORE; TAKEN says which of them are
 * now owned there. */
static int split(int n, char **names, ListenerSet *set, InheritedStore *store, InheritRole *roles, bool *taken,
                 char *err, size_t err_size) {
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i, r;
                const char *name = names && names[i] ? names[i] : "unknown";
                HandoverConnName conn = { 0 };

                roles[i] = inherit_classify(name, fd_kind(fd), &conn);
                switch (roles[i]) {
                case INHERIT_LISTENER:
                        r = adopt(&set->items[set->n], fd);
                        if (r < 0) {
                                snprintf(err, err_size, "passed file descriptor %d ('%s'): %s", fd, name, strerror(-r));
                                return r;
                        }
                        /* Whole: systemd's names fit, and one cut short could match a `listen`
                         * entry's name that it is not. */
                        snprintf(set->items[set->n].fdname, sizeof(set->items[set->n].fdname), "%s",
                                 names && names[i] ? names[i] : "");
                        set->n++;
                        taken[i] = true;
                        break;
                case INHERIT_STATE:
                case INHERIT_CONNECTION:
                        taken[i] = keep_stored(store, roles[i], fd, &conn) > 0;
                        break;
                case INHERIT_UNKNOWN_STORED:
                        break;
                case INHERIT_INVALID:
                        snprintf(err, err_size,
                                 "passed file descriptor %d ('%s') is not a listening TCP socket (IPv4 or IPv6)", fd,
                                 name);
                        return -EINVAL;
                }
        }
        return 0;
}

int listeners_inherit_split(ListenerSet *ret, InheritedStore *ret_store, char *err, size_t err_size) {
        ListenerSet set = { 0 };
        InheritedStore store = INHERITED_STORE_NULL;
        InheritRole *roles = NULL;
        bool *taken = NULL;
        char **names = NULL;
        int n, r;

        n = sd_listen_fds_with_names(true, &names);
        if (n < 0) {
                snprintf(err, err_size, "cannot read the sockets passed by systemd: %s", strerror(-n));
                return n;
        }
        /* One slot per passed descriptor in each (calloc(1) for none, so NULL means failure). */
        set.items = calloc((size_t) n + 1, sizeof(*set.items));
        store.conns = calloc((size_t) n + 1, sizeof(*store.conns));
        roles = calloc((size_t) n + 1, sizeof(*roles));
        taken = calloc((size_t) n + 1, sizeof(*taken));
        if (!set.items || !store.conns || !roles || !taken) {
                snprintf(err, err_size, "out of memory");
                r = -ENOMEM;
        } else
                r = split(n, names, &set, &store, roles, taken, err, err_size);
        if (r >= 0) {
                index_conns(&store, taken);
                drop_unknown(&store, names, roles, taken, n);
        } else {
                listener_set_done(&set);
                inherited_store_done(&store);
                /* The rest were passed to us too: do not leave them open and unserved. */
                for (int i = 0; i < n; i++)
                        if (!taken || !taken[i])
                                close(SD_LISTEN_FDS_START + i);
        }
        for (int i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        free(roles);
        free(taken);
        if (r < 0)
                return r;
        *ret = set;
        *ret_store = store;
        return 0;
}

/* inherited_store_discard: closes what STORE still holds, removes it from the file descriptor
 * store, logs how many with WHY, and empties STORE. */
static void inherited_store_discard(InheritedStore *store, const char *why) {
        char name[HANDOVER_FDNAME_MAX];
        size_t n = store->n_conns;
        bool state = store->state_fd >= 0;

        if (n == 0 && !state) {
                inherited_store_done(store);
                return;
        }
        for (size_t i = 0; i < store->n_conns; i++)
                (void) notify_fdstore_remove(handover_fdname_conn(&store->conns[i].name, name, sizeof(name)));
        if (state)
                (void) notify_fdstore_remove(HANDOVER_FDNAME_STATE);
        log_warning("%zu stored connection%s%s closed and removed from the file descriptor store: %s", n,
                    n == 1 ? "" : "s", state ? " and the hand-over state" : "", why);
        inherited_store_done(store);
}

int listeners_inherit(ListenerSet *ret, char *err, size_t err_size) {
        InheritedStore store;
        int r = listeners_inherit_split(ret, &store, err, err_size);

        if (r < 0)
                return r;
        inherited_store_discard(&store, "this process resumes no connections");
        return 0;
}

void inherited_store_done(InheritedStore *store) {
        if (store->state_fd >= 0)
                close(store->state_fd);
        for (size_t i = 0; i < store->n_conns; i++)
                close(store->conns[i].fd);
        free(store->conns);
        *store = INHERITED_STORE_NULL;
}

void listener_set_done(ListenerSet *set) {
        for (size_t i = 0; i < set->n; i++)
                if (set->items[i].fd >= 0)
                        close(set->items[i].fd);
        free(set->items);
        *set = (ListenerSet) { 0 };
}

const char *listeners_describe(const ListenerSet *set, char *buf, size_t size) {
        /* Room kept behind every name but the last for what stands in for those that do not fit. */
        _Static_assert(CONF_LISTEN_MAX < 100, "the count of names left out takes two digits");
        static const size_t tail_room = sizeof(", and 99 more");
        size_t n = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < set->n; i++) {
                size_t room = size - n, keep = i + 1 < set->n ? tail_room : 0;
                int m = snprintf(buf + n, room, "%s%s%s", i ? ", " : "", set->items[i].name,
                                 set->items[i].proxy ? " (PROXY)" : "");
                if (m < 0 || (size_t) m + keep >= room) {
                        buf[n] = '\0'; /* whole names only */
                        (void) snprintf(buf + n, room, "%sand %zu more", i ? ", " : "", set->n - i);
                        break;
                }
                n += (size_t) m;
        }
        return buf;
}

static bool is_dual_stack(const Listener *l) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &l->addr;
        int v6only = 1;
        socklen_t len = sizeof(v6only);

        if (l->addr.ss_family != AF_INET6 || !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) || l->fd < 0)
                return false;
        return getsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && v6only == 0;
}

/* named_by_conf: whether CONF has an entry by name for L's FileDescriptorName=. */
static bool named_by_conf(const Listener *l, const Conf *conf) {
        for (size_t i = 0; i < conf->n_listen; i++)
                if (conf->listen[i].fdname && strcmp(conf->listen[i].fdname, l->fdname) == 0)
                        return true;
        return false;
}

/* endpoints: the addresses INHERITED accepts connections on, a dual-stack socket counted as
 * its IPv4 half too; every fd -1 (nothing here owns a socket). Sockets CONF names by their
 * FileDescriptorName= are left out: their addresses are their socket unit's business. */
static int endpoints(const ListenerSet *inherited, const Conf *conf, ListenerSet *ret) {
        ListenerSet set = { 0 };
        int r = 0;

        for (size_t i = 0; i < inherited->n && r >= 0; i++) {
                const Listener *l = &inherited->items[i];
                if (named_by_conf(l, conf))
                        continue;
                r = append(&set, (const struct sockaddr *) &l->addr, l->addr_len, false, SIZE_MAX);
                if (r >= 0 && is_dual_stack(l)) {
                        struct sockaddr_in in = {
                                .sin_family = AF_INET,
                                .sin_port = ((const struct sockaddr_in6 *) &l->addr)->sin6_port,
                                .sin_addr.s_addr = htonl(INADDR_ANY),
                        };
                        r = append(&set, (const struct sockaddr *) &in, sizeof(in), false, SIZE_MAX);
                }
        }
        if (r < 0) {
                listener_set_done(&set);
                return r;
        }
        *ret = set;
        return 0;
}

/* is_localhost: SPEC names "localhost", which hellod-socket-generator writes as 127.0.0.1 and
 * ::1 (RFC 6761: the loopback, whatever a resolver says; a hosts file often maps only one). */
static bool is_localhost(const ListenSpec *spec) {
        return spec->host && strcasecmp(spec->host, "localhost") == 0;
}

/* add_loopbacks: 127.0.0.1 and ::1 on PORT into SET, PROXY listeners or not as SPEC is; the
 * errors of append(). */
static int add_loopbacks(ListenerSet *set, const ListenSpec *spec, unsigned port) {
        struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t) port),
                                    .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        int r = append(set, (const struct sockaddr *) &in, sizeof(in), spec->proxy_protocol, SIZE_MAX);

        return r < 0 ? r : append(set, (const struct sockaddr *) &in6, sizeof(in6), spec->proxy_protocol, SIZE_MAX);
}

/* adopt_interface: WANT, a link-local address whose interface hellod cannot see, takes the
 * interface of HAVE if HAVE is a socket on that address and port (systemd, which bound it,
 * could see it); true if so. */
static bool adopt_interface(Listener *want, const Listener *have) {
        struct sockaddr_in6 *w = (struct sockaddr_in6 *) &want->addr;
        const struct sockaddr_in6 *h = (const struct sockaddr_in6 *) &have->addr;

        if (!unseen_interface(want) || have->addr.ss_family != AF_INET6 || h->sin6_port != w->sin6_port ||
            !IN6_ARE_ADDR_EQUAL(&h->sin6_addr, &w->sin6_addr))
                return false;
        w->sin6_scope_id = h->sin6_scope_id;
        addr_format((const struct sockaddr *) w, want->name, sizeof(want->name));
        return true;
}

static void adopt_interfaces(ListenerSet *want, const ListenerSet *have) {
        for (size_t i = 0; i < want->n; i++)
                for (size_t j = 0; j < have->n && !adopt_interface(&want->items[i], &have->items[j]); j++)
                        ;
}

/* subset: every socket of A is one B asks for (passed sockets against the configuration). */
static bool subset(const ListenerSet *a, const ListenerSet *b) {
        for (size_t i = 0; i < a->n; i++) {
                bool found = false;
                for (size_t j = 0; j < b->n && !found; j++)
                        found = same_endpoint(&a->items[i], &b->items[j]);
                if (!found)
                        return false;
        }
        return true;
}

static bool listener_is(const Listener *l, const struct sockaddr *sa, socklen_t len);

/* split_roles: a dual-stack socket of INHERITED (not named by CONF) that stands for a
 * "0.0.0.0:P" and a "[::]:P" which WANT gives different roles, one with proxy_protocol and one
 * without: one socket has one role, so the clients of one half would be served wrongly. NULL
 * when there is none. */
static const Listener *split_roles(const ListenerSet *inherited, const Conf *conf, const ListenerSet *want) {
        for (size_t i = 0; i < inherited->n; i++) {
                const Listener *l = &inherited->items[i];
                const Listener *v4 = NULL, *v6 = NULL;
                if (named_by_conf(l, conf) || !is_dual_stack(l))
                        continue;
                for (size_t j = 0; j < want->n; j++) {
                        const Listener *w = &want->items[j];
                        if (same_addr(w, l))
                                v6 = w;
                        else if (listener_is(l, (const struct sockaddr *) &w->addr, w->addr_len))
                                v4 = w;
                }
                if (v4 && v6 && v4->proxy != v6->proxy)
                        return l;
        }
        return NULL;
}

/* passes_ipv6: whether a socket of SET is an IPv6 one. */
static bool passes_ipv6(const ListenerSet *set) {
        for (size_t i = 0; i < set->n; i++)
                if (set->items[i].addr.ss_family == AF_INET6)
                        return true;
        return false;
}

/* drop_ipv6: SET's IPv6 entries taken out. */
static void drop_ipv6(ListenerSet *set) {
        size_t n = 0;

        for (size_t i = 0; i < set->n; i++)
                if (set->items[i].addr.ss_family != AF_INET6)
                        set->items[n++] = set->items[i];
        set->n = n;
}

int listeners_match_conf(const ListenerSet *inherited, const Conf *conf, char *why, size_t why_size) {
        ListenerSet have = { 0 }, want = { 0 };
        char have_names[512], want_names[512];
        int r;

        r = listeners_resolve(conf, &want, why, why_size);
        if (r < 0)
                return r;
        /* On a host without IPv6, what systemd binds for the default (ListenStream=PORT is
         * 0.0.0.0:PORT alone), and what hellod would bind itself: "::" is skipped, as bind_new()
         * does. Not where an IPv6 socket was passed: the packaged unit's sandbox fails the probe
         * on every host, and its hellod.socket passes a dual-stack [::]:PORT. */
        if (conf->listen_is_default && !passes_ipv6(inherited) && !family_allowed(AF_INET6))
                drop_ipv6(&want);
        for (size_t i = 0; i < conf->n_listen && r >= 0; i++) { /* as the generator writes it */
                const ListenSpec *spec = &conf->listen[i];
                if (is_localhost(spec))
                        r = add_loopbacks(&want, spec, conf_listen_port(conf, spec));
        }
        if (r < 0) {
                snprintf(why, why_size, "%s",
                         r == -ENOMEM ? "out of memory"
                                      : "\"localhost\" is 127.0.0.1 and ::1, which another entry names, one with "
                                        "proxy_protocol and one without");
                listener_set_done(&want);
                return r;
        }
        r = endpoints(inherited, conf, &have);
        if (r < 0) {
                snprintf(why, why_size, "out of memory");
                listener_set_done(&want);
                return r;
        }
        adopt_interfaces(&want, &have);
        r = subset(&have, &want) && subset(&want, &have);
        const Listener *divided = r ? split_roles(inherited, conf, &want) : NULL;
        if (divided) {
                r = 0;
                snprintf(why, why_size,
                         "systemd passed one dual-stack socket %s, for which the configuration has two entries, "
                         "one with proxy_protocol and one without: its clients are all served as one of them",
                         divided->name);
        } else if (!r)
                snprintf(why, why_size, "systemd passed %s, the configuration asks for %s",
                         listeners_describe(inherited, have_names, sizeof(have_names)),
                         listeners_describe(&want, want_names, sizeof(want_names)));
        listener_set_done(&have);
        listener_set_done(&want);
        return r;
}

/* listener_is: whether L listens on the address SA; a dual-stack "[::]:P" socket also on
 * what "0.0.0.0:P" would. */
static bool listener_is(const Listener *l, const struct sockaddr *sa, socklen_t len) {
        Listener want = { .fd = -1, .addr_len = len };

        if (len > sizeof(want.addr))
                return false;
        memcpy(&want.addr, sa, len);
        if (same_endpoint(l, &want))
                return true;
        if (adopt_interface(&want, l))
                return same_endpoint(l, &want);
        if (sa->sa_family != AF_INET || !is_dual_stack(l))
                return false;
        const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &l->addr;
        return in->sin_addr.s_addr == htonl(INADDR_ANY) && in->sin_port == in6->sin6_port;
}

/* no_socket_named: the error for a PROXY entry whose NAME no socket of SET has (a typo, or a
 * socket unit not restarted since): skipped, the socket meant would be served as a plain one. */
static int no_socket_named(const ListenerSet *set, const char *name, char *err, size_t err_size) {
        char passed[256] = "";
        size_t n = 0;

        for (size_t i = 0; i < set->n && n < sizeof(passed); i++) {
                bool seen = false;
                for (size_t j = 0; j < i && !seen; j++)
                        seen = strcmp(set->items[j].fdname, set->items[i].fdname) == 0;
                if (!seen && set->items[i].fdname[0] != '\0')
                        n += (size_t) snprintf(passed + n, sizeof(passed) - n, "%s%s", n > 0 ? ", " : "",
                                               set->items[i].fdname);
        }
        snprintf(err, err_size, "name \"%s\": no passed socket has that name (passed: %s)", name,
                 n > 0 ? passed : "none named");
        return -ENOENT;
}

/* mark_entry: MARKS[i] for each listener of SET that SPEC names: by its FileDescriptorName=,
 * or by an address its host resolves to, looked up once and as listeners_resolve() does
 * ("localhost" is 127.0.0.1 and ::1: matched numerically only, a PROXY listener written so was
 * served as a plain one). A name that cannot be looked up is an error, not "no listener": the
 * PROXY listener it names would be served as a plain one, every client taken for the balancer. */
static int mark_entry(const ListenerSet *set, const ListenSpec *spec, unsigned port, bool *marks, char *err,
                      size_t err_size) {
        struct addrinfo *res;
        int r;

        if (spec->fdname) {
                bool found = false;
                for (size_t i = 0; i < set->n; i++)
                        if (strcmp(set->items[i].fdname, spec->fdname) == 0)
                                marks[i] = found = true;
                return found ? 0 : no_socket_named(set, spec->fdname, err, err_size);
        }
        if (!spec->host)
                return 0;
        r = look_up_or_explain(spec, port, &res, err, err_size);
        if (r < 0)
                return r;
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
                for (size_t i = 0; i < set->n; i++)
                        marks[i] |= listener_is(&set->items[i], ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(res);
        if (is_localhost(spec)) {
                ListenerSet loop = { 0 };
                if (add_loopbacks(&loop, spec, spec->port ? spec->port : port) < 0) {
                        listener_set_done(&loop);
                        snprintf(err, err_size, "out of memory");
                        return -ENOMEM;
                }
                for (size_t j = 0; j < loop.n; j++)
                        for (size_t i = 0; i < set->n; i++)
                                marks[i] |= listener_is(&set->items[i], (const struct sockaddr *) &loop.items[j].addr,
                                                        loop.items[j].addr_len);
                listener_set_done(&loop);
        }
        return 0;
}

int listeners_proxy_marks(const ListenerSet *set, const Conf *conf, bool **ret, char *err, size_t err_size) {
        bool *marks = calloc(set->n > 0 ? set->n : 1, sizeof(bool));
        char why[512];

        if (!marks) {
                snprintf(err, err_size, "out of memory");
                return -ENOMEM;
        }
        for (size_t j = 0; j < conf->n_listen; j++) {
                const ListenSpec *spec = &conf->listen[j];
                int r;

                if (!spec->proxy_protocol)
                        continue;
                r = mark_entry(set, spec, conf->port, marks, why, sizeof(why));
                if (r < 0) {
                        snprintf(err, err_size, "%s: listen: %s", conf_listen_origin(conf, spec), why);
                        free(marks);
                        return r;
                }
        }
        *ret = marks;
        return 0;
}

void listeners_set_proxy(ListenerSet *set, const bool *marks) {
        for (size_t i = 0; i < set->n; i++)
                set->items[i].proxy = marks[i];
}

int listeners_report_match(const ListenerSet *inherited, const Conf *conf) {
        char why[1024] = "";
        int r = listeners_match_conf(inherited, conf, why, sizeof(why));

        if (r == -ECANCELED)
                return r;
        /* Under socket activation systemd owns the addresses, and hellod-socket-generator makes
         * them the configuration's; they differ when the file changed since the last
         * daemon-reload, names a host, or a hand-made drop-in overrides the generated one. */
        if (r > 0)
                log_info("socket-activated: serving %zu passed socket%s, as 'listen' and 'port' say", inherited->n,
                         inherited->n == 1 ? "" : "s");
        else if (r == 0)
                log_warning("socket-activated: the sockets do not match 'listen' and 'port' in %s (%s); serving the "
                            "passed sockets. To apply the configuration: systemctl daemon-reload && systemctl "
                            "restart hellod.socket",
                            conf->path ? conf->path : "the built-in defaults", why);
        else
                log_warning("socket-activated: cannot compare the passed sockets with 'listen' and 'port' (%s); "
                            "serving the passed sockets",
                            why);
        return 0;
}

AcceptError listener_accept_error(int errnum) {
        switch (errnum) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
                return ACCEPT_DRAINED;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
                return ACCEPT_RETRY;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
                return ACCEPT_EXHAUSTED;
        default:
                return ACCEPT_FAILED;
        }
}

int listener_accept(const Listener *l, int flags, struct sockaddr_storage *peer, AcceptError *kind,
                    void (*exhausted)(void *userdata, const Listener *via, int error), void *userdata) {
        socklen_t len = sizeof(*peer);
        int fd = accept4(l->fd, (struct sockaddr *) peer, &len, flags);

        if (fd >= 0)
                return fd;
        int r = -errno;
        *kind = listener_accept_error(-r);
        if (*kind == ACCEPT_EXHAUSTED)
                exhausted(userdata, l, r);
        return -1;
}

void listener_note_failure(const Listener *l, bool *failing, int error) {
        if (!__atomic_exchange_n(failing, true, __ATOMIC_RELAXED))
                log_error_errno(error, "accept on %s failed; trying it again every %u ms, the other listeners go on",
                                l->name, ENGINE_ACCEPT_PAUSE_USEC / 1000u);
}

void listener_log_accepting(const Listener *l) {
        log_notice("accept on %s works again", l->name);
}
