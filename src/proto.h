/* proto: the Welcome/Hello/exit protocol as a pure function of bytes in → bytes out.
 * No sockets, no threads, no logging: the session feeds it what it read and writes what it
 * produced, so the same code serves every worker model, the unit tests and the fuzzers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "conf.h"

#define PROTO_ERR_BUSY "ERR server busy\r\n"
#define PROTO_ERR_RATE "ERR rate limited\r\n"
#define PROTO_ERR_TOO_LONG "ERR line too long\r\n"
#define PROTO_ERR_IDLE "ERR idle timeout\r\n"
#define PROTO_ERR_SHUTDOWN "ERR shutting down\r\n"
#define PROTO_ERR_MAX 32 /* room any ERR line fits in */

typedef enum ProtoStatus {
        PROTO_CONTINUE, /* read more (or, if input is left over, flush and feed the rest) */
        PROTO_CLOSE,    /* flush what is in the output buffer, then close */
} ProtoStatus;

typedef enum ProtoEnd {
        PROTO_END_NONE,
        PROTO_END_EXIT,     /* the client said exit */
        PROTO_END_EOF,      /* the client closed its side */
        PROTO_END_TOO_LONG, /* a line over max_line_length */
        PROTO_END_IDLE,     /* no complete line within idle_timeout */
        PROTO_END_SHUTDOWN, /* the server is stopping */
        PROTO_END_NO_MEMORY, /* no memory to carry a line across reads */
        PROTO_END_INTERRUPT, /* line framing: telnet's interrupt, abort, break or EOF command */
        _PROTO_END_LAST = PROTO_END_INTERRUPT, /* for range checks: keep it the last */
} ProtoEnd;

/* Where a telnet command split across reads stopped (line framing; see proto.c). */
typedef enum ProtoTelnet {
        PROTO_TELNET_DATA,   /* plain bytes */
        PROTO_TELNET_IAC,    /* after IAC: a command byte comes next */
        PROTO_TELNET_OPTION, /* after IAC WILL/WONT/DO/DONT: the option byte comes next */
        PROTO_TELNET_SB,     /* inside IAC SB ... IAC SE, skipped */
        PROTO_TELNET_SB_IAC, /* an IAC inside the subnegotiation: SE ends it */
} ProtoTelnet;

typedef struct Proto {
        const Conf *conf; /* borrowed: the session holds the reference */
        size_t greeting_len, prefix_len, suffix_len;
        char *pending; /* an unterminated line carried between reads; line framing only */
        size_t pending_len;
        ProtoTelnet telnet;
        unsigned char telnet_verb; /* the WILL/WONT/DO/DONT waiting for its option byte */
        size_t telnet_sb_len;      /* bytes of the subnegotiation skipped so far */
        uint64_t lines;    /* messages answered */
        uint64_t messages; /* complete messages seen, empty lines and exit included */
        ProtoEnd end;
        bool input_after_end; /* after exit or an interrupt: more came behind it in its read, or later */
} Proto;

/* proto_init: allocates nothing (the pending-line buffer comes when first needed); returns 0. */
int proto_init(Proto *p, const Conf *conf);
void proto_done(Proto *p);

/* proto_resume: the state of a conversation another process had (hand-over): the pending
 * line (at most max_line_length + 1 bytes, line framing only), the counters and the end.
 * A telnet command cut by the hand-over comes as input: the writer put the bytes of
 * proto_telnet_restart() in front of the input it kept. Returns 0, -EINVAL when PENDING does
 * not fit, or -ENOMEM. */
int proto_resume(Proto *p, const char *pending, size_t pending_len, uint64_t lines, uint64_t messages, ProtoEnd end);

/* The most bytes proto_telnet_restart() gives: IAC and its WILL, WONT, DO or DONT. */
#define PROTO_TELNET_RESTART_MAX 2

/* proto_telnet_restart: the bytes that begin again the telnet command the input so far stopped
 * inside (IAC; IAC and its WILL, WONT, DO or DONT; the IAC inside a subnegotiation), into OUT;
 * 0 between commands, inside a subnegotiation otherwise and after the end. A hand-over puts
 * them in front of the input it keeps, and the next process reads the command whole. */
size_t proto_telnet_restart(const Proto *p, uint8_t out[PROTO_TELNET_RESTART_MAX]);

/* proto_subnegotiation: whether the input so far stopped inside a telnet subnegotiation (before
 * the end), and *SKIPPED, the bytes of it so far: they count against max_line_length. A
 * hand-over carries the count along; the next process takes it back with
 * proto_resume_subnegotiation(), before the input (and proto_telnet_restart()'s IAC). */
bool proto_subnegotiation(const Proto *p, size_t *skipped);

/* proto_resume_subnegotiation: inside a subnegotiation SKIPPED bytes long so far. Returns 0, or
 * -EINVAL in chunk framing (no telnet) or when SKIPPED is over max_line_length. */
int proto_resume_subnegotiation(Proto *p, size_t skipped);

/* proto_output_min: the smallest output buffer that always holds one reply or ERR line. */
size_t proto_output_min(const Conf *conf);

/* proto_line_too_long: an unterminated line of LEN bytes so far (line framing), LAST the last
 * of them, can never become a valid one: over max_line_length, where only a final CR (the line
 * end's first half) may exceed it. */
bool proto_line_too_long(const Conf *conf, size_t len, char last);

/* proto_input_max: in chunk framing every read is one message, so the session reads at most
 * this many bytes at once (the longest message plus its line terminator, plus one byte to
 * notice a longer one). Line framing accepts reads of any size. */
size_t proto_input_max(const Conf *conf);

/* proto_greeting: appends the greeting; OUT must have proto_output_min() room. */
void proto_greeting(Proto *p, Buf *out);

/* proto_feed: consumes bytes of one read, appending replies to OUT while they fit (in line
 * framing, the answers to telnet commands too).
 * Returns the bytes consumed; fewer than N means OUT is full: flush it and feed the rest.
 * *RET_STATUS says whether to go on or to close (p->end says why). */
size_t proto_feed(Proto *p, const char *in, size_t n, Buf *out, ProtoStatus *ret_status);

/* proto_eof: the client closed its side: answers an unterminated last line (line framing)
 * and ends the session. OUT must have proto_output_min() room. */
void proto_eof(Proto *p, Buf *out);

/* proto_abort: ends the session for REASON (PROTO_END_IDLE, PROTO_END_SHUTDOWN), appending
 * its ERR line. OUT must have PROTO_ERR_MAX room. */
void proto_abort(Proto *p, ProtoEnd reason, Buf *out);

const char *proto_end_to_string(ProtoEnd end);
