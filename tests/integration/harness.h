/* harness: drive the real hellod binary over loopback TCP for the integration tests. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

/*
 * Every blocking step of the harness (connect, recv, waiting for the daemon) gives up after
 * HARNESS_TIMEOUT_MS. The bounds are deliberately generous: they only turn a hang into a loud
 * failure, they never measure performance.
 */
#define HARNESS_TIMEOUT_MS 10000
/* SIGTERM to exit: the tests keep shutdown_timeout small, this adds plenty of slack. */
#define HARNESS_STOP_TIMEOUT_MS 15000

/* Wire strings of the `line` framing with the default greeting. */
#define HELLOD_GREETING "Welcome!\r\n"
#define HELLOD_ERR_BUSY "ERR server busy\r\n"
#define HELLOD_ERR_IDLE "ERR idle timeout\r\n"
#define HELLOD_ERR_TOO_LONG "ERR line too long\r\n"
#define HELLOD_ERR_SHUTDOWN "ERR shutting down\r\n"

/* The PROXY protocol v2 signature (haproxy's doc/proxy-protocol.txt, 2.2): a balancer's header
 * begins with these 12 bytes, a NUL among them. */
#define PROXY_V2_SIG "\r\n\r\n\0\r\nQUIT\n"
#define PROXY_V2_SIG_LEN 12

/* Exit statuses of the daemon's CLI contract. */
#define HELLOD_EXIT_OK 0
#define HELLOD_EXIT_FAILURE 1
#define HELLOD_EXIT_USAGE 2
#define HELLOD_EXIT_CONFIG 78

/*
 * Failure reporting. The harness never returns an error for something a test expects to
 * work: it calls harness_fail(), which hands the message to the installed handler. The
 * Criterion tests install one that turns it into a test failure; a forked helper process
 * installs one that reports through a pipe and _exit()s. The handler must not return.
 */
