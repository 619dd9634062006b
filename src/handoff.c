/* handoff: the hand-over's glue between sessions, the state format and the system. */
#include "handoff.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "clock.h"

#include "config.h"

/* How long the restart-or-stop question may take: a stop must not wait on a busy bus. */
#define BUS_TIMEOUT_USEC 500000u

/* unit_job_type: the type of the job pending on the caller's own unit ("restart", "stop"):
 * 1 with *RET_TYPE, 0 when there is none, or a negative errno when systemd cannot be asked. GetUnitByPID(0) names the caller's unit from PID 1's side,
 * which works in a sandbox that hides the cgroup file system. */
static int unit_job_type(sd_bus *bus, char **ret_unit, char **ret_type) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL, *job = NULL;
        const char *unit_path = NULL, *job_path = NULL;
        uint32_t job_id = 0;
        int r;

        r = sd_bus_call_method(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                               "org.freedesktop.systemd1.Manager", "GetUnitByPID", &error, &reply, "u", (uint32_t) 0);
        if (r >= 0)
                r = sd_bus_message_read(reply, "o", &unit_path);
        if (r >= 0)
                r = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", unit_path, "org.freedesktop.systemd1.Unit",
                                               "Id", &error, ret_unit);
        if (r >= 0)
                r = sd_bus_get_property(bus, "org.freedesktop.systemd1", unit_path, "org.freedesktop.systemd1.Unit", "Job",
                                        &error, &job, "(uo)");
        if (r >= 0)
                r = sd_bus_message_read(job, "(uo)", &job_id, &job_path);
        if (r >= 0 && job_id == 0)
                r = 0; /* no job: a SIGTERM that is not systemd's */
        else if (r >= 0)
                r = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job_path,
                                               "org.freedesktop.systemd1.Job", "JobType", &error, ret_type) < 0
                            ? -EIO
                            : 1;
        sd_bus_message_unref(job);
        sd_bus_message_unref(reply);
        sd_bus_error_free(&error);
        return r;
}

HandoffJob handoff_job(char *why, size_t why_size) {
        sd_bus *bus = NULL;
        char *unit = NULL, *type = NULL;
        HandoffJob job = HANDOFF_JOB_UNKNOWN;
        int r;

        if (!getenv("INVOCATION_ID")) {
                snprintf(why, why_size, "not started as a systemd service");
                return HANDOFF_JOB_STOP;
        }
        r = sd_bus_open_system(&bus);
        if (r >= 0)
                r = sd_bus_set_method_call_timeout(bus, BUS_TIMEOUT_USEC);
        if (r >= 0)
                r = unit_job_type(bus, &unit, &type);
        if (r == 0) {
                snprintf(why, why_size, "%s has no job: not stopped by systemd", unit ? unit : "the unit");
                job = HANDOFF_JOB_STOP;
        } else if (r < 0) {
                /* Debian 12's dbus-daemon cuts off a DynamicUser= service (it does not
                 * look transient users up, to avoid deadlocking on PID 1); dbus-broker does
                 * not. The packaged unit runs as a static user for this. */
                snprintf(why, why_size, "cannot ask systemd whether this is a restart: %s", strerror(-r));
        } else {
                /* A try-restart collapses into a restart job when the unit is running. */
                job = strcmp(type, "restart") == 0 || strcmp(type, "try-restart") == 0 ? HANDOFF_JOB_RESTART
                                                                                      : HANDOFF_JOB_STOP;
                snprintf(why, why_size, "a %s job on %s", type, unit);
        }
        free(type);
        free(unit);
        sd_bus_flush_close_unref(bus);
        return job;
}

HandoverLimits handoff_limits(const Conf *conf) {
        return (HandoverLimits) {
                .framing = conf->framing,
                .max_line_length = conf->max_line_length,
                /* In line framing, a telnet command cut by the hand-over comes in front. */
                .input_max = session_handover_input_max(conf) +
                             (conf->framing == FRAMING_LINE ? HANDOVER_INPUT_HEAD_MAX : 0),
                .output_max = session_output_size(conf),
                .discard_max = SESSION_LINGER_BYTES,
                .linger_max_usec = SESSION_LINGER_USEC,
                /* Not this process's max_connections: a restart that lowers it keeps the
                 * conversations admitted before, as a reload does. */
                .records_max = CONF_MAX_CONNECTIONS_LIMIT,
        };
}

