/* listener: `listen` entries → bound, listening, non-blocking sockets. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "conf.h"
#include "handover.h"

typedef struct Listener {
        int fd;
        struct sockaddr_storage addr;
        socklen_t addr_len;
        char name[ADDR_STR_MAX]; /* "127.0.0.1:9999", "[::]:9999" */
        bool proxy;              /* each client's connection starts with a PROXY header */
        char fdname[FDNAME_MAX + 1]; /* an inherited socket's FileDescriptorName=; "" for hellod's own */
        size_t spec; /* the listen entry it was resolved from, an index into the configuration
                      * that resolved it (for messages); SIZE_MAX for a passed socket */
} Listener;

/* listener_port: L's port (host order); listener_is_wildcard: whether L is 0.0.0.0 or ::. */
static inline unsigned listener_port(const Listener *l) {
        return addr_port((const struct sockaddr *) &l->addr);
}
static inline bool listener_is_wildcard(const Listener *l) {
        return addr_is_wildcard((const struct sockaddr *) &l->addr);
}

typedef struct ListenerSet {
        Listener *items;
        size_t n;
} ListenerSet;

/* listeners_resolve: every listen entry through getaddrinfo, duplicates removed; the
 * result's fds are -1. Errors (a name that does not resolve) are described in ERR, from the
 * entry's "FILE:LINE: listen: " on. */
int listeners_resolve(const Conf *conf, ListenerSet *ret, char *err, size_t err_size);
/* listeners_resolve_passed: listeners_resolve() for a start or reload that serves the sockets
 * systemd passed, where a plain entry is only compared with them (listeners_report_match): one
 * whose name cannot be looked up (-EAGAIN, -EADDRNOTAVAIL) is left out. A PROXY entry's
 * lookup still fails it, since its sockets must be marked; so does a lookup given up. */
int listeners_resolve_passed(const Conf *conf, ListenerSet *ret, char *err, size_t err_size);

/* listeners_open: the sockets CONF asks for, each bound anew (at the start). With
 * conf->listen_is_default, an unavailable IPv6 stack is skipped with a warning. ERR names the
 * address that failed and the reason. A `{ name = ...; }` entry beside addresses is -ENOENT:
 * no socket was passed for it to mark. */
int listeners_open(const Conf *conf, ListenerSet *ret, char *err, size_t err_size);

/* ListenersReopen: the running set at a reload, and how to take sockets from it. */
typedef struct ListenersReopen {
        ListenerSet *old;     /* the running set */
        unsigned old_backlog; /* the backlog its sockets were bound with */
        /* Called once every new address is bound, before OLD is first changed (not when the
         * reload fails before that): from then on no one may accept from OLD's sockets until
         * the caller hands the result (or, on failure, OLD) out again. */
        void (*pause)(void *userdata);
        void *userdata;
} ListenersReopen;

/* listeners_reopen: listeners_open() at a reload: a socket of HOW->old already bound to a
 * wanted address is carried over (moved out of OLD, its backlog updated), so the reload keeps
 * its listeners without a gap; the others are bound anew, and OLD is touched only once every
 * new address is bound. One exception, a port moving from the wildcard to a specific address
 * ("0.0.0.0:P" to "127.0.0.1:P"): the old socket holds the port and is closed first; if the
 * new one cannot be bound after all, the old is bound again with OLD_BACKLOG (and dropped
 * from OLD, with an error logged, if another process took the port meanwhile). */
int listeners_reopen(const Conf *conf, const ListenersReopen *how, ListenerSet *ret, char *err, size_t err_size);

/* listeners_warn_backlog: a notice when CONF's backlog is over net.core.somaxconn, which the
 * kernel clamps it to in silence; returns whether it was. listeners_reopen() gives it for the
 * sockets it binds (not for sockets systemd passed, which keep their own backlog), and
 * `hellod -t` for the file. */
bool listeners_warn_backlog(const Conf *conf);

