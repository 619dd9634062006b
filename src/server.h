/* server: the listeners, admission and connection limits (hooks the engine's accepting
 * threads call), signals (via signalfd), reload on SIGHUP and the orderly shutdown on
 * SIGTERM/SIGINT. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"
#include "listener.h"

typedef struct ServerOptions {
        const char *config_path; /* re-read on SIGHUP */
        bool config_optional;    /* the default path: when absent, built-in defaults apply */
        bool config_defaulted;   /* ... and it was absent when last read (start-up or reload) */
        int log_level_override;  /* from --log-level, kept across reloads; -1: none */
} ServerOptions;

typedef struct Server Server;

/* The signals the server consumes through its signalfd; the caller blocks them in every
 * thread (before any thread starts) with server_block_signals(). */
int server_block_signals(void);

/* server_hold_reloads: blocks SIGHUP (and SIGUSR1/2, which hellod ignores) but not a stop,
 * first thing at a start: a reload asked for while the start looks names up waits for the
 * server's signalfd. */
int server_hold_reloads(void);

/* server_new: takes a reference to CONF. Takes INHERITED (socket activation; the set is moved
 * into the server) when it is not empty, else binds the listeners CONF names. Nothing is
 * accepted or served yet: clients wait in the backlog until server_run(), so that the caller
 * can drop its privileges in between. On failure returns a negative errno, having logged why
 * (e.g. "cannot listen on 127.0.0.1:9999: Address already in use"). */
int server_new(Server **ret, Conf *conf, const ServerOptions *opts, ListenerSet *inherited);
/* What server_new() returns, no errno, when the configuration does not fit the sockets systemd
 * passed (a PROXY entry's name no passed socket has): the file's fault, not the moment's. */
#define SERVER_CONF_MISMATCH (-4096)

/* server_run: resumes the conversations STORE holds (handed over by the previous process, or
 * kept across a crash; what it takes is moved out of STORE), accepts and serves until
 * SIGTERM/SIGINT, then drains; returns 0, or a negative errno on a failure that stops the
 * daemon. */
int server_run(Server *s, InheritedStore *store);

Server *server_free(Server *s);
