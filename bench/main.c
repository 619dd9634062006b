/* hellod-bench: a load generator for hellod's protocol. main: the command line, the
 * descriptor limit, the workers' timeline, the progress line and the server's figures. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"

#define EXIT_ERRORS 1 /* the run completed, with errors */
#define EXIT_USAGE 2
#define PROGRESS_NS NSEC_PER_SEC

static void usage(FILE *f) {
        fprintf(f,
                "Usage: hellod-bench [OPTIONS] rr|churn|hold\n"
                "\n"
                "  rr     C connections in lockstep request/reply for D seconds after a warm-up\n"
                "  churn  the seed client's session (connect, greeting, Michael, Tracy, Sarah,\n"
                "         exit, the server's close) repeated by C concurrent slots for D seconds\n"
                "  hold   open C connections at --rate a second, hold them D seconds, then check\n"
                "         that every one still answers\n"
                "\n"
                "  -H, --host HOST          server address or name (default 127.0.0.1)\n"
                "  -p, --port PORT          server port (default 9999)\n"
                "  -c, --connections N      connections (default: rr 10, churn 8, hold 1000)\n"
                "  -d, --duration SECONDS   measured time, or hold time (default 10)\n"
                "  -w, --warmup SECONDS     not measured, before the measured time (default 2)\n"
                "  -t, --threads N          generator threads (default 1)\n"
                "  -r, --rate N             hold: connects a second (default 5000; 0: no limit)\n"
                "      --timeout SECONDS    longest wait for a connect, a reply, a close (default 5)\n"
                "      --chunk              chunk framing: no terminators, one message per send\n"
                "      --greeting TEXT      the greeting expected (default \"Welcome!\")\n"
                "      --reply TEMPLATE     the reply expected, {name} standing for the name sent\n"
                "                           (default \"Hello, {name}!\")\n"
                "      --pid PID            the server's process: its CPU time and memory\n"
                "      --json               one JSON object on standard output\n"
                "  -q, --quiet              no progress line, no text report\n"
                "  -h, --help, -V, --version\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *ret) {
        char *end;
        unsigned long long v;

        if (!s || !*s || *s == '-' || *s == '+')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || *end || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int parse_seconds(const char *s, double max, int64_t *ret_ns) {
        char *end;
        double v;

        if (!s || !*s)
                return -EINVAL;
        errno = 0;
        v = strtod(s, &end);
        if (errno || *end || !isfinite(v) || v < 0 || v > max)
                return -ERANGE;
        *ret_ns = (int64_t) llround(v * 1e9);
        return 0;
}

/* set_protocol: the framed greeting, and the reply template split at {name}. */
static int set_protocol(Options *o, const char *greeting, const char *reply) {
        const char *term = o->chunk ? "" : "\r\n";
        const char *at = strstr(reply, "{name}");
        size_t tl = strlen(term);

        if (!at || strstr(at + 6, "{name}")) {
                fprintf(stderr, "hellod-bench: --reply must contain {name} exactly once\n");
                return -EINVAL;
        }
        o->greeting_len = strlen(greeting) + tl;
        o->prefix_len = (size_t) (at - reply);
        o->suffix_len = strlen(at + 6) + tl;
        o->greeting = malloc(o->greeting_len + 1);
        o->prefix = malloc(o->prefix_len + 1);
        o->suffix = malloc(o->suffix_len + 1);
        if (!o->greeting || !o->prefix || !o->suffix)
                return -ENOMEM;
        snprintf(o->greeting, o->greeting_len + 1, "%s%s", greeting, term);
        snprintf(o->prefix, o->prefix_len + 1, "%.*s", (int) o->prefix_len, reply);
        snprintf(o->suffix, o->suffix_len + 1, "%s%s", at + 6, term);
        o->newline = o->chunk ? "" : "\n";
        o->newline_len = strlen(o->newline);
        return 0;
}

static int resolve(Options *o, const char *host, unsigned port) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
        struct addrinfo *res;
        char service[8], text[NI_MAXHOST];
        int r;

        snprintf(service, sizeof(service), "%u", port);
        r = getaddrinfo(host, service, &hints, &res);
        if (r != 0) {
                fprintf(stderr, "hellod-bench: cannot resolve '%s': %s\n", host, gai_strerror(r));
                return -EINVAL;
        }
        memcpy(&o->addr, res->ai_addr, res->ai_addrlen);
        o->addr_len = res->ai_addrlen;
        if (getnameinfo(res->ai_addr, res->ai_addrlen, text, sizeof(text), NULL, 0, NI_NUMERICHOST))
                snprintf(text, sizeof(text), "%s", host);
        snprintf(o->target, sizeof(o->target), res->ai_family == AF_INET6 ? "[%s]:%u" : "%s:%u", text,
                 port);
        freeaddrinfo(res);
        return 0;
}

/* parse_args: fills O; returns 0, or an exit status (-1 for a clean --help/--version). */
static int parse_args(Options *o, int argc, char **argv) {
        enum { OPT_TIMEOUT = 0x100, OPT_CHUNK, OPT_GREETING, OPT_REPLY, OPT_PID, OPT_JSON };
        static const struct option longopts[] = {
                { "host", required_argument, NULL, 'H' },
                { "port", required_argument, NULL, 'p' },
                { "connections", required_argument, NULL, 'c' },
                { "duration", required_argument, NULL, 'd' },
                { "warmup", required_argument, NULL, 'w' },
                { "threads", required_argument, NULL, 't' },
                { "rate", required_argument, NULL, 'r' },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "chunk", no_argument, NULL, OPT_CHUNK },
                { "greeting", required_argument, NULL, OPT_GREETING },
                { "reply", required_argument, NULL, OPT_REPLY },
                { "pid", required_argument, NULL, OPT_PID },
                { "json", no_argument, NULL, OPT_JSON },
                { "quiet", no_argument, NULL, 'q' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { NULL, 0, NULL, 0 }
        };
        const char *host = "127.0.0.1", *greeting = "Welcome!", *reply = "Hello, {name}!";
        unsigned long long port = 9999, conns = 0, threads = 1, pid = 0, rate = 5000;
        int64_t duration = 10 * NSEC_PER_SEC, warmup = -1, timeout = 5 * NSEC_PER_SEC;
        int c;

        while ((c = getopt_long(argc, argv, "H:p:c:d:w:t:r:qhV", longopts, NULL)) != -1) {
                const char *what = NULL;

                switch (c) {
                case 'H':
                        host = optarg;
                        break;
                case 'p':
                        if (parse_uint(optarg, 65535, &port) < 0 || port == 0)
                                what = "--port: a port 1-65535";
                        break;
                case 'c':
                        if (parse_uint(optarg, 1000000, &conns) < 0 || conns == 0)
                                what = "--connections: 1-1000000";
                        break;
                case 'd':
                        if (parse_seconds(optarg, 86400, &duration) < 0 || duration == 0)
                                what = "--duration: seconds, more than 0";
                        break;
                case 'w':
                        if (parse_seconds(optarg, 3600, &warmup) < 0)
                                what = "--warmup: seconds";
                        break;
                case 't':
                        if (parse_uint(optarg, 1024, &threads) < 0 || threads == 0)
                                what = "--threads: 1-1024";
                        break;
                case 'r':
                        if (parse_uint(optarg, 100000000, &rate) < 0)
                                what = "--rate: connects a second (0: no limit)";
                        break;
                case OPT_TIMEOUT:
                        if (parse_seconds(optarg, 3600, &timeout) < 0 || timeout < NSEC_PER_MSEC)
                                what = "--timeout: seconds, at least 0.001";
                        break;
                case OPT_CHUNK:
                        o->chunk = true;
                        break;
                case OPT_GREETING:
                        greeting = optarg;
                        break;
                case OPT_REPLY:
                        reply = optarg;
                        break;
                case OPT_PID:
                        if (parse_uint(optarg, INT32_MAX, &pid) < 0 || pid == 0)
                                what = "--pid: a process ID";
                        break;
                case OPT_JSON:
                        o->json = true;
                        break;
                case 'q':
                        o->quiet = true;
                        break;
                case 'h':
                        usage(stdout);
                        return -1;
                case 'V':
                        printf("hellod-bench %s\n", VERSION);
                        return -1;
                default:
                        usage(stderr);
                        return EXIT_USAGE;
                }
                if (what) {
                        fprintf(stderr, "hellod-bench: invalid '%s' for %s\n", optarg, what);
                        return EXIT_USAGE;
                }
        }
        if (optind != argc - 1) {
                fprintf(stderr, "hellod-bench: expected one scenario: rr, churn or hold\n");
                usage(stderr);
                return EXIT_USAGE;
        }
        if (strcmp(argv[optind], "rr") == 0)
                o->scenario = SCENARIO_RR;
        else if (strcmp(argv[optind], "churn") == 0)
                o->scenario = SCENARIO_CHURN;
        else if (strcmp(argv[optind], "hold") == 0)
                o->scenario = SCENARIO_HOLD;
        else {
                fprintf(stderr, "hellod-bench: unknown scenario '%s': rr, churn or hold\n", argv[optind]);
                return EXIT_USAGE;
        }
        o->connections = (unsigned) (conns ? conns
                                           : o->scenario == SCENARIO_RR    ? 10
                                           : o->scenario == SCENARIO_CHURN ? 8
                                                                           : 1000);
        o->threads = (unsigned) (threads < o->connections ? threads : o->connections);
        o->duration_ns = duration;
        o->warmup_ns = o->scenario == SCENARIO_HOLD ? 0 : warmup >= 0 ? warmup : 2 * NSEC_PER_SEC;
        o->timeout_ns = timeout;
        o->rate = (double) rate;
        o->pid = (pid_t) pid;
        if (set_protocol(o, greeting, reply) < 0 || resolve(o, host, (unsigned) port) < 0)
                return EXIT_USAGE;
        return 0;
}

/* local_port_range: hold's connections bind their local ports themselves (see engine.c's
 * bind_local_port()), from the kernel's ephemeral range; without it, connect() picks. */
static void local_port_range(Options *o) {
        unsigned lo, hi;
        FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");

        if (!f)
                return;
        if (fscanf(f, "%u %u", &lo, &hi) == 2 && lo >= 1024 && lo <= hi && hi <= 65535 &&
            hi - lo + 1 >= o->threads) {
                o->port_lo = lo;
                o->port_hi = hi;
        }
        fclose(f);
        if (o->port_lo && o->port_hi - o->port_lo + 1 < o->connections)
                fprintf(stderr,
                        "hellod-bench: warning: %u connections, but ip_local_port_range has only %u ports\n",
                        o->connections, o->port_hi - o->port_lo + 1);
}

/* raise_nofile: soft RLIMIT_NOFILE up to the hard one; fails if even that is too low for
 * NEED descriptors. */
static int raise_nofile(unsigned long need) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        if (rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
                (void) getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
                fprintf(stderr,
                        "hellod-bench: needs about %lu descriptors, the limit is %llu (hard limit %llu); "
                        "raise it (ulimit -n, prlimit) or use fewer connections\n",
                        need, (unsigned long long) rl.rlim_cur, (unsigned long long) rl.rlim_max);
                return -EMFILE;
        }
        return 0;
}