/* discarded_bound: what a lingering close has read away, for its record: past
 * SESSION_LINGER_BYTES it goes on only while its replies are on their way
 * (session_linger_spent), and the next process needs to know no more than that it is past. */
static uint32_t discarded_bound(size_t discarded) {
        return discarded > SESSION_LINGER_BYTES ? SESSION_LINGER_BYTES : (uint32_t) discarded;
}

/* peer_of: the client the session was admitted as: behind a balancer, the one its PROXY
 * header named, not the socket's peer (the balancer: HANDOVER_VIA_BALANCER, restore_balancer()). */
static struct sockaddr_storage peer_of(const Session *s) {
        struct sockaddr_storage peer = s->peer_addr;
        socklen_t len = sizeof(peer);

        if (peer.ss_family != AF_INET && peer.ss_family != AF_INET6 &&
            getpeername(s->fd, (struct sockaddr *) &peer, &len) < 0)
                peer.ss_family = AF_UNSPEC;
        return peer;
}

void handoff_record(const Session *s, uint64_t now, HandoverRecord *rec) {
        *rec = (HandoverRecord) {
                .id = s->id,
                .framing = s->conf->framing,
                .end = (int) s->proto.end,
                .flags = (s->lingering ? HANDOVER_LINGERING : 0u) | (s->want_write ? HANDOVER_WANT_WRITE : 0u) |
                         (s->close_logged ? HANDOVER_LOGGED : 0u) | (s->balancer[0] ? HANDOVER_VIA_BALANCER : 0u) |
                         (s->proxy_local ? HANDOVER_BALANCER_OWN : 0u),
                .peer = peer_of(s),
                .age_usec = now - s->started_usec,
                .deadline_left_usec = s->timer.at == SESSION_NO_DEADLINE ? HANDOVER_NO_DEADLINE
                                      : s->timer.at > now                ? s->timer.at - now
                                                                         : 0,
                .lines = s->proto.lines,
                .messages = s->proto.messages,
                .conf_hash = handover_conf_hash(s->conf),
                /* While lingering, in_len counts what was discarded (pool.c). */
                .discarded = s->lingering ? discarded_bound(s->in_len) : 0,
                .listen = s->listen,
                .listen_len = strlen(s->listen),
                .pending = (const uint8_t *) s->proto.pending,
                .pending_len = s->proto.pending_len,
                /* No buffer, nothing kept: NULL + 0 would be undefined (clang's UBSan says so). */
                .input = s->lingering || !s->in ? NULL : (const uint8_t *) s->in + s->in_off,
                .input_len = s->lingering ? 0 : s->in_len - s->in_off,
                .output = s->out.data ? (const uint8_t *) s->out.data + s->out_off : NULL,
                .output_len = s->out.len - s->out_off,
        };
        _Static_assert(PROTO_TELNET_RESTART_MAX <= HANDOVER_INPUT_HEAD_MAX, "the record's input head is too small");
        if (s->lingering)
                return;
        rec->input_head_len = proto_telnet_restart(&s->proto, rec->input_head);
        size_t skipped;
        if (proto_subnegotiation(&s->proto, &skipped)) { /* at most max_line_length */
                rec->flags |= HANDOVER_SUBNEGOTIATION;
                rec->subnegotiation_len = (uint32_t) skipped;
        }
}

HandoffLingering *handoff_lingering_new(const Session *s) {
        size_t listen_len = strlen(s->listen);
        HandoffLingering *l = malloc(sizeof(*l) + listen_len + 1);

        if (!l)
                return NULL;
        handoff_record(s, s->started_usec, &l->rec);
        l->started_usec = s->started_usec;
        l->stored_as[0] = '\0';
        if (s->stored) {
                HandoverConnName conn = handoff_conn_name(s);
                handover_fdname_conn(&conn, l->stored_as, sizeof(l->stored_as));
        }
        memcpy(l->listen, s->listen, listen_len + 1);
        l->rec.listen = l->listen;
        /* Logged by the done hook, about to run; still the balancer's, if it was. */
        l->rec.flags = HANDOVER_LINGERING | HANDOVER_LOGGED |
                       (l->rec.flags & (HANDOVER_VIA_BALANCER | HANDOVER_BALANCER_OWN));
        /* Lingering: nothing of the conversation is kept but its counters and its end. */
        l->rec.pending = l->rec.input = l->rec.output = NULL;
        l->rec.pending_len = l->rec.input_head_len = l->rec.input_len = l->rec.output_len = 0;
        return l;
}

