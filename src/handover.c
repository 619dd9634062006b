/* handover: encoding and validating decoding of the state handed to the next process. */
#include "handover.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/* Fixed parts: everything but the byte strings (and the fields that come with a flag). */
#define RECORD_FIXED 112u
#define RECORD_SUBNEGOTIATION 4u /* subnegotiation_len, with HANDOVER_SUBNEGOTIATION */
#define HEADER_FIXED 53u /* with an empty writer name */
#define FAMILY_IPV4 4u
#define FAMILY_IPV6 6u

/* ---- CRC-32C ---------------------------------------------------------------------------- */

/* The reflected Castagnoli polynomial. A CRC of 32 bits detects every error of one bit and
 * every burst of up to 32, which is what the unit tests hold the decoder to. */
#define CRC32C_POLY 0x82f63b78u

static uint32_t crc_table[256];

static void crc_table_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
                crc_table[i] = c;
        }
}

uint32_t handover_crc32c(uint32_t crc, const void *data, size_t size) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        const uint8_t *p = data;

        (void) pthread_once(&once, crc_table_init);
        crc = ~crc;
        for (size_t i = 0; i < size; i++)
                crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
        return ~crc;
}

/* ---- little-endian fields --------------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, size_t n) {
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, size_t n) {
        uint64_t v = 0;

        for (size_t i = 0; i < n; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

/* Writer: appends into memory reserved beforehand (so it cannot fail half-way). */
typedef struct Writer {
        uint8_t *p;
} Writer;

static void w_int(Writer *w, uint64_t v, size_t n) {
        put_le(w->p, v, n);
        w->p += n;
}

static void w_bytes(Writer *w, const void *data, size_t n) {
        if (n > 0)
                memcpy(w->p, data, n);
        w->p += n;
}

/* Reader: every read checks the bytes left first; after one failure all reads fail. */
typedef struct Reader {
        const uint8_t *p;
        size_t left;
        bool failed;
} Reader;

static uint64_t r_int(Reader *r, size_t n) {
        if (r->failed || r->left < n) {
                r->failed = true;
                return 0;
        }
        uint64_t v = get_le(r->p, n);
        r->p += n;
        r->left -= n;
        return v;
}

static const uint8_t *r_bytes(Reader *r, size_t n) {
        if (r->failed || r->left < n) {
                r->failed = true;
                return NULL;
        }
        const uint8_t *p = r->p;
        r->p += n;
        r->left -= n;
        return p;
}

