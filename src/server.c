/* server: accept loop, limits, signals, reload and shutdown.
 *
 * Threads: the server thread runs the accept loop and owns the listeners, the current Conf
 * and the Workers. Worker threads run sessions. They share only what `lock` guards: the
 * list of live sessions, the connection counters and the per-address table. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "iptable.h"
#include "listener.h"
#include "log.h"
#include "proto.h"
#include "session.h"
#include "worker.h"

#include "config.h"

/* Connections taken from one listener per wakeup, so that one busy listener cannot starve
 * the others or the signals. */
#define ACCEPT_BATCH 64
/* How long accepting pauses when the process is out of descriptors or memory. */
#define ACCEPT_PAUSE_MSEC 100
/* Parked worker threads kept for reuse. */
#define WORKERS_MAX_IDLE 64
/* After shutdown_timeout, how long killed sessions get to notice. */
#define KILL_GRACE_MSEC 5000
/* Refusals logged per second at most; the rest are counted and summarised. */
#define REFUSAL_LOG_BURST 10

typedef struct RateLimit {
        uint64_t window_start; /* usec */
        unsigned in_window;
        unsigned suppressed;
} RateLimit;

struct Server {
        ServerOptions opts;
        Conf *conf; /* server thread only */
        ListenerSet listeners;
        int signal_fd;
        int reserve_fd; /* spent to turn a client away when descriptors run out */
        Workers *workers;
        uint64_t accept_paused_until; /* usec, CLOCK_MONOTONIC; 0: accepting */
        RateLimit refusal_log;
        RateLimit exhaustion_log;

        pthread_mutex_t lock;
        pthread_cond_t drained; /* signalled when n_active drops to 0 */
        Session *sessions;      /* under lock */
        unsigned n_active;      /* under lock */
        IpTable *ips;           /* under lock */
        uint64_t n_accepted, n_refused, next_id;
};

static const int handled_signals[] = { SIGTERM, SIGINT, SIGHUP };

static void handled_sigset(sigset_t *set) {
        sigemptyset(set);
        for (size_t i = 0; i < sizeof(handled_signals) / sizeof(handled_signals[0]); i++)
                sigaddset(set, handled_signals[i]);
}

