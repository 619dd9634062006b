/* driver: the model-checked test of the I/O drivers. Random clients talk to the real hellod
 * over loopback and every byte they receive is checked against the protocol's model
 * (harness_model_replies, the one the fuzzer and the hostile tests use).
 *
 *   driver [--seconds N] [--seed N] [--hellod PATH] [--stored] [--restarts] [--reloads] [--stops]
 *          (20 s; else $HELLOD_BIN)
 *   driver --replay SESSION-SEED --setup I [--seconds N] [--stored] [--restarts] [--reloads]
 *          (one failed plan, on every client thread)
 *
 * Each session follows a random plan made from its own seed (printed on failure, so that a
 * plan can be replayed with --replay, against the setup it failed in): lines of 0 bytes to
 * max_line_length (sometimes one over, then in one plan of three more lines behind it, read away
 * by the lingering close), sometimes a pipelined burst of thousands of lines, the stream cut
 * into random writes (in one plan of four sent with TCP_NODELAY, and often cut just behind a CR
 * before its LF, or inside the PROXY header, then paused: aimed_cut), sometimes a byte of
 * urgent data among them (sent out of band, so not part of the stream the model answers; the
 * kernel ends every read at its mark), read
 * in random sizes with pauses where the client reads nothing (in one session of eight through
 * a receive buffer of a few KiB, so that the daemon meets back-pressure), and an ending: a half-close,
 * `exit` (or a telnet Interrupt Process; in one plan of three, more lines behind it, sometimes
 * more than the 64 KiB a lingering close reads away at least), a close once everything is
 * answered, a reset at a random point (in one plan of three after an exit, in another after a
 * half-close: it may come while the daemon flushes its last replies or lingers), or (in the
 * setup with a short idle_timeout) a stall:
 * nothing more sent, every reply read, then `ERR idle timeout` and the end of file (a client
 * that stops reading, whose blocked write the timeout also ends, is not among them). One plan
 * in four speaks telnet as well: commands (Are You There, option
 * negotiation with any option byte, subnegotiations, the ones hellod ignores, an IAC before a
 * data byte, IAC IAC for a 0xFF data byte) between the lines and inside them, even between a
 * line's CR and its LF, and so cut anywhere by the writes, the reads, a stored session's
 * peeks and a restart. The daemon runs once per configuration, with reply templates from the
 * default to the 1,024-byte maximum, and once behind a PROXY listener, every session opening
 * with a balancer's header, and once with framing = "chunk", where each read is a message: its
 * clients send each message (of any bytes, sometimes over the limit, with or without a
 * terminator) in one write once the replies before it came (chunk_plan), with the pauses, the
 * small receive buffer, the endings and --restarts, --reloads, --stops and --stored as above
 * (no pipelining, telnet, urgent byte or cut: a read there is a message); HELLOD_TEST_CONF_EXTRA
 * picks the worker model as in the integration suite. With --stored the daemon runs as a
 * service under the test's PID 1 (store.h) with handover = "always": every session is
 * stored, so it reads with MSG_PEEK and takes whole lines only (and, in the per-connection
 * model, waits for a line's end with SO_RCVLOWAT). With --restarts it runs as such a service too, and the test restarts it every
 * RESTART_MIN_MS to RESTART_MAX_MS while the clients go on: each process hands every
 * conversation over to the next (docs/zero-downtime.md) at whatever point it has reached, and
 * the clients, who see none of it, still check every byte against the model: nothing lost,
 * nothing doubled, no second greeting. With --reloads the test rewrites the configuration every
 * RELOAD_MIN_MS to RELOAD_MAX_MS (log level, per-source limits, access lists: reload_variants;
 * a listener added and removed, but for a service: spare_wanted()) and sends SIGHUP, and every
 * reload must apply while no client notices. With --stops the test stops the daemon (SIGTERM: it
 * runs as no service, so nothing is handed over) every STOP_MIN_MS to STOP_MAX_MS and starts it
 * again: a session the stop ends must get the model's bytes up to the end of a reply (or of a
 * telnet command's answer), then `ERR shutting down` and the end of file, whatever it was doing
 * (pipelining, pausing its reads, half-closed, past its exit); one that connects while the
 * daemon is down, or waits in the backlog of the listener the stop closes, is refused or reset
 * before a byte comes, and counted.
 *
 * A burst must be answered without waiting for any timeout: idle_timeout is far above any
 * pause a client makes (15 times the longest in the stall setup), so a session that stalls in
 * the daemon shows as `ERR idle timeout` where the model has a reply (a byte mismatch), or as
 * no progress within IO_TIMEOUT_MS. In the io_uring pass each setup but the PROXY one checks
 * that io_uring served it (a PROXY listener, or --stored, sends the whole daemon to epoll).
 *
 * Load threads never call harness_fail(): they record what went wrong; the main thread
 * reports. Output: the figures, one PASS/FAIL line per check, then
 * "driver checks: P passed, F failed"; exit status 1 on any failure. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clients.h"
#include "harness.h"
#include "store.h"

#define DEFAULT_SECONDS 20
#define MAX_SECONDS 3600
#define CLIENT_THREADS 8
#define IO_TIMEOUT_MS 20000   /* no progress at all for this long: a stall */
#define IDLE_TIMEOUT 30       /* seconds; no client pause comes near it */
#define STALL_IDLE_TIMEOUT 5  /* seconds: the setup whose clients stall (END_STALL), 15 times the longest pause */
#define READ_PAUSE_MAX_MS 300 /* "not reading for a while" */
#define WRITE_PAUSE_MAX_MS 20
#define BURST_MIN_LINES 1000
#define BURST_MAX_LINES 6000
#define INPUT_MAX (512 * 1024)
/* Bytes after an exit: a few, or past the 64 KiB a lingering close reads away at least. */
#define TRAILING_SMALL_MAX 4096
#define TRAILING_LARGE_MIN (64 * 1024)
#define TRAILING_MAX (256 * 1024)
#define MAX_LINE_MAX 5000     /* the largest max_line_length of the setups */
#define TELNET_SB_MAX 8       /* a short subnegotiation's data */
#define TELNET_PER_LINE_MAX 4 /* commands among a line's bytes, at most */
#define FAILURES_KEPT 8
#define SMALL_WINDOW 4096     /* bytes of receive buffer asked for (the kernel doubles it) */
#define RESTART_MIN_MS 200    /* --restarts: the time between two restarts, at random */
#define RESTART_MAX_MS 1200
#define RELOAD_MIN_MS 100     /* --reloads: the time between two reloads, at random */
#define RELOAD_MAX_MS 400
#define STOP_MIN_MS 200       /* --stops: the time between two stops, at random */
#define STOP_MAX_MS 1200
/* --stops: the longest a stop may take: half the default shutdown_timeout (10 s), which a
 * session the stop failed to wake would wait out; a lingering close takes a second at most. */
#define STOP_TOOK_MAX_MS 5000
#define STR_(x) #x
#define STR(x) STR_(x)

/* The daemon configurations, run in turn, each for a share of the time. */
typedef struct Setup {
        const char *name;
        unsigned max_line;
        const char *prefix, *suffix; /* the reply template around {name} */
        bool proxy; /* the clients connect to a PROXY listener and send a header first */
        unsigned idle_timeout; /* 0: IDLE_TIMEOUT; else some clients stall until it ends them (END_STALL) */
        bool chunk; /* framing = "chunk": one message a read; the clients go in lockstep (chunk_plan) */
} Setup;

static char long_prefix[1024];
static Setup setups[] = {
        { "default reply, max_line_length 64", 64, "Hello, ", "!", false, 0, false },
        { "100-byte reply, max_line_length 1024", 1024,
          "Hello there, dear client; this reply is long on purpose so that the output fills up: ", " -- bye!", false, 0,
          false },
        { "1,024-byte reply, max_line_length 5000", 5000, long_prefix, "", false, 0, false },
        { "behind a PROXY listener, default reply, max_line_length 64", 64, "Hello, ", "!", true, 0, false },
        { "idle_timeout " STR(STALL_IDLE_TIMEOUT) ", clients that stall, max_line_length 64", 64, "Hello, ", "!", false,
          STALL_IDLE_TIMEOUT, false },
        { "framing \"chunk\", default reply, max_line_length 5000", 5000, "Hello, ", "!", false, 0, true },
};
#define N_SETUPS (sizeof(setups) / sizeof(setups[0]))

typedef enum Ending {
        END_HALF_CLOSE, /* shutdown(SHUT_WR) after the last byte: every line answered, then EOF */
        END_EXIT,       /* the last line is exit: its answers, then EOF */
        END_CLOSE,      /* close() once every reply has arrived */
        END_RESET,      /* RST at a random point: what arrived must be a prefix of the model */
        END_STALL,      /* nothing more sent, replies read: ERR idle timeout, then EOF (Setup.idle_timeout) */
        N_ENDINGS,
} Ending;

static const char *const ending_names[N_ENDINGS] = { "half-close", "exit", "close", "reset", "stall" };

