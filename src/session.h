/* session: one client connection, the record both worker models drive, and the policy they
 * share: buffer sizes, idle and linger deadlines, why a session ended, the log lines.
 * The I/O itself lives in the drivers (engine.h): perconn.c (blocking, a thread each) and
 * pool.c (non-blocking, many per event loop). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "buf.h"
#include "clock.h"
#include "conf.h"
#include "deadlines.h"
#include "proto.h"
#include "proxyproto.h"

/* After the server ends a conversation (exit, ERR), how long and how much of the client's
 * leftovers are read and discarded before closing (nginx's lingering close); past the bytes
 * only while replies are still on their way (session_linger_spent). The bytes are also what
 * one turn of an event loop reads away before the other sessions get theirs. */
#define SESSION_LINGER_USEC 1000000u
#define SESSION_LINGER_BYTES (64u * 1024u)
/* A lingering close whose replies are still on their way at the end of its second, and whose
 * client still sends, goes on, a second at a time, for as long as the client also takes some
 * of its replies (its unacknowledged bytes shrink) at least once every SESSION_LINGER_STALL_USEC,
 * up to SESSION_LINGER_MAX_USEC in all (nginx's lingering_time): a slow reader that pipelines
 * past its exit gets every reply, where a close with its late bytes unread would send a reset
 * that destroys those still queued. Not every second: a receiver opens its window in steps,
 * once its buffer has drained (on loopback, with a 256 KiB buffer, a whole buffer at a time:
 * 1.6 s apart at 160 KB/s), and till then no byte more is acknowledged. One that takes nothing
 * is closed after SESSION_LINGER_STALL_USEC, and one that has stopped sending at the end of
 * its second: closing with nothing unread sends no reset, and the kernel delivers the rest
 * (session_linger_next). */
#define SESSION_LINGER_MAX_USEC (30u * 1000000u)
#define SESSION_LINGER_STALL_USEC (5u * 1000000u) /* nginx's lingering_timeout */

/* LingerProgress: what session_linger_next() compares against: when the lingering began, how
 * many bytes of the client's had been read away at its last deadline, and the fewest bytes the
 * client had not acknowledged at a deadline, and when that was. Zeroed: never goes on. */
typedef struct LingerProgress {
        uint64_t began;
        uint64_t took_at;
        size_t discarded;
        int unacked;
} LingerProgress;
/* A deadline that never comes (idle_timeout = 0); deadlines_next_at() of no deadline. */
#define SESSION_NO_DEADLINE UINT64_MAX
_Static_assert(SESSION_NO_DEADLINE == UINT64_MAX, "deadlines_next_at() says none with UINT64_MAX");
/* On a PROXY protocol listener, how long the balancer has to send the whole header. A
 * balancer sends it at once, in one segment; a client that dawdles is not a balancer. */
#define SESSION_PROXY_TIMEOUT_USEC 3000000u
/* An io_uring loop keeps a session's input while its replies back up (uring.c): its receive
 * stops at the first input that must wait for a send, and what the multishot receive had taken
 * by then is kept, at worst its whole buffer ring (SESSION_URING_KEPT_MAX). The kept buffer
 * grows by doubling to SESSION_URING_KEPT_STOP, then one receive buffer more. */
#define SESSION_URING_KEPT_STOP (64u * 1024u)
#define SESSION_URING_KEPT_MAX (SESSION_URING_KEPT_STOP + 256u * 4u * 1024u)
/* What session_memory_max() counts of it: the buffer at its step past SESSION_URING_KEPT_STOP,
 * which a flood's burst rarely outgrows (900 flooding clients held 85 KiB each in all). */
#define SESSION_URING_KEPT_SOFT (SESSION_URING_KEPT_STOP + 4096u)

