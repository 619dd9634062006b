/* clients: the hostile and measuring clients the hostile tests and the soak share (clients.h). */
#include "clients.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RSS_SLACK_KIB (64L * 1024)
#define RSS_SLACK_SANITIZED_KIB (1024L * 1024)
#define STEADY_SAMPLES 3 /* equal descriptor counts in a row, 100 ms apart */

/* --- the daemon's baseline ------------------------------------------------------------------ */

Baseline baseline_take(Hellod *d) {
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        int last = -1, same = 0;

        while (same < STEADY_SAMPLES && harness_now_ms() < deadline) {
                int n = hellod_fd_count(d);

                same = n == last ? same + 1 : 0;
                last = n;
                harness_sleep_ms(100);
        }
        return (Baseline) {
                .fds = last,
                .other_threads = hellod_thread_count(d) - hellod_worker_count(d),
                .rss_kib = hellod_rss_kib(d),
                .sanitized = hellod_sanitized(d),
                .steady = same >= STEADY_SAMPLES,
        };
}

long baseline_rss_bound(const Baseline *b) {
        return b->rss_kib + (b->sanitized ? RSS_SLACK_SANITIZED_KIB : RSS_SLACK_KIB);
}

bool baseline_wait_settled(Hellod *d, const Baseline *b, int timeout_ms, Usage *ret) {
        int64_t deadline = harness_now_ms() + timeout_ms;

        for (;;) {
                ret->fds = hellod_fd_count(d);
                ret->workers = hellod_worker_count(d);
                ret->others = hellod_thread_count(d) - ret->workers;
                if (ret->fds <= b->fds && ret->workers <= HELLOD_WORKERS_CACHED_MAX &&
                    ret->others <= b->other_threads)
                        return true;
                if (harness_now_ms() >= deadline)
                        return false;
                harness_sleep_ms(50);
        }
}

/* --- statistics and error tallies ----------------------------------------------------------- */

void stats_add(Stats *s, int64_t us) {
        if (s->n == s->cap) {
                size_t cap = s->cap ? 2 * s->cap : 1024;
                int64_t *v = realloc(s->v, cap * sizeof(*v));

                if (!v) {
                        s->lost++;
                        return;
                }
                s->v = v;
                s->cap = cap;
        }
        s->v[s->n++] = us;
}

void stats_merge(Stats *into, const Stats *from) {
        for (size_t i = 0; i < from->n; i++)
                stats_add(into, from->v[i]);
        into->lost += from->lost;
}

static int cmp_i64(const void *a, const void *b) {
        int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

        return (x > y) - (x < y);
}

const char *stats_describe(Stats *s, char *buf, size_t size) {
        char lost[64] = "";

        if (s->lost > 0)
                (void) snprintf(lost, sizeof(lost), " (%zu samples lost: out of memory)", s->lost);
        if (s->n == 0) {
                (void) snprintf(buf, size, "no samples%s", lost);
                return buf;
        }
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
        (void) snprintf(buf, size, "n=%zu min %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms%s", s->n,
                        s->v[0] / 1000.0, s->v[s->n / 2] / 1000.0, s->v[(s->n * 99) / 100] / 1000.0,
                        s->v[s->n - 1] / 1000.0, lost);
        return buf;
}

int64_t stats_max(const Stats *s) {
        int64_t max = 0;

        for (size_t i = 0; i < s->n; i++)
                max = s->v[i] > max ? s->v[i] : max;
        return max;
}

int64_t stats_percentile(Stats *s, unsigned percent) {
        if (s->n == 0)
                return 0;
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
        return s->v[(s->n - 1) * percent / 100];
}

void stats_free(Stats *s) {
        free(s->v);
        *s = (Stats) { 0 };
}

#define ERRORS_KEPT (sizeof(((Errors *) NULL)->first) / sizeof(((Errors *) NULL)->first[0]))

void errors_add(Errors *e, const char *format, ...) {
        va_list ap;

        if (e->n < ERRORS_KEPT) {
                va_start(ap, format);
                (void) vsnprintf(e->first[e->n], sizeof(e->first[0]), format, ap);
                va_end(ap);
        }
        e->n++;
}

void errors_merge(Errors *into, const Errors *from) {
        for (unsigned i = 0; i < from->n && i < ERRORS_KEPT; i++)
                errors_add(into, "%s", from->first[i]);
        if (from->n > ERRORS_KEPT)
                into->n += from->n - (unsigned) ERRORS_KEPT;
}

/* --- hostile bytes -------------------------------------------------------------------------- */

