/* report: the server's figures from /proc, and the results as text or as one JSON object. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"

static ssize_t read_proc(pid_t pid, const char *file, char *buf, size_t size) {
        char path[64];
        ssize_t n;
        int fd;

        snprintf(path, sizeof(path), "/proc/%ld/%s", (long) pid, file);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        n = read(fd, buf, size - 1);
        if (n < 0)
                n = -errno;
        else
                buf[n] = '\0';
        close(fd);
        return n;
}

int proc_cpu(pid_t pid, double *ret_seconds) {
        char buf[1024], *p;
        unsigned long long utime, stime;
        long hz = sysconf(_SC_CLK_TCK);
        ssize_t n = read_proc(pid, "stat", buf, sizeof(buf));

        if (n < 0)
                return (int) n;
        /* Fields after the command name, which may itself hold spaces and parentheses:
         * state is field 3, utime 14 and stime 15. */
        p = strrchr(buf, ')');
        if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                         &stime) != 2)
                return -EBADMSG;
        *ret_seconds = (double) (utime + stime) / (double) (hz > 0 ? hz : 100);
        return 0;
}

int proc_status(pid_t pid, uint64_t *ret_rss_kib, unsigned *ret_threads) {
        char buf[4096], *p;
        bool rss = false, threads = false;
        ssize_t n = read_proc(pid, "status", buf, sizeof(buf));

        if (n < 0)
                return (int) n;
        if ((p = strstr(buf, "\nVmRSS:")))
                rss = sscanf(p + 7, "%" SCNu64, ret_rss_kib) == 1;
        if ((p = strstr(buf, "\nThreads:")))
                threads = sscanf(p + 9, "%u", ret_threads) == 1;
        return rss && threads ? 0 : -EBADMSG;
}

/* ---------------------------------------------------------------------------------------- */

/* fmt_ns: a duration with three significant digits and its unit. */
static const char *fmt_ns(char *buf, size_t size, uint64_t ns) {
        double v = (double) ns;
        const char *unit = "ns";

        if (ns >= 1000000000) {
                v /= 1e9;
                unit = "s";
        } else if (ns >= 1000000) {
                v /= 1e6;
                unit = "ms";
        } else if (ns >= 1000) {
                v /= 1e3;
                unit = "µs";
        }
        snprintf(buf, size, "%.*f %s", v >= 100 ? 0 : v >= 10 ? 1 : 2, v, unit);
        return buf;
}

/* rss_per_conn: the server's growth in resident memory per connection held (KiB). */
static double rss_per_conn(const Result *r) {
        if (r->greeted == 0)
                return 0;
        return ((double) r->rss_held_kib - (double) r->rss_idle_kib) / (double) r->greeted;
}

static const char *scenario_name(Scenario s) {
        return s == SCENARIO_RR ? "rr" : s == SCENARIO_CHURN ? "churn" : "hold";
}

static double per_second(uint64_t n, double s) {
        return s > 0 ? (double) n / s : 0;
}

static void text_latency(const char *label, const Hist *h) {
        char a[24], b[24], c[24], d[24], e[24], f[24];

        if (h->count == 0) {
                printf("  %-10s no samples\n", label);
                return;
        }
        printf("  %-10s p50 %s, p90 %s, p99 %s, p99.9 %s, max %s (mean %s)\n", label,
               fmt_ns(a, sizeof(a), hist_value_at(h, 500000)),
               fmt_ns(b, sizeof(b), hist_value_at(h, 900000)),
               fmt_ns(c, sizeof(c), hist_value_at(h, 990000)),
               fmt_ns(d, sizeof(d), hist_value_at(h, 999000)), fmt_ns(e, sizeof(e), h->max),
               fmt_ns(f, sizeof(f), hist_mean(h)));
}

