/* log: leveled one-line messages on stderr, written with one write(2) each so that lines
 * from concurrent threads never interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

static int max_level = LOG_INFO; /* read and written with __atomic builtins */

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
        [LOG_ERR] = "error",       [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",       [LOG_DEBUG] = "debug",
};

int log_level_from_string(const char *s) {
        /* Only the five levels an administrator picks from; emerg..crit are for the code. */
        for (int level = LOG_ERR; level <= LOG_DEBUG; level++)
                if (strcasecmp(s, level_names[level]) == 0)
                        return level;
        return -EINVAL;
}

const char *log_level_to_string(int level) {
        if (level < LOG_EMERG || level > LOG_DEBUG)
                return "unknown";
        return level_names[level];
}

void log_set_max_level(int level) {
        __atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int log_get_max_level(void) {
        return __atomic_load_n(&max_level, __ATOMIC_RELAXED);
}

static size_t format_timestamp(char *buf, size_t size) {
        struct timespec ts;
        struct tm tm;

        if (clock_gettime(CLOCK_REALTIME, &ts) < 0 || !localtime_r(&ts.tv_sec, &tm))
                return 0;
        size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
        if (n == 0)
                return 0;
        int m = snprintf(buf + n, size - n, ".%03ld ", ts.tv_nsec / 1000000);
        return m > 0 && (size_t) m < size - n ? n + (size_t) m : n;
}

/* A message must stay one line: a stray control byte (from a caller that forgot to escape)
 * becomes '?' instead of forging a second log line. */
static void flatten(char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        s[i] = '?';
}

int log_internal(int level, int errnum, const char *format, ...) {
        char line[LOG_LINE_MAX];
        size_t n = format_timestamp(line, sizeof(line));
        int saved_errno = errno;
        va_list ap;

        errnum = abs(errnum);
        n += (size_t) snprintf(line + n, sizeof(line) - n, "%s: ", log_level_to_string(level));

        va_start(ap, format);
        int m = vsnprintf(line + n, sizeof(line) - n, format, ap);
        va_end(ap);
        if (m > 0) {
                size_t body = (size_t) m < sizeof(line) - n ? (size_t) m : sizeof(line) - n - 1;
                flatten(line + n, body);
                n += body;
        }

        if (errnum != 0 && n < sizeof(line) - 1) {
                char ebuf[128];
                const char *text = strerror_r(errnum, ebuf, sizeof(ebuf));
                m = snprintf(line + n, sizeof(line) - n, ": %s", text);
                if (m > 0)
                        n = (size_t) m < sizeof(line) - n ? n + (size_t) m : sizeof(line) - 1;
        }

        if (n >= sizeof(line) - 1)
                n = sizeof(line) - 2; /* truncated: keep room for the newline */
        line[n++] = '\n';

        /* Best effort: a log line that cannot be written has nowhere else to go. */
        ssize_t w = write(STDERR_FILENO, line, n);
        (void) w;

        errno = saved_errno;
        return -errnum;
}