unsigned char hostile_byte(Rng *r) {
        static const unsigned char special[] = { 0x00, 0xff, 0xfb, 0xfc, 0xfd, 0xfe, 0xf4, 0xf0, 0xfa, '\r', 0x80,
                                                 0xbf, 0xc0, 0xc1, 0xed, 0xf5, 0x1b, 0x7f, '%', '{', '}', '\\' };
        unsigned char c;

        switch (rng_below(r, 4)) {
        case 0:
                return special[rng_below(r, sizeof(special))];
        case 1:
                return (unsigned char) (0x20 + rng_below(r, 0x5f));
        default:
                c = (unsigned char) rng_next(r);
                return c == '\n' ? 0 : c;
        }
}

/* hostile_line_length: over the limit (3%), at it or one under (5%), empty (6%), else short. */
static size_t hostile_line_length(Rng *r, size_t max_line, size_t pick) {
        if (pick < 3)
                return max_line + 1 + rng_below(r, 40);
        if (pick < 8)
                return max_line - rng_below(r, 2);
        if (pick < 14)
                return 0;
        return rng_below(r, 60);
}

size_t hostile_lines(Rng *r, size_t max_line, unsigned char *buf, size_t cap) {
        size_t n = 0, lines = 1 + rng_below(r, 40);

        for (size_t i = 0; i < lines; i++) {
                size_t pick = rng_below(r, 100), len = hostile_line_length(r, max_line, pick);

                if (n + len + 16 > cap) /* 16: a telnet negotiation's 9 bytes and the line end */
                        break;
                if (pick >= 14 && pick < 17) {
                        memcpy(buf + n, "exit", 4);
                        n += 4;
                } else {
                        if (pick >= 17 && pick < 25) /* a telnet negotiation first */
                                for (size_t k = 1 + rng_below(r, 3); k > 0; k--) {
                                        buf[n++] = 0xff;
                                        buf[n++] = (unsigned char) (0xfb + rng_below(r, 4));
                                        buf[n++] = (unsigned char) rng_below(r, 40);
                                }
                        for (size_t k = 0; k < len; k++)
                                buf[n++] = hostile_byte(r);
                }
                if (i + 1 == lines && rng_below(r, 4) == 0)
                        break; /* unterminated, answered at EOF */
                if (rng_below(r, 2))
                        buf[n++] = '\r';
                buf[n++] = '\n';
        }
        return n;
}

size_t hostile_uniform(Rng *r, unsigned char *buf, size_t cap) {
        size_t n = 1 + rng_below(r, cap);

        for (size_t k = 0; k < n; k++)
                buf[k] = (unsigned char) rng_next(r);
        return n;
}

bool bytes_end_with(const char *buf, size_t n, const char *suffix) {
        size_t len = strlen(suffix);

        return n >= len && memcmp(buf + n - len, suffix, len) == 0;
}

size_t bytes_first_difference(const char *a, size_t na, const char *b, size_t nb) {
        size_t i = 0;

        while (i < na && i < nb && a[i] == b[i])
                i++;
        return i;
}

/* --- connections ---------------------------------------------------------------------------- */

int client_wait_connected(int fd, int timeout_ms) {
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        socklen_t len = sizeof(int);
        int e = 0, r;

        do
                r = poll(&pfd, 1, timeout_ms);
        while (r < 0 && errno == EINTR);
        if (r == 0)
                return -ETIMEDOUT;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                return -errno;
        return -e;
}

/* exchange_send: one random piece of what is left; a failed send() is the daemon gone (EPIPE,
 * ECONNRESET): nothing more is sent, and the read side tells what it said. */
static void exchange_send(int fd, const char *in, size_t n, size_t *off, Rng *r, size_t max_piece) {
        size_t piece = 1 + rng_below(r, max_piece);
        ssize_t k = send(fd, in + *off, piece < n - *off ? piece : n - *off, MSG_NOSIGNAL | MSG_DONTWAIT);

        if (k > 0)
                *off += (size_t) k;
        else if (k < 0 && errno != EAGAIN && errno != EINTR)
                *off = n;
}

/* exchange_recv: at most MAX bytes (0: as many as fit); 1 while reading on, 0 at the end
 * (ret->end set), or -errno. */
static int exchange_recv_max(int fd, Exchange *ret, size_t *cap, size_t max) {
        ssize_t k;

        if (ret->n == *cap) {
                char *grown = realloc(ret->got, *cap * 2);

                if (!grown)
                        return -ENOMEM;
                ret->got = grown;
                *cap *= 2;
        }
        size_t room = *cap - ret->n;
        k = recv(fd, ret->got + ret->n, max && max < room ? max : room, MSG_DONTWAIT);
        if (k > 0) {
                ret->n += (size_t) k;
                return 1;
        }
        if (k == 0 || errno == ECONNRESET) {
                ret->end = k == 0 ? CLIENT_READ_EOF : CLIENT_READ_RESET;
                return 0;
        }
        return errno == EAGAIN || errno == EINTR ? 1 : -errno;
}

