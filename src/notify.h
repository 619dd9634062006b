/* notify: the service manager's side channel (sd_notify): readiness, status, reload,
 * stopping, the watchdog and the file descriptor store. Every call is a harmless no-op
 * outside systemd. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* notify_open: the socket every message goes out on, for $NOTIFY_SOCKET; 1, 0 outside systemd,
 * or a negative errno (the messages then open a socket each, as sd_notify() does). Called once,
 * at the start, before any other thread runs. */
int notify_open(void);

/* The longest STATUS= text that notify_ready() and notify_status() send whole: a longer one
 * is not sent at all (and READY=1 with it). */
#define NOTIFY_STATUS_MAX 768
void notify_ready(const char *status);
void notify_status(const char *status);
/* notify_reloading: RELOADING=1 with MONOTONIC_USEC= (systemd ≥ 253 wants it; 252 ignores it). */
void notify_reloading(void);
void notify_stopping(void);
/* notify_extend_timeout: EXTEND_TIMEOUT_USEC=: the stop may take USEC more from now (a long
 * hand-over), whatever TimeoutStopSec= says (systemd ≥ 236). */
void notify_extend_timeout(uint64_t usec);

/* notify_watchdog_usec: the watchdog interval systemd expects pings within; 0: none. */
uint64_t notify_watchdog_usec(void);
void notify_watchdog(void);

/* The file descriptor store (sd_pid_notify_with_fds(3), FileDescriptorStoreMax= in
 * systemd.service(5)): what hellod parks there comes back to the next process of the service
 * after a restart or a crash, in LISTEN_FDS after the listeners. Names are not unique in the
 * store, so every descriptor gets its own (handover.h lists them).
 *
 * notify_fdstore_add: FDSTORE=1 with FDNAME=NAME and a duplicate of FD (the caller keeps
 * FD). PID 1 then drops a stored connection by itself once it reports EPOLLHUP or EPOLLERR: a
 * client that reset, or one that closed its side after hellod closed its own (EPOLLHUP is both
 * sides shut), which is what a live conversation the client ended needs. Not so one that has
 * ended (its FIN sent, or to be sent once its last replies are out) and lingers: dropped with
 * the client's last bytes unread, its last copy would close with a reset and destroy the
 * replies still on their way. So with KEEP_ON_HANGUP (FDPOLL=0, systemd ≥ 246), PID 1 keeps it
 * until this process removes it or the next one takes it up. A memfd cannot be polled and is kept regardless. PID 1 drops, with a log line of its own, what goes beyond
 * FileDescriptorStoreMax=: a success here does not mean it was kept.
 * notify_fdstore_remove: FDSTOREREMOVE=1 with FDNAME=NAME: PID 1 closes every stored
 * descriptor of that name.
 * Both return 1 when sent, 0 outside systemd (no $NOTIFY_SOCKET), -EINVAL for a name systemd
 * would refuse (fdname_valid() in fdname.h), or another negative errno. Non-logging. */
int notify_fdstore_add(int fd, const char *name, bool keep_on_hangup);
int notify_fdstore_remove(const char *name);
