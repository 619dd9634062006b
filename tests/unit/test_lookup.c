/* test_lookup: lookup_addrinfo() against glibc's own resolver, and lookup_identity() against
 * its user and group lookups. A numeric address is read at
 * once, on the caller's thread; a name is looked up on a thread of its own while the waiter
 * runs, and a waiter that gives up ends the wait at once; lookups given up on still running
 * are capped. The name server that never answers is a UDP socket on 127.0.0.1:53 in a network
 * namespace of the test's own, named by a resolv.conf bound over /etc/resolv.conf in a mount
 * namespace of its own (each test runs in a process of its own). The directory that fails is
 * tests/nss's module, named after "files" by an nsswitch.conf bound over /etc/nsswitch.conf the
 * same way (LD_LIBRARY_PATH, set by meson, names the module's directory). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <unistd.h>

#include "lookup.h"

static const struct addrinfo hints = {
        .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_protocol = IPPROTO_TCP,
};

/* Waiter: counts its calls; gives up from call GIVE_UP_AT on (0: never). */
typedef struct Waiter {
        unsigned calls, give_up_at;
} Waiter;

static bool count_and_maybe_give_up(void *userdata) {
        Waiter *w = userdata;

        w->calls++;
        return w->give_up_at == 0 || w->calls < w->give_up_at;
}

/* thread_count: this process's threads, all (NAME NULL) or those called NAME. */
static int thread_count(const char *name) {
        DIR *d = opendir("/proc/self/task");
        int n = 0;

        cr_assert_not_null(d);
        for (struct dirent *e; (e = readdir(d));) {
                char path[sizeof("/proc/self/task//comm") + sizeof(e->d_name)], comm[32] = "";
                if (e->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
                FILE *f = fopen(path, "re");
                if (f && fgets(comm, sizeof(comm), f))
                        comm[strcspn(comm, "\n")] = '\0';
                if (f)
                        fclose(f);
                n += !name || strcmp(comm, name) == 0;
        }
        closedir(d);
        return n;
}

/* private_namespaces: this process in namespaces of its own from now on: a mount namespace
 * whose mounts do not reach the host's, and those of FLAGS (CLONE_NEWNET). */
static void private_namespaces(int flags) {
        cr_assert_eq(unshare(CLONE_NEWNS | flags), 0, "unshare: %s (this test needs root; it does not skip)",
                     strerror(errno));
        cr_assert_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0, "mount --make-rprivate /: %s",
                     strerror(errno));
}

/* bind_over: TARGET read by this process, from now on, as a file holding TEXT (bound over it:
 * private_namespaces() first). */
static void bind_over(const char *target, const char *text) {
        char path[] = "/tmp/hellod-test-etc.XXXXXX";
        size_t len = strlen(text);
        int fd;

        fd = mkstemp(path);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, text, len), (ssize_t) len);
        close(fd);
        cr_assert_eq(mount(path, target, NULL, MS_BIND, NULL), 0, "bind %s over %s: %s", path, target, strerror(errno));
        unlink(path); /* the bind mount keeps it */
}

/* private_name_server: the name server of this process, from now on: one that never answers
 * (SILENT: a socket that takes the queries; returned), or none at all (-1: the queries are
 * refused at once). */
static int private_name_server(bool silent) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(53),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct ifreq ifr = { .ifr_name = "lo" };
        int udp;

        private_namespaces(CLONE_NEWNET);
        udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(udp >= 0);
        cr_assert(ioctl(udp, SIOCGIFFLAGS, &ifr) == 0);
        ifr.ifr_flags |= IFF_UP;
        cr_assert(ioctl(udp, SIOCSIFFLAGS, &ifr) == 0, "lo up: %s", strerror(errno));
        cr_assert_eq(bind(udp, (struct sockaddr *) &a, sizeof(a)), 0, "bind 127.0.0.1:53: %s", strerror(errno));
        if (!silent) {
                close(udp);
                udp = -1;
        }
        bind_over("/etc/resolv.conf", "nameserver 127.0.0.1\noptions timeout:30 attempts:5\n");
        return udp;
}