/* A session's plan. */
typedef struct Plan {
        uint64_t seed;
        Ending ending;
        unsigned char *in;
        size_t n;
        char *want; /* the greeting, then the model's replies */
        size_t want_n;
        bool want_eof;         /* the server closes after WANT */
        size_t reset_written;  /* END_RESET: reset once this much is written ... */
        size_t reset_received; /* ... and this much received (or all there is) */
        bool burst;
        bool urgent;      /* a byte of urgent data is sent once URGENT_AT bytes of IN are */
        size_t urgent_at; /* written (one at most: a second could pull the first into the stream) */
        bool too_long; /* the last line (or subnegotiation) is over max_line_length */
        bool shut_first;   /* END_RESET: a half-close once everything is written, the reset after */
        bool exits;        /* the input ends with an exit (then maybe lines read away unanswered) */
        bool small_window; /* a receive buffer of SMALL_WINDOW: the daemon meets back-pressure */
        bool aimed;        /* TCP_NODELAY, and writes cut where a reader must hold a part (aimed_cut) */
        bool telnet;   /* telnet commands among the lines */
        size_t header_len; /* a PROXY header in front of IN's lines (Setup.proxy) */
        size_t commands;
        size_t lines;
        size_t trailing; /* bytes after the exit, which the model leaves unanswered */
        size_t stop_at;  /* --stops: where the stop's ERR line began in what came; SIZE_MAX: not yet */
        /* Setup.chunk: IN holds MESSAGES messages, message K ending at MSG_END[K], each sent in
         * one write once GATE[K] bytes of WANT have come (the replies before it: one read must
         * not find two messages); GATE[MESSAGES] is the end of the last reply. */
        size_t messages;
        size_t *msg_end, *gate;
} Plan;

/* Shared figures. */
static atomic_uint_fast64_t n_sessions, n_lines, n_bytes_sent, n_bytes_checked, n_bursts, n_pauses,
        n_too_long, n_urgent, n_commands, n_trailing, n_endings[N_ENDINGS];
static atomic_uint_fast64_t n_aimed_cr, n_aimed_header; /* writes that ended at a CR before its LF, inside a PROXY header */
static atomic_uint_fast64_t n_chunk_messages; /* messages planned in Setup.chunk sessions that ended well */
static atomic_uint_fast64_t n_failures;
static atomic_uint_fast64_t n_closed_unheadered; /* see closed_before_its_header() */
static atomic_uint_fast64_t n_reset_ungreeted;   /* reset by the client before the greeting came */
static atomic_uint_fast64_t n_stopped;           /* --stops: sessions a stop ended, as check_stop() has it */
static atomic_uint_fast64_t n_timed_out;         /* stalled sessions the idle timeout ended, as the model has it */
static atomic_uint_fast64_t n_refused_stopped;   /* --stops: refused or reset while the daemon was down */
static pthread_mutex_t failures_lock = PTHREAD_MUTEX_INITIALIZER;
static char failures[FAILURES_KEPT][1024];

static atomic_bool stop_load;
static uint16_t port;       /* where the clients connect: the PROXY listener's with Setup.proxy */
static uint16_t spare_port; /* --reloads: a listener that comes and goes */
static const Setup *setup;
static uint64_t base_seed;
static uint64_t replay_seed; /* --replay: every session runs this plan; 0: none */
static bool stored;          /* --stored: handover = "always", under the test's PID 1 */
static bool restarts;        /* --restarts: under the test's PID 1, restarted again and again */
static bool reloads;         /* --reloads: its configuration changed and reloaded again and again */
static bool stops;           /* --stops: stopped (no hand-over) and started again and again */
static atomic_uint_fast64_t next_session;

/* as_service: the daemon runs under the test's PID 1 (store.h). */
static bool as_service(void) {
        return stored || restarts;
}

