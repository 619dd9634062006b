/* log: leveled one-line messages with optional structured fields, to the journal or stderr. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <syslog.h>

/* Stable MESSAGE_IDs of lifecycle events; systemd/hellod.catalog explains each. */
#define MESSAGE_ID_STARTED "b3a4e5d6c7f84a1b9e2d3c4b5a697801"
#define MESSAGE_ID_RELOADED "5c1e2f3a4b5d4c6e8f7a9b0c1d2e3f40"
#define MESSAGE_ID_STOPPING "8e7d6c5b4a394f2e9d1c0b2a3f4e5d60"
#define MESSAGE_ID_REFUSED "2f3e4d5c6b7a4890a1b2c3d4e5f60718"
#define MESSAGE_ID_HANDED_OVER "7d1c9a4e3b2f4c8a9e6d5b4a3c2f1e07"
#define MESSAGE_ID_RESUMED "4a8e2c6f1d3b4e9a8c7f6e5d4b3a2918"

typedef enum LogTarget {
        LOG_TARGET_AUTO,    /* the journal when stderr is connected to it, else stderr */
        LOG_TARGET_JOURNAL, /* sd_journal_send(), with structured fields */
        LOG_TARGET_STDERR,  /* one line each: "<N>message" under systemd, else timestamped */
} LogTarget;

/* A journal field: NAME (upper case, e.g. "HELLOD_PEER") and its value. */
typedef struct LogField {
        const char *name;
        const char *value;
} LogField;

/* log_level_from_string: "error", "warning", "notice", "info" or "debug" → LOG_*; -EINVAL otherwise. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);
int log_target_from_string(const char *s);

/* log_open: picks the backend; AUTO is resolved here, once, from JOURNAL_STREAM. When the
 * journal cannot be reached, stderr is used instead, with a warning. */
void log_open(LogTarget target);
/* log_open_console: stderr for a person at a terminal (hellod -t): "hellod: warning: ...",
 * no timestamps. */
void log_open_console(void);

/* log_one_line: SRC into DST (SIZE bytes, at least 1) as a message is kept: cut where it must
 * be at a UTF-8 character's end, control bytes as '?'. Returns its length. For text that goes
 * elsewhere as a log line does (STATUS=). */
size_t log_one_line(char *dst, size_t size, const char *src);

void log_set_max_level(int level);
int log_get_max_level(void);
static inline bool log_enabled(int level) {
        return level <= log_get_max_level();
}

/* log_struct_internal: one message; FIELDS go to the journal as they are (stderr shows only
 * the message, which should carry the same facts). A nonzero ERRNUM appends ": <strerror>".
 * Returns -|ERRNUM| (so that callers can `return log_error_errno(r, ...)`). */
int log_struct_internal(int level, int errnum, const char *message_id, const LogField *fields, size_t n_fields,
                        const char *format, ...) __attribute__((format(printf, 6, 7)));

#define log_full_errno(level, errnum, ...)                                                               \
        (log_enabled(level) ? log_struct_internal((level), (errnum), NULL, NULL, 0, __VA_ARGS__) : -abs(errnum))
#define log_full(level, ...) ((void) log_full_errno((level), 0, __VA_ARGS__))

#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)

#define log_error_errno(r, ...) log_full_errno(LOG_ERR, (r), __VA_ARGS__)
#define log_warning_errno(r, ...) log_full_errno(LOG_WARNING, (r), __VA_ARGS__)
#define log_debug_errno(r, ...) log_full_errno(LOG_DEBUG, (r), __VA_ARGS__)

/* log_struct: a message with a MESSAGE_ID (or NULL) and fields. */
#define log_struct(level, message_id, fields, n_fields, ...)                                             \
        ((void) (log_enabled(level) ? log_struct_internal((level), 0, (message_id), (fields), (n_fields),  \
                                                          __VA_ARGS__)                                     \
                                    : 0))