/* passed_fd_set_mode: FD, a socket systemd or the process before passed, blocking or not as
 * its reader wants (NONBLOCKING), and closed on exec. 0 or a negative errno. */
int passed_fd_set_mode(int fd, bool nonblocking);

/* What the file descriptor store gave back (handover.h has the names): the state memfd and
 * the connections, each close-on-exec and otherwise as stored. */
typedef struct StoredConn {
        int fd;
        HandoverConnName name; /* what its name said: "c<id>", behind a balancer more */
} StoredConn;

typedef struct InheritedStore {
        int state_fd; /* -1: none */
        StoredConn *conns; /* by id, one for each (inherited_store_conn()) */
        size_t n_conns;
} InheritedStore;

#define INHERITED_STORE_NULL ((InheritedStore) { .state_fd = -1 })

/* What a passed descriptor is, as far as inherit_classify() needs to know. */
typedef enum FdKind {
        FD_KIND_LISTENING_TCP,
        FD_KIND_CONNECTED_TCP, /* a TCP stream socket not listening */
        FD_KIND_REGULAR,       /* a file or memfd */
        FD_KIND_OTHER,
} FdKind;

typedef enum InheritRole {
        INHERIT_LISTENER,
        INHERIT_STATE,
        INHERIT_CONNECTION,
        INHERIT_UNKNOWN_STORED, /* in hellod's store namespace, but not something it can use */
        INHERIT_INVALID,        /* not a listener, not stored: a misconfigured socket unit */
} InheritRole;

/* inherit_classify: the role of a passed descriptor of KIND named NAME. A listening TCP socket
 * is a listener whatever its FileDescriptorName=; otherwise the name decides: "state" (a
 * regular file) and "c<id>" (a connected TCP socket) are taken, any other name of the store's
 * namespace (handover_fdname_is_stored()) is unknown (left by another version of hellod, or
 * damaged), and anything else is invalid. *RET_CONN is set for a connection. Pure. */
InheritRole inherit_classify(const char *name, FdKind kind, HandoverConnName *ret_conn);

/* listeners_inherit_split: the descriptors systemd passed (LISTEN_FDS,
 * sd_listen_fds_with_names()): the listening sockets into RET (made non-blocking and
 * close-on-exec), what the file descriptor store kept into RET_STORE. An unknown stored
 * descriptor, and a second one of a name already taken, is closed with a warning; the unknown
 * ones are also removed from the store (FDSTOREREMOVE), unless a descriptor of the same name was
 * taken, since removal goes by name. A passed descriptor that is neither listener nor stored is
 * an error naming the descriptor and its FileDescriptorName; nothing is then returned and every
 * passed descriptor is closed. */
int listeners_inherit_split(ListenerSet *ret, InheritedStore *ret_store, char *err, size_t err_size);

/* listeners_inherit: as listeners_inherit_split(), for a process that resumes nothing: what the
 * store kept is closed and removed from it, with one log line. */
int listeners_inherit(ListenerSet *ret, char *err, size_t err_size);

/* inherited_store_conn: STORE's connection of id ID, or NULL. A binary search: the resume looks
 * up every record's, and a store may hold tens of thousands. */
StoredConn *inherited_store_conn(InheritedStore *store, uint64_t id);
/* inherited_store_done: closes what STORE still holds (left in the file descriptor store) and
 * frees it. */
void inherited_store_done(InheritedStore *store);

/* listener_set_done: closes every socket still in the set and frees it. */
void listener_set_done(ListenerSet *set);

/* listeners_describe: "127.0.0.1:9999, [::1]:9999" into BUF; whole names only, as many as fit,
 * then ", and N more" for the rest (64 listeners do not fit a log line). BUF holds at least
 * 64 bytes. */
const char *listeners_describe(const ListenerSet *set, char *buf, size_t size);

