/* lookup: the name service's lookups (getaddrinfo(), and the user and group entries) made so
 * that they neither hold their caller past a bound nor keep it from its duties meanwhile.
 * glibc's lookups cannot be interrupted, and may take as long as the name server's or the
 * directory's timeouts add up to (minutes, with resolv.conf's options raised, or an LDAP server
 * gone). The main thread that reloads the configuration must keep feeding systemd's watchdog,
 * and must be able to stop, while a listen address or the user is looked up; so the lookup
 * runs on a thread of its own and the caller waits for it, calling the waiter
 * (lookup_set_waiter) every LOOKUP_TICK_MSEC.
 * A lookup given up on (the bound, or the waiter) finishes on its thread and frees itself. */
#pragma once

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define LOOKUP_TIMEOUT_SEC 30 /* nginx's resolver_timeout; glibc's default gives up after 10 s a server */
#define LOOKUP_TICK_MSEC 100
#define LOOKUP_RUNNING_MAX 4 /* threads looking up at once, most of them given up on */

/* Besides getaddrinfo()'s codes (negative): the lookup gave no answer within LOOKUP_TIMEOUT_SEC,
 * the waiter gave it up (hellod's does when it is to stop), or LOOKUP_RUNNING_MAX
 * lookups given up on still run. A numeric address is read at once, on the caller's thread. */
enum { LOOKUP_TIMED_OUT = 1, LOOKUP_ABANDONED = 2, LOOKUP_BUSY = 3 };

/* LookupWaiter: called on the waiting thread before a name is looked up and while the lookup
 * runs; false gives the lookup up. */
typedef bool (*LookupWaiter)(void *userdata);

/* lookup_set_waiter: WAITER (NULL: none) for the lookups the calling thread makes from now on. */
void lookup_set_waiter(LookupWaiter waiter, void *userdata);

/* lookup_addrinfo: getaddrinfo(HOST, SERVICE, HINTS, RES), bounded; 0 with *RES to
 * freeaddrinfo(), an EAI_ code (EAI_SYSTEM: see errno), or a LOOKUP_ code. */
int lookup_addrinfo(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res);

/* lookup_identity: privileges_resolve(USER, GROUP, RET_UID, RET_GID), bounded (numeric IDs
 * at once, on the caller's thread): 0, its negative errno (-EAGAIN: the name service failed,
 * not the file), -ENOMEM or another -errno when no lookup could start, or a LOOKUP_ code;
 * WHY says why. */
int lookup_identity(const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid, char *why,
                    size_t why_size);

/* lookup_strerror: what R (lookup_addrinfo()'s, with errno as it left it) means. */
const char *lookup_strerror(int r);

/* lookup_transient: whether R may well not recur (no answer for now; out of descriptors,
 * threads or memory): not a fault of the file. */
bool lookup_transient(int r);