static void text_errors(const Result *r) {
        if (r->errors == 0) {
                printf("  %-10s none\n", "errors");
                return;
        }
        printf("  %-10s %" PRIu64 ":", "errors", r->errors);
        for (unsigned k = 0; k < _ERR_MAX; k++)
                if (r->err[k])
                        printf(" %s %" PRIu64, err_kind_to_string((ErrKind) k), r->err[k]);
        printf("\n");
        for (unsigned k = 0; k < _ERR_MAX; k++)
                if (r->err[k])
                        printf("  %-10s first %s: %s\n", "", err_kind_to_string((ErrKind) k),
                               r->sample[k]);
}

/* us_per_op: CPU_S seconds of CPU time per completed request or session, in µs (0: none). */
static double us_per_op(const Result *r, double cpu_s) {
        return r->completed ? 1e6 * cpu_s / (double) r->completed : 0;
}

void report_text(const Result *r) {
        const Options *o = r->opt;
        const char *what = o->scenario == SCENARIO_CHURN ? "session" : "request";
        double server_pct = r->measured_s > 0 ? 100 * r->server_cpu_s / r->measured_s : 0;
        double client_pct = r->measured_s > 0 ? 100 * r->client_cpu_s / r->measured_s : 0;
        double per_op = us_per_op(r, r->server_cpu_s);
        const char *threads_s = r->server_threads == 1 ? "" : "s";

        printf("hellod-bench %s: %s, %s framing, %u connection%s on %u thread%s",
               scenario_name(o->scenario), o->target, o->chunk ? "chunk" : "line", o->connections,
               o->connections == 1 ? "" : "s", o->threads, o->threads == 1 ? "" : "s");
        if (o->scenario == SCENARIO_HOLD) {
                printf(", %.0f connects/s, held %.3g s\n", o->rate, (double) o->duration_ns / 1e9);
                printf("  %-10s %" PRIu64 " of %u in %.2f s (%.0f /s), greeted %" PRIu64
                       ", answering after the hold %" PRIu64 "\n",
                       "opened", r->opened, o->connections, r->ramp_s,
                       per_second(r->opened, r->ramp_s), r->greeted, r->completed);
                text_latency("greeting", &r->hist);
        } else {
                printf(", %.3g s warm-up + %.3g s\n", (double) o->warmup_ns / 1e9,
                       (double) o->duration_ns / 1e9);
                printf("  %-10s %" PRIu64 " in %.2f s: %.1f %ss/s\n",
                       o->scenario == SCENARIO_CHURN ? "sessions" : "requests", r->completed,
                       r->measured_s, per_second(r->completed, r->measured_s), what);
                text_latency("latency", &r->hist);
        }
        text_errors(r);
        if (o->pid > 0 && !r->server_ok)
                printf("  %-10s pid %ld: could not read /proc/%ld\n", "server", (long) o->pid,
                       (long) o->pid);
        else if (r->server_ok && o->scenario == SCENARIO_HOLD)
                printf("  %-10s pid %ld: RSS idle %.1f MiB, holding %.1f MiB (peak %.1f MiB): "
                       "%.2f KiB per connection; %u thread%s; CPU %.1f %%\n",
                       "server", (long) o->pid, (double) r->rss_idle_kib / 1024,
                       (double) r->rss_held_kib / 1024, (double) r->rss_peak_kib / 1024,
                       rss_per_conn(r), r->server_threads, threads_s, server_pct);
        else if (r->server_ok)
                printf("  %-10s pid %ld: CPU %.1f %% (%.2f µs per %s), RSS %.1f MiB, %u thread%s\n",
                       "server", (long) o->pid, server_pct, per_op, what,
                       (double) r->server_rss_kib / 1024, r->server_threads, threads_s);
        if (o->scenario == SCENARIO_HOLD || !r->completed)
                printf("  %-10s CPU %.1f %%\n", "client", client_pct);
        else
                printf("  %-10s CPU %.1f %% (%.2f µs per %s)\n", "client", client_pct,
                       us_per_op(r, r->client_cpu_s), what);
}

/* ---------------------------------------------------------------------------------------- */

static void json_string(const char *s) {
        putchar('"');
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;

                if (ch == '"' || ch == '\\')
                        printf("\\%c", ch);
                else if (ch < 0x20)
                        printf("\\u%04x", ch);
                else
                        putchar(ch);
        }
        putchar('"');
}

