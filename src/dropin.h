/* dropin: hellod.conf's `listen`, `port` and `backlog` as a drop-in for hellod.socket, and its
 * `max_connections` as one for hellod.service. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"

/* Where the generator puts it, relative to its output directory. */
#define DROPIN_DIR "hellod.socket.d"
#define DROPIN_FILE "50-hellod-conf.conf"
#define DROPIN_SERVICE_DIR "hellod.service.d"

/* Room in the file descriptor store beyond max_connections: the hand-over state memfd, and a
 * margin for a max_connections lowered while the stored connections of the old value are
 * still being resumed (journald's unit keeps 128 beyond its 4096 streams for the same). */
#define DROPIN_FDSTORE_SLACK 64

/* dropin_format: the [Socket] drop-in that makes systemd listen where CONF says: an empty
 * `ListenStream=` (dropping the packaged one), one `ListenStream=` per address, `Backlog=`.
 * Without a `listen` key (the built-in "0.0.0.0" and "::") it is `ListenStream=PORT`, the
 * packaged form: one dual-stack socket, or IPv4 alone on a host without IPv6. An explicit
 * list gets `BindIPv6Only=ipv6-only`, as hellod's own IPv6 sockets are, so that "0.0.0.0"
 * and "::" can both be listed, and `FreeBind=yes`, so that an address the network brings
 * up after sockets.target can be bound at boot.
 * Only literal addresses and "localhost" (127.0.0.1 and ::1) can be written: a generator
 * runs before the network and must not block on DNS. Any other host name is refused.
 * Returns 0 and the text in *RET (free() it), -EINVAL with the reason in ERR, or -ENOMEM. */
int dropin_format(const Conf *conf, char **ret, char *err, size_t err_size);

/* dropin_fdstore_max: the `FileDescriptorStoreMax=` that lets every conversation be handed to
 * the next process (docs/zero-downtime.md): MAX_CONNECTIONS, twice that for a thread per
 * connection (PER_CONNECTION: its ended conversations linger outside their slots, up to
 * max_connections of them, lingerer.h), plus DROPIN_FDSTORE_SLACK. */
unsigned dropin_fdstore_max(unsigned max_connections, bool per_connection);

/* dropin_service_format: the [Service] drop-in that sizes the file descriptor store for CONF
 * (dropin_fdstore_max). Returns 0 and the text in *RET (free() it), or -ENOMEM. */
int dropin_service_format(const Conf *conf, char **ret);
