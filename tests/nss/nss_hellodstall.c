/* libnss_hellodstall.so.2: a name service module that fails as a directory server (LDAP,
 * sssd) that went away does. A test names it after "files" in an nsswitch.conf of its own
 * (passwd: files hellodstall), with LD_LIBRARY_PATH naming this directory; a name that is not
 * in /etc/passwd or /etc/group then reaches it, and
 * - one starting with "hellod-unavail" fails at once, the service unavailable (EIO);
 * - the user "hellod-slow" is answered after 2 s, as root (uid 0, gid 0: hellod stays root
 *   and says so, and the test's files stay readable), as a slow server answers;
 * - any other blocks its lookup for good, as glibc's lookups do against a server that takes
 *   the connection and never answers.
 * A test fixture: never installed. */
#include <errno.h>
#include <grp.h>
#include <nss.h>
#include <poll.h>
#include <pwd.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#define UNAVAIL_PREFIX "hellod-unavail"
#define SLOW_USER "hellod-slow"

/* glibc finds these by name (_nss_SERVICE_FUNCTION); no header declares them. */
enum nss_status _nss_hellodstall_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t size,
                                            int *errnop);
_Noreturn enum nss_status _nss_hellodstall_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t size,
                                                      int *errnop);
enum nss_status _nss_hellodstall_getgrnam_r(const char *name, struct group *gr, char *buf, size_t size,
                                            int *errnop);

static _Noreturn void stall(void) {
        for (;;)
                (void) poll(NULL, 0, -1);
}

static enum nss_status answer(const char *name, int *errnop) {
        if (strncmp(name, UNAVAIL_PREFIX, strlen(UNAVAIL_PREFIX)) != 0)
                stall();
        *errnop = EIO;
        return NSS_STATUS_UNAVAIL;
}

/* slow_root: PW, the slow user's entry, its strings in BUF, after 2 s. */
static enum nss_status slow_root(const char *name, struct passwd *pw, char *buf, size_t size, int *errnop) {
        static const char fields[] = "x\0\0/\0/usr/sbin/nologin";
        size_t name_size = strlen(name) + 1;
        struct timespec two_seconds = { .tv_sec = 2 };

        if (size < name_size + sizeof(fields)) {
                *errnop = ERANGE;
                return NSS_STATUS_TRYAGAIN;
        }
        while (nanosleep(&two_seconds, &two_seconds) < 0 && errno == EINTR)
                ;
        memcpy(buf, name, name_size);
        memcpy(buf + name_size, fields, sizeof(fields));
        *pw = (struct passwd) { .pw_name = buf, .pw_passwd = buf + name_size, .pw_uid = 0, .pw_gid = 0,
                                .pw_gecos = buf + name_size + 2, .pw_dir = buf + name_size + 3,
                                .pw_shell = buf + name_size + 5 };
        return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_hellodstall_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t size,
                                            int *errnop) {
        if (strcmp(name, SLOW_USER) == 0)
                return slow_root(name, pw, buf, size, errnop);
        return answer(name, errnop);
}

_Noreturn enum nss_status _nss_hellodstall_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t size,
                                                      int *errnop) {
        (void) uid, (void) pw, (void) buf, (void) size, (void) errnop;
        stall();
}

enum nss_status _nss_hellodstall_getgrnam_r(const char *name, struct group *gr, char *buf, size_t size,
                                            int *errnop) {
        (void) gr, (void) buf, (void) size;
        return answer(name, errnop);
}
