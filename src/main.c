/* main: command line, configuration, and the exit code; the daemon itself is server.c. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conf.h"
#include "listener.h"
#include "log.h"
#include "notify.h"
#include "preflight.h"
#include "privileges.h"
#include "server.h"

#include "config.h"

/* Exit codes, as documented in the README and hellod(8). */
enum {
        EXIT_OK = 0,
        EXIT_RUNTIME = 1,
        EXIT_USAGE = 2,
        EXIT_CONFIG = 78, /* EX_CONFIG from sysexits.h, as `nginx -t` and `sshd -t` use */
};

static const char *arg_config = NULL;
static bool arg_check = false;
static bool arg_dump = false; /* -T: the check, then the effective settings on stdout */
static int arg_log_level = -1;
static LogTarget arg_log_target = LOG_TARGET_AUTO;

static void help(void) {
        printf("Usage: hellod [OPTION]...\n"
               "A TCP greeting daemon: greets, answers every line with a hello, closes on exit.\n"
               "\n"
               "  -c, --config=PATH      configuration file (default %s)\n"
               "  -t, --check-config     check the configuration as a start would (users, groups,\n"
               "                         addresses, limits), print a short verdict and exit\n"
               "                         (0: valid, 78: invalid, 1: a name or user lookup got\n"
               "                         no answer)\n"
               "  -T, --dump-config      the same check, then print the effective settings\n"
               "  -l, --log-level=LEVEL  error, warning, notice, info or debug;\n"
               "                         overrides log_level from the configuration\n"
               "      --log-target=TARGET\n"
               "                         auto (default: the journal when stderr is connected\n"
               "                         to it, else stderr), journal or stderr\n"
               "  -h, --help             show this help and exit\n"
               "  -V, --version          show the version and exit\n"
               "\n"
               "Socket activation: with LISTEN_FDS (systemd), the passed sockets are served\n"
               "(hellod-socket-generator makes hellod.socket follow 'listen' and 'port').\n"
               "Signals: SIGHUP reloads the configuration; SIGTERM or SIGINT stop gracefully.\n"
               "Exit status: 0 clean exit, 1 runtime failure, 2 usage error, 78 configuration error.\n",
               CONF_DEFAULT_PATH);
}

/* output_written: CODE, once what went to stdout is out; else EXIT_RUNTIME, said on stderr
 * (`hellod -T > /dev/full` must not pass for a dump). */
static int output_written(int code) {
        errno = 0;
        if (fflush(stdout) == 0 && !ferror(stdout))
                return code;
        fprintf(stderr, "hellod: cannot write the output: %s\n", errno ? strerror(errno) : "write error");
        return EXIT_RUNTIME;
}

/* The short options, for getopt_long() (a leading ':' reports a missing argument apart). */
static const char short_options[] = ":c:tTl:hV";

/* misused: what getopt_long() refused in ARG: a long option it has none of, or several (a
 * prefix), or given a value it takes none of; or the short option SHORT. */
static void misused(const struct option *options, const char *arg, int short_option) {
        /* glibc sets optopt to a long option's letter when it was given a value it takes none
         * of; to the letter itself for an unknown short one, where ARG may be an earlier
         * argument (optind stays on a cluster like -xV until its last letter). */
        bool known_letter = short_option > 0 && short_option < 0x100 && short_option != ':' &&
                            strchr(short_options, short_option);
        if (short_option != 0 && !known_letter) {
                fprintf(stderr, "hellod: unknown option '-%c'\n", short_option);
                return;
        }
        size_t len = strcspn(arg + 2, "="), matches = 0;
        const struct option *match = NULL;
        for (const struct option *o = options; o->name; o++) {
                if (strncmp(o->name, arg + 2, len) != 0)
                        continue;
                match = o;
                if (strlen(o->name) == len) { /* the whole name: no abbreviation of another */
                        matches = 1;
                        break;
                }
                matches++;
        }
        if (matches > 1)
                fprintf(stderr, "hellod: option '%.*s' is ambiguous\n", (int) len + 2, arg);
        else if (match && arg[2 + len] == '=')
                fprintf(stderr, "hellod: option '--%s' takes no argument\n", match->name);
        else
                fprintf(stderr, "hellod: unknown option '%s'\n", arg);
}

