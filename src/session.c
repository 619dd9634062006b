/* session: the connection record and the policy both drivers share. */
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ratelimit.h"

/* Read size in line framing; replies to one read go out in one write when they fit OUT. */
#define SESSION_READ_SIZE 4096
#define SESSION_OUT_SIZE 16384
/* Connection log lines per second, across all sessions; the rest are counted. */
#define SESSION_LOG_BURST 100

size_t session_output_size(const Conf *conf) {
        size_t min = proto_output_min(conf);

        return min > SESSION_OUT_SIZE ? min : SESSION_OUT_SIZE;
}

size_t session_input_size(const Conf *conf) {
        return conf->framing == FRAMING_CHUNK ? proto_input_max(conf) : SESSION_READ_SIZE;
}

size_t session_handover_input_max(const Conf *conf) {
        return conf->framing == FRAMING_LINE ? SESSION_URING_KEPT_MAX : session_input_size(conf);
}

size_t session_memory_max(const Conf *conf, unsigned workers, bool io_uring) {
        size_t input = session_input_size(conf);

        /* In line framing an io_uring loop reads into its buffer ring (the loop's, not counted
         * here), and keeps a client's input while its replies back up (uring.c: 900 flooding
         * clients held 85 KiB each in all). In chunk framing it reads into the session's own
         * buffer, as epoll does. */
        if (io_uring && conf->framing == FRAMING_LINE)
                input = SESSION_URING_KEPT_SOFT;
        /* A partial line, or, behind a PROXY listener (which needs proxy_from) before the
         * header is in, the header's parser: never both. A thread per connection holds its
         * buffers meanwhile. */
        size_t pending = (size_t) conf->max_line_length + 1;
        if (conf->n_proxy_from > 0 && pending < sizeof(ProxyParser))
                pending = sizeof(ProxyParser);
        size_t n = sizeof(Session) + session_output_size(conf) + input + pending;

        /* A pool loop's stack is shared by all its sessions; a thread per connection is not. */
        return workers == 0 ? n + conf->worker_stack_size : n;
}

int session_new(Session **ret, int fd, Conf *conf, const struct sockaddr *peer, const char *listen) {
        Session *s = calloc(1, sizeof(*s));

        if (!s) {
                close(fd);
                return -ENOMEM;
        }
        s->fd = fd;
        s->conf = conf_ref(conf);
        s->started_usec = now_usec();
        s->timer.at = SESSION_NO_DEADLINE;
        memcpy(&s->peer_addr, peer,
               peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
               : peer->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                            : sizeof(sa_family_t));
        (void) ip_key_from_sockaddr(peer, &s->ip);
        addr_format(peer, s->peer, sizeof(s->peer));
        /* By hand: this runs for every connection, and snprintf showed in the profiles. */
        size_t n = strnlen(listen, sizeof(s->listen) - 1);
        memcpy(s->listen, listen, n);
        s->listen[n] = '\0';

        s->out.cap = session_output_size(conf);
        s->in_cap = session_input_size(conf);
        (void) proto_init(&s->proto, conf);
        *ret = s;
        return 0;
}

int session_proxy_begin(Session *s) {
        if (!(s->proxy = malloc(sizeof(*s->proxy))))
                return -ENOMEM;
        proxy_parser_init(s->proxy);
        snprintf(s->balancer, sizeof(s->balancer), "%s", s->peer);
        return 0;
}

void session_proxy_end(Session *s) {
        free(s->proxy);
        s->proxy = NULL;
}

Session *session_free(Session *s) {
        if (!s)
                return NULL;
        session_proxy_end(s);
        if (s->fd >= 0 && !s->fd_kept)
                close(s->fd);
        proto_done(&s->proto);
        free(s->in);
        free(s->out.data);
        conf_unref(s->conf);
        free(s);
        return NULL;
}

uint64_t session_idle_deadline(const Session *s, uint64_t now) {
        unsigned idle = s->conf->idle_timeout;

        return idle == 0 ? SESSION_NO_DEADLINE : now + (uint64_t) idle * 1000000u;
}

uint64_t session_write_deadline(const Session *s, uint64_t now) {
        if (s->proto.end == PROTO_END_IDLE)
                return now + SESSION_LINGER_USEC;
        return session_idle_deadline(s, now);
}