static int reserve(HandoverBuf *b, size_t n) {
        if (n > SIZE_MAX - b->len)
                return -ENOMEM;
        if (b->len + n <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
                cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *data = realloc(b->data, cap);
        if (!data)
                return -ENOMEM;
        b->data = data;
        b->cap = cap;
        return 0;
}

/* Sizes that cannot overflow: saturated at SIZE_MAX, which no input reaches. */
static size_t add_sat(size_t a, size_t b) {
        return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static bool printable(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (s[i] < 0x20 || s[i] > 0x7e)
                        return false;
        return true;
}

/* ---- the configuration's fingerprint ---------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
        const uint8_t *p = data;

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 0x100000001b3u;
        return h;
}

static uint64_t fnv_str(uint64_t h, const char *s) {
        return fnv(h, s ? s : "", (s ? strlen(s) : 0) + 1); /* the NUL separates the strings */
}

uint64_t handover_conf_hash(const Conf *conf) {
        uint8_t fixed[5];
        uint64_t h = 0xcbf29ce484222325u;

        fixed[0] = (uint8_t) conf->framing;
        put_le(fixed + 1, conf->max_line_length, 4);
        h = fnv(h, fixed, sizeof(fixed));
        h = fnv_str(h, conf->greeting);
        h = fnv_str(h, conf->reply_prefix);
        return fnv_str(h, conf->reply_suffix);
}

/* ---- records ---------------------------------------------------------------------------- */

size_t handover_record_size_max(const HandoverLimits *limits) {
        size_t n = RECORD_FIXED + RECORD_SUBNEGOTIATION + HANDOVER_LISTEN_MAX;

        n = add_sat(n, add_sat(limits->max_line_length, 1));
        n = add_sat(n, limits->input_max);
        return add_sat(n, limits->output_max);
}

size_t handover_state_size_max(const HandoverLimits *limits) {
        size_t record = handover_record_size_max(limits);
        size_t header = HEADER_FIXED + HANDOVER_WRITER_MAX;

        if (limits->records_max > 0 && record > (SIZE_MAX - header) / limits->records_max)
                return SIZE_MAX;
        return header + record * limits->records_max;
}

static size_t record_size(const HandoverRecord *rec) {
        return RECORD_FIXED + (rec->flags & HANDOVER_SUBNEGOTIATION ? RECORD_SUBNEGOTIATION : 0) + rec->listen_len +
               rec->pending_len + rec->input_head_len + rec->input_len + rec->output_len;
}

static bool encodable(const HandoverRecord *rec) {
        int family = rec->peer.ss_family;

        return rec->id != 0 && (rec->framing == FRAMING_LINE || rec->framing == FRAMING_CHUNK) &&
               rec->end >= PROTO_END_NONE && rec->end <= _PROTO_END_LAST && (rec->flags & ~_HANDOVER_FLAGS_ALL) == 0 &&
               (family == AF_INET || family == AF_INET6) && rec->listen_len <= UINT16_MAX &&
               (rec->listen || rec->listen_len == 0) && rec->pending_len <= UINT32_MAX &&
               (rec->pending || rec->pending_len == 0) && rec->input_head_len <= HANDOVER_INPUT_HEAD_MAX &&
               rec->input_len <= UINT32_MAX - HANDOVER_INPUT_HEAD_MAX && (rec->input || rec->input_len == 0) &&
               rec->output_len <= UINT32_MAX && (rec->output || rec->output_len == 0) &&
               /* Together within the u32 length field. */
               add_sat(add_sat(rec->listen_len, rec->pending_len),
                       add_sat(rec->input_head_len + rec->input_len, rec->output_len)) <=
                       UINT32_MAX - RECORD_FIXED - RECORD_SUBNEGOTIATION;
}

static void write_peer(Writer *w, const struct sockaddr_storage *peer) {
        uint8_t addr[16] = { 0 };

        if (peer->ss_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) peer;

                memcpy(addr, &in->sin_addr, 4);
                w_int(w, FAMILY_IPV4, 1);
                w_int(w, ntohs(in->sin_port), 2);
                w_bytes(w, addr, sizeof(addr));
                w_int(w, 0, 4);
        } else {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) peer;

                w_int(w, FAMILY_IPV6, 1);
                w_int(w, ntohs(in6->sin6_port), 2);
                w_bytes(w, &in6->sin6_addr, 16);
                w_int(w, in6->sin6_scope_id, 4);
        }
}

int handover_record_encode(HandoverBuf *b, const HandoverRecord *rec) {
        if (!encodable(rec))
                return -EINVAL;
        size_t size = record_size(rec);
        int r = reserve(b, size);
        if (r < 0)
                return r;

        uint8_t *start = b->data + b->len;
        Writer w = { .p = start };
        w_bytes(&w, HANDOVER_RECORD_MAGIC, 4);
        w_int(&w, size, 4);
        w_int(&w, rec->id, 8);
        w_int(&w, (uint64_t) rec->framing, 1);
        w_int(&w, (uint64_t) rec->end, 1);
        _Static_assert(_HANDOVER_FLAGS_ALL <= 0xff, "the record's flags take one byte");
        w_int(&w, rec->flags, 1);
        write_peer(&w, &rec->peer);
        w_int(&w, rec->age_usec, 8);
        w_int(&w, rec->deadline_left_usec, 8);
        w_int(&w, rec->lines, 8);
        w_int(&w, rec->messages, 8);
        w_int(&w, rec->conf_generation, 8);
        w_int(&w, rec->conf_hash, 8);
        w_int(&w, rec->discarded, 4);
        w_int(&w, rec->listen_len, 2);
        w_bytes(&w, rec->listen, rec->listen_len);
        w_int(&w, rec->pending_len, 4);
        w_bytes(&w, rec->pending, rec->pending_len);
        w_int(&w, rec->input_head_len + rec->input_len, 4);
        w_bytes(&w, rec->input_head, rec->input_head_len);
        w_bytes(&w, rec->input, rec->input_len);
        w_int(&w, rec->output_len, 4);
        w_bytes(&w, rec->output, rec->output_len);
        if (rec->flags & HANDOVER_SUBNEGOTIATION)
                w_int(&w, rec->subnegotiation_len, 4);
        w_int(&w, handover_crc32c(0, start, size - 4), 4);
        b->len += size;
        return 0;
}