static int exchange_recv(int fd, Exchange *ret, size_t *cap) {
        return exchange_recv_max(fd, ret, cap, 0);
}

int client_exchange_slow(int fd, const void *in, size_t n, const SlowReader *how, Exchange *ret) {
        int64_t now = harness_now_ms(), next_read = now, next_late = now;
        int64_t deadline = now + (how->timeout_ms > 0 ? how->timeout_ms : HARNESS_TIMEOUT_MS);
        size_t off = 0, cap = 4096, lates = 0;

        *ret = (Exchange) { .got = malloc(cap), .end = CLIENT_READ_TIMEOUT };
        if (!ret->got)
                return -ENOMEM;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int) { 1 }, sizeof(int));
        while ((now = harness_now_ms()) <= deadline) {
                if (off < n) {
                        ssize_t k = send(fd, (const char *) in + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (k > 0)
                                off += (size_t) k;
                        else if (k < 0 && errno != EAGAIN && errno != EINTR)
                                off = n, lates = how->lates; /* the daemon is gone: read what it said */
                } else if (lates < how->lates && now >= next_late) {
                        if (send(fd, how->late, strlen(how->late), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
                            errno != EAGAIN && errno != EINTR)
                                lates = how->lates;
                        else
                                lates++;
                        next_late = now + how->late_every_ms;
                }
                if (now >= next_read) {
                        int k = exchange_recv_max(fd, ret, &cap, how->read_max);
                        if (k <= 0)
                                return k;
                        next_read = now + how->read_every_ms;
                }
                harness_sleep_ms(1);
        }
        return 0;
}

int client_exchange(int fd, const void *in, size_t n, Rng *r, size_t max_piece, Exchange *ret) {
        return client_exchange_cued(fd, in, n, r, max_piece, NULL, ret);
}

int client_exchange_cued(int fd, const void *in, size_t n, Rng *r, size_t max_piece, const ExchangeCue *cue,
                         Exchange *ret) {
        static const int one = 1;
        bool cued = cue == NULL;
        int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
        size_t off = 0, cap = 4096;
        bool shut = false;

        *ret = (Exchange) { .got = malloc(cap), .end = CLIENT_READ_TIMEOUT };
        if (!ret->got)
                return -ENOMEM;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        while (harness_now_ms() <= deadline) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN | (off < n ? POLLOUT : 0) };
                int rp;

                /* All sent (possibly nothing at all): half-close before waiting for the answer. */
                if (off == n && !shut) {
                        (void) shutdown(fd, SHUT_WR);
                        shut = true;
                }
                rp = poll(&pfd, 1, 100);
                if (rp < 0 && errno != EINTR)
                        return -errno;
                if (rp <= 0)
                        continue;
                if ((pfd.revents & POLLOUT) && off < n)
                        exchange_send(fd, in, n, &off, r, max_piece);
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        int k = exchange_recv(fd, ret, &cap);

                        if (k <= 0)
                                return k;
                        if (!cued && ret->n >= cue->at) {
                                cue->act(cue->arg);
                                cued = true;
                        }
                }
        }
        return 0;
}

/* --- slowloris ------------------------------------------------------------------------------ */

struct LorisSlot {
        int fd; /* -1: free */
        LorisKind kind;
        bool connected, greeted;
        int64_t started_ms, next_send_ms;
        size_t sent, n_got; /* n_got counts all that came, got keeps the start */
        char got[64];
};

const char *const loris_kind_name[2] = { "slow", "fast" };

static size_t loris_kept(const LorisSlot *s) {
        return s->n_got < sizeof(s->got) ? s->n_got : sizeof(s->got);
}

/* loris_greeting: which of the greetings the attacker got first, -1 if none (yet). */
static int loris_greeting(const Loris *l, const LorisSlot *s) {
        for (int t = 0; l->c.greetings[t]; t++) {
                size_t len = strlen(l->c.greetings[t]);

                if (loris_kept(s) >= len && memcmp(s->got, l->c.greetings[t], len) == 0)
                        return t;
        }
        return -1;
}

/* loris_answered: something beyond the greeting line arrived: the attacker stops dribbling. */
static bool loris_answered(const LorisSlot *s) {
        const char *nl = memchr(s->got, '\n', loris_kept(s));

        return nl && s->n_got > (size_t) (nl - s->got) + 1;
}

