/* server: admission and limits, signals, reload and shutdown.
 *
 * Threads: the server thread owns the listeners and the Engine, and is the only one to
 * change the current Conf. The engine's threads accept, run sessions and call the hooks
 * below. They share only what `lock` guards: the current Conf pointer (read by the
 * hooks), the list of live sessions, the connection counters, the per-address table and the
 * reserve descriptor. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "dropin.h"
#include "engine.h"
#include "handoff.h"
#include "handover.h"
#include "iptable.h"
#include "listener.h"
#include "log.h"
#include "lookup.h"
#include "notify.h"
#include "preflight.h"
#include "proto.h"
#include "ratelimit.h"
#include "session.h"
#include "serving.h"

#include "config.h"

/* After shutdown_timeout, how long killed sessions get to notice. */
#define KILL_GRACE_MSEC 5000
/* The least the stop gives conversations that ended and linger in the engine, once
 * shutdown_timeout is spent: the lingering close's first second, and a margin for the thread
 * that closes it (lingerer.h's slack). One that would go on past it (session_linger_next) is
 * closed when the engine stops. */
#define LINGER_WAIT_MSEC (SESSION_LINGER_USEC / 1000u + 100u)
/* What a hand-over may take per conversation on top of that (see hand_over_budget_msec()). */
#define HANDOVER_MSEC_PER_CONVERSATION 1
/* Refusals logged per second at most; the rest are counted and summarised. */
#define REFUSAL_LOG_BURST 10
/* How often STATUS= is refreshed while the counters change. */
#define STATUS_INTERVAL_MSEC 1000
/* What STATUS= adds after a failed reload, before why (at most RELOAD_FAILURE_MAX bytes). */
#define RELOAD_FAILED_STATUS "; reload failed, running configuration kept: "
#define RELOAD_FAILURE_MAX 256 /* the journal has the rest */

struct Server {
        ServerOptions opts;
        Conf *conf; /* written by the server thread under lock; read by the hooks under lock */
        ListenerSet listeners;
        int signal_fd;
        int reserve_fd; /* under lock: spent to turn a client away when descriptors run out */
        Engine *engine;   /* the worker model: runs the sessions */
        bool keeps_partial_lines; /* the engine's EngineOps.keeps_partial_lines, for any thread */
        bool abandoned;   /* the engine did not stop in time: its threads may still use `lock` */
        bool activated;        /* the listeners came from systemd and stay across reloads */
        bool started_as_root;  /* only root switches to 'user' and 'group' (privileges_drop) */
        RateLimit refusal_log;
        uint64_t refusals_due; /* server thread: when those refusal_log holds back are reported, or 0 */
        uint64_t closes_due;   /* server thread: the same for the close lines (session_log_closed_held_back) */
        RateLimit exhaustion_log;
        uint64_t watchdog_usec;    /* 0: no watchdog */
        uint64_t watchdog_next;    /* usec, CLOCK_MONOTONIC */
        bool watchdog_withheld;    /* the engine did not answer: no WATCHDOG=1 (feed_watchdog) */
        uint64_t status_next;      /* usec; when STATUS= may be refreshed again */
        /* Why the last reload failed, "" once one succeeded: STATUS= says so meanwhile, as the
         * file on disk is not in force (the server thread's alone). */
        char reload_failure[RELOAD_FAILURE_MAX];
        char status_sent[sizeof("4294967295 active, 18446744073709551615 served, 18446744073709551615 refused") +
                         sizeof(RELOAD_FAILED_STATUS) + RELOAD_FAILURE_MAX];
        uint64_t changes_sent; /* the value of `changes` that status_sent shows */
        /* Under lock: clients admitted without a rate check since the last tick, the table of
         * sources full (-ENOSPC) or out of memory (-ENOMEM, untracked_error); logged by tick(),
         * not by rate_check(): a log write may block, and the lock is every loop's. */
        uint64_t n_untracked;
        int untracked_error;

        pthread_mutex_t lock;
        Session *sessions;      /* under lock */
        unsigned n_active;      /* under lock */
        IpTable *ips;           /* under lock */
        uint64_t n_accepted, n_refused, next_id;
        uint64_t changes; /* bumped whenever a STATUS= figure changes (under lock) */
        /* overload = "queue": accepting waits while n_active >= slots (under lock). */
        bool waiting_for_slot;
        /* under lock: the stop has begun; no client is admitted any more (a client an engine
         * accepted and kept waiting for a slot would otherwise be greeted as the slot frees,
         * after the sessions were told to stop) */
        bool stopping;
        bool handing_over; /* stopping, and the conversations go to the next process */
        int wake_fd; /* eventfd: the figures changed while the server thread slept */
        unsigned slots;
        bool queue_overload; /* atomic: the current Conf's overload is "queue" */
        HandoverBuf handover;   /* under lock: the records of the sessions handed over */
        uint64_t handover_usec; /* under lock: when the state's header was stamped (now_usec()) */
        int state_fd;           /* the state's place in systemd's store, stored empty; -1: none yet */
        Conf *started;          /* the configuration the process started with: its engine, its user */
        size_t n_handed, n_handed_failed; /* counted by the engine's threads (atomic), read once they are gone */
};

/* SIGUSR1 and SIGUSR2 only to say that they are ignored: their default action would end the
 * daemon, and an nginx operator may send them to reopen logs (hellod writes none). */
static const int handled_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 };

static void handled_sigset(sigset_t *set) {
        sigemptyset(set);
        for (size_t i = 0; i < sizeof(handled_signals) / sizeof(handled_signals[0]); i++)
                sigaddset(set, handled_signals[i]);
}

