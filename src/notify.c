/* notify: the sd_notify protocol over one socket kept open from the start; failures are
 * logged at debug level and otherwise ignored, since the daemon serves the same with or
 * without a service manager. */
#include "notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "fdname.h"
#include "log.h"

/* sd_notify() opens a socket for every message. At the descriptor limit every message then
 * fails, the hand-over's and the store's (handover = "always") with them: hellod keeps one
 * socket open instead, taken at the start (notify_open), and sends each message on it. */
#define NOTIFY_SNDBUF (8 * 1024 * 1024)

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addr_len;

int notify_open(void) {
        const char *path = getenv("NOTIFY_SOCKET");

        if (!path || !*path)
                return 0;
        size_t n = strlen(path);
        /* A file system path, or an abstract one ('@'); systemd ≥ 254's "vsock:" is not ours. */
        if ((path[0] != '/' && path[0] != '@') || n >= sizeof(notify_addr.sun_path))
                return -EAFNOSUPPORT;
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* Room for a burst of messages while PID 1 is busy (handover = "always" stores and
         * removes a connection each), as libsystemd gives each of its sockets: 8 MiB, forced
         * past net.core.wmem_max while hellod is still root. */
        int size = NOTIFY_SNDBUF;
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        notify_addr.sun_family = AF_UNIX;
        memcpy(notify_addr.sun_path, path, n);
        if (path[0] == '@')
                notify_addr.sun_path[0] = '\0';
        notify_addr_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
        notify_fd = fd;
        return 1;
}

/* send_message: MSG, with N_FDS descriptors, in one datagram. The per-connection model's
 * threads take SIGURG without SA_RESTART while they serve, and they store and remove their
 * connections themselves (handover = "always"): a datagram goes whole, descriptors with it, or
 * not at all, so a send the signal ended sent nothing, and is made again. Returns 1 when sent,
 * 0 outside systemd, or a negative errno. Without a socket of its own (notify_open() failed, or
 * was not called), libsystemd's, opened for the message. */
static int send_message(const char *msg, const int *fds, unsigned n_fds) {
        int r;

        if (notify_fd < 0) {
                do
                        r = sd_pid_notify_with_fds(0, false, msg, fds, n_fds);
                while (r == -EINTR);
                return r > 0 ? 1 : r;
        }
        union {
                struct cmsghdr header;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = { 0 };
        struct iovec iov = { .iov_base = (void *) msg, .iov_len = strlen(msg) };
        struct msghdr mh = { .msg_name = &notify_addr, .msg_namelen = notify_addr_len, .msg_iov = &iov, .msg_iovlen = 1 };

        if (n_fds > 1)
                return -EINVAL; /* one descriptor a message is all hellod sends */
        if (n_fds == 1) {
                mh.msg_control = control.buf;
                mh.msg_controllen = sizeof(control.buf);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), fds, sizeof(int));
        }
        do
                r = (int) sendmsg(notify_fd, &mh, MSG_NOSIGNAL);
        while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 1;
}

static void send_state(const char *state) {
        int r = send_message(state, NULL, 0);

        if (r < 0)
                log_debug_errno(r, "sd_notify failed, ignoring");
}

static void send_statef(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void send_statef(const char *format, ...) {
        char msg[NOTIFY_STATUS_MAX + 64]; /* STATUS= text and what comes with it */
        va_list ap;

        va_start(ap, format);
        int n = vsnprintf(msg, sizeof(msg), format, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof(msg)) {
                log_debug("sd_notify message too long, not sent");
                return;
        }
        send_state(msg);
}

void notify_ready(const char *status) {
        send_statef("READY=1\nSTATUS=%s", status);
}

void notify_status(const char *status) {
        send_statef("STATUS=%s", status);
}

void notify_reloading(void) {
        send_statef("RELOADING=1\nSTATUS=Reloading configuration\nMONOTONIC_USEC=%" PRIu64, now_usec());
}

void notify_stopping(void) {
        send_state("STOPPING=1\nSTATUS=Stopping");
}

void notify_extend_timeout(uint64_t usec) {
        send_statef("EXTEND_TIMEOUT_USEC=%llu", (unsigned long long) usec);
}

uint64_t notify_watchdog_usec(void) {
        uint64_t usec = 0;

        /* false: keep WATCHDOG_USEC in the environment; nothing is exec'd anyway. */
        return sd_watchdog_enabled(false, &usec) > 0 ? usec : 0;
}

void notify_watchdog(void) {
        send_state("WATCHDOG=1");
}

int notify_fdstore_add(int fd, const char *name, bool keep_on_hangup) {
        char msg[48 + FDNAME_MAX];

        if (fd < 0 || !fdname_valid(name))
                return -EINVAL;
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s%s", name, keep_on_hangup ? "\nFDPOLL=0" : "");
        /* One descriptor, one name, one message: FDNAME= names every descriptor sent with it. */
        return send_message(msg, &fd, 1);
}

int notify_fdstore_remove(const char *name) {
        char msg[32 + FDNAME_MAX];

        if (!fdname_valid(name))
                return -EINVAL;
        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        return send_message(msg, NULL, 0);
}