typedef struct Session {
        int fd;
        uint64_t id;
        Conf *conf; /* one reference, held for the session's life: a reload changes new sessions only */
        IpKey ip;   /* the source's network block, as counted by the server */
        bool counted; /* IP is counted in the server's per-source table */
        char peer[ADDR_STR_MAX]; /* the client: behind a balancer, what its PROXY header says */
        struct sockaddr_storage peer_addr; /* the same, as an address (the hand-over records it) */
        char balancer[ADDR_STR_MAX]; /* the balancer the connection came from, or "" */
        ProxyParser *proxy;      /* awaiting the PROXY header (NULL once it is in, or without one) */
        bool proxy_local;        /* the balancer's own connection (LOCAL, UNKNOWN): a health check */
        bool refused;            /* turned away after its PROXY header: logged as a refusal */
        bool turned_away;        /* admitted, then told busy: no thread could be had for it */
        char listen[ADDR_STR_MAX]; /* the listener it came through */
        uint64_t started_usec;     /* CLOCK_MONOTONIC */

        Proto proto;
        /* Buffers. The per-connection driver allocates both for the session's life; the pool
         * reads and writes through its loop's scratch buffers and allocates them only to keep
         * input it could not consume yet or output the client did not take. */
        Buf out;
        size_t out_off; /* bytes of OUT already sent */
        char *in;
        size_t in_cap;         /* the read size: 4 KiB, or one message in chunk framing */
        size_t in_off, in_len; /* unconsumed input kept in IN */

        bool stop_requested; /* atomic: set by session_stop() from the server thread */
        bool killed;         /* atomic: cut off by session_kill(): what fails next is the stop's doing */
        const char *error;   /* why I/O ended early (a static string), or NULL */

        struct Session *prev, *next; /* the server's list of live sessions (under its lock) */

        /* Driver state, owned by the thread that drives the session. */
        struct Engine *engine;                   /* the driver, set by engine_add() */
        Deadline timer;                /* timer.at: idle timeout, write timeout or end of linger
                                        * (the one a resumed session brings); the epoll pool
                                        * links it in its loop's list, io_uring keeps its own
                                        * in its Conn from the start on */
        struct Session *incoming_next; /* loopset: queued for a loop (loopset_add) */
        struct Session *ready_prev, *ready_next; /* pool: kept input waiting for its turn */
        bool ready;                              /* pool: on the loop's ready list */
        bool peer_shut;                          /* pool: the client's FIN has arrived (EPOLLRDHUP) */
        bool unread; /* pool: more may wait in the kernel (a full read, or an edge not read yet) */
        bool urgent; /* pool: urgent data came (EPOLLPRI): a short read may have stopped at its
                      * mark, so reads go on until one finds nothing (pool.c) */
        bool lingering;                          /* ended; discarding what the client still sends */
        LingerProgress linger;                   /* lingering: whether it may go on past its second */
        bool want_write;                         /* output pending: waiting for the client to read */
        bool resumed; /* taken over from another process: greeted already, state restored */
        bool close_logged; /* its closing line is logged already (HANDOVER_LOGGED) */
        bool stored;  /* in systemd's file descriptor store (handover = "always") */
        bool stored_via; /* stored under a name that says it is the balancer's (handoff_conn_name) */
        bool stored_ended; /* ... and one that says its conversation has ended (HandoverConnName) */
        bool fd_kept; /* perconn: the socket outlives the session (the lingerer keeps it);
                       * session_free() leaves it open. Never read by the server thread. */
} Session;

/* session_new: takes ownership of FD (closed by session_free, or here on failure) and a new
 * reference to CONF. Returns 0 or -ENOMEM. */
int session_new(Session **ret, int fd, Conf *conf, const struct sockaddr *peer, const char *listen);
/* session_free: closes the socket, drops the Conf reference; NULL-safe; returns NULL. */
Session *session_free(Session *s);

/* Sizes: the output buffer always holds one reply or ERR line; the read size is 4 KiB, or one
 * whole message in chunk framing. */
size_t session_output_size(const Conf *conf);
size_t session_input_size(const Conf *conf);
/* session_handover_input_max: the most input read and not yet answered that a session can be
 * handed over with. An epoll loop keeps at most one read (session_input_size()); an io_uring
 * loop in line framing, SESSION_URING_KEPT_MAX. A resumed one brings up to
 * HANDOVER_INPUT_HEAD_MAX bytes more in line framing: a telnet command cut by the hand-over,
 * begun again (handoff_limits()). */
size_t session_handover_input_max(const Conf *conf);

/* session_idle_deadline: NOW plus idle_timeout, or SESSION_NO_DEADLINE. The idle timer runs
 * while no complete line arrives, and is re-armed after the replies to one have been written,
 * so that time spent waiting for a slow reader is not counted as the client being idle. */