Test(lookup, a_numeric_address_is_read_at_once_on_the_callers_thread) {
        Waiter w = { 0 };
        struct addrinfo *res = NULL;
        int threads = thread_count(NULL);

        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_addrinfo("127.0.0.1", "9999", &hints, &res), 0);
        cr_assert_not_null(res);
        cr_assert_eq(res->ai_family, AF_INET);
        cr_assert_eq(ntohs(((struct sockaddr_in *) res->ai_addr)->sin_port), 9999);
        freeaddrinfo(res);
        cr_assert_eq(lookup_addrinfo("::1", "9999", &hints, &res), 0);
        cr_assert_eq(res->ai_family, AF_INET6);
        freeaddrinfo(res);
        cr_assert_eq(w.calls, 0, "the waiter ran %u times for a numeric address", w.calls);
        cr_assert_eq(thread_count(NULL), threads);
}

/* "localhost" is in /etc/hosts: looked up on the thread, its answer handed back whole. */
Test(lookup, a_name_is_answered_through_the_lookup_thread) {
        struct addrinfo *res = NULL;
        bool v4 = false;

        cr_assert_eq(lookup_addrinfo("localhost", "7000", &hints, &res), 0);
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
                v4 |= ai->ai_family == AF_INET &&
                      ((struct sockaddr_in *) ai->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
        cr_assert(v4, "localhost did not give 127.0.0.1");
        freeaddrinfo(res);
}

/* Out of descriptors (or threads, or memory), a lookup fails with EAI_SYSTEM: the machine's
 * state, not the configuration's fault, and it may well not recur; so a start that meets it
 * exits 1 (systemd's Restart= tries again), not 78 (RestartPreventExitStatus=: given up). */
Test(lookup, out_of_descriptors_a_lookup_failure_is_transient) {
        struct addrinfo *res = NULL;
        int lowest_free = dup(0);

        cr_assert_geq(lowest_free, 0);
        close(lowest_free);
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &(struct rlimit) { .rlim_cur = (rlim_t) lowest_free,
                                                                 .rlim_max = (rlim_t) lowest_free }),
                     0, "setrlimit: %s", strerror(errno));
        int r = lookup_addrinfo("hellod-lookup.test", "7000", &hints, &res);
        int error = errno;
        cr_assert_eq(r, EAI_SYSTEM, "%d: %s", r, lookup_strerror(r));
        cr_assert_eq(error, EMFILE, "errno %d", error);
        cr_assert(lookup_transient(r), "out of descriptors is taken for the file's fault");
        cr_assert(lookup_transient(EAI_MEMORY));
        cr_assert_null(res);
}

/* No name server at all: the failure comes back through the thread at once, as one that may
 * not recur (not the configuration's fault). */
Test(lookup, a_refused_query_is_a_transient_failure) {
        struct addrinfo *res = NULL;

        (void) private_name_server(false);
        int r = lookup_addrinfo("hellod-lookup.test", "7000", &hints, &res);
        cr_assert_eq(r, EAI_AGAIN, "%d: %s", r, lookup_strerror(r));
        cr_assert(lookup_transient(r));
        cr_assert_null(res);
        /* Its thread ends on its own once it has answered; until it has, glibc's resolver
         * state on it looks leaked to LeakSanitizer at the process's exit (seen once in CI). */
        for (int i = 0; i < 250 && thread_count("hellod-lookup") > 0; i++)
                usleep(20 * 1000);
        cr_assert_eq(thread_count("hellod-lookup"), 0, "the lookup thread did not end");
}

/* The waiter is asked before a name's lookup starts (a stop already pending starts none; the
 * watchdog is fed for every name, however quick). */
Test(lookup, the_waiter_is_asked_before_a_lookup_starts) {
        int dns = private_name_server(true);
        int threads = thread_count(NULL);
        Waiter w = { .give_up_at = 1 };
        struct addrinfo *res = NULL;

        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_addrinfo("hellod-lookup.test", "9999", &hints, &res), LOOKUP_ABANDONED);
        cr_assert_eq(w.calls, 1);
        cr_assert_eq(thread_count(NULL), threads);
        close(dns);
}

