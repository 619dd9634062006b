/* privileges: dropping root after the listeners are bound, as sshd and nginx do. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Identity: the IDs a `user` and `group` name. */
typedef struct Identity {
        uid_t uid;
        gid_t gid;
} Identity;

/* privileges_drop: when running as root and USER or GROUP is set (either may be NULL; a
 * missing group is the user's primary group), switches to TO (what they were resolved to, by
 * the start's check) for good: supplementary groups, then group, then user, then checks that
 * root cannot be regained; warns of a group that is root's (gid 0). Returns 0 (also when there
 * was nothing to do), or a negative errno with the reason in ERR. */
int privileges_drop(const char *user, const char *group, const Identity *to, char *err, size_t err_size);

/* privileges_drop_capabilities: a process not started as root that holds capabilities (a
 * unit's AmbientCapabilities=CAP_NET_BIND_SERVICE, for a port below 1024) gives every one up,
 * ambient, permitted, effective and inheritable, once its listeners are bound. Capabilities
 * belong to each thread: the caller must be the only thread that serves (the engine's threads
 * inherit the empty sets). Returns 1 when it gave some up, 0 when it held none (or runs as
 * root: privileges_drop's business), or a negative errno with the reason in ERR. */
int privileges_drop_capabilities(char *err, size_t err_size);

/* privileges_numeric: whether privileges_resolve(USER, GROUP) asks no name service (numeric
 * IDs, the group's given: a numeric user's own group is in its passwd entry). */
bool privileges_numeric(const char *user, const char *group);

/* privileges_resolve: the IDs USER and GROUP name (numeric IDs too; GROUP NULL: the user's own
 * group), without changing anything: for the start-time checks. Returns 0, or a negative errno
 * with "unknown user 'x'" or the like in ERR (-EAGAIN: the name service failed, e.g. a
 * directory server that does not answer, rather than the name being unknown). Thread-safe:
 * lookup.c calls it on threads of its own. */
int privileges_resolve(const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid, char *err,
                       size_t err_size);