static void loris_open(Loris *l, int index, int64_t first_send_ms) {
        LorisSlot *s = &l->slots[index];
        int fd = client_start_connect("127.0.0.1", l->c.port);

        *s = (LorisSlot) { .fd = -1 };
        if (fd < 0) {
                errors_add(&l->err, "slowloris: connect(): %s", strerror(-fd));
                return;
        }
        s->fd = fd;
        s->kind = index % l->c.mix.fast_every == l->c.mix.fast_every - 1 ? LORIS_FAST : LORIS_SLOW;
        s->started_ms = harness_now_ms();
        s->next_send_ms = first_send_ms;
        l->sessions++;
}

static void loris_close(LorisSlot *s) {
        (void) close(s->fd);
        s->fd = -1;
}

/* loris_finish: the daemon closed the attacker (HOW: NULL for EOF, else the error). Right is a
 * greeting, the ERR line of its kind, then EOF. */
static void loris_finish(Loris *l, LorisSlot *s, const char *how) {
        const char *err = s->kind == LORIS_FAST ? HELLOD_ERR_TOO_LONG : HELLOD_ERR_IDLE;
        int t = loris_greeting(l, s), k = (int) s->kind;
        int64_t ms = harness_now_ms() - s->started_ms;
        char want[sizeof(s->got) + 1], e1[256], e2[256];
        size_t wlen = (size_t) snprintf(want, sizeof(want), "%s%s", l->c.greetings[t < 0 ? 0 : t], err);

        if (!how && wlen < sizeof(want) && s->n_got == wlen && memcmp(s->got, want, wlen) == 0) {
                if (l->closed[k] == 0 || ms < l->close_ms_min[k])
                        l->close_ms_min[k] = ms;
                if (ms > l->close_ms_max[k])
                        l->close_ms_max[k] = ms;
                if (s->sent > l->sent_max[k])
                        l->sent_max[k] = s->sent;
                l->closed[k]++;
        } else
                errors_add(&l->err,
                           "slowloris: a %s attacker (%zu bytes sent in %" PRId64 " ms) got \"%s\" then %s; "
                           "expected \"%s\" then EOF",
                           loris_kind_name[k], s->sent, ms, harness_escape(s->got, loris_kept(s), e1, sizeof(e1)),
                           how ? how : "EOF", harness_escape(want, strlen(want), e2, sizeof(e2)));
        loris_close(s);
}