/* refuse: the decoder's single way out on bad input. */
static int refuse(const char **reason, const char *why) {
        if (reason)
                *reason = why;
        return -EBADMSG;
}

static const char *read_peer(Reader *r, struct sockaddr_storage *ret) {
        unsigned family = (unsigned) r_int(r, 1);
        uint16_t port = (uint16_t) r_int(r, 2);
        const uint8_t *addr = r_bytes(r, 16);
        uint32_t scope = (uint32_t) r_int(r, 4);
        static const uint8_t zero[12];

        memset(ret, 0, sizeof(*ret));
        if (r->failed)
                return "record shorter than its fields";
        if (family == FAMILY_IPV4) {
                struct sockaddr_in *in = (struct sockaddr_in *) ret;

                if (memcmp(addr + 4, zero, sizeof(zero)) != 0 || scope != 0)
                        return "IPv4 peer address with stray bytes";
                in->sin_family = AF_INET;
                in->sin_port = htons(port);
                memcpy(&in->sin_addr, addr, 4);
        } else if (family == FAMILY_IPV6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ret;

                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(port);
                memcpy(&in6->sin6_addr, addr, 16);
                in6->sin6_scope_id = scope;
        } else
                return "peer address family is neither IPv4 nor IPv6";
        return NULL;
}

/* read_string: a length of LEN_BYTES, then that many bytes, within the record. */
static const uint8_t *read_string(Reader *r, size_t len_bytes, size_t *ret_len) {
        size_t n = (size_t) r_int(r, len_bytes);
        const uint8_t *p = r_bytes(r, n);

        *ret_len = p ? n : 0;
        return p;
}

/* check_pending: what Proto can hold between reads: no line feed (that would have ended the
 * line), at most max_line_length + 1 bytes, and the last of those a CR (a line at the limit
 * whose LF has not come yet). */
static const char *check_pending(const HandoverRecord *rec, const HandoverLimits *limits) {
        size_t max = limits->max_line_length + 1;

        if (rec->pending_len == 0)
                return NULL;
        if (rec->framing != FRAMING_LINE)
                return "a pending line in chunk framing";
        if (rec->pending_len > max)
                return "pending line longer than max_line_length allows";
        if (memchr(rec->pending, '\n', rec->pending_len))
                return "pending line contains a line feed";
        if (rec->pending_len == max && rec->pending[max - 1] != '\r')
                return "pending line longer than max_line_length allows";
        return NULL;
}

