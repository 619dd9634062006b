/* notify: sd_notify() wrappers; failures are logged at debug level and otherwise ignored,
 * since the daemon serves the same with or without a service manager. */
#include "notify.h"

#include <stdbool.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"

static void send_state(const char *state) {
        int r = sd_notify(false, state);

        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

void notify_ready(const char *status) {
        int r = sd_notifyf(false, "READY=1\nSTATUS=%s", status);

        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

void notify_status(const char *status) {
        int r = sd_notifyf(false, "STATUS=%s", status);

        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

void notify_reloading(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        int r = sd_notifyf(false, "RELOADING=1\nSTATUS=Reloading configuration\nMONOTONIC_USEC=%llu",
                           (unsigned long long) ts.tv_sec * 1000000ULL + (unsigned long long) ts.tv_nsec / 1000u);
        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

void notify_stopping(void) {
        send_state("STOPPING=1\nSTATUS=Stopping");
}

uint64_t notify_watchdog_usec(void) {
        uint64_t usec = 0;

        /* false: keep WATCHDOG_USEC in the environment; nothing is exec'd anyway. */
        return sd_watchdog_enabled(false, &usec) > 0 ? usec : 0;
}

void notify_watchdog(void) {
        send_state("WATCHDOG=1");
}
