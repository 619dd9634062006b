/* privileges: setgroups → setgid → setuid, each verified. */
#include "privileges.h"

#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"

/* A passwd or group entry's strings: enough for most; a group with thousands of members may
 * need more, up to the cap. */
#define ENTRY_BUFFER_MIN 1024
#define ENTRY_BUFFER_MAX (1024 * 1024)

/* parse_id: NAME as a decimal ID ("65534"), or -1. */
static long long parse_id(const char *name) {
        char *end;

        if (name[0] < '0' || name[0] > '9')
                return -1;
        errno = 0;
        unsigned long long v = strtoull(name, &end, 10);
        if (errno != 0 || *end != '\0' || v >= (unsigned long long) UINT32_MAX)
                return -1;
        return (long long) v;
}

/* not_found: whether getpwnam_r()'s or getgrnam_r()'s R says only that the name has no entry
 * (getpwnam_r(3): 0, ENOENT, ESRCH, EBADF or EPERM); anything else is the name service
 * failing (EIO from a directory server that went away, say), not the file. */
static bool not_found(int r) {
        return r == 0 || r == ENOENT || r == ESRCH || r == EBADF || r == EPERM;
}

/* with_entry_buffer: QUERY (a getpwnam_r()-like call that keeps what it found in CTX) given
 * a buffer for the entry's strings, doubled while it says ERANGE, up to the cap; its error
 * number. */
static int with_entry_buffer(int (*query)(void *ctx, char *buf, size_t size), void *ctx) {
        size_t size = ENTRY_BUFFER_MIN;
        char *buf = malloc(size);
        int r = ENOMEM;

        while (buf && (r = query(ctx, buf, size)) == ERANGE && size < ENTRY_BUFFER_MAX) {
                char *bigger = realloc(buf, size * 2);
                if (!bigger) {
                        r = ENOMEM;
                        break;
                }
                buf = bigger;
                size *= 2;
        }
        free(buf);
        return r;
}

typedef struct UserQuery {
        const char *name;
        long long id; /* -1: look NAME up */
        bool found;
        uid_t uid;
        gid_t gid;
} UserQuery;

static int user_query(void *ctx, char *buf, size_t size) {
        UserQuery *q = ctx;
        struct passwd entry, *pw = NULL;
        int r = q->id >= 0 ? getpwuid_r((uid_t) q->id, &entry, buf, size, &pw)
                           : getpwnam_r(q->name, &entry, buf, size, &pw);

        if (pw) {
                q->found = true;
                q->uid = pw->pw_uid;
                q->gid = pw->pw_gid;
        }
        return r;
}

typedef struct GroupQuery {
        const char *name;
        bool found;
        gid_t gid;
} GroupQuery;

static int group_query(void *ctx, char *buf, size_t size) {
        GroupQuery *q = ctx;
        struct group entry, *gr = NULL;
        int r = getgrnam_r(q->name, &entry, buf, size, &gr);

        if (gr) {
                q->found = true;
                q->gid = gr->gr_gid;
        }
        return r;
}

/* entry_missing: why KIND NAME has no entry (R from its lookup), said in ERR: -EAGAIN when the
 * name service failed, -ESRCH when the name is unknown. */
static int entry_missing(const char *kind, const char *name, int r, char *err, size_t err_size) {
        if (!not_found(r)) {
                snprintf(err, err_size, "cannot look %s '%s' up: %s", kind, name, strerror(r));
                return -EAGAIN;
        }
        snprintf(err, err_size, "unknown %s '%s'", kind, name);
        return -ESRCH;
}

/* The reentrant lookups: lookup.c runs these on threads of its own, and a lookup given up on
 * may still run when the next starts (getpwnam()'s static entry and its lock would be shared). */
static int resolve_user(const char *user, bool need_gid, uid_t *ret_uid, gid_t *ret_gid, char *err,
                        size_t err_size) {
        UserQuery q = { .name = user, .id = parse_id(user) };
        int r = 0;

        /* A numeric ID with the group given needs no entry: no name service to wait for. */
        if (q.id < 0 || need_gid)
                r = with_entry_buffer(user_query, &q);
        if (q.found) {
                *ret_uid = q.uid;
                *ret_gid = q.gid;
                return 0;
        }
        if (q.id >= 0 && not_found(r)) { /* a numeric ID need not have a name; its group must then be given */
                *ret_uid = (uid_t) q.id;
                *ret_gid = (gid_t) -1;
                return 0;
        }
        return entry_missing("user", user, r, err, err_size);
}

static int resolve_group(const char *group, gid_t *ret, char *err, size_t err_size) {
        long long id = parse_id(group);
        GroupQuery q = { .name = group };
        int r;

        if (id >= 0) {
                *ret = (gid_t) id;
                return 0;
        }
        r = with_entry_buffer(group_query, &q);
        if (q.found) {
                *ret = q.gid;
                return 0;
        }
        return entry_missing("group", group, r, err, err_size);
}