Test(lookup, a_waiter_that_gives_up_ends_the_wait) {
        int dns = private_name_server(true);
        Waiter w = { .give_up_at = 3 }; /* once before the start, twice while it runs */
        struct addrinfo *res = NULL;

        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_addrinfo("hellod-lookup.test", "9999", &hints, &res), LOOKUP_ABANDONED);
        cr_assert_null(res);
        cr_assert_eq(w.calls, 3);
        cr_assert_str_eq(lookup_strerror(LOOKUP_ABANDONED), "lookup given up");
        close(dns);
}

/* Each lookup given up on leaves its thread waiting on the name server: at most
 * LOOKUP_RUNNING_MAX of them, then a lookup fails at once; numeric addresses still work. */
Test(lookup, lookups_given_up_on_are_capped) {
        int dns = private_name_server(true);
        int threads = thread_count(NULL);
        struct addrinfo *res = NULL;

        for (int i = 0; i < LOOKUP_RUNNING_MAX; i++) {
                Waiter w = { .give_up_at = 2 }; /* given up once started */
                lookup_set_waiter(count_and_maybe_give_up, &w);
                cr_assert_eq(lookup_addrinfo("hellod-lookup.test", "9999", &hints, &res), LOOKUP_ABANDONED);
        }
        cr_assert_eq(thread_count(NULL), threads + LOOKUP_RUNNING_MAX);
        /* Each thread names itself as it starts: give them the time to. */
        for (int i = 0; i < 100 && thread_count("hellod-lookup") < LOOKUP_RUNNING_MAX; i++)
                usleep(50000);
        cr_assert_eq(thread_count("hellod-lookup"), LOOKUP_RUNNING_MAX);
        Waiter w = { 0 };
        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_addrinfo("hellod-lookup.test", "9999", &hints, &res), LOOKUP_BUSY);
        cr_assert_eq(w.calls, 1, "the waiter was asked %u times: once before, never while waiting", w.calls);
        cr_assert(strstr(lookup_strerror(LOOKUP_BUSY), "still running"));
        cr_assert_eq(lookup_addrinfo("127.0.0.1", "9999", &hints, &res), 0);
        freeaddrinfo(res);
        close(dns);
}

/* --- users and groups ----------------------------------------------------------------- */

/* private_directory: this process's user and group lookups from now on: /etc/passwd and
 * /etc/group only, or (FAILING) then tests/nss's module, which blocks every name that reaches
 * it but those starting with "hellod-unavail" (failed at once, EIO). */
static void private_directory(bool failing) {
        const char *dirs = getenv("LD_LIBRARY_PATH");
        char module[PATH_MAX];
        struct stat st;

        /* nscd answers before nsswitch.conf is read, from the host's configuration */
        cr_assert_neq(access("/run/nscd/socket", F_OK), 0,
                      "nscd runs (/run/nscd/socket): it would answer in place of the test's nsswitch.conf");
        cr_assert_not_null(dirs, "LD_LIBRARY_PATH must name the directory of libnss_hellodstall.so.2 (meson sets it)");
        snprintf(module, sizeof(module), "%.*s/libnss_hellodstall.so.2", (int) strcspn(dirs, ":"), dirs);
        cr_assert_eq(stat(module, &st), 0, "%s: %s", module, strerror(errno));
        private_namespaces(0);
        bind_over("/etc/nsswitch.conf", failing ? "passwd: files hellodstall\ngroup: files hellodstall\nhosts: files\n"
                                                : "passwd: files\ngroup: files\nhosts: files\n");
}

/* root and its group are in the files: answered (through the lookup thread), the waiter asked
 * before the lookup starts. */
