/* log: leveled messages to the journal (with structured fields) or to stderr, one write each
 * so that lines from concurrent threads do not interleave (a line is shorter than PIPE_BUF;
 * only a terminal takes part of one, and the rest follows in a second write). */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#define LOG_JOURNAL_SOCKET "/run/systemd/journal/socket"

#define LOG_LINE_MAX 2048
#define LOG_FIELD_MAX 256
#define LOG_FIELDS_MAX 12

/* Written at start-up (log_open) and, for the level, at each reload (log_set_max_level);
 * read by every thread. */
static int max_level = LOG_INFO;
static LogTarget target = LOG_TARGET_STDERR;
static bool stderr_prefixed; /* "<N>" prefixes: stderr is read by journald or syslog */
static bool stderr_console;  /* "hellod: LEVEL: " prefixes: a person reads it (hellod -t), after
                              * any "<N>" */

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert",     [LOG_CRIT] = "crit",
        [LOG_ERR] = "error",       [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",       [LOG_DEBUG] = "debug",
};

static const char *const target_names[] = {
        [LOG_TARGET_AUTO] = "auto",
        [LOG_TARGET_JOURNAL] = "journal",
        [LOG_TARGET_STDERR] = "stderr",
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

int log_target_from_string(const char *s) {
        for (int t = LOG_TARGET_AUTO; t <= LOG_TARGET_STDERR; t++)
                if (strcmp(s, target_names[t]) == 0)
                        return t;
        return -EINVAL;
}

/* stderr_is_journal: systemd connects stderr to the journal and says so in JOURNAL_STREAM
 * ("DEVICE:INODE"); a redirected stderr no longer matches (systemd.exec(5)). */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

/* journal_reachable: whether journald's socket takes datagrams; 0 or a negative errno. Without
 * it, sd_journal_sendv() fails on every message, and a daemon told to log there would run blind. */
static int journal_reachable(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = LOG_JOURNAL_SOCKET };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), r = 0;

        if (fd < 0)
                return -errno;
        if (connect(fd, (const struct sockaddr *) &sa, sizeof(sa)) < 0)
                r = -errno;
        (void) close(fd);
        return r;
}

void log_open(LogTarget t) {
        int r = 0;

        if (t == LOG_TARGET_AUTO)
                t = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        if (t == LOG_TARGET_JOURNAL && (r = journal_reachable()) < 0)
                t = LOG_TARGET_STDERR;
        target = t;
        /* Under a service manager, whatever reads stderr understands "<N>" priorities and
         * stamps the time itself. */
        stderr_prefixed = getenv("JOURNAL_STREAM") || getenv("INVOCATION_ID");
        if (r < 0)
                log_warning_errno(r, "cannot reach the journal at %s, logging to stderr instead",
                                  LOG_JOURNAL_SOCKET);
}

void log_open_console(void) {
        log_open(LOG_TARGET_STDERR);
        stderr_console = true;
        /* Run by ExecReload=, stderr is the journal: the priority goes in front of the words. */
        stderr_prefixed = stderr_is_journal();
}