const HandoverRecord *handoff_lingering_at(HandoffLingering *l, uint64_t now, uint64_t deadline, size_t discarded) {
        l->rec.age_usec = now - l->started_usec;
        l->rec.deadline_left_usec = deadline > now ? deadline - now : 0;
        l->rec.discarded = discarded_bound(discarded);
        return &l->rec;
}

/* restore_balancer: behind a balancer (REC's flags), S's balancer is its socket's peer. */
static void restore_balancer(Session *s, const HandoverRecord *rec) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);

        if (!(rec->flags & HANDOVER_VIA_BALANCER))
                return;
        if (getpeername(s->fd, (struct sockaddr *) &peer, &len) == 0) /* else gone: nothing to wait for */
                addr_format((const struct sockaddr *) &peer, s->balancer, sizeof(s->balancer));
        s->proxy_local = rec->flags & HANDOVER_BALANCER_OWN;
}

/* restore: the buffers and state of REC into the new session S, GAP_USEC after it was written. */
static int restore(Session *s, const HandoverRecord *rec, uint64_t now, uint64_t gap_usec, const char **reason) {
        int r = proto_resume(&s->proto, (const char *) rec->pending, rec->pending_len, rec->lines, rec->messages,
                             (ProtoEnd) rec->end);
        if (r < 0) {
                if (r != -ENOMEM) /* handoff_session() says that one */
                        *reason = "cannot restore the pending line";
                return r;
        }
        /* Before the input, which may begin with the IAC inside it (handoff_record). */
        if ((rec->flags & HANDOVER_SUBNEGOTIATION) && proto_resume_subnegotiation(&s->proto, rec->subnegotiation_len) < 0) {
                *reason = "cannot restore the telnet subnegotiation";
                return -EINVAL;
        }
        if (rec->input_len > 0) {
                /* More than one read's worth (handed over by an io_uring loop): the buffer
                 * holds it all, and reads go on a read's worth at a time (in_cap). */
                if (!(s->in = malloc(rec->input_len > s->in_cap ? rec->input_len : s->in_cap)))
                        return -ENOMEM;
                memcpy(s->in, rec->input, rec->input_len);
                s->in_len = rec->input_len;
        }
        if (rec->output_len > 0) {
                if (!(s->out.data = malloc(s->out.cap)))
                        return -ENOMEM;
                memcpy(s->out.data, rec->output, rec->output_len);
                s->out.len = rec->output_len;
        }
        restore_balancer(s, rec);
        s->lingering = rec->flags & HANDOVER_LINGERING;
        s->close_logged = rec->flags & HANDOVER_LOGGED;
        if (s->lingering) {
                s->in_len = rec->discarded;
                session_linger_begin(&s->linger, s->fd, s->in_len, now); /* its progress counted afresh */
        }
        s->want_write = rec->output_len > 0;
        /* Its age counts the gap: the client lived through it. */
        uint64_t age = rec->age_usec + gap_usec < rec->age_usec ? UINT64_MAX : rec->age_usec + gap_usec;
        s->started_usec = now > age ? now - age : 0;
        /* The gap is not the client's idleness: what was left of its deadline starts now. A
         * conversation still going has this process's idle_timeout at most, or none if it has
         * none (what ended goes on to its end as it was). */
        s->timer.at = rec->deadline_left_usec == HANDOVER_NO_DEADLINE ? SESSION_NO_DEADLINE
                                                                       : now + rec->deadline_left_usec;
        if (!s->lingering && s->proto.end == PROTO_END_NONE) {
                uint64_t idle = session_idle_deadline(s, now);
                s->timer.at = idle == SESSION_NO_DEADLINE || idle < s->timer.at ? idle : s->timer.at;
        }
        s->resumed = true;
        return 0;
}