/* parse_argv: returns -1 to go on, or the exit code to exit with now. */
static int parse_argv(int argc, char *argv[]) {
        enum { ARG_LOG_TARGET = 0x100 };
        static const struct option options[] = {
                { "log-target", required_argument, NULL, ARG_LOG_TARGET },
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, 't' },
                { "dump-config", no_argument, NULL, 'T' },
                { "log-level", required_argument, NULL, 'l' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { NULL, 0, NULL, 0 },
        };
        int c;

        /* getopt's own messages would name argv[0] ("../build/src/hellod: ..."): ours say hellod. */
        opterr = 0;
        while ((c = getopt_long(argc, argv, short_options, options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        if (!*optarg) {
                                fprintf(stderr, "hellod: --config needs a file name\n");
                                return EXIT_USAGE;
                        }
                        arg_config = optarg;
                        break;
                case 't':
                        arg_check = true;
                        break;
                case 'T':
                        arg_check = arg_dump = true;
                        break;
                case 'l':
                        arg_log_level = log_level_from_string(optarg);
                        if (arg_log_level < 0) {
                                fprintf(stderr, "hellod: invalid log level '%s' (error, warning, notice, info, debug)\n",
                                        optarg);
                                return EXIT_USAGE;
                        }
                        break;
                case ARG_LOG_TARGET: {
                        int t = log_target_from_string(optarg);
                        if (t < 0) {
                                fprintf(stderr, "hellod: invalid log target '%s' (auto, journal, stderr)\n", optarg);
                                return EXIT_USAGE;
                        }
                        arg_log_target = (LogTarget) t;
                        break;
                }
                case 'h':
                        help();
                        return output_written(EXIT_OK);
                case 'V':
                        printf("hellod %s\n", VERSION);
                        return output_written(EXIT_OK);
                case ':':
                        fprintf(stderr, "hellod: option '%s' needs an argument\n", argv[optind - 1]);
                        fprintf(stderr, "Try 'hellod --help' for more information.\n");
                        return EXIT_USAGE;
                default:
                        misused(options, argv[optind - 1], optopt);
                        fprintf(stderr, "Try 'hellod --help' for more information.\n");
                        return EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "hellod: unexpected argument '%s'\nTry 'hellod --help' for more information.\n",
                        argv[optind]);
                return EXIT_USAGE;
        }
        return -1;
}

/* check_config: `hellod -t` (a verdict) and `-T` (the settings too), as nginx splits them. The
 * checks themselves already ran: they are the start's. */
static int check_config(const Conf *conf, const char *path, bool defaulted) {
        if (arg_dump) {
                conf_print(conf, stdout);
                if (output_written(EXIT_OK) != EXIT_OK)
                        return EXIT_RUNTIME;
        }
        if (defaulted)
                fprintf(stderr, "hellod: %s not found, built-in defaults apply\n", path);
        else
                fprintf(stderr, "hellod: configuration %s is valid\n", path);
        return EXIT_OK;
}

/* warn_unreadable: a reload reads PATH as the user hellod switched to (the start read it as
 * root): a file that user cannot read would fail every reload. Said at the start, not at the
 * first SIGHUP. */
static void warn_unreadable(const char *path, const Conf *conf) {
        if (access(path, R_OK) == 0)
                return;
        log_warning_errno(-errno,
                          "%s cannot be read by %s: a reload will fail; make it readable by that %s, or restart "
                          "hellod to apply a change",
                          path, conf->user ? conf->user : conf->group, conf->user ? "user" : "group");
}

/* warn_unreadable_config: the file at PATH and every file it includes. */
static void warn_unreadable_config(const char *path, const Conf *conf) {
        warn_unreadable(path, conf);
        for (size_t i = 0; i < conf->n_includes; i++)
                warn_unreadable(conf->includes[i], conf);
}

/* raise_fd_limit: a daemon that never calls select() can use every descriptor it is allowed:
 * lift the soft limit to the hard one (preflight_check() measured against the hard one). */
static void raise_fd_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                log_warning_errno(-errno, "cannot raise the open-files limit to %llu, ignoring",
                                  (unsigned long long) rl.rlim_max);
}

/* open_standard_fds: descriptors 0, 1 and 2 open, on /dev/null where they were closed (as sshd
 * does): else the next descriptor hellod opens takes the place of one, and a log line meant for
 * stderr goes to a signalfd or a client. open() takes the lowest free number. False when
 * /dev/null cannot be opened. */
static bool open_standard_fds(void) {
        for (int fd = 0; fd <= 2; fd++) {
                if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
                        continue;
                int null = open("/dev/null", O_RDWR);
                if (null != fd) {
                        if (null >= 0)
                                (void) close(null);
                        return false;
                }
        }
        return true;
}

/* serve: the daemon proper, once CONF (read from PATH, or DEFAULTED) has passed the checks a
 * start makes: the server on the sockets INHERITED (taken) or its own, root left for IDENTITY,
 * the conversations in STORE resumed (those it takes). Returns the exit code. */