bool privileges_numeric(const char *user, const char *group) {
        return (!user || parse_id(user) >= 0) && (!group || parse_id(group) >= 0) && (group || !user);
}

static int fail(int r, const char *what, char *err, size_t err_size) {
        static const char needs[] = " (to become 'user', hellod needs CAP_SETGID and CAP_SETUID, and no system "
                                    "call filter against them)";

        snprintf(err, err_size, "%s: %s%s", what, strerror(-r), r == -EPERM ? needs : "");
        return r;
}

int privileges_resolve(const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid, char *err,
                       size_t err_size) {
        uid_t uid = geteuid();
        gid_t gid = getegid(), user_gid = (gid_t) -1;
        int r;

        /* conf refuses this; setgid() alone would leave us root with every capability. */
        if (group && !user) {
                snprintf(err, err_size, "'group' is set without 'user'");
                return -EINVAL;
        }
        if (user && (r = resolve_user(user, !group, &uid, &user_gid, err, err_size)) < 0)
                return r;
        if (group) {
                if ((r = resolve_group(group, &gid, err, err_size)) < 0)
                        return r;
        } else if (user_gid != (gid_t) -1)
                gid = user_gid;
        else if (user) {
                snprintf(err, err_size, "user '%s' has no passwd entry: set 'group' too", user);
                return -EINVAL;
        }
        *ret_uid = uid;
        *ret_gid = gid;
        return 0;
}

int privileges_drop(const char *user, const char *group, const Identity *to, char *err, size_t err_size) {
        if (geteuid() != 0) {
                if (user || group)
                        log_notice("not started as root: 'user' and 'group' are not used");
                return 0;
        }
        if (!user && !group) {
                log_warning("running as root: set 'user' and 'group' in the configuration to drop privileges");
                return 0;
        }
        uid_t uid = to->uid;
        gid_t gid = to->gid;

        if (uid == 0) {
                /* user = "root" (or uid 0): root stays root, whatever the group; nothing to drop. */
                log_warning("running as root: 'user' is root; set 'user' and 'group' to an unprivileged "
                            "account to drop privileges");
                return 0;
        }

        /* Order matters: groups and gid can only be changed while still root. */
        if (setgroups(1, &gid) < 0)
                return fail(-errno, "setgroups", err, err_size);
        if (setresgid(gid, gid, gid) < 0)
                return fail(-errno, "setresgid", err, err_size);
        if (setresuid(uid, uid, uid) < 0)
                return fail(-errno, "setresuid", err, err_size);

        /* Trust, but verify: every ID changed, and root is out of reach. */
        uid_t ru, eu, su;
        gid_t rg, eg, sg;
        if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 || ru != uid || eu != uid || su != uid ||
            rg != gid || eg != gid || sg != gid) {
                snprintf(err, err_size, "the user and group IDs did not all change");
                return -EPERM;
        }
        if (setuid(0) == 0 || seteuid(0) == 0) {
                snprintf(err, err_size, "root privileges could be regained after dropping them");
                return -EPERM;
        }
        log_notice("dropped privileges to uid %ju, gid %ju", (uintmax_t) uid, (uintmax_t) gid);
        /* Not refused: a site may mean it. But group root opens what is root's to the group
         * (files of mode 0640 root:root, /etc/shadow's group on some systems). */
        if (gid == 0)
                log_warning("running with group root (gid 0): set 'group' (or the user's primary group) "
                            "to an unprivileged group");
        return 0;
}

/* glibc has no wrappers for capget() and capset(), and libcap is not worth a dependency for
 * clearing every set. */
int privileges_drop_capabilities(char *err, size_t err_size) {
        struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct sets[_LINUX_CAPABILITY_U32S_3] = { 0 };
        bool held = false;

        if (geteuid() == 0)
                return 0;
        if (syscall(SYS_capget, &header, sets) < 0) {
                int r = -errno;
                snprintf(err, err_size, "capget: %s", strerror(-r));
                return r;
        }
        /* The ambient set is within the permitted and the inheritable ones. */
        for (size_t i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
                held = held || sets[i].effective || sets[i].permitted || sets[i].inheritable;
        if (!held)
                return 0;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
                int r = -errno;
                snprintf(err, err_size, "clearing the ambient capabilities: %s", strerror(-r));
                return r;
        }
        memset(sets, 0, sizeof(sets));
        if (syscall(SYS_capset, &header, sets) < 0) {
                int r = -errno;
                snprintf(err, err_size, "capset: %s%s", strerror(-r),
                         r == -EPERM ? " (a system call filter? allow capset)" : "");
                return r;
        }
        return 1;
}
