/* hellod-socket-generator: a systemd generator (systemd.generator(7)) that makes hellod.socket
 * listen where hellod.conf's `listen`, `port` and `backlog` say, and sizes hellod.service's
 * file descriptor store from its `max_connections`. systemd runs it at boot and on every
 * `systemctl daemon-reload`, with its output directory (/run/systemd/generator) as argv[1]; it
 * writes DROPIN_DIR/DROPIN_FILE and DROPIN_SERVICE_DIR/DROPIN_FILE there and nothing anywhere
 * else.
 *
 * A configuration it cannot use (absent, unreadable, invalid) leaves both units as packaged; a
 * host name in `listen` leaves hellod.socket as packaged (the service's drop-in is still
 * written). Either way it says why, and still exits 0: a failing generator would only add a
 * second message, and the socket must come up either way. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "conf.h"
#include "dropin.h"

#include "config.h"

#define PROGRAM "hellod-socket-generator"
#define JOURNAL_SOCKET "/run/systemd/journal/socket"
#define MESSAGE_MAX 1024

/* to_kmsg: what systemd.generator(7) asks of generators. Never blocks. */
static bool to_kmsg(int level, const char *msg) {
        int fd = open("/dev/kmsg", O_WRONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);

        if (fd < 0)
                return false;
        int n = dprintf(fd, "<%d>" PROGRAM "[%d]: %s\n", LOG_DAEMON | level, (int) getpid(), msg);
        close(fd);
        return n > 0;
}

/* to_journal: containers have no /dev/kmsg (systemd-nspawn hides it), so there the journal's
 * native socket is the way in. Non-blocking: when journald is not there yet (the first run at
 * boot) or not reading, the message is dropped rather than the boot held up. */
static bool to_journal(int level, const char *msg) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET };
        char buf[MESSAGE_MAX + 128];
        int n, fd;
        ssize_t sent;

        n = snprintf(buf, sizeof(buf), "PRIORITY=%d\nSYSLOG_FACILITY=%d\nSYSLOG_IDENTIFIER=" PROGRAM "\nMESSAGE=%s\n",
                     level, LOG_DAEMON >> 3, msg);
        if (n < 0 || (size_t) n >= sizeof(buf))
                return false;
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return false;
        sent = sendto(fd, buf, (size_t) n, MSG_NOSIGNAL | MSG_DONTWAIT, (const struct sockaddr *) &sa, sizeof(sa));
        close(fd);
        return sent == n;
}

/* say: one message. Under systemd (which sets $SYSTEMD_SCOPE for generators since 251) PID 1
 * connects our stderr to /dev/null, so the kernel log or the journal it is; run by hand (or
 * by the tests) stderr alone, so that nothing lands in the host's logs. */
static void say(int level, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void say(int level, const char *format, ...) {
        char msg[MESSAGE_MAX];
        va_list ap;

        va_start(ap, format);
        vsnprintf(msg, sizeof(msg), format, ap);
        va_end(ap);
        /* One line: the native protocol ends a field at a newline. */
        for (char *p = msg; *p; p++)
                if (*p == '\n')
                        *p = ' ';
        if (getenv("SYSTEMD_SCOPE") && (to_kmsg(level, msg) || to_journal(level, msg)))
                return;
        fprintf(stderr, PROGRAM ": %s\n", msg);
}

static int write_all(int fd, const char *text) {
        size_t left = strlen(text);

        while (left > 0) {
                ssize_t n = write(fd, text, left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                text += n;
                left -= (size_t) n;
        }
        return 0;
}

/* write_dropin: DIR/SUBDIR/DROPIN_FILE holds TEXT. O_NOFOLLOW throughout: the output
 * directory is ours to write, and only it. */
static int write_dropin(const char *dir, const char *subdir, const char *text) {
        int dfd = -1, fd = -1, r;

        dfd = open(dir, O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (mkdirat(dfd, subdir, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                goto out;
        }
        r = openat(dfd, subdir, O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (r < 0) {
                r = -errno;
                goto out;
        }
        close(dfd);
        dfd = r;
        fd = openat(dfd, DROPIN_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        r = write_all(fd, text);
        if (close(fd) < 0 && r >= 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(dfd, DROPIN_FILE, 0); /* half a drop-in is worse than none */
out:
        close(dfd);
        return r;
}

/* write_service_dropin: the file descriptor store's size; 0, or EXIT_FAILURE once it said why. */
static int write_service_dropin(const char *dir, const Conf *conf) {
        char *text = NULL;
        int r = dropin_service_format(conf, &text);

        if (r >= 0) {
                r = write_dropin(dir, DROPIN_SERVICE_DIR, text);
                free(text);
        }
        if (r < 0) {
                say(LOG_ERR, "cannot write %s/" DROPIN_SERVICE_DIR "/" DROPIN_FILE ": %s", dir, strerror(-r));
                return EXIT_FAILURE;
        }
        return 0;
}

/* write_socket_dropin: the socket's addresses; 0, or EXIT_FAILURE once it said why. A configuration the
 * socket cannot follow is said, and not a failure. */
static int write_socket_dropin(const char *dir, const Conf *conf) {
        char err[1024];
        char *text = NULL;
        int r = dropin_format(conf, &text, err, sizeof(err));

        if (r < 0) {
                say(LOG_WARNING, "%s; hellod.socket keeps its packaged addresses (port %u) until this is fixed", err,
                    CONF_DEFAULT_PORT);
                return 0;
        }
        r = write_dropin(dir, DROPIN_DIR, text);
        free(text);
        if (r < 0) {
                say(LOG_ERR, "cannot write %s/" DROPIN_DIR "/" DROPIN_FILE ": %s", dir, strerror(-r));
                return EXIT_FAILURE;
        }
        return 0;
}

int main(int argc, char *argv[]) {
        /* The tests point it at their own files; systemd passes no environment of this name. */
        const char *path = getenv("HELLOD_GENERATOR_CONFIG");
        char err[1024];
        Conf *conf = NULL;
        int r;

        /* systemd passes three directories (normal, early, late); one is the debugging form. */
        if ((argc != 2 && argc != 4) || argv[1][0] != '/') {
                fprintf(stderr, "usage: " PROGRAM " NORMAL-DIR [EARLY-DIR LATE-DIR] (absolute paths)\n");
                return EXIT_FAILURE;
        }
        if (!path || !*path)
                path = CONF_DEFAULT_PATH;

        r = conf_load(path, &conf, err, sizeof(err));
        if (r == -ENOENT) {
                say(LOG_NOTICE, "%s not found: hellod.socket and hellod.service keep their packaged settings", path);
                return EXIT_SUCCESS;
        }
        if (r < 0) {
                say(LOG_WARNING, "%s; hellod.socket keeps its packaged addresses (port %u) and hellod.service its "
                    "packaged settings until this is fixed", err, CONF_DEFAULT_PORT);
                return EXIT_SUCCESS;
        }
        int code = write_socket_dropin(argv[1], conf);
        int code_service = write_service_dropin(argv[1], conf);
        conf_unref(conf);
        return code ? code : code_service ? code_service : EXIT_SUCCESS;
}