static double client_cpu(void) {
        struct rusage ru;

        if (getrusage(RUSAGE_SELF, &ru) < 0)
                return 0;
        return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void sleep_until(int64_t t) {
        struct timespec ts = { .tv_sec = t / NSEC_PER_SEC, .tv_nsec = t % NSEC_PER_SEC };

        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
}

/* ---------------------------------------------------------------------------------------- */
/* The main thread during the run: the timeline's samples and the progress line. */

typedef struct Main {
        Options *opt;
        Run *run;
        Worker *workers;
        Result *res;
        bool progress;
        bool shown; /* a progress line is on the terminal */
} Main;

static uint64_t sum_of(const Main *m, size_t offset) {
        uint64_t n = 0;

        for (unsigned i = 0; i < m->opt->threads; i++)
                n += atomic_load_explicit((_Atomic uint64_t *) ((char *) &m->workers[i] + offset),
                                          memory_order_relaxed);
        return n;
}

#define SUM(m, field) sum_of((m), offsetof(Worker, field))

static void progress(Main *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(Main *m, const char *fmt, ...) {
        va_list ap;

        if (!m->progress)
                return;
        fputs("\r\033[K", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        m->shown = true;
}

static void progress_clear(Main *m) {
        if (m->shown)
                fputs("\r\033[K", stderr);
        m->shown = false;
}

static void sample_server_cpu(Main *m, double *ret) {
        if (m->opt->pid > 0 && proc_cpu(m->opt->pid, ret) < 0)
                m->res->server_ok = false;
}

static void watch_timed(Main *m) {
        Run *run = m->run;
        Result *res = m->res;
        const char *unit = m->opt->scenario == SCENARIO_CHURN ? "sessions" : "req";
        double cpu0 = 0, cpu1 = 0, client0 = client_cpu();
        bool measuring = false;
        /* Ticks half a second off the warm-up's end, so that the first rate shown is not
         * that of a few milliseconds. */
        int64_t next = run->t_start + PROGRESS_NS / 2, now, end = run->t_end;

        if (run->t_measure == run->t_start)
                sample_server_cpu(m, &cpu0);
        for (;;) {
                int64_t wake = next;

                /* Wake often enough to notice workers that ended early (every connection
                 * of an rr run failed, say). */
                if (now_ns() + 100 * NSEC_PER_MSEC < wake)
                        wake = now_ns() + 100 * NSEC_PER_MSEC;
                if (!measuring && run->t_measure < wake)
                        wake = run->t_measure;
                if (run->t_end < wake)
                        wake = run->t_end;
                sleep_until(wake);
                now = now_ns();
                if (!measuring && now >= run->t_measure) {
                        measuring = true;
                        sample_server_cpu(m, &cpu0);
                        client0 = client_cpu();
                }
                if (now >= run->t_end)
                        break;
                if (atomic_load(&run->finished) == m->opt->threads) {
                        end = now; /* nothing left to measure */
                        break;
                }
                if (now >= next) {
                        next += PROGRESS_NS;
                        if (now < run->t_measure)
                                progress(m, "%s: warm-up, %.1f s left, %" PRIu64 " errors",
                                         m->opt->target, (double) (run->t_measure - now) / 1e9,
                                         SUM(m, errors));
                        else
                                progress(m, "%s: %.0f %s/s, %" PRIu64 " errors, %.1f s left",
                                         m->opt->target,
                                         (double) SUM(m, completed) * 1e9 / (double) (now - run->t_measure),
                                         unit, SUM(m, errors), (double) (run->t_end - now) / 1e9);
                }
        }
        sample_server_cpu(m, &cpu1);
        res->client_cpu_s = client_cpu() - client0;
        res->measured_s = end > run->t_measure ? (double) (end - run->t_measure) / 1e9 : 0;
        res->server_cpu_s = cpu1 - cpu0;
        if (m->opt->pid > 0 &&
            proc_status(m->opt->pid, &res->server_rss_kib, &res->server_threads) < 0)
                res->server_ok = false;
        progress_clear(m);
}

static void watch_hold(Main *m) {
        Run *run = m->run;
        Result *res = m->res;
        const Options *o = m->opt;
        double cpu0 = 0, cpu1 = 0, client0 = client_cpu();
        int64_t t_held, now;
        unsigned threads;

        sample_server_cpu(m, &cpu0);
        /* Ramp: wait for every worker to have opened (and had greeted, or failed) its share; a
         * worker that ended before (its epoll_wait failed) never will. */
        while (atomic_load(&run->ramped) < o->threads && atomic_load(&run->finished) == 0) {
                sleep_until(now_ns() + 100 * NSEC_PER_MSEC);
                progress(m, "%s: opened %" PRIu64 " of %u, greeted %" PRIu64 ", %" PRIu64 " errors",
                         o->target, SUM(m, opened), o->connections, SUM(m, greeted), SUM(m, errors));
        }
        atomic_store(&run->hold_phase, HOLD_HOLD);
        t_held = now_ns();
        for (int64_t next = t_held; (now = now_ns()) < t_held + o->duration_ns;) {
                uint64_t rss;

                if (o->pid > 0 && proc_status(o->pid, &rss, &threads) == 0 && rss > res->rss_peak_kib)
                        res->rss_peak_kib = rss;
                progress(m, "%s: holding %" PRIu64 " connections, %" PRIu64 " errors, %.0f s left",
                         o->target, SUM(m, greeted), SUM(m, errors),
                         (double) (t_held + o->duration_ns - now) / 1e9);
                next += PROGRESS_NS;
                sleep_until(next < t_held + o->duration_ns ? next : t_held + o->duration_ns);
        }
        if (o->pid > 0) {
                if (proc_status(o->pid, &res->rss_held_kib, &res->server_threads) < 0)
                        res->server_ok = false;
                else if (res->rss_held_kib > res->rss_peak_kib)
                        res->rss_peak_kib = res->rss_held_kib;
        }
        sample_server_cpu(m, &cpu1);
        res->client_cpu_s = client_cpu() - client0;
        res->measured_s = (double) (now_ns() - run->t_start) / 1e9;
        res->server_cpu_s = cpu1 - cpu0;
        res->server_rss_kib = res->rss_held_kib;
        res->held_s = (double) (now_ns() - t_held) / 1e9;
        progress(m, "%s: checking %" PRIu64 " connections", o->target, SUM(m, greeted));
        atomic_store(&run->hold_phase, HOLD_CHECK);
}

/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
        Options opt = { 0 };
        Run run = { .opt = &opt };
        Main m = { .opt = &opt, .run = &run };
        Worker *workers = NULL;
        Result *res = NULL;
        unsigned started = 0;
        int r, status = EXIT_FAILURE;

        r = parse_args(&opt, argc, argv);
        if (r != 0) {
                status = r < 0 ? EXIT_SUCCESS : r;
                goto exit;
        }
        if (raise_nofile(opt.connections + 2UL * opt.threads + 32) < 0) {
                status = EXIT_USAGE;
                goto exit;
        }
        (void) signal(SIGPIPE, SIG_IGN);
        if (opt.scenario == SCENARIO_HOLD)
                local_port_range(&opt);

        workers = calloc(opt.threads, sizeof(Worker));
        res = calloc(1, sizeof(Result));
        if (!workers || !res) {
                fprintf(stderr, "hellod-bench: out of memory\n");
                goto exit;
        }
        res->opt = &opt;
        res->server_ok = opt.pid > 0;
        hist_init(&res->hist);
        m.workers = workers;
        m.res = res;
        m.progress = !opt.quiet && isatty(STDERR_FILENO);
        if (opt.pid > 0 && proc_status(opt.pid, &res->rss_idle_kib, &res->server_threads) < 0) {
                fprintf(stderr, "hellod-bench: cannot read /proc/%ld/status: is --pid right?\n",
                        (long) opt.pid);
                status = EXIT_USAGE;
                goto exit;
        }

        pthread_barrier_init(&run.ready, NULL, opt.threads + 1);
        pthread_barrier_init(&run.go, NULL, opt.threads + 1);
        for (unsigned i = 0; i < opt.threads; i++)
                workers[i].epfd = -1; /* worker_done() must not close descriptor 0 */
        for (unsigned i = 0; i < opt.threads; i++) {
                r = worker_init(&workers[i], &run, i);
                if (r < 0) {
                        fprintf(stderr, "hellod-bench: cannot set up a worker: %s\n", strerror(-r));
                        goto exit;
                }
        }
        for (; started < opt.threads; started++) {
                r = pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]);
                if (r != 0) {
                        fprintf(stderr, "hellod-bench: cannot start a thread: %s\n", strerror(r));
                        /* The barriers count on every thread: there is no clean way back. */
                        _exit(EXIT_FAILURE);
                }
        }

        if (opt.scenario == SCENARIO_RR)
                progress(&m, "%s: connecting %u", opt.target, opt.connections);
        pthread_barrier_wait(&run.ready);
        run.t_start = now_ns();
        if (opt.scenario == SCENARIO_HOLD) {
                run.t_measure = run.t_start;
                run.t_end = INT64_MAX;
        } else {
                run.t_measure = run.t_start + opt.warmup_ns;
                run.t_end = run.t_measure + opt.duration_ns;
        }
        pthread_barrier_wait(&run.go);

        if (opt.scenario == SCENARIO_HOLD)
                watch_hold(&m);
        else
                watch_timed(&m);
        for (unsigned i = 0; i < started; i++)
                pthread_join(workers[i].thread, NULL);
        started = 0;
        progress_clear(&m);

        for (unsigned i = 0; i < opt.threads; i++) {
                Worker *w = &workers[i];

                hist_merge(&res->hist, &w->hist);
                res->completed += w->completed;
                res->errors += w->errors;
                res->opened += w->opened;
                res->greeted += w->greeted;
                if (w->t_ramped && (double) (w->t_ramped - run.t_start) / 1e9 > res->ramp_s)
                        res->ramp_s = (double) (w->t_ramped - run.t_start) / 1e9;
                for (unsigned k = 0; k < _ERR_MAX; k++) {
                        if (w->err[k] && res->err[k] == 0)
                                memcpy(res->sample[k], w->sample[k], SAMPLE_MAX);
                        res->err[k] += w->err[k];
                }
        }
        if (opt.json)
                report_json(res);
        if (!opt.quiet && !opt.json)
                report_text(res);
        fflush(stdout);
        if (res->errors) {
                fprintf(stderr, "hellod-bench: %" PRIu64 " error%s during the run\n", res->errors,
                        res->errors == 1 ? "" : "s");
                status = EXIT_ERRORS;
        } else {
                status = EXIT_SUCCESS;
        }

exit:
        if (workers) {
                for (unsigned i = 0; i < opt.threads; i++)
                        worker_done(&workers[i]);
                free(workers);
        }
        free(res);
        free(opt.greeting);
        free(opt.prefix);
        free(opt.suffix);
        return status;
}
