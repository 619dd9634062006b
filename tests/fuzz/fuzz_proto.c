/* fuzz_proto: the protocol driven the way a session drives it, checked against a reference model.
 *
 * Input format (missing bytes read as 0, so every input is valid):
 *   byte 0   flags: bit 0      framing: 0 line, 1 chunk
 *                   bits 1-2   at the end of the input, unless closed: 0 EOF (proto_eof),
 *                              1 idle timeout, 2 shutdown (proto_abort), 3 connection reset
 *                   bit 3      greeting: 0 "Welcome!", 1 the longest allowed (CONF_TEXT_MAX bytes)
 *                   bits 4-6   how the payload is cut into reads (SPLIT_*; with SPLIT_PREFIXED a
 *                              length byte precedes each read)
 *                   bit 7      output buffer: 0 proto_output_min() + byte 2 (tight, lots of
 *                              back-pressure), 1 as the session has it (at least 16 KiB) + byte 2
 *   byte 1   max_line_length: below 0xc0, 1 + (byte & 63); from 0xc0, LARGE_MAX[byte & 15]
 *   byte 2   extra output buffer capacity
 *   byte 3   reply template: prefix length (low nibble), suffix length (high nibble); the prefix
 *            and suffix bytes follow (a NUL byte becomes '.', as a C string cannot hold it)
 *   byte 4   seed of the pseudo-random read sizes
 *   rest     the bytes the client sends
 *
 * The harness feeds proto exactly as session.c does: greeting, then per read proto_feed() with a
 * flush whenever it consumed less than it was given, a flush after every read, and proto_eof() or
 * proto_abort() at the end. It checks, with abort() so that libFuzzer reports it:
 *   - proto_feed() consumes at most what it is given, never overfills the buffer, and always makes
 *     progress when it leaves input unconsumed (else the session would loop forever);
 *   - after PROTO_CLOSE nothing more is produced, whatever is fed or called;
 *   - the bytes written, and where the writes are cut, equal what the model (model_read() and
 *     model_end(): a plain re-implementation of the README's Protocol section, telnet commands
 *     of line framing included, byte by byte, which keeps whole lines in an unbounded buffer)
 *     predicts for the same reads;
 *   - proto.end, proto.lines (replies) and proto.messages (complete lines, the activity that resets
 *     the idle timer) agree with the model;
 *   - a hand-over between two reads (one boundary in four, from the read sizes' seed) changes
 *     nothing the client sees: the next process's Proto is made as handoff.c makes it (the
 *     pending line, the counters, a subnegotiation's count, and the bytes of a telnet command
 *     cut by it in front of the next read), and the model, which knows nothing of it, still
 *     predicts every byte and every cut. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SESSION_READ_SIZE 4096 /* session.c: read size in line framing */
#define SESSION_OUT_SIZE 16384 /* session.c: output buffer, unless proto_output_min() is larger */
#define TEMPLATE_PART_MAX 15

static const unsigned LARGE_MAX[16] = {
        65, 100, 127, 128, 255, 256, 1000, 1023, 1024, 1025, 2048, 4094, 4095, 4096, 4097, 8192,
};

enum {
        END_EOF,
        END_IDLE,
        END_SHUTDOWN,
        END_RESET,
};

enum {
        SPLIT_WHOLE,    /* as much as one read takes: the client sent everything at once */
        SPLIT_BYTES,    /* one byte per read: a very slow network */
        SPLIT_SMALL,    /* 1..8 bytes */
        SPLIT_AROUND,   /* 1..max_line_length + 3 bytes: cuts near the length limit */
        SPLIT_MIXED,    /* each read picks one of SMALL, AROUND, LINES, CR or 1..read size */
        SPLIT_LINES,    /* up to and including each '\n': nc, telnet, a chunk-mode client */
        SPLIT_CR,       /* also right after each '\r': CRLF cut in two */
        SPLIT_PREFIXED, /* each read is preceded by its length in one byte (0: 1..read size at
                         * random), which is not sent: the fuzzer places every cut */
        SPLIT_ANY,      /* 1..read size (only through SPLIT_MIXED) */
};

#define check(cond, ...)                                                                                 \
        do {                                                                                             \
                if (!(cond)) {                                                                           \
                        fprintf(stderr, "fuzz_proto: check failed: %s (%s:%d)\n", #cond, __FILE__,       \
                                __LINE__);                                                               \
                        fprintf(stderr, "fuzz_proto: " __VA_ARGS__);                                     \
                        fputc('\n', stderr);                                                             \
                        abort();                                                                         \
                }                                                                                        \
        } while (0)