static const char *check_state(const HandoverRecord *rec, const HandoverLimits *limits) {
        bool lingering = rec->flags & HANDOVER_LINGERING;
        const char *why;

        if (rec->id == 0)
                return "connection id 0";
        if (rec->id > HANDOVER_ID_MAX)
                return "connection id beyond 2^63";
        if (rec->framing != limits->framing)
                return rec->framing == FRAMING_LINE ? "session in line framing, the configuration now says chunk"
                                                    : "session in chunk framing, the configuration now says line";
        if (rec->end < PROTO_END_NONE || rec->end > _PROTO_END_LAST)
                return "unknown end reason";
        if (rec->flags & ~_HANDOVER_FLAGS_ALL)
                return "unknown flags";
        if (rec->lines > rec->messages)
                return "more lines answered than messages seen";
        /* The idle deadline is the furthest a session has (write and linger deadlines come
         * sooner); a larger one would wrap around when added to the clock. */
        if (rec->deadline_left_usec != HANDOVER_NO_DEADLINE &&
            rec->deadline_left_usec > (uint64_t) CONF_IDLE_TIMEOUT_MAX * 1000000u)
                return "deadline further away than idle_timeout can set";
        if (rec->listen_len == 0 || rec->listen_len > HANDOVER_LISTEN_MAX || !printable(rec->listen, rec->listen_len))
                return "listener name empty, too long or not printable";
        why = check_pending(rec, limits);
        if (why)
                return why;
        if (rec->input_len > limits->input_max)
                return "more unread input than the read size";
        if (rec->output_len > limits->output_max)
                return "more unsent output than the output buffer";
        if (rec->discarded > limits->discard_max)
                return "more bytes discarded than a lingering close reads";
        if (rec->discarded > 0 && !lingering)
                return "bytes discarded by a session that is not lingering";
        if ((rec->flags & HANDOVER_WANT_WRITE) && rec->output_len == 0)
                return "waiting to write with no output";
        if ((rec->flags & HANDOVER_LOGGED) && !lingering)
                return "logged as closed but not lingering";
        if ((rec->flags & HANDOVER_BALANCER_OWN) && !(rec->flags & HANDOVER_VIA_BALANCER))
                return "a balancer's own connection not through a balancer";
        if ((rec->flags & HANDOVER_SUBNEGOTIATION) && rec->framing != FRAMING_LINE)
                return "a telnet subnegotiation in chunk framing";
        if ((rec->flags & HANDOVER_SUBNEGOTIATION) && rec->end != PROTO_END_NONE)
                return "inside a telnet subnegotiation after the end";
        if (rec->subnegotiation_len > limits->max_line_length)
                return "subnegotiation longer than max_line_length allows";
        /* Lingering with no end is a close taken up after a crash, how it ended lost with the
         * crashed process (handoff_session_fresh): it lingers on like any other. */
        if (lingering && (rec->end == PROTO_END_EOF || rec->end == PROTO_END_SHUTDOWN))
                return "lingering after an end that does not linger";
        if (lingering && (rec->pending_len || rec->input_len || rec->output_len))
                return "lingering with data still to handle";
        if (lingering && (rec->deadline_left_usec == HANDOVER_NO_DEADLINE ||
                          rec->deadline_left_usec > limits->linger_max_usec))
                return "lingering longer than a lingering close waits";
        return NULL;
}

int handover_record_decode(const uint8_t *data, size_t size, const HandoverLimits *limits, HandoverRecord *ret,
                           size_t *ret_size, const char **reason) {
        HandoverRecord rec = { 0 };
        const char *why;

        if (size < 8)
                return refuse(reason, "truncated record");
        if (memcmp(data, HANDOVER_RECORD_MAGIC, 4) != 0)
                return refuse(reason, "not a session record (bad magic)");
        size_t len = (size_t) get_le(data + 4, 4);
        if (len < RECORD_FIXED)
                return refuse(reason, "record length below the fixed fields");
        if (len > size)
                return refuse(reason, "truncated record");
        if (len > handover_record_size_max(limits))
                return refuse(reason, "record longer than the limits allow");
        if (handover_crc32c(0, data, len - 4) != (uint32_t) get_le(data + len - 4, 4))
                return refuse(reason, "checksum mismatch");

        /* The checksum holds; the fields are still checked, as a buggy or hostile writer could
         * have computed it. */
        Reader r = { .p = data + 8, .left = len - 12 };
        rec.id = r_int(&r, 8);
        rec.framing = (Framing) r_int(&r, 1);
        rec.end = (int) r_int(&r, 1);
        rec.flags = (unsigned) r_int(&r, 1);
        why = read_peer(&r, &rec.peer);
        if (why)
                return refuse(reason, why);
        rec.age_usec = r_int(&r, 8);
        rec.deadline_left_usec = r_int(&r, 8);
        rec.lines = r_int(&r, 8);
        rec.messages = r_int(&r, 8);
        rec.conf_generation = r_int(&r, 8);
        rec.conf_hash = r_int(&r, 8);
        rec.discarded = (uint32_t) r_int(&r, 4);
        rec.listen = (const char *) read_string(&r, 2, &rec.listen_len);
        rec.pending = read_string(&r, 4, &rec.pending_len);
        rec.input = read_string(&r, 4, &rec.input_len);
        rec.output = read_string(&r, 4, &rec.output_len);
        if (rec.flags & HANDOVER_SUBNEGOTIATION)
                rec.subnegotiation_len = (uint32_t) r_int(&r, 4);
        if (r.failed)
                return refuse(reason, "a length points past the end of the record");
        if (r.left != 0)
                return refuse(reason, "record longer than its fields");
        why = check_state(&rec, limits);
        if (why)
                return refuse(reason, why);
        *ret = rec;
        if (ret_size)
                *ret_size = len;
        return 0;
}