uint64_t session_idle_deadline(const Session *s, uint64_t now);
/* session_write_deadline: how long a client that does not read gets to take its replies:
 * idle_timeout from NOW; after `ERR idle timeout` only the linger time, so that a client that
 * neither writes nor reads cannot hold its slot for two timeouts. */
uint64_t session_write_deadline(const Session *s, uint64_t now);

/* session_lingers: whether the conversation ended otherwise than by the client's EOF, so that
 * the client may still be sending and its leftovers may have to be read away before the close
 * (exit, ERR lines, the stop's shutdown line: session_send_fin decides), rather than close at
 * once. */
bool session_lingers(const Session *s);

/* session_say_last: LINE (none if NULL) as the last words on FD, the FIN, then what the
 * client has sent so far read away (up to SESSION_LINGER_BYTES, without waiting), so that the
 * close that follows sends no reset that could destroy the line. For a client turned away
 * before or just after its greeting would have come; the caller closes FD. */
void session_say_last(int fd, const char *line);

/* session_lines_taken: of K bytes peeked into BUF from a stored session (handover = "always":
 * only whole lines leave the kernel, so that a crash loses no partial line), how many to take:
 * up to the last line end, also when they fill the read buffer (the rest is read next, and a
 * line cut there would leave a partial line in hellod's hands); all K when no line end can
 * complete them: with no line end, they fill it or are already too long for max_line_length
 * (the client waits for its ERR); or they hold a telnet command, or the rest of one whose IAC was
 * taken before (an interrupt has no line end, and the client waits for its answer). 0 when
 * they are one partial line within the limit, left waiting for its end. */
size_t session_lines_taken(const Session *s, const char *buf, size_t k);

/* session_proxy_take: K bytes peeked into BUF while S's PROXY header is awaited, fed to its
 * parser (*RET_STATUS, *RET_HEADER and *RET_REASON as proxy_feed() says), and read out of the
 * kernel: the header's bytes alone once it is complete, so that what follows is read as any
 * later bytes are (in chunk framing a read is a message, and one that the header's read cut in
 * two would be two); all K otherwise (the header's so far, or the bytes of a connection
 * refused). Returns the bytes taken, or -1 when they could not be read again (*RET_STATUS is
 * then PROXY_INVALID, and *RET_REASON says why). */
ssize_t session_proxy_take(Session *s, char *buf, size_t k, ProxyStatus *ret_status, ProxyHeader *ret_header,
                           const char **ret_reason);

/* session_line_end_awaited: a peek of a stored session (handover = "always") held a partial
 * line only: whether to leave it in the kernel and wait for its end. Not when the connection
 * is no longer established (the client's FIN or reset: the line was its last), the server is
 * stopping, the peek stopped at an urgent byte's mark (every read that begins before the mark
 * ends there), or the segments the line came in hold more than half the receive buffer (TCP
 * may then offer no window): no wait would bring the line's end. Otherwise the line is taken as
 * it is. */
bool session_line_end_awaited(const Session *s);
/* session_reads_lines: whether S's reads peek and take whole lines only, leaving a partial one
 * in the kernel (docs/zero-downtime.md): a stored session in line framing, with no partial line
 * carried in its Proto (one resumed from a record). */
static inline bool session_reads_lines(const Session *s) {
        return s->stored && s->conf->framing == FRAMING_LINE && s->proto.pending_len == 0;
}
/* session_read_end: a stored session's peek found the end of the stream: the same read
 * without MSG_PEEK into BUF (of SIZE), returned as recv() returns it. A peek passes an urgent
 * byte at its mark without taking it, and a socket closed with it unread sends a reset, not a
 * FIN, which can destroy the last replies. */
ssize_t session_read_end(const Session *s, void *buf, size_t size);
/* session_linger_spent: whether a lingering close that has read away DISCARDED bytes of FD's
 * may end before the client's EOF: past SESSION_LINGER_BYTES, once the client has acknowledged
 * all that hellod sent and the FIN has left (a zero window can hold it back after the last
 * reply: a reset without it reads as ECONNRESET, not the end of file). Until then the reset
 * that a close with bytes unread sends would destroy replies still queued in hellod's socket
 * (a client that pipelines far past its exit while reading), so the reading away goes on,
 * within the linger's time, as nginx's lingering close reads for its lingering_time. */