/* ---- a growable byte string, for the model and for what the harness saw written ---- */

typedef struct Bytes {
        char *data;
        size_t len, cap;
} Bytes;

static void bytes_add(Bytes *b, const void *p, size_t n) {
        if (b->len + n > b->cap) {
                size_t cap = b->cap ? b->cap : 256;

                while (cap < b->len + n)
                        cap *= 2;
                b->data = realloc(b->data, cap);
                if (!b->data)
                        abort();
                b->cap = cap;
        }
        if (n > 0)
                memcpy(b->data + b->len, p, n);
        b->len += n;
}

static void bytes_add_str(Bytes *b, const char *s) {
        bytes_add(b, s, strlen(s));
}

static void bytes_free(Bytes *b) {
        free(b->data);
        *b = (Bytes) { 0 };
}

/* Write boundaries: the offsets in the written stream where each write ended. */
typedef struct Cuts {
        size_t *at;
        size_t n, cap;
} Cuts;

static void cuts_add(Cuts *c, size_t offset) {
        if (c->n == c->cap) {
                c->cap = c->cap ? c->cap * 2 : 16;
                c->at = realloc(c->at, c->cap * sizeof(size_t));
                if (!c->at)
                        abort();
        }
        c->at[c->n++] = offset;
}

static void cuts_free(Cuts *c) {
        free(c->at);
        *c = (Cuts) { 0 };
}

/* ---- input parsing ---- */

typedef struct Input {
        const uint8_t *data;
        size_t size, pos;
} Input;

static uint8_t input_byte(Input *in) {
        return in->pos < in->size ? in->data[in->pos++] : 0;
}

/* input_text: N bytes as a C string (NUL bytes become '.'). */
static char *input_text(Input *in, size_t n) {
        char *s = malloc(n + 1);

        if (!s)
                abort();
        for (size_t i = 0; i < n; i++) {
                uint8_t ch = input_byte(in);
                s[i] = ch ? (char) ch : '.';
        }
        s[n] = '\0';
        return s;
}

static uint32_t rng_next(uint32_t *state) {
        /* xorshift32: the read sizes only need to be varied and reproducible. */
        uint32_t x = *state;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *state = x;
        return x;
}

/* split_next: the length of the next read of IN[0..N) (N > 0), at most READ_MAX. */
static size_t split_next(int mode, const char *in, size_t n, size_t read_max, unsigned max_line,
                         uint32_t *rng) {
        size_t len;

        if (mode == SPLIT_MIXED) {
                static const int modes[] = { SPLIT_SMALL, SPLIT_AROUND, SPLIT_ANY, SPLIT_LINES, SPLIT_CR };
                mode = modes[rng_next(rng) % (sizeof(modes) / sizeof(modes[0]))];
        }
        switch (mode) {
        case SPLIT_BYTES:
                len = 1;
                break;
        case SPLIT_SMALL:
                len = 1 + rng_next(rng) % 8;
                break;
        case SPLIT_AROUND:
                len = 1 + rng_next(rng) % ((size_t) max_line + 3);
                break;
        case SPLIT_ANY:
                len = 1 + rng_next(rng) % read_max;
                break;
        case SPLIT_LINES:
        case SPLIT_CR: {
                size_t i;

                for (i = 0; i < n && i < read_max; i++)
                        if (in[i] == '\n' || (mode == SPLIT_CR && in[i] == '\r'))
                                break;
                len = i + 1;
                break;
        }
        default:
                len = n;
                break;
        }
        if (len > read_max)
                len = read_max;
        if (len > n)
                len = n;
        return len;
}

/* ---- the reference model: the README's protocol section, written as plainly as possible ---- */

typedef struct Model {
        const Conf *conf;
        size_t out_cap;    /* the output buffer's capacity */
        Bytes out;         /* everything written */
        Cuts cuts;         /* where the writes end */
        size_t buffered;   /* bytes in the (modelled) output buffer */
        Bytes pending;     /* line framing: the unterminated line so far (unbounded here) */
        int telnet;        /* line framing: where in a telnet command (TN_*) */
        unsigned char verb; /* the WILL/WONT/DO/DONT waiting for its option byte */
        size_t sb_len;     /* bytes of the subnegotiation skipped so far */
        bool closed;
        ProtoEnd end;
        uint64_t lines;    /* replies */
        uint64_t messages; /* complete lines (or chunks) dealt with: activity for idle_timeout */
} Model;

