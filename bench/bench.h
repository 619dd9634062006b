/* bench: the types hellod-bench's modules share: options, the run's timeline, workers. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "hist.h"

#define NSEC_PER_SEC INT64_C(1000000000)
#define NSEC_PER_MSEC INT64_C(1000000)
#define SAMPLE_MAX 160 /* room for one escaped error sample */
#define NAME_MAX_LEN 32 /* "n<conn>-<seq>" with 64-bit numbers fits */

typedef enum Scenario {
        SCENARIO_RR,
        SCENARIO_CHURN,
        SCENARIO_HOLD,
} Scenario;

typedef enum ErrKind {
        ERR_CONNECT_REFUSED,
        ERR_CONNECT_TIMEOUT,
        ERR_CONNECT,    /* any other connect failure: no ports, no descriptors, unreachable */
        ERR_BUSY,       /* "ERR server busy" */
        ERR_SERVER,     /* any other ERR line (rate limited, idle timeout, shutting down, ...) */
        ERR_UNEXPECTED, /* bytes that are not the expected greeting or reply */
        ERR_EOF,        /* the server closed before the expected bytes came */
        ERR_RESET,      /* ECONNRESET, EPIPE */
        ERR_TIMEOUT,    /* no complete reply (or no close after exit) within --timeout */
        ERR_IO,         /* any other socket error */
        _ERR_MAX,
} ErrKind;

const char *err_kind_to_string(ErrKind k);

typedef struct Options {
        Scenario scenario;
        struct sockaddr_storage addr;
        socklen_t addr_len;
        char target[128]; /* "host:port" for the reports */
        unsigned connections;
        unsigned threads;
        int64_t duration_ns; /* measured window (rr, churn) or hold time (hold) */
        int64_t warmup_ns;
        int64_t timeout_ns;
        double rate; /* hold: connects a second, all threads together */
        bool chunk, json, quiet;
        pid_t pid; /* the server's, 0: unknown */
        unsigned port_lo, port_hi; /* hold: local ports to bind, from ip_local_port_range */

        /* The protocol's bytes, framed: built once from --greeting and --reply. */
        char *greeting; /* "Welcome!\r\n" or "Welcome!" */
        size_t greeting_len;
        char *prefix, *suffix; /* "Hello, " and "!\r\n" (the terminator is in the suffix) */
        size_t prefix_len, suffix_len;
        const char *newline; /* what ends a request: "\n", or "" in chunk framing */
        size_t newline_len;
} Options;

/* Phases of the hold scenario, advanced by the main thread (rr and churn follow the clock). */
enum {
        HOLD_RAMP,  /* open connections at --rate, read their greetings */
        HOLD_HOLD,  /* keep them open and idle; anything the server sends is an error */
        HOLD_CHECK, /* one request on each, then exit */
};

/* Run: what the main thread and the workers share. */
typedef struct Run {
        const Options *opt;
        pthread_barrier_t ready; /* workers connected (rr) / set up; main sets the timeline */
        pthread_barrier_t go;    /* the timeline is set: start */
        int64_t t_start, t_measure, t_end; /* CLOCK_MONOTONIC ns; measure = start + warm-up */
        _Atomic int hold_phase;
        _Atomic unsigned ramped; /* hold: workers whose connections are all open (or failed) */
        _Atomic unsigned finished; /* workers done */
} Run;

typedef struct Conn Conn;

/* Worker: one thread, its epoll instance and its share of the connections. Only the worker
 * writes its fields; the main thread reads the atomics for the progress line and the rest
 * after joining it. */
typedef struct Worker {
        Run *run;
        unsigned index;
        pthread_t thread;
        int epfd;
        Conn *conns;
        unsigned n_conns;
        char *arena; /* each connection's request and expected reply */
        size_t slot_size;
        char *rxbuf;
        unsigned live; /* connections with a socket */
        unsigned next_port; /* hold: the next local port to try */
        /* The seed session's messages (Michael, Tracy, Sarah, then exit) and their replies. */
        char *msgs;
        const char *tx_msg[4], *exp_msg[3];
        uint32_t tx_msg_len[4], exp_msg_len[3];

        Hist hist; /* latency of what was completed in the measured window */
        _Atomic uint64_t completed; /* requests (rr), sessions (churn), answers (hold) */
        _Atomic uint64_t errors;
        _Atomic uint64_t opened, greeted; /* hold */
        uint64_t err[_ERR_MAX];
        char sample[_ERR_MAX][SAMPLE_MAX]; /* the first error of each kind, escaped */
        int64_t t_ramped; /* hold: when the last connection of this worker was greeted */
        bool started; /* rr: the clock runs; a connection greeted from now on sends at once */
        int setup_error; /* a negative errno if the worker could not even start */
} Worker;

int64_t now_ns(void);

/* worker_main: the thread function (engine.c). */
void *worker_main(void *arg);

/* worker_init: allocates the worker's share of the connections; -errno on failure. */
int worker_init(Worker *w, Run *run, unsigned index);
void worker_done(Worker *w);

/* Result: the run's figures, merged from the workers and the main thread's samples. */
typedef struct Result {
        const Options *opt;
        Hist hist;
        uint64_t completed; /* in the measured window (rr, churn); answered after the hold */
        uint64_t errors;
        uint64_t err[_ERR_MAX];
        char sample[_ERR_MAX][SAMPLE_MAX];
        double measured_s;
        double client_cpu_s;
        bool server_ok; /* --pid given and /proc readable at both ends */
        double server_cpu_s;
        uint64_t server_rss_kib;
        unsigned server_threads;
        /* hold */
        uint64_t opened, greeted;
        double ramp_s, held_s;
        uint64_t rss_idle_kib, rss_held_kib, rss_peak_kib;
} Result;

/* proc_cpu: the process's user + system CPU time in seconds; -errno if it cannot be read. */
int proc_cpu(pid_t pid, double *ret_seconds);

/* proc_status: its resident memory (VmRSS, KiB) and thread count; -errno on failure. */
int proc_status(pid_t pid, uint64_t *ret_rss_kib, unsigned *ret_threads);

void report_text(const Result *r);
void report_json(const Result *r);

/* escape: writes N bytes of DATA as a quoted C-like string into OUT (size OUT_SIZE), cut
 * with "..." when it does not fit. */
void escape(char *out, size_t out_size, const char *data, size_t n);
