/* proto: framing and replies, bytes in → bytes out. */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>

#define CRLF "\r\n"
#define EXIT_WORD "exit"

int proto_init(Proto *p, const Conf *conf) {
        *p = (Proto) {
                .conf = conf,
                .greeting_len = strlen(conf->greeting),
                .prefix_len = strlen(conf->reply_prefix),
                .suffix_len = strlen(conf->reply_suffix),
        };
        /* The pending-line buffer comes when a line is first split across reads: most
         * connections (and every idle one) never need it. */
        return 0;
}

void proto_done(Proto *p) {
        free(p->pending);
        p->pending = NULL;
        p->pending_len = 0;
}

size_t proto_output_min(const Conf *conf) {
        size_t reply = strlen(conf->reply_prefix) + conf->max_line_length + strlen(conf->reply_suffix);
        size_t greeting = strlen(conf->greeting);
        size_t longest = reply > greeting ? reply : greeting;

        return longest + sizeof(CRLF) - 1 + PROTO_ERR_MAX;
}

size_t proto_input_max(const Conf *conf) {
        return (size_t) conf->max_line_length + sizeof(CRLF);
}

void proto_greeting(Proto *p, Buf *out) {
        buf_append(out, p->conf->greeting, p->greeting_len);
        if (p->conf->framing == FRAMING_LINE)
                buf_append(out, CRLF, 2);
}

static bool is_exit(const char *a, size_t a_len, const char *b, size_t b_len) {
        /* The message may straddle the pending buffer (a) and the new input (b). */
        const size_t word_len = sizeof(EXIT_WORD) - 1;

        if (a_len + b_len != word_len)
                return false;
        /* A is NULL while no line was ever carried over: no memcmp() on it then. */
        return (a_len == 0 || memcmp(a, EXIT_WORD, a_len) == 0) &&
               (b_len == 0 || memcmp(b, &EXIT_WORD[a_len], b_len) == 0);
}

static size_t reply_size(const Proto *p, size_t name_len) {
        size_t n = p->prefix_len + name_len + p->suffix_len;

        return p->conf->framing == FRAMING_LINE ? n + 2 : n;
}

/* append_reply: the name is the concatenation of A and B (either may be empty). */
static void append_reply(Proto *p, const char *a, size_t a_len, const char *b, size_t b_len, Buf *out) {
        buf_append(out, p->conf->reply_prefix, p->prefix_len);
        buf_append(out, a, a_len);
        buf_append(out, b, b_len);
        buf_append(out, p->conf->reply_suffix, p->suffix_len);
        if (p->conf->framing == FRAMING_LINE)
                buf_append(out, CRLF, 2);
        p->lines++;
}

/* end_with: appends ERR text when the reason has one; the caller checked PROTO_ERR_MAX room. */
static void end_with(Proto *p, ProtoEnd reason, Buf *out) {
        const char *text = NULL;

        switch (reason) {
        case PROTO_END_TOO_LONG:
                text = PROTO_ERR_TOO_LONG;
                break;
        case PROTO_END_IDLE:
                text = PROTO_ERR_IDLE;
                break;
        case PROTO_END_SHUTDOWN:
                text = PROTO_ERR_SHUTDOWN;
                break;
        default:
                break;
        }
        if (text)
                buf_append(out, text, strlen(text));
        p->end = reason;
        p->pending_len = 0;
}

/* respond: one complete message made of A and B, terminator already removed.
 * Returns false when OUT lacks room (nothing was done), true otherwise. */
static bool respond(Proto *p, const char *a, size_t a_len, const char *b, size_t b_len, Buf *out,
                    ProtoStatus *status) {
        size_t len = a_len + b_len;

        if (len > p->conf->max_line_length) {
                if (buf_room(out) < PROTO_ERR_MAX)
                        return false;
                end_with(p, PROTO_END_TOO_LONG, out);
                *status = PROTO_CLOSE;
                return true;
        }
        if (is_exit(a, a_len, b, b_len)) {
                end_with(p, PROTO_END_EXIT, out);
                *status = PROTO_CLOSE;
                return true;
        }
        if (len == 0) /* empty lines are not messages: no reply */
                return true;
        if (buf_room(out) < reply_size(p, len))
                return false;
        append_reply(p, a, a_len, b, b_len, out);
        return true;
}

/* answer: respond(), counting the message once it is dealt with (a message that did not fit
 * comes back with the next feed). */