static void model_flush(Model *m) {
        if (m->buffered > 0)
                cuts_add(&m->cuts, m->out.len);
        m->buffered = 0;
}

/* model_emit: one reply or ERR line. The buffer is flushed first when it has not the room: a
 * reply needs its own size, an ERR line PROTO_ERR_MAX (proto.h). Everything that fits leaves in
 * one write ("the replies to one read leave in one write whenever they fit"). */
static void model_emit(Model *m, const char *p, size_t n, bool is_err) {
        size_t need = is_err ? PROTO_ERR_MAX : n;

        if (m->out_cap - m->buffered < need)
                model_flush(m);
        bytes_add(&m->out, p, n);
        m->buffered += n;
}

static void model_close(Model *m, ProtoEnd end) {
        const char *err = NULL;

        if (end == PROTO_END_TOO_LONG)
                err = "ERR line too long\r\n";
        else if (end == PROTO_END_IDLE)
                err = "ERR idle timeout\r\n";
        else if (end == PROTO_END_SHUTDOWN)
                err = "ERR shutting down\r\n";
        if (err)
                model_emit(m, err, strlen(err), true);
        m->closed = true;
        m->end = end;
}

/* model_message: one message, terminator already removed. */
static void model_message(Model *m, const char *msg, size_t len) {
        Bytes reply = { 0 };

        m->messages++;
        if (len > m->conf->max_line_length) {
                model_close(m, PROTO_END_TOO_LONG);
                return;
        }
        if (len == 4 && memcmp(msg, "exit", 4) == 0) {
                model_close(m, PROTO_END_EXIT);
                return;
        }
        if (len == 0)
                return; /* empty lines are not messages */
        bytes_add_str(&reply, m->conf->reply_prefix);
        bytes_add(&reply, msg, len);
        bytes_add_str(&reply, m->conf->reply_suffix);
        if (m->conf->framing == FRAMING_LINE)
                bytes_add(&reply, "\r\n", 2);
        model_emit(m, reply.data, reply.len, false);
        m->lines++;
        bytes_free(&reply);
}

/* model_check_pending: "sent as soon as the limit is passed, without waiting for the newline": an
 * unterminated line is hopeless once it holds more than max + 1 bytes, or max + 1 bytes that do not
 * end in the '\r' of a CRLF to come. Checked where proto looks: at the end of each read, and where a
 * telnet IAC interrupts the data (proto frames the data between two commands as it frames a read). */
static void model_check_pending(Model *m) {
        size_t len = m->pending.len, max = m->conf->max_line_length;

        if (!m->closed && (len > max + 1 || (len == max + 1 && m->pending.data[len - 1] != '\r')))
                model_close(m, PROTO_END_TOO_LONG);
}

/* model_data: one data byte of line framing. */
static void model_data(Model *m, char c) {
        if (c != '\n') {
                bytes_add(&m->pending, &c, 1);
                return;
        }
        size_t len = m->pending.len;
        if (len > 0 && m->pending.data[len - 1] == '\r')
                len--;
        model_message(m, m->pending.data, len);
        m->pending.len = 0;
}

/* Telnet in line framing, as the README's Protocol section states it. */
enum {
        TN_DATA,
        TN_IAC,
        TN_OPTION,
        TN_SB,
        TN_SB_IAC,
};

/* model_sb_count: N more bytes of subnegotiation; over max_line_length it is too long. */
static void model_sb_count(Model *m, size_t n) {
        m->sb_len += n;
        m->telnet = TN_SB;
        if (m->sb_len > m->conf->max_line_length)
                model_close(m, PROTO_END_TOO_LONG);
}

