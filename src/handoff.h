/* handoff: what the hand-over (docs/zero-downtime.md) needs between live sessions and the
 * state format of handover.h: a record from a session and a session from a record, the
 * limits of this process, the sealed memfd, the clocks, and the question whether the service
 * manager is restarting us or stopping us. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "handover.h"
#include "session.h"

/* HandoffJob: what systemd is doing to this service, as far as it can be told. */
typedef enum HandoffJob {
        HANDOFF_JOB_RESTART, /* a restart (or try-restart) job on the unit */
        HANDOFF_JOB_STOP,    /* any other job, or none: a stop, or a SIGTERM not from systemd */
        HANDOFF_JOB_UNKNOWN, /* cannot ask: no system bus, or dbus-daemon refuses a DynamicUser= unit */
} HandoffJob;

/* handoff_job: asks PID 1 over the system bus, with a short timeout, about the job on this
 * service's unit; WHY says what it found. Not a service (no INVOCATION_ID): STOP. */
HandoffJob handoff_job(char *why, size_t why_size);

/* handoff_limits: what this process can resume with CONF. */
HandoverLimits handoff_limits(const Conf *conf);

/* handoff_record: S at rest, as a record (pointing into S's buffers), NOW (CLOCK_MONOTONIC). */
void handoff_record(const Session *s, uint64_t now, HandoverRecord *rec);

/* HandoffLingering: the record of a conversation that has ended and lingers (its FIN sent) on
 * a socket its session no longer holds: the per-connection model's lingerer keeps the socket
 * (lingerer.h) and this, self-contained, for a hand-over. */
typedef struct HandoffLingering {
        HandoverRecord rec;    /* LINGERING; listen points into the text below; nothing kept */
        uint64_t started_usec; /* the connection's accept, for rec.age_usec */
        /* Its name in systemd's store (handover = "always"), where it stays until it closes
         * so that a crash meanwhile does not close it; "" when it is not stored. */
        char stored_as[HANDOVER_FDNAME_MAX];
        char listen[];
} HandoffLingering;

/* handoff_lingering_new: S's record as it goes to linger (its conversation over), with the
 * name S is stored under if it is; NULL when out of memory. Freed with free(). */
HandoffLingering *handoff_lingering_new(const Session *s);
/* handoff_lingering_at: L's record as of NOW: lingering until DEADLINE, DISCARDED bytes read
 * away so far. */
const HandoverRecord *handoff_lingering_at(HandoffLingering *l, uint64_t now, uint64_t deadline, size_t discarded);

/* handoff_peer_check: -ESTALE, with both ends in WHY (SIZE bytes), when FD is connected to
 * another peer than REC names: the store gave another connection under its name, and going on
 * would give one client another's conversation. 0 otherwise. */
int handoff_peer_check(const HandoverRecord *rec, int fd, char *why, size_t size);

/* handoff_session: the session REC describes, on the connection FD, under CONF: no greeting,
 * the protocol's state, the kept input and output, the deadline from NOW; GAP_USEC the time
 * between the processes, which the session's age counts. Takes FD (closed on failure, with a
 * static *REASON). Returns 0 or a negative errno. */
int handoff_session(const HandoverRecord *rec, int fd, Conf *conf, uint64_t now, uint64_t gap_usec, Session **ret,
                    const char **reason);

/* handoff_session_fresh: a session for the connection FD whose state is lost (a crash): the
 * conversation goes on from the next line, without a greeting. NAME is what its name in the
 * store says: its id, behind a balancer the client its PROXY header named (or that it is the
 * balancer's own), which the session takes up as such, and whether it had ended. One that had
 * ended, or whose FIN is out (it lingered), lingers on for a close's time. Takes FD. */
int handoff_session_fresh(int fd, Conf *conf, const HandoverConnName *name, Session **ret);

/* handoff_conn_name: the name S is stored under: "c<id>", behind a balancer with its client
 * when it was stored so (Session.stored_via: the crash mode's names say it, a restart's
 * records do instead), ended when it was stored so (Session.stored_ended). */
HandoverConnName handoff_conn_name(const Session *s);
/* handoff_record_conn_name: the name REC's connection is stored under at a hand-over: behind a
 * balancer with its client when VIA_NAME (the crash mode's names), else "c<id>". Never ended:
 * the record says so, and a next process in the crash mode renames it if it still waits (a
 * hellod from before that name would close the connection). */
HandoverConnName handoff_record_conn_name(const HandoverRecord *rec, bool via_name);

/* handoff_memfd_new: an empty memfd for the state, stored before the connections so that a
 * full store refuses connections, not the state all of them need. The fd or a negative
 * errno. handoff_memfd_fill: B's bytes into it, then sealed. Empty, it says the hand-over
 * never finished (handoff_state_written()). */
int handoff_memfd_new(void);
int handoff_memfd_fill(int fd, const HandoverBuf *b);
/* StateBytes: the state's bytes as handoff_read_state() found them: mapped (a sealed memfd, as
 * its writer leaves it: nothing can change it any more), or copied. */
typedef struct StateBytes {
        const uint8_t *data;
        size_t size;
        bool mapped;
} StateBytes;

/* handoff_read_state: the whole of FD (from its start), if it is at most MAX bytes; 0 or a
 * negative errno (-EFBIG: too big). A sealed memfd is mapped, not copied: the size is the
 * writer's word, and a state of any size costs the pages its decoding reads. Anything else
 * is copied. handoff_state_release(): unmapped or freed. */
int handoff_read_state(int fd, size_t max, StateBytes *ret);
void handoff_state_release(StateBytes *b);

/* handoff_header: a state header for this process: the version, the boot (zeros when it
 * cannot be read), the time. */
void handoff_header(HandoverHeader *h, uint64_t next_id);
/* handoff_boottime_usec: CLOCK_BOOTTIME, as the header's written_usec. */
uint64_t handoff_boottime_usec(void);
int handoff_boot_id(uint8_t ret[16]);