int server_hold_reloads(void) {
        sigset_t set;

        sigemptyset(&set);
        sigaddset(&set, SIGHUP);
        sigaddset(&set, SIGUSR1); /* ignored once started: their default action ends hellod */
        sigaddset(&set, SIGUSR2);
        return -pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int server_block_signals(void) {
        sigset_t set;

        handled_sigset(&set);
        /* The per-connection model's wakeup: only its serving threads take it. */
        sigaddset(&set, SERVING_SIGNAL);
        /* A client that goes away mid-write must not kill the daemon: sends use
         * MSG_NOSIGNAL, and SIGPIPE is ignored for anything else. */
        if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
                return -errno;
        return -pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* log_refusals_held_back: N refusals the log held back, in one entry under the refusals'
 * MESSAGE_ID, so that the journal's entries for it add up to every refusal (one each, plus
 * HELLOD_HELD_BACK= of the summaries, which name no peer). */
static void log_refusals_held_back(unsigned n) {
        char count[sizeof("4294967295")];

        if (n == 0)
                return;
        snprintf(count, sizeof(count), "%u", n);
        LogField fields[] = { { "HELLOD_HELD_BACK", count } };
        log_struct(LOG_WARNING, MESSAGE_ID_REFUSED, fields, 1, "%u more connections refused in the last second", n);
}

/* log_refusal_via: PEER ("addr:port") refused for REASON; BALANCER ("addr:port" or NULL): the
 * load balancer it came through. */
static void log_refusal_via(Server *s, const char *peer, const char *balancer, const char *reason,
                            const char *detail) {
        char address[ADDR_STR_MAX];
        unsigned suppressed;

        RateVerdict verdict = ratelimit_check(&s->refusal_log, &suppressed);
        log_refusals_held_back(suppressed);
        if (verdict == RATE_HELD_FIRST)
                (void) eventfd_write(s->wake_fd, 1); /* the server thread reports them (report_held_back) */
        if (verdict != RATE_PASS)
                return;
        addr_strip_port(peer, address, sizeof(address));
        LogField fields[] = { { "HELLOD_PEER", peer },
                              { "HELLOD_PEER_ADDRESS", address },
                              { "HELLOD_REASON", reason },
                              { "HELLOD_PROXY", balancer ? balancer : "" } };
        log_struct(LOG_WARNING, MESSAGE_ID_REFUSED, fields, balancer ? 4 : 3, "refused %s%s%s: %s", peer,
                   balancer ? " via " : "", balancer ? balancer : "", detail);
}

static void log_refusal(Server *s, const char *peer, const char *reason, const char *detail) {
        log_refusal_via(s, peer, NULL, reason, detail);
}

/* turn_away: a short ERR line, then close without a RST that could eat it. */
static void turn_away(int fd, const char *line) {
        session_say_last(fd, line);
        close(fd);
}

/* changed: the figures changed (under lock). The first change after a STATUS= wakes the
 * server thread, which otherwise sleeps while the engine's threads accept and serve: its
 * tick refreshes STATUS=, expires the rate table and joins exited threads. */
static void changed(Server *s) {
        if (s->changes++ == s->changes_sent)
                (void) eventfd_write(s->wake_fd, 1);
}

static void count_refusal(Server *s) {
        pthread_mutex_lock(&s->lock);
        s->n_refused++;
        changed(s);
        pthread_mutex_unlock(&s->lock);
}

/* wake_if_slot_free: under the lock: when accepting waits for a slot and one is free, the
 * engines are told (they admit the clients they keep waiting first, then accept again). Also
 * after a waiting client's turn that left a slot free (it was refused, or more are free), and
 * after a client was made to wait behind others while a slot is free: their engine may have
 * taken its wakeup already. */
static void wake_if_slot_free(Server *s) {
        if (s->waiting_for_slot && s->n_active < s->slots) {
                s->waiting_for_slot = false;
                if (s->engine)
                        engine_slot_freed(s->engine);
        }
}

/* unregister: takes SESSION off the books and frees it. */
static void unregister(Server *s, Session *session) {
        pthread_mutex_lock(&s->lock);
        if (session->prev)
                session->prev->next = session->next;
        else
                s->sessions = session->next;
        if (session->next)
                session->next->prev = session->prev;
        if (session->counted)
                iptable_dec(s->ips, &session->ip, now_usec());
        if (session->turned_away) { /* admitted, then no thread could serve it: a refusal */
                s->n_accepted--;
                s->n_refused++;
        }
        changed(s);
        s->n_active--;
        wake_if_slot_free(s);
        pthread_mutex_unlock(&s->lock);
        /* Closed once off the list: the server calls shutdown() on registered sockets only,
         * so the number cannot be reused under it; and a close, the costliest call of a
         * session (perf), is not made with every accepting thread waiting on the lock. */
        session_free(session);
}

/* unstore_session: SESSION leaves systemd's store, where it may be (a resumed one, not yet
 * marked stored): PID 1's copy would keep the connection open after this process closes it.
 * 0, or notify_fdstore_remove()'s error. */
static int unstore_session(const Session *session) {
        char name[HANDOVER_FDNAME_MAX];
        HandoverConnName conn = handoff_conn_name(session);

        return notify_fdstore_remove(handover_fdname_conn(&conn, name, sizeof(name)));
}

/* forget_stored: SESSION leaves systemd's store, if it is there (unstore_session). */
static int forget_stored(const Session *session) {
        return session->stored ? unstore_session(session) : 0;
}

/* put_stored: SESSION into systemd's store under the name it says (handoff_conn_name);
 * Session.stored says whether it went. One that has ended is kept through a hang-up: it will
 * linger there (notify_fdstore_add). */
static void put_stored(Session *session) {
        char name[HANDOVER_FDNAME_MAX];
        HandoverConnName conn = handoff_conn_name(session);

        session->stored = notify_fdstore_add(session->fd, handover_fdname_conn(&conn, name, sizeof(name)),
                                             session->stored_ended) > 0;
}

/* lingering_closed: the engine's lingering_closed hook: a conversation's socket that lingered
 * on after its session, still stored under STORED_AS (if not ""), leaves the store before it
 * closes. */
static void lingering_closed(void *userdata, const char *stored_as) {
        (void) userdata;
        if (stored_as[0] != '\0')
                (void) notify_fdstore_remove(stored_as);
}

/* session_ending: the engine's ending hook: SESSION, stored, has ended its conversation and
 * waits for the client to take its last replies before the FIN, or lingers after it. Its name
 * in the store says so from now on, so that after a crash the next process ends it rather than
 * taking it for a live one (handoff_session_fresh), and PID 1 keeps it through its client's
 * hang-up (notify_fdstore_add). Out under its old name first: PID 1 keeps the first name of a
 * socket it holds and drops a second copy. (A crash between the two closes the connection with
 * this process: its client sees the end without the replies not sent yet, or, lingering with
 * bytes of the client's unread, a reset.) */
static void session_ending(Session *session, void *userdata) {
        (void) userdata;
        /* Not stored, renamed already, or still under its old name (no second copy). */
        if (!session->stored || session->stored_ended || forget_stored(session) < 0)
                return;
        session->stored_ended = true;
        put_stored(session);
}

/* session_done: the engine's done callback, on the thread that drove the session: the one
 * way every session ends. */
static void session_done(Session *session, void *userdata) {
        session_log_closed(session);
        (void) forget_stored(session); /* before the socket closes */
        unregister(userdata, session);
}

/* store_session: handover = "always": the conversation goes into systemd's store as soon as
 * it is one, so that the next process finds it after a crash and goes on from its next line.
 * Behind a balancer that is once its PROXY header is in: a connection still waiting for it
 * would have the header answered as a line; and its name then says what the header said (a
 * crash leaves no record). */
static void store_session(Server *s, Session *session) {
        /* An engine that takes partial lines in (io_uring, turned to "always" by a reload) would
         * have the next process answer the end of a line as a whole one: a crash closes its
         * connections instead, as those of a process not in the crash mode. */
        if (session->conf->handover != HANDOVER_MODE_ALWAYS || session->proxy || !s->keeps_partial_lines)
                return;
        session->stored_via = session->balancer[0] != '\0';
        put_stored(session);
}

/* hand_over_record: REC into the state for the next process, and its connection FD into
 * systemd's store (unless STORED there already): named as the crash mode names it when this
 * process is in that mode (the next one most likely is too, and after a crash there it has
 * only the name), else "c<id>" (the record says the rest). 0 or a negative errno. */
static int hand_over_record(Server *s, const HandoverRecord *rec, int fd, bool stored) {
        char name[HANDOVER_FDNAME_MAX];

        /* The next process adds the time since the header was stamped to each age: the record
         * gives the age as of then, or the hand-over's own time would be counted twice. */
        HandoverRecord at_header = *rec;
        pthread_mutex_lock(&s->lock);
        bool crash_mode = s->conf->handover == HANDOVER_MODE_ALWAYS;
        uint64_t since = now_usec() - s->handover_usec;
        at_header.age_usec = rec->age_usec > since ? rec->age_usec - since : 0;
        int r = rec->peer.ss_family == AF_UNSPEC ? -ENOTCONN : handover_state_add(&s->handover, &at_header);
        pthread_mutex_unlock(&s->lock);
        if (r == 0 && !stored) {
                HandoverConnName conn = handoff_record_conn_name(rec, crash_mode);
                r = notify_fdstore_add(fd, handover_fdname_conn(&conn, name, sizeof(name)),
                                       rec->flags & HANDOVER_LINGERING);
        }
        /* Counted once its connection is stored as well (PID 1 may still refuse it, in silence:
         * the next process then counts its record as without a descriptor). */
        __atomic_add_fetch(r >= 0 ? &s->n_handed : &s->n_handed_failed, 1, __ATOMIC_RELAXED);
        return r;
}

/* session_handed_over: the engine's handed_over hook: SESSION's record for the next process,
 * its connection into systemd's store (unless it is there already); then it leaves this
 * process without a word to the client. */
static void session_handed_over(Session *session, void *userdata) {
        Server *s = userdata;
        HandoverRecord rec;

        if (session->proxy) { /* not greeted yet (nor stored): the balancer retries elsewhere */
                unregister(s, session);
                return;
        }
        handoff_record(session, now_usec(), &rec);
        int r = hand_over_record(s, &rec, session->fd, session->stored);
        if (r < 0) {
                log_warning_errno(r, "connection %" PRIu64 " from %s cannot be handed over, closing it", session->id,
                                  session->peer);
                (void) forget_stored(session);
        }
        unregister(s, session);
}

/* lingering_handed_over: the engine's handed_over_lingering hook: the connection lingers on in
 * the next process; this one lets go of it. */
static void lingering_handed_over(void *userdata, const HandoverRecord *rec, int fd, const char *stored_as) {
        int r = hand_over_record(userdata, rec, fd, stored_as[0] != '\0');

        if (r < 0) {
                log_warning_errno(r, "lingering connection %" PRIu64 " cannot be handed over, closing it", rec->id);
                lingering_closed(userdata, stored_as);
        }
        close(fd);
}

/* waiting_handed_over: the engine's handed_over_waiting hook: a client accepted while every
 * slot was taken (overload = "queue"), not greeted yet. In the socket's backlog it would have
 * been greeted by the next process; so it is greeted now (its socket has room: nothing was
 * sent on it) and goes to the next process as a conversation begun, as every conversation
 * handed over goes on there. Greeted here, not there: should the hand-over fail after its
 * connection is stored, a next process in the crash mode takes it up as greeted. (It met the
 * access lists here, not yet the per-source limits.) Behind a PROXY listener its header is not
 * read yet: closed, as session_handed_over() does. */
static void waiting_handed_over(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via) {
        Server *s = userdata;
        Session *session;
        HandoverRecord rec;

        if (via->proxy) {
                close(fd);
                return;
        }
        pthread_mutex_lock(&s->lock);
        Conf *conf = conf_ref(s->conf);
        uint64_t id = ++s->next_id;
        pthread_mutex_unlock(&s->lock);
        int r = session_new(&session, fd, conf, (const struct sockaddr *) peer, via->name); /* closes FD on failure */
        conf_unref(conf);
        if (r < 0) {
                __atomic_add_fetch(&s->n_handed_failed, 1, __ATOMIC_RELAXED);
                log_warning_errno(r, "a client waiting for a slot cannot be handed over, closing it");
                return;
        }
        session->id = id;
        session->timer.at = session_idle_deadline(session, session->started_usec);
        bool recorded = false; /* hand_over_record() counts what it was given */
        if (!(session->out.data = malloc(session->out.cap)))
                r = -ENOMEM;
        else {
                proto_greeting(&session->proto, &session->out);
                ssize_t n = send(session->fd, session->out.data, session->out.len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        r = -errno; /* gone already */
                else {
                        session->out_off = n > 0 ? (size_t) n : 0; /* the rest, if any, is sent there */
                        session->want_write = session->out_off < session->out.len;
                        handoff_record(session, session->started_usec, &rec);
                        r = hand_over_record(s, &rec, session->fd, false);
                        recorded = true;
                }
        }
        if (r < 0 && !recorded)
                __atomic_add_fetch(&s->n_handed_failed, 1, __ATOMIC_RELAXED);
        if (r < 0)
                log_warning_errno(r, "a client waiting for a slot (%s) cannot be handed over, closing it", session->peer);
        session_free(session);
}

/* rate_check: the source's connection-rate bucket; called under the lock. Returns the
 * refusal reason, or NULL to go on. */
static const char *rate_check(Server *s, const IpKey *source) {
        const Conf *conf = s->conf;

        if (conf->rate_limit_per_ip == 0)
                return NULL;
        int r = iptable_take_token(s->ips, source, now_usec());
        if (r == 0)
                return "rate-limited";
        if (r < 0) {
                /* Fail open: a flood of distinct sources must not lock everyone out. Behind a
                 * PROXY listener no other change follows: tick() must run all the same. */
                if (s->n_untracked++ == 0)
                        changed(s);
                s->untracked_error = r;
        }
        return NULL;
}

/* count_source: the per-source limits for the client at IP, and its count taken; called
 * under the lock. Returns false with *REASON and *DETAIL set when it is refused; else *SOURCE
 * is its network block, as counted. */
static bool count_source(Server *s, const IpKey *ip, IpKey *source, const char **reason, const char **detail) {
        const Conf *conf = s->conf;

        /* Per-source limits count network blocks, so rotating addresses does not help. */
        *source = *ip;
        ip_key_mask(source, conf->per_ip_ipv4_prefix, conf->per_ip_ipv6_prefix);
        if ((*reason = rate_check(s, source))) {
                *detail = "too many connections from this source (rate_limit_per_ip)";
        } else if (conf->max_connections_per_ip > 0 &&
                   iptable_count(s->ips, source) >= conf->max_connections_per_ip) {
                *reason = "max-connections-per-ip";
                *detail = "server busy (max_connections_per_ip reached)";
        } else if (iptable_inc(s->ips, source) < 0) {
                *reason = "out-of-memory";
                *detail = "out of memory";
        }
        return *reason == NULL;
}

/* register_session: the limits, then a registered session for FD; called under the lock.
 * Behind a PROXY listener the per-source limits wait for the header: the peer is the
 * balancer. Returns NULL with *REASON and *DETAIL set when the client is refused; *FD is -1
 * when the socket was closed on the way. With overload = "queue" and every slot taken, the
 * client is not refused when the caller can keep it (QUEUED not NULL): NULL with *QUEUED set
 * and no reason, and unregister() says when a slot frees. A client accepted after others the
 * engines keep waiting (not WAITED itself) waits behind them, slot or not: none of them may be
 * passed by a newer one. */
static Session *register_session(Server *s, int *fd, const struct sockaddr *peer, const IpKey *ip,
                                 const Listener *via, bool waited, bool *queued, const char **reason,
                                 const char **detail) {
        const Conf *conf = s->conf;
        Session *session = NULL;
        IpKey source = { 0 };
        bool full = s->n_active >= conf->max_connections;

        if (queued && conf->overload == OVERLOAD_QUEUE && (full || (!waited && engine_waiting(s->engine) > 0))) {
                s->slots = conf->max_connections;
                s->waiting_for_slot = *queued = true;
                engine_waiting_add(s->engine, 1);
        } else if (s->n_active >= conf->max_connections) {
                *reason = "max-connections";
                *detail = "server busy (max_connections reached)";
        } else if (!via->proxy && !count_source(s, ip, &source, reason, detail)) {
                ; /* refused, *REASON says why */
        } else if (session_new(&session, *fd, s->conf, peer, via->name) < 0) {
                if (!via->proxy)
                        iptable_dec(s->ips, &source, now_usec());
                *reason = "out-of-memory";
                *detail = "out of memory";
                *fd = -1; /* session_new() closed it */
        } else {
                session->ip = source; /* what unregister() gives back */
                session->counted = !via->proxy;
                session->id = ++s->next_id;
                session->next = s->sessions;
                if (s->sessions)
                        s->sessions->prev = session;
                s->sessions = session;
                s->n_active++;
                s->n_accepted++;
                changed(s);
        }
        return session;
}

/* open_reserve: under the lock: the reserve descriptor (see out_of_descriptors) opened again. */
static void open_reserve(Server *s) {
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* reserve_kept: under the lock, with *FD a client just accepted: whether the reserve descriptor
 * is held. Spent and not opened again (another thread's accept took its number in the moment it
 * was free, or the limit was lowered), it is opened now; at the limit the client gives its own
 * number up: told busy, and its socket closed by the dup3() that makes the number the reserve,
 * so that no other thread's accept can take it in between (*FD is then -1). Without a reserve,
 * every later client at the limit would wait unanswered for as long as the limit holds. */
static bool reserve_kept(Server *s, int *fd) {
        if (s->reserve_fd < 0)
                open_reserve(s);
        if (s->reserve_fd >= 0)
                return true;
        session_say_last(*fd, PROTO_ERR_BUSY);
        if (dup3(s->wake_fd, *fd, O_CLOEXEC) >= 0)
                s->reserve_fd = *fd;
        else
                close(*fd);
        *fd = -1;
        return false;
}

/* refusal_line: what a client refused for REASON is told before the close: nothing when it may
 * not talk to us at all (denied, or not a balancer's header on a PROXY listener). */
static const char *refusal_line(const char *reason) {
        if (strcmp(reason, "denied") == 0 || strcmp(reason, "untrusted-proxy") == 0 ||
            strcmp(reason, "proxy-invalid") == 0)
                return NULL;
        if (strcmp(reason, "shutting-down") == 0)
                return PROTO_ERR_SHUTDOWN;
        return strcmp(reason, "rate-limited") == 0 ? PROTO_ERR_RATE : PROTO_ERR_BUSY;
}

/* unwelcome: under the lock: why the client at IP, come through VIA, may not talk to hellod at
 * all (not a balancer in proxy_from on a PROXY listener, or denied), or NULL. */
static const char *unwelcome(const Server *s, const IpKey *ip, const Listener *via) {
        if (via->proxy)
                return conf_proxy_trusted(s->conf, ip) ? NULL : "untrusted-proxy";
        return conf_admits(s->conf, ip) ? NULL : "denied";
}

/* refuse: FD (-1: none left to tell), accepted from VIA with PEER, turned away for REASON:
 * told refusal_line()'s line, or nothing; counted and logged with DETAIL (NULL: what the
 * silence means). */
static void refuse(Server *s, int fd, const struct sockaddr *peer, const Listener *via, const char *reason,
                   const char *detail) {
        char name[ADDR_STR_MAX];
        /* Behind a PROXY listener nothing comes before the header, not even at a stop: a
         * balancer may try another server (as with a header still awaited at a stop). */
        bool silent = via->proxy && strcmp(reason, "shutting-down") == 0;
        const char *line = silent ? NULL : refusal_line(reason);

        if (!line) {
                /* Not worth an answer: the address may not talk to us at all (or not in the
                 * PROXY protocol: no greeting before a header). */
                if (fd >= 0)
                        close(fd);
                if (!detail)
                        detail = via->proxy ? "a PROXY protocol listener, and not from a balancer in proxy_from"
                                            : "denied by allow/deny";
        } else if (fd >= 0) {
                turn_away(fd, line);
        }
        count_refusal(s);
        log_refusal(s, addr_format(peer, name, sizeof(name)), reason, detail);
}

/* waiting_stopped: the engine's stopped_waiting hook: a client kept waiting for a slot when
 * the engine stopped is refused as one that comes during the stop (admit()): told so (behind
 * a PROXY listener, nothing), counted and logged. */
static void waiting_stopped(void *userdata, int fd, const struct sockaddr_storage *peer, const Listener *via) {
        refuse(userdata, fd, (const struct sockaddr *) peer, via, "shutting-down", "hellod is stopping");
}

/* admit: the access lists and limits for a connection accepted from VIA, on any thread.
 * Returns the registered session, or NULL: the client was turned away (FD closed), or it is
 * queued (*QUEUED set, see register_session: FD is still the caller's). */
static Session *admit(Server *s, int fd, const struct sockaddr *peer, const Listener *via, bool *queued) {
        const char *reason = NULL, *detail = NULL;
        char name[ADDR_STR_MAX];
        Session *session = NULL;
        IpKey ip;
        bool waited = queued && *queued; /* kept waiting by the engine until now */

        if (queued)
                *queued = false;
        (void) ip_key_from_sockaddr(peer, &ip);
        if (via->proxy && !s->engine->ops->reads_proxy) {
                /* A PROXY listener added by a reload to the io_uring pool (which left PROXY
                 * listeners to epoll at start): never greet before the header. */
                if (waited) {
                        pthread_mutex_lock(&s->lock);
                        engine_waiting_add(s->engine, -1);
                        wake_if_slot_free(s);
                        pthread_mutex_unlock(&s->lock);
                }
                close(fd);
                count_refusal(s);
                log_refusal(s, addr_format(peer, name, sizeof(name)), "proxy-unsupported",
                            "a PROXY protocol listener, and io_backend = \"io_uring\" does not read PROXY "
                            "headers: restart hellod to serve it with epoll");
                return NULL;
        }
        pthread_mutex_lock(&s->lock);
        if (waited) /* its turn: counted again if it must wait on */
                engine_waiting_add(s->engine, -1);
        if (s->stopping && !(s->handing_over && queued)) {
                reason = "shutting-down";
                detail = "hellod is stopping";
        } else if ((reason = unwelcome(s, &ip, via))) {
                /* refused below, without a word */
        } else if (s->stopping) {
                /* Accepted while every slot was taken, and now the hand-over: it waits on in
                 * the engine, which gives it to the next process (handed_over_waiting), greeted:
                 * so only once the access lists let it in. */
                *queued = true;
                engine_waiting_add(s->engine, 1);
        } else if (!reserve_kept(s, &fd)) {
                reason = "out-of-descriptors";
                detail = "out of descriptors, and its own was kept in reserve to turn clients away";
        } else {
                session = register_session(s, &fd, peer, &ip, via, waited, queued, &reason, &detail);
        }
        if (waited || (queued && *queued))
                wake_if_slot_free(s);
        pthread_mutex_unlock(&s->lock);
        if (queued && *queued)
                return NULL;

        if (session && via->proxy && session_proxy_begin(session) < 0) {
                /* Closed before a byte, as any refusal before the header: counted and logged
                 * as one, not as a client served. */
                session_fail(session, -ENOMEM);
                session->turned_away = true;
                log_refusal(s, session->peer, "out-of-memory", "out of memory for the PROXY header");
                unregister(s, session);
                return NULL;
        }
        if (session) {
                session_log_opened(session);
                store_session(s, session);
                return session;
        }
        refuse(s, fd, peer, via, reason, detail);
        return NULL;
}

/* out_of_descriptors: EMFILE/ENFILE/ENOBUFS/ENOMEM, on any accepting thread. The pending
 * client would otherwise keep the listener readable and the loop spinning: spend the reserve
 * descriptor to accept and turn it away; the accepting loop then pauses briefly. */
static void out_of_descriptors(Server *s, const Listener *via, int error) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        const char *reason = NULL;
        unsigned suppressed;
        int fd = -1;

        pthread_mutex_lock(&s->lock);
        if (s->reserve_fd >= 0) {
                close(s->reserve_fd);
                s->reserve_fd = -1;
                fd = accept4(via->fd, (struct sockaddr *) &peer, &len, SOCK_CLOEXEC);
                if (fd >= 0) {
                        IpKey ip;
                        (void) ip_key_from_sockaddr((const struct sockaddr *) &peer, &ip);
                        /* Told busy, unless it may not talk to hellod at all (admit()): closed
                         * here either way, so that the reserve can take the number back. */
                        if ((reason = unwelcome(s, &ip, via)))
                                close(fd);
                        else
                                turn_away(fd, PROTO_ERR_BUSY);
                }
                open_reserve(s); /* may fail: see reserve_kept() */
        }
        pthread_mutex_unlock(&s->lock);
        if (reason)
                refuse(s, -1, (const struct sockaddr *) &peer, via, reason, NULL);
        else if (fd >= 0)
                count_refusal(s);
        if (ratelimit_allow(&s->exhaustion_log, &suppressed))
                log_warning_errno(error, "cannot accept connections, pausing for %u ms%s",
                                  ENGINE_ACCEPT_PAUSE_USEC / 1000u, ratelimit_repeats(suppressed, (char[RATELIMIT_REPEATS_SIZE]) { 0 }, RATELIMIT_REPEATS_SIZE));
}

/* at_capacity: with overload = "queue", whether accepting must wait for a free slot; if so,
 * unregister() wakes the accepting side when one frees up. Any thread. */
static bool at_capacity(Server *s) {
        bool full = false;

        /* Read without the lock first: the common case (refuse) costs nothing per accept. */
        if (!__atomic_load_n(&s->queue_overload, __ATOMIC_RELAXED))
                return false;
        pthread_mutex_lock(&s->lock);
        if (s->conf->overload == OVERLOAD_QUEUE) {
                s->slots = s->conf->max_connections;
                full = s->n_active >= s->slots || engine_waiting(s->engine) > 0;
                /* Cleared only by unregister(), which then says a slot freed: with several
                 * listeners (or loops) one that finds room must not hide one still waiting. */
                s->waiting_for_slot = s->waiting_for_slot || full;
        }
        pthread_mutex_unlock(&s->lock);
        return full;
}

/* balancer_trusted_at: whether the balancer at ADDR is in proxy_from now. */
static bool balancer_trusted_at(Server *s, const struct sockaddr *addr) {
        IpKey ip;

        if (ip_key_from_sockaddr(addr, &ip) < 0)
                return false;
        pthread_mutex_lock(&s->lock);
        bool trusted = conf_proxy_trusted(s->conf, &ip);
        pthread_mutex_unlock(&s->lock);
        return trusted;
}

/* balancer_trusted: whether SESSION's balancer (the peer of its connection) is in proxy_from
 * now: checked at the accept (unwelcome), and again once its header is in, since a reload
 * may have dropped it meanwhile. */
static bool balancer_trusted(Server *s, const Session *session) {
        return balancer_trusted_at(s, (const struct sockaddr *) &session->peer_addr);
}

/* proxied: the PROXY header of SESSION (see EngineHooks.proxied): the client it names goes
 * through the access lists and the per-source limits in the balancer's stead. */
static bool proxied(Server *s, Session *session, ProxyStatus status, const ProxyHeader *header,
                    const char *why) {
        const char *reason = NULL, *detail = NULL;
        char name[ADDR_STR_MAX], detail_buf[160];
        IpKey ip, source;

        session_proxy_end(session);
        if (status == PROXY_DONE && !header)
                status = PROXY_INVALID;
        bool untrusted = status == PROXY_DONE && !balancer_trusted(s, session);
        if (untrusted) {
                /* Not believed, so refused as the connection it is: in silence, no "via". */
                status = PROXY_INVALID;
                why = "its balancer is no longer in proxy_from";
        }
        if (status != PROXY_DONE) {
                /* Cut short by a stop (engine_end_conversations woke the wait): no conversation
                 * began, so none is served; it is refused as one that came in during the stop,
                 * though in silence like any connection without its header. */
                bool stopping = !untrusted && session_stop_requested(session);
                reason = untrusted ? "untrusted-proxy" : stopping ? "shutting-down" : "proxy-invalid";
                snprintf(name, sizeof(name), "%s", session->peer);
                snprintf(detail_buf, sizeof(detail_buf), "PROXY protocol listener: %s",
                         stopping ? "the server stopped before the header was complete" : why ? why : "no header");
                detail = detail_buf;
        } else if (header->command != PROXY_COMMAND_PROXY) {
                /* The balancer's own connection (a health check): it speaks for itself. */
                session->proxy_local = true;
                store_session(s, session);
                return true;
        } else {
                addr_format((const struct sockaddr *) &header->source, name, sizeof(name));
                (void) ip_key_from_sockaddr((const struct sockaddr *) &header->source, &ip);
                pthread_mutex_lock(&s->lock);
                if (!conf_admits(s->conf, &ip)) {
                        reason = "denied";
                        detail = "denied by allow/deny";
                } else if (count_source(s, &ip, &source, &reason, &detail)) {
                        session->ip = source;
                        session->counted = true;
                }
                pthread_mutex_unlock(&s->lock);
        }
        if (!reason) {
                snprintf(session->peer, sizeof(session->peer), "%s", name);
                session->peer_addr = header->source;
                store_session(s, session);
                return true;
        }
        /* Refused as it would have been without a balancer: an ERR line for the limits, not a
         * word for a denied client or without a header (a balancer given no byte may try
         * another server); either way the FIN, and what came behind the header (peeked, left
         * unread) read away, or the close would send a reset. */
        session_say_last(session->fd, status == PROXY_DONE ? refusal_line(reason) : NULL);
        session->refused = true;
        pthread_mutex_lock(&s->lock);
        s->n_accepted--;
        pthread_mutex_unlock(&s->lock);
        count_refusal(s);
        /* Without a header the connection is the balancer's (or a direct client's): no "via". */
        log_refusal_via(s, name, status == PROXY_DONE ? session->balancer : NULL, reason, detail);
        return false;
}

/* The hooks an accepting engine calls, on its threads. */
static Session *hook_admit(void *userdata, int fd, const struct sockaddr *peer, const Listener *via,
                           bool *queued) {
        return admit(userdata, fd, peer, via, queued);
}

static bool hook_must_wait(void *userdata) {
        return at_capacity(userdata);
}

static void hook_exhausted(void *userdata, const Listener *via, int error) {
        out_of_descriptors(userdata, via, error);
}

static bool hook_proxied(void *userdata, Session *session, ProxyStatus status, const ProxyHeader *header,
                         const char *reason) {
        return proxied(userdata, session, status, header, reason);
}

static void apply_log_level(const Server *s) {
        log_set_max_level(s->opts.log_level_override >= 0 ? s->opts.log_level_override : s->conf->log_level);
}

_Static_assert(sizeof(((Server *) 0)->status_sent) <= NOTIFY_STATUS_MAX, "STATUS= would not be sent");

/* format_status: the STATUS= text, and the change count it reflects noted as sent. */
static void format_status(Server *s, char *buf, size_t size) {
        pthread_mutex_lock(&s->lock);
        s->changes_sent = s->changes;
        snprintf(buf, size, "%u active, %" PRIu64 " served, %" PRIu64 " refused%s%s", s->n_active, s->n_accepted,
                 s->n_refused, s->reload_failure[0] ? RELOAD_FAILED_STATUS : "", s->reload_failure);
        pthread_mutex_unlock(&s->lock);
}

static bool status_stale(Server *s) {
        pthread_mutex_lock(&s->lock);
        bool stale = s->changes != s->changes_sent;
        pthread_mutex_unlock(&s->lock);
        return stale;
}

/* tick: the once-a-second housekeeping while connections come and go: STATUS= when the
 * figures changed, forgetting sources whose rate bucket refilled, joining exited threads. */
static void tick(Server *s) {
        char status[sizeof(s->status_sent)];
        uint64_t now = now_usec();

        if (now < s->status_next || !status_stale(s))
                return;
        s->status_next = now + STATUS_INTERVAL_MSEC * 1000u;
        format_status(s, status, sizeof(status));
        if (strcmp(status, s->status_sent) != 0) {
                notify_status(status);
                memcpy(s->status_sent, status, sizeof(status));
        }
        pthread_mutex_lock(&s->lock);
        iptable_expire(s->ips, now);
        uint64_t untracked = s->n_untracked;
        int untracked_error = s->untracked_error;
        s->n_untracked = 0;
        pthread_mutex_unlock(&s->lock);
        if (untracked > 0) /* rate_check() made the status stale: no tick passes over them */
                log_warning_errno(untracked_error,
                                  "cannot track more sources for rate_limit_per_ip: %" PRIu64
                                  " client(s) not held to it since the last such warning",
                                  untracked);
        engine_reap(s->engine);
}

static void ready(Server *s) {
        format_status(s, s->status_sent, sizeof(s->status_sent));
        notify_ready(s->status_sent);
}

/* keep_state_place: an empty memfd into systemd's store as "state", before any connection of
 * a hand-over (at the hand-over; in the crash mode, where every connection is stored from its
 * accept, from the start): when the store is full (FileDescriptorStoreMax= below
 * max_connections after a reload that raised it), PID 1 refuses the connections that come last,
 * not the state that every one of them needs. Filled once the records are written; left empty
 * by a crash, it reads as no state (drop_unwritten_state()). */
static int keep_state_place(Server *s) {
        if (s->state_fd >= 0)
                return 0;
        int fd = handoff_memfd_new();
        int r = fd < 0 ? fd : notify_fdstore_add(fd, HANDOVER_FDNAME_STATE, false);

        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        s->state_fd = fd;
        return 0;
}

/* keep_state_place_if_always: in the crash mode the place is taken before the first accept
 * (at the start, or at the reload that turns the mode on). */
static void keep_state_place_if_always(Server *s) {
        int r = s->conf->handover == HANDOVER_MODE_ALWAYS ? keep_state_place(s) : 0;

        if (r < 0)
                log_warning_errno(r, "cannot keep a place for the hand-over state in systemd's store");
}

/* forget_state_place: a stop without a hand-over: the place is of no use to anyone. */
static void forget_state_place(Server *s) {
        if (s->state_fd < 0)
                return;
        (void) notify_fdstore_remove(HANDOVER_FDNAME_STATE);
        close(s->state_fd);
        s->state_fd = -1;
}

/* pause_accepting: ListenersReopen.pause: the engine lets go of every listener (clients wait in
 * the backlog) while the set changes; PAUSED records that it did. */
typedef struct Pause {
        Engine *engine;
        bool paused;
} Pause;

static void pause_accepting(void *userdata) {
        Pause *p = userdata;

        engine_set_listeners(p->engine, &(ListenerSet) { 0 });
        p->paused = true;
}

/* may_hand_over: whether CONF lets conversations be handed over and a systemd is there to keep
 * their descriptors. */
static bool may_hand_over(const Conf *conf) {
        return conf->handover != HANDOVER_MODE_OFF && getenv("NOTIFY_SOCKET");
}

/* warn_store_size: a reload from OLD that raises max_connections does not resize systemd's
 * file descriptor store: the generator does, at `systemctl daemon-reload`
 * (FileDescriptorStoreMax=, dropin_fdstore_max), and hellod cannot ask what it holds. Past it,
 * a restart hands over only the conversations that fit. Said where something is handed over,
 * with the figure for the worker model running (a reload does not change it). */
static void warn_store_size(const Server *s, const Conf *old, const Conf *conf) {
        if (conf->max_connections <= old->max_connections || !may_hand_over(conf))
                return;
        log_notice("max_connections raised from %u to %u: a restart hands over only as many conversations as "
                   "systemd's file descriptor store holds, and `systemctl daemon-reload` sizes it "
                   "(FileDescriptorStoreMax=%u): run it if it has not run since the edit",
                   old->max_connections, conf->max_connections,
                   dropin_fdstore_max(conf->max_connections, s->started->workers == 0));
}

/* reload_listeners: S->listeners made what CONF asks for. On success the engine accepts from
 * nothing: the caller hands it the new set once CONF is in force, so that no client of a new
 * listener meets the old access lists or PROXY sources. On failure the engine accepts from
 * S->listeners as before (the sockets of a port moving between addresses bound again). */
static int reload_listeners(Server *s, const Conf *conf, char *err, size_t err_size) {
        Pause pause = { .engine = s->engine };
        ListenerSet listeners;

        if (s->activated) {
                bool *marks;
                int r;

                if ((r = listeners_report_match(&s->listeners, conf)) == -ECANCELED) {
                        snprintf(err, err_size, "comparing the passed sockets with 'listen': lookup given up");
                        return r;
                }
                /* Which passed sockets speak the PROXY protocol may have changed: the marks are
                 * worked out (names looked up) while the loops accept, then the loops take the
                 * marked set up like a new one. A name that cannot be looked up fails the
                 * reload: the marks stay as they were. */
                r = listeners_proxy_marks(&s->listeners, conf, &marks, err, err_size);
                if (r < 0)
                        return r;
                pause_accepting(&pause);
                listeners_set_proxy(&s->listeners, marks);
                free(marks);
                return 0;
        }
        /* The running listeners are left to the loops until every new address is bound; then
         * the loops let go of them (listeners_reopen calls pause_accepting): departing sockets
         * close and kept ones move to the new set. */
        ListenersReopen how = { .old = &s->listeners, .old_backlog = s->conf->backlog, .pause = pause_accepting,
                                .userdata = &pause };
        int r = listeners_reopen(conf, &how, &listeners, err, err_size);
        if (r < 0) {
                if (pause.paused)
                        engine_set_listeners(s->engine, &s->listeners);
                return r;
        }
        if (!pause.paused)
                pause_accepting(&pause);
        listener_set_done(&s->listeners); /* closes the sockets that were not carried over */
        s->listeners = listeners;
        return 0;
}

/* warn_proxy_unread: a PROXY listener that this engine cannot serve (added by a reload to an
 * io_uring pool, which left PROXY listeners to epoll at the start): its clients are refused. */
static void warn_proxy_unread(Server *s) {
        for (size_t i = 0; i < s->listeners.n && !s->engine->ops->reads_proxy; i++)
                if (s->listeners.items[i].proxy)
                        log_warning("%s speaks the PROXY protocol, which io_backend = \"io_uring\" does not read: "
                                    "its clients are refused until hellod is restarted (then epoll serves)",
                                    s->listeners.items[i].name);
}

static bool same_name(const char *a, const char *b) {
        return a == b || (a && b && strcmp(a, b) == 0);
}

/* apply_limits: CONF's per-source rate and overload policy, which admission reads (under the
 * server's lock once the engine runs). */
static void apply_limits(Server *s, const Conf *conf) {
        iptable_set_rate(s->ips, conf->rate_limit_per_ip, conf->rate_limit_burst, now_usec());
        __atomic_store_n(&s->queue_overload, conf->overload == OVERLOAD_QUEUE, __ATOMIC_RELAXED);
}

/* warn_restart_only: what of CONF waits for a restart: the user, the worker model and the
 * backend are the ones started with; the engine takes up what it can of the rest. */
static void warn_restart_only(const Server *s, const Conf *conf) {
        if (!same_name(conf->user, s->started->user) || !same_name(conf->group, s->started->group)) {
                /* Under a unit's User=, hellod never switches: a restart would not use them either. */
                if (s->started_as_root)
                        log_warning("a change of 'user' or 'group' takes effect when hellod is restarted");
                else
                        log_notice("not started as root: 'user' and 'group' are not used");
        }
        if (!conf_same_workers(conf, s->started))
                log_warning("a change of 'workers' takes effect when hellod is restarted");
        else if (conf->io_backend != s->started->io_backend && conf->workers != 0)
                log_warning("a change of 'io_backend' takes effect when hellod is restarted");
        if (conf->handover == HANDOVER_MODE_ALWAYS && !s->keeps_partial_lines)
                log_warning("handover = \"always\" takes effect when hellod is restarted: the io_uring loops "
                            "cannot leave partial lines in the kernel (epoll will serve instead)");
}

/* apply_conf: CONF (its reference taken over) is the configuration in force, the listeners
 * reloaded for it accepting under it; the one before is let go. */
static void apply_conf(Server *s, Conf *conf) {
        pthread_mutex_lock(&s->lock);
        Conf *old = s->conf;
        s->conf = conf;
        apply_limits(s, conf);
        /* With the configuration: a client greeted under the new one is logged at its level. */
        apply_log_level(s);
        pthread_mutex_unlock(&s->lock);
        keep_state_place_if_always(s); /* before the first accept that stores its connection */
        engine_set_listeners(s->engine, &s->listeners); /* accepting again, under CONF */
        warn_proxy_unread(s);
        pthread_mutex_lock(&s->lock);
        if (s->waiting_for_slot) {
                /* The limit or the overload policy may have changed: accepting that waits
                 * for a slot checks again under the new configuration. */
                s->waiting_for_slot = false;
                engine_slot_freed(s->engine);
        }
        pthread_mutex_unlock(&s->lock);
        conf_unref(old);
}

static void reload(Server *s) {
        char err[512], names[1024];
        Conf *conf = NULL;
        bool defaulted;

        notify_reloading();
        log_info("reloading configuration from %s", s->opts.config_path);
        /* The default path may be absent only while it has been: a file read before that has
         * disappeared (deleted, or moved while being edited) fails the reload, as in nginx and
         * sshd, rather than put every key back to its default (0.0.0.0 and ::, no allow list). */
        bool optional = s->opts.config_optional && s->opts.config_defaulted;
        int r = conf_load_for(s->opts.config_path, optional, &conf, &defaulted, err, sizeof(err));
        /* What `hellod -t` and a start check too: a file they refuse is not applied (but for a
         * name in `listen` that cannot be resolved under socket activation: preflight.h). */
        if (r >= 0)
                r = preflight_check(conf, s->opts.config_path, s->activated, NULL, err, sizeof(err));
        if (r >= 0)
                r = reload_listeners(s, conf, err, sizeof(err));
        if (r == -ECANCELED) { /* a stop came while a name was looked up: the loop reads it next */
                log_notice("reload abandoned, hellod is stopping: %s", err);
                conf_unref(conf);
                /* The reload is over, and sd_notify(3) wants its RELOADING=1 answered by
                 * READY=1 whatever came of it; STOPPING=1 follows. */
                ready(s);
                return;
        }
        if (r < 0) {
                log_error("reload failed, keeping the running configuration: %s", err);
                (void) log_one_line(s->reload_failure, sizeof(s->reload_failure), err); /* STATUS= */
                conf_unref(conf);
                ready(s);
                return;
        }
        warn_restart_only(s, conf);
        warn_store_size(s, s->conf, conf);
        engine_reconfigure(s->engine, s->started, conf);
        apply_conf(s, conf);
        (void) preflight_warn_reloaded(conf, s->started);

        s->opts.config_defaulted = defaulted;
        listeners_describe(&s->listeners, names, sizeof(names));
        LogField fields[] = { { "HELLOD_LISTEN", names }, { "HELLOD_CONFIG", s->opts.config_path } };
        log_struct(LOG_NOTICE, MESSAGE_ID_RELOADED, fields, 2, "configuration reloaded from %s%s, listening on %s",
                   s->opts.config_path, defaulted ? " (absent: built-in defaults)" : "", names);
        s->reload_failure[0] = '\0';
        ready(s);
}

/* read_signal: returns the signal number, 0 when none is pending. */
static int read_signal(Server *s) {
        struct signalfd_siginfo si;
        ssize_t n = read(s->signal_fd, &si, sizeof(si));

        if (n != (ssize_t) sizeof(si))
                return 0;
        return (int) si.ssi_signo;
}

/* say_ignored: SIGUSR1, SIGUSR2, and SIGHUP once the stop has begun, do nothing: said, so that
 * an operator's signal is not lost without a word. */
static void say_ignored(int sig) {
        if (sig == SIGHUP)
                log_notice("received SIGHUP while stopping, not reloading");
        else if (sig == SIGUSR1 || sig == SIGUSR2)
                log_notice("received %s, ignoring it: hellod writes no log file to reopen, and SIGHUP reloads",
                           sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2");
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

/* lingering: whether conversations that ended still linger in the engine, outside any session. */
static bool lingering(Server *s) {
        return engine_lingering(s->engine) > 0;
}

static bool has_active(Server *s) {
        return active(s) > 0;
}

/* wait_while: until BUSY(S) is false (true), or for TIMEOUT_MSEC at most (false); a
 * SIGTERM/SIGINT meanwhile (the impatient second Ctrl+C) cuts the wait short (false), and any
 * other signal is said to be ignored. The watchdog is fed meanwhile: draining is progress, not
 * a hang. */
static bool wait_while(Server *s, bool (*busy)(Server *), uint64_t timeout_msec) {
        uint64_t deadline = now_usec() + timeout_msec * 1000u;
        struct pollfd pfd = { .fd = s->signal_fd, .events = POLLIN };

        while (busy(s)) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return false;
                if (s->watchdog_usec > 0)
                        notify_watchdog();
                uint64_t left_msec = (deadline - now + 999u) / 1000u;
                /* Poll in short slices: the drained condition is not a descriptor. */
                if (poll(&pfd, 1, left_msec < 50 ? (int) left_msec : 50) > 0) {
                        int sig = read_signal(s);
                        if (sig == SIGTERM || sig == SIGINT)
                                return false;
                        say_ignored(sig);
                }
        }
        return true;
}

/* wait_drained: until no session is left, or TIMEOUT_MSEC pass. */
static bool wait_drained(Server *s, uint64_t timeout_msec) {
        return wait_while(s, has_active, timeout_msec);
}

/* forget_engine: the engine is stopped (or left to threads that would not stop, which may
 * still unregister sessions: hence the lock). */
static void forget_engine(Server *s) {
        pthread_mutex_lock(&s->lock);
        s->engine = NULL;
        pthread_mutex_unlock(&s->lock);
}

/* wants_hand_over: whether to hand the conversations over rather than end them: the
 * configuration allows it, systemd keeps descriptors for us, and it is not a stop. When
 * systemd cannot be asked, they are handed over: at a stop, systemd then closes them
 * (docs/zero-downtime.md). */
static bool wants_hand_over(Server *s) {
        char why[256];

        if (!may_hand_over(s->conf))
                return false;
        HandoffJob job = handoff_job(why, sizeof(why));
        log_info("%s: %s", why,
                 job == HANDOFF_JOB_STOP      ? "ending the conversations"
                 : job == HANDOFF_JOB_RESTART ? "handing the conversations over to the next process"
                                              : "handing the conversations over (at a stop, systemd closes them)");
        return job != HANDOFF_JOB_STOP;
}

/* hand_over_budget_msec: how long the loops may take to hand N conversations over. They wait
 * for PID 1, and systemd 252 checks each new descriptor against its whole store: 19,000 took
 * 11.6 s, about 32 ns times N squared. Twice that, a millisecond a conversation, and the grace
 * threads get anyway. */
static uint64_t hand_over_budget_msec(uint64_t n) {
        return KILL_GRACE_MSEC + n * HANDOVER_MSEC_PER_CONVERSATION + n * n / 15625u; /* 64 ns * n^2 */
}

/* hand_over: every live conversation to the next process of the service, through systemd's
 * file descriptor store: a place for their records as "state", the connections as c<ID>, then
 * the records into that place. */
static int hand_over(Server *s) {
        uint64_t started = now_usec();
        HandoverHeader header;
        char count[24], failed[24];
        int r;

        pthread_mutex_lock(&s->lock);
        handoff_header(&header, s->next_id); /* nothing is accepted any more */
        s->handover_usec = now_usec();
        r = handover_state_begin(&s->handover, &header);
        pthread_mutex_unlock(&s->lock);
        if (r >= 0)
                r = keep_state_place(s);
        if (r < 0) {
                log_error_errno(r, "cannot hand the conversations over, ending them");
                return r;
        }
        /* Thousands of conversations take seconds to store: the threads get that time, and
         * systemd is told so (TimeoutStopSec= would end the hand-over otherwise). */
        uint64_t grace_msec = hand_over_budget_msec(active(s));
        notify_extend_timeout((grace_msec + KILL_GRACE_MSEC) * 1000u);
        r = engine_hand_over(s->engine, grace_msec);
        forget_engine(s);
        if (r < 0) {
                s->abandoned = true; /* the place stays empty: no state, as after a crash */
                return log_error_errno(r, "worker threads did not finish, exiting without them");
        }
        /* The engine's threads are gone: nothing else touches the records now. */
        r = handover_state_finish(&s->handover);
        if (r >= 0)
                r = handoff_memfd_fill(s->state_fd, &s->handover);
        if (r < 0) {
                /* Empty again, not half written: the next process reads no state, not a broken one. */
                (void) ftruncate(s->state_fd, 0);
                return log_error_errno(r, "cannot store the hand-over state: %zu conversations are lost", s->n_handed);
        }
        snprintf(count, sizeof(count), "%zu", s->n_handed);
        snprintf(failed, sizeof(failed), "%zu", s->n_handed_failed);
        uint64_t usec = now_usec() - started;
        LogField fields[] = { { "HELLOD_HANDED_OVER", count }, { "HELLOD_CLOSED", failed } };
        log_struct(LOG_NOTICE, MESSAGE_ID_HANDED_OVER, fields, 2,
                   "handed %zu conversation%s over to the next process (%zu closed) in %" PRIu64 ".%03" PRIu64 " ms",
                   s->n_handed, s->n_handed == 1 ? "" : "s", s->n_handed_failed, usec / 1000u, usec % 1000u);
        return 0;
}

/* stop_budget_msec: the longest a stop with clients open may wait: SHUTDOWN_TIMEOUT seconds
 * for them to finish, the grace of those cut off, the last lingering second, and the grace of
 * the engine's threads (shut_down), and a second more for the exit itself. */
static uint64_t stop_budget_msec(unsigned shutdown_timeout) {
        return (uint64_t) shutdown_timeout * 1000u + KILL_GRACE_MSEC + LINGER_WAIT_MSEC + KILL_GRACE_MSEC + 1000u;
}

static int shut_down(Server *s) {
        unsigned n = active(s);
        char count[16];

        notify_stopping();
        /* Stop accepting: new clients are refused by the kernel (or wait in the socket unit's
         * backlog for the next process). */
        engine_set_listeners(s->engine, &(ListenerSet) { 0 });
        listener_set_done(&s->listeners);
        bool handing = wants_hand_over(s);
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        s->handing_over = handing;
        pthread_mutex_unlock(&s->lock);
        snprintf(count, sizeof(count), "%u", n);
        LogField fields[] = { { "HELLOD_ACTIVE", count } };
        if (handing) {
                log_struct(LOG_NOTICE, MESSAGE_ID_STOPPING, fields, 1, "stopping: %u connection%s open, handing %s over",
                           n, n == 1 ? "" : "s", n == 1 ? "it" : "them");
                int r = hand_over(s);
                if (!s->engine) /* handed over, or given up on */
                        return r;
                pthread_mutex_lock(&s->lock);
                s->handing_over = false; /* not begun: a stop after all */
                engine_slot_freed(s->engine); /* clients kept waiting meanwhile are told so now */
                pthread_mutex_unlock(&s->lock);
        }
        forget_state_place(s);
        if (n == 0) {
                log_struct(LOG_NOTICE, MESSAGE_ID_STOPPING, fields, 1, "stopping: no connection open");
                /* Per connection, conversations that ended may still linger (see below). */
                if (lingering(s))
                        notify_extend_timeout(stop_budget_msec(s->conf->shutdown_timeout) * 1000u);
        } else {
                log_struct(LOG_NOTICE, MESSAGE_ID_STOPPING, fields, 1,
                           "stopping: %u connection%s open, waiting up to %u s for them to finish", n,
                           n == 1 ? "" : "s", s->conf->shutdown_timeout);
                /* shutdown_timeout may exceed the unit's TimeoutStopSec=: the waits below get
                 * their time rather than a SIGKILL that takes the busy clients' ERR lines. */
                notify_extend_timeout(stop_budget_msec(s->conf->shutdown_timeout) * 1000u);
        }
        stop_sessions(s, session_stop);
        engine_end_conversations(s->engine);
        uint64_t wait_end = now_usec() + (uint64_t) s->conf->shutdown_timeout * 1000000u;
        bool drained = wait_drained(s, (uint64_t) s->conf->shutdown_timeout * 1000u);
        if (!drained) { /* its time is up, or a second signal came */
                n = active(s);
                log_warning("closing %u remaining connection%s", n, n == 1 ? "" : "s");
                stop_sessions(s, session_kill);
                if (!wait_drained(s, KILL_GRACE_MSEC))
                        log_error("%u connections did not close", active(s));
        }
        /* Per connection, a conversation that ended lingers in the engine, no session any
         * more: its second is the stop's too (and, the sessions drained in time, what is left
         * of shutdown_timeout, for a client still taking its replies, as a pool's lingering
         * session gets), and signals meanwhile are said to be ignored as before (engine_stop
         * would wait for it without a word). */
        uint64_t now = now_usec(), left_msec = drained && wait_end > now ? (wait_end - now) / 1000u : 0;
        (void) wait_while(s, lingering, left_msec > LINGER_WAIT_MSEC ? left_msec : LINGER_WAIT_MSEC);
        /* A worker stuck outside socket I/O must not keep the daemon from exiting: after the
         * grace period the engine is left to the exiting process, and with it what its
         * threads may still touch (see server_free). */
        int r = engine_stop(s->engine, KILL_GRACE_MSEC);
        forget_engine(s);
        if (r < 0) {
                s->abandoned = true;
                log_error_errno(r, "worker threads did not finish, exiting without them");
        }
        return r;
}

static uint64_t earliest(uint64_t a, uint64_t b) {
        return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

/* report_held_back: the refusals and close lines the log held back, once their second is over:
 * a flood that stops is counted then, not whenever (if ever) the next one comes. */
static void report_held_back(Server *s) {
        log_refusals_held_back(ratelimit_held_back(&s->refusal_log, &s->refusals_due));
        session_log_closed_held_back(&s->closes_due);
}

/* report_held_back_at_exit: the same, their second over or not: the stop's own close lines
 * (refusals too) would otherwise go unreported with the process. */
static void report_held_back_at_exit(Server *s) {
        log_refusals_held_back(ratelimit_held_back_now(&s->refusal_log));
        session_log_closed_held_back_now();
}

/* poll_timeout: until the next timed duty: the watchdog ping, the tick after connections
 * came or went, the report of log lines held back; -1 when there is none, so an idle daemon
 * sleeps. */
static int poll_timeout(Server *s) {
        uint64_t now = now_usec(), wake = 0;

        if (s->watchdog_usec > 0)
                wake = earliest(wake, s->watchdog_next);
        wake = earliest(wake, s->refusals_due);
        wake = earliest(wake, s->closes_due);
        if (status_stale(s))
                wake = earliest(wake, s->status_next > now ? s->status_next : now);
        if (wake == 0)
                return -1;
        return poll_msec_until(wake, now);
}

/* feed_watchdog: WATCHDOG=1 while the engine's threads answer (engine.h, answered): a ping
 * from this thread alone would keep a daemon whose event loop is stuck running for ever, its
 * clients waiting. Asked four times per interval (sd_watchdog_enabled(3) asks for at least
 * two), and pinged at each answer: a loop that stalls just before it answers still has three
 * quarters of WatchdogSec= to come back before systemd restarts hellod. */
static void feed_watchdog(Server *s) {
        uint64_t now = now_usec();

        if (s->watchdog_usec == 0 || now < s->watchdog_next)
                return;
        s->watchdog_next = now + s->watchdog_usec / 4;
        bool answered = engine_answered(s->engine);
        if (answered == !s->watchdog_withheld) {
                if (answered)
                        notify_watchdog();
                return;
        }
        s->watchdog_withheld = !answered;
        if (answered) {
                log_notice("the event loops answer again: watchdog pings resumed");
                notify_watchdog();
        } else
                log_warning("an event loop (or, with a thread per connection, every thread waiting for clients) "
                            "has not answered for %.1f s: no watchdog ping until it does; systemd restarts hellod "
                            "after WatchdogSec=",
                            (double) s->watchdog_usec / 4e6);
}

/* keep_waiting_for_lookup: the LookupWaiter of the main thread. A listen name looked up at a
 * reload keeps systemd's watchdog fed, and gives way to a stop: SIGTERM or SIGINT, left pending
 * for the loop to read. (STATUS= stays "Reloading configuration" meanwhile: that is the news.) */
static bool keep_waiting_for_lookup(void *userdata) {
        sigset_t pending;

        feed_watchdog(userdata);
        return sigpending(&pending) < 0 || (!sigismember(&pending, SIGTERM) && !sigismember(&pending, SIGINT));
}

static void log_started(Server *s) {
        char names[1024];

        listeners_describe(&s->listeners, names, sizeof(names));
        LogField fields[] = { { "HELLOD_LISTEN", names }, { "HELLOD_CONFIG", s->opts.config_path } };
        char model[48];

        if (s->conf->workers > 0)
                snprintf(model, sizeof(model), "a pool of %u event loop%s", s->conf->workers,
                         s->conf->workers == 1 ? "" : "s");
        else
                snprintf(model, sizeof(model), "a thread per connection");
        log_struct(LOG_NOTICE, MESSAGE_ID_STARTED, fields, 2, "hellod %s started: config %s%s, %s, %s %s", VERSION,
                   s->opts.config_path, s->opts.config_defaulted ? " (absent: built-in defaults)" : "", model,
                   s->activated ? "serving the sockets passed by systemd:" : "listening on", names);
}

static void resume(Server *s, InheritedStore *store);

int server_run(Server *s, InheritedStore *store) {
        int r = 0;

        if (store)
                resume(s, store);
        keep_state_place_if_always(s);
        engine_set_listeners(s->engine, &s->listeners);
        log_started(s);
        ready(s);
        s->watchdog_usec = notify_watchdog_usec();
        /* Up and serving: from now on (a reload) a lookup keeps the watchdog fed and gives way to
         * a stop. At the start, a stop waits for the lookup (at most its bound) and then ends
         * the started daemon cleanly. */
        lookup_set_waiter(keep_waiting_for_lookup, s);
        for (;;) {
                feed_watchdog(s);
                tick(s);
                report_held_back(s);

                /* The engine's threads accept and serve; this thread answers signals and
                 * keeps the books. */
                struct pollfd pfds[2] = { { .fd = s->signal_fd, .events = POLLIN },
                                          { .fd = s->wake_fd, .events = POLLIN } };
                if (poll(pfds, 2, poll_timeout(s)) < 0) {
                        if (errno == EINTR)
                                continue;
                        r = log_error_errno(-errno, "poll failed");
                        break;
                }
                if (pfds[1].revents & POLLIN) {
                        eventfd_t ignored;
                        (void) eventfd_read(s->wake_fd, &ignored); /* the figures changed: tick */
                }
                if (pfds[0].revents & POLLIN) {
                        int sig = read_signal(s);
                        if (sig == SIGTERM || sig == SIGINT) {
                                log_notice("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                                break;
                        }
                        if (sig == SIGHUP)
                                reload(s);
                        else
                                say_ignored(sig);
                }
        }
        int k = shut_down(s);
        report_held_back_at_exit(s);
        if (r == 0)
                r = k;
        if (r == 0)
                log_notice("stopped: %" PRIu64 " connection%s served, %" PRIu64 " refused", s->n_accepted,
                           s->n_accepted == 1 ? "" : "s", s->n_refused);
        return r;
}

/* ---- resuming what the previous process handed over ---- */

typedef struct ResumeCounts {
        size_t resumed, refused, gone, fresh;
        uint64_t gap_usec;
        bool have_state;
        bool said_unserved; /* the first conversation the engine could not take is logged */
} ResumeCounts;

/* resume_refusal: why the configuration turns SESSION's client away now, or NULL (*DETAIL
 * says more): it may have changed since the admission, and a restart is how an administrator
 * expects a new deny to reach conversations going on (a reload leaves them, as nginx's does).
 * Behind a balancer the client the header named is checked, and the balancer against
 * proxy_from (as proxied() does); a health check speaks for itself. */
static const char *resume_refusal(Server *s, const Session *session, const char **detail) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);

        /* A balancer's connection gone in the gap is closed on its first read. */
        if (session->balancer[0] != '\0' && getpeername(session->fd, (struct sockaddr *) &peer, &len) == 0 &&
            !balancer_trusted_at(s, (const struct sockaddr *) &peer)) {
                *detail = "its balancer is no longer in proxy_from, its conversation not resumed";
                return "untrusted-proxy";
        }
        pthread_mutex_lock(&s->lock);
        bool admitted = session->proxy_local || conf_admits(s->conf, &session->ip);
        pthread_mutex_unlock(&s->lock);
        if (admitted)
                return NULL;
        *detail = "denied by allow/deny, its conversation not resumed";
        return "denied";
}

/* resume_denied: whether SESSION is refused (resume_refusal) rather than resumed: then it is
 * closed as a denied client is at the accept (no word, the FIN, what it sent read away, so
 * that no reset comes instead), out of the store, counted and logged as a refusal. A
 * conversation that has ended already is left to end. */
static bool resume_denied(Server *s, Session *session) {
        const char *detail = NULL;

        if (session->lingering || session->proto.end != PROTO_END_NONE)
                return false;
        const char *reason = resume_refusal(s, session, &detail);
        if (!reason)
                return false;
        pthread_mutex_lock(&s->lock);
        if (session->id > s->next_id) /* its number is not given to a new client */
                s->next_id = session->id;
        pthread_mutex_unlock(&s->lock);
        session_say_last(session->fd, NULL);
        (void) unstore_session(session);
        count_refusal(s);
        log_refusal_via(s, session->peer, session->balancer[0] ? session->balancer : NULL, reason, detail);
        session_free(session);
        return true;
}

/* adopt_session: registers a resumed SESSION (no limits: it was admitted before) and hands it
 * to the engine. false when the engine cannot take it (no thread can be started for it,
 * TasksMax=), or its descriptor's mode cannot be set: it is closed and out of the store, to
 * be counted as refused; the first such is logged with its cause, the others only counted (a
 * restart may bring thousands). */
static bool adopt_session(Server *s, Session *session, ResumeCounts *c) {
        if (resume_denied(s, session))
                return false;
        /* A descriptor left blocking in a loop would stall every session of that loop: one
         * whose mode cannot be set goes the way of one the engine cannot take. */
        int r = passed_fd_set_mode(session->fd, engine_nonblocking(s->engine));
        pthread_mutex_lock(&s->lock);
        ip_key_mask(&session->ip, s->conf->per_ip_ipv4_prefix, s->conf->per_ip_ipv6_prefix);
        /* A balancer's own connection counts against no source, as in the process before. */
        session->counted = !session->proxy_local && iptable_inc(s->ips, &session->ip) == 0;
        if (session->id == 0)
                session->id = ++s->next_id;
        else if (session->id > s->next_id)
                s->next_id = session->id;
        session->next = s->sessions;
        if (s->sessions)
                s->sessions->prev = session;
        s->sessions = session;
        s->n_active++;
        changed(s);
        pthread_mutex_unlock(&s->lock);
        session->stored = s->conf->handover == HANDOVER_MODE_ALWAYS;
        if (r == 0)
                r = engine_add(s->engine, session);
        if (r < 0) {
                /* Closed without a word, like a refused resume, and out of the store. */
                if (!c->said_unserved)
                        log_warning_errno(r, "connection %" PRIu64 " from %s cannot be resumed, closing it "
                                          "(any more like it are counted as refused in the resume's line)",
                                          session->id, session->peer);
                c->said_unserved = true;
                (void) unstore_session(session);
                unregister(s, session);
                return false;
        }
        return true;
}

/* take_conn: the stored connection ID, its descriptor moved out of STORE (-1 when a record
 * before took it); NULL when there is none. */
static const StoredConn *take_conn(InheritedStore *store, uint64_t id, int *ret_fd) {
        StoredConn *conn = inherited_store_conn(store, id);

        if (conn) {
                *ret_fd = conn->fd;
                conn->fd = -1;
        }
        return conn;
}

/* unstore: the stored connection CONN out of systemd's store. */
static void unstore(const StoredConn *conn) {
        char name[HANDOVER_FDNAME_MAX];

        (void) notify_fdstore_remove(handover_fdname_conn(&conn->name, name, sizeof(name)));
}

/* forget_conn: a stored connection that is not resumed: out of the store, closed. */
static void forget_conn(int fd, const StoredConn *conn) {
        unstore(conn);
        close(fd);
}

/* resume_records: every record of the state in STORE, with its connection. */
static void resume_records(Server *s, InheritedStore *store, ResumeCounts *c) {
        HandoverLimits limits = handoff_limits(s->conf);
        HandoverState state;
        StateBytes bytes = { 0 };
        uint8_t boot_id[16];
        bool have_boot_id;
        char err[256];
        int r;

        r = handoff_read_state(store->state_fd, handover_state_size_max(&limits), &bytes);
        if (r < 0)
                snprintf(err, sizeof(err), "%s", strerror(-r));
        /* A sandbox may hide the boot id (handoff_header()): then it is not checked. */
        have_boot_id = handoff_boot_id(boot_id) == 0;
        if (r == 0)
                r = handover_state_decode(bytes.data, bytes.size, &limits, have_boot_id ? boot_id : NULL, &state, err, sizeof(err));
        close(store->state_fd);
        store->state_fd = -1;
        (void) notify_fdstore_remove(HANDOVER_FDNAME_STATE);
        if (r < 0) {
                log_warning("cannot resume the conversations of the previous process: its state: %s", err);
                handoff_state_release(&bytes);
                return;
        }
        c->have_state = true;
        c->gap_usec = handover_gap_usec(&state.header, handoff_boottime_usec());
        pthread_mutex_lock(&s->lock);
        if (state.header.next_id > s->next_id)
                s->next_id = state.header.next_id;
        pthread_mutex_unlock(&s->lock);

        uint64_t now = now_usec();
        for (size_t i = 0; i < state.header.count; i++) {
                HandoverRecord rec;
                const char *reason = NULL;
                Session *session;

                if (handover_state_record(&state, i, &limits, &rec, &reason) < 0) {
                        log_warning("cannot resume record %zu of the hand-over state: %s", i, reason);
                        c->refused++;
                        continue;
                }
                int fd = -1;
                const StoredConn *conn = take_conn(store, rec.id, &fd);
                if (!conn) {
                        c->gone++; /* the client left during the gap; PID 1 dropped it */
                        continue;
                }
                if (fd < 0) { /* the state is not ours as written: the first record has it */
                        log_warning("cannot resume record %zu of the hand-over state: a second record of connection %" PRIu64,
                                    i, rec.id);
                        c->refused++;
                        continue;
                }
                if (handoff_peer_check(&rec, fd, err, sizeof(err)) < 0) {
                        log_warning("cannot resume connection %" PRIu64 ": %s, closing it", rec.id, err);
                        forget_conn(fd, conn);
                        c->refused++;
                        continue;
                }
                if (handoff_session(&rec, fd, s->conf, now, c->gap_usec, &session, &reason) < 0) {
                        log_warning("cannot resume connection %" PRIu64 ": %s, closing it", rec.id, reason);
                        unstore(conn);
                        c->refused++;
                        continue;
                }
                session->stored_via = conn->name.via_balancer; /* the name it is stored under */
                session->stored_ended = conn->name.ended;
                if (adopt_session(s, session, c))
                        c->resumed++;
                else
                        c->refused++;
        }
        handover_state_done(&state);
        handoff_state_release(&bytes);
}

/* state_unwritten: FD is the place a previous process kept for its records and never filled
 * (it crashed, or ended during its hand-over): empty, or a memfd that can still be sealed,
 * which its writer does last (handoff_memfd_fill(): F_SEAL_SEAL among the seals): a crash
 * while it wrote leaves part of the records. */
static bool state_unwritten(int fd) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return false;
        if (st.st_size == 0)
                return true;
        /* One that cannot be sealed (a disk file: -1; a memfd made without sealing, a tmpfs file:
         * F_SEAL_SEAL alone) is read as it is. */
        int seals = fcntl(fd, F_GET_SEALS);
        return seals >= 0 && !(seals & F_SEAL_SEAL);
}

/* drop_unwritten_state: an unwritten state is no state: a crash. */
static void drop_unwritten_state(InheritedStore *store) {
        if (store->state_fd < 0 || !state_unwritten(store->state_fd))
                return;
        log_debug("the previous process left its state unwritten (it ended without finishing a hand-over)");
        close(store->state_fd);
        store->state_fd = -1;
        (void) notify_fdstore_remove(HANDOVER_FDNAME_STATE);
}

/* resume: the conversations STORE holds. With a state, each record with its connection; a
 * connection without a record is closed. Without a state (a crash with handover = "always"),
 * each connection goes on as a fresh conversation without a greeting: what the crashed
 * process held of it is lost (docs/zero-downtime.md). In "always" mode the connections stay in
 * the store; otherwise they leave it once taken. */
static void resume(Server *s, InheritedStore *store) {
        ResumeCounts c = { 0 };
        bool keep_stored = s->conf->handover == HANDOVER_MODE_ALWAYS;

        drop_unwritten_state(store);
        /* A state that was passed but cannot be used (corrupt, another format or boot) is
         * not a crash: its connections are closed, not taken up as fresh conversations. */
        bool state_passed = store->state_fd >= 0;

        if (!state_passed && store->n_conns == 0)
                return;
        if (state_passed)
                resume_records(s, store, &c);
        for (size_t i = 0; i < store->n_conns; i++) {
                StoredConn *conn = &store->conns[i];
                int fd = conn->fd;
                Session *session;

                conn->fd = -1;
                if (fd < 0) { /* resumed from its record */
                        if (!keep_stored)
                                unstore(conn);
                        continue;
                }
                /* No state (a crash) but a connection kept in the store: it goes on from its next
                 * line. handoff_session_fresh() closes FD when it cannot. */
                bool fresh = !state_passed && keep_stored;
                if (fresh && handoff_session_fresh(fd, s->conf, &conn->name, &session) == 0) {
                        if (adopt_session(s, session, &c))
                                c.fresh++;
                        else
                                c.refused++;
                        continue;
                }
                /* With a state, a connection without a usable record (counted with its record) is
                 * closed; without one, it could not be taken up. */
                if (fresh)
                        unstore(conn);
                else
                        forget_conn(fd, conn);
                if (!c.have_state)
                        c.refused++;
        }

        char resumed[24], refused[24];
        snprintf(resumed, sizeof(resumed), "%zu", c.resumed + c.fresh);
        snprintf(refused, sizeof(refused), "%zu", c.refused);
        LogField fields[] = { { "HELLOD_RESUMED", resumed }, { "HELLOD_REFUSED", refused } };
        if (c.have_state)
                log_struct(LOG_NOTICE, MESSAGE_ID_RESUMED, fields, 2,
                           "resumed %zu conversation%s handed over by the previous process after a gap of %" PRIu64
                           " ms (%zu refused, %zu ended during the gap)",
                           c.resumed, c.resumed == 1 ? "" : "s", c.gap_usec / 1000u, c.refused, c.gone);
        else if (state_passed)
                log_struct(LOG_NOTICE, MESSAGE_ID_RESUMED, fields, 2,
                           "resumed no conversation of the previous process: its state could not be used "
                           "(%zu connection%s closed)",
                           c.refused, c.refused == 1 ? "" : "s");
        else
                log_struct(LOG_NOTICE, MESSAGE_ID_RESUMED, fields, 2,
                           "resumed %zu conversation%s kept in the store across the end of the previous process "
                           "(its state was lost: no greeting, the next line is answered; %zu refused)",
                           c.fresh, c.fresh == 1 ? "" : "s", c.refused);
}

/* take_listeners: the sockets systemd passed (INHERITED, taken over; socket activation: the
 * addresses are systemd's, CONF's are not used), or CONF's own, bound. Logs a failure; returns
 * SERVER_CONF_MISMATCH for a socket name in CONF that nothing passed. */
static int take_listeners(Server *s, const Conf *conf, ListenerSet *inherited) {
        char err[512];
        bool *marks;
        int r;

        if (!inherited || inherited->n == 0) {
                r = listeners_open(conf, &s->listeners, err, sizeof(err));
        } else {
                s->listeners = *inherited;
                *inherited = (ListenerSet) { 0 };
                s->activated = true;
                (void) listeners_report_match(&s->listeners, conf); /* no waiter yet: never -ECANCELED */
                if ((r = listeners_proxy_marks(&s->listeners, conf, &marks, err, sizeof(err))) == 0) {
                        listeners_set_proxy(&s->listeners, marks);
                        free(marks);
                }
        }
        if (r < 0) {
                log_error("%s", err);
                if (r == -ENOENT) /* a socket name, and no socket passed */
                        r = SERVER_CONF_MISMATCH;
        }
        return r;
}

/* drop_start_capabilities: the listeners bound, what a unit granted for a port below 1024 is
 * no longer needed (root's own drop comes after, in main). Before the engine's threads, which
 * inherit the sets. */
static void drop_start_capabilities(void) {
        char err[512];
        int r = privileges_drop_capabilities(err, sizeof(err));

        if (r > 0)
                log_notice("gave up the capabilities it was started with, its listeners bound (a port below 1024 "
                           "now takes a restart)");
        else if (r < 0)
                log_warning("cannot give up the capabilities it was started with: %s", err);
}

static EngineHooks engine_hooks(Server *s) {
        return (EngineHooks) {
                .userdata = s,
                .done = session_done,
                .admit = hook_admit,
                .must_wait = hook_must_wait,
                .exhausted = hook_exhausted,
                .handed_over = session_handed_over,
                .handed_over_lingering = lingering_handed_over,
                .lingering_closed = lingering_closed,
                .ending = session_ending,
                .handed_over_waiting = waiting_handed_over,
                .stopped_waiting = waiting_stopped,
                .proxied = hook_proxied,
        };
}

int server_new(Server **ret, Conf *conf, const ServerOptions *opts, ListenerSet *inherited) {
        Server *s = calloc(1, sizeof(*s));
        sigset_t set;
        int r;

        if (!s)
                return log_error_errno(-ENOMEM, "cannot start");
        s->opts = *opts;
        s->started_as_root = geteuid() == 0; /* main() drops privileges after server_new() */
        s->conf = conf_ref(conf);
        s->started = conf_ref(conf);
        (void) preflight_warn(conf);
        s->signal_fd = -1;
        s->reserve_fd = -1;
        s->wake_fd = -1;
        s->state_fd = -1;
        s->refusal_log = (RateLimit) RATELIMIT_INIT(REFUSAL_LOG_BURST);
        s->exhaustion_log = (RateLimit) RATELIMIT_INIT(1);
        pthread_mutex_init(&s->lock, NULL);
        apply_log_level(s);

        handled_sigset(&set);
        s->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
        if (s->signal_fd < 0) {
                r = log_error_errno(-errno, "cannot create a signalfd");
                goto fail;
        }
        open_reserve(s);
        if (s->reserve_fd < 0) {
                r = log_error_errno(-errno, "cannot open /dev/null");
                goto fail;
        }
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0) {
                r = log_error_errno(-errno, "cannot create an eventfd");
                goto fail;
        }
        r = iptable_new(&s->ips);
        if (r < 0) {
                log_error_errno(r, "cannot start");
                goto fail;
        }
        apply_limits(s, conf);
        if ((r = take_listeners(s, conf, inherited)) < 0)
                goto fail;
        drop_start_capabilities();
        EngineHooks hooks = engine_hooks(s);
        r = engine_new(&s->engine, conf, &hooks);
        if (r < 0) {
                log_error_errno(r, "cannot start the worker threads");
                goto fail;
        }
        s->keeps_partial_lines = s->engine->ops->keeps_partial_lines;
        *ret = s;
        return 0;
fail:
        server_free(s);
        return r;
}

Server *server_free(Server *s) {
        if (!s)
                return NULL;
        lookup_set_waiter(NULL, NULL);
        (void) engine_stop(s->engine, UINT64_MAX);
        listener_set_done(&s->listeners);
        if (s->abandoned)
                /* Threads that did not stop may still lock, admit, unregister (and write the
                 * wake eventfd), record a hand-over and log: what they use stays; the process is
                 * exiting and takes it along. */
                return NULL;
        if (s->reserve_fd >= 0)
                close(s->reserve_fd);
        if (s->signal_fd >= 0)
                close(s->signal_fd);
        if (s->wake_fd >= 0)
                close(s->wake_fd);
        if (s->state_fd >= 0)
                close(s->state_fd);
        conf_unref(s->conf);
        conf_unref(s->started);
        free(s->handover.data);
        iptable_free(s->ips);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->refusal_log.lock);
        pthread_mutex_destroy(&s->exhaustion_log.lock);
        free(s);
        return NULL;
}