static int serve(Conf *conf, const char *path, bool defaulted, ListenerSet *inherited, InheritedStore *store,
                 const Identity *identity) {
        Server *server = NULL;
        char err[512];
        int r, code;

        r = notify_open();
        if (r < 0)
                log_debug_errno(r, "no socket of its own for $NOTIFY_SOCKET, one for each message then");
        r = server_block_signals();
        if (r < 0) {
                log_error_errno(r, "cannot block signals");
                code = EXIT_RUNTIME;
                goto out;
        }
        raise_fd_limit();

        ServerOptions opts = {
                .config_path = path,
                .config_optional = !arg_config,
                .config_defaulted = defaulted,
                .log_level_override = arg_log_level,
        };
        r = server_new(&server, conf, &opts, inherited);
        if (r < 0) {
                /* 78 keeps systemd from restarting a file that cannot work (RestartPreventExitStatus=). */
                code = r == SERVER_CONF_MISMATCH ? EXIT_CONFIG : EXIT_RUNTIME;
                goto out;
        }
        /* The listeners are bound (ports below 1024 need root): now stop being root, before
         * server_run() serves the first client. */
        bool as_root = geteuid() == 0;
        r = privileges_drop(conf->user, conf->group, identity, err, sizeof(err));
        if (r < 0) {
                /* Not permitted: the same at every attempt (a unit's capability bounding set),
                 * so 78, which systemd does not restart after. */
                log_error("cannot drop privileges: %s", err);
                code = r == -EPERM ? EXIT_CONFIG : EXIT_RUNTIME;
                goto out;
        }
        if (as_root && (conf->user || conf->group) && !defaulted)
                warn_unreadable_config(path, conf);
        r = server_run(server, store);
        code = r < 0 ? EXIT_RUNTIME : EXIT_OK;
out:
        server_free(server);
        return code;
}

int main(int argc, char *argv[]) {
        ListenerSet inherited = { 0 };
        InheritedStore store = INHERITED_STORE_NULL;
        Conf *conf = NULL;
        /* -1: unchanged, which the drop's own verification refuses, were the check not to set it */
        Identity identity = { .uid = (uid_t) -1, .gid = (gid_t) -1 };
        char err[512];
        bool defaulted;
        int r, code;

        if (!open_standard_fds()) {
                fprintf(stderr, "hellod: cannot open /dev/null: %s\n", strerror(errno)); /* if fd 2 is open */
                return EXIT_RUNTIME;
        }
        code = parse_argv(argc, argv);
        if (code >= 0)
                return code;
        if (arg_check)
                log_open_console();
        else
                log_open(arg_log_target);
        if (arg_log_level >= 0)
                log_set_max_level(arg_log_level);
        /* A reload asked for while the start still looks names up (up to 30 s each) would end
         * hellod, by SIGHUP's default action, with nothing logged: held, it is a reload once
         * started. A stop meanwhile still ends the start at once, up to server_new(): from
         * there the stop waits for its second round of lookups (server.c, server_run). */
        if (!arg_check && (r = server_hold_reloads()) < 0) {
                log_error_errno(r, "cannot block SIGHUP, SIGUSR1 and SIGUSR2");
                return EXIT_RUNTIME;
        }

        const char *path = arg_config ? arg_config : CONF_DEFAULT_PATH;
        r = conf_load_for(path, !arg_config, &conf, &defaulted, err, sizeof(err));
        if (r < 0) {
                log_error("%s", err);
                return EXIT_CONFIG;
        }
        if (defaulted && !arg_check)
                log_notice("%s not found, built-in defaults apply", path);
        /* Take the passed sockets first, before anything could open a descriptor of ours
         * over their numbers. Served, they make `listen` a comparison only (preflight.h). */
        if (!arg_check && (r = listeners_inherit_split(&inherited, &store, err, sizeof(err))) < 0) {
                log_error("%s", err);
                code = EXIT_RUNTIME;
                goto out;
        }
        r = preflight_check(conf, path, inherited.n > 0, &identity, err, sizeof(err));
        if (r < 0) {
                log_error("%s", err);
                /* A name server or directory that does not answer, for now, is no fault of the
                 * file: 78 would keep systemd from restarting (RestartPreventExitStatus=). */
                code = r == -EAGAIN ? EXIT_RUNTIME : EXIT_CONFIG;
                goto out;
        }
        if (arg_check) {
                /* The settings in force: --log-level's over the file's (sshd -T applies -o). */
                if (arg_log_level >= 0)
                        conf->log_level = arg_log_level;
                (void) preflight_warn(conf);
                (void) listeners_warn_backlog(conf);
                code = check_config(conf, path, defaulted);
                goto out;
        }

        code = serve(conf, path, defaulted, &inherited, &store, &identity);
out:
        listener_set_done(&inherited);
        /* Left in the store (server_run() took what it resumed): a start that failed leaves
         * the conversations to the next attempt. */
        inherited_store_done(&store);
        conf_unref(conf);
        return code;
}