static void json_latency(const Hist *h) {
        printf("{\"samples\":%" PRIu64 ",\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p99_9\":%.3f,"
               "\"max\":%.3f,\"mean\":%.3f}",
               h->count, (double) hist_value_at(h, 500000) / 1e3,
               (double) hist_value_at(h, 900000) / 1e3, (double) hist_value_at(h, 990000) / 1e3,
               (double) hist_value_at(h, 999000) / 1e3, (double) h->max / 1e3,
               (double) hist_mean(h) / 1e3);
}

/* report_json: one object on one line. Leaf keys are unique across the object, so that a
 * shell script can pick one with grep (scripts/bench does). */
void report_json(const Result *r) {
        const Options *o = r->opt;
        bool first = true;

        printf("{\"tool\":\"hellod-bench\",\"version\":\"%s\",\"scenario\":\"%s\",\"target\":", VERSION,
               scenario_name(o->scenario));
        json_string(o->target);
        printf(",\"framing\":\"%s\",\"connections\":%u,\"threads\":%u,\"warmup_s\":%.3f,"
               "\"duration_s\":%.3f,\"timeout_s\":%.3f,",
               o->chunk ? "chunk" : "line", o->connections, o->threads, (double) o->warmup_ns / 1e9,
               (double) o->duration_ns / 1e9, (double) o->timeout_ns / 1e9);
        printf("\"measured_s\":%.6f,\"completed\":%" PRIu64 ",\"rate\":%.1f,\"latency_us\":",
               r->measured_s, r->completed, per_second(r->completed, r->measured_s));
        json_latency(&r->hist);
        printf(",\"errors\":{\"total\":%" PRIu64, r->errors);
        for (unsigned k = 0; k < _ERR_MAX; k++) {
                char key[32];

                snprintf(key, sizeof(key), "%s", err_kind_to_string((ErrKind) k));
                for (char *p = key; *p; p++)
                        if (*p == '-')
                                *p = '_';
                printf(",\"%s\":%" PRIu64, key, r->err[k]);
        }
        printf("},\"error_samples\":{");
        for (unsigned k = 0; k < _ERR_MAX; k++) {
                if (!r->err[k])
                        continue;
                printf("%s\"%s\":", first ? "" : ",", err_kind_to_string((ErrKind) k));
                json_string(r->sample[k]);
                first = false;
        }
        printf("},\"client_cpu_percent\":%.1f,\"client_cpu_us_per_op\":%.3f,\"server\":",
               r->measured_s > 0 ? 100 * r->client_cpu_s / r->measured_s : 0,
               us_per_op(r, r->client_cpu_s));
        if (!r->server_ok) {
                printf("null");
        } else {
                printf("{\"pid\":%ld,\"cpu_percent\":%.1f,\"cpu_us_per_op\":%.3f,\"rss_kib\":%" PRIu64
                       ",\"server_threads\":%u}",
                       (long) o->pid, r->measured_s > 0 ? 100 * r->server_cpu_s / r->measured_s : 0,
                       us_per_op(r, r->server_cpu_s),
                       r->server_rss_kib, r->server_threads);
        }
        if (o->scenario == SCENARIO_HOLD) {
                printf(",\"hold\":{\"target_connections\":%u,\"opened\":%" PRIu64 ",\"greeted\":%" PRIu64
                       ",\"answered\":%" PRIu64 ",\"ramp_s\":%.3f,\"connect_rate\":%.1f,\"held_s\":%.3f",
                       o->connections, r->opened, r->greeted, r->completed, r->ramp_s,
                       per_second(r->opened, r->ramp_s), r->held_s);
                if (r->server_ok)
                        printf(",\"rss_idle_kib\":%" PRIu64 ",\"rss_held_kib\":%" PRIu64
                               ",\"rss_peak_kib\":%" PRIu64 ",\"rss_per_conn_kib\":%.3f",
                               r->rss_idle_kib, r->rss_held_kib, r->rss_peak_kib,
                               rss_per_conn(r));
                printf("}");
        }
        printf("}\n");
}