int handoff_peer_check(const HandoverRecord *rec, int fd, char *why, size_t size) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        char got[ADDR_STR_MAX], want[ADDR_STR_MAX];

        /* Behind a balancer the socket's peer is the balancer, which the record does not keep;
         * a socket without a peer by now (reset in the gap) is the session's to find out, as
         * any reset. */
        if ((rec->flags & HANDOVER_VIA_BALANCER) || getpeername(fd, (struct sockaddr *) &peer, &len) < 0 ||
            addr_same_endpoint((const struct sockaddr *) &peer, (const struct sockaddr *) &rec->peer))
                return 0;
        snprintf(why, size, "its socket is connected to %s, its record names %s",
                 addr_format((const struct sockaddr *) &peer, got, sizeof(got)),
                 addr_format((const struct sockaddr *) &rec->peer, want, sizeof(want)));
        return -ESTALE;
}

int handoff_session(const HandoverRecord *rec, int fd, Conf *conf, uint64_t now, uint64_t gap_usec, Session **ret,
                    const char **reason) {
        char listen[ADDR_STR_MAX];
        Session *s;
        int r;

        snprintf(listen, sizeof(listen), "%.*s", (int) rec->listen_len, rec->listen);
        r = session_new(&s, fd, conf, (const struct sockaddr *) &rec->peer, listen);
        if (r < 0) {
                *reason = "out of memory";
                return r;
        }
        s->id = rec->id;
        r = restore(s, rec, now, gap_usec, reason);
        if (r < 0) {
                if (r == -ENOMEM)
                        *reason = "out of memory";
                session_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

/* fin_sent: whether the socket has sent its FIN (shut for writing): an event loop, or the
 * per-connection model's lingerer, keeps a conversation that ended in the store while it
 * lingers (handover = "always"). One that is
 * closed by now (the client's FIN came too, or a reset) has no peer: refused before this. */
static bool fin_sent(int fd) {
        struct tcp_info info;
        socklen_t len = sizeof(info);

        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
                return false;
        return info.tcpi_state == TCP_FIN_WAIT1 || info.tcpi_state == TCP_FIN_WAIT2 ||
               info.tcpi_state == TCP_CLOSING || info.tcpi_state == TCP_LAST_ACK;
}

int handoff_session_fresh(int fd, Conf *conf, const HandoverConnName *name, Session **ret) {
        struct sockaddr_storage peer = { 0 }, local = { 0 };
        socklen_t peer_len = sizeof(peer), local_len = sizeof(local);
        char listen[ADDR_STR_MAX];
        bool client_named = name->via_balancer && !name->balancer_own;
        Session *s;
        int r;

        if (getpeername(fd, (struct sockaddr *) &peer, &peer_len) < 0 ||
            getsockname(fd, (struct sockaddr *) &local, &local_len) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        addr_format((const struct sockaddr *) &local, listen, sizeof(listen));
        r = session_new(&s, fd, conf, (const struct sockaddr *) (client_named ? &name->client : &peer), listen);
        if (r < 0)
                return r;
        s->id = name->id;
        if (name->via_balancer) { /* as restore_balancer(): the socket's peer is the balancer */
                addr_format((const struct sockaddr *) &peer, s->balancer, sizeof(s->balancer));
                s->proxy_local = name->balancer_own;
                s->stored_via = true;
        }
        s->stored_ended = name->ended;
        s->resumed = true; /* greeted by the process that crashed */
        s->timer.at = session_idle_deadline(s, now_usec()); /* its deadline was lost too */
        /* It had ended, and lingered; or it had ended and waited for its client to take its
         * last replies (those not sent are lost), and its FIN goes now: it lingers on, as long
         * as a close does. */
        if (name->ended)
                (void) shutdown(fd, SHUT_WR); /* a no-op once sent; failing only for a connection gone */
        if (name->ended || fin_sent(fd)) {
                s->lingering = true;
                s->timer.at = now_usec() + SESSION_LINGER_USEC;
                session_linger_begin(&s->linger, fd, s->in_len, now_usec());
        }
        /* A per-connection thread may have crashed waiting for a line's end with the mark past
         * it (perconn.c, recv_lines): an epoll pool would not see the next bytes. */
        int one = 1;
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
        *ret = s;
        return 0;
}

/* conn_name: ID's name; behind a balancer (VIA) the balancer's own (OWN) or CLIENT's. */
static HandoverConnName conn_name(uint64_t id, bool via, bool own, const struct sockaddr_storage *client) {
        HandoverConnName name = { .id = id, .via_balancer = via };

        if (via) {
                name.balancer_own = own;
                name.client = *client;
        }
        return name;
}

HandoverConnName handoff_conn_name(const Session *s) {
        HandoverConnName name = conn_name(s->id, s->stored_via, s->proxy_local, &s->peer_addr);

        name.ended = s->stored_ended;
        return name;
}

HandoverConnName handoff_record_conn_name(const HandoverRecord *rec, bool via_name) {
        return conn_name(rec->id, via_name && (rec->flags & HANDOVER_VIA_BALANCER), rec->flags & HANDOVER_BALANCER_OWN,
                         &rec->peer);
}

int handoff_memfd_new(void) {
        int fd = memfd_create("hellod-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        return fd < 0 ? -errno : fd;
}

int handoff_memfd_fill(int fd, const HandoverBuf *b) {
        size_t done = 0;

        while (done < b->len) {
                ssize_t n = pwrite(fd, b->data + done, b->len - done, (off_t) done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -EIO;
                done += (size_t) n;
        }
        /* Sealed: what the next process reads is what was written, whoever else holds it. */
        return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0 ? -errno : 0;
}

/* sealed_for_good: FD can change no more: neither its size nor its bytes (mapped, it cannot
 * shrink under the reader into a SIGBUS). */
static bool sealed_for_good(int fd) {
        int seals = fcntl(fd, F_GET_SEALS);

        return seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_WRITE)) == (F_SEAL_SHRINK | F_SEAL_WRITE);
}

static int copy_state(int fd, size_t size, StateBytes *ret) {
        uint8_t *data = malloc(size > 0 ? size : 1);
        size_t done = 0;

        if (!data)
                return -ENOMEM;
        while (done < size) {
                ssize_t n = pread(fd, data + done, size - done, (off_t) done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        free(data);
                        return n < 0 ? -errno : -EIO;
                }
                done += (size_t) n;
        }
        *ret = (StateBytes) { .data = data, .size = size };
        return 0;
}

int handoff_read_state(int fd, size_t max, StateBytes *ret) {
        bool sealed = sealed_for_good(fd); /* before the size: sealed, it is the size for good */
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        if (st.st_size < 0 || (uint64_t) st.st_size > max)
                return -EFBIG;
        size_t size = (size_t) st.st_size;
        if (size == 0 || !sealed)
                return copy_state(fd, size, ret);
        /* Private: before Linux 6.7 (Debian 12 runs 6.1) any shared mapping of a memfd sealed
         * against writes fails with EPERM, read-only or not. The pages are never written, so
         * a private mapping shows the file's own bytes. Should it fail all the same, a copy. */
        void *data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (data == MAP_FAILED)
                return copy_state(fd, size, ret);
        *ret = (StateBytes) { .data = data, .size = size, .mapped = true };
        return 0;
}

void handoff_state_release(StateBytes *b) {
        if (b->mapped)
                (void) munmap((void *) b->data, b->size);
        else
                free((void *) b->data);
        *b = (StateBytes) { 0 };
}

uint64_t handoff_boottime_usec(void) {
        return clock_usec(CLOCK_BOOTTIME);
}

int handoff_boot_id(uint8_t ret[16]) {
        sd_id128_t id;
        int r = sd_id128_get_boot(&id);

        if (r < 0)
                return r;
        memcpy(ret, id.bytes, 16);
        return 0;
}

void handoff_header(HandoverHeader *h, uint64_t next_id) {
        *h = (HandoverHeader) { .version = HANDOVER_VERSION, .written_usec = handoff_boottime_usec(), .next_id = next_id };
        snprintf(h->writer, sizeof(h->writer), "hellod %s", VERSION);
        /* A sandbox may hide /proc/sys/kernel/random: then the boot is not checked (zeros),
         * and the reader, in the same sandbox, cannot check it either. */
        if (handoff_boot_id(h->boot_id) < 0)
                memset(h->boot_id, 0, sizeof(h->boot_id));
}