/* listeners_match_conf: whether the sockets systemd passed (INHERITED) are the ones CONF's
 * `listen` and `port` ask for, as a set. A dual-stack "[::]:P" socket (IPV6_V6ONLY off, what
 * `ListenStream=P` makes) stands for both "0.0.0.0:P" and "[::]:P", the built-in default.
 * Sockets an entry names by FileDescriptorName= (`name`) are left out of the comparison.
 * Returns 1 when they match, 0 when not (WHY then says both sides), or a negative errno when
 * CONF's addresses cannot be resolved (WHY says why). Non-logging. */
int listeners_match_conf(const ListenerSet *inherited, const Conf *conf, char *why, size_t why_size);

/* listeners_proxy_marks: *RET[i] (malloc'd, one per listener of SET): whether a listen entry
 * with proxy_protocol = true names the inherited listener i: by its FileDescriptorName= (the
 * entry's `name`), or by an address its host resolves to (each entry looked up once; a
 * dual-stack "[::]:P" socket stands for "0.0.0.0:P" and "[::]:P"; "localhost" for 127.0.0.1
 * and ::1, as the generator writes it). 0, -ENOMEM, -EADDRNOTAVAIL when such an entry's host
 * cannot be looked up, or -ENOENT when no passed socket has its name (ERR says which and why).
 * listeners_set_proxy: MARKS into SET's `proxy` flags, set or cleared (a reload computes the
 * marks first, with names looked up while the listeners still accept, then swaps them in). */
int listeners_proxy_marks(const ListenerSet *set, const Conf *conf, bool **ret, char *err, size_t err_size);
void listeners_set_proxy(ListenerSet *set, const bool *marks);

/* listeners_report_match: logs whether the passed sockets match CONF: info when they do, a
 * warning with the fix (daemon-reload, restart hellod.socket) when they do not. 0, or
 * -ECANCELED: a name's lookup was given up, hellod is stopping. */
int listeners_report_match(const ListenerSet *inherited, const Conf *conf);

/* What a failed accept4() means for the accepting loop. */
typedef enum AcceptError {
        ACCEPT_DRAINED,   /* EAGAIN: nothing more to accept now */
        ACCEPT_RETRY,     /* the client's problem (accept(2), "Error handling"): go on */
        ACCEPT_EXHAUSTED, /* out of descriptors or memory: turn the client away, pause */
        ACCEPT_FAILED,    /* anything else, the listener's own (shut down, say): pause it alone */
} AcceptError;

AcceptError listener_accept_error(int errnum);

/* listener_accept: one connection from L (accept4() with FLAGS), its peer in *PEER. Returns
 * the descriptor, or -1 with *KIND saying what the failure means for the loop; an
 * ACCEPT_EXHAUSTED one has been passed to EXHAUSTED(USERDATA, L, -errno) (which turns the
 * client away): the caller pauses accepting. On an ACCEPT_FAILED one (errno says why) it pauses
 * accepting from L alone (for ENGINE_ACCEPT_PAUSE_USEC, again and again): the other listeners go on. */
int listener_accept(const Listener *l, int flags, struct sockaddr_storage *peer, AcceptError *kind,
                    void (*exhausted)(void *userdata, const Listener *via, int error), void *userdata);
/* listener_note_failure: L's accept() failed with -ERROR for a reason of its own
 * (ACCEPT_FAILED): logged if *FAILING was clear (the first failure since L last accepted),
 * not at every retry; *FAILING is set. listener_note_accepted: L accepted: "works again" is
 * logged if *FAILING was set, and it is cleared. *FAILING is the caller's, one a listener and
 * event loop (or one a listener, for threads that share it: it is accessed atomically). */
void listener_note_failure(const Listener *l, bool *failing, int error);
void listener_log_accepting(const Listener *l);
static inline void listener_note_accepted(const Listener *l, bool *failing) {
        if (__atomic_load_n(failing, __ATOMIC_RELAXED) && __atomic_exchange_n(failing, false, __ATOMIC_RELAXED))
                listener_log_accepting(l);
}
