/* preflight: what starting hellod checks before it serves, in one place, so that `hellod -t`
 * and the start itself reach the same verdict. */
#pragma once

#include <stddef.h>

#include "conf.h"
#include "privileges.h" /* Identity */

/* Past this, the worst case of max_connections sessions earns a warning. */
#define PREFLIGHT_MEMORY_WARN_BYTES (1ULL << 30)
/* Descriptors the daemon needs besides its clients: signalfd, reserve, stdio, journal, the
 * notify socket... */
#define PREFLIGHT_FD_OVERHEAD 32

/* preflight_check: what would make the start fail: `user` and `group` must exist, `listen`
 * names resolve (with SOCKETS_PASSED, socket activation, those of PROXY entries only: the
 * others are only compared with systemd's sockets, with a warning where they cannot be:
 * listeners_resolve_passed), and no address is listed twice, with and without proxy_protocol.
 * Returns 0 with the IDs `user` and `group` name in *RET_IDENTITY (when they are set and
 * RET_IDENTITY is not NULL), or -EINVAL with ERR naming the file, the line, the key and the
 * fix (-EAGAIN: a listen name, the user or the group got no answer, or the directory failed,
 * for now; -ECANCELED: a lookup was given up, hellod is stopping). */
int preflight_check(const Conf *conf, const char *path, bool sockets_passed, Identity *ret_identity, char *err,
                    size_t err_size);

/* preflight_warn: logs what is allowed but maybe not meant: max_connections beyond the
 * open-files limit (the hard one: the daemon raises its soft limit to it), or a worst case of
 * sessions above PREFLIGHT_MEMORY_WARN_BYTES or the machine's memory. Returns the number of
 * warnings. */
unsigned preflight_warn(const Conf *conf);
/* preflight_warn_reloaded: the same for CONF taken up by a reload, counted with the worker
 * model and backend hellod STARTED with (a change of those takes a restart). */
unsigned preflight_warn_reloaded(const Conf *conf, const Conf *started);
