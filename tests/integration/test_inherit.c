/* test_inherit: listeners_inherit_split() on real descriptors passed the way systemd passes
 * them (fds from 3 on, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES): listeners, the file descriptor
 * store's connections and state memfd, and what it must close and remove from the store (the
 * FDSTOREREMOVE messages land on a $NOTIFY_SOCKET the test owns). Each case runs in a child
 * process, since it takes over descriptors 3 and up. listeners_proxy_marks() is tested here too,
 * on the listeners so inherited, with their FileDescriptorName= and real dual-stack sockets. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "listener.h"

#define PASSED_MAX 8
#define HIGH_FD 200 /* where descriptors wait before they are moved to 3.. */
#define RESULT_FD 300

typedef enum Kind {
        LISTENER,      /* 127.0.0.1, an ephemeral port */
        DUAL_LISTENER, /* [::] with IPV6_V6ONLY off, as ListenStream=PORT makes */
        CONNECTION, /* the server side of a loopback TCP connection */
        MEMFD,
        UNIX_DGRAM,
} Kind;

typedef struct Passed {
        Kind kind;
        const char *name;
} Passed;

static int listen_fd = -1; /* the child's loopback listener the connections come from */

static int dual_listener(void) {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &(int) { 0 }, sizeof(int)) < 0 ||
            bind(fd, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(fd, 16) < 0)
                return -1;
        return fd;
}

static int tcp_listener(void) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(fd, 16) < 0)
                return -1;
        return fd;
}

/* connection: the accepted side of a new connection to LISTEN_FD; *RET_CLIENT the other. */
static int connection(int *ret_client) {
        struct sockaddr_in a;
        socklen_t len = sizeof(a);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (c < 0 || getsockname(listen_fd, (struct sockaddr *) &a, &len) < 0 ||
            connect(c, (struct sockaddr *) &a, len) < 0)
                return -1;
        *ret_client = c;
        return accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
}

static int make(Kind kind, int *ret_client) {
        switch (kind) {
        case LISTENER:
                return tcp_listener();
        case DUAL_LISTENER:
                return dual_listener();
        case CONNECTION:
                return connection(ret_client);
        case MEMFD:
                return memfd_create("test-state", MFD_CLOEXEC);
        case UNIX_DGRAM:
                return socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        }
        return -1;
}

static char failure[1024];

static void fail(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *format, ...) {
        va_list ap;

        if (failure[0])
                return; /* the first one says most */
        va_start(ap, format);
        vsnprintf(failure, sizeof(failure), format, ap);
        va_end(ap);
}

static bool is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

static bool cloexec(int fd) {
        int flags = fcntl(fd, F_GETFD);
        return flags >= 0 && (flags & FD_CLOEXEC);
}

/* pass: in the child, makes descriptors 3..3+N-1 as systemd would and sets the environment.
 * CLIENTS gets the client end of each connection (-1 elsewhere). */
static void pass(const Passed *p, size_t n, int clients[], const char *notify) {
        char names[512] = "", count[8], pid[16];

        listen_fd = tcp_listener();
        for (size_t i = 0; i < n; i++) {
                int client = -1, fd = make(p[i].kind, &client);
                if (fd < 0)
                        fail("cannot make descriptor %zu: %s", i, strerror(errno));
                if (dup3(fd, HIGH_FD + (int) i, 0) < 0)
                        fail("dup3: %s", strerror(errno));
                close(fd);
                clients[i] = client >= 0 ? fcntl(client, F_DUPFD_CLOEXEC, HIGH_FD + 50) : -1;
                if (client >= 0)
                        close(client);
                snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ":" : "", p[i].name);
        }
        for (size_t i = 0; i < n; i++) {
                if (dup2(HIGH_FD + (int) i, 3 + (int) i) < 0)
                        fail("dup2: %s", strerror(errno));
                close(HIGH_FD + (int) i);
        }
        snprintf(count, sizeof(count), "%zu", n);
        snprintf(pid, sizeof(pid), "%d", (int) getpid());
        setenv("LISTEN_PID", pid, 1);
        setenv("LISTEN_FDS", count, 1);
        setenv("LISTEN_FDNAMES", names, 1);
        setenv("NOTIFY_SOCKET", notify, 1);
}

typedef void (*Check)(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]);

