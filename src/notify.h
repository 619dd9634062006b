/* notify: the service manager's side channel (sd_notify): readiness, status, reload,
 * stopping and the watchdog. Every call is a harmless no-op outside systemd. */
#pragma once

#include <stdint.h>

void notify_ready(const char *status);
void notify_status(const char *status);
/* notify_reloading: RELOADING=1 with MONOTONIC_USEC= (systemd ≥ 253 wants it; 252 ignores it). */
void notify_reloading(void);
void notify_stopping(void);

/* notify_watchdog_usec: the watchdog interval systemd expects pings within; 0: none. */
uint64_t notify_watchdog_usec(void);
void notify_watchdog(void);
