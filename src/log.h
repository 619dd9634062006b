/* log: leveled, one-line log messages; stderr now, a second (journal) backend plugs in here. */
#pragma once

#include <stdbool.h>
#include <stdlib.h>
#include <syslog.h>

/* log_level_from_string: "error", "warning", "notice", "info" or "debug" → LOG_*; -EINVAL otherwise. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);

void log_set_max_level(int level);
int log_get_max_level(void);
static inline bool log_enabled(int level) {
        return level <= log_get_max_level();
}

/* log_internal: formats and writes one line. A nonzero ERRNUM appends ": <strerror>".
 * Returns -ERRNUM (so that callers can `return log_error_errno(r, ...)`), or 0. */
int log_internal(int level, int errnum, const char *format, ...) __attribute__((format(printf, 3, 4)));

#define log_full_errno(level, errnum, ...)                                                         \
        (log_enabled(level) ? log_internal((level), (errnum), __VA_ARGS__) : -abs(errnum))
#define log_full(level, ...) ((void) log_full_errno((level), 0, __VA_ARGS__))

#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)

#define log_error_errno(r, ...) log_full_errno(LOG_ERR, (r), __VA_ARGS__)
#define log_warning_errno(r, ...) log_full_errno(LOG_WARNING, (r), __VA_ARGS__)
#define log_debug_errno(r, ...) log_full_errno(LOG_DEBUG, (r), __VA_ARGS__)