typedef struct Outcome {
        char failure[1024];
        char messages[8][128]; /* what reached $NOTIFY_SOCKET, in order */
        size_t n_messages;
} Outcome;

/* run: passes P in a child, calls listeners_inherit_split() (or, with WRAPPER,
 * listeners_inherit()) and CHECK there, and collects the notify messages. */
static Outcome run(const Passed *p, size_t n, bool wrapper, Check check) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        Outcome o = { 0 };
        int pipefd[2];
        char notify[64];

        snprintf(notify, sizeof(notify), "@hellod-test-inherit-%d", (int) getpid());
        snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "%s", notify + 1);
        int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        cr_assert_geq(nfd, 0);
        cr_assert_eq(bind(nfd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + strlen(notify))),
                     0, "bind: %s", strerror(errno));
        cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);

        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                int result = fcntl(pipefd[1], F_DUPFD_CLOEXEC, RESULT_FD), clients[PASSED_MAX];
                ListenerSet set = { 0 };
                InheritedStore store = INHERITED_STORE_NULL;
                char err[512] = "";

                close(pipefd[0]);
                close(pipefd[1]);
                close(nfd);
                pass(p, n, clients, notify);
                int r = wrapper ? listeners_inherit(&set, err, sizeof(err))
                                : listeners_inherit_split(&set, &store, err, sizeof(err));
                if (getenv("LISTEN_FDS"))
                        fail("LISTEN_FDS is still set");
                if (!failure[0])
                        check(r, err, &set, &store, clients);
                ssize_t w = write(result, failure, strlen(failure));
                _exit(w < 0 ? 2 : 0);
        }
        close(pipefd[1]);
        ssize_t got = read(pipefd[0], o.failure, sizeof(o.failure) - 1);
        o.failure[got > 0 ? got : 0] = '\0';
        close(pipefd[0]);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %d)", status);
        for (; o.n_messages < 8; o.n_messages++) {
                ssize_t m = recv(nfd, o.messages[o.n_messages], sizeof(o.messages[0]) - 1, 0);
                if (m < 0)
                        break;
                o.messages[o.n_messages][m] = '\0';
        }
        close(nfd);
        return o;
}

/* ---- the cases --------------------------------------------------------------------------------- */

static void check_everything(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]) {
        char buf[8];

        if (r < 0)
                return fail("failed: %s", err);
        if (set->n != 1 || set->items[0].fd != 3)
                return fail("%zu listeners, the first fd %d", set->n, set->n ? set->items[0].fd : -1);
        if (store->state_fd != 5)
                return fail("state fd %d, expected 5", store->state_fd);
        if (store->n_conns != 1 || store->conns[0].fd != 4 || store->conns[0].name.id != 7)
                return fail("%zu connections", store->n_conns);
        for (int fd = 3; fd <= 5; fd++)
                if (!cloexec(fd))
                        return fail("fd %d is not close-on-exec", fd);
        for (int fd = 6; fd <= 10; fd++)
                if (is_open(fd))
                        return fail("fd %d is still open", fd);
        /* The stored connection is the client's conversation. */
        if (write(clients[1], "hi\n", 3) != 3 || read(4, buf, sizeof(buf)) != 3 || memcmp(buf, "hi\n", 3) != 0)
                return fail("the stored connection does not carry the client's bytes");
        listener_set_done(set);
        inherited_store_done(store);
        for (int fd = 3; fd <= 5; fd++)
                if (is_open(fd))
                        return fail("fd %d is still open after done", fd);
}

Test(inherit, listeners_connections_state_and_unknowns) {
        const Passed p[] = {
                { LISTENER, "hellod" }, { CONNECTION, "c7" },   { MEMFD, "state" },     { CONNECTION, "c0" },
                { MEMFD, "c9" },        { CONNECTION, "state" }, { CONNECTION, "c7" },  { CONNECTION, "c7b" },
        };
        Outcome o = run(p, sizeof(p) / sizeof(p[0]), false, check_everything);

        cr_assert_str_empty(o.failure, "%s", o.failure);
        /* c0 (no valid id) and c9 (not a socket) are removed; the second "state" and "c7" only
         * closed, since removing their names would drop the ones taken; "c7b", the id of one
         * taken under another name, removed (it was kept open in the store for good). */
        cr_assert_eq(o.n_messages, 3, "%zu messages, the first '%s'", o.n_messages, o.messages[0]);
        cr_expect_str_eq(o.messages[0], "FDSTOREREMOVE=1\nFDNAME=c0");
        cr_expect_str_eq(o.messages[1], "FDSTOREREMOVE=1\nFDNAME=c9");
        cr_expect_str_eq(o.messages[2], "FDSTOREREMOVE=1\nFDNAME=c7b");
}