static void model_telnet_byte(Model *m, unsigned char c) {
        switch (m->telnet) {
        case TN_DATA:
                if (c != 0xff) {
                        model_data(m, (char) c);
                        break;
                }
                model_check_pending(m);
                m->telnet = TN_IAC;
                break;
        case TN_IAC:
                m->telnet = TN_DATA;
                if (c == 0xff) { /* IAC IAC: one 0xff data byte */
                        model_data(m, (char) c);
                        model_check_pending(m);
                } else if (c < 236) /* not a command: the IAC is dropped, the byte is data */
                        model_data(m, (char) c);
                else if (c == 244 || c == 245 || c == 243 || c == 236 || c == 238) /* IP AO BRK EOF ABORT */
                        model_close(m, PROTO_END_INTERRUPT);
                else if (c == 246) /* AYT */
                        model_emit(m, "[Yes]\r\n", 7, false);
                else if (c == 250) { /* SB */
                        m->telnet = TN_SB;
                        m->sb_len = 0;
                } else if (c >= 251 && c <= 254) { /* WILL WONT DO DONT */
                        m->telnet = TN_OPTION;
                        m->verb = c;
                }
                break; /* any other command is dropped */
        case TN_OPTION: {
                char answer[3] = { (char) 0xff, 0, (char) c };

                m->telnet = TN_DATA;
                if (m->verb == 253) /* DO: WONT, but WILL for TIMING-MARK */
                        answer[1] = (char) (c == 6 ? 251 : 252);
                else if (m->verb == 251) /* WILL: DONT */
                        answer[1] = (char) 254;
                else
                        break; /* WONT and DONT are not answered */
                model_emit(m, answer, 3, false);
                break;
        }
        case TN_SB:
                if (c == 0xff)
                        m->telnet = TN_SB_IAC;
                else
                        model_sb_count(m, 1);
                break;
        default: /* TN_SB_IAC */
                if (c == 0xf0) /* SE */
                        m->telnet = TN_DATA;
                else
                        model_sb_count(m, 2);
                break;
        }
}

static void model_read_line(Model *m, const char *in, size_t n) {
        for (size_t i = 0; i < n && !m->closed; i++)
                model_telnet_byte(m, (unsigned char) in[i]);
        model_check_pending(m);
}

static void model_read_chunk(Model *m, const char *in, size_t n) {
        size_t len = n;

        /* One read is one message; a trailing "\n" or "\r\n" is stripped. */
        if (len > 0 && in[len - 1] == '\n') {
                len--;
                if (len > 0 && in[len - 1] == '\r')
                        len--;
        }
        model_message(m, in, len);
}

static void model_read(Model *m, const char *in, size_t n) {
        if (m->closed)
                return;
        if (m->conf->framing == FRAMING_LINE)
                model_read_line(m, in, n);
        else
                model_read_chunk(m, in, n);
        model_flush(m); /* the session writes after every read */
}

static void model_end(Model *m, int action) {
        if (m->closed)
                return;
        switch (action) {
        case END_EOF:
                /* "an unterminated last line is answered too"; the '\r' of a CRLF cut off by the
                 * EOF is dropped (proto's documented choice, unit test eof_strips_a_trailing_cr). */
                if (m->conf->framing == FRAMING_LINE && m->pending.len > 0) {
                        size_t len = m->pending.len;

                        if (m->pending.data[len - 1] == '\r')
                                len--;
                        model_message(m, m->pending.data, len);
                }
                if (!m->closed)
                        model_close(m, PROTO_END_EOF);
                break;
        case END_IDLE:
                model_close(m, PROTO_END_IDLE);
                break;
        case END_SHUTDOWN:
                model_close(m, PROTO_END_SHUTDOWN);
                break;
        default:
                break;
        }
        model_flush(m);
}

/* ---- the implementation, driven as session.c drives it ---- */

typedef struct Run {
        Proto proto;
        Buf out;
        Bytes written;
        Cuts cuts;
} Run;

static void run_flush(Run *r) {
        check(r->out.len <= r->out.cap, "buffer overfilled: %zu > %zu", r->out.len, r->out.cap);
        if (r->out.len > 0) {
                bytes_add(&r->written, r->out.data, r->out.len);
                cuts_add(&r->cuts, r->written.len);
        }
        r->out.len = 0;
}

