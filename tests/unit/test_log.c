/* test_log: a message cut at the line's limit is cut between characters, never inside a
 * UTF-8 sequence (journalctl shows a MESSAGE= that is not valid UTF-8 as "[blob data]"), and
 * one that fits is left whole. Each line is read back from stderr, a pipe here. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* The longest message a line holds (LOG_LINE_MAX in log.c, less its NUL). */
#define MESSAGE_MAX 2047

static int reader = -1;

/* capture: stderr into a pipe, with room for a line of any length here; logging for a
 * console (no timestamp: "hellod: warning: " and the message). */
static void capture(void) {
        int fds[2];

        cr_assert_eq(pipe(fds), 0);
        cr_assert_geq(dup2(fds[1], STDERR_FILENO), 0);
        close(fds[1]);
        reader = fds[0];
        log_open_console();
}

TestSuite(log, .init = capture);

/* read_line: the next line written to stderr, without its prefix and newline. */
static size_t read_line(char *buf, size_t size) {
        static const char prefix[] = "hellod: warning: ";
        size_t n = 0;

        while (n < size - 1) {
                ssize_t r = read(reader, buf + n, 1);
                cr_assert_eq(r, 1, "stderr ended before a line did");
                if (buf[n] == '\n')
                        break;
                n++;
        }
        buf[n] = '\0';
        cr_assert(n >= strlen(prefix) && memcmp(buf, prefix, strlen(prefix)) == 0, "no prefix: %.40s", buf);
        memmove(buf, buf + strlen(prefix), n - strlen(prefix) + 1);
        return n - strlen(prefix);
}

/* valid_utf8: S[0..N) is well-formed UTF-8 (sequences complete; lengths from the lead byte). */
static bool valid_utf8(const char *s, size_t n) {
        for (size_t i = 0; i < n;) {
                unsigned char c = (unsigned char) s[i];
                size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
                if (len == 0 || i + len > n)
                        return false;
                for (size_t k = 1; k < len; k++)
                        if (((unsigned char) s[i + k] & 0xc0) != 0x80)
                                return false;
                i += len;
        }
        return true;
}

Test(log, a_cut_never_splits_a_character) {
        static const char *const characters[] = { "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80" }; /* é € 😀 */
        char message[MESSAGE_MAX + 16], line[4096];

        for (size_t c = 0; c < sizeof(characters) / sizeof(characters[0]); c++)
                for (size_t before = MESSAGE_MAX - 4; before <= MESSAGE_MAX; before++) {
                        size_t len = strlen(characters[c]);
                        memset(message, 'a', before);
                        memcpy(message + before, characters[c], len);
                        message[before + len] = '\0';
                        log_warning("%s", message);
                        size_t n = read_line(line, sizeof(line));
                        cr_assert(valid_utf8(line, n), "%zu-byte character after %zu bytes: cut inside it (%zu kept)",
                                  len, before, n);
                        /* Cut before the character, or kept whole when it fits. */
                        size_t want = before + len <= MESSAGE_MAX ? before + len : before;
                        cr_assert_eq(n, want, "%zu-byte character after %zu bytes: %zu kept, %zu wanted", len,
                                     before, n, want);
                }
}

/* A message cut short gets no scrap of the error text after it ("...aa: B"). */
Test(log, a_cut_message_has_no_error_scrap) {
        char message[MESSAGE_MAX + 8], line[4096];

        memset(message, 'a', MESSAGE_MAX - 1);
        memcpy(message + MESSAGE_MAX - 1, "\xe2\x82\xac", 4); /* cut before it: one byte free */
        (void) log_full_errno(LOG_WARNING, EBADF, "%s", message);
        size_t n = read_line(line, sizeof(line));
        cr_assert_eq(n, MESSAGE_MAX - 1, "%zu kept, ending \"%s\"", n, line + (n > 8 ? n - 8 : 0));
        cr_assert_eq(line[n - 1], 'a');
}

Test(log, a_message_that_fits_is_whole) {
        char line[4096];

        log_warning("caf\xc3\xa9 %s", "\xe2\x82\xac\xf0\x9f\x98\x80");
        size_t n = read_line(line, sizeof(line));
        cr_assert_str_eq(line, "caf\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80");
        cr_assert_eq(n, strlen(line));
}

/* log_one_line: what goes to STATUS= as a log line would: cut at a character's end, control
 * bytes (a newline would split the notify message) as '?'. */
Test(log, one_line_is_cut_at_a_character_and_flattened) {
        char dst[8];

        cr_assert_eq(log_one_line(dst, sizeof(dst), "a\nb\tc"), 5);
        cr_assert_str_eq(dst, "a?b?c");
        /* "abcde" then U+20AC (3 bytes): 7 bytes fit, the euro sign does not, whole or cut. */
        cr_assert_eq(log_one_line(dst, sizeof(dst), "abcde\xe2\x82\xac"), 5);
        cr_assert_str_eq(dst, "abcde");
        cr_assert_eq(log_one_line(dst, sizeof(dst), "abcd\xe2\x82\xac"), 7);
        cr_assert_str_eq(dst, "abcd\xe2\x82\xac");
}