/* ---- the state file --------------------------------------------------------------------- */

static size_t header_size(const HandoverHeader *h) {
        return HEADER_FIXED + strnlen(h->writer, sizeof(h->writer));
}

int handover_state_begin(HandoverBuf *b, const HandoverHeader *header) {
        size_t writer_len = strnlen(header->writer, sizeof(header->writer));

        if (b->len != 0 || writer_len > HANDOVER_WRITER_MAX || !printable(header->writer, writer_len))
                return -EINVAL;
        size_t size = header_size(header);
        int r = reserve(b, size);
        if (r < 0)
                return r;
        Writer w = { .p = b->data };
        w_bytes(&w, HANDOVER_MAGIC, HANDOVER_MAGIC_LEN);
        w_int(&w, HANDOVER_VERSION, 4);
        w_int(&w, 0, 4); /* the count: handover_state_finish() */
        w_int(&w, header->written_usec, 8);
        w_int(&w, header->next_id, 8);
        w_bytes(&w, header->boot_id, 16);
        w_int(&w, writer_len, 1);
        w_bytes(&w, header->writer, writer_len);
        w_int(&w, 0, 4); /* the checksum: handover_state_finish() */
        b->len = size;
        return 0;
}

int handover_state_add(HandoverBuf *b, const HandoverRecord *rec) {
        if (b->len < HEADER_FIXED)
                return -EINVAL;
        return handover_record_encode(b, rec);
}

int handover_state_finish(HandoverBuf *b) {
        if (b->len < HEADER_FIXED)
                return -EINVAL;
        size_t writer_len = b->data[HEADER_FIXED - 5];
        size_t size = HEADER_FIXED + writer_len;
        size_t count = 0;

        /* Count by walking the records the encoder wrote. */
        for (size_t pos = size; pos < b->len; count++)
                pos += (size_t) get_le(b->data + pos + 4, 4);
        if (count > UINT32_MAX)
                return -EINVAL;
        put_le(b->data + 12, count, 4);
        put_le(b->data + size - 4, handover_crc32c(0, b->data, size - 4), 4);
        return 0;
}

static int fail(char *err, size_t err_size, int r, const char *format, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_size, int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vsnprintf(err, err_size, format, ap);
        va_end(ap);
        return r;
}

static int decode_header(const uint8_t *data, size_t size, HandoverHeader *h, size_t *ret_size, char *err,
                         size_t err_size) {
        if (size < HANDOVER_MAGIC_LEN + 4 || memcmp(data, HANDOVER_MAGIC, HANDOVER_MAGIC_LEN) != 0)
                return fail(err, err_size, -EBADMSG, "not a hellod state file (%zu bytes, no '" HANDOVER_MAGIC "')",
                            size);
        h->version = (uint32_t) get_le(data + 8, 4);
        /* Before anything else: a newer format may have moved every other field. */
        if (h->version != HANDOVER_VERSION)
                return fail(err, err_size, -EPROTONOSUPPORT,
                            "state format version %" PRIu32 ", this hellod reads version %d only", h->version,
                            HANDOVER_VERSION);
        if (size < HEADER_FIXED)
                return fail(err, err_size, -EBADMSG, "truncated state header (%zu bytes)", size);
        size_t writer_len = data[HEADER_FIXED - 5];
        size_t len = HEADER_FIXED + writer_len;
        if (writer_len > HANDOVER_WRITER_MAX || len > size)
                return fail(err, err_size, -EBADMSG, "truncated state header (%zu bytes)", size);
        if (handover_crc32c(0, data, len - 4) != (uint32_t) get_le(data + len - 4, 4))
                return fail(err, err_size, -EBADMSG, "state header checksum mismatch");
        Reader r = { .p = data + 12, .left = len - 16 };
        h->count = (uint32_t) r_int(&r, 4);
        h->written_usec = r_int(&r, 8);
        h->next_id = r_int(&r, 8);
        const uint8_t *boot_id = r_bytes(&r, 16);
        (void) r_int(&r, 1);
        const uint8_t *writer = r_bytes(&r, writer_len);
        if (r.failed || !boot_id || !writer) /* cannot happen: LEN was checked */
                return fail(err, err_size, -EBADMSG, "truncated state header (%zu bytes)", size);
        memcpy(h->boot_id, boot_id, 16);
        memcpy(h->writer, writer, writer_len);
        h->writer[writer_len] = '\0';
        if (!printable(h->writer, writer_len))
                return fail(err, err_size, -EBADMSG, "writer name not printable");
        if (h->next_id > HANDOVER_ID_MAX)
                return fail(err, err_size, -EBADMSG, "next connection id beyond 2^63");
        *ret_size = len;
        return 0;
}