Test(lookup, a_user_and_group_in_the_files_are_answered) {
        Waiter w = { 0 };
        uid_t uid = 1;
        gid_t gid = 1;
        char why[256] = "";

        private_directory(true);
        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_identity("root", NULL, &uid, &gid, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(uid, 0);
        cr_assert_eq(gid, 0);
        cr_assert_geq(w.calls, 1);
        cr_assert_eq(lookup_identity("root", "root", &uid, &gid, why, sizeof(why)), 0, "%s", why);
}

/* Numeric IDs, the group given, ask no name service: read at once on the caller's thread,
 * even with a directory that never answers. */
Test(lookup, numeric_ids_are_read_at_once_on_the_callers_thread) {
        Waiter w = { 0 };
        int threads;
        uid_t uid = 1;
        gid_t gid = 1;
        char why[256] = "";

        private_directory(true);
        threads = thread_count(NULL);
        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_identity("4242", "4243", &uid, &gid, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(uid, 4242);
        cr_assert_eq(gid, 4243);
        cr_assert_eq(w.calls, 0);
        cr_assert_eq(thread_count(NULL), threads);
}

/* A group whose entry outgrows the first buffer (1 KiB) is read whole all the same. */
Test(lookup, a_large_group_entry_is_read) {
        char *etc_group = NULL, line[8192];
        size_t size = 0;
        FILE *f = open_memstream(&etc_group, &size);
        FILE *real = fopen("/etc/group", "re");
        uid_t uid;
        gid_t gid = 0;
        char why[256] = "";

        cr_assert(f && real);
        while (fgets(line, sizeof(line), real))
                fputs(line, f);
        fclose(real);
        fputs("hellod-big:x:4244:", f);
        for (int i = 0; i < 600; i++) /* about 8 KiB of members */
                fprintf(f, "%shellod-member-%03d", i ? "," : "", i);
        fputs("\n", f);
        fclose(f);
        private_directory(false);
        bind_over("/etc/group", etc_group);
        free(etc_group);
        cr_assert_eq(lookup_identity("root", "hellod-big", &uid, &gid, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(gid, 4244);
}

/* A name no source has: unknown, said as such (the file is at fault, not the service). */
Test(lookup, an_unknown_user_is_unknown) {
        uid_t uid;
        gid_t gid;
        char why[256] = "";

        private_directory(false);
        cr_assert_eq(lookup_identity("no-such-user-hellod", NULL, &uid, &gid, why, sizeof(why)), -ESRCH);
        cr_assert_str_eq(why, "unknown user 'no-such-user-hellod'");
        cr_assert_eq(lookup_identity("root", "no-such-group-hellod", &uid, &gid, why, sizeof(why)), -ESRCH);
        cr_assert_str_eq(why, "unknown group 'no-such-group-hellod'");
}

/* A directory that fails (EIO) is the service's fault: -EAGAIN, with its reason. */
Test(lookup, a_failing_directory_is_a_transient_failure) {
        uid_t uid;
        gid_t gid;
        char why[256] = "";

        private_directory(true);
        cr_assert_eq(lookup_identity("hellod-unavail-user", NULL, &uid, &gid, why, sizeof(why)), -EAGAIN, "%s", why);
        cr_assert_str_eq(why, "cannot look user 'hellod-unavail-user' up: Input/output error");
        cr_assert_eq(lookup_identity("root", "hellod-unavail-group", &uid, &gid, why, sizeof(why)), -EAGAIN, "%s", why);
        cr_assert_str_eq(why, "cannot look group 'hellod-unavail-group' up: Input/output error");
}

/* A directory that never answers: the waiter runs while the lookup does and ends it, and the
 * lookup's thread goes on alone. The next lookup of a name the files have is not held up by it
 * (the reentrant lookups share no lock: getpwnam()'s would be held by the stuck thread). */
Test(lookup, a_directory_that_never_answers_is_given_up_on) {
        Waiter w = { .give_up_at = 3 }; /* once before the start, twice while it runs */
        uid_t uid = 1;
        gid_t gid = 1;
        char why[256] = "";

        private_directory(true);
        lookup_set_waiter(count_and_maybe_give_up, &w);
        cr_assert_eq(lookup_identity("hellod-stuck", NULL, &uid, &gid, why, sizeof(why)), LOOKUP_ABANDONED);
        cr_assert_str_eq(why, "lookup given up");
        cr_assert_eq(w.calls, 3);
        for (int i = 0; i < 100 && thread_count("hellod-lookup") < 1; i++)
                usleep(50000);
        cr_assert_eq(thread_count("hellod-lookup"), 1, "the given-up lookup's thread goes on");

        Waiter patient = { .give_up_at = 50 }; /* 5 s: a held lock fails the test, not hangs it */
        lookup_set_waiter(count_and_maybe_give_up, &patient);
        cr_assert_eq(lookup_identity("root", "root", &uid, &gid, why, sizeof(why)), 0, "%s", why);
        cr_assert_eq(uid, 0);
}