void log_set_max_level(int level) {
        __atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int log_get_max_level(void) {
        return __atomic_load_n(&max_level, __ATOMIC_RELAXED);
}

/* A message must stay one line: a stray control byte (from a caller that forgot to escape)
 * becomes '?' instead of forging a second log line. */
static void flatten(char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        s[i] = '?';
}

/* utf8_boundary: N, or less, so that S[0..N) does not end inside a UTF-8 sequence: a message
 * cut at the line's limit loses the whole character (journalctl shows a MESSAGE= that is not
 * valid UTF-8 as "[blob data]"). Bytes that are no UTF-8 are left as they are. */
static size_t utf8_boundary(const char *s, size_t n) {
        size_t lead = n;

        while (lead > 0 && n - lead < 3 && ((unsigned char) s[lead - 1] & 0xc0) == 0x80)
                lead--; /* over continuation bytes, to the lead byte's end */
        if (lead == 0)
                return n;
        unsigned char c = (unsigned char) s[lead - 1];
        size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return n - (lead - 1) < len ? lead - 1 : n;
}

size_t log_one_line(char *dst, size_t size, const char *src) {
        size_t n = strnlen(src, size - 1);

        if (src[n] != '\0')
                n = utf8_boundary(src, n);
        memcpy(dst, src, n);
        dst[n] = '\0';
        flatten(dst, n);
        return n;
}

/* format_message: the message with ": strerror" appended, flattened; returns its length. */
static size_t format_message(char *buf, size_t size, int errnum, const char *format, va_list ap)
        __attribute__((format(printf, 4, 0)));

static size_t format_message(char *buf, size_t size, int errnum, const char *format, va_list ap) {
        int m = vsnprintf(buf, size, format, ap);
        bool cut = m >= 0 && (size_t) m >= size;
        size_t n = m < 0 ? 0 : cut ? utf8_boundary(buf, size - 1) : (size_t) m;

        if (errnum != 0 && !cut && n < size - 1) {
                char ebuf[128];
                m = snprintf(buf + n, size - n, ": %s", strerror_r(errnum, ebuf, sizeof(ebuf)));
                n = m < 0 ? n : (size_t) m < size - n ? n + (size_t) m : utf8_boundary(buf, size - 1);
        }
        buf[n] = '\0';
        flatten(buf, n);
        return n;
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

/* write_whole: best effort (a log line that cannot be written has nowhere else to go), but
 * not cut short by a signal: the per-connection model's threads take SIGURG without
 * SA_RESTART while they serve, and stderr may be a full pipe. */
static void write_whole(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return;
                p += w;
                n -= (size_t) w;
        }
}

static void write_stderr(int level, const char *message, size_t len) {
        char line[LOG_LINE_MAX + 64];
        size_t n;

        n = stderr_prefixed ? (size_t) snprintf(line, sizeof(line), "<%d>", level) : 0;
        if (stderr_console)
                n += (size_t) snprintf(line + n, sizeof(line) - n, "hellod: %s%s",
                                       level <= LOG_ERR ? "" : log_level_to_string(level), level <= LOG_ERR ? "" : ": ");
        else if (!stderr_prefixed) {
                n = format_timestamp(line, sizeof(line));
                n += (size_t) snprintf(line + n, sizeof(line) - n, "%s: ", log_level_to_string(level));
        }
        if (len > sizeof(line) - n - 1)
                len = sizeof(line) - n - 1;
        memcpy(line + n, message, len);
        n += len;
        line[n++] = '\n';

        write_whole(STDERR_FILENO, line, n);
}

static void write_journal(int level, int errnum, const char *message_id, const LogField *fields,
                          size_t n_fields, const char *message) {
        char priority[16], errno_field[24], id_field[48];
        char field_text[LOG_FIELDS_MAX][LOG_FIELD_MAX];
        char *field_heap[LOG_FIELDS_MAX] = { NULL }; /* a field longer than LOG_FIELD_MAX */
        struct iovec iov[4 + 1 + LOG_FIELDS_MAX];
        size_t n = 0;

        iov[n++] = (struct iovec) { .iov_base = (void *) message, .iov_len = strlen(message) };
        snprintf(priority, sizeof(priority), "PRIORITY=%d", level);
        iov[n++] = (struct iovec) { .iov_base = priority, .iov_len = strlen(priority) };
        iov[n++] = (struct iovec) { .iov_base = (void *) "SYSLOG_IDENTIFIER=hellod",
                                    .iov_len = strlen("SYSLOG_IDENTIFIER=hellod") };
        if (message_id) {
                snprintf(id_field, sizeof(id_field), "MESSAGE_ID=%s", message_id);
                iov[n++] = (struct iovec) { .iov_base = id_field, .iov_len = strlen(id_field) };
        }
        if (errnum != 0) {
                snprintf(errno_field, sizeof(errno_field), "ERRNO=%d", errnum);
                iov[n++] = (struct iovec) { .iov_base = errno_field, .iov_len = strlen(errno_field) };
        }
        for (size_t i = 0; i < n_fields && i < LOG_FIELDS_MAX; i++) {
                char *text = field_text[i];
                int m = snprintf(text, LOG_FIELD_MAX, "%s=%s", fields[i].name, fields[i].value);
                if (m < 0)
                        continue;
                /* A whole value, or `journalctl FIELD=VALUE` would miss the entry (a long path);
                 * cut only when there is no memory for it. */
                if ((size_t) m >= LOG_FIELD_MAX && (field_heap[i] = malloc((size_t) m + 1)) != NULL)
                        (void) snprintf(text = field_heap[i], (size_t) m + 1, "%s=%s", fields[i].name, fields[i].value);
                else if ((size_t) m >= LOG_FIELD_MAX)
                        m = LOG_FIELD_MAX - 1;
                iov[n++] = (struct iovec) { .iov_base = text, .iov_len = (size_t) m };
        }
        int r;
        do /* a signal, as for write_whole() */
                r = sd_journal_sendv(iov, (int) n);
        while (r == -EINTR);
        for (size_t i = 0; i < LOG_FIELDS_MAX; i++)
                free(field_heap[i]);
        if (r < 0)
                write_stderr(level, message + strlen("MESSAGE="), strlen(message) - strlen("MESSAGE="));
}

int log_struct_internal(int level, int errnum, const char *message_id, const LogField *fields, size_t n_fields,
                        const char *format, ...) {
        char message[sizeof("MESSAGE=") - 1 + LOG_LINE_MAX];
        int saved_errno = errno;
        size_t prefix = sizeof("MESSAGE=") - 1;
        va_list ap;

        errnum = abs(errnum);
        memcpy(message, "MESSAGE=", prefix);
        va_start(ap, format);
        size_t len = format_message(message + prefix, sizeof(message) - prefix, errnum, format, ap);
        va_end(ap);

        if (target == LOG_TARGET_JOURNAL)
                write_journal(level, errnum, message_id, fields, n_fields, message);
        else
                write_stderr(level, message + prefix, len);

        errno = saved_errno;
        return -errnum;
}
