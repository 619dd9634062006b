/* preflight: the start-time checks, shared by `hellod -t` and the start. */
#include "preflight.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine.h"
#include "listener.h"
#include "log.h"
#include "lookup.h"
#include "session.h"

/* fds_needed: descriptors for CONF's max_connections clients (and, with a thread per
 * connection, as many lingering sockets: lingerer.h), its listeners and the event loops of
 * WORKERS loops (0: a thread per connection). */
static unsigned long long fds_needed(const Conf *conf, unsigned workers) {
        unsigned long long clients = conf->max_connections, base = clients + conf->n_listen + PREFLIGHT_FD_OVERHEAD;

        /* Each pool loop holds an epoll and an eventfd. */
        if (workers > 0)
                return base + 2ULL * workers;
        /* A thread per connection: an epoll, an eventfd and a timerfd; the lingerer's epoll and
         * eventfd, and up to max_connections sockets lingering there (lingerer.h). */
        return base + 3 + 2 + clients;
}

static unsigned long long physical_memory(void) {
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);

        return pages > 0 && size > 0 ? (unsigned long long) pages * (unsigned long long) size : 0;
}

/* check_identity: USER and GROUP name entries (looked up within a bound, as listen names are):
 * -EINVAL when one is unknown; -EAGAIN when the name service failed or gave no answer (its
 * fault, not the file's); -ECANCELED when the waiter gave the lookup up (hellod is to stop). */
static int check_identity(const Conf *conf, const char *path, Identity *ret_identity, char *err,
                          size_t err_size) {
        const char *at = conf->user_at ? conf->user_at : path;
        Identity identity;
        char why[256];

        if (!conf->user && !conf->group)
                return 0;
        int r = lookup_identity(conf->user, conf->group, &identity.uid, &identity.gid, why, sizeof(why));
        if (r == 0) {
                if (ret_identity)
                        *ret_identity = identity;
                return 0;
        }
        /* A LOOKUP_ code: either entry may be the one not answered (conf refuses a group
         * without a user). */
        if (r > 0 && conf->user) {
                snprintf(err, err_size, "%s: user: cannot look user '%s'%s%s%s up: %s", at, conf->user,
                         conf->group ? " and group '" : "", conf->group ? conf->group : "", conf->group ? "'" : "",
                         why);
                return r == LOOKUP_ABANDONED ? -ECANCELED : -EAGAIN;
        }
        /* Which key: a failure of the group's names the group (privileges_resolve() says which
         * first); anything else is about the user. */
        static const char unknown_group[] = "unknown group", failed_group[] = "cannot look group";
        bool group = conf->group && (strncmp(why, unknown_group, sizeof(unknown_group) - 1) == 0 ||
                                     strncmp(why, failed_group, sizeof(failed_group) - 1) == 0);
        if (group && conf->group_at)
                at = conf->group_at;
        if (r != -ESRCH && r != -EINVAL) {
                snprintf(err, err_size, "%s: %s: %s", at, group ? "group" : "user", why);
                return -EAGAIN;
        }
        snprintf(err, err_size, "%s: %s: %s: create it (adduser --system), or name an existing one", at,
                 group ? "group" : "user", why);
        return -EINVAL;
}

/* warn_fds: max_connections the open-files limit cannot hold. Not an error: the daemon refuses
 * clients beyond it as busy, and keeps serving the others. The figure is the worst case (in
 * the per-connection model, every client's socket also lingering). */
static unsigned warn_fds(const Conf *conf, unsigned workers) {
        unsigned long long need = fds_needed(conf, workers), each = workers > 0 ? 1 : 2; /* a client's */
        unsigned long long fixed = need - each * conf->max_connections;
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max == RLIM_INFINITY || need <= rl.rlim_max)
                return 0;
        log_warning("max_connections %u needs about %llu open files, and the open-files limit is %llu: clients "
                    "beyond %llu may be refused as busy; lower max_connections, or raise the limit "
                    "(LimitNOFILE= in the service, ulimit -Hn)",
                    conf->max_connections, need, (unsigned long long) rl.rlim_max,
                    rl.rlim_max > fixed ? ((unsigned long long) rl.rlim_max - fixed) / each : 0ULL);
        return 1;
}

/* warn_memory: max_connections sessions at their limits would need a lot of memory (a large
 * max_line_length times many connections; on io_uring, what it keeps of flooding clients'
 * input): bounded, but maybe not meant. */
