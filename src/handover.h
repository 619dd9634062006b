/* handover: the state of live sessions as bytes, so that the next hellod process can resume
 * them (docs/zero-downtime.md). A pure module: no sockets, no clocks, no logging. The encoder
 * writes what a session holds; the decoder reads it back as if it came from the network: every
 * length bounded by limits the reader passes in, every enum in range, every invariant of a live
 * session checked, and a reason for every refusal.
 *
 * The state file (one memfd, stored as "state" in systemd's file descriptor store) is a header
 * and COUNT records, all integers little-endian and fixed width:
 *
 *   header  magic "hellodST" | u32 version | u32 count | u64 written_usec (CLOCK_BOOTTIME)
 *           | u64 next_id | u8[16] boot_id | u8 writer_len | writer (printable ASCII)
 *           | u32 crc32c of all of the above
 *   record  u32 magic "hrec" | u32 length (of the whole record) | u64 id | u8 framing
 *           | u8 end | u8 flags | u8 peer_family (4, 6) | u16 peer_port | u8[16] peer_addr
 *           | u32 peer_scope_id | u64 age_usec | u64 deadline_left_usec | u64 lines
 *           | u64 messages | u64 conf_generation | u64 conf_hash | u32 discarded
 *           | u16 listen_len | listen | u32 pending_len | pending | u32 input_len | input
 *           | u32 output_len | output | [u32 subnegotiation_len: with HANDOVER_SUBNEGOTIATION only]
 *           | u32 crc32c of the record up to here
 *
 * Times are durations, not instants: a session's age and what is left of its deadline when the
 * state was written. The header's written_usec (CLOCK_BOOTTIME, which counts a suspend too) and
 * boot_id let the reader measure the gap and refuse a state from another boot. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"

#define HANDOVER_VERSION 1
#define HANDOVER_MAGIC "hellodST"
#define HANDOVER_MAGIC_LEN 8
#define HANDOVER_RECORD_MAGIC "hrec"
/* The longest listener name (ADDR_STR_MAX - 1) and writer name a reader accepts. */
#define HANDOVER_LISTEN_MAX 79
#define HANDOVER_WRITER_MAX 64
/* The most bytes HandoverRecord.input_head holds, and a reader allows for in front of the
 * input. Not lowered to PROTO_TELNET_RESTART_MAX (2): a hellod before HANDOVER_SUBNEGOTIATION
 * wrote up to 3 (IAC SB IAC), and its records must still fit. */
#define HANDOVER_INPUT_HEAD_MAX 4
/* The largest connection id a state may hold (a record's, and the header's next_id): no
 * process counts that far, and ids near 2^64 would wrap to 0 (which no record may have) and
 * then meet those resumed. */
#define HANDOVER_ID_MAX (UINT64_MAX >> 1)
/* deadline_left_usec of a session without a deadline (idle_timeout = 0). */
#define HANDOVER_NO_DEADLINE UINT64_MAX

/* The names of what hellod keeps in systemd's file descriptor store. Listeners keep their
 * FileDescriptorName= (the socket unit's). */
#define HANDOVER_FDNAME_STATE "state"
#define HANDOVER_FDNAME_CONN_PREFIX "c" /* "c<id>", id in decimal without leading zeros */
#define HANDOVER_FDNAME_MAX 64          /* "c" + 20 digits + "b6" + 36 hex digits + ".end" + NUL */
#define HANDOVER_FDNAME_ENDED ".end"    /* the suffix of an ended conversation's name */

typedef enum HandoverFlags {
        HANDOVER_LINGERING = 1u << 0,  /* ended; discarding what the client still sends */
        HANDOVER_WANT_WRITE = 1u << 1, /* output pending: waiting for the client to read */
        /* lingering, its closing line logged already: the per-connection model logs it when
         * the conversation ends, before its socket lingers (a hellod before this flag refuses
         * the record and closes that lingering socket) */
        HANDOVER_LOGGED = 1u << 2,
        /* through a load balancer (a PROXY listener): the socket's peer is the balancer, the
         * record's peer the client its header named (a hellod before these two flags refuses
         * the record and closes the connection) */
        HANDOVER_VIA_BALANCER = 1u << 3,
        HANDOVER_BALANCER_OWN = 1u << 4, /* the balancer's own connection (PROXY LOCAL): a health check */
        /* inside a telnet subnegotiation: subnegotiation_len, the bytes of it skipped so far (they
         * count against max_line_length), follows the output; a hellod before this flag refuses
         * the record and closes the connection */
        HANDOVER_SUBNEGOTIATION = 1u << 5,
        _HANDOVER_FLAGS_ALL = HANDOVER_LINGERING | HANDOVER_WANT_WRITE | HANDOVER_LOGGED | HANDOVER_VIA_BALANCER |
                              HANDOVER_BALANCER_OWN | HANDOVER_SUBNEGOTIATION,
} HandoverFlags;