bool session_linger_spent(int fd, size_t discarded);
/* session_linger_turn: one turn of a lingering close on FD, for the event loops: reads into BUF
 * (of SIZE) without waiting and discards, counting in *DISCARDED, SESSION_LINGER_BYTES at
 * most, so that a client that goes on sending while its replies are on their way does not keep
 * the others waiting. LINGER_DONE: close now (its EOF, a failure, session_linger_spent());
 * LINGER_WAIT: nothing more to read for now; LINGER_MORE: the turn is used up, more may be
 * left. */
typedef enum LingerTurn { LINGER_WAIT, LINGER_MORE, LINGER_DONE } LingerTurn;
LingerTurn session_linger_turn(int fd, char *buf, size_t size, size_t *discarded);
/* session_linger_begin: *P for a lingering close of FD beginning at NOW (its first deadline is
 * NOW + SESSION_LINGER_USEC), DISCARDED bytes read away so far. */
void session_linger_begin(LingerProgress *p, int fd, size_t discarded, uint64_t now);
/* session_linger_next: at a lingering close's deadline, NOW, DISCARDED bytes read away so far:
 * the next deadline when it goes on (the client sent more since the last one, replies are
 * still on their way, fewer of them unacknowledged than ever before within the last
 * SESSION_LINGER_STALL_USEC, within SESSION_LINGER_MAX_USEC of its beginning), or 0: close now. */
uint64_t session_linger_next(LingerProgress *p, int fd, size_t discarded, uint64_t now);
/* session_send_fin: for a session that lingers: its FIN goes out (shutdown(SHUT_WR)), and the
 * answer is whether the socket must then linger, reading and discarding what the client still
 * sends until its own FIN, or may be closed at once (also when the FIN could not be sent). */
bool session_send_fin(Session *s);

/* session_fail: records why I/O ended early, from a negative errno (the first cause wins). */
void session_fail(Session *s, int r);
/* session_reason: the end reason for logs: the I/O failure, else the protocol's. */
const char *session_reason(const Session *s);

/* session_stop: asks a running session, from another thread, to finish the message in hand
 * and close: a flag, which the engine's threads look at when engine_end_conversations() wakes
 * them. session_kill: ends a session that is stuck writing (shuts its socket). Both are safe
 * while the caller keeps the session registered (its fd cannot be closed and reused meanwhile). */
void session_stop(Session *s);
void session_kill(Session *s);
bool session_stop_requested(const Session *s);

/* session_proxy_begin: the connection came through a PROXY listener: the header is awaited
 * before anything else (no greeting until it is in). Returns 0 or -ENOMEM. */
int session_proxy_begin(Session *s);
/* session_proxy_end: the header is in (or the session ends): the parser is freed. */
void session_proxy_end(Session *s);

/* session_log_opened: a debug line. session_log_closed: one info line with the peer, lines
 * answered, duration and reason (and the same as journal fields). These and session_fail()'s
 * debug line: at most SESSION_LOG_BURST a second together, across all sessions. */
void session_log_opened(const Session *s);
void session_log_closed(const Session *s);
/* session_log_closed_held_back: how many connection lines were held back, once their second is over
 * (ratelimit_held_back); *RET_DUE: when to ask again, or 0. For the server thread, which the
 * close of a session wakes (its figures change after the line): so the count comes without
 * waiting for the next close. */
void session_log_closed_held_back(uint64_t *ret_due);
/* session_log_closed_held_back_now: the same for those held back in a second still running,
 * once no session is left to log: the last line before the process exits. */
void session_log_closed_held_back_now(void);

/* session_memory_max: what one session can come to hold at worst (its buffers at their limits,
 * and in the per-connection model its thread's stack), for the operator's arithmetic. IO_URING:
 * CONF's pool runs on io_uring, whose kept input is counted as a flood's usual burst
 * (SESSION_URING_KEPT_SOFT), not as the whole buffer ring it could be at worst
 * (SESSION_URING_KEPT_MAX): that is rare, and would put a MiB on every client. WORKERS: the
 * pool's loops, or 0 for a thread per connection. */
size_t session_memory_max(const Conf *conf, unsigned workers, bool io_uring);