typedef void (*HarnessFailFn)(const char *message);
void harness_set_fail_handler(HarnessFailFn fn);
_Noreturn void harness_fail(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* harness_step: names what the test is doing; failures are prefixed with it. */
void harness_step(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* harness_cleanup: kills every daemon still running and removes the temp dirs (a .fini hook).
 * Never fails. */
void harness_cleanup(void);

/* harness_model_is: whether the suite's pass for a worker model or backend
 * (HELLOD_TEST_CONF_EXTRA, e.g. 'workers = "per-connection";') names WORD. */
bool harness_model_is(const char *word);

/* Small utilities. */
int64_t harness_now_ms(void);
int64_t harness_now_us(void);
void harness_sleep_ms(int ms);
/* harness_escape: BUF rendered as a C string literal body (\r, \n, \xff...), into OUT. */
const char *harness_escape(const void *buf, size_t n, char *out, size_t size);
/* harness_read_file: the whole file, NUL-terminated, malloc'd; *RET_SIZE gets its length. */
char *harness_read_file(const char *path, size_t *ret_size);
/* harness_write_file: writes PATH atomically (temp file + rename), so a reader never sees
 * half a file. */
void harness_write_file(const char *path, const char *data, size_t n);
/* harness_describe_status: "exited with status N" / "killed by signal S" for a wait status. */
const char *harness_describe_status(int status, char *buf, size_t size);
/* harness_pick_port: a TCP port that is free on 127.0.0.1 and ::1, outside the ephemeral
 * range (see harness.c for why). */
uint16_t harness_pick_port(void);
/* harness_env_path: $NAME, which must be set and name an existing file. */
const char *harness_env_path(const char *name);
/* harness_cpu_ticks: utime+stime of PID in clock ticks (all its threads). */
uint64_t harness_cpu_ticks(pid_t pid);
/* harness_cpu_quietest: the CPU seconds PID used in the quietest of up to WINDOWS windows of
 * WINDOW_MS in a row, stopping at the first under QUIET: a state that spins fails every window,
 * while work left from before the state (a slow machine's) passes with the next. */
double harness_cpu_quietest(pid_t pid, int window_ms, int windows, double quiet);
/* harness_loopback_up: sets IFF_UP on `lo` of the current network namespace. */
void harness_loopback_up(void);
/* harness_shell: runs COMMAND with /bin/sh (ip(8) setting up a test's own network, say); fails
 * the test unless it exits 0. */
void harness_shell(const char *command);
/* harness_raise_nofile: raises the calling process's soft RLIMIT_NOFILE to its hard limit
 * (for tests that hold hundreds of sockets); returns the new soft limit. */
rlim_t harness_raise_nofile(void);

/*
 * Looks at a running process through /proc. These never fail and call nothing that could, so
 * sampler threads may use them: -1 (or false) means the process, or the field, is gone.
 */
/* harness_proc_status_field: the number after "NAME:" in /proc/PID/status (VmRSS in KiB,
 * Threads, ...). */
/* harness_read_small: up to SIZE-1 bytes of PATH, NUL-terminated; -1 if it cannot be read (a
 * thread's file under /proc once the thread has ended). */
ssize_t harness_read_small(const char *path, char *buf, size_t size);
long harness_proc_status_field(pid_t pid, const char *name);
/* harness_proc_fd_count: the entries of /proc/PID/fd. */
int harness_proc_fd_count(pid_t pid);
/* harness_proc_thread_count: threads of PID whose name (/proc/PID/task/TID/comm) is NAME, or all
 * of them when NAME is NULL. */
int harness_proc_thread_count(pid_t pid, const char *name);
/* harness_proc_thread_count_but: threads of PID whose name does not begin with PREFIX; those
 * that do in *RET_EXCLUDED (one look at /proc). -1 if PID's threads cannot be listed. */
int harness_proc_thread_count_but(pid_t pid, const char *prefix, int *ret_excluded);
/* harness_pids_cgroup: a pids cgroup of this test process's own (the cgroup v1 pids controller
 * at HARNESS_PIDS_CGROUP_ROOT), its path in BUF; those a failed run left are removed first.
 * harness_cgroup_write: VALUE into its file NAME; harness_cgroup_read: the number in NAME
 * ("max N" of pids.events: N). */
#define HARNESS_PIDS_CGROUP_ROOT "/sys/fs/cgroup/pids"
void harness_pids_cgroup(char *buf, size_t size);
void harness_cgroup_write(const char *dir, const char *name, const char *value);
long harness_cgroup_read(const char *dir, const char *name);
/* harness_proc_maps_contain: whether a mapping of PID names a file containing NEEDLE. */
bool harness_proc_maps_contain(pid_t pid, const char *needle);

/* A child process with captured output, killed with SIGKILL if the test process dies. */
typedef struct HarnessSpawn {
        const char *const *argv; /* argv[0] is the absolute path of the program */
        const char *stdout_path;
        const char *stderr_path;
        rlim_t nofile; /* soft=hard RLIMIT_NOFILE for the child; 0: inherit */
        const char *const *env; /* NULL-terminated "NAME=value" added to the environment, or NULL */
} HarnessSpawn;

/* harness_spawn: fork+exec; returns once exec succeeded (fails loudly if it did not). */
pid_t harness_spawn(const HarnessSpawn *s);
/* The exec check of a fork+exec of one's own, over a close-on-exec pipe made before the fork:
 * harness_exec_failed, in the child where it cannot go on: errno into the pipe's WRITE_FD, and
 * out (async-signal-safe). harness_expect_exec, in the parent once it closed the write end:
 * until the pipe's end of file (exec succeeded); the child's errno there reaps PID and fails
 * the test for PROGRAM. Closes READ_FD. */
_Noreturn void harness_exec_failed(int write_fd);
void harness_expect_exec(int read_fd, pid_t pid, const char *program);
/* harness_wait_pid: reaps PID within TIMEOUT_MS; false (and PID untouched) on timeout. */
bool harness_wait_pid(pid_t pid, int timeout_ms, int *ret_status);
/* harness_run: spawn, wait TIMEOUT_MS (SIGKILL and fail after), return the wait status. */
int harness_run(const HarnessSpawn *s, int timeout_ms);

/* One hellod instance: a temp dir holding its config and captured output, and a port. */
typedef struct Hellod {
        pid_t owner; /* the process that created it; only that one may kill or free it */
        pid_t pid;   /* 0: never started */
        bool reaped;
        int status; /* wait status, valid once reaped */
        uint16_t port;
        char dir[256];
        char conf_path[320];
        char stdout_path[320];
        char stderr_path[320];
} Hellod;

typedef struct HellodOpts {
        rlim_t nofile;                 /* 0: inherit the test's limit */
        const char *const *extra_args; /* NULL-terminated, appended after --config PATH */
        const char *const *wrapper;    /* NULL-terminated argv run in front of hellod (absolute argv[0]),
                                        * e.g. systemd-socket-activate -l ADDR; or NULL */
        const char *const *env;        /* NULL-terminated "NAME=value" for the daemon, or NULL */
} HellodOpts;

/* hellod_new: temp dir and a free port (hellod_new_with_port: that port). */
Hellod *hellod_new(void);
Hellod *hellod_new_with_port(uint16_t port);
/* hellod_write_config: the whole config file. */
void hellod_write_config(Hellod *d, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* hellod_write_config_std: `listen = ["127.0.0.1", "::1"];` on line 1, `port = N;` on line 2,
 * then EXTRA (which may be NULL) from line 3 on. */
void hellod_write_config_std(Hellod *d, const char *extra_format, ...)
        __attribute__((format(printf, 2, 3)));
/* hellod_spawn: runs `hellod --config PATH [extra args]` without waiting for readiness. */
void hellod_spawn(Hellod *d, const HellodOpts *opts);
/* hellod_wait_ready: until a client on 127.0.0.1:port gets a first byte (or EOF) back. */
void hellod_wait_ready(Hellod *d);
/* hellod_start: new + std config (EXTRA) + spawn + wait_ready. */
Hellod *hellod_start(const char *extra_format, ...) __attribute__((format(printf, 1, 2)));
Hellod *hellod_start_opts(const HellodOpts *opts, const char *extra_format, ...)
        __attribute__((format(printf, 2, 3)));
/* hellod_run: a one-shot `hellod ARGS...` (no --config added), output captured in D's files;
 * returns the wait status. D must not have a daemon running. */
int hellod_run(Hellod *d, const char *const *args);

void hellod_signal(Hellod *d, int sig);
/* hellod_signal_threads: SIG to each thread of hellod (tgkill), as a signal sent to the
 * process reaches whichever thread does not block it; returns how many were sent it. */
int hellod_signal_threads(Hellod *d, int sig);
/* hellod_freeze: SIGSTOP, returning once every thread has stopped, so that what clients send
 * until hellod_thaw() (SIGCONT) waits in the kernel and is found all at once. */
void hellod_freeze(Hellod *d);
void hellod_thaw(Hellod *d);
/* hellod_alive: true while the process has not exited (reaps it otherwise). */
bool hellod_alive(Hellod *d);
/* hellod_wait_exit: the wait status; fails (after SIGKILL) if it is still running after TIMEOUT_MS. */
int hellod_wait_exit(Hellod *d, int timeout_ms);
/* hellod_stop: SIGTERM, then hellod_wait_exit(HARNESS_STOP_TIMEOUT_MS). */
int hellod_stop(Hellod *d);
/* hellod_stop_clean: hellod_stop() and fail unless it exited with status 0. */
void hellod_stop_clean(Hellod *d);
/* hellod_stdout/_stderr: what the daemon wrote so far, malloc'd, NUL-terminated. */
char *hellod_stdout(Hellod *d);
char *hellod_stderr(Hellod *d);
/* hellod_count_in_stderr: occurrences of NEEDLE in what the daemon logged so far. */
int hellod_count_in_stderr(Hellod *d, const char *needle);
/* hellod_sum_in_stderr: the sum of the numbers written right before each MARKER ("12 more ..."). */
int hellod_sum_in_stderr(Hellod *d, const char *marker);
/* hellod_wait_stderr: until stderr contains NEEDLE (bounded). hellod_wait_stderr_count: until
 * it contains NEEDLE at least N times (the Nth reload, say; bounded alike). */
void hellod_wait_stderr(Hellod *d, const char *needle);
void hellod_wait_stderr_count(Hellod *d, const char *needle, int n);
/* The running daemon's resources (harness_proc_*); these fail if it is not running. */
int hellod_fd_count(Hellod *d);
/* hellod_thread_count: all its threads but the kernel's io_uring workers (iou-wrk-*, iou-sqp-*:
 * io-wq keeps its last one for the ring's life, and that is no thread of hellod's), of which
 * more than HELLOD_IO_URING_WORKERS_MAX fail the test; hellod_worker_count: its worker threads
 * (busy or parked). */
#define HELLOD_IO_URING_WORKERS_MAX 16
int hellod_thread_count(Hellod *d);
int hellod_worker_count(Hellod *d);
long hellod_rss_kib(Hellod *d);
/* hellod_sanitized: the daemon runs with ASan, TSan or UBSan's runtime mapped (slower, and with
 * a much larger memory footprint). */
bool hellod_sanitized(Hellod *d);
/* hellod_fail: harness_fail() with the tail of the daemon's stderr appended. */
_Noreturn void hellod_fail(Hellod *d, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* hellod_free: SIGKILL if still running, reap, remove the temp dir; NULL-safe, returns NULL. */
Hellod *hellod_free(Hellod *d);

/* Clients. Sockets are non-blocking; every operation waits with poll() and a deadline. */
typedef enum ClientReadEnd {
        CLIENT_READ_DONE,    /* delimiter seen or buffer full */
        CLIENT_READ_EOF,     /* recv() returned 0 */
        CLIENT_READ_RESET,   /* ECONNRESET */
        CLIENT_READ_TIMEOUT, /* nothing more within the timeout */
} ClientReadEnd;

/* client_try_connect: to IP:PORT, from SRC_IP (port 0) unless NULL; fd or -errno. */
int client_try_connect(const char *ip, uint16_t port, const char *src_ip);
/* client_connect_to: the same, failing loudly. */
int client_connect_to(const char *ip, uint16_t port, const char *src_ip);
int client_connect(uint16_t port);  /* 127.0.0.1 */
int client_connect6(uint16_t port); /* ::1 */
/* client_start_connect: a non-blocking socket whose connect() to IP:PORT has started (it may
 * still be in progress: wait for POLLOUT, then read SO_ERROR); -errno on failure. Never calls
 * harness_fail() for a network error, so helper threads may use it. */
int client_start_connect(const char *ip, uint16_t port);
/* client_start_connect_window: the same with a receive buffer of RCVBUF bytes set before the
 * connect (so that the window the client advertises is that small), unless 0. */
int client_start_connect_window(const char *ip, uint16_t port, int rcvbuf);
/*
 * client_connect_greeted: connects and reads the first CRLF-terminated line. WANT: returns
 * the fd. RETRY_ON (e.g. the busy error while a slot frees asynchronously): closes and retries
 * for up to HARNESS_TIMEOUT_MS. Anything else fails.
 */
int client_connect_greeted(const char *ip, uint16_t port, const char *src_ip, const char *want,
                           const char *retry_on);

void client_send(int fd, const void *buf, size_t n);
void client_send_str(int fd, const char *s);
/* client_try_send: 0 or -errno (for peers that may already have closed). */
int client_try_send(int fd, const void *buf, size_t n);
void client_shutdown_write(int fd);

/* client_read: up to SIZE bytes, stopping after DELIM (if not NULL), at EOF, reset or timeout. */
size_t client_read(int fd, void *buf, size_t size, const char *delim, int timeout_ms,
                   ClientReadEnd *ret_end);
/* client_read_line: one CRLF-terminated line (CRLF kept), NUL-terminated; fails otherwise. */
size_t client_read_line(int fd, char *buf, size_t size);
/* client_expect: exactly these bytes next; fails with both renderings on any difference. */
void client_expect(int fd, const void *bytes, size_t n);
void client_expect_str(int fd, const char *s);
/* client_expect_eof: EOF with no data before it; ECONNRESET is accepted when ALLOW_RESET. */
void client_expect_eof(int fd, bool allow_reset);
/* client_expect_eof_after: either EOF right away, or exactly OPTIONAL and then EOF. */
void client_expect_eof_after(int fd, const char *optional);
/* client_wait_readable: true if data, EOF or an error is pending within MS milliseconds
 * (nothing is consumed). */
bool client_wait_readable(int fd, int ms);
/* client_expect_silence: nothing (no data, no EOF) arrives for MS milliseconds. */
void client_expect_silence(int fd, int ms);
/* hellod_next_greeted: waits for the first of the waiting clients FDS[0..N) (entries < 0 are
 * skipped) to be greeted, reads its greeting and returns its index; fails with D's stderr if
 * none is within HARNESS_TIMEOUT_MS. For overload = "queue", where the order is the question. */
int hellod_next_greeted(Hellod *d, const int *fds, int n);
/* client_hello: sends "NAME\n" and expects "Hello, NAME!\r\n". */
void client_hello(int fd, const char *name);
void client_close(int fd);
/* client_reset: close with SO_LINGER {1, 0}, so the peer gets an RST instead of a FIN. */
void client_reset(int fd);

/*
 * hellod's lingering close (src/session.c, session_send_fin). client_exit_replies_unread:
 * connects from 127.0.0.1 with a receive window smaller than the replies it then asks for,
 * pipelined with `exit`, and waits until hellod has ended the conversation (its socket in
 * FIN_WAIT1, read from /proc/net/tcp) with replies still unacknowledged: the case hellod
 * lingers for. Then reads the greeting, every reply and the EOF. Returns the fd, its end still
 * open. client_exit_unread and client_expect_exit_replies are its two halves, for a test that
 * acts while hellod lingers and the replies are unread. client_write_late: writes a line after
 * the EOF and tells what met it: the lingering server reading and acknowledging it (the client
 * stays in CLOSE_WAIT with nothing unacknowledged), or a closed socket's reset.
 * client_connect_small_window and client_exit_unread_on are client_exit_unread's two halves,
 * for a test that acts between the connection and its exit (the greeting is left unread).
 */
int client_exit_replies_unread(uint16_t port);
int client_exit_unread(uint16_t port);
int client_connect_small_window(uint16_t port);
void client_exit_unread_on(uint16_t port, int fd);
void client_expect_exit_replies(int fd);
typedef enum ClientLate { CLIENT_LATE_DISCARDED, CLIENT_LATE_RESET } ClientLate;
ClientLate client_write_late(int fd);
/* The server's end of an IPv4 connection on 127.0.0.1, as /proc/net/tcp has it. */
typedef struct TcpSocket {
        int state;              /* "st", e.g. TCP_FIN_WAIT1; -1: no such socket */
        unsigned long inode;    /* 0 once no process holds it (the kernel finishing it alone) */
        unsigned long tx_queue; /* bytes written and not yet acknowledged */
        unsigned long rx_queue; /* bytes received and not yet read */
} TcpSocket;
/* hellod_socket_of: the server's end of the connection of FD to PORT. */
TcpSocket hellod_socket_of(uint16_t port, int fd);
/* hellod_socket_dup: a duplicate (pidfd_getfd) of D's socket whose peer is the local end of
 * the IPv4 client FD: hellod's side of that connection, to read or set its socket options.
 * The caller closes it. */
int hellod_socket_dup(Hellod *d, int fd);
/* hellod_holds_socket_of: whether a process (hellod) still holds the server's end of the IPv4
 * connection of FD to PORT: its socket in /proc/net/tcp with an inode. */
bool hellod_holds_socket_of(uint16_t port, int fd);
/* hellod_expect_lingering_ends_quietly: D's lingering close of FD's connection to PORT (a late
 * line written to it) ends within HARNESS_TIMEOUT_MS, and with the line read: FD is left in
 * CLOSE_WAIT, not reset. */
void hellod_expect_lingering_ends_quietly(Hellod *d, uint16_t port, int fd);

/* What a client of a saturated daemon has seen so far. */
typedef enum ClientState {
        CLIENT_WAITING, /* nothing yet: in the listen backlog */
        CLIENT_SERVED,  /* got the greeting */
        CLIENT_REFUSED, /* got the busy error, then EOF */
        CLIENT_GONE,    /* closed by the test */
} ClientState;
/* client_classify: the greeting, the busy error (then EOF) or nothing yet; anything else fails. */
ClientState client_classify(int fd);

/*
 * harness_model_replies: what hellod answers, after its greeting, to IN followed by a
 * half-close, per the README (line framing, reply PREFIX{name}SUFFIX): each '\n'-terminated
 * line (an unterminated last one too) loses one trailing '\r'; a line over MAX_LINE gets the
 * ERR and ends it all; "exit" ends it without a reply; an empty line gets nothing; any other
 * line gets PREFIX, its bytes verbatim, SUFFIX and CRLF. Telnet commands are taken out first
 * and answered in place (IP and its kind end it all; a command costs at most 4 bytes of OUT per
 * byte of IN). OUT must have room; returns its length.
 */
size_t harness_model_replies(const char *prefix, const char *suffix, const unsigned char *in, size_t n,
                             size_t max_line, char *out);

/* A small seeded PRNG (splitmix64) for reproducible random traffic: print the seed. */
typedef struct Rng {
        uint64_t s;
} Rng;

static inline uint64_t rng_next(Rng *r) {
        uint64_t z = (r->s += 0x9e3779b97f4a7c15u);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return z ^ (z >> 31);
}

static inline size_t rng_below(Rng *r, size_t n) {
        return n ? (size_t) (rng_next(r) % n) : 0;
}