static void record_failure(const Plan *p, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* closed_before_its_header: a balancer's connection that a restart (or a stop) closed before
 * the daemon had read its PROXY header, as documented (docs/zero-downtime.md: the balancer
 * retries). It got nothing, not even the greeting; counted, and bounded in run_setup(). */
static bool closed_before_its_header(size_t received) {
        if (!setup->proxy || !(restarts || stops) || received > 0)
                return false;
        atomic_fetch_add(&n_closed_unheadered, 1);
        return true;
}

static void record_failure(const Plan *p, const char *format, ...) {
        uint64_t k = atomic_fetch_add(&n_failures, 1);
        char text[900];
        va_list ap;

        if (k >= FAILURES_KEPT)
                return;
        va_start(ap, format);
        vsnprintf(text, sizeof(text), format, ap);
        va_end(ap);
        pthread_mutex_lock(&failures_lock);
        snprintf(failures[k], sizeof(failures[k]), "[%s (--setup %zu); session seed %" PRIu64 ", %s, %zu lines%s] %s",
                 setup->name, (size_t) (setup - setups), p->seed, ending_names[p->ending], p->lines, p->burst ? " (burst)" : "", text);
        pthread_mutex_unlock(&failures_lock);
}

/* ---- plans ---- */

/* line_byte: any byte but '\n' (the terminator) and 0xFF (telnet's IAC in line framing). */
static unsigned char line_byte(Rng *r) {
        unsigned char c;

        do
                c = (unsigned char) (rng_below(r, 4) == 0 ? rng_below(r, 256) : ' ' + rng_below(r, 95));
        while (c == '\n' || c == 0xff);
        return c;
}

/* line_length: mostly short, sometimes exactly the limit. */
static size_t line_length(Rng *r, size_t max_line, bool burst) {
        size_t k = rng_below(r, 100);

        if (burst)
                return rng_below(r, (max_line < 40 ? max_line : 40) + 1);
        if (k < 5)
                return max_line;
        if (k < 25)
                return rng_below(r, max_line + 1);
        return rng_below(r, (max_line < 30 ? max_line : 30) + 1);
}

/* ---- telnet (README, Protocol) ---- */

#define IAC 0xff
#define SB 250
#define SE 240

static void put(Plan *p, unsigned char c) {
        p->in[p->n++] = c;
}

/* append_command: one telnet command that leaves the line it interrupts as it was: Are You
 * There, option negotiation (any option byte, IAC and LF included), a short subnegotiation
 * (IAC IAC inside it too), or one of the commands hellod ignores (NOP, DM, GA, EL, EC, a stray
 * SE). The model answers it in place. */
static void append_command(Plan *p, Rng *r) {
        static const unsigned char ignored[] = { 241, 242, 249, 248, 247, SE };

        put(p, IAC);
        switch (rng_below(r, 6)) {
        case 0:
                put(p, 246); /* AYT */
                break;
        case 1:
                put(p, ignored[rng_below(r, sizeof(ignored))]);
                break;
        case 2:
        case 3:
                put(p, (unsigned char) (251 + rng_below(r, 4))); /* WILL WONT DO DONT */
                put(p, (unsigned char) (rng_below(r, 8) == 0 ? (rng_below(r, 2) ? IAC : '\n') : rng_below(r, 256)));
                break;
        default: {
                size_t len = rng_below(r, TELNET_SB_MAX + 1);
                put(p, SB);
                for (size_t i = 0; i < len; i++) {
                        unsigned char c = (unsigned char) rng_below(r, 256);
                        put(p, c);
                        if (c == IAC)
                                put(p, IAC);
                }
                put(p, IAC);
                put(p, SE);
                break;
        }
        }
        p->commands++;
}

/* maybe_command: before the next byte of a telnet plan, now and then a command. */
static void maybe_command(Plan *p, Rng *r, unsigned *budget) {
        if (p->telnet && *budget > 0 && rng_below(r, 12) == 0) {
                append_command(p, r);
                --*budget;
        }
}

/* put_data: the data byte C of a line; in a telnet plan sometimes written the long way: a
 * 0xFF as IAC IAC, a byte that is no command (below 236) behind an IAC that is dropped. */
static void put_data(Plan *p, Rng *r, unsigned char c) {
        if (p->telnet && rng_below(r, 16) == 0 && c >= 0x80 && c < 236) {
                put(p, IAC);
        } else if (p->telnet && rng_below(r, 24) == 0) {
                put(p, IAC);
                c = IAC;
        }
        put(p, c);
}

/* line_room: the most bytes of IN a line can take: each byte doubled, its commands, CRLF. */
static size_t line_room(const Plan *p, size_t max_line) {
        return p->telnet ? 2 * max_line + TELNET_PER_LINE_MAX * (2 * TELNET_SB_MAX + 6) + 4 : max_line + 2;
}

/* append_line: one line of LEN data bytes, '\r\n' or '\n' terminated; never "exit" by chance. */
static void append_line(Plan *p, Rng *r, size_t len) {
        unsigned char data[MAX_LINE_MAX + 1];
        unsigned budget = TELNET_PER_LINE_MAX;

        for (size_t i = 0; i < len; i++)
                data[i] = line_byte(r);
        if (len == 4 && memcmp(data, "exit", 4) == 0)
                data[0] = 'E';
        for (size_t i = 0; i < len; i++) {
                maybe_command(p, r, &budget);
                put_data(p, r, data[i]);
        }
        if (len > 0 && rng_below(r, 4) == 0 && data[len - 1] != '\r') {
                /* A CRLF terminator: the '\r' is not part of the line, so the limit holds. */
                maybe_command(p, r, &budget);
                put(p, '\r');
        }
        maybe_command(p, r, &budget);
        put(p, '\n');
        p->lines++;
}

/* append_too_long: what ends the plan with the ERR: a line one over the limit, or in a telnet
 * plan sometimes a subnegotiation one over it. */
static void append_too_long(Plan *p, Rng *r, size_t max_line) {
        if (p->telnet && rng_below(r, 2) == 0) {
                put(p, IAC);
                put(p, SB);
                for (size_t i = 0; i < max_line + 1; i++)
                        put(p, 'S');
                put(p, IAC);
                put(p, SE);
                p->commands++;
        } else {
                for (size_t i = 0; i < max_line + 1; i++)
                        put(p, 'L');
                put(p, '\n');
                p->lines++;
        }
        p->too_long = true;
}

/* append_exit: the plan's last words: exit, or a telnet command that ends it as exit does
 * (IP, AO, BRK, EOF, ABORT). */
static void append_exit(Plan *p, Rng *r) {
        static const unsigned char ending[] = { 244, 245, 243, 236, 238 };

        if (p->telnet && rng_below(r, 3) == 0) {
                put(p, IAC);
                put(p, ending[rng_below(r, sizeof(ending))]);
                p->commands++;
                return;
        }
        const char *line = rng_below(r, 2) ? "exit\r\n" : "exit\n";
        memcpy(p->in + p->n, line, strlen(line));
        p->n += strlen(line);
}

/* append_trailing: lines after the exit, sent while its last replies are on their way:
 * hellod reads them away unanswered, and every reply before the exit still arrives, then the
 * end of file. Sometimes far more than the 64 KiB a lingering close reads at least: it used to
 * close there, and the reset that a close with bytes unread sends destroyed the replies the
 * client had not read yet. */
static void append_trailing(Plan *p, Rng *r) {
        size_t len = rng_below(r, 2) ? 1 + rng_below(r, TRAILING_SMALL_MAX)
                                     : TRAILING_LARGE_MIN + rng_below(r, TRAILING_MAX - TRAILING_LARGE_MIN + 1);

        for (size_t i = 0; i < len; i++)
                p->in[p->n + i] = i % 8 == 7 ? '\n' : (unsigned char) ('a' + rng_below(r, 26));
        p->n += len;
        p->trailing = len;
}

/* ---- PROXY headers (haproxy's doc/proxy-protocol.txt) ---- */

/* append_proxy_header: a header such as a balancer sends, naming a random client in
 * 198.51.0.0/16 or 2001:db8::/32 (reload_variants allow them): v1 TCP4 or TCP6 or UNKNOWN, or
 * v2 PROXY over IPv4 or IPv6, or v2 LOCAL (a health check's: the connection stays the
 * balancer's). */
static void append_proxy_header(Plan *p, Rng *r) {
        unsigned src_port = 1 + rng_below(r, 65535), dst_port = 1 + rng_below(r, 65535);
        unsigned char a = (unsigned char) rng_below(r, 256), b = (unsigned char) rng_below(r, 256);
        unsigned kind = rng_below(r, 5);

        if (kind < 3) {
                char text[128];
                int k = kind == 0   ? snprintf(text, sizeof(text), "PROXY TCP4 198.51.%u.%u 127.0.0.1 %u %u\r\n", a, b,
                                                 src_port, dst_port)
                        : kind == 1 ? snprintf(text, sizeof(text), "PROXY TCP6 2001:db8::%x:%x ::1 %u %u\r\n", a, b,
                                                 src_port, dst_port)
                                    : snprintf(text, sizeof(text), "PROXY UNKNOWN\r\n");
                memcpy(p->in + p->n, text, (size_t) k);
                p->n += (size_t) k;
        } else {
                bool local = kind == 4, v6 = rng_below(r, 2);
                memcpy(p->in + p->n, PROXY_V2_SIG, PROXY_V2_SIG_LEN);
                p->n += PROXY_V2_SIG_LEN;
                put(p, local ? 0x20 : 0x21);
                put(p, local ? 0x00 : v6 ? 0x21 : 0x11); /* AF_INET6 or AF_INET, STREAM */
                static const unsigned char net4[] = { 198, 51 }, net6[] = { 0x20, 0x01, 0x0d, 0xb8 };
                size_t len = local ? 0 : v6 ? 36 : 12;
                put(p, 0);
                put(p, (unsigned char) len);
                /* The addresses, then the ports; the source in 198.51.0.0/16 or 2001:db8::/32. */
                for (size_t i = 0; i < len; i++)
                        put(p, v6 && i < sizeof(net6)    ? net6[i]
                               : !v6 && i < sizeof(net4) ? net4[i]
                                                         : (unsigned char) rng_below(r, 256));
        }
        p->header_len = p->n;
}

/* ---- framing "chunk" ---- */

/* chunk_byte: any byte, mostly printable (no telnet in this framing: 0xFF is data). */
static unsigned char chunk_byte(Rng *r) {
        return (unsigned char) (rng_below(r, 8) == 0 ? rng_below(r, 256) : ' ' + rng_below(r, 95));
}

/* chunk_name: what hellod answers for the message MSG of LEN bytes: all of it but a final LF
 * or CRLF (proto.c, feed_chunk); an LF or CR inside it stays. */
static size_t chunk_name(const unsigned char *msg, size_t len) {
        if (len > 0 && msg[len - 1] == '\n') {
                len--;
                if (len > 0 && msg[len - 1] == '\r')
                        len--;
        }
        return len;
}

/* want_add: LEN bytes of the model's answer, behind what it has. */
static void want_add(Plan *p, const void *bytes, size_t len) {
        memcpy(p->want + p->want_n, bytes, len);
        p->want_n += len;
}

/* chunk_add: one message, its terminator (none, LF or CRLF) and the model's answer: the reply,
 * ERR line too long, or nothing for exit. */
static void chunk_add(Plan *p, Rng *r, const unsigned char *data, size_t len, size_t max_line) {
        static const char *const terminators[] = { "", "", "\n", "\r\n" };
        const char *t = terminators[rng_below(r, 4)];
        unsigned char *msg = p->in + p->n;

        memcpy(msg, data, len);
        memcpy(msg + len, t, strlen(t));
        p->n += len + strlen(t);
        p->msg_end[p->messages++] = p->n;
        size_t name = chunk_name(msg, len + strlen(t));
        if (name > max_line) {
                want_add(p, HELLOD_ERR_TOO_LONG, strlen(HELLOD_ERR_TOO_LONG));
                p->too_long = true;
        } else if (name == 4 && memcmp(msg, "exit", 4) == 0) {
                p->exits = true;
        } else {
                want_add(p, setup->prefix, strlen(setup->prefix));
                want_add(p, msg, name);
                want_add(p, setup->suffix, strlen(setup->suffix));
                p->lines++;
        }
        p->gate[p->messages] = p->want_n;
}

/* chunk_plan: a session of Setup.chunk: the greeting without a terminator, up to 40 messages
 * (each answered: never empty, never exit by chance), and perhaps a last one over the limit
 * (which a read may cut at max_line_length + 3 bytes: it is over the limit still) or an exit. Messages cannot be
 * pipelined here: the client sends each in one write once the replies before it came. */
static bool chunk_plan(Plan *p, Rng *r, size_t max_line) {
        size_t count = 1 + rng_below(r, 40), greeting = strlen(HELLOD_GREETING) - 2;
        size_t pl = strlen(setup->prefix), sl = strlen(setup->suffix);
        unsigned char data[MAX_LINE_MAX + 256];

        if (max_line > MAX_LINE_MAX || !(p->in = malloc((count + 1) * (max_line + 256))) ||
            !(p->msg_end = malloc((count + 2) * sizeof(size_t))) || !(p->gate = malloc((count + 2) * sizeof(size_t))) ||
            !(p->want = malloc(greeting + count * (pl + max_line + sl) + 64)))
                return false;
        want_add(p, HELLOD_GREETING, greeting);
        p->gate[0] = p->want_n;
        for (size_t i = 0; i < count; i++) {
                size_t len = line_length(r, max_line, false);
                for (size_t k = 0; k < len; k++)
                        data[k] = chunk_byte(r);
                /* A reply must come, or the next write could join this one in a read: a first
                 * byte that no stripping of a terminator reaches, and not exit's. */
                if (len == 0 || data[0] == '\n' || data[0] == '\r' || data[0] == 'e')
                        data[0] = 'x', len = len ? len : 1;
                chunk_add(p, r, data, len, max_line);
        }
        if (rng_below(r, 12) == 0) {
                /* Letters, so that no terminator it ends in brings it back within the limit. */
                size_t len = max_line + 1 + rng_below(r, 200);
                for (size_t k = 0; k < len; k++)
                        data[k] = (unsigned char) ('a' + rng_below(r, 26));
                chunk_add(p, r, data, len, max_line);
        } else if (p->ending == END_EXIT || (p->ending == END_RESET && rng_below(r, 3) == 0)) {
                chunk_add(p, r, (const unsigned char *) "exit", 4, max_line);
        }
        return true;
}

static bool plan_end(Plan *p, Rng *r);

static bool plan_make(Plan *p, uint64_t seed) {
        Rng r = { seed };
        size_t max_line = setup->max_line;

        memset(p, 0, sizeof(*p));
        p->seed = seed;
        /* A stall only where the idle timeout is short enough to wait for, and there one
         * session in four, by its seed: consecutive sessions' seeds step by an odd constant, so
         * any four in a row have one, and a slow run still has its stalls. */
        p->ending = setup->idle_timeout && seed % 4 == 0 ? END_STALL : (Ending) rng_below(&r, END_STALL);
        if (setup->chunk) {
                if (!chunk_plan(p, &r, max_line))
                        return false;
                return plan_end(p, &r);
        }
        p->burst = rng_below(&r, 5) == 0;
        size_t lines = p->burst ? BURST_MIN_LINES + rng_below(&r, BURST_MAX_LINES - BURST_MIN_LINES + 1)
                                : rng_below(&r, 40);
        p->telnet = rng_below(&r, 4) == 0;
        if (max_line > MAX_LINE_MAX || !(p->in = malloc(INPUT_MAX + line_room(p, max_line) + max_line + 128 + TRAILING_MAX)))
                return false;
        if (setup->proxy)
                append_proxy_header(p, &r);
        for (size_t i = 0; i < lines && p->n + line_room(p, max_line) < INPUT_MAX; i++)
                append_line(p, &r, line_length(&r, max_line, p->burst));
        if (rng_below(&r, 12) == 0) {
                /* Over the limit, last (after a burst too): the daemon answers ERR and discards
                 * the rest; in one plan of three more lines come behind it, read away by the
                 * lingering close as after an exit, so that the ERR is not destroyed by a reset. */
                append_too_long(p, &r, max_line);
                if (rng_below(&r, 3) == 0)
                        append_trailing(p, &r);
        } else if (p->ending == END_EXIT || (p->ending == END_RESET && rng_below(&r, 3) == 0)) {
                /* A reset may come while the daemon lingers after the exit, or flushes its
                 * last replies. */
                p->exits = true;
                append_exit(p, &r);
                if (rng_below(&r, 3) == 0)
                        append_trailing(p, &r);
        } else if (p->ending == END_HALF_CLOSE && rng_below(&r, 3) == 0) {
                /* An unterminated last line: answered at EOF. */
                size_t len = 1 + rng_below(&r, max_line < 20 ? max_line : 20);
                for (size_t i = 0; i < len; i++)
                        p->in[p->n + i] = (unsigned char) ('a' + rng_below(&r, 26));
                p->n += len;
        }

        size_t pl = strlen(setup->prefix), sl = strlen(setup->suffix);
        /* A telnet command costs the model at most 4 bytes of output per byte of input. */
        size_t room = strlen(HELLOD_GREETING) + (p->lines + 2) * (pl + sl + max_line + 4) + 4 * p->n + 64;
        if (!(p->want = malloc(room)))
                return false;
        memcpy(p->want, HELLOD_GREETING, strlen(HELLOD_GREETING));
        p->want_n = strlen(HELLOD_GREETING) + harness_model_replies(setup->prefix, setup->suffix, p->in + p->header_len,
                                                                     p->n - p->header_len,
                                                                     max_line, p->want + strlen(HELLOD_GREETING));
        /* A stalled client's complete lines are answered, then the timeout ends it (an ERR line
         * too long ends it first). */
        if (p->ending == END_STALL && !p->too_long) {
                want_add(p, HELLOD_ERR_IDLE, strlen(HELLOD_ERR_IDLE));
        }
        if (!plan_end(p, &r))
                return false;
        p->urgent = rng_below(&r, 4) == 0;
        p->small_window = rng_below(&r, 8) == 0;
        p->aimed = rng_below(&r, 4) == 0;
        /* Behind the header: an urgent mark inside it is left alone (a balancer sends none). */
        p->urgent_at = p->header_len + rng_below(&r, p->n - p->header_len + 1);
        return true;
}

/* plan_end: who closes, and when a reset comes. */
static bool plan_end(Plan *p, Rng *r) {
        /* The daemon closes after exit, ERR, at EOF and at the idle timeout; after CLOSE and
         * RESET the client does. */
        p->shut_first = p->ending == END_RESET && !p->too_long && rng_below(r, 3) == 0;
        p->want_eof = p->ending == END_HALF_CLOSE || p->ending == END_EXIT || p->ending == END_STALL || p->too_long ||
                      p->shut_first || p->exits;
        if (p->want_eof && p->ending == END_CLOSE)
                p->ending = END_HALF_CLOSE; /* the ERR ends it anyway: wait for the daemon's EOF */
        /* After an exit or a half-close, the reset comes once everything is written. */
        p->reset_written = p->shut_first || p->exits ? p->n : rng_below(r, p->n + 1);
        p->reset_received = rng_below(r, p->want_n + 1);
        if (setup->chunk)
                p->small_window = rng_below(r, 8) == 0;
        return true;
}

static void plan_free(Plan *p) {
        free(p->in);
        free(p->want);
        free(p->msg_end);
        free(p->gate);
}

/* ---- one client ---- */

static int64_t now_ms(void) {
        return harness_now_ms();
}

static void reset_close(int fd) {
        struct linger l = { .l_onoff = 1, .l_linger = 0 };

        (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        close(fd);
}

/* check: the bytes that just arrived at offset AT against the model. */
static bool check(const Plan *p, const char *got, size_t n, size_t at) {
        char e1[200], e2[200];

        if (at + n <= p->want_n && memcmp(p->want + at, got, n) == 0)
                return true;
        size_t i = 0;
        while (i < n && at + i < p->want_n && p->want[at + i] == got[i])
                i++;
        size_t show = n - i < 60 ? n - i : 60;
        size_t wshow = at + i < p->want_n ? (p->want_n - at - i < 60 ? p->want_n - at - i : 60) : 0;
        record_failure(p, "byte %zu of %zu differs from the model: expected \"%s\", got \"%s\"", at + i, p->want_n,
                       harness_escape(p->want + at + i, wshow, e1, sizeof(e1)),
                       harness_escape(got + i, show, e2, sizeof(e2)));
        return false;
}

/* reply_ends_at: whether a reply (or the greeting) of P's model ends at offset B, or a telnet
 * command's answer does (IAC, WILL/WONT/DO/DONT, the option: it comes in place, within a line);
 * B = 0 too (the stop came before the greeting). */
static bool reply_ends_at(const Plan *p, size_t b) {
        const unsigned char *w = (const unsigned char *) p->want;

        if (p->gate) { /* Setup.chunk: no terminators to go by */
                for (size_t i = 0; i <= p->messages; i++)
                        if (p->gate[i] == b)
                                return true;
                return b == 0;
        }
        return b == 0 || w[b - 1] == '\n' || (p->telnet && b >= 3 && w[b - 3] == IAC && w[b - 2] >= 251 && w[b - 2] <= 254);
}

/* check_stop: with --stops, the bytes that just arrived at offset AT: the model's up to the end
 * of a reply (reply_ends_at), then the stop's ERR line, and nothing after it. Its first bytes
 * may have agreed with the model's (an ERR line the model has there too): it may have begun up
 * to its length back. P->stop_at: where it began. */
static bool check_stop(Plan *p, const char *got, size_t n, size_t at) {
        static const char err[] = HELLOD_ERR_SHUTDOWN;
        const size_t err_len = sizeof(err) - 1;
        char e1[200];

        if (p->stop_at == SIZE_MAX) {
                size_t i = 0;
                while (i < n && at + i < p->want_n && p->want[at + i] == got[i])
                        i++;
                if (i == n)
                        return true;
                size_t end = at + i;
                for (size_t b = end;; b--) {
                        size_t k = end - b; /* of the ERR line, agreeing with the model */
                        if (reply_ends_at(p, b) && memcmp(p->want + b, err, k) == 0 &&
                            n - i <= err_len - k && memcmp(err + k, got + i, n - i) == 0) {
                                p->stop_at = b;
                                return true;
                        }
                        if (b == 0 || k == err_len)
                                break;
                }
                return check(p, got, n, at); /* records the difference */
        }
        size_t k = at - p->stop_at;
        if (n <= err_len - k && memcmp(err + k, got, n) == 0)
                return true;
        record_failure(p, "after the model's first %zu bytes, the stop's ERR line, then \"%s\"", p->stop_at,
                       harness_escape(got, n < 60 ? n : 60, e1, sizeof(e1)));
        return false;
}

/* refused_by_a_stop: with --stops, a connection refused, or reset with nothing received (it waited
 * in the backlog of the listener the stop closed): counted, not a failure. */
static bool refused_by_a_stop(size_t received, int error) {
        if (!stops || received > 0 || (error != ECONNREFUSED && error != ECONNRESET))
                return false;
        atomic_fetch_add(&n_refused_stopped, 1);
        harness_sleep_ms(5); /* the daemon is down: its clients do not spin meanwhile */
        return true;
}

/* record_eof_short: the daemon closed before the model's last byte: what was missing, and
 * how the input ended (the lines those replies answer). */
static void record_eof_short(const Plan *p, size_t received) {
        char missing[200], input_end[200];
        size_t m = p->want_n - received < 60 ? p->want_n - received : 60;
        size_t t = p->n < 60 ? p->n : 60;

        record_failure(p, "EOF after %zu of %zu bytes: missing \"%s\"; the plan's input (%zu bytes) ends \"%s\"", received,
                       p->want_n, harness_escape(p->want + received, m, missing, sizeof(missing)), p->n,
                       harness_escape((const char *) p->in + p->n - t, t, input_end, sizeof(input_end)));
}

/* aimed_cut: where an aimed plan's write that begins at WRITTEN and would end at END ends
 * instead, or END: inside the PROXY header, or just behind a CR that an LF follows (found
 * within a few KiB ahead). Sent with TCP_NODELAY and often followed by a pause, so that the
 * daemon reads up to there and must hold the part (a header not yet whole; a CR that may be a
 * terminator's or the line's own byte, after a line of max_line_length bytes too) until the
 * rest comes: random cuts land there seldom, and Nagle's algorithm merges them away. */
static size_t aimed_cut(const Plan *p, Rng *r, size_t written, size_t end) {
        if (written + 1 < p->header_len) {
                atomic_fetch_add(&n_aimed_header, 1);
                return written + 1 + rng_below(r, p->header_len - written - 1); /* short of its end */
        }
        if (written < p->header_len)
                return end;
        size_t ahead = p->n - written < 4096 ? p->n - written : 4096;
        const unsigned char *at = p->in + written;
        while (ahead > 1) {
                const unsigned char *cr = memchr(at, '\r', ahead - 1);
                if (!cr)
                        break;
                if (cr[1] == '\n') {
                        atomic_fetch_add(&n_aimed_cr, 1);
                        return (size_t) (cr - p->in) + 1;
                }
                ahead -= (size_t) (cr + 1 - at);
                at = cr + 1;
        }
        return end;
}

/* run_session: the plan against the daemon; false on a failure (recorded). */
static bool run_session(Plan *p, Rng *r) {
        bool v4 = rng_below(r, 2) || as_service(); /* PID 1's listener (store_listener) is IPv4 */
        const char *ip = v4 ? "127.0.0.1" : "::1";
        size_t written = 0, received = 0, chunk_end = 0, next_msg = 0;
        int64_t progress = now_ms(), read_pause_until = 0, write_pause_until = 0;
        bool write_shut = false, urgent_sent = !p->urgent, ok = false;
        char buf[65536];
        int fd = client_start_connect_window(ip, port, p->small_window ? SMALL_WINDOW : 0);

        p->stop_at = SIZE_MAX;
        if (fd < 0) {
                if (!refused_by_a_stop(0, -fd))
                        record_failure(p, "connect: %s", strerror(-fd));
                return false;
        }
        int one = 1;
        if (p->aimed && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
                record_failure(p, "TCP_NODELAY: %s", strerror(errno));
                close(fd);
                return false;
        }
        for (;;) {
                int64_t now = now_ms();
                if (now - progress > IO_TIMEOUT_MS) {
                        record_failure(p, "no progress for %d ms: %zu of %zu bytes written, %zu of %zu received",
                                       IO_TIMEOUT_MS, written, p->n, received, p->want_n);
                        break;
                }
                bool writes_left = written < p->n || !urgent_sent;
                if (!writes_left && (p->ending == END_HALF_CLOSE || p->shut_first) && !write_shut) {
                        (void) shutdown(fd, SHUT_WR);
                        write_shut = true;
                }
                /* A reset after a half-close comes once the FIN is out. */
                if (p->ending == END_RESET && written >= p->reset_written && received >= p->reset_received &&
                    (write_shut || !p->shut_first)) {
                        if (received == 0)
                                atomic_fetch_add(&n_reset_ungreeted, 1);
                        reset_close(fd);
                        return true; /* every byte so far was checked */
                }
                if (p->ending == END_CLOSE && !writes_left && received == p->want_n) {
                        close(fd);
                        return true;
                }

                /* Setup.chunk: a message goes once the replies before it came. */
                bool can_write = writes_left && now >= write_pause_until &&
                                 (!p->gate || written < chunk_end || received >= p->gate[next_msg]);
                bool can_read = now >= read_pause_until;
                struct pollfd pfd = { .fd = fd, .events = (short) ((can_write ? POLLOUT : 0) | (can_read ? POLLIN : 0)) };
                int64_t wake = 100;
                if (!can_read)
                        wake = read_pause_until - now;
                if (!can_write && writes_left && now < write_pause_until && write_pause_until - now < wake)
                        wake = write_pause_until - now;
                if (poll(&pfd, 1, (int) (wake > 0 ? wake : 0)) < 0 && errno != EINTR) {
                        record_failure(p, "poll: %s", strerror(errno));
                        break;
                }
                if ((pfd.revents & POLLOUT) && !urgent_sent && written == p->urgent_at) {
                        ssize_t k = send(fd, "U", 1, MSG_NOSIGNAL | MSG_OOB);
                        if (k == 1) {
                                urgent_sent = true;
                                progress = now_ms();
                                atomic_fetch_add(&n_urgent, 1);
                        } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
                                if (refused_by_a_stop(received, errno) || closed_before_its_header(received))
                                        break;
                                if (!p->want_eof && !stops) {
                                        record_failure(p, "urgent send after %zu bytes: %s", written, strerror(errno));
                                        break;
                                }
                                written = p->n, urgent_sent = true; /* nothing more goes through */
                        }
                } else if (pfd.revents & POLLOUT) {
                        bool cut_command = false, cut_aimed = false;
                        if (written == chunk_end && p->gate) { /* Setup.chunk: the next message */
                                chunk_end = p->msg_end[next_msg++];
                        } else if (written == chunk_end) { /* a new write: 1 byte to everything left */
                                chunk_end = written + 1 + rng_below(r, rng_below(r, 4) == 0 ? p->n - written : 64);
                                cut_command = p->telnet && rng_below(r, 3) == 0;
                                if (!cut_command && p->aimed && rng_below(r, 2) == 0) {
                                        size_t end = aimed_cut(p, r, written, chunk_end);
                                        cut_aimed = end != chunk_end;
                                        chunk_end = end;
                                }
                        }
                        if (chunk_end > p->n)
                                chunk_end = p->n;
                        if (cut_command) {
                                /* The write ends just behind an IAC, and sometimes the client pauses
                                 * there: the daemon holds part of a command for a while (a restart
                                 * may come then). */
                                const unsigned char *iac = memchr(p->in + written, IAC, chunk_end - written);
                                if (iac && iac + 1 < p->in + p->n)
                                        chunk_end = (size_t) (iac - p->in) + 1;
                                else
                                        cut_command = false;
                        }
                        if (!urgent_sent && written < p->urgent_at && chunk_end > p->urgent_at)
                                chunk_end = p->urgent_at; /* the urgent byte goes between two writes */
                        ssize_t k = send(fd, p->in + written, chunk_end - written, MSG_NOSIGNAL);
                        if (k > 0 && p->gate && written + (size_t) k < chunk_end) {
                                record_failure(p, "message %zu went out in two writes (%zd of %zu bytes)", next_msg - 1, k,
                                               chunk_end - written);
                                break;
                        }
                        if (k > 0) {
                                written += (size_t) k;
                                progress = now_ms();
                                atomic_fetch_add(&n_bytes_sent, (uint64_t) k);
                                if (rng_below(r, (cut_command || cut_aimed) && written == chunk_end ? 2 : 50) == 0)
                                        write_pause_until = now_ms() + (int64_t) rng_below(r, WRITE_PAUSE_MAX_MS);
                        } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
                                /* The daemon may close after exit or ERR (a stop's too) while the rest
                                 * is in flight. */
                                if (refused_by_a_stop(received, errno) || closed_before_its_header(received))
                                        break;
                                if (!p->want_eof && !stops) {
                                        record_failure(p, "send after %zu bytes: %s", written, strerror(errno));
                                        break;
                                }
                                written = p->n, urgent_sent = true; /* nothing more goes through */
                        }
                }
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        size_t want = 1 + rng_below(r, rng_below(r, 3) == 0 ? sizeof(buf) : 512);
                        if (p->ending == END_RESET && received < p->reset_received && p->reset_received - received < want)
                                want = p->reset_received - received;
                        ssize_t k = recv(fd, buf, want, 0);
                        if (k > 0) {
                                if (!(stops ? check_stop(p, buf, (size_t) k, received) : check(p, buf, (size_t) k, received)))
                                        break;
                                received += (size_t) k;
                                progress = now_ms();
                                atomic_fetch_add(&n_bytes_checked, (uint64_t) k);
                                if (rng_below(r, 40) == 0) {
                                        read_pause_until = now_ms() + 20 + (int64_t) rng_below(r, READ_PAUSE_MAX_MS);
                                        atomic_fetch_add(&n_pauses, 1);
                                }
                        } else if (k == 0) {
                                if (closed_before_its_header(received))
                                        break;
                                if (p->stop_at != SIZE_MAX) {
                                        ok = received == p->stop_at + strlen(HELLOD_ERR_SHUTDOWN);
                                        if (ok)
                                                atomic_fetch_add(&n_stopped, 1);
                                        else
                                                record_failure(p, "EOF %zu bytes into the stop's ERR line", received - p->stop_at);
                                        break;
                                }
                                if (!p->want_eof)
                                        record_failure(p, "EOF after %zu of %zu bytes; the model keeps it open", received,
                                                       p->want_n);
                                else if (received != p->want_n)
                                        record_eof_short(p, received);
                                else
                                        ok = true;
                                if (ok && p->ending == END_STALL && !p->too_long)
                                        atomic_fetch_add(&n_timed_out, 1);
                                break;
                        } else if (errno != EAGAIN && errno != EINTR) {
                                if (!refused_by_a_stop(received, errno) && !closed_before_its_header(received))
                                        record_failure(p, "recv after %zu of %zu bytes: %s", received, p->want_n,
                                                       strerror(errno));
                                break;
                        }
                }
        }
        close(fd);
        return ok;
}