int server_block_signals(void) {
        sigset_t set;

        handled_sigset(&set);
        /* A client that goes away mid-write must not kill the daemon: sends use
         * MSG_NOSIGNAL, and SIGPIPE is ignored for anything else. */
        if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
                return -errno;
        return -pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int conf_load_for(const char *path, bool optional, Conf **ret, bool *ret_defaulted, char *err, size_t err_size) {
        int r = conf_load(path, ret, err, err_size);

        *ret_defaulted = false;
        if (r == -ENOENT && optional) {
                *ret_defaulted = true;
                return conf_load(NULL, ret, err, err_size);
        }
        return r;
}

/* rate_allow: true when one more line may be logged in this one-second window. */
static bool rate_allow(RateLimit *rl, unsigned *ret_suppressed) {
        uint64_t now = now_usec();

        *ret_suppressed = 0;
        if (now - rl->window_start >= 1000000u) {
                *ret_suppressed = rl->suppressed;
                rl->window_start = now;
                rl->in_window = 0;
                rl->suppressed = 0;
        }
        if (rl->in_window >= REFUSAL_LOG_BURST) {
                rl->suppressed++;
                return false;
        }
        rl->in_window++;
        return true;
}

static void log_refusal(Server *s, const char *peer, const char *reason) {
        unsigned suppressed;

        if (!rate_allow(&s->refusal_log, &suppressed))
                return;
        if (suppressed > 0)
                log_warning("%u more connections refused in the last second", suppressed);
        log_warning("refused %s: %s", peer, reason);
}

/* turn_away: a short ERR line, then close without a RST that could eat it. */
static void turn_away(int fd) {
        char sink[512];

        (void) send(fd, PROTO_ERR_BUSY, strlen(PROTO_ERR_BUSY), MSG_DONTWAIT | MSG_NOSIGNAL);
        (void) shutdown(fd, SHUT_WR);
        /* Bytes the client already sent would turn close() into a RST. */
        for (int i = 0; i < 8 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
                ;
        close(fd);
}

static void refuse(Server *s, int fd, const char *peer, const char *reason) {
        turn_away(fd);
        pthread_mutex_lock(&s->lock);
        s->n_refused++;
        pthread_mutex_unlock(&s->lock);
        log_refusal(s, peer, reason);
}

/* release: a session is over; called on its worker thread. */
static void release(Server *s, Session *session) {
        pthread_mutex_lock(&s->lock);
        if (session->prev)
                session->prev->next = session->next;
        else
                s->sessions = session->next;
        if (session->next)
                session->next->prev = session->prev;
        iptable_dec(s->ips, &session->ip);
        /* Closing under the lock: the server may call shutdown() on any registered fd, and
         * the number must not be reused before it is unregistered. */
        session_free(session);
        if (--s->n_active == 0)
                pthread_cond_broadcast(&s->drained);
        pthread_mutex_unlock(&s->lock);
}

static void serve(void *arg) {
        Session *session = arg;

        session_run(session);
        session_log_close(session);
        release(session->userdata, session);
}

/* admit: limits, then a session on a worker thread. Takes ownership of FD. */
static void admit(Server *s, int fd, const struct sockaddr *peer) {
        const Conf *conf = s->conf;
        char name[ADDR_STR_MAX];
        const char *reason = NULL;
        Session *session = NULL;
        IpKey ip;
        int r;

        (void) ip_key_from_sockaddr(peer, &ip);
        pthread_mutex_lock(&s->lock);
        if (s->n_active >= conf->max_connections)
                reason = "server busy (max_connections reached)";
        else if (conf->max_connections_per_ip > 0 && iptable_count(s->ips, &ip) >= conf->max_connections_per_ip)
                reason = "server busy (max_connections_per_ip reached)";
        else if (iptable_inc(s->ips, &ip) < 0)
                reason = "out of memory";
        else if (session_new(&session, fd, s->conf, peer) < 0) {
                iptable_dec(s->ips, &ip);
                reason = "out of memory";
                fd = -1; /* session_new() closed it */
        } else {
                session->id = ++s->next_id;
                session->userdata = s;
                session->next = s->sessions;
                if (s->sessions)
                        s->sessions->prev = session;
                s->sessions = session;
                s->n_active++;
                s->n_accepted++;
        }
        pthread_mutex_unlock(&s->lock);

        addr_format(peer, name, sizeof(name));
        if (reason) {
                if (fd >= 0)
                        refuse(s, fd, name, reason);
                else
                        log_refusal(s, name, reason);
                return;
        }

        r = workers_run(s->workers, serve, session);
        if (r < 0) {
                /* No thread to be had: undo the admission and turn the client away. */
                log_warning_errno(r, "cannot start a worker thread");
                session->fd = -1; /* keep the socket for refuse() */
                pthread_mutex_lock(&s->lock);
                s->n_accepted--;
                pthread_mutex_unlock(&s->lock);
                release(s, session);
                refuse(s, fd, name, "no worker thread");
        }
}

static void pause_accepting(Server *s) {
        s->accept_paused_until = now_usec() + ACCEPT_PAUSE_MSEC * 1000u;
}

/* out_of_descriptors: EMFILE/ENFILE/ENOBUFS/ENOMEM. The pending client would otherwise
 * keep the listener readable and the loop spinning: spend the reserve descriptor to accept
 * and turn it away, then pause accepting briefly. */
static void out_of_descriptors(Server *s, int listen_fd, int error) {
        unsigned suppressed;

        if (s->reserve_fd >= 0) {
                close(s->reserve_fd);
                s->reserve_fd = -1;
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd >= 0)
                        turn_away(fd);
                s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        pthread_mutex_lock(&s->lock);
        s->n_refused++;
        pthread_mutex_unlock(&s->lock);
        if (rate_allow(&s->exhaustion_log, &suppressed))
                log_warning_errno(error, "cannot accept connections, pausing for %d ms", ACCEPT_PAUSE_MSEC);
        pause_accepting(s);
}

static void accept_some(Server *s, int listen_fd) {
        for (int i = 0; i < ACCEPT_BATCH; i++) {
                struct sockaddr_storage peer;
                socklen_t len = sizeof(peer);
                int fd = accept4(listen_fd, (struct sockaddr *) &peer, &len, SOCK_CLOEXEC);

                if (fd >= 0) {
                        admit(s, fd, (const struct sockaddr *) &peer);
                        continue;
                }
                switch (errno) {
                case EAGAIN:
#if EAGAIN != EWOULDBLOCK
                case EWOULDBLOCK:
#endif
                        return;
                case EINTR:
                case ECONNABORTED:
                case EPROTO:
                case ENETDOWN:
                case ENOPROTOOPT:
                case EHOSTDOWN:
                case ENONET:
                case EHOSTUNREACH:
                case EOPNOTSUPP:
                case ENETUNREACH:
                        continue; /* the client's problem, not ours (accept(2), "Error handling") */
                case EMFILE:
                case ENFILE:
                case ENOBUFS:
                case ENOMEM:
                        out_of_descriptors(s, listen_fd, -errno);
                        return;
                default:
                        log_error_errno(-errno, "accept failed, pausing");
                        pause_accepting(s);
                        return;
                }
        }
}

static void apply_log_level(const Server *s) {
        log_set_max_level(s->opts.log_level_override >= 0 ? s->opts.log_level_override : s->conf->log_level);
}

static void reload(Server *s) {
        char err[512];
        Conf *conf = NULL;
        bool defaulted;
        ListenerSet listeners;

        log_info("reloading configuration from %s", s->opts.config_path);
        int r = conf_load_for(s->opts.config_path, s->opts.config_optional, &conf, &defaulted, err, sizeof(err));
        if (r < 0) {
                log_error("reload failed, keeping the running configuration: %s", err);
                return;
        }
        r = listeners_open(conf, &s->listeners, &listeners, err, sizeof(err));
        if (r < 0) {
                log_error("reload failed, keeping the running configuration: %s", err);
                conf_unref(conf);
                return;
        }
        listener_set_done(&s->listeners); /* closes the sockets that were not carried over */
        s->listeners = listeners;
        conf_unref(s->conf);
        s->conf = conf;
        apply_log_level(s);
        workers_set_stack_size(s->workers, conf->worker_stack_size);

        char names[1024];
        log_notice("configuration reloaded from %s%s, listening on %s", s->opts.config_path,
                   defaulted ? " (absent: built-in defaults)" : "",
                   listeners_describe(&s->listeners, names, sizeof(names)));
}

/* read_signal: returns the signal number, 0 when none is pending. */
static int read_signal(Server *s) {
        struct signalfd_siginfo si;
        ssize_t n = read(s->signal_fd, &si, sizeof(si));

        if (n != (ssize_t) sizeof(si))
                return 0;
        return (int) si.ssi_signo;
}

static void stop_sessions(Server *s, void (*how)(Session *)) {
        pthread_mutex_lock(&s->lock);
        for (Session *session = s->sessions; session; session = session->next)
                how(session);
        pthread_mutex_unlock(&s->lock);
}

static unsigned active(Server *s) {
        pthread_mutex_lock(&s->lock);
        unsigned n = s->n_active;
        pthread_mutex_unlock(&s->lock);
        return n;
}

/* wait_drained: until no session is left or TIMEOUT_MSEC pass; a SIGTERM/SIGINT meanwhile
 * (the impatient second Ctrl+C) cuts the wait short. Returns true when drained. */
static bool wait_drained(Server *s, uint64_t timeout_msec) {
        uint64_t deadline = now_usec() + timeout_msec * 1000u;
        struct pollfd pfd = { .fd = s->signal_fd, .events = POLLIN };

        while (active(s) > 0) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return false;
                uint64_t left_msec = (deadline - now + 999u) / 1000u;
                /* Poll in short slices: the drained condition is not a descriptor. */
                if (poll(&pfd, 1, left_msec < 50 ? (int) left_msec : 50) > 0) {
                        int sig = read_signal(s);
                        if (sig == SIGTERM || sig == SIGINT)
                                return false;
                }
        }
        return true;
}

static void shut_down(Server *s) {
        unsigned n = active(s);

        listener_set_done(&s->listeners); /* stop accepting: new clients are refused by the kernel */
        if (n > 0)
                log_notice("stopping: %u connection%s open, waiting up to %u s", n, n == 1 ? "" : "s",
                           s->conf->shutdown_timeout);
        stop_sessions(s, session_stop);
        if (!wait_drained(s, (uint64_t) s->conf->shutdown_timeout * 1000u)) {
                n = active(s);
                log_warning("closing %u remaining connection%s", n, n == 1 ? "" : "s");
                stop_sessions(s, session_kill);
                if (!wait_drained(s, KILL_GRACE_MSEC))
                        log_error("%u connections did not close", active(s));
        }
        s->workers = workers_free(s->workers);
}

/* poll_timeout: -1 normally; while accepting is paused, until the pause ends. */
static int poll_timeout(Server *s) {
        if (s->accept_paused_until == 0)
                return -1;
        uint64_t now = now_usec();
        if (now >= s->accept_paused_until) {
                s->accept_paused_until = 0;
                return -1;
        }
        return (int) ((s->accept_paused_until - now + 999u) / 1000u);
}

int server_run(Server *s) {
        struct pollfd *pfds = NULL;
        bool stopping = false;
        int r = 0;

        while (!stopping) {
                int timeout = poll_timeout(s);
                bool accepting = s->accept_paused_until == 0;
                size_t n = 1 + s->listeners.n;

                /* The listener set changes on reload: rebuild the poll set every round; it is
                 * a handful of entries. */
                struct pollfd *grown = realloc(pfds, n * sizeof(*pfds));
                if (!grown) {
                        r = log_error_errno(-ENOMEM, "cannot poll");
                        break;
                }
                pfds = grown;
                pfds[0] = (struct pollfd) { .fd = s->signal_fd, .events = POLLIN };
                for (size_t i = 0; i < s->listeners.n; i++)
                        pfds[1 + i] = (struct pollfd) { .fd = s->listeners.items[i].fd,
                                                        .events = accepting ? POLLIN : 0 };

                if (poll(pfds, n, timeout) < 0) {
                        if (errno == EINTR)
                                continue;
                        r = log_error_errno(-errno, "poll failed");
                        break;
                }
                if (pfds[0].revents & POLLIN) {
                        int sig = read_signal(s);
                        if (sig == SIGTERM || sig == SIGINT) {
                                log_notice("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                                stopping = true;
                                break;
                        }
                        if (sig == SIGHUP) {
                                reload(s);
                                continue; /* the pollfd array no longer matches the listeners */
                        }
                }
                for (size_t i = 0; i < s->listeners.n && s->accept_paused_until == 0; i++)
                        if (pfds[1 + i].revents & POLLIN)
                                accept_some(s, pfds[1 + i].fd);
        }
        free(pfds);
        shut_down(s);
        if (r == 0)
                log_notice("stopped: %" PRIu64 " connections served, %" PRIu64 " refused", s->n_accepted,
                           s->n_refused);
        return r;
}

int server_new(Server **ret, Conf *conf, const ServerOptions *opts) {
        Server *s = calloc(1, sizeof(*s));
        char err[512];
        sigset_t set;
        int r;

        if (!s)
                return log_error_errno(-ENOMEM, "cannot start");
        s->opts = *opts;
        s->conf = conf_ref(conf);
        s->signal_fd = -1;
        s->reserve_fd = -1;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->drained, NULL);
        apply_log_level(s);

        handled_sigset(&set);
        s->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
        if (s->signal_fd < 0) {
                r = log_error_errno(-errno, "cannot create a signalfd");
                goto fail;
        }
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (s->reserve_fd < 0) {
                r = log_error_errno(-errno, "cannot open /dev/null");
                goto fail;
        }
        r = iptable_new(&s->ips);
        if (r < 0) {
                log_error_errno(r, "cannot start");
                goto fail;
        }
        r = workers_new(&s->workers, conf->worker_stack_size, WORKERS_MAX_IDLE);
        if (r < 0) {
                log_error_errno(r, "cannot start");
                goto fail;
        }
        r = listeners_open(conf, NULL, &s->listeners, err, sizeof(err));
        if (r < 0) {
                log_error("%s", err);
                goto fail;
        }
        *ret = s;
        return 0;
fail:
        server_free(s);
        return r;
}

const char *server_listening_on(const Server *s, char *buf, size_t size) {
        return listeners_describe(&s->listeners, buf, size);
}

Server *server_free(Server *s) {
        if (!s)
                return NULL;
        workers_free(s->workers);
        listener_set_done(&s->listeners);
        iptable_free(s->ips);
        if (s->reserve_fd >= 0)
                close(s->reserve_fd);
        if (s->signal_fd >= 0)
                close(s->signal_fd);
        conf_unref(s->conf);
        pthread_cond_destroy(&s->drained);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
}