static bool answer(Proto *p, const char *a, size_t a_len, const char *b, size_t b_len, Buf *out,
                   ProtoStatus *status) {
        if (!respond(p, a, a_len, b, b_len, out, status))
                return false;
        p->messages++;
        return true;
}

/* strip_cr: drops the '\r' of a "\r\n" terminator from the message A+B. */
static void strip_cr(const char *a, size_t *a_len, const char *b, size_t *b_len) {
        if (*b_len > 0) {
                if (b[*b_len - 1] == '\r')
                        (*b_len)--;
        } else if (*a_len > 0 && a[*a_len - 1] == '\r')
                (*a_len)--;
}

static size_t feed_line(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *status) {
        const size_t max_pending = (size_t) p->conf->max_line_length + 1;
        size_t i = 0;

        while (i < n) {
                const char *nl = memchr(in + i, '\n', n - i);

                if (!nl) {
                        /* An unterminated tail: carry it, unless it is already too long to
                         * ever become a valid line (only a final '\r' may exceed the limit). */
                        size_t rest = n - i;
                        size_t total = p->pending_len + rest;

                        if (total > max_pending || (total == max_pending && in[n - 1] != '\r')) {
                                if (buf_room(out) < PROTO_ERR_MAX)
                                        return i;
                                end_with(p, PROTO_END_TOO_LONG, out);
                                *status = PROTO_CLOSE;
                                return n;
                        }
                        /* Room for the longest line plus the '\r' that may precede its '\n'. */
                        if (!p->pending && !(p->pending = malloc(max_pending))) {
                                end_with(p, PROTO_END_NO_MEMORY, out);
                                *status = PROTO_CLOSE;
                                return n;
                        }
                        memcpy(p->pending + p->pending_len, in + i, rest);
                        p->pending_len = total;
                        return n;
                }

                size_t a_len = p->pending_len, b_len = (size_t) (nl - (in + i));
                strip_cr(p->pending, &a_len, in + i, &b_len);
                if (!answer(p, p->pending, a_len, in + i, b_len, out, status))
                        return i; /* output full: flush and feed from this line again */
                p->pending_len = 0;
                i = (size_t) (nl - in) + 1;
                if (*status == PROTO_CLOSE)
                        return n; /* bytes after exit or an error are discarded */
        }
        return n;
}

static size_t feed_chunk(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *status) {
        size_t len = n;

        /* One read is one message, as in the tutorial's server; an nc user's "\n" or
         * "\r\n" is not part of the name. */
        if (len > 0 && in[len - 1] == '\n') {
                len--;
                if (len > 0 && in[len - 1] == '\r')
                        len--;
        }
        if (!answer(p, "", 0, in, len, out, status))
                return 0;
        return n;
}

size_t proto_feed(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *ret_status) {
        *ret_status = PROTO_CONTINUE;
        if (p->end != PROTO_END_NONE) {
                *ret_status = PROTO_CLOSE;
                return n;
        }
        if (p->conf->framing == FRAMING_CHUNK)
                return feed_chunk(p, in, n, out, ret_status);
        return feed_line(p, in, n, out, ret_status);
}

void proto_eof(Proto *p, Buf *out) {
        ProtoStatus status = PROTO_CONTINUE;

        if (p->end != PROTO_END_NONE)
                return;
        if (p->pending_len > 0) {
                size_t a_len = p->pending_len, b_len = 0;

                strip_cr(p->pending, &a_len, "", &b_len);
                (void) answer(p, p->pending, a_len, "", 0, out, &status);
        }
        if (p->end == PROTO_END_NONE)
                end_with(p, PROTO_END_EOF, out);
}

void proto_abort(Proto *p, ProtoEnd reason, Buf *out) {
        if (p->end != PROTO_END_NONE)
                return;
        end_with(p, reason, out);
}

const char *proto_end_to_string(ProtoEnd end) {
        switch (end) {
        case PROTO_END_NONE:
                return "none";
        case PROTO_END_EXIT:
                return "exit";
        case PROTO_END_EOF:
                return "eof";
        case PROTO_END_TOO_LONG:
                return "line-too-long";
        case PROTO_END_IDLE:
                return "idle-timeout";
        case PROTO_END_SHUTDOWN:
                return "shutdown";
        case PROTO_END_NO_MEMORY:
                return "out-of-memory";
        }
        return "unknown";
}