/* run_read: session.c feed(): feeds one read, flushing whenever proto asks; returns the status. */
static ProtoStatus run_read(Run *r, const char *in, size_t n) {
        ProtoStatus status = PROTO_CONTINUE;
        size_t done = 0;

        for (;;) {
                size_t before = r->out.len;
                size_t used = proto_feed(&r->proto, in + done, n - done, &r->out, &status);

                check(used <= n - done, "consumed %zu of %zu bytes", used, n - done);
                check(r->out.len >= before && r->out.len <= r->out.cap, "buffer %zu -> %zu, capacity %zu",
                      before, r->out.len, r->out.cap);
                check(status == PROTO_CONTINUE || status == PROTO_CLOSE, "status %d", (int) status);
                done += used;
                if (status == PROTO_CLOSE) {
                        check(done == n, "closed with %zu bytes unconsumed (they are discarded)", n - done);
                        check(r->proto.end != PROTO_END_NONE, "closed without a reason");
                        break;
                }
                if (done == n)
                        break;
                /* Input left over means "buffer full: flush and feed the rest"; with nothing to
                 * flush the session would spin forever. */
                check(r->out.len > 0, "no progress: %zu bytes left, nothing to flush (room %zu)", n - done,
                      buf_room(&r->out));
                run_flush(r);
        }
        run_flush(r);
        return status;
}

/* hand_over: R's session passes to the next process between two reads, as handoff.c records
 * and restores it: a fresh Proto under CONF with the pending line, the counters and the
 * subnegotiation; the bytes that begin again a telnet command cut by it go into HEAD, to come
 * in front of the next read. Returns their number. */
static size_t hand_over(Run *r, const Conf *conf, uint8_t head[PROTO_TELNET_RESTART_MAX]) {
        size_t n = proto_telnet_restart(&r->proto, head), skipped = 0;
        bool in_subnegotiation = proto_subnegotiation(&r->proto, &skipped);
        Proto next;

        check(proto_init(&next, conf) == 0, "proto_init failed");
        check(proto_resume(&next, r->proto.pending, r->proto.pending_len, r->proto.lines, r->proto.messages,
                           r->proto.end) == 0,
              "proto_resume refused a pending line of %zu bytes", r->proto.pending_len);
        check(!in_subnegotiation || proto_resume_subnegotiation(&next, skipped) == 0,
              "proto_resume_subnegotiation refused %zu bytes", skipped);
        proto_done(&r->proto);
        r->proto = next;
        return n;
}

/* check_closed: once closed, nothing more comes out of proto. */
static void check_closed(Run *r, const char *in, size_t n) {
        static const char more[] = "late\nexit\n";
        ProtoStatus status = PROTO_CONTINUE;
        ProtoEnd end = r->proto.end;
        uint64_t lines = r->proto.lines, messages = r->proto.messages;
        size_t used;

        check(end != PROTO_END_NONE, "closed, but proto.end is none");
        used = proto_feed(&r->proto, more, sizeof(more) - 1, &r->out, &status);
        check(used == sizeof(more) - 1 && status == PROTO_CLOSE && r->out.len == 0,
              "after close: consumed %zu, status %d, produced %zu bytes", used, (int) status, r->out.len);
        if (n > 0) {
                used = proto_feed(&r->proto, in, n, &r->out, &status);
                check(used == n && status == PROTO_CLOSE && r->out.len == 0,
                      "after close: consumed %zu of %zu, status %d, produced %zu bytes", used, n,
                      (int) status, r->out.len);
        }
        proto_eof(&r->proto, &r->out);
        proto_abort(&r->proto, PROTO_END_IDLE, &r->out);
        proto_abort(&r->proto, PROTO_END_SHUTDOWN, &r->out);
        check(r->out.len == 0, "after close: eof/abort produced %zu bytes", r->out.len);
        check(r->proto.end == end && r->proto.lines == lines && r->proto.messages == messages,
              "after close: end %s -> %s, or lines or messages changed",
              proto_end_to_string(end), proto_end_to_string(r->proto.end));
}

/* ---- comparison ---- */

static void print_escaped(const char *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char) p[i];

                if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
                        fputc(ch, stderr);
                else if (ch == '\r')
                        fputs("\\r", stderr);
                else if (ch == '\n')
                        fputs("\\n", stderr);
                else
                        fprintf(stderr, "\\x%02x", ch);
        }
}

static void dump(const char *what, const Bytes *b, size_t at) {
        size_t from = at > 40 ? at - 40 : 0, to = at + 40 < b->len ? at + 40 : b->len;

        fprintf(stderr, "fuzz_proto: %s (%zu bytes) around %zu: \"", what, b->len, at);
        print_escaped(b->data + from, to - from);
        fputs("\"\n", stderr);
}