/* The connections as check_indexed expects them: passed out of order, with "c2" twice and "c5b"
 * beside "c5" (descriptors 3 to 10). */
static const Passed out_of_order[] = {
        { LISTENER, "hellod" }, { CONNECTION, "c9" }, { CONNECTION, "c2" },  { CONNECTION, "c5" },
        { CONNECTION, "c2" },   { CONNECTION, "c7" }, { CONNECTION, "c5b" }, { CONNECTION, "c3" },
};

static void check_indexed(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]) {
        static const struct {
                uint64_t id;
                int fd;
        } want[] = { { 2, 5 }, { 3, 10 }, { 5, 6 }, { 7, 8 }, { 9, 4 } };
        static const uint64_t absent[] = { 0, 1, 4, 6, 8, 10, UINT64_MAX };

        (void) clients;
        if (r < 0)
                return fail("failed: %s", err);
        if (store->n_conns != 5)
                return fail("%zu connections, expected 5", store->n_conns);
        for (size_t i = 0; i < 5; i++) {
                if (store->conns[i].name.id != want[i].id || store->conns[i].fd != want[i].fd)
                        return fail("connection %zu: c%llu on fd %d, expected c%llu on fd %d", i,
                                    (unsigned long long) store->conns[i].name.id, store->conns[i].fd,
                                    (unsigned long long) want[i].id, want[i].fd);
                const StoredConn *found = inherited_store_conn(store, want[i].id);
                if (found != &store->conns[i])
                        return fail("c%llu not found", (unsigned long long) want[i].id);
        }
        for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
                if (inherited_store_conn(store, absent[i]))
                        return fail("c%llu found, and none was passed", (unsigned long long) absent[i]);
        if (is_open(7) || is_open(9))
                return fail("a second descriptor of an id is still open");
        listener_set_done(set);
        inherited_store_done(store);
}

/* Connections passed in any order are found by id, and of several of one id the first passed
 * is kept, as before they were indexed (listeners_connections_state_and_unknowns). */
Test(inherit, stored_connections_are_found_by_id_in_any_order) {
        Outcome o = run(out_of_order, sizeof(out_of_order) / sizeof(out_of_order[0]), false, check_indexed);

        cr_assert_str_empty(o.failure, "%s", o.failure);
        /* The second "c2" only closed (its name is the first's); "c5b" removed. */
        cr_assert_eq(o.n_messages, 1, "%zu messages, the first '%s'", o.n_messages, o.messages[0]);
        cr_expect_str_eq(o.messages[0], "FDSTOREREMOVE=1\nFDNAME=c5b");
}

static void check_discarded(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]) {
        char c;

        (void) store;
        if (r < 0)
                return fail("failed: %s", err);
        if (set->n != 1 || set->items[0].fd != 3)
                return fail("%zu listeners", set->n);
        if (is_open(4) || is_open(5))
                return fail("a stored descriptor is still open");
        /* The client sees its connection closed (the store's copy aside). */
        if (read(clients[1], &c, 1) != 0)
                return fail("the client's connection is not closed");
        listener_set_done(set);
}

Test(inherit, a_process_that_resumes_nothing_closes_and_removes_the_store) {
        const Passed p[] = { { LISTENER, "hellod" }, { CONNECTION, "c3" }, { MEMFD, "state" } };
        Outcome o = run(p, 3, true, check_discarded);

        cr_assert_str_empty(o.failure, "%s", o.failure);
        cr_assert_eq(o.n_messages, 2);
        cr_expect_str_eq(o.messages[0], "FDSTOREREMOVE=1\nFDNAME=c3");
        cr_expect_str_eq(o.messages[1], "FDSTOREREMOVE=1\nFDNAME=state");
}

static void check_refused(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]) {
        (void) clients;
        if (r != -EINVAL)
                return fail("returned %d, expected -EINVAL", r);
        if (!strstr(err, "passed file descriptor 5 ('bogus') is not a listening TCP socket"))
                return fail("error '%s'", err);
        if (set->n != 0 || store->n_conns != 0 || store->state_fd != -1)
                return fail("something was returned with the error");
        for (int fd = 3; fd <= 6; fd++)
                if (is_open(fd))
                        return fail("fd %d is still open", fd);
}

