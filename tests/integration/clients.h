/* clients: what the hostile tests and the soak both need: the daemon's idle baseline, latency
 * statistics, error tallies, hostile bytes, a random-pieces exchange and the slowloris attack.
 *
 * Only the baseline functions may call harness_fail() (through hellod_*(): the daemon is gone),
 * and they belong to the main thread. The rest never does: the soak runs them on its load
 * threads, where nothing may fail; they return what went wrong, or count it, instead. */
#pragma once

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "harness.h"

/* --- the daemon's baseline ------------------------------------------------------------------ */

/* src/perconn.c PERCONN_MAX_IDLE: worker threads the daemon keeps parked for reuse. */
#define HELLOD_WORKERS_CACHED_MAX 64
/* How long the daemon gets to be back to its baseline after a load: lingering closes take up
 * to 1 s, hundreds of sessions end at once, and a sanitized daemon is slow. */
#define HELLOD_SETTLE_TIMEOUT_MS 30000

/* An idle daemon's figures. */
typedef struct Baseline {
        int fds;
        int other_threads; /* not workers: the main thread, a sanitizer's own */
        long rss_kib;
        bool sanitized;
        bool steady; /* the descriptor count held still within HARNESS_TIMEOUT_MS */
} Baseline;

/* What the daemon holds now. */
typedef struct Usage {
        int fds, workers, others;
} Usage;

/* baseline_take: D's figures once its descriptor count holds still (the readiness probe's
 * session may still be closing); the last count, with .steady false, after HARNESS_TIMEOUT_MS. */
Baseline baseline_take(Hellod *d);
/* baseline_rss_bound: the most RSS (KiB) D may hold after a load. Sanitizers keep freed memory
 * in quarantine and shadow what is touched: their bound only catches runaway growth. */
long baseline_rss_bound(const Baseline *b);
/* baseline_wait_settled: waits up to TIMEOUT_MS for D to be back to B: no more descriptors (no
 * session left open), no more workers than the cache keeps, no more other threads. Whether it
 * got there; the last figures in *RET. */
bool baseline_wait_settled(Hellod *d, const Baseline *b, int timeout_ms, Usage *ret);

/* --- statistics and error tallies ----------------------------------------------------------- */

/* Latency samples in microseconds. */
typedef struct Stats {
        int64_t *v;
        size_t n, cap;
        size_t lost; /* samples dropped for want of memory: figures, not failures */
} Stats;

void stats_add(Stats *s, int64_t us);
void stats_merge(Stats *into, const Stats *from);
/* stats_describe: sorts the samples and renders "n=N min X ms, p50 X ms, p99 X ms, max X ms"
 * (or "no samples") into BUF. */
const char *stats_describe(Stats *s, char *buf, size_t size);
/* stats_max: the largest sample, 0 if none. */
int64_t stats_max(const Stats *s);
/* stats_percentile: the sample below which PERCENT of them lie (sorting them), 0 if none. */
int64_t stats_percentile(Stats *s, unsigned percent);
void stats_free(Stats *s);

/* Errors: a count and the first few messages. */
typedef struct Errors {
        unsigned n;
        char first[3][512];
} Errors;

void errors_add(Errors *e, const char *format, ...) __attribute__((format(printf, 2, 3)));
void errors_merge(Errors *into, const Errors *from);

/* --- hostile bytes -------------------------------------------------------------------------- */

/* hostile_byte: anything but '\n', biased to what breaks parsers and terminals. */
unsigned char hostile_byte(Rng *r);
/* hostile_lines: random lines of hostile bytes into BUF (at most CAP): some empty, near or over
 * MAX_LINE, "exit", telnet negotiations, "\n" or "\r\n" ends, maybe an unterminated last line.
 * Returns the length. */
size_t hostile_lines(Rng *r, size_t max_line, unsigned char *buf, size_t cap);
/* hostile_uniform: 1 to CAP uniformly random bytes into BUF; returns how many. */
size_t hostile_uniform(Rng *r, unsigned char *buf, size_t cap);
/* bytes_end_with: whether the N bytes of BUF end with SUFFIX. */
bool bytes_end_with(const char *buf, size_t n, const char *suffix);
/* bytes_first_difference: the first offset at which A and B differ (the shorter length if one
 * is a prefix of the other). */
size_t bytes_first_difference(const char *a, size_t na, const char *b, size_t nb);

/* --- connections ---------------------------------------------------------------------------- */

/* client_wait_connected: waits up to TIMEOUT_MS for a client_start_connect() socket to finish
 * connecting; 0 or -errno (-ETIMEDOUT). */
int client_wait_connected(int fd, int timeout_ms);