int handover_state_decode(const uint8_t *data, size_t size, const HandoverLimits *limits, const uint8_t *boot_id,
                          HandoverState *ret, char *err, size_t err_size) {
        HandoverState st = { .data = data, .size = size };
        size_t pos = 0;
        int r;

        r = decode_header(data, size, &st.header, &pos, err, err_size);
        if (r < 0)
                return r;
        /* Zeros: the writer could not read its boot id (a sandbox hides /proc/sys): unknown. */
        static const uint8_t unknown_boot[16];
        if (boot_id && memcmp(st.header.boot_id, unknown_boot, 16) != 0 && memcmp(boot_id, st.header.boot_id, 16) != 0)
                return fail(err, err_size, -EBADMSG, "state written during another boot");
        if (st.header.count > limits->records_max)
                return fail(err, err_size, -EBADMSG, "%" PRIu32 " records, more than max_connections can be (%zu)",
                            st.header.count, limits->records_max);
        /* Before allocating: the count must fit the data. */
        if (st.header.count > (size - pos) / RECORD_FIXED)
                return fail(err, err_size, -EBADMSG, "%" PRIu32 " records cannot fit in %zu bytes", st.header.count,
                            size - pos);
        if (st.header.count > 0) {
                st.offsets = calloc(st.header.count, sizeof(*st.offsets));
                if (!st.offsets)
                        return fail(err, err_size, -ENOMEM, "out of memory");
        }
        for (uint32_t i = 0; i < st.header.count; i++) {
                size_t len = size - pos >= 8 ? (size_t) get_le(data + pos + 4, 4) : 0;

                /* Only the framing here: a record longer than this process's limits allow
                 * (they may have been lowered) is refused alone, by handover_state_record(). */
                if (len < RECORD_FIXED || len > size - pos) {
                        handover_state_done(&st);
                        return fail(err, err_size, -EBADMSG, "record %" PRIu32 " of %" PRIu32 " has a bad length",
                                    i + 1, st.header.count);
                }
                st.offsets[i] = pos;
                pos += len;
        }
        if (pos != size) {
                handover_state_done(&st);
                return fail(err, err_size, -EBADMSG, "%zu bytes after the last record", size - pos);
        }
        *ret = st;
        return 0;
}

int handover_state_record(const HandoverState *state, size_t i, const HandoverLimits *limits, HandoverRecord *ret,
                          const char **reason) {
        if (i >= state->header.count)
                return refuse(reason, "no such record");
        return handover_record_decode(state->data + state->offsets[i], state->size - state->offsets[i], limits, ret,
                                      NULL, reason);
}

void handover_state_done(HandoverState *state) {
        free(state->offsets);
        state->offsets = NULL;
}

uint64_t handover_gap_usec(const HandoverHeader *header, uint64_t now_boottime_usec) {
        return now_boottime_usec > header->written_usec ? now_boottime_usec - header->written_usec : 0;
}

/* ---- file descriptor names -------------------------------------------------------------- */

/* put_hex: N bytes of P as 2N lowercase hex digits at OUT. */
static char *put_hex(char *out, const uint8_t *p, size_t n) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                *out++ = digits[p[i] >> 4];
                *out++ = digits[p[i] & 15];
        }
        return out;
}