static unsigned warn_memory(const Conf *conf, const Conf *model) {
        bool io_uring = engine_runs_uring(model);
        unsigned long long per = session_memory_max(conf, model->workers, io_uring), worst = per * conf->max_connections;
        unsigned long long ram = physical_memory();
        char backend[80] = "";

        if (worst <= PREFLIGHT_MEMORY_WARN_BYTES && (ram == 0 || worst <= ram))
                return 0;
        if (io_uring)
                snprintf(backend, sizeof(backend), " on io_uring (%u KiB of a flooding client's input each)",
                         SESSION_URING_KEPT_SOFT / 1024u);
        if (ram > 0 && worst > ram)
                log_warning("max_connections %u clients at max_line_length %u%s could need %llu MiB, more than the "
                            "%llu MiB of memory of this machine: lower max_connections to %llu or less, or "
                            "max_line_length%s",
                            conf->max_connections, conf->max_line_length, backend, worst >> 20, ram >> 20, ram / per,
                            io_uring ? ", or use io_backend = \"epoll\"" : "");
        else
                log_warning("max_connections %u clients at max_line_length %u%s could make hellod use up to %llu MiB",
                            conf->max_connections, conf->max_line_length, backend, worst >> 20);
        return 1;
}

/* beside_wildcard: a specific address of SET on a port and family that a wildcard of SET takes
 * too, as a host name resolves (conf.c refuses the numeric case; "localhost" is ::1 too where
 * the resolver says so): it could not be bound. ERR names the entries. */
static int beside_wildcard(const Conf *conf, const ListenerSet *set, char *err, size_t err_size) {
        for (size_t i = 0; i < set->n; i++)
                for (size_t j = 0; j < set->n; j++) {
                        const Listener *wild = &set->items[i], *l = &set->items[j];
                        if (!listener_is_wildcard(wild) || listener_is_wildcard(l) ||
                            wild->addr.ss_family != l->addr.ss_family || listener_port(wild) != listener_port(l) ||
                            l->spec >= conf->n_listen || wild->spec >= conf->n_listen)
                                continue;
                        const ListenSpec *spec = &conf->listen[l->spec], *other = &conf->listen[wild->spec];
                        snprintf(err, err_size,
                                 "%s: listen: '%s' is %s, which '%s' already serves (a wildcard address takes "
                                 "every address of its family on its port: list one or the other)",
                                 conf_listen_origin(conf, spec), spec->host,
                                 l->name, other->host);
                        return -EINVAL;
                }
        return 0;
}

static int check_listen(const Conf *conf, bool sockets_passed, char *err, size_t err_size) {
        ListenerSet set;
        int r = sockets_passed ? listeners_resolve_passed(conf, &set, err, err_size)
                               : listeners_resolve(conf, &set, err, err_size);

        if (r < 0) /* ERR names the file and line */
                return r == -ECANCELED || r == -EAGAIN ? r : -EINVAL;
        r = beside_wildcard(conf, &set, err, err_size);
        listener_set_done(&set);
        return r;
}

int preflight_check(const Conf *conf, const char *path, bool sockets_passed, Identity *ret_identity, char *err,
                    size_t err_size) {
        int r = check_identity(conf, path, ret_identity, err, err_size);

        if (r >= 0)
                r = check_listen(conf, sockets_passed, err, err_size);
        return r;
}

/* warn_v4_space: KEY's IPv6 prefix over where IPv4 addresses live (::ffff:0:0/96: "::/0",
 * "::/8") matches IPv6 clients only; with no IPv4 prefix in the same list, it was most likely
 * meant for everyone. ADVICE: what to add for the IPv4 clients. */
static unsigned warn_v4_space(const char *key, const Cidr *list, size_t n, const char *advice) {
        static const IpKey v4_zero = { .bytes = { [10] = 0xff, [11] = 0xff } };
        const Cidr *wide = NULL;
        char text[INET6_ADDRSTRLEN + 8];

        for (size_t i = 0; i < n; i++) {
                Cidr all_families = list[i];
                all_families.ipv6_only = false;
                if (!list[i].ipv6_only)
                        return 0; /* IPv4 clients are seen to */
                if (list[i].bits < 96 && cidr_match(&all_families, &v4_zero))
                        wide = &list[i];
        }
        if (!wide)
                return 0;
        log_warning("%s: \"%s\" matches IPv6 clients only, no IPv4 one; %s", key,
                    cidr_format(wide, text, sizeof(text)), advice);
        return 1;
}

/* warn_all: preflight_warn() for CONF served by the worker model and backend of MODEL. */
static unsigned warn_all(const Conf *conf, const Conf *model) {
        static const char everyone[] = "add \"0.0.0.0/0\" (or an IPv4 prefix) for those";

        /* Not everyone in proxy_from: a peer there names the client it likes, past allow, deny
         * and the per-source limits. */
        return warn_fds(conf, model->workers) + warn_memory(conf, model) + warn_v4_space("allow", conf->allow, conf->n_allow, everyone) +
               warn_v4_space("deny", conf->deny, conf->n_deny, everyone) +
               warn_v4_space("proxy_from", conf->proxy_from, conf->n_proxy_from,
                             "list the balancers' IPv4 addresses if some connect over IPv4");
}

unsigned preflight_warn(const Conf *conf) {
        return warn_all(conf, conf);
}

unsigned preflight_warn_reloaded(const Conf *conf, const Conf *started) {
        return warn_all(conf, started);
}