/* What client_exchange() got. */
typedef struct Exchange {
        char *got; /* malloc'd; the caller frees it */
        size_t n;
        ClientReadEnd end; /* CLIENT_READ_EOF, _RESET or _TIMEOUT (HARNESS_TIMEOUT_MS) */
} Exchange;

/* client_exchange: sends the N bytes of IN in random pieces of 1 to MAX_PIECE bytes
 * (TCP_NODELAY, so they leave as they are), then half-closes, reading all the while until EOF,
 * a reset or the timeout. Stops sending once the daemon is gone, and reads what it said. 0, or
 * -errno when the client itself failed (poll(), recv(), memory); *RET holds what came anyway. */
int client_exchange(int fd, const void *in, size_t n, Rng *r, size_t max_piece, Exchange *ret);
/* ExchangeCue: what client_exchange_cued() does, once, as soon as AT bytes have come (a signal
 * to the daemon in the middle of the conversation, say). */
typedef struct ExchangeCue {
        size_t at;
        void (*act)(void *arg);
        void *arg;
} ExchangeCue;
/* client_exchange_cued: client_exchange(), with CUE's act done once AT bytes have come; 0 also
 * when the exchange ended before (the caller asserts on what came). */
int client_exchange_cued(int fd, const void *in, size_t n, Rng *r, size_t max_piece, const ExchangeCue *cue,
                         Exchange *ret);

/* SlowReader: how client_exchange_slow() reads and what it sends once all is sent. */
typedef struct SlowReader {
        size_t read_max;   /* bytes a read takes at most */
        int read_every_ms; /* between reads */
        const char *late;  /* sent after the input, LATES times, one every LATE_EVERY_MS */
        size_t lates;
        int late_every_ms;
        int timeout_ms; /* 0: HARNESS_TIMEOUT_MS */
} SlowReader;
/* client_exchange_slow: sends the N bytes of IN as fast as the daemon takes them, then HOW's late
 * lines (no half-close), reading as HOW says all the while, until EOF, a reset or HOW's timeout.
 * 0, or -errno when the client itself failed. */
int client_exchange_slow(int fd, const void *in, size_t n, const SlowReader *how, Exchange *ret);

/* --- slowloris ------------------------------------------------------------------------------ */

#define LORIS_FAST_BYTES_MAX 64

typedef enum LorisKind {
        LORIS_SLOW, /* one byte a tick: never a line, never too long; idle_timeout closes it */
        LORIS_FAST, /* mix.fast_bytes a tick: max_line_length closes it */
} LorisKind;

extern const char *const loris_kind_name[2]; /* "slow", "fast" */

/* The attackers. */
typedef struct LorisMix {
        int slots;         /* attackers connected at once; closed ones are replaced */
        int fast_every;    /* attacker i is fast when i % fast_every == fast_every - 1 */
        size_t fast_bytes; /* a fast attacker's dribble, at most LORIS_FAST_BYTES_MAX */
        int tick_ms;       /* one dribble per attacker per tick */
} LorisMix;

/* When the attack ends: at the first of these that is set and met. */
typedef struct LorisEnd {
        const atomic_bool *stop; /* set by the caller */
        int attack_ms;
        int max_sessions;
        int close_grace_ms; /* then every attacker must be closed within this */
} LorisEnd;

typedef struct LorisConfig {
        uint16_t port;                /* on 127.0.0.1 */
        const char *const *greetings; /* the greeting lines (CRLF included) the daemon may send,
                                       * NULL-terminated */
        LorisMix mix;
        LorisEnd end;
} LorisConfig;

typedef struct LorisSlot LorisSlot;

typedef struct Loris {
        LorisConfig c;
        pthread_t thread;
        atomic_int greeted;    /* attacker sessions that got a greeting */
        atomic_bool attacking; /* false once the attack is over */
        /* Results: read after loris_join(). An attacker closed with anything but a greeting,
         * the ERR line of its kind and EOF is an error. */
        int sessions, closed[2];
        int64_t close_ms_min[2], close_ms_max[2];
        size_t sent_max[2];
        Errors err;
        LorisSlot *slots;
        struct pollfd *pfds; /* one per slot; fd -1 while the slot is free, so poll() skips it */
} Loris;

/* loris_start: the attack, on its own thread: one poll loop over every attacker, staggered over
 * the first tick as real attackers would be. NULL (errno set) if it cannot start. */
Loris *loris_start(const LorisConfig *c);
/* loris_join: waits for the attack to end and every attacker to be closed (or given up on). */
void loris_join(Loris *l);
/* loris_free: NULL-safe (after loris_join()); returns NULL. */
Loris *loris_free(Loris *l);