ssize_t session_proxy_take(Session *s, char *buf, size_t k, ProxyStatus *ret_status, ProxyHeader *ret_header,
                           const char **ret_reason) {
        size_t used = 0;

        *ret_status = proxy_feed(s->proxy, buf, k, &used, ret_header, ret_reason);
        size_t take = *ret_status == PROXY_DONE ? used : k;
        ssize_t taken = recv(s->fd, buf, take, 0); /* what the peek saw: at once */
        if (taken == (ssize_t) take)
                return taken;
        *ret_status = PROXY_INVALID;
        *ret_reason = taken < 0 ? strerror(errno) : "its PROXY header could not be read again";
        return -1;
}

bool session_lingers(const Session *s) {
        /* Also after a clean exit, or the stop's shutdown line: bytes the client sent after it
         * may still be in flight, and closing before they arrive would answer them with a RST. */
        return s->proto.end != PROTO_END_EOF;
}

void session_say_last(int fd, const char *line) {
        char sink[4096];
        size_t drained = 0;
        ssize_t n;

        if (line)
                (void) send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
        (void) shutdown(fd, SHUT_WR);
        while (drained < SESSION_LINGER_BYTES && (n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
                drained += (size_t) n;
}

size_t session_lines_taken(const Session *s, const char *buf, size_t k) {
        if (memchr(buf, 0xff, k) || s->proto.telnet != PROTO_TELNET_DATA)
                return k;
        const char *nl = memrchr(buf, '\n', k);
        if (nl)
                return (size_t) (nl - buf) + 1;
        return k == s->in_cap || proto_line_too_long(s->conf, s->proto.pending_len + k, buf[k - 1]) ? k : 0;
}

static bool still_established(const Session *s) {
        struct tcp_info info;
        socklen_t len = sizeof(info);

        return getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0 || info.tcpi_state == TCP_ESTABLISHED;
}

/* cut_at_urgent_mark: an urgent byte ahead ends every read at its mark (SIOCINQ, too, counts
 * only up to it); a read that begins at the mark skips the byte and goes on. */
static bool cut_at_urgent_mark(int fd) {
        char urgent;
        int at_mark = 0;

        return recv(fd, &urgent, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT) == 1 && ioctl(fd, SIOCATMARK, &at_mark) == 0 &&
               !at_mark;
}

ssize_t session_read_end(const Session *s, void *buf, size_t size) {
        return recv(s->fd, buf, size, 0);
}

/* receive_memory_tight: the receive queue takes more than half the socket's buffer. It counts
 * whole segments, not the bytes left in them: a partial line keeps all of the (possibly merged)
 * segment it came in. Below half the buffer free, Linux stops advancing the window it offers
 * and lets it close (__tcp_select_window); above, the window stays open and the line's end can
 * come. */
static bool receive_memory_tight(int fd) {
        uint32_t mem[SK_MEMINFO_VARS] = { 0 };
        socklen_t len = sizeof(mem);

        return getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 && len > SK_MEMINFO_RCVBUF * sizeof(uint32_t) &&
               mem[SK_MEMINFO_RMEM_ALLOC] > mem[SK_MEMINFO_RCVBUF] / 2;
}

bool session_line_end_awaited(const Session *s) {
        return !session_stop_requested(s) && still_established(s) && !cut_at_urgent_mark(s->fd) &&
               !receive_memory_tight(s->fd);
}

/* asked_to_end: the client ended the conversation itself (exit, a telnet interrupt) and sent
 * nothing after it in that read: it is not in the middle of sending. After an ERR line it may
 * well be (a line over the limit), and behind a balancer the acknowledgements below are the
 * balancer's, not the client's. */
static bool asked_to_end(const Session *s) {
        return (s->proto.end == PROTO_END_EXIT || s->proto.end == PROTO_END_INTERRUPT) &&
               !s->proto.input_after_end && s->balancer[0] == '\0';
}

/* stopped_quietly: the stop ended the conversation (its shutdown line), with no balancer in
 * between whose acknowledgements would stand for the client's (as in asked_to_end). */
static bool stopped_quietly(const Session *s) {
        return s->proto.end == PROTO_END_SHUTDOWN && s->balancer[0] == '\0';
}

/* delivered: after the FIN, whether the client has acknowledged every byte sent before it (at
 * most the FIN itself is outstanding) and the FIN has left; false when that cannot be told. */
static bool delivered(int fd) {
        int unacked = 0, unsent = 0; /* valgrind does not know what SIOCOUTQNSD writes */

        return ioctl(fd, SIOCOUTQ, &unacked) == 0 && unacked <= 1 && ioctl(fd, SIOCOUTQNSD, &unsent) == 0 &&
               unsent == 0;
}

/* A reset destroys what the closing side still had to send, and on some stacks what the
 * receiving side had not yet read. So, once the FIN is out: if the client asked to end, has
 * acknowledged every byte sent before the FIN (at most the FIN itself is outstanding: its ACK
 * is delayed until the client answers it), the FIN has left (a zero window holds it back),
 * and nothing the client sent waits unread, the socket is closed at once. Bytes the client
 * writes later, or an urgent byte (SIOCINQ counts only up to its mark), draw a reset that
 * arrives behind the FIN. That is why the FIN goes first: closed with them unread and no FIN
 * out, the socket sends the reset instead, and the client reads ECONNRESET, not the end of
 * file (and deciding first saves nothing: one TCP_INFO read costs what two ioctl()s do). A
 * client that reads sees its replies and the end of file all the same (Linux and the BSDs
 * keep received data over a reset; Windows drops what its application has not read yet, so
 * there a client that writes after exit before reading can lose replies), and its further
 * writes fail. Lingering on such a socket would only wait for the client's FIN: a wakeup, a
 * recv() and the socket's teardown on the server's side (docs/benchmarks.md measures it). In
 * every other case the lingering close stays: nginx's default (lingering_close "on") also
 * lingers only when more may come. The stop's shutdown line is closed the same way: once an
 * idle client has acknowledged it (on loopback, within the send), at once; otherwise the
 * linger waits for the client's FIN or its time (a second, more while the client still sends:
 * session_linger_next), within shutdown_timeout, and a client that pipelines gets its replies
 * first. */
bool session_send_fin(Session *s) {
        int unread = 0;

        if (shutdown(s->fd, SHUT_WR) < 0)
                return false;
        if (!asked_to_end(s) && !stopped_quietly(s))
                return true;
        return !delivered(s->fd) || ioctl(s->fd, SIOCINQ, &unread) < 0 || unread > 0;
}

bool session_linger_spent(int fd, size_t discarded) {
        return discarded >= SESSION_LINGER_BYTES && delivered(fd);
}

LingerTurn session_linger_turn(int fd, char *buf, size_t size, size_t *discarded) {
        for (size_t turn = 0; turn < SESSION_LINGER_BYTES;) {
                ssize_t n = recv(fd, buf, size, MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return LINGER_WAIT;
                if (n <= 0)
                        return LINGER_DONE; /* the client's EOF, or the connection failed */
                turn += (size_t) n;
                *discarded += (size_t) n;
                if (session_linger_spent(fd, *discarded))
                        return LINGER_DONE;
        }
        return LINGER_MORE;
}

void session_linger_begin(LingerProgress *p, int fd, size_t discarded, uint64_t now) {
        int unacked = 0;

        /* Unknown (a failed ioctl): the largest, so that any progress counts. */
        *p = (LingerProgress) { .began = now,
                                .took_at = now,
                                .discarded = discarded,
                                .unacked = ioctl(fd, SIOCOUTQ, &unacked) == 0 ? unacked : INT_MAX };
}

uint64_t session_linger_next(LingerProgress *p, int fd, size_t discarded, uint64_t now) {
        int unacked = 0;

        if (p->began == 0 || now - p->began >= SESSION_LINGER_MAX_USEC || discarded == p->discarded ||
            delivered(fd) || ioctl(fd, SIOCOUTQ, &unacked) < 0)
                return 0;
        if (unacked < p->unacked) {
                p->unacked = unacked;
                p->took_at = now;
        } else if (now - p->took_at >= SESSION_LINGER_STALL_USEC) {
                return 0;
        }
        p->discarded = discarded;
        uint64_t next = now + SESSION_LINGER_USEC, last = p->began + SESSION_LINGER_MAX_USEC;
        return next < last ? next : last;
}

/* The connection lines of every session (opened, I/O failed, closed), at most
 * SESSION_LOG_BURST a second together. */
static RateLimit close_log = RATELIMIT_INIT(SESSION_LOG_BURST);

static void log_closes_held_back(unsigned n) {
        if (n > 0)
                log_info("%u more connection log line%s suppressed in the last second", n, n == 1 ? " was" : "s were");
}

/* connection_line_allowed: whether a connection line may be logged now (counted otherwise). */
static bool connection_line_allowed(void) {
        unsigned suppressed;
        bool allowed = ratelimit_allow(&close_log, &suppressed);

        log_closes_held_back(suppressed);
        return allowed;
}

void session_fail(Session *s, int r) {
        const char *reason;

        switch (-r) {
        case ETIMEDOUT:
        case EAGAIN:
                reason = "write-timeout";
                break;
        case ECONNRESET:
                reason = "reset";
                break;
        case EPIPE:
                reason = "broken-pipe";
                break;
        case ENOMEM:
                reason = "out-of-memory";
                break;
        default:
                reason = "io-error";
                break;
        }
        /* On the socket hellod shut itself at the stop: no fault of the client's. */
        if ((r == -EPIPE || r == -ECONNRESET || r == -ENOTCONN) && __atomic_load_n(&s->killed, __ATOMIC_ACQUIRE))
                reason = proto_end_to_string(PROTO_END_SHUTDOWN);
        if (!s->error) {
                s->error = reason;
                if (log_enabled(LOG_DEBUG) && connection_line_allowed())
                        log_debug_errno(r, "connection %" PRIu64 " from %s: I/O failed", s->id, s->peer);
        }
}

const char *session_reason(const Session *s) {
        if (!s->error && s->lingering && s->proto.end == PROTO_END_NONE)
                return "ended-before-a-crash"; /* taken up with its state lost (handoff_session_fresh) */
        return s->error ? s->error : proto_end_to_string(s->proto.end);
}

void session_stop(Session *s) {
        /* The engine wakes its readers (engine_end_conversations). The socket is not shut for
         * reading to wake them: once hellod's FIN is out, Linux answers a line the client still
         * sends to such a socket with a reset, which destroys the replies not yet delivered (a
         * client pipelining when the stop comes). */
        __atomic_store_n(&s->stop_requested, true, __ATOMIC_RELEASE);
}

void session_kill(Session *s) {
        __atomic_store_n(&s->killed, true, __ATOMIC_RELEASE);
        __atomic_store_n(&s->stop_requested, true, __ATOMIC_RELEASE);
        (void) shutdown(s->fd, SHUT_RDWR);
}

bool session_stop_requested(const Session *s) {
        return __atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE);
}

void session_log_opened(const Session *s) {
        if (log_enabled(LOG_DEBUG) && connection_line_allowed())
                log_debug("connection %" PRIu64 " from %s opened", s->id, s->peer);
}

/* health_check: a connection that said nothing (a balancer's health check, a port scan), or
 * a balancer's own (PROXY LOCAL) that got no Hello (a check may say exit): counted, but logged
 * at debug level only, so that checks every few seconds do not fill the journal. A header that
 * names no client (UNKNOWN: HAProxy relaying a client of a unix socket) makes the balancer's
 * own connection too, but a conversation on it is a client's, logged at info. */
static bool health_check(const Session *s) {
        bool silent = s->proto.messages == 0 && s->proto.pending_len == 0 &&
                      (s->proto.end == PROTO_END_EOF || (s->error && strcmp(s->error, "reset") == 0));
        return silent || (s->proxy_local && s->proto.lines == 0);
}

void session_log_closed_held_back(uint64_t *ret_due) {
        log_closes_held_back(ratelimit_held_back(&close_log, ret_due));
}

void session_log_closed_held_back_now(void) {
        log_closes_held_back(ratelimit_held_back_now(&close_log));
}

void session_log_closed(const Session *s) {
        char id[24], lines[24], usec_text[24], address[ADDR_STR_MAX];
        int level = health_check(s) ? LOG_DEBUG : LOG_INFO;

        if (s->refused || s->close_logged || !log_enabled(level) || !connection_line_allowed())
                return;

        uint64_t usec = now_usec() - s->started_usec;
        const char *reason = session_reason(s);
        snprintf(id, sizeof(id), "%" PRIu64, s->id);
        snprintf(lines, sizeof(lines), "%" PRIu64, s->proto.lines);
        snprintf(usec_text, sizeof(usec_text), "%" PRIu64, usec);
        addr_strip_port(s->peer, address, sizeof(address));
        LogField fields[] = {
                { "HELLOD_PEER", s->peer },   { "HELLOD_PEER_ADDRESS", address },
                { "HELLOD_LISTEN", s->listen }, { "HELLOD_CONN_ID", id },
                { "HELLOD_LINES", lines },    { "HELLOD_DURATION_USEC", usec_text },
                { "HELLOD_REASON", reason },  { "HELLOD_PROXY", s->balancer },
        };
        size_t n_fields = sizeof(fields) / sizeof(fields[0]) - (s->balancer[0] ? 0 : 1);
        log_struct(level, NULL, fields, n_fields,
                   "connection %" PRIu64 " from %s%s%s closed: %s, %" PRIu64 " line%s, %" PRIu64 ".%03" PRIu64 " s",
                   s->id, s->peer, s->balancer[0] ? " via " : "", s->balancer, reason, s->proto.lines,
                   s->proto.lines == 1 ? "" : "s", usec / 1000000u, (usec / 1000u) % 1000u);
}
