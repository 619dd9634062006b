/* notify: sd_notify() wrappers; failures are logged at debug level and otherwise ignored,
 * since the daemon serves the same with or without a service manager. */
#include "notify.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
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

void notify_extend_timeout(uint64_t usec) {
        int r = sd_notifyf(false, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long) usec);

        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

uint64_t notify_watchdog_usec(void) {
        uint64_t usec = 0;

        /* false: keep WATCHDOG_USEC in the environment; nothing is exec'd anyway. */
        return sd_watchdog_enabled(false, &usec) > 0 ? usec : 0;
}

void notify_watchdog(void) {
        send_state("WATCHDOG=1");
}

/* FDNAME_MAX in systemd's fdset.h. */
#define FDNAME_MAX 255

bool notify_fdname_valid(const char *name) {
        size_t n = strlen(name);

        if (n == 0 || n > FDNAME_MAX)
                return false;
        for (const char *p = name; *p; p++)
                if (*p <= ' ' || *p >= 0x7f || *p == ':')
                        return false;
        return true;
}

/* send_with_fds: the per-connection model's threads take SIGURG without SA_RESTART while they
 * serve, and they store and remove their connections themselves (handover = "always"). The
 * message is one datagram on a Unix socket, which goes whole, descriptors with it, or not at
 * all: a send the signal ended sent nothing, and is made again. */
static int send_with_fds(const char *msg, const int *fds, unsigned n_fds) {
        int r;

        do
                r = sd_pid_notify_with_fds(0, false, msg, fds, n_fds);
        while (r == -EINTR);
        return r > 0 ? 1 : r;
}

int notify_fdstore_add(int fd, const char *name) {
        char msg[32 + FDNAME_MAX];

        if (fd < 0 || !notify_fdname_valid(name))
                return -EINVAL;
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
        /* One descriptor, one name, one message: FDNAME= names every descriptor sent with it. */
        return send_with_fds(msg, &fd, 1);
}

int notify_fdstore_remove(const char *name) {
        char msg[32 + FDNAME_MAX];

        if (!notify_fdname_valid(name))
                return -EINVAL;
        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        return send_with_fds(msg, NULL, 0);
}