/* HandoverRecord: one live session. The byte strings point into the caller's memory: the
 * session's buffers when encoding, the decoded input when decoding (copy them before the
 * input goes away). */
typedef struct HandoverRecord {
        uint64_t id; /* the connection id, never 0; its fd is stored as "c<id>" */
        Framing framing;
        int end;      /* a ProtoEnd: PROTO_END_NONE while the conversation goes on */
        unsigned flags; /* HandoverFlags */
        struct sockaddr_storage peer; /* AF_INET or AF_INET6: the client (PROXY header's if any) */
        uint64_t age_usec;            /* since the connection was accepted, as of the header's written_usec */
        uint64_t deadline_left_usec;  /* idle, write or linger deadline; HANDOVER_NO_DEADLINE */
        uint64_t lines, messages;     /* Proto's counters: lines <= messages */
        uint64_t conf_generation;     /* the writer's reload counter for the session's Conf */
        uint64_t conf_hash;           /* handover_conf_hash() of the session's Conf */
        uint32_t discarded;           /* lingering: bytes discarded so far */
        uint32_t subnegotiation_len;  /* HANDOVER_SUBNEGOTIATION: proto_subnegotiation()'s count */
        const char *listen;           /* the listener's name, "127.0.0.1:9999" */
        size_t listen_len;
        const uint8_t *pending; /* Proto's unterminated line (line framing) */
        size_t pending_len;
        const uint8_t *input; /* read, not yet fed to the protocol */
        size_t input_len;
        /* Encoding only: bytes written in front of INPUT, as its first bytes (a telnet command
         * the protocol stopped inside, begun again: proto_telnet_restart()); a decoded record
         * has them in INPUT. */
        uint8_t input_head[HANDOVER_INPUT_HEAD_MAX];
        size_t input_head_len;
        const uint8_t *output; /* produced, not yet sent */
        size_t output_len;
} HandoverRecord;

typedef struct HandoverHeader {
        uint32_t version;
        uint32_t count;        /* records that follow */
        uint64_t written_usec; /* CLOCK_BOOTTIME when written */
        uint64_t next_id;      /* the writer's connection id counter: continue above it */
        uint8_t boot_id[16];   /* /proc/sys/kernel/random/boot_id of the writer */
        char writer[HANDOVER_WRITER_MAX + 1]; /* "hellod 0.1.0" */
} HandoverHeader;

/* HandoverLimits: what the reading process can take; a record beyond them is refused. The
 * caller fills them from its own Conf (handoff_limits()): framing and max_line_length,
 * input_max = session_handover_input_max() (and in line framing HANDOVER_INPUT_HEAD_MAX more),
 * output_max = session_output_size(), discard_max = SESSION_LINGER_BYTES, records_max = the
 * most max_connections can be. */
typedef struct HandoverLimits {
        Framing framing;
        size_t max_line_length;
        size_t input_max;
        size_t output_max;
        size_t discard_max;
        size_t records_max;
        uint64_t linger_max_usec; /* the longest a lingering close waits */
} HandoverLimits;

/* HandoverBuf: a growing byte buffer for the encoder; free(data) when done. */
typedef struct HandoverBuf {
        uint8_t *data;
        size_t len, cap;
} HandoverBuf;

/* handover_crc32c: CRC-32C (Castagnoli, as iSCSI and ext4 use), continuing from CRC (0 to
 * start). */
uint32_t handover_crc32c(uint32_t crc, const void *data, size_t size);

/* handover_conf_hash: FNV-1a of what shapes a conversation's bytes (framing, max_line_length,
 * greeting, reply template), so that a reader can tell a session resumed under another
 * configuration. */
uint64_t handover_conf_hash(const Conf *conf);

/* handover_record_size_max: the longest record a reader with LIMITS accepts;
 * handover_state_size_max: the longest state file (header and records_max records), or
 * SIZE_MAX when that does not fit a size_t. Bound a read with it. */
size_t handover_record_size_max(const HandoverLimits *limits);
size_t handover_state_size_max(const HandoverLimits *limits);

/* handover_record_encode: appends REC to B. -EINVAL when REC cannot be written (a byte string
 * longer than its length field, an address family other than IPv4/IPv6, id 0, a bad enum),
 * -ENOMEM; B is unchanged on failure. Encoding checks what the format can hold, not what a
 * reader will accept: that is for the reader's limits. */
