/* proto: framing and replies, bytes in → bytes out. */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>

#define CRLF "\r\n"
#define EXIT_WORD "exit"

/* Telnet command bytes (RFC 854; EOF, SUSP and ABORT from RFC 1184) and the one option
 * hellod treats apart, TIMING-MARK (RFC 860). */
enum {
        TELNET_EOF = 236, /* the lowest command byte */
        TELNET_ABORT = 238,
        TELNET_SE = 240,
        TELNET_BRK = 243,
        TELNET_IP = 244,
        TELNET_AO = 245,
        TELNET_AYT = 246,
        TELNET_SB = 250,
        TELNET_WILL = 251,
        TELNET_WONT = 252,
        TELNET_DO = 253,
        TELNET_DONT = 254,
        TELNET_IAC = 255,
        TELNET_OPT_TIMING_MARK = 6,
};
/* The visible evidence RFC 854 asks for in answer to Are You There. */
#define TELNET_AYT_ANSWER "[Yes]\r\n"

int proto_init(Proto *p, const Conf *conf) {
        *p = (Proto) {
                .conf = conf,
                .greeting_len = strlen(conf->greeting),
                .prefix_len = strlen(conf->reply_prefix),
                .suffix_len = strlen(conf->reply_suffix),
        };
        /* The pending-line buffer comes when a line is split across reads, and goes when it
         * is answered: most connections (and every idle one) never need it. */
        return 0;
}