Test(inherit, a_foreign_descriptor_is_still_an_error_that_names_it) {
        const Passed p[] = { { LISTENER, "hellod" }, { CONNECTION, "c3" }, { UNIX_DGRAM, "bogus" }, { MEMFD, "state" } };
        Outcome o = run(p, 4, false, check_refused);

        cr_assert_str_empty(o.failure, "%s", o.failure);
        cr_expect_eq(o.n_messages, 0);
}

/* ---- listeners_proxy_marks ---------------------------------------------------------------------- */

/* mark_proxy: the marks CONF gives SET, swapped in as a start or a reload does. */
static void mark_proxy(ListenerSet *set, const Conf *conf) {
        char err[512];
        bool *marks;

        cr_assert_eq(listeners_proxy_marks(set, conf, &marks, err, sizeof(err)), 0, "%s", err);
        listeners_set_proxy(set, marks);
        free(marks);
}

static unsigned port_of(const Listener *l) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) &l->addr;
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &l->addr;

        return ntohs(l->addr.ss_family == AF_INET ? in->sin_port : in6->sin6_port);
}

static Conf *conf_text(const char *format, ...) __attribute__((format(printf, 1, 2)));
static Conf *conf_text(const char *format, ...) {
        char text[1024], err[512];
        Conf *c = NULL;
        va_list ap;

        va_start(ap, format);
        vsnprintf(text, sizeof(text), format, ap);
        va_end(ap);
        if (conf_load_text("test.conf", text, strlen(text), &c, err, sizeof(err)) < 0) {
                fail("config <<%s>>: %s", text, err);
                return NULL;
        }
        return c;
}

/* expect_proxy: which of SET's listeners are marked, as a string of 0s and 1s, must be WANT. */
static bool expect_proxy(const ListenerSet *set, const char *want, const char *after) {
        char got[PASSED_MAX + 1] = "";

        for (size_t i = 0; i < set->n && i < PASSED_MAX; i++)
                got[i] = set->items[i].proxy ? '1' : '0';
        if (strcmp(got, want) != 0) {
                fail("%s: proxy marks %s, expected %s", after, got, want);
                return false;
        }
        return true;
}