static void loris_read(Loris *l, LorisSlot *s) {
        for (;;) {
                char buf[128];
                ssize_t k = recv(s->fd, buf, sizeof(buf), MSG_DONTWAIT);

                if (k > 0) {
                        size_t have = loris_kept(s), room = sizeof(s->got) - have;

                        memcpy(s->got + have, buf, (size_t) k < room ? (size_t) k : room);
                        s->n_got += (size_t) k;
                        if (!s->greeted && loris_greeting(l, s) >= 0) {
                                s->greeted = true;
                                atomic_fetch_add(&l->greeted, 1);
                        }
                        continue;
                }
                if (k == 0) {
                        loris_finish(l, s, NULL);
                        return;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        loris_finish(l, s, strerror(errno));
                return;
        }
}

/* loris_event: the connect finished (or failed), or the daemon said something. */
static void loris_event(Loris *l, LorisSlot *s) {
        socklen_t len = sizeof(int);
        int e = 0;

        if (s->connected) {
                loris_read(l, s);
                return;
        }
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                e = errno;
        if (e != 0) {
                errors_add(&l->err, "slowloris: connect(): %s", strerror(e));
                loris_close(s);
                return;
        }
        s->connected = true;
}

/* loris_dribble: each attacker due sends its bytes, until anything beyond the greeting came. */
static void loris_dribble(Loris *l, int64_t now) {
        static const char dribble[LORIS_FAST_BYTES_MAX] =
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

        for (int i = 0; i < l->c.mix.slots; i++) {
                LorisSlot *s = &l->slots[i];
                ssize_t k;

                if (s->fd < 0 || !s->connected || loris_answered(s) || now < s->next_send_ms)
                        continue;
                k = send(s->fd, dribble, s->kind == LORIS_FAST ? l->c.mix.fast_bytes : 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k > 0)
                        s->sent += (size_t) k;
                /* A failed send is the daemon closing: the read side will tell. */
                s->next_send_ms += l->c.mix.tick_ms;
        }
}

static bool loris_attack_on(const Loris *l, int64_t start, int64_t now) {
        const LorisEnd *e = &l->c.end;

        return !(e->stop && atomic_load(e->stop)) && (e->attack_ms <= 0 || now < start + e->attack_ms) &&
               (e->max_sessions <= 0 || l->sessions < e->max_sessions);
}

/* loris_poll_set: the poll set (replacing closed attackers while attacking); how many are open,
 * and in *TIMEOUT how long until the next dribble is due (at most 100 ms). */
static int loris_poll_set(Loris *l, bool attacking, int64_t now, int *timeout) {
        int open = 0;

        *timeout = 100;
        for (int i = 0; i < l->c.mix.slots; i++) {
                LorisSlot *s = &l->slots[i];

                if (s->fd < 0 && attacking)
                        loris_open(l, i, now);
                l->pfds[i] = (struct pollfd) { .fd = s->fd, .events = s->connected ? POLLIN : POLLOUT };
                if (s->fd < 0)
                        continue;
                open++;
                if (s->connected && !loris_answered(s) && s->next_send_ms - now < *timeout)
                        *timeout = s->next_send_ms > now ? (int) (s->next_send_ms - now) : 0;
        }
        return open;
}

/* loris_abandon: closes every attacker still open, each an error (WHY). */
static void loris_abandon(Loris *l, int64_t now, const char *why) {
        for (int i = 0; i < l->c.mix.slots; i++) {
                LorisSlot *s = &l->slots[i];

                if (s->fd < 0)
                        continue;
                errors_add(&l->err, "slowloris: a %s attacker (%zu bytes sent, %" PRId64 " ms after it connected): %s",
                           loris_kind_name[s->kind], s->sent, now - s->started_ms, why);
                loris_close(s);
        }
}

static void *loris_main(void *arg) {
        Loris *l = arg;
        int64_t start = harness_now_ms(), ended = -1;
        char why[128];

        for (int i = 0; i < l->c.mix.slots; i++)
                loris_open(l, i, start + (int64_t) i * l->c.mix.tick_ms / l->c.mix.slots);
        for (;;) {
                int64_t now = harness_now_ms();
                int timeout, open, r;

                if (ended < 0 && !loris_attack_on(l, start, now)) {
                        ended = now;
                        atomic_store(&l->attacking, false);
                }
                open = loris_poll_set(l, ended < 0, now, &timeout);
                if (open == 0 && ended >= 0)
                        break;
                if (ended >= 0 && now - ended > l->c.end.close_grace_ms) {
                        (void) snprintf(why, sizeof(why), "still open %d ms after the attack ended",
                                        l->c.end.close_grace_ms);
                        loris_abandon(l, now, why);
                        break;
                }
                r = poll(l->pfds, (nfds_t) l->c.mix.slots, timeout);
                if (r < 0 && errno != EINTR) {
                        (void) snprintf(why, sizeof(why), "poll(): %s", strerror(errno));
                        loris_abandon(l, now, why);
                        break;
                }
                for (int i = 0; r > 0 && i < l->c.mix.slots; i++)
                        if (l->pfds[i].revents && l->slots[i].fd >= 0)
                                loris_event(l, &l->slots[i]);
                loris_dribble(l, harness_now_ms());
        }
        atomic_store(&l->attacking, false);
        return NULL;
}

Loris *loris_start(const LorisConfig *c) {
        Loris *l;
        int r;

        if (c->mix.slots <= 0 || c->mix.fast_every <= 0 || c->mix.fast_bytes > LORIS_FAST_BYTES_MAX ||
            c->mix.tick_ms <= 0 || !c->greetings || !c->greetings[0]) {
                errno = EINVAL;
                return NULL;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return NULL;
        l->c = *c;
        l->slots = calloc((size_t) c->mix.slots, sizeof(*l->slots));
        l->pfds = calloc((size_t) c->mix.slots, sizeof(*l->pfds));
        if (!l->slots || !l->pfds) {
                loris_free(l);
                errno = ENOMEM;
                return NULL;
        }
        for (int i = 0; i < c->mix.slots; i++)
                l->slots[i].fd = -1;
        atomic_init(&l->greeted, 0);
        atomic_init(&l->attacking, true);
        r = pthread_create(&l->thread, NULL, loris_main, l);
        if (r != 0) {
                loris_free(l);
                errno = r;
                return NULL;
        }
        return l;
}

void loris_join(Loris *l) {
        (void) pthread_join(l->thread, NULL);
}

Loris *loris_free(Loris *l) {
        if (l) {
                free(l->slots);
                free(l->pfds);
                free(l);
        }
        return NULL;
}