int handover_record_encode(HandoverBuf *b, const HandoverRecord *rec);

/* handover_record_decode: one record at the start of DATA. Returns 0 with *RET (pointing into
 * DATA) and *RET_SIZE its length, or -EBADMSG with a static REASON. Bytes after the record are
 * not looked at (the caller decides whether they are trailing garbage). */
int handover_record_decode(const uint8_t *data, size_t size, const HandoverLimits *limits, HandoverRecord *ret,
                           size_t *ret_size, const char **reason);

/* The state file. handover_state_begin() writes HEADER (its count is ignored) to an empty B,
 * handover_state_add() appends one record, handover_state_finish() writes the count and the
 * header's checksum. Each returns 0, -EINVAL or -ENOMEM. */
int handover_state_begin(HandoverBuf *b, const HandoverHeader *header);
int handover_state_add(HandoverBuf *b, const HandoverRecord *rec);
int handover_state_finish(HandoverBuf *b);

/* HandoverState: a decoded state file: the header, and where each record starts. */
typedef struct HandoverState {
        HandoverHeader header;
        const uint8_t *data;
        size_t size;
        size_t *offsets; /* header.count entries; free with handover_state_done() */
} HandoverState;

/* handover_state_decode: the header and the framing of every record: the version, the magic,
 * the checksum of the header, count <= records_max, each record's length within the data
 * (within the limits is the record's own check), and nothing after the last. On refusal
 * nothing can be resumed: -EBADMSG (or
 * -EPROTONOSUPPORT for a version this hellod does not read) with a REASON in ERR, or -ENOMEM.
 * BOOT_ID (may be NULL) must match the header's. The records themselves are checked one by one
 * by handover_state_record(), so that one damaged record costs one connection. */
int handover_state_decode(const uint8_t *data, size_t size, const HandoverLimits *limits, const uint8_t *boot_id,
                          HandoverState *ret, char *err, size_t err_size);
/* handover_state_record: record I of STATE, as handover_record_decode(). */
int handover_state_record(const HandoverState *state, size_t i, const HandoverLimits *limits, HandoverRecord *ret,
                          const char **reason);
void handover_state_done(HandoverState *state);

/* handover_gap_usec: how long ago (NOW_BOOTTIME_USEC) the state was written; 0 if the clock
 * says it was written in the future. */
uint64_t handover_gap_usec(const HandoverHeader *header, uint64_t now_boottime_usec);

/* HandoverConnName: what a stored connection's name says. Its id; and, for a connection behind
 * a balancer that the crash mode stored once its PROXY header was in, the client the header
 * named, or that it is the balancer's own (PROXY LOCAL): after a crash there is no record, and
 * the name is all the next process has to go on knowing the connection as the balancer's. */
typedef struct HandoverConnName {
        uint64_t id; /* 1..UINT64_MAX */
        bool via_balancer;
        bool balancer_own;              /* via_balancer: no client named */
        struct sockaddr_storage client; /* via_balancer and not balancer_own: AF_INET or AF_INET6 */
        /* The conversation has ended (its exit answered, or an ERR line) and waits for the
         * client to take its last replies before the FIN: after a crash the next process ends
         * it (FIN, then the lingering close) rather than taking it for a live one. */
        bool ended;
} HandoverConnName;

/* File descriptor names. handover_fdname_conn: CONN's name into BUF (HANDOVER_FDNAME_MAX):
 * "c<id>" (the id in decimal without leading zeros); behind a balancer "c<id>b" for its own
 * connection, "c<id>b4<address><port>" or "c<id>b6<address><port>" for a client's (the
 * address's 4 or 16 bytes and the port's 2 in lowercase hex, network order; no scope id: a
 * PROXY header has none); a client of another family goes unnamed ("c<id>"). An ended
 * conversation's name ends in ".end" ("c<id>.end", "c<id>b4<address><port>.end").
 * handover_fdname_parse_conn: whether NAME is exactly such a name (each name has one
 * spelling: handover_fdname_conn() gives NAME back), and what it says.
 * handover_fdname_is_stored: whether NAME is in the namespace hellod stores under ("state..."
 * or "c" and a digit), known or not: a passed descriptor with such a name that is no listener
 * is closed and removed from the store rather than refused as a misconfigured socket (so a
 * hellod from before the balancer's names closes those connections). */
const char *handover_fdname_conn(const HandoverConnName *conn, char *buf, size_t size);
bool handover_fdname_parse_conn(const char *name, HandoverConnName *ret);
bool handover_fdname_is_stored(const char *name);