/* verbose: FUZZ_PROTO_VERBOSE=1 in the environment shows what happens to each input, e.g. when
 * reproducing a crash or writing a seed: build-fuzz/tests/fuzz/fuzz_proto FILE. */
static bool verbose(void) {
        static int v = -1;

        if (v < 0)
                v = getenv("FUZZ_PROTO_VERBOSE") != NULL;
        return v;
}

static void compare(const Run *r, const Model *m) {
        size_t n = r->written.len < m->out.len ? r->written.len : m->out.len, at = 0;

        while (at < n && r->written.data[at] == m->out.data[at])
                at++;
        if (at < n || r->written.len != m->out.len) {
                dump("proto wrote", &r->written, at);
                dump("model says ", &m->out, at);
                check(false, "output differs from the model at byte %zu", at);
        }
        check(r->proto.end == m->end, "end: proto %s, model %s", proto_end_to_string(r->proto.end),
              proto_end_to_string(m->end));
        check(r->proto.lines == m->lines, "lines: proto %llu, model %llu",
              (unsigned long long) r->proto.lines, (unsigned long long) m->lines);
        check(r->proto.messages == m->messages, "messages: proto %llu, model %llu",
              (unsigned long long) r->proto.messages, (unsigned long long) m->messages);
        for (size_t i = 0; i < r->cuts.n || i < m->cuts.n; i++)
                check(i < r->cuts.n && i < m->cuts.n && r->cuts.at[i] == m->cuts.at[i],
                      "write %zu ends at %zu in proto, at %zu in the model (%zu and %zu writes)", i,
                      i < r->cuts.n ? r->cuts.at[i] : 0, i < m->cuts.n ? m->cuts.at[i] : 0, r->cuts.n,
                      m->cuts.n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static char long_greeting[CONF_TEXT_MAX + 1];
        Input in = { .data = data, .size = size };
        uint8_t flags = input_byte(&in), max_sel = input_byte(&in), extra = input_byte(&in);
        uint8_t lens = input_byte(&in);
        char *prefix = input_text(&in, lens & TEMPLATE_PART_MAX);
        char *suffix = input_text(&in, (size_t) (lens >> 4) & TEMPLATE_PART_MAX);
        uint32_t rng = 0x9e3779b9u ^ ((uint32_t) input_byte(&in) * 0x01000193u);
        uint32_t handover_rng = rng ^ 0x85ebca6bu; /* its own: the read sizes stay as they were */
        char *read_buf;
        const char *payload = (const char *) data + in.pos;
        size_t payload_len = size - (in.pos < size ? in.pos : size);
        int end_action = (flags >> 1) & 3, split = (flags >> 4) & 7;
        ProtoStatus status = PROTO_CONTINUE;
        Run r = { 0 };
        Model m = { 0 };
        Conf conf;
        size_t read_max, out_min, pos = 0;

        if (!long_greeting[0])
                for (size_t i = 0; i < CONF_TEXT_MAX; i++)
                        long_greeting[i] = (char) ('A' + i % 26);

        conf = (Conf) {
                .greeting = (flags & 8) ? long_greeting : (char *) "Welcome!",
                .reply_prefix = prefix,
                .reply_suffix = suffix,
                .framing = (flags & 1) ? FRAMING_CHUNK : FRAMING_LINE,
                .max_line_length = max_sel < 0xc0 ? 1u + (max_sel & 63u) : LARGE_MAX[max_sel & 15],
        };
        out_min = proto_output_min(&conf);
        r.out.cap = (flags & 0x80) ? (out_min > SESSION_OUT_SIZE ? out_min : SESSION_OUT_SIZE) + extra
                                   : out_min + extra;
        r.out.data = malloc(r.out.cap);
        read_max = conf.framing == FRAMING_CHUNK ? proto_input_max(&conf) : SESSION_READ_SIZE;
        read_buf = malloc(PROTO_TELNET_RESTART_MAX + read_max);
        if (!r.out.data || !read_buf)
                abort();
        check(proto_init(&r.proto, &conf) == 0, "proto_init failed");
        check(out_min >= PROTO_ERR_MAX, "proto_output_min %zu < PROTO_ERR_MAX", out_min);
        check(read_max > (size_t) conf.max_line_length + 2 || conf.framing == FRAMING_LINE,
              "proto_input_max %zu cannot hold a message of max_line_length plus CRLF and one more byte",
              read_max);

        m = (Model) { .conf = &conf, .out_cap = r.out.cap };
        if (verbose()) {
                fprintf(stderr,
                        "fuzz_proto: framing %s, max_line_length %u, output buffer %zu (minimum %zu), "
                        "reads of at most %zu, split mode %d, end %d, reply \"",
                        conf.framing == FRAMING_LINE ? "line" : "chunk", conf.max_line_length, r.out.cap,
                        out_min, read_max, split, end_action);
                print_escaped(prefix, strlen(prefix));
                fputs("{name}", stderr);
                print_escaped(suffix, strlen(suffix));
                fputs("\"\n", stderr);
        }

        /* Greeting: the session writes it on its own. */
        proto_greeting(&r.proto, &r.out);
        run_flush(&r);
        bytes_add_str(&m.out, conf.greeting);
        if (conf.framing == FRAMING_LINE)
                bytes_add(&m.out, "\r\n", 2);
        cuts_add(&m.cuts, m.out.len);

        while (pos < payload_len && status == PROTO_CONTINUE) {
                size_t n;

                if (split == SPLIT_PREFIXED) {
                        n = (uint8_t) payload[pos++];
                        if (pos == payload_len)
                                break;
                        if (n == 0)
                                n = 1 + rng_next(&rng) % read_max;
                        if (n > read_max)
                                n = read_max;
                        if (n > payload_len - pos)
                                n = payload_len - pos;
                } else
                        n = split_next(split, payload + pos, payload_len - pos, read_max,
                                       conf.max_line_length, &rng);
                check(n > 0 && n <= read_max, "bad read size %zu", n);
                if (verbose()) {
                        fputs("fuzz_proto: read \"", stderr);
                        print_escaped(payload + pos, n);
                        fputs("\"\n", stderr);
                }
                size_t head_n = 0;
                if (pos > 0 && rng_next(&handover_rng) % 4 == 0) {
                        uint8_t head[PROTO_TELNET_RESTART_MAX];
                        head_n = hand_over(&r, &conf, head);
                        memcpy(read_buf, head, head_n);
                        if (verbose())
                                fprintf(stderr, "fuzz_proto: hand-over, %zu bytes begun again\n", head_n);
                }
                memcpy(read_buf + head_n, payload + pos, n);
                status = run_read(&r, read_buf, head_n + n);
                model_read(&m, payload + pos, n);
                pos += n;
                check((status == PROTO_CLOSE) == m.closed, "after the read ending at %zu: proto %s, model %s",
                      pos, status == PROTO_CLOSE ? "closed" : "open", m.closed ? "closed" : "open");
                check(conf.framing == FRAMING_CHUNK ||
                              r.proto.pending_len <= (size_t) conf.max_line_length + 1,
                      "pending %zu > max_line_length + 1", r.proto.pending_len);
        }

        if (status == PROTO_CONTINUE) {
                switch (end_action) {
                case END_EOF:
                        proto_eof(&r.proto, &r.out);
                        break;
                case END_IDLE:
                        proto_abort(&r.proto, PROTO_END_IDLE, &r.out);
                        break;
                case END_SHUTDOWN:
                        proto_abort(&r.proto, PROTO_END_SHUTDOWN, &r.out);
                        break;
                default:
                        break; /* connection reset: nothing more is said */
                }
                run_flush(&r);
                model_end(&m, end_action);
        }
        if (r.proto.end != PROTO_END_NONE)
                check_closed(&r, payload, payload_len);
        else
                check(end_action == END_RESET, "still open after the end of the input");
        if (verbose()) {
                size_t from = 0;

                for (size_t i = 0; i < r.cuts.n; i++) {
                        fputs("fuzz_proto: write \"", stderr);
                        print_escaped(r.written.data + from, r.cuts.at[i] - from);
                        fputs("\"\n", stderr);
                        from = r.cuts.at[i];
                }
                fprintf(stderr, "fuzz_proto: end %s, %llu lines answered\n", proto_end_to_string(r.proto.end),
                        (unsigned long long) r.proto.lines);
        }
        compare(&r, &m);

        proto_done(&r.proto);
        free(r.out.data);
        bytes_free(&r.written);
        cuts_free(&r.cuts);
        bytes_free(&m.out);
        bytes_free(&m.pending);
        cuts_free(&m.cuts);
        free(prefix);
        free(suffix);
        free(read_buf);
        return 0;
}