static void *load_thread(void *arg) {
        (void) arg;
        while (!atomic_load(&stop_load)) {
                uint64_t seed = replay_seed ? replay_seed
                                            : base_seed + atomic_fetch_add(&next_session, 1) * 0x9e3779b97f4a7c15u;
                Rng r = { seed ^ 0x5bd1e995u };
                Plan p;

                if (!plan_make(&p, seed)) {
                        record_failure(&p, "out of memory");
                        plan_free(&p);
                        break;
                }
                if (run_session(&p, &r)) {
                        atomic_fetch_add(&n_sessions, 1);
                        atomic_fetch_add(&n_lines, p.lines);
                        atomic_fetch_add(&n_endings[p.ending], 1);
                        atomic_fetch_add(&n_bursts, p.burst ? 1 : 0);
                        if (p.too_long)
                                atomic_fetch_add(&n_too_long, 1);
                        atomic_fetch_add(&n_commands, p.commands);
                        atomic_fetch_add(&n_trailing, p.trailing > TRAILING_SMALL_MAX ? 1 : 0);
                        atomic_fetch_add(&n_chunk_messages, p.messages);
                }
                plan_free(&p);
        }
        return NULL;
}

/* ---- the run ---- */

static unsigned checks_passed, checks_failed;

static void verdict(bool ok, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void verdict(bool ok, const char *format, ...) {
        va_list ap;

        printf("%s: ", ok ? "PASS" : "FAIL");
        va_start(ap, format);
        vprintf(format, ap);
        va_end(ap);
        printf("\n");
        if (ok)
                checks_passed++;
        else
                checks_failed++;
}

static _Noreturn void fail_hard(const char *message) {
        fprintf(stderr, "driver: %s\n", message);
        printf("FAIL: %s\ndriver checks: %u passed, %u failed\n", message, checks_passed, checks_failed + 1);
        harness_cleanup();
        exit(1);
}

/* The daemon's configuration: idle_timeout, max_line_length, the reply's prefix and suffix. */
#define CONFIG "idle_timeout = %d;\nmax_line_length = %u;\nreply = \"%s{name}%s\";\nmax_connections = 1000;\nframing = \"%s\";\n"

/* end_daemon: D gone, and as a service the test's part of PID 1 (ST, LISTENER) too. */
static void end_daemon(Hellod *d, Store *st, int listener) {
        if (as_service())
                store_end_rig(d, st, listener);
        else
                hellod_free(d);
}

/* restarts_verdict: the N restarts of D (UNCLEAN of them not a clean exit) each handed every
 * conversation over: one "handed ... over" line each, none with a conversation closed, and no
 * record refused by the next process. */
static void restarts_verdict(Hellod *d, const Setup *s, unsigned n, unsigned unclean) {
        char *err = hellod_stderr(d);
        unsigned handed = 0, conversations = 0, closed = 0;

        /* "handed N conversation(s) over to the next process (M closed) in ..." */
        for (const char *at = strstr(err, "handed "); at; at = strstr(at + 1, "handed ")) {
                unsigned k, lost;
                if (sscanf(at, "handed %u conversation%*[s] over to the next process (%u closed)", &k, &lost) != 2 &&
                    sscanf(at, "handed %u conversation over to the next process (%u closed)", &k, &lost) != 2)
                        continue;
                handed++;
                conversations += k;
                closed += lost;
        }
        bool refused = strstr(err, "cannot resume") || strstr(err, "cannot be handed over");
        free(err);
        verdict(n > 0 && unclean == 0, "%s: %u restarts, %u without a clean exit", s->name, n, unclean);
        verdict(handed == n && conversations > 0 && closed == 0 && !refused,
                "%s: %u hand-overs logged for %u restarts, %u conversations handed over, %u closed%s", s->name, handed, n,
                conversations, closed, refused ? ", a record refused" : "");
}

/* What --reloads changes, in turn: settings a reload applies to the running daemon, none of
 * which changes what the model answers (the sources behind a PROXY header are allowed). */
static const char *const reload_variants[] = {
        "",
        "log_level = \"info\";\nmax_connections_per_ip = 100000;\n",
        "rate_limit_per_ip = 1000000;\nrate_limit_burst = 1000000;\ndeny = [ \"192.0.2.0/24\" ];\n",
        "allow = [ \"127.0.0.0/8\", \"::1\", \"198.51.0.0/16\", \"2001:db8::/32\" ];\nlog_level = \"debug\";\n",
};
#define N_RELOAD_VARIANTS (sizeof(reload_variants) / sizeof(reload_variants[0]))

/* uring_expected: whether the pass asks for io_uring and S's daemon can have it. By design epoll
 * serves a daemon with a PROXY listener (that setup is an epoll run on every pass) and one with
 * handover = "always" (--stored). */
static bool uring_expected(const Setup *s) {
        return harness_model_is("io_uring") && !s->proxy && !stored;
}

/* fell_back: whether the log ERR of one process says its loops run on epoll. */
static bool fell_back(const char *err) {
        return strstr(err, "the event loops use epoll") != NULL;
}

/* fell_back_to_epoll: whether D's process (its stderr is truncated at each start) ran its
 * loops on epoll where io_uring was expected. */
static bool fell_back_to_epoll(Hellod *d, const Setup *s) {
        if (!uring_expected(s))
                return false;
        char *err = hellod_stderr(d);
        bool fell = fell_back(err);
        free(err);
        return fell;
}

static const char *framing_of(const Setup *s) {
        return s->chunk ? "chunk" : "line";
}

static int idle_timeout_of(const Setup *s) {
        return (int) (s->idle_timeout ? s->idle_timeout : IDLE_TIMEOUT);
}

/* write_config: D's configuration for S, with the reload variant V; the odd ones listen on
 * spare_port as well, so that the reloads add and remove a listener (the clients never use
 * it). As a service the clients' listener is PID 1's (on port); else a plain one on D's port
 * (the harness's readiness probe), and behind a balancer PROXY ones on port, for the clients. */
static void write_config(Hellod *d, const Setup *s, size_t v) {
        const char *variant = reload_variants[v % N_RELOAD_VARIANTS];
        char spare[64] = "";

        if (v % 2 == 1)
                snprintf(spare, sizeof(spare), ", \"127.0.0.1:%u\"", (unsigned) spare_port);
        if (as_service())
                hellod_write_config(d, "listen = ( { address = \"127.0.0.1:%u\"; proxy_protocol = %s; }%s );\n%s" CONFIG
                                    "handover = \"%s\";\n%s",
                                    (unsigned) port, s->proxy ? "true" : "false", spare,
                                    s->proxy ? "proxy_from = [ \"127.0.0.1\" ];\n" : "", idle_timeout_of(s), s->max_line,
                                    s->prefix, s->suffix, framing_of(s), stored ? "always" : "restart", variant);
        else if (s->proxy)
                hellod_write_config(d,
                                    "listen = ( \"127.0.0.1:%u\", { address = \"127.0.0.1:%u\"; proxy_protocol = true; },\n"
                                    "           { address = \"[::1]:%u\"; proxy_protocol = true; }%s );\n"
                                    "proxy_from = [ \"127.0.0.1\", \"::1\" ];\n" CONFIG "%s",
                                    (unsigned) d->port, (unsigned) port, (unsigned) port, spare, idle_timeout_of(s),
                                    s->max_line, s->prefix, s->suffix, framing_of(s), variant);
        else
                hellod_write_config(d, "listen = ( \"127.0.0.1:%u\", \"[::1]:%u\"%s );\n" CONFIG "%s", (unsigned) port,
                                    (unsigned) port, spare, idle_timeout_of(s), s->max_line, s->prefix, s->suffix,
                                    framing_of(s), variant);
}

/* spare_listening: whether something accepts on 127.0.0.1:spare_port. */
static bool spare_listening(void) {
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(spare_port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool ok = fd >= 0 && connect(fd, (const struct sockaddr *) &addr, sizeof(addr)) == 0;

        if (fd >= 0)
                close(fd);
        return ok;
}

/* spare_wanted: whether the spare listener should accept after N reloads: after an odd count
 * (a SIGHUP during a reload makes one more reload, which reads the last file); never as a
 * service, whose listeners are PID 1's: socket activation keeps the passed sockets across
 * reloads and restarts, and hellod warns that they differ from 'listen' (README). */
static bool spare_wanted(unsigned n) {
        return !as_service() && n % 2 == 1;
}

/* reloads_verdict: every reload applied, none failed, and the last one's listeners in place. */
static void reloads_verdict(Hellod *d, const Setup *s, unsigned n) {
        bool want = spare_wanted(n), spare = spare_listening();
        for (int64_t end = now_ms() + 5000; spare != want && now_ms() < end; spare = spare_listening())
                harness_sleep_ms(50);
        verdict(spare == want, "%s: the spare listener %s after %u reloads", s->name,
                spare ? "accepts" : "is closed", n);
        unsigned applied = (unsigned) hellod_count_in_stderr(d, "configuration reloaded from");
        bool failed = hellod_count_in_stderr(d, "reload failed") > 0;
        /* SIGHUPs that come during a reload make one more, not one each. */
        verdict(n > 0 && applied > 0 && applied <= n && !failed, "%s: %u reloads asked for, %u applied%s", s->name, n,
                applied, failed ? ", one failed" : "");
}

static void run_setup(const Setup *s, unsigned seconds) {
        pthread_t threads[CLIENT_THREADS];
        uint64_t before = atomic_load(&n_sessions), failed_before = atomic_load(&n_failures);
        uint64_t unheadered_before = atomic_load(&n_closed_unheadered), ungreeted_before = atomic_load(&n_reset_ungreeted);
        uint64_t timed_out_before = atomic_load(&n_timed_out);

        setup = s;
        Store st;
        int listener = -1;
        Hellod *d;
        if (as_service()) {
                d = hellod_new();
                store_start(&st, d->dir);
                listener = store_listener(&port);
                spare_port = harness_pick_port();
                write_config(d, s, 0);
                store_start_hellod(d, &st, listener);
                store_wait_ready(d, &st, 1); /* counted before the first restart counts on */
                hellod_wait_stderr(d, "started");
        } else {
                d = hellod_new();
                port = s->proxy ? harness_pick_port() : d->port;
                spare_port = harness_pick_port();
                write_config(d, s, 0);
                hellod_spawn(d, NULL);
                hellod_wait_ready(d);
        }
        Baseline baseline = baseline_take(d); /* the readiness probe's connection gone */
        if (!baseline.steady)
                fail_hard("hellod's descriptors did not settle before the load");
        int fds_before = baseline.fds;
        atomic_store(&stop_load, false);
        for (int i = 0; i < CLIENT_THREADS; i++)
                if (pthread_create(&threads[i], NULL, load_thread, NULL) != 0)
                        fail_hard("cannot start a client thread");
        Rng rng = { base_seed ^ (uint64_t) (s - setups) };
        unsigned n_restarts = 0, n_unclean = 0, n_reloads = 0, n_stops = 0, n_epoll = 0;
        int64_t longest_stop = 0;
        uint64_t stopped_before = atomic_load(&n_stopped), refused_before = atomic_load(&n_refused_stopped);
        int64_t next_restart = now_ms() + RESTART_MIN_MS + (int64_t) rng_below(&rng, RESTART_MAX_MS - RESTART_MIN_MS);
        int64_t next_stop = now_ms() + STOP_MIN_MS + (int64_t) rng_below(&rng, STOP_MAX_MS - STOP_MIN_MS);
        int64_t next_reload = now_ms() + RELOAD_MIN_MS + (int64_t) rng_below(&rng, RELOAD_MAX_MS - RELOAD_MIN_MS);
        for (int64_t end = now_ms() + (int64_t) seconds * 1000; now_ms() < end && hellod_alive(d);) {
                harness_sleep_ms(restarts || reloads ? 10 : 100);
                if (reloads && now_ms() >= next_reload) {
                        write_config(d, s, ++n_reloads);
                        hellod_signal(d, SIGHUP);
                        next_reload = now_ms() + RELOAD_MIN_MS + (int64_t) rng_below(&rng, RELOAD_MAX_MS - RELOAD_MIN_MS);
                }
                if (stops && now_ms() >= next_stop) {
                        int64_t began = now_ms();
                        int status = hellod_stop(d); /* SIGTERM: no service, so a plain stop */
                        n_unclean += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
                        n_epoll += fell_back_to_epoll(d, s);
                        if (now_ms() - began > longest_stop)
                                longest_stop = now_ms() - began;
                        hellod_spawn(d, NULL);
                        hellod_wait_ready(d);
                        n_stops++;
                        next_stop = now_ms() + STOP_MIN_MS + (int64_t) rng_below(&rng, STOP_MAX_MS - STOP_MIN_MS);
                }
                if (!restarts || now_ms() < next_restart)
                        continue;
                int status = hellod_stop(d); /* SIGTERM: it hands over, as systemctl restart has it */
                n_unclean += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
                n_epoll += fell_back_to_epoll(d, s);
                unsigned readies = store_readies(&st);
                store_start_hellod(d, &st, listener);
                /* The next restart once this start is done, as systemctl's waits for it: a
                 * SIGTERM before hellod takes signals up would end it without a hand-over. */
                store_wait_ready(d, &st, readies + 1);
                n_restarts++;
                next_restart = now_ms() + RESTART_MIN_MS + (int64_t) rng_below(&rng, RESTART_MAX_MS - RESTART_MIN_MS);
        }
        atomic_store(&stop_load, true);
        for (int i = 0; i < CLIENT_THREADS; i++)
                pthread_join(threads[i], NULL);

        uint64_t sessions = atomic_load(&n_sessions) - before, failed = atomic_load(&n_failures) - failed_before;
        if (s->proxy && (restarts || stops)) {
                /* Each restart (stop) can close at most the sessions then in flight, one a client thread. */
                uint64_t unheadered = atomic_load(&n_closed_unheadered) - unheadered_before;
                unsigned n = restarts ? n_restarts : n_stops;
                verdict(unheadered <= (uint64_t) n * CLIENT_THREADS,
                        "%s: %" PRIu64 " balancer connections closed by a %s before their header was read, "
                        "at most %u (%u of them)", s->name, unheadered, restarts ? "restart" : "stop", n * CLIENT_THREADS, n);
        }
        verdict(failed == 0 && sessions > 0, "%s: %" PRIu64 " sessions matched the model, %" PRIu64 " failed", s->name,
                sessions, failed);
        if (s->idle_timeout) {
                /* What the setup is for: clients that stalled, ended by the timeout as the model
                 * has it. Not required where stops (every 0.2-1.2 s) end nearly every stall first,
                 * nor for a replayed plan, which may be no stall. */
                uint64_t timed_out = atomic_load(&n_timed_out) - timed_out_before;
                if (stops || replay_seed)
                        printf("%s: %" PRIu64 " stalled sessions ended by the idle timeout\n", s->name, timed_out);
                else
                        verdict(timed_out > 0, "%s: %" PRIu64 " stalled sessions ended by the idle timeout", s->name,
                                timed_out);
        }
        if (restarts)
                restarts_verdict(d, s, n_restarts, n_unclean);
        if (reloads)
                reloads_verdict(d, s, n_reloads);
        if (stops) {
                uint64_t stopped = atomic_load(&n_stopped) - stopped_before;
                verdict(n_stops > 0 && n_unclean == 0 && longest_stop <= STOP_TOOK_MAX_MS,
                        "%s: %u stops, %u without a clean exit, the longest in %" PRId64 " ms (at most " STR(STOP_TOOK_MAX_MS) ")",
                        s->name, n_stops, n_unclean, longest_stop);
                verdict(stopped > 0, "%s: %" PRIu64 " sessions ended by a stop got every reply up to it, then ERR shutting "
                        "down and the end of file; %" PRIu64 " connections refused or reset while it was down",
                        s->name, stopped, atomic_load(&n_refused_stopped) - refused_before);
        }
        bool alive = hellod_alive(d);
        verdict(alive, "%s: the daemon is still running", s->name);
        if (!alive) {
                char *err = hellod_stderr(d); /* how it died */
                fprintf(stderr, "%s\n", err);
                free(err);
                end_daemon(d, &st, listener);
                return;
        }
        /* Every session has ended on the client's side; the daemon's lingering closes end
         * within a second. */
        int fds = hellod_fd_count(d);
        fds_before += spare_wanted(n_reloads) ? 1 : 0; /* the spare listener */
        for (int64_t end = now_ms() + 5000; fds > fds_before && now_ms() < end; fds = hellod_fd_count(d))
                harness_sleep_ms(50);
        verdict(fds <= fds_before, "%s: descriptors back to %d (now %d)", s->name, fds_before, fds);
        if (restarts && !stored) { /* stored: checked below */
                /* Each process took its conversations out of the store as it resumed them. */
                unsigned held = store_count(&st, "c");
                for (int64_t end = now_ms() + 5000; held > 0 && now_ms() < end; held = store_count(&st, "c"))
                        harness_sleep_ms(20);
                verdict(held == 0, "%s: PID 1 holds %u connections once they closed", s->name, held);
        }
        if (stored) {
                /* What the mode is for: every connection was stored (so it read a line at a
                 * time), and PID 1 holds none once they closed. Its messages may still be on
                 * their way. */
                /* Behind a balancer a connection is stored once its header is in: one the
                 * client reset before its greeting may have gone before that. */
                uint64_t unstored = s->proxy ? atomic_load(&n_reset_ungreeted) - ungreeted_before : 0;
                uint64_t must = sessions - (unstored < sessions ? unstored : sessions);
                unsigned added = store_conns_added(&st), held = store_count(&st, "c");
                for (int64_t end = now_ms() + 5000; (added < must || held > 0) && now_ms() < end;
                     added = store_conns_added(&st), held = store_count(&st, "c"))
                        harness_sleep_ms(20);
                verdict(added >= must && held == 0,
                        "%s: %u connections stored for %" PRIu64 " sessions (%" PRIu64 " reset before their greeting, "
                        "maybe before their header was read), %u still held",
                        s->name, added, sessions, unstored, held);
        }
        int status = hellod_stop(d);
        verdict(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: clean stop", s->name);
        char *err = hellod_stderr(d);
        bool clean = !strstr(err, "ERROR: AddressSanitizer") && !strstr(err, "WARNING: ThreadSanitizer") &&
                     !strstr(err, "runtime error:");
        verdict(clean, "%s: no sanitizer report", s->name);
        if (!clean)
                fprintf(stderr, "%s\n", err);
        /* The io_uring pass runs on io_uring, not on the epoll it falls back to where io_uring
         * cannot be had: every process of the setup. */
        if (uring_expected(s)) {
                n_epoll += fell_back(err);
                verdict(n_epoll == 0, "%s: the loops ran on io_uring (%u processes fell back to epoll)", s->name, n_epoll);
        }
        free(err);
        end_daemon(d, &st, listener);
}

/* parse_u64: the whole of TEXT as a decimal number. */
static bool parse_u64(const char *text, uint64_t *ret) {
        char *end;

        errno = 0;
        *ret = strtoull(text, &end, 10);
        return errno == 0 && end != text && *end == '\0' && text[0] != '-';
}

static _Noreturn void on_harness_failure(const char *message) {
        fail_hard(message);
}

int main(int argc, char **argv) {
        unsigned seconds = DEFAULT_SECONDS;
        const char *bin = NULL;
        long only_setup = -1;
        uint64_t setup_arg;

        base_seed = (uint64_t) time(NULL) ^ ((uint64_t) getpid() << 32);
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
                        seconds = (unsigned) strtoul(argv[++i], NULL, 10);
                else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
                        base_seed = strtoull(argv[++i], NULL, 10);
                else if (strcmp(argv[i], "--stored") == 0)
                        stored = true;
                else if (strcmp(argv[i], "--restarts") == 0)
                        restarts = true;
                else if (strcmp(argv[i], "--reloads") == 0)
                        reloads = true;
                else if (strcmp(argv[i], "--stops") == 0)
                        stops = true;
                else if (strcmp(argv[i], "--hellod") == 0 && i + 1 < argc)
                        bin = argv[++i];
                else if (strcmp(argv[i], "--replay") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &replay_seed) &&
                         replay_seed != 0)
                        i++;
                else if (strcmp(argv[i], "--setup") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &setup_arg))
                        only_setup = (long) (setup_arg < N_SETUPS ? setup_arg : N_SETUPS), i++;
                else {
                        fprintf(stderr, "usage: driver [--seconds N] [--seed N] [--hellod PATH] "
                                        "[--replay SESSION-SEED --setup I] [--stored] [--restarts] [--reloads] [--stops]\n");
                        return 2;
                }
        }
        if (stops && as_service()) {
                fprintf(stderr, "driver: --stops stops a daemon that is no service: not with --stored or --restarts\n");
                return 2;
        }
        if (only_setup >= (long) N_SETUPS || (replay_seed && only_setup < 0)) {
                fprintf(stderr, "driver: --setup must be 0..%zu (needed with --replay)\n", N_SETUPS - 1);
                return 2;
        }
        if (seconds == 0 || seconds > MAX_SECONDS) {
                fprintf(stderr, "driver: --seconds must be 1..%d\n", MAX_SECONDS);
                return 2;
        }
        if (bin && setenv("HELLOD_BIN", bin, 1) < 0)
                return 1;
        harness_set_fail_handler(on_harness_failure);
        signal(SIGPIPE, SIG_IGN);
        harness_raise_nofile();
        /* The longest template hellod accepts: 1,024 bytes with {name}. */
        memset(long_prefix, 'r', sizeof(long_prefix) - 1 - strlen("{name}"));
        long_prefix[sizeof(long_prefix) - 1 - strlen("{name}")] = '\0';

        const char *extra = getenv("HELLOD_TEST_CONF_EXTRA");
        printf("driver: seed %" PRIu64 ", %u s, %d client threads, worker model: %s%s%s%s%s\n", base_seed, seconds,
               CLIENT_THREADS, extra && *extra ? extra : "the default", stored ? ", stored sessions" : "",
               restarts ? ", restarted every " STR(RESTART_MIN_MS) "-" STR(RESTART_MAX_MS) " ms" : "",
               reloads ? ", reloaded every " STR(RELOAD_MIN_MS) "-" STR(RELOAD_MAX_MS) " ms" : "",
               stops ? ", stopped and started every " STR(STOP_MIN_MS) "-" STR(STOP_MAX_MS) " ms" : "");
        fflush(stdout);
        for (size_t i = 0; i < N_SETUPS; i++)
                if (only_setup < 0 || (size_t) only_setup == i)
                        run_setup(&setups[i], only_setup < 0 ? (seconds + N_SETUPS - 1) / N_SETUPS : seconds);

        printf("driver figures: %" PRIu64 " sessions, %" PRIu64 " lines, %" PRIu64 " bursts of %d-%d lines, %" PRIu64
               " bytes sent, %" PRIu64 " bytes received and checked, %" PRIu64 " read pauses, %" PRIu64
               " ended over the limit, %" PRIu64 " bytes of urgent data, %" PRIu64 " telnet commands, %" PRIu64
               " writes aimed behind a CR, %" PRIu64 " inside a PROXY header, %" PRIu64
               " chunk messages; endings: %" PRIu64 " half-close, %" PRIu64
               " exit (%" PRIu64 " with over 64 KiB behind it), %" PRIu64 " close, %" PRIu64 " reset, %" PRIu64 " stall\n",
               atomic_load(&n_sessions), atomic_load(&n_lines), atomic_load(&n_bursts), BURST_MIN_LINES,
               BURST_MAX_LINES, atomic_load(&n_bytes_sent), atomic_load(&n_bytes_checked), atomic_load(&n_pauses),
               atomic_load(&n_too_long), atomic_load(&n_urgent), atomic_load(&n_commands),
               atomic_load(&n_aimed_cr), atomic_load(&n_aimed_header), atomic_load(&n_chunk_messages),
               atomic_load(&n_endings[END_HALF_CLOSE]),
               atomic_load(&n_endings[END_EXIT]), atomic_load(&n_trailing), atomic_load(&n_endings[END_CLOSE]),
               atomic_load(&n_endings[END_RESET]), atomic_load(&n_endings[END_STALL]));
        uint64_t nf = atomic_load(&n_failures);
        for (uint64_t i = 0; i < nf && i < FAILURES_KEPT; i++)
                printf("failure: %s\n", failures[i]);
        verdict(nf == 0, "%" PRIu64 " failures in all", nf);
        if (!replay_seed) {
                /* What the plans are for happened: none of these is rarer than about one session
                 * in fifty (cuts inside a PROXY header), and a run has thousands (figures above); a
                 * plan the generator no longer makes shows here, not as a quiet pass. The stall
                 * has its verdict per setup. */
                bool proxy_ran = only_setup < 0 || setups[only_setup].proxy;
                bool lines_ran = only_setup < 0 || !setups[only_setup].chunk;
                bool chunk_ran = only_setup < 0 || setups[only_setup].chunk;
                struct {
                        const char *name;
                        bool wanted;
                        uint64_t seen;
                } kinds[] = {
                        { "bursts", lines_ran, atomic_load(&n_bursts) },
                        { "messages over the limit", true, atomic_load(&n_too_long) },
                        { "urgent data", lines_ran, atomic_load(&n_urgent) },
                        { "telnet commands", lines_ran, atomic_load(&n_commands) },
                        { "cuts behind a CR", lines_ran, atomic_load(&n_aimed_cr) },
                        { "cuts in PROXY headers", proxy_ran, atomic_load(&n_aimed_header) },
                        { "over 64 KiB after an exit or an ERR", lines_ran, atomic_load(&n_trailing) },
                        { "chunk messages", chunk_ran, atomic_load(&n_chunk_messages) },
                        { "half-close", true, atomic_load(&n_endings[END_HALF_CLOSE]) },
                        { "exit", true, atomic_load(&n_endings[END_EXIT]) },
                        { "close", true, atomic_load(&n_endings[END_CLOSE]) },
                        { "reset", true, atomic_load(&n_endings[END_RESET]) },
                };
                char missing[512] = "";
                size_t len = 0;
                for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
                        if (kinds[i].wanted && kinds[i].seen == 0 && len < sizeof(missing))
                                len += (size_t) snprintf(missing + len, sizeof(missing) - len, "%s%s", len ? ", " : "",
                                                         kinds[i].name);
                verdict(len == 0, "every kind of plan ran (bursts, messages over the limit, urgent data, telnet "
                                  "commands, aimed cuts, long input after an end, chunk messages, each ending, as the "
                                  "setups run have them)%s%s",
                        len ? "; none of: " : "", missing);
        }
        printf("driver checks: %u passed, %u failed\n", checks_passed, checks_failed);
        harness_cleanup();
        return checks_failed == 0 ? 0 : 1;
}