static void check_marked(int r, const char *err, ListenerSet *set, InheritedStore *store, const int clients[]) {
        static const char *const names[] = { "hellod-proxy", "hellod.socket", "other", "hellod.socket" };
        char why[512], desc[512];
        unsigned p1, p2, p3;
        bool *marks;
        Conf *c;

        (void) store;
        (void) clients;
        if (r < 0 || set->n != 4)
                return fail("failed (%d, %zu listeners): %s", r, set->n, err);
        for (size_t i = 0; i < 4; i++)
                if (strcmp(set->items[i].fdname, names[i]) != 0 || set->items[i].proxy)
                        return fail("listener %zu: fdname '%s', proxy %d", i, set->items[i].fdname, set->items[i].proxy);
        p1 = port_of(&set->items[1]);
        p2 = port_of(&set->items[2]);
        p3 = port_of(&set->items[3]);

        /* By name, by a numeric address, and a dual-stack socket by its IPv4 half. */
        c = conf_text("listen = ( { name = \"hellod-proxy\"; proxy_protocol = true; },\n"
                      "  { address = \"127.0.0.1:%u\"; proxy_protocol = true; }, \"127.0.0.1:%u\",\n"
                      "  { address = \"0.0.0.0:%u\"; proxy_protocol = true; } );\nproxy_from = [ \"127.0.0.1\" ];\n",
                      p1, p2, p3);
        if (!c)
                return;
        mark_proxy(set, c);
        if (!expect_proxy(set, "1101", "by name and address"))
                return;
        listeners_describe(set, desc, sizeof(desc));
        if (!strstr(desc, "127.0.0.1:") || !strstr(desc, " (PROXY), ") || strstr(desc, "(PROXY) (PROXY)"))
                return fail("described as '%s'", desc);
        conf_unref(c);

        /* The socket named in 'listen' is its socket unit's business: left out when the passed
         * sockets are compared with the addresses; without that entry, it is one too many. */
        c = conf_text("listen = ( { name = \"hellod-proxy\"; }, \"127.0.0.1:%u\", \"127.0.0.1:%u\", \"0.0.0.0:%u\", "
                      "\"[::]:%u\" );\n",
                      p1, p2, p3, p3);
        if (!c)
                return;
        r = listeners_match_conf(set, c, why, sizeof(why));
        conf_unref(c);
        if (r != 1)
                return fail("listeners_match_conf with the name: %d, %s", r, why);
        c = conf_text("listen = ( \"127.0.0.1:%u\", \"127.0.0.1:%u\", \"0.0.0.0:%u\", \"[::]:%u\" );\n", p1, p2, p3, p3);
        if (!c)
                return;
        r = listeners_match_conf(set, c, why, sizeof(why));
        conf_unref(c);
        if (r != 0)
                return fail("listeners_match_conf without the name: %d, %s", r, why);

        /* The dual-stack socket's two halves with different roles: one socket has one, so the
         * addresses match but the sockets do not (it used to be reported as a match, and one
         * half's clients were served in the other's role without a word). */
        c = conf_text("listen = ( { name = \"hellod-proxy\"; }, \"127.0.0.1:%u\", \"127.0.0.1:%u\", \"0.0.0.0:%u\",\n"
                      "  { address = \"[::]:%u\"; proxy_protocol = true; } );\nproxy_from = [ \"::1\" ];\n",
                      p1, p2, p3, p3);
        if (!c)
                return;
        r = listeners_match_conf(set, c, why, sizeof(why));
        conf_unref(c);
        if (r != 0 || !strstr(why, "one dual-stack socket [::]:") || !strstr(why, "one with proxy_protocol and one without"))
                return fail("listeners_match_conf with the halves in two roles: %d, %s", r, why);

        /* A reload: marks follow the new file, cleared where it no longer asks; "[::]:P" names the
         * dual-stack socket too, and a host name what it resolves to, as when hellod binds for
         * itself ("localhost" is 127.0.0.1: once never matched, so served without PROXY). */
        c = conf_text("listen = ( { name = \"hellod.socket\"; }, { address = \"localhost:%u\"; proxy_protocol = true; },\n"
                      "  { address = \"127.0.0.1:%u\"; proxy_protocol = true; }, { address = \"[::]:%u\"; "
                      "proxy_protocol = true; } );\nproxy_from = [ \"::1\" ];\n",
                      p1, p2, p3);
        if (!c)
                return;
        mark_proxy(set, c);
        if (!expect_proxy(set, "0111", "after a reload"))
                return;
        conf_unref(c);

        /* A plain configuration clears every mark; a specific address does not name the dual-stack one. */
        c = conf_text("listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = false; },\n"
                      "  { address = \"[::1]:%u\"; proxy_protocol = true; } );\nproxy_from = [ \"::1\" ];\n",
                      p1, p2, p3);
        if (!c)
                return;
        mark_proxy(set, c);
        if (!expect_proxy(set, "0000", "without PROXY entries"))
                return;
        conf_unref(c);

        /* A PROXY entry whose name cannot be looked up is an error naming it, not "no socket":
         * the socket it names would lose its mark, served as a plain one. (A reload looks the
         * names up in its checks first; this is the lookup a moment later failing.) */
        c = conf_text("listen = ( { address = \"hellod-test.invalid:%u\"; proxy_protocol = true; } );\n"
                      "proxy_from = [ \"::1\" ];\n",
                      p2);
        if (!c)
                return;
        r = listeners_proxy_marks(set, c, &marks, why, sizeof(why));
        conf_unref(c);
        if (r != -EADDRNOTAVAIL || !strstr(why, "test.conf:1: listen: cannot resolve listen address 'hellod-test.invalid'"))
                return fail("an unknown PROXY name: %d, '%s'", r, r < 0 ? why : "");
        listener_set_done(set);
}

Test(inherit, proxy_listeners_are_marked_by_name_and_by_address) {
        const Passed p[] = {
                { LISTENER, "hellod-proxy" },
                { LISTENER, "hellod.socket" },
                { LISTENER, "other" },
                { DUAL_LISTENER, "hellod.socket" },
        };
        Outcome o = run(p, 4, false, check_marked);

        cr_assert_str_empty(o.failure, "%s", o.failure);
}
