/* session: one client connection served with blocking I/O: the greeting, then read → proto →
 * write until the client leaves, says exit, idles out or the server stops. Its state is
 * small and explicit so that another worker model can drive the same pieces. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "buf.h"
#include "conf.h"
#include "proto.h"

typedef struct Session {
        int fd;
        uint64_t id;
        Conf *conf; /* one reference, held for the session's life: a reload changes new sessions only */
        IpKey ip;
        char peer[ADDR_STR_MAX];
        char listen[ADDR_STR_MAX]; /* the listener it came through */
        uint64_t started_usec; /* CLOCK_MONOTONIC */

        Proto proto;
        /* Buffers. The thread-per-connection model allocates both for the session's life;
         * the pool reads and writes through its loop's scratch buffers and allocates them
         * only to keep input it could not consume yet or output the client did not take. */
        Buf out;
        size_t out_off; /* pool: bytes of OUT already sent */
        char *in;
        size_t in_cap;        /* the read size: 4 KiB, or one message in chunk framing */
        size_t in_off, in_len; /* pool: unconsumed input kept in IN */

        bool stop_requested; /* atomic: set by session_stop() from the server thread */
        const char *error;   /* why I/O ended early (a static string), or NULL */

        struct Session *prev, *next; /* the server's list of live sessions */
        void *userdata;

        /* Pool model only, owned by the session's loop thread. */
        struct Session *timer_prev, *timer_next; /* the loop's sessions, by deadline */
        uint64_t deadline;                       /* usec: idle timeout or end of linger */
        bool lingering;                          /* ended; discarding what the client still sends */
        bool want_write;                         /* output pending: waiting for EPOLLOUT */
} Session;

/* session_new: takes ownership of FD (closed by session_free, or here on failure) and a new
 * reference to CONF. Returns 0 or -ENOMEM. */
int session_new(Session **ret, int fd, Conf *conf, const struct sockaddr *peer, const char *listen);
/* session_free: closes the socket, drops the Conf reference; NULL-safe; returns NULL. */
Session *session_free(Session *s);

/* session_run: the whole conversation with blocking I/O, on the calling (worker) thread. */
void session_run(Session *s);

/* The pieces both models share. */
#define SESSION_LINGER_USEC 1000000u
#define SESSION_LINGER_BYTES (64u * 1024u)
size_t session_output_size(const Conf *conf);
/* session_lingers: whether the server ended the conversation and should read the client's
 * leftovers before closing (exit, ERR lines), rather than close at once (EOF, shutdown). */
bool session_lingers(const Session *s);
bool session_stop_requested(const Session *s);

/* session_stop: asks a running session, from another thread, to finish the message in hand
 * and close: wakes a blocked read. session_kill: ends a session that is stuck writing.
 * Both only act on the socket, so they are safe while the caller keeps the session
 * registered (its fd cannot be closed and reused meanwhile). */
void session_stop(Session *s);
void session_kill(Session *s);

/* session_log_close: one info line with the peer, lines answered, duration and reason (and
 * the same as journal fields), at most SESSION_LOG_BURST a second across all sessions. */
void session_log_close(const Session *s);

/* session_memory_max: what one session can come to hold (buffers at their limits, and its
 * worker's stack), for the operator's arithmetic. */
size_t session_memory_max(const Conf *conf);

uint64_t now_usec(void);