int proto_resume(Proto *p, const char *pending, size_t pending_len, uint64_t lines, uint64_t messages, ProtoEnd end) {
        const size_t max_pending = (size_t) p->conf->max_line_length + 1;

        if (pending_len > 0 && (p->conf->framing != FRAMING_LINE || pending_len > max_pending))
                return -EINVAL;
        if (pending_len > 0) {
                if (!p->pending && !(p->pending = malloc(max_pending)))
                        return -ENOMEM;
                memcpy(p->pending, pending, pending_len);
        }
        p->pending_len = pending_len;
        p->lines = lines;
        p->messages = messages;
        p->end = end;
        p->input_after_end = end != PROTO_END_NONE; /* not carried over: assume the client goes on */
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

bool proto_line_too_long(const Conf *conf, size_t len, char last) {
        const size_t max_pending = (size_t) conf->max_line_length + 1;

        return len > max_pending || (len == max_pending && last != '\r');
}

static size_t feed_line(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *status) {
        const size_t max_pending = (size_t) p->conf->max_line_length + 1;
        size_t i = 0;

        while (i < n) {
                const char *nl = memchr(in + i, '\n', n - i);

                if (!nl) {
                        /* An unterminated tail: carry it, unless it is already too long to
                         * ever become a valid line. */
                        size_t rest = n - i;
                        size_t total = p->pending_len + rest;

                        if (proto_line_too_long(p->conf, total, in[n - 1])) {
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
                if (*status == PROTO_CLOSE) {
                        p->input_after_end = i < n;
                        return n; /* bytes after exit or an error are discarded */
                }
        }
        if (p->pending_len == 0) {
                /* The read ended at a line's end: the buffer of a line that came in pieces goes
                 * back, so that an idle session costs no more for it (max_line_length + 1
                 * bytes, resident as far as they were filled). Not per line: a read that ends
                 * in the middle of the next one needs it again. */
                free(p->pending);
                p->pending = NULL;
        }
        return n;
}

/*
 * Telnet in line framing. Commands are taken out of the byte stream before it is cut into
 * lines: they are never echoed, and a command in the middle of a line leaves the line whole.
 *   - IAC IP, AO, BRK, EOF and ABORT (telnet's Ctrl+C is IP, its Ctrl+\ BRK) end the
 *     session as `exit` does: no reply, an unterminated line and what follows are discarded.
 *   - Option negotiation is refused, as RFC 1143 asks of a side that enables nothing: DO gets
 *     WONT, WILL gets DONT, and WONT and DONT (which confirm the state hellod is already in)
 *     get nothing, so no two peers can loop. The exception is DO TIMING-MARK, answered with
 *     WILL TIMING-MARK (RFC 860): telnet sends it after Ctrl+C or Ctrl+Z and throws away all
 *     it receives until the answer comes, and since hellod answers in order, WILL is true.
 *   - IAC SB ... IAC SE is skipped; one longer than max_line_length ends the session as an
 *     overlong line does (a client that enabled nothing has nothing to subnegotiate).
 *   - IAC AYT gets "[Yes]"; the other commands (NOP, DM, GA, EC, EL, SUSP, ...) are dropped.
 *     SUSP (telnet's Ctrl+Z) among them: hellod has nothing to suspend, and ending the
 *     session would take away one the user meant to keep.
 *   - IAC IAC is one 0xFF data byte. IAC before a byte that is no command (below 236) is
 *     dropped and the byte is data: a stray 0xFF never swallows a newline.
 * Every answer waits, like a reply, until the output buffer has room for it.
 */

static bool telnet_answer(Buf *out, const void *answer, size_t n) {
        if (buf_room(out) < n)
                return false;
        buf_append(out, answer, n);
        return true;
}

/* telnet_command: the byte C after an IAC (C >= TELNET_EOF, C != IAC). Returns false when OUT
 * lacks room for the answer (nothing was done). */
static bool telnet_command(Proto *p, unsigned char c, Buf *out, ProtoStatus *status) {
        switch (c) {
        case TELNET_IP:
        case TELNET_AO:
        case TELNET_BRK:
        case TELNET_EOF:
        case TELNET_ABORT:
                end_with(p, PROTO_END_INTERRUPT, out);
                *status = PROTO_CLOSE;
                return true;
        case TELNET_AYT:
                if (!telnet_answer(out, TELNET_AYT_ANSWER, sizeof(TELNET_AYT_ANSWER) - 1))
                        return false;
                break;
        case TELNET_SB:
                p->telnet = PROTO_TELNET_SB;
                p->telnet_sb_len = 0;
                return true;
        case TELNET_WILL:
        case TELNET_WONT:
        case TELNET_DO:
        case TELNET_DONT:
                p->telnet = PROTO_TELNET_OPTION;
                p->telnet_verb = c;
                return true;
        default:
                break;
        }
        p->telnet = PROTO_TELNET_DATA;
        return true;
}

/* telnet_option: the option byte after WILL/WONT/DO/DONT. Returns false when OUT lacks room. */
static bool telnet_option(Proto *p, unsigned char option, Buf *out) {
        unsigned char reply[3] = { TELNET_IAC, 0, option };

        if (p->telnet_verb == TELNET_DO)
                reply[1] = option == TELNET_OPT_TIMING_MARK ? TELNET_WILL : TELNET_WONT;
        else if (p->telnet_verb == TELNET_WILL)
                reply[1] = TELNET_DONT;
        if (reply[1] != 0 && !telnet_answer(out, reply, sizeof(reply)))
                return false;
        p->telnet = PROTO_TELNET_DATA;
        return true;
}

/* telnet_subnegotiation: one byte inside IAC SB ... IAC SE; an "IAC x" pair inside counts two.
 * Returns false when OUT lacks room for the ERR line that ends an overlong one. */
static bool telnet_subnegotiation(Proto *p, unsigned char c, Buf *out, ProtoStatus *status) {
        size_t len = p->telnet_sb_len;

        if (p->telnet == PROTO_TELNET_SB) {
                if (c == TELNET_IAC) {
                        p->telnet = PROTO_TELNET_SB_IAC;
                        return true;
                }
                len++;
        } else if (c == TELNET_SE) {
                p->telnet = PROTO_TELNET_DATA;
                return true;
        } else
                len += 2;
        if (len > p->conf->max_line_length) {
                if (buf_room(out) < PROTO_ERR_MAX)
                        return false;
                end_with(p, PROTO_END_TOO_LONG, out);
                *status = PROTO_CLOSE;
                return true;
        }
        p->telnet = PROTO_TELNET_SB;
        p->telnet_sb_len = len;
        return true;
}

/* feed_telnet: line framing with telnet commands taken out; the runs of data between them go
 * to feed_line(). Returns the bytes consumed, as proto_feed(). */
static size_t feed_telnet(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *status) {
        size_t i = 0;

        while (i < n) {
                unsigned char c = (unsigned char) in[i];
                bool done = true;

                switch (p->telnet) {
                case PROTO_TELNET_DATA: {
                        const char *iac = memchr(in + i, TELNET_IAC, n - i);
                        size_t run = iac ? (size_t) (iac - (in + i)) : n - i;
                        size_t used = feed_line(p, in + i, run, out, status);

                        if (*status == PROTO_CLOSE) {
                                p->input_after_end |= run < n - i;
                                return n;
                        }
                        i += used;
                        if (used < run || !iac)
                                return i;
                        p->telnet = PROTO_TELNET_IAC;
                        break;
                }
                case PROTO_TELNET_IAC:
                        if (c < TELNET_EOF) {
                                p->telnet = PROTO_TELNET_DATA; /* the IAC alone is dropped */
                                continue;
                        }
                        if (c == TELNET_IAC) {
                                /* The escaped 0xFF is a data run of its own: this very byte. */
                                done = feed_line(p, in + i, 1, out, status) == 1;
                                if (done)
                                        p->telnet = PROTO_TELNET_DATA;
                        } else
                                done = telnet_command(p, c, out, status);
                        break;
                case PROTO_TELNET_OPTION:
                        done = telnet_option(p, c, out);
                        break;
                case PROTO_TELNET_SB:
                case PROTO_TELNET_SB_IAC:
                        done = telnet_subnegotiation(p, c, out, status);
                        break;
                }
                if (*status == PROTO_CLOSE) {
                        p->input_after_end = i + 1 < n;
                        return n;
                }
                if (!done)
                        return i; /* output full: flush, then this byte again */
                i++;
        }
        return n;
}

size_t proto_telnet_restart(const Proto *p, uint8_t out[PROTO_TELNET_RESTART_MAX]) {
        if (p->end != PROTO_END_NONE)
                return 0;
        out[0] = TELNET_IAC;
        switch (p->telnet) {
        case PROTO_TELNET_DATA:
                return 0;
        case PROTO_TELNET_IAC:
                return 1;
        case PROTO_TELNET_OPTION:
                out[1] = p->telnet_verb;
                return 2;
        case PROTO_TELNET_SB: /* proto_subnegotiation() has it */
                return 0;
        case PROTO_TELNET_SB_IAC:
                return 1;
        }
        return 0;
}

bool proto_subnegotiation(const Proto *p, size_t *skipped) {
        if (p->end != PROTO_END_NONE || (p->telnet != PROTO_TELNET_SB && p->telnet != PROTO_TELNET_SB_IAC))
                return false;
        *skipped = p->telnet_sb_len;
        return true;
}

int proto_resume_subnegotiation(Proto *p, size_t skipped) {
        if (p->conf->framing != FRAMING_LINE || skipped > p->conf->max_line_length)
                return -EINVAL;
        p->telnet = PROTO_TELNET_SB;
        p->telnet_sb_len = skipped;
        return 0;
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
                p->input_after_end |= n > 0;
                *ret_status = PROTO_CLOSE;
                return n;
        }
        if (p->conf->framing == FRAMING_CHUNK)
                return feed_chunk(p, in, n, out, ret_status);
        return feed_telnet(p, in, n, out, ret_status);
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
        case PROTO_END_INTERRUPT:
                return "interrupt";
        }
        return "unknown";
}