/* get_hex: 2N lowercase hex digits at IN into N bytes at P; NULL unless all are such digits. */
static const char *get_hex(const char *in, uint8_t *p, size_t n) {
        for (size_t i = 0; i < 2 * n; i++) {
                char c = in[i];
                unsigned d = c >= '0' && c <= '9' ? (unsigned) (c - '0') : c >= 'a' && c <= 'f' ? (unsigned) (c - 'a' + 10) : 16;
                if (d == 16)
                        return NULL;
                p[i / 2] = (uint8_t) (i % 2 ? p[i / 2] | d : d << 4);
        }
        return in + 2 * n;
}

const char *handover_fdname_conn(const HandoverConnName *conn, char *buf, size_t size) {
        char name[HANDOVER_FDNAME_MAX];
        int family = conn->client.ss_family;
        int n = snprintf(name, sizeof(name), HANDOVER_FDNAME_CONN_PREFIX "%" PRIu64, conn->id);
        char *p = name + n;

        if (conn->via_balancer && (conn->balancer_own || family == AF_INET || family == AF_INET6)) {
                *p++ = 'b';
                if (family == AF_INET && !conn->balancer_own) {
                        const struct sockaddr_in *in = (const struct sockaddr_in *) &conn->client;
                        *p++ = '4';
                        p = put_hex(p, (const uint8_t *) &in->sin_addr, 4);
                        p = put_hex(p, (const uint8_t *) &in->sin_port, 2);
                } else if (!conn->balancer_own) {
                        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &conn->client;
                        *p++ = '6';
                        p = put_hex(p, in6->sin6_addr.s6_addr, 16);
                        p = put_hex(p, (const uint8_t *) &in6->sin6_port, 2);
                }
        }
        *p = '\0';
        if (conn->ended)
                strcat(p, HANDOVER_FDNAME_ENDED);
        snprintf(buf, size, "%s", name);
        return buf;
}

/* parse_client: the client's part of a name behind a balancer, after its "b4" or "b6". */
static bool parse_client(const char *p, int family, struct sockaddr_storage *ret) {
        memset(ret, 0, sizeof(*ret));
        if (family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *) ret;
                in->sin_family = AF_INET;
                p = get_hex(p, (uint8_t *) &in->sin_addr, 4);
                p = p ? get_hex(p, (uint8_t *) &in->sin_port, 2) : NULL;
        } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ret;
                in6->sin6_family = AF_INET6;
                p = get_hex(p, in6->sin6_addr.s6_addr, 16);
                p = p ? get_hex(p, (uint8_t *) &in6->sin6_port, 2) : NULL;
        }
        return p && *p == '\0';
}

bool handover_fdname_parse_conn(const char *name, HandoverConnName *ret) {
        HandoverConnName conn = { 0 };
        char head[HANDOVER_FDNAME_MAX];
        size_t len = strlen(name), suffix = strlen(HANDOVER_FDNAME_ENDED);
        const char *p;

        if (len >= sizeof(head))
                return false;
        memcpy(head, name, len + 1);
        if (len > suffix && strcmp(head + len - suffix, HANDOVER_FDNAME_ENDED) == 0) {
                conn.ended = true;
                head[len - suffix] = '\0';
        }
        name = head;
        p = name + 1;
        if (name[0] != HANDOVER_FDNAME_CONN_PREFIX[0] || *p < '1' || *p > '9')
                return false;
        for (; *p >= '0' && *p <= '9'; p++) {
                unsigned d = (unsigned) (*p - '0');
                if (conn.id > (HANDOVER_ID_MAX - d) / 10) /* as in a record: the next ids would wrap */
                        return false;
                conn.id = conn.id * 10 + d;
        }
        if (*p == 'b') {
                conn.via_balancer = true;
                p++;
                if (*p == '\0')
                        conn.balancer_own = true;
                else if ((*p != '4' && *p != '6') || !parse_client(p + 1, *p == '4' ? AF_INET : AF_INET6, &conn.client))
                        return false;
        } else if (*p != '\0')
                return false;
        *ret = conn;
        return true;
}

bool handover_fdname_is_stored(const char *name) {
        return strncmp(name, HANDOVER_FDNAME_STATE, strlen(HANDOVER_FDNAME_STATE)) == 0 ||
               (name[0] == HANDOVER_FDNAME_CONN_PREFIX[0] && name[1] >= '0' && name[1] <= '9');
}
